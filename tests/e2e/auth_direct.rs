//! Auth addressed directly, as tbot's `--auth-server` with `--ca-pin` and no proxy: the dev
//! cluster serves Auth on its own port (`cluster start --auth-listen`), the bot checks the CA
//! pins over a first unverified connection (`GetClusterCACert`), joins through Auth's join
//! service, renews and writes outputs through Auth with mutual TLS, and learns the proxy for
//! ssh_config from Auth's `Ping`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use idmux_testkit::*;

const C: &str = "authdirect.test";

fn cluster() -> DevCluster {
    DevCluster::start_with(
        tempfile::tempdir().unwrap(),
        C,
        1,
        ClusterOptions {
            auth_listen: Some("127.0.0.1:0".into()),
            ..Default::default()
        },
    )
}

fn auth(cl: &DevCluster) -> String {
    cl.auth_addr
        .clone()
        .expect("the ready line names Auth's port")
}

/// `idmux start` with `args` and nothing from the environment but `env`.
fn idmux(args: &[String], env: &[(&str, String)]) -> Command {
    let mut c = Command::new(idmux_bin());
    c.args(args)
        .args(extra_start_args())
        .env_remove("TELEPORT_BOT_TOKEN")
        .env_remove("TELEPORT_PROXY")
        .env_remove("TELEPORT_AUTH_SERVER")
        .env_remove("TBOT_CONFIG_PATH");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn dirs(data: &Path, dest: &Path, token: &str) -> Vec<String> {
    vec![
        "start".into(),
        format!("--data-dir={}", data.display()),
        format!("--destination-dir={}", dest.display()),
        format!("--token={token}"),
    ]
}

/// One line on stderr (besides warnings), containing `want`.
fn refused_with(o: &std::process::Output, want: &str) {
    assert!(!o.status.success(), "not refused: {}", stderr(o));
    let err = stderr(o);
    let last = err.trim().lines().last().unwrap_or_default().to_string();
    assert!(last.contains(want), "{err}");
}

#[test]
fn joins_renews_and_writes_outputs_through_auth_with_a_ca_pin() {
    let cl = cluster();
    let a = auth(&cl);
    let pins = cl.ca_pins();
    assert_eq!(pins.len(), 1, "{pins:?}");
    assert!(pins[0].starts_with("sha256:") && pins[0].len() == 7 + 64);
    // The text of `bots add`, as `tctl bots add`'s: the pins, then Auth's address.
    let o = cl.admin(&["bots", "add", "texty", "--logins", "nobody"]);
    let text = stdout(&o);
    assert!(
        text.contains(&format!(
            "   --ca-pin={} \\\n   --auth-server={a}\n",
            pins[0]
        )),
        "{text}"
    );
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (data, once, fd) = (w.join("data"), w.join("once"), w.join("fdpass"));
    let token = cl.token("ci", &me());
    // One shot: join through Auth (no proxy given), a stdio destination.
    let mut args = dirs(&data, &once, &token);
    args.extend([
        format!("--auth-server={a}"),
        format!("--ca-pin={}", pins[0]),
        "--oneshot".into(),
    ]);
    let o = run(&mut idmux(&args, &[]));
    assert!(o.status.success(), "oneshot: {}", stderr(&o));
    let log = stderr(&o);
    assert!(
        log.contains(&format!("auth server {a}")) && log.contains(&cl.addr),
        "the log names Auth and the proxy it named: {log}"
    );
    assert_ssh_hi(&once.join("ssh_config"), C);
    // The ssh_config reaches the proxy Auth's Ping named (the web port), not Auth.
    let cfg = std::fs::read_to_string(once.join("ssh_config")).unwrap();
    assert!(
        cfg.contains(&format!("--proxy-server='{}'", cl.addr)) && !cfg.contains(&a),
        "{cfg}"
    );
    // The daemon on the same data dir renews the stored identity through Auth and serves an
    // fdpass destination with its multiplexer.
    let mut args = dirs(&data, &fd, &token);
    args.extend([
        format!("--auth-server={a}"),
        format!("--ca-pin={}", pins[0]),
    ]);
    let logf = w.join("bot.log");
    let mut child = idmux(&args, &[])
        .stderr(std::fs::File::create(&logf).unwrap())
        .stdout(std::process::Stdio::null())
        .spawn_reaped();
    let up = wait_for(Duration::from_secs(30), || {
        ["ssh_config", "v1.sock", "agent.sock"]
            .iter()
            .all(|f| fd.join(f).exists())
            || child.try_wait().unwrap().is_some()
    });
    let text = || std::fs::read_to_string(&logf).unwrap_or_default();
    assert!(up && child.try_wait().unwrap().is_none(), "bot: {}", text());
    assert_ssh_hi(&fd.join("ssh_config"), C);
    let gen = || {
        idmux_identity::Identity::read_data_dir(&data)
            .unwrap()
            .tls_identity()
            .unwrap()
            .generation
    };
    let before = gen();
    // SIGHUP: a renewal now, through Auth.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(20), || text()
            .contains("renewed: bot identity")),
        "no renewal: {}",
        text()
    );
    assert!(gen() > before, "generation {} after {before}", gen());
    assert_ssh_hi(&fd.join("ssh_config"), C);
}

#[test]
fn a_wrong_pin_or_none_is_refused_and_the_token_is_kept() {
    let cl = cluster();
    let a = auth(&cl);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (data, dest) = (w.join("data"), w.join("dest"));
    let token = cl.token("ci", &me());
    let base = |extra: &[String]| {
        let mut args = dirs(&data, &dest, &token);
        args.push(format!("--auth-server={a}"));
        args.push("--oneshot".into());
        args.extend(extra.iter().cloned());
        args
    };
    // A pin of another CA: Teleport's words, nothing joined.
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let o = run(&mut idmux(&base(&[format!("--ca-pin={wrong}")]), &[]));
    refused_with(
        &o,
        "cluster pin does not match any provided certificate authority pin. This could have \
         occurred if the Certificate Authority (CA) for the cluster was rotated, invalidating \
         the old pin. This could also occur if a new HSM was added. Run \"tctl status\" to \
         compare the pin used to join the cluster to the actual pin(s) for the cluster.",
    );
    assert!(!data.join("key-cert.pub").exists());
    // No pin, no --ca-path, no --insecure: one line asking for the pin.
    let o = run(&mut idmux(&base(&[]), &[]));
    refused_with(&o, "--ca-pin");
    assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", stderr(&o));
    assert!(!data.join("key-cert.pub").exists());
    // The token was not spent: the right pin joins with it.
    let o = run(&mut idmux(
        &base(&[format!("--ca-pin={}", cl.ca_pins()[0])]),
        &[],
    ));
    assert!(o.status.success(), "right pin: {}", stderr(&o));
    assert_ssh_hi(&dest.join("ssh_config"), C);
}

#[test]
fn teleport_auth_server_in_the_environment_is_the_flag() {
    let cl = cluster();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (data, dest) = (w.join("data"), w.join("dest"));
    let mut args = dirs(&data, &dest, &cl.token("ci", &me()));
    args.extend([format!("--ca-pin={}", cl.ca_pins()[0]), "--oneshot".into()]);
    let o = run(&mut idmux(&args, &[("TELEPORT_AUTH_SERVER", auth(&cl))]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ssh_hi(&dest.join("ssh_config"), C);
}

/// `auth_server:` and `onboarding.ca_pins` in tbot's YAML; `--ca-path` instead of a pin; and
/// `--insecure`, which joins without checking Auth, with a warning.
#[test]
fn yaml_ca_path_and_insecure() {
    let cl = cluster();
    let a = auth(&cl);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let cfg = w.join("tbot.yaml");
    std::fs::write(
        &cfg,
        format!(
            "version: v2\nauth_server: {a}\nonboarding:\n  join_method: token\n  token: {token}\n  ca_pins:\n    - {pin}\nstorage:\n  type: directory\n  path: {data}\noneshot: true\noutputs:\n  - type: identity\n    destination:\n      type: directory\n      path: {dest}\n",
            token = cl.token("ci", &me()),
            pin = cl.ca_pins()[0],
            data = w.join("d1").display(),
            dest = w.join("o1").display(),
        ),
    )
    .unwrap();
    let o = run(&mut idmux(
        &["start".into(), "-c".into(), cfg.display().to_string()],
        &[],
    ));
    assert!(o.status.success(), "yaml: {}", stderr(&o));
    assert_ssh_hi(&w.join("o1/ssh_config"), C);
    // --ca-path: the cluster's CA file checks Auth (and the proxy Auth names).
    let mut args = dirs(&w.join("d2"), &w.join("o2"), &cl.token("ci", &me()));
    args.extend([
        format!("--auth-server={a}"),
        format!("--ca-path={}", cl.dir.path().join("ca.pem").display()),
        "--oneshot".into(),
    ]);
    let o = run(&mut idmux(&args, &[]));
    assert!(o.status.success(), "--ca-path: {}", stderr(&o));
    assert_ssh_hi(&w.join("o2/ssh_config"), C);
    // --insecure: joins, and says that Auth was not checked.
    let mut args = vec!["--insecure".to_string()];
    args.extend(dirs(&w.join("d3"), &w.join("o3"), &cl.token("ci", &me())));
    args.extend([format!("--auth-server={a}"), "--oneshot".into()]);
    let o = run(&mut idmux(&args, &[]));
    assert!(o.status.success(), "--insecure: {}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "--insecure: Auth {a}'s certificate is NOT verified"
        )),
        "{}",
        stderr(&o)
    );
}
