//! `idmux ssh-proxy-command`: the stdio ProxyCommand. One TLS + SSH handshake with the proxy
//! per invocation, then the node's SSH bytes between stdin/stdout and the proxy channel.
//!
//! Flags match tbot's `ssh-proxy-command` so an ssh_config written by tbot works with the
//! binary swapped; tbot's TLS-routing switches are accepted and ignored (idmux always uses TLS
//! routing). `--transport` picks gRPC TransportService or the SSH subsystem (`link`).

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::identity::Identity;
use crate::openssh::split_host_port;
use crate::transport::link::{self, TransportKind};
use crate::transport::{relay, stdio};

/// What `ssh-proxy-command` needs (flag parsing is in `cli`).
#[derive(Clone, Debug)]
pub struct ProxyCommandArgs {
    /// The destination dir holding `identity`.
    pub destination_dir: PathBuf,
    /// The proxy, `host:port`.
    pub proxy_server: String,
    /// The cluster the node is in; `None` = the identity's cluster.
    pub cluster: Option<String>,
    /// ssh's `%r`; the proxy login is always the certificate's first principal.
    pub user: Option<String>,
    /// ssh's `%h`.
    pub host: String,
    /// ssh's `%p`.
    pub port: u16,
    /// Which transport reaches the node.
    pub transport: TransportKind,
}

/// Teleport's cleanTargetHost: strip a trailing `.<proxy host>`, then a trailing `.<cluster>`.
/// The proxy resolves what is left (node name, UUID or registered address).
pub fn clean_target_host<'a>(target: &'a str, proxy_host: &str, cluster: &str) -> &'a str {
    let strip = |t: &'a str, suffix: &str| -> &'a str {
        if suffix.is_empty() {
            return t;
        }
        match t.strip_suffix(suffix) {
            Some(rest) if rest.ends_with('.') => &rest[..rest.len() - 1],
            _ => t,
        }
    };
    strip(strip(target, proxy_host), cluster)
}

/// Run the ProxyCommand until the node's side of the connection ends.
pub async fn run(args: ProxyCommandArgs) -> Result<()> {
    let dir = crate::cli::absolute(&args.destination_dir)?;
    let id = Identity::load_destination(&dir)?;
    let expires = id
        .expires()
        .with_context(|| format!("{}: cannot read its expiry", dir.join("identity").display()))?;
    if expires < SystemTime::now() {
        bail!(
            "the identity in {} expired at {} (is the bot running?)",
            dir.join("identity").display(),
            humantime::format_rfc3339_seconds(expires)
        );
    }
    let cluster = id.cluster_or(args.cluster, &dir.join("identity"))?;
    let (proxy_host, _) = split_host_port(&args.proxy_server, "--proxy-server")?;
    let host = clean_target_host(&args.host, &proxy_host, &cluster);
    if host.is_empty() {
        bail!("--host {:?} names no node", args.host);
    }

    let link = link::connect(&args.proxy_server, &id, args.transport).await?;
    // Only a gRPC proxy may ask for the agent (agent frames); the SSH transport never does.
    let agent = match link {
        link::Link::Grpc(_) => {
            let agent = crate::mux::agent::Agent::default();
            agent.set(id.key.to_ssh()?, id.ssh_cert.clone());
            Some(agent)
        }
        link::Link::Ssh(_) => None,
    };
    let node = link.open_node(host, args.port, &cluster, agent).await?;
    // ssh sends its ProxyCommand SIGHUP when it is done with the connection: end politely
    // (SSH disconnect, TLS close_notify) rather than vanish mid-stream.
    let mut hup = signal(SignalKind::hangup()).context("cannot watch for SIGHUP")?;
    let mut term = signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?;
    let relay = relay::relay(
        node,
        stdio::stdin(),
        stdio::stdout(),
        tokio::io::stderr(),
        ("stdin", "stdout"),
    );
    tokio::select! {
        r = relay => r?,
        _ = hup.recv() => {}
        _ = term.recv() => {}
    }
    link.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_target_host_like_teleport() {
        let c = |t| clean_target_host(t, "proxy.example.com", "example.com");
        assert_eq!(c("node-1.example.com"), "node-1");
        assert_eq!(c("node-1.proxy.example.com"), "node-1");
        assert_eq!(c("node-1"), "node-1");
        // Only whole labels are stripped.
        assert_eq!(c("node-1xexample.com"), "node-1xexample.com");
        // The proxy host first, then the cluster.
        assert_eq!(clean_target_host("a.b.proxy.c", "proxy.c", "b"), "a");
        // The cluster name itself is not a node name, and is left alone.
        assert_eq!(c("example.com"), "example.com");
        // IPs and empty parts.
        assert_eq!(clean_target_host("10.0.0.1", "127.0.0.1", ""), "10.0.0.1");
        assert_eq!(clean_target_host("n.c", "", "c"), "n");
    }
}
