//! The dev cluster's persistent state: roles, bots, join tokens and the node inventory.
//!
//! One JSON file, `DIR/state.json`, shared by the running cluster and the admin commands
//! (`idmux cluster bots add` etc.). Writers take an exclusive flock on `DIR/state.lock`, read,
//! change and write atomically, so concurrent admin commands and joins lose nothing; readers
//! read the file as it is (a rename makes every version whole). The cluster re-reads it on every
//! request, so admin changes apply with no restart.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use idmux_identity::fsutil::{self, PRIVATE};

/// The trait reference that expands to a bot's logins.
pub(crate) const LOGINS_TRAIT: &str = "{{internal.logins}}";

/// A role: the logins it grants and the nodes it reaches (by label; `*` matches all).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Role {
    pub logins: Vec<String>,
    pub node_labels: BTreeMap<String, Vec<String>>,
}

impl Role {
    /// The default `access` role: the user's own logins on every node.
    pub(crate) fn access() -> Role {
        Role {
            logins: vec![LOGINS_TRAIT.to_string()],
            node_labels: [("*".to_string(), vec!["*".to_string()])].into(),
        }
    }

    /// Does this role reach a node with these labels?
    pub(crate) fn allows_labels(&self, labels: &BTreeMap<String, String>) -> bool {
        if self.node_labels.is_empty() {
            return false;
        }
        self.node_labels.iter().all(|(k, vals)| {
            if k == "*" {
                return vals.iter().any(|v| v == "*");
            }
            labels
                .get(k)
                .is_some_and(|have| vals.iter().any(|v| v == "*" || v == have))
        })
    }

    /// The logins this role grants, with `{{internal.logins}}` expanded from `traits`.
    pub(crate) fn expand_logins(&self, trait_logins: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for l in &self.logins {
            if l == LOGINS_TRAIT {
                out.extend(trait_logins.iter().cloned());
            } else {
                out.push(l.clone());
            }
        }
        out
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Bot {
    pub roles: Vec<String>,
    pub logins: Vec<String>,
    /// The renewable identity's generation counter (0 until the first join).
    #[serde(default)]
    pub generation: u64,
    /// Set when the bot is locked (e.g. a generation mismatch: a copied data dir).
    #[serde(default)]
    pub locked: Option<String>,
    #[serde(default)]
    pub instance_id: String,
    /// The current instance's heartbeats (`SubmitHeartbeat`): the first, then the latest ten.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heartbeats: Vec<Heartbeat>,
}

/// One recorded `BotInstanceStatusHeartbeat`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Heartbeat {
    /// When the server received it (RFC 3339).
    pub at: String,
    pub is_startup: bool,
    #[serde(default)]
    pub one_shot: bool,
    pub version: String,
    pub hostname: String,
    pub join_method: String,
    pub os: String,
    pub architecture: String,
    pub uptime_secs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Token {
    pub bot: String,
    /// Unix seconds.
    pub expires: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub host_id: String,
    pub addr: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub cluster_name: String,
    /// The proxy's public address while a cluster runs (for `bots add` output).
    #[serde(default)]
    pub proxy_addr: String,
    /// The SSH port's address while a cluster without TLS routing runs (`--no-tls-routing`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ssh_proxy_addr: String,
    /// Auth's own port while a cluster started with `--auth-listen` runs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub auth_addr: String,
    #[serde(default)]
    pub roles: BTreeMap<String, Role>,
    #[serde(default)]
    pub bots: BTreeMap<String, Bot>,
    #[serde(default)]
    pub tokens: BTreeMap<String, Token>,
    #[serde(default)]
    pub nodes: Vec<Node>,
    /// Leaf clusters trusted by this one (`--leaf`), with their nodes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub leaves: BTreeMap<String, Vec<Node>>,
}

impl State {
    fn path(dir: &Path) -> std::path::PathBuf {
        dir.join("state.json")
    }

    /// Read the state of the cluster in `dir`.
    pub fn load(dir: &Path) -> Result<State> {
        let p = Self::path(dir);
        if !p.exists() {
            bail!(
                "{}: no dev cluster here (run 'idmux cluster start --data-dir {}' first)",
                dir.display(),
                dir.display()
            );
        }
        let text = fsutil::read_string(&p)?;
        serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", p.display()))
    }

    /// Change the state under the lock. Creates it (with the default `access` role) if missing.
    pub(crate) fn modify<T>(dir: &Path, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        fsutil::ensure_private_dir(dir)?;
        let lock_path = dir.join("state.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(PRIVATE)
            .open(&lock_path)
            .with_context(|| format!("{}: cannot open", lock_path.display()))?;
        let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| anyhow!("{}: cannot lock: {e}", lock_path.display()))?;
        let mut st = if Self::path(dir).exists() {
            Self::load(dir)?
        } else {
            State::default()
        };
        st.roles.entry("access".into()).or_insert_with(Role::access);
        let out = f(&mut st)?;
        let json = serde_json::to_string_pretty(&st)?;
        fsutil::write_atomic(&Self::path(dir), json.as_bytes(), PRIVATE)?;
        drop(lock);
        Ok(out)
    }

    /// Find a registered node by name, `name.<cluster>`, host UUID or address.
    pub(crate) fn find_node(&self, host: &str, port: u16) -> Option<&Node> {
        find_in(&self.nodes, &self.cluster_name, host, port)
    }

    /// Find a node of a leaf cluster the same way.
    pub(crate) fn find_leaf_node(&self, leaf: &str, host: &str, port: u16) -> Option<&Node> {
        find_in(self.leaves.get(leaf)?, leaf, host, port)
    }

    /// Take a join token: it must exist and be unexpired; `token` joins are single use.
    pub(crate) fn take_token(&mut self, token: &str) -> Result<Token> {
        let t = self
            .tokens
            .remove(token)
            .ok_or_else(|| anyhow!("token expired or not found"))?;
        if t.expires < idmux_identity::unix_now() {
            bail!("token expired or not found");
        }
        Ok(t)
    }
}

fn find_in<'a>(nodes: &'a [Node], cluster: &str, host: &str, port: u16) -> Option<&'a Node> {
    let suffix = format!(".{cluster}");
    let short = host.strip_suffix(&suffix).unwrap_or(host);
    nodes
        .iter()
        .find(|n| n.name == short || n.host_id == short || n.addr == format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_matching() {
        let all = Role::access();
        assert!(all.allows_labels(&labels(&[("env", "dev")])));
        let prod = Role {
            logins: vec![],
            node_labels: [("env".into(), vec!["prod".into()])].into(),
        };
        assert!(prod.allows_labels(&labels(&[("env", "prod"), ("x", "y")])));
        assert!(!prod.allows_labels(&labels(&[("env", "dev")])));
        assert!(!prod.allows_labels(&labels(&[])));
        let none = Role {
            logins: vec![],
            node_labels: BTreeMap::new(),
        };
        assert!(!none.allows_labels(&labels(&[("env", "dev")])));
    }

    #[test]
    fn logins_expand_from_traits() {
        let r = Role {
            logins: vec![LOGINS_TRAIT.into(), "deploy".into()],
            node_labels: BTreeMap::new(),
        };
        assert_eq!(
            r.expand_logins(&["root".into()]),
            vec!["root".to_string(), "deploy".to_string()]
        );
    }

    #[test]
    fn modify_is_persistent_and_tokens_single_use() {
        let d = tempfile::tempdir().unwrap();
        State::modify(d.path(), |s| {
            s.tokens.insert(
                "t".into(),
                Token {
                    bot: "b".into(),
                    expires: idmux_identity::unix_now() + 60,
                },
            );
            Ok(())
        })
        .unwrap();
        let got = State::modify(d.path(), |s| s.take_token("t")).unwrap();
        assert_eq!(got.bot, "b");
        assert!(State::modify(d.path(), |s| s.take_token("t")).is_err());
        assert!(State::load(d.path()).unwrap().roles.contains_key("access"));
    }
}
