//! A hostile local world (issue 17, first part): what a local process can throw at the daemon's sockets
//! must never cost it fds or threads for good.

use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use idmux_testkit::*;

const C: &str = "hostile.test";

/// A bot that renews every 3 s, so the attacks can show renewals going on.
fn renewing_bot(cl: &DevCluster, mut args: Vec<String>) -> BotProc {
    args.extend([
        "--certificate-ttl=1m".into(),
        "--renewal-interval=3s".into(),
    ]);
    BotProc::start(
        cl,
        BotOptions {
            args,
            ..Default::default()
        },
    )
}

/// One v1.sock request whose first message carries `fds` (SCM_RIGHTS), then the rest of
/// `bytes`; waits for the daemon to close the connection.
fn request_with_fds(sock: &Path, fds: &[i32], bytes: &[u8]) {
    let mut s = UnixStream::connect(sock).unwrap();
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(fds)];
    nix::sys::socket::sendmsg::<()>(
        s.as_raw_fd(),
        &[IoSlice::new(&bytes[..1])],
        &cmsg,
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .unwrap();
    s.write_all(&bytes[1..]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
}

fn threads(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// Every fd a request passes is closed, however many it passes (on main at 1ba7f1d a request
/// with 3 or more fds leaked 2: the receive buffer held 2, and the truncated message's fds were
/// never closed). 300 requests with 3, 100 or 253 fds; 10,000 with 100 fds with IDMUX_LONG.
/// An ssh session streams and the bot renews throughout.
#[test]
fn fds_passed_on_v1_sock_are_always_closed() {
    let cl = DevCluster::start(C, 1);
    let bot = renewing_bot(&cl, vec![]);
    let sock = bot.dest.join("v1.sock");
    let pid = bot.pid();
    let target = format!("{}@node-1.{C}", me());
    assert!(ssh(&bot.ssh_config(), &[&target, "true"]).status.success());
    let mut witness = Witness::start(&bot, &target);
    let (fds0, rss0) = (settled_fds(pid, Duration::from_secs(5)), rss_kib(pid));
    let null = std::fs::File::open("/dev/null").unwrap();
    let t0 = Instant::now();
    let sizes: &[usize] = if scale(0, 1) == 1 {
        &[100]
    } else {
        &[3, 100, 253]
    };
    let n = scale(300, 10_000);
    for (n, count) in sizes.iter().cycle().take(n).enumerate() {
        let fds = vec![null.as_raw_fd(); *count];
        // A bad request and a good one (whose dial is refused): both paths close them.
        let bytes: &[u8] = if n % 2 == 0 {
            b"node-1:ssh\0"
        } else {
            b"node-9:3022\0"
        };
        request_with_fds(&sock, &fds, bytes);
    }
    let took = t0.elapsed();
    let fds1 = settled_fds(pid, Duration::from_secs(10));
    let rss1 = rss_kib(pid);
    assert!(fds1 <= fds0 + 2, "fds leaked: {fds0} -> {fds1}");
    assert!(ssh(&bot.ssh_config(), &[&target, "true"]).status.success());
    let seen = witness.check(1, Duration::from_secs(10));
    assert!(rss1 <= rss0 + 16 * 1024, "RSS {rss0} -> {rss1} KiB");
    torture_row(
        "v1.sock requests passing fds",
        "all fds closed; ssh and renewals kept working",
        &format!(
            "{n} requests with {sizes:?} fds in {took:.1?}; daemon fds {fds0} -> {fds1}, RSS \
             {rss0} -> {rss1} KiB; {seen}"
        ),
    );
}

/// A client whose stderr is a full pipe nobody reads gets no error line, and costs the daemon
/// no thread for good (on main at 1ba7f1d each such request pinned a thread in a blocking
/// write forever; 600 of them made 513 threads and hung a legitimate ssh).
#[test]
fn error_reports_never_block_on_a_full_stderr() {
    let cl = DevCluster::start(C, 1);
    let bot = BotProc::start(&cl, BotOptions::default());
    let sock = bot.dest.join("v1.sock");
    let pid = bot.pid();
    let target = format!("{}@node-1.{C}", me());
    assert!(ssh(&bot.ssh_config(), &[&target, "true"]).status.success());
    let threads0 = threads(pid);
    // 60 clients at once, each with a full pipe as its stderr (blocking again once full, its
    // read end kept open and never read), each asking for a node that does not exist.
    let t0 = Instant::now();
    let mut keep: Vec<OwnedFd> = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..60 {
        let (r, w) = nix::unistd::pipe().unwrap();
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        fcntl(&w, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
        let chunk = [b'x'; 4096];
        while nix::unistd::write(&w, &chunk).is_ok() {}
        fcntl(&w, FcntlArg::F_SETFL(OFlag::empty())).unwrap();
        keep.push(r);
        let sock = sock.clone();
        clients.push(std::thread::spawn(move || {
            request_with_fds(&sock, &[w.as_raw_fd()], b"node-9:3022\0");
            drop(w);
        }));
    }
    let mut most = threads0;
    while clients.iter().any(|c| !c.is_finished()) && t0.elapsed() < Duration::from_secs(20) {
        most = most.max(threads(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    for c in clients {
        let _ = c.join();
    }
    let took = t0.elapsed();
    eprintln!(
        "60 refused requests with a full stderr: all closed in {took:?}; daemon threads {threads0}, at most {most}"
    );
    // Each connection is closed within the report's wait (2 s), not held by a blocked write.
    assert!(took < Duration::from_secs(10), "the requests took {took:?}");
    // A legitimate ssh meanwhile is not held up.
    let t1 = Instant::now();
    assert!(ssh(&bot.ssh_config(), &[&target, "true"]).status.success());
    assert!(
        t1.elapsed() < Duration::from_secs(10),
        "ssh took {:?}",
        t1.elapsed()
    );
    assert!(
        most <= threads0 + 40,
        "the daemon's threads went {threads0} -> {most}: reports block threads"
    );
    // And they are released: no thread stays blocked on a pipe.
    assert!(
        wait_for(Duration::from_secs(30), || threads(pid) <= threads0 + 4),
        "threads stayed at {} (was {threads0})",
        threads(pid)
    );
    drop(keep);
    torture_row(
        "error reports to a full stderr pipe",
        "no thread blocked; ssh kept working",
        &format!("60 clients at once, all closed in {took:.1?}; daemon threads {threads0}, at most {most}"),
    );
}

/// Hold `n` TCP connections to `addr` that never send a byte, as another local user
/// (`nobody`), for `secs`; returns the process (its stdout says how many connected).
fn hold_as_nobody(addr: &str, n: usize, secs: u64) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let (host, port) = addr.rsplit_once(':').unwrap();
    let script = format!(
        "import resource, socket, sys, time\n\
         h = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n\
         resource.setrlimit(resource.RLIMIT_NOFILE, (h, h))\n\
         held = []\n\
         for _ in range({n}):\n\
         \x20   s = socket.socket(); s.setblocking(False)\n\
         \x20   try: s.connect(('{host}', {port}))\n\
         \x20   except BlockingIOError: pass\n\
         \x20   except OSError: break\n\
         \x20   held.append(s)\n\
         print(len(held), flush=True)\n\
         time.sleep({secs})\n"
    );
    Command::new("python3")
        .args(["-c", &script])
        .uid(65534)
        .gid(65534)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// `--diag-addr` is reachable by any local user: connections another user holds without
/// sending a request (500; 20,000 with IDMUX_LONG) take at most the cap of the daemon's fds,
/// and only for the header timeout; ssh streams and the bot renews throughout, and `/metrics`
/// answers once they are gone (on main at 1ba7f1d: no cap, no timeout, 20,400 held
/// connections took 20,000 fds). `/metrics` also counts the bytes relayed down to ssh (never
/// counted on main at 1ba7f1d).
#[test]
fn diag_connections_are_capped_and_timed_out() {
    let cl = DevCluster::start(C, 1);
    let diag = format!("127.0.0.1:{}", idmux_devcluster::node::free_port().unwrap());
    let bot = renewing_bot(&cl, vec![format!("--diag-addr={diag}")]);
    let pid = bot.pid();
    let target = format!("{}@node-1.{C}", me());
    let metrics = || {
        stdout(&run(Command::new("curl").args([
            "-s",
            "-m",
            "5",
            &format!("http://{diag}/metrics"),
        ])))
    };
    assert!(wait_for(Duration::from_secs(10), || metrics()
        .contains("idmux_relayed_bytes_total")));
    assert!(
        ssh(&bot.ssh_config(), &[&target, "head -c 100000 /dev/zero"])
            .status
            .success()
    );
    let down: u64 = metrics()
        .lines()
        .find_map(|l| l.strip_prefix("idmux_relayed_bytes_total{direction=\"down\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(down >= 100_000, "bytes down not counted: {down}");
    let mut witness = Witness::start(&bot, &target);
    let (fds0, rss0) = (settled_fds(pid, Duration::from_secs(5)), rss_kib(pid));
    let n = scale(500, 20_000);
    let mut holder = hold_as_nobody(&diag, n, 30);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let connected: usize = line.trim().parse().unwrap_or(0);
    assert!(
        connected >= n / 2,
        "only {connected} of {n} connections were made"
    );
    let mut most = 0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2) {
        most = most.max(fd_count(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    let cap = idmux_client::mux::limits::Limits::default().diag_max_connections;
    assert!(most <= fds0 + cap + 4, "fds {fds0} -> {most}");
    assert!(ssh(&bot.ssh_config(), &[&target, "true"]).status.success());
    // The daemon drops them after the header timeout, though the client keeps them open.
    assert!(
        wait_for(Duration::from_secs(25), || fd_count(pid) <= fds0 + 2),
        "fds stayed at {} (was {fds0})",
        fd_count(pid)
    );
    let seen = witness.check(2, Duration::from_secs(10));
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(wait_for(Duration::from_secs(10), || metrics()
        .contains("tbot_ssh_multiplexer_requests_started_total")));
    let rss1 = rss_kib(pid);
    assert!(rss1 <= rss0 + 16 * 1024, "RSS {rss0} -> {rss1} KiB");
    torture_row(
        "diag connections held by another user",
        "at most the cap held, each dropped at the header timeout; ssh and renewals kept working",
        &format!(
            "{connected} held by nobody; daemon fds {fds0} -> at most {most} (cap {cap}) -> \
             back to {fds0}; RSS {rss0} -> {rss1} KiB; {seen}"
        ),
    );
}

/// agent.sock slowloris: 1,000 connections announcing 256 KiB requests and sending 200 KiB of
/// them, then 400 within the size limit that never finish. The daemon refuses the oversized at
/// once, holds the others at most the request timeout, and its RSS and fds come back (on main
/// at 1ba7f1d: no timeout, no cap, 1,000 such connections held 281 MiB).
#[test]
fn agent_socket_slowloris_is_bounded() {
    let cl = DevCluster::start(C, 1);
    let bot = renewing_bot(&cl, vec![]);
    let pid = bot.pid();
    let sock = bot.dest.join("agent.sock");
    let target = format!("{}@node-1.{C}", me());
    assert!(ssh(&bot.ssh_config(), &[&target, "true"]).status.success());
    let mut witness = Witness::start(&bot, &target);
    let (fds0, rss0) = (settled_fds(pid, Duration::from_secs(5)), rss_kib(pid));
    let partial = |announce: u32, send: usize| {
        let mut s = UnixStream::connect(&sock).ok()?;
        s.set_nonblocking(true).ok()?;
        let mut bytes = announce.to_be_bytes().to_vec();
        bytes.extend(std::iter::repeat_n(b'x', send));
        let mut off = 0;
        while off < bytes.len() {
            match s.write(&bytes[off..]) {
                Ok(n) => off += n,
                Err(_) => break,
            }
        }
        Some(s)
    };
    let mut held: Vec<UnixStream> = (0..1000)
        .filter_map(|_| partial(256 * 1024, 200 * 1024))
        .collect();
    held.extend((0..400).filter_map(|_| partial(60 * 1024, 30 * 1024)));
    std::thread::sleep(Duration::from_secs(1));
    let (fds1, rss1) = (fd_count(pid), rss_kib(pid));
    eprintln!("agent.sock slowloris: daemon fds {fds0} -> {fds1}, RSS {rss0} -> {rss1} KiB");
    assert!(rss1 <= rss0 + 48 * 1024, "RSS {rss0} -> {rss1} KiB");
    // Within the request timeout (10 s) every partial request is dropped.
    assert!(
        wait_for(Duration::from_secs(20), || fd_count(pid) <= fds0 + 2),
        "fds stayed at {} (was {fds0})",
        fd_count(pid)
    );
    assert!(ssh(&bot.ssh_config(), &[&target, "true"]).status.success());
    drop(held);
    let seen = witness.check(1, Duration::from_secs(10));
    // Freed buffers go back to the system within a trim interval (5 s).
    let mut rss2 = rss_kib(pid);
    let back = wait_for(Duration::from_secs(15), || {
        rss2 = rss_kib(pid);
        rss2 <= rss0 + 4 * 1024
    });
    assert!(back, "RSS {rss0} -> {rss1} -> {rss2} KiB: not returned");
    torture_row(
        "agent.sock slowloris",
        "oversized refused, partial requests dropped at the timeout; ssh and renewals kept working",
        &format!(
            "1,000 x 200 KiB of 256 KiB + 400 x 30 KiB of 60 KiB; daemon fds {fds0} -> {fds1} -> \
             back; RSS {rss0} -> {rss1} -> {rss2} KiB; {seen}"
        ),
    );
}

/// A dev cluster started with a relative `--data-dir` runs working nodes (on main at 1ba7f1d
/// sshd got a relative config path and the nodes never came up).
#[test]
fn a_dev_cluster_with_a_relative_data_dir() {
    let cl = DevCluster::start_full(
        tempfile::tempdir().unwrap(),
        C,
        1,
        cluster_transports(),
        ClusterOptions {
            relative_data_dir: true,
            ..Default::default()
        },
    );
    let bot = BotProc::start(&cl, BotOptions::default());
    let o = ssh(
        &bot.ssh_config(),
        &[&format!("{}@node-1.{C}", me()), "true"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Temp files a bot killed mid-write left in its data dir and destination are removed at the
/// next start, once it holds their locks (on main at 1ba7f1d, nothing ever removed them: 4 of
/// 50 kill -9 during renewals left one).
#[test]
fn temp_files_of_a_killed_write_are_removed_at_start() {
    let cl = DevCluster::start(C, 0);
    let work = tempfile::tempdir().unwrap();
    let (data, dest) = (work.path().join("data"), work.path().join("dest"));
    let token = cl.token("ci", &me());
    let oneshot = || {
        run(Command::new(idmux_bin())
            .args(cl.start_args(&data, &dest, &token))
            .arg("--oneshot"))
    };
    let o = oneshot();
    assert!(o.status.success(), "{}", stderr(&o));
    let stale = [
        data.join(".key.tmp-4242-17"),
        data.join(".key-cert.pub.tmp-4242-18"),
        dest.join(".identity.tmp-4242-19"),
    ];
    for f in &stale {
        std::fs::write(f, b"half a write").unwrap();
    }
    let o = oneshot();
    assert!(o.status.success(), "{}", stderr(&o));
    for f in &stale {
        assert!(!f.exists(), "{} left behind", f.display());
    }
    assert!(
        stderr(&o).contains("removed 2 temp file(s)"),
        "{}",
        stderr(&o)
    );
}
