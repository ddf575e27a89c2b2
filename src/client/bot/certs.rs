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
    if ssh.trim().contains(['\n', '\r']) {
        anyhow::bail!("the SSH certificate from auth: more than one line");
    }
    let ssh_cert = Certificate::from_openssh(ssh.trim())
        .map_err(|e| anyhow!("the SSH certificate from auth: {e}"))?;
    // What is kept must read back: the identity file and the data dir hold each certificate
    // as one PEM block, so an answer whose text is anything else is refused here rather than
    // written out to fail every later read (found by the fuzz targets grpc_certs and web_json).
    one_cert_block(tls).map_err(|e| anyhow!("the TLS certificate from auth: {e}"))?;
    for (i, c) in tls_cas.iter().enumerate() {
        one_cert_block(c).map_err(|e| anyhow!("TLS CA certificate {} from auth: {e}", i + 1))?;
    }
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

/// `text` is exactly one PEM `CERTIFICATE` block, as the identity file reads it back
/// ([`idmux_identity::x509::parse_one_cert_pem`]).
fn one_cert_block(text: &str) -> Result<()> {
    idmux_identity::x509::parse_one_cert_pem(text).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer whose CA text is not one certificate block is refused, not kept to fail
    /// every later read of the identity (the fuzz targets' inputs are in
    /// fuzz/regressions/{grpc_certs,web_json}/).
    /// The fixed key of the fuzz seeds (`idmux_testkit::fuzzing::FUZZ_KEY_PEM`).
    const FUZZ_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEICPatuyhooEw1NTJh/oeQOkznOiar2vbMiN3/Mn92U8T
-----END PRIVATE KEY-----
";

    /// An answer whose certificate text is not one certificate block is refused, not kept to
    /// fail every later read of the identity file and data dir. The input is the one the
    /// fuzz target `grpc_certs` found: a `Certs` answer with a TLS CA entry that is no PEM.
    #[test]
    fn certificates_that_would_not_read_back_are_refused() {
        use prost::Message;
        assert!(one_cert_block("-----BEGIN CERTIFICATE-----\nMIIB\n").is_err());
        assert!(one_cert_block("garbage").is_err());
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fuzz/regressions/grpc_certs/tls-ca-not-pem"
        );
        let data = std::fs::read(path).unwrap();
        let certs = idmux_wire::proto::Certs::decode(&data[1..]).unwrap();
        let (ssh, tls, tls_cas, ssh_cas) = certs_text(&certs);
        let key = KeyPair::from_pem(FUZZ_KEY_PEM).unwrap();
        let e = identity_from_certs(key, &ssh, &tls, tls_cas, &ssh_cas)
            .expect_err("an answer whose TLS CA does not read back")
            .to_string();
        assert!(e.starts_with("TLS CA certificate"), "{e}");
        let e = format!(
            "{:#}",
            replay("grpc_certs", "tls-ca-text-after-end").expect_err("a CR after BEGIN")
        );
        assert!(
            e.starts_with("TLS CA certificate 2 from auth: not one PEM"),
            "{e}"
        );
    }

    /// Replay one kept fuzz input of `target` through [`identity_from_certs`] with the seeds'
    /// key: `Certs` (grpc_certs) or the credentials JSON (web_json).
    fn replay(target: &str, name: &str) -> anyhow::Result<Identity> {
        use prost::Message;
        let path = format!(
            "{}/../../fuzz/regressions/{target}/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let data = std::fs::read(path).unwrap();
        let (ssh, tls, tls_cas, ssh_cas) = if target == "grpc_certs" {
            certs_text(&idmux_wire::proto::Certs::decode(&data[1..]).unwrap())
        } else {
            serde_json::from_slice::<idmux_wire::web::CertsJson>(&data[1..])
                .unwrap()
                .decode()
                .unwrap()
        };
        identity_from_certs(
            KeyPair::from_pem(FUZZ_KEY_PEM).unwrap(),
            &ssh,
            &tls,
            tls_cas,
            &ssh_cas,
        )
    }

    /// A TLS certificate naming a cluster that cannot stand in a known_hosts pattern is
    /// refused: a control character wrote an `@cert-authority` line that did not read back,
    /// `seed*test` one trusting the CA for more hosts than the cluster's (inputs the fuzz
    /// targets found).
    #[test]
    fn cluster_names_that_break_host_patterns_are_refused() {
        for (target, name, bad) in [
            ("grpc_certs", "host-ca-line-not-read-back", '\u{8}'),
            ("web_json", "credentials-empty-cluster", '*'),
        ] {
            let e = format!("{:#}", replay(target, name).expect_err(name));
            assert!(
                e.starts_with("the SSH CA keys from auth: cluster name")
                    && e.contains(&format!("has {bad:?}")),
                "{name}: {e}"
            );
        }
        use idmux_identity::files::check_cluster_name;
        assert!(check_cluster_name("example.teleport.sh").is_ok());
        for bad in ["", "*", "a,b", "!a", "a b", "a?", "a\nb"] {
            assert!(check_cluster_name(bad).is_err(), "{bad:?}");
        }
    }
}
