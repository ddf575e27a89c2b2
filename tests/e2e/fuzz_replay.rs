//! The fuzz smoke pass on stable Rust: every file of `fuzz/corpus/<target>/` (seeds and what
//! libFuzzer kept) and `fuzz/regressions/<target>/` (inputs that once crashed) goes through the
//! same target body the cargo-fuzz crate runs (`idmux_testkit::fuzzing`). `scripts/fuzz.sh` runs the
//! real fuzzers (libFuzzer, on stable with `RUSTC_BOOTSTRAP=1`), every `[[bin]]` of
//! `fuzz/Cargo.toml` by default.
//!
//! `cargo test --test e2e -- --ignored write_seed_corpus` rewrites the seed files of the parser
//! targets, `... write_hostile_world_seeds` those of `v1_fds`, `agent_msg`, `web_json`,
//! `grpc_certs`, `data_dir`, `doctor` and `diag_http`.

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
    use idmux_devcluster::ca::ClusterCas;
    use idmux_identity::{KeyPair, KeyType};

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
            .issue_identity(&key, &seed_fields(&logins, &roles, &traits))
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

/// Write the seeds of the hostile-local-world targets (`v1_fds`, `agent_msg`, `web_json`,
/// `grpc_certs`, `data_dir`, `doctor`, `diag_http`) from what idmux and the dev cluster
/// produce: a dev cluster's ping and find answers, certificates its CAs issue (for the fixed
/// key [`idmux_testkit::fuzzing::FUZZ_KEY_PEM`]), the data dir and ssh_config idmux writes,
/// the frames ssh sends the agent, what idmux-fdpass sends.
/// `cargo test --test e2e -- --ignored write_hostile_world_seeds`.
#[test]
#[ignore]
fn write_hostile_world_seeds() {
    use idmux_devcluster::ca::ClusterCas;
    use idmux_testkit::fuzzing::{fuzz_agent, fuzz_key};
    use idmux_wire::agent as wire;
    use prost::Message;

    let put = |target: &str, name: &str, data: &[u8]| {
        let d = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), data).unwrap();
    };

    // v1_fds: messages `[fds, flags, len]` + bytes, as idmux-fdpass and hostile clients send.
    let msg = |fds: u8, flags: u8, b: &[u8]| {
        let mut m = vec![fds, flags, b.len() as u8];
        m.extend_from_slice(b);
        m
    };
    let fdpass = b"node-1.seed.test:3022|seed.test\0SSH-2.0-OpenSSH_9.2\r\n";
    put("v1_fds", "fdpass", &[vec![0], msg(1, 0, fdpass)].concat());
    put(
        "v1_fds",
        "split",
        &[vec![0], msg(1, 0, b"node-1:30"), msg(0, 0, b"22\0")].concat(),
    );
    put(
        "v1_fds",
        "many-fds",
        &[vec![0], msg(3, 0, b"node-1"), msg(2, 0, b":22|c\0")].concat(),
    );
    put(
        "v1_fds",
        "truncated",
        &[vec![0], msg(253, 1 | (2 << 1), b"node-1:22\0")].concat(),
    );
    put(
        "v1_fds",
        "closed-early",
        &[vec![0], msg(1, 0, b"node-1")].concat(),
    );
    put(
        "v1_fds",
        "control-buffer",
        &[
            vec![0x80],
            idmux_client::mux::v1recv::scm_rights_buffer(&[4, 5, 6], 64),
        ]
        .concat(),
    );

    // agent_msg: the frames ssh sends: list, then sign with what was listed.
    let a = fuzz_agent();
    let frame = |m: &[u8]| wire::frame(m);
    let sign = |blob: &[u8], flags: u32| {
        let mut m = vec![wire::SIGN_REQUEST];
        wire::put_string(&mut m, blob);
        wire::put_string(&mut m, b"session id and userauth request");
        m.extend_from_slice(&flags.to_be_bytes());
        frame(&m)
    };
    put("agent_msg", "list", &frame(&[wire::REQUEST_IDENTITIES]));
    put(
        "agent_msg",
        "list-then-sign-cert",
        &[frame(&[wire::REQUEST_IDENTITIES]), sign(&a.blobs[0], 0)].concat(),
    );
    put(
        "agent_msg",
        "sign-bare-key",
        &sign(&a.blobs[1], wire::RSA_SHA2_512),
    );
    put("agent_msg", "sign-previous-cert", &sign(&a.blobs[2], 0));
    put("agent_msg", "add-identity", &frame(&[17, 0, 0, 0, 0]));
    for f in ["list-then-sign-cert", "sign-bare-key", "sign-previous-cert"] {
        let seed = std::fs::read(fuzz_dir().join("corpus/agent_msg").join(f)).unwrap();
        let (mut rest, mut last) = (&seed[..], &[][..]);
        while let Ok(Some((m, used))) = wire::take_request(rest, 1 << 16) {
            (last, rest) = (m, &rest[used..]);
        }
        let reply = a.agent.respond(last);
        assert_eq!(reply[0], wire::SIGN_RESPONSE, "{f} is signed");
    }

    // Certificates for the fuzz key, as the dev cluster's Auth issues them.
    let tmp = tempfile::tempdir().unwrap();
    let cas = ClusterCas::create(&tmp.path().join("ca"), "seed.test").unwrap();
    let key = fuzz_key();
    let id = cas
        .issue_identity(
            &key,
            &seed_fields(
                &["root".to_string()],
                &["bot-seed".to_string()],
                &Default::default(),
            ),
        )
        .unwrap();
    let ssh_line = format!("{}\n", id.ssh_cert.to_openssh().unwrap());
    let mut tls_cas = cas.user.trusted_tls_pems();
    tls_cas.extend(cas.host.trusted_tls_pems());
    let ssh_cas: Vec<String> = [&cas.user, &cas.host]
        .iter()
        .flat_map(|c| c.trusted_ssh_lines().unwrap())
        .map(|l| format!("{l}\n"))
        .collect();

    // grpc_certs: Certs, GetCertAuthorities, GetCertAuthority, GetClusterCACert.
    let certs = idmux_wire::proto::Certs {
        ssh: ssh_line.clone().into_bytes(),
        tls: id.tls_cert_pem.clone().into_bytes(),
        tls_ca_certs: tls_cas.iter().map(|c| c.clone().into_bytes()).collect(),
        ssh_ca_certs: ssh_cas.iter().map(|c| c.clone().into_bytes()).collect(),
    };
    put(
        "grpc_certs",
        "certs",
        &[vec![0], certs.encode_to_vec()].concat(),
    );
    let (s1, t1, tc, sc) = idmux_client::bot::certs::certs_text(&certs);
    idmux_client::bot::certs::identity_from_certs(fuzz_key(), &s1, &t1, tc, &sc)
        .expect("the certs seed makes an identity");
    let host_ca = idmux_devcluster::auth_resources::cert_authority("seed.test", &cas.host).unwrap();
    let user_ca = idmux_devcluster::auth_resources::cert_authority("seed.test", &cas.user).unwrap();
    let all = idmux_wire::services::GetCertAuthoritiesResponse {
        cert_authorities_v2: vec![host_ca.clone(), user_ca],
    };
    put(
        "grpc_certs",
        "cert-authorities",
        &[vec![1], all.encode_to_vec()].concat(),
    );
    put(
        "grpc_certs",
        "host-ca",
        &[vec![2], host_ca.encode_to_vec()].concat(),
    );
    let cluster_ca = idmux_devcluster::auth_resources::get_cluster_ca_cert(&cas);
    put(
        "grpc_certs",
        "cluster-ca-cert",
        &[vec![3], cluster_ca.encode_to_vec()].concat(),
    );

    // data_dir: the five files idmux writes, NUL-separated.
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    id.write_data_dir(&data, None).unwrap();
    let texts: Vec<String> = ["key", "key-cert.pub", "tlscert", "sshcacerts", "tlscacerts"]
        .iter()
        .map(|f| std::fs::read_to_string(data.join(f)).unwrap())
        .collect();
    put("data_dir", "bot", texts.join("\0").as_bytes());
    let files = idmux_identity::files::DataDirFiles {
        key: texts[0].clone(),
        key_cert: texts[1].clone(),
        tlscert: texts[2].clone(),
        sshcacerts: texts[3].clone(),
        tlscacerts: texts[4].clone(),
    };
    idmux_identity::Identity::parse_data_dir(&data, &files).expect("the data dir seed parses");

    // doctor: an ssh_config idmux writes, `ssh -V`, an agent's answer, --node values.
    let dest = tmp.path().join("dest");
    std::fs::create_dir_all(&dest).unwrap();
    use idmux_identity::openssh::{write_files, Mode, ProxyWay, SshConfigParams};
    for (mode, name, tls_routing) in [
        (Mode::Fdpass, "ssh_config-fdpass", true),
        (Mode::Stdio, "ssh_config-stdio", false),
    ] {
        let p = SshConfigParams {
            dir: dest.clone(),
            proxy_host: "proxy.seed.test".into(),
            proxy_port: 443,
            cluster: "seed.test".into(),
            clusters: vec!["seed.test".into(), "leaf.test".into()],
            mode,
            idmux_exe: "/usr/local/bin/idmux".into(),
            fdpass_command: vec!["/usr/local/bin/idmux-fdpass".into()],
            bare_names: false,
            way: ProxyWay {
                tls_routing,
                connection_upgrade: false,
            },
        };
        write_files(&p, &id.host_cas).unwrap();
        put(
            "doctor",
            name,
            &std::fs::read(dest.join("ssh_config")).unwrap(),
        );
    }
    let v = std::process::Command::new("ssh")
        .arg("-V")
        .output()
        .unwrap();
    put("doctor", "ssh-V", &v.stderr);
    put(
        "doctor",
        "agent-answer",
        &a.agent.respond(&[wire::REQUEST_IDENTITIES]),
    );
    put(
        "doctor",
        "nodes",
        b"node-1\nnode-1.seed.test:3022\n[::1]:22\n",
    );

    // web_json: a dev cluster's ping and find, the credentials answer, a refusal.
    let cl = idmux_testkit::DevCluster::start("seed.test", 0);
    let ca_pem = cl.dir.path().join("ca.pem");
    for (name, path) in [("ping", "/webapi/ping"), ("find", "/webapi/find")] {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(&ca_pem)
            .arg(format!("https://{}{path}", cl.addr))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let kind = if name == "ping" { 0u8 } else { 1 };
        put("web_json", name, &[vec![kind], out.stdout].concat());
    }
    use idmux_wire::web::{b64e, CertsJson};
    let json = CertsJson {
        ssh: b64e(ssh_line.as_bytes()),
        tls: b64e(id.tls_cert_pem.as_bytes()),
        tls_ca_certs: tls_cas.iter().map(|c| b64e(c.as_bytes())).collect(),
        ssh_ca_certs: ssh_cas.iter().map(|c| b64e(c.as_bytes())).collect(),
    };
    put(
        "web_json",
        "host-credentials",
        &[vec![2], serde_json::to_vec(&json).unwrap()].concat(),
    );
    put(
        "web_json",
        "refusal",
        &[
            vec![3],
            br#"{"error":{"message":"token expired or not found"}}"#.to_vec(),
        ]
        .concat(),
    );
    put(
        "web_json",
        "ping-no-tls-routing",
        &[
            vec![0],
            br#"{"proxy":{"tls_routing_enabled":false,"ssh":{"listen_addr":"0.0.0.0:3023","public_addr":"proxy.example.com:443","ssh_public_addr":"ssh.example.com"}}}"#.to_vec(),
        ]
        .concat(),
    );

    // diag_http: what curl and Prometheus send.
    put(
        "diag_http",
        "metrics",
        b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9090\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n",
    );
    put(
        "diag_http",
        "keepalive",
        b"GET /readyz HTTP/1.1\r\nHost: h\r\n\r\nGET /livez HTTP/1.1\r\nHost: h\r\n\r\nGET /nope HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    );
    put(
        "diag_http",
        "prometheus",
        b"GET /metrics HTTP/1.1\r\nHost: localhost:9090\r\nUser-Agent: Prometheus/2.45.0\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\nAccept-Encoding: gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n",
    );
}

/// The certificate fields of the seed bot (`bot-seed`, cluster `seed.test`, generation 1).
fn seed_fields<'a>(
    logins: &'a [String],
    roles: &'a [String],
    traits: &'a std::collections::BTreeMap<String, Vec<String>>,
) -> idmux_devcluster::ca::UserCertFields<'a> {
    idmux_devcluster::ca::UserCertFields {
        username: "bot-seed",
        logins,
        roles,
        traits,
        route_to_cluster: "seed.test",
        renewable: true,
        generation: 1,
        bot_name: "seed",
        bot_instance_id: "",
        impersonator: "",
        disallow_reissue: false,
        ttl: std::time::Duration::from_secs(3600),
    }
}
