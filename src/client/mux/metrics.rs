//! The multiplexer's counters and the diagnostics endpoint (`--diag-addr`): `/metrics`
//! (Prometheus text, with tbot's three multiplexer metric names), `/readyz`, `/livez`.

use std::convert::Infallible;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::mux::limits::{CapWarning, Limits};

/// The multiplexer's counters (public for the fuzz target `diag_http`, which serves them).
#[derive(Default)]
pub struct Metrics {
    pub requests_started: AtomicU64,
    pub handled_ok: AtomicU64,
    pub handled_error: AtomicU64,
    pub in_flight: AtomicUsize,
    pub upstream_conns: AtomicUsize,
    /// Connections made to the proxy, by transport.
    pub upstream_connects_grpc: AtomicU64,
    pub upstream_connects_ssh: AtomicU64,
    pub open_channels: AtomicUsize,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub agent_connections: AtomicU64,
    /// 1 once an upstream connection is up.
    pub ready: AtomicUsize,
}

impl Metrics {
    /// Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, u64)]| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in lines {
                let _ = writeln!(s, "{name}{labels} {v}");
            }
        };
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let u = |a: &AtomicUsize| a.load(Ordering::Relaxed) as u64;
        metric(
            "tbot_ssh_multiplexer_requests_started_total",
            "counter",
            "Number of multiplexer requests started.",
            &[(String::new(), g(&self.requests_started))],
        );
        metric(
            "tbot_ssh_multiplexer_requests_handled_total",
            "counter",
            "Number of multiplexer requests handled, by status.",
            &[
                ("{status=\"OK\"}".into(), g(&self.handled_ok)),
                ("{status=\"ERROR\"}".into(), g(&self.handled_error)),
            ],
        );
        metric(
            "tbot_ssh_multiplexer_requests_in_flight",
            "gauge",
            "Number of multiplexer requests in flight.",
            &[(String::new(), u(&self.in_flight))],
        );
        metric(
            "idmux_upstream_connections",
            "gauge",
            "Open connections to the proxy.",
            &[(String::new(), u(&self.upstream_conns))],
        );
        metric(
            "idmux_upstream_connects_total",
            "counter",
            "Connections made to the proxy, by node transport.",
            &[
                (
                    "{transport=\"grpc\"}".into(),
                    g(&self.upstream_connects_grpc),
                ),
                ("{transport=\"ssh\"}".into(), g(&self.upstream_connects_ssh)),
            ],
        );
        metric(
            "idmux_open_channels",
            "gauge",
            "Node connections (gRPC streams or SSH channels) open through the proxy.",
            &[(String::new(), u(&self.open_channels))],
        );
        metric(
            "idmux_relayed_bytes_total",
            "counter",
            "Bytes relayed between ssh clients and nodes.",
            &[
                ("{direction=\"up\"}".into(), g(&self.bytes_up)),
                ("{direction=\"down\"}".into(), g(&self.bytes_down)),
            ],
        );
        s
    }
}

/// Serve `/metrics`, `/readyz` and `/livez` on `addr` until the process ends. Any local user
/// can reach this port, so it is capped ([`Limits`]): at most `diag_max_connections`
/// connections at once (more are closed on accept), `diag_header_timeout` for the request
/// headers, `diag_connection_timeout` for a whole connection, and a failing accept (out of
/// fds) backs off instead of spinning.
pub(crate) async fn serve_diag(
    addr: std::net::SocketAddr,
    m: Arc<Metrics>,
    limits: Limits,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("--diag-addr {addr}: {e}"))?;
    tracing::info!("diagnostics on http://{addr}/metrics");
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.diag_max_connections));
    static AT_CAP: CapWarning = CapWarning::new();
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!("--diag-addr {addr}: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(tcp);
            AT_CAP.refused(
                &format!("--diag-addr {addr}"),
                limits.diag_max_connections,
                "--diag-max-connections",
            );
            continue;
        };
        let m = m.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let conn = serve_diag_conn(TokioIo::new(tcp), m, limits.diag_header_timeout);
            let _ = tokio::time::timeout(limits.diag_connection_timeout, conn).await;
        });
    }
}

/// The answer to a diagnostics request for `path` (pure).
pub fn diag_answer(path: &str, m: &Metrics) -> (StatusCode, String) {
    match path {
        "/metrics" => (StatusCode::OK, m.render()),
        "/livez" => (StatusCode::OK, "{\"status\":\"ok\"}\n".to_string()),
        "/readyz" if m.ready.load(Ordering::Relaxed) == 1 => {
            (StatusCode::OK, "{\"status\":\"healthy\"}\n".to_string())
        }
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "{\"status\":\"unhealthy\",\"reason\":\"no upstream connection\"}\n".to_string(),
        ),
        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    }
}

/// Serve one diagnostics connection: HTTP/1 request heads parsed by hyper (at most
/// `header_timeout` to arrive), each answered by [`diag_answer`]. The fuzz target
/// `diag_http` runs this on an in-memory stream, so it parses what a TCP client sends exactly
/// as the daemon does.
pub async fn serve_diag_conn<I>(
    io: I,
    m: Arc<Metrics>,
    header_timeout: std::time::Duration,
) -> Result<(), hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let (status, body) = diag_answer(req.uri().path(), &m);
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::from(body)))
                    .expect("static parts"),
            )
        }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(io, svc)
        .await
}
