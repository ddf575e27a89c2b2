//! Teleport-exact identities end to end: the signature algorithm suites (key types of the CAs,
//! the bot and its outputs), outputs whose roles come from the bot role, heartbeats, leaf
//! clusters, and CA rotations that a running bot follows on its own while sessions run and new
//! ones open.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idmux_identity::{Identity, KeyPair, KeyType};
use idmux_testkit::*;

const C: &str = "ids.test";

fn cluster(suite: &str, nodes: usize) -> DevCluster {
    DevCluster::start_with(
        tempfile::tempdir().unwrap(),
        C,
        nodes,
        ClusterOptions {
            args: vec![format!("--signature-algorithm-suite={suite}")],
            ..Default::default()
        },
    )
}

fn key_type(path: &std::path::Path) -> KeyType {
    KeyPair::from_pem(&std::fs::read_to_string(path).unwrap())
        .unwrap()
        .key_type()
}

/// The generation in the data dir's `tlscert` (read alone: the bot may be writing the set).
fn generation(data: &std::path::Path) -> u64 {
    let tls = std::fs::read_to_string(data.join("tlscert")).unwrap();
    idmux_identity::x509::tls_identity_of(&tls)
        .unwrap()
        .0
        .generation
}

/// The seed's flow on a suite: join, outputs, ssh and scp through the multiplexer; the keys of
/// the bot and its output and the CAs have the suite's types.
fn seed_flow(suite: &str, want_key: KeyType, want_ca_prefix: &str) {
    let cl = cluster(suite, 1);
    // `idmux start` without --roles: the output's roles come from the bot role.
    let bot = BotProc::start(&cl, BotOptions::default());
    assert_eq!(key_type(&bot.dest.join("key")), want_key, "output key");
    assert_eq!(
        key_type(&bot.data.join("key")),
        want_key,
        "bot identity key"
    );
    let kh = std::fs::read_to_string(bot.dest.join("known_hosts")).unwrap();
    assert!(
        kh.starts_with(&format!(
            "@cert-authority {},{C},*.{C} {want_ca_prefix} ",
            proxy_host(&cl)
        )),
        "{kh}"
    );
    let cfg = bot.ssh_config();
    let target = format!("{}@node-1.{C}", me());
    let o = ssh(&cfg, &[&target, "echo ok"]);
    assert!(o.status.success(), "{suite}: {}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "ok");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("payload");
    std::fs::write(&src, vec![7u8; 256 * 1024]).unwrap();
    let remote = work.path().join("remote");
    let o = run(Command::new("scp")
        .arg("-F")
        .arg(&cfg)
        .args(["-q", "-o", "BatchMode=yes"])
        .arg(&src)
        .arg(format!("{target}:{}", remote.display())));
    assert!(o.status.success(), "{suite} scp: {}", stderr(&o));
    assert_eq!(std::fs::read(&remote).unwrap(), vec![7u8; 256 * 1024]);
    // Ping names the suite.
    let o = run(Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(cl.data_dir().join("ca.pem"))
        .arg(format!("https://{}/webapi/ping", cl.addr)));
    let ping: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(ping["auth"]["signature_algorithm_suite"], suite);
    assert_eq!(ping["fips"], false);
}

fn proxy_host(cl: &DevCluster) -> String {
    cl.addr.rsplit_once(':').unwrap().0.to_string()
}

#[test]
fn seed_flow_on_the_legacy_suite_is_rsa() {
    seed_flow("legacy", KeyType::Rsa2048, "ssh-rsa");
}

#[test]
fn seed_flow_on_the_balanced_suite_is_ecdsa_with_ed25519_cas() {
    seed_flow("balanced-v1", KeyType::EcdsaP256, "ssh-ed25519");
}

/// The long tier only (`scripts/test.sh --long`): the default suite runs one suite per key type.
#[test]
fn seed_flow_on_the_fips_and_hsm_suites_is_ecdsa() {
    if std::env::var_os("IDMUX_LONG").is_none() {
        eprintln!("SKIP fips-v1 and hsm-v1: long tier (scripts/test.sh --long)");
        return;
    }
    seed_flow("fips-v1", KeyType::EcdsaP256, "ecdsa-sha2-nistp256");
    seed_flow("hsm-v1", KeyType::EcdsaP256, "ecdsa-sha2-nistp256");
}

#[test]
fn roles_come_from_the_bot_role_and_heartbeats_are_recorded() {
    let cl = cluster("balanced-v1", 0);
    // A bot whose role may impersonate nothing: one line naming the role.
    let o = cl.admin(&[
        "bots",
        "add",
        "empty",
        "--roles=",
        "--logins",
        &me(),
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let token = v["token_id"].as_str().unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut args = cl.start_args(&work.path().join("data"), &work.path().join("dest"), token);
    args.push("--oneshot".into());
    let o = run(Command::new(idmux_bin()).args(&args));
    assert!(!o.status.success());
    let err = stderr(&o);
    let line = err
        .lines()
        .find(|l| l.starts_with("idmux: "))
        .unwrap_or(&err);
    assert!(
        line.contains("the bot role bot-empty allows impersonating no roles"),
        "{err}"
    );

    // A one-shot run of a bot with roles: its output holds the bot role's roles, and its
    // heartbeat says one-shot.
    let token = cl.token("ci", &me());
    let dest = work.path().join("dest-ci");
    let mut args = cl.start_args(&work.path().join("data-ci"), &dest, &token);
    args.push("--oneshot".into());
    let o = run(Command::new(idmux_bin()).args(&args));
    assert!(o.status.success(), "{}", stderr(&o));
    let id = Identity::load_destination(&dest).unwrap();
    assert_eq!(id.tls_identity().unwrap().groups, ["access".to_string()]);
    let ls = stdout(&cl.admin(&["bots", "ls"]));
    let row = ls.lines().find(|l| l.starts_with("ci ")).unwrap();
    assert!(row.contains("one-shot") && !row.contains(" - "), "{ls}");

    // A running bot sends its startup heartbeat.
    let bot = BotProc::start(
        &cl,
        BotOptions {
            token: Some(cl.token("daemon", &me())),
            ..Default::default()
        },
    );
    assert!(
        wait_for(Duration::from_secs(20), || {
            let ls = stdout(&cl.admin(&["bots", "ls"]));
            ls.lines()
                .any(|l| l.starts_with("daemon ") && l.contains("startup"))
        }),
        "no startup heartbeat: {}",
        bot.log_text()
    );
}

/// Wait until the bot has renewed on its own (it checks its cluster's CAs every second here)
/// since generation `g`, into a known_hosts that satisfies `ok`.
fn renewed_into(bot: &BotProc, g: u64, what: &str, ok: impl Fn(&str) -> bool) {
    let kh = bot.dest.join("known_hosts");
    assert!(
        wait_for(Duration::from_secs(30), || {
            generation(&bot.data) > g && ok(&std::fs::read_to_string(&kh).unwrap_or_default())
        }),
        "{what}: the bot did not renew into it by itself: {}",
        bot.log_text()
    );
}

/// One rotation step; returns the bot's generation from before it.
fn rotate(cl: &DevCluster, bot: &BotProc, kind: &str, phase: &str) -> u64 {
    let g = generation(&bot.data);
    let o = cl.admin(&["auth", "rotate", "--type", kind, "--phase", phase]);
    assert!(o.status.success(), "rotate {kind} {phase}: {}", stderr(&o));
    g
}

fn ca_key(cl: &DevCluster, kind: &str) -> String {
    let line =
        std::fs::read_to_string(cl.data_dir().join(format!("ca/{kind}_ca_ssh.pub"))).unwrap();
    let mut f = line.split_whitespace();
    format!("{} {}", f.next().unwrap(), f.next().unwrap())
}

/// A session held open: the remote side printed `ready` and waits for a line.
struct Held {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

fn hold(cfg: &std::path::Path, target: &str) -> Held {
    let mut child = Command::new("ssh")
        .arg("-F")
        .arg(cfg)
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"])
        .arg(target)
        .arg("echo ready; read line; echo got-$line")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first.trim(), "ready");
    Held { child, out }
}

#[test]
fn ca_rotations_through_every_phase_with_sessions_running() {
    let _serial = exclusive(); // 10 held sessions and a stream of new ones
    let cl = cluster("balanced-v1", 1);
    let bot = BotProc::start(
        &cl,
        BotOptions {
            args: vec![
                "--certificate-ttl=2h".into(),
                "--renewal-interval=1h".into(),
            ],
            // No scheduled renewal during the test: every renewal is the bot following a
            // rotation step on its own.
            env: vec![("IDMUX_CA_CHECK_INTERVAL".into(), "1s".into())],
            ..Default::default()
        },
    );
    let cfg = bot.ssh_config();
    let target = format!("{}@node-1.{C}", me());
    let mut held: Vec<Held> = (0..10).map(|_| hold(&cfg, &target)).collect();

    // New sessions, one after another, for the whole rotation.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let churn = {
        let (stop, ok, failures, cfg, target) = (
            stop.clone(),
            ok.clone(),
            failures.clone(),
            cfg.clone(),
            target.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let o = ssh(&cfg, &[&target, "true"]);
                if o.status.success() {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.lock().unwrap().push(stderr(&o));
                }
            }
        })
    };

    // Between two phases, at least two new sessions open (and none fails).
    let opens = |what: &str| {
        let before = ok.load(Ordering::Relaxed);
        assert!(
            wait_for(Duration::from_secs(30), || ok.load(Ordering::Relaxed)
                >= before + 2),
            "{what}: new sessions stopped opening: {:?}",
            failures.lock().unwrap()
        );
    };
    let t0 = Instant::now();
    let old_host = ca_key(&cl, "host");
    let keys = |kh: &str| kh.lines().count();
    let g = rotate(&cl, &bot, "host", "init");
    renewed_into(&bot, g, "host init", |kh| keys(kh) == 2);
    opens("host init");
    let new_host = std::fs::read_to_string(cl.data_dir().join("ca/host_ca_additional_ssh.pub"))
        .unwrap()
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    // Servers go on serving certificates from the old host CA until update_servers.
    let only_old = bot.work.path().join("old_known_hosts");
    std::fs::write(
        &only_old,
        format!("@cert-authority *.{C} {old_host} type=host\n"),
    )
    .unwrap();
    let old_only = |phase: &str| {
        let opt = format!("UserKnownHostsFile={}", only_old.display());
        let o = ssh(&cfg, &["-o", &opt, &target, "true"]);
        eprintln!("{phase}: ssh trusting only the old host CA: {}", o.status);
        o.status.success()
    };
    let g = rotate(&cl, &bot, "host", "update_clients");
    renewed_into(&bot, g, "host update_clients", |kh| keys(kh) == 2);
    opens("host update_clients");
    assert!(
        old_only("update_clients"),
        "the node changed its certificate too early"
    );
    let g = rotate(&cl, &bot, "host", "update_servers");
    renewed_into(&bot, g, "host update_servers", |kh| keys(kh) == 2);
    opens("host update_servers");
    assert!(
        !old_only("update_servers"),
        "the node still serves the old CA's certificate"
    );
    let g = rotate(&cl, &bot, "host", "standby");
    renewed_into(&bot, g, "host standby", |kh| keys(kh) == 1);
    opens("host standby");
    let kh = std::fs::read_to_string(bot.dest.join("known_hosts")).unwrap();
    assert!(kh.contains(&new_host) && !kh.contains(&old_host), "{kh}");
    assert_eq!(ca_key(&cl, "host"), new_host);
    // Only the new host CA is trusted now, so the node serves a certificate from it.
    let o = ssh(&cfg, &[&target, "true"]);
    assert!(
        o.status.success(),
        "after the host rotation: {}",
        stderr(&o)
    );

    // The user CA: nodes and the proxy trust both keys while clients move over.
    let old_user = ca_key(&cl, "user");
    for phase in ["init", "update_clients", "update_servers", "standby"] {
        let g = rotate(&cl, &bot, "user", phase);
        renewed_into(&bot, g, &format!("user {phase}"), |_| true);
        opens(&format!("user {phase}"));
    }
    assert_ne!(ca_key(&cl, "user"), old_user);
    let out = Identity::load_destination(&bot.dest).unwrap();
    let signer = russh::keys::ssh_key::PublicKey::from(out.ssh_cert.signature_key().clone())
        .to_openssh()
        .unwrap();
    assert_eq!(
        signer
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" "),
        ca_key(&cl, "user"),
        "the output is signed by the new user CA"
    );
    let o = ssh(&cfg, &[&target, "true"]);
    assert!(
        o.status.success(),
        "after the user rotation: {}",
        stderr(&o)
    );

    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    let failed = failures.lock().unwrap().clone();
    let opened = ok.load(Ordering::Relaxed);
    eprintln!(
        "rotations took {:?}; {opened} new sessions opened, {} failed",
        t0.elapsed(),
        failed.len()
    );
    assert!(failed.is_empty(), "new sessions failed: {failed:?}");
    assert!(opened >= 16, "only {opened} new sessions opened");
    // The sessions held through both rotations are still there.
    for (i, h) in held.iter_mut().enumerate() {
        let stdin = h.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{i}").unwrap();
        let mut line = String::new();
        h.out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), format!("got-{i}"));
        assert!(h.child.wait().unwrap().success());
    }
}

#[test]
fn a_leaf_cluster_is_listed_trusted_and_reached() {
    const LEAF: &str = "leaf.test";
    let cl = DevCluster::start_with(
        tempfile::tempdir().unwrap(),
        C,
        1,
        ClusterOptions {
            args: vec![format!("--leaf={LEAF}")],
            ..Default::default()
        },
    );
    let bot = BotProc::start(&cl, BotOptions::default());
    // known_hosts: a line per cluster (the leaf's host CA from GetCertAuthority), and the
    // leaf's own files, as tbot writes them.
    let kh = std::fs::read_to_string(bot.dest.join("known_hosts")).unwrap();
    let host = proxy_host(&cl);
    let lines: Vec<&str> = kh.lines().collect();
    assert_eq!(lines.len(), 2, "{kh}");
    assert!(
        lines[0].starts_with(&format!("@cert-authority {host},{C},*.{C} ")),
        "{kh}"
    );
    assert!(
        lines[1].starts_with(&format!("@cert-authority {host},{LEAF},*.{LEAF} ")),
        "{kh}"
    );
    let leaf_key = std::fs::read_to_string(
        cl.data_dir()
            .join(format!("leaves/{LEAF}/ca/host_ca_ssh.pub")),
    )
    .unwrap();
    let leaf_key: Vec<&str> = leaf_key.split_whitespace().take(2).collect();
    assert!(lines[1].contains(&leaf_key.join(" ")), "{kh}");
    let own = std::fs::read_to_string(bot.dest.join(format!("{LEAF}.known_hosts"))).unwrap();
    assert!(
        own.starts_with(&format!(
            "# Cluster specific known_hosts generated for cluster '{LEAF}'\n@cert-authority * "
        )),
        "{own}"
    );
    assert!(bot.dest.join(format!("{LEAF}.ssh_config")).exists());
    // Both clusters' host CAs in teleport-host-ca.crt.
    let cas = std::fs::read_to_string(bot.dest.join("teleport-host-ca.crt")).unwrap();
    assert_eq!(cas.matches("-----BEGIN CERTIFICATE-----").count(), 2);

    // ssh through the multiplexer to the leaf's node, checked against the leaf's host CA.
    let cfg = bot.ssh_config();
    let o = ssh(&cfg, &[&format!("{}@node-1.{LEAF}", me()), "echo leaf-ok"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "leaf-ok");
    // The v1.sock `|cluster` form.
    let sock = bot.dest.join("v1.sock");
    let target = |req: &str| {
        idmux_wire::v1::parse(format!("{req}\0").as_bytes())
            .unwrap()
            .0
    };
    let banner = idmux_client::mux::local::dial_v1(
        &sock,
        &target(&format!("node-1:3022|{LEAF}")),
        Duration::from_secs(20),
    )
    .unwrap();
    assert!(banner.starts_with("SSH-2.0-"), "{banner}");
    // A cluster that is neither: refused by the proxy, named in the error.
    let err = idmux_client::mux::local::dial_v1(
        &sock,
        &target("node-1:3022|nope.test"),
        Duration::from_secs(20),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("nope.test"), "{err}");
}

#[test]
fn joins_through_the_join_service_or_falls_back_as_tbot_does() {
    // A cluster with the join service: the bot joins through it.
    let cl = cluster("legacy", 0);
    let work = tempfile::tempdir().unwrap();
    let join = |cl: &DevCluster, name: &str, token: &str| {
        let mut args = cl.start_args(
            &work.path().join(format!("data-{name}")),
            &work.path().join(format!("dest-{name}")),
            token,
        );
        args.push("--oneshot".into());
        run(Command::new(idmux_bin())
            .args(&args)
            .env("IDMUX_LOG", "info"))
    };
    let o = join(&cl, "new", &cl.token("ci", &me()));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("joined through the join service"),
        "{}",
        stderr(&o)
    );
    // ServerInit named the suite: the key is RSA under legacy.
    assert_eq!(
        key_type(&work.path().join("data-new/key")),
        KeyType::Rsa2048
    );
    let id = Identity::read_data_dir(&work.path().join("data-new")).unwrap();
    assert_eq!(id.tls_identity().unwrap().generation, 1);
    // A bad token is refused after ServerInit: final, no fallback to the web join.
    let o = join(&cl, "bad", "00000000000000000000000000000000");
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("token expired or not found"), "{err}");
    assert!(!err.contains("/webapi/host/credentials"), "{err}");

    // An older Teleport (no join service): Unimplemented, so the legacy join.
    let old = DevCluster::start_with(
        tempfile::tempdir().unwrap(),
        C,
        0,
        ClusterOptions {
            args: vec!["--legacy-join-only".into()],
            ..Default::default()
        },
    );
    let o = join(&old, "old", &old.token("ci", &me()));
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("unknown service teleport.join.v1.JoinService")
            && err.contains("joining through /webapi/host/credentials"),
        "{err}"
    );
    let id = Identity::read_data_dir(&work.path().join("data-old")).unwrap();
    assert_eq!(id.tls_identity().unwrap().generation, 1);
}
