//! TLS to the proxy: the client configuration (the cluster CA as the only root, the identity's
//! certificate as the client certificate, ALPN) and the dial, whose errors are one line that
//! names the proxy and says what went wrong in words.
//!
//! Roots are only the identity's `tls_cas` (the cluster's host CA, which the proxy's
//! certificate chains to): no system roots and no insecure mode. SNI is the proxy host (an IP
//! literal is checked against the certificate's IP SANs and sends no SNI).

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use idmux_identity::Identity;

/// ALPN of the proxy's SSH server (PROTOCOL.md section 4).
pub(crate) const ALPN_PROXY_SSH: &[u8] = b"teleport-proxy-ssh";

/// The proxy does not serve the ALPN protocol asked for (it answered `no_application_protocol`
/// or chose none): what `--transport auto` falls back on.
#[derive(Debug, thiserror::Error)]
#[error("proxy {proxy} does not offer ALPN {alpn}{}", if hint.is_empty() { String::new() } else { format!(" ({hint})") })]
pub(crate) struct AlpnNotOffered {
    pub proxy: String,
    pub alpn: String,
    /// What to do about it, for the user.
    pub hint: &'static str,
}

/// How long the TCP connect may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the TLS handshake may take once TCP is up.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The rustls client configuration for talking to the proxy as `id`.
pub(crate) fn client_config(id: &Identity, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for (i, pem) in id.tls_cas.iter().enumerate() {
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| anyhow!("TLS CA certificate {} of the identity: {e}", i + 1))?;
        roots
            .add(der)
            .map_err(|e| anyhow!("TLS CA certificate {} of the identity: {e}", i + 1))?;
    }
    if roots.is_empty() {
        bail!("the identity holds no TLS CA certificate to check the proxy with");
    }
    let chain = vec![CertificateDer::from_pem_slice(id.tls_cert_pem.as_bytes())
        .map_err(|e| anyhow!("the identity's TLS certificate: {e}"))?];
    let key = id
        .key
        .to_rustls()
        .context("the identity's private key for TLS")?;
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| anyhow!("the identity's TLS certificate and key: {e}"))?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// The TLS provider every client of ours uses: the process-wide one if one was installed,
/// else aws-lc-rs (rustls' default; never the panicking `builder()` path when the choice is
/// ambiguous), its TLS 1.3 suites offered in tbot's order. tbot is a Go client, and Go's
/// client lists AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305 on a machine with AES-GCM
/// hardware and ChaCha20-Poly1305 first otherwise (crypto/tls `handshake_client.go`,
/// `defaultCipherSuitesTLS13`, `defaultCipherSuitesTLS13NoAES`). rustls lists AES-256-GCM
/// first: a server that follows the client's order then ran the costlier cipher. (Teleport's
/// own servers choose by their own order, which puts AES-128-GCM first.)
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::CipherSuite as C;
    let mut p = rustls::crypto::CryptoProvider::get_default()
        .map(|p| (**p).clone())
        .unwrap_or_else(rustls::crypto::aws_lc_rs::default_provider);
    let order: [C; 3] = if aes_gcm_hardware() {
        [
            C::TLS13_AES_128_GCM_SHA256,
            C::TLS13_AES_256_GCM_SHA384,
            C::TLS13_CHACHA20_POLY1305_SHA256,
        ]
    } else {
        [
            C::TLS13_CHACHA20_POLY1305_SHA256,
            C::TLS13_AES_128_GCM_SHA256,
            C::TLS13_AES_256_GCM_SHA384,
        ]
    };
    // Stable: TLS 1.2 suites keep their order, after these.
    p.cipher_suites
        .sort_by_key(|s| order.iter().position(|o| *o == s.suite()).unwrap_or(3));
    Arc::new(p)
}

/// Go's `hasAESGCMHardwareSupport` (crypto/tls `cipher_suites.go`) on this machine: it
/// picks a Go client's suite order ([`provider`]) and a Go server's preference list (the dev
/// cluster's `tls_suites`).
pub fn aes_gcm_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
            && std::arch::is_x86_feature_detected!("sse4.1")
            && std::arch::is_x86_feature_detected!("ssse3")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// The system's root certificates (`rustls-native-certs`: the OS store, or `SSL_CERT_FILE` /
/// `SSL_CERT_DIR` when set, as Go's `crypto/x509` reads them on Linux), and the first problem
/// loading them (a missing or unreadable file, named), if any. Certificates that do not parse
/// are skipped, as Go skips them.
pub(crate) fn system_roots() -> (RootCertStore, Option<String>) {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    for c in found.certs {
        let _ = roots.add(c);
    }
    (roots, found.errors.first().map(|e| e.to_string()))
}

/// Why no roots came out of [`system_roots`], in words: "no system root certificates found",
/// with the problem loading them when there was one.
pub(crate) fn no_system_roots(trouble: Option<String>) -> String {
    match trouble {
        Some(why) => format!("no system root certificates found ({why})"),
        None => "no system root certificates found".into(),
    }
}

/// The TLS server name for a host: an IP address when the host is an IP literal.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ServerName::from(ip));
    }
    ServerName::try_from(host.to_string())
        .map_err(|_| anyhow!("proxy host {host:?} is neither a DNS name nor an IP address"))
}

/// The one TCP connect to a proxy: [`CONNECT_TIMEOUT`], TCP_NODELAY, errors naming `proxy`.
/// Every connection idmux makes to a proxy (node transports, Auth, the web API) starts here.
pub(crate) async fn tcp_connect(proxy: &str) -> Result<TcpStream> {
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(proxy)).await {
        Err(_) => bail!(
            "cannot reach proxy {proxy}: no answer within {}s",
            CONNECT_TIMEOUT.as_secs()
        ),
        Ok(Err(e)) => bail!("cannot reach proxy {proxy}: {}", io_words(&e)),
        Ok(Ok(s)) => s,
    };
    tcp.set_nodelay(true)
        .map_err(|e| anyhow!("proxy {proxy}: cannot set TCP_NODELAY: {}", io_words(&e)))?;
    Ok(tcp)
}

/// The one TLS handshake over a [`tcp_connect`]ed stream, within [`HANDSHAKE_TIMEOUT`].
/// `Ok(Err(e))` is the handshake's own error, for the caller to word; a timeout is an error
/// naming `what` (e.g. `proxy HOST:PORT`).
pub(crate) async fn handshake<S: crate::dial::Io>(
    what: &str,
    cfg: Arc<ClientConfig>,
    name: ServerName<'static>,
    tcp: S,
) -> Result<io::Result<TlsStream<crate::dial::BoxIo>>> {
    let tcp: crate::dial::BoxIo = Box::new(tcp);
    match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        TlsConnector::from(cfg).connect(name, tcp),
    )
    .await
    {
        Err(_) => bail!(
            "{what} did not complete the TLS handshake within {}s",
            HANDSHAKE_TIMEOUT.as_secs()
        ),
        Ok(r) => Ok(r),
    }
}

pub(crate) fn not_offered(proxy: &str, alpn: &[&[u8]]) -> anyhow::Error {
    AlpnNotOffered {
        proxy: proxy.to_string(),
        alpn: alpn_text(alpn),
        hint: "",
    }
    .into()
}

/// The rustls error inside an I/O error from tokio-rustls, if there is one.
pub(crate) fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// One line saying why a TLS exchange with `proxy` failed. Also right for errors that surface
/// after the handshake: under TLS 1.3 the proxy's verdict on the client certificate arrives
/// with the first read.
pub fn describe_tls_error(proxy: &str, alpn: &[&[u8]], e: &io::Error) -> String {
    let Some(err) = rustls_error(e) else {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                format!("proxy {proxy} closed the connection during the TLS handshake")
            }
            _ => format!("TLS handshake with proxy {proxy} failed: {}", io_words(e)),
        };
    };
    match err {
        rustls::Error::InvalidCertificate(ce) => {
            format!(
                "proxy {proxy} presented a certificate that {} ({err})",
                cert_problem(ce)
            )
        }
        rustls::Error::NoApplicationProtocol => {
            format!("proxy {proxy} does not offer ALPN {}", alpn_text(alpn))
        }
        rustls::Error::AlertReceived(AlertDescription::NoApplicationProtocol) => {
            format!("proxy {proxy} does not offer ALPN {}", alpn_text(alpn))
        }
        rustls::Error::AlertReceived(a) => {
            match alert_words(*a) {
                Some(words) => {
                    format!("proxy {proxy} refused this identity's certificate: {words} (TLS alert {a:?})")
                }
                None => format!(
                    "TLS handshake with proxy {proxy} failed: the proxy sent TLS alert {a:?}"
                ),
            }
        }
        rustls::Error::InvalidMessage(_) => not_tls(proxy),
        other => format!("TLS handshake with proxy {proxy} failed: {other}"),
    }
}

/// A peer that answered a TLS ClientHello with something that is not TLS.
pub(crate) fn not_tls(proxy: &str) -> String {
    format!(
        "proxy {proxy} does not speak TLS on this port (is it the proxy's HTTPS port, not its \
         SSH or plain HTTP port?)"
    )
}

/// What is wrong with a server certificate, in words that finish "a certificate that ...".
fn cert_problem(e: &CertificateError) -> &'static str {
    match e {
        CertificateError::UnknownIssuer | CertificateError::BadSignature => {
            "is not signed by cluster CA"
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => "has expired",
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "is not valid yet"
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "is not valid for the proxy's name"
        }
        CertificateError::Revoked => "is revoked",
        _ => "was refused",
    }
}

/// A server's TLS alert about our client certificate, in words; `None` for alerts that are not
/// about the certificate.
pub(crate) fn alert_words(a: AlertDescription) -> Option<&'static str> {
    Some(match a {
        AlertDescription::BadCertificate => "bad certificate",
        AlertDescription::UnsupportedCertificate => "unsupported certificate",
        AlertDescription::CertificateRevoked => "certificate revoked",
        AlertDescription::CertificateExpired => "certificate expired",
        AlertDescription::CertificateUnknown => "certificate not accepted",
        AlertDescription::UnknownCA => "certificate not issued by a CA the proxy trusts",
        AlertDescription::AccessDenied => "access denied",
        AlertDescription::CertificateRequired | AlertDescription::NoCertificate => {
            "the proxy wants a client certificate"
        }
        _ => return None,
    })
}

/// ALPN protocol names for messages: `a` or `a, b`.
fn alpn_text(alpn: &[&[u8]]) -> String {
    alpn.iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

/// An I/O error in words, without the `(os error N)` suffix: `connection refused`.
pub(crate) fn io_words(e: &io::Error) -> String {
    let s = e.to_string();
    let s = match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s,
    };
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_roots_are_worded_with_the_loading_problem() {
        assert_eq!(no_system_roots(None), "no system root certificates found");
        assert_eq!(
            no_system_roots(Some("/etc/x.pem: No such file or directory".into())),
            "no system root certificates found (/etc/x.pem: No such file or directory)"
        );
    }

    fn io_rustls(e: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    const P: &str = "127.0.0.1:3080";
    const ALPN: &[&[u8]] = &[ALPN_PROXY_SSH];

    #[test]
    fn alerts_about_the_client_certificate_are_worded() {
        assert_eq!(
            alert_words(AlertDescription::CertificateExpired),
            Some("certificate expired")
        );
        assert_eq!(
            alert_words(AlertDescription::BadCertificate),
            Some("bad certificate")
        );
        assert!(alert_words(AlertDescription::UnknownCA)
            .unwrap()
            .contains("CA"));
        assert_eq!(alert_words(AlertDescription::HandshakeFailure), None);
        assert_eq!(alert_words(AlertDescription::InternalError), None);
    }

    #[test]
    fn tls_errors_name_the_proxy() {
        let e = io_rustls(rustls::Error::AlertReceived(
            AlertDescription::CertificateExpired,
        ));
        assert_eq!(
            describe_tls_error(P, ALPN, &e),
            "proxy 127.0.0.1:3080 refused this identity's certificate: certificate expired \
             (TLS alert CertificateExpired)"
        );
        let e = io_rustls(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
        assert_eq!(
            describe_tls_error(P, ALPN, &e),
            "proxy 127.0.0.1:3080 presented a certificate that is not signed by cluster CA \
             (invalid peer certificate: UnknownIssuer)"
        );
        let e = io_rustls(rustls::Error::AlertReceived(
            AlertDescription::NoApplicationProtocol,
        ));
        assert_eq!(
            describe_tls_error(P, ALPN, &e),
            "proxy 127.0.0.1:3080 does not offer ALPN teleport-proxy-ssh"
        );
        let e = io_rustls(rustls::Error::AlertReceived(
            AlertDescription::HandshakeFailure,
        ));
        assert!(describe_tls_error(P, ALPN, &e)
            .starts_with("TLS handshake with proxy 127.0.0.1:3080 failed"));
        let e = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(
            describe_tls_error(P, ALPN, &e),
            "proxy 127.0.0.1:3080 closed the connection during the TLS handshake"
        );
    }

    #[test]
    fn io_errors_in_words() {
        let e = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(io_words(&e), "connection refused");
    }

    #[test]
    fn server_names() {
        assert!(matches!(
            server_name("127.0.0.1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("::1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("proxy.example.com").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(server_name("bad name!").is_err());
    }
}

#[cfg(test)]
mod suite_order_tests {
    /// The ClientHello's cipher_suites field, read from the bytes on the wire (RFC 8446
    /// 4.1.2): record header (5), handshake type and length (4), legacy_version (2), random
    /// (32), legacy_session_id (1 + its length), then cipher_suites (2 + 2 per suite).
    fn offered_suites(hello: &[u8]) -> Vec<u16> {
        assert_eq!(hello[0], 0x16, "a handshake record");
        assert_eq!(hello[5], 0x01, "a ClientHello");
        let mut at = 5 + 4 + 2 + 32;
        at += 1 + hello[at] as usize;
        let len = u16::from_be_bytes([hello[at], hello[at + 1]]) as usize;
        hello[at + 2..at + 2 + len]
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect()
    }

    /// Our ClientHello offers the TLS 1.3 suites in tbot's (Go's) order: AES-128-GCM
    /// (0x1301), AES-256-GCM (0x1302), ChaCha20-Poly1305 (0x1303) with AES-GCM hardware.
    /// rustls alone offers 0x1302 first.
    #[test]
    fn the_client_hello_offers_suites_in_tbots_order() {
        let cfg = rustls::ClientConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from("proxy.example.com").unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).unwrap();
        let suites = offered_suites(&hello);
        let tls13: Vec<u16> = suites
            .iter()
            .copied()
            .filter(|s| (0x1301..=0x1303).contains(s))
            .collect();
        let want = if super::aes_gcm_hardware() {
            [0x1301, 0x1302, 0x1303]
        } else {
            [0x1303, 0x1301, 0x1302]
        };
        assert_eq!(tls13, want, "suites offered: {suites:04x?}");
        assert_eq!(&suites[..3], &want, "TLS 1.3 suites first: {suites:04x?}");
    }
}
