//! The TLS 1.3 cipher suite the dev cluster's TLS servers choose: the rule of Go's crypto/tls
//! server, which Teleport's proxy and Auth run. Teleport sets no TLS 1.3 suites (Go offers no
//! setting for them), so Go's rule is what every Teleport cluster applies.
//!
//! Go (crypto/tls `handshake_server_tls13.go`, `processClientHello`): the server walks its own
//! preference list and takes the first suite the client offers. The list is
//! `defaultCipherSuitesTLS13` (AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305; `defaults.go`),
//! or `defaultCipherSuitesTLS13NoAES` (ChaCha20-Poly1305, AES-128-GCM, AES-256-GCM) when the
//! machine has no AES-GCM hardware or the client's first suite Go knows is not AES-GCM
//! (`aesgcmPreferred`, `cipher_suites.go`).
//!
//! rustls' server follows the client's order instead; a rustls client (AES-256-GCM first)
//! got AES-256-GCM here where Teleport gives it AES-128-GCM.
//!
//! Owns only the suite choice; certificates, ALPN and client verification are the callers'.

use std::sync::Arc;

use idmux_transport::tls::aes_gcm_hardware;
use rustls::crypto::CryptoProvider;
use rustls::CipherSuite;

/// Go's `defaultCipherSuitesTLS13`.
const GO_TLS13: [CipherSuite; 3] = [
    CipherSuite::TLS13_AES_128_GCM_SHA256,
    CipherSuite::TLS13_AES_256_GCM_SHA384,
    CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
];

/// Go's `defaultCipherSuitesTLS13NoAES`.
const GO_TLS13_NO_AES: [CipherSuite; 3] = [
    CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    CipherSuite::TLS13_AES_128_GCM_SHA256,
    CipherSuite::TLS13_AES_256_GCM_SHA384,
];

/// The suites Go implements (`cipherSuites` and `cipherSuitesTLS13` in `cipher_suites.go`):
/// the ones `aesgcmPreferred` looks at.
const GO_KNOWN: [u16; 25] = [
    0x1301, 0x1302, 0x1303, // TLS 1.3
    0xcca8, 0xcca9, 0xc02f, 0xc02b, 0xc030, 0xc02c, 0xc013, 0xc009, 0xc014, 0xc00a, 0x009c, 0x009d,
    0x002f, 0x0035, 0xc012, 0x000a, 0xc027, 0xc023, 0x003c, 0xc011, 0xc007, 0x0005,
];

/// Go's `aesgcmCiphers`: the AES-GCM suites among them (not the RSA-key-exchange ones).
const GO_AES_GCM: [u16; 6] = [0x1301, 0x1302, 0xc02f, 0xc030, 0xc02b, 0xc02c];

/// Go's `aesgcmPreferred`: whether the first suite in `offered` that Go knows is AES-GCM.
fn aes_gcm_preferred(offered: &[CipherSuite]) -> bool {
    offered
        .iter()
        .map(|s| u16::from(*s))
        .find(|id| GO_KNOWN.contains(id))
        .is_some_and(|id| GO_AES_GCM.contains(&id))
}

/// aws-lc-rs with its TLS 1.3 suites in the order Go's server prefers on this machine (TLS
/// 1.2 suites after them, as rustls lists them). Servers built on it set
/// `ignore_client_order` ([`go_order`]).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    let order: &[CipherSuite] = if aes_gcm_hardware() {
        &GO_TLS13
    } else {
        &GO_TLS13_NO_AES
    };
    let rank = |s: &rustls::SupportedCipherSuite| {
        order
            .iter()
            .position(|o| *o == s.suite())
            .unwrap_or(order.len())
    };
    p.cipher_suites.sort_by_key(rank);
    Arc::new(p)
}

/// A server configuration builder on [`provider`], with rustls' safe protocol versions.
pub(crate) fn server_builder(
) -> anyhow::Result<rustls::ConfigBuilder<rustls::ServerConfig, rustls::WantsVerifier>> {
    Ok(rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?)
}

/// `cfg` choosing by its own order, as Go's server does.
pub(crate) fn go_order(mut cfg: rustls::ServerConfig) -> rustls::ServerConfig {
    cfg.ignore_client_order = true;
    cfg
}

/// The configuration to answer a client offering `offered` with. Go switches to its
/// ChaCha20-first list for a client whose first known suite is not AES-GCM: such a client
/// lists ChaCha20-Poly1305 first, so following its order picks what Go picks.
pub(crate) fn for_client(
    cfg: Arc<rustls::ServerConfig>,
    offered: &[CipherSuite],
) -> Arc<rustls::ServerConfig> {
    if !cfg.ignore_client_order || !aes_gcm_hardware() || aes_gcm_preferred(offered) {
        return cfg;
    }
    let mut c = (*cfg).clone();
    c.ignore_client_order = false;
    Arc::new(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_gcm_preferred_is_gos_first_known_suite_rule() {
        use CipherSuite as C;
        assert!(aes_gcm_preferred(&[
            C::TLS13_AES_256_GCM_SHA384,
            C::TLS13_CHACHA20_POLY1305_SHA256
        ]));
        assert!(!aes_gcm_preferred(&[
            C::TLS13_CHACHA20_POLY1305_SHA256,
            C::TLS13_AES_128_GCM_SHA256
        ]));
        // Unknown to Go (GREASE, SCSV): skipped.
        assert!(aes_gcm_preferred(&[
            C::Unknown(0x0a0a),
            C::TLS_EMPTY_RENEGOTIATION_INFO_SCSV,
            C::TLS13_AES_128_GCM_SHA256
        ]));
        // Known but not in `aesgcmCiphers`: RSA key exchange with AES-GCM.
        assert!(!aes_gcm_preferred(&[
            C::TLS_RSA_WITH_AES_128_GCM_SHA256,
            C::TLS13_AES_128_GCM_SHA256
        ]));
        assert!(!aes_gcm_preferred(&[]));
    }
}
