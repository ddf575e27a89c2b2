//! The harness of the "real deployments" tests (idmux_testkit::thirdparty), proven on its own:
//! Debian's nginx answers TLS with its own certificate and, as an L7 load balancer, lets no
//! Teleport ALPN protocol through; tinyproxy tunnels and logs CONNECT to any port; the silent
//! peers accept (and handshake) and then say nothing.

use std::io::Read;
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use idmux_testkit::*;

/// An upstream address nothing listens on, and a CA file that verifies nothing there.
fn absent_upstream(dir: &std::path::Path) -> (String, std::path::PathBuf) {
    let port = idmux_devcluster::node::free_port().unwrap();
    let ca = TestCerts::for_loopback(&dir.join("upstream")).ca_pem;
    (format!("127.0.0.1:{port}"), ca)
}

/// `curl` with a deadline, ignoring any proxy settings from the environment.
fn curl(args: &[&str]) -> Output {
    run(Command::new("curl")
        .args(["-sS", "--max-time", "10", "--noproxy", ""])
        .args(["-o", "/dev/null", "-w", "%{http_code}"])
        .args(args)
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY"))
}

/// `openssl s_client` to `addr` offering `alpn`, verifying against `ca`; ends at stdin's EOF
/// (right after the handshake), within 10 s at most.
fn s_client(addr: &str, alpn: &str, ca: &std::path::Path) -> String {
    let mut cmd = Command::new("timeout");
    cmd.args(["10", "openssl", "s_client", "-connect", addr])
        .args(["-servername", "localhost", "-verify_return_error"])
        .arg("-CAfile")
        .arg(ca)
        .stdin(Stdio::null());
    if !alpn.is_empty() {
        cmd.args(["-alpn", alpn]);
    }
    let o = run(&mut cmd);
    format!("{}{}", stdout(&o), stderr(&o))
}

#[test]
fn nginx_terminates_tls_with_its_own_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let (upstream, upstream_ca) = absent_upstream(tmp.path());
    let mut nginx = Nginx::start(&upstream, &upstream_ca);
    assert!(nginx.addr.starts_with("127.0.0.1:"), "{}", nginx.addr);
    let url = format!("https://{}/webapi/ping", nginx.addr);
    // nginx's own CA verifies it (by IP and by the name localhost); the upstream is absent,
    // so the answer is nginx's 502.
    let ca = nginx.ca_pem.to_str().unwrap().to_string();
    let o = curl(&["--cacert", &ca, &url]);
    assert_eq!(stdout(&o), "502", "{}\n{}", stderr(&o), nginx.error_log());
    let port = nginx.addr.rsplit_once(':').unwrap().1.to_string();
    let by_name = format!("localhost:{port}:127.0.0.1");
    let o = curl(&[
        "--cacert",
        &ca,
        "--resolve",
        &by_name,
        &format!("https://localhost:{port}/"),
    ]);
    assert_eq!(stdout(&o), "502", "{}", stderr(&o));
    match host_name() {
        Some(h) => {
            let pin = format!("{h}:{port}:127.0.0.1");
            let o = curl(&[
                "--cacert",
                &ca,
                "--resolve",
                &pin,
                &format!("https://{h}:{port}/"),
            ]);
            assert_eq!(stdout(&o), "502", "host name {h}: {}", stderr(&o));
        }
        None => eprintln!("skip: the host name does not resolve to a local address"),
    }
    // Not the upstream's CA: a client that trusts only that one refuses nginx.
    let o = curl(&["--cacert", upstream_ca.to_str().unwrap(), &url]);
    assert_eq!(stdout(&o), "000", "trusted a foreign CA: {}", stderr(&o));
    assert!(
        wait_for(Duration::from_secs(5), || nginx
            .access_log()
            .contains("/webapi/ping")),
        "access log: {}",
        nginx.access_log()
    );
    assert!(nginx.alive());
    nginx.stop();
    assert!(!nginx.alive());
    assert!(TcpStream::connect(&nginx.addr).is_err(), "still listening");
}

#[test]
fn nginx_lets_no_teleport_alpn_protocol_through() {
    let tmp = tempfile::tempdir().unwrap();
    let (upstream, upstream_ca) = absent_upstream(tmp.path());
    let nginx = Nginx::start(&upstream, &upstream_ca);
    // The control: HTTP/1.1 is negotiated, with a certificate nginx's CA verifies.
    let out = s_client(&nginx.addr, "http/1.1", &nginx.ca_pem);
    assert!(out.contains("ALPN protocol: http/1.1"), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    // Teleport's own protocols: refused or not negotiated, never selected.
    for proto in [
        "teleport-proxy-ssh",
        "teleport-proxy-ssh-grpc",
        "teleport-auth@",
    ] {
        let out = s_client(&nginx.addr, proto, &nginx.ca_pem);
        assert!(
            !out.contains(&format!("ALPN protocol: {proto}")),
            "nginx negotiated {proto}: {out}"
        );
        assert!(
            out.contains("No ALPN negotiated") || out.contains("no application protocol"),
            "{proto}: {out}"
        );
    }
    let both = "teleport-proxy-ssh,http/1.1";
    let out = s_client(&nginx.addr, both, &nginx.ca_pem);
    assert!(out.contains("ALPN protocol: http/1.1"), "{out}");
}

#[test]
fn tinyproxy_tunnels_connect_to_any_port_and_logs_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (upstream, upstream_ca) = absent_upstream(tmp.path());
    let nginx = Nginx::start(&upstream, &upstream_ca);
    let proxy = Tinyproxy::start();
    assert!(proxy.connects().is_empty(), "{}", proxy.log());
    // nginx's port is not 443: tinyproxy allows CONNECT to every port.
    let o = curl(&[
        "-x",
        &proxy.url(),
        "--cacert",
        nginx.ca_pem.to_str().unwrap(),
        &format!("https://{}/", nginx.addr),
    ]);
    assert_eq!(stdout(&o), "502", "{}\n{}", stderr(&o), proxy.log());
    assert!(
        wait_for(Duration::from_secs(5), || proxy.connects()
            == [nginx.addr.clone()]),
        "CONNECTs {:?} in:\n{}",
        proxy.connects(),
        proxy.log()
    );
}

#[test]
fn silent_peers_accept_and_say_nothing() {
    let peer = SilentPeer::start();
    let mut c = TcpStream::connect(&peer.addr).unwrap();
    assert!(wait_for(Duration::from_secs(5), || peer.accepted() == 1));
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let e = c
        .read(&mut [0u8; 16])
        .expect_err("the silent peer spoke or closed");
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{e}"
    );

    let tls = SilentTlsPeer::start_alpn(&["teleport-proxy-ssh"]);
    let out = s_client(&tls.addr, "teleport-proxy-ssh", &tls.ca_pem);
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(out.contains("ALPN protocol: teleport-proxy-ssh"), "{out}");
    assert!(wait_for(Duration::from_secs(5), || tls.handshakes() == 1));

    // A TLS client past the handshake hears nothing: no data, no close_notify, no close.
    let mut tcp = TcpStream::connect(&tls.addr).unwrap();
    let mut client = tls_client(&tls.ca_pem);
    while client.is_handshaking() {
        client.complete_io(&mut tcp).unwrap();
    }
    assert!(wait_for(Duration::from_secs(5), || tls.handshakes() == 2));
    tcp.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut stream = rustls::Stream::new(&mut client, &mut tcp);
    let e = stream
        .read(&mut [0u8; 16])
        .expect_err("the silent TLS peer spoke or closed");
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{e}"
    );
    drop(tls);
    // Dropped: the held connection is shut down (EOF or reset, no longer silence).
    let mut buf = [0u8; 16];
    match tcp.read(&mut buf) {
        Ok(0) => {}
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
        Ok(n) => panic!("{n} bytes after drop"),
    }
}

/// A rustls client for 127.0.0.1 trusting only `ca`.
fn tls_client(ca: &std::path::Path) -> rustls::ClientConnection {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap()
}
