//! Isolation (issue 8): a second Unix user can use neither `v1.sock` nor `agent.sock` and
//! reads no key; no key material or token reaches any log at trace level; the dev proxy
//! refuses TLS clients without a certificate, with a wrong ALPN or with another CA's
//! certificate; idmux refuses a proxy whose certificate is from another CA or for another name.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use idmux_identity::{Identity, KeyPair};
use idmux_testkit::*;

const C: &str = "dev.test";

/// A second, unprivileged Unix user (created with useradd the first time), or None when the
/// tests do not run as root.
fn other_user() -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let name = "idmux-other";
    if nix::unistd::User::from_name(name).ok().flatten().is_none() {
        let o = run(Command::new("useradd").args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ]));
        if !o.status.success() {
            eprintln!("useradd {name}: {}", stderr(&o).trim());
            return None;
        }
    }
    let u = nix::unistd::User::from_name(name).ok().flatten()?;
    Some((u.uid.as_raw(), u.gid.as_raw()))
}

fn as_user(uid: u32, gid: u32, cmd: &mut Command) -> Output {
    // std drops the supplementary groups when root changes uid.
    run(cmd.uid(uid).gid(gid).current_dir("/"))
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_second_user_cannot_use_the_sockets_or_read_keys() {
    let Some((uid, gid)) = other_user() else {
        eprintln!("SKIP a_second_user_cannot_use_the_sockets_or_read_keys: needs root and useradd");
        return;
    };
    // Folders anyone may enter, as /opt/machine-id usually is: only the modes idmux gives its
    // sockets and key files stand between the other user and them.
    let work = tempfile::tempdir().unwrap();
    chmod(work.path(), 0o755);
    let (data, dest, bin) = (
        work.path().join("data"),
        work.path().join("dest"),
        work.path().join("bin"),
    );
    for d in [&data, &dest, &bin] {
        std::fs::create_dir(d).unwrap();
        chmod(d, 0o755);
    }
    let fdpass = bin.join("idmux-fdpass");
    // Copied by cp, so no descriptor open for writing on it is ever in this process, where a
    // child another test forks at that moment would inherit it and make running it fail with
    // ETXTBSY ("Text file busy") until that child execs.
    let cp = Command::new("cp")
        .arg(idmux_bin().with_file_name("idmux-fdpass"))
        .arg(&fdpass)
        .status()
        .unwrap();
    assert!(cp.success(), "cp idmux-fdpass: {cp}");
    chmod(&fdpass, 0o755);

    let cl = DevCluster::start(C, 1);
    let bot = BotProc::start(
        &cl,
        BotOptions {
            data: Some(data.clone()),
            dest: Some(dest.clone()),
            ..Default::default()
        },
    );
    for p in [
        dest.join("v1.sock"),
        dest.join("agent.sock"),
        dest.join("key"),
        dest.join("identity"),
        data.join("key"),
    ] {
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }

    // The other user reaches the folder: public files are readable ...
    let o = as_user(uid, gid, Command::new("cat").arg(dest.join("key.pub")));
    assert!(o.status.success(), "key.pub: {}", stderr(&o));
    // ... private ones are not.
    for p in [dest.join("key"), dest.join("identity"), data.join("key")] {
        let o = as_user(uid, gid, Command::new("cat").arg(&p));
        assert!(!o.status.success(), "{} was readable", p.display());
        assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));
    }

    // agent.sock: the owner lists the key, the other user is refused.
    let list = |c: &mut Command| {
        c.arg("-l").env("SSH_AUTH_SOCK", dest.join("agent.sock"));
    };
    let mut own = Command::new("ssh-add");
    list(&mut own);
    let o = run(&mut own);
    assert!(o.status.success(), "owner: {}", stderr(&o));
    let mut other = Command::new("ssh-add");
    list(&mut other);
    let o = as_user(uid, gid, &mut other);
    assert!(
        !o.status.success(),
        "the other user listed the agent's keys"
    );
    assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));

    // v1.sock: what ssh runs as ProxyCommand, with stdout a socket as under ProxyUseFdpass.
    let fdpass_as = |user: Option<(u32, u32)>| {
        let (mine, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut c = Command::new(&fdpass);
        c.arg(dest.join("v1.sock"))
            .arg(format!("node-1.{C}:3022|{C}"))
            .stdout(Stdio::from(std::os::fd::OwnedFd::from(theirs)));
        let o = match user {
            Some((u, g)) => as_user(u, g, &mut c),
            None => run(&mut c),
        };
        drop(mine);
        o
    };
    let o = fdpass_as(None);
    assert!(o.status.success(), "owner: {}", stderr(&o));
    let o = fdpass_as(Some((uid, gid)));
    assert!(!o.status.success(), "the other user connected to v1.sock");
    assert!(
        stderr(&o).contains("Permission denied"),
        "{}",
        stderr(&o).trim()
    );
    eprintln!(
        "second user (uid {uid}): key, identity and data key unreadable, agent.sock and v1.sock \
         refused: {}",
        stderr(&o).trim()
    );
    drop(bot);
}

/// Base64 lines of every PEM private key in these files and folders (recursively).
fn private_key_lines(paths: &[PathBuf], out: &mut Vec<String>) {
    for p in paths {
        if p.is_dir() {
            let kids: Vec<PathBuf> = std::fs::read_dir(p)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .collect();
            private_key_lines(&kids, out);
        } else if let Ok(text) = std::fs::read_to_string(p) {
            let mut inside = false;
            for l in text.lines() {
                if l.starts_with("-----BEGIN") && l.contains("PRIVATE KEY") {
                    inside = true;
                } else if l.starts_with("-----END") {
                    inside = false;
                } else if inside && l.len() >= 16 && !out.iter().any(|x| x == l) {
                    out.push(l.to_string());
                }
            }
        }
    }
}

#[test]
fn no_secret_in_any_log_at_trace_level() {
    let work = tempfile::tempdir().unwrap();
    let cluster_log = work.path().join("cluster.log");
    let trace = vec![("IDMUX_LOG".to_string(), "trace".to_string())];
    let cl = DevCluster::start_with(
        tempfile::tempdir().unwrap(),
        C,
        1,
        ClusterOptions {
            env: trace.clone(),
            log: Some(cluster_log.clone()),
            ..Default::default()
        },
    );
    let token = cl.token("ci", &me());
    let mut keys = Vec::new();
    let bot = BotProc::start(
        &cl,
        BotOptions {
            env: trace.clone(),
            token: Some(token.clone()),
            args: vec![
                "--certificate-ttl=1m".into(),
                "--renewal-interval=2s".into(),
            ],
            ..Default::default()
        },
    );
    private_key_lines(&[bot.data.clone(), bot.dest.clone()], &mut keys);
    let node = format!("{}@node-1.{C}", me());
    let mut client_logs = String::new();
    let mut record = |o: &Output| {
        client_logs.push_str(&stderr(o));
        client_logs.push_str(&stdout(o));
    };
    // Sessions through the multiplexer and through the stdio ProxyCommand, at trace level.
    let o = run(Command::new("ssh")
        .arg("-F")
        .arg(bot.ssh_config())
        .args(["-o", "BatchMode=yes", &node, "echo ok"])
        .envs(trace.clone()));
    assert!(o.status.success(), "{}", stderr(&o));
    record(&o);
    let stdio_dest = cl.bot_destination("stdio", &me(), "access", "1h", "stdio");
    let o = run(Command::new("ssh")
        .arg("-F")
        .arg(stdio_dest.join("ssh_config"))
        .args(["-o", "BatchMode=yes", &node, "echo ok"])
        .envs(trace.clone()));
    assert!(o.status.success(), "{}", stderr(&o));
    record(&o);
    // Failures log too: a spent token, a bad v1.sock request.
    let o = run(Command::new(idmux_bin())
        .args(cl.start_args(
            &work.path().join("data2"),
            &work.path().join("dest2"),
            &token,
        ))
        .arg("--oneshot")
        .envs(trace.clone()));
    assert!(!o.status.success(), "a spent token joined");
    record(&o);
    {
        let mut s = std::os::unix::net::UnixStream::connect(bot.dest.join("v1.sock")).unwrap();
        s.write_all(b"node-9:1|a|b\0").unwrap();
        let _ = s.read_to_end(&mut Vec::new());
    }
    // A few renewals (new bot keys each time).
    assert!(wait_for(Duration::from_secs(30), || {
        private_key_lines(std::slice::from_ref(&bot.data), &mut keys);
        bot.log_text().matches("renewed: bot identity").count() >= 3
    }));
    private_key_lines(
        &[
            bot.data.clone(),
            bot.dest.clone(),
            stdio_dest.clone(),
            cl.data_dir().to_path_buf(),
        ],
        &mut keys,
    );
    let bot_log = bot.log_text();
    drop(bot);
    let logs = [
        ("cluster", std::fs::read_to_string(&cluster_log).unwrap()),
        ("bot", bot_log),
        ("ssh and idmux clients", client_logs),
    ];
    assert!(keys.len() > 20, "found only {} key lines", keys.len());
    let mut bytes = 0;
    for (what, log) in &logs {
        assert!(
            log.lines().count() > 10,
            "the {what} log is nearly empty: is trace logging on?"
        );
        bytes += log.len();
        assert!(!log.contains(&token), "the {what} log holds the join token");
        assert!(
            !log.contains("PRIVATE KEY"),
            "the {what} log holds a private key block"
        );
        for k in &keys {
            assert!(
                !log.contains(k.as_str()),
                "the {what} log holds key material {k}"
            );
        }
    }
    eprintln!(
        "trace logs: {} KiB from cluster, bot and clients; no token, none of {} private key lines",
        bytes / 1024,
        keys.len()
    );
}

/// A rustls client config trusting `roots_pem`, presenting `client` (cert PEM + key) if given.
fn client_tls(
    roots_pem: &str,
    client: Option<(&str, &KeyPair)>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut cfg = match client {
        Some((cert, key)) => b
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                key.to_rustls().unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// The HTTP/2 client preface and an empty SETTINGS frame: Auth's gRPC server answers it.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// Handshake with `addr` as server `name`, send `hello`, and read what the server says first
/// (the proxy's SSH banner behind `teleport-proxy-ssh`, Auth's SETTINGS frame behind
/// `teleport-auth@`). Err: why the connection was refused.
fn tls_first_bytes(
    addr: &str,
    name: &str,
    cfg: Arc<rustls::ClientConfig>,
    hello: &[u8],
) -> Result<Vec<u8>, String> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = rustls_pki_types::ServerName::try_from(name.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(cfg, name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    if !hello.is_empty() {
        tls.write_all(hello).map_err(|e| e.to_string())?;
    }
    let mut buf = [0u8; 8];
    match tls.read(&mut buf) {
        Ok(0) => Err("closed without a word".into()),
        Ok(n) => Ok(buf[..n].to_vec()),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn dev_proxy_refuses_bad_tls_clients() {
    // Both node transports' ALPNs are checked, whichever this run of the suite exercises.
    let cl = DevCluster::start_serving(tempfile::tempdir().unwrap(), C, 1, "grpc,ssh");
    let ca = std::fs::read_to_string(cl.data_dir().join("ca.pem")).unwrap();
    let dest = cl.bot_destination("tls", &me(), "access", "1h", "stdio");
    let id = Identity::load_destination(&dest).unwrap();
    // An identity from another cluster's CA, same names.
    let other = tempfile::tempdir().unwrap();
    let (_, foreign) = new_ca_and_identity(other.path(), C, Duration::from_secs(3600));
    let ssh_alpn: &[&[u8]] = &[b"teleport-proxy-ssh"];
    let grpc_alpn: &[&[u8]] = &[b"teleport-proxy-ssh-grpc"];
    let auth_alpn = idmux_transport::auth_client::auth_alpn(C);
    let auth_alpn: &[&[u8]] = &[auth_alpn.as_bytes(), b"h2"];

    let mine = Some((id.tls_cert_pem.as_str(), &id.key));
    let theirs = Some((foreign.tls_cert_pem.as_str(), &foreign.key));
    let (proxy, auth) = ("127.0.0.1", "teleport.cluster.local");

    // The controls: this cluster's identity gets the proxy's SSH banner and Auth's SETTINGS.
    let ok = tls_first_bytes(&cl.addr, proxy, client_tls(&ca, mine, ssh_alpn), b"");
    assert_eq!(ok.as_deref(), Ok(&b"SSH-2.0-"[..]), "{ok:?}");
    let ok = tls_first_bytes(&cl.addr, auth, client_tls(&ca, mine, auth_alpn), H2_PREFACE);
    assert!(
        ok.as_ref().is_ok_and(|b| b.len() >= 4 && b[3] == 4),
        "auth did not answer with SETTINGS: {ok:?}"
    );
    let ok = tls_first_bytes(
        &cl.addr,
        proxy,
        client_tls(&ca, mine, grpc_alpn),
        H2_PREFACE,
    );
    assert!(
        ok.as_ref().is_ok_and(|b| b.len() >= 4 && b[3] == 4),
        "the gRPC transport did not answer with SETTINGS: {ok:?}"
    );

    // The other CA has the same cluster name, so its CA's subject matches: only the
    // signature tells them apart.
    let cases = [
        (
            "no client certificate",
            proxy,
            client_tls(&ca, None, ssh_alpn),
            &b""[..],
        ),
        (
            "another CA's certificate",
            proxy,
            client_tls(&ca, theirs, ssh_alpn),
            b"",
        ),
        (
            "gRPC transport, no client certificate",
            proxy,
            client_tls(&ca, None, grpc_alpn),
            H2_PREFACE,
        ),
        (
            "gRPC transport, another CA's certificate",
            proxy,
            client_tls(&ca, theirs, grpc_alpn),
            H2_PREFACE,
        ),
        (
            "a wrong ALPN",
            proxy,
            client_tls(&ca, mine, &[b"teleport-bogus"]),
            b"",
        ),
        (
            "auth, no client certificate",
            auth,
            client_tls(&ca, None, auth_alpn),
            H2_PREFACE,
        ),
        (
            "auth, another CA's certificate",
            auth,
            client_tls(&ca, theirs, auth_alpn),
            H2_PREFACE,
        ),
    ];
    for (what, name, cfg, hello) in cases {
        let r = tls_first_bytes(&cl.addr, name, cfg, hello);
        assert!(r.is_err(), "{what}: the proxy answered {r:?}");
        let why = r.unwrap_err();
        assert!(
            !why.contains("invalid peer certificate"),
            "{what}: our client refused the server, not the other way round: {why}"
        );
        eprintln!("dev proxy, {what}: refused ({why})");
    }
}

/// Forward 127.0.0.3:<port> to `to` (a name the proxy's certificate does not cover); the
/// listener thread lives as long as the test process.
fn forwarder(to: &str) -> String {
    let l = TcpListener::bind("127.0.0.3:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let to = to.to_string();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let Ok(up) = TcpStream::connect(&to) else {
                continue;
            };
            let (mut a, mut b) = (c.try_clone().unwrap(), up.try_clone().unwrap());
            let (mut c2, mut up2) = (c, up);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut a, &mut up2);
                let _ = up2.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut b, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

#[test]
fn idmux_refuses_a_foreign_or_misnamed_proxy() {
    let a = DevCluster::start(C, 1);
    let b = DevCluster::start("other.test", 1);
    let misnamed = forwarder(&a.addr);
    let work = tempfile::tempdir().unwrap();
    let a_ca = a.data_dir().join("ca.pem");
    let join = |proxy: &str, token: &str, extra: &[&str]| {
        let d = tempfile::tempdir_in(work.path()).unwrap().keep();
        run(Command::new(idmux_bin())
            .arg("start")
            .arg(format!("--data-dir={}", d.join("data").display()))
            .arg(format!("--destination-dir={}", d.join("dest").display()))
            .arg(format!("--token={token}"))
            .arg(format!("--proxy-server={proxy}"))
            .args(["--join-method=token", "--oneshot"])
            .args(extra_start_args())
            .args(extra))
    };
    let ca_flag = format!("--ca-path={}", a_ca.display());

    // The bot (web API, before it has an identity): --ca-path decides.
    let o = join(&b.addr, &b.token("ci", &me()), &[&ca_flag]);
    assert!(!o.status.success(), "joined a proxy of another CA");
    let foreign_line = error_line(&o);
    assert!(foreign_line.contains("certificate"), "{foreign_line}");
    let o = join(&misnamed, &a.token("ci", &me()), &[&ca_flag]);
    assert!(!o.status.success(), "joined a proxy under another name");
    let name_line = error_line(&o);
    assert!(name_line.contains("certificate"), "{name_line}");
    let o = join(&a.addr, &a.token("ci", &me()), &[&ca_flag]);
    assert!(o.status.success(), "control: {}", stderr(&o));
    // --insecure is the only way around the check, and it says so.
    let o = join(&b.addr, &b.token("ci", &me()), &["--insecure"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("WARNING: --insecure"), "{}", stderr(&o));

    // With an identity (ProxyCommand, multiplexer): the identity's own CA, nothing else.
    let dest = a.bot_destination("pc", &me(), "access", "1h", "stdio");
    let node = format!("{}@node-1.{C}", me());
    assert!(ssh(&dest.join("ssh_config"), &[&node, "true"])
        .status
        .success());
    for (what, proxy) in [("another CA", b.addr.as_str()), ("another name", &misnamed)] {
        let o = run(Command::new(idmux_bin())
            .arg("ssh-proxy-command")
            .arg("--destination-dir")
            .arg(&dest)
            .args([
                "--proxy-server",
                proxy,
                "--host",
                "node-1",
                "--port",
                "3022",
            ])
            .stdin(Stdio::null()));
        assert!(!o.status.success(), "ssh-proxy-command to {what}");
        let l = error_line(&o);
        assert!(l.contains("certificate"), "{what}: {l}");
        eprintln!("ssh-proxy-command, proxy with {what}: {l}");
    }
    let fdest = a.bot_destination("mux", &me(), "access", "1h", "fdpass");
    let mut mux = Command::new(idmux_bin())
        .args(["start", "ssh-multiplexer", "--proxy-server", &misnamed])
        .arg("--destination-dir")
        .arg(&fdest)
        .stderr(Stdio::null())
        .spawn_reaped();
    assert!(wait_for(Duration::from_secs(10), || fdest
        .join("v1.sock")
        .exists()));
    let o = ssh(&fdest.join("ssh_config"), &[&node, "true"]);
    let _ = mux.kill();
    let _ = mux.wait();
    assert!(!o.status.success(), "the multiplexer used a misnamed proxy");
    let l = error_line(&o);
    assert!(l.contains("certificate"), "{l}");
    eprintln!("bot, proxy of another CA: {foreign_line}");
    eprintln!("bot, proxy under another name: {name_line}");
    eprintln!("multiplexer, proxy under another name: {l}");
}
