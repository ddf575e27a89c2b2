//! A drop-in for tbot (issue 16), first part: the token as tbot takes it (a value, or the
//! absolute path of a file holding it; `TELEPORT_BOT_TOKEN`, `TELEPORT_PROXY`), dirs that
//! cannot be mixed up (the data dir and a destination dir, checked before the token is
//! spent), logs without colour codes off a terminal, and no panic on a closed pipe.

use std::process::Command;

use idmux_testkit::*;

const C: &str = "dropin.test";

/// `idmux start --oneshot` for `cl` with `args` replacing or adding flags; `env` set.
fn oneshot(
    cl: &DevCluster,
    args: &[String],
    drop: &[&str],
    env: &[(&str, String)],
) -> std::process::Output {
    let mut all: Vec<String> = cl
        .start_args(
            std::path::Path::new("/unused"),
            std::path::Path::new("/unused"),
            "unused",
        )
        .into_iter()
        .filter(|a| {
            !a.starts_with("--data-dir=")
                && !a.starts_with("--destination-dir=")
                && !a.starts_with("--token=")
                && !drop.iter().any(|d| a.starts_with(d))
        })
        .collect();
    all.extend(args.iter().cloned());
    all.push("--oneshot".into());
    let mut c = Command::new(idmux_bin());
    c.args(&all)
        .env_remove("TELEPORT_BOT_TOKEN")
        .env_remove("TELEPORT_PROXY");
    for (k, v) in env {
        c.env(k, v);
    }
    run(&mut c)
}

#[test]
fn the_token_from_a_file_or_tbots_environment() {
    let cl = DevCluster::start(C, 0);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    // An absolute path is a file holding the token (trailing newline trimmed), as tbot's.
    let file = w.join("token");
    std::fs::write(&file, format!("{}\n", cl.token("ci", &me()))).unwrap();
    let o = oneshot(
        &cl,
        &[
            format!("--data-dir={}", w.join("d1").display()),
            format!("--destination-dir={}", w.join("o1").display()),
            format!("--token={}", file.display()),
        ],
        &[],
        &[],
    );
    assert!(o.status.success(), "token file: {}", stderr(&o));
    // An unreadable token file: one line naming the file, nothing written.
    let o = oneshot(
        &cl,
        &[
            format!("--data-dir={}", w.join("d2").display()),
            format!("--destination-dir={}", w.join("o2").display()),
            format!("--token={}", w.join("missing").display()),
        ],
        &[],
        &[],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "--token {}: cannot read the token file",
            w.join("missing").display()
        )) && err.trim().lines().count() == 1,
        "{err}"
    );
    assert!(!w.join("d2").join("key").exists());
    // tbot's environment: TELEPORT_BOT_TOKEN and TELEPORT_PROXY, no flags.
    let o = oneshot(
        &cl,
        &[
            format!("--data-dir={}", w.join("d3").display()),
            format!("--destination-dir={}", w.join("o3").display()),
        ],
        &["--proxy-server="],
        &[
            ("TELEPORT_BOT_TOKEN", cl.token("ci", &me())),
            ("TELEPORT_PROXY", cl.addr.clone()),
        ],
    );
    assert!(o.status.success(), "environment: {}", stderr(&o));
    assert!(w.join("o3/ssh_config").exists());
}

#[test]
fn a_destination_over_the_data_dir_is_refused_before_the_token_is_spent() {
    let cl = DevCluster::start(C, 0);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let token = cl.token("ci", &me());
    for (data, dest) in [
        (w.join("same"), w.join("same")),
        (w.join("data"), w.join("data/out")),
        (w.join("outer/data"), w.join("outer")),
    ] {
        let o = oneshot(
            &cl,
            &[
                format!("--data-dir={}", data.display()),
                format!("--destination-dir={}", dest.display()),
                format!("--token={token}"),
            ],
            &[],
            &[],
        );
        assert!(!o.status.success(), "{data:?} {dest:?} accepted");
        let err = stderr(&o);
        assert!(
            err.contains("must be different dirs, neither inside the other"),
            "{err}"
        );
    }
    // The token was not spent by any of them.
    let o = oneshot(
        &cl,
        &[
            format!("--data-dir={}", w.join("ok-data").display()),
            format!("--destination-dir={}", w.join("ok-dest").display()),
            format!("--token={token}"),
        ],
        &[],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn logs_off_a_terminal_carry_no_colour_codes() {
    let cl = DevCluster::start(C, 1);
    let bot = BotProc::start(&cl, BotOptions::default());
    let log = bot.log_text();
    assert!(log.contains("identity ready"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file: {log:?}"
    );
}

#[test]
fn completion_into_a_closed_pipe_does_not_panic() {
    let o = run(Command::new("bash").arg("-c").arg(format!(
        "set -o pipefail; '{}' completion bash | head -1",
        idmux_bin().display()
    )));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 1);
}

#[test]
fn a_proxy_address_that_is_not_tls_is_named_as_such() {
    let cl = DevCluster::start(C, 1);
    let o = cl.admin(&["nodes", "ls", "--format", "json"]);
    let nodes: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let sshd = nodes[0]["addr"].as_str().unwrap().to_string();
    let work = tempfile::tempdir().unwrap();
    let o = oneshot(
        &cl,
        &[
            format!("--data-dir={}", work.path().join("d").display()),
            format!("--destination-dir={}", work.path().join("o").display()),
            "--token=0123456789abcdef0123456789abcdef".into(),
            format!("--proxy-server={sshd}"),
        ],
        &["--proxy-server="],
        &[],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(&format!("proxy {sshd} does not speak TLS on this port")),
        "{err}"
    );
    assert!(!err.contains("--ca-path"), "{err}");
}

#[test]
fn the_multiplexer_removes_its_sockets_when_stopped() {
    let cl = DevCluster::start(C, 0);
    let mut bot = BotProc::start(&cl, BotOptions::default());
    let dest = bot.dest.clone();
    assert!(dest.join("v1.sock").exists() && dest.join("agent.sock").exists());
    sigterm(bot.pid());
    assert!(wait_for(std::time::Duration::from_secs(5), || !bot.alive()));
    assert!(!dest.join("v1.sock").exists(), "v1.sock left behind");
    assert!(!dest.join("agent.sock").exists(), "agent.sock left behind");
    // The multiplexer alone (`start ssh-multiplexer`) too.
    let mut m = StandaloneMux::start(&cl, &dest, &[]);
    assert!(wait_for(std::time::Duration::from_secs(5), || dest
        .join("agent.sock")
        .exists()));
    sigterm(m.child.id());
    assert!(wait_for(std::time::Duration::from_secs(5), || m
        .child
        .try_wait()
        .unwrap()
        .is_some()));
    assert!(
        !dest.join("v1.sock").exists(),
        "v1.sock left behind by ssh-multiplexer"
    );
    assert!(
        !dest.join("agent.sock").exists(),
        "agent.sock left behind by ssh-multiplexer"
    );
}
