//! Request bodies: bounded reads, and a lingering close for the bytes a handler leaves unread.
//!
//! A server that answers early (a 401 before the upload, a 413 on the declared length, a 400
//! on the first bad frame of a stream) and closes the connection with unread bytes in its
//! receive buffer makes the kernel send a reset; a client still writing its body then sees a
//! broken pipe instead of the answer. HTTP servers avoid this with a "lingering close": read
//! and discard the rest for a while before closing. [`Lingering`], installed on every request
//! by [`crate::net::Server::serve`] on HTTP/1 connections, does that after the handler has
//! answered, within [`DRAIN_LIMIT`] bytes and [`DRAIN_TIME`]; a client sending more than
//! that gets the reset.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, Version};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::ApiError;

/// How many unread bytes of a refused request are read and thrown away at most. A body
/// declared longer than this is not drained at all (its client gets the reset).
const DRAIN_LIMIT: u64 = 64 << 20;

/// How long the unread rest of a refused request is read at most.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Reads a whole body, refusing more than `limit` bytes with 413 (before reading, when the
/// declared length is already too large; the unread rest is drained by [`Lingering`]).
///
/// # Errors
/// [`ApiError::too_large`].
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::too_large(limit))
}

/// Middleware that wraps each HTTP/1 request body in [`Lingering`]. HTTP/2 needs none: a
/// stream whose body is dropped after its answer is reset on its own (`RST_STREAM` with
/// `NO_ERROR`), which tells the client to stop sending without touching the connection.
pub(crate) async fn linger(req: Request, next: Next) -> Response {
    if req.version() > Version::HTTP_11 {
        return next.run(req).await;
    }
    next.run(req.map(|body| Body::new(Lingering::new(body))))
        .await
}

/// A request body that, dropped before its end, hands its unread rest to a task that reads
/// and discards it (bounded by [`DRAIN_LIMIT`] and [`DRAIN_TIME`]).
///
/// The connection keeps reading for the draining task after the answer is written, so the
/// client reads the answer and the connection closes cleanly.
pub(crate) struct Lingering<B: HttpBody<Data = Bytes> + Unpin + Send + 'static> {
    inner: Option<B>,
}

impl<B: HttpBody<Data = Bytes> + Unpin + Send + 'static> Lingering<B> {
    /// Wraps `inner`.
    pub(crate) fn new(inner: B) -> Self {
        Self { inner: Some(inner) }
    }
}

impl<B: HttpBody<Data = Bytes> + Unpin + Send + 'static> HttpBody for Lingering<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            // Ended or broken: nothing is left to drain.
            self.inner = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl<B: HttpBody<Data = Bytes> + Unpin + Send + 'static> Drop for Lingering<B> {
    fn drop(&mut self) {
        let Some(rest) = self.inner.take() else {
            return;
        };
        if rest.is_end_stream() || rest.size_hint().lower() > DRAIN_LIMIT {
            return;
        }
        // Outside a runtime (never the case in the services) the rest is dropped as before.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(DRAIN_TIME, discard(rest, DRAIN_LIMIT)).await;
            });
        }
    }
}

/// Reads `body` to its end or until more than `limit` data bytes are read; returns how many
/// were read.
async fn discard<B: HttpBody<Data = Bytes> + Unpin>(mut body: B, limit: u64) -> u64 {
    let mut read = 0u64;
    while read <= limit {
        match poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len() as u64),
            _ => break,
        }
    }
    read
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::StreamExt;

    use super::*;

    /// A body of `chunks` chunks of `size` bytes that counts the bytes handed out.
    fn counted_body(chunks: usize, size: usize) -> (Body, Arc<AtomicUsize>) {
        let read = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&read);
        let stream = futures_util::stream::iter(0..chunks).map(move |i| {
            r.fetch_add(size, Ordering::Relaxed);
            Ok::<_, std::io::Error>(Bytes::from(vec![i as u8; size]))
        });
        (Body::from_stream(stream), read)
    }

    #[tokio::test]
    async fn a_body_read_through_lingering_is_unchanged() {
        let (body, _) = counted_body(4, 1000);
        let got = axum::body::to_bytes(Body::new(Lingering::new(body)), 4000)
            .await
            .unwrap();
        assert_eq!(got.len(), 4000);
        assert_eq!(&got[3000..3003], &[3, 3, 3]);
    }

    #[tokio::test]
    async fn a_dropped_body_is_drained_in_the_background() {
        let (body, read) = counted_body(50, 1000);
        let mut wrapped = Lingering::new(body);
        // The handler reads one chunk and answers.
        poll_fn(|cx| Pin::new(&mut wrapped).poll_frame(cx))
            .await
            .unwrap()
            .unwrap();
        drop(wrapped);
        for _ in 0..100 {
            if read.load(Ordering::Relaxed) == 50_000 {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("drained {} of 50000 bytes", read.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn draining_stops_at_its_bound() {
        let (body, read) = counted_body(100, 1000);
        assert_eq!(discard(body, 10_000).await, 11_000);
        assert_eq!(read.load(Ordering::Relaxed), 11_000);
    }

    /// A body that declares `len` bytes and records whether it was ever polled.
    struct Declared {
        len: u64,
        polled: Arc<AtomicUsize>,
    }

    impl HttpBody for Declared {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            // One byte, then the end.
            let first = self.polled.fetch_add(1, Ordering::Relaxed) == 0;
            Poll::Ready(first.then(|| Ok(Frame::data(Bytes::from_static(b"x")))))
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.len)
        }
    }

    #[tokio::test]
    async fn only_bodies_declared_within_the_bound_are_drained() {
        for (len, drained) in [(DRAIN_LIMIT + 1, false), (1 << 20, true)] {
            let polled = Arc::new(AtomicUsize::new(0));
            drop(Lingering::new(Declared {
                len,
                polled: Arc::clone(&polled),
            }));
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            assert_eq!(
                polled.load(Ordering::Relaxed) > 0,
                drained,
                "declared {len}"
            );
        }
    }
}
