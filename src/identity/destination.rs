//! What tbot writes into a destination dir ([`Files`]):
//!
//! - an identity output: `identity`, `key`, `key.pub`, `key-cert.pub`, `tlscert`, the three CA
//!   files, then (with `ssh_config: on`) `known_hosts`, `ssh_config` and the per-cluster files;
//! - a multiplexer keeping its identity in memory: `known_hosts` and `ssh_config` only.
//!
//! A dir's files are written as one set ([`FileSet`]). The clusters (own first, then leaf clusters) are those of
//! the identity's host CAs.

use std::path::Path;

use anyhow::Result;

use crate::files::add_ca_files;
use crate::fsutil::FileSet;
use crate::openssh::{self, Mode, ProxyWay, SshConfigParams};
use crate::Identity;

/// The TLS CA certs (PEM) a destination dir gets, per CA.
#[derive(Clone, Debug)]
pub struct CaPems {
    pub host: Vec<String>,
    pub user: Vec<String>,
    pub db: Vec<String>,
}

/// The ssh_config parameters for a destination dir holding `id`. `cluster` overrides the
/// identity's own cluster (bare names route there). `proxy` is tbot's `ProxySSHAddr`: the web
/// address with TLS routing, the SSH proxy address without (`way`).
pub fn ssh_config_params(
    dir: &Path,
    id: &Identity,
    proxy: &str,
    way: ProxyWay,
    mode: Mode,
    cluster: Option<String>,
    bare_names: bool,
) -> Result<SshConfigParams> {
    let dir = crate::paths::absolute(dir)?;
    let (proxy_host, proxy_port) = idmux_wire::hostport::split_host_port(proxy, "--proxy-server")?;
    let own = id.cluster_or(cluster, &dir.join("identity"))?;
    let (idmux_exe, fdpass_exe) = crate::paths::exe_paths()?;
    let fdpass_command = vec![fdpass_exe.display().to_string()];
    Ok(SshConfigParams {
        clusters: openssh::clusters_of(&own, &id.host_cas),
        dir,
        proxy_host,
        proxy_port,
        cluster: own,
        mode,
        idmux_exe,
        fdpass_command,
        bare_names,
        way,
    })
}

/// The files of an identity output (tbot's artifacts and `Describe`), besides [`SSH_FILES`].
pub const IDENTITY_FILES: [&str; 8] = [
    "identity",
    "key",
    "key.pub",
    "key-cert.pub",
    "tlscert",
    "teleport-host-ca.crt",
    "teleport-user-ca.crt",
    "teleport-database-ca.crt",
];
/// What ssh reads: written by an identity output with `ssh_config: on`, and by a multiplexer.
pub const SSH_FILES: [&str; 2] = ["known_hosts", "ssh_config"];
/// A multiplexer's sockets.
pub const MUX_SOCKETS: [&str; 2] = ["v1.sock", "agent.sock"];

/// Is `name` a file idmux writes into a destination dir (the identity files, the CA files,
/// ssh_config and known_hosts, per cluster too, and the multiplexer's sockets)?
/// `idmux init --clean` removes everything else.
pub fn is_output_name(name: &str) -> bool {
    IDENTITY_FILES
        .iter()
        .chain(&SSH_FILES)
        .chain(&MUX_SOCKETS)
        .any(|f| *f == name)
        || name
            .strip_suffix(".known_hosts")
            .or_else(|| name.strip_suffix(".ssh_config"))
            .is_some_and(|cluster| !cluster.is_empty() && !cluster.starts_with('.'))
}

/// The mode idmux writes the destination file `name` with: the private key and the identity
/// file 0600, sockets 0600, the rest (certificates, CAs, ssh_config, known_hosts) 0644.
pub fn output_mode(name: &str) -> u32 {
    match name {
        "identity" | "key" | "v1.sock" | "agent.sock" => crate::fsutil::PRIVATE,
        _ => crate::fsutil::PUBLIC,
    }
}

/// Which files a destination dir gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Files {
    /// An identity output; `ssh_config: false` leaves out ssh_config and known_hosts.
    Identity { ssh_config: bool },
    /// A multiplexer's dir: ssh_config and known_hosts only (the key is in memory, served on
    /// agent.sock).
    Multiplexer,
}

/// How one destination dir is written.
pub struct Plan<'a> {
    pub proxy: &'a str,
    pub way: ProxyWay,
    pub mode: Mode,
    pub bare_names: bool,
    pub files: Files,
    /// The fdpass ProxyCommand's argv prefix; empty = `idmux-fdpass`.
    pub fdpass_command: &'a [String],
}

/// Write a destination dir for `id`.
pub fn write_destination(dir: &Path, id: &Identity, cas: &CaPems, plan: &Plan) -> Result<()> {
    let mut params = ssh_config_params(
        dir,
        id,
        plan.proxy,
        plan.way,
        plan.mode,
        None,
        plan.bare_names,
    )?;
    if !plan.fdpass_command.is_empty() {
        params.fdpass_command = plan.fdpass_command.to_vec();
    }
    // The whole dir is one set: ssh never finds a key beside another renewal's certificate
    // after a crash, nor a known_hosts from before a CA rotation beside the new certificates.
    crate::fsutil::ensure_private_dir(&params.dir)?;
    let mut set = FileSet::new(&params.dir);
    match plan.files {
        Files::Identity { ssh_config } => {
            id.add_destination_files(&mut set)?;
            add_ca_files(&mut set, &cas.host, &cas.user, &cas.db);
            if ssh_config {
                openssh::add_ssh_files(&mut set, &params, &id.host_cas, true)?;
            }
        }
        Files::Multiplexer => openssh::add_ssh_files(&mut set, &params, &id.host_cas, false)?,
    }
    set.commit().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::is_output_name;

    #[test]
    fn output_names_and_others() {
        for n in [
            "identity",
            "key-cert.pub",
            "agent.sock",
            "leaf.test.known_hosts",
            "a.ssh_config",
        ] {
            assert!(is_output_name(n), "{n}");
        }
        for n in [
            "notes.txt",
            ".ssh_config",
            "key.bak",
            ".key.tmp-1-2",
            "lock",
        ] {
            assert!(!is_output_name(n), "{n}");
        }
    }
}
