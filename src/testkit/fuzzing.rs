//! Fuzz target bodies: one function per untrusted-input parser, bytes in, no panic out.
//!
//! The cargo-fuzz crate in `fuzz/` calls these (under libFuzzer; `scripts/fuzz.sh` builds
//! them on stable), and `tests/e2e/fuzz_replay.rs` replays every file of
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` through the same functions on
//! stable, so CI runs the corpus and every input that once crashed on each test run. Each body asserts what must hold for any
//! input: parsing never panics, and what parses can be written out and parsed back to the same
//! value. Not part of the public API.
//!
//! The hostile-local-world targets (`v1_fds`, `agent_msg`, `web_json`, `grpc_certs`,
//! `data_dir`, `doctor`, `diag_http`) call the pure entry points factored out of the code that
//! does the I/O, so what is fuzzed is what runs; `v1_fds` also asserts fd conservation (every
//! fd received is kept once or closed once).

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
    ("v1_fds", v1_fds),
    ("agent_msg", agent_msg),
    ("web_json", web_json),
    ("grpc_certs", grpc_certs),
    ("data_dir", data_dir),
    ("doctor", doctor),
    ("diag_http", diag_http),
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

/// A test-only Ed25519 key (PKCS#8): the key the `grpc_certs`, `web_json` and `data_dir` seeds'
/// certificates are issued for, so a seed assembles into a whole identity.
pub const FUZZ_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEICPatuyhooEw1NTJh/oeQOkznOiar2vbMiN3/Mn92U8T
-----END PRIVATE KEY-----
";

/// A second test-only Ed25519 key: the SSH CA of the `agent_msg` target's certificates.
const FUZZ_CA_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIByezuT3DURHrPzzeOHI7S5u3gOQ7y7i2/5vJo0ympyY
-----END PRIVATE KEY-----
";

/// [`FUZZ_KEY_PEM`] as a key.
pub fn fuzz_key() -> KeyPair {
    KeyPair::from_pem(FUZZ_KEY_PEM).expect("the fuzz key parses")
}

/// A fake fd for [`v1_fds`]: records its number when closed (dropped).
struct FakeFd(usize, std::rc::Rc<std::cell::RefCell<Vec<usize>>>);

impl Drop for FakeFd {
    fn drop(&mut self) {
        self.1.borrow_mut().push(self.0);
    }
}

/// The fd-receiving path of v1.sock ([`idmux_client::mux::v1recv`]), a whole connection: the
/// input is a list of messages, each `[fds, flags, len]` then `len` bytes (flags bit 0: the
/// control data was truncated, the kernel installing `flags >> 1` of the fds at most); the
/// input's end is the client closing. A first byte with bit 7 set instead fuzzes the control
/// buffer walk alone. Asserts that every fd received is kept (as the one stderr fd) or closed,
/// exactly once, whatever the messages look like, and that a request found is what the
/// request parser finds.
pub fn v1_fds(data: &[u8]) {
    use idmux_client::mux::v1recv::{self, Next, Read, BUFFER, SCM_MAX_FD};
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    if mode & 0x80 != 0 {
        let fds = v1recv::scm_rights(rest);
        assert!(fds.len() <= rest.len() / 4);
        assert!(fds.iter().all(|&fd| fd >= 0));
        return;
    }
    let closed = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let mut buf: Vec<u8> = Vec::new();
    let mut stderr: Option<FakeFd> = None;
    let (mut received, mut kept) = (0usize, 0usize);
    loop {
        // One recvmsg; no header left: the client closed its end (a read of 0 bytes, no fds).
        let (sent, flags, bytes) = match rest.split_first_chunk::<3>() {
            Some((h, r)) => {
                let n = (h[2] as usize).min(r.len());
                rest = &r[n..];
                (h[0] as usize % (SCM_MAX_FD + 1), h[1], &r[..n])
            }
            None => (0, 0, &[][..]),
        };
        let truncated = flags & 1 == 1;
        let installed = if truncated {
            sent.min(flags as usize >> 1)
        } else {
            sent
        };
        // As the kernel fills the control buffer, then as the server reads it back.
        let numbers: Vec<i32> = (received..received + installed)
            .map(|n| n as i32 + 3)
            .collect();
        let found = v1recv::scm_rights(&v1recv::scm_rights_buffer(&numbers, 4096));
        assert_eq!(
            found, numbers,
            "every installed fd is found in the control buffer"
        );
        let fds: Vec<FakeFd> = found
            .iter()
            .map(|&n| FakeFd(n as usize - 3, closed.clone()))
            .collect();
        received += installed;
        let n = bytes.len().min(BUFFER - buf.len());
        buf.extend_from_slice(&bytes[..n]);
        let read = Read {
            bytes: n,
            fds: fds.len(),
            truncated,
        };
        let step = v1recv::step(&buf, BUFFER, read, stderr.is_some());
        let (keep, close) = v1recv::sort_fds(fds, step.keep);
        assert_eq!(
            keep.is_some() as usize + close.len(),
            installed,
            "an fd was lost between kept and closed"
        );
        drop(close);
        if let Some(k) = keep {
            assert!(stderr.is_none(), "a second stderr fd replaced the first");
            kept += 1;
            stderr = Some(k);
        }
        match step.next {
            Next::More => {
                assert!(n > 0 && buf.len() < BUFFER, "asked for more after the end");
                continue;
            }
            Next::Request { target, used } => {
                let (t, u) = request::parse(&buf).expect("the request the step found parses");
                assert_eq!((t, u), (target, used));
                break;
            }
            Next::Fail(line) => {
                assert!(!line.is_empty() && !line.contains('\n'));
                break;
            }
        }
    }
    assert!(kept <= 1);
    drop(stderr);
    let mut closed = closed.borrow().clone();
    closed.sort_unstable();
    assert_eq!(
        closed,
        (0..received).collect::<Vec<_>>(),
        "every fd received is closed exactly once"
    );
}

/// The keys the `agent_msg` target's agent holds: a current key and certificate, and the
/// previous ones (still signing), all fixed so seeds can name them.
pub struct FuzzAgent {
    pub agent: idmux_transport::agent::Agent,
    /// The public keys whose signatures the agent may return.
    pub signers: Vec<russh::keys::ssh_key::PublicKey>,
    /// Wire blobs of the current certificate and bare key, then the previous ones.
    pub blobs: Vec<Vec<u8>>,
}

/// The agent of the `agent_msg` target (made once per process).
pub fn fuzz_agent() -> &'static FuzzAgent {
    use russh::keys::ssh_encoding::Encode;
    use russh::keys::ssh_key::certificate::{Builder, CertType};
    static AGENT: std::sync::OnceLock<FuzzAgent> = std::sync::OnceLock::new();
    AGENT.get_or_init(|| {
        let ca = KeyPair::from_pem(FUZZ_CA_PEM)
            .and_then(|k| k.to_ssh())
            .expect("the fuzz CA key");
        let cert_for = |k: &russh::keys::ssh_key::PrivateKey, id: &str| {
            // Valid until 2100-01-01, so the previous key keeps signing.
            let mut b = Builder::new([7u8; 16], k.public_key().key_data().clone(), 0, 4102444800)
                .expect("validity");
            b.cert_type(CertType::User).expect("type");
            b.key_id(id).expect("key id");
            b.valid_principal("root").expect("principal");
            b.sign(&ca).expect("the fuzz certificate signs")
        };
        let old = KeyPair::from_pem(FUZZ_CA_PEM)
            .and_then(|k| k.to_ssh())
            .expect("old key");
        let new = fuzz_key().to_ssh().expect("the fuzz key");
        let agent = idmux_transport::agent::Agent::default();
        let (old_cert, new_cert) = (cert_for(&old, "old"), cert_for(&new, "new"));
        agent.set(old.clone(), old_cert.clone());
        agent.set(new.clone(), new_cert.clone());
        let blob = |k: &russh::keys::ssh_key::PrivateKey| {
            k.public_key().key_data().encode_vec().expect("key blob")
        };
        FuzzAgent {
            agent,
            signers: vec![new.public_key().clone(), old.public_key().clone()],
            blobs: vec![
                new_cert.to_bytes().expect("cert blob"),
                blob(&new),
                old_cert.to_bytes().expect("cert blob"),
                blob(&old),
            ],
        }
    })
}

/// agent.sock's protocol ([`idmux_wire::agent::take_request`] and
/// [`idmux_transport::agent::Agent::respond`]): the input is what a client writes, frame after
/// frame. Asserts that each answer is a failure, an identities answer to a list request (which
/// parses back), or a sign response to a sign request whose signature verifies with one of
/// the held keys over the data asked.
pub fn agent_msg(data: &[u8]) {
    use idmux_transport::agent::MAX_REQUEST;
    use idmux_wire::agent as wire;
    let a = fuzz_agent();
    let mut buf = data;
    while let Ok(Some((msg, used))) = wire::take_request(buf, MAX_REQUEST.min(wire::MAX_FRAME)) {
        buf = &buf[used..];
        assert!(!msg.is_empty() && msg.len() <= MAX_REQUEST);
        let reply = a.agent.respond(msg);
        match reply[0] {
            wire::FAILURE => assert_eq!(reply, [wire::FAILURE]),
            wire::IDENTITIES_ANSWER => {
                assert_eq!(msg[0], wire::REQUEST_IDENTITIES);
                let ids = wire::parse_identities(&reply).expect("an answer the agent wrote parses");
                assert_eq!(ids.len(), 2);
                assert_eq!(ids[0].blob, a.blobs[0]);
            }
            wire::SIGN_RESPONSE => {
                assert_eq!(msg[0], wire::SIGN_REQUEST);
                let req =
                    wire::SignRequest::parse(&msg[1..]).expect("a request that was signed parses");
                assert!(
                    a.blobs.iter().any(|b| b == req.key_blob),
                    "signed for a key it does not hold"
                );
                let mut body = &reply[1..];
                let sig = wire::get_string(&mut body).expect("the signature");
                let sig: russh::keys::ssh_key::Signature =
                    russh::keys::ssh_encoding::Decode::decode(&mut &sig[..]).expect("a signature");
                use russh::keys::signature::Verifier;
                assert!(
                    a.signers
                        .iter()
                        .any(|k| Verifier::verify(k.key_data(), req.data, &sig).is_ok()),
                    "a signature no held key made"
                );
            }
            t => panic!("the agent answered message type {t}"),
        }
    }
}

/// The proxy's web API answers as the client parses them ([`idmux_transport::web`],
/// [`idmux_transport::route::way_from_ping`], [`idmux_wire::web::CertsJson`],
/// [`idmux_client::bot::certs::identity_from_certs`]). The first byte picks the answer: 0
/// `/webapi/ping`, 1 `/webapi/find`, 2 `/webapi/host/credentials`, 3 a refusal (any status but
/// 200) and the `Date` header; the rest is the body. Asserts that a route found names an SSH
/// proxy address that is `host:port`, and that a refusal is one line.
pub fn web_json(data: &[u8]) {
    use idmux_transport::route::{way_from_ping, RouteFlags};
    use idmux_transport::web::{answer_date, check_answer, parse_answer};
    const P: &str = "proxy.example.com:443";
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 4 {
        0 => {
            let Ok(v) = parse_answer::<serde_json::Value>(P, "/webapi/ping", body) else {
                return;
            };
            for tls_routing in [None, Some(true), Some(false)] {
                let flags = RouteFlags {
                    tls_routing,
                    upgrade: None,
                };
                if let Ok((ssh, why)) = way_from_ping(&v, P, flags) {
                    assert!(!why.is_empty());
                    if let Some(a) = ssh {
                        idmux_wire::hostport::split_host_port(&a, "fuzz").unwrap_or_else(|e| {
                            panic!("the SSH proxy address {a:?} from ping is not host:port: {e}")
                        });
                    }
                }
            }
        }
        1 => {
            if let Ok(v) = parse_answer::<serde_json::Value>(P, "/webapi/find", body) {
                let suite = v
                    .pointer("/auth/signature_algorithm_suite")
                    .and_then(|v| v.as_str())
                    .unwrap_or("");
                let _ = idmux_identity::KeyType::for_suite(suite);
            }
        }
        2 => {
            let path = "/webapi/host/credentials";
            let Ok(c) = parse_answer::<idmux_wire::web::CertsJson>(P, path, body) else {
                return;
            };
            if let Ok((ssh, tls, tls_cas, ssh_cas)) = c.decode() {
                check_identity(idmux_client::bot::certs::identity_from_certs(
                    fuzz_key(),
                    &ssh,
                    &tls,
                    tls_cas,
                    &ssh_cas,
                ));
            }
        }
        _ => {
            let status = 201 + u16::from(body.first().copied().unwrap_or(0)) * 2;
            let e = check_answer(P, "/webapi/find", status, body).expect_err("not 200");
            let line = e.to_string();
            assert!(
                !line.contains(['\n', '\r']),
                "a refusal of two lines: {line:?}"
            );
            let _ = answer_date(body);
        }
    }
}

/// An identity assembled from an answer: it renders as an identity file that parses back.
fn check_identity(id: anyhow::Result<Identity>) {
    if let Ok(id) = id {
        let out = id
            .to_identity_file()
            .expect("an assembled identity renders");
        let back = Identity::parse_identity_file(&out).expect("a rendered identity parses");
        assert_eq!(back.ssh_cert, id.ssh_cert);
        assert_eq!(back.host_cas, id.host_cas);
    }
}

/// Auth's gRPC answers as the bot uses them: prost decode, then
/// [`idmux_client::bot::certs`] and [`idmux_transport::auth_direct::cluster_ca_certs`]. The
/// first byte picks the message: 0 `Certs` (GenerateUserCerts; assembled into an identity with
/// [`FUZZ_KEY_PEM`]), 1 `GetCertAuthoritiesResponse` (the CA files), 2 `CertAuthorityV2`
/// (GetCertAuthority: known_hosts), 3 `GetClusterCACertResponse` (the pinned first trust).
pub fn grpc_certs(data: &[u8]) {
    use idmux_client::bot::certs;
    use prost::Message;
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 4 {
        0 => {
            if let Ok(c) = idmux_wire::proto::Certs::decode(body) {
                let (ssh, tls, tls_cas, ssh_cas) = certs::certs_text(&c);
                check_identity(certs::identity_from_certs(
                    fuzz_key(),
                    &ssh,
                    &tls,
                    tls_cas,
                    &ssh_cas,
                ));
            }
        }
        1 => {
            if let Ok(r) = idmux_wire::services::GetCertAuthoritiesResponse::decode(body) {
                if let Ok(pems) = certs::tls_pems(&r.cert_authorities_v2) {
                    let _ = idmux_identity::files::split_pem_certs(&pems.concat());
                }
            }
        }
        2 => {
            if let Ok(ca) = idmux_wire::resources::CertAuthorityV2::decode(body) {
                if let Ok(cas) = certs::cluster_host_cas(&ca, "fuzz.test") {
                    for c in cas {
                        let line = c.authorized_hosts_line().expect("a host CA renders");
                        let back = HostCa::parse_line(&line).expect("a rendered CA line parses");
                        assert_eq!(back.key, c.key);
                    }
                }
            }
        }
        _ => {
            if let Ok(r) = idmux_wire::services::GetClusterCaCertResponse::decode(body) {
                use idmux_transport::auth_direct as ad;
                if let Ok(c) = ad::cluster_ca_certs("auth.example.com:3025", &r.tls_ca) {
                    let pins: Vec<String> = c.iter().filter_map(|d| ad::spki_pin(d).ok()).collect();
                    let _ = ad::check_pins(&pins, &c);
                    let _ = ad::check_unexpired(&c, std::time::SystemTime::UNIX_EPOCH);
                }
            }
        }
    }
}

/// A bot data dir's files ([`Identity::parse_data_dir`]): the input is the texts of `key`,
/// `key-cert.pub`, `tlscert`, `sshcacerts` and `tlscacerts`, separated by NUL. Asserts that an
/// error names the data dir (and so the file at fault) and that an identity read renders.
pub fn data_dir(data: &[u8]) {
    use idmux_identity::files::DataDirFiles;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.split('\0').map(str::to_string);
    let mut next = || parts.next().unwrap_or_default();
    let files = DataDirFiles {
        key: next(),
        key_cert: next(),
        tlscert: next(),
        sshcacerts: next(),
        tlscacerts: next(),
    };
    match Identity::parse_data_dir(std::path::Path::new("/data"), &files) {
        Ok(id) => check_identity(Ok(id)),
        Err(e) => {
            let line = format!("{e:#}");
            assert!(line.starts_with("/data"), "an error naming no file: {line}");
        }
    }
}

/// What `idmux doctor` parses ([`idmux_client::doctor_parse`]), all on the same input: the
/// agent's identities answer (bytes), then as text `ssh -V`, an ssh_config (proxy address,
/// ProxyCommand programs, route flags, fdpass) and `--node` values (one per line).
pub fn doctor(data: &[u8]) {
    use idmux_client::doctor_parse as p;
    let _ = p::parse_agent_identities(data);
    if let Some(b) = data.first_chunk::<8>() {
        assert!(!p::short_duration(u64::from_be_bytes(*b)).is_empty());
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = p::parse_ssh_version(text);
    if let Some(v) = p::proxy_from_ssh_config(text) {
        assert!(!v.is_empty());
    }
    for prog in p::proxy_command_programs(text) {
        assert!(!prog.is_empty());
    }
    let _ = p::route_flags_from_ssh_config(text);
    let _ = p::uses_fdpass(text);
    for line in text.lines() {
        if let Ok((host, _)) = p::node_target(line) {
            assert!(!host.is_empty());
        }
    }
}

/// The diagnostics endpoint ([`idmux_client::mux::metrics::serve_diag_conn`]): the input is
/// what a TCP client sends, served on an in-memory stream by the code the daemon runs (hyper's
/// HTTP/1 head parse, then [`idmux_client::mux::metrics::diag_answer`]). Asserts that whatever
/// comes back is HTTP/1 responses (1.0 to a 1.0 request).
pub fn diag_http(data: &[u8]) {
    use idmux_client::mux::metrics::{serve_diag_conn, Metrics};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
    }
    let out = RT.with(|rt| {
        rt.block_on(async {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let (mut r, mut w) = tokio::io::split(client);
            let m = std::sync::Arc::new(Metrics::default());
            let limits = idmux_client::mux::limits::Limits::default();
            let serve = serve_diag_conn(
                hyper_util::rt::TokioIo::new(server),
                m,
                limits.diag_header_timeout,
            );
            let send = async {
                let _ = w.write_all(data).await;
                let _ = w.shutdown().await;
            };
            let mut out = Vec::new();
            let recv = r.read_to_end(&mut out);
            let (_, _, _) = tokio::join!(serve, send, recv);
            out
        })
    });
    if !out.is_empty() {
        assert!(
            out.starts_with(b"HTTP/1.1 ") || out.starts_with(b"HTTP/1.0 "),
            "not an HTTP/1 answer: {:?}",
            String::from_utf8_lossy(&out[..out.len().min(64)])
        );
    }
}
