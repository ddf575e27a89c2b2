//! Auth addressed directly (`--auth-server` with no proxy), as tbot reaches it
//! (`lib/join` `registerThroughAuth`, `pinRegisterClient`): Auth's own port (Teleport's 3025),
//! TLS with Auth's host certificate (names `teleport.cluster.local`), gRPC over `h2`.
//!
//! Before joining the bot has no cluster CA, so the first connection is trusted one of two
//! ways ([`FirstTrust`]):
//! - **CA pins** (`--ca-pin sha256:<hex>`): connect *without* verification only to call
//!   `GetClusterCACert` (allowed to callers with no certificate), check that EVERY returned CA
//!   certificate's SPKI hash is one of the pins ([`check_pins`], Teleport's `utils.CheckSPKI`)
//!   and unexpired, then trust exactly those CAs for the join.
//! - **A CA file** (`--ca-path`): trust the certificates in it.
//!
//! tbot joins without checking Auth when given neither; idmux has no silent insecure mode: the
//! caller refuses unless `--insecure` was given ([`FirstTrust::Insecure`], which warns).
//!
//! After the join every connection is mutual TLS: the identity's certificate, Auth's checked
//! against the identity's CAs ([`dial_as`]).
//!
//! Must not know: what the bot asks Auth for.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use der::{Decode, Encode};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use sha2::{Digest, Sha256};

use crate::auth_client::{AuthClient, AUTH_SERVER_NAME};
use crate::route::ProxyTls;
use crate::tls;
use idmux_identity::Identity;
use idmux_wire::services::{Empty, GetClusterCaCertResponse, GET_CLUSTER_CA_CERT};

/// Teleport's words when a CA certificate matches no pin (`lib/utils` `CheckSPKI`).
pub const PIN_MISMATCH: &str = "cluster pin does not match any provided certificate authority \
     pin. This could have occurred if the Certificate Authority (CA) for the cluster was \
     rotated, invalidating the old pin. This could also occur if a new HSM was added. Run \
     \"tctl status\" to compare the pin used to join the cluster to the actual pin(s) for the \
     cluster.";

/// The ALPN of Auth's gRPC port.
const H2: &[u8] = b"h2";

/// The pin of a certificate: `sha256:` and the lowercase hex SHA-256 of its DER
/// SubjectPublicKeyInfo (Teleport's `utils.CalculateSPKI`).
pub fn spki_pin(cert_der: &[u8]) -> Result<String> {
    let cert = x509_cert::Certificate::from_der(cert_der)
        .map_err(|e| anyhow!("a CA certificate from Auth: {e}"))?;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| anyhow!("a CA certificate's public key: {e}"))?;
    Ok(format!("sha256:{}", hex::encode(Sha256::digest(spki))))
}

/// Every certificate must match one of `pins` (Teleport's newest `CheckSPKI`: a rotation's
/// second CA must be pinned too). The error is Teleport's text.
pub fn check_pins(pins: &[String], certs: &[CertificateDer<'_>]) -> Result<()> {
    if certs.is_empty() {
        bail!("Auth returned no CA certificate to check the pins against");
    }
    for c in certs {
        let pin = spki_pin(c)?;
        // Compared whole and exactly, as Teleport's (an upper-case pin matches nothing).
        if !pins.contains(&pin) {
            bail!("{PIN_MISMATCH}");
        }
    }
    Ok(())
}

/// Every certificate must be valid at `now` (Teleport's `VerifyCertificateExpiry`).
pub fn check_unexpired(certs: &[CertificateDer<'_>], now: SystemTime) -> Result<()> {
    for c in certs {
        let cert = x509_cert::Certificate::from_der(c)
            .map_err(|e| anyhow!("a CA certificate from Auth: {e}"))?;
        let v = &cert.tbs_certificate.validity;
        let after = UNIX_EPOCH + v.not_after.to_unix_duration();
        let before = UNIX_EPOCH + v.not_before.to_unix_duration();
        if now > after {
            bail!(
                "the cluster's CA certificate expired at {}",
                humantime::format_rfc3339_seconds(after)
            );
        }
        if now < before {
            bail!(
                "the cluster's CA certificate is not valid until {} (is this machine's clock right?)",
                humantime::format_rfc3339_seconds(before)
            );
        }
    }
    Ok(())
}

/// How the first connection to Auth (the join) is trusted.
#[derive(Clone, Debug)]
pub enum FirstTrust {
    /// `--ca-pin`: the CAs Auth names, checked against these pins.
    Pins(Vec<String>),
    /// `--ca-path`: the CAs in this file.
    CaFile(PathBuf),
    /// `--insecure`: nothing checked (with a warning).
    Insecure,
}

/// Auth at one address, and the CAs its certificate is checked against on the join.
#[derive(Clone)]
pub struct AuthDirect {
    addr: String,
    /// `None`: `--insecure`.
    roots: Option<Arc<RootCertStore>>,
}

impl AuthDirect {
    /// Establish trust in Auth at `addr` as `trust` says (with pins this calls Auth once).
    pub async fn establish(addr: &str, trust: &FirstTrust) -> Result<AuthDirect> {
        idmux_wire::hostport::split_host_port(addr, "--auth-server")?;
        let roots = match trust {
            FirstTrust::Pins(pins) => {
                let certs = pinned_cas(addr, pins).await?;
                tracing::info!("joining through Auth {addr} with a CA pin");
                Some(roots_of(certs, "the pinned CA")?)
            }
            FirstTrust::CaFile(p) => {
                use rustls::pki_types::pem::PemObject;
                let pem = std::fs::read(p)
                    .with_context(|| format!("--ca-path {}: cannot read", p.display()))?;
                let certs = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| anyhow!("--ca-path {}: bad PEM: {e}", p.display()))?;
                if certs.is_empty() {
                    bail!("--ca-path {}: no CA certificate in the file", p.display());
                }
                Some(roots_of(certs, &format!("--ca-path {}", p.display()))?)
            }
            FirstTrust::Insecure => {
                tracing::warn!(
                    "--insecure: Auth {addr}'s certificate is NOT verified on the join; anyone \
                     on the path can impersonate it"
                );
                None
            }
        };
        Ok(AuthDirect {
            addr: addr.to_string(),
            roots,
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// A connection for the join: no client certificate, Auth's certificate checked against
    /// the established CAs as `teleport.cluster.local`.
    pub async fn dial_join(&self) -> Result<ProxyTls> {
        dial(&self.addr, anonymous_config(self.roots.clone())?).await
    }
}

/// Mutual TLS to Auth at `addr` as `id`: the identity's certificate, Auth's checked against the
/// identity's CAs as `teleport.cluster.local`.
pub async fn dial_as(addr: &str, id: &Identity) -> Result<ProxyTls> {
    dial(addr, tls::client_config(id, &[H2])?).await
}

/// Connect without verification, ask `GetClusterCACert`, and keep the certificates only if
/// every one matches a pin and none has expired.
async fn pinned_cas(addr: &str, pins: &[String]) -> Result<Vec<CertificateDer<'static>>> {
    let tls = dial(addr, anonymous_config(None)?).await?;
    let mut auth = AuthClient::over(tls, format!("auth server {addr}")).await?;
    let resp: GetClusterCaCertResponse = auth
        .unary(GET_CLUSTER_CA_CERT, "the CA request", Empty {})
        .await?;
    let certs = cluster_ca_certs(addr, &resp.tls_ca)?;
    check_pins(pins, &certs).map_err(|e| anyhow!("--ca-pin: auth server {addr}: {e}"))?;
    check_unexpired(&certs, SystemTime::now()).map_err(|e| anyhow!("auth server {addr}: {e}"))?;
    Ok(certs)
}

/// The certificates of a `GetClusterCACert` answer (`tls_ca`, PEM) from Auth at `addr`
/// (pure: the pin check and the fuzz target `grpc_certs` take them from here).
pub fn cluster_ca_certs(addr: &str, tls_ca: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(tls_ca)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("auth server {addr}: GetClusterCACert: bad PEM: {e}"))
}

fn roots_of(certs: Vec<CertificateDer<'static>>, what: &str) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots
            .add(c)
            .map_err(|e| anyhow!("{what}: bad CA certificate: {e}"))?;
    }
    Ok(Arc::new(roots))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    crate::tls::provider()
}

/// No client certificate; Auth checked against `roots`, or not at all (`None`: only for the
/// pin's first call, whose answer is checked, and `--insecure`).
fn anonymous_config(roots: Option<Arc<RootCertStore>>) -> Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let mut cfg = match roots {
        Some(r) => builder.with_root_certificates(r).with_no_client_auth(),
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::web::NoVerify(provider())))
            .with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![H2.to_vec()];
    Ok(Arc::new(cfg))
}

/// TCP (through an HTTP proxy from the environment, as every dial) then TLS to Auth at `addr`.
async fn dial(addr: &str, cfg: Arc<ClientConfig>) -> Result<ProxyTls> {
    // The dial names its target as a proxy; here it is Auth.
    let (io, _) = crate::dial::connect(addr).await.map_err(|e| {
        anyhow!(
            "{}",
            format!("{e:#}").replacen(&format!("proxy {addr}"), &format!("auth server {addr}"), 1)
        )
    })?;
    let name = ServerName::try_from(AUTH_SERVER_NAME.to_string())
        .map_err(|_| anyhow!("bad TLS name {AUTH_SERVER_NAME}"))?;
    let what = format!("auth server {addr}");
    let tls = tls::handshake(&what, cfg, name, io)
        .await?
        .map_err(|e| anyhow!("{}", tls::describe_tls_error(&what, &[H2], &e)))?;
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use std::time::Duration;

    /// A P-256 CA certificate made with `openssl req -x509 -newkey ec -pkeyopt
    /// ec_paramgen_curve:P-256 -subj /O=dev.idmux/CN=dev.idmux -days 36500`; its pin by
    /// `openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | sha256sum`.
    const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBpzCCAU2gAwIBAgIUE27wZ/S9OPMfkCLFiF1pShlgQjcwCgYIKoZIzj0EAwIw
KDESMBAGA1UECgwJZGV2LmlkbXV4MRIwEAYDVQQDDAlkZXYuaWRtdXgwIBcNMjYx
MjAyMTAxODE4WhgPMjEyNjExMDgxMDE4MThaMCgxEjAQBgNVBAoMCWRldi5pZG11
eDESMBAGA1UEAwwJZGV2LmlkbXV4MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE
LS8Indyzi2Sfo4hYNmDltkGz2rwr7mc/FhuTE6cTymi2TrPKGS/0F2COZp21h5eV
3yyD8G5n+633aYDyBdxZ4KNTMFEwHQYDVR0OBBYEFLIHCcOTgTTLjmgncAuRSToJ
KpWmMB8GA1UdIwQYMBaAFLIHCcOTgTTLjmgncAuRSToJKpWmMA8GA1UdEwEB/wQF
MAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIhAN2DGKQ+2UyQwEPNILezWGw5vPB49k+5
0EeNxOYQ6s0tAiAmRInC/fHZE8b9Y0aQR7SqpdyRBgxAAIb3tclXyRn8ww==
-----END CERTIFICATE-----
";
    const PIN: &str = "sha256:dd246d52bfdbeaaf95e7aa5c37f589c7c738a68bd7449771548c15039c9ec4ca";
    /// Another, made the same way (a rotation's second CA).
    const CERT2: &str = "-----BEGIN CERTIFICATE-----
MIIBqDCCAU2gAwIBAgIUQ1qnA9Nra0ackmAManXlNg0dGuQwCgYIKoZIzj0EAwIw
KDESMBAGA1UECgwJZGV2LmlkbXV4MRIwEAYDVQQDDAlkZXYuaWRtdXgwIBcNMjYx
MjAyMTAxODUzWhgPMjEyNjExMDgxMDE4NTNaMCgxEjAQBgNVBAoMCWRldi5pZG11
eDESMBAGA1UEAwwJZGV2LmlkbXV4MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE
xmEsoxX1WajaasxkxCQEdSBpyd5gKw62fgGsQREe9L77xVHxOC8blIbgDsWXtgY3
GZYIQnJMVpGSrBT72BD4UqNTMFEwHQYDVR0OBBYEFIMoskNjyhXVrtd7y23b0km0
CJJpMB8GA1UdIwQYMBaAFIMoskNjyhXVrtd7y23b0km0CJJpMA8GA1UdEwEB/wQF
MAMBAf8wCgYIKoZIzj0EAwIDSQAwRgIhAIL0QX5w5mbB457AHw3uRejwGd6g5LtN
xRQXBi+z7rx4AiEAt/K/o0vUDMWrWYhylFLy90UkAu+vTarAinyp3uCSXZ4=
-----END CERTIFICATE-----
";
    const PIN2: &str = "sha256:dacb9180a37e72b9b7f9818cbed4cb6fb5e34e49d240448bc35a84cf562bf4f1";

    fn cert() -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(CERT.as_bytes()).unwrap()
    }

    fn cert2() -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(CERT2.as_bytes()).unwrap()
    }

    #[test]
    fn pin_is_sha256_of_the_spki() {
        assert_eq!(spki_pin(&cert()).unwrap(), PIN);
        assert_eq!(spki_pin(&cert2()).unwrap(), PIN2);
    }

    #[test]
    fn every_ca_must_match_a_pin_with_teleports_words() {
        check_pins(&[PIN.into()], &[cert()]).unwrap();
        check_pins(&["sha256:00".into(), PIN.into()], &[cert()]).unwrap();
        let upper = format!("sha256:{}", PIN[7..].to_uppercase());
        assert!(check_pins(&[upper], &[cert()]).is_err());
        let other = format!("sha256:{}", "0".repeat(64));
        let e = check_pins(&[other], &[cert()]).unwrap_err().to_string();
        assert_eq!(e, PIN_MISMATCH);
        assert!(e.starts_with("cluster pin does not match any provided certificate authority pin. This could have occurred if the Certificate Authority (CA) for the cluster was rotated, invalidating the old pin. This could also occur if a new HSM was added. Run \"tctl status\" to compare"));
        // A second CA (a rotation) that is not pinned fails the whole check.
        let e = check_pins(&[PIN.into()], &[cert(), cert2()]).unwrap_err();
        assert_eq!(e.to_string(), PIN_MISMATCH);
        check_pins(&[PIN2.into(), PIN.into()], &[cert(), cert2()]).unwrap();
        assert!(check_pins(&[PIN.into()], &[]).is_err());
    }

    #[test]
    fn expired_and_future_cas_are_refused() {
        let now = SystemTime::now();
        check_unexpired(&[cert()], now).unwrap();
        let far = UNIX_EPOCH + Duration::from_secs(5_000_000_000);
        assert!(check_unexpired(&[cert()], far)
            .unwrap_err()
            .to_string()
            .contains("expired at 2126-11-08"));
        let past = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert!(check_unexpired(&[cert()], past)
            .unwrap_err()
            .to_string()
            .contains("not valid until 2026-12-02"));
    }
}
