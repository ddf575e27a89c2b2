//! Foundation (issue 2): identity formats, the CA, ssh_config and known_hosts, checked with
//! real OpenSSH (`ssh -G`, `ssh-keygen -L`, a real `sshd`) and `openssl`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use idmux_devcluster::ca::{ClusterCas, SshCertRequest};
use idmux_devcluster::node::SshdNode;
use idmux_identity::{Identity, KeyType};
use idmux_testkit::*;
use russh::keys::ssh_key::certificate::CertType;

const CLUSTER: &str = "dev.test";

fn setup(kind: KeyType) -> (tempfile::TempDir, ClusterCas, Identity) {
    let tmp = tempfile::tempdir().unwrap();
    let cas = ClusterCas::create(&tmp.path().join("ca"), CLUSTER).unwrap();
    let id = issue(
        &cas,
        kind,
        &[me(), "alice".into()],
        &["access".into(), "editor".into()],
        Duration::from_secs(3600),
    );
    write_destination(&tmp.path().join("dest"), &cas, &id);
    (tmp, cas, id)
}

fn ssh_config_cmd(dest: &Path, mode: &str) -> std::process::Output {
    ssh_config_with(dest, mode, &[])
}

fn ssh_config_with(dest: &Path, mode: &str, extra: &[&str]) -> std::process::Output {
    run(Command::new(idmux_bin())
        .arg("ssh-config")
        .arg("--destination-dir")
        .arg(dest)
        .arg("--proxy-server")
        .arg("127.0.0.1:3080")
        .arg("--mode")
        .arg(mode)
        .args(extra))
}

#[test]
fn ssh_g_routes_cluster_names_and_bare_names_only_when_asked() {
    let (tmp, _cas, _id) = setup(KeyType::EcdsaP256);
    let dest = tmp.path().join("dest");
    // By default, as tbot: no catch-all Host block, no catch-all known_hosts line.
    let o = ssh_config_cmd(&dest, "stdio");
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg = dest.join("ssh_config");
    assert_eq!(get(&ssh_g(&cfg, "root@node-1"), "proxycommand"), None);
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        !text.contains("Host *\n") && !text.contains("Host * "),
        "{text}"
    );
    let kh = std::fs::read_to_string(dest.join("known_hosts")).unwrap();
    assert!(
        kh.lines()
            .all(|l| l.starts_with(&format!("@cert-authority 127.0.0.1,{CLUSTER},*.{CLUSTER} "))),
        "{kh}"
    );
    // --bare-names adds them.
    let o = ssh_config_with(&dest, "stdio", &["--bare-names"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let kh = std::fs::read_to_string(dest.join("known_hosts")).unwrap();
    assert!(
        kh.contains("@cert-authority *,!*.*,!*:*,!localhost "),
        "{kh}"
    );
    let exe = idmux_bin();
    for target in [format!("root@node-1.{CLUSTER}"), "root@node-1".to_string()] {
        let g = ssh_g(&cfg, &target);
        let pc = get(&g, "proxycommand").unwrap_or_else(|| panic!("{target}: no ProxyCommand"));
        // ssh -G shows the line as configured: quoted, tokens unexpanded.
        let want = format!(
            "'{}' ssh-proxy-command --destination-dir='{}' --proxy-server='127.0.0.1:3080' --cluster='{CLUSTER}' --tls-routing --no-connection-upgrade --resume --user=%r --host=%h --port=%p",
            exe.display(),
            dest.display()
        );
        assert_eq!(pc, want, "{target}");
        assert_eq!(get(&g, "port"), Some("3022"), "{target}");
        assert_eq!(
            get(&g, "identityfile"),
            Some(dest.join("key").to_str().unwrap()),
            "{target}"
        );
        assert_eq!(
            get(&g, "certificatefile"),
            Some(dest.join("key-cert.pub").to_str().unwrap()),
            "{target}"
        );
        assert_eq!(
            get(&g, "userknownhostsfile"),
            Some(dest.join("known_hosts").to_str().unwrap()),
            "{target}"
        );
    }
    for other in ["git@github.com", "root@10.1.2.3", "root@localhost"] {
        let g = ssh_g(&cfg, other);
        assert_eq!(get(&g, "proxycommand"), None, "{other} must not be routed");
        assert_ne!(
            get(&g, "userknownhostsfile"),
            Some(dest.join("known_hosts").to_str().unwrap()),
            "{other}"
        );
    }
    // The includable per-cluster files exist.
    assert!(dest.join(format!("{CLUSTER}.ssh_config")).exists());
    let kh = std::fs::read_to_string(dest.join(format!("{CLUSTER}.known_hosts"))).unwrap();
    assert!(kh.contains("@cert-authority * ssh-ed25519 "), "{kh}");
}

#[test]
fn ssh_g_fdpass_mode() {
    let (tmp, _cas, _id) = setup(KeyType::EcdsaP256);
    let dest = tmp.path().join("dest");
    assert!(ssh_config_cmd(&dest, "fdpass").status.success());
    let g = ssh_g(&dest.join("ssh_config"), &format!("root@node-1.{CLUSTER}"));
    let fdpass = idmux_bin().with_file_name("idmux-fdpass");
    let want = format!(
        "'{}' '{}' '%h:%p|{CLUSTER}'",
        fdpass.display(),
        dest.join("v1.sock").display()
    );
    assert_eq!(get(&g, "proxycommand"), Some(want.as_str()));
    assert_eq!(get(&g, "proxyusefdpass"), Some("yes"));
    assert_eq!(
        get(&g, "identityagent"),
        Some(dest.join("agent.sock").to_str().unwrap())
    );
    assert_eq!(get(&g, "port"), Some("3022"));
    let g = ssh_g(&dest.join("ssh_config"), "git@github.com");
    assert_eq!(get(&g, "proxycommand"), None);
}

#[test]
fn certificates_read_by_openssh_and_openssl() {
    let (tmp, _cas, _id) = setup(KeyType::EcdsaP256);
    let dest = tmp.path().join("dest");
    let o = run(Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(dest.join("key-cert.pub")));
    assert!(o.status.success(), "{}", stderr(&o));
    let l = stdout(&o);
    for want in [
        "Type: ecdsa-sha2-nistp256-cert-v01@openssh.com user certificate",
        "Key ID: \"bot-test\"",
        "alice",
        "-teleport-internal-join",
        "permit-pty",
        "permit-port-forwarding",
        "teleport-roles",
        "teleport-route-to-cluster",
        "impersonator",
        "disallow-reissue",
    ] {
        assert!(l.contains(want), "ssh-keygen -L lacks {want:?}:\n{l}");
    }
    assert!(
        l.contains(&format!("                {}\n", me())),
        "principal {} missing:\n{l}",
        me()
    );
    let o = run(Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(dest.join("teleport-user-ca.crt"))
        .arg(dest.join("tlscert")));
    assert!(
        o.status.success(),
        "openssl verify: {}{}",
        stdout(&o),
        stderr(&o)
    );
    // A cert from another CA does not verify.
    let o = run(Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(dest.join("teleport-host-ca.crt"))
        .arg(dest.join("tlscert")));
    assert!(!o.status.success());
    let o = run(Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
        .arg(dest.join("tlscert")));
    let subj = stdout(&o);
    assert!(
        subj.contains("O=access") && subj.contains("O=editor"),
        "{subj}"
    );
    assert!(
        subj.contains("CN=bot-test") && subj.contains(&format!("L={}", me())),
        "{subj}"
    );
    let o = run(Command::new("openssl")
        .args(["x509", "-noout", "-issuer", "-in"])
        .arg(dest.join("tlscert")));
    assert!(
        stdout(&o).contains(&format!("O = {CLUSTER}")),
        "{}",
        stdout(&o)
    );
}

/// ssh through a plain TCP relay to the node, with the generated known_hosts.
fn ssh_node(cfg: &Path, node: &SshdNode, target: &str, extra: &[&str]) -> std::process::Output {
    // stderr goes to /dev/null so that a leftover reader never holds the test's pipe open.
    let relay = format!(
        "bash -c 'exec 2>/dev/null 3<>/dev/tcp/127.0.0.1/{}; cat <&3 & cat >&3; kill $!'",
        node.addr.port()
    );
    let proxy = format!("ProxyCommand={relay}");
    let mut args = vec!["-o", proxy.as_str()];
    args.extend_from_slice(extra);
    args.extend([target, "echo hello-from-$(hostname)"]);
    ssh(cfg, &args)
}

#[test]
fn real_sshd_accepts_issued_certs_and_refuses_bad_ones() {
    let (tmp, cas, id) = setup(KeyType::EcdsaP256);
    let dest = tmp.path().join("dest");
    assert!(ssh_config_with(&dest, "stdio", &["--bare-names"])
        .status
        .success());
    let cfg = dest.join("ssh_config");
    let node = SshdNode::start(
        &cas,
        &tmp.path().join("node-1"),
        "node-1",
        "8d1f3b6e-0000-4000-8000-000000000001",
    )
    .unwrap();

    for target in [
        format!("{}@node-1.{CLUSTER}", me()),
        format!("{}@node-1", me()),
    ] {
        let o = ssh_node(&cfg, &node, &target, &[]);
        assert!(o.status.success(), "{target}: {}", stderr(&o));
        assert!(stdout(&o).starts_with("hello-from-"), "{}", stdout(&o));
    }
    // The host cert is checked: a name outside its principals is refused.
    let o = ssh_node(&cfg, &node, &format!("{}@node-2.{CLUSTER}", me()), &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("Host key verification failed")
            || stderr(&o).contains("Certificate invalid"),
        "{}",
        stderr(&o)
    );

    // A login that is not among the principals.
    let o = ssh_node(&cfg, &node, &format!("nobody@node-1.{CLUSTER}"), &[]);
    assert!(!o.status.success(), "login outside principals was accepted");
    assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));

    // An expired cert, in a destination dir of its own (CertificateFile accumulates).
    let now = SystemTime::now();
    let expired = cas
        .user
        .sign_ssh(&SshCertRequest {
            public_key: id.key.ssh_public().unwrap(),
            cert_type: CertType::User,
            key_id: "bot-test".into(),
            principals: vec![me()],
            valid_after: now - Duration::from_secs(7200),
            valid_before: now - Duration::from_secs(3600),
            critical_options: BTreeMap::new(),
            extensions: [("permit-pty".to_string(), String::new())].into(),
        })
        .unwrap();
    let expired_id = Identity {
        ssh_cert: expired,
        ..id.clone()
    };
    let edir = tmp.path().join("expired");
    write_destination(&edir, &cas, &expired_id);
    assert!(ssh_config_cmd(&edir, "stdio").status.success());
    let o = ssh_node(
        &edir.join("ssh_config"),
        &node,
        &format!("{}@node-1.{CLUSTER}", me()),
        &[],
    );
    assert!(!o.status.success(), "expired cert accepted");
    assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));

    // A cert from another cluster's CA, with this cluster's known_hosts.
    let other = ClusterCas::create(&tmp.path().join("other-ca"), "other.test").unwrap();
    let foreign = issue(
        &other,
        KeyType::Ed25519,
        &[me()],
        &["access".into()],
        Duration::from_secs(3600),
    );
    let fdir = tmp.path().join("foreign");
    write_destination(
        &fdir,
        &cas,
        &Identity {
            host_cas: id.host_cas.clone(),
            tls_cas: id.tls_cas.clone(),
            ..foreign
        },
    );
    assert!(run(Command::new(idmux_bin())
        .args([
            "ssh-config",
            "--cluster",
            CLUSTER,
            "--proxy-server",
            "127.0.0.1:3080",
            "--destination-dir"
        ])
        .arg(&fdir))
    .status
    .success());
    let o = ssh_node(
        &fdir.join("ssh_config"),
        &node,
        &format!("{}@node-1.{CLUSTER}", me()),
        &[],
    );
    assert!(!o.status.success(), "foreign cert accepted");
    assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));
    let log = std::fs::read_to_string(node.dir.join("sshd.log")).unwrap();
    assert!(
        log.contains("expired")
            || log.contains("not yet valid")
            || log.contains("Certificate invalid"),
        "sshd log: {log}"
    );
}

#[test]
fn identity_file_round_trip_all_key_types() {
    for kind in [KeyType::Ed25519, KeyType::EcdsaP256, KeyType::Rsa2048] {
        let (tmp, _cas, id) = setup(kind);
        let text = std::fs::read_to_string(tmp.path().join("dest/identity")).unwrap();
        let back = Identity::parse_identity_file(&text).unwrap();
        assert_eq!(back.to_identity_file().unwrap(), text, "{kind:?}");
        assert_eq!(back.key.key_type(), kind);
        assert_eq!(back.cluster_name().unwrap(), CLUSTER);
        assert_eq!(back.ssh_cert, id.ssh_cert);
        // Order: key, SSH cert, TLS cert, @cert-authority, TLS CA.
        let key_at = text.find("PRIVATE KEY-----").unwrap();
        let ssh_at = text.find("-cert-v01@openssh.com ").unwrap();
        let tls_at = text.find("-----BEGIN CERTIFICATE-----").unwrap();
        let ca_at = text.find("@cert-authority ").unwrap();
        let tlsca_at = text.rfind("-----BEGIN CERTIFICATE-----").unwrap();
        assert!(
            key_at < ssh_at && ssh_at < tls_at && tls_at < ca_at && ca_at < tlsca_at,
            "{kind:?} order"
        );
        // The data dir round-trips too.
        let data = tmp.path().join("data");
        id.write_data_dir(&data, Some("tok")).unwrap();
        assert_eq!(
            Identity::read_data_dir(&data)
                .unwrap()
                .to_identity_file()
                .unwrap(),
            text
        );
        for (name, mode) in [("key", 0o600), ("tokenhash", 0o600), ("tlscert", 0o644)] {
            use std::os::unix::fs::PermissionsExt;
            let m = std::fs::metadata(data.join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(m, mode, "{name}");
        }
    }
}

#[test]
fn bad_identity_files_give_one_line_errors_and_write_nothing() {
    let (tmp, cas, id) = setup(KeyType::EcdsaP256);
    let dest = tmp.path().join("dest");
    let good = std::fs::read_to_string(dest.join("identity")).unwrap();
    let other = issue(
        &cas,
        KeyType::EcdsaP256,
        &[me()],
        &["access".into()],
        Duration::from_secs(60),
    );
    let swapped_key = good.replacen(&id.key.to_pem().unwrap(), &other.key.to_pem().unwrap(), 1);
    let dsa = "-----BEGIN DSA PRIVATE KEY-----\nMIIBuwIBAAKBgQ==\n-----END DSA PRIVATE KEY-----\n";
    let cases: Vec<(&str, String, &str)> = vec![
        ("truncated", good[..good.len() / 2].to_string(), "truncated"),
        (
            "garbled",
            good.replace("-cert-v01@openssh.com AAAA", "-cert-v01@openssh.com ZZZZ"),
            "SSH certificate",
        ),
        ("mismatched key", swapped_key, "does not match"),
        (
            "unknown key type",
            good.replacen(&id.key.to_pem().unwrap(), dsa, 1),
            "DSA PRIVATE KEY",
        ),
        ("empty", String::new(), "no private key"),
    ];
    for (what, text, want) in cases {
        let d = tmp.path().join(what.replace(' ', "-"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("identity"), &text).unwrap();
        let o = ssh_config_cmd(&d, "stdio");
        assert!(!o.status.success(), "{what}: accepted");
        let err = stderr(&o);
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{what}: not one line: {err}"
        );
        assert!(
            err.contains(&d.join("identity").display().to_string()),
            "{what}: file not named: {err}"
        );
        assert!(err.contains(want), "{what}: part not named ({want}): {err}");
        let left: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from("identity")],
            "{what}: wrote files"
        );
    }
}
