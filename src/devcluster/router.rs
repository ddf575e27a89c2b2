//! Who may reach which node: the one authorization both proxy transports (the SSH subsystem
//! and gRPC TransportService) make before dialing, as Teleport's `lib/proxy/router.go` does.
//!
//! Given the caller (user and roles, from its certificate) and a target, [`authorize`] checks,
//! against the state on disk: the cluster is this one; a bot caller exists and is not locked;
//! the target is a registered node (Teleport 14+ never dials unregistered hosts); one of the
//! caller's roles allows the node's labels. It returns the node's address or a [`Refusal`]
//! whose text the transport sends back (SSH: a stderr line; gRPC: the status message) and
//! whose kind maps to a gRPC status code.

use std::path::Path;

use crate::state::State;
use idmux_wire::hostport::clean_target_host;

/// Why a dial is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No such cluster or node (gRPC NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// The caller may not (gRPC PERMISSION_DENIED).
    #[error("{0}")]
    Denied(String),
    /// The request itself is malformed (gRPC INVALID_ARGUMENT).
    #[error("{0}")]
    BadRequest(String),
    /// The proxy could not do its part: state unreadable, node unreachable (gRPC UNAVAILABLE).
    #[error("{0}")]
    Unavailable(String),
}

impl Refusal {
    /// The gRPC status code Teleport's error conversion gives this kind of error.
    pub(crate) fn grpc_code(&self) -> tonic::Code {
        match self {
            Refusal::NotFound(_) => tonic::Code::NotFound,
            Refusal::Denied(_) => tonic::Code::PermissionDenied,
            Refusal::BadRequest(_) => tonic::Code::InvalidArgument,
            Refusal::Unavailable(_) => tonic::Code::Unavailable,
        }
    }
}

/// Split a dial target `host:port` (`[v6]:port` too) as both transports receive it (pure).
/// The error says what is wrong: `want host:port`, `empty host` or `bad port`.
pub(crate) fn split_target(host_port: &str) -> Result<(&str, u16), &'static str> {
    use idmux_wire::hostport::HostPortError;
    idmux_wire::hostport::split(host_port).map_err(|e| match e {
        HostPortError::NoPort => "want host:port",
        HostPortError::EmptyHost => "empty host",
        HostPortError::BadHost(_) => "bad host",
        HostPortError::BadPort(_) => "bad port",
    })
}

/// The caller of a dial: its Teleport user (`bot-NAME` for bots) and roles.
pub(crate) struct Caller<'a> {
    pub username: &'a str,
    pub roles: &'a [String],
}

/// Authorize `caller` to reach `host:port` in `cluster` (empty = this one), with the state
/// in `dir` and the proxy's own host name (stripped from targets like Teleport does).
/// Returns the node's TCP address.
pub(crate) fn authorize(
    dir: &Path,
    proxy_host: &str,
    caller: &Caller<'_>,
    host: &str,
    port: u16,
    cluster: &str,
) -> Result<String, Refusal> {
    let st = State::load(dir).map_err(|e| Refusal::Unavailable(format!("{e:#}")))?;
    decide(&st, proxy_host, caller, host, port, cluster)
}

/// The caller's own standing, before any target (pure): a bot that was removed or is locked
/// may reach nothing.
pub(crate) fn check_caller(st: &State, caller: &Caller<'_>) -> Result<(), Refusal> {
    if let Some(bot) = caller.username.strip_prefix("bot-") {
        match st.bots.get(bot) {
            None => {
                return Err(Refusal::Denied(format!(
                    "user {} does not exist (the bot was removed)",
                    caller.username
                )))
            }
            Some(b) if b.locked.is_some() => {
                return Err(Refusal::Denied(format!(
                    "user {} is locked: {}",
                    caller.username,
                    b.locked.as_deref().unwrap_or("")
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// [`authorize`] over a loaded state (pure).
pub(crate) fn decide(
    st: &State,
    proxy_host: &str,
    caller: &Caller<'_>,
    host: &str,
    port: u16,
    cluster: &str,
) -> Result<String, Refusal> {
    // This cluster, or one of its leaf clusters (reached through this proxy).
    let leaf = !cluster.is_empty() && cluster != st.cluster_name;
    if leaf && !st.leaves.contains_key(cluster) {
        return Err(Refusal::NotFound(format!(
            "cluster {cluster:?} is not found (this proxy serves {:?} and its leaf clusters)",
            st.cluster_name
        )));
    }
    let in_cluster = if leaf {
        cluster
    } else {
        st.cluster_name.as_str()
    };
    check_caller(st, caller)?;
    let host = clean_target_host(host, proxy_host, in_cluster);
    if host.is_empty() {
        return Err(Refusal::BadRequest("the target names no host".into()));
    }
    let found = if leaf {
        st.find_leaf_node(cluster, host, port)
    } else {
        st.find_node(host, port)
    };
    let Some(node) = found else {
        return Err(Refusal::NotFound(format!(
            "direct dialing to nodes not found in inventory is not supported (no node {host:?} \
             in cluster {in_cluster:?})"
        )));
    };
    let allowed = caller
        .roles
        .iter()
        .filter_map(|r| st.roles.get(r))
        .any(|r| r.allows_labels(&node.labels));
    if !allowed {
        return Err(Refusal::Denied(format!(
            "access denied to {} connecting to {}.{} (its roles {:?} do not allow the node's \
             labels)",
            caller.username, node.name, in_cluster, caller.roles
        )));
    }
    Ok(node.addr.clone())
}

/// How long a node dial may take.
pub(crate) const NODE_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Connect to a node, within [`NODE_CONNECT_TIMEOUT`]. A refused connection is tried again
/// for up to 3 s: a dev node reloading its certificates (sshd re-executes on SIGHUP) stops
/// listening for a few milliseconds, where a Teleport node reloads without closing its
/// listener. Errors name the node and its address.
pub(crate) async fn dial_node(host: &str, addr: &str) -> anyhow::Result<tokio::net::TcpStream> {
    use std::time::{Duration, Instant};
    let start = Instant::now();
    let attempt = async {
        loop {
            match tokio::net::TcpStream::connect(addr).await {
                Err(e)
                    if e.kind() == std::io::ErrorKind::ConnectionRefused
                        && start.elapsed() < Duration::from_secs(3) =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                r => return r,
            }
        }
    };
    match tokio::time::timeout(NODE_CONNECT_TIMEOUT, attempt).await {
        Ok(Ok(t)) => {
            let _ = t.set_nodelay(true);
            Ok(t)
        }
        Ok(Err(e)) => anyhow::bail!("cannot reach node {host} at {addr}: {e}"),
        Err(_) => anyhow::bail!("cannot reach node {host} at {addr}: no answer"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Bot, Node, Role};

    fn state() -> State {
        let mut st = State {
            cluster_name: "dev.test".into(),
            ..Default::default()
        };
        st.roles.insert("access".into(), Role::access());
        st.roles.insert(
            "web-only".into(),
            Role {
                logins: vec![],
                node_labels: [("env".to_string(), vec!["web".to_string()])].into(),
            },
        );
        let bot = |locked: Option<&str>| Bot {
            roles: vec![],
            logins: vec![],
            generation: 1,
            locked: locked.map(String::from),
            instance_id: String::new(),
            heartbeats: vec![],
        };
        st.bots.insert("ci".into(), bot(None));
        st.bots
            .insert("old".into(), bot(Some("generation mismatch")));
        st.nodes.push(Node {
            name: "node-1".into(),
            host_id: "uuid-1".into(),
            addr: "127.0.0.1:4001".into(),
            labels: [("env".to_string(), "db".to_string())].into(),
        });
        st
    }

    fn roles(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn decisions() {
        let st = state();
        let access = roles(&["access"]);
        let ci = Caller {
            username: "bot-ci",
            roles: &access,
        };
        let d = |c: &Caller<'_>, host: &str, cluster: &str| {
            decide(&st, "proxy.x", c, host, 3022, cluster)
        };
        assert_eq!(d(&ci, "node-1", "").unwrap(), "127.0.0.1:4001");
        assert_eq!(d(&ci, "uuid-1", "dev.test").unwrap(), "127.0.0.1:4001");
        assert_eq!(d(&ci, "node-1.dev.test", "").unwrap(), "127.0.0.1:4001");
        assert_eq!(d(&ci, "node-1.proxy.x", "").unwrap(), "127.0.0.1:4001");
        assert!(
            matches!(d(&ci, "node-9", ""), Err(Refusal::NotFound(m)) if m.contains("not found in inventory"))
        );
        assert!(
            matches!(d(&ci, "node-1", "other"), Err(Refusal::NotFound(m)) if m.contains("\"other\" is not found"))
        );
        let old = Caller {
            username: "bot-old",
            roles: &access,
        };
        assert!(matches!(d(&old, "node-1", ""), Err(Refusal::Denied(m)) if m.contains("locked")));
        let gone = Caller {
            username: "bot-gone",
            roles: &access,
        };
        assert!(matches!(d(&gone, "node-1", ""), Err(Refusal::Denied(m)) if m.contains("removed")));
        let web = roles(&["web-only", "no-such-role"]);
        let narrow = Caller {
            username: "bot-ci",
            roles: &web,
        };
        let e = d(&narrow, "node-1", "").unwrap_err();
        assert!(e
            .to_string()
            .starts_with("access denied to bot-ci connecting to node-1.dev.test"));
        assert_eq!(e.grpc_code(), tonic::Code::PermissionDenied);
    }
}
