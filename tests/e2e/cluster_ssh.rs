//! Dev cluster + stdio ProxyCommand (issue 3), end to end with real OpenSSH: ssh, scp, sftp,
//! rsync and parallel sessions through the proxy's SSH transport, and every refusal as one
//! clear line on ssh's stderr.

use std::process::Command;
use std::time::Duration;

use idmux_testkit::*;

const C: &str = "dev.test";

fn sha256(path: &std::path::Path) -> String {
    let o = run(Command::new("sha256sum").arg(path));
    stdout(&o).split_whitespace().next().unwrap().to_string()
}

#[test]
fn ssh_scp_sftp_rsync_and_parallel_sessions() {
    let _serial = exclusive(); // asserts a deadline or loads the machine
    let cl = DevCluster::start(C, 1);
    let dest = cl.bot_destination("ci", &me(), "access", "1h", "stdio");
    let cfg = dest.join("ssh_config");
    let target = format!("{}@node-1.{C}", me());

    // A command and its exit status.
    let o = ssh(&cfg, &[&target, "echo hello; exit 42"]);
    assert_eq!(o.status.code(), Some(42), "{}", stderr(&o));
    assert_eq!(stdout(&o), "hello\n");
    // Bare names are left alone by default, as tbot's files leave them...
    let bare = format!("{}@node-1", me());
    let o = ssh(&cfg, &[&bare, "whoami"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("Could not resolve hostname node-1"),
        "{}",
        stderr(&o)
    );
    // ...and route with --bare-names.
    let bare_dest = cl.data_dir().join("dest-bare");
    let o = cl.admin(&[
        "auth",
        "sign",
        "--bot",
        "ci",
        "--bare-names",
        "--destination-dir",
        bare_dest.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "auth sign: {}", stderr(&o));
    let o = ssh(&bare_dest.join("ssh_config"), &[&bare, "whoami"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), me());

    // scp 64 MiB both ways.
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("big");
    run(Command::new("head")
        .args(["-c", "67108864", "/dev/urandom"])
        .stdout(std::fs::File::create(&src).unwrap()));
    let remote = work.path().join("remote-copy");
    let back = work.path().join("back");
    let scp = |from: String, to: String| {
        run(Command::new("scp")
            .arg("-F")
            .arg(&cfg)
            .args([
                "-q",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
            ])
            .arg(from)
            .arg(to))
    };
    let o = scp(
        src.display().to_string(),
        format!("{target}:{}", remote.display()),
    );
    assert!(o.status.success(), "scp up: {}", stderr(&o));
    let o = scp(
        format!("{target}:{}", remote.display()),
        back.display().to_string(),
    );
    assert!(o.status.success(), "scp down: {}", stderr(&o));
    assert_eq!(sha256(&src), sha256(&remote));
    assert_eq!(sha256(&src), sha256(&back));

    // sftp batch.
    let batch = work.path().join("batch");
    std::fs::write(&batch, format!("mkdir {0}/sftp-dir\nput {1} {0}/sftp-dir/f\nls {0}/sftp-dir\nrm {0}/sftp-dir/f\nrmdir {0}/sftp-dir\n", work.path().display(), batch.display())).unwrap();
    let o = run(Command::new("sftp")
        .arg("-F")
        .arg(&cfg)
        .args(["-o", "BatchMode=yes", "-b"])
        .arg(&batch)
        .arg(&target));
    assert!(o.status.success(), "sftp: {}", stderr(&o));
    assert!(stdout(&o).contains("sftp-dir/f"), "{}", stdout(&o));
    assert!(!work.path().join("sftp-dir").exists());

    // rsync of a tree.
    let tree = work.path().join("tree");
    for i in 0..20 {
        let d = tree.join(format!("d{}", i % 4));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join(format!("f{i}")),
            format!("file {i}\n").repeat(i * 100 + 1),
        )
        .unwrap();
    }
    let copy = work.path().join("tree-copy");
    let o = run(Command::new("rsync")
        .arg("-a")
        .arg("-e")
        .arg(format!("ssh -F {} -o BatchMode=yes", cfg.display()))
        .arg(format!("{}/", tree.display()))
        .arg(format!("{target}:{}/", copy.display())));
    assert!(o.status.success(), "rsync: {}", stderr(&o));
    let o = run(Command::new("diff").arg("-r").arg(&tree).arg(&copy));
    assert!(o.status.success(), "rsync copy differs: {}", stdout(&o));

    // 20 parallel sessions.
    let children: Vec<_> = (0..20)
        .map(|i| {
            Command::new("ssh")
                .arg("-F")
                .arg(&cfg)
                .args(["-o", "BatchMode=yes", &target, &format!("echo session-{i}")])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "session {i}: {}", stderr(&o));
        assert_eq!(stdout(&o), format!("session-{i}\n"));
    }
}

/// Assert an ssh failure whose stderr has exactly one idmux line containing `want`.
fn assert_refused(o: &std::process::Output, want: &str) {
    assert!(!o.status.success(), "expected a refusal ({want})");
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("idmux:")).collect();
    assert_eq!(lines.len(), 1, "want one idmux: line, got: {err}");
    assert!(lines[0].contains(want), "want {want:?} in: {err}");
}

#[test]
fn refusals_are_one_clear_line() {
    let cl = DevCluster::start(C, 2);
    // Roles: `only-node-2` reaches node-2 only.
    let o = cl.admin(&[
        "roles",
        "add",
        "only-node-2",
        "--node-labels",
        "name=node-2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let dest = cl.bot_destination("ci", &me(), "access", "1h", "stdio");
    let cfg = dest.join("ssh_config");

    // Login not granted: sshd refuses (the login is not among the cert's principals).
    let o = ssh(&cfg, &[&format!("nobody@node-1.{C}"), "true"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));

    // Unknown node.
    let o = ssh(&cfg, &[&format!("{}@node-9.{C}", me()), "true"]);
    assert_refused(&o, "not found in inventory");

    // Node outside the role's labels.
    let limited = cl.bot_destination("limited", &me(), "only-node-2", "1h", "stdio");
    let o = ssh(
        &limited.join("ssh_config"),
        &[&format!("{}@node-1.{C}", me()), "true"],
    );
    assert_refused(&o, "access denied to bot-limited connecting to node-1");
    let o = ssh(
        &limited.join("ssh_config"),
        &[&format!("{}@node-2.{C}", me()), "echo ok"],
    );
    assert!(o.status.success(), "{}", stderr(&o));

    // Removed bot.
    assert!(cl.admin(&["bots", "rm", "limited"]).status.success());
    let o = ssh(
        &limited.join("ssh_config"),
        &[&format!("{}@node-2.{C}", me()), "true"],
    );
    assert_refused(&o, "bot-limited does not exist");

    // Expired identity.
    let short = cl.bot_destination("short", &me(), "access", "2s", "stdio");
    assert!(
        wait_expired(Duration::from_secs(10), || {
            idmux_identity::Identity::load_destination(&short)
        }),
        "the 2 s identity did not expire"
    );
    let o = ssh(
        &short.join("ssh_config"),
        &[&format!("{}@node-1.{C}", me()), "true"],
    );
    assert_refused(&o, "expired");

    // A proxy whose certificate comes from an unknown CA: another cluster at the same address
    // is simulated by pointing the ssh_config at a second cluster.
    let other = DevCluster::start("other.test", 1);
    let o = run(Command::new(idmux_bin())
        .args([
            "ssh-config",
            "--proxy-server",
            &other.addr,
            "--destination-dir",
        ])
        .arg(&dest));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = ssh(&cfg, &[&format!("{}@node-1.{C}", me()), "true"]);
    assert_refused(&o, "not signed by");

    // An identity from another cluster's CA, presented to this cluster's proxy (it trusts this
    // proxy, so the refusal is the proxy's).
    let foreign = other.bot_destination("ci", &me(), "access", "1h", "stdio");
    let mut id = idmux_identity::Identity::load_destination(&foreign).unwrap();
    let ours = idmux_identity::Identity::load_destination(&short).unwrap();
    id.tls_cas = ours.tls_cas.clone();
    id.host_cas = ours.host_cas.clone();
    id.write_destination_files(&foreign).unwrap();
    let o = run(Command::new(idmux_bin())
        .args([
            "ssh-config",
            "--cluster",
            C,
            "--proxy-server",
            &cl.addr,
            "--destination-dir",
        ])
        .arg(&foreign));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = ssh(
        &foreign.join("ssh_config"),
        &[&format!("{}@node-1.{C}", me()), "true"],
    );
    assert_refused(&o, "refused");
}
