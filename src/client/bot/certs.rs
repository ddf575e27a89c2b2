//! What the bot makes of Auth's certificate answers, pure: the text of a `GenerateUserCerts`
//! answer ([`certs_text`]) and the identity assembled from it with the key the bot made
//! ([`identity_from_certs`]); the CA resources' TLS certificates and host CA keys
//! ([`tls_pems`], [`cluster_host_cas`], kept in `outputs` beside their I/O).
//!
//! The bot and the fuzz target `grpc_certs` call these. Must not know: how the answers came
//! (gRPC, the join service, the web API) or where the identity is written.

use anyhow::{anyhow, Result};
use russh::keys::ssh_key::Certificate;

use idmux_identity::{HostCa, Identity, KeyPair};

pub use super::outputs::{cluster_host_cas, tls_pems};

/// Assemble an identity from a key and the certificates Auth returned. `ssh_cas` are the
/// entries of `ssh_cas_certs`: bare CA public keys from Teleport (user CA first, then host
/// CA), taken as the identity's own cluster's.
pub fn identity_from_certs(
    key: KeyPair,
    ssh: &str,
    tls: &str,
    tls_cas: Vec<String>,
    ssh_cas: &[String],
) -> Result<Identity> {
    let ssh_cert = Certificate::from_openssh(ssh.trim())
        .map_err(|e| anyhow!("the SSH certificate from auth: {e}"))?;
    let mut id = Identity {
        key,
        ssh_cert,
        tls_cert_pem: tls.to_string(),
        host_cas: vec![],
        tls_cas,
    };
    let cluster = id
        .cluster_name()
        .map_err(|e| anyhow!("the TLS certificate from auth: {e}"))?;
    id.host_cas = ssh_cas
        .iter()
        .flat_map(|s| s.lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|l| !l.trim().is_empty())
        .map(|l| HostCa::parse_entry(&l, &cluster))
        .collect::<Result<Vec<_>>>()
        .map_err(|e| anyhow!("the SSH CA keys from auth: {e}"))?;
    id.check_consistent()?;
    Ok(id)
}

/// The four parts of a `Certs` answer as text: ssh, tls, tls_ca_certs, ssh_ca_certs (a byte
/// that is not UTF-8 becomes U+FFFD, which the parsers that follow refuse).
pub fn certs_text(c: &idmux_wire::proto::Certs) -> (String, String, Vec<String>, Vec<String>) {
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        s(&c.ssh),
        s(&c.tls),
        c.tls_ca_certs.iter().map(|c| s(c)).collect(),
        c.ssh_ca_certs.iter().map(|c| s(c)).collect(),
    )
}
