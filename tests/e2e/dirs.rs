//! Dirs that cannot be mixed up, and sharing a destination with another Unix user: a second
//! bot on a running bot's destination, a destination writable by others and one the bot
//! cannot write are all refused before the join token is spent and before anything is
//! written; `idmux init --reader-user` lets exactly that user run ssh and Ansible through
//! the root bot's destination (fdpass, the multiplexer's sockets), and nobody else.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use idmux_testkit::*;

const C: &str = "dirs.test";

/// The user `idmux init --reader-user` names in these tests.
const READER: &str = "idmux-reader";

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Run `cmd` for at most `limit`: the output, or a panic naming what still ran.
fn run_within(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?} (it should have been refused): {}",
                stderr(&o)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// `idmux start` for `cl` on `data` and `dest` with `token` (fdpass and the multiplexer,
/// unless `extra` says `--oneshot`).
fn start(cl: &DevCluster, data: &Path, dest: &Path, token: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(idmux_bin());
    c.args(cl.start_args(data, dest, token))
        .args(extra_start_args())
        .args(extra);
    c
}

/// The one error line idmux ends with.
fn error_line(o: &Output) -> String {
    let err = stderr(o);
    err.lines()
        .rfind(|l| l.starts_with("idmux: "))
        .unwrap_or_else(|| panic!("no error line: {err}"))
        .to_string()
}

/// What a destination holds, to compare before and after: each entry's name, inode, mtime
/// and (for files) bytes.
fn snapshot(dir: &Path) -> Vec<(String, u64, SystemTime, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            let bytes = if m.is_file() {
                std::fs::read(e.path()).unwrap()
            } else {
                Vec::new()
            };
            (
                e.file_name().to_string_lossy().into_owned(),
                m.ino(),
                m.modified().unwrap(),
                bytes,
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_second_bot_on_a_running_bots_destination_is_refused_before_it_writes() {
    let cl = DevCluster::start(C, 1);
    let bot = BotProc::start(&cl, BotOptions::default());
    let before = snapshot(&bot.dest);
    assert!(before.iter().any(|(n, ..)| n == "agent.sock"), "{before:?}");

    let work = tempfile::tempdir().unwrap();
    let data2 = work.path().join("data2");
    let token2 = cl.token("second", &me());
    let o = run_within(
        &mut start(&cl, &data2, &bot.dest, &token2, &[]),
        Duration::from_secs(30),
    );
    assert!(!o.status.success());
    assert_eq!(
        error_line(&o),
        format!(
            "idmux: --destination-dir {}: another bot writes this dir (its lock is held); give \
             each bot its own destination",
            bot.dest.display()
        )
    );
    // Nothing of the first bot's changed: same keys, same inodes, same sockets.
    assert_eq!(snapshot(&bot.dest), before);
    // The second bot joined nothing: no identity in its data dir, and its token still works.
    assert!(!data2.join("identity").exists());
    let o = start(
        &cl,
        &work.path().join("data3"),
        &work.path().join("dest3"),
        &token2,
        &["--oneshot"],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "the token was spent: {}", stderr(&o));
    // ssh through the first bot's multiplexer still works.
    let o = ssh(
        &bot.ssh_config(),
        &[&format!("{}@node-1.{C}", me()), "true"],
    );
    assert!(
        o.status.success(),
        "ssh: {}\n{}",
        stderr(&o),
        bot.log_text()
    );
}

#[test]
fn a_destination_others_can_write_is_refused_and_the_token_kept() {
    let cl = DevCluster::start(C, 0);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let token = cl.token("ci", &me());
    let open = w.join("open");
    std::fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    let o = start(&cl, &w.join("data"), &open, &token, &["--oneshot"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert_eq!(
        error_line(&o),
        format!(
            "idmux: --destination-dir {}: writable by other users (mode 0777); chmod go-w it \
             or choose another dir",
            open.display()
        )
    );
    assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0, "written into");
    assert_eq!(
        std::fs::metadata(&open).unwrap().mode() & 0o777,
        0o777,
        "left as it was"
    );
    // The same token joins with a good dir.
    let good = w.join("good");
    let o = start(&cl, &w.join("data"), &good, &token, &["--oneshot"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(good.join("identity").exists());
}

/// `chattr +i` on a dir for as long as this lives (root cannot write an immutable dir).
struct Immutable(PathBuf);

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn a_destination_the_bot_cannot_write_is_refused_and_the_token_kept() {
    let cl = DevCluster::start(C, 0);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let token = cl.token("ci", &me());
    // A file where a parent dir should be.
    let file = w.join("file");
    std::fs::write(&file, b"not a dir").unwrap();
    let under = file.join("dest");
    let o = start(&cl, &w.join("data"), &under, &token, &["--oneshot"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert_eq!(
        error_line(&o),
        format!(
            "idmux: --destination-dir {}: a part of the path is a file, not a dir; choose \
             another path",
            under.display()
        )
    );
    // A dir nobody may write, root included (immutable): the write probe refuses it.
    let frozen = w.join("frozen");
    std::fs::create_dir(&frozen).unwrap();
    chmod(&frozen, 0o700);
    let made = Command::new("chattr").arg("+i").arg(&frozen).output();
    if made.as_ref().is_ok_and(|o| o.status.success()) {
        let _guard = Immutable(frozen.clone());
        let o = start(&cl, &w.join("data"), &frozen, &token, &["--oneshot"])
            .output()
            .unwrap();
        assert!(!o.status.success());
        let line = error_line(&o);
        assert!(
            line.starts_with(&format!(
                "idmux: --destination-dir {}: cannot write here (",
                frozen.display()
            )),
            "{line}"
        );
    } else {
        eprintln!("SKIP the immutable destination: chattr +i is not possible here");
    }
    let o = start(
        &cl,
        &w.join("data"),
        &w.join("good"),
        &token,
        &["--oneshot"],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "the token was spent: {}", stderr(&o));
}

/// A Unix user by name, made with useradd the first time; None when not root.
fn unix_user(name: &str) -> Option<nix::unistd::User> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    if nix::unistd::User::from_name(name).ok().flatten().is_none() {
        let o = run(Command::new("useradd").args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ]));
        // Another test may have made it at the same moment.
        if !o.status.success() && nix::unistd::User::from_name(name).ok().flatten().is_none() {
            eprintln!("useradd {name}: {}", stderr(&o).trim());
            return None;
        }
    }
    nix::unistd::User::from_name(name).ok().flatten()
}

/// `runuser -u USER -- ARGS` from `/`.
fn runuser(user: &str, args: &[&str]) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", user, "--"]).args(args).current_dir("/");
    c
}

/// The access ACL of `p` as getfacl prints it.
fn getfacl(p: &Path) -> String {
    stdout(&run(Command::new("getfacl").args(["-p", "-c"]).arg(p)))
}

#[test]
fn a_reader_user_runs_ssh_and_ansible_through_a_root_bots_destination() {
    let Some(reader) = unix_user(READER) else {
        eprintln!("SKIP a_reader_user_runs_ssh_and_ansible...: needs root and useradd");
        return;
    };
    let work = tempfile::tempdir().unwrap();
    // Every parent of the destination is traversable by the reader, no more.
    chmod(work.path(), 0o711);
    let (data, dest) = (work.path().join("data"), work.path().join("dest"));
    let o = run(Command::new(idmux_bin())
        .args(["init", "--destination-dir"])
        .arg(&dest)
        .args(["--reader-user", READER]));
    assert!(o.status.success(), "init: {}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("readable by user:{READER} through its ACL")),
        "{}",
        stdout(&o)
    );

    let cl = DevCluster::start(C, 1);
    let mut bot = BotProc::start(
        &cl,
        BotOptions {
            data: Some(data.clone()),
            dest: Some(dest.clone()),
            ..Default::default()
        },
    );
    assert!(
        bot.log_text()
            .contains(&format!("readable by user:{READER} through its ACL")),
        "{}",
        bot.log_text()
    );
    for (f, perms) in [
        ("key", "r--"),
        ("identity", "r--"),
        ("agent.sock", "rw-"),
        ("v1.sock", "rw-"),
    ] {
        let acl = getfacl(&dest.join(f));
        assert!(
            acl.contains(&format!("user:{READER}:{perms}")),
            "{f}: {acl}"
        );
        assert!(acl.contains(&format!("mask::{perms}")), "{f}: {acl}");
        assert!(acl.contains("other::---"), "{f}: {acl}");
    }

    let target = format!("{}@node-1.{C}", me());
    let cfg = dest.join("ssh_config");
    let ssh_as = |user: &str| {
        let cfg = cfg.display().to_string();
        run(&mut runuser(
            user,
            &[
                "ssh",
                "-F",
                &cfg,
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=20",
                &target,
                "echo reader-ok",
            ],
        ))
    };
    let o = ssh_as(READER);
    assert!(
        o.status.success() && stdout(&o).contains("reader-ok"),
        "ssh as {READER}: {}\n{}",
        stderr(&o),
        bot.log_text()
    );

    // A renewal writes every file anew (new inodes): the reader still reads the new key.
    let key = dest.join("key");
    let ino = std::fs::metadata(&key).unwrap().ino();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(bot.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || std::fs::metadata(&key)
            .is_ok_and(|m| m.ino() != ino)),
        "no renewal: {}",
        bot.log_text()
    );
    let o = run(&mut runuser(READER, &["cat", &key.display().to_string()]));
    assert!(
        o.status.success(),
        "{READER} cannot read the renewed key: {}",
        stderr(&o)
    );
    let o = ssh_as(READER);
    assert!(o.status.success(), "ssh after renewal: {}", stderr(&o));

    // A user without the ACL reads nothing and connects nowhere.
    let stranger = "nobody";
    for f in ["identity", "key", "ssh_config"] {
        let o = run(&mut runuser(
            stranger,
            &["cat", &dest.join(f).display().to_string()],
        ));
        assert!(!o.status.success(), "{stranger} read {f}");
        assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));
    }
    let o = ssh_as(stranger);
    assert!(!o.status.success(), "{stranger} reached the node");

    // Ansible as the reader (the multiplexer's fdpass ssh_config).
    if !crate::ansible::installed("ansible") {
        println!(
            "SKIPPED the Ansible part of a_reader_user_runs_ssh_and_ansible...: `ansible` is \
             not installed (IDMUX_WITH_ANSIBLE=1 bash scripts/install-deps.sh)"
        );
        return;
    }
    let aw = work.path().join("ansible");
    std::fs::create_dir(&aw).unwrap();
    nix::unistd::chown(&aw, Some(reader.uid), Some(reader.gid)).unwrap();
    let inventory = aw.join("inventory.ini");
    std::fs::write(
        &inventory,
        format!("[nodes]\nnode-1.{C} ansible_user={}\n", me()),
    )
    .unwrap();
    let ansible = crate::ansible::Ansible::new(&aw, &dest);
    let o = run(ansible
        .command("runuser")
        .args(["-u", READER, "--", "ansible", "all", "-i"])
        .arg(&inventory)
        .args(["-m", "ping"]));
    assert!(
        o.status.success() && stdout(&o).contains("\"ping\": \"pong\""),
        "ansible as {READER}: {}\n{}\n{}",
        stdout(&o),
        stderr(&o),
        bot.log_text()
    );
    assert!(bot.alive());
}

#[test]
fn init_shares_with_a_reader_or_no_one_and_clean_removes_the_rest() {
    let Some(_reader) = unix_user(READER) else {
        eprintln!("SKIP init_shares_with_a_reader_or_no_one...: needs root and useradd");
        return;
    };
    let work = tempfile::tempdir().unwrap();
    chmod(work.path(), 0o711);
    let dest = work.path().join("dest");
    let init = |args: &[&str]| {
        run(Command::new(idmux_bin())
            .args(["init", "--destination-dir"])
            .arg(&dest)
            .args(args))
    };
    let read_as = |user: &str, f: &str| {
        run(&mut runuser(
            user,
            &["cat", &dest.join(f).display().to_string()],
        ))
        .status
        .success()
    };
    // A group reader; files already there (a key, and something idmux does not write).
    let o = init(&["--reader-group", READER]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(dest.join("key"), b"secret").unwrap();
    std::fs::write(dest.join("notes.txt"), b"mine").unwrap();
    let o = init(&["--reader-user", READER]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("not written by idmux, left as they are: notes.txt"),
        "{}",
        stderr(&o)
    );
    let acl = getfacl(&dest.join("key"));
    assert!(acl.contains(&format!("user:{READER}:r--")), "{acl}");
    assert!(acl.contains("group::---"), "{acl}");
    assert!(read_as(READER, "key"));
    assert!(!read_as("nobody", "key"));
    // No reader: owner-only again, the dir's default ACL gone, the reader locked out.
    let o = init(&["--clean"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("owner-only"), "{}", stdout(&o));
    assert!(!dest.join("notes.txt").exists(), "--clean left notes.txt");
    assert!(dest.join("key").exists(), "--clean removed an output");
    let acl = getfacl(&dest);
    assert!(!acl.contains(READER) && !acl.contains("default"), "{acl}");
    assert!(!read_as(READER, "key"));
    assert_eq!(
        std::fs::metadata(&dest).unwrap().mode() & 0o777,
        0o700,
        "{acl}"
    );
    // Names that do not exist, and an owner the bot would refuse, are one line each.
    for (args, want) in [
        (
            vec!["--reader-user", "no-such-idmux-user"],
            "idmux: --reader-user no-such-idmux-user: no such user",
        ),
        (
            vec!["--owner", "nobody:nogroup"],
            "idmux: --owner nobody:nogroup: idmux's bot writes only a dir it owns",
        ),
    ] {
        let o = init(&args);
        assert!(!o.status.success());
        assert!(error_line(&o).starts_with(want), "{}", stderr(&o));
    }
}
