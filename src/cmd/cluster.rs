//! `idmux cluster ...`: flags of the dev cluster's commands, and their output.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};

use super::choices::{ModeArg, ProxyTransportArg, SuiteArg};
use idmux_devcluster::ca::ClusterCas;
use idmux_devcluster::state::State;
use idmux_identity::destination::{write_destination, CaPems};
use idmux_identity::time::parse_ttl;
use idmux_identity::{KeyPair, KeyType};

#[derive(Subcommand)]
pub(crate) enum ClusterCmd {
    /// Run a dev cluster in the foreground: proxy + auth on one TLS port, N sshd nodes.
    Start(StartArgs),
    /// Manage bots.
    #[command(subcommand)]
    Bots(BotsCmd),
    /// List the registered nodes.
    #[command(subcommand)]
    Nodes(NodesCmd),
    /// Manage roles.
    #[command(subcommand)]
    Roles(RolesCmd),
    /// Issue certificates directly from the CA (like `tctl auth sign`).
    #[command(subcommand)]
    Auth(AuthCmd),
    /// Install the dev cluster as a service (systemd unit).
    #[command(subcommand)]
    Install(crate::cmd::systemd::ClusterInstallCmd),
}

#[derive(Args)]
pub(crate) struct DataDir {
    /// The cluster's data dir.
    #[arg(long)]
    pub data_dir: PathBuf,
}

#[derive(Args)]
pub(crate) struct StartArgs {
    #[command(flatten)]
    pub d: DataDir,
    /// Address of the proxy's TLS port.
    #[arg(long, default_value = "127.0.0.1:3080")]
    pub listen: std::net::SocketAddr,
    /// Cluster name (fixed at first start).
    #[arg(long, default_value = "dev.idmux")]
    pub name: String,
    /// Number of sshd nodes (node-1..node-N).
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Node transports the proxy serves (leave one out to act as an older or newer proxy).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "grpc,ssh")]
    pub transports: Vec<ProxyTransportArg>,
    /// The signature algorithm suite: CA key types when the cluster is created, and the key
    /// types bots use (default: balanced-v1 for a new cluster, else the stored one). On an
    /// existing cluster the CAs keep their keys until rotated, as in Teleport.
    #[arg(long, value_enum)]
    pub signature_algorithm_suite: Option<SuiteArg>,
    /// A leaf cluster trusted by this one (repeatable): its own CAs and an sshd node
    /// (`node-1.NAME`), reached through this proxy and listed by ListRemoteClusters.
    #[arg(long = "leaf")]
    pub leaves: Vec<String>,
    /// Answer the join service (`teleport.join.v1.JoinService`) as a Teleport without it
    /// does, so bots join through `POST /webapi/host/credentials`.
    #[arg(long)]
    pub legacy_join_only: bool,
    /// Act as a proxy without TLS routing (`proxy_listener_mode: separate`): ping says
    /// `tls_routing_enabled: false`, the web port refuses the node and Auth ALPNs, and a
    /// separate SSH port (`--ssh-listen`) multiplexes SSH and TLS (gRPC TransportService).
    #[arg(long)]
    pub no_tls_routing: bool,
    /// Address of the SSH port with `--no-tls-routing` (port 0: a free port, reported on the
    /// ready line as `ssh proxy on ADDR`).
    #[arg(long, default_value = "127.0.0.1:0", requires = "no_tls_routing")]
    pub ssh_listen: std::net::SocketAddr,
    /// The proxy's public address, HOST[:PORT] (port: the web port), reported by ping as
    /// `proxy.ssh.public_addr` and named by the proxy's certificates.
    #[arg(long)]
    pub public_addr: Option<String>,
    /// Also serve Auth directly on this address, as Teleport's auth service listens on 3025:
    /// TLS with Auth's certificate, a client certificate optional (without one: the join
    /// service, GetClusterCACert and Ping only). Port 0: a free port, reported on the ready
    /// line as `auth on ADDR`.
    #[arg(long)]
    pub auth_listen: Option<std::net::SocketAddr>,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
pub(crate) enum BotsCmd {
    /// Add a bot (or update its roles and logins) and print a one-time join token.
    Add {
        name: String,
        #[command(flatten)]
        d: DataDir,
        /// Roles the bot may impersonate, comma separated (`--roles=` for none, as `tctl bots
        /// add` without --roles: then every output must name roles, and cannot).
        #[arg(long, value_delimiter = ',', default_value = "access")]
        roles: Vec<String>,
        /// Node logins, comma separated.
        #[arg(long, value_delimiter = ',')]
        logins: Vec<String>,
        /// How long the join token is valid.
        #[arg(long, default_value = "1h")]
        ttl: String,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// List bots.
    Ls {
        #[command(flatten)]
        d: DataDir,
    },
    /// Remove a bot: its certificates stop working at the proxy.
    Rm {
        name: String,
        #[command(flatten)]
        d: DataDir,
    },
}

#[derive(Subcommand)]
pub(crate) enum NodesCmd {
    Ls {
        #[command(flatten)]
        d: DataDir,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
}

#[derive(Subcommand)]
pub(crate) enum RolesCmd {
    /// Create or replace a role.
    Add {
        name: String,
        #[command(flatten)]
        d: DataDir,
        /// Logins granted; `{{internal.logins}}` expands to the bot's logins.
        #[arg(long, value_delimiter = ',', default_value = "{{internal.logins}}")]
        logins: Vec<String>,
        /// Node labels this role reaches, key=value, comma separated (`*=*` for all).
        #[arg(long, value_delimiter = ',')]
        node_labels: Vec<String>,
    },
    Ls {
        #[command(flatten)]
        d: DataDir,
    },
}

#[derive(Subcommand)]
pub(crate) enum AuthCmd {
    /// Write a destination dir with an output identity for a bot, signed by the cluster's CA.
    Sign {
        #[command(flatten)]
        d: DataDir,
        #[arg(long)]
        bot: String,
        #[arg(long)]
        destination_dir: PathBuf,
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Key type: ecdsa (balanced-v1), rsa (legacy) or ed25519.
        #[arg(long, default_value = "ecdsa")]
        key_type: String,
        #[arg(long, value_enum, default_value = "stdio")]
        mode: ModeArg,
        /// Proxy address for ssh_config (default: the running cluster's).
        #[arg(long)]
        proxy_server: Option<String>,
        /// Also route bare one-label host names to the cluster (off, as tbot).
        #[arg(long)]
        bare_names: bool,
    },
    /// Move a CA rotation one phase on, as `tctl auth rotate --manual`: init (new keys
    /// trusted), update_clients (new keys sign), update_servers (servers and nodes serve
    /// certificates from the new keys), standby (old keys dropped), or rollback.
    Rotate {
        #[command(flatten)]
        d: DataDir,
        /// The CA: host, user, db or openssh.
        #[arg(long = "type", value_parser = ["host", "user", "db", "openssh"])]
        ca_type: String,
        /// The phase to move to.
        #[arg(long, value_parser = ["init", "update_clients", "update_servers", "rollback", "standby"])]
        phase: String,
    },
}

pub fn run(cmd: ClusterCmd) -> Result<()> {
    match cmd {
        ClusterCmd::Install(crate::cmd::systemd::ClusterInstallCmd::Systemd(a)) => {
            crate::cmd::systemd::run_cluster(a)
        }
        ClusterCmd::Start(a) => {
            let rt = super::runtime::build(super::runtime::Kind::Cluster)?;
            rt.block_on(idmux_devcluster::start(idmux_devcluster::StartOptions {
                dir: a.d.data_dir,
                listen: a.listen,
                name: a.name,
                nodes: a.nodes,
                transports: a.transports.iter().map(|&t| t.into()).collect(),
                suite: a.signature_algorithm_suite.map(Into::into),
                leaves: a.leaves,
                legacy_join_only: a.legacy_join_only,
                no_tls_routing: a.no_tls_routing,
                ssh_listen: a.ssh_listen,
                public_addr: a.public_addr,
                auth_listen: a.auth_listen,
            }))
        }
        ClusterCmd::Bots(BotsCmd::Add {
            name,
            d,
            roles,
            logins,
            ttl,
            format,
        }) => {
            let ttl = parse_ttl(&ttl, "--ttl")?;
            if logins.is_empty() {
                bail!("--logins: give at least one node login (e.g. --logins=root)");
            }
            let roles: Vec<String> = roles.into_iter().filter(|r| !r.is_empty()).collect();
            let (token, st) = idmux_devcluster::bots_add(&d.data_dir, &name, &roles, &logins, ttl)?;
            print_bot_added(&name, &token, ttl, &st, &d.data_dir, format);
            Ok(())
        }
        ClusterCmd::Bots(BotsCmd::Ls { d }) => {
            let st = State::load(&d.data_dir)?;
            println!(
                "{:<20} {:<24} {:<20} {:<6} {:<34} STATUS",
                "BOT", "ROLES", "LOGINS", "GEN", "LAST HEARTBEAT"
            );
            for (n, b) in &st.bots {
                let status = b
                    .locked
                    .as_deref()
                    .map(|r| format!("locked: {r}"))
                    .unwrap_or_else(|| "active".into());
                let beat = b
                    .heartbeats
                    .last()
                    .map(|h| {
                        let kind = if h.one_shot {
                            " one-shot"
                        } else if h.is_startup {
                            " startup"
                        } else {
                            ""
                        };
                        format!("{} ({}){kind}", h.at, h.hostname)
                    })
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{:<20} {:<24} {:<20} {:<6} {:<34} {status}",
                    n,
                    b.roles.join(","),
                    b.logins.join(","),
                    b.generation,
                    beat
                );
            }
            Ok(())
        }
        ClusterCmd::Bots(BotsCmd::Rm { name, d }) => {
            idmux_devcluster::bots_rm(&d.data_dir, &name)?;
            println!("bot {name:?} removed");
            Ok(())
        }
        ClusterCmd::Nodes(NodesCmd::Ls { d, format }) => {
            let st = State::load(&d.data_dir)?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&st.nodes)?),
                Format::Text => {
                    println!("{:<12} {:<22} {:<38} LABELS", "NAME", "ADDR", "UUID");
                    for n in &st.nodes {
                        let labels: Vec<String> =
                            n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        println!(
                            "{:<12} {:<22} {:<38} {}",
                            n.name,
                            n.addr,
                            n.host_id,
                            labels.join(",")
                        );
                    }
                }
            }
            Ok(())
        }
        ClusterCmd::Roles(RolesCmd::Add {
            name,
            d,
            logins,
            node_labels,
        }) => {
            let mut labels = Vec::new();
            for l in &node_labels {
                let Some((k, v)) = l.split_once('=') else {
                    bail!("--node-labels {l:?}: want key=value");
                };
                labels.push((k.to_string(), v.to_string()));
            }
            idmux_devcluster::roles_add(&d.data_dir, &name, &logins, &labels)?;
            println!("role {name:?} saved");
            Ok(())
        }
        ClusterCmd::Roles(RolesCmd::Ls { d }) => {
            let st = State::load(&d.data_dir)?;
            for (n, r) in &st.roles {
                println!("{n}: logins={:?} node_labels={:?}", r.logins, r.node_labels);
            }
            Ok(())
        }
        ClusterCmd::Auth(AuthCmd::Rotate { d, ca_type, phase }) => {
            use idmux_devcluster::ca::CaKind;
            let kind = match ca_type.as_str() {
                "host" => CaKind::Host,
                "user" => CaKind::User,
                "db" => CaKind::Db,
                _ => CaKind::OpenSsh,
            };
            let line =
                idmux_devcluster::rotate_ca(&d.data_dir, kind, &phase, Duration::from_secs(30))?;
            println!("{line}");
            Ok(())
        }
        ClusterCmd::Auth(AuthCmd::Sign {
            d,
            bot,
            destination_dir,
            ttl,
            key_type,
            mode,
            proxy_server,
            bare_names,
        }) => {
            let ttl = parse_ttl(&ttl, "--ttl")?;
            let kind: KeyType = key_type.parse().context("--key-type")?;
            let cas = ClusterCas::load(&d.data_dir.join("ca"))?;
            let proxy = match proxy_server {
                Some(p) => p,
                None => {
                    let p = State::load(&d.data_dir)?.proxy_addr;
                    if p.is_empty() {
                        bail!(
                            "the cluster in {} is not running; pass --proxy-server",
                            d.data_dir.display()
                        );
                    }
                    p
                }
            };
            let key = KeyPair::generate(kind)?;
            let id =
                idmux_devcluster::auth::output_identity(&d.data_dir, &cas, &bot, &key, None, ttl)?;
            let pems = CaPems {
                host: cas.host.trusted_tls_pems(),
                user: cas.user.trusted_tls_pems(),
                db: cas.db.trusted_tls_pems(),
            };
            write_destination(
                &destination_dir,
                &id,
                &pems,
                &idmux_identity::destination::Plan {
                    proxy: &proxy,
                    way: Default::default(),
                    mode: mode.into(),
                    bare_names,
                    files: idmux_identity::destination::Files::Identity { ssh_config: true },
                    fdpass_command: &[],
                },
            )?;
            println!("wrote {}", destination_dir.join("ssh_config").display());
            Ok(())
        }
    }
}

fn print_bot_added(
    name: &str,
    token: &str,
    ttl: Duration,
    st: &State,
    data_dir: &std::path::Path,
    format: Format,
) {
    let user = format!("bot-{name}");
    // As `tctl bots add`: the pins of the cluster's CA, for a bot that joins through Auth.
    let pins = idmux_devcluster::ca_pins(data_dir).unwrap_or_default();
    match format {
        Format::Json => println!(
            "{}",
            serde_json::json!({"user_name": user, "role_name": user, "token_id": token, "token_ttl": ttl.as_nanos() as i64, "ca_pins": pins})
        ),
        Format::Text => {
            let proxy = if st.proxy_addr.is_empty() {
                "127.0.0.1:3080"
            } else {
                &st.proxy_addr
            };
            let ca = idmux_identity::paths::absolute(&data_dir.join("ca.pem"))
                .unwrap_or_else(|_| data_dir.join("ca.pem"));
            println!("The bot token: {token}");
            println!("This token will expire in {} minutes.", ttl.as_secs() / 60);
            println!();
            println!("Run this on the machine the bot serves:");
            println!();
            println!("> idmux start \\");
            println!("   --data-dir=/var/lib/idmux \\");
            println!("   --destination-dir=/opt/machine-id \\");
            println!("   --token={token} \\");
            println!("   --join-method=token \\");
            println!("   --proxy-server={proxy} \\");
            println!("   --ca-path={}", ca.display());
            println!();
            println!("  - This is a single-use token: it is consumed when the bot joins.");
            println!("  - {proxy} must be reachable from the bot's machine.");
            let auth = if st.auth_addr.is_empty() {
                "127.0.0.1:3025"
            } else {
                &st.auth_addr
            };
            println!();
            println!("Or, with Auth reachable (`cluster start --auth-listen`), join through it:");
            println!();
            println!("> idmux start \\");
            println!("   --data-dir=/var/lib/idmux \\");
            println!("   --destination-dir=/opt/machine-id \\");
            println!("   --token={token} \\");
            for p in &pins {
                println!("   --ca-pin={p} \\");
            }
            println!("   --auth-server={auth}");
        }
    }
}
