//! Copying a node's SSH byte stream between a proxy connection and a local byte stream, both
//! directions at once, with EOF and close handled the way a ProxyCommand needs. Either
//! transport: an SSH channel ([`relay_ssh`]) or a gRPC `ProxySSH` stream ([`relay_grpc`]).
//!
//! SSH channel:
//! - local input -> channel in chunks of up to [`BUF_SIZE`]; input EOF sends channel EOF and
//!   the relay keeps delivering the node's bytes.
//! - channel -> local output, starting with the bytes that arrived before the proxy answered
//!   the subsystem request; channel EOF or close flushes the output and ends the relay.
//! - the proxy's stderr on the channel (extended data 1) goes to the given error stream.
//!
//! The channel side is always drained promptly, into a queue the output is written from: a
//! stalled reader would otherwise stall russh's whole connection (research notes 1.5), and in
//! the multiplexer every session on it. A reader that leaves more than [`OUTPUT_QUEUE_CAP`]
//! unread has its channel closed.
//!
//! gRPC stream: the same directions, with no queue: HTTP/2 flow control paces each stream on
//! its own, so the relay simply reads the next frame once the last one is written. Input EOF
//! ends the request side; the response stream's end (or error status, written to the error
//! stream) ends the relay. `agent` frames go to the in-memory agent, started on the first.
//!
//! Both: the node's bytes that have already arrived when the output is written go out in one
//! vectored write ([`Gather`]); nothing waits for more.

use anyhow::{anyhow, Result};
use bytes::{BufMut, Bytes, BytesMut};
use std::future::Future;
use std::pin::{pin, Pin};

use futures_util::future::Either;
use futures_util::SinkExt;
use russh::ChannelMsg;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::agent::Agent;
use crate::grpc::{self, GrpcNode, FRAME_SIZE};
use crate::link::Node;
use crate::proxy_ssh;
use crate::sshproxy::NodeChannel;
use idmux_wire::proto::{ProxySshResponse, SshFrame};

/// Read size for the local input.
pub const BUF_SIZE: usize = 64 * 1024;
/// Node bytes a local reader may leave unread before its channel is closed.
pub const OUTPUT_QUEUE_CAP: usize = 32 << 20;

/// First read size of a [`Chunks`] reader, and the least it shrinks back to.
///
/// 256 bytes: an open session that has sent nothing yet (a v1 request held at the node's
/// banner) or an interactive one (keystrokes and echo are SSH packets of 36 to a few hundred
/// bytes) keeps this much; a read that fills it means more is waiting, and the next read takes
/// `max`. (It was 4 KiB, then 1 KiB: 768 bytes more per open session than needed, issue 18.)
pub(crate) const MIN_CHUNK: usize = 256;

/// Reads a byte stream as `Bytes` chunks of its own, with no copy: bytes are read straight
/// into a buffer's spare room and split off. The read size adapts: a read that fills it means
/// the writer is ahead, so the next one takes up to the caller's `max`; a read that does not
/// falls back to what it needed. A bulk transfer reads `max` at a time while an idle or
/// interactive session keeps a [`MIN_CHUNK`]-sized buffer, and room left over from a bulk
/// read is given back once reads fall small. (A fixed 64 KiB buffer was touched page by page
/// by a session's small reads and cost every open session its full size in memory. Doubling
/// from the small size instead of jumping took nine reads, and nine small packets, to get back
/// to `max` after each short read in a bulk transfer: 80 reads per MiB uploaded, issue 18.)
#[derive(Default)]
pub struct Chunks {
    buf: BytesMut,
    size: usize,
}

impl Chunks {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next chunk of what `input` has, up to `max` bytes; `None` at EOF.
    pub async fn read<R: AsyncRead + Unpin>(
        &mut self,
        input: &mut R,
        max: usize,
    ) -> std::io::Result<Option<Bytes>> {
        Ok(self.read_after(input, max, 0).await?.map(BytesMut::freeze))
    }

    /// As [`Chunks::read`], with `room` bytes (zeros) left in front of the chunk in the same
    /// buffer: room for a header to be written there, so header and chunk go out as one
    /// contiguous buffer without the chunk being copied (`proxy_ssh::ssh_message`).
    pub async fn read_after<R: AsyncRead + Unpin>(
        &mut self,
        input: &mut R,
        max: usize,
        room: usize,
    ) -> std::io::Result<Option<BytesMut>> {
        let want = self.size.clamp(MIN_CHUNK.min(max), max);
        // Empty unless a read was cancelled after the room was put in.
        self.buf.clear();
        if self.buf.capacity() < room + want {
            self.buf.reserve(room + want);
        }
        self.buf.put_bytes(0, room);
        let n = input.read_buf(&mut (&mut self.buf).limit(want)).await?;
        if n == 0 {
            self.buf.clear();
            return Ok(None);
        }
        self.size = next_size(want, n, max);
        let chunk = self.buf.split();
        // What is left of a bulk read's room stays allocated for the next read; when that read
        // will be far smaller (the session went quiet), let it go rather than hold it idle.
        if self.buf.capacity() > RETAIN_FACTOR * (room + self.size) {
            self.buf = BytesMut::new();
        }
        Ok(Some(chunk))
    }

    /// The room this reader holds between reads (for tests).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.buf.capacity()
    }
}

/// Room left after a read is kept for the next read up to this many times what it needs.
const RETAIN_FACTOR: usize = 4;

/// The read size after a read of `n` bytes into room for `want`: a full read means more is
/// waiting (the next read takes `max`), a part-full one sizes the next to what it needed.
fn next_size(want: usize, n: usize, max: usize) -> usize {
    if n >= want {
        max
    } else {
        n.next_power_of_two().clamp(MIN_CHUNK.min(max), max)
    }
}

/// The most node bytes gathered into one write to the local output.
const GATHER_MAX: usize = 256 << 10;
/// The most buffers in one vectored write (well under any system's `IOV_MAX`).
const GATHER_SLICES: usize = 64;

/// Node bytes that had all arrived when the first of them was taken, to go to the local
/// output in one vectored write rather than one write each (issue 18). sshd sends a burst of
/// small packets (a window adjust is 36 bytes) and the proxy passes each on as its own frame;
/// written one by one, each `sendto` could wake ssh on its own. Nothing waits for more: only
/// what is already here is gathered, so an interactive session's bytes leave as they did.
#[derive(Default)]
struct Gather {
    /// Empty until a second buffer is added: a lone buffer is written without the `Vec`.
    bufs: Vec<Bytes>,
    first: Option<Bytes>,
    len: usize,
}

impl Gather {
    /// May more be added (under [`GATHER_MAX`] bytes and [`GATHER_SLICES`] buffers)?
    fn has_room(&self) -> bool {
        self.len < GATHER_MAX && self.bufs.len() < GATHER_SLICES
    }

    fn push(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        self.len += b.len();
        match self.first.take() {
            None if self.bufs.is_empty() => self.first = Some(b),
            None => self.bufs.push(b),
            Some(first) => self.bufs.extend([first, b]),
        }
    }

    /// `first`, then what `ready` gives (bytes that have already arrived; `None` when there are
    /// none) while there is room: one batch, and its length. A plain function, so the gatherer
    /// is gone before the batch's write is awaited: alive across it, it would take room in every
    /// open session's relay state.
    fn batch(first: Bytes, mut ready: impl FnMut() -> Option<Bytes>) -> (usize, Batch) {
        let mut g = Gather::default();
        g.push(first);
        while g.has_room() {
            match ready() {
                Some(b) => g.push(b),
                None => break,
            }
        }
        (g.len, g.into_batch())
    }

    /// What was gathered, to be written with [`Batch::write`].
    fn into_batch(self) -> Batch {
        match self.first {
            Some(b) => Batch::One(b),
            None => Batch::Many(self.bufs),
        }
    }
}

/// Gathered node bytes: most often one buffer, written with `write_all`. Many are written
/// with [`write_all_vectored`], boxed: a relay's state keeps room for what each await holds,
/// in every open session (`relays_are_boxed_per_transport`), and that future is large.
enum Batch {
    One(Bytes),
    Many(Vec<Bytes>),
}

impl Batch {
    /// Write it whole and in order. It takes the batch by reference: an argument's value is
    /// kept in the future as well as in the caller.
    async fn write<W: AsyncWrite + Unpin>(&mut self, out: &mut W) -> std::io::Result<()> {
        match self {
            Batch::One(b) => out.write_all(b).await,
            Batch::Many(v) => Box::pin(write_all_vectored(out, std::mem::take(v))).await,
        }
    }
}

/// Write `bufs` whole and in order, as many at once as the writer takes.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    out: &mut W,
    mut bufs: Vec<Bytes>,
) -> std::io::Result<()> {
    if !out.is_write_vectored() {
        for b in &bufs {
            out.write_all(b).await?;
        }
        return Ok(());
    }
    let mut i = 0;
    while i < bufs.len() {
        let mut n = std::future::poll_fn(|cx| {
            let mut slices = [std::io::IoSlice::new(&[]); GATHER_SLICES];
            let k = (bufs.len() - i).min(GATHER_SLICES);
            for (s, b) in slices.iter_mut().zip(&bufs[i..i + k]) {
                *s = std::io::IoSlice::new(b);
            }
            Pin::new(&mut *out).poll_write_vectored(cx, &slices[..k])
        })
        .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let b = &mut bufs[i];
            if n >= b.len() {
                n -= b.len();
                i += 1;
            } else {
                bytes::Buf::advance(b, n);
                n = 0;
            }
        }
    }
    Ok(())
}

/// Relay between `node` and `input`/`output` until the node's side ends. Errors name the side
/// at fault (`reading stdin`, `writing stdout`, ...) using `names` = (input, output).
///
/// The returned future is two words: the transport's relay is boxed here, before the first
/// poll, with `node`, `input` and `output` moved into the box. A session's task then holds
/// only what its own transport needs (inline, every session kept room for the larger relay),
/// and not a second copy of the arguments either (an `async fn` keeps its arguments' room for
/// its whole life: issue 18, memory per open session). `relays_are_boxed_per_transport`
/// holds the sizes.
pub fn relay<'a, R, W, E>(
    node: Node,
    input: R,
    output: W,
    errors: E,
    names: (&'a str, &'a str),
) -> impl Future<Output = Result<()>> + 'a
where
    R: AsyncRead + Unpin + 'a,
    W: AsyncWrite + Unpin + 'a,
    E: AsyncWrite + Unpin + 'a,
{
    match node {
        Node::Ssh(n) => Either::Left(Box::pin(relay_ssh(n, input, output, errors, names))),
        Node::Grpc(n) => Either::Right(Box::pin(relay_grpc(n, input, output, errors, names))),
    }
}

/// [`relay`] over an SSH channel.
///
/// A plain function returning an `async move` block, and every part pinned where it is made:
/// the state machine then holds each piece once. (As an `async fn` it kept its arguments twice,
/// and moving `up` and `down` into a joining future kept them twice again: 2,424 bytes an
/// open session where the parts need about half; issue 18.)
pub(crate) fn relay_ssh<'a, R, W, E>(
    node: NodeChannel,
    mut input: R,
    mut output: W,
    mut errors: E,
    names: (&'a str, &'a str),
) -> impl Future<Output = Result<()>> + 'a
where
    R: AsyncRead + Unpin + 'a,
    W: AsyncWrite + Unpin + 'a,
    E: AsyncWrite + Unpin + 'a,
{
    let (in_name, out_name) = names;
    let NodeChannel {
        channel,
        early_data,
    } = node;
    let (mut rx, tx) = channel.split();
    async move {
        // Channel -> queue -> output. The drain never waits on the output, so a client that
        // stops reading cannot stall russh's connection (and every channel on it). The inner
        // SSH session's own window (OpenSSH: 2 MiB per channel) bounds what a working client
        // leaves unread; past OUTPUT_QUEUE_CAP the client is broken and its channel is closed.
        let pending = std::sync::atomic::AtomicUsize::new(0);
        let peer_closed = std::sync::atomic::AtomicBool::new(false);
        // futures-channel's queue, not tokio's: tokio's allocates a block of 32 slots and a
        // cache-padded channel (about 1.6 KiB) the moment it is made, which every open session
        // held while idle; this one allocates per queued chunk (issue 18: memory per session).
        let (qtx, mut qrx) = futures_channel::mpsc::unbounded::<Bytes>();
        // The parts live in this block: their borrows of `rx` end with it.
        let result = {
            let up = pin!(async {
                let mut chunks = Chunks::new();
                loop {
                    let chunk = chunks
                        .read(&mut input, BUF_SIZE)
                        .await
                        .map_err(|e| anyhow!("reading {in_name}: {e}"))?;
                    // russh's channel futures are boxed while they run (about 1.4-1.5 KiB
                    // each): inline, every open session would keep room for them while it
                    // waits for input.
                    let Some(chunk) = chunk else {
                        // A failed EOF only means the channel is already gone; `down`
                        // reports that.
                        let _ = Box::pin(tx.eof()).await;
                        return Ok::<bool, anyhow::Error>(true);
                    };
                    if Box::pin(tx.data_bytes(chunk)).await.is_err() {
                        // The channel closed under us; `down` sees the close and ends the
                        // relay.
                        return Ok(false);
                    }
                }
            });
            let mut drain = pin!(async {
                use std::sync::atomic::Ordering;
                loop {
                    match rx.wait().await {
                        Some(ChannelMsg::Data { data }) => {
                            let n = data.len();
                            if pending.fetch_add(n, Ordering::Relaxed) + n > OUTPUT_QUEUE_CAP {
                                return Err(anyhow!(
                                    "{out_name} left more than {} MiB unread; closing its channel",
                                    OUTPUT_QUEUE_CAP >> 20
                                ));
                            }
                            if qtx.unbounded_send(data).is_err() {
                                break;
                            }
                        }
                        Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                            // Best effort: the proxy's remarks must not break the data path.
                            let _ = errors.write_all(&data).await;
                            let _ = errors.flush().await;
                        }
                        Some(ChannelMsg::Eof) => break,
                        Some(ChannelMsg::Close) | None => {
                            peer_closed.store(true, Ordering::Relaxed);
                            break;
                        }
                        Some(_) => {}
                    }
                }
                drop(qtx);
                Ok::<(), anyhow::Error>(())
            });
            let mut write = pin!(async {
                let write_err = |e: std::io::Error| anyhow!("writing {out_name}: {e}");
                if !early_data.is_empty() {
                    output.write_all(&early_data).await.map_err(write_err)?;
                }
                while let Some(b) = futures_util::StreamExt::next(&mut qrx).await {
                    // What the drain has queued already goes in the same write.
                    let (n, mut batch) = Gather::batch(b, || qrx.try_recv().ok());
                    batch.write(&mut output).await.map_err(write_err)?;
                    pending.fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
                }
                output.flush().await.map_err(write_err)?;
                let _ = output.shutdown().await;
                Ok::<(), anyhow::Error>(())
            });
            let down = pin!(async {
                let mut drained = false;
                loop {
                    tokio::select! {
                        r = drain.as_mut(), if !drained => { r?; drained = true; }
                        r = write.as_mut() => return r,
                    }
                }
            });
            both(up, down).await
        };
        // Let the proxy close the channel after its EOF rather than close it ourselves: russh
        // (0.65) keeps a channel's sender for the life of the connection when the client's
        // CLOSE goes first (the peer's answering CLOSE is dropped before the map entry is
        // removed), a few KiB per node connection in a long-lived multiplexer. The proxy
        // closes right after the node does; only a peer that never closes costs the wait.
        use std::sync::atomic::Ordering;
        if result.is_ok() && !peer_closed.load(Ordering::Relaxed) {
            let wait_close = async {
                loop {
                    match rx.wait().await {
                        Some(ChannelMsg::Close) | None => break true,
                        Some(_) => {}
                    }
                }
            };
            if let Ok(true) = tokio::time::timeout(PEER_CLOSE_WAIT, wait_close).await {
                peer_closed.store(true, Ordering::Relaxed);
            }
        }
        if !peer_closed.load(Ordering::Relaxed) {
            let _ = Box::pin(tx.close()).await;
        }
        result
    }
}

/// How long a finished SSH relay waits for the proxy to close the channel before closing it.
pub(crate) const PEER_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Drive `up` (local input to the node) and `down` (the node to local output) together until
/// `down` ends: input ending cleanly lets the node's bytes flow on; an input error ends it all.
/// Both are pinned by the caller, where they are made: taken by value, each would be kept twice.
async fn both<T>(
    mut up: Pin<&mut impl Future<Output = Result<T>>>,
    mut down: Pin<&mut impl Future<Output = Result<()>>>,
) -> Result<()> {
    let mut up_done = false;
    loop {
        tokio::select! {
            r = up.as_mut(), if !up_done => match r {
                Ok(_) => up_done = true,
                Err(e) => return Err(e),
            },
            r = down.as_mut() => return r,
        }
    }
}

/// [`relay`] over a gRPC `ProxySSH` stream.
///
/// Built as [`relay_ssh`] is: a plain function returning an `async move` block, its parts
/// pinned where they are made, so the state machine holds each once.
pub(crate) fn relay_grpc<'a, R, W, E>(
    node: GrpcNode,
    mut input: R,
    mut output: W,
    mut errors: E,
    names: (&'a str, &'a str),
) -> impl Future<Output = Result<()>> + 'a
where
    R: AsyncRead + Unpin + 'a,
    W: AsyncWrite + Unpin + 'a,
    E: AsyncWrite + Unpin + 'a,
{
    let (in_name, out_name) = names;
    let GrpcNode {
        mut tx,
        mut rx,
        agent,
    } = node;
    // The agent's replies go out on a clone; input EOF closes the channel (not only drops
    // `tx`), so it still ends the request side while an agent session is open.
    let agent_tx = tx.clone();
    async move {
        let up = pin!(async {
            let mut chunks = Chunks::new();
            loop {
                let chunk = chunks
                    .read_after(&mut input, FRAME_SIZE, proxy_ssh::PREFIX_ROOM)
                    .await
                    .map_err(|e| anyhow!("reading {in_name}: {e}"))?;
                let Some(chunk) = chunk else {
                    // Ends the request stream (the proxy passes the half-close on) and the
                    // agent's clone with it.
                    tx.close_channel();
                    return Ok::<(), anyhow::Error>(());
                };
                if tx.feed(proxy_ssh::ssh_message(chunk)).await.is_err() {
                    // The stream is gone; `down` sees why.
                    return Ok(());
                }
            }
        });

        let down = pin!(async {
            let write_err = |e: std::io::Error| anyhow!("writing {out_name}: {e}");
            let mut to_agent: Option<tokio::io::WriteHalf<tokio::io::DuplexStream>> = None;
            // A response taken while gathering that is not an `ssh` frame: handled next.
            let mut taken: Option<Box<Result<Option<ProxySshResponse>, tonic::Status>>> = None;
            loop {
                let next = match taken.take() {
                    Some(r) => *r,
                    None => rx.message().await,
                };
                match next {
                    Ok(Some(r)) => match r.frame {
                        Some(SshFrame::Ssh(f)) => {
                            // The frames that arrived with this one go in the same write.
                            let (_, mut batch) = Gather::batch(f.payload, || {
                                match futures_util::FutureExt::now_or_never(rx.message())? {
                                    Ok(Some(ProxySshResponse {
                                        frame: Some(SshFrame::Ssh(f)),
                                        ..
                                    })) => Some(f.payload),
                                    other => {
                                        // Boxed: a `Status` is large, and rare here.
                                        taken = Some(Box::new(other));
                                        None
                                    }
                                }
                            });
                            batch.write(&mut output).await.map_err(write_err)?
                        }
                        Some(SshFrame::Agent(f)) => {
                            let Some(agent) = &agent else { continue };
                            let w = to_agent.get_or_insert_with(|| {
                                serve_agent(agent.clone(), agent_tx.clone())
                            });
                            // A failed write means the agent session ended; the proxy hears
                            // nothing more from it, as from a closed agent socket.
                            let _ = w.write_all(&f.payload).await;
                        }
                        None => {}
                    },
                    Ok(None) => break,
                    Err(s) => {
                        let msg = s.message().split_whitespace().collect::<Vec<_>>().join(" ");
                        let _ = errors.write_all(format!("{msg}\n").as_bytes()).await;
                        let _ = errors.flush().await;
                        return Err(anyhow!(
                            "the proxy ended the node's stream: {msg} ({:?})",
                            s.code()
                        ));
                    }
                }
            }
            output.flush().await.map_err(write_err)?;
            let _ = output.shutdown().await;
            Ok::<(), anyhow::Error>(())
        });

        both(up, down).await
    }
}

/// Start an agent session for the proxy: bytes written to the returned half are the
/// proxy's requests; the agent's replies go back as `agent` frames.
fn serve_agent(
    agent: Agent,
    mut tx: proxy_ssh::Requests,
) -> tokio::io::WriteHalf<tokio::io::DuplexStream> {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let _ = agent.serve(theirs).await;
    });
    let (mut replies, requests) = tokio::io::split(ours);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match replies.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // Fails once the relay has closed the request side (input EOF) or ended.
            if tx
                .feed(proxy_ssh::message(&grpc::agent_frame(
                    Bytes::copy_from_slice(&buf[..n]),
                )))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    requests
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_size_jumps_when_a_read_fills_it_and_falls_back_after() {
        const MAX: usize = 64 * 1024;
        // A full read at any size means the writer is ahead: the next read takes all it may.
        for want in [MIN_CHUNK, 1024, 4096, 32 * 1024, MAX] {
            assert_eq!(
                next_size(want, want, MAX),
                MAX,
                "after a full read of {want}"
            );
        }
        // A part-full read keeps a bulk transfer's size; a small one falls back.
        assert_eq!(next_size(MAX, 40 * 1024, MAX), MAX);
        assert_eq!(next_size(MAX, 100, MAX), MIN_CHUNK);
        assert_eq!(next_size(MAX, 5000, MAX), 8 * 1024);
        assert_eq!(next_size(MAX, 1500, MAX), 2 * 1024);
        // A cap below the minimum is still honoured.
        assert_eq!(next_size(1024, 1024, 1024), 1024);
    }

    /// A bulk transfer whose reads come up short now and then (a writer's buffer tail) costs
    /// one extra small read each time, not a ramp of them, and room a bulk read left is given
    /// back once the session goes quiet.
    #[tokio::test]
    async fn a_short_read_in_a_bulk_transfer_costs_one_small_read() {
        const MAX: usize = 64 * 1024;
        let (mut w, mut r) = tokio::io::duplex(1 << 20);
        let mut chunks = Chunks::new();
        let mut sizes = Vec::new();
        // Two full reads' worth, then a 72-byte tail (a writer's buffer running out).
        w.write_all(&vec![1; MIN_CHUNK + MAX + 72]).await.unwrap();
        for _ in 0..3 {
            sizes.push(chunks.read(&mut r, MAX).await.unwrap().unwrap().len());
        }
        assert_eq!(sizes, [MIN_CHUNK, MAX, 72]);
        w.write_all(&vec![2; 3 * MAX]).await.unwrap();
        sizes.clear();
        for _ in 0..4 {
            sizes.push(chunks.read(&mut r, MAX).await.unwrap().unwrap().len());
        }
        // The old doubling read 256, 512, ... 32 KiB here: nine reads before the first of MAX.
        assert_eq!(sizes, [MIN_CHUNK, MAX, MAX, MAX - MIN_CHUNK]);
        // Quiet again: a keystroke-sized read leaves the reader holding about MIN_CHUNK.
        w.write_all(&[3; 40]).await.unwrap();
        assert_eq!(chunks.read(&mut r, MAX).await.unwrap().unwrap().len(), 40);
        w.write_all(&[4; 40]).await.unwrap();
        assert_eq!(chunks.read(&mut r, MAX).await.unwrap().unwrap().len(), 40);
        assert!(
            chunks.held() < 4 * MIN_CHUNK,
            "holds {} bytes idle",
            chunks.held()
        );
    }

    #[tokio::test]
    async fn chunks_carry_every_byte_in_order() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (mut w, mut r) = tokio::io::duplex(8 * 1024);
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            for part in sent.chunks(777) {
                w.write_all(part).await.unwrap();
            }
        });
        let mut chunks = Chunks::new();
        let mut got = Vec::new();
        let mut held = Vec::new(); // chunks kept alive, as queued frames are
        while let Some(c) = chunks.read(&mut r, 64 * 1024).await.unwrap() {
            assert!(!c.is_empty() && c.len() <= 64 * 1024);
            got.extend_from_slice(&c);
            held.push(c);
        }
        writer.await.unwrap();
        assert_eq!(got, data);
    }

    /// A local output that records each write call (a vectored one as one entry), taking at
    /// most `max` bytes a call.
    struct Recorder {
        writes: Vec<Vec<u8>>,
        max: usize,
        vectored: bool,
    }

    impl Recorder {
        fn new(max: usize, vectored: bool) -> Self {
            Recorder {
                writes: Vec::new(),
                max,
                vectored,
            }
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let me = self.get_mut();
            let n = buf.len().min(me.max);
            me.writes.push(buf[..n].to_vec());
            std::task::Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            if !self.vectored {
                let first = bufs
                    .iter()
                    .find(|b| !b.is_empty())
                    .map_or(&[][..], |b| &**b);
                return self.poll_write(cx, first);
            }
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            self.poll_write(cx, &all)
        }
        fn is_write_vectored(&self) -> bool {
            self.vectored
        }
        fn poll_flush(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// `parts` gathered and written to `out` as the relays write them.
    async fn gathered(parts: &[&[u8]], out: &mut Recorder) {
        let mut more = parts[1..].iter().map(|p| Bytes::copy_from_slice(p));
        let (n, mut batch) = Gather::batch(Bytes::copy_from_slice(parts[0]), || more.next());
        assert_eq!(n, parts.concat().len());
        batch.write(out).await.unwrap();
    }

    /// Gathered buffers leave in order, in one write where the writer takes them all, and
    /// whole however little each write takes; a writer that cannot write vectored gets one
    /// write per buffer.
    #[tokio::test]
    async fn gathered_bytes_leave_in_order_in_as_few_writes_as_the_writer_allows() {
        let parts: [&[u8]; 4] = [b"abc", b"", b"defghij", b"k"];
        let mut out = Recorder::new(usize::MAX, true);
        gathered(&parts, &mut out).await;
        assert_eq!(out.writes, [b"abcdefghijk".to_vec()]);

        let mut out = Recorder::new(4, true);
        gathered(&parts, &mut out).await;
        assert_eq!(out.writes, [&b"abcd"[..], b"efgh", b"ijk"]);

        let mut out = Recorder::new(usize::MAX, false);
        gathered(&parts, &mut out).await;
        assert_eq!(out.writes, [&b"abc"[..], b"defghij", b"k"]);

        // More buffers than one writev takes.
        let many: Vec<Vec<u8>> = (0..150u8).map(|i| vec![i; 3]).collect();
        let bufs: Vec<Bytes> = many.iter().map(|b| Bytes::copy_from_slice(b)).collect();
        let mut out = Recorder::new(usize::MAX, true);
        write_all_vectored(&mut out, bufs.clone()).await.unwrap();
        assert_eq!(out.writes.len(), 150usize.div_ceil(GATHER_SLICES));
        assert_eq!(out.writes.concat(), many.concat());
        // A batch stops at GATHER_SLICES buffers; the rest wait for the next.
        let mut more = bufs[1..].iter().cloned();
        let (n, _) = Gather::batch(bufs[0].clone(), || more.next());
        assert_eq!((n, more.len()), (3 * GATHER_SLICES, 150 - GATHER_SLICES));
    }

    /// The node's frames that arrived together go to the local output in one write, in order
    /// (they went one write each); an `agent` frame among them, which is not for the output,
    /// ends a batch. The response is written from the field numbers.
    #[tokio::test]
    async fn grpc_frames_that_arrived_together_are_written_at_once() {
        // ProxySSHResponse { ssh = 2 { payload = 1 <n bytes> } }, n < 124:
        //   00 00 00 00 (n + 4) | 12 (n + 2) | 0a n <payload>
        let ssh = |b: u8, n: u8| {
            let mut m = vec![0, 0, 0, 0, n + 4, 0x12, n + 2, 0x0a, n];
            m.extend(std::iter::repeat_n(b, n as usize));
            m
        };
        // ProxySSHResponse { agent = 3 { payload = 1 "hi" } }: 00 00 00 00 06 | 1a 04 | 0a 02 "hi"
        let agent = [0, 0, 0, 0, 6, 0x1a, 4, 0x0a, 2, b'h', b'i'];
        let mut data = Vec::new();
        for i in 0..10 {
            data.extend(ssh(i, 36));
        }
        data.extend(agent);
        for i in 10..13 {
            data.extend(ssh(i, 72));
        }
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames = vec![
            hyper::body::Frame::data(Bytes::from(data)),
            hyper::body::Frame::trailers(trailers),
        ];
        let mut resp = http::Response::new(http_body_util::StreamBody::new(
            futures_util::stream::iter(frames.into_iter().map(Ok::<_, std::convert::Infallible>)),
        ));
        resp.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/grpc"),
        );
        let rx = proxy_ssh::response(resp).unwrap();
        let (tx, _requests) = proxy_ssh::requests(4);
        let node = GrpcNode {
            tx,
            rx,
            agent: None,
        };
        let (_input_end, input) = tokio::io::duplex(64);
        let mut out = Recorder::new(usize::MAX, true);
        relay_grpc(node, input, &mut out, tokio::io::sink(), ("in", "out"))
            .await
            .unwrap();
        let want = |from: u8, to: u8, n: usize| -> Vec<u8> {
            (from..to).flat_map(|b| std::iter::repeat_n(b, n)).collect()
        };
        assert_eq!(out.writes, [want(0, 10, 36), want(10, 13, 72)]);
    }

    /// The future `relay` leaves in a session's task is a pointer and a tag (each relay is
    /// boxed on its own, with its arguments), and each relay's own state holds each of its
    /// parts once: 888 bytes for gRPC, 920 for SSH (with the gathered writes), where the
    /// `async fn`s with joined futures taken by value were 2,312 and 1,600 (issue 18: memory
    /// per open session).
    #[test]
    fn relays_are_boxed_per_transport() {
        type R = tokio::net::unix::OwnedReadHalf;
        type W = tokio::net::unix::OwnedWriteHalf;
        fn size<A, F, Fut>(_: &F) -> usize
        where
            F: Fn(A, R, W) -> Fut,
        {
            std::mem::size_of::<Fut>()
        }
        let names = ("in", "out");
        let grpc = size(&|n: GrpcNode, r, w| relay_grpc(n, r, w, tokio::io::sink(), names));
        let ssh = size(&|n: NodeChannel, r, w| relay_ssh(n, r, w, tokio::io::sink(), names));
        let either = size(&|n: Node, r, w| relay(n, r, w, tokio::io::sink(), names));
        eprintln!("relay futures: gRPC {grpc} B, SSH {ssh} B, relay() {either} B");
        assert!(
            either <= 16,
            "relay() {either} B: not boxed before its first poll"
        );
        assert!(
            grpc <= 1024 && ssh <= 1024,
            "a relay's state holds a part twice: gRPC {grpc} B, SSH {ssh} B"
        );
    }
}
