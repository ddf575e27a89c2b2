//! Crashes and full disks (issue 17): a bot killed at any point of a renewal, or renewing onto a
//! full disk, never leaves a key beside another generation's certificate, never leaves temp
//! files behind a restart, and is locked out only by a kill between Auth's answer and the new
//! identity being durable (Auth bumps the generation before it answers, as Teleport does).
//!
//! The kill test prints one `crash:` summary line (cycles, locks, the answer-to-disk window,
//! the expected lock count) that `scripts/torture.sh` puts in its table.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use idmux_identity::KeyPair;
use idmux_testkit::*;
use russh::keys::ssh_key::Certificate;

const C: &str = "crash.test";

/// Does `DIR/key` belong to `DIR/key-cert.pub`? `None` while either is missing or unreadable
/// (before the first write).
fn pair_matches(dir: &Path) -> Option<(bool, String)> {
    let key = std::fs::read_to_string(dir.join("key")).ok()?;
    let cert = std::fs::read_to_string(dir.join("key-cert.pub")).ok()?;
    let k = KeyPair::from_pem(&key).ok()?.ssh_public().ok()?;
    let c = Certificate::from_openssh(cert.trim()).ok()?;
    Some((k.key_data() == c.public_key(), key))
}

/// What a reader of a dir saw over a run.
#[derive(Default)]
struct Seen {
    /// Reads whose two opens straddled a write (the key changed between a first and a second
    /// read of it) and paired a key with another write's certificate.
    torn: AtomicUsize,
    /// Reads of a key with another write's certificate, the key the same before and after
    /// reading the certificate: the reader landed between the renames of `key` and
    /// `key-cert.pub` of one live write (consecutive syscalls; on a loaded machine the writer
    /// can be preempted between them for a few ms). A reader's race that no file layout with
    /// tbot's names removes: ssh itself reads the certificate at start and the key at
    /// authentication, which is why the fdpass ssh_config uses the agent socket.
    mismatched: AtomicUsize,
    reads: AtomicUsize,
}

/// Read `dirs`' key/certificate pairs in a loop until `stop`.
fn poll_pairs(dirs: Vec<PathBuf>, stop: Arc<AtomicBool>, seen: Arc<Seen>) {
    while !stop.load(Ordering::Relaxed) {
        for d in &dirs {
            let Some((ok, key)) = pair_matches(d) else {
                continue;
            };
            seen.reads.fetch_add(1, Ordering::Relaxed);
            if ok {
                continue;
            }
            let again = std::fs::read_to_string(d.join("key")).unwrap_or_default();
            if again == key {
                seen.mismatched.fetch_add(1, Ordering::Relaxed);
            } else {
                seen.torn.fetch_add(1, Ordering::Relaxed);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Our temp files and journals in `dir`.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| idmux_identity::fsutil::is_temp_name(n) || n == ".idmux-set")
                .collect()
        })
        .unwrap_or_default()
}

fn spawn_bot(cl: &DevCluster, data: &Path, dest: &Path, token: &str, log: &Path) -> Reaped {
    Command::new(idmux_bin())
        .args(cl.start_args(data, dest, token))
        .args(["--certificate-ttl=1m", "--renewal-interval=1s"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn_reaped()
}

/// The `answer_to_disk_ms` of every renewal and join a bot log records.
fn windows_ms(log: &str) -> Vec<f64> {
    log.lines()
        .filter_map(|l| l.split("answer_to_disk_ms=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.trim_matches('"').parse().ok())
        .collect()
}

fn cycles() -> usize {
    std::env::var("IDMUX_KILL_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if std::env::var_os("IDMUX_LONG").is_some() {
            200
        } else {
            20
        })
}

/// kill -9 at a random point of a bot renewing every second, restart, repeat (20 times; 200
/// with IDMUX_LONG or IDMUX_KILL_CYCLES). A reader polls both dirs throughout: no stable
/// read ever pairs a key with another write's certificate; no temp file or journal survives a
/// restart, and no kill leaves a key beside another write's certificate once the next start has
/// run; a start refused by Auth (generation mismatch) is counted as a lock and must be rare
/// (the window between Auth's answer and the durable write, times the kills). On main at
/// 1ba7f1d the data dir's files were written one by one: 3 of 53 kills needed a new token.
#[test]
fn kill9_at_random_points_of_renewals() {
    let _x = exclusive();
    let cl = DevCluster::start(C, 0);
    let work = tempfile::tempdir().unwrap();
    let (data, dest) = (work.path().join("data"), work.path().join("dest"));
    let log = work.path().join("bot.log");
    let mut bot_n = 0;
    let mut token = cl.token("crash0", &me());
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let poller = {
        let (dirs, stop, seen) = (vec![data.clone(), dest.clone()], stop.clone(), seen.clone());
        std::thread::spawn(move || poll_pairs(dirs, stop, seen))
    };
    let n = cycles();
    let (mut locks, mut left_by_kill, mut journals_by_kill, mut split_by_kill) = (0, 0, 0, 0);
    let mut alive = Duration::ZERO;
    let mut windows: Vec<f64> = Vec::new();
    let mut rng_state = std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let mut rand_ms = |max: u64| {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state % max
    };
    for cycle in 0..n {
        let delay = Duration::from_millis(rand_ms(2000));
        let mut child = spawn_bot(&cl, &data, &dest, &token, &log);
        let started = Instant::now();
        let mut exited = None;
        while started.elapsed() < delay {
            if let Some(st) = child.try_wait().unwrap() {
                exited = Some(st);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let text = || std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(st) = exited {
            let t = text();
            assert!(
                t.contains("generation mismatch"),
                "cycle {cycle}: the bot exited ({st}) for another reason than a lock:\n{t}"
            );
            // Locked: as an operator would, a new bot (a new token) on the same dirs.
            locks += 1;
            bot_n += 1;
            token = cl.token(&format!("crash{bot_n}"), &me());
            continue;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        alive += started.elapsed();
        windows.extend(windows_ms(&text()));
        for d in [&data, &dest] {
            if pair_matches(d).is_some_and(|p| !p.0) {
                split_by_kill += 1;
            }
            let l = leftovers(d);
            left_by_kill += l.iter().filter(|n| *n != ".idmux-set").count();
            journals_by_kill += l.iter().filter(|n| *n == ".idmux-set").count();
        }
    }
    // A last start finishes or rolls back what the last kill left, then renews.
    let o = Command::new(idmux_bin())
        .args(cl.start_args(&data, &dest, &token))
        .args(["--certificate-ttl=1m", "--oneshot"])
        .output()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    poller.join().unwrap();
    let last = stderr(&o);
    let last_locked = last.contains("generation mismatch");
    assert!(
        o.status.success() || last_locked,
        "the last start failed: {last}"
    );
    locks += usize::from(last_locked);
    for d in [&data, &dest] {
        assert_eq!(
            leftovers(d),
            Vec::<String>::new(),
            "{} after a start",
            d.display()
        );
        if !last_locked {
            assert_eq!(pair_matches(d).map(|p| p.0), Some(true), "{}", d.display());
        }
    }
    windows.sort_by(f64::total_cmp);
    let mean = windows.iter().sum::<f64>() / windows.len().max(1) as f64;
    let p99 = windows
        .get(windows.len() * 99 / 100)
        .copied()
        .unwrap_or_default();
    // A kill lands in a window with probability (time inside windows) / (time alive).
    let expected = n as f64 * (windows.iter().sum::<f64>() / 1e3) / alive.as_secs_f64();
    let summary = format!(
        "crash: {n} kills; {locks} locks (expected {expected:.2} from {} stores, answer-to-disk \
         window mean {mean:.2} ms, p99 {p99:.2} ms, {:.0} s alive); kills that left temp files: \
         {left_by_kill}, a committed journal: {journals_by_kill}, key and certificate of two writes (finished by the next start): {split_by_kill}; after restart: 0; reads: {}, \
         torn by a write between two opens: {}, between two renames of one set: {}",
        windows.len(),
        alive.as_secs_f64(),
        seen.reads.load(Ordering::Relaxed),
        seen.torn.load(Ordering::Relaxed),
        seen.mismatched.load(Ordering::Relaxed),
    );
    eprintln!("{summary}");
    torture_row(
        "kill -9 at random points of renewals (every 1 s)",
        &format!("{locks} lock(s), expected {expected:.2}; no pair left split after a start; no temp file left"),
        summary.trim_start_matches("crash: "),
    );
    assert!(
        windows.len() >= n / 2,
        "few renewals were stored: {}",
        windows.len()
    );
    // Locks are chance events: allow a few above the expectation, never many.
    assert!(
        (locks as f64) <= expected * 3.0 + 2.0,
        "{locks} locks, expected about {expected:.2}"
    );
}

/// A data dir on a tmpfs that fills up: the renewal Auth answered cannot be stored, so the bot
/// keeps that identity in memory, logs the cause once per attempt, retries, and stores it (and
/// renews) without a new token once space is back. On main at 1ba7f1d the next renewal
/// presented the previous generation and Auth locked the bot.
#[test]
fn a_full_data_dir_keeps_the_bot_and_it_recovers_when_space_is_back() {
    let mnt = tempfile::tempdir().unwrap();
    let data = mnt.path().join("data");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
        .arg(mnt.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(
            !nix::unistd::geteuid().is_root(),
            "mount -t tmpfs failed as root"
        );
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _umount = Umount(mnt.path().to_path_buf());
    let cl = DevCluster::start(C, 0);
    let token = cl.token("ci", &me());
    let mut bot = BotProc::start(
        &cl,
        BotOptions {
            data: Some(data.clone()),
            token: Some(token.clone()),
            args: vec![
                "--certificate-ttl=1m".into(),
                "--renewal-interval=2s".into(),
            ],
            env: vec![("RUST_LOG".into(), "info".into())],
            ..Default::default()
        },
    );
    let key_before = std::fs::read(data.join("key")).unwrap();
    // Fill the tmpfs to the last byte.
    let fill = mnt.path().join("fill");
    let o = run(Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", fill.display()))
        .args(["bs=4k", "count=1000"]));
    assert!(
        !o.status.success(),
        "the tmpfs did not fill: {}",
        stderr(&o)
    );
    let full_at = bot.log_text().len();
    let failures = |b: &BotProc| {
        b.log_text()[full_at..]
            .lines()
            .filter(|l| l.contains("renewal failed") && l.contains("No space left on device"))
            .count()
    };
    assert!(
        wait_for(Duration::from_secs(30), || failures(&bot) >= 2),
        "no failed attempts logged: {}",
        bot.log_text()
    );
    let log = bot.log_text();
    let line = log[full_at..]
        .lines()
        .find(|l| l.contains("No space left on device"))
        .unwrap()
        .to_string();
    assert!(
        line.contains(&data.display().to_string()) && line.contains("kept in memory"),
        "{line}"
    );
    // One line per attempt, nothing else about it.
    let attempts = log[full_at..].matches("renewal failed (attempt").count();
    assert_eq!(
        log[full_at..].matches("No space left on device").count(),
        attempts,
        "{log}"
    );
    // The last good identity is still whole on disk.
    assert_eq!(std::fs::read(data.join("key")).unwrap(), key_before);
    assert_eq!(pair_matches(&data).map(|p| p.0), Some(true));
    assert_eq!(leftovers(&data), Vec::<String>::new());
    // Space back: the next attempt stores and renews, with no new token.
    std::fs::remove_file(&fill).unwrap();
    let renewed_at = bot.log_text().len();
    assert!(
        wait_for(Duration::from_secs(40), || bot.log_text()[renewed_at..]
            .contains("renewed: bot identity")),
        "no renewal once space was back: {}",
        bot.log_text()
    );
    assert!(bot.alive(), "{}", bot.log_text());
    assert_ne!(std::fs::read(data.join("key")).unwrap(), key_before);
    assert_eq!(pair_matches(&data).map(|p| p.0), Some(true));
    assert!(!bot.log_text().contains("generation mismatch"));
    // And a restart renews from what is on disk (Auth agrees on the generation).
    drop(bot);
    let o = run(Command::new(idmux_bin())
        .args(cl.start_args(&data, &mnt.path().join("dest2"), &token))
        .arg("--oneshot"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !stderr(&o).contains("joined with the token"),
        "{}",
        stderr(&o)
    );
    torture_row(
        "data dir on a tmpfs that fills",
        "last good identity kept; renewed without a new token once space was back",
        &format!("{attempts} failed attempts logged, one line each, while full; no lock"),
    );
}

/// A bot stopped between two renames of its data dir's set (the key renamed, its certificate
/// not: `IDMUX_FAILPOINT=set-rename:1` aborts there) leaves a split pair and the journal; the
/// next start writes the set again from the journal and renews with the generation Auth
/// issued. On main at 1ba7f1d (files written one by one, no journal) there was no failpoint
/// and nothing to finish such a split: a kill there left a key beside another renewal's
/// certificate (not rerun on that code; the issue counted 3 of 53 kills needing a new token).
/// Stopped right after the commit point (`set-committed`), the same.
#[test]
fn a_kill_inside_a_set_write_is_finished_by_the_next_start() {
    let cl = DevCluster::start(C, 0);
    let work = tempfile::tempdir().unwrap();
    let (data, dest) = (work.path().join("data"), work.path().join("dest"));
    let token = cl.token("ci", &me());
    let oneshot = |failpoint: Option<&str>| {
        let mut c = Command::new(idmux_bin());
        c.args(cl.start_args(&data, &dest, &token))
            .args(["--certificate-ttl=1m", "--oneshot"]);
        if let Some(f) = failpoint {
            c.env("IDMUX_FAILPOINT", f);
        }
        c.output().unwrap()
    };
    let o = oneshot(None);
    assert!(o.status.success(), "{}", stderr(&o));
    for fp in ["set-rename:1", "set-committed:1"] {
        let o = oneshot(Some(fp));
        assert!(
            !o.status.success(),
            "{fp}: the failpoint did not stop the bot"
        );
        assert!(data.join(".idmux-set").exists(), "{fp}: no journal left");
        if fp == "set-rename:1" {
            // The key is the new one, its certificate still the old.
            assert_eq!(pair_matches(&data).map(|p| p.0), Some(false), "{fp}");
        }
        let o = oneshot(None);
        let err = stderr(&o);
        assert!(o.status.success(), "{fp}: the next start failed: {err}");
        assert!(
            err.contains("finished the set of files an interrupted write had committed"),
            "{err}"
        );
        assert!(!err.contains("joined with the token"), "{err}");
        assert_eq!(pair_matches(&data).map(|p| p.0), Some(true));
        assert_eq!(leftovers(&data), Vec::<String>::new());
    }
}
