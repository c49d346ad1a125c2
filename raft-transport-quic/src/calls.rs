//! Multiplexed request/response calls: many requests in flight on one
//! long-lived bidirectional stream per client connection.
//!
//! A calls stream starts with the byte [`STREAM_KIND_CALLS`]; after it both
//! directions carry call frames: a 4-byte big-endian length `L`, an 8-byte
//! big-endian call id, a 4-byte big-endian status code and `L - 12` bytes of
//! payload. Requests carry status 0; a response carries its request's id and
//! status 0 (the payload is the handler's answer) or one of the `STREAM_*`
//! codes of [`crate::wire`] (the call failed; the payload is empty).
//! Responses come back in the order they are ready, not the order asked.
//!
//! The server runs every request of a stream on the stream's one task
//! (no task, stream or timer per request) and writes the responses that are
//! ready together, so a burst of answers leaves in few packets. It reads no
//! further requests while [`crate::TransportConfig::max_calls_in_flight`]
//! are unanswered, or while the client identity's request budget
//! ([`crate::TransportConfig::max_client_request_bytes`], taken as soon as a
//! request's length is read) is used up, so a client that pipelines too
//! much is held back by QUIC flow control rather than by memory. Nor does
//! it run the handlers further while 4 MiB of answers
//! wait for the client to read them. A request whose first bytes arrived
//! must be complete within [`crate::TransportConfig::client_request_timeout`]
//! of the node's reading, or the stream is reset with [`STREAM_TOO_SLOW`].
//! An oversized request is skipped without being buffered and answered with
//! [`STREAM_BAD_FRAME`]; the other calls of the stream go on.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, error, warn};

use crate::caller::Caller;
use crate::client::{
    CatchUnwind, ClientError, ClientHandler, ClientRequest, Response, connection_error,
    panic_message, write_error,
};
use crate::frame::{FrameError, LENGTH_PREFIX};
use crate::limits::{Acquiring, RequestBudget};
use crate::transport::{Counters, Inner};
use crate::wire::{
    CALL_NO_RESPONSE, STREAM_BAD_FRAME, STREAM_HANDLER_FAILED, STREAM_KIND_CALLS, STREAM_TOO_SLOW,
};

/// Bytes of a call frame after the length prefix and before the payload:
/// the call id and the status code.
pub(crate) const CALL_HEADER: usize = 8 + 4;

/// Bytes read from the stream at most per read.
const READ_CHUNK: usize = 64 << 10;

/// Responses (or requests) buffered for writing above which no further
/// requests are read (or accepted from callers) until the peer has taken
/// some.
const WRITE_HIGH_WATER: usize = 4 << 20;

/// One decoded call frame.
#[derive(Debug)]
pub(crate) enum CallFrame {
    /// A whole frame.
    Call {
        id: u64,
        status: u32,
        payload: Bytes,
    },
    /// A frame whose payload exceeds the maximum; its bytes are skipped.
    Oversized { id: u64, len: usize },
    /// A length too short to hold the header: the stream is garbage.
    Broken { len: usize },
}

/// Splits the bytes of a calls stream into call frames. Fed with whatever
/// chunks the stream yields, so reading it is cancel-safe.
#[derive(Debug, Default)]
pub(crate) struct CallDecoder {
    buf: BytesMut,
    /// Bytes of an oversized frame still to drop.
    skipping: usize,
    max_payload: usize,
}

impl CallDecoder {
    pub(crate) fn new(max_payload: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            skipping: 0,
            max_payload,
        }
    }

    /// Adds bytes read from the stream.
    pub(crate) fn feed(&mut self, mut chunk: Bytes) {
        let drop = self.skipping.min(chunk.len());
        chunk.advance(drop);
        self.skipping -= drop;
        if !chunk.is_empty() {
            self.buf.extend_from_slice(&chunk);
        }
    }

    /// The next whole frame, if one has arrived.
    pub(crate) fn next_frame(&mut self) -> Option<CallFrame> {
        if self.skipping > 0 || self.buf.len() < LENGTH_PREFIX + CALL_HEADER {
            return None;
        }
        let len = u32::from_be_bytes(self.buf[..4].try_into().ok()?) as usize;
        let id = u64::from_be_bytes(self.buf[4..12].try_into().ok()?);
        let status = u32::from_be_bytes(self.buf[12..16].try_into().ok()?);
        if len < CALL_HEADER {
            return Some(CallFrame::Broken { len });
        }
        if len - CALL_HEADER > self.max_payload {
            let total = LENGTH_PREFIX + len;
            let have = self.buf.len().min(total);
            self.buf.advance(have);
            self.skipping = total - have;
            return Some(CallFrame::Oversized { id, len });
        }
        if self.buf.len() < LENGTH_PREFIX + len {
            self.buf.reserve(LENGTH_PREFIX + len - self.buf.len());
            return None;
        }
        self.buf.advance(LENGTH_PREFIX + CALL_HEADER);
        let payload = self.buf.split_to(len - CALL_HEADER).freeze();
        Some(CallFrame::Call {
            id,
            status,
            payload,
        })
    }

    /// The bytes (length prefix included) of the next request, once its
    /// length has arrived, unless it will be skipped (oversized) or breaks
    /// the stream (too short).
    pub(crate) fn next_request_bytes(&self) -> Option<usize> {
        if self.skipping > 0 || self.buf.len() < LENGTH_PREFIX {
            return None;
        }
        let len = u32::from_be_bytes(self.buf[..LENGTH_PREFIX].try_into().ok()?) as usize;
        if len < CALL_HEADER || len - CALL_HEADER > self.max_payload {
            return None;
        }
        Some(LENGTH_PREFIX + len)
    }

    /// Whether the stream ended inside a frame.
    pub(crate) fn is_mid_frame(&self) -> bool {
        self.skipping > 0 || !self.buf.is_empty()
    }
}

/// Appends one call frame to `out`; the caller has checked the size.
pub(crate) fn encode_call(out: &mut BytesMut, id: u64, status: u32, payload: &[u8]) {
    out.reserve(LENGTH_PREFIX + CALL_HEADER + payload.len());
    out.put_u32((CALL_HEADER + payload.len()) as u32);
    out.put_u64(id);
    out.put_u32(status);
    out.put_slice(payload);
}

/// A call's id, its answer, and the budget its request holds until the
/// answer is handed to the stream.
type Answer = (u64, Result<Bytes, u32>, Option<OwnedSemaphorePermit>);
type Running = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// Serves one calls stream (its kind byte already read) until the client
/// finishes it or the connection ends.
pub(crate) async fn serve_calls(
    inner: Arc<Inner>,
    handler: Arc<dyn ClientHandler>,
    remote_address: std::net::SocketAddr,
    caller: Arc<Caller>,
    budget: RequestBudget,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let max = inner.config.max_frame_size;
    let limit = inner.config.max_calls_in_flight.max(1) as usize;
    let timeout = inner.config.client_request_timeout;
    let mut decoder = CallDecoder::new(max);
    let mut running: FuturesUnordered<Running> = FuturesUnordered::new();
    let mut out = BytesMut::new();
    let mut pending_write: Option<Bytes> = None;
    let mut reading = true;
    // The budget the request being read holds, or is waiting for.
    let mut taken: Option<OwnedSemaphorePermit> = None;
    let mut acquiring: Option<Acquiring> = None;
    // When the request being read must be complete, and since when the
    // node has not been reading it (that time does not count).
    let mut deadline: Option<Instant> = None;
    let mut paused_at: Option<Instant> = None;
    loop {
        // Frames already buffered start before anything else is read, each
        // once its bytes are in the budget.
        while running.len() < limit && acquiring.is_none() {
            if taken.is_none()
                && let Some(bytes) = decoder.next_request_bytes()
            {
                match budget.try_take(bytes) {
                    Some(permit) => taken = Some(permit),
                    None => {
                        acquiring = Some(budget.take(bytes));
                        break;
                    }
                }
            }
            let Some(frame) = decoder.next_frame() else {
                break;
            };
            // That frame is complete: the next one gets its own time.
            deadline = None;
            paused_at = None;
            match frame {
                CallFrame::Call { id, payload, .. } => running.push(run_call(
                    &inner,
                    &handler,
                    remote_address,
                    &caller,
                    id,
                    payload,
                    taken.take(),
                )),
                CallFrame::Oversized { id, len } => {
                    Counters::add(&inner.counters.frames_rejected, 1);
                    warn!(node = inner.local(), %remote_address, "refused a client request of {len} bytes (the maximum is {max})");
                    encode_call(&mut out, id, STREAM_BAD_FRAME, &[]);
                }
                CallFrame::Broken { len } => {
                    Counters::add(&inner.counters.frames_rejected, 1);
                    warn!(node = inner.local(), %remote_address, "a client calls stream announced a frame of {len} bytes, too short for its header; closed the stream");
                    let _ = recv.stop(STREAM_BAD_FRAME.into());
                    let _ = send.reset(STREAM_BAD_FRAME.into());
                    return;
                }
            }
        }
        // Every answer that is ready goes out in the same write, as long as
        // the client keeps reading them.
        while out.len() < WRITE_HIGH_WATER
            && let Some(Some((id, answer, taken))) = running.next().now_or_never()
        {
            push_answer(&inner, &mut out, id, answer);
            drop(taken);
        }
        // `out` reaches the high-water mark only while a write is pending,
        // and that write is always polled below: writing never stops.
        if pending_write.is_none() && !out.is_empty() {
            pending_write = Some(out.split().freeze());
        }
        if !reading && running.is_empty() && pending_write.is_none() {
            let _ = send.finish();
            return;
        }
        let may_read =
            reading && running.len() < limit && out.len() < WRITE_HIGH_WATER && acquiring.is_none();
        // The request being read has `timeout` of the node's reading time.
        if reading && decoder.is_mid_frame() {
            let now = Instant::now();
            match (may_read, deadline, paused_at) {
                (true, None, _) => deadline = Some(now + timeout),
                (true, Some(due), Some(paused)) => {
                    deadline = Some(due + (now - paused));
                    paused_at = None;
                }
                (false, Some(_), None) => paused_at = Some(now),
                _ => {}
            }
        } else {
            // Between requests (or after skipping an oversized one) a
            // stream may idle.
            deadline = None;
            paused_at = None;
        }
        let answers_wanted = !running.is_empty() && out.len() < WRITE_HIGH_WATER;
        tokio::select! {
            chunk = recv.read_chunk(READ_CHUNK, true), if may_read => match chunk {
                Ok(Some(chunk)) => decoder.feed(chunk.bytes),
                Ok(None) => {
                    reading = false;
                    taken = None;
                    if decoder.is_mid_frame() {
                        Counters::add(&inner.counters.frames_rejected, 1);
                        debug!(node = inner.local(), %remote_address, "a calls stream ended inside a frame");
                    }
                }
                Err(error) => {
                    debug!(node = inner.local(), %remote_address, "client calls stream failed: {error}");
                    return;
                }
            },
            permit = acquired(&mut acquiring), if acquiring.is_some() => {
                acquiring = None;
                match permit {
                    Ok(permit) => taken = Some(permit),
                    Err(_) => return, // never: the budget is not closed
                }
            }
            Some((id, answer, taken)) = running.next(), if answers_wanted => {
                push_answer(&inner, &mut out, id, answer);
                drop(taken);
            }
            written = write_some(&mut send, &mut pending_write), if pending_write.is_some() => {
                if let Err(error) = written {
                    debug!(node = inner.local(), %remote_address, "client responses not delivered: {error}");
                    return;
                }
            }
            _ = expired(deadline), if may_read && deadline.is_some() => {
                Counters::add(&inner.counters.client_requests_too_slow, 1);
                warn!(
                    node = inner.local(),
                    %remote_address,
                    %caller,
                    "reset a calls stream: a request did not arrive within {timeout:?} of its first bytes"
                );
                let _ = recv.stop(STREAM_TOO_SLOW.into());
                let _ = send.reset(STREAM_TOO_SLOW.into());
                return;
            }
        }
    }
}

/// Waits for the budget being acquired (pending if none is).
async fn acquired(
    acquiring: &mut Option<Acquiring>,
) -> Result<OwnedSemaphorePermit, tokio::sync::AcquireError> {
    match acquiring {
        Some(acquiring) => acquiring.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Resolves at `deadline` (never without one).
async fn expired(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Writes some of `pending`; clears it once all is written. Cancel-safe.
async fn write_some(
    send: &mut quinn::SendStream,
    pending: &mut Option<Bytes>,
) -> Result<(), quinn::WriteError> {
    if let Some(bytes) = pending {
        send.write_chunks(std::slice::from_mut(bytes)).await?;
        if bytes.is_empty() {
            *pending = None;
        }
    }
    Ok(())
}

fn push_answer(inner: &Inner, out: &mut BytesMut, id: u64, answer: Result<Bytes, u32>) {
    match answer {
        Ok(body) if body.len() <= inner.config.max_frame_size => encode_call(out, id, 0, &body),
        Ok(body) => {
            error!(
                node = inner.local(),
                "cannot send a client response of {} bytes (the maximum is {})",
                body.len(),
                inner.config.max_frame_size
            );
            encode_call(out, id, STREAM_HANDLER_FAILED, &[])
        }
        Err(code) => encode_call(out, id, code, &[]),
    }
}

fn run_call(
    inner: &Arc<Inner>,
    handler: &Arc<dyn ClientHandler>,
    remote_address: std::net::SocketAddr,
    caller: &Arc<Caller>,
    id: u64,
    body: Bytes,
    taken: Option<OwnedSemaphorePermit>,
) -> Running {
    let inner = inner.clone();
    let handler = handler.clone();
    let caller = caller.clone();
    Box::pin(async move {
        let request = ClientRequest {
            body,
            remote_address,
            caller,
        };
        // A panic fails this call only.
        let answer = match CatchUnwind(handler.handle(request)).await {
            Ok(Response::Unary(bytes)) => Ok(bytes),
            // A push answer to a call: its first item is the answer.
            Ok(Response::Stream(mut push)) => push.next_item().await.ok_or(CALL_NO_RESPONSE),
            Err(panic) => {
                let what = panic_message(&*panic);
                error!(node = inner.local(), %remote_address, "the client handler failed: {what}");
                Err(STREAM_HANDLER_FAILED)
            }
        };
        (id, answer, taken)
    })
}

/// Why a calls stream stopped; every call waiting on it gets the matching
/// [`ClientError`].
#[derive(Clone, Debug)]
enum Failure {
    Connection(quinn::ConnectionError),
    Write(quinn::WriteError),
    Reset(u64),
    Finished,
    Malformed(String),
}

impl Failure {
    fn from_read(error: quinn::ReadError) -> Self {
        match error {
            quinn::ReadError::Reset(code) => Failure::Reset(code.into_inner()),
            quinn::ReadError::ConnectionLost(lost) => Failure::Connection(lost),
            other => Failure::Malformed(other.to_string()),
        }
    }

    fn error(&self) -> ClientError {
        match self {
            Failure::Connection(e) => connection_error(e.clone()),
            Failure::Write(e) => write_error(e.clone()),
            Failure::Reset(code) => ClientError::Reset { code: *code },
            Failure::Finished => ClientError::NoResponse,
            Failure::Malformed(why) => ClientError::Malformed(why.clone()),
        }
    }
}

type Waiters = Mutex<HashMap<u64, oneshot::Sender<Result<Bytes, ClientError>>>>;

/// The calls of one client connection: a calls stream opened on first use
/// and again after it failed.
#[derive(Debug)]
pub(crate) struct Calls {
    connection: quinn::Connection,
    max_frame_size: usize,
    next_id: AtomicU64,
    current: Mutex<Option<Arc<CallStream>>>,
}

/// One calls stream, as callers see it.
#[derive(Debug)]
struct CallStream {
    requests: mpsc::UnboundedSender<Bytes>,
    waiters: Arc<Waiters>,
}

/// Removes a caller's waiter when it stops waiting (answered, timed out or
/// dropped), so abandoned calls leave nothing behind.
struct Waiting<'a> {
    waiters: &'a Waiters,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(self.waiters).remove(&self.id);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Calls {
    pub(crate) fn new(connection: quinn::Connection, max_frame_size: usize) -> Self {
        Self {
            connection,
            max_frame_size,
            next_id: AtomicU64::new(1),
            current: Mutex::new(None),
        }
    }

    /// The live calls stream, or a new one (its task opens it).
    fn stream(&self) -> Arc<CallStream> {
        let mut current = lock(&self.current);
        if let Some(stream) = current.as_ref()
            && !stream.requests.is_closed()
        {
            return stream.clone();
        }
        let (requests, queue) = mpsc::unbounded_channel();
        let waiters = Arc::new(Waiters::default());
        let stream = Arc::new(CallStream {
            requests,
            waiters: waiters.clone(),
        });
        tokio::spawn(run_client_stream(
            self.connection.clone(),
            queue,
            waiters,
            self.max_frame_size,
        ));
        *current = Some(stream.clone());
        stream
    }

    /// Sends one request and waits for its answer.
    pub(crate) async fn call(&self, body: &[u8]) -> Result<Bytes, ClientError> {
        if body.len() > self.max_frame_size {
            return Err(ClientError::Frame(FrameError::TooLarge {
                len: body.len(),
                max: self.max_frame_size,
            }));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = BytesMut::new();
        encode_call(&mut frame, id, 0, body);
        let stream = self.stream();
        let (answer, answered) = oneshot::channel();
        // Registered before the request is queued: a stream that fails
        // after taking the request finds the waiter and answers it.
        lock(&stream.waiters).insert(id, answer);
        let _waiting = Waiting {
            waiters: &stream.waiters,
            id,
        };
        if stream.requests.send(frame.freeze()).is_err() {
            // The stream failed between being looked up and taking the
            // request, its waiters already answered: most often because the
            // connection closed, so say why it did.
            return Err(self
                .connection
                .close_reason()
                .map_or(ClientError::NoResponse, connection_error));
        }
        answered.await.unwrap_or(Err(ClientError::NoResponse))
    }
}

/// Runs one calls stream of a client: writes the queued requests in
/// batches, hands each response to its waiter; on failure, answers every
/// waiter with the reason.
async fn run_client_stream(
    connection: quinn::Connection,
    mut queue: mpsc::UnboundedReceiver<Bytes>,
    waiters: Arc<Waiters>,
    max_frame_size: usize,
) {
    let failure = client_stream(&connection, &mut queue, &waiters, max_frame_size).await;
    // Close the queue first: a caller whose request got in before this
    // registered its waiter before, and is answered below.
    queue.close();
    let failure = match failure {
        Some(failure) => failure,
        None => return, // every handle of the connection is gone
    };
    let stranded: Vec<_> = lock(&waiters).drain().collect();
    for (_, waiter) in stranded {
        let _ = waiter.send(Err(failure.error()));
    }
}

async fn client_stream(
    connection: &quinn::Connection,
    queue: &mut mpsc::UnboundedReceiver<Bytes>,
    waiters: &Waiters,
    max_frame_size: usize,
) -> Option<Failure> {
    let (mut send, mut recv) = match connection.open_bi().await {
        Ok(streams) => streams,
        Err(lost) => return Some(Failure::Connection(lost)),
    };
    let mut pending_write = Some(Bytes::from_static(&[STREAM_KIND_CALLS]));
    let mut out = BytesMut::new();
    let mut decoder = CallDecoder::new(max_frame_size);
    let mut open = true;
    loop {
        if pending_write.is_none() && !out.is_empty() {
            pending_write = Some(out.split().freeze());
        }
        if !open && pending_write.is_none() {
            let _ = send.finish();
            return None;
        }
        tokio::select! {
            request = queue.recv(), if open && out.len() < WRITE_HIGH_WATER => match request {
                Some(frame) => {
                    out.extend_from_slice(&frame);
                    while out.len() < WRITE_HIGH_WATER {
                        match queue.try_recv() {
                            Ok(frame) => out.extend_from_slice(&frame),
                            Err(_) => break,
                        }
                    }
                }
                None => open = false,
            },
            written = write_some(&mut send, &mut pending_write), if pending_write.is_some() => {
                if let Err(error) = written {
                    return Some(Failure::Write(error));
                }
            }
            chunk = recv.read_chunk(READ_CHUNK, true) => match chunk {
                Ok(Some(chunk)) => {
                    decoder.feed(chunk.bytes);
                    while let Some(frame) = decoder.next_frame() {
                        let (id, answer) = match frame {
                            CallFrame::Call { id, status: 0, payload } => (id, Ok(payload)),
                            CallFrame::Call { id, status, .. } => {
                                (id, Err(if status == CALL_NO_RESPONSE {
                                    ClientError::NoResponse
                                } else {
                                    ClientError::Reset { code: status.into() }
                                }))
                            }
                            CallFrame::Oversized { len, .. } | CallFrame::Broken { len } => {
                                return Some(Failure::Malformed(format!(
                                    "a response of {len} bytes exceeds the maximum frame size of {max_frame_size}"
                                )));
                            }
                        };
                        if let Some(waiter) = lock(waiters).remove(&id) {
                            let _ = waiter.send(answer);
                        }
                    }
                }
                Ok(None) => return Some(Failure::Finished),
                Err(error) => return Some(Failure::from_read(error)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(decoder: &mut CallDecoder) -> Vec<(u64, u32, Vec<u8>)> {
        let mut seen = Vec::new();
        while let Some(frame) = decoder.next_frame() {
            match frame {
                CallFrame::Call {
                    id,
                    status,
                    payload,
                } => seen.push((id, status, payload.to_vec())),
                CallFrame::Oversized { id, .. } => seen.push((id, u32::MAX, Vec::new())),
                CallFrame::Broken { .. } => panic!("a broken frame"),
            }
        }
        seen
    }

    /// Feeds `bytes` in two pieces, cut at `cut`, and collects the frames.
    fn decode_in_two(bytes: &Bytes, cut: usize, max_payload: usize) -> Vec<(u64, u32, Vec<u8>)> {
        let mut decoder = CallDecoder::new(max_payload);
        decoder.feed(bytes.slice(..cut));
        let mut seen = frames(&mut decoder);
        decoder.feed(bytes.slice(cut..));
        seen.extend(frames(&mut decoder));
        assert!(!decoder.is_mid_frame(), "cut at {cut}");
        seen
    }

    #[test]
    fn frames_split_anywhere_decode_the_same() {
        let mut bytes = BytesMut::new();
        encode_call(&mut bytes, 1, 0, b"first");
        encode_call(&mut bytes, 2, 7, b"");
        encode_call(&mut bytes, 3, 0, &[9; 300]);
        let bytes = bytes.freeze();
        for cut in 1..bytes.len() {
            assert_eq!(
                decode_in_two(&bytes, cut, 1024),
                vec![
                    (1, 0, b"first".to_vec()),
                    (2, 7, Vec::new()),
                    (3, 0, vec![9; 300])
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn an_oversized_frame_is_skipped_and_the_next_one_read() {
        let mut bytes = BytesMut::new();
        encode_call(&mut bytes, 5, 0, &[1; 100]);
        encode_call(&mut bytes, 6, 0, b"after");
        let bytes = bytes.freeze();
        for cut in [1, 16, 17, 60, 116, 117, bytes.len()] {
            assert_eq!(
                decode_in_two(&bytes, cut, 50),
                vec![(5, u32::MAX, Vec::new()), (6, 0, b"after".to_vec())],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_length_below_the_header_is_refused() {
        let mut decoder = CallDecoder::new(50);
        let mut bytes = BytesMut::new();
        bytes.put_u32(3);
        bytes.put_u64(8);
        bytes.put_u32(0);
        decoder.feed(bytes.freeze());
        assert!(matches!(
            decoder.next_frame(),
            Some(CallFrame::Broken { len: 3 })
        ));
    }

    #[test]
    fn a_stream_ending_inside_a_frame_is_noticed() {
        let mut bytes = BytesMut::new();
        encode_call(&mut bytes, 1, 0, b"whole");
        let bytes = bytes.freeze();
        let mut decoder = CallDecoder::new(64);
        decoder.feed(bytes.slice(..bytes.len() - 1));
        assert!(decoder.next_frame().is_none());
        assert!(decoder.is_mid_frame());
    }
}
