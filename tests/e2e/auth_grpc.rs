//! gRPC `GenerateUserCerts` end to end: a dev cluster child process, a bot joined over the web
//! API (`curl`), then renewals and an impersonation request through the auth ALPN.

use std::process::Command;
use std::time::{Duration, SystemTime};

use base64::Engine;
use idmux_identity::{HostCa, Identity, KeyPair, KeyType};
use idmux_testkit::*;
use idmux_transport::auth_client::generate_user_certs;
use idmux_transport::route::Route;
use idmux_wire::proto::{Certs, Timestamp, UserCertsRequest};
use idmux_wire::web::{CertsJson, RegisterUsingTokenRequest};
use russh::keys::ssh_key::Certificate;

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn identity(
    key: KeyPair,
    ssh: &str,
    tls: String,
    tls_cas: Vec<String>,
    ssh_cas: &[String],
) -> Identity {
    let id = Identity {
        key,
        ssh_cert: Certificate::from_openssh(ssh.trim()).unwrap(),
        tls_cert_pem: tls,
        // Teleport sends bare CA keys; they name no cluster.
        host_cas: ssh_cas
            .iter()
            .map(|l| HostCa::parse_entry(l, "grpc.test").unwrap())
            .collect(),
        tls_cas,
    };
    id.check_consistent().unwrap();
    id
}

fn from_certs(key: KeyPair, c: Certs) -> Identity {
    let s = |b: Vec<u8>| String::from_utf8(b).unwrap();
    let ssh_cas: Vec<String> = c.ssh_ca_certs.into_iter().map(s).collect();
    identity(
        key,
        &s(c.ssh),
        s(c.tls),
        c.tls_ca_certs.into_iter().map(s).collect(),
        &ssh_cas,
    )
}

/// `bots add` (JSON) then the token join over `POST /webapi/host/credentials`.
fn join(cl: &DevCluster, bot: &str, logins: &str, key: &KeyPair) -> Identity {
    let o = cl.admin(&[
        "bots", "add", bot, "--logins", logins, "--roles", "access", "--format", "json",
    ]);
    assert!(o.status.success(), "bots add: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let token = v["token_id"].as_str().unwrap().to_string();
    let req = RegisterUsingTokenRequest {
        token,
        role: "Bot".into(),
        public_tls_key: b64(key.tls_public_pem().unwrap().as_bytes()),
        public_ssh_key: b64(key.ssh_authorized_key().unwrap().as_bytes()),
        ..Default::default()
    };
    let body = cl.data_dir().join(format!("join-{bot}.json"));
    std::fs::write(&body, serde_json::to_vec(&req).unwrap()).unwrap();
    let o = run(Command::new("curl")
        .args([
            "-sS",
            "--fail-with-body",
            "-H",
            "Content-Type: application/json",
            "--cacert",
        ])
        .arg(cl.data_dir().join("ca.pem"))
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .arg(format!("https://{}/webapi/host/credentials", cl.addr)));
    assert!(o.status.success(), "join: {} {}", stdout(&o), stderr(&o));
    let certs: CertsJson = serde_json::from_str(&stdout(&o)).unwrap();
    let (ssh, tls, tls_cas, ssh_cas) = certs.decode().unwrap();
    // Teleport's shape for a bot join: user CA then host CA, SSH CAs as bare public keys.
    assert_eq!(ssh_cas, [ca_key(cl, "user"), ca_key(cl, "host")]);
    assert_eq!(tls_cas, [ca_pem(cl, "user"), ca_pem(cl, "host")]);
    identity(key.clone(), &ssh, tls, tls_cas, &ssh_cas)
}

/// The dev cluster's CA public key (`ssh-ed25519 AAAA...` and a newline), from its CA folder.
fn ca_key(cl: &DevCluster, kind: &str) -> String {
    let line =
        std::fs::read_to_string(cl.data_dir().join(format!("ca/{kind}_ca_ssh.pub"))).unwrap();
    let mut f = line.split_whitespace();
    format!("{} {}\n", f.next().unwrap(), f.next().unwrap())
}

fn ca_pem(cl: &DevCluster, kind: &str) -> String {
    std::fs::read_to_string(cl.data_dir().join(format!("ca/{kind}_ca_tls.crt"))).unwrap()
}

fn request(user: &str, key: &KeyPair) -> UserCertsRequest {
    UserCertsRequest {
        username: user.into(),
        expires: Some(Timestamp::from_system_time(
            SystemTime::now() + Duration::from_secs(1800),
        )),
        ssh_public_key: key.ssh_authorized_key().unwrap().into_bytes(),
        tls_public_key: key.tls_public_pem().unwrap().into_bytes(),
        ..Default::default()
    }
}

#[test]
fn renew_impersonate_and_lock_on_generation_mismatch() {
    let cl = DevCluster::start("grpc.test", 0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let k1 = KeyPair::generate(KeyType::EcdsaP256).unwrap();
    let id1 = join(&cl, "ci", &format!("{},alice", me()), &k1);
    let t1 = id1.tls_identity().unwrap();
    assert_eq!(
        (t1.username.as_str(), t1.generation, t1.renewable),
        ("bot-ci", 1, true)
    );

    // Renewal with a fresh key: generation 1 -> 2, same instance, still renewable.
    let k2 = KeyPair::generate(KeyType::Ed25519).unwrap();
    let certs = rt
        .block_on(generate_user_certs(
            &Route::direct(&cl.addr).unwrap(),
            &id1,
            request("bot-ci", &k2),
        ))
        .unwrap_or_else(|e| panic!("renewal: {e:#}"));
    let renewal_cas = (certs.ssh_ca_certs.clone(), certs.tls_ca_certs.clone());
    let id2 = from_certs(k2, certs);
    let t2 = id2.tls_identity().unwrap();
    let bytes = |v: Vec<String>| v.into_iter().map(String::into_bytes).collect::<Vec<_>>();
    assert_eq!(
        renewal_cas,
        (
            bytes(vec![ca_key(&cl, "user"), ca_key(&cl, "host")]),
            bytes(vec![ca_pem(&cl, "user"), ca_pem(&cl, "host")])
        )
    );
    assert_eq!(
        (t2.username.as_str(), t2.generation, t2.renewable),
        ("bot-ci", 2, true)
    );
    assert_eq!(t2.bot_instance_id, t1.bot_instance_id);
    assert_eq!(t2.groups, vec!["bot-ci".to_string()]);
    let left = id2
        .expires()
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        left <= Duration::from_secs(1800) && left > Duration::from_secs(1700),
        "{left:?}"
    );

    // Impersonation from the renewed identity: the bot's logins as SSH principals.
    let k3 = KeyPair::generate(KeyType::Rsa2048).unwrap();
    let mut req = request("bot-ci", &k3);
    req.use_role_requests = true;
    req.route_to_cluster = "grpc.test".into();
    // No roles: Teleport's refusal, word for word (never "all roles").
    let err = rt
        .block_on(generate_user_certs(
            &Route::direct(&cl.addr).unwrap(),
            &id2,
            req.clone(),
        ))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "auth refused the impersonated certificate request: at least one role request is required"
    );
    req.role_requests = vec!["access".into()];
    let certs = rt
        .block_on(generate_user_certs(
            &Route::direct(&cl.addr).unwrap(),
            &id2,
            req.clone(),
        ))
        .unwrap_or_else(|e| panic!("impersonation: {e:#}"));
    // Impersonated certificates carry the user CA only.
    assert_eq!(certs.ssh_ca_certs, bytes(vec![ca_key(&cl, "user")]));
    assert_eq!(certs.tls_ca_certs, bytes(vec![ca_pem(&cl, "user")]));
    let out = from_certs(k3.clone(), certs);
    assert_eq!(
        out.ssh_cert.valid_principals(),
        [
            me(),
            "alice".to_string(),
            "-teleport-internal-join".to_string()
        ]
    );
    let t3 = out.tls_identity().unwrap();
    assert_eq!(t3.groups, vec!["access".to_string()]);
    assert_eq!(t3.impersonator, "bot-ci");
    assert!(!t3.renewable && t3.disallow_reissue);

    // A role the bot may not impersonate: a one-line refusal with auth's message.
    req.role_requests = vec!["editor".into()];
    let err = rt
        .block_on(generate_user_certs(
            &Route::direct(&cl.addr).unwrap(),
            &id2,
            req,
        ))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("auth refused the impersonated certificate request: "),
        "{err}"
    );
    assert!(
        err.ends_with(r#"user "bot-ci" has requested role impersonation for ["editor"]"#)
            && !err.contains('\n'),
        "{err}"
    );

    // The stale generation-1 identity renews again: refused, and the bot is locked.
    let k4 = KeyPair::generate(KeyType::EcdsaP256).unwrap();
    let err = rt
        .block_on(generate_user_certs(
            &Route::direct(&cl.addr).unwrap(),
            &id1,
            request("bot-ci", &k4),
        ))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("auth refused the renewal: "), "{err}");
    assert!(err.contains("generation mismatch"), "{err}");
    let o = cl.admin(&["bots", "ls"]);
    let ls = stdout(&o);
    assert!(
        ls.lines().any(|l| l.starts_with("ci ")
            && l.contains("locked: renewable certificate generation mismatch")),
        "{ls}"
    );

    // Locked: the current identity is refused too.
    let err = rt
        .block_on(generate_user_certs(
            &Route::direct(&cl.addr).unwrap(),
            &id2,
            request("bot-ci", &k4),
        ))
        .unwrap_err()
        .to_string();
    assert!(err.contains("user bot-ci is locked"), "{err}");

    // A wrong proxy address is named in the error.
    let port = idmux_devcluster::node::free_port().unwrap();
    let bad = format!("127.0.0.1:{port}");
    let err = rt
        .block_on(generate_user_certs(
            &Route::direct(&bad).unwrap(),
            &id2,
            request("bot-ci", &k4),
        ))
        .unwrap_err()
        .to_string();
    assert!(err.contains(&bad), "{err}");
}
