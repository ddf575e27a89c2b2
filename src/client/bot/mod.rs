//! The bot (`idmux start`): join with a one-time token, keep a renewable identity in the data
//! dir, renew it, and write identity outputs (destination dirs) as tbot does.
//!
//! - [`config`]: the tbot v2 YAML config and the bot's settings.
//! - [`outputs`]: what one renewal asks Auth for each output (CAs, roles, clusters, keys).
//! - [`heartbeat`]: bot instance heartbeats.
//! - What a destination dir holds: `idmux_identity::destination`.
//!
//! Lifecycle: take `DATA/lock` (flock; a second bot on the same data dir stops), then load the
//! stored identity: a valid one is renewed, an expired one (or a new token) joins again. Every
//! renewal asks Auth (gRPC over the `teleport-auth@` ALPN, or on Auth's own port when Auth is
//! addressed directly: `join_through_auth`, `Bot::auth_via`) for the cluster's signature
//! algorithm suite and a fresh bot identity with a new key of that suite's type (the
//! generation counter goes up by one), then for each output an impersonated identity, again
//! with a new key. When the proxy is down the bot keeps its files, logs one line per failure
//! and retries with backoff; a locked or removed bot stops.
//!
//! Logs: one info line per successful renewal (`renewed: ...`, with generation, expiry and
//! outputs) and one warn line per failed attempt; SIGHUP renews at once (`systemctl reload`),
//! SIGTERM and SIGINT stop. No line carries a key, a certificate or the join token.
//!
//! Keys: as tbot, a fresh key for every renewal and every output ("constantly rotate private
//! keys"). Each dir (the data dir, every output) is written as one set
//! (`idmux_identity::fsutil::FileSet`): a journal holding the whole set is made durable first,
//! then the files are renamed into place back to back, and a start finishes or rolls back what
//! a crash left, so no kill leaves a key beside another renewal's certificate. A reader that
//! opens `key` and `key-cert.pub` while the renames run can still pair two renewals, as with
//! tbot; the multiplexer's agent socket swaps key and certificate together, which is why the
//! fdpass ssh_config uses it.
//!
//! Auth moves a bot's generation before it answers a renewal, so the new identity is stored
//! before anything else is done with it (`answer_to_disk_ms` in the `renewed` line is that
//! window: a kill inside it locks the bot, as with Teleport), and a renewal that cannot be
//! stored (a full disk) keeps the identity in memory and stores it at the next attempt.
//! File writes and key generation run on tokio's blocking pool, off the thread that relays.

pub mod certs;
pub mod config;
mod dirguard;
pub(crate) mod heartbeat;
pub(crate) mod outputs;

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use russh::keys::ssh_key::Certificate;
use tokio::sync::watch;

use certs::{certs_text, identity_from_certs};
use config::{BotConfig, OutputKind};
use idmux_identity::destination as output;
use idmux_identity::files::token_hash;
use idmux_identity::openssh::ProxyWay;
use idmux_identity::{Identity, KeyPair, KeyType};
use idmux_transport::auth_client::{AuthClient, AuthVia};
use idmux_transport::auth_direct::{AuthDirect, FirstTrust};
use idmux_transport::refusal::Refused;
use idmux_transport::route::{Route, Way};
use idmux_transport::web::WebClient;
use idmux_wire::resources::SignatureAlgorithmSuite;
use idmux_wire::web::{CertsJson, RegisterUsingTokenRequest};

/// How often the bot checks its cluster's CAs for a rotation step.
const CA_CHECK_INTERVAL: Duration = Duration::from_secs(10);

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

/// Run blocking work (file writes and their fsyncs) on tokio's blocking pool, never on the
/// runtime's one thread that relays ssh bytes.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow!("a file write stopped: {e}"))?
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

use idmux_wire::web::b64e as b64;

/// Join the cluster with a token, as newest tbot: through the join service
/// (`teleport.join.v1.JoinService`, whose `ServerInit` picks the key type), falling back to
/// the legacy web join when the proxy does not serve it (NotImplemented, or no connection
/// before `ServerInit`).
pub(crate) async fn join(route: &Route, token: &str, ttl: Duration) -> Result<Identity> {
    use idmux_transport::join_client::{self, Outcome};
    let keygen = |suite: String| outputs::fresh_key(KeyType::for_suite(&suite));
    match join_client::join(route, token, ttl, keygen).await? {
        Outcome::Joined(joined) => {
            let (key, certs) = *joined;
            tracing::info!("joined through the join service");
            identity_from_join(key, &certs)
        }
        Outcome::Fallback(why) => {
            tracing::info!(
                "the join service is not available ({why}); joining through /webapi/host/credentials"
            );
            legacy_join(route.web(), token, ttl).await
        }
    }
}

/// An identity from the join service's certificates (DER and SSH wire format).
fn identity_from_join(key: KeyPair, c: &idmux_wire::join::Certificates) -> Result<Identity> {
    use russh::keys::ssh_key::PublicKey;
    use x509_cert::der::pem::{encode_string, LineEnding};
    let pem = |der: &[u8]| {
        encode_string("CERTIFICATE", LineEnding::LF, der)
            .map_err(|e| anyhow!("a certificate from the join service: {e}"))
    };
    let ssh = Certificate::from_bytes(&c.ssh_cert)
        .and_then(|c| c.to_openssh())
        .map_err(|e| anyhow!("the SSH certificate from the join service: {e}"))?;
    let ca_keys = c
        .ssh_ca_keys
        .iter()
        .map(|k| {
            PublicKey::from_bytes(k)
                .and_then(|k| k.to_openssh())
                .map_err(|e| anyhow!("an SSH CA key from the join service: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let tls_cas = c
        .tls_ca_certs
        .iter()
        .map(|d| pem(d))
        .collect::<Result<Vec<_>>>()?;
    identity_from_certs(key, &ssh, &pem(&c.tls_cert)?, tls_cas, &ca_keys)
}

/// The legacy join: `GET /webapi/find` picks the key type, then
/// `POST /webapi/host/credentials`.
async fn legacy_join(web: &WebClient, token: &str, ttl: Duration) -> Result<Identity> {
    let find = web.get_json("/webapi/find").await?;
    let suite = find
        .pointer("/auth/signature_algorithm_suite")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let key = outputs::fresh_key(KeyType::for_suite(suite)).await?;
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

/// Auth addressed directly (`--auth-server`, no proxy), as tbot's `registerThroughAuth`: trust
/// in Auth from the pins (or `--ca-path`, or `--insecure`), then the join service on Auth's
/// port. There is no fallback: the legacy `RegisterUsingToken` is not spoken.
pub(crate) async fn join_through_auth(
    addr: &str,
    trust: &FirstTrust,
    token: &str,
    ttl: Duration,
) -> Result<Identity> {
    use idmux_transport::join_client::{self, Outcome};
    let auth = AuthDirect::establish(addr, trust).await?;
    let keygen = |suite: String| outputs::fresh_key(KeyType::for_suite(&suite));
    match join_client::join_auth(&auth, token, ttl, keygen).await? {
        Outcome::Joined(joined) => {
            let (key, certs) = *joined;
            tracing::info!("joined through the join service of auth server {addr}");
            identity_from_join(key, &certs)
        }
        Outcome::Fallback(why) => bail!("join through auth server {addr} failed: {why}"),
    }
}

/// The proxy's address from Auth's `Ping` (`proxy_public_addr`), as tbot finds the proxy when
/// given Auth's address; refused in one line when Auth names none.
pub(crate) fn proxy_from_ping(
    addr: &str,
    ping: &idmux_wire::services::PingResponse,
) -> Result<String> {
    let p = ping.proxy_public_addr.trim();
    if p.is_empty() {
        bail!(
            "auth server {addr} names no proxy (its Ping has no proxy_public_addr); give the \
             proxy's address with --proxy-server"
        );
    }
    idmux_wire::hostport::split_host_port(p, "the proxy_public_addr of Auth's Ping")?;
    Ok(p.to_string())
}

/// The proxy address and way an ssh_config's ProxyCommand is given, as tbot writes them: the
/// configured address with TLS routing, the SSH proxy address without (`ProxySSHAddr`).
fn ssh_config_proxy(route: &Route) -> (String, ProxyWay) {
    let way = ProxyWay {
        tls_routing: !matches!(route.way(), Way::SshPort(_)),
        connection_upgrade: matches!(route.way(), Way::Upgrade),
    };
    (route.node_addr().to_string(), way)
}

/// Certificates that end more than this before the asked expiry were cut by the cluster.
const CUT_SLACK: Duration = Duration::from_secs(30);

/// Refuse to pass off certificates the cluster cut short (a role's `max_session_ttl`, a
/// bot's 24h cap, an impersonator's own expiry) as the lifetime asked for: a TTL is honoured
/// or refused, never changed silently.
fn check_issued(what: &str, id: &Identity, asked: Duration) -> Result<()> {
    let expires = id.expires()?;
    let lives = expires
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    if lives + CUT_SLACK < asked {
        tracing::warn!(
            "{what}: the cluster issued certificates valid until {} ({} from now), not the {} \
             asked for (a role's max_session_ttl or the bot's own expiry caps them); renewals \
             keep to the configured interval",
            rfc3339(expires),
            humantime::format_duration(Duration::from_secs(lives.as_secs())),
            humantime::format_duration(asked)
        );
    }
    Ok(())
}

/// How long SIGTERM waits for a join's or renewal's answer that the cluster may have acted on
/// (an Auth call's own deadline, and then some).
const STOP_GRACE: Duration = Duration::from_secs(35);

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
    /// The proxy's web API: the configured proxy, or with Auth addressed directly the one
    /// Auth's `Ping` names (learned once the bot has an identity).
    web: Option<WebClient>,
    /// The way to the proxy, from the last ping (see [`Bot::route`]).
    route: Option<Route>,
    identity: Option<Identity>,
    /// The cluster's suite, as Auth last said (`GetAuthPreference`).
    suite: Option<SignatureAlgorithmSuite>,
    /// When this process started (heartbeats carry the uptime).
    started: SystemTime,
    /// Where the own cluster's CAs stood at the last check (see [`Bot::ca_changed`]).
    ca_state: Option<Vec<String>>,
    /// The identity last written to each output (empty before the first write).
    written: Vec<Arc<Identity>>,
    /// Subscribers to one output's identity (the in-process multiplexer), by output index.
    published: Vec<(usize, watch::Sender<Arc<Identity>>)>,
    /// `DATA/lock`, held from [`Bot::start`] for the life of the bot.
    lock: Option<nix::fcntl::Flock<std::fs::File>>,
    /// A `flock` on each dir the bot writes (outputs, the multiplexer's), from [`Bot::start`]
    /// for the life of the bot: a second bot on one of them stops before it writes.
    dir_locks: Vec<nix::fcntl::Flock<std::fs::File>>,
    /// Set from the moment a join or a renewal request may have been acted on by the cluster
    /// (the token spent, generation N+1 issued) until its answer is stored: SIGTERM then waits
    /// for the answer rather than lose it (a lost renewal locks the bot at the next one).
    committing: Arc<std::sync::atomic::AtomicBool>,
    /// The bot identity Auth issued last is in memory only: storing it in the data dir failed
    /// (a full disk). Auth has moved to its generation, so it is stored at the next chance and
    /// renewed from memory meanwhile; the join token's hash goes with it after a join.
    unsaved: Option<Unsaved>,
    /// From Auth's answer to the new bot identity being durable in the data dir, at the last
    /// renewal or join (a crash inside this window loses a generation Auth has issued).
    store_window: Option<Duration>,
}

/// What [`Bot::unsaved`] still has to store.
struct Unsaved {
    token: Option<String>,
}

/// Sets a flag for as long as it lives.
struct Committing(Arc<std::sync::atomic::AtomicBool>);

impl Committing {
    fn new(flag: &Arc<std::sync::atomic::AtomicBool>) -> Committing {
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
        Committing(flag.clone())
    }
}

impl Drop for Committing {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Bot {
    pub fn new(cfg: BotConfig) -> Result<Bot> {
        let web = match cfg.auth_direct() {
            Some(_) => {
                cfg.first_trust()?;
                None
            }
            None => Some(WebClient::new(&cfg.proxy_server, &cfg.trust)?),
        };
        Ok(Bot {
            cfg,
            web,
            route: None,
            identity: None,
            suite: None,
            started: SystemTime::now(),
            ca_state: None,
            written: Vec::new(),
            published: Vec::new(),
            lock: None,
            dir_locks: Vec::new(),
            committing: Default::default(),
            unsaved: None,
            store_window: None,
        })
    }

    /// The way to the proxy, found again from `/webapi/ping` (tbot pings before it joins or
    /// renews): TLS routing or not, and the upgrade through a load balancer (cached per
    /// address). Logged when it changes.
    async fn route(&mut self) -> Result<Route> {
        let web = match &self.web {
            Some(w) => w.clone(),
            None => {
                let w = self.proxy_named_by_auth().await?;
                self.web = Some(w.clone());
                w
            }
        };
        let ping = web.ping().await?;
        let route = Route::discover(web, &ping.json, self.cfg.route_flags).await?;
        if self.route.as_ref().map(|r| r.describe()) != Some(route.describe()) {
            tracing::info!("proxy path: {}", route.describe());
        }
        self.route = Some(route.clone());
        Ok(route)
    }

    /// Auth addressed directly: the proxy its `Ping` names (tbot then finds it with the web
    /// API), its web certificate checked with `--ca-path`, or the system roots and the
    /// cluster's host CA (`GetClusterCACert`), or not with `--insecure`.
    async fn proxy_named_by_auth(&self) -> Result<WebClient> {
        use idmux_wire::services::{
            Empty, GetClusterCaCertResponse, PingRequest, PingResponse, GET_CLUSTER_CA_CERT, PING,
        };
        let addr = self
            .cfg
            .auth_direct()
            .ok_or_else(|| anyhow!("no proxy address"))?;
        let id = self
            .identity
            .as_ref()
            .ok_or_else(|| anyhow!("no identity to ask auth server {addr} for the proxy"))?;
        let mut auth = AuthClient::connect_via(&AuthVia::Direct(addr.to_string()), id).await?;
        let ping: PingResponse = auth.unary(PING, "the ping", PingRequest {}).await?;
        let proxy = proxy_from_ping(addr, &ping)?;
        let trust = match &self.cfg.trust {
            idmux_transport::web::Trust::System => {
                let cas: GetClusterCaCertResponse = auth
                    .unary(GET_CLUSTER_CA_CERT, "the CA request", Empty {})
                    .await?;
                idmux_transport::web::Trust::SystemAnd(vec![
                    String::from_utf8_lossy(&cas.tls_ca).into_owned()
                ])
            }
            t => t.clone(),
        };
        tracing::info!("auth server {addr} names the proxy {proxy}");
        WebClient::new(&proxy, &trust)
    }

    /// How Auth is reached now: directly, or by the route to the proxy.
    fn auth_via(&self) -> Result<AuthVia> {
        if let Some(a) = self.cfg.auth_direct() {
            return Ok(AuthVia::Direct(a.to_string()));
        }
        self.route
            .clone()
            .map(AuthVia::Proxy)
            .ok_or_else(|| anyhow!("no route to the proxy"))
    }

    /// The way to the proxy found at start (for the multiplexer). Call after [`Bot::start`].
    pub fn current_route(&self) -> Option<Route> {
        self.route.clone()
    }

    /// Obtain the bot identity: renew a valid stored one, else join with the token.
    async fn start_identity(&mut self) -> Result<()> {
        // Auth addressed directly needs no proxy to join or renew.
        if self.cfg.auth_direct().is_none() {
            self.route().await?;
        }
        let where_ = match self.cfg.data_dir() {
            Some(d) => d.display().to_string(),
            None => "memory".to_string(),
        };
        // In memory: the identity of this run, if it is still valid.
        let stored = match self.cfg.data_dir() {
            Some(d) if d.join("key-cert.pub").exists() => Some(Identity::read_data_dir(d)?),
            Some(_) => None,
            None => self.identity.clone(),
        };
        let token_changed = match (
            &self.cfg.token,
            self.cfg
                .data_dir()
                .map(|d| std::fs::read_to_string(d.join("tokenhash"))),
        ) {
            (Some(t), Some(Ok(h))) => h.trim() != token_hash(t),
            _ => false,
        };
        if let Some(id) = stored.filter(|_| !token_changed) {
            if id.expires()? > SystemTime::now() + Duration::from_secs(5) {
                tracing::debug!("renewing the stored identity in {where_}");
                self.identity = Some(id);
                return self.renew_bot().await;
            }
            tracing::info!("the stored identity in {where_} has expired; joining again");
        }
        let Some(token) = self.cfg.token.clone() else {
            bail!("no valid identity in {where_} and no --token to join with");
        };
        let ttl = self.cfg.lifetime.ttl;
        let id = match self.cfg.auth_direct() {
            Some(addr) => {
                let trust = self.cfg.first_trust()?;
                let _committing = Committing::new(&self.committing);
                join_through_auth(addr, &trust, &token, ttl).await?
            }
            None => {
                let route = self
                    .route
                    .clone()
                    .ok_or_else(|| anyhow!("no route to the proxy"))?;
                let _committing = Committing::new(&self.committing);
                join(&route, &token, ttl).await?
            }
        };
        let answered = std::time::Instant::now();
        self.store_bot_identity(&id, answered, Some(token)).await?;
        check_issued("the bot identity", &id, self.cfg.lifetime.ttl)?;
        tracing::info!(cluster = %id.cluster_name()?, "joined with the token; identity stored in {where_}");
        self.identity = Some(id);
        Ok(())
    }

    /// Renew the bot's own identity: a new key of the cluster's suite, generation + 1.
    async fn renew_bot(&mut self) -> Result<()> {
        let cur = self
            .identity
            .as_ref()
            .ok_or_else(|| anyhow!("no identity to renew"))?;
        let mut auth = AuthClient::connect_via(&self.auth_via()?, cur).await?;
        let suite = outputs::suite(&mut auth).await?;
        self.suite = Some(suite);
        let key = outputs::fresh_key(outputs::key_type_for(suite)).await?;
        let user = cur.tls_identity()?.username;
        let req = outputs::renewal_request(&user, &key, self.cfg.lifetime.ttl)?;
        let _committing = Committing::new(&self.committing);
        let certs = auth.generate_user_certs(req).await?;
        let answered = std::time::Instant::now();
        // Auth has issued the next generation: nothing comes before storing it.
        let (ssh, tls, tls_cas, ssh_cas) = certs_text(&certs);
        let new = identity_from_certs(key, &ssh, &tls, tls_cas, &ssh_cas)?;
        self.store_bot_identity(&new, answered, None).await?;
        check_issued("the bot identity", &new, self.cfg.lifetime.ttl)?;
        tracing::debug!(
            generation = new.tls_identity()?.generation,
            "renewed the bot identity"
        );
        self.identity = Some(new);
        Ok(())
    }

    /// Store a bot identity Auth has just issued (`answered`: when its answer came) in the
    /// data dir as one set, off the runtime's thread. On failure the identity stays the bot's
    /// in memory ([`Bot::unsaved`]): Auth has moved to its generation, so the next attempt
    /// renews from it and stores again; the error says so.
    async fn store_bot_identity(
        &mut self,
        id: &Identity,
        answered: std::time::Instant,
        token: Option<String>,
    ) -> Result<()> {
        let Some(d) = self.cfg.data_dir().map(Path::to_path_buf) else {
            return Ok(());
        };
        // A join whose identity was never stored still owes the token's hash.
        let token = token.or_else(|| self.unsaved.take().and_then(|u| u.token));
        let (owned, t) = (id.clone(), token.clone());
        let dir = d.clone();
        let stored = blocking(move || owned.write_data_dir(&dir, t.as_deref())).await;
        match stored {
            Ok(durable) => {
                self.unsaved = None;
                self.store_window = Some(durable.saturating_duration_since(answered));
                Ok(())
            }
            Err(e) => {
                let generation = id.tls_identity().map(|t| t.generation).unwrap_or(0);
                self.identity = Some(id.clone());
                self.unsaved = Some(Unsaved { token });
                Err(e.context(format!(
                    "{}: cannot store the bot identity Auth issued (generation {generation}); \
                     it is kept in memory and stored at the next attempt (a restart before \
                     then needs a new token)",
                    d.display()
                )))
            }
        }
    }

    /// At stop: one more try to store an identity that is in memory only (see
    /// [`Bot::unsaved`]); if that fails too, say what the next start will meet.
    async fn store_before_stop(&mut self) {
        if self.unsaved.is_none() {
            return;
        }
        let Some(id) = self.identity.clone() else {
            return;
        };
        match self
            .store_bot_identity(&id, std::time::Instant::now(), None)
            .await
        {
            Ok(()) => tracing::info!("stored the bot identity that was in memory only"),
            Err(e) => tracing::error!(
                "{e:#}; stopping now loses it: the next start will be refused (generation \
                 mismatch) and needs a new token"
            ),
        }
    }

    /// The settings the bot runs with.
    pub fn config(&self) -> &BotConfig {
        &self.cfg
    }

    /// Write the outputs `which` says (every one with `None`), and send each one's identity to
    /// its subscribers.
    async fn write_outputs(&mut self, which: Option<&[usize]>) -> Result<()> {
        let bot = self
            .identity
            .as_ref()
            .ok_or_else(|| anyhow!("no identity"))?;
        if self.cfg.outputs.is_empty() {
            return Ok(());
        }
        let route = self
            .route
            .clone()
            .ok_or_else(|| anyhow!("no route to the proxy"))?;
        let (proxy, way) = ssh_config_proxy(&route);
        let via = self.auth_via()?;
        let mut auth = AuthClient::connect_via(&via, bot).await?;
        let suite = match self.suite {
            Some(s) => s,
            None => outputs::suite(&mut auth).await?,
        };
        self.suite = Some(suite);
        let pems = outputs::ca_pems(&mut auth).await?;
        let bot_user = bot.tls_identity()?.username;
        let own = bot.cluster_name()?;
        let mut written = self.written.clone();
        for (i, o) in self.cfg.outputs.iter().enumerate() {
            if which.is_some_and(|w| !w.contains(&i)) && written.get(i).is_some() {
                continue;
            }
            let ttl = self.cfg.lifetime_of(o).ttl;
            let roles = outputs::output_roles(&mut auth, &o.roles, &bot_user).await?;
            let key = outputs::fresh_key(outputs::key_type_for(suite)).await?;
            let req = outputs::impersonation_request(&bot_user, &own, &key, roles, ttl)?;
            let certs = auth.generate_user_certs(req).await?;
            let (ssh, tls, _, _) = certs_text(&certs);
            // As tbot: the output trusts the host CAs of the CA resources, not the answer's
            // CA lists (which hold the user CA only).
            let mut id = identity_from_certs(key, &ssh, &tls, pems.host.clone(), &[])?;
            let mut as_output = AuthClient::connect_via(&via, &id).await?;
            let clusters = outputs::cluster_names(&mut as_output, &own).await?;
            id.host_cas = outputs::host_cas(&mut as_output, &clusters).await?;
            let files = match o.kind {
                OutputKind::Identity { ssh_config } => output::Files::Identity { ssh_config },
                OutputKind::Multiplexer => output::Files::Multiplexer,
            };
            let (dir, owned, cas, proxy) = (o.dir.clone(), id.clone(), pems.clone(), proxy.clone());
            let (mode, bare_names, fdpass) = (o.mode, o.bare_names, o.fdpass_command.clone());
            blocking(move || {
                let plan = output::Plan {
                    proxy: &proxy,
                    way,
                    mode,
                    bare_names,
                    files,
                    fdpass_command: &fdpass,
                };
                output::write_destination(&dir, &owned, &cas, &plan)
            })
            .await?;
            check_issued(&format!("output {}", o.dir.display()), &id, ttl)?;
            tracing::debug!(dest = %o.dir.display(), expires = %rfc3339(id.expires()?), "wrote output");
            let id = Arc::new(id);
            if i < written.len() {
                written[i] = id;
            } else {
                written.push(id);
            }
            if let Some((_, tx)) = self.published.iter().find(|(j, _)| *j == i) {
                // A receiver that has gone (the multiplexer stopped) is no reason to fail.
                let _ = tx.send(written[i].clone());
            }
        }
        self.written = written;
        Ok(())
    }

    /// Has a CA of the bot's cluster moved (a rotation step) since the last check? tbot renews
    /// at once when one does, so known_hosts, the CA files and the bot's own certificates
    /// follow a rotation however fast its phases are stepped. The first check only records.
    async fn ca_changed(&mut self) -> Result<bool> {
        let bot = self
            .identity
            .as_ref()
            .ok_or_else(|| anyhow!("no identity"))?;
        let mut auth = AuthClient::connect_via(&self.auth_via()?, bot).await?;
        let now = outputs::ca_state(&mut auth, &bot.cluster_name()?).await?;
        let changed = self.ca_state.as_ref().is_some_and(|was| *was != now);
        self.ca_state = Some(now);
        Ok(changed)
    }

    /// Send a heartbeat in the background with the current identity (never delays renewal).
    fn spawn_heartbeat(&self, startup: bool) {
        let Some(id) = self.identity.clone() else {
            return;
        };
        let req = heartbeat::heartbeat(self.started, SystemTime::now(), startup, self.cfg.oneshot);
        let Ok(via) = self.auth_via() else {
            return;
        };
        tokio::spawn(async move {
            match heartbeat::submit(&via, &id, req).await {
                Ok(true) => tracing::debug!(startup, "heartbeat sent"),
                Ok(false) => tracing::debug!("the cluster does not take bot heartbeats"),
                Err(e) => tracing::warn!("heartbeat not sent: {e:#}"),
            }
        });
    }

    /// The one-shot run's heartbeat (`one_shot`), waited for at most `limit`.
    pub async fn heartbeat_once(&self, limit: Duration) {
        let Some(id) = self.identity.clone() else {
            return;
        };
        let req = heartbeat::heartbeat(self.started, SystemTime::now(), true, true);
        let Ok(via) = self.auth_via() else {
            return;
        };
        match tokio::time::timeout(limit, heartbeat::submit(&via, &id, req)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("heartbeat not sent: {e:#}"),
            Err(_) => tracing::warn!("heartbeat not sent: no answer in {}s", limit.as_secs()),
        }
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
        let stored_ms = self
            .store_window
            .map(|w| format!("{:.2}", w.as_secs_f64() * 1e3))
            .unwrap_or_default();
        tracing::info!(
            generation,
            expires = %expires,
            outputs = %outputs.join(","),
            answer_to_disk_ms = %stored_ms,
            "{what}: bot identity and {} output(s) written",
            outputs.len()
        );
    }

    /// Check and lock the dirs, take the data dir's lock, obtain the bot identity (renew or
    /// join) and write every output once. A dir that is refused stops the bot before the
    /// token is spent.
    pub async fn start(&mut self) -> Result<()> {
        for w in &self.cfg.warnings {
            tracing::warn!("{w}");
        }
        dirguard::check_data_dir(&self.cfg)?;
        match self.cfg.data_dir() {
            Some(d) => self.lock = Some(lock_data_dir(d)?),
            None => tracing::warn!(
                "the bot's identity is kept in memory only (storage: memory): a restart must join \
                 again, which a one-time token allows only once"
            ),
        }
        self.dir_locks = dirguard::guard_dirs(&self.cfg)?;
        // With every lock held, no writer of ours is mid-write: a journal or a temp file is a
        // killed one's. A committed set is finished, an uncommitted one rolled back.
        let dirs = self
            .cfg
            .data_dir()
            .into_iter()
            .chain(self.cfg.outputs.iter().map(|o| o.dir.as_path()));
        for d in dirs {
            let r = idmux_identity::fsutil::recover(d)?;
            if r.finished > 0 {
                tracing::info!(
                    "{}: finished the set of files an interrupted write had committed ({} file(s))",
                    d.display(),
                    r.finished
                );
            }
            if r.removed > 0 {
                tracing::info!(
                    "{}: removed {} temp file(s) an interrupted write left",
                    d.display(),
                    r.removed
                );
            }
        }
        self.start_identity().await?;
        if self.route.is_none() {
            // Auth addressed directly: the proxy it names, for ssh_config and multiplexers.
            self.route().await?;
        }
        self.write_outputs(None).await?;
        self.log_renewed("identity ready");
        Ok(())
    }

    /// Renew on schedule until SIGTERM or SIGINT; a final error (a locked or removed bot)
    /// stops it. Call after [`Bot::start`].
    pub async fn renew_until_stopped(mut self) -> Result<()> {
        let r = self.renew_loop().await;
        self.store_before_stop().await;
        r
    }

    async fn renew_loop(&mut self) -> Result<()> {
        let mut failures = 0u32;
        let mut next = tokio::time::Instant::now() + self.cfg.lifetime.renewal;
        // Outputs with a lifetime of their own are also written on their own schedule.
        let own_schedule: Vec<(usize, Duration)> = self
            .cfg
            .outputs
            .iter()
            .enumerate()
            .filter(|(_, o)| o.lifetime.is_some_and(|l| l != self.cfg.lifetime))
            .map(|(i, o)| (i, self.cfg.lifetime_of(o).renewal))
            .collect();
        let mut due: Vec<(usize, tokio::time::Instant)> = own_schedule
            .iter()
            .map(|(i, r)| (*i, tokio::time::Instant::now() + *r))
            .collect();
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).context("cannot watch for SIGHUP")?;
        let mut term = signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?;
        // CA rotations: checked every 10 s (IDMUX_CA_CHECK_INTERVAL overrides, e.g. `1s`).
        let every = std::env::var("IDMUX_CA_CHECK_INTERVAL")
            .ok()
            .and_then(|v| humantime::parse_duration(&v).ok())
            .unwrap_or(CA_CHECK_INTERVAL);
        let mut ca_checks = tokio::time::interval(every);
        ca_checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is at once: the startup heartbeat.
        let mut beats = tokio::time::interval(heartbeat::INTERVAL);
        // After a suspend, one heartbeat, not a burst.
        beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut startup = true;
        // SIGTERM or SIGINT stops the bot at once, whatever it is waiting for (a stalled
        // proxy holds a renewal for up to a stage's deadline; stopping must not wait for it).
        let (stop_tx, mut stop) = watch::channel(false);
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                _ = tokio::signal::ctrl_c() => {}
            }
            let _ = stop_tx.send(true);
        });
        let mut stopping = stop.clone();
        loop {
            // Woken only because an output with its own schedule is due (not the bot's
            // renewal, a SIGHUP or a CA rotation, which renew everything).
            let mut outputs_only = false;
            tokio::select! {
                _ = beats.tick() => {
                    self.spawn_heartbeat(std::mem::take(&mut startup));
                    continue;
                }
                _ = ca_checks.tick() => {
                    let check = tokio::time::timeout(every.max(Duration::from_secs(10)), self.ca_changed());
                    let checked = tokio::select! {
                        r = check => r,
                        _ = stopping.wait_for(|s| *s) => return Ok(()),
                    };
                    match checked {
                        Ok(Ok(true)) => tracing::info!("a CA of the cluster rotated: renewing now"),
                        Ok(Ok(false)) => continue,
                        Ok(Err(e)) => {
                            tracing::debug!("CA rotation check failed: {e:#}");
                            continue;
                        }
                        Err(_) => continue,
                    }
                }
                _ = tokio::time::sleep_until(next) => {}
                _ = tokio::time::sleep_until(
                    due.iter().map(|(_, t)| *t).min().unwrap_or(next)
                ), if !due.is_empty() => outputs_only = true,
                // `systemctl reload`: renew now.
                _ = hup.recv() => tracing::debug!("SIGHUP: renewing now"),
                _ = stop.wait_for(|s| *s) => return Ok(()),
            }
            let committing = self.committing.clone();
            let now = tokio::time::Instant::now();
            // Only outputs with their own schedule are due (the bot's renewal is not): write
            // those alone, with the current bot identity.
            let only: Option<Vec<usize>> = (outputs_only && now < next).then(|| {
                due.iter()
                    .filter(|(_, t)| *t <= now)
                    .map(|(i, _)| *i)
                    .collect()
            });
            let r = {
                let work = async {
                    self.route().await?;
                    if let Some(only) = &only {
                        return self.write_outputs(Some(only)).await;
                    }
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
                    self.write_outputs(None).await
                };
                tokio::pin!(work);
                tokio::select! {
                    r = &mut work => r,
                    _ = stop.wait_for(|s| *s) => {
                        if committing.load(std::sync::atomic::Ordering::SeqCst) {
                            // The cluster may have acted on the request: keep its answer.
                            tracing::info!("stopping once the renewal in flight is stored");
                            let _ = tokio::time::timeout(STOP_GRACE, &mut work).await;
                        }
                        return Ok(());
                    }
                }
            };
            match r.map_err(RenewError::classify) {
                Ok(()) => {
                    failures = 0;
                    let now = tokio::time::Instant::now();
                    for (i, t) in due.iter_mut() {
                        if only.as_ref().is_none_or(|o| o.contains(i)) {
                            let every = own_schedule.iter().find(|(j, _)| j == i).map(|(_, r)| *r);
                            *t = now + every.unwrap_or(self.cfg.lifetime.renewal);
                        }
                    }
                    match &only {
                        None => {
                            next = now + self.cfg.lifetime.renewal;
                            self.log_renewed("renewed");
                        }
                        Some(o) => tracing::info!(
                            outputs = %o.iter().map(|i| self.cfg.outputs[*i].dir.display().to_string()).collect::<Vec<_>>().join(","),
                            "renewed {} output(s) on their own schedule", o.len()
                        ),
                    }
                }
                Err(RenewError::Final(e)) => return Err(e),
                Err(RenewError::Passing(e)) => {
                    failures += 1;
                    let wait =
                        Duration::from_secs(1u64 << failures.min(5)).min(self.cfg.lifetime.renewal);
                    next = tokio::time::Instant::now() + wait;
                    tracing::warn!(
                        "renewal failed (attempt {failures}), retrying in {}s: {e:#}",
                        wait.as_secs()
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idmux_wire::services::PingResponse;

    #[test]
    fn the_proxy_is_the_one_auths_ping_names() {
        let mut ping = PingResponse {
            proxy_public_addr: "proxy.example.com:443".into(),
            ..Default::default()
        };
        assert_eq!(
            proxy_from_ping("a:3025", &ping).unwrap(),
            "proxy.example.com:443"
        );
        ping.proxy_public_addr = String::new();
        assert_eq!(
            proxy_from_ping("a:3025", &ping).unwrap_err().to_string(),
            "auth server a:3025 names no proxy (its Ping has no proxy_public_addr); give the \
             proxy's address with --proxy-server"
        );
    }
}
