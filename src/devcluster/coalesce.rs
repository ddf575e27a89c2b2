//! Fewer, larger writes to a node: the dev proxy's relays gather the client's bytes that are
//! already here (decoded gRPC frames, SSH channel data) into one vectored write of up to
//! [`COALESCE`] bytes instead of one write per frame. Bytes on the wire are unchanged (TCP is
//! a byte stream); the point is that the dev proxy, which shares the machine with every
//! measurement we make, costs no more per byte than it must.
//!
//! Owns: the batch size, the vectored write of a batch, and the "is it ready now" poll. Must
//! not know: which protocol the bytes came from.

use std::future::Future;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Bytes a relay gathers into one write to the node.
pub(crate) const COALESCE: usize = 256 << 10;

/// Write every buffer in `batch` to `w` (vectored, in as few calls as the socket takes), then
/// empty it.
pub(crate) async fn write_batch<W: AsyncWrite + Unpin>(
    w: &mut W,
    batch: &mut Vec<Bytes>,
) -> std::io::Result<()> {
    let mut start = 0;
    while start < batch.len() {
        let slices: Vec<std::io::IoSlice<'_>> = batch[start..]
            .iter()
            .map(|b| std::io::IoSlice::new(b))
            .collect();
        let mut n = w.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let first = &mut batch[start];
            let take = n.min(first.len());
            first.advance(take);
            n -= take;
            if first.is_empty() {
                start += 1;
            }
        }
        while start < batch.len() && batch[start].is_empty() {
            start += 1;
        }
    }
    batch.clear();
    Ok(())
}

/// `f`'s output if it is ready now, without waiting. (It polls with a no-op waker; the
/// caller's next `.await` registers its own waker again, so no wake-up is lost.)
pub(crate) fn ready_now<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_batch_arrives_whole_and_in_order_through_short_writes() {
        // A 1 KiB pipe takes a little per write: the batch is resumed mid-buffer many times.
        let (mut w, mut r) = tokio::io::duplex(1024);
        let parts: Vec<Bytes> = (0..50u32)
            .map(|i| Bytes::from(vec![(i % 251) as u8; 100 + i as usize * 37]))
            .collect();
        let want: Vec<u8> = parts.iter().flat_map(|b| b.iter().copied()).collect();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut batch = parts.clone();
        write_batch(&mut w, &mut batch).await.unwrap();
        assert!(batch.is_empty());
        drop(w);
        assert_eq!(reader.await.unwrap(), want);
    }

    #[test]
    fn ready_now_takes_only_what_is_ready() {
        assert_eq!(ready_now(async { 7 }), Some(7));
        assert_eq!(ready_now(std::future::pending::<u8>()), None);
    }
}
