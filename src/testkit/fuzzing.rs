//! Fuzz target bodies: one function per untrusted-input parser, bytes in, no panic out.
//!
//! The cargo-fuzz crate in `fuzz/` calls these (under libFuzzer, on nightly), and
//! `tests/fuzz_replay.rs` replays every file of `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` through the same functions on stable, so CI runs the corpus and
//! every input that once crashed on each test run. Each body asserts what must hold for any
//! input: parsing never panics, and what parses can be written out and parsed back to the same
//! value. Not part of the public API.

use idmux_identity::{HostCa, Identity, KeyPair};
use idmux_wire::v1::{self as request, MAX_REQUEST};

/// A target body: any bytes in, a panic on a bug.
pub type Target = fn(&[u8]);

/// Every target, by the name used for its folders under `fuzz/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("mux_request", mux_request),
    ("identity_file", identity_file),
    ("key_pem", key_pem),
    ("cert_pem", cert_pem),
    ("known_hosts", known_hosts),
    ("config_yaml", config_yaml),
    ("proxy_templates", proxy_templates),
];

/// The v1.sock request parser ([`request::parse`]).
pub fn mux_request(data: &[u8]) {
    if let Ok((t, used)) = request::parse(data) {
        assert!(used >= 1 && used <= data.len() && used <= MAX_REQUEST + 1);
        assert_eq!(data[used - 1], 0, "a request ends with its NUL");
        assert!(!t.host.is_empty());
        // What the daemon logs and reports must itself be a request that parses.
        let again = format!("{t}\0");
        assert!(
            request::parse(again.as_bytes()).is_ok(),
            "{t} does not parse back"
        );
    }
}

/// The tsh `identity` file parser ([`Identity::parse_identity_file`]).
pub fn identity_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = Identity::parse_identity_file(text) {
        let out = id.to_identity_file().expect("a parsed identity renders");
        let back = Identity::parse_identity_file(&out).expect("a rendered identity parses");
        assert_eq!(back.ssh_cert, id.ssh_cert);
        assert_eq!(back.host_cas, id.host_cas);
    }
}

/// Private key PEM ([`KeyPair::from_pem`]): PKCS#1, PKCS#8, SEC1 and OpenSSH keys.
pub fn key_pem(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(k) = KeyPair::from_pem(text) {
        let pem = k.to_pem().expect("a parsed key renders");
        let back = KeyPair::from_pem(&pem).expect("a rendered key parses");
        assert_eq!(
            back.ssh_public().expect("public key"),
            k.ssh_public().expect("public key")
        );
    }
}

/// Certificate PEM ([`idmux_identity::x509::parse_cert_pem`]) and what idmux reads from one: the
/// Teleport identity in the subject, the issuer's cluster and the public key.
pub fn cert_pem(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cert) = idmux_identity::x509::parse_cert_pem(text) {
        let _ = idmux_identity::TlsIdentity::from_name(&cert.tbs_certificate.subject);
        let _ = idmux_identity::x509::issuer_cluster(&cert);
        if let Ok(spki) = der::Encode::to_der(&cert.tbs_certificate.subject_public_key_info) {
            let _ = idmux_identity::keys::ssh_key_data_from_spki(&spki);
        }
    }
}

/// known_hosts / `sshcacerts` / identity-file CA lines ([`HostCa::parse_line`]), one per line.
pub fn known_hosts(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.lines() {
        if let Ok(ca) = HostCa::parse_line(line) {
            let out = ca
                .authorized_hosts_line()
                .expect("a parsed CA line renders");
            let back = HostCa::parse_line(&out).expect("a rendered CA line parses");
            assert_eq!(back.key, ca.key);
        }
    }
}

/// The tbot v2 YAML config ([`idmux_client::bot::config::parse_yaml`]).
pub fn config_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = idmux_client::bot::config::parse_yaml(text, "fuzz.yaml");
}

/// tsh's `proxy_templates` ([`idmux_client::mux::templates::ProxyTemplates`]): parsing never
/// panics, and a parsed list applies to any target without panicking.
pub fn proxy_templates(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    use idmux_client::mux::templates::ProxyTemplates;
    if let Ok(t) = ProxyTemplates::parse(text, "fuzz.yaml") {
        for host in ["node-1.example.com", "a.leaf1.example.com", "", "x:y"] {
            let _ = t.apply(host, 3022, "root");
        }
    }
}
