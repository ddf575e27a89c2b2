//! ALPN connection upgrade through an L7 load balancer (RFD 0123; facts section 5): over a
//! TLS connection to the load balancer, `GET /webapi/connectionupgrade` asks the proxy to turn
//! the connection into a WebSocket (`Sec-WebSocket-Protocol: alpn`, or `alpn-ping` for node
//! dials, whose proxy pings we answer), and the real TLS with the real ALPN then runs inside
//! binary WebSocket frames.
//!
//! Owns: the upgrade request and the checks of its answer (status 101, the subprotocol, the
//! `Sec-WebSocket-Accept` key), and a byte stream over the WebSocket ([`BoxIo`]). Must not
//! know: which TLS runs inside or who checks it.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Empty;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::dial::BoxIo;

/// `WebAPIConnUpgrade` (api/constants/constants.go).
pub const PATH: &str = "/webapi/connectionupgrade";
/// The subprotocol of connections that carry no node bytes (Auth, the join service).
pub const ALPN: &str = "alpn";
/// The subprotocol of node dials: the proxy pings through the load balancer, we answer.
pub const ALPN_PING: &str = "alpn-ping";

/// How long the proxy may take to answer the upgrade request.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the peer may take to finish after our side closed.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long one frame may wait for the peer to take it.
const SEND_TIMEOUT: Duration = Duration::from_secs(300);

/// How much of the peer's data the WebSocket pump holds before it stops reading.
const PUMP_BUFFER: usize = 256 * 1024;

/// Upgrade `outer` (TLS to the load balancer at `addr`, host `host`) to a WebSocket speaking
/// `proto` ([`ALPN`] or [`ALPN_PING`]) and return the byte stream inside.
pub(crate) async fn websocket<S>(outer: S, addr: &str, host: &str, proto: &str) -> Result<BoxIo>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let what = format!("connection upgrade via {addr}");
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(outer))
            .await
            .map_err(|e| anyhow!("{what}: {e}"))?;
        tokio::spawn(conn.with_upgrades());
        let key = generate_key();
        let req = Request::builder()
            .method(Method::GET)
            .uri(PATH)
            .header(http::header::HOST, host)
            .header(http::header::UPGRADE, "websocket")
            .header(http::header::CONNECTION, "Upgrade")
            .header(http::header::SEC_WEBSOCKET_PROTOCOL, proto)
            .header(http::header::SEC_WEBSOCKET_VERSION, "13")
            .header(http::header::SEC_WEBSOCKET_KEY, &key)
            .body(Empty::<Bytes>::new())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| anyhow!("{what}: {PATH}: {e}"))?;
        check_answer(&what, &key, proto, resp.status().as_u16(), resp.headers())?;
        let up = hyper::upgrade::on(resp)
            .await
            .map_err(|e| anyhow!("{what}: {e}"))?;
        Ok::<_, anyhow::Error>(TokioIo::new(up))
    };
    let io = match tokio::time::timeout(ANSWER_TIMEOUT, exchange).await {
        Err(_) => bail!(
            "{what}: no answer to {PATH} within {}s",
            ANSWER_TIMEOUT.as_secs()
        ),
        Ok(r) => r?,
    };
    let ws = WebSocketStream::from_raw_socket(io, Role::Client, None).await;
    Ok(pump(ws))
}

/// The checks tbot makes of the answer (api/client/alpn_conn_upgrade.go, alpn_websocket.go),
/// with its words for a proxy that predates the upgrade.
fn check_answer(
    what: &str,
    key: &str,
    proto: &str,
    status: u16,
    headers: &http::HeaderMap,
) -> Result<()> {
    match status {
        101 => {}
        404 => bail!(
            "{what}: connection upgrade call to {PATH} failed with status code 404. Please upgrade the server and try again."
        ),
        s => bail!("{what}: failed to switch Protocols {s}"),
    }
    let header = |h: http::header::HeaderName| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    if !header(http::header::UPGRADE).eq_ignore_ascii_case("websocket") {
        bail!(
            "{what}: the answer upgrades to {:?}, not websocket",
            header(http::header::UPGRADE)
        );
    }
    let got = header(http::header::SEC_WEBSOCKET_PROTOCOL);
    if got != proto {
        bail!("{what}: the proxy chose WebSocket subprotocol {got:?}, not {proto:?}");
    }
    if header(http::header::SEC_WEBSOCKET_ACCEPT) != derive_accept_key(key.as_bytes()) {
        bail!("{what}: the answer's Sec-WebSocket-Accept does not match our key");
    }
    Ok(())
}

/// A byte stream over `ws`: each write goes out as one binary frame (masked, as a client's
/// must be); binary frames in are the bytes; a close is the end; pings are answered (by
/// tungstenite, as the next read runs) and other frames ignored, as tbot's reader does.
fn pump<S>(ws: WebSocketStream<S>) -> BoxIo
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (near, far) = tokio::io::duplex(PUMP_BUFFER);
    tokio::spawn(async move {
        let (mut sink, mut frames) = ws.split();
        let (mut rd, mut wr) = tokio::io::split(far);
        let up = async {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let bye = async {
                            let _ = sink.send(Message::Close(None)).await;
                            let _ = sink.close().await;
                        };
                        let _ = tokio::time::timeout(CLOSE_GRACE, bye).await;
                        return;
                    }
                    Ok(n) => {
                        let frame = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
                        // A peer that takes no bytes for this long is gone.
                        match tokio::time::timeout(SEND_TIMEOUT, sink.send(frame)).await {
                            Ok(Ok(())) => {}
                            _ => return,
                        }
                    }
                }
            }
        };
        let down = async {
            while let Some(frame) = frames.next().await {
                match frame {
                    Ok(Message::Binary(b)) => {
                        if wr.write_all(&b).await.is_err() {
                            break;
                        }
                    }
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let _ = wr.shutdown().await;
        };
        // When our side is done, the peer gets CLOSE_GRACE to finish its side; a peer that
        // never answers the close (or a dead path) does not keep the task and the socket.
        tokio::select! {
            _ = down => {}
            _ = async {
                up.await;
                tokio::time::sleep(CLOSE_GRACE).await;
            } => {}
        }
    });
    Box::new(near)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    /// RFC 6455's example key and accept value.
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    #[test]
    fn the_answer_is_checked_as_tbot_checks_it() {
        let ok = answer(&[
            ("upgrade", "websocket"),
            ("sec-websocket-protocol", "alpn-ping"),
            ("sec-websocket-accept", ACCEPT),
        ]);
        check_answer("w", KEY, "alpn-ping", 101, &ok).unwrap();
        let e = check_answer("w", KEY, "alpn", 101, &ok).unwrap_err();
        assert_eq!(
            e.to_string(),
            "w: the proxy chose WebSocket subprotocol \"alpn-ping\", not \"alpn\""
        );
        let e = check_answer("w", "AAAAAAAAAAAAAAAAAAAAAA==", "alpn-ping", 101, &ok).unwrap_err();
        assert!(e.to_string().contains("Sec-WebSocket-Accept"), "{e}");
        let e = check_answer("w", KEY, "alpn", 404, &ok).unwrap_err();
        assert_eq!(
            e.to_string(),
            "w: connection upgrade call to /webapi/connectionupgrade failed with status code 404. Please upgrade the server and try again."
        );
        let e = check_answer("w", KEY, "alpn", 502, &ok).unwrap_err();
        assert_eq!(e.to_string(), "w: failed to switch Protocols 502");
    }

    /// Bytes cross the pump both ways as binary frames, a ping from the peer is answered
    /// with a pong carrying its payload, and a close from the peer ends our stream.
    #[tokio::test]
    async fn pump_carries_bytes_and_answers_pings() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut ours = pump(WebSocketStream::from_raw_socket(a, Role::Client, None).await);
        let mut server = WebSocketStream::from_raw_socket(b, Role::Server, None).await;
        ours.write_all(b"hello").await.unwrap();
        match server.next().await.unwrap().unwrap() {
            Message::Binary(b) => assert_eq!(&b[..], b"hello"),
            m => panic!("want a binary frame, got {m:?}"),
        }
        server
            .send(Message::Ping(Bytes::from_static(b"teleport")))
            .await
            .unwrap();
        server
            .send(Message::Binary(Bytes::from_static(b"world")))
            .await
            .unwrap();
        let mut buf = [0u8; 5];
        ours.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"world");
        ours.write_all(b"!").await.unwrap();
        let mut saw_pong = false;
        loop {
            match server.next().await.unwrap().unwrap() {
                Message::Pong(p) => {
                    assert_eq!(&p[..], b"teleport");
                    saw_pong = true;
                }
                Message::Binary(b) => {
                    assert_eq!(&b[..], b"!");
                    break;
                }
                m => panic!("unexpected {m:?}"),
            }
        }
        assert!(saw_pong, "the ping was not answered before our next frame");
        server.close(None).await.unwrap();
        let mut rest = Vec::new();
        ours.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }
}
