//! ssh_config and known_hosts for OpenSSH (PROTOCOL.md section 8).
//!
//! Renders the files tbot writes into a destination dir: `ssh_config` and `known_hosts`, and per
//! cluster the includable `<cluster>.ssh_config` and `<cluster>.known_hosts`. Two ProxyCommand
//! modes: `stdio` (`idmux ssh-proxy-command`, one TLS + SSH handshake per connection) and
//! `fdpass` (`idmux-fdpass` hands ssh a ready socket from the multiplexer's `v1.sock`).
//! Templates are the plain files in `ssh/`, compiled in. Rendering is pure; [`write_files`]
//! does the I/O.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::files::{key_text, HostCa};
use crate::fsutil::{FileSet, PUBLIC};

const MAIN_TMPL: &str = include_str!("../../ssh/ssh_config.tmpl");
const STDIO_TMPL: &str = include_str!("../../ssh/ssh_config_stdio.tmpl");
const FDPASS_TMPL: &str = include_str!("../../ssh/ssh_config_fdpass.tmpl");
const BARE_TMPL: &str = include_str!("../../ssh/ssh_config_bare.tmpl");
const CLUSTER_TMPL: &str = include_str!("../../ssh/cluster.ssh_config.tmpl");

/// How ssh reaches the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `idmux-fdpass` + the multiplexer daemon's `v1.sock` (`ProxyUseFdpass yes`).
    Fdpass,
    /// `idmux ssh-proxy-command`: a plain stdio ProxyCommand, no daemon needed.
    Stdio,
}

/// Everything the ssh_config depends on.
#[derive(Clone, Debug)]
pub struct SshConfigParams {
    /// Absolute destination dir.
    pub dir: PathBuf,
    /// Proxy host (no port) and port.
    pub proxy_host: String,
    pub proxy_port: u16,
    /// The identity's own cluster; bare node names route here.
    pub cluster: String,
    /// Every cluster to write a block for (the own cluster first, then leaf clusters).
    pub clusters: Vec<String>,
    pub mode: Mode,
    /// Absolute path of the `idmux` binary (stdio mode).
    pub idmux_exe: PathBuf,
    /// The fdpass ProxyCommand's argv prefix (fdpass mode): the `idmux-fdpass` binary's
    /// absolute path, or a multiplexer's `proxy_command` (e.g. tbot's `fdpass-teleport`); the
    /// socket and the target are appended.
    pub fdpass_command: Vec<String>,
    /// Also route bare one-label names (`ssh node-1`) to `cluster` and trust the cluster's
    /// host CA for them: a catch-all `Host` block and `@cert-authority` line that tbot does not
    /// write (`--bare-names`; off by default).
    pub bare_names: bool,
    /// The way to the proxy when the file was written, as tbot bakes it into the stdio
    /// ProxyCommand (`--tls-routing`/`--no-tls-routing`, `--connection-upgrade`/
    /// `--no-connection-upgrade`; `proxy_host:proxy_port` is then the SSH proxy address
    /// without TLS routing, tbot's `ProxySSHAddr`).
    pub way: ProxyWay,
}

/// What the stdio ProxyCommand is told about the way to the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyWay {
    pub tls_routing: bool,
    pub connection_upgrade: bool,
}

impl Default for ProxyWay {
    fn default() -> Self {
        ProxyWay {
            tls_routing: true,
            connection_upgrade: false,
        }
    }
}

/// `--name` or `--no-name`.
fn switch(on: bool, name: &str) -> String {
    if on {
        format!("--{name}")
    } else {
        format!("--no-{name}")
    }
}

/// Quote one ProxyCommand argument as tbot does (`proxyCommandQuote`): single quotes, `'` as
/// `'"'"'`, `%` doubled (ssh expands `%` tokens), newline as `'"\n"'`.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::from("'");
    for c in s.chars() {
        match c {
            '\'' => out.push_str("'\"'\"'"),
            '%' => out.push_str("%%"),
            '\n' => out.push_str("'\"\n\"'"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A path for an ssh_config value: `%` doubled so ssh's token expansion leaves it as it is.
fn path_value(p: &Path) -> String {
    p.display().to_string().replace('%', "%%")
}

fn render(tmpl: &str, vars: &[(&str, &str)]) -> String {
    let mut s = tmpl.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("{{{{{k}}}}}"), v);
    }
    s.lines()
        .filter(|l| l.trim() != DROP)
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Placeholder value that removes its line.
const DROP: &str = "@@drop@@";

impl SshConfigParams {
    pub(crate) fn proxy_addr(&self) -> String {
        format!("{}:{}", self.proxy_host, self.proxy_port)
    }

    /// The ProxyCommand line for a cluster.
    pub(crate) fn proxy_command(&self, cluster: &str) -> String {
        match self.mode {
            Mode::Fdpass => {
                // %h and %p are ssh tokens; only the cluster is literal (quoted, % doubled).
                let q = quote(cluster);
                let argv: Vec<String> = self.fdpass_command.iter().map(|a| quote(a)).collect();
                format!(
                    "{} {} '%h:%p|{}'",
                    argv.join(" "),
                    quote(&self.dir.join("v1.sock").display().to_string()),
                    &q[1..q.len() - 1],
                )
            }
            // tbot's line (lib/config/openssh/openssh.go), `--resume` included (accepted and
            // ignored: a plain SSH stream is what resumption falls back to).
            Mode::Stdio => format!(
                "{} ssh-proxy-command --destination-dir={} --proxy-server={} --cluster={} {} {} --resume --user=%r --host=%h --port=%p",
                quote(&self.idmux_exe.display().to_string()),
                quote(&self.dir.display().to_string()),
                quote(&self.proxy_addr()),
                quote(cluster),
                switch(self.way.tls_routing, "tls-routing"),
                switch(self.way.connection_upgrade, "connection-upgrade"),
            ),
        }
    }

    /// The main `ssh_config`.
    pub(crate) fn render_ssh_config(&self) -> String {
        let dir = path_value(&self.dir);
        let mut blocks = String::new();
        for c in &self.clusters {
            let tmpl = match self.mode {
                Mode::Stdio => STDIO_TMPL,
                Mode::Fdpass => FDPASS_TMPL,
            };
            let pc = self.proxy_command(c);
            blocks.push_str(&render(
                tmpl,
                &[
                    ("cluster", c),
                    ("proxy_host", &self.proxy_host),
                    ("dir", &dir),
                    ("proxy_command", &pc),
                ],
            ));
        }
        let (identity, fdpass, known_hosts) = match self.mode {
            Mode::Stdio => (
                format!(
                    "    IdentityFile \"{dir}/key\"\n    CertificateFile \"{dir}/key-cert.pub\""
                ),
                DROP.to_string(),
                format!("\"{dir}/known_hosts\""),
            ),
            Mode::Fdpass => (
                format!("    IdentityFile none\n    IdentityAgent '{dir}/agent.sock'"),
                "    ProxyUseFDPass yes".to_string(),
                format!("'{dir}/known_hosts'"),
            ),
        };
        let pc = self.proxy_command(&self.cluster);
        if self.bare_names {
            blocks.push_str(&render(
                BARE_TMPL,
                &[
                    ("cluster", &self.cluster),
                    ("known_hosts", &known_hosts),
                    ("identity", &identity),
                    ("fdpass", &fdpass),
                    ("proxy_command", &pc),
                ],
            ));
        }
        render(
            MAIN_TMPL,
            &[
                ("proxy_host", &self.proxy_host),
                ("blocks", blocks.trim_end()),
            ],
        )
    }

    /// The includable `<cluster>.ssh_config` (no Host line; always a stdio ProxyCommand with
    /// the key files, like tbot's).
    pub(crate) fn render_cluster_ssh_config(&self, cluster: &str) -> String {
        let stdio = SshConfigParams {
            mode: Mode::Stdio,
            ..self.clone()
        };
        render(
            CLUSTER_TMPL,
            &[
                ("cluster", cluster),
                ("proxy_addr", &self.proxy_addr()),
                ("dir", &path_value(&self.dir)),
                ("proxy_command", &stdio.proxy_command(cluster)),
            ],
        )
    }
}

/// The main `known_hosts`, as tbot's `GenerateKnownHosts`: one
/// `@cert-authority <proxy>,<cluster>,*.<cluster>` line per host CA key of every cluster. With
/// `bare_names`, one more line per key of the own cluster for bare (one-label) node names.
pub fn render_known_hosts(
    proxy_host: &str,
    own_cluster: &str,
    cas: &[HostCa],
    bare_names: bool,
) -> Result<String> {
    let mut out = String::new();
    for ca in cas {
        let c = &ca.cluster;
        if c.is_empty() {
            bail!("a host CA names no cluster");
        }
        let key = key_text(&ca.key)?;
        out.push_str(&format!(
            "@cert-authority {proxy_host},{c},*.{c} {key} type=host\n"
        ));
        if bare_names && c == own_cluster {
            // A negated pattern rejects the whole line, so bare names get a line of their own.
            out.push_str(&format!(
                "@cert-authority {BARE_PATTERNS} {key} type=host\n"
            ));
        }
    }
    Ok(out)
}

/// known_hosts patterns for bare node names (one label), matching the ssh_config's bare-name
/// Host block: names with a dot, IPv6 addresses and localhost are not covered.
const BARE_PATTERNS: &str = "*,!*.*,!*:*,!localhost";

/// The per-cluster `<cluster>.known_hosts`.
pub(crate) fn render_cluster_known_hosts(cluster: &str, cas: &[HostCa]) -> Result<String> {
    let mut out = format!("# Cluster specific known_hosts generated for cluster '{cluster}'\n");
    for ca in cas.iter().filter(|c| c.cluster == cluster) {
        out.push_str(&format!(
            "@cert-authority * {} type=host\n",
            key_text(&ca.key)?
        ));
    }
    Ok(out)
}

/// Write `ssh_config`, `known_hosts` and the per-cluster files into the destination dir.
pub fn write_files(p: &SshConfigParams, cas: &[HostCa]) -> Result<()> {
    let mut set = FileSet::new(&p.dir);
    add_ssh_files(&mut set, p, cas, true)?;
    set.commit().map(|_| ())
}

/// A multiplexer's dir as tbot writes it: `known_hosts` and `ssh_config` only.
pub fn write_mux_files(p: &SshConfigParams, cas: &[HostCa]) -> Result<()> {
    let mut set = FileSet::new(&p.dir);
    add_ssh_files(&mut set, p, cas, false)?;
    set.commit().map(|_| ())
}

/// Add `known_hosts`, the per-cluster files when asked, then `ssh_config` (last: it names the
/// others) to `set`.
pub fn add_ssh_files(
    set: &mut FileSet,
    p: &SshConfigParams,
    cas: &[HostCa],
    per_cluster: bool,
) -> Result<()> {
    set.add(
        "known_hosts",
        render_known_hosts(&p.proxy_host, &p.cluster, cas, p.bare_names)?,
        PUBLIC,
    );
    for c in p.clusters.iter().filter(|_| per_cluster) {
        set.add(
            &format!("{c}.known_hosts"),
            render_cluster_known_hosts(c, cas)?,
            PUBLIC,
        )
        .add(
            &format!("{c}.ssh_config"),
            p.render_cluster_ssh_config(c),
            PUBLIC,
        );
    }
    set.add("ssh_config", p.render_ssh_config(), PUBLIC);
    Ok(())
}

/// The clusters of a set of host CAs, `own` first, without repeats.
pub(crate) fn clusters_of(own: &str, cas: &[HostCa]) -> Vec<String> {
    let mut out = vec![own.to_string()];
    for ca in cas {
        if !ca.cluster.is_empty() && !out.contains(&ca.cluster) {
            out.push(ca.cluster.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_matches_tbot() {
        assert_eq!(quote("/opt/machine-id"), "'/opt/machine-id'");
        assert_eq!(quote("/a b/it's"), "'/a b/it'\"'\"'s'");
        assert_eq!(quote("/x%y"), "'/x%%y'");
    }

    #[test]
    fn fdpass_proxy_command_shape() {
        let p = SshConfigParams {
            dir: "/opt/machine-id".into(),
            proxy_host: "proxy.example.com".into(),
            proxy_port: 443,
            cluster: "example.com".into(),
            clusters: vec!["example.com".into()],
            mode: Mode::Fdpass,
            idmux_exe: "/usr/bin/idmux".into(),
            fdpass_command: vec!["/usr/bin/idmux-fdpass".into()],
            bare_names: false,
            way: ProxyWay::default(),
        };
        assert_eq!(
            p.proxy_command("example.com"),
            "'/usr/bin/idmux-fdpass' '/opt/machine-id/v1.sock' '%h:%p|example.com'"
        );
        let stdio = SshConfigParams {
            mode: Mode::Stdio,
            ..p
        };
        assert_eq!(
            stdio.proxy_command("example.com"),
            "'/usr/bin/idmux' ssh-proxy-command --destination-dir='/opt/machine-id' \
             --proxy-server='proxy.example.com:443' --cluster='example.com' --tls-routing \
             --no-connection-upgrade --resume --user=%r --host=%h --port=%p"
        );
        // tbot's golden file for a proxy without TLS routing
        // (lib/tbot/services/identity/testdata/Test_renderSSHConfig/no_tls_routing,_alpn_upgrade).
        let separate = SshConfigParams {
            proxy_port: 3023,
            way: ProxyWay {
                tls_routing: false,
                connection_upgrade: false,
            },
            ..stdio
        };
        assert_eq!(
            separate.proxy_command("example.com"),
            "'/usr/bin/idmux' ssh-proxy-command --destination-dir='/opt/machine-id' \
             --proxy-server='proxy.example.com:3023' --cluster='example.com' --no-tls-routing \
             --no-connection-upgrade --resume --user=%r --host=%h --port=%p"
        );
    }
}
