//! A drop-in for tbot (issue 16): tbot's configs, written to its documented schema, and its
//! command lines start idmux unchanged, and `ssh -F` works through each; what idmux does not do
//! is refused with one line; TTLs are honoured or refused; the multiplexer logs the proxy
//! going away and coming back once each; doctor checks every file ssh needs.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use idmux_testkit::*;

const C: &str = "tbotcfg.test";

/// `idmux ARGS` with the cluster's CA trusted (`--ca-path`, a flag: the config stays tbot's).
fn idmux(cl: &DevCluster, args: &[&str]) -> Command {
    let mut c = Command::new(idmux_bin());
    c.args(args)
        .arg(format!(
            "--ca-path={}",
            cl.dir.path().join("ca.pem").display()
        ))
        .args(extra_start_args())
        .env_remove("TELEPORT_BOT_TOKEN")
        .env_remove("TELEPORT_PROXY")
        .env_remove("TBOT_CONFIG_PATH");
    c
}

/// A running daemon, stopped on drop; its stderr goes to `log`.
struct Daemon {
    child: Reaped,
    log: std::path::PathBuf,
}

impl Daemon {
    fn start(mut cmd: Command, log: &Path, paths: &[&Path]) -> Daemon {
        let child = cmd
            .stderr(std::fs::File::create(log).unwrap())
            .spawn_reaped();
        let mut d = Daemon {
            child,
            log: log.to_path_buf(),
        };
        let up = wait_for(Duration::from_secs(30), || {
            wait_for_all(paths) || d.child.try_wait().unwrap().is_some()
        });
        assert!(
            up && d.child.try_wait().unwrap().is_none(),
            "the daemon did not come up: {}",
            d.log_text()
        );
        d
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn wait_for_all(paths: &[&Path]) -> bool {
    paths.iter().all(|p| p.exists())
}

/// tbot's documented multiplexer config (the service alone: no identity output anywhere),
/// with the token in a file and `proxy_command` naming the fdpass helper, as its docs show.
/// On main at 1ba7f1d the multiplexer stopped at once ("…/identity: cannot read") and the bot
/// ran on with nothing serving the dir.
#[test]
fn tbots_multiplexer_config_alone() {
    let cl = DevCluster::start(C, 1);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let token = w.join("token");
    std::fs::write(&token, cl.token("ci", &me())).unwrap();
    let fdpass = idmux_bin().with_file_name("idmux-fdpass");
    let dest = w.join("machine-id");
    let cfg = w.join("tbot.yaml");
    std::fs::write(
        &cfg,
        format!(
            "version: v2
proxy_server: {proxy}
onboarding:
  join_method: token
  token: {token}
storage:
  type: directory
  path: {data}
services:
  - type: ssh-multiplexer
    destination:
      type: directory
      path: {dest}
    proxy_command:
      - {fdpass}
",
            proxy = cl.addr,
            token = token.display(),
            data = w.join("data").display(),
            dest = dest.display(),
            fdpass = fdpass.display(),
        ),
    )
    .unwrap();
    let d = Daemon::start(
        idmux(&cl, &["start", "-c", cfg.to_str().unwrap()]),
        &w.join("bot.log"),
        &[
            &dest.join("v1.sock"),
            &dest.join("agent.sock"),
            &dest.join("ssh_config"),
        ],
    );
    // As tbot's: ssh_config and known_hosts beside the sockets, no key on disk.
    for f in ["ssh_config", "known_hosts", "v1.sock", "agent.sock"] {
        assert!(dest.join(f).exists(), "{f} missing");
    }
    for f in ["key", "identity", "key-cert.pub", "tlscert"] {
        assert!(!dest.join(f).exists(), "{f} written to a multiplexer's dir");
    }
    let text = std::fs::read_to_string(dest.join("ssh_config")).unwrap();
    assert!(
        text.contains(&format!(
            "ProxyCommand '{}' '{}",
            fdpass.display(),
            dest.display()
        )),
        "{text}"
    );
    assert_ssh_hi(&dest.join("ssh_config"), C);
    // Doctor knows a multiplexer's dir: no key files expected there.
    let o = run(Command::new(idmux_bin()).args([
        "doctor",
        "--destination-dir",
        dest.to_str().unwrap(),
        "--ca-path",
        cl.dir.path().join("ca.pem").to_str().unwrap(),
    ]));
    assert!(o.status.success(), "doctor: {}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("a multiplexer's dir"), "{}", stdout(&o));
    drop(d);
}

/// An identity output and a multiplexer in different dirs, and a second identity output with
/// its own lifetime and `ssh_config: "off"`: each dir gets what tbot writes there, and ssh
/// works through both ssh_configs.
#[test]
fn identity_outputs_and_a_multiplexer_in_different_dirs() {
    let cl = DevCluster::start(C, 1);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (ident, quiet, mux) = (w.join("ident"), w.join("quiet"), w.join("mux"));
    let cfg = w.join("tbot.yaml");
    std::fs::write(
        &cfg,
        format!(
            "version: v2
proxy_server: {proxy}
onboarding:
  join_method: token
  token: {token}
storage:
  type: directory
  path: {data}
credential_ttl: 1h0m0s
renewal_interval: 20m0s
outputs:
  - type: identity
    destination:
      type: directory
      path: {ident}
services:
  - type: ssh-multiplexer
    destination:
      type: directory
      path: {mux}
  - type: identity
    destination:
      type: directory
      path: {quiet}
    ssh_config: \"off\"
    credential_ttl: 10m
    renewal_interval: 5m
",
            proxy = cl.addr,
            token = cl.token("ci", &me()),
            data = w.join("data").display(),
            ident = ident.display(),
            mux = mux.display(),
            quiet = quiet.display(),
        ),
    )
    .unwrap();
    let d = Daemon::start(
        idmux(&cl, &["start", "-c", cfg.to_str().unwrap()]),
        &w.join("bot.log"),
        &[
            &mux.join("v1.sock"),
            &ident.join("ssh_config"),
            &quiet.join("identity"),
        ],
    );
    assert_ssh_hi(&ident.join("ssh_config"), C);
    assert_ssh_hi(&mux.join("ssh_config"), C);
    assert!(!quiet.join("ssh_config").exists() && !quiet.join("known_hosts").exists());
    // The quiet output's certificates live 10 minutes, the others an hour.
    let left = |dir: &Path| {
        let id = idmux_identity::Identity::load_destination(dir).unwrap();
        id.expires()
            .unwrap()
            .duration_since(std::time::SystemTime::now())
            .unwrap()
    };
    let (q, i) = (left(&quiet), left(&ident));
    assert!(
        q <= Duration::from_secs(600) && q > Duration::from_secs(540),
        "{q:?}"
    );
    assert!(i > Duration::from_secs(3500), "{i:?}");
    drop(d);
}

/// tbot's command lines: `start identity` and `start ssh-multiplexer` with `--destination`
/// and `--storage` URIs; and `configure` prints what `start -c` then runs.
#[test]
fn tbots_start_and_configure_command_lines() {
    let cl = DevCluster::start(C, 1);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let ident = w.join("ident");
    let o = run(&mut idmux(
        &cl,
        &[
            "start",
            "identity",
            &format!("--destination=file://{}", ident.display()),
            &format!("--storage=file://{}", w.join("data1").display()),
            &format!("--token={}", cl.token("ci", &me())),
            "--join-method=token",
            &format!("--proxy-server={}", cl.addr),
            "--oneshot",
        ],
    ));
    assert!(o.status.success(), "start identity: {}", stderr(&o));
    assert_ssh_hi(&ident.join("ssh_config"), C);

    let mux = w.join("mux");
    let d = Daemon::start(
        idmux(
            &cl,
            &[
                "start",
                "ssh-multiplexer",
                &format!("--destination=file://{}", mux.display()),
                "--storage=memory://",
                &format!("--token={}", cl.token("ci", &me())),
                "--join-method=token",
                &format!("--proxy-server={}", cl.addr),
            ],
        ),
        &w.join("mux.log"),
        &[&mux.join("v1.sock"), &mux.join("ssh_config")],
    );
    assert_ssh_hi(&mux.join("ssh_config"), C);
    assert!(
        d.log_text().contains("kept in memory only"),
        "{}",
        d.log_text()
    );
    drop(d);

    let conf = w.join("configured.yaml");
    let out = w.join("configured-dest");
    let o = run(&mut idmux(
        &cl,
        &[
            "configure",
            "-o",
            conf.to_str().unwrap(),
            "identity",
            &format!("--destination={}", out.display()),
            &format!("--storage={}", w.join("data3").display()),
            &format!("--token={}", cl.token("ci", &me())),
            "--join-method=token",
            &format!("--proxy-server={}", cl.addr),
            "--certificate-ttl=2h",
            "--renewal-interval=30m",
        ],
    ));
    assert!(o.status.success(), "configure: {}", stderr(&o));
    let yaml = std::fs::read_to_string(&conf).unwrap();
    assert!(
        yaml.starts_with("# tbot config file generated by `configure` command\nversion: v2\n"),
        "{yaml}"
    );
    assert!(yaml.contains("credential_ttl: 2h0m0s"), "{yaml}");
    let o = run(&mut idmux(
        &cl,
        &["start", "-c", conf.to_str().unwrap(), "--oneshot"],
    ));
    assert!(o.status.success(), "start -c configured: {}", stderr(&o));
    assert_ssh_hi(&out.join("ssh_config"), C);
    // The same config as tbot's TBOT_CONFIG (base64 YAML) renews what that run stored.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&yaml);
    let generation = || {
        idmux_identity::Identity::read_data_dir(&w.join("data3"))
            .unwrap()
            .tls_identity()
            .unwrap()
            .generation
    };
    let before = generation();
    let o = run(idmux(&cl, &["start", "--oneshot"]).env("TBOT_CONFIG", b64));
    assert!(o.status.success(), "TBOT_CONFIG: {}", stderr(&o));
    assert_eq!(generation(), before + 1, "TBOT_CONFIG's run did not renew");
}

/// What idmux does not do is one line, and refused before the token is spent; a TTL Teleport
/// would change is refused (on main at 1ba7f1d a 30 s TTL became 60 s while the log said 30 s).
#[test]
fn unsupported_settings_and_ttls_are_refused_before_the_token_is_spent() {
    let cl = DevCluster::start(C, 0);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let token = cl.token("ci", &me());
    let v1 = w.join("v1.yaml");
    std::fs::write(&v1, format!("auth_server: {}\ndata_dir: /x\n", cl.addr)).unwrap();
    let base = |extra: &[&str]| {
        let mut a = vec![
            "start".to_string(),
            format!("--data-dir={}", w.join("data").display()),
            format!("--destination-dir={}", w.join("dest").display()),
            format!("--token={token}"),
            format!("--proxy-server={}", cl.addr),
            "--oneshot".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    for (extra, want) in [
        (
            vec!["--certificate-ttl=30s"],
            "certificate TTL 30s is shorter than Teleport issues",
        ),
        (vec!["--certificate-ttl=48h"], "at most 24h"),
        (vec!["--fips"], "FIPS mode is not available"),
        (
            vec!["--join-method=iam"],
            "--join-method \"iam\" is not supported",
        ),
        (vec!["-c", v1.to_str().unwrap()], "tbot migrate -c"),
        (
            vec!["--ca-pin=sha256:abcd"],
            "--ca-pin \"sha256:abcd\": want 64 hex digits",
        ),
    ] {
        let args = base(&extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run(&mut idmux(&cl, &args));
        assert!(!o.status.success(), "{extra:?} accepted");
        let err = stderr(&o);
        assert!(err.contains(want), "{extra:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{extra:?}: {err}");
    }
    // None of them spent the token.
    let args = base(&["--certificate-ttl=2m", "--renewal-interval=1m"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(&mut idmux(&cl, &args));
    assert!(o.status.success(), "{}", stderr(&o));
    // And a TTL given is the TTL issued.
    let id = idmux_identity::Identity::load_destination(&w.join("dest")).unwrap();
    let left = id
        .expires()
        .unwrap()
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        left <= Duration::from_secs(120) && left > Duration::from_secs(90),
        "{left:?}"
    );
}

/// The proxy going away and coming back is logged once each by the multiplexer, not at every
/// retry (on main at 1ba7f1d: a warning every 2 s while down, nothing when back).
#[test]
fn the_multiplexer_logs_the_proxy_going_and_coming_back_once() {
    let _x = exclusive();
    let mut cl = DevCluster::start(C, 1);
    let bot = BotProc::start(&cl, BotOptions::default());
    let down_lines = |t: &str| t.matches("multiplexer: cannot reach the proxy").count();
    cl.stop();
    assert!(
        wait_for(Duration::from_secs(20), || down_lines(&bot.log_text()) == 1),
        "no line for the proxy going away: {}",
        bot.log_text()
    );
    // Several retries happen while it is down (100 ms doubling): still one line.
    std::thread::sleep(Duration::from_secs(4));
    cl.restart(1);
    assert!(
        wait_for(Duration::from_secs(30), || bot
            .log_text()
            .contains("is reachable again after")),
        "no line for the proxy coming back: {}",
        bot.log_text()
    );
    let log = bot.log_text();
    assert_eq!(down_lines(&log), 1, "{log}");
    assert!(!log.contains("retrying in"), "a line per retry: {log}");
    assert_ssh_hi(&bot.ssh_config(), C);
}

/// tsh's `proxy_templates` rewrite a request's host (and cluster) in the multiplexer, as
/// tbot's `proxy_templates_path`.
#[test]
fn proxy_templates_rewrite_the_target() {
    let cl = DevCluster::start(C, 1);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let tmpl = w.join("tsh.yaml");
    std::fs::write(
        &tmpl,
        format!("proxy_templates:\n  - template: '^(\\w+)-(\\d)\\.lab:(\\d+)$'\n    cluster: {C}\n    host: \"$1-$2:$3\"\n"),
    )
    .unwrap();
    let mux = w.join("mux");
    let _d = Daemon::start(
        idmux(
            &cl,
            &[
                "start",
                "ssh-multiplexer",
                &format!("--destination={}", mux.display()),
                &format!("--storage={}", w.join("data").display()),
                &format!("--token={}", cl.token("ci", &me())),
                "--join-method=token",
                &format!("--proxy-server={}", cl.addr),
                &format!("--proxy-templates-path={}", tmpl.display()),
            ],
        ),
        &w.join("mux.log"),
        &[&mux.join("v1.sock"), &mux.join("ssh_config")],
    );
    // The user's own Host block for the template's names; the node's certificate names
    // node-1, not node-1.lab, so host keys are not what this test checks.
    let extra = w.join("lab_config");
    let fdpass = idmux_bin().with_file_name("idmux-fdpass");
    std::fs::write(
        &extra,
        format!(
            "Host *.lab\n    ProxyCommand '{}' '{}' '%h:%p'\n    ProxyUseFDPass yes\n    \
             IdentityFile none\n    IdentityAgent '{}'\n    StrictHostKeyChecking no\n    \
             UserKnownHostsFile /dev/null\n    LogLevel ERROR\n",
            fdpass.display(),
            mux.join("v1.sock").display(),
            mux.join("agent.sock").display()
        ),
    )
    .unwrap();
    let o = run(Command::new("ssh").args([
        "-F",
        extra.to_str().unwrap(),
        "-o",
        "BatchMode=yes",
        "-p",
        "3022",
        &format!("{}@node-1.lab", me()),
        "hostname",
    ]));
    assert!(o.status.success(), "ssh through a template: {}", stderr(&o));
    // A template that asks Auth to look the node up is refused at start, in one line.
    std::fs::write(
        &tmpl,
        "proxy_templates:\n  - template: '^(.*)$'\n    search: $1\n",
    )
    .unwrap();
    let o = run(&mut idmux(
        &cl,
        &[
            "start",
            "ssh-multiplexer",
            &format!("--destination={}", w.join("mux2").display()),
            &format!("--storage={}", w.join("data2").display()),
            &format!("--token={}", cl.token("ci", &me())),
            "--join-method=token",
            &format!("--proxy-server={}", cl.addr),
            &format!("--proxy-templates-path={}", tmpl.display()),
        ],
    ));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("search and query"), "{}", stderr(&o));
}

/// Doctor names a ProxyCommand program that is gone (the binary moved after an upgrade), and
/// a missing ssh_config.
#[test]
fn doctor_checks_every_file_ssh_needs() {
    let cl = DevCluster::start(C, 1);
    let bot = BotProc::start(&cl, BotOptions::default());
    let work = tempfile::tempdir().unwrap();
    let copy = work.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for e in std::fs::read_dir(&bot.dest).unwrap().flatten() {
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
        }
    }
    let cfg = std::fs::read_to_string(copy.join("ssh_config")).unwrap();
    let fdpass = idmux_bin().with_file_name("idmux-fdpass");
    std::fs::write(
        copy.join("ssh_config"),
        cfg.replace(fdpass.to_str().unwrap(), "/nonexistent/idmux-fdpass"),
    )
    .unwrap();
    let doctor = |dir: &Path| {
        run(Command::new(idmux_bin()).args([
            "doctor",
            "--destination-dir",
            dir.to_str().unwrap(),
            "--ca-path",
            cl.dir.path().join("ca.pem").to_str().unwrap(),
        ]))
    };
    let o = doctor(&copy);
    assert!(!o.status.success());
    assert!(
        stdout(&o).contains(
            "fail commands: the ssh_config's ProxyCommand cannot run /nonexistent/idmux-fdpass"
        ),
        "{}",
        stdout(&o)
    );
    std::fs::remove_file(copy.join("ssh_config")).unwrap();
    let o = doctor(&copy);
    assert!(!o.status.success());
    assert!(stdout(&o).contains("missing ssh_config"), "{}", stdout(&o));
    let o = doctor(&bot.dest);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(stdout(&o).contains("ok   commands"), "{}", stdout(&o));
}
