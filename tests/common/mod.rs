//! Shared helpers for the end-to-end tests: temp dirs, running commands, the current user.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use idmux::ca::{ClusterCas, UserCertFields};
use idmux::identity::{Identity, KeyPair, KeyType};

pub fn idmux_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_idmux"))
}

/// The user the tests run as (sshd can only log in as this user unless we are root).
pub fn me() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap()
        .name
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Issue an identity for a bot with the given logins and roles.
pub fn issue(
    cas: &ClusterCas,
    kind: KeyType,
    logins: &[String],
    roles: &[String],
    ttl: Duration,
) -> Identity {
    let key = KeyPair::generate(kind).unwrap();
    let traits = Default::default();
    cas.issue_identity(
        &key,
        &UserCertFields {
            username: "bot-test",
            logins,
            roles,
            traits: &traits,
            route_to_cluster: &cas.cluster,
            renewable: false,
            generation: 0,
            bot_name: "test",
            bot_instance_id: "",
            impersonator: "bot-test",
            disallow_reissue: true,
            ttl,
        },
    )
    .unwrap()
}

/// Write a destination dir for `id` (identity artifacts + CA files), as the bot would.
pub fn write_destination(dir: &Path, cas: &ClusterCas, id: &Identity) {
    id.write_destination_files(dir).unwrap();
    idmux::identity::files::write_ca_files(
        dir,
        std::slice::from_ref(&cas.host.tls_cert_pem),
        std::slice::from_ref(&cas.user.tls_cert_pem),
        std::slice::from_ref(&cas.db.tls_cert_pem),
    )
    .unwrap();
}

/// `ssh -G` for a destination, parsed into (key, value) lines.
pub fn ssh_g(config: &Path, dest: &str) -> Vec<(String, String)> {
    let o = run(Command::new("ssh")
        .arg("-G")
        .arg("-F")
        .arg(config)
        .arg(dest));
    assert!(o.status.success(), "ssh -G failed: {}", stderr(&o));
    stdout(&o)
        .lines()
        .filter_map(|l| {
            l.split_once(' ')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

pub fn get<'a>(g: &'a [(String, String)], key: &str) -> Option<&'a str> {
    g.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}
