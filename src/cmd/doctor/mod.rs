//! `idmux doctor --destination-dir D`: checks what a person would check when `ssh -F
//! D/ssh_config` fails, and says what it found, one `ok`/`warn`/`fail` line per check:
//!
//! - `openssh`: the `ssh` client's version (`ssh -V`) has `ProxyUseFdpass` (6.5+) when the
//!   ssh_config uses it, and its `ssh -Q key-cert` / `ssh -Q key` lists hold the identity's
//!   certificate type and the host CA key types; an `ssh-rsa` (SHA-1) signed certificate is a
//!   warning (OpenSSH 8.2+ servers refuse it by default).
//! - `files`: every file of an identity output (tbot's list: identity, key, key.pub,
//!   key-cert.pub, tlscert, the three CA files, and ssh_config and known_hosts unless written
//!   with `ssh_config: off`) or of a multiplexer's dir (ssh_config, known_hosts, the sockets) is
//!   there; the key and identity files are owner-only, the folder and sockets are not open to
//!   other users.
//! - `commands`: every program the ssh_config's ProxyCommands run exists and is executable.
//! - `shell`: how long the shell ssh starts each ProxyCommand with (`$SHELL -c`) takes to
//!   start, with its stdin as ssh gives it (a socket for `ProxyUseFdpass`); a warning above
//!   25 ms, which every connection pays (bash reads `~/.bashrc` with a socket on stdin).
//! - `identity`: the identity file parses, its key matches its certificates, and `key` matches
//!   `key-cert.pub` (the pair OpenSSH reads).
//! - `certificate`: the time left (fail when expired or not yet valid, warn under a third of
//!   its lifetime: the bot renews well before that).
//! - `clock`: local time against the proxy's HTTP `Date` on `/webapi/ping`.
//! - `proxy`: a connection as the daemon makes it (`--transport auto|grpc|ssh`): TLS with the
//!   proxy's certificate verified against the cluster's CA in the identity, then gRPC's
//!   TransportService or the SSH server (host certificate checked, login with the identity).
//! - `daemon`: something answers on `v1.sock`, and `agent.sock` serves a valid certificate
//!   (fdpass ssh_config); not needed for a stdio ssh_config.
//! - `node` (with `--node host[:port]`): a dial through the daemon (or the proxy, for a stdio
//!   ssh_config) returns the node's SSH banner; a refusal shows the daemon's own error line.
//!
//! The exit status is non-zero when any check fails. Parsing (`ssh -V`, the ssh_config's proxy
//! address, the agent's answer) is pure and unit-tested; the checks themselves are tested end
//! to end against a dev cluster and a running bot.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;

use super::choices::TransportArg;

mod local;
mod remote;

use idmux_transport::route::RouteFlags;
use local::*;
// The parsers live in the client library, where the fuzz target `doctor` reaches them.
use idmux_client::doctor_parse as parse;
use parse::*;
use remote::*;

/// `idmux doctor`.
#[derive(Args, Debug)]
pub(crate) struct DoctorArgs {
    /// The destination dir to check (written by `idmux start` or tbot).
    #[arg(long)]
    pub destination_dir: PathBuf,
    /// The proxy, host:port (default: the address in the destination's ssh_config).
    #[arg(long)]
    pub proxy_server: Option<String>,
    /// Dial this node and read its SSH banner: host[:port] (port 3022 by default).
    #[arg(long)]
    pub node: Option<String>,
    /// The transport to check the proxy with (as `idmux start --transport`).
    #[arg(long, value_enum, default_value_t = TransportArg::Auto)]
    pub transport: TransportArg,
    /// CA certificates (PEM) for the proxy's (or its load balancer's) web certificate
    /// (default: the cluster's host CA file in the destination, then the system roots).
    #[arg(long)]
    pub ca_path: Option<PathBuf>,
    /// As `ssh-proxy-command`: the way to the proxy (default: as the ssh_config's
    /// ProxyCommand says, else as ping and the upgrade test find).
    #[arg(long, overrides_with = "no_tls_routing")]
    pub tls_routing: bool,
    #[arg(long)]
    pub no_tls_routing: bool,
    #[arg(long, overrides_with = "no_connection_upgrade")]
    pub connection_upgrade: bool,
    #[arg(long)]
    pub no_connection_upgrade: bool,
}

/// The verdict of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug)]
pub(crate) struct Check {
    pub status: Status,
    pub name: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<4} {}: {}",
            self.status.word(),
            self.name,
            self.detail
        )
    }
}

fn check(status: Status, name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        status,
        name,
        detail: detail.into(),
    }
}

/// How long `writes` waits before looking again at a journal or temp file it found: a running
/// bot's write leaves them for milliseconds.
const WRITE_SETTLE: std::time::Duration = std::time::Duration::from_millis(1500);

/// Run every check; the lines in order.
pub(crate) async fn checks(a: &DoctorArgs) -> Vec<Check> {
    let dir =
        idmux_identity::paths::absolute(&a.destination_dir).unwrap_or(a.destination_dir.clone());
    let mut out = Vec::new();
    let cfg = std::fs::read_to_string(dir.join("ssh_config")).unwrap_or_default();
    let fdpass = uses_fdpass(&cfg);
    let mux_dir = is_multiplexer_dir(&dir, fdpass);
    let (idc, id, cert) = if mux_dir {
        let c = check(
            Status::Ok,
            "identity",
            "kept in memory by the multiplexer (checked on agent.sock below)",
        );
        (c, None, None)
    } else {
        check_identity(&dir)
    };
    out.push(check_openssh(id.as_ref(), fdpass));
    out.push(check_files(&dir, fdpass));
    out.push(check_writes(&dir, WRITE_SETTLE).await);
    if !cfg.is_empty() {
        out.push(check_commands(&cfg));
        out.push(check_shell(&proxy_command_shell(), fdpass, SLOW_SHELL));
    }
    out.push(idc);
    if let (Some(id), Some(cert)) = (&id, &cert) {
        out.push(check_certificate(id, cert));
    }
    let proxy = a.proxy_server.clone().or_else(|| {
        let mut texts = vec![cfg.clone()];
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().ends_with(".ssh_config") {
                    texts.push(std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        texts.iter().find_map(|t| proxy_from_ssh_config(t))
    });
    let mut route = None;
    match &proxy {
        None => out.push(check(
            Status::Warn,
            "proxy",
            "not checked: no proxy address in the ssh_config; pass --proxy-server host:port",
        )),
        Some(p) => {
            // The ssh_config's way belongs to the ssh_config's address only.
            let from_cfg = if a.proxy_server.is_some() {
                RouteFlags::default()
            } else {
                route_flags_from_ssh_config(&cfg)
            };
            let pair = crate::cmd::start::pair;
            let flags = RouteFlags {
                tls_routing: pair(a.tls_routing, a.no_tls_routing).or(from_cfg.tls_routing),
                upgrade: pair(a.connection_upgrade, a.no_connection_upgrade).or(from_cfg.upgrade),
            };
            let (r, path, ping) = find_route(p, &dir, a.ca_path.as_deref(), flags).await;
            route = r;
            out.push(path);
            out.push(check_clock(p, ping.as_ref()));
            match (&id, &route) {
                (Some(id), Some(r)) => out.push(check_proxy(r, id, a.transport.into()).await),
                (Some(_), None) => out.push(check(
                    Status::Fail,
                    "proxy",
                    "not checked: no way to the proxy (see path)",
                )),
                (None, _) if mux_dir => out.push(check(
                    Status::Ok,
                    "proxy",
                    "not checked here: the multiplexer holds this dir's identity (the daemon check dials through it)",
                )),
                (None, _) => out.push(check(
                    Status::Fail,
                    "proxy",
                    "not checked: no usable identity",
                )),
            }
        }
    }
    out.push(check_daemon(&dir, fdpass));
    let unreachable = out
        .iter()
        .any(|c| c.status == Status::Fail && matches!(c.name, "path" | "proxy"));
    if a.node.is_some() && unreachable {
        // A second wait on a proxy that already did not answer tells nothing new.
        out.push(check(
            Status::Warn,
            "node",
            "not checked: the proxy did not answer (see path and proxy)",
        ));
    } else if let Some(n) = &a.node {
        out.push(
            check_node(
                n,
                &dir,
                fdpass,
                route.as_ref(),
                id.as_ref(),
                a.transport.into(),
            )
            .await,
        );
    }
    out
}

/// `idmux doctor`: print the lines and a summary; an error (exit status 1) if any failed.
pub fn run(a: DoctorArgs) -> Result<()> {
    let t0 = Instant::now();
    let rt = crate::cmd::runtime::build(crate::cmd::runtime::Kind::OneShot)?;
    let lines = rt.block_on(checks(&a));
    let mut n = [0usize; 3];
    for c in &lines {
        println!("{c}");
        n[c.status as usize] += 1;
    }
    println!(
        "doctor: {} ok, {} warn, {} fail ({} ms)",
        n[0],
        n[1],
        n[2],
        t0.elapsed().as_millis()
    );
    let _ = std::io::stdout().flush();
    if n[2] > 0 {
        bail!("{} check(s) failed", n[2]);
    }
    Ok(())
}
