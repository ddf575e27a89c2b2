//! The bot (`idmux start`): join with a one-time token, keep a renewable identity in the data
//! dir, renew it, and write identity outputs (destination dirs) as tbot does.
//!
//! - [`config`]: the tbot v2 YAML config and the bot's settings.
//! - What a destination dir holds: `idmux_identity::destination`.
//!
//! Lifecycle: take `DATA/lock` (flock; a second bot on the same data dir stops), then load the
//! stored identity: a valid one is renewed, an expired one (or a new token) joins again. Every
//! renewal asks Auth (gRPC `GenerateUserCerts` over the `teleport-auth@` ALPN) for a fresh bot
//! identity with a new key (the generation counter goes up by one), then for each output an
//! impersonated identity. When the proxy is down the bot keeps its files, logs one line per
//! failure and retries with backoff; a locked or removed bot stops.
//!
//! Logs: one info line per successful renewal (`renewed: ...`, with generation, expiry and
//! outputs) and one warn line per failed attempt; SIGHUP renews at once (`systemctl reload`),
//! SIGTERM and SIGINT stop. No line carries a key, a certificate or the join token.
//!
//! Key/cert pairing: OpenSSH reads `key` and `key-cert.pub` as two files, so an output keeps
//! one key for the life of the process and only its certificates change; any `key` a reader
//! sees matches any `key-cert.pub` it sees. (The multiplexer's agent socket swaps key and cert
//! together, so it can rotate keys each renewal.)

pub mod config;

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use russh::keys::ssh_key::Certificate;
use tokio::sync::watch;

use config::BotConfig;
use idmux_identity::destination::{self as output, CaPems};
use idmux_identity::files::token_hash;
use idmux_identity::fsutil;
use idmux_identity::{HostCa, Identity, KeyPair, KeyType};
use idmux_transport::refusal::Refused;
use idmux_transport::web::WebClient;
use idmux_wire::web::{CertsJson, RegisterUsingTokenRequest};

/// Hold `DATA/lock` for the life of the bot.
pub fn lock_data_dir(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let p = dir.join("lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&p)
        .with_context(|| format!("{}: cannot open", p.display()))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| anyhow!("{}: another bot holds this data dir's lock (is idmux or tbot already running with --data-dir {}?)", p.display(), dir.display()))
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

use idmux_wire::web::b64e as b64;

/// Assemble an identity from a key and the certificates Auth returned.
pub(crate) fn identity_from_certs(
    key: KeyPair,
    ssh: &str,
    tls: &str,
    tls_cas: Vec<String>,
    ssh_cas: &[String],
) -> Result<Identity> {
    let ssh_cert = Certificate::from_openssh(ssh.trim())
        .map_err(|e| anyhow!("the SSH certificate from auth: {e}"))?;
    let host_cas = ssh_cas
        .iter()
        .flat_map(|s| s.lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|l| !l.trim().is_empty())
        .map(|l| HostCa::parse_line(&l))
        .collect::<Result<Vec<_>>>()
        .map_err(|e| anyhow!("the SSH CA from auth: {e}"))?;
    let id = Identity {
        key,
        ssh_cert,
        tls_cert_pem: tls.to_string(),
        host_cas,
        tls_cas,
    };
    id.check_consistent()?;
    Ok(id)
}

/// Join the cluster with a token: `GET /webapi/find` picks the key type, then
/// `POST /webapi/host/credentials`.
pub(crate) async fn join(web: &WebClient, token: &str, ttl: Duration) -> Result<Identity> {
    let find = web.get_json("/webapi/find").await?;
    let suite = find
        .pointer("/auth/signature_algorithm_suite")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let key = KeyPair::generate(KeyType::for_suite(suite))?;
    let req = RegisterUsingTokenRequest {
        token: token.to_string(),
        role: "Bot".into(),
        public_tls_key: b64(key.tls_public_pem()?.as_bytes()),
        public_ssh_key: b64(key.ssh_authorized_key()?.as_bytes()),
        expires: Some(rfc3339(SystemTime::now() + ttl)),
        ..Default::default()
    };
    let certs: CertsJson = web
        .post_json("/webapi/host/credentials", &req)
        .await
        .map_err(|e| anyhow!("join failed: {e:#}"))?;
    let (ssh, tls, tls_cas, ssh_cas) = certs.decode()?;
    identity_from_certs(key, &ssh, &tls, tls_cas, &ssh_cas)
}

/// Ask Auth for certificates for `key`: the bot's own renewal (`roles` = None) or an
/// impersonated output identity.
async fn generate(
    proxy: &str,
    bot: &Identity,
    key: KeyPair,
    roles: Option<&[String]>,
    ttl: Duration,
) -> Result<Identity> {
    use idmux_wire::proto::UserCertsRequest;
    let user = bot.tls_identity()?.username;
    let expires = SystemTime::now() + ttl;
    let secs = expires.duration_since(SystemTime::UNIX_EPOCH)?.as_secs() as i64;
    let req = UserCertsRequest {
        username: user,
        expires: Some(idmux_wire::proto::Timestamp {
            seconds: secs,
            nanos: 0,
        }),
        route_to_cluster: bot.cluster_name()?,
        role_requests: roles.map(|r| r.to_vec()).unwrap_or_default(),
        use_role_requests: roles.is_some(),
        ssh_public_key: key.ssh_authorized_key()?.into_bytes(),
        tls_public_key: key.tls_public_pem()?.into_bytes(),
        ..Default::default()
    };
    let certs = idmux_transport::auth_client::generate_user_certs(proxy, bot, req).await?;
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut tls_cas: Vec<String> = certs.tls_ca_certs.iter().map(|c| s(c)).collect();
    let mut ssh_cas: Vec<String> = certs.ssh_ca_certs.iter().map(|c| s(c)).collect();
    if roles.is_some() {
        // As tbot: outputs trust the host CA the bot trusts.
        tls_cas = bot.tls_cas.clone();
        ssh_cas = bot
            .host_cas
            .iter()
            .map(|c| c.authorized_hosts_line())
            .collect::<Result<_>>()?;
    }
    identity_from_certs(key, &s(&certs.ssh), &s(&certs.tls), tls_cas, &ssh_cas)
}

/// Why a renewal failed, which decides what the bot does next.
#[derive(Debug)]
pub(crate) enum RenewError {
    /// Asking again will not help (locked, generation mismatch, bot removed, token spent,
    /// access denied, a file the bot may not write): the bot stops.
    Final(anyhow::Error),
    /// A passing fault (proxy down, a timeout, a full disk): retry with backoff.
    Passing(anyhow::Error),
}

impl RenewError {
    /// Classify by type: a [`Refused`] with a final code, or a local permission error.
    pub(crate) fn classify(e: anyhow::Error) -> RenewError {
        let is_final = e.chain().any(|c| {
            c.downcast_ref::<Refused>().is_some_and(Refused::is_final)
                || c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
        });
        if is_final {
            RenewError::Final(e)
        } else {
            RenewError::Passing(e)
        }
    }
}

/// The running bot.
pub struct Bot {
    cfg: BotConfig,
    web: WebClient,
    identity: Option<Identity>,
    /// One key per output, kept across renewals (see the module doc).
    output_keys: Vec<KeyPair>,
    /// The identity last written to each output (empty before the first write).
    written: Vec<Arc<Identity>>,
    /// Subscribers to one output's identity (the in-process multiplexer), by output index.
    published: Vec<(usize, watch::Sender<Arc<Identity>>)>,
    /// `DATA/lock`, held from [`Bot::start`] for the life of the bot.
    lock: Option<nix::fcntl::Flock<std::fs::File>>,
}

impl Bot {
    pub fn new(cfg: BotConfig) -> Result<Bot> {
        let web = WebClient::new(&cfg.proxy_server, &cfg.trust)?;
        let kind = KeyType::EcdsaP256;
        let output_keys = cfg
            .outputs
            .iter()
            .map(|_| KeyPair::generate(kind))
            .collect::<Result<_>>()?;
        Ok(Bot {
            cfg,
            web,
            identity: None,
            output_keys,
            written: Vec::new(),
            published: Vec::new(),
            lock: None,
        })
    }

    /// Obtain the bot identity: renew a valid stored one, else join with the token.
    async fn start_identity(&mut self) -> Result<()> {
        let d = &self.cfg.data_dir;
        let stored = if d.join("key-cert.pub").exists() {
            Some(Identity::read_data_dir(d)?)
        } else {
            None
        };
        let token_changed = match (
            &self.cfg.token,
            std::fs::read_to_string(d.join("tokenhash")),
        ) {
            (Some(t), Ok(h)) => h.trim() != token_hash(t),
            _ => false,
        };
        if let Some(id) = stored.filter(|_| !token_changed) {
            if id.expires()? > SystemTime::now() + Duration::from_secs(5) {
                tracing::debug!("renewing the stored identity in {}", d.display());
                self.identity = Some(id);
                return self.renew_bot().await;
            }
            tracing::info!(
                "the stored identity in {} has expired; joining again",
                d.display()
            );
        }
        let Some(token) = self.cfg.token.clone() else {
            bail!(
                "no valid identity in {} and no --token to join with",
                d.display()
            );
        };
        let id = join(&self.web, &token, self.cfg.certificate_ttl).await?;
        id.write_data_dir(d, Some(&token))?;
        tracing::info!(cluster = %id.cluster_name()?, "joined with the token; identity stored in {}", d.display());
        self.identity = Some(id);
        Ok(())
    }

    /// Renew the bot's own identity (new key, generation + 1).
    async fn renew_bot(&mut self) -> Result<()> {
        let cur = self
            .identity
            .as_ref()
            .ok_or_else(|| anyhow!("no identity to renew"))?;
        let key = KeyPair::generate(cur.key.key_type())?;
        let new = generate(
            &self.cfg.proxy_server,
            cur,
            key,
            None,
            self.cfg.certificate_ttl,
        )
        .await?;
        new.write_data_dir(&self.cfg.data_dir, None)?;
        tracing::debug!(
            generation = new.tls_identity()?.generation,
            "renewed the bot identity"
        );
        self.identity = Some(new);
        Ok(())
    }

    /// The settings the bot runs with.
    pub fn config(&self) -> &BotConfig {
        &self.cfg
    }

    /// Write every output, and send each one's identity to its subscribers.
    async fn write_outputs(&mut self) -> Result<()> {
        let bot = self
            .identity
            .as_ref()
            .ok_or_else(|| anyhow!("no identity"))?;
        if self.cfg.outputs.is_empty() {
            return Ok(());
        }
        let user = self
            .web
            .get_text("/webapi/auth/export?type=tls-user")
            .await?;
        let db = self.web.get_text("/webapi/auth/export?type=tls-db").await?;
        let pems = CaPems {
            host: bot.tls_cas.clone(),
            user: idmux_identity::files::split_pem_certs(&user),
            db: idmux_identity::files::split_pem_certs(&db),
        };
        let mut written = Vec::with_capacity(self.cfg.outputs.len());
        for (o, key) in self.cfg.outputs.iter().zip(&self.output_keys) {
            let roles: &[String] = &o.roles;
            let id = generate(
                &self.cfg.proxy_server,
                bot,
                key.clone(),
                Some(roles),
                self.cfg.certificate_ttl,
            )
            .await?;
            output::write_destination(&o.dir, &id, &pems, &self.cfg.proxy_server, o.mode)?;
            tracing::debug!(dest = %o.dir.display(), expires = %rfc3339(id.expires()?), "wrote output");
            written.push(Arc::new(id));
        }
        for (i, tx) in &self.published {
            // A receiver that has gone (the multiplexer stopped) is no reason to fail renewal.
            let _ = tx.send(written[*i].clone());
        }
        self.written = written;
        Ok(())
    }

    /// Follow the identity written to the output in `dest`: the receiver sees every renewal
    /// as soon as its files are written. `None` when no output of this bot is `dest` (then
    /// a multiplexer there reads the files another tool writes). Call after [`Bot::start`].
    pub fn subscribe(&mut self, dest: &Path) -> Option<watch::Receiver<Arc<Identity>>> {
        let same = |d: &Path| idmux_identity::paths::absolute(d).ok().as_deref() == Some(dest);
        let i = self.cfg.outputs.iter().position(|o| same(&o.dir))?;
        let current = self.written.get(i)?.clone();
        let (tx, rx) = watch::channel(current);
        self.published.push((i, tx));
        Some(rx)
    }

    /// The one info line of a successful renewal (or start): generation, expiry, outputs.
    /// Names and times only, never key material.
    fn log_renewed(&self, what: &str) {
        let Some(id) = &self.identity else { return };
        let generation = id.tls_identity().map(|t| t.generation).unwrap_or(0);
        let expires = id.expires().map(rfc3339).unwrap_or_default();
        let outputs: Vec<String> = self
            .cfg
            .outputs
            .iter()
            .map(|o| o.dir.display().to_string())
            .collect();
        tracing::info!(
            generation,
            expires = %expires,
            outputs = %outputs.join(","),
            "{what}: bot identity and {} output(s) written",
            outputs.len()
        );
    }

    /// Take the data dir's lock, obtain the bot identity (renew or join) and write every
    /// output once.
    pub async fn start(&mut self) -> Result<()> {
        fsutil::ensure_private_dir(&self.cfg.data_dir)?;
        self.lock = Some(lock_data_dir(&self.cfg.data_dir)?);
        self.start_identity().await?;
        self.write_outputs().await?;
        self.log_renewed("identity ready");
        Ok(())
    }

    /// Renew on schedule until SIGTERM or SIGINT; a final error (a locked or removed bot)
    /// stops it. Call after [`Bot::start`].
    pub async fn renew_until_stopped(mut self) -> Result<()> {
        let mut failures = 0u32;
        let mut wait = self.cfg.renewal_interval;
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).context("cannot watch for SIGHUP")?;
        let mut term = signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                // `systemctl reload`: renew now.
                _ = hup.recv() => tracing::debug!("SIGHUP: renewing now"),
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = term.recv() => {
                    tracing::info!("SIGTERM: stopping");
                    return Ok(());
                }
            }
            let r = async {
                // An expired identity cannot renew: join again if a token allows it.
                if self
                    .identity
                    .as_ref()
                    .map(|i| i.expires().map(|e| e <= SystemTime::now()).unwrap_or(true))
                    .unwrap_or(true)
                {
                    self.start_identity().await?;
                } else {
                    self.renew_bot().await?;
                }
                self.write_outputs().await
            }
            .await;
            match r.map_err(RenewError::classify) {
                Ok(()) => {
                    failures = 0;
                    wait = self.cfg.renewal_interval;
                    self.log_renewed("renewed");
                }
                Err(RenewError::Final(e)) => return Err(e),
                Err(RenewError::Passing(e)) => {
                    failures += 1;
                    wait =
                        Duration::from_secs(1u64 << failures.min(5)).min(self.cfg.renewal_interval);
                    tracing::warn!(
                        "renewal failed (attempt {failures}), retrying in {}s: {e:#}",
                        wait.as_secs()
                    );
                }
            }
        }
    }
}
