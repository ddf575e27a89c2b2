//! The one byte stream to an address: TCP with its deadline, through a forward proxy when the
//! environment says so ([`crate::proxy_env`], Go's rules, as tbot): an HTTP CONNECT, over TLS
//! to an `https://` proxy (verified against the system's roots, as Go's `net/http` and curl
//! verify one), or a SOCKS5 CONNECT.
//!
//! Everything idmux sends to a proxy (web API, join, Auth, node transports, the connection
//! upgrade's outer TLS) starts here, so `HTTPS_PROXY` is honoured for every dial and every
//! stage has a deadline whose error names the address and the stage.
//!
//! Must not know: the Teleport proxy's TLS, ALPN or what runs over the stream.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use base64::Engine;
use bytes::Bytes;
use http_body_util::Empty;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::proxy_env::{self, ForwardProxy, ProxyKind};
use crate::tls::tcp_connect;

/// A byte stream to a proxy, whatever carries it (TCP, an HTTP CONNECT tunnel, a WebSocket).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A boxed [`Io`].
pub type BoxIo = Box<dyn Io>;

/// How long an HTTP proxy may take to answer a CONNECT.
pub(crate) const CONNECT_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A stream to `target` (`host:port`) and the HTTP proxy it went through, if any.
pub async fn connect(target: &str) -> Result<(BoxIo, Option<ForwardProxy>)> {
    match proxy_env::from_env(target)? {
        None => Ok((Box::new(tcp_connect(target).await?), None)),
        Some(p) => {
            let io = connect_via(&p, target).await?;
            Ok((io, Some(p)))
        }
    }
}

/// TLS to `https://` proxies: the system's roots, SNI the proxy's host, no ALPN, as Go's
/// `net/http` and curl dial one, built once. (Teleport's own `DialProxyWithDialer` wraps TLS
/// only in newer versions, with whatever configuration its caller passes; see README.md,
/// "Known limits".)
fn proxy_tls_config() -> Result<Arc<rustls::ClientConfig>> {
    static CONFIG: OnceLock<std::result::Result<Arc<rustls::ClientConfig>, String>> =
        OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let (roots, trouble) = crate::tls::system_roots();
            if roots.is_empty() {
                return Err(format!(
                    "{}; set SSL_CERT_FILE to a CA bundle that holds its issuer",
                    crate::tls::no_system_roots(trouble)
                ));
            }
            rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
                .map_err(|e| format!("TLS protocol versions: {e}"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// The stream to the proxy `p` itself: TCP, and TLS for an `https://` proxy.
async fn to_proxy(p: &ForwardProxy, via: &str) -> Result<BoxIo> {
    let tcp = tcp_connect(&p.addr)
        .await
        .map_err(|e| anyhow!("{via}: {e:#}"))?;
    if p.kind != ProxyKind::Https {
        return Ok(Box::new(tcp));
    }
    let cfg = proxy_tls_config().map_err(|e| anyhow!("{via}: {e}"))?;
    let (host, _) = idmux_wire::hostport::split_host_port(&p.addr, p.var)?;
    let name = crate::tls::server_name(&host)?;
    match crate::tls::handshake(via, cfg, name, tcp).await? {
        Ok(tls) => Ok(Box::new(tls)),
        Err(e) => bail!("{via}: {}", proxy_tls_words(&e)),
    }
}

/// Why the TLS handshake with a forward proxy failed, in words (no Teleport hints: no client
/// certificate or ALPN is offered to it).
fn proxy_tls_words(e: &std::io::Error) -> String {
    use rustls::CertificateError::{BadSignature, UnknownIssuer};
    match crate::tls::rustls_error(e) {
        Some(rustls::Error::InvalidCertificate(UnknownIssuer | BadSignature)) => {
            "its certificate is not signed by any of the system's root certificates (the OS \
             store, or SSL_CERT_FILE / SSL_CERT_DIR when set)"
                .into()
        }
        Some(rustls::Error::InvalidCertificate(c)) => format!("its certificate was refused: {c:?}"),
        Some(rustls::Error::InvalidMessage(_)) => {
            "it does not speak TLS on this port (an http:// proxy?)".into()
        }
        Some(other) => format!("TLS handshake failed: {other}"),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "it closed the connection during the TLS handshake".into()
        }
        None => format!("TLS handshake failed: {}", crate::tls::io_words(e)),
    }
}

/// A tunnel to `target` through the forward proxy `p`: HTTP CONNECT (over TLS for an
/// `https://` proxy) or a SOCKS5 CONNECT, its answer within [`CONNECT_ANSWER_TIMEOUT`].
async fn connect_via(p: &ForwardProxy, target: &str) -> Result<BoxIo> {
    let via = p.describe();
    let io = to_proxy(p, &via).await?;
    let tunnel = async {
        if p.kind == ProxyKind::Socks5 {
            return socks5_connect(p, io, target, &via).await;
        }
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| anyhow!("{via}: {e}"))?;
        tokio::spawn(conn.with_upgrades());
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(target)
            .header(http::header::HOST, target);
        if let Some(u) = &p.userinfo {
            // Go's `user:password`, with an empty password when none is given.
            let mut cred = percent_decode(u);
            if !u.contains(':') {
                cred.push(b':');
            }
            let v = base64::engine::general_purpose::STANDARD.encode(cred);
            req = req.header(http::header::PROXY_AUTHORIZATION, format!("Basic {v}"));
        }
        let req = req.body(Empty::<Bytes>::new())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| anyhow!("{via}: CONNECT {target}: {e}"))?;
        if resp.status() != http::StatusCode::OK {
            bail!(
                "{via} refused CONNECT {target}: HTTP {}",
                resp.status().as_u16()
            );
        }
        let up = hyper::upgrade::on(resp)
            .await
            .map_err(|e| anyhow!("{via}: CONNECT {target}: {e}"))?;
        Ok::<BoxIo, anyhow::Error>(Box::new(TokioIo::new(up)))
    };
    match tokio::time::timeout(CONNECT_ANSWER_TIMEOUT, tunnel).await {
        Err(_) => bail!(
            "{via} did not answer CONNECT {target} within {}s",
            CONNECT_ANSWER_TIMEOUT.as_secs()
        ),
        Ok(r) => r,
    }
}

/// SOCKS5's CONNECT to `target` on `io` (RFC 1928): the host as a name for the proxy to
/// resolve (an IP literal as an address), with username/password authentication (RFC 1929)
/// when the URL has a user, as `golang.org/x/net/proxy` does for Teleport.
async fn socks5_connect(p: &ForwardProxy, io: BoxIo, target: &str, via: &str) -> Result<BoxIo> {
    use tokio_socks::tcp::Socks5Stream;
    let (host, port) = idmux_wire::hostport::split_host_port(target, "the dial target")?;
    let to = (host.as_str(), port);
    let r = match &p.userinfo {
        None => Socks5Stream::connect_with_socket(io, to).await,
        Some(u) => {
            let (user, pass) = u.split_once(':').unwrap_or((u, ""));
            let (user, pass) = (percent_decode(user), percent_decode(pass));
            let text = |b: Vec<u8>| {
                String::from_utf8(b)
                    .map_err(|_| anyhow!("{via}: the user name and password must be UTF-8"))
            };
            let (user, pass) = (text(user)?, text(pass)?);
            // RFC 1929 fields are 1-255 bytes; tokio-socks refuses others before sending.
            for (what, v) in [("user name", &user), ("password", &pass)] {
                if v.is_empty() || v.len() > 255 {
                    bail!("{via}: its {what} must be 1 to 255 bytes for SOCKS5 (RFC 1929)");
                }
            }
            Socks5Stream::connect_with_password_and_socket(io, to, &user, &pass).await
        }
    };
    r.map(|s| Box::new(s) as BoxIo)
        .map_err(|e| anyhow!("{via}{}", socks5_words(&e, target)))
}

/// A SOCKS5 failure, worded after the proxy's name: what it refused, or what went wrong.
fn socks5_words(e: &tokio_socks::Error, target: &str) -> String {
    use tokio_socks::Error as E;
    match e {
        E::Io(io) => format!(": SOCKS5 CONNECT {target}: {}", crate::tls::io_words(io)),
        E::PasswordAuthFailure(_) => " refused the user name and password".into(),
        E::NoAcceptableAuthMethods => {
            " accepts none of the offered authentications (a user name and password in the URL?)"
                .into()
        }
        E::GeneralSocksServerFailure
        | E::ConnectionNotAllowedByRuleset
        | E::NetworkUnreachable
        | E::HostUnreachable
        | E::ConnectionRefused
        | E::TtlExpired
        | E::CommandNotSupported
        | E::AddressTypeNotSupported => format!(" refused CONNECT {target}: {e}"),
        other => format!(": SOCKS5 CONNECT {target}: {other}"),
    }
}

/// `%XX` escapes of a URL's userinfo decoded (Go's `url.UserPassword` holds them decoded).
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 3 <= b.len() {
            let (h, l) = (b[i + 1], b[i + 2]);
            if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() {
                let v = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                out.push(v(h) << 4 | v(l));
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn userinfo_is_percent_decoded() {
        assert_eq!(percent_decode("u%40x:p%3Aw"), b"u@x:p:w");
        assert_eq!(percent_decode("plain:pw%"), b"plain:pw%");
        assert_eq!(percent_decode("a%+5b"), b"a%+5b", "two hex digits, no sign");
        assert_eq!(percent_decode("end%41"), b"endA");
        assert_eq!(
            percent_decode("u:%aé"),
            "u:%aé".as_bytes(),
            "no panic inside a character"
        );
    }

    /// A CONNECT goes to the proxy with the target as its URI and Host, and a refusal names
    /// the proxy, the variable and the status.
    #[tokio::test]
    async fn connect_request_and_refusal() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8(got).unwrap()
        });
        let p = ForwardProxy {
            addr: addr.clone(),
            userinfo: Some("u:p".into()),
            var: "HTTPS_PROXY",
            kind: ProxyKind::Http,
        };
        let e = match connect_via(&p, "proxy.example.com:443").await {
            Ok(_) => panic!("a 403 must be refused"),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            e,
            format!("HTTP proxy {addr} (from HTTPS_PROXY) refused CONNECT proxy.example.com:443: HTTP 403")
        );
        let req = server.await.unwrap();
        assert!(
            req.starts_with("CONNECT proxy.example.com:443 HTTP/1.1\r\n"),
            "{req}"
        );
        let lower = req.to_ascii_lowercase();
        assert!(lower.contains("host: proxy.example.com:443\r\n"), "{req}");
        assert!(
            lower.contains("proxy-authorization: basic dtpw\r\n"),
            "{req}"
        );
    }
}
