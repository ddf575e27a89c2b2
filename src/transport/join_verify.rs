//! The check of the proxy's certificate on a join inside a connection upgrade, as tbot makes
//! it (lib/client/proxy/insecure `verifyALPNUpgradedConn`): before joining the bot has no
//! cluster CA to check the proxy's Teleport host certificate with, so it accepts a chain in
//! which some certificate names `teleport.cluster.local` and none has expired. The load
//! balancer's own certificate, outside, has already been checked with `--ca-path` or the system
//! roots. The handshake's signature is still verified.
//!
//! Must not know: anything but this one check.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Result};
use der::Decode;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;

use crate::web::NoVerify;

/// The DNS name a Teleport host certificate carries (`constants.APIDomain`).
pub const TELEPORT_CLUSTER_LOCAL: &str = "teleport.cluster.local";

/// The check; the handshake's signatures are checked as `--insecure`'s verifier checks them.
#[derive(Debug)]
struct UpgradedJoin(NoVerify);

/// Does `der` name `teleport.cluster.local` and is it valid at `now`?
fn names_cluster_local(der: &[u8], now: SystemTime) -> Result<bool, String> {
    let cert =
        x509_cert::Certificate::from_der(der).map_err(|e| format!("bad certificate: {e}"))?;
    let v = &cert.tbs_certificate.validity;
    let not_after = UNIX_EPOCH + Duration::from_secs(v.not_after.to_unix_duration().as_secs());
    let not_before = UNIX_EPOCH + Duration::from_secs(v.not_before.to_unix_duration().as_secs());
    if now > not_after {
        return Err("the proxy's certificate has expired".into());
    }
    if now < not_before {
        return Err("the proxy's certificate is not valid yet".into());
    }
    let Ok(Some((_, san))) = cert.tbs_certificate.get::<SubjectAltName>() else {
        return Ok(false);
    };
    Ok(san
        .0
        .iter()
        .any(|n| matches!(n, GeneralName::DnsName(d) if d.as_str() == TELEPORT_CLUSTER_LOCAL)))
}

impl ServerCertVerifier for UpgradedJoin {
    fn verify_server_cert(
        &self,
        end: &CertificateDer<'_>,
        rest: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let now = UNIX_EPOCH + Duration::from_secs(now.as_secs());
        let mut found = false;
        for c in std::iter::once(end).chain(rest) {
            match names_cluster_local(c, now) {
                Ok(true) => found = true,
                Ok(false) => {}
                Err(e) => return Err(rustls::Error::General(e)),
            }
        }
        if found {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the proxy's certificate does not name {TELEPORT_CLUSTER_LOCAL}"
            )))
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The client configuration for the join service inside an upgrade (no client certificate).
pub(crate) fn upgraded_join_config(alpn: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>> {
    let provider = crate::tls::provider();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("TLS protocol versions: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(UpgradedJoin(NoVerify(provider))))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    /// A CA certificate names no `teleport.cluster.local` (the dev cluster's host CA); an
    /// expired certificate is refused whatever it names. (The positive case, the proxy's host
    /// certificate inside an upgrade, is the join behind nginx in tests/e2e/deployments.rs.)
    #[test]
    fn the_check_is_tbots() {
        let dir = tempfile::tempdir().unwrap();
        let cas = idmux_devcluster::ca::ClusterCas::create(dir.path(), "c").unwrap();
        let now = SystemTime::now();
        let ca = der(&cas.serving_host_keys().tls_cert_pem);
        assert_eq!(names_cluster_local(&ca, now), Ok(false));
        let later = now + Duration::from_secs(100 * 365 * 86400);
        assert_eq!(
            names_cluster_local(&ca, later),
            Err("the proxy's certificate has expired".into())
        );
    }
}
