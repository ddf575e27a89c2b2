//! The dev cluster's Auth gRPC service: `/proto.AuthService/GenerateUserCerts` only.
//!
//! Connections offering ALPN `teleport-auth@<hex(cluster)>.teleport.cluster.local` reach it
//! (see `serve_conn`): mutual TLS with a certificate for `teleport.cluster.local` and
//! `*.teleport.cluster.local` from the host CA, a client certificate from the user CA required,
//! then HTTP/2 gRPC on that one connection. Any other method answers UNIMPLEMENTED.
//!
//! The caller is the identity in its client certificate; it must be a bot (`bot-NAME`) that
//! exists and is not locked. Two kinds of request, as tbot sends them (PROTOCOL.md section 6):
//! - renewal (`use_role_requests` false): from the renewable identity, for its own user. The
//!   certificate's generation must equal the stored one, which is then incremented and put in
//!   the new certificates; a mismatch means two copies of one identity are renewing (a copied
//!   data dir), so the bot is locked.
//! - impersonation (`use_role_requests` true): output certificates for a subset of the bot's
//!   roles (empty = all), as `auth sign` issues them.
//!
//! The decisions are plain functions over the state ([`renew`], [`impersonated_roles`], ...),
//! so they are tested without a network.

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Result};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::server::TlsStream;
use tonic::{Code, Status};

use crate::auth::{self, IssuedCerts, OutputPlan, MAX_RENEWABLE_TTL};
use crate::ca::ClusterCas;
use crate::state::{Bot, State};
use crate::Ctx;
use idmux_identity::fsutil::{self, PUBLIC};
use idmux_identity::keys::KeyType;
use idmux_identity::TlsIdentity;
use idmux_wire::proto::{Certs, UserCertsRequest, GENERATE_USER_CERTS};

/// Offered ALPNs starting with this route to Auth.
pub(crate) const ALPN_AUTH_PREFIX: &[u8] = b"teleport-auth@";
/// The DNS names of Auth's certificate.
pub(crate) const AUTH_DNS_NAMES: [&str; 2] = ["teleport.cluster.local", "*.teleport.cluster.local"];
/// TTL of certificates when the request sets no expiry.
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// For tests: hold the answer to a bot's renewal this long after recording it
/// ([`crate::ProxyOptions::renewal_answer_delay`]), so a test can stop the bot while the new
/// generation exists only in Auth's state and in flight.
pub(crate) const RENEWAL_ANSWER_DELAY_ENV: &str = "IDMUX_DEV_RENEWAL_ANSWER_DELAY";
/// Why a bot is locked when two copies of its renewable identity renew.
pub(crate) const GENERATION_MISMATCH: &str =
    "renewable certificate generation mismatch (a copied data dir?)";

/// Does a client offering these ALPNs want Auth?
pub(crate) fn wants_auth(offered: &[Vec<u8>]) -> bool {
    offered.iter().any(|p| p.starts_with(ALPN_AUTH_PREFIX))
}

/// Auth's TLS server configurations: its key and certificate in `dir` (created on first use,
/// the certificate reissued on every start and CA change, from the serving host CA keys), ALPN
/// `h2`. The first requires a client certificate from a trusted user CA key (the end of the
/// `teleport-auth@` route); the second, Auth's own port (`--auth-listen`), takes one if given
/// (Teleport's `tls.VerifyClientCertIfGiven`): a caller without is the Nop role.
pub(crate) fn tls_configs(
    dir: &Path,
    cas: &ClusterCas,
) -> Result<(rustls::ServerConfig, rustls::ServerConfig)> {
    let key = crate::key_file(&dir.join("auth_tls.key"), KeyType::EcdsaP256)?;
    let dns: Vec<String> = AUTH_DNS_NAMES.iter().map(|s| s.to_string()).collect();
    let cert = cas.issue_tls_server(
        &key.spki_der()?,
        "auth",
        &dns,
        &[],
        Duration::from_secs(365 * 86400),
    )?;
    fsutil::write_atomic(&dir.join("auth_tls.crt"), cert.as_bytes(), PUBLIC)?;
    // Every trusted user CA certificate (a rotation has two).
    let roots = crate::user_roots(cas)?;
    let required = WebPkiClientVerifier::builder(roots.clone()).build()?;
    let optional = WebPkiClientVerifier::builder(roots)
        .allow_unauthenticated()
        .build()?;
    let chain = crate::cert_chain(&cert)?;
    let mut cfg = crate::tls_suites::go_order(
        crate::tls_suites::server_builder()?
            .with_client_cert_verifier(required)
            .with_single_cert(chain.clone(), key.to_rustls()?)?,
    );
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let mut direct = crate::tls_suites::go_order(
        crate::tls_suites::server_builder()?
            .with_client_cert_verifier(optional)
            .with_single_cert(chain, key.to_rustls()?)?,
    );
    direct.alpn_protocols = vec![b"h2".to_vec()];
    Ok((cfg, direct))
}

/// The identity in the verified client certificate of a TLS connection.
pub(crate) fn peer_identity<S>(tls: &TlsStream<S>) -> Result<TlsIdentity> {
    let der = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| anyhow!("no client certificate"))?;
    let cert = idmux_identity::tlsid::parse_cert_der(der)?;
    TlsIdentity::from_name(&cert.tbs_certificate.subject)
}

/// Serve gRPC on one Auth connection from `caller` until the client closes it.
pub async fn serve<S: crate::Io>(
    ctx: Arc<Ctx>,
    tls: TlsStream<S>,
    caller: TlsIdentity,
) -> Result<()> {
    serve_as(ctx, tls, Some(caller)).await
}

/// [`serve`] for a caller that may have presented no certificate (`None`: the Nop role, on
/// Auth's own port).
pub async fn serve_as<S: crate::Io>(
    ctx: Arc<Ctx>,
    tls: TlsStream<S>,
    caller: Option<TlsIdentity>,
) -> Result<()> {
    let caller = caller.map(Arc::new);
    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let (ctx, caller) = (ctx.clone(), caller.clone());
        async move { Ok::<_, Infallible>(route(ctx, caller, req).await) }
    });
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), svc)
        .await
        .map_err(|e| anyhow!("auth gRPC: {e}"))
}

/// What a caller with no certificate (Teleport's Nop role) may call: the join service,
/// `GetClusterCACert` ("Allow all roles to get the CA certs") and `Ping` ("does not require
/// special permissions"), `lib/auth/auth_with_roles.go`, `lib/auth/grpcserver.go`.
pub(crate) fn nop_may_call(path: &str) -> bool {
    use idmux_wire::services::{GET_CLUSTER_CA_CERT, PING};
    [idmux_wire::join::JOIN, GET_CLUSTER_CA_CERT, PING].contains(&path)
}

/// Teleport's refusal of a call by the Nop role: `GenerateUserCerts` fails its
/// `currentUserAction` check (`create` on `user`); every other check here is simpler.
pub(crate) fn nop_refusal(path: &str) -> Status {
    if path == GENERATE_USER_CERTS {
        return denied(r#"access denied to perform action "create" on "user""#.into());
    }
    denied("access denied".into())
}

/// `Ping`: the cluster's name, this server's version and the proxy's public address.
pub(crate) fn ping(ctx: &Ctx) -> idmux_wire::services::PingResponse {
    idmux_wire::services::PingResponse {
        cluster_name: ctx.live().cas.cluster.clone(),
        server_version: concat!("idmux-dev-", env!("CARGO_PKG_VERSION")).into(),
        proxy_public_addr: ctx.opts.public_addr.clone(),
        ..Default::default()
    }
}

async fn route(
    ctx: Arc<Ctx>,
    caller: Option<Arc<TlsIdentity>>,
    req: http::Request<hyper::body::Incoming>,
) -> http::Response<tonic::body::Body> {
    use crate::auth_resources as res;
    use idmux_wire::services::*;
    let path = req.uri().path().to_string();
    if path == idmux_wire::join::JOIN {
        return crate::join_service::route(ctx, req).await;
    }
    if path == PING {
        let c = ctx.clone();
        return unary(req, move |_: PingRequest| Ok(ping(&c))).await;
    }
    let Some(caller) = caller else {
        if !nop_may_call(&path) {
            return nop_refusal(&path).into_http();
        }
        // The join service and Ping are answered above: GetClusterCACert is left.
        let c = ctx.clone();
        return unary(req, move |_: Empty| {
            Ok(res::get_cluster_ca_cert(&c.live().cas))
        })
        .await;
    };
    let (c, who) = (ctx.clone(), caller.clone());
    match path.as_str() {
        GENERATE_USER_CERTS => {
            let delay = c.opts.renewal_answer_delay;
            let renewed = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = renewed.clone();
            let answer = unary(req, move |r: UserCertsRequest| {
                let out = generate_user_certs(&c.dir, &c.live().cas, &who, &r, SystemTime::now());
                flag.store(out.is_ok() && !r.use_role_requests, Ordering::SeqCst);
                out
            })
            .await;
            if let Some(d) = delay.filter(|_| renewed.load(Ordering::SeqCst)) {
                tracing::info!(user = %caller.username, "holding the answer to a renewal for {d:?}");
                tokio::time::sleep(d).await;
            }
            answer
        }
        GET_ROLE => {
            unary(req, move |r: GetRoleRequest| {
                let st = State::load(&c.dir).map_err(internal)?;
                res::get_role(&st, &who, &r.name)
            })
            .await
        }
        GET_CLUSTER_CA_CERT => {
            unary(req, move |_: Empty| {
                Ok(res::get_cluster_ca_cert(&c.live().cas))
            })
            .await
        }
        GET_AUTH_PREFERENCE => {
            unary(req, move |_: Empty| {
                Ok(res::get_auth_preference(&c.live().cas))
            })
            .await
        }
        GET_CERT_AUTHORITY => {
            unary(req, move |r: GetCertAuthorityRequest| {
                res::get_cert_authority(&c.live().clusters(), &r)
            })
            .await
        }
        GET_CERT_AUTHORITIES => {
            unary(req, move |r: GetCertAuthoritiesRequest| {
                res::get_cert_authorities(&c.live().clusters(), &r)
            })
            .await
        }
        LIST_REMOTE_CLUSTERS => {
            unary(req, move |r: ListRemoteClustersRequest| {
                res::list_remote_clusters(&c.live().leaf_names(), &r)
            })
            .await
        }
        SUBMIT_HEARTBEAT => {
            unary(req, move |r: SubmitHeartbeatRequest| {
                res::submit_heartbeat(&c.dir, &who, &r, SystemTime::now()).map(|()| Empty {})
            })
            .await
        }
        other => Status::unimplemented(unknown(other)).into_http(),
    }
}

/// grpc-go's words for a call it cannot route: an unregistered service, or a method the
/// registered service lacks.
pub(crate) fn unknown(path: &str) -> String {
    const SERVED: [&str; 5] = [
        "proto.AuthService",
        "teleport.join.v1.JoinService",
        "teleport.trust.v1.TrustService",
        "teleport.presence.v1.PresenceService",
        "teleport.machineid.v1.BotInstanceService",
    ];
    let service = service_of(path);
    if SERVED.contains(&service) {
        format!("unknown method {} for service {service}", method_of(path))
    } else {
        format!("unknown service {service}")
    }
}

fn service_of(path: &str) -> &str {
    path.trim_start_matches('/').split('/').next().unwrap_or("")
}

fn method_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or("")
}

/// Answer one unary call with `f`, run off the async workers (state changes take a file lock).
async fn unary<Req, Resp, F>(
    req: http::Request<hyper::body::Incoming>,
    f: F,
) -> http::Response<tonic::body::Body>
where
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
    F: Fn(Req) -> Result<Resp, Status> + Send + Sync + 'static,
{
    let codec = tonic_prost::ProstCodec::<Resp, Req>::default();
    tonic::server::Grpc::new(codec)
        .unary(Unary { f: Arc::new(f) }, req)
        .await
}

struct Unary<F> {
    f: Arc<F>,
}

type UnaryFuture<Resp> =
    Pin<Box<dyn Future<Output = Result<tonic::Response<Resp>, Status>> + Send>>;

impl<Req, Resp, F> tonic::server::UnaryService<Req> for Unary<F>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    F: Fn(Req) -> Result<Resp, Status> + Send + Sync + 'static,
{
    type Response = Resp;
    type Future = UnaryFuture<Resp>;

    fn call(&mut self, req: tonic::Request<Req>) -> Self::Future {
        let f = self.f.clone();
        Box::pin(async move {
            let req = req.into_inner();
            let resp = tokio::task::spawn_blocking(move || f(req))
                .await
                .map_err(|e| Status::internal(format!("request failed: {e}")))??;
            Ok(tonic::Response::new(resp))
        })
    }
}

/// `GenerateUserCerts` for `caller` against the cluster in `dir`.
pub fn generate_user_certs(
    dir: &Path,
    cas: &ClusterCas,
    caller: &TlsIdentity,
    req: &UserCertsRequest,
    now: SystemTime,
) -> Result<Certs, Status> {
    let name = caller_bot_name(caller)?;
    let (ssh_pub, spki) = auth::public_keys(&req.ssh_public_key, &req.tls_public_key)
        .map_err(|e| invalid_keys(req, e))?;
    let ttl = requested_ttl(req, now);
    let impersonating = req.use_role_requests;
    let issued = if impersonating {
        if caller.disallow_reissue {
            return Err(denied(format!(
                "user {} holds certificates that may not be reissued",
                caller.username
            )));
        }
        let st = State::load(dir).map_err(internal)?;
        let bot = check_bot(&st, name)?;
        let roles = impersonated_roles(bot, name, &req.role_requests)?;
        let plan = OutputPlan::new(&st, name, Some(&roles))
            .map_err(|e| Status::failed_precondition(format!("{e:#}")))?;
        let f = plan.fields(&cas.cluster, ttl);
        auth::issue_for(cas, &ssh_pub, &spki, &f).map_err(internal)?
    } else {
        check_renewal_request(caller, req)?;
        // The closure always succeeds so that a lock set by `renew` is written.
        let decided = State::modify(dir, |st| {
            if let Err(e) = check_bot(st, name) {
                return Ok(Err(e));
            }
            Ok(match st.bots.get_mut(name) {
                Some(bot) => renew(bot, caller, name),
                None => Err(denied(format!("user bot-{name} does not exist"))),
            })
        })
        .map_err(internal)?;
        let bot = decided?;
        tracing::info!(bot = name, generation = bot.generation, "bot renewed");
        auth::issue_bot_identity(cas, name, &bot, &ssh_pub, &spki, ttl).map_err(internal)?
    };
    to_certs(cas, issued, !impersonating).map_err(internal)
}

/// The bot a caller is: its user is `bot-NAME`.
pub(crate) fn caller_bot_name(caller: &TlsIdentity) -> Result<&str, Status> {
    caller
        .username
        .strip_prefix("bot-")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            denied(format!(
                "user {:?} is not a bot; this dev cluster issues certificates to bots only",
                caller.username
            ))
        })
}

/// The bot's record: it must exist and not be locked.
pub(crate) fn check_bot<'a>(st: &'a State, name: &str) -> Result<&'a Bot, Status> {
    let bot = st
        .bots
        .get(name)
        .ok_or_else(|| denied(format!("user bot-{name} does not exist")))?;
    if let Some(reason) = &bot.locked {
        return Err(denied(format!("user bot-{name} is locked: {reason}")));
    }
    Ok(bot)
}

/// A renewal must come from a renewable certificate and name the caller's own user.
pub(crate) fn check_renewal_request(
    caller: &TlsIdentity,
    req: &UserCertsRequest,
) -> Result<(), Status> {
    if !caller.renewable {
        return Err(denied(format!(
            "the certificate of user {} is not renewable",
            caller.username
        )));
    }
    if req.username != caller.username {
        return Err(denied(format!(
            "user {} may not renew certificates of user {:?}",
            caller.username, req.username
        )));
    }
    Ok(())
}

/// The renewal decision, under the state lock: the caller's generation must be the stored one.
/// On a match the stored generation is incremented and the updated bot returned; on a
/// mismatch the bot is locked. A certificate of an earlier bot instance (the bot joined again
/// since) is refused without locking.
pub(crate) fn renew(bot: &mut Bot, caller: &TlsIdentity, name: &str) -> Result<Bot, Status> {
    if !caller.bot_instance_id.is_empty() && caller.bot_instance_id != bot.instance_id {
        return Err(denied(format!(
            "bot instance {} of user bot-{name} was replaced by a newer join",
            caller.bot_instance_id
        )));
    }
    if caller.generation != bot.generation {
        tracing::warn!(
            bot = name,
            presented = caller.generation,
            stored = bot.generation,
            "generation mismatch: locking the bot"
        );
        bot.locked = Some(GENERATION_MISMATCH.to_string());
        return Err(denied(format!(
            "user bot-{name} is locked: {GENERATION_MISMATCH}"
        )));
    }
    bot.generation += 1;
    Ok(bot.clone())
}

/// The roles an impersonation request gets: the requested ones, each of which the bot may
/// impersonate. Teleport refuses an empty list ("at least one role request is required",
/// BadParameter, `ServerWithRoles.determineDesiredRolesAndTraits`) and a role the bot may not
/// impersonate (AccessDenied, naming the user and the requested roles as Go's `%q` prints a
/// `[]string`).
pub(crate) fn impersonated_roles(
    bot: &Bot,
    name: &str,
    requested: &[String],
) -> Result<Vec<String>, Status> {
    if requested.is_empty() {
        return Err(Status::invalid_argument(
            "at least one role request is required",
        ));
    }
    if let Some(r) = requested.iter().find(|r| !bot.roles.contains(r)) {
        tracing::info!(
            "access denied to 'bot-{name}' to impersonate roles '{r}' (may: {})",
            bot.roles.join(", ")
        );
        let quoted: Vec<String> = requested.iter().map(|r| format!("{r:?}")).collect();
        return Err(denied(format!(
            "user \"bot-{name}\" has requested role impersonation for [{}]",
            quoted.join(" ")
        )));
    }
    let mut out: Vec<String> = Vec::new();
    for r in requested {
        if !out.contains(r) {
            out.push(r.clone());
        }
    }
    Ok(out)
}

/// The certificate TTL: until the requested expiry (default 1h), at most 24h, at least 1m.
pub(crate) fn requested_ttl(req: &UserCertsRequest, now: SystemTime) -> Duration {
    let Some(expires) = req.expires.and_then(|t| t.to_system_time()) else {
        return DEFAULT_TTL;
    };
    expires
        .duration_since(now)
        .unwrap_or(Duration::ZERO)
        .clamp(auth::MIN_CERT_TTL, MAX_RENEWABLE_TTL)
}

/// The answer: impersonated certificates get the user CA only, the bot's own identity the
/// user CA then the host CA (see [`auth::certs_ca_lists`]).
fn to_certs(cas: &ClusterCas, c: IssuedCerts, include_host_ca: bool) -> Result<Certs> {
    let (tls, ssh) = auth::certs_ca_lists(cas, include_host_ca)?;
    Ok(Certs {
        ssh: format!("{}\n", c.ssh_cert.to_openssh()?).into_bytes(),
        tls: c.tls_cert_pem.into_bytes(),
        tls_ca_certs: tls.into_iter().map(String::into_bytes).collect(),
        ssh_ca_certs: ssh.into_iter().map(String::into_bytes).collect(),
    })
}

fn invalid_keys(req: &UserCertsRequest, e: anyhow::Error) -> Status {
    if req.ssh_public_key.is_empty() || req.tls_public_key.is_empty() {
        return Status::invalid_argument(
            "ssh_public_key (22) and tls_public_key (23) are required; \
             the deprecated public_key (1) alone is not supported",
        );
    }
    Status::invalid_argument(format!("{e:#}"))
}

fn denied(msg: String) -> Status {
    Status::new(Code::PermissionDenied, msg)
}

fn internal(e: anyhow::Error) -> Status {
    tracing::warn!("GenerateUserCerts: {e:#}");
    Status::internal(format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use idmux_wire::proto::Timestamp;

    fn bot(generation: u64) -> Bot {
        Bot {
            roles: vec!["access".into(), "editor".into()],
            logins: vec!["root".into()],
            generation,
            locked: None,
            instance_id: "inst-1".into(),
            heartbeats: vec![],
        }
    }

    fn caller(generation: u64) -> TlsIdentity {
        TlsIdentity {
            username: "bot-ci".into(),
            renewable: true,
            generation,
            bot_name: "ci".into(),
            bot_instance_id: "inst-1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn matching_generation_increments() {
        let mut b = bot(3);
        let got = renew(&mut b, &caller(3), "ci").unwrap();
        assert_eq!(got.generation, 4);
        assert_eq!(b.generation, 4);
        assert_eq!(b.locked, None);
    }

    #[test]
    fn mismatching_generation_locks() {
        let mut b = bot(3);
        let err = renew(&mut b, &caller(2), "ci").unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(err.message().contains("generation mismatch"), "{err}");
        assert_eq!(b.generation, 3);
        assert_eq!(b.locked.as_deref(), Some(GENERATION_MISMATCH));
        // Locked now: even the right generation is refused.
        let mut st = State::default();
        st.bots.insert("ci".into(), b);
        let err = check_bot(&st, "ci").unwrap_err();
        assert_eq!(
            err.message(),
            format!("user bot-ci is locked: {GENERATION_MISMATCH}")
        );
        assert_eq!(
            check_bot(&st, "nope").unwrap_err().message(),
            "user bot-nope does not exist"
        );
    }

    #[test]
    fn old_instance_is_refused_without_locking() {
        let mut b = bot(1);
        let mut c = caller(1);
        c.bot_instance_id = "inst-0".into();
        assert!(renew(&mut b, &c, "ci").is_err());
        assert_eq!(b.locked, None);
        assert_eq!(b.generation, 1);
    }

    #[test]
    fn renewal_needs_renewable_cert_for_own_user() {
        let mut req = UserCertsRequest {
            username: "bot-ci".into(),
            ..Default::default()
        };
        assert!(check_renewal_request(&caller(1), &req).is_ok());
        let mut c = caller(1);
        c.renewable = false;
        assert!(check_renewal_request(&c, &req).is_err());
        req.username = "bot-other".into();
        assert!(check_renewal_request(&caller(1), &req).is_err());
        let mut human = caller(1);
        human.username = "alice".into();
        assert!(caller_bot_name(&human).is_err());
        assert_eq!(caller_bot_name(&caller(1)).unwrap(), "ci");
    }

    #[test]
    fn impersonation_is_a_subset_of_the_bot_roles() {
        let b = bot(1);
        // Teleport refuses an empty list; it never means "all roles".
        let err = impersonated_roles(&b, "ci", &[]).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(err.message(), "at least one role request is required");
        assert_eq!(
            impersonated_roles(&b, "ci", &["editor".into(), "editor".into()]).unwrap(),
            vec!["editor".to_string()]
        );
        let err = impersonated_roles(&b, "ci", &["access".into(), "admin".into()]).unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert_eq!(
            err.message(),
            r#"user "bot-ci" has requested role impersonation for ["access" "admin"]"#
        );
    }

    #[test]
    fn unroutable_calls_get_grpc_gos_words() {
        assert_eq!(
            unknown("/proto.AuthService/GetClusterName"),
            "unknown method GetClusterName for service proto.AuthService"
        );
        assert_eq!(
            unknown("/teleport.bots.v9.Nope/Get"),
            "unknown service teleport.bots.v9.Nope"
        );
    }

    #[test]
    fn ttl_defaults_and_caps() {
        let now = SystemTime::now();
        let mut req = UserCertsRequest::default();
        assert_eq!(requested_ttl(&req, now), DEFAULT_TTL);
        req.expires = Some(Timestamp::from_system_time(now + Duration::from_secs(600)));
        assert_eq!(requested_ttl(&req, now), Duration::from_secs(600));
        req.expires = Some(Timestamp::from_system_time(
            now + Duration::from_secs(72 * 3600),
        ));
        assert_eq!(requested_ttl(&req, now), MAX_RENEWABLE_TTL);
        req.expires = Some(Timestamp::from_system_time(now - Duration::from_secs(5)));
        assert_eq!(requested_ttl(&req, now), Duration::from_secs(60));
    }

    #[test]
    fn full_renewal_and_impersonation_against_a_state_dir() {
        let d = tempfile::tempdir().unwrap();
        let cas = ClusterCas::create(&d.path().join("ca"), "unit.test").unwrap();
        State::modify(d.path(), |s| {
            let mut b = bot(1);
            b.roles = vec!["access".into()];
            s.bots.insert("ci".into(), b);
            Ok(())
        })
        .unwrap();
        let key = idmux_identity::KeyPair::generate(KeyType::EcdsaP256).unwrap();
        let mut req = UserCertsRequest {
            username: "bot-ci".into(),
            ssh_public_key: key.ssh_authorized_key().unwrap().into_bytes(),
            tls_public_key: key.tls_public_pem().unwrap().into_bytes(),
            ..Default::default()
        };
        let now = SystemTime::now();
        let certs = generate_user_certs(d.path(), &cas, &caller(1), &req, now).unwrap();
        let (id, _) =
            idmux_identity::x509::tls_identity_of(std::str::from_utf8(&certs.tls).unwrap())
                .unwrap();
        assert_eq!((id.generation, id.renewable), (2, true));
        // The bot's own identity: user CA, then host CA; SSH CAs as bare keys.
        let line = |a: &crate::ca::Authority| format!("{}\n", a.ssh_public_line().unwrap());
        assert_eq!(
            certs.tls_ca_certs,
            vec![
                cas.user.tls_cert_pem.clone().into_bytes(),
                cas.host.tls_cert_pem.clone().into_bytes()
            ]
        );
        assert_eq!(
            certs.ssh_ca_certs,
            vec![line(&cas.user).into_bytes(), line(&cas.host).into_bytes()]
        );
        assert!(std::str::from_utf8(&certs.ssh_ca_certs[1])
            .unwrap()
            .starts_with("ssh-ed25519 AAAA"));

        req.use_role_requests = true;
        // No roles: refused, as Teleport does.
        let err = generate_user_certs(d.path(), &cas, &caller(2), &req, now).unwrap_err();
        assert_eq!(err.message(), "at least one role request is required");
        req.role_requests = vec!["access".into()];
        let certs = generate_user_certs(d.path(), &cas, &caller(2), &req, now).unwrap();
        // Impersonated certificates carry the user CA only.
        assert_eq!(
            certs.tls_ca_certs,
            vec![cas.user.tls_cert_pem.clone().into_bytes()]
        );
        assert_eq!(certs.ssh_ca_certs, vec![line(&cas.user).into_bytes()]);
        let ssh = russh::keys::ssh_key::Certificate::from_openssh(
            std::str::from_utf8(&certs.ssh).unwrap().trim(),
        )
        .unwrap();
        assert_eq!(
            ssh.valid_principals(),
            ["root".to_string(), "-teleport-internal-join".to_string()]
        );

        // Mismatched keys are refused before anything changes.
        let other = idmux_identity::KeyPair::generate(KeyType::Ed25519).unwrap();
        req.tls_public_key = other.tls_public_pem().unwrap().into_bytes();
        let err = generate_user_certs(d.path(), &cas, &caller(2), &req, now).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);

        // The stale generation-1 identity renews again: the bot is locked, and stays locked.
        req.use_role_requests = false;
        req.tls_public_key = key.tls_public_pem().unwrap().into_bytes();
        let err = generate_user_certs(d.path(), &cas, &caller(1), &req, now).unwrap_err();
        assert!(err.message().contains("generation mismatch"), "{err}");
        let st = State::load(d.path()).unwrap();
        assert_eq!(st.bots["ci"].locked.as_deref(), Some(GENERATION_MISMATCH));
        let err = generate_user_certs(d.path(), &cas, &caller(2), &req, now).unwrap_err();
        assert!(err.message().contains("is locked"), "{err}");
    }
}
