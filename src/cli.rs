//! The `idmux` command line: flag parsing and dispatch only; the work is in the modules.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::identity::Identity;
use crate::openssh::{self, Mode, SshConfigParams};

#[derive(Parser)]
#[command(name = "idmux", version, about = "Teleport Machine ID for OpenSSH")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Regenerate ssh_config and known_hosts from the identity file in a destination dir.
    SshConfig(SshConfigArgs),
    /// The development cluster (proxy + auth + sshd nodes) and its admin commands.
    #[command(subcommand)]
    Cluster(crate::cluster::cmd::ClusterCmd),
}

#[derive(clap::Args)]
struct SshConfigArgs {
    /// The destination dir holding `identity` (written by idmux or tbot).
    #[arg(long)]
    destination_dir: PathBuf,
    /// The proxy's public address, host:port.
    #[arg(long)]
    proxy_server: String,
    /// The cluster whose nodes bare names route to (default: the identity's cluster).
    #[arg(long)]
    cluster: Option<String>,
    /// How ssh reaches the proxy.
    #[arg(long, value_enum, default_value = "stdio")]
    mode: Mode,
}

/// Entry point of the `idmux` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("idmux: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::SshConfig(a) => ssh_config(a),
        Cmd::Cluster(c) => crate::cluster::cmd::run(c),
    }
}

/// Absolute form of a path (without resolving symlinks).
pub fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("{}: cannot make absolute", p.display()))
}

/// Paths of the idmux binaries, for ProxyCommand lines.
pub fn exe_paths() -> Result<(PathBuf, PathBuf)> {
    let exe = std::env::current_exe().context("cannot find the idmux executable")?;
    let fdpass = exe.with_file_name("idmux-fdpass");
    Ok((exe, fdpass))
}

fn ssh_config(a: SshConfigArgs) -> Result<()> {
    let dir = absolute(&a.destination_dir)?;
    let id = Identity::load_destination(&dir)?;
    let (proxy_host, proxy_port) = openssh::split_host_port(&a.proxy_server, "--proxy-server")?;
    let own = match a.cluster {
        Some(c) => c,
        None => id.cluster_name().with_context(|| {
            format!(
                "{}: cannot tell the cluster; pass --cluster",
                dir.join("identity").display()
            )
        })?,
    };
    let (idmux_exe, fdpass_exe) = exe_paths()?;
    let params = SshConfigParams {
        clusters: openssh::clusters_of(&own, &id.host_cas),
        dir,
        proxy_host,
        proxy_port,
        cluster: own,
        mode: a.mode,
        idmux_exe,
        fdpass_exe,
    };
    openssh::write_files(&params, &id.host_cas)?;
    println!("wrote {}", params.dir.join("ssh_config").display());
    Ok(())
}
