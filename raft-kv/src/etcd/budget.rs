//! What one client identity may hold in a node through the etcd port, all
//! its connections together, as on the native port: calls in flight, bytes
//! of requests being read or answered, and bytes of answers built but not
//! yet taken by the client.
//!
//! Every call passes [`Guard`], a tower layer in front of the gRPC
//! services. It refuses a call past [`MAX_CALLS_PER_CLIENT`] at once
//! (`RESOURCE_EXHAUSTED`, before the call costs anything but its headers);
//! counts the request's bytes as they arrive and stops reading (HTTP/2 flow
//! control holds the client back) while the identity holds
//! [`MAX_REQUEST_BYTES`]; and hands the answer to HTTP/2 in small pieces,
//! taking more of it from gRPC only while the identity holds less than
//! [`MAX_ANSWER_BYTES`] of answers not yet sent. A call that builds a large
//! answer reserves its size first ([`Identity::reserve_answer`]), so an
//! answer is counted before it is built: a client that does not read its
//! answers makes only its own calls wait.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use tonic::body::Body;

use super::listener::Peer;
use crate::budget::Budget;

/// Calls (streams) one identity may have open at once on a node.
pub(crate) const MAX_CALLS_PER_CLIENT: usize = 4096;

/// Request bytes one identity may have being read or answered at once.
pub(crate) const MAX_REQUEST_BYTES: usize = 64 << 20;

/// Answer bytes one identity may have built but not sent at once.
pub(crate) const MAX_ANSWER_BYTES: usize = 64 << 20;

/// The most bytes of an answer handed to HTTP/2 at a time.
const PIECE: usize = 64 << 10;

/// One client identity's budgets on the etcd port of a node.
pub(crate) struct Identity {
    pub name: String,
    pub connections: AtomicUsize,
    calls: AtomicUsize,
    requests: Budget,
    answers: Budget,
}

impl Identity {
    pub(crate) fn new(name: String) -> Self {
        Self {
            name,
            connections: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
            requests: Budget::new(MAX_REQUEST_BYTES),
            answers: Budget::new(MAX_ANSWER_BYTES),
        }
    }

    /// Waits until the identity holds less than its answer budget, then
    /// counts `bytes` of an answer about to be built; the reservation is
    /// given back when the answer has been handed to HTTP/2 (attach it to
    /// the response with [`Reservation::attach`]) or dropped.
    pub(crate) async fn reserve_answer(self: &Arc<Self>, bytes: usize) -> Reservation {
        self.answers.take(bytes).await;
        Reservation(Arc::new(std::sync::Mutex::new(Some(Reserved {
            identity: self.clone(),
            bytes,
        }))))
    }
}

/// Answer bytes counted for an answer not built yet.
struct Reserved {
    identity: Arc<Identity>,
    bytes: usize,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.identity.answers.give(self.bytes);
    }
}

/// A reservation of answer bytes ([`Identity::reserve_answer`]); it travels
/// with the response (an extension) to the layer that sends it.
#[derive(Clone)]
pub(crate) struct Reservation(Arc<std::sync::Mutex<Option<Reserved>>>);

impl Reservation {
    /// Puts the reservation on `response`, to be held until its answer is
    /// handed to HTTP/2.
    pub(crate) fn attach<T>(self, mut response: tonic::Response<T>) -> tonic::Response<T> {
        response.extensions_mut().insert(self);
        response
    }

    fn take(&self) -> Option<Reserved> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }
}

/// The tower layer that puts every call under its identity's budgets.
#[derive(Clone, Copy, Default)]
pub(crate) struct GuardLayer;

impl<S> tower_layer::Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard { inner }
    }
}

/// See [`GuardLayer`].
#[derive(Clone)]
pub(crate) struct Guard<S> {
    inner: S,
}

/// A call counted in its identity's calls in flight until dropped.
struct Call(Arc<Identity>);

impl Drop for Call {
    fn drop(&mut self) {
        self.0.calls.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The request bytes a call holds; given back when the call's answer is
/// sent or dropped (or, for streams of requests, as each is read).
struct Held {
    identity: Arc<Identity>,
    bytes: AtomicUsize,
}

impl Held {
    fn add(&self, n: usize) {
        self.bytes.fetch_add(n, Ordering::AcqRel);
    }

    fn release(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::AcqRel);
        self.identity.requests.give(n);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.identity
            .requests
            .give(self.bytes.load(Ordering::Acquire));
    }
}

type Waiting = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Ready once `identity` holds less than the limit of `budget` (one of its
/// budgets); `waiting` keeps the wait between polls.
fn poll_below(
    waiting: &mut Option<Waiting>,
    cx: &mut Context<'_>,
    identity: &Arc<Identity>,
    budget: fn(&Identity) -> &Budget,
) -> Poll<()> {
    loop {
        if let Some(wait) = waiting {
            ready!(wait.as_mut().poll(cx));
            *waiting = None;
        }
        if !budget(identity).is_full() {
            return Poll::Ready(());
        }
        let identity = identity.clone();
        *waiting = Some(Box::pin(async move {
            budget(&identity).below_limit().await;
        }));
    }
}

/// A trailers-only gRPC answer: the call refused before it began.
fn refusal(code: tonic::Code, message: &str) -> http::Response<Body> {
    tonic::Status::new(code, message).into_http()
}

impl<S> tower_service::Service<http::Request<Body>> for Guard<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let Some(peer) = request.extensions().get::<Peer>().cloned() else {
            return Box::pin(std::future::ready(Ok(refusal(
                tonic::Code::Unauthenticated,
                "a client certificate from the cluster's CA is required",
            ))));
        };
        let identity = peer.identity;
        if identity
            .calls
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_CALLS_PER_CLIENT).then_some(n + 1)
            })
            .is_err()
        {
            return Box::pin(std::future::ready(Ok(refusal(
                tonic::Code::ResourceExhausted,
                &format!(
                    "client {} has {MAX_CALLS_PER_CLIENT} calls open on this node, its most: \
                     wait for answers before sending more",
                    identity.name
                ),
            ))));
        }
        let call = Call(identity.clone());
        // Streams of requests (watches, keep-alives) give their bytes back
        // as each request is read; other calls when their answer is sent.
        let streaming = matches!(
            request.uri().path(),
            "/etcdserverpb.Watch/Watch" | "/etcdserverpb.Lease/LeaseKeepAlive"
        );
        let held = Arc::new(Held {
            identity: identity.clone(),
            bytes: AtomicUsize::new(0),
        });
        let request = request.map(|body| {
            Body::new(MeteredRequest {
                inner: body,
                held: held.clone(),
                streaming,
                last: 0,
                waiting: None,
            })
        });
        let call_future = self.inner.call(request);
        Box::pin(async move {
            let mut response = call_future.await?;
            let reserved = response
                .extensions_mut()
                .remove::<Reservation>()
                .and_then(|r| r.take());
            Ok(response.map(|body| {
                Body::new(MeteredAnswer {
                    inner: body,
                    identity,
                    reserved,
                    pending: None,
                    counted: 0,
                    waiting: None,
                    _held: held,
                    _call: call,
                })
            }))
        })
    }
}

/// A request body whose bytes count against the identity's request budget
/// as they arrive; past the budget it is not read (flow control).
struct MeteredRequest {
    inner: Body,
    held: Arc<Held>,
    streaming: bool,
    /// The bytes of the last frame, for a stream of requests.
    last: usize,
    waiting: Option<Waiting>,
}

impl HttpBody for MeteredRequest {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        if this.streaming && this.last > 0 {
            // The reader came back for more: it took the last frame.
            this.held.release(std::mem::take(&mut this.last));
        }
        ready!(poll_below(
            &mut this.waiting,
            cx,
            &this.held.identity,
            |identity| &identity.requests
        ));
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            let n = data.len();
            this.held.identity.requests.add(n);
            this.held.add(n);
            if this.streaming {
                this.last = n;
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// An answer body handed to HTTP/2 in pieces of [`PIECE`] bytes; more is
/// taken from gRPC (and so built) only while the identity holds less than
/// its answer budget.
struct MeteredAnswer {
    inner: Body,
    identity: Arc<Identity>,
    /// Answer bytes the call reserved before building its answer; given
    /// back once its first bytes are counted here.
    reserved: Option<Reserved>,
    /// The rest of the chunk being handed out, and the bytes counted for it.
    pending: Option<Bytes>,
    counted: usize,
    waiting: Option<Waiting>,
    _held: Arc<Held>,
    _call: Call,
}

impl MeteredAnswer {
    fn release(&mut self) {
        self.identity
            .answers
            .give(std::mem::take(&mut self.counted));
    }
}

impl Drop for MeteredAnswer {
    fn drop(&mut self) {
        self.release();
    }
}

impl HttpBody for MeteredAnswer {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        loop {
            if let Some(rest) = &mut this.pending {
                let piece = rest.split_to(rest.len().min(PIECE));
                if rest.is_empty() {
                    this.pending = None;
                    this.release();
                }
                return Poll::Ready(Some(Ok(Frame::data(piece))));
            }
            // An answer reserved before it was built goes out without
            // waiting again; any other waits for the budget.
            if this.reserved.is_none() {
                ready!(poll_below(
                    &mut this.waiting,
                    cx,
                    &this.identity,
                    |identity| &identity.answers
                ));
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        this.identity.answers.add(data.len());
                        this.counted = data.len();
                        this.reserved = None;
                        this.pending = Some(data);
                    }
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                other => {
                    this.reserved = None;
                    return Poll::Ready(other);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.inner.is_end_stream()
    }
}
