//! Faults (issue 8): the proxy restarted under 50 open sessions, a node's sshd killed
//! mid-session, the destination disk full during renewals, the data dir lock held, and the
//! bot's clock moved 5 minutes either way. Real ssh, sshd and the daemon throughout; `idmux
//! start` flags come from `idmux_testkit::BotProc` (plus `IDMUX_TEST_START_ARGS`, e.g. a transport).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use idmux_testkit::*;

const C: &str = "dev.test";

fn target(node: &str) -> String {
    format!("{}@{node}.{C}", me())
}

/// An interactive ssh session: prints `up`, then echoes one line back and exits.
struct Session {
    child: Reaped,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Session {
    fn spawn(cfg: &Path, node: &str) -> Session {
        let mut child = Command::new("ssh")
            .arg("-F")
            .arg(cfg)
            .args(["-o", "BatchMode=yes", "-o", "ServerAliveInterval=5"])
            .arg(target(node))
            .arg("echo up; read x; echo got $x")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn_reaped();
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Session {
            stdin: child.stdin.take(),
            child,
            lines: rx,
        }
    }

    fn wait_up(&mut self) {
        match self.lines.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if l == "up" => {}
            other => {
                let _ = self.child.kill();
                let o = self.child.wait_with_output_ref();
                panic!("session did not come up: {other:?}: {o}");
            }
        }
    }

    /// Wait for the process to end; None if it is still running after `limit`.
    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

trait StderrOf {
    fn wait_with_output_ref(&mut self) -> String;
}

impl StderrOf for Child {
    fn wait_with_output_ref(&mut self) -> String {
        let _ = self.wait();
        let mut s = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
        }
        s
    }
}

/// `n` concurrent `ssh … echo ok`; returns the stderr of the failed ones.
fn concurrent_ssh(cfg: &Path, node: &str, n: usize) -> Vec<String> {
    let kids: Vec<Child> = (0..n)
        .map(|_| {
            Command::new("ssh")
                .arg("-F")
                .arg(cfg)
                .args(["-o", "BatchMode=yes", &target(node), "echo ok"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    kids.into_iter()
        .filter_map(|k| {
            let o = k.wait_with_output().unwrap();
            (!(o.status.success() && stdout(&o) == "ok\n")).then(|| stderr(&o))
        })
        .collect()
}

fn ssh_ok(cfg: &Path, node: &str) -> bool {
    ssh(cfg, &[&target(node), "true"]).status.success()
}

/// Wait for the daemon's fd count to come back to `base` (connections closing is async).
fn settle_fds(pid: u32, base: usize) -> usize {
    wait_for(Duration::from_secs(15), || fd_count(pid) <= base);
    fd_count(pid)
}

#[test]
fn proxy_restart_under_50_open_sessions() {
    let _serial = exclusive(); // asserts a deadline or loads the machine
    let mut cl = DevCluster::start(C, 1);
    let mut bot = BotProc::start(&cl, BotOptions::default());
    let cfg = bot.ssh_config();
    let pid = bot.pid();
    assert!(ssh_ok(&cfg, "node-1"));
    let (fds0, rss0) = (settled_fds(pid, Duration::from_secs(5)), rss_kib(pid));
    let list0 = fd_list(pid);

    let mut sessions: Vec<Session> = (0..50).map(|_| Session::spawn(&cfg, "node-1")).collect();
    for s in &mut sessions {
        s.wait_up();
    }
    let fds_open = fd_count(pid);
    let t0 = Instant::now();
    cl.restart(1);
    let restarted = t0.elapsed();

    // The proxy held every session's stream: each one ends promptly, none hangs.
    let mut hung = 0;
    let mut failed = 0;
    for s in &mut sessions {
        match s.wait_exit(Duration::from_secs(30)) {
            None => hung += 1,
            Some(st) if !st.success() => failed += 1,
            Some(_) => {}
        }
    }
    assert_eq!(
        hung, 0,
        "{hung} of 50 sessions hung after the proxy restart"
    );
    drop(sessions);
    assert!(bot.alive(), "the daemon exited: {}", bot.log_text());

    // Back in service: 50 new concurrent sessions all succeed.
    assert!(
        wait_for(Duration::from_secs(20), || ssh_ok(&cfg, "node-1")),
        "no session after the restart: {}",
        bot.log_text()
    );
    let failures = concurrent_ssh(&cfg, "node-1", 50);
    assert!(
        failures.is_empty(),
        "{} of 50 new sessions failed, first: {}",
        failures.len(),
        failures[0]
    );
    let fds1 = settle_fds(pid, fds0);
    let rss1 = rss_kib(pid);
    eprintln!(
        "proxy restart under 50 sessions: restart took {restarted:?}; {failed} sessions cut, 0 hung; \
         daemon fds {fds0} -> {fds_open} (open) -> {fds1}, RSS {rss0} -> {rss1} KiB"
    );
    assert_eq!(
        fds1,
        fds0,
        "the daemon's fds did not return to baseline:\nbefore {list0:#?}\nafter {:#?}",
        fd_list(pid)
    );
}

/// Pids of every descendant of `pid`: testkit's `children_of`, generation by generation.
fn descendants(pid: i32) -> Vec<i32> {
    let mut out: Vec<i32> = vec![];
    let mut frontier = vec![pid];
    while let Some(x) = frontier.pop() {
        for c in children_of(x as u32) {
            if !out.contains(&c) {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}

#[test]
fn node_sshd_killed_mid_session() {
    let cl = DevCluster::start(C, 2);
    let mut bot = BotProc::start(&cl, BotOptions::default());
    let cfg = bot.ssh_config();
    let pid = bot.pid();
    // The baseline comes after one session: a second one right after may find the first still
    // closing and go to the second relay thread, whose upstream connection then stays open for
    // 5 s idle (SHARD_IDLE). Counted in the baseline, it was gone by the end (CI: 21 -> 20).
    assert!(ssh_ok(&cfg, "node-1"));
    let fds0 = settled_fds(pid, Duration::from_secs(5));
    assert!(ssh_ok(&cfg, "node-2"));

    let mut s1 = Session::spawn(&cfg, "node-1");
    let mut s2 = Session::spawn(&cfg, "node-2");
    s1.wait_up();
    s2.wait_up();

    // SIGKILL node-1's sshd: the listener and every per-connection process under it.
    let pidfile = cl.data_dir().join("nodes/node-1/sshd.pid");
    let master: i32 = std::fs::read_to_string(&pidfile)
        .unwrap_or_else(|e| panic!("{}: {e}", pidfile.display()))
        .trim()
        .parse()
        .unwrap();
    let kids = descendants(master);
    assert!(!kids.is_empty(), "node-1's sshd has no session process");
    for p in std::iter::once(master).chain(kids.iter().copied()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let t0 = Instant::now();
    let st = s1.wait_exit(Duration::from_secs(20));
    assert!(
        matches!(st, Some(s) if !s.success()),
        "the session on the killed node did not end: {st:?}"
    );
    let ended = t0.elapsed();

    // The session on node-2 shares the upstream connection and carries on.
    let stdin = s2.stdin.as_mut().unwrap();
    writeln!(stdin, "hello").unwrap();
    let got = s2.lines.recv_timeout(Duration::from_secs(10));
    assert_eq!(got.as_deref(), Ok("got hello"));
    assert!(s2.wait_exit(Duration::from_secs(10)).unwrap().success());

    // New sessions: node-2 works; node-1 fails with one line from the daemon.
    assert!(ssh_ok(&cfg, "node-2"));
    let o = ssh(&cfg, &[&target("node-1"), "true"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    let idmux_lines: Vec<&str> = err.lines().filter(|l| l.starts_with("idmux:")).collect();
    assert_eq!(idmux_lines.len(), 1, "{}", stderr(&o));
    assert!(bot.alive(), "the daemon exited: {}", bot.log_text());
    drop((s1, s2));
    let fds1 = settle_fds(pid, fds0);
    eprintln!(
        "sshd killed mid-session: its session ended after {ended:?}; the other session and new \
         ones unaffected; node-1 now fails with {:?}; daemon fds {fds0} -> {fds1}",
        idmux_lines[0]
    );
    assert_eq!(fds1, fds0);
}

/// Unmounts (lazily) on drop.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn count(log: &str, what: &str) -> usize {
    log.matches(what).count()
}

/// The bot's write attempts so far: each renewal either writes the outputs or fails.
fn write_attempts(bot: &BotProc) -> usize {
    let log = bot.log_text();
    count(&log, "output(s) written") + count(&log, "renewal failed")
}

/// Every file of the destination parses and pairs up, no temp file is left behind, and ssh
/// works through the daemon and with the key files alone.
///
/// The bot renews every 2 s in these tests, and a reader that looks while a write runs sees
/// its temp files and a set half renamed (README, Known limits): that is not a damaged dir.
/// So a check that fails while a write attempt ran is made again, up to 3 times; one that
/// fails with no write beside it, or a 4th time, fails the test. A temp file left behind or
/// a pair that never matches still fails: they outlive every write.
fn assert_destination_usable(bot: &BotProc, cfg: &Path) {
    let mut overlapped = 0;
    loop {
        let before = write_attempts(bot);
        let Err(e) = check_destination(&bot.dest, cfg) else {
            return;
        };
        // A write that was running when the check failed logs its end within a few seconds.
        let beside = wait_for(Duration::from_secs(5), || write_attempts(bot) > before);
        overlapped += 1;
        assert!(
            beside && overlapped <= 3,
            "the destination is not usable ({}): {e}",
            if beside {
                "4 checks in a row met a write"
            } else {
                "no write ran beside the check"
            }
        );
        eprintln!("destination check met a write ({e}); checking again");
    }
}

fn check_destination(dest: &Path, cfg: &Path) -> Result<(), String> {
    let id = idmux_identity::Identity::load_destination(dest)
        .map_err(|e| format!("identity does not parse: {e:#}"))?;
    id.check_consistent().map_err(|e| format!("{e:#}"))?;
    let read =
        |name: &str| std::fs::read_to_string(dest.join(name)).map_err(|e| format!("{name}: {e}"));
    let key = idmux_identity::KeyPair::from_pem(&read("key")?)
        .map_err(|e| format!("key does not parse: {e:#}"))?;
    let cert = russh::keys::ssh_key::Certificate::from_openssh(read("key-cert.pub")?.trim())
        .map_err(|e| format!("key-cert.pub does not parse: {e}"))?;
    if !key.matches_ssh(cert.public_key()) {
        return Err("key and key-cert.pub do not pair".into());
    }
    let leftovers: Vec<String> = std::fs::read_dir(dest)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    if !leftovers.is_empty() {
        return Err(format!("temp files left: {leftovers:?}"));
    }
    // Through the daemon (agent.sock) and with the key files alone.
    if !ssh_ok(cfg, "node-1") {
        return Err("ssh through the multiplexer failed".into());
    }
    let key_path = dest.join("key");
    let cert_opt = format!("CertificateFile={}", dest.join("key-cert.pub").display());
    let with_key_files = || {
        ssh(
            cfg,
            &[
                "-o",
                "IdentityAgent=none",
                "-o",
                "IdentitiesOnly=yes",
                "-i",
                key_path.to_str().unwrap(),
                "-o",
                &cert_opt,
                &target("node-1"),
                "true",
            ],
        )
    };
    let o = with_key_files();
    // ssh reads the public half at start and the key when it signs: a renewal between the
    // two is the same reader race, retried by the caller.
    if !o.status.success() {
        return Err(format!("ssh with key files: {}", stderr(&o).trim()));
    }
    Ok(())
}

#[test]
fn destination_disk_full_during_renewal() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP destination_disk_full_during_renewal: mounting a tmpfs needs root");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    let o = run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k,mode=0700", "idmux-test"])
        .arg(&dest));
    if !o.status.success() {
        eprintln!(
            "SKIP destination_disk_full_during_renewal: cannot mount a tmpfs: {}",
            stderr(&o).trim()
        );
        return;
    }
    let _mount = Mount(dest.clone());
    let cl = DevCluster::start(C, 1);
    let mut bot = BotProc::start(
        &cl,
        BotOptions {
            dest: Some(dest.clone()),
            args: vec![
                "--certificate-ttl=1m".into(),
                "--renewal-interval=2s".into(),
            ],
            ..Default::default()
        },
    );
    let cfg = bot.ssh_config();
    assert!(wait_for(Duration::from_secs(15), || count(
        &bot.log_text(),
        "output(s) written"
    ) >= 2));
    assert_destination_usable(&bot, &cfg);

    // Fill the disk: tmpfs allocates whole pages, so afterwards not one byte fits.
    let filler = dest.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut filled = 0usize;
    loop {
        match f.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
    }
    drop(f);
    let probe = dest.join("probe");
    assert!(
        std::fs::write(&probe, b"x").is_err(),
        "the disk is not full"
    );
    let _ = std::fs::remove_file(&probe);
    let failed_before = count(&bot.log_text(), "No space left on device");
    assert!(
        wait_for(Duration::from_secs(30), || count(
            &bot.log_text(),
            "No space left on device"
        ) >= failed_before + 3),
        "no renewal failed on the full disk: {}",
        bot.log_text()
    );
    let full_failures = count(&bot.log_text(), "No space left on device");
    assert!(bot.alive(), "the bot stopped: {}", bot.log_text());
    assert_destination_usable(&bot, &cfg);
    let serial_full = idmux_identity::Identity::load_destination(&dest)
        .unwrap()
        .ssh_cert
        .serial();

    // Space returns: the next renewal writes the outputs again.
    std::fs::remove_file(&filler).unwrap();
    let wrote = count(&bot.log_text(), "output(s) written");
    let t0 = Instant::now();
    assert!(
        wait_for(Duration::from_secs(30), || count(
            &bot.log_text(),
            "output(s) written"
        ) > wrote),
        "no output written after space returned: {}",
        bot.log_text()
    );
    let recovered = t0.elapsed();
    assert_ne!(
        idmux_identity::Identity::load_destination(&dest)
            .unwrap()
            .ssh_cert
            .serial(),
        serial_full
    );
    assert_destination_usable(&bot, &cfg);
    assert!(bot.alive());
    eprintln!(
        "disk full: filled {} KiB, {full_failures} renewals failed with ENOSPC while every file \
         stayed usable; outputs written again {recovered:?} after space returned",
        filled / 1024
    );
}

#[test]
fn data_dir_lock_held() {
    let _serial = exclusive(); // asserts a deadline or loads the machine
    let cl = DevCluster::start(C, 1);
    let work = tempfile::tempdir().unwrap();
    let (data, dest) = (work.path().join("data"), work.path().join("dest"));
    std::fs::create_dir(&data).unwrap();
    let token = cl.token("ci", &me());
    let start = || {
        let mut c = Command::new(idmux_bin());
        c.args(cl.start_args(&data, &dest, &token))
            .args(extra_start_args());
        c
    };

    // Someone else (another bot) holds the lock: refuse before touching anything.
    let held = idmux_client::bot::lock_data_dir(&data).unwrap();
    let o = run(start().arg("--oneshot"));
    assert!(!o.status.success());
    let line = error_line(&o);
    assert!(
        line.contains("another bot holds this data dir's lock")
            && line.contains(&data.join("lock").display().to_string()),
        "{line}"
    );
    let names: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["lock".to_string()],
        "wrote into a locked data dir"
    );
    assert!(!dest.exists(), "wrote a destination while locked");

    // Released: the same token still joins (the refused start did not spend it).
    drop(held);
    let mut bot = BotProc::start(
        &cl,
        BotOptions {
            data: Some(data.clone()),
            dest: Some(dest.clone()),
            token: Some(token.clone()),
            ..Default::default()
        },
    );
    assert!(ssh_ok(&bot.ssh_config(), "node-1"));

    // A second bot on the running bot's data dir stops at once; the first keeps serving.
    let t0 = Instant::now();
    let o = run(&mut start());
    assert!(!o.status.success());
    assert!(error_line(&o).contains("lock"));
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(bot.alive());
    assert!(ssh_ok(&bot.ssh_config(), "node-1"));
    eprintln!(
        "data dir lock: refused with {line:?}; a second bot beside a running one stopped in {:?}",
        t0.elapsed()
    );
}

/// Debian's libfaketime (`/usr/lib/<multiarch>/faketime/libfaketime.so.1`), if installed.
fn faketime_lib() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib")
        .ok()?
        .flatten()
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists())
}

/// libfaketime settings for a process whose clock offset is read from `file` at every call.
fn faketime_env(lib: &Path, file: &Path) -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".into(), lib.display().to_string()),
        ("FAKETIME_TIMESTAMP_FILE".into(), file.display().to_string()),
        ("FAKETIME_NO_CACHE".into(), "1".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

/// The time stamp of the last line the bot logged (tracing writes its wall clock).
fn last_log_time(log: &str) -> Option<std::time::SystemTime> {
    log.lines().rev().find_map(|l| {
        let mut plain = String::new();
        let mut esc = false;
        for ch in l.chars() {
            match (esc, ch) {
                (false, '\x1b') => esc = true,
                (true, 'm') => esc = false,
                (true, _) => {}
                (false, c) => plain.push(c),
            }
        }
        humantime::parse_rfc3339_weak(plain.split_whitespace().next()?).ok()
    })
}

/// The bot's wall clock jumps 5 minutes ahead, then 5 minutes behind the cluster's, while it
/// runs (libfaketime, offset read from a file): renewals and ssh keep working.
#[test]
fn clock_moved_five_minutes_either_way() {
    let Some(lib) = faketime_lib() else {
        eprintln!(
            "SKIP clock_moved_five_minutes_either_way: libfaketime.so.1 is missing \
             (scripts/install-deps.sh installs libfaketime)"
        );
        return;
    };
    let work = tempfile::tempdir().unwrap();
    // The cluster's certificates must be older than the bot's lag, as a real proxy's are:
    // start the cluster 10 minutes in the past, then put its clock right.
    let cluster_clock = work.path().join("cluster-clock");
    std::fs::write(&cluster_clock, "-10m\n").unwrap();
    let cl = DevCluster::start_with(
        tempfile::tempdir().unwrap(),
        C,
        1,
        ClusterOptions {
            env: faketime_env(&lib, &cluster_clock),
            ..Default::default()
        },
    );
    std::fs::write(&cluster_clock, "+0\n").unwrap();

    let bot_clock = work.path().join("bot-clock");
    std::fs::write(&bot_clock, "+0\n").unwrap();
    let mut bot = BotProc::start(
        &cl,
        BotOptions {
            env: faketime_env(&lib, &bot_clock),
            args: vec![
                "--certificate-ttl=20m".into(),
                "--renewal-interval=2s".into(),
            ],
            ..Default::default()
        },
    );
    let cfg = bot.ssh_config();
    assert!(ssh_ok(&cfg, "node-1"));
    let mut phases = Vec::new();
    for offset in ["+5m", "-5m", "+0"] {
        std::fs::write(&bot_clock, format!("{offset}\n")).unwrap();
        let renewed = count(&bot.log_text(), "renewed: bot identity");
        let wrote = count(&bot.log_text(), "output(s) written");
        assert!(
            wait_for(Duration::from_secs(20), || {
                let l = bot.log_text();
                count(&l, "renewed: bot identity") >= renewed + 2
                    && count(&l, "output(s) written") >= wrote + 2
            }),
            "clock {offset}: no renewals: {}",
            bot.log_text()
        );
        assert!(bot.alive(), "clock {offset}: the bot stopped");
        // The offset is real: the bot's log stamps carry it.
        let stamp = last_log_time(&bot.log_text()).expect("a time-stamped log line");
        let now = std::time::SystemTime::now();
        let skew = match stamp.duration_since(now) {
            Ok(ahead) => ahead.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        };
        let want = match offset {
            "+5m" => 300,
            "-5m" => -300,
            _ => 0,
        };
        assert!(
            (skew - want).abs() < 30,
            "clock {offset}: the bot's clock is {skew}s off, not {want}s: is libfaketime working?"
        );
        assert_destination_usable(&bot, &cfg);
        let o = ssh(&cfg, &[&target("node-1"), "echo skewed"]);
        assert_eq!(stdout(&o), "skewed\n", "clock {offset}: {}", stderr(&o));
        phases.push(offset);
    }
    let log = bot.log_text();
    assert_eq!(
        count(&log, "renewal failed"),
        0,
        "renewals failed with a moved clock: {log}"
    );
    eprintln!(
        "clock moved {phases:?}: {} renewals, none failed; ssh worked in every phase",
        count(&log, "renewed: bot identity")
    );
}
