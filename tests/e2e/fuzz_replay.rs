//! The fuzz smoke pass on stable Rust: every file of `fuzz/corpus/<target>/` (seeds and what
//! libFuzzer kept) and `fuzz/regressions/<target>/` (inputs that once crashed) goes through the
//! same target body the cargo-fuzz crate runs (`idmux_testkit::fuzzing`). `scripts/fuzz.sh` runs the
//! real fuzzers (nightly).
//!
//! `cargo test --test fuzz_replay -- --ignored write_seed_corpus` rewrites the seed files.

use std::path::{Path, PathBuf};

use idmux_testkit::fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.is_file());
    v.sort();
    v
}

#[test]
fn corpus_and_regressions_replay_without_panics() {
    let mut total = 0;
    for (name, target) in TARGETS {
        let corpus = files(&fuzz_dir().join("corpus").join(name));
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{name}/ has no seed (run write_seed_corpus)"
        );
        let regressions = files(&fuzz_dir().join("regressions").join(name));
        for f in corpus.iter().chain(&regressions) {
            let data = std::fs::read(f).unwrap();
            // A panic or a hang fails the test, naming the input so it can be replayed alone.
            let (tx, rx) = std::sync::mpsc::channel();
            let t = *target;
            std::thread::spawn(move || {
                let r = std::panic::catch_unwind(|| t(&data));
                let _ = tx.send(r.is_ok());
            });
            match rx.recv_timeout(std::time::Duration::from_secs(10)) {
                Ok(true) => {}
                Ok(false) => panic!("{name}: {} panicked", f.display()),
                Err(_) => panic!("{name}: {} did not finish within 10 s", f.display()),
            }
            total += 1;
        }
        eprintln!(
            "{name}: {} corpus files, {} regressions",
            corpus.len(),
            regressions.len()
        );
    }
    assert!(total > 0);
}

/// Fuzz targets in `fuzz/Cargo.toml` and `fuzz/fuzz_targets/` are exactly `TARGETS`.
#[test]
fn fuzz_crate_lists_every_target() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for (name, _) in TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml lacks {name}"
        );
        let src =
            std::fs::read_to_string(fuzz_dir().join(format!("fuzz_targets/{name}.rs"))).unwrap();
        assert!(
            src.contains(&format!("idmux_testkit::fuzzing::{name}(")),
            "fuzz_targets/{name}.rs does not call idmux_testkit::fuzzing::{name}"
        );
    }
}

/// Write valid seed inputs (made with idmux's own CA) for each target.
#[test]
#[ignore]
fn write_seed_corpus() {
    use idmux_devcluster::ca::{ClusterCas, UserCertFields};
    use idmux_identity::{KeyPair, KeyType};
    use std::time::Duration;

    let tmp = tempfile::tempdir().unwrap();
    let cas = ClusterCas::create(tmp.path(), "seed.test").unwrap();
    let put = |target: &str, name: &str, data: &[u8]| {
        let d = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), data).unwrap();
    };

    for (name, req) in [
        (
            "node",
            &b"node-1.seed.test:3022|seed.test\0SSH-2.0-OpenSSH_9.2\r\n"[..],
        ),
        ("bare", b"node-1:22\0"),
        ("ipv6", b"[::1]:3022\0"),
        ("bad-port", b"h:99999\0"),
        ("fields", b"a:1|b|c\0"),
    ] {
        put("mux_request", name, req);
    }

    let traits = Default::default();
    let logins = vec!["root".to_string()];
    let roles = vec!["access".to_string()];
    for (i, kind) in [KeyType::EcdsaP256, KeyType::Rsa2048, KeyType::Ed25519]
        .into_iter()
        .enumerate()
    {
        let key = KeyPair::generate(kind).unwrap();
        let id = cas
            .issue_identity(
                &key,
                &UserCertFields {
                    username: "bot-seed",
                    logins: &logins,
                    roles: &roles,
                    traits: &traits,
                    route_to_cluster: "seed.test",
                    renewable: true,
                    generation: 1,
                    bot_name: "seed",
                    bot_instance_id: "",
                    impersonator: "",
                    disallow_reissue: false,
                    ttl: Duration::from_secs(3600),
                },
            )
            .unwrap();
        put(
            "identity_file",
            &format!("identity-{i}"),
            id.to_identity_file().unwrap().as_bytes(),
        );
        put(
            "key_pem",
            &format!("key-{i}"),
            key.to_pem().unwrap().as_bytes(),
        );
        put("cert_pem", &format!("user-{i}"), id.tls_cert_pem.as_bytes());
        let kh = idmux_identity::openssh::render_known_hosts(
            "127.0.0.1",
            "seed.test",
            &id.host_cas,
            true,
        )
        .unwrap();
        put("known_hosts", &format!("known_hosts-{i}"), kh.as_bytes());
    }
    let ec = KeyPair::generate(KeyType::EcdsaP256).unwrap();
    if let KeyPair::EcdsaP256(k) = &ec {
        use p256::pkcs8::LineEnding;
        let sec1 = k.to_sec1_pem(LineEnding::LF).unwrap();
        put("key_pem", "sec1", sec1.as_bytes());
    }
    let ossh = ec
        .to_ssh()
        .unwrap()
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .unwrap();
    put("key_pem", "openssh", ossh.as_bytes());
    put("cert_pem", "host-ca", cas.host.tls_cert_pem.as_bytes());

    put(
        "config_yaml",
        "full",
        br#"version: v2
proxy_server: proxy.example.com:443
onboarding: {join_method: token, token: abc}
storage: {type: directory, path: /var/lib/idmux}
outputs:
  - type: identity
    destination: {type: directory, path: /opt/machine-id}
    roles: [access]
services:
  - type: ssh-multiplexer
    destination: {type: directory, path: /opt/machine-id}
credential_ttl: 1h
renewal_interval: 20m
ca_path: /etc/idmux/proxy-ca.pem
"#,
    );
    put(
        "config_yaml",
        "unknown-key",
        b"version: v2\nproxy_server: p:443\nbogus: 1\n",
    );
    put(
        "proxy_templates",
        "tsh",
        br#"proxy_templates:
  - template: '^(\w+)\.(leaf1|leaf2)\.example\.com:(.*)$'
    proxy: "$2.example.com:443"
    cluster: "$2"
    host: "$1:$3"
  - template: '^(?P<name>\w+)\.lab:(\d+)$'
    host: "${name}-node"
"#,
    );
}
