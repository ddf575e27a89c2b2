//! The proxy's web API (ALPN `http/1.1`): `/webapi/ping`, `/webapi/find`,
//! `POST /webapi/host/credentials` (the join), `/webapi/auth/export` and
//! `/webapi/connectionupgrade` ([`crate::conn_upgrade`]).
//!
//! JSON shapes follow Teleport's webclient: errors are `{"error":{"message":..}}` with a status
//! chosen by the kind of failure.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use crate::auth;
use crate::Ctx;
use idmux_wire::web::RegisterUsingTokenRequest;

type Resp = Response<Full<Bytes>>;

fn reply(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(body.into()))
        .expect("static response parts")
}

fn json_reply(status: StatusCode, v: serde_json::Value) -> Resp {
    reply(status, "application/json", v.to_string())
}

pub(crate) fn error(status: StatusCode, msg: impl std::fmt::Display) -> Resp {
    let m = msg.to_string();
    json_reply(status, json!({"error": {"message": m}, "messages": [m]}))
}

/// The PingResponse JSON (same body for ping and find).
pub(crate) fn ping_json(ctx: &Ctx) -> serde_json::Value {
    let mut auth = json!({
        "type": "local",
        "second_factor": "off",
        "local": {"name": ""},
    });
    // A string through MarshalText; omitted when unspecified.
    let live = ctx.live();
    let suite = live.cas.suite.name();
    if !suite.is_empty() {
        auth["signature_algorithm_suite"] = json!(suite);
    }
    json!({
        "auth": auth,
        "proxy": {
            "kube": {"enabled": false},
            "ssh": ssh_settings(&ctx.opts),
            "db": {},
            "tls_routing_enabled": ctx.opts.tls_routing,
        },
        "server_version": concat!("idmux-dev-", env!("CARGO_PKG_VERSION")),
        "min_client_version": "0.0.0",
        "cluster_name": live.cas.cluster,
        "edition": "community",
        "fips": false,
    })
}

/// `proxy.ssh` of ping, as a proxy with a v2/v3 config builds it (lib/web
/// `buildProxySettingsV2`): with TLS routing every listen address is the web address; without,
/// `listen_addr` is the SSH port and `web_listen_addr` the web port (there is no reverse tunnel
/// port here, so no `tunnel_listen_addr`). `public_addr` is `--public-addr` (or the web
/// address) and, without TLS routing, `ssh_public_addr` is its host with the SSH port, as a
/// proxy configured with `ssh_public_addr` reports it (pure).
pub(crate) fn ssh_settings(o: &crate::ProxyOptions) -> serde_json::Value {
    let web = o.listen.to_string();
    match o.ssh_addr.filter(|_| !o.tls_routing) {
        None => json!({
            "listen_addr": web,
            "tunnel_listen_addr": web,
            "web_listen_addr": web,
            "public_addr": o.public_addr,
        }),
        Some(ssh) => {
            let host = idmux_wire::hostport::host_of(&o.public_addr);
            json!({
                "listen_addr": ssh.to_string(),
                "web_listen_addr": web,
                "public_addr": o.public_addr,
                "ssh_public_addr": idmux_wire::hostport::join(host, ssh.port()),
            })
        }
    }
}

/// Serve one HTTP request from `peer`.
pub(crate) async fn handle(
    ctx: Arc<Ctx>,
    peer: String,
    req: Request<Incoming>,
) -> Result<Resp, Infallible> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let resp = match (req.method(), path.as_str()) {
        (&Method::GET, "/webapi/connectionupgrade") => {
            return Ok(crate::conn_upgrade::handle(ctx, peer, req))
        }
        (&Method::GET, "/webapi/ping") | (&Method::GET, "/webapi/find") => {
            json_reply(StatusCode::OK, ping_json(&ctx))
        }
        (&Method::POST, "/webapi/host/credentials") => {
            let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return Ok(error(
                        StatusCode::BAD_REQUEST,
                        format!("cannot read request body: {e}"),
                    ))
                }
            };
            match serde_json::from_slice::<RegisterUsingTokenRequest>(&body) {
                Err(e) => error(StatusCode::BAD_REQUEST, format!("bad join request: {e}")),
                Ok(r) => {
                    let ctx2 = ctx.clone();
                    match tokio::task::spawn_blocking(move || {
                        auth::register_bot(&ctx2.dir, &ctx2.live().cas, &r)
                    })
                    .await
                    {
                        Ok(Ok(certs)) => json_reply(
                            StatusCode::OK,
                            serde_json::to_value(certs).unwrap_or_default(),
                        ),
                        Ok(Err(e)) => {
                            let msg = format!("{e:#}");
                            let status = if msg.contains("token") {
                                StatusCode::FORBIDDEN
                            } else {
                                StatusCode::BAD_REQUEST
                            };
                            tracing::info!("join refused: {msg}");
                            error(status, msg)
                        }
                        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
                    }
                }
            }
        }
        (&Method::GET, "/webapi/auth/export") => export(&ctx, &query),
        _ => error(StatusCode::NOT_FOUND, format!("not found: {path}")),
    };
    Ok(resp)
}

/// `GET /webapi/auth/export?type=T`, this cluster's CAs only, as Teleport's
/// `lib/client/ca_export.go` renders them: `host` as known_hosts `@cert-authority` lines and
/// `user`/`openssh` as authorized_keys `cert-authority` lines, one per trusted key; the TLS
/// types as the PEM of each active certificate.
fn export(ctx: &Ctx, query: &str) -> Resp {
    let kind = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("type="))
        .unwrap_or("");
    let live = ctx.live();
    let c = &live.cas;
    let cl = &c.cluster;
    let lines = |a: &crate::ca::Authority| a.trusted_ssh_lines().unwrap_or_default();
    let host = || -> String {
        lines(&c.host)
            .iter()
            .map(|k| format!("@cert-authority {cl},*.{cl} {k} type=host\n"))
            .collect()
    };
    let user = |a: &crate::ca::Authority| -> String {
        lines(a)
            .iter()
            .map(|k| format!("cert-authority {k} clustername={cl}&type=user\n"))
            .collect()
    };
    let body = match kind {
        "" => host() + &user(&c.user),
        "user" => user(&c.user),
        "openssh" => user(&c.openssh),
        "host" => host(),
        "tls" | "tls-host" => c.host.tls_cert_pem.clone(),
        "tls-user" => c.user.tls_cert_pem.clone(),
        "db" | "tls-db" => c.db.tls_cert_pem.clone(),
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unsupported export type {other:?}"),
            )
        }
    };
    reply(StatusCode::OK, "text/plain", body)
}
