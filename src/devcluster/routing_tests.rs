//! Tests of the web port's routing over real sockets: ALPNs, certificates, the connection
//! upgrade and `--no-tls-routing`. A cluster's CAs and proxy in a temp dir, no nodes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::ca::ClusterCas;
use crate::{serve_conn, Ctx, Entry, ProxyOptions, ProxyTransport};

struct Cluster {
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    roots: Arc<rustls::RootCertStore>,
}

async fn cluster(tls_routing: bool) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let cas = ClusterCas::create(&dir.path().join("ca"), "dev.test").unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in crate::cert_chain(&cas.serving_host_keys().tls_cert_pem).unwrap() {
        roots.add(c).unwrap();
    }
    crate::state::State::modify(dir.path(), |s| {
        s.cluster_name = "dev.test".into();
        Ok(())
    })
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let opts = ProxyOptions {
        listen: addr,
        transports: vec![ProxyTransport::Grpc, ProxyTransport::Ssh],
        legacy_join_only: false,
        tls_routing,
        ssh_addr: None,
        public_addr: addr.to_string(),
        extra_names: vec![],
        upgrade_ping_interval: Duration::from_millis(200),
        renewal_answer_delay: None,
    };
    let ctx = Arc::new(Ctx::new(dir.path(), cas, &[], opts).unwrap());
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = listener.accept().await.unwrap();
            let c = ctx.clone();
            tokio::spawn(async move {
                let _ = serve_conn(c, tcp, &peer.to_string(), Entry::WebPort).await;
            });
        }
    });
    Cluster {
        _dir: dir,
        addr,
        roots: Arc::new(roots),
    }
}

fn client(roots: &Arc<rustls::RootCertStore>, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut c = rustls::ClientConfig::builder()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(c))
}

fn name(n: &str) -> rustls_pki_types::ServerName<'static> {
    rustls_pki_types::ServerName::try_from(n.to_string()).unwrap()
}

async fn dial<S: crate::Io>(
    io: S,
    roots: &Arc<rustls::RootCertStore>,
    server: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<S>> {
    client(roots, alpn).connect(name(server), io).await
}

#[tokio::test]
async fn reverse_tunnel_alpn_is_negotiated_then_closed() {
    let cl = cluster(true).await;
    let tcp = TcpStream::connect(cl.addr).await.unwrap();
    let mut tls = dial(tcp, &cl.roots, "localhost", &[b"teleport-reversetunnel"])
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"teleport-reversetunnel"[..])
    );
    let mut buf = [0u8; 1];
    assert_eq!(
        tls.read(&mut buf).await.unwrap_or(0),
        0,
        "closed after the handshake"
    );
    let tcp = TcpStream::connect(cl.addr).await.unwrap();
    let tls = dial(
        tcp,
        &cl.roots,
        "127.0.0.1",
        &[b"teleport-reversetunnelv2", b"teleport-reversetunnel"],
    )
    .await
    .unwrap();
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"teleport-reversetunnelv2"[..])
    );
}

#[tokio::test]
async fn web_port_join_has_the_web_certificate_not_the_host_certificate() {
    let cl = cluster(true).await;
    let tcp = TcpStream::connect(cl.addr).await.unwrap();
    let err = dial(
        tcp,
        &cl.roots,
        "teleport.cluster.local",
        &[b"teleport-proxy-grpc", b"h2"],
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[tokio::test]
async fn without_tls_routing_node_and_auth_alpns_are_refused_join_and_web_served() {
    let cl = cluster(false).await;
    for alpn in [
        &b"teleport-proxy-ssh-grpc"[..],
        b"teleport-proxy-ssh",
        b"teleport-auth@6465762e74657374.teleport.cluster.local",
    ] {
        let tcp = TcpStream::connect(cl.addr).await.unwrap();
        let err = dial(tcp, &cl.roots, "localhost", &[alpn])
            .await
            .unwrap_err();
        assert!(
            format!("{err:?}").contains("NoApplicationProtocol"),
            "{}: {err:?}",
            String::from_utf8_lossy(alpn)
        );
    }
    let tcp = TcpStream::connect(cl.addr).await.unwrap();
    let tls = dial(
        tcp,
        &cl.roots,
        "localhost",
        &[b"teleport-proxy-grpc", b"h2"],
    )
    .await
    .unwrap();
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"teleport-proxy-grpc"[..])
    );
    // Ping says so.
    let (head, body) = get(&cl, "GET /webapi/ping HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains(r#""tls_routing_enabled":false"#), "{body}");
}

/// Send a raw HTTP/1.1 request over TLS; the response head and what followed it (one read).
async fn get(cl: &Cluster, req: &str) -> (String, String) {
    let (head, mut tls) = request(cl, req).await;
    let mut body = vec![0u8; 8192];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut body))
        .await
        .unwrap()
        .unwrap_or(0);
    (head, String::from_utf8_lossy(&body[..n]).into_owned())
}

/// Send a raw HTTP/1.1 request over TLS and read the response head; the stream after it.
async fn request(cl: &Cluster, req: &str) -> (String, tokio_rustls::client::TlsStream<TcpStream>) {
    let tcp = TcpStream::connect(cl.addr).await.unwrap();
    let mut tls = dial(tcp, &cl.roots, "localhost", &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(tls.read(&mut b).await.unwrap(), 1, "response ended early");
        head.push(b[0]);
    }
    (String::from_utf8(head).unwrap(), tls)
}

#[tokio::test]
async fn upgrade_without_a_known_type_is_teleports_404() {
    let cl = cluster(true).await;
    let (head, body) = get(
        &cl,
        "GET /webapi/connectionupgrade HTTP/1.1\r\nHost: x\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert!(body.contains("unsupported upgrade types: [foo]"), "{body}");
}

#[tokio::test]
async fn legacy_alpn_upgrade_carries_tls_with_the_host_certificate() {
    let cl = cluster(true).await;
    let (head, tls) = request(
        &cl,
        "GET /webapi/connectionupgrade HTTP/1.1\r\nHost: x\r\nUpgrade: alpn\r\nX-Teleport-Upgrade: alpn\r\nConnection: Upgrade\r\n\r\n",
    )
    .await;
    let lower = head.to_ascii_lowercase();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(lower.contains("x-teleport-upgrade: alpn\r\n"), "{head}");
    // Inside: the reverse tunnel ALPN, answered with the host certificate
    // (teleport.cluster.local), as upgrade detection and tbot's tunnel dialer see it.
    let inner = dial(
        tls,
        &cl.roots,
        "teleport.cluster.local",
        &[b"teleport-reversetunnel"],
    )
    .await
    .unwrap();
    assert_eq!(
        inner.get_ref().1.alpn_protocol(),
        Some(&b"teleport-reversetunnel"[..])
    );
}

#[tokio::test]
async fn websocket_upgrade_pings_and_tunnels_tls() {
    let cl = cluster(true).await;
    let (head, tls) = request(
        &cl,
        "GET /webapi/connectionupgrade HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: alpn-ping\r\n\r\n",
    )
    .await;
    let lower = head.to_ascii_lowercase();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        lower.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
        "{head}"
    );
    assert!(
        lower.contains("sec-websocket-protocol: alpn-ping\r\n"),
        "{head}"
    );
    let (tunnel, pings) = ws_client(tls);
    // The join service inside: the host certificate (teleport.cluster.local), as tbot's
    // insecure join over an upgrade checks it. It stays open while the pings come.
    let inner = dial(
        tunnel,
        &cl.roots,
        "teleport.cluster.local",
        &[b"teleport-proxy-grpc", b"h2"],
    )
    .await
    .unwrap();
    assert_eq!(
        inner.get_ref().1.alpn_protocol(),
        Some(&b"teleport-proxy-grpc"[..])
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    drop(inner);
    let pings = pings.lock().unwrap().clone();
    assert!(
        pings.len() >= 2,
        "{} ping(s) in 700 ms at a 200 ms interval",
        pings.len()
    );
    assert!(pings.iter().all(|p| p == b"teleport"), "{pings:?}");
}

#[tokio::test]
async fn websocket_without_a_known_subprotocol_is_upgraded_then_closed() {
    let cl = cluster(true).await;
    let (head, mut tls) = request(
        &cl,
        "GET /webapi/connectionupgrade HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("sec-websocket-protocol"));
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut b))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
}

type Pings = Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

/// A WebSocket client's framing over `outer`, written here from RFC 6455 (independent of the
/// server's codec): masked binary frames out; binary frames in, pings recorded.
fn ws_client<S: crate::Io>(outer: S) -> (tokio::io::DuplexStream, Pings) {
    let (tunnel, inner) = tokio::io::duplex(64 * 1024);
    let pings: Pings = Default::default();
    let seen = pings.clone();
    tokio::spawn(async move {
        let (mut or, mut ow) = tokio::io::split(outer);
        let (mut ir, mut iw) = tokio::io::split(inner);
        let up = async move {
            let mut buf = vec![0u8; 8192];
            loop {
                let n = match ir.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mask = [9u8, 8, 7, 6];
                let mut f = vec![0x82];
                if n < 126 {
                    f.push(0x80 | n as u8);
                } else {
                    f.push(0x80 | 126);
                    f.extend_from_slice(&(n as u16).to_be_bytes());
                }
                f.extend_from_slice(&mask);
                f.extend(buf[..n].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
                if ow.write_all(&f).await.is_err() {
                    return;
                }
            }
        };
        let down = async move {
            loop {
                let mut h = [0u8; 2];
                if or.read_exact(&mut h).await.is_err() {
                    return;
                }
                assert_eq!(h[1] & 0x80, 0, "server frames are unmasked");
                let len = match h[1] & 0x7f {
                    126 => {
                        let mut l = [0u8; 2];
                        or.read_exact(&mut l).await.unwrap();
                        u16::from_be_bytes(l) as usize
                    }
                    127 => panic!("frame too large for this test"),
                    l => l as usize,
                };
                let mut p = vec![0u8; len];
                or.read_exact(&mut p).await.unwrap();
                match h[0] {
                    0x82 => {
                        if iw.write_all(&p).await.is_err() {
                            return;
                        }
                    }
                    0x89 => seen.lock().unwrap().push(p),
                    other => panic!("unexpected frame {other:#x}"),
                }
            }
        };
        tokio::join!(up, down);
    });
    (tunnel, pings)
}

#[test]
fn certificate_names_and_public_addr() {
    let listen: SocketAddr = "127.0.0.1:3080".parse().unwrap();
    let (dns, ips) = crate::cert_names(
        listen,
        &[
            "proxy.example.com".into(),
            "10.1.2.3".into(),
            "[::2]".into(),
        ],
    );
    assert_eq!(dns, ["localhost", "proxy.example.com"]);
    let ips: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
    assert_eq!(ips, ["127.0.0.1", "::1", "10.1.2.3", "::2"]);
    let (_, ips) = crate::cert_names("0.0.0.0:1".parse().unwrap(), &[]);
    assert_eq!(ips.len(), 2, "an unspecified listen address is not a name");
    assert_eq!(
        crate::parse_public_addr("proxy.example.com", 3080).unwrap(),
        (
            "proxy.example.com:3080".to_string(),
            "proxy.example.com".to_string()
        )
    );
    assert_eq!(crate::parse_public_addr("h:443", 3080).unwrap().0, "h:443");
    assert_eq!(
        crate::parse_public_addr("[::1]:8443", 3080).unwrap(),
        ("[::1]:8443".to_string(), "::1".to_string())
    );
    assert!(crate::parse_public_addr("h:port", 3080).is_err());
    assert!(crate::parse_public_addr(":443", 3080).is_err());
}

#[test]
fn ping_ssh_settings_with_and_without_tls_routing() {
    let mut o = ProxyOptions {
        listen: "127.0.0.1:3080".parse().unwrap(),
        transports: vec![],
        legacy_join_only: false,
        tls_routing: true,
        ssh_addr: None,
        public_addr: "proxy.test:443".into(),
        extra_names: vec![],
        upgrade_ping_interval: Duration::from_secs(30),
        renewal_answer_delay: None,
    };
    let v = crate::web::ssh_settings(&o);
    assert_eq!(v["listen_addr"], "127.0.0.1:3080");
    assert_eq!(v["tunnel_listen_addr"], "127.0.0.1:3080");
    assert_eq!(v["public_addr"], "proxy.test:443");
    assert!(v.get("ssh_public_addr").is_none());
    o.tls_routing = false;
    o.ssh_addr = Some("127.0.0.1:3023".parse().unwrap());
    let v = crate::web::ssh_settings(&o);
    assert_eq!(v["listen_addr"], "127.0.0.1:3023");
    assert_eq!(v["web_listen_addr"], "127.0.0.1:3080");
    assert_eq!(v["ssh_public_addr"], "proxy.test:3023");
    assert!(v.get("tunnel_listen_addr").is_none());
}

/// Auth's own port (`--auth-listen`) over a real socket: the pin check of a bot's first
/// connection, and what a caller with no certificate (Teleport's Nop role) gets.
#[tokio::test]
async fn auth_port_serves_the_nop_role_and_passes_the_pin_check() {
    use idmux_transport::auth_client::AuthClient;
    use idmux_transport::auth_direct::{AuthDirect, FirstTrust, PIN_MISMATCH};
    use idmux_wire::services::*;
    let dir = tempfile::tempdir().unwrap();
    let cas = ClusterCas::create(&dir.path().join("ca"), "dev.test").unwrap();
    crate::state::State::modify(dir.path(), |s| {
        s.cluster_name = "dev.test".into();
        Ok(())
    })
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let opts = ProxyOptions {
        listen: "127.0.0.1:3080".parse().unwrap(),
        transports: vec![ProxyTransport::Grpc],
        legacy_join_only: false,
        tls_routing: true,
        ssh_addr: None,
        public_addr: "proxy.example.com:443".into(),
        extra_names: vec![],
        upgrade_ping_interval: Duration::from_secs(30),
        renewal_answer_delay: None,
    };
    let ctx = Arc::new(Ctx::new(dir.path(), cas, &[], opts).unwrap());
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = listener.accept().await.unwrap();
            let c = ctx.clone();
            tokio::spawn(async move {
                let _ = crate::serve_auth_direct(c, tcp, &peer.to_string()).await;
            });
        }
    });
    let auth = addr.to_string();
    let pins = crate::ca_pins(dir.path()).unwrap();
    assert_eq!(pins.len(), 1);
    // A pin of another key: Teleport's words.
    let wrong = FirstTrust::Pins(vec![format!("sha256:{}", "0".repeat(64))]);
    let e = AuthDirect::establish(&auth, &wrong)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.ends_with(PIN_MISMATCH), "{e}");
    // The right pin: the connection after it is checked against the pinned CA.
    let direct = AuthDirect::establish(&auth, &FirstTrust::Pins(pins))
        .await
        .unwrap();
    let nop = |tls| AuthClient::over(tls, format!("auth server {auth}"));
    let mut c = nop(direct.dial_join().await.unwrap()).await.unwrap();
    let ca: GetClusterCaCertResponse = c
        .unary(GET_CLUSTER_CA_CERT, "the CA request", Empty {})
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&ca.tls_ca).contains("BEGIN CERTIFICATE"));
    let ping: PingResponse = c.unary(PING, "the ping", PingRequest {}).await.unwrap();
    assert_eq!(ping.cluster_name, "dev.test");
    assert_eq!(ping.proxy_public_addr, "proxy.example.com:443");
    // Everything else is refused to the Nop role, GenerateUserCerts in Teleport's words.
    let e = c
        .unary::<_, idmux_wire::proto::Certs>(
            idmux_wire::proto::GENERATE_USER_CERTS,
            "the renewal",
            idmux_wire::proto::UserCertsRequest::default(),
        )
        .await
        .err()
        .unwrap();
    let r = e
        .downcast_ref::<idmux_transport::refusal::Refused>()
        .unwrap();
    assert_eq!(
        r.line,
        r#"auth refused the renewal: access denied to perform action "create" on "user""#
    );
    let e = c
        .unary::<_, Empty>(
            GET_ROLE,
            "the role request",
            GetRoleRequest { name: "x".into() },
        )
        .await
        .err()
        .unwrap();
    assert!(e.to_string().ends_with("access denied"), "{e}");
}

/// A TLS client whose TLS 1.3 suites are `suites`, in that order.
fn client_offering(
    roots: &Arc<rustls::RootCertStore>,
    suites: &[rustls::CipherSuite],
) -> tokio_rustls::TlsConnector {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites.retain(|s| suites.contains(&s.suite()));
    p.cipher_suites
        .sort_by_key(|s| suites.iter().position(|x| *x == s.suite()));
    let c = rustls::ClientConfig::builder_with_provider(Arc::new(p))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(c))
}

/// The suite is Go's server's choice (Teleport's proxy), not the client's first: AES-128-GCM
/// for a client listing AES-256-GCM first, as rustls' own clients do; ChaCha20-Poly1305 for a
/// client listing it first (Go's `aesgcmPreferred` is false for it). crypto/tls
/// `handshake_server_tls13.go`; `tls_suites`.
#[tokio::test]
async fn the_tls_suite_is_chosen_as_gos_server_chooses() {
    use rustls::CipherSuite as C;
    if !idmux_transport::tls::aes_gcm_hardware() {
        eprintln!("skipped: no AES-GCM hardware, where Go puts ChaCha20-Poly1305 first");
        return;
    }
    let cl = cluster(true).await;
    for (offered, chosen) in [
        (
            vec![C::TLS13_AES_256_GCM_SHA384, C::TLS13_AES_128_GCM_SHA256],
            C::TLS13_AES_128_GCM_SHA256,
        ),
        (
            vec![
                C::TLS13_AES_256_GCM_SHA384,
                C::TLS13_CHACHA20_POLY1305_SHA256,
                C::TLS13_AES_128_GCM_SHA256,
            ],
            C::TLS13_AES_128_GCM_SHA256,
        ),
        (
            vec![
                C::TLS13_CHACHA20_POLY1305_SHA256,
                C::TLS13_AES_256_GCM_SHA384,
            ],
            C::TLS13_CHACHA20_POLY1305_SHA256,
        ),
        (
            vec![C::TLS13_AES_256_GCM_SHA384],
            C::TLS13_AES_256_GCM_SHA384,
        ),
    ] {
        let tcp = TcpStream::connect(cl.addr).await.unwrap();
        let tls = client_offering(&cl.roots, &offered)
            .connect(name("localhost"), tcp)
            .await
            .unwrap();
        let got = tls.get_ref().1.negotiated_cipher_suite().unwrap().suite();
        assert_eq!(got, chosen, "offered {offered:?}");
    }
}
