//! Soak (issue 8): 5,000 sequential and then 50-way concurrent connections through the
//! daemon's v1.sock to a real sshd node, with real `ssh` runs mixed in. The daemon's open fds
//! and RSS are sampled before, during and after: fds come back to the baseline exactly, RSS
//! levels off (allocator caches may keep some, it must not keep growing).
//!
//! Each connection is what `idmux-fdpass` does (request + stderr fd via SCM_RIGHTS on
//! v1.sock), then reads the node's SSH banner through the relayed stream and hangs up.

mod common;

use std::io::{IoSlice, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const C: &str = "dev.test";
const SEQUENTIAL: usize = 5000;
const WORKERS: usize = 50;
const PER_WORKER: usize = 40;

/// One v1.sock connection: the request with a stderr pipe attached, then the node's banner.
fn banner(sock: &Path, request: &str) -> Result<(), String> {
    let s = UnixStream::connect(sock).map_err(|e| format!("connect: {e}"))?;
    let (r, w) = nix::unistd::pipe().unwrap();
    let fds = [w.as_raw_fd()];
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
    let req = format!("{request}\0");
    nix::sys::socket::sendmsg::<()>(
        s.as_raw_fd(),
        &[IoSlice::new(req.as_bytes())],
        &cmsg,
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .map_err(|e| format!("sendmsg: {e}"))?;
    drop(w);
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.contains(&b'\n') {
        match (&s).read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    if got.starts_with(b"SSH-2.0-") && got.contains(&b'\n') {
        return Ok(());
    }
    drop(s);
    let mut err = String::new();
    let _ = std::fs::File::from(r).read_to_string(&mut err);
    Err(format!(
        "no SSH banner ({:?}); daemon said {err:?}",
        String::from_utf8_lossy(&got)
    ))
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: &'static str,
    n: usize,
    fds: usize,
    rss_kib: u64,
}

#[test]
fn soak_5000_sequential_and_50_way_concurrent() {
    let cl = DevCluster::start(C, 1);
    let mut bot = BotProc::start(&cl, BotOptions::default());
    let cfg = bot.ssh_config();
    let sock = bot.dest.join("v1.sock");
    let pid = bot.pid();
    let request = format!("node-1.{C}:3022|{C}");
    let node = format!("{}@node-1.{C}", me());
    assert!(ssh(&cfg, &[&node, "true"]).status.success());
    banner(&sock, &request).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let sample = |at, n| Sample {
        at,
        n,
        fds: fd_count(pid),
        rss_kib: rss_kib(pid),
    };
    let base = sample("before", 0);
    let base_list = fd_list(pid);
    let mut samples = vec![base];

    // Sequential, with a real ssh every 250 connections.
    let t0 = Instant::now();
    let mut ssh_runs = 0;
    for i in 1..=SEQUENTIAL {
        banner(&sock, &request).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        if i % 250 == 0 {
            let o = ssh(&cfg, &[&node, "echo ok"]);
            assert_eq!(stdout(&o), "ok\n", "ssh after {i}: {}", stderr(&o));
            ssh_runs += 1;
        }
        if i % 500 == 0 {
            samples.push(sample("sequential", i));
        }
    }
    let seq_time = t0.elapsed();

    // 50 at once, each worker connecting PER_WORKER times; sampled from the side.
    let t1 = Instant::now();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = (0usize, 0u64);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak.0 = peak.0.max(fd_count(pid));
                peak.1 = peak.1.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        })
    };
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let sock = sock.clone();
            let request = request.clone();
            std::thread::spawn(move || {
                for i in 0..PER_WORKER {
                    banner(&sock, &request)
                        .unwrap_or_else(|e| panic!("worker {w} connection {i}: {e}"));
                }
            })
        })
        .collect();
    // Real ssh sessions alongside the burst.
    let kids: Vec<_> = (0..10)
        .map(|_| {
            std::process::Command::new("ssh")
                .arg("-F")
                .arg(&cfg)
                .args(["-o", "BatchMode=yes", &node, "echo ok"])
                .output()
        })
        .collect();
    for k in kids {
        let o = k.unwrap();
        assert!(o.status.success(), "ssh in the burst: {}", stderr(&o));
        ssh_runs += 1;
    }
    for w in workers {
        w.join().expect("a worker failed");
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let conc_time = t1.elapsed();
    samples.push(Sample {
        at: "concurrent peak",
        n: WORKERS * PER_WORKER,
        fds: peak.0,
        rss_kib: peak.1,
    });

    // Settle: every connection closed, the warm upstream kept.
    wait_for(Duration::from_secs(15), || fd_count(pid) <= base.fds);
    std::thread::sleep(Duration::from_secs(1));
    let after = sample("after", SEQUENTIAL + WORKERS * PER_WORKER);
    samples.push(after);
    for s in &samples {
        eprintln!(
            "{:>16} after {:>5} connections: {:>3} fds, RSS {:>6} KiB",
            s.at, s.n, s.fds, s.rss_kib
        );
    }
    eprintln!(
        "soak: {SEQUENTIAL} sequential in {seq_time:?} ({:.1} ms each), {} concurrent ({WORKERS}-way) \
         in {conc_time:?}, {ssh_runs} real ssh runs, 0 failed",
        seq_time.as_secs_f64() * 1000.0 / SEQUENTIAL as f64,
        WORKERS * PER_WORKER
    );
    assert!(bot.alive(), "the daemon exited: {}", bot.log_text());
    assert_eq!(
        after.fds,
        base.fds,
        "fds did not return to baseline:\nbefore {base_list:#?}\nafter {:#?}",
        fd_list(pid)
    );
    // RSS levels off: the second half of the sequential run adds (almost) nothing, and the
    // end is within a bounded distance of the start.
    let mid = samples.iter().find(|s| s.n == SEQUENTIAL / 2).unwrap();
    let end_seq = samples.iter().find(|s| s.n == SEQUENTIAL).unwrap();
    assert!(
        end_seq.rss_kib <= mid.rss_kib + 4 * 1024,
        "RSS kept growing: {} KiB at {} -> {} KiB at {}",
        mid.rss_kib,
        mid.n,
        end_seq.rss_kib,
        end_seq.n
    );
    assert!(
        after.rss_kib <= base.rss_kib + 24 * 1024,
        "RSS {} KiB -> {} KiB",
        base.rss_kib,
        after.rss_kib
    );
}
