#!/usr/bin/env python3
"""idmux benchmark harness (driven by scripts/bench.sh; see benches/README.md).

Subcommands:
  run  --config FILE --json OUT --md OUT   measure every path, print the table, write BENCHMARKS.md
                                           and the latency chart (benches/latency.svg, --svg)
  report --json FILE --md OUT              BENCHMARKS.md and the chart again from a results.json
  chart (--json FILE | --demo) --svg OUT   only the latency chart (--demo: seeded synthetic data)
  wrap --out FILE [--subreaper] -- CMD...  run CMD, forward SIGHUP/SIGTERM/SIGINT to it, write its
                                           wall time, CPU seconds and peak RSS (wait4 rusage) as
                                           JSON. --subreaper also adopts and reaps every orphaned
                                           descendant (ssh does not wait for its ProxyCommand), so
                                           the CPU figures cover the whole process tree.

Only the Python 3 standard library is used.
"""

import argparse
import ctypes
import datetime
import json
import math
import os
import platform
import selectors
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time

MIB = 1 << 20
GIB = 1 << 30
HERE = os.path.dirname(os.path.abspath(__file__))
SELF = os.path.abspath(__file__)


# ---------------------------------------------------------------------------------------------
# wrap: rusage of a command (and, with --subreaper, of its whole process tree)


def cmd_wrap(args):
    cmd = args.cmd
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if args.subreaper:
        PR_SET_CHILD_SUBREAPER = 36
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    t0 = time.monotonic()
    child = subprocess.Popen(cmd)

    def forward(sig, _frame):
        try:
            os.kill(child.pid, sig)
        except ProcessLookupError:
            pass

    for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(s, forward)
    hwm = None
    if args.hwm:
        # ru_maxrss of a forked child also counts the parent's (this Python's) pages from before
        # exec; VmHWM is the exec'd image's own peak. Sample it until the child exits.
        while True:
            pid, status, ru = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            h = proc_status_kib(child.pid, "VmHWM")
            if h is not None:
                hwm = max(hwm or 0, h)
            time.sleep(0.002)
    else:
        _, status, ru = os.wait4(child.pid, 0)
    t1 = time.monotonic()
    child.returncode = os.waitstatus_to_exitcode(status)
    out = {
        "rc": child.returncode,
        "t_start": t0,
        "t_end": t1,
        "wall": t1 - t0,
        "utime": ru.ru_utime,
        "stime": ru.ru_stime,
        "maxrss_kib": ru.ru_maxrss,
        "hwm_kib": hwm,
        "reaped": 1,
    }
    if args.subreaper:
        # Orphans (the ProxyCommand ssh SIGHUPs and never waits for, ssh -W of ProxyJump, ...)
        # are now our children: reap them so their CPU time is counted too.
        deadline = time.monotonic() + 10
        while True:
            try:
                pid, status, ru = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                if time.monotonic() > deadline:
                    out["unreaped"] = True
                    break
                time.sleep(0.005)
                continue
            out["utime"] += ru.ru_utime
            out["stime"] += ru.ru_stime
            out["reaped"] += 1
    with open(args.out + ".tmp", "w") as f:
        json.dump(out, f)
    os.rename(args.out + ".tmp", args.out)
    return child.returncode if child.returncode >= 0 else 128 - child.returncode


# ---------------------------------------------------------------------------------------------
# helpers


def pctl(values, p):
    """Nearest-rank percentile."""
    v = sorted(values)
    if not v:
        return float("nan")
    return v[max(0, math.ceil(p / 100.0 * len(v)) - 1)]


def proc_status_kib(pid, field="VmRSS"):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except FileNotFoundError:
        return None
    return None


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid):
    """utime + stime of a whole process (all threads), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    # rest[0] is field 3 (state); utime, stime are fields 14 and 15.
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def proc_sleeps(pid):
    """Times the process's threads gave up the CPU to wait (voluntary context switches, summed
    over /proc/PID/task/*/status). Only live threads count, so it is kept for the daemons, whose
    threads outlive a transfer, and not for stunnel, whose per-session threads take theirs along."""
    n = 0
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{t}/status") as f:
                    n += sum(int(l.split()[1]) for l in f if l.startswith("voluntary_ctxt_switches"))
            except OSError:
                pass
    except OSError:
        return None
    return n


def machine_cpu_s():
    """(busy, stolen): CPU seconds the whole machine spent busy across all cores (/proc/stat's
    user, nice, system, irq, softirq: every process and the kernel's own work, the dev proxy
    and the node's sshd too), and seconds the hypervisor took from this machine's CPUs (steal)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is already inside user)
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / CLK_TCK, v[7] / CLK_TCK


def children_of(pids):
    """{pid: ppid} of live processes whose parent is in `pids`."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(rest[1]) in pids:
            out[int(d)] = int(rest[1])
    return out


def log(*a):
    print("bench:", *a, file=sys.stderr, flush=True)


def sh(cmd):
    try:
        o = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (o.stdout + o.stderr).strip()
    except Exception as e:  # noqa: BLE001
        return f"({cmd[0]}: {e})"


def proc_pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


# ---------------------------------------------------------------------------------------------
# the paths


# Every path, in table order, as data: key (results.json), column heading, kind (how ssh is
# run and which figures apply: direct, jump, stdio, fdpass), idmux's transport, and for idmux
# paths the bench.json entry (under "paths") with its ssh_config and, for fdpass, the daemon.
PATHS = [
    {"key": "direct", "short": "direct", "kind": "direct", "transport": None,
     "label": "direct"},
    # Latency baseline: ssh sets TCP_NODELAY only with a tty, so plain direct runs Nagle's
    # algorithm; this is the same ssh with benches/nodelay.c preloaded. Latency only.
    {"key": "direct-nodelay", "short": "direct NODELAY", "kind": "direct", "transport": None,
     "label": "direct, ssh with TCP_NODELAY (LD_PRELOAD benches/nodelay.c)", "preload": True,
     "figures": {"latency"}},
    {"key": "jump", "short": "ProxyJump", "kind": "jump", "transport": None,
     "label": "ProxyJump (-J bastion sshd)"},
    # The peer of the daemon: a plain C TLS relay, one TLS 1.3 connection per ssh session.
    {"key": "stunnel", "short": "stunnel", "kind": "stunnel", "transport": None,
     "label": "stunnel4 (client daemon on loopback, server in front of the node's sshd; TLS 1.3 "
              "TLS_AES_128_GCM_SHA256)"},
    {"key": "stdio-grpc", "short": "stdio gRPC", "kind": "stdio", "transport": "grpc",
     "label": "stdio ProxyCommand (idmux ssh-proxy-command --transport grpc)"},
    {"key": "stdio-ssh", "short": "stdio SSH", "kind": "stdio", "transport": "ssh",
     "label": "stdio ProxyCommand (idmux ssh-proxy-command --transport ssh)"},
    {"key": "fdpass-grpc", "short": "fdpass gRPC", "kind": "fdpass", "transport": "grpc",
     "label": "fdpass multiplexer (idmux-fdpass + daemon, --transport grpc)"},
    {"key": "fdpass-ssh", "short": "fdpass SSH", "kind": "fdpass", "transport": "ssh",
     "label": "fdpass multiplexer (idmux-fdpass + daemon, --transport ssh)"},
    {"key": "fdpass-nginx", "short": "fdpass via nginx", "kind": "fdpass", "transport": "grpc",
     "label": "fdpass multiplexer behind nginx (an L7 load balancer: ALPN connection upgrade, "
              "TLS in WebSocket in TLS, --transport grpc)"},
]
ORDER = [d["key"] for d in PATHS]
SHORT = {d["key"]: d["short"] for d in PATHS}
KIND = {d["key"]: d["kind"] for d in PATHS}
# What relays a session's bytes on the client side, per kind.
RELAY = {"jump": "ssh -W", "stdio": "idmux ssh-proxy-command", "fdpass": "idmux-fdpass",
         "stunnel": "stunnel client"}
# Which figures a path takes part in (all, unless its PATHS entry says).
FIGURES = {d["key"]: d.get("figures") for d in PATHS}
# The latency baseline (ratios of the latency rows): direct NODELAY when it ran.
LAT_BASE = "direct-nodelay"


def has(k, fig):
    f = FIGURES.get(k)
    return f is None or fig in f


def only(paths, fig):
    return [p for p in paths if has(p.key, fig)]


def keys_of(kind, order=ORDER):
    return [k for k in order if KIND.get(k) == kind]


class Path:
    def __init__(self, spec, ssh, scp, host, daemon=None):
        self.key, self.label, self.kind = spec["key"], spec["label"], spec["kind"]
        self.short, self.transport = spec["short"], spec["transport"]
        self.ssh, self.scp, self.host = ssh, scp, host
        # Environment of this path's ssh (None: inherited); direct NODELAY's has LD_PRELOAD.
        self.env = None
        self.relay = RELAY.get(self.kind)
        # The daemon (`idmux start`) relaying this path's bytes (fdpass), or None.
        self.daemon = daemon
        # ssh argv with the ProxyCommand wrapped by `wrap` (set up in make_paths), or None.
        self.ssh_wrapped = None

    def cmd(self, remote):
        return self.ssh + [self.host, remote]


def ssh_g(argv_prefix, host):
    o = subprocess.run(argv_prefix + ["-G", host], capture_output=True, text=True, check=True)
    g = {}
    for line in o.stdout.splitlines():
        k, _, v = line.partition(" ")
        g.setdefault(k, v)
    return g


def make_paths(c, work):
    common = [
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "ConnectTimeout=60",
        "-o", "ServerAliveInterval=0",
    ]
    node = f"{c['user']}@node-1.{c['cluster']}"
    paths = []
    for spec in PATHS:
        if spec["kind"] in ("direct", "jump", "stunnel"):
            jump = ["-J", "bench-bastion"] if spec["kind"] == "jump" else []
            cfg, host, daemon = c["bench_ssh_config"], "bench-node", None
            if spec["kind"] == "stunnel":
                # The stunnel client daemon relays the session: its CPU is this path's "daemon".
                host, daemon = "bench-stunnel", c["stunnel_client_pid"]
        else:
            entry = c["paths"][spec["key"]]
            jump, cfg, host, daemon = [], entry["ssh_config"], node, entry.get("daemon_pid")
        p = Path(spec, ["ssh", "-F", cfg, "-T"] + jump + common,
                 ["scp", "-F", cfg, "-q"] + jump + common, host, daemon)
        if spec.get("preload"):
            p.env = dict(os.environ, LD_PRELOAD=c["nodelay_so"])
        paths.append(p)
    for p in paths:
        if p.kind in ("direct", "stunnel"):
            continue
        if p.kind == "jump":
            # What -J expands to (ssh -W through the bastion), written out so it can be wrapped.
            pc = f"ssh -F {shlex.quote(c['bench_ssh_config'])} -W '[%h]:%p' bench-bastion"
            base = [a for a in p.ssh if a not in ("-J", "bench-bastion")]
        else:
            pc = ssh_g(p.ssh, p.host)["proxycommand"]
            base = list(p.ssh)
        p.proxy_command = pc
        wrapped = (
            f"{shlex.quote(sys.executable)} {shlex.quote(SELF)} wrap --hwm --out "
            f"{shlex.quote(os.path.join(work, 'rss-' + p.key + '.json'))} -- {pc}"
        )
        p.ssh_wrapped = base + ["-o", f"ProxyCommand={wrapped}"]
    return paths


# ---------------------------------------------------------------------------------------------
# measurements


def run_quiet(argv, timeout=120, stdin=subprocess.DEVNULL, env=None):
    return subprocess.run(argv, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout,
                          env=env)


def sanity(paths, work):
    for p in paths:
        env = p.env
        nodelay_log = None
        if env and "LD_PRELOAD" in env:
            nodelay_log = os.path.join(work, "nodelay.log")
            env = dict(env, IDMUX_NODELAY_LOG=nodelay_log)
        o = subprocess.run(p.cmd("echo bench-ok"), stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
                           env=env)
        if o.returncode != 0 or b"bench-ok" not in o.stdout:
            raise SystemExit(f"bench: path {p.key} does not work: {o.stderr.decode(errors='replace').strip()}")
        if nodelay_log:
            # The shim must have set TCP_NODELAY on ssh's connection (one line per socket).
            try:
                with open(nodelay_log) as f:
                    lines = f.read().split("\n")
            except FileNotFoundError:
                lines = []
            if not any(l.endswith(" rc 0") for l in lines):
                raise SystemExit(f"bench: path {p.key}: the TCP_NODELAY shim did not run ({nodelay_log})")
        log(f"path {p.key}: ok")


def latency(paths, runs, warmup=2):
    res = {p.key: [] for p in paths}
    fails = {p.key: 0 for p in paths}
    errors = {}
    for i in range(warmup + runs):
        for p in paths:  # interleaved, so drift hits every path alike
            t0 = time.perf_counter_ns()
            o = run_quiet(p.cmd("true"), env=p.env)
            dt = (time.perf_counter_ns() - t0) / 1e6
            if i < warmup:
                continue
            if o.returncode == 0:
                res[p.key].append(dt)
            else:
                fails[p.key] += 1
                errors.setdefault(p.key, o.stderr.decode(errors="replace").strip()[:300])
    out = {}
    for p in paths:
        v = res[p.key]
        out[p.key] = {
            "runs": len(v),
            "fails": fails[p.key],
            "median_ms": statistics.median(v) if v else None,
            "p95_ms": pctl(v, 95) if v else None,
            "min_ms": min(v) if v else None,
            "max_ms": max(v) if v else None,
            "samples_ms": [round(x, 3) for x in v],
            "error": errors.get(p.key),
        }
        log(f"latency {p.key}: median {out[p.key]['median_ms']:.1f} ms, p95 {out[p.key]['p95_ms']:.1f} ms")
    return out


def wrapped_run(argv, work, tag, stdin=subprocess.DEVNULL, feed=None):
    """Run argv under `wrap --subreaper`; feed `feed` bytes of zeros to its stdin if given.
    Returns (wrap json, time the first MiB was taken by the command or None)."""
    out = os.path.join(work, f"cpu-{tag}.json")
    if os.path.exists(out):
        os.unlink(out)
    w = [sys.executable, SELF, "wrap", "--subreaper", "--out", out, "--"] + argv
    t_first = None
    if feed is None:
        o = subprocess.run(w, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=900)
        err = o.stderr
    else:
        proc = subprocess.Popen(w, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        chunk = bytes(MIB)
        left = feed
        fd = proc.stdin.fileno()
        try:
            while left > 0:
                mv = memoryview(chunk)[: min(MIB, left)]
                while len(mv):
                    n = os.write(fd, mv)
                    mv = mv[n:]
                left -= min(MIB, left)
                if t_first is None:
                    # The pipe holds 64 KiB: this 1 MiB write returns once ssh is reading.
                    t_first = time.monotonic()
        except BrokenPipeError:
            pass
        proc.stdin.close()
        err = proc.stderr.read()
        proc.wait(timeout=900)
    try:
        with open(out) as f:
            r = json.load(f)
    except FileNotFoundError:
        r = {"rc": -1}
    r["stderr"] = err.decode(errors="replace").strip()[:300]
    return r, t_first


def upload(p, work, tag, nbytes):
    """`nbytes` into `ssh host 'cat > /dev/null'` on path `p`: (wrap json, time the first MiB
    was taken, the daemon's CPU seconds, the machine's busy and stolen CPU seconds)."""
    d0 = proc_cpu_s(p.daemon) if p.daemon else 0.0
    s0 = proc_sleeps(p.daemon) if p.daemon and KIND.get(p.key) == "fdpass" else None
    m0 = machine_cpu_s()
    r, t_first = wrapped_run(p.cmd("cat > /dev/null"), work, f"{tag}-{p.key}", feed=nbytes)
    m1 = machine_cpu_s()
    d1 = proc_cpu_s(p.daemon) if p.daemon else 0.0
    s1 = proc_sleeps(p.daemon) if s0 is not None else None
    r["daemon_sleeps"] = s1 - s0 if s0 is not None and s1 is not None else None
    return r, t_first, d1 - d0, (m1[0] - m0[0], m1[1] - m0[1])


def throughput(paths, work, nbytes, runs):
    res = {p.key: [] for p in paths}
    for i in range(runs):
        for p in paths:
            r, t_first, dcpu, (mcpu, steal) = upload(p, work, "tp", nbytes)
            if r.get("rc") != 0:
                log(f"throughput {p.key}: failed: {r.get('stderr')}")
                res[p.key].append({"ok": False, "error": r.get("stderr")})
                continue
            wall = r["wall"]
            stream = None
            if t_first is not None and r["t_end"] > t_first:
                stream = (nbytes - MIB) / MIB / (r["t_end"] - t_first)
            res[p.key].append({
                "ok": True,
                "wall_s": wall,
                "mibps": nbytes / MIB / wall,
                "stream_mibps": stream,
                "cpu_s": r["utime"] + r["stime"],
                "daemon_cpu_s": dcpu,
                "daemon_sleeps": r.get("daemon_sleeps"),
                "machine_cpu_s": mcpu,
                "steal_s": steal,
                "reaped": r.get("reaped"),
            })
            log(f"throughput {p.key} run {i + 1}: {nbytes / MIB / wall:.0f} MiB/s end to end, "
                f"{stream or 0:.0f} MiB/s streaming, ssh tree CPU {r['utime'] + r['stime']:.2f} s, "
                f"daemon CPU {dcpu:.2f} s, machine CPU {mcpu:.2f} s (steal {steal:.2f} s)")
    out = {}
    for p in paths:
        ok = [x for x in res[p.key] if x["ok"]]
        if not ok:
            out[p.key] = {"runs": 0, "fails": len(res[p.key]), "error": res[p.key][0].get("error")}
            continue
        gib = nbytes / GIB
        out[p.key] = {
            "runs": len(ok),
            "fails": len(res[p.key]) - len(ok),
            "mibps": statistics.median(x["mibps"] for x in ok),
            "mibps_runs": [round(x["mibps"], 1) for x in ok],
            "stream_mibps": statistics.median(x["stream_mibps"] for x in ok if x["stream_mibps"]),
            "cpu_s_per_gib": statistics.median(x["cpu_s"] for x in ok) / gib,
            "daemon_cpu_s_per_gib": statistics.median(x["daemon_cpu_s"] for x in ok) / gib,
            "daemon_sleeps_per_gib": (statistics.median(x["daemon_sleeps"] for x in ok) / gib
                                      if all(x["daemon_sleeps"] is not None for x in ok) else None),
            "machine_cpu_s_per_gib": statistics.median(x["machine_cpu_s"] for x in ok) / gib,
            "steal_s": sum(x["steal_s"] for x in ok),
            "wall_s": sum(x["wall_s"] for x in ok),
        }
        out[p.key]["total_cpu_s_per_gib"] = out[p.key]["cpu_s_per_gib"] + out[p.key]["daemon_cpu_s_per_gib"]
    return out


def set_cpus(pid, cpus):
    """Put every thread of `pid` on `cpus` (threads and children it makes later inherit it)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return
    for t in tids:
        try:
            os.sched_setaffinity(t, cpus)
        except OSError:
            pass


def client_side_split(paths, c, work, nbytes, runs):
    """The client machine's CPU per GiB as if the proxy ran elsewhere: the client side (the
    harness, ssh and its ProxyCommand, the daemon or the stunnel client) on CPU 0, the server
    side (the dev cluster's proxy and auth, the node's sshd, the stunnel server) on CPU 1, for
    `runs` interleaved uploads per path. Every affinity is put back afterwards."""
    every = os.sched_getaffinity(0)
    if len(every) < 2 or not {0, 1} <= every:
        return None
    server = [c.get("cluster_pid"), c.get("node_pid"), c.get("stunnel_server_pid")]
    client = [p.daemon for p in paths if p.daemon]
    res = {p.key: [] for p in paths}
    try:
        for pid in filter(None, server):
            set_cpus(pid, {1})
        for pid in client:
            set_cpus(pid, {0})
        os.sched_setaffinity(0, {0})
        for i in range(runs):
            for p in paths:
                r, _, dcpu, _ = upload(p, work, "split", nbytes)
                if r.get("rc") != 0:
                    log(f"client side, split cores, {p.key}: failed: {r.get('stderr')}")
                    continue
                res[p.key].append({"mibps": nbytes / MIB / r["wall"], "ssh_cpu_s": r["utime"] + r["stime"],
                                   "daemon_cpu_s": dcpu})
                log(f"client side, split cores, {p.key} run {i + 1}: {nbytes / MIB / r['wall']:.0f} MiB/s, "
                    f"ssh tree CPU {r['utime'] + r['stime']:.2f} s, daemon CPU {dcpu:.2f} s")
    finally:
        os.sched_setaffinity(0, every)
        for pid in filter(None, server + client):
            set_cpus(pid, every)
    gib = nbytes / GIB
    out = {}
    for k, v in res.items():
        if not v:
            continue
        ssh = statistics.median(x["ssh_cpu_s"] for x in v) / gib
        dmn = statistics.median(x["daemon_cpu_s"] for x in v) / gib
        out[k] = {"runs": len(v), "mibps": statistics.median(x["mibps"] for x in v),
                  "ssh_cpu_s_per_gib": ssh, "daemon_cpu_s_per_gib": dmn, "total_cpu_s_per_gib": ssh + dmn}
    return out


def scp_bench(paths, work, src, nbytes, runs):
    res = {p.key: [] for p in paths}
    for i in range(runs):
        for p in paths:
            remote = os.path.join(work, f"scp-target-{p.key}")
            t0 = time.perf_counter()
            o = run_quiet(p.scp + [src, f"{p.host}:{remote}"], timeout=900)
            dt = time.perf_counter() - t0
            ok = o.returncode == 0 and os.path.getsize(remote) == nbytes
            if ok:
                res[p.key].append(nbytes / MIB / dt)
                log(f"scp {p.key} run {i + 1}: {nbytes / MIB / dt:.0f} MiB/s")
            else:
                log(f"scp {p.key}: failed: {o.stderr.decode(errors='replace').strip()[:300]}")
            try:
                os.unlink(remote)
            except FileNotFoundError:
                pass
    return {p.key: {"runs": len(res[p.key]), "mibps": statistics.median(res[p.key]) if res[p.key] else None,
                    "mibps_runs": [round(x, 1) for x in res[p.key]]}
            for p in paths}


def storm(paths, n_of):
    """`n_of(path)` simultaneous `ssh host true` per path, one path after the other."""
    out = {}
    for p in paths:
        n = n_of(p)
        time.sleep(2)
        t0 = time.perf_counter()
        procs = [subprocess.Popen(p.cmd("true"), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE) for _ in range(n)]
        ok, first_err = 0, None
        for pr in procs:
            try:
                _, err = pr.communicate(timeout=300)
            except subprocess.TimeoutExpired:
                pr.kill()
                _, err = pr.communicate()
            if pr.returncode == 0:
                ok += 1
            elif first_err is None:
                first_err = err.decode(errors="replace").strip()[:300]
        wall = time.perf_counter() - t0
        out[p.key] = {"n": n, "ok": ok, "wall_s": wall, "first_error": first_err}
        log(f"storm {p.key}: {ok}/{n} in {wall:.2f} s" + (f" (first error: {first_err})" if first_err else ""))
    return out


def open_sessions(p, n, hold_timeout=180):
    """n sessions held open by a remote `read`; memory (the path's daemon if it has one, else
    its relay processes) sampled once all are up, then all are closed."""
    daemon_pid = p.daemon
    d_rss0, d_pss0 = (proc_status_kib(daemon_pid), proc_pss_kib(daemon_pid)) if daemon_pid else (None, None)
    # The remote shell waits on its stdin (our pipe): closing the pipe ends the session, and a
    # dropped connection ends it too, so nothing is left running on the node (a remote
    # `sleep` would outlive its ssh).
    procs = [subprocess.Popen(p.cmd("echo up; read x"), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(n)]
    sel = selectors.DefaultSelector()
    for pr in procs:
        os.set_blocking(pr.stdout.fileno(), False)
        sel.register(pr.stdout, selectors.EVENT_READ, pr)
    up, dead = 0, 0
    deadline = time.monotonic() + hold_timeout
    t0 = time.monotonic()
    while up + dead < n and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1):
            data = key.fileobj.read()
            sel.unregister(key.fileobj)
            if data and b"up" in data:
                up += 1
            else:
                dead += 1
    t_up = time.monotonic() - t0
    time.sleep(1)
    pids = {pr.pid for pr in procs}
    relays = list(children_of(pids))
    r = {
        "n": n,
        "up": up,
        "failed": dead,
        "all_up_s": t_up,
        "daemon_rss_kib": proc_status_kib(daemon_pid) if daemon_pid else None,
        "daemon_hwm_kib": proc_status_kib(daemon_pid, "VmHWM") if daemon_pid else None,
        "daemon_pss_kib": proc_pss_kib(daemon_pid) if daemon_pid else None,
        "daemon_rss_before_kib": d_rss0,
        "daemon_pss_before_kib": d_pss0,
        "relay_procs": len(relays),
        "relay_rss_kib": sum(proc_status_kib(c) or 0 for c in relays),
        "relay_pss_kib": sum(proc_pss_kib(c) or 0 for c in relays),
    }
    if daemon_pid:
        r["per_session_pss_kib"] = ((r["daemon_pss_kib"] or 0) - (d_pss0 or 0)) / max(up, 1)
        r["per_session_rss_kib"] = ((r["daemon_rss_kib"] or 0) - (d_rss0 or 0)) / max(up, 1)
    elif relays:
        r["per_session_pss_kib"] = r["relay_pss_kib"] / len(relays)
        r["per_session_rss_kib"] = r["relay_rss_kib"] / len(relays)
    first_err = None
    for pr in procs:
        pr.stdin.close()  # EOF: the remote `read` returns, the session ends
    t_close = time.monotonic() + 60
    for pr in procs:
        try:
            pr.wait(timeout=max(1, t_close - time.monotonic()))
        except subprocess.TimeoutExpired:
            pr.terminate()
            try:
                pr.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pr.kill()
                pr.wait()
        if first_err is None and pr.returncode != 0:
            first_err = pr.stderr.read().decode(errors="replace").strip()[:300]
        pr.stdout.close()
        pr.stderr.close()
    r["first_error"] = first_err
    log(f"sessions {p.key}: {up}/{n} up in {t_up:.1f} s; daemon RSS {r['daemon_rss_kib']} KiB "
        f"(PSS {r['daemon_pss_kib']}); {len(relays)} relay processes: RSS {r['relay_rss_kib']} KiB, "
        f"PSS {r['relay_pss_kib']} KiB in all; per session {r.get('per_session_pss_kib') or 0:.0f} KiB PSS")
    return r


def v1_sessions(p, fd_argv, n, hold_timeout=90, settle_deadline=30, window=64):
    """n sessions through the path's daemon as raw v1 requests: idmux-fdpass is spawned as ssh
    would (stdout one end of a socketpair), the passed socket is kept and the node's SSH banner
    read from it; all are held open, the daemon's memory sampled, then all closed. No ssh: the
    node's sshd holds each as an unauthenticated connection (MaxStartups 1000, LoginGraceTime
    120 s), so the sessions are held for under `hold_timeout` s.

    Paced: at most `window` sessions wait for their banner at once. sshd's listen backlog is
    128 (OpenSSH's SSH_LISTEN_BACKLOG, not configurable) and it forks a process per
    connection, so a burst of 1,000 connects overflowed its accept queue: with SYN cookies on
    (Linux's default) the kernel drops the handshake's last ACK while the dev proxy's side
    counts the connection open, and a server-speaks-first protocol then waits for a banner
    that never comes (run of 2026-12-03 18:10: 858 and 653 of 1,000 up;
    `nstat TcpExtListenOverflows`). That is the node's kernel, not the relay, and the storm
    measures bursts; this measures memory. After closing, the daemon's RSS
    is polled until it is back within 2 MiB of its RSS before the test (it trims its heap every
    5 s when more than 2 MiB are free), or `settle_deadline` s pass."""
    pid = p.daemon
    rss0, pss0 = proc_status_kib(pid), proc_pss_kib(pid)
    devnull = os.open("/dev/null", os.O_RDWR)
    sel = selectors.DefaultSelector()
    held, spawn_fail = [], 0
    t0 = time.monotonic()
    deadline = t0 + hold_timeout
    batch = 32  # idmux-fdpass processes in flight at once
    up, dead = 0, 0

    def wait_banners(pending_max):
        """Read banners until at most `pending_max` sockets still wait for theirs."""
        nonlocal up, dead
        while len(held) - up - dead > pending_max and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1):
                try:
                    data = key.fileobj.recv(256)
                except OSError:
                    data = b""
                sel.unregister(key.fileobj)
                if data.startswith(b"SSH-"):
                    up += 1
                else:
                    dead += 1

    i = 0
    while i < n:
        wait_banners(max(window - batch, 0))
        kids = []
        for _ in range(min(batch, n - i)):
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            cpid = os.posix_spawn(fd_argv[0], fd_argv, os.environ, file_actions=[
                (os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, b.fileno(), 1),
                (os.POSIX_SPAWN_DUP2, devnull, 2)])
            b.close()
            kids.append((cpid, a))
            i += 1
        for cpid, a in kids:
            _, status, _ = os.wait4(cpid, 0)
            fds = []
            if os.waitstatus_to_exitcode(status) == 0:
                a.settimeout(10)
                try:
                    _, fds, _, _ = socket.recv_fds(a, 16, 1)
                except OSError:
                    fds = []
            a.close()
            if not fds:
                spawn_fail += 1
                continue
            s_ = socket.socket(fileno=fds[0])
            s_.setblocking(False)
            held.append(s_)
            sel.register(s_, selectors.EVENT_READ)
    wait_banners(0)
    t_up = time.monotonic() - t0
    time.sleep(1)
    r = {
        "n": n, "up": up, "failed": n - up, "all_up_s": t_up, "how": "v1",
        "daemon_rss_kib": proc_status_kib(pid),
        "daemon_hwm_kib": proc_status_kib(pid, "VmHWM"),
        "daemon_pss_kib": proc_pss_kib(pid),
        "daemon_rss_before_kib": rss0,
        "daemon_pss_before_kib": pss0,
        "daemon_threads": len(os.listdir(f"/proc/{pid}/task")),
        "relay_procs": 0,
    }
    r["per_session_pss_kib"] = ((r["daemon_pss_kib"] or 0) - (pss0 or 0)) / max(up, 1)
    r["per_session_rss_kib"] = ((r["daemon_rss_kib"] or 0) - (rss0 or 0)) / max(up, 1)
    r["first_error"] = (f"{spawn_fail} idmux-fdpass runs passed no socket; " if spawn_fail else "") + \
        (f"{dead} sockets closed before the node's banner" if dead else "") or None
    for s_ in held:
        s_.close()
    os.close(devnull)
    t_close = time.monotonic()
    after = proc_status_kib(pid)
    while time.monotonic() - t_close < settle_deadline:
        after = proc_status_kib(pid)
        if after is not None and rss0 is not None and after <= rss0 + 2048:
            break
        time.sleep(0.25)
    r["daemon_rss_after_kib"] = after
    r["settle_s"] = time.monotonic() - t_close
    r["settled"] = after is not None and rss0 is not None and after <= rss0 + 2048
    log(f"v1 sessions {p.key}: {up}/{n} up in {t_up:.1f} s; daemon RSS {rss0} -> {r['daemon_rss_kib']} KiB "
        f"(HWM {r['daemon_hwm_kib']}), {r['daemon_threads']} threads; after closing {after} KiB "
        f"{'within 2 MiB of before' if r['settled'] else 'NOT back within 2 MiB'} after {r['settle_s']:.1f} s")
    return r


def thread_cpu(pid):
    """{tid: utime+stime seconds} of a process's live threads."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for t in tids:
        try:
            with open(f"/proc/{pid}/task/{t}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            out[int(t)] = (int(rest[11]) + int(rest[12])) / CLK_TCK
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
    return out


def aggregate(paths, nbytes, streams):
    """`streams` transfers of `nbytes` each into `ssh host 'cat > /dev/null'` at once, per path;
    aggregate MiB/s (all bytes / wall time until the last ssh exits), and for a path with a
    relay daemon its CPU per thread over the transfer (/proc/PID/task/*/stat, sampled every
    0.2 s so threads that end before the transfer does are counted too)."""
    out = {}
    for p in paths:
        time.sleep(1)
        d0 = proc_cpu_s(p.daemon) if p.daemon else None
        th0 = thread_cpu(p.daemon) if p.daemon else {}
        last = dict(th0)
        t0 = time.monotonic()
        feeders, procs = [], []
        for _ in range(streams):
            f = subprocess.Popen(["head", "-c", str(nbytes), "/dev/zero"], stdout=subprocess.PIPE)
            pr = subprocess.Popen(p.cmd("cat > /dev/null"), stdin=f.stdout, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, env=p.env)
            f.stdout.close()
            feeders.append(f)
            procs.append(pr)
        while any(pr.poll() is None for pr in procs):
            if p.daemon:
                last.update(thread_cpu(p.daemon))
            if time.monotonic() - t0 > 900:
                for pr in procs:
                    pr.kill()
            time.sleep(0.2)
        wall = time.monotonic() - t0
        for f in feeders:
            f.wait()
        ok = sum(1 for pr in procs if pr.returncode == 0)
        err = next((pr.stderr.read().decode(errors="replace").strip()[:300] for pr in procs if pr.returncode), None)
        for pr in procs:
            pr.stderr.close()
        r = {"streams": streams, "ok": ok, "bytes_each": nbytes, "wall_s": wall,
             "mibps": ok * nbytes / MIB / wall, "error": err}
        if p.daemon:
            last.update(thread_cpu(p.daemon))
            total = proc_cpu_s(p.daemon) - d0
            per = sorted(((last[t] - th0.get(t, 0.0)) for t in last), reverse=True)
            per = [x for x in per if x > 0]
            r.update({
                "daemon_cpu_s": total,
                "daemon_cpu_s_per_gib": total / (ok * nbytes / GIB) if ok else None,
                "thread_cpu_s": [round(x, 3) for x in per],
                "threads_seen": len(last),
                "threads_20pct": sum(1 for x in per if total > 0 and x >= 0.2 * total),
                "busiest_share": per[0] / total if per and total > 0 else None,
            })
        out[p.key] = r
        log(f"aggregate {p.key}: {ok}/{streams} ok, {r['mibps']:.0f} MiB/s"
            + (f"; relay CPU {r['daemon_cpu_s']:.2f} s over {r['threads_seen']} threads, "
               f"{r['threads_20pct']} with >= 20%, busiest {100 * (r['busiest_share'] or 0):.0f}%"
               if p.daemon else "") + (f" (first error: {err})" if err else ""))
    return out


def relay_limit(hop, nbytes=GIB, runs=3):
    """The least CPU a relay can spend per GiB in this run: one AES-GCM pass (`openssl speed`,
    user CPU per byte at 16 KiB, TLS's record size) plus its end of two socket hops (benches/hop.c:
    a unix socket, which the daemon reads the session from, and loopback TCP, which it writes the
    TLS records to), medians of `runs`. The hops are measured with both ends on one core, so they
    hold the bytes' own cost (copies, the TCP stack) and no waking across cores, which a relay
    pays per wait and not per byte; a hop's CPU is split evenly between its two ends,
    because where the kernel charges loopback TCP's receive path (the sender's softirq, or the
    reader when it holds the socket) changes from run to run while the sum does not. The same
    hops pinned to two cores, and a byte's round trip across cores (`hop wake`, CPU per side),
    are measured beside it, to show what the limit leaves out."""
    out = {}
    for alg in ("aes-256-gcm", "aes-128-gcm"):
        o = subprocess.run(["openssl", "speed", "-evp", alg, "-seconds", "2", "-bytes", "16384", "-mr"],
                           capture_output=True, text=True, timeout=120)
        bps = None
        for line in (o.stdout + o.stderr).splitlines():
            if line.startswith("+F:"):
                bps = float(line.split(":")[-1])  # bytes per second of user CPU, 16 KiB blocks
        out[alg] = {"bytes_per_s": bps, "s_per_gib": GIB / bps if bps else None}
    allowed = sorted(os.sched_getaffinity(0))
    first, second = allowed[0], allowed[1] if len(allowed) > 1 else allowed[0]
    g = nbytes / GIB

    def hop_runs(args):
        rs = []
        for _ in range(runs):
            o = subprocess.run([hop] + args, capture_output=True, text=True, timeout=300)
            if o.returncode == 0:
                rs.append(json.loads(o.stdout))
            else:
                log(f"relay limit: hop {' '.join(args)}: {o.stderr.strip()[:200]}")
        return rs

    def per_gib(rs):
        m = lambda f: statistics.median(f(x) for x in rs) / g if rs else None
        return {"runs": len(rs), "writer_s_per_gib": m(lambda x: x["writer_cpu_s"]),
                "reader_s_per_gib": m(lambda x: x["reader_cpu_s"]),
                "both_s_per_gib": m(lambda x: x["writer_cpu_s"] + x["reader_cpu_s"])}

    hops, hops2 = {}, {}
    for kind in ("unix", "tcp"):
        # Writer and reader pinned: both on one core for the limit, on two for the comparison.
        hops[kind] = per_gib(hop_runs([kind, str(nbytes), "65536", str(first), str(first)]))
        hops2[kind] = per_gib(hop_runs([kind, str(nbytes), "65536", str(first), str(second)]))
    out["hops"], out["hops_two_cores"] = hops, hops2
    # A byte's round trip across cores, CPU per side: each side wakes the other, sleeps and is
    # woken once per round trip.
    n = 10000
    ws = hop_runs(["wake", str(n)])
    out["wake_us"] = (statistics.median((x["writer_cpu_s"] + x["reader_cpu_s"]) / (2 * n) for x in ws) * 1e6
                      if ws else None)
    half = lambda v: v / 2 if v is not None else None
    parts = [out["aes-128-gcm"]["s_per_gib"], half(hops["unix"]["both_s_per_gib"]),
             half(hops["tcp"]["both_s_per_gib"])]
    out["parts"] = {"aes": parts[0], "unix": parts[1], "tcp": parts[2]}
    out["s_per_gib"] = sum(parts) if all(x is not None for x in parts) else None
    log(f"relay limit: AES-128-GCM {fmt(parts[0], 3)} s/GiB + half a unix hop {fmt(parts[1], 3)} + half a TCP "
        f"hop {fmt(parts[2], 3)} (one core) = {fmt(out['s_per_gib'], 3)} s/GiB (AES-256-GCM "
        f"{fmt(out['aes-256-gcm']['s_per_gib'], 3)}; on two cores, unix hop {fmt(hops2['unix']['both_s_per_gib'], 3)}, "
        f"TCP {fmt(hops2['tcp']['both_s_per_gib'], 3)}; a byte's round trip across cores "
        f"{fmt(out['wake_us'], 1)} us per side)")
    return out


def proxy_rss(p, work, transfer_bytes):
    """Peak RSS (VmHWM) of the path's ProxyCommand process over 3 `ssh true` and one transfer."""
    out = os.path.join(work, f"rss-{p.key}.json")
    peaks, fails = [], 0
    for i in range(4):
        if os.path.exists(out):
            os.unlink(out)
        if i < 3:
            o = run_quiet(p.ssh_wrapped + [p.host, "true"])
        else:
            feeder = subprocess.Popen(["head", "-c", str(transfer_bytes), "/dev/zero"], stdout=subprocess.PIPE)
            o = subprocess.run(p.ssh_wrapped + [p.host, "cat > /dev/null"], stdin=feeder.stdout,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
            feeder.stdout.close()
            feeder.wait()
        # ssh does not wait for a stdio ProxyCommand: give the wrapper time to write its report.
        for _ in range(500):
            if os.path.exists(out):
                break
            time.sleep(0.01)
        if o.returncode != 0 or not os.path.exists(out):
            fails += 1
            log(f"proxy rss {p.key}: run {i} failed: {o.stderr.decode(errors='replace').strip()[:300]}")
            continue
        with open(out) as f:
            h = json.load(f).get("hwm_kib")
        if h:
            peaks.append(h)
    r = {"peak_kib": max(peaks) if peaks else None, "runs": len(peaks), "fails": fails}
    log(f"ProxyCommand peak RSS {p.key}: {r['peak_kib']} KiB over {len(peaks)} runs")
    return r


SENDMSG_NR = {"x86_64": 46, "aarch64": 211}.get(platform.machine())


def fdpass_harness(argv, runs):
    """Spawn idmux-fdpass with stdout = one end of a socketpair, as ssh does, `runs` times.
    Times: spawn -> exit (wait4), and spawn -> SSH banner readable on the passed socket."""
    devnull = os.open("/dev/null", os.O_RDWR)

    def one(av, want_fd):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        t0 = time.perf_counter_ns()
        pid = os.posix_spawn(av[0], av, os.environ, file_actions=[
            (os.POSIX_SPAWN_DUP2, devnull, 0),
            (os.POSIX_SPAWN_DUP2, b.fileno(), 1),
            (os.POSIX_SPAWN_DUP2, devnull, 2),
        ])
        _, status, ru = os.wait4(pid, 0)
        t_exit = time.perf_counter_ns() - t0
        b.close()
        t_banner, ok = None, os.waitstatus_to_exitcode(status) == 0
        if want_fd and ok:
            a.settimeout(10)
            try:
                _, fds, _, _ = socket.recv_fds(a, 16, 1)
            except OSError:
                fds = []
            if fds:
                s = socket.socket(fileno=fds[0])
                s.settimeout(10)
                try:
                    ok = s.recv(64).startswith(b"SSH-")
                except OSError:
                    ok = False
                t_banner = time.perf_counter_ns() - t0
                s.close()
            else:
                ok = False
        a.close()
        return ok, t_exit / 1e6, (t_banner / 1e6 if t_banner else None), (ru.ru_utime + ru.ru_stime) * 1e3

    def hwm_blocked(av):
        """VmHWM of idmux-fdpass at its last step: with the socketpair's send buffer full, its
        sendmsg of the connection to stdout blocks, after all its other work is done."""
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        b.setblocking(False)
        for size in (65536, 4096, 256, 1):
            try:
                while True:
                    b.send(bytes(size))
            except BlockingIOError:
                pass
        pid = os.posix_spawn(av[0], av, os.environ, file_actions=[
            (os.POSIX_SPAWN_DUP2, devnull, 0),
            (os.POSIX_SPAWN_DUP2, b.fileno(), 1),
            (os.POSIX_SPAWN_DUP2, devnull, 2),
        ])
        b.close()
        blocked = False
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/syscall") as f:
                    sc = f.read().split()
            except OSError:
                sc = []
            if SENDMSG_NR is not None and len(sc) > 1 and sc[0] == str(SENDMSG_NR) and int(sc[1], 16) == 1:
                blocked = True
                break
            if SENDMSG_NR is None and time.monotonic() > deadline - 4.8:
                break
            time.sleep(0.001)
        hwm = proc_status_kib(pid, "VmHWM")
        a.settimeout(10)
        got = False
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(a, 1 << 20, 1)
            except OSError:
                break
            for fd in fds:
                os.close(fd)
                got = True
            if got or not data:
                break
        os.wait4(pid, 0)
        a.close()
        return hwm if (blocked or SENDMSG_NR is None) and got else None

    hwms = [h for h in (hwm_blocked(argv) for _ in range(10)) if h]
    # Interleaved, as the latency runs are: /bin/true, then idmux-fdpass, `runs` times (after 5
    # warm-up pairs), so both see the same machine. Each spawn starts after a 20 ms pause that
    # lets the last session's teardown (daemon, dev proxy, the node's sshd, all on these cores)
    # finish: a spawn is timed against the work it causes, not the last one's.
    base, res = [], []
    for _ in range(runs + 5):
        time.sleep(0.02)
        base.append(one(["/bin/true"], False))
        time.sleep(0.02)
        res.append(one(argv, True))
    base, res = base[5:], res[5:]
    os.close(devnull)
    okr = [r for r in res if r[0]]
    out = {
        "runs": len(res),
        "ok": len(okr),
        "exit_median_ms": statistics.median(r[1] for r in okr) if okr else None,
        "exit_ms": [round(r[1], 4) for r in okr],
        # The process's own CPU time (wait4 rusage): what it costs, without the time it
        # waits for a CPU while the daemon, proxy and node (woken by its request) run.
        "cpu_median_ms": statistics.median(r[3] for r in okr) if okr else None,
        "true_cpu_median_ms": statistics.median(r[3] for r in base),
        "exit_p95_ms": pctl([r[1] for r in okr], 95) if okr else None,
        "banner_median_ms": statistics.median(r[2] for r in okr) if okr else None,
        "peak_rss_kib": max(hwms) if hwms else None,
        "peak_rss_runs": len(hwms),
        "true_exit_median_ms": statistics.median(r[1] for r in base),
    }
    log(f"idmux-fdpass alone: {out['ok']}/{runs} ok, exit median {out['exit_median_ms']:.3f} ms "
        f"(/bin/true {out['true_exit_median_ms']:.3f} ms), SSH banner in {out['banner_median_ms']:.2f} ms, "
        f"peak RSS (VmHWM) {out['peak_rss_kib']} KiB")
    return out


# ---------------------------------------------------------------------------------------------
# report


def machine_budget(tp, k):
    """Why path `k`'s throughput ratio is what it is: the machine's CPU per GiB (every process,
    both cores) on `k` against direct's, how many of the cores each kept busy (when both are
    busy, throughput is about the inverse of that CPU ratio), and the hypervisor's steal over
    the runs, which slows whichever run it lands in."""
    mc = lambda x: (tp.get(x) or {}).get("machine_cpu_s_per_gib")
    if not k or not mc(k) or not mc("direct"):
        return ""
    st = sum((tp.get(x) or {}).get("steal_s") or 0 for x in tp)
    wall = sum((tp.get(x) or {}).get("wall_s") or 0 for x in tp)
    busy = lambda x: (tp[x]["mibps"] / 1024 * mc(x)) if tp[x].get("mibps") else None
    return (f"; the machine's CPU per GiB, every process on both cores: {SHORT.get(k, k)} {fmt(mc(k), 2)} s = "
            f"{fmt(mc(k) / mc('direct'), 2)}x direct's {fmt(mc('direct'), 2)} s, with {fmt(busy(k), 2)} and "
            f"{fmt(busy('direct'), 2)} of the 2 cores busy; CPU stolen by the hypervisor over the transfers: "
            f"{fmt(st, 1)} s in {fmt(wall, 0)} s")


def machine_info():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "openssh": sh(["ssh", "-V"]),
        "rustc": sh(["rustc", "--version"]),
        "python": platform.python_version(),
    }


def fmt(v, nd=1):
    if v is None:
        return "n/a"
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    return f"{v:.{nd}f}"


def ratio(v, d):
    if v is None or d is None or d == 0:
        return None
    return v / d


def build_rows(R, order):
    """Rows of (figure, {path: (value string, ratio or None)}). Ratios are against direct, the
    latency rows' against direct NODELAY (when it ran)."""
    rows = []
    P = R["params"]
    lat, tp, scp, st, mem, prss, fp = (R["latency"], R["throughput"], R["scp"], R["storm"], R["sessions"],
                                       R["proxy_rss"], R["fdpass_alone"])
    lat_base = LAT_BASE if (lat.get(LAT_BASE) or {}).get("median_ms") else "direct"

    def add(name, table, get, nd=1, with_ratio=True, base="direct"):
        cells = {}
        have = lambda k: k in table and get(k) is not None
        d = get(base) if have(base) else None
        for k in order:
            if not have(k):
                cells[k] = ("-", None)
                continue
            v = get(k)
            cells[k] = (fmt(v, nd), ratio(v, d) if with_ratio and k not in ("direct", base) else None)
        rows.append((name, cells))

    def cells_only(name, get):
        rows.append((name, {k: (get(k), None) for k in order}))

    size = (f"{P['throughput_bytes'] / GIB:g} GiB" if P["throughput_bytes"] >= GIB
            else f"{P['throughput_bytes'] // MIB} MiB")
    lb = SHORT.get(lat_base, lat_base)
    add(f"latency `ssh host true`, median (ms; ratio to {lb})", lat, lambda k: lat[k]["median_ms"], base=lat_base)
    add(f"latency `ssh host true`, p95 (ms; ratio to {lb})", lat, lambda k: lat[k]["p95_ms"], base=lat_base)
    add(f"throughput, {size} into `ssh host 'cat > /dev/null'`, end to end (MiB/s)", tp,
        lambda k: tp[k].get("mibps"), 0)
    add("throughput, same transfer, streaming phase only (MiB/s)", tp, lambda k: tp[k].get("stream_mibps"), 0)
    add(f"scp upload of a {P['scp_bytes'] // MIB} MiB file (MiB/s)", scp, lambda k: scp[k]["mibps"], 0)
    add("client CPU, ssh process tree (s per GiB)", tp, lambda k: tp[k].get("cpu_s_per_gib"), 2)
    add("client-side CPU: ssh tree + the daemon / stunnel client (s per GiB; ratio to direct's ssh)", tp,
        lambda k: tp[k].get("total_cpu_s_per_gib"), 2)
    sp = R.get("split") or {}
    add("client-side CPU with the client on one core and proxy + node on the other (s per GiB; ratio to direct's ssh)",
        sp, lambda k: sp[k].get("total_cpu_s_per_gib"), 2)
    add("relay CPU per GiB, same split: the daemon / stunnel client (s)", sp,
        lambda k: sp[k].get("daemon_cpu_s_per_gib") if KIND.get(k) in ("fdpass", "stunnel") else None, 2)
    add("machine CPU: every process and the kernel, both cores (s per GiB)", tp,
        lambda k: tp[k].get("machine_cpu_s_per_gib"), 2)
    add("relay CPU per GiB relayed: the daemon / stunnel client (s)", tp,
        lambda k: tp[k].get("daemon_cpu_s_per_gib") if KIND.get(k) in ("fdpass", "stunnel") else None, 2)
    if st:
        ns = sorted({v["n"] for v in st.values()}, reverse=True)
        cells_only(f"storm: {' / '.join(map(str, ns))} simultaneous `ssh host true`, successes",
                   lambda k: f"{st[k]['ok']}/{st[k]['n']}" if k in st else "-")
        # Paths ran different storm sizes: no ratios for the wall time.
        add("storm: wall time (s)", st, lambda k: st[k]["wall_s"], 2, with_ratio=len(ns) == 1)

    def daemon_cell(v):
        return fmt(v / 1024, 1) if v is not None else "-"

    cells_only("daemon RSS, idle at the start (MiB)", lambda k: daemon_cell((R["daemon_idle_kib"] or {}).get(k))
               if KIND.get(k) == "fdpass" else "-")
    fd_n = next((m["n"] for k, m in mem.items() if KIND.get(k) == "fdpass"), None)
    cells_only("daemon RSS before the sessions test (MiB)",
               lambda k: daemon_cell((mem.get(k) or {}).get("daemon_rss_before_kib")) if KIND.get(k) == "fdpass" else "-")
    cells_only(f"daemon RSS with {fd_n} open sessions (MiB)",
               lambda k: daemon_cell((mem.get(k) or {}).get("daemon_rss_kib")) +
               (f" ({mem[k]['up']}/{mem[k]['n']} up)" if KIND.get(k) == "fdpass" and k in mem else ""))

    def after(k):
        m = mem.get(k) or {}
        if KIND.get(k) != "fdpass" or m.get("daemon_rss_after_kib") is None:
            return "-"
        d = (m["daemon_rss_after_kib"] - (m.get("daemon_rss_before_kib") or 0)) / 1024
        return f"{m['daemon_rss_after_kib'] / 1024:.1f} ({d:+.1f} in {m.get('settle_s', 0):.1f} s)"

    cells_only("daemon RSS after they closed (MiB; change from before, time to settle)", after)

    def per_session(k):
        m = mem.get(k)
        if not m or m.get("per_session_pss_kib") is None:
            return "-"
        how = "daemon growth" if m.get("daemon_rss_kib") is not None else f"{m['relay_procs']} procs"
        return f"{m['per_session_pss_kib']:.0f} ({how}, {m['up']}/{m['n']} up)"

    cells_only("relay memory per open session (KiB PSS)", per_session)

    def peak(k):
        if KIND.get(k) == "fdpass":
            v = (fp.get(k) or {}).get("peak_rss_kib")
        else:
            v = (prss.get(k) or {}).get("peak_kib")
        return fmt(v / 1024, 2) if v else "-"

    cells_only("ProxyCommand process peak RSS (MiB)", peak)
    return rows


def best(keys, value, higher=True):
    """The key among `keys` with the best (highest, or lowest) non-None value, or None."""
    have = [k for k in keys if value(k) is not None]
    if not have:
        return None
    return (max if higher else min)(have, key=value)


def goals(R, order=ORDER):
    """Issue 7's goals (those issue 18 did not replace), each judged on the best multiplexer
    transport for it (the figure names which, and gives the other transports' figures too)."""
    lat, tp, scp, st, mem, fp = (R["latency"], R["throughput"], R["scp"], R["storm"], R["sessions"],
                                 R["fdpass_alone"])
    mux = [k for k in keys_of("fdpass", order) if k in lat]
    G = []

    def g(text, ok, figure):
        G.append({"goal": text, "met": bool(ok), "figure": figure})

    def each(fig, first):
        """`first`'s figure, then the other multiplexer paths' in parentheses."""
        rest = [f"{SHORT[k]} {fig(k)}" for k in mux if k != first]
        return f"{SHORT[first]}: {fig(first)}" + (f" ({'; '.join(rest)})" if rest else "")

    d, j = lat["direct"]["median_ms"], lat["jump"]["median_ms"]
    lm = lambda k: lat[k]["median_ms"]
    k = best(mux, lm, higher=False)
    r = ratio(lm(k), d) if k else None
    g("multiplexer latency (median) at most 1.15x direct", r is not None and r <= 1.15,
      each(lambda x: f"{fmt(lm(x))} ms = {fmt(ratio(lm(x), d), 2)}x", k) + f" vs direct {fmt(d)} ms")
    g("multiplexer latency (median) below ProxyJump", k is not None and j is not None and lm(k) < j,
      each(lambda x: f"{fmt(lm(x))} ms", k) + f" vs ProxyJump {fmt(j)} ms")
    tm = lambda x: tp[x].get("mibps")
    k = best(mux, tm)
    r = ratio(tm(k), tm("direct")) if k else None
    g("multiplexer throughput (`cat`, end to end) at least 0.8x direct", r is not None and r >= 0.8,
      each(lambda x: f"{fmt(tm(x), 0)} MiB/s = {fmt(ratio(tm(x), tm('direct')), 2)}x", k)
      + f" vs direct {fmt(tm('direct'), 0)} MiB/s")
    sm = lambda x: scp[x].get("mibps")
    k = best(mux, sm)
    r = ratio(sm(k), sm("direct")) if k else None
    g("multiplexer throughput (scp) at least 0.8x direct", r is not None and r >= 0.8,
      each(lambda x: f"{fmt(sm(x), 0)} MiB/s = {fmt(ratio(sm(x), sm('direct')), 2)}x", k)
      + f" vs direct {fmt(sm('direct'), 0)} MiB/s")
    # idmux-fdpass does the same work whatever the daemon's transport: all its runs together.
    runs = [v for x in mux for v in (fp.get(x) or {}).get("exit_ms", [])]
    e = statistics.median(runs) if runs else None
    t = statistics.median((fp.get(x) or {}).get("true_exit_median_ms") for x in mux) if mux else None
    cpu = [c for c in ((fp.get(x) or {}).get("cpu_median_ms") for x in mux) if c is not None]
    g("idmux-fdpass under 1 ms (median, spawn to exit)", e is not None and e < 1.0,
      f"{fmt(e, 3)} ms over {len(runs)} runs (spawning /bin/true the same way: {fmt(t, 3)} ms); "
      f"its own CPU time {fmt(max(cpu) if cpu else None, 3)} ms")
    hw = [(fp.get(x) or {}).get("peak_rss_kib") for x in mux]
    m = max((h for h in hw if h), default=None)
    g("idmux-fdpass peak RSS under 2 MiB", m is not None and m < 2048,
      f"{fmt(m / 1024 if m else None, 2)} MiB (VmHWM)")
    # The daemon RSS and storm goals of issue 7 are issue 18's now (goals18), at its sizes.
    return G


def relay_rows(R, order=ORDER):
    """The relay-cost table: (relay, s per GiB, ratio to the limit, ratio to stunnel, how)."""
    tp, lim = R["throughput"], R.get("limit") or {}
    L = lim.get("s_per_gib")
    st = (tp.get("stunnel") or {}).get("daemon_cpu_s_per_gib")
    rows = []
    for k in [x for x in order if KIND.get(x) == "fdpass"] + [x for x in order if KIND.get(x) == "stunnel"]:
        if k not in tp:
            continue
        v = tp[k].get("daemon_cpu_s_per_gib")
        who = f"daemon, {SHORT[k]}" if KIND[k] == "fdpass" else "stunnel client"
        rows.append({"key": k, "relay": who, "s_per_gib": v, "vs_limit": ratio(v, L),
                     "vs_stunnel": ratio(v, st) if k != "stunnel" else None,
                     "sleeps": tp[k].get("daemon_sleeps_per_gib"),
                     "how": "its CPU time (/proc/PID/stat) over the throughput transfers, per GiB"})
    if L is not None:
        q = lim["parts"]
        rows.append({"key": "limit", "relay": "the limit", "s_per_gib": L, "vs_limit": None,
                     "vs_stunnel": ratio(L, st), "sleeps": None,
                     "how": f"AES-128-GCM, one pass (`openssl speed`, 16 KiB blocks): {fmt(q['aes'], 3)} s + "
                            f"half of a unix socket hop: {fmt(q['unix'], 3)} s + half of a loopback TCP hop: "
                            f"{fmt(q['tcp'], 3)} s (benches/hop.c, both ends on one core)"})
    return rows


def goals18(R, order=ORDER):
    """Issue 18's goals, each a ratio from this run; the throughput and latency ones judged on
    the best multiplexer path (named, the others in parentheses)."""
    lat, tp, st, mem, fp = R["latency"], R["throughput"], R["storm"], R["sessions"], R["fdpass_alone"]
    agg = R.get("aggregate") or {}
    mux = [k for k in keys_of("fdpass", order) if k in tp]
    G = []

    def g(goal, target, ok, figure):
        G.append({"goal": goal, "target": target, "met": bool(ok), "figure": figure})

    def each(fig, first, keys=None):
        keys = mux if keys is None else keys
        if first is None:
            return "n/a"
        rest = [f"{SHORT[k]} {fig(k)}" for k in keys if k != first]
        return f"{SHORT[first]}: {fig(first)}" + (f" ({'; '.join(rest)})" if rest else "")

    dc = lambda k: (tp.get(k) or {}).get("daemon_cpu_s_per_gib")
    stc = dc("stunnel")
    # Judged on the throughput runs (all on both cores); the split-core runs' figure is shown
    # beside it (the relay on the client's core, the proxy and node on the other).
    sp = R.get("split") or {}
    sdc = lambda k: (sp.get(k) or {}).get("daemon_cpu_s_per_gib")
    split = lambda k: (f"; client and server on a core each: {fmt(sdc(k), 2)} s, stunnel {fmt(sdc('stunnel'), 2)} s"
                       if sdc(k) is not None else "")
    v, r = dc("fdpass-grpc"), ratio(dc("fdpass-grpc"), stc)
    g("daemon CPU per GiB relayed, gRPC", "at most 0.9 s, and at most 0.65x stunnel",
      v is not None and v <= 0.9 and r is not None and r <= 0.65,
      f"{fmt(v, 2)} s = {fmt(r, 2)}x stunnel's {fmt(stc, 2)} s"
      + (f" ({fmt(ratio(v, (R.get('limit') or {}).get('s_per_gib')), 2)}x the limit)" if R.get("limit") else "")
      + split("fdpass-grpc"))
    v = dc("fdpass-ssh")
    g("daemon CPU per GiB relayed, SSH transport", "at most 1.2 s", v is not None and v <= 1.2,
      f"{fmt(v, 2)} s ({fmt(ratio(v, stc), 2)}x stunnel)" + split("fdpass-ssh"))
    dcpu = (tp.get("direct") or {}).get("cpu_s_per_gib")
    tc = lambda k: (tp.get(k) or {}).get("total_cpu_s_per_gib")
    sdcpu = (sp.get("direct") or {}).get("ssh_cpu_s_per_gib")
    split_tc = lambda k: (sp.get(k) or {}).get("total_cpu_s_per_gib")
    ks = best(mux, tc, higher=False)
    both = (f"{SHORT.get(ks, ks)} {fmt(tc(ks), 2)} s/GiB = {fmt(ratio(tc(ks), dcpu), 2)}x direct's {fmt(dcpu, 2)} s/GiB"
            if ks else "-")
    k = best(mux, split_tc, higher=False)
    if sdcpu and k:
        # The issue's figure is what the client machine pays when the proxy runs elsewhere:
        # judged on the runs with the proxy and the node on the other core.
        r = ratio(split_tc(k), sdcpu)
        # What the same ssh would cost with a daemon at this run's relay limit (one AES-GCM
        # pass and the two socket hops): how far under it the goal sits.
        lim = (R.get("limit") or {}).get("s_per_gib")
        ssh_k = (sp.get(k) or {}).get("ssh_cpu_s_per_gib")
        floor = ratio(ssh_k + lim, sdcpu) if lim and ssh_k else None
        g("client-side CPU (ssh + daemon) vs direct ssh", "at most 1.35x", r is not None and r <= 1.35,
          f"client on one core, proxy and node on the other: "
          + "; ".join(f"{SHORT.get(x, x)} {fmt(split_tc(x), 2)} s/GiB = {fmt(ratio(split_tc(x), sdcpu), 2)}x"
                      for x in [k] + [x for x in mux if x != k and split_tc(x)])
          + f" vs direct's {fmt(sdcpu, 2)} s/GiB (all on both cores: {both})"
          + (f"; with its daemon at this run's relay limit ({fmt(lim, 2)} s/GiB), {SHORT.get(k, k)} would be "
             f"{fmt(floor, 2)}x" if floor else ""))
    else:
        r = ratio(tc(ks), dcpu) if ks else None
        g("client-side CPU (ssh + daemon) vs direct ssh", "at most 1.35x", r is not None and r <= 1.35, both)
    tm = lambda x: (tp.get(x) or {}).get("mibps")
    k = best(mux, tm)
    r = ratio(tm(k), tm("direct")) if k else None
    g("throughput, all on two cores, vs direct", "at least 0.70x", r is not None and r >= 0.70,
      each(lambda x: f"{fmt(tm(x), 0)} MiB/s = {fmt(ratio(tm(x), tm('direct')), 2)}x", k)
      + f" vs direct {fmt(tm('direct'), 0)} MiB/s (stunnel {fmt(tm('stunnel'), 0)} MiB/s = "
        f"{fmt(ratio(tm('stunnel'), tm('direct')), 2)}x)" + machine_budget(tp, k))
    base = LAT_BASE if (lat.get(LAT_BASE) or {}).get("median_ms") else "direct"
    d = (lat.get(base) or {}).get("median_ms")
    lm = lambda x: (lat.get(x) or {}).get("median_ms")
    k = best([x for x in mux if x in lat], lm, higher=False)
    r = ratio(lm(k), d) if k else None
    g("latency `ssh host true`, vs direct with TCP_NODELAY", "at most 1.03x", r is not None and r <= 1.03,
      each(lambda x: f"{fmt(lm(x))} ms = {fmt(ratio(lm(x), d), 3)}x", k)
      + f" vs {SHORT[base]} {fmt(d)} ms (plain direct {fmt(lm('direct'))} ms; stunnel {fmt(lm('stunnel'))} ms)")
    runs = [v for x in mux for v in (fp.get(x) or {}).get("exit_ms", [])]
    e = statistics.median(runs) if runs else None
    tt = [(fp.get(x) or {}).get("true_exit_median_ms") for x in mux if fp.get(x)]
    t = statistics.median(tt) if tt else None
    r = ratio(e, t)
    g("idmux-fdpass spawn to exit, vs /bin/true", "at most 1.03x", r is not None and r <= 1.03,
      f"{fmt(e, 3)} ms = {fmt(r, 3)}x /bin/true's {fmt(t, 3)} ms (median over {len(runs)} runs, "
      "both spawned the same way)")
    fdk = [x for x in ("fdpass-grpc", "fdpass-ssh") if x in mem]
    rss = lambda x: (mem[x].get("daemon_rss_kib") or 0) / 1024
    grow = lambda x: ((mem[x].get("daemon_rss_after_kib") or 0) - (mem[x].get("daemon_rss_before_kib") or 0)) / 1024
    ok = bool(fdk) and all(rss(x) <= 24 and mem[x]["up"] == mem[x]["n"] and mem[x].get("settled") for x in fdk)
    n = mem[fdk[0]]["n"] if fdk else None
    g(f"daemon RSS, {n} sessions", "at most 24 MiB each transport, and back within 2 MiB of idle after they close",
      ok, "; ".join(f"{SHORT[x]}: {rss(x):.1f} MiB with {mem[x]['up']}/{mem[x]['n']} up, "
                    f"{grow(x):+.1f} MiB {mem[x].get('settle_s', 0):.0f} s after closing" for x in fdk) or "n/a")
    sk = [x for x in mux if x in st]
    k = best(sk, lambda x: (st[x]["ok"], -st[x]["wall_s"]))
    g(f"storm, {st[k]['n'] if k else '?'} simultaneous", f"{st[k]['n'] if k else '?'} / {st[k]['n'] if k else '?'}",
      k is not None and st[k]["ok"] == st[k]["n"],
      each(lambda x: f"{st[x]['ok']}/{st[x]['n']} in {fmt(st[x]['wall_s'], 1)} s", k, sk))
    ak = [x for x in mux if x in agg and agg[x].get("threads_20pct") is not None]
    k = best(ak, lambda x: (agg[x]["threads_20pct"], -(agg[x].get("busiest_share") or 1)))
    nstreams = agg[k]["streams"] if k else 4
    g(f"aggregate throughput, {nstreams} parallel transfers", "daemon relay CPU spread over more than one thread",
      k is not None and agg[k]["threads_20pct"] > 1,
      each(lambda x: f"{agg[x]['threads_20pct']} thread(s) with >= 20% of its relay CPU, busiest "
                     f"{100 * (agg[x].get('busiest_share') or 0):.0f}%, {fmt(agg[x]['mibps'], 0)} MiB/s", k, ak)
      + (f" vs direct {fmt(agg['direct']['mibps'], 0)} MiB/s" if "direct" in agg else ""))
    return G


# ---------------------------------------------------------------------------------------------
# chart: CPU per GiB per relay (hand-written SVG, like the latency chart)


def svg_x_axis(out, X, x_from, x_max, step, top, axis_y, left, plot_w, label):
    """A chart's vertical grid lines with their values from x_from to x_max, the x axis and its
    label (both SVG charts)."""
    t = x_from
    while t <= x_max + 1e-9:
        x = X(t)
        out.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{axis_y}" stroke="#e5e7eb" stroke-width="1"/>')
        out.append(f'<text x="{x:.1f}" y="{axis_y + 17}" font-size="12" fill="#374151" text-anchor="middle">{t:g}</text>')
        t += step
    out.append(f'<line x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}" stroke="#9ca3af" stroke-width="1"/>')
    out.append(f'<text x="{left + plot_w / 2:.1f}" y="{axis_y + 36}" font-size="12" fill="#374151" '
               f'text-anchor="middle">{label}</text>')


def cpu_svg(R, order=ORDER):
    rows = [r for r in relay_rows(R, order) if r["s_per_gib"] is not None]
    if not rows:
        return None
    lim = R.get("limit") or {}
    W, left, right, top, row = 820, 170, 170, 62, 44
    H = top + row * len(rows) + 84
    plot_w = W - left - right
    hi = max(r["s_per_gib"] for r in rows)
    step = nice_step(hi * 1.1)
    x_max = step * math.ceil(hi * 1.05 / step)
    X = lambda v: left + plot_w * v / x_max
    color = {"fdpass-grpc": COLORS["fdpass-grpc"], "fdpass-ssh": COLORS["fdpass-ssh"],
             "fdpass-nginx": COLORS["fdpass-nginx"], "stunnel": COLORS["stunnel"], "limit": "#6b7280"}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           f'role="img" aria-label="CPU per GiB relayed per relay" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">',
           "<title>CPU seconds per GiB relayed, per relay</title>",
           f'<rect x="0" y="0" width="{W}" height="{H}" fill="#ffffff"/>',
           '<text x="20" y="26" font-size="16" font-weight="bold" fill="#111827">'
           'CPU per GiB relayed (s, lower is better)</text>',
           f'<text x="20" y="46" font-size="12" fill="#4b5563">the relay process\'s user+system CPU over the '
           f'throughput transfers; {esc(R.get("date", ""))}{" (quick run)" if R.get("params", {}).get("quick") else ""}</text>']
    axis_y = top + row * len(rows) + 6
    svg_x_axis(out, X, 0.0, x_max, step, top, axis_y, left, plot_w, "CPU seconds per GiB")
    for i, r in enumerate(rows):
        cy = top + row * i + row / 2
        c = color.get(r["key"], "#7c3aed")
        out.append(f'<text x="{left - 12}" y="{cy + 4:.1f}" font-size="13" fill="#111827" text-anchor="end">{esc(r["relay"])}</text>')
        if r["key"] == "limit":
            q = lim["parts"]
            parts = [(q["aes"], "#9ca3af", "AES-128-GCM"), (q["unix"], "#cbd5e1", "half a unix socket hop"),
                     (q["tcp"], "#e2e8f0", "half a loopback TCP hop")]
            x0 = left
            for v, pc, name in parts:
                w = X(v) - left
                out.append(f'<rect x="{x0:.1f}" y="{cy - 12:.1f}" width="{max(w, 0.5):.1f}" height="24" fill="{pc}" '
                           f'stroke="#6b7280" stroke-width="1"><title>{esc(name)}: {v:.3f} s</title></rect>')
                x0 += w
        else:
            out.append(f'<rect x="{left}" y="{cy - 12:.1f}" width="{max(X(r["s_per_gib"]) - left, 0.5):.1f}" '
                       f'height="24" fill="{c}" fill-opacity="0.8"/>')
        extra = []
        if r["vs_limit"] is not None:
            extra.append(f"{r['vs_limit']:.1f}x limit")
        if r["vs_stunnel"] is not None:
            extra.append(f"{r['vs_stunnel']:.2f}x stunnel")
        out.append(f'<text x="{X(r["s_per_gib"]) + 6:.1f}" y="{cy + 4:.1f}" font-size="12" fill="#111827">'
                   f'{r["s_per_gib"]:.2f} s{esc(" (" + ", ".join(extra) + ")" if extra else "")}</text>')
    legend = ["the limit: one AES-128-GCM pass (openssl speed) + half of a unix socket hop + half of a loopback",
              "TCP hop (benches/hop.c, both ends on one core), shaded in that order; every figure from the same run"]
    for i, l in enumerate(legend):
        out.append(f'<text x="20" y="{H - 26 + 15 * i}" font-size="11" fill="#4b5563">{esc(l)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# chart: the latency distribution of each path as an SVG (hand-written: no plotting library)

# Per path key (PATHS); the SSH transport's paths a lighter shade of their gRPC sibling.
COLORS = {"direct": "#6b7280", "direct-nodelay": "#374151", "stunnel": "#dc2626", "jump": "#d97706", "stdio-grpc": "#2563eb", "stdio-ssh": "#60a5fa",
          "fdpass-grpc": "#059669", "fdpass-ssh": "#34d399", "fdpass-nginx": "#7c3aed"}


def quartiles(v):
    """(q1, median, q3) by the same interpolation as pctl()."""
    return pctl(v, 25), statistics.median(v), pctl(v, 75)


def nice_step(span, ticks=6):
    raw = span / ticks
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def esc(t):
    return str(t).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def latency_svg(R, order):
    """SVG text: one row per path with a box (quartiles), the median, a p95 mark, whiskers from
    min to max and a dot per run (jittered vertically, deterministically). Results from before
    per-run samples were kept (no samples_ms) get the summary only: min-max, median, p95."""
    L = R["latency"]
    keys = [k for k in order if k in L and L[k].get("median_ms") is not None]
    if not keys:
        return None
    hi = max(L[k]["max_ms"] for k in keys)
    lo_all = min(L[k]["min_ms"] for k in keys)
    # Zoomed to the data (the axis says where it starts): paths a few ms apart stay apart.
    step = nice_step((hi - lo_all) * 1.2 or hi)
    x_min = max(0.0, step * math.floor((lo_all - (hi - lo_all) * 0.08) / step))
    x_max = step * math.ceil((hi + (hi - lo_all) * 0.05) / step)
    W, left, right, top, row = 820, 170, 150, 62, 58
    H = top + row * len(keys) + 92
    plot_w = W - left - right

    def X(ms):
        return left + plot_w * (ms - x_min) / (x_max - x_min)

    runs = max(L[k].get("runs") or 0 for k in keys)
    full = all(L[k].get("samples_ms") for k in keys)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           f'role="img" aria-label="Latency of ssh host true per path" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">',
           "<title>Latency of `ssh host true` per path</title>",
           f'<rect x="0" y="0" width="{W}" height="{H}" fill="#ffffff"/>',
           '<text x="20" y="26" font-size="16" font-weight="bold" fill="#111827">'
           'Latency of `ssh host true` per path (ms, lower is better)</text>',
           f'<text x="20" y="46" font-size="12" fill="#4b5563">{runs} sequential runs per path, '
           f'interleaved across paths; {esc(R.get("date", ""))}'
           f'{" (quick run)" if R.get("params", {}).get("quick") else ""}</text>']
    # grid and axis
    axis_y = top + row * len(keys) + 6
    svg_x_axis(out, X, x_min, x_max, step, top, axis_y, left, plot_w,
               "milliseconds from starting ssh to its exit"
               + (f" (axis starts at {x_min:g} ms)" if x_min > 0 else ""))
    for i, k in enumerate(keys):
        d = L[k]
        c = COLORS.get(k, "#7c3aed")
        cy = top + row * i + row / 2
        label = SHORT.get(k, k)
        out.append(f'<text x="{left - 12}" y="{cy + 4:.1f}" font-size="13" fill="#111827" text-anchor="end">{esc(label)}</text>')
        lo, hi_k, med, p95 = d["min_ms"], d["max_ms"], d["median_ms"], d["p95_ms"]
        out.append(f'<line x1="{X(lo):.1f}" y1="{cy:.1f}" x2="{X(hi_k):.1f}" y2="{cy:.1f}" stroke="{c}" stroke-width="1.5"/>')
        for e in (lo, hi_k):
            out.append(f'<line x1="{X(e):.1f}" y1="{cy - 7:.1f}" x2="{X(e):.1f}" y2="{cy + 7:.1f}" stroke="{c}" stroke-width="1.5"/>')
        v = d.get("samples_ms") or []
        bh = 24
        if v:
            q1, _, q3 = quartiles(v)
            out.append(f'<rect x="{X(q1):.1f}" y="{cy - bh / 2:.1f}" width="{max(X(q3) - X(q1), 1):.1f}" height="{bh}" '
                       f'fill="{c}" fill-opacity="0.18" stroke="{c}" stroke-width="1.5"/>')
            for j, ms in enumerate(v):
                jitter = ((j * 7919) % 17 - 8) / 8 * (bh / 2 - 2)
                out.append(f'<circle cx="{X(ms):.1f}" cy="{cy + jitter:.1f}" r="2.6" fill="{c}" fill-opacity="0.55"/>')
        else:
            out.append(f'<rect x="{X(med):.1f}" y="{cy - bh / 2:.1f}" width="{max(X(p95) - X(med), 1):.1f}" height="{bh}" '
                       f'fill="{c}" fill-opacity="0.18" stroke="{c}" stroke-width="1" stroke-dasharray="3,2"/>')
        out.append(f'<line x1="{X(med):.1f}" y1="{cy - bh / 2 - 3:.1f}" x2="{X(med):.1f}" y2="{cy + bh / 2 + 3:.1f}" stroke="{c}" stroke-width="3.5"/>')
        px, py = X(p95), cy - bh / 2 - 7
        out.append(f'<path d="M{px:.1f},{py - 5:.1f} L{px + 5:.1f},{py:.1f} L{px:.1f},{py + 5:.1f} L{px - 5:.1f},{py:.1f} Z" fill="{c}"/>')
        fails = f", {d['fails']} failed" if d.get("fails") else ""
        out.append(f'<text x="{left + plot_w + 12}" y="{cy - 2:.1f}" font-size="12" fill="#111827">median {med:.1f}</text>')
        out.append(f'<text x="{left + plot_w + 12}" y="{cy + 13:.1f}" font-size="11" fill="#4b5563">p95 {p95:.1f}{fails}</text>')
    if full:
        legend = ["thick line: median; box: the middle half of the runs; diamond: p95;",
                  "whiskers: fastest to slowest run; dots: every run"]
    else:
        legend = ["thick line: median; dashed box: median to p95; diamond: p95; whiskers: fastest to",
                  "slowest run (this run predates per-run samples, so no quartiles or dots)"]
    for i, l in enumerate(legend):
        out.append(f'<text x="20" y="{H - 26 + 15 * i}" font-size="11" fill="#4b5563">{esc(l)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_svg(R, order, path, draw=None):
    svg = (draw or latency_svg)(R, order)
    if svg is None:
        return False
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(svg)
    return True


def demo_results(seed=7, runs=30):
    """Synthetic latency results (seeded) in the shape latency() returns, for `chart --demo`."""
    import random
    rnd = random.Random(seed)
    base = {"direct": 350, "jump": 545, "stdio-grpc": 355, "stdio-ssh": 360, "fdpass-grpc": 312,
            "fdpass-ssh": 315, "fdpass-nginx": 330}
    lat = {}
    for k, b in base.items():
        v = sorted(b * rnd.lognormvariate(0, 0.06) for _ in range(runs))
        lat[k] = {"runs": runs, "fails": 0, "median_ms": statistics.median(v), "p95_ms": pctl(v, 95),
                  "min_ms": v[0], "max_ms": v[-1], "samples_ms": v, "error": None}
    return {"latency": lat, "date": "synthetic data (chart --demo)", "params": {"quick": False}}


def cell_text(c, k):
    v, r = c[k]
    return f"{v} ({r:.2f}x)" if r is not None else v


def render(R, order):
    rows = build_rows(R, order)
    head = ["figure"] + [SHORT[k] for k in order]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * len(order)]
    for name, cells in rows:
        lines.append("| " + name + " | " + " | ".join(cell_text(cells, k) for k in order) + " |")
    return "\n".join(lines)


def render_plain(R, order):
    rows = build_rows(R, order)
    names = [n.replace("`", "") for n, _ in rows]
    cells = [[cell_text(c, k) for k in order] for _, c in rows]
    w0 = max(len(n) for n in names) + 2
    ws = [max(len(SHORT[k]), *(len(r[i]) for r in cells)) + 2 for i, k in enumerate(order)]
    out = ["".ljust(w0) + "".join(SHORT[k].ljust(ws[i]) for i, k in enumerate(order))]
    for n, r in zip(names, cells):
        out.append(n.ljust(w0) + "".join(v.ljust(ws[i]) for i, v in enumerate(r)))
    return "\n".join(out)


def runs_text(n):
    return {1: "one run", 2: "mean of 2 runs"}.get(n, f"median of {n} runs")


def relay_table(R, order):
    lines = ["| relay | CPU per GiB relayed (s) | vs the limit | vs stunnel | sleeps per GiB | how |",
             "|---|---:|---:|---:|---:|---|"]
    for r in relay_rows(R, order):
        vl = f"{r['vs_limit']:.2f}x" if r["vs_limit"] is not None else "-"
        vs = f"{r['vs_stunnel']:.2f}x" if r["vs_stunnel"] is not None else "-"
        sl = f"{r['sleeps']:,.0f}" if r.get("sleeps") is not None else "-"
        lines.append(f"| {r['relay']} | {fmt(r['s_per_gib'], 2)} | {vl} | {vs} | {sl} | {r['how']} |")
    return "\n".join(lines)


def aggregate_table(R, order):
    A = R.get("aggregate") or {}
    lines = ["| path | aggregate MiB/s | vs direct | relay CPU (s per GiB) | threads with >= 20% of the relay CPU | "
             "busiest thread's share | CPU per thread (s) |", "|---|---:|---:|---:|---:|---:|---|"]
    d = (A.get("direct") or {}).get("mibps")
    for k in order:
        a = A.get(k)
        if not a:
            continue
        rr = ratio(a["mibps"], d) if k != "direct" else None
        th = a.get("thread_cpu_s")
        lines.append(f"| {SHORT[k]} ({a['ok']}/{a['streams']} ok) | {fmt(a['mibps'], 0)} | "
                     f"{f'{rr:.2f}x' if rr is not None else '-'} | {fmt(a.get('daemon_cpu_s_per_gib'), 2)} | "
                     f"{a.get('threads_20pct', '-') if 'threads_20pct' in a else '-'} | "
                     f"{fmt(100 * a['busiest_share'], 0) + '%' if a.get('busiest_share') is not None else '-'} | "
                     f"{', '.join(f'{x:.2f}' for x in th[:8]) + (' ...' if len(th) > 8 else '') if th else '-'} |")
    return "\n".join(lines)


def write_md(R, path, order, svg=None, cpu=None):
    """BENCHMARKS.md; `svg` and `cpu` are the charts' paths, linked relative to the md file."""
    M, P = R["machine"], R["params"]
    G = R["goals"]
    met = sum(1 for x in G if x["met"])
    G18 = R.get("goals18") or []
    met18 = sum(1 for x in G18 if x["met"])
    rel = lambda f: os.path.relpath(os.path.abspath(f), os.path.dirname(os.path.abspath(path)))
    L = []
    L += ["# idmux benchmarks", ""]
    L.append(f"Written by `scripts/bench.sh{' --quick' if P['quick'] else ''}` on {R['date']} "
             f"({'quick' if P['quick'] else 'full'} run; {R['elapsed_s']:.0f} s of measurements). To rerun:")
    L += ["", "```", "scripts/bench.sh            # full run", "scripts/bench.sh --quick    # fast check: fewer runs, smaller transfers, storm of 50, 100 sessions", "```", ""]
    if P.get("wall_s"):
        L += [f"The whole `scripts/bench.sh{' --quick' if P['quick'] else ''}` (cluster, daemons and helpers "
              f"started, every measurement) took {P['wall_s'] / 60:.1f} minutes.", ""]
    L.append("One run, one dev cluster (`idmux cluster start`, one sshd node; proxy, node, bastion and "
             "clients all on loopback on this machine), three bot daemons (`idmux start`, "
             "one per transport and one behind nginx, each with its own destination dir), one stdio "
             "destination dir (`idmux cluster auth sign --mode stdio`), used by both stdio paths, and a "
             "stunnel4 server and client. What is measured and how: "
             "[benches/README.md](benches/README.md). Raw numbers: `target/bench/results.json`.")
    L += ["", "## Machine", ""]
    L.append(f"- {M['nproc']} CPUs, {M['cpu']}")
    L.append(f"- Linux {M['kernel']}")
    L.append(f"- {M['openssh']}")
    L.append(f"- {M['rustc']}; idmux built with `cargo build --release --bins`")
    L.append(f"- load average (1, 5, 15 min) when the measurements started: {R['load_start']}; at the end: "
             f"{R['load_end']}. The machine is shared: other work running at the same time slows every "
             "path (the end figure also counts this benchmark's own storm and session tests)")
    L += ["", "## Paths", ""]
    L.append("- **direct**: `ssh` straight to the node's sshd with the stdio destination's key and "
             "certificate, its `known_hosts` and `HostKeyAlias=node-1.<cluster>`: the baseline of the throughput and CPU ratios.")
    L.append("- **direct NODELAY**: the same ssh with `benches/nodelay.c` preloaded (`LD_PRELOAD`), "
             "which sets `TCP_NODELAY` on every TCP socket ssh connects. ssh sets it itself only "
             "with a tty, so plain direct runs Nagle's algorithm on loopback: the latency rows' "
             "ratios are against this path. Latency only.")
    L.append("- **stunnel**: a plain C TLS relay as the peer of the daemon: ssh connects (by "
             "`HostKeyAlias`, as direct) to a stunnel4 client daemon on loopback, which opens one "
             "TLS 1.3 connection (`TLS_AES_128_GCM_SHA256`, what idmux negotiates with the dev proxy, as with Teleport) "
             "per session to a stunnel4 server in front of the node's sshd. Its \"daemon\" CPU is the "
             "stunnel client's.")
    L.append("- **ProxyJump**: `ssh -J` through a second, plain sshd on loopback (a copy of the node's "
             "sshd_config on another port, trusting the same user CA), then to the node's address.")
    L.append("- **stdio gRPC / stdio SSH**: the stdio destination's ssh_config with "
             "`--transport grpc` / `--transport ssh` added to its ProxyCommand: `idmux ssh-proxy-command` "
             "per connection (TLS handshake with the proxy each time, then an HTTP/2 `ProxySSH` stream, "
             "or an SSH handshake and the `proxy:` subsystem; like `tbot ssh-proxy-command`).")
    L.append("- **fdpass gRPC / fdpass SSH**: a bot's destination ssh_config: `idmux-fdpass` asks the "
             "daemon's `v1.sock` for a node connection on its warm upstream connection and hands the "
             "socket to ssh (`ProxyUseFdpass yes`); keys from the daemon's `agent.sock`. One daemon "
             "per transport (`idmux start --transport grpc` and `--transport ssh`): a `ProxySSH` "
             "stream on an HTTP/2 connection, or an SSH channel on the proxy's SSH server.")
    L += ["", "## Figures", ""]
    L.append(f"Ratios against **direct** from the same run in parentheses; the latency rows' against "
             f"**direct NODELAY**. Latency: {P['latency_runs']} "
             "sequential runs per path, interleaved across paths, after 2 warm-up runs each. "
             f"Throughput: {runs_text(P['throughput_runs'])} per path; scp: {runs_text(P['scp_runs'])} "
             f"per path. Storm: {P['storm']} through each multiplexer (fdpass) path, "
             f"{P.get('storm_other', P['storm'])} through the others"
             + (" (the full storm of full OpenSSH pairs on every path would make the run too long)"
                if P.get("storm_other", P["storm"]) != P["storm"] else "") + ". Open sessions: "
             f"{P['sessions']} raw v1 requests held through each daemon, {P['relay_sessions']} ssh sessions "
             "through each ProxyCommand relay.")
    L += ["", render(R, order), ""]
    if svg:
        every = all(R["latency"][k].get("samples_ms") for k in order if k in R["latency"])
        what = ("every run of the latency figures above" if every else
                "median, p95, fastest and slowest run of the latency figures above")
        L += [f"**Latency distribution** ({what}, per path):", "",
              f"![Latency of ssh host true per path: median, p95 and the spread of the runs]({rel(svg)})", ""]
    if R.get("limit") or any(KIND.get(k) == "stunnel" for k in R["throughput"]):
        L += ["## Relay cost", "",
              "CPU time of the process that relays the session's bytes on the client side, per GiB "
              "moved through it, over the throughput transfers above; against the limit (the least a "
              "relay can spend: one AES-GCM pass plus reading one socket and writing another, measured "
              "in this run on this machine) and against stunnel, a plain C TLS relay doing the same job "
              "(reading the session from loopback TCP rather than a unix socket).", "",
              relay_table(R, order), ""]
        lim = R.get("limit") or {}
        if lim:
            h, h2 = lim["hops"], lim.get("hops_two_cores") or {}
            st_cpu = (R["throughput"].get("stunnel") or {}).get("daemon_cpu_s_per_gib")
            both2 = lambda k: fmt((h2.get(k) or {}).get("both_s_per_gib"), 3)
            L += [f"The limit's parts: `openssl speed -evp aes-128-gcm -seconds 2 -bytes 16384`: "
                  f"{fmt((lim['aes-128-gcm']['bytes_per_s'] or 0) / 1e9, 2)} GB/s of user CPU, "
                  f"{fmt(lim['aes-128-gcm']['s_per_gib'], 3)} s per GiB (AES-256-GCM: "
                  f"{fmt(lim['aes-256-gcm']['s_per_gib'], 3)} s). `benches/hop.c`, 1 GiB in 64 KiB writes "
                  f"with the writer and the reader pinned to one core, median of {h['unix']['runs']}: unix socket "
                  f"writer {fmt(h['unix']['writer_s_per_gib'], 3)} s, reader {fmt(h['unix']['reader_s_per_gib'], 3)} s; "
                  f"loopback TCP writer {fmt(h['tcp']['writer_s_per_gib'], 3)} s, reader "
                  f"{fmt(h['tcp']['reader_s_per_gib'], 3)} s. A relay's upload reads the session from one and "
                  "writes it to the other; each hop's CPU (writer + reader) is split evenly between its two "
                  "ends in the limit, because where the kernel charges loopback TCP's receive path changes "
                  "from run to run while the sum does not.", "",
                  "What the limit leaves out is waiting. The same hops with the writer and the reader pinned "
                  f"to different cores cost {both2('unix')} s (unix) and {both2('tcp')} s (TCP) per GiB, writer "
                  "and reader together: the bytes and the calls are the same, what differs is the two sides "
                  "waking each other across cores. A byte's round trip between two processes on different "
                  f"cores costs each side {fmt(lim.get('wake_us'), 1)} µs of CPU here (`hop wake`: each side "
                  "wakes the other, sleeps and is woken). A relay sleeps whenever it has read all there is, "
                  "and ssh writes its packets about one at a time, so a relay sleeps thousands of times per "
                  "GiB: the table's sleeps are the daemon's voluntary context switches over the transfers "
                  "(stunnel's are not counted: its per-session threads take their counts with them when "
                  "they end). Sleeping less is not by itself cheaper: a trial daemon that slept 100-250 µs "
                  "mid-stream instead of being woken by each of ssh's writes had a third to a fifth of the "
                  "sleeps and spent no less CPU (benches/README.md)." + (f" stunnel's client, which waits for ssh between reads as the daemon does, "
                  f"sits at {fmt(ratio(st_cpu, lim.get('s_per_gib')), 2)}x the limit." if st_cpu else ""), ""]
        if cpu:
            L += [f"![CPU per GiB relayed: daemon gRPC, daemon SSH, stunnel client, the limit]({rel(cpu)})", ""]
    if R.get("aggregate"):
        a0 = next(iter(R["aggregate"].values()))
        L += ["## Aggregate throughput", "",
              f"{a0['streams']} transfers of {a0['bytes_each'] // MIB} MiB each into `ssh host 'cat > /dev/null'` "
              "at once, per path; aggregate MiB/s = all bytes / wall time until the last ssh exits. The "
              "relay's CPU per thread from `/proc/PID/task/*/stat` over the transfers (sampled every 0.2 s, "
              "so threads that end early count too).", "", aggregate_table(R, order), ""]
    for k in keys_of("fdpass", order):
        fp = R["fdpass_alone"].get(k)
        if not fp:
            continue
        L.append(f"**idmux-fdpass alone, {SHORT[k]}** ({fp['runs']} runs with its stdout one end of a "
                 f"socketpair, as ssh sets it up; {fp['ok']} ok): spawn to exit "
                 f"{fmt(fp['exit_median_ms'], 3)} ms median, p95 {fmt(fp['exit_p95_ms'], 3)} ms (spawning "
                 f"`/bin/true` the same way: {fmt(fp['true_exit_median_ms'], 3)} ms); its own CPU time "
                 f"{fmt(fp.get('cpu_median_ms'), 3)} ms median (`/bin/true`: {fmt(fp.get('true_cpu_median_ms'), 3)} ms); "
                 "the passed socket "
                 f"delivers the node's SSH banner {fmt(fp['banner_median_ms'], 2)} ms after the spawn "
                 f"(median); peak RSS {fmt(fp['peak_rss_kib'] / 1024 if fp['peak_rss_kib'] else None, 2)} "
                 f"MiB (VmHWM, {fp.get('peak_rss_runs')} runs).")
        L.append("")
    for k in keys_of("fdpass", order):
        f = R["sessions"].get(k)
        if not f:
            continue
        mib = lambda v: fmt((v or 0) / 1024)
        how = (" (raw v1 requests: idmux-fdpass's request, the node's SSH banner read from the passed "
               "socket, held)" if f.get("how") == "v1" else "")
        settle = (f" ({'within 2 MiB of before' if f.get('settled') else 'not back within 2 MiB of before'}"
                  f" {fmt(f.get('settle_s'))} s after closing)" if "settle_s" in f else "")
        L.append(f"**Daemon memory, {SHORT[k]}** (VmRSS of its `idmux start`): "
                 f"{mib(R['daemon_idle_kib'].get(k))} MiB idle at the start; "
                 f"{mib(f.get('daemon_rss_before_kib'))} MiB after the latency, throughput, scp, aggregate and "
                 f"storm tests; {mib(f.get('daemon_rss_kib'))} MiB with {f.get('n')} sessions open{how} "
                 f"({f.get('up')} up in {fmt(f.get('all_up_s'))} s; high-water mark {mib(f.get('daemon_hwm_kib'))} "
                 f"MiB{'; ' + str(f['daemon_threads']) + ' threads' if f.get('daemon_threads') else ''}); "
                 f"{mib((R.get('daemon_after_kib') or {}).get(k))} MiB after they closed{settle}.")
        L.append("")
    if G18:
        L += ["", "## Goals (issue 18)", ""]
        L.append(f"{met18} of {len(G18)} met in this run. Each is a ratio or count from this run; the "
                 "throughput and latency ones are judged on the best multiplexer path, named, with the "
                 "others in parentheses.")
        L += ["", "| goal | target | figure | status |", "|---|---|---|---|"]
        for x in G18:
            L.append(f"| {x['goal']} | {x['target']} | {x['figure']} | {'met' if x['met'] else '**not met**'} |")
        L.append("")
    L += ["", "## Goals (issue 7, the ones issue 18 did not replace)", ""]
    L.append(f"{met} of {len(G)} met in this run.")
    L += ["", "| goal | figure | status |", "|---|---|---|"]
    for x in G:
        L.append(f"| {x['goal']} | {x['figure']} | {'met' if x['met'] else '**not met**'} |")
    L.append("")
    if P["quick"]:
        L += ["This was a `--quick` run (fewer runs, smaller transfers, smaller storm and session "
              "counts); the goals are about the full run, `scripts/bench.sh`.", ""]
    notes = R.get("notes") or []
    if notes:
        L += ["## Notes", ""]
        L += [f"- {n}" for n in notes]
        L.append("")
    with open(path, "w") as fh:
        fh.write("\n".join(L))


# ---------------------------------------------------------------------------------------------
# run


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cmd_run(args):
    # Own process group: scripts/bench.sh stops every ssh, ProxyCommand and wrapper we start
    # with one kill of the group.
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    t_start = time.monotonic()
    with open(args.config) as f:
        c = json.load(f)
    work = c["work"]
    quick = c["quick"]
    P = {
        "quick": quick,
        "latency_runs": 10 if quick else 30,
        "throughput_bytes": 256 * MIB if quick else GIB,
        "throughput_runs": 1 if quick else 5,
        "scp_bytes": 64 * MIB if quick else 256 * MIB,
        "scp_runs": 1 if quick else 3,
        # Storm: the multiplexer (fdpass) paths at `storm`, the others at `storm_other`.
        "storm": 50 if quick else 500,
        "storm_other": 50 if quick else 200,
        # Open sessions through each daemon (raw v1 requests), and through the ProxyCommand
        # relays of ProxyJump and stdio (ssh sessions, one relay process each).
        "sessions": 100 if quick else 1000,
        "relay_sessions": 10 if quick else 20,
        "fdpass_runs": 100,
        # Client side on one core, server side on the other (client_side_split).
        "split_runs": 1 if quick else 3,
        "aggregate_bytes": 128 * MIB if quick else 512 * MIB,
        "aggregate_streams": 4,
    }
    for k in list(P):  # BENCH_LATENCY_RUNS=50 etc. override
        env = os.environ.get("BENCH_" + k.upper())
        if env and k != "quick":
            P[k] = int(env)
    paths = make_paths(c, work)
    order = [p.key for p in paths]
    labels = {p.key: p.label for p in paths}
    byk = {p.key: p for p in paths}
    R = {"params": P, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
         "machine": machine_info(), "load_start": loadavg(), "notes": []}

    sanity(paths, work)
    time.sleep(1)
    daemons = {p.key: p.daemon for p in paths if p.daemon}
    R["daemon_idle_kib"] = {k: proc_status_kib(pid) for k, pid in daemons.items()}
    log(f"daemon RSS idle (KiB): {R['daemon_idle_kib']}")

    R["limit"] = relay_limit(c["hop"])

    R["fdpass_alone"] = {}
    fd_argvs = {}
    for k in keys_of("fdpass", order):
        g = ssh_g(byk[k].ssh, byk[k].host)
        fd_argvs[k] = [a.replace("%h", g["hostname"]).replace("%p", g["port"]).replace("%r", g["user"])
                       .replace("%%", "%") for a in shlex.split(g["proxycommand"])]
        R["fdpass_alone"][k] = fdpass_harness(fd_argvs[k], P["fdpass_runs"])

    R["latency"] = latency(only(paths, "latency"), P["latency_runs"])
    R["proxy_rss"] = {k: proxy_rss(byk[k], work, 64 * MIB) for k in order if byk[k].kind in ("jump", "stdio")}
    R["throughput"] = throughput(only(paths, "throughput"), work, P["throughput_bytes"], P["throughput_runs"])

    R["split"] = client_side_split([byk[k] for k in ("direct", "stunnel", "fdpass-grpc", "fdpass-ssh") if k in byk],
                                   c, work, P["throughput_bytes"], P["split_runs"])

    src = os.path.join(work, "scp-source")
    with open(src, "wb") as f:
        left = P["scp_bytes"]
        while left:
            n = min(left, 16 * MIB)
            f.write(os.urandom(n))
            left -= n
    R["scp"] = scp_bench(only(paths, "scp"), work, src, P["scp_bytes"], P["scp_runs"])
    os.unlink(src)

    R["aggregate"] = aggregate([byk[k] for k in ("direct", "stunnel", "fdpass-grpc", "fdpass-ssh") if k in byk],
                               P["aggregate_bytes"], P["aggregate_streams"])

    R["storm"] = storm(only(paths, "storm"), lambda p: P["storm"] if p.kind == "fdpass" else P["storm_other"])
    R["sessions"] = {}
    for p in paths:
        if p.kind not in ("jump", "stdio", "fdpass"):
            continue
        time.sleep(2)
        if p.kind == "fdpass":
            R["sessions"][p.key] = v1_sessions(p, fd_argvs[p.key], P["sessions"])
        else:
            R["sessions"][p.key] = open_sessions(p, P["relay_sessions"])
    R["daemon_after_kib"] = {k: (R["sessions"].get(k) or {}).get("daemon_rss_after_kib") for k in daemons}
    R["load_end"] = loadavg()

    for k, s in R["storm"].items():
        if s["first_error"]:
            R["notes"].append(f"storm, {labels[k]}: {s['n'] - s['ok']} failed; first error: `{s['first_error']}`")
    for k, s in R["sessions"].items():
        if s["up"] != s["n"]:
            R["notes"].append(f"open sessions, {labels[k]}: only {s['up']}/{s['n']} came up"
                              + (f"; first error: `{s['first_error']}`" if s.get("first_error") else ""))
    for k, l in R["latency"].items():
        if l["fails"]:
            R["notes"].append(f"latency, {labels[k]}: {l['fails']} failed runs; first error: `{l['error']}`")
    for k, t in R["throughput"].items():
        if t.get("fails"):
            R["notes"].append(f"throughput, {labels[k]}: {t['fails']} failed runs")
    for k, a in R["aggregate"].items():
        if a.get("error"):
            R["notes"].append(f"aggregate throughput, {labels[k]}: {a['streams'] - a['ok']} of {a['streams']} "
                              f"transfers failed; first error: `{a['error']}`")
    if P["throughput_runs"] > 1:
        R["notes"].append("Spread between runs (MiB/s, every run): throughput " + "; ".join(
            f"{SHORT[k]} {', '.join(f'{v:.0f}' for v in R['throughput'][k].get('mibps_runs', []))}"
            for k in order if k in R["throughput"])
            + "; scp " + "; ".join(
            f"{SHORT[k]} {', '.join(f'{v:.0f}' for v in R['scp'][k].get('mibps_runs', []))}"
            for k in order if k in R["scp"]) + ".")
    R["elapsed_s"] = time.monotonic() - t_start
    if os.environ.get("BENCH_T0"):  # bench.sh's start: the whole run, set-up included
        P["wall_s"] = time.time() - float(os.environ["BENCH_T0"])
    R["goals"] = goals(R, order)
    R["goals18"] = goals18(R, order)
    R["paths"] = [{**d, "figures": sorted(d["figures"])} if d.get("figures") else d
                  for d in PATHS if d["key"] in order]
    with open(args.json, "w") as f:
        json.dump(R, f, indent=2, default=lambda o: sorted(o) if isinstance(o, (set, frozenset)) else str(o))
    write_all(R, args, order)
    print(f"wrote {args.md} ({R['elapsed_s']:.0f} s of measurements)")


def print_all(R, order):
    print()
    print(render_plain(R, order))
    print()
    print(render_plain_relay(R, order))
    print()
    if R.get("aggregate"):
        print(aggregate_table(R, order).replace("`", ""))
        print()
    print("goals (issue 18):")
    for x in R.get("goals18") or []:
        print(f"  [{'met' if x['met'] else 'NOT met'}] {x['goal']} ({x['target']}): {x['figure']}")
    print("goals (issue 7):")
    for x in R["goals"]:
        print(f"  [{'met' if x['met'] else 'NOT met'}] {x['goal']}: {x['figure']}")
    print()


def render_plain_relay(R, order):
    rows = relay_rows(R, order)
    out = ["relay cost (CPU s per GiB relayed):"]
    for r in rows:
        out.append(f"  {r['relay']:<24} {fmt(r['s_per_gib'], 2):>6} s"
                   + (f"  {r['vs_limit']:.2f}x the limit" if r["vs_limit"] is not None else "")
                   + (f"  {r['vs_stunnel']:.2f}x stunnel" if r["vs_stunnel"] is not None else ""))
    return "\n".join(out)


def write_all(R, args, order):
    svg = svg_path(args)
    cpu = os.path.join(os.path.dirname(svg), "cpu.svg")
    write_md(R, args.md, order, svg if write_svg(R, order, svg) else None,
             cpu if write_svg(R, order, cpu, cpu_svg) else None)
    print_all(R, order)


def svg_path(args):
    """--svg, or benches/latency.svg beside the md file's folder."""
    return args.svg or os.path.join(os.path.dirname(os.path.abspath(args.md)), "benches", "latency.svg")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="sub", required=True)
    w = sub.add_parser("wrap")
    w.add_argument("--out", required=True)
    w.add_argument("--subreaper", action="store_true")
    w.add_argument("--hwm", action="store_true")
    w.add_argument("cmd", nargs=argparse.REMAINDER)
    r = sub.add_parser("run")
    r.add_argument("--config", required=True)
    r.add_argument("--json", required=True)
    r.add_argument("--md", required=True)
    r.add_argument("--svg", help="latency chart (default: benches/latency.svg beside the md)")
    r = sub.add_parser("report", help="render BENCHMARKS.md and the chart again from a results.json")
    r.add_argument("--json", required=True)
    r.add_argument("--md", required=True)
    r.add_argument("--svg", help="latency chart (default: benches/latency.svg beside the md)")
    r = sub.add_parser("chart", help="draw only the latency chart, from a results.json or --demo data")
    g = r.add_mutually_exclusive_group(required=True)
    g.add_argument("--json")
    g.add_argument("--demo", action="store_true", help="seeded synthetic samples")
    r.add_argument("--svg", required=True)
    a = ap.parse_args()
    if a.sub == "chart":
        if a.demo:
            R = demo_results()
        else:
            with open(a.json) as f:
                R = json.load(f)
        if not write_svg(R, ORDER + [k for k in R["latency"] if k not in ORDER], a.svg):
            raise SystemExit("chart: no latency figures in the results")
        print(f"wrote {a.svg}")
        return
    if a.sub == "wrap":
        sys.exit(cmd_wrap(a))
    if a.sub == "report":
        with open(a.json) as f:
            R = json.load(f)
        order = [k for k in ORDER if k in R["latency"] or k in R["throughput"]]
        R["goals"] = goals(R, order)
        R["goals18"] = goals18(R, order)
        write_all(R, a, order)
        return
    cmd_run(a)


if __name__ == "__main__":
    main()
