//! `idmux start`: the flags of `tbot start` (identity output), or `-c` a tbot v2 YAML config.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use super::config::{self, BotConfig, Output};
use crate::openssh::Mode;
use crate::transport::web::Trust;

#[derive(Args)]
pub struct StartArgs {
    /// tbot-style YAML config (version v2); flags given too override it.
    #[arg(short = 'c', long = "config")]
    pub config: Option<PathBuf>,
    /// Where the bot keeps its own renewable identity.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Where the identity output goes (key, certs, identity, known_hosts, ssh_config).
    #[arg(long)]
    pub destination_dir: Option<PathBuf>,
    /// The one-time join token from `bots add`.
    #[arg(long)]
    pub token: Option<String>,
    /// Join method (only `token`).
    #[arg(long, default_value = "token")]
    pub join_method: String,
    /// The proxy's address, host:port.
    #[arg(long)]
    pub proxy_server: Option<String>,
    /// CA certificate(s) the proxy's TLS certificate must chain to (default: system roots).
    #[arg(long)]
    pub ca_path: Option<PathBuf>,
    /// Do not verify the proxy's TLS certificate (development only; warns).
    #[arg(long)]
    pub insecure: bool,
    /// Lifetime of issued certificates.
    #[arg(long)]
    pub certificate_ttl: Option<String>,
    /// How often to renew.
    #[arg(long)]
    pub renewal_interval: Option<String>,
    /// Join or renew once, write the outputs and exit.
    #[arg(long)]
    pub oneshot: bool,
    /// ProxyCommand style written into ssh_config.
    #[arg(long, value_enum, default_value = "stdio")]
    pub ssh_mode: Mode,
    /// Roles to impersonate in the output (default: all the bot's roles).
    #[arg(long, value_delimiter = ',')]
    pub roles: Vec<String>,
}

/// Build the bot configuration from the config file and flags.
pub fn to_config(a: StartArgs) -> Result<BotConfig> {
    if a.join_method != "token" {
        bail!(
            "--join-method {:?} is not supported (want token)",
            a.join_method
        );
    }
    let mut c = match &a.config {
        Some(p) => config::parse_yaml(&crate::fsutil::read_string(p)?, &p.display().to_string())?,
        None => BotConfig {
            proxy_server: String::new(),
            token: None,
            data_dir: PathBuf::new(),
            outputs: vec![],
            certificate_ttl: std::time::Duration::from_secs(3600),
            renewal_interval: std::time::Duration::from_secs(20 * 60),
            oneshot: false,
            trust: Trust::System,
            multiplexer: None,
        },
    };
    if let Some(p) = a.proxy_server {
        c.proxy_server = p;
    }
    if c.proxy_server.is_empty() {
        bail!("--proxy-server is required (host:port of the proxy)");
    }
    crate::openssh::split_host_port(&c.proxy_server, "--proxy-server")?;
    if a.token.is_some() {
        c.token = a.token;
    }
    if let Some(d) = a.data_dir {
        c.data_dir = d;
    }
    if c.data_dir.as_os_str().is_empty() {
        bail!("--data-dir is required");
    }
    if let Some(d) = a.destination_dir {
        c.outputs.push(Output {
            dir: d,
            roles: a.roles.clone(),
            mode: a.ssh_mode,
        });
    }
    if let Some(t) = a.certificate_ttl {
        c.certificate_ttl = crate::cluster::state::parse_ttl(&t, "--certificate-ttl")?;
    }
    if let Some(t) = a.renewal_interval {
        c.renewal_interval = crate::cluster::state::parse_ttl(&t, "--renewal-interval")?;
    }
    if c.renewal_interval.is_zero() || c.renewal_interval >= c.certificate_ttl {
        bail!(
            "--renewal-interval {:?} must be shorter than --certificate-ttl {:?}",
            c.renewal_interval,
            c.certificate_ttl
        );
    }
    c.oneshot |= a.oneshot;
    if a.insecure {
        c.trust = Trust::Insecure;
    } else if let Some(p) = a.ca_path {
        c.trust = Trust::CaFile(p);
    }
    Ok(c)
}

pub fn run(a: StartArgs) -> Result<()> {
    let cfg = to_config(a)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async { super::Bot::new(cfg)?.run().await })
}
