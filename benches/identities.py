#!/usr/bin/env python3
"""Renewals per signature algorithm suite, and what they cost the sessions beside them.

For each suite (legacy: RSA-2048 keys; balanced-v1: ECDSA P-256) this starts a dev cluster with
one sshd node and a bot (`idmux start`, fdpass multiplexer), then measures, in the same run:
  - renewal: SIGHUP to the bot until its log says `renewed:` (a fresh bot key, the CA
    resources, a fresh output key, the output written), median of --runs;
  - ssh: `ssh -F DEST/ssh_config USER@node-1.CLUSTER true`, median, idle and while the bot
    renews back to back (RSA key generation must stay off the relay's path);
and prints one table with the ratios: legacy renewal / balanced renewal (the fair baseline:
the same work with the default suite's keys) and ssh while renewing / ssh idle (the
baseline: the same ssh, same machine, no renewals).

Usage: benches/identities.py IDMUX_BIN [--runs N]
"""

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def wait(pred, limit, what):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.005)
    raise SystemExit(f"bench: {what} did not happen within {limit}s")


def ms(xs):
    return statistics.median(xs) * 1000


class Setup:
    def __init__(self, idmux, suite, work):
        self.idmux, self.suite, self.work = idmux, suite, work
        self.cluster = "bench.test"
        self.cdir = os.path.join(work, f"cluster-{suite}")
        self.clog = open(os.path.join(work, f"cluster-{suite}.log"), "w")
        self.cl = subprocess.Popen(
            [idmux, "cluster", "start", "--data-dir", self.cdir, "--listen", "127.0.0.1:0",
             "--name", self.cluster, "--nodes", "1", f"--signature-algorithm-suite={suite}"],
            stdout=subprocess.PIPE, stderr=self.clog, text=True)
        first = self.cl.stdout.readline()
        m = re.search(r"ready on https://(\S+)", first)
        if not m:
            raise SystemExit(f"bench: cluster did not start: {first}")
        self.addr = m.group(1)
        threading.Thread(target=lambda: [None for _ in self.cl.stdout], daemon=True).start()
        user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
        self.user = user
        out = subprocess.run(
            [idmux, "cluster", "bots", "add", "bench", f"--logins={user}", "--format=json",
             "--data-dir", self.cdir], capture_output=True, text=True, check=True).stdout
        token = re.search(r'"token_id":\s*"([0-9a-f]+)"', out).group(1)
        self.data = os.path.join(work, f"data-{suite}")
        self.dest = os.path.join(work, f"dest-{suite}")
        self.blog_path = os.path.join(work, f"bot-{suite}.log")
        self.bot = subprocess.Popen(
            [idmux, "start", f"--data-dir={self.data}", f"--destination-dir={self.dest}",
             f"--token={token}", "--join-method=token", f"--proxy-server={self.addr}",
             f"--ca-path={os.path.join(self.cdir, 'ca.pem')}", "--certificate-ttl=2h",
             "--renewal-interval=1h"],
            stdout=subprocess.DEVNULL, stderr=open(self.blog_path, "w"))
        wait(lambda: all(os.path.exists(os.path.join(self.dest, f))
                         for f in ("ssh_config", "v1.sock", "agent.sock")), 60, "the bot's outputs")
        self.cfg = os.path.join(self.dest, "ssh_config")

    def renewals_done(self):
        with open(self.blog_path) as f:
            return f.read().count("renewed:")

    def renew(self):
        n = self.renewals_done()
        t0 = time.monotonic()
        self.bot.send_signal(signal.SIGHUP)
        wait(lambda: self.renewals_done() > n, 60, f"a {self.suite} renewal")
        return time.monotonic() - t0

    def ssh(self):
        t0 = time.monotonic()
        r = subprocess.run(
            ["ssh", "-F", self.cfg, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
             f"{self.user}@node-1.{self.cluster}", "true"], capture_output=True)
        if r.returncode != 0:
            raise SystemExit(f"bench: ssh failed: {r.stderr.decode()}")
        return time.monotonic() - t0

    def stop(self):
        for p in (self.bot, self.cl):
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


def measure(idmux, suite, work, runs):
    s = Setup(idmux, suite, work)
    try:
        s.ssh()  # warm
        renew = [s.renew() for _ in range(runs)]
        idle = [s.ssh() for _ in range(runs)]
        stop = threading.Event()
        count = [0]

        def churn():
            while not stop.is_set():
                s.renew()
                count[0] += 1

        t = threading.Thread(target=churn)
        t.start()
        busy = [s.ssh() for _ in range(runs)]
        stop.set()
        t.join()
        return {"renew": ms(renew), "idle": ms(idle), "busy": ms(busy), "busy_renewals": count[0]}
    finally:
        s.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("idmux")
    ap.add_argument("--runs", type=int, default=15)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="idmux-bench-ids.") as work:
        res = {s: measure(a.idmux, s, work, a.runs) for s in ("balanced-v1", "legacy")}
    base = res["balanced-v1"]["renew"]
    print(f"renewals and ssh per suite (median of {a.runs}; test build, one machine, loopback)")
    print(f"{'suite':<12} {'renewal ms':>11} {'vs balanced':>12} {'ssh idle ms':>12} "
          f"{'ssh renewing ms':>16} {'renewing/idle':>14} {'renewals':>9}")
    for suite, r in res.items():
        print(f"{suite:<12} {r['renew']:>11.1f} {r['renew'] / base:>11.2f}x {r['idle']:>12.1f} "
              f"{r['busy']:>16.1f} {r['busy'] / r['idle']:>13.2f}x {r['busy_renewals']:>9}")


if __name__ == "__main__":
    sys.exit(main())
