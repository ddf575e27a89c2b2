//! `GET /webapi/connectionupgrade`: TLS routing through an L7 load balancer, as Teleport's
//! `lib/web/conn_upgrade.go` serves it. The request picks an upgrade from the values of
//! `X-Teleport-Upgrade` then `Upgrade` (`websocket` first, then `alpn-ping`, then `alpn`; none:
//! 404 `unsupported upgrade types: [...]`):
//! - `websocket`: gorilla's handshake (101 with `Sec-WebSocket-Accept` and the chosen
//!   `Sec-WebSocket-Protocol`, `alpn` or `alpn-ping`; an unknown or missing subprotocol still
//!   gets its 101, then the connection is just closed). The tunnel is the payload of binary
//!   frames: server frames unmasked, client frames unmasked if masked; Close is EOF; Ping, Pong,
//!   Text and continuation frames are ignored (the server answers no ping). On `alpn-ping` the
//!   server sends a Ping frame with payload `teleport` every [`DEFAULT_PING_INTERVAL`].
//! - legacy `alpn` / `alpn-ping`: 101 with `Upgrade`, `X-Teleport-Upgrade` and `Connection`;
//!   the stream is raw, or (`alpn-ping`) pingconn framing: a 4-byte big-endian length before
//!   every write, length 0 is a ping (sent every interval, skipped when read).
//!
//! The tunnelled bytes then carry a TLS handshake routed by ALPN exactly as on the web port, but
//! with the proxy's Teleport host certificate ([`crate::serve_upgraded`]).
//!
//! Must not know: what the tunnelled TLS carries. Caps: a frame's payload at most
//! [`MAX_PAYLOAD`] (a larger one ends the tunnel), a bounded pipe between the framing and the
//! TLS; the TLS inside has the same timeouts as on the web port.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

use crate::Ctx;

type Resp = Response<Full<Bytes>>;

/// `defaults.ProxyPingInterval` (lib/defaults).
pub(crate) const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);
/// Shortens [`DEFAULT_PING_INTERVAL`] for tests (humantime, e.g. `1s`).
pub(crate) const PING_INTERVAL_ENV: &str = "IDMUX_DEV_UPGRADE_PING_INTERVAL";
/// The payload of the server's WebSocket pings: `teleport.ComponentTeleport`.
pub(crate) const PING_PAYLOAD: &[u8] = b"teleport";
/// The largest frame (WebSocket) or packet (pingconn) payload accepted from a client.
pub(crate) const MAX_PAYLOAD: u64 = 1 << 20;
/// The pipe between the framing and the tunnelled TLS.
const PIPE_SIZE: usize = 64 * 1024;

/// The upgrade a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Upgrade {
    WebSocket,
    AlpnPing,
    Alpn,
}

impl Upgrade {
    fn name(self) -> &'static str {
        match self {
            Upgrade::WebSocket => "websocket",
            Upgrade::AlpnPing => "alpn-ping",
            Upgrade::Alpn => "alpn",
        }
    }
}

/// The ping interval: [`PING_INTERVAL_ENV`] or [`DEFAULT_PING_INTERVAL`].
pub(crate) fn ping_interval_from_env() -> Result<Duration> {
    Ok(crate::duration_from_env(PING_INTERVAL_ENV)?.unwrap_or(DEFAULT_PING_INTERVAL))
}

/// `selectConnectionUpgrade` (pure): the values of `X-Teleport-Upgrade` then `Upgrade`, each
/// header line whole; the error is Teleport's NotFound text.
pub(crate) fn select_upgrade(headers: &HeaderMap) -> Result<Upgrade, String> {
    let values: Vec<String> = headers
        .get_all("x-teleport-upgrade")
        .iter()
        .chain(headers.get_all("upgrade").iter())
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    let has = |t: Upgrade| values.iter().any(|v| v == t.name());
    [Upgrade::WebSocket, Upgrade::AlpnPing, Upgrade::Alpn]
        .into_iter()
        .find(|&t| has(t))
        .ok_or_else(|| format!("unsupported upgrade types: [{}]", values.join(" ")))
}

/// Does a comma-separated token list header contain `token` (ASCII case-insensitive)?
fn has_token(headers: &HeaderMap, name: &str, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    })
}

/// gorilla/websocket `Upgrader.Upgrade`'s checks, in its order (pure): the accept key and the
/// chosen subprotocol (the client's first that the server offers, `alpn` or `alpn-ping`), or
/// the status gorilla answers with.
pub(crate) fn websocket_handshake(
    method: &Method,
    headers: &HeaderMap,
) -> Result<(String, Option<&'static str>), StatusCode> {
    if !has_token(headers, "connection", "upgrade") || !has_token(headers, "upgrade", "websocket") {
        return Err(StatusCode::BAD_REQUEST);
    }
    if method != Method::GET {
        return Err(StatusCode::METHOD_NOT_ALLOWED);
    }
    if !has_token(headers, "sec-websocket-version", "13") {
        return Err(StatusCode::BAD_REQUEST);
    }
    let key = headers
        .get("sec-websocket-key")
        .map(|k| k.as_bytes())
        .unwrap_or_default();
    use base64::Engine;
    let valid = base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|k| k.len() == 16);
    if !valid {
        return Err(StatusCode::BAD_REQUEST);
    }
    let offered = headers
        .get("sec-websocket-protocol")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let chosen = offered.split(',').map(str::trim).find_map(|p| match p {
        "alpn" => Some("alpn"),
        "alpn-ping" => Some("alpn-ping"),
        _ => None,
    });
    Ok((derive_accept_key(key), chosen))
}

/// gorilla's refusal: the status text, `Sec-Websocket-Version: 13`.
fn gorilla_error(status: StatusCode) -> Resp {
    Response::builder()
        .status(status)
        .header("sec-websocket-version", "13")
        .header("content-type", "text/plain; charset=utf-8")
        .header("x-content-type-options", "nosniff")
        .body(Full::new(Bytes::from(format!(
            "{}\n",
            status.canonical_reason().unwrap_or("")
        ))))
        .expect("static response parts")
}

fn switching(headers: &[(&str, &str)]) -> Resp {
    let mut r = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (k, v) in headers {
        r = r.header(*k, HeaderValue::from_str(v).expect("header value"));
    }
    r.body(Full::new(Bytes::new()))
        .expect("static response parts")
}

/// Serve `GET /webapi/connectionupgrade`.
pub(crate) fn handle(ctx: Arc<Ctx>, peer: String, mut req: Request<Incoming>) -> Resp {
    let kind = match select_upgrade(req.headers()) {
        Ok(k) => k,
        Err(msg) => {
            tracing::info!(peer, "connection upgrade refused: {msg}");
            return crate::web::error(StatusCode::NOT_FOUND, msg);
        }
    };
    let interval = ctx.opts.upgrade_ping_interval;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (resp, framing) = match kind {
        Upgrade::WebSocket => match websocket_handshake(req.method(), req.headers()) {
            Err(status) => return gorilla_error(status),
            Ok((accept, proto)) => {
                let mut h = vec![
                    ("upgrade", "websocket"),
                    ("connection", "Upgrade"),
                    ("sec-websocket-accept", accept.as_str()),
                ];
                if let Some(p) = proto {
                    h.push(("sec-websocket-protocol", p));
                }
                let framing = match proto {
                    Some("alpn-ping") => Framing::WebSocket(Some(interval)),
                    Some(_) => Framing::WebSocket(None),
                    None => Framing::Close,
                };
                (switching(&h), framing)
            }
        },
        legacy => {
            let t = legacy.name();
            let framing = if legacy == Upgrade::AlpnPing {
                Framing::PingConn(interval)
            } else {
                Framing::Raw
            };
            (
                switching(&[
                    ("upgrade", t),
                    ("x-teleport-upgrade", t),
                    ("connection", "Upgrade"),
                ]),
                framing,
            )
        }
    };
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::info!(peer, "connection upgrade: {e}");
                return;
            }
        };
        let tunnel: Box<dyn crate::Io> = match framing {
            Framing::Close => {
                tracing::info!(
                    peer,
                    "connection upgrade: unknown or empty WebSocket subprotocol; closing"
                );
                let mut u = upgraded;
                let _ = u.shutdown().await;
                return;
            }
            Framing::Raw => Box::new(upgraded),
            Framing::WebSocket(ping) => Box::new(pipe(upgraded, WsCodec, ping)),
            Framing::PingConn(ping) => Box::new(pipe(upgraded, PingCodec, Some(ping))),
        };
        tracing::info!(peer, upgrade = kind.name(), "connection upgraded");
        if let Err(e) = crate::serve_upgraded(ctx, tunnel, peer.clone()).await {
            tracing::info!("upgraded connection from {peer}: {e:#}");
        }
    });
    resp
}

/// How the upgraded stream carries the tunnel.
enum Framing {
    /// A WebSocket with no known subprotocol: closed at once.
    Close,
    /// Legacy `alpn`: the stream itself.
    Raw,
    /// WebSocket binary frames; pings at the interval for `alpn-ping`.
    WebSocket(Option<Duration>),
    /// Legacy `alpn-ping`: pingconn packets.
    PingConn(Duration),
}

/// One side of a framing: how the server reads the client's packets and writes its own.
trait Codec: Send + Sync + 'static {
    /// Read the next data payload; `None` at the end of the tunnel (EOF, Close).
    fn read<R: AsyncRead + Unpin + Send>(
        &self,
        r: &mut R,
    ) -> impl std::future::Future<Output = std::io::Result<Option<Vec<u8>>>> + Send;
    /// One data packet.
    fn data(&self, payload: &[u8]) -> Vec<u8>;
    /// One ping.
    fn ping(&self) -> Vec<u8>;
}

fn too_large(n: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("payload of {n} bytes exceeds the {MAX_PAYLOAD}-byte cap"),
    )
}

/// WebSocket frames, as Teleport's `websocketALPNServerConn` reads and writes them.
struct WsCodec;

impl WsCodec {
    fn frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let header = FrameHeader {
            opcode,
            ..FrameHeader::default()
        };
        let mut out = Vec::with_capacity(header.len(payload.len() as u64) + payload.len());
        header
            .format(payload.len() as u64, &mut out)
            .expect("writing to a Vec");
        out.extend_from_slice(payload);
        out
    }
}

impl Codec for WsCodec {
    async fn read<R: AsyncRead + Unpin + Send>(
        &self,
        r: &mut R,
    ) -> std::io::Result<Option<Vec<u8>>> {
        let mut buf: Vec<u8> = Vec::with_capacity(14);
        loop {
            // The header: at most 14 bytes; parse what is there, read more while incomplete.
            let mut cur = std::io::Cursor::new(&buf);
            let parsed = FrameHeader::parse(&mut cur)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            let Some((header, len)) = parsed else {
                let mut b = [0u8; 1];
                if r.read(&mut b).await? == 0 {
                    return Ok(None);
                }
                buf.push(b[0]);
                continue;
            };
            if len > MAX_PAYLOAD {
                return Err(too_large(len));
            }
            let mut payload = vec![0u8; len as usize];
            r.read_exact(&mut payload).await?;
            buf.clear();
            if let Some(mask) = header.mask {
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= mask[i % 4];
                }
            }
            match header.opcode {
                OpCode::Control(Control::Close) => return Ok(None),
                OpCode::Data(Data::Binary) => return Ok(Some(payload)),
                // Pong, Ping, Text, continuation: ignored, as Teleport's reader does.
                _ => continue,
            }
        }
    }

    fn data(&self, payload: &[u8]) -> Vec<u8> {
        Self::frame(OpCode::Data(Data::Binary), payload)
    }

    fn ping(&self) -> Vec<u8> {
        Self::frame(OpCode::Control(Control::Ping), PING_PAYLOAD)
    }
}

/// pingconn packets (api/utils/pingconn): a 4-byte big-endian length, then the payload;
/// length 0 is a ping.
struct PingCodec;

impl Codec for PingCodec {
    async fn read<R: AsyncRead + Unpin + Send>(
        &self,
        r: &mut R,
    ) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            let mut len = [0u8; 4];
            match r.read_exact(&mut len).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e),
            }
            let n = u32::from_be_bytes(len) as u64;
            if n == 0 {
                continue; // a ping
            }
            if n > MAX_PAYLOAD {
                return Err(too_large(n));
            }
            let mut payload = vec![0u8; n as usize];
            r.read_exact(&mut payload).await?;
            return Ok(Some(payload));
        }
    }

    fn data(&self, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(payload);
        out
    }

    fn ping(&self) -> Vec<u8> {
        vec![0; 4]
    }
}

/// Run `codec` over `outer` in the background and return the tunnel's plain end.
fn pipe<S: crate::Io, C: Codec>(outer: S, codec: C, ping: Option<Duration>) -> DuplexStream {
    let (tunnel, inner) = tokio::io::duplex(PIPE_SIZE);
    tokio::spawn(async move {
        let codec = Arc::new(codec);
        let (outer_r, mut outer_w) = tokio::io::split(outer);
        let mut outer_r = tokio::io::BufReader::new(outer_r);
        let (mut inner_r, mut inner_w) = tokio::io::split(inner);
        let c = codec.clone();
        let client_to_tunnel = async move {
            loop {
                match c.read(&mut outer_r).await {
                    Ok(Some(p)) => {
                        if inner_w.write_all(&p).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::info!("connection upgrade: {e}");
                        break;
                    }
                }
            }
            let _ = inner_w.shutdown().await;
        };
        let tunnel_to_client = async move {
            let mut ticker =
                ping.map(|p| tokio::time::interval_at(tokio::time::Instant::now() + p, p));
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let out = tokio::select! {
                    n = inner_r.read(&mut buf) => match n {
                        Ok(0) | Err(_) => break,
                        Ok(n) => codec.data(&buf[..n]),
                    },
                    _ = async { ticker.as_mut().expect("guarded").tick().await }, if ticker.is_some() => codec.ping(),
                };
                if outer_w.write_all(&out).await.is_err() {
                    break;
                }
            }
            let _ = outer_w.shutdown().await;
        };
        tokio::join!(client_to_tunnel, tunnel_to_client);
    });
    tunnel
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn upgrade_selection_prefers_websocket_then_ping_and_words_refusals_as_teleport() {
        let h = headers(&[("Upgrade", "alpn"), ("X-Teleport-Upgrade", "alpn-ping")]);
        assert_eq!(select_upgrade(&h), Ok(Upgrade::AlpnPing));
        let h = headers(&[("Upgrade", "alpn-ping"), ("Upgrade", "websocket")]);
        assert_eq!(select_upgrade(&h), Ok(Upgrade::WebSocket));
        assert_eq!(
            select_upgrade(&headers(&[("Upgrade", "alpn")])),
            Ok(Upgrade::Alpn)
        );
        // X-Teleport-Upgrade values come first; a comma list is one value, not split.
        let h = headers(&[
            ("Upgrade", "h2c"),
            ("X-Teleport-Upgrade", "alpn, alpn-ping"),
        ]);
        assert_eq!(
            select_upgrade(&h),
            Err("unsupported upgrade types: [alpn, alpn-ping h2c]".to_string())
        );
        assert_eq!(
            select_upgrade(&HeaderMap::new()),
            Err("unsupported upgrade types: []".to_string())
        );
    }

    #[test]
    fn websocket_handshake_checks_as_gorilla_and_picks_the_subprotocol() {
        let ok = [
            ("Connection", "keep-alive, Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            // RFC 6455's example key and accept value.
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        let with = |extra: &[(&str, &str)]| {
            let mut v = ok.to_vec();
            v.extend_from_slice(extra);
            headers(&v)
        };
        let (accept, proto) = websocket_handshake(
            &Method::GET,
            &with(&[("Sec-WebSocket-Protocol", "alpn-ping")]),
        )
        .unwrap();
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(proto, Some("alpn-ping"));
        let (_, proto) = websocket_handshake(
            &Method::GET,
            &with(&[("Sec-WebSocket-Protocol", "x, alpn, alpn-ping")]),
        )
        .unwrap();
        assert_eq!(proto, Some("alpn"));
        // No known subprotocol: still upgraded (then closed by the caller).
        assert_eq!(
            websocket_handshake(&Method::GET, &with(&[])).unwrap().1,
            None
        );
        assert_eq!(
            websocket_handshake(&Method::POST, &with(&[])),
            Err(StatusCode::METHOD_NOT_ALLOWED)
        );
        let mut bad_key = ok.to_vec();
        bad_key[3] = ("Sec-WebSocket-Key", "c2hvcnQ=");
        assert_eq!(
            websocket_handshake(&Method::GET, &headers(&bad_key)),
            Err(StatusCode::BAD_REQUEST)
        );
        let mut no_conn = ok.to_vec();
        no_conn[0] = ("Connection", "keep-alive");
        assert_eq!(
            websocket_handshake(&Method::GET, &headers(&no_conn)),
            Err(StatusCode::BAD_REQUEST)
        );
    }

    #[tokio::test]
    async fn websocket_frames_binary_in_close_ends_control_frames_ignored() {
        // Client frames by hand: masked binary "hi", a masked ping, an unmasked text, an
        // unmasked binary "!", then Close.
        let mask = [1u8, 2, 3, 4];
        let mut wire = vec![0x82, 0x80 | 2, 1, 2, 3, 4, b'h' ^ mask[0], b'i' ^ mask[1]];
        wire.extend_from_slice(&[0x89, 0x80 | 1, 1, 2, 3, 4, b'p' ^ 1]);
        wire.extend_from_slice(&[0x81, 1, b't']);
        wire.extend_from_slice(&[0x82, 1, b'!']);
        wire.extend_from_slice(&[0x88, 0]);
        wire.extend_from_slice(&[0x82, 1, b'x']); // after Close: never read
        let mut r = &wire[..];
        assert_eq!(WsCodec.read(&mut r).await.unwrap(), Some(b"hi".to_vec()));
        assert_eq!(WsCodec.read(&mut r).await.unwrap(), Some(b"!".to_vec()));
        assert_eq!(WsCodec.read(&mut r).await.unwrap(), None);
        // Server frames: unmasked, FIN set.
        assert_eq!(WsCodec.data(b"ab"), [0x82, 2, b'a', b'b']);
        assert_eq!(WsCodec.ping(), [&[0x89u8, 8][..], b"teleport"].concat());
        let big = WsCodec.data(&[0u8; 300]);
        assert_eq!(&big[..4], &[0x82, 126, 0x01, 0x2c]);
        // Over the cap: an error, not an allocation.
        let huge = [0x82u8, 127, 0, 0, 0, 0, 0x10, 0, 0, 1];
        assert!(WsCodec.read(&mut &huge[..]).await.is_err());
        // EOF in the middle of nothing: the end.
        assert_eq!(WsCodec.read(&mut &[][..]).await.unwrap(), None);
    }

    #[tokio::test]
    async fn pingconn_packets_and_pings() {
        let wire = [0u8, 0, 0, 0, 0, 0, 0, 2, b'o', b'k', 0, 0, 0, 0];
        let mut r = &wire[..];
        assert_eq!(PingCodec.read(&mut r).await.unwrap(), Some(b"ok".to_vec()));
        assert_eq!(PingCodec.read(&mut r).await.unwrap(), None);
        assert_eq!(PingCodec.data(b"abc"), [0, 0, 0, 3, b'a', b'b', b'c']);
        assert_eq!(PingCodec.ping(), [0, 0, 0, 0]);
    }
}
