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
    // The process-wide provider if one was installed, else aws-lc-rs (rustls' default); never
    // the panicking `builder()` path when the choice is ambiguous.
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| anyhow!("the identity's TLS certificate and key: {e}"))?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
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
