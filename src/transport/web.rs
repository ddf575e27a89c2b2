//! The proxy's web API from the client side: `GET /webapi/ping` and `/webapi/find`, `POST /webapi/host/credentials`
//! and `GET /webapi/auth/export`, over HTTPS verified against a CA file or the system roots.
//!
//! The join happens before the bot has any certificate, so this connection has no client cert.
//! `--insecure` skips verification and says so loudly; there is no silent insecure mode.

use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// How long a request may wait for the proxy's whole answer once TLS is up: with the TCP and
/// TLS deadlines, a proxy that stops answering at any stage fails a command within 15 s.
pub(crate) const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How the proxy's web certificate is checked.
#[derive(Clone, Debug)]
pub enum Trust {
    /// PEM CA certificates from a file (`--ca-path`).
    CaFile(std::path::PathBuf),
    /// The system's root store.
    System,
    /// The system's root store and these PEM CA certificates: the proxy Auth named, when Auth
    /// was addressed directly (its web certificate is publicly trusted, or the cluster's).
    SystemAnd(Vec<String>),
    /// No verification (`--insecure`).
    Insecure,
}

/// The answer to `/webapi/ping` and when it came.
pub struct Ping {
    pub json: serde_json::Value,
    /// The proxy's `Date` header (one-second resolution), if it sent one.
    pub date: Option<std::time::SystemTime>,
    pub sent: std::time::SystemTime,
    pub received: std::time::SystemTime,
}

/// A client for one proxy's web API.
#[derive(Clone)]
pub struct WebClient {
    proxy: String,
    host: String,
    trust: Trust,
    /// Built on first use with the system roots (a ProxyCommand that never needs them does
    /// not read them), at once with `--ca-path` or `--insecure` so their errors come first.
    tls: Arc<std::sync::OnceLock<Arc<rustls::ClientConfig>>>,
}

/// Accepts any certificate (`--insecure`); the handshake's signatures are still checked with
/// the provider's algorithms (and [`crate::join_verify`] reuses those checks).
#[derive(Debug)]
pub(crate) struct NoVerify(pub(crate) Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One line for a failed TLS handshake with the web port: a peer that is not TLS at all (an
/// SSH or plain HTTP port) is named as such; only a certificate problem points at `--ca-path`.
fn web_tls_error(proxy: &str, e: &std::io::Error) -> String {
    match crate::tls::rustls_error(e) {
        Some(rustls::Error::InvalidMessage(_)) => crate::tls::not_tls(proxy),
        Some(rustls::Error::InvalidCertificate(_)) => {
            format!("proxy {proxy}: TLS failed: {e} (is --ca-path the proxy's CA?)")
        }
        _ => crate::tls::describe_tls_error(proxy, &[], e),
    }
}

impl WebClient {
    pub fn new(proxy: &str, trust: &Trust) -> Result<WebClient> {
        let (host, _) = idmux_wire::hostport::split_host_port(proxy, "--proxy-server")?;
        let web = WebClient {
            proxy: proxy.to_string(),
            host,
            trust: trust.clone(),
            tls: Default::default(),
        };
        if !matches!(trust, Trust::System) {
            web.config()?;
        }
        Ok(web)
    }

    /// The TLS configuration for the web port (ALPN `http/1.1`).
    fn config(&self) -> Result<Arc<rustls::ClientConfig>> {
        if let Some(c) = self.tls.get() {
            return Ok(c.clone());
        }
        let c = Arc::new(Self::build(&self.proxy, &self.trust)?);
        Ok(self.tls.get_or_init(|| c).clone())
    }

    fn build(proxy: &str, trust: &Trust) -> Result<rustls::ClientConfig> {
        let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow!("TLS protocol versions: {e}"))?;
        let mut cfg = match trust {
            Trust::Insecure => {
                tracing::warn!("--insecure: the proxy's certificate is NOT verified; anyone on the path can impersonate {proxy}");
                eprintln!("idmux: WARNING: --insecure: the proxy's TLS certificate is not verified; do not use this outside development");
                let provider = crate::tls::provider();
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
                    .with_no_client_auth()
            }
            Trust::CaFile(path) => {
                use rustls_pki_types::pem::PemObject;
                let pem = std::fs::read(path)
                    .with_context(|| format!("--ca-path {}: cannot read", path.display()))?;
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(&pem) {
                    let c = c.map_err(|e| anyhow!("--ca-path {}: bad PEM: {e}", path.display()))?;
                    roots.add(c).map_err(|e| {
                        anyhow!("--ca-path {}: bad CA certificate: {e}", path.display())
                    })?;
                }
                if roots.is_empty() {
                    bail!(
                        "--ca-path {}: no CA certificate in the file",
                        path.display()
                    );
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            Trust::System | Trust::SystemAnd(_) => {
                use rustls_pki_types::pem::PemObject;
                let (mut roots, trouble) = crate::tls::system_roots();
                if let Trust::SystemAnd(pems) = trust {
                    for pem in pems {
                        for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                            let c = c.map_err(|e| anyhow!("the cluster's CA: bad PEM: {e}"))?;
                            roots.add(c).map_err(|e| anyhow!("the cluster's CA: {e}"))?;
                        }
                    }
                }
                if roots.is_empty() {
                    bail!(
                        "{}; pass --ca-path with the proxy's CA",
                        crate::tls::no_system_roots(trouble)
                    );
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
        };
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(cfg)
    }

    /// A TLS connection to the proxy with this client's trust (`--ca-path`, the system roots,
    /// or `--insecure`) and other ALPNs: the join service's `teleport-proxy-grpc`, `h2`.
    pub async fn dial_alpn(&self, alpn: &[&[u8]]) -> Result<crate::route::ProxyTls> {
        let mut cfg = (*self.config()?).clone();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let (tcp, _) = crate::dial::connect(&self.proxy).await?;
        let name = ServerName::try_from(self.host.clone())
            .map_err(|_| anyhow!("--proxy-server {}: bad host name", self.proxy))?;
        let what = format!("proxy {}", self.proxy);
        crate::tls::handshake(&what, Arc::new(cfg), name, tcp)
            .await?
            .map_err(|e| anyhow!("{}", crate::tls::describe_tls_error(&self.proxy, alpn, &e)))
    }

    /// The proxy's address as given.
    pub fn proxy(&self) -> &str {
        &self.proxy
    }

    /// The proxy's host (the TLS name and the HTTP `Host`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// How the proxy's web certificate is checked.
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, http::HeaderMap, Bytes)> {
        let (tcp, _) = crate::dial::connect(&self.proxy).await?;
        let name = ServerName::try_from(self.host.clone())
            .map_err(|_| anyhow!("--proxy-server {}: bad host name", self.proxy))?;
        let what = format!("proxy {}", self.proxy);
        let tls = crate::tls::handshake(&what, self.config()?, name, tcp)
            .await?
            .map_err(|e| anyhow!("{}", web_tls_error(&self.proxy, &e)))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host);
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        // The answer, whole, within the deadline: a proxy that accepts and then stalls must
        // not hold the bot.
        let answer = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| anyhow!("proxy {}: {path}: {e}", self.proxy))?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let bytes = resp.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>((status, headers, bytes))
        };
        tokio::time::timeout(ANSWER_TIMEOUT, answer)
            .await
            .map_err(|_| {
                anyhow!(
                    "proxy {}: {path}: no answer within {}s",
                    self.proxy,
                    ANSWER_TIMEOUT.as_secs()
                )
            })?
    }

    fn check(&self, path: &str, status: u16, body: &Bytes) -> Result<()> {
        check_answer(&self.proxy, path, status, body)
    }

    /// The JSON body of an answer from `path`.
    fn parse<R: serde::de::DeserializeOwned>(&self, path: &str, body: &Bytes) -> Result<R> {
        parse_answer(&self.proxy, path, body)
    }

    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value> {
        let (status, _, body) = self.request(Method::GET, path, None).await?;
        self.check(path, status, &body)?;
        self.parse(path, &body)
    }

    /// `GET /webapi/ping` with the proxy's clock: its HTTP `Date` header and the local times
    /// just before the request and just after the answer.
    pub async fn ping(&self) -> Result<Ping> {
        let sent = std::time::SystemTime::now();
        let (status, headers, body) = self.request(Method::GET, "/webapi/ping", None).await?;
        let received = std::time::SystemTime::now();
        self.check("/webapi/ping", status, &body)?;
        let date = headers
            .get(http::header::DATE)
            .and_then(|v| answer_date(v.as_bytes()));
        let json = self.parse("/webapi/ping", &body)?;
        Ok(Ping {
            json,
            date,
            sent,
            received,
        })
    }

    pub async fn get_text(&self, path: &str) -> Result<String> {
        let (status, _, body) = self.request(Method::GET, path, None).await?;
        self.check(path, status, &body)?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    pub async fn post_json<T: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<R> {
        let (status, _, bytes) = self
            .request(Method::POST, path, Some(serde_json::to_vec(body)?))
            .await?;
        self.check(path, status, &bytes)?;
        self.parse(path, &bytes)
    }
}

/// Whether an answer from `proxy` to `path` is a success (HTTP 200); otherwise the proxy's
/// refusal in one line: Teleport's `{"error": {"message": ...}}`, else the body as text (any
/// line breaks a hostile or broken proxy puts in it are folded, so a log line stays one line).
/// Pure: the client and the fuzz target `web_json` call it.
pub fn check_answer(proxy: &str, path: &str, status: u16, body: &[u8]) -> Result<()> {
    if status == 200 {
        return Ok(());
    }
    let msg = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let msg = msg.split_whitespace().collect::<Vec<_>>().join(" ");
    Err(crate::refusal::Refused {
        with: crate::refusal::RefusedWith::Http(status),
        line: format!("proxy {proxy} refused {path} (HTTP {status}): {msg}"),
    }
    .into())
}

/// The JSON body of an answer from `proxy` to `path` (pure).
pub fn parse_answer<R: serde::de::DeserializeOwned>(
    proxy: &str,
    path: &str,
    body: &[u8],
) -> Result<R> {
    serde_json::from_slice(body).map_err(|e| anyhow!("proxy {proxy}: {path}: bad JSON: {e}"))
}

/// The time in an answer's HTTP `Date` header, if it is one (pure).
pub fn answer_date(value: &[u8]) -> Option<std::time::SystemTime> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| httpdate::parse_http_date(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusal whose body spans lines (an HTML error page, or a hostile proxy forging log
    /// lines) is reported on one line.
    #[test]
    fn a_refusal_is_one_line() {
        let e = check_answer(
            "p:443",
            "/webapi/find",
            502,
            b"<html>\n<b>Bad</b>\r\ngateway\n\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "proxy p:443 refused /webapi/find (HTTP 502): <html> <b>Bad</b> gateway"
        );
        let e = check_answer(
            "p:443",
            "/webapi/host/credentials",
            400,
            br#"{"error":{"message":"token expired\nINFO forged"}}"#,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "proxy p:443 refused /webapi/host/credentials (HTTP 400): token expired INFO forged"
        );
        assert!(check_answer("p:443", "/x", 200, b"anything").is_ok());
    }

    #[test]
    fn answers_parse_or_say_why() {
        let v: serde_json::Value = parse_answer("p:443", "/webapi/ping", b"{}").unwrap();
        assert!(v.is_object());
        let e = parse_answer::<serde_json::Value>("p:443", "/webapi/ping", b"{")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("proxy p:443: /webapi/ping: bad JSON"), "{e}");
        assert!(answer_date(b"Wed, 02 Dec 2026 13:00:00 GMT").is_some());
        assert!(answer_date(b"\xff").is_none());
    }
}
