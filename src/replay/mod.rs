//! Keeping a request so that it can be sent once more, after its token was rejected.
//!
//! # The mechanism, and why
//!
//! The inner service must receive the body type `B` the caller sent: a tonic `Channel` accepts
//! only `Request<tonic::body::Body>`, a hyper-util `Client<_, B>` only its `B`. So the body goes
//! in and comes out as `B`, and [`ReplayBody`] says how to rebuild a `B`:
//! [`from_kept`](ReplayBody::from_kept) makes a fresh body from bytes kept aside, and
//! [`rejoin`](ReplayBody::rejoin) puts frames already taken back in front of the rest.
//!
//! When a request is sent, its head (method, URI, version, headers, extensions) is cloned, field
//! by field from the request that stays whole, *before* `Authorization` is added, and its body
//! is read **only while frames are ready**, without waiting:
//! - a body that is known empty is kept as empty, without a poll;
//! - a size hint over the limit, or a `Content-Length` over it when the size hint does not
//!   settle the question (a body of unknown size): the body is forwarded untouched;
//! - a body that ends within the limit (`Full`, a `String`, a unary gRPC message) is kept as
//!   `Bytes` (one frame: a reference-count clone; several: joined once) and sent as
//!   [`from_kept`](ReplayBody::from_kept);
//! - a body that is `Pending` (a client stream), goes over the limit, or sends trailers is
//!   forwarded as [`rejoin`](ReplayBody::rejoin)`(taken, rest)`, without a copy, and is not
//!   replayable. A streaming body is never awaited before the inner service is called: a
//!   bidirectional gRPC call would deadlock.
//!
//! The alternatives weighed: `B: Clone` (tower's `Retry`) shuts out tonic's and boxed bodies;
//! `B: Default` with empty bodies only (tower-http's `FollowRedirect`) would never replay a gRPC
//! call; a downcast on `B: 'static` silently loses replay for unlisted types; teeing the body as
//! the inner service reads it makes the replay depend on how far the server read before it
//! answered 401. Reading what is ready costs one poll pass before sending and, per request in
//! flight, up to `replay_body_limit` bytes held (64 KiB by default).
//!
//! # Implementing `ReplayBody`
//!
//! The crate implements it for `Full<Bytes>`, `Empty<Bytes>`, `String`,
//! `UnsyncBoxBody<Bytes, E>`, `BoxBody<Bytes, E>`, and behind the features `tonic` and `axum`
//! for `tonic::body::Body` and `axum_core::body::Body`. For a body type of your own, build it
//! from the kept bytes, and wrap [`Rejoin`] for the rest:
//!
//! ```
//! use bytes::Bytes;
//! use http_body::Frame;
//! use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
//! use tower_cognito_auth::replay::{ReplayBody, Rejoin};
//!
//! /// A body newtype of an application.
//! struct MyBody(UnsyncBoxBody<Bytes, std::io::Error>);
//! # impl http_body::Body for MyBody {
//! #     type Data = Bytes;
//! #     type Error = std::io::Error;
//! #     fn poll_frame(
//! #         mut self: std::pin::Pin<&mut Self>,
//! #         cx: &mut std::task::Context<'_>,
//! #     ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
//! #         std::pin::Pin::new(&mut self.0).poll_frame(cx)
//! #     }
//! # }
//!
//! impl ReplayBody for MyBody {
//!     fn from_kept(kept: Bytes) -> Self {
//!         MyBody(Full::new(kept).map_err(|never| match never {}).boxed_unsync())
//!     }
//!     fn rejoin(taken: Vec<Frame<Bytes>>, rest: Self) -> Self {
//!         MyBody(Rejoin::new(taken, rest.0).boxed_unsync())
//!     }
//! }
//! ```

mod body;
#[cfg(test)]
mod tests;

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{Extensions, HeaderMap, Method, Request, Uri, Version};
use http_body::{Body, Frame};

pub use self::body::Rejoin;
use self::body::join_data;

/// Which requests are sent again, once, after the service rejected their token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Replay {
    /// Every request whose body could be kept. A 401 means the request was not processed, so
    /// this is safe behind a well-behaved API. The default.
    #[default]
    Always,
    /// Only requests with an idempotent method (GET, HEAD, PUT, DELETE, OPTIONS, TRACE): for a
    /// gateway that may have acted on a request before answering 401. gRPC calls are POSTs,
    /// so this turns their replay off.
    IdempotentOnly,
    /// Never: a rejection goes back to the caller (the token is still dropped, so the next
    /// request gets a new one). Requests are then forwarded without any copy.
    Never,
}

impl Replay {
    pub(crate) fn allows(self, method: &Method) -> bool {
        match self {
            Replay::Always => true,
            Replay::IdempotentOnly => method.is_idempotent(),
            Replay::Never => false,
        }
    }
}

/// The most frames read ahead of sending; a body of many tiny frames is treated as a stream.
const MAX_FRAMES: usize = 64;

/// A request body type that the layer can keep for one replay. See the [module docs](self).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be kept for a replay after a 401",
    label = "this body type does not implement `ReplayBody`",
    note = "the layer implements `ReplayBody` for `Full<Bytes>`, `Empty<Bytes>`, `String`, `UnsyncBoxBody<Bytes, E>` and `BoxBody<Bytes, E>`, and with the features `tonic` / `axum` for their body types",
    note = "for a body type of your own, implement `tower_cognito_auth::replay::ReplayBody` (see its docs)"
)]
pub trait ReplayBody: Body<Data = Bytes> + Sized {
    /// A fresh body that yields exactly `kept`.
    fn from_kept(kept: Bytes) -> Self;

    /// A body that yields the frames in `taken`, then whatever `rest` has left, without
    /// copying `rest`.
    fn rejoin(taken: Vec<Frame<Bytes>>, rest: Self) -> Self;
}

/// The frames taken from a body before it is sent: the first without an allocation (a
/// unary gRPC message, a `Full` body), more in a `Vec`.
#[derive(Default)]
struct Taken {
    first: Option<Frame<Bytes>>,
    more: Vec<Frame<Bytes>>,
}

impl Taken {
    fn push(&mut self, frame: Frame<Bytes>) {
        if self.first.is_none() {
            self.first = Some(frame);
        } else {
            self.more.push(frame);
        }
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn into_vec(self) -> Vec<Frame<Bytes>> {
        let mut frames = Vec::with_capacity(1 + self.more.len());
        frames.extend(self.first);
        frames.extend(self.more);
        frames
    }

    /// The data of the frames, joined; one frame's data is handed on without a copy.
    fn into_data(self) -> Bytes {
        if self.more.is_empty() {
            return self
                .first
                .and_then(|frame| frame.into_data().ok())
                .unwrap_or_default();
        }
        join_data(self.into_vec())
    }
}

/// Reads what is ready of the request's body, up to `limit` bytes, without waiting, and
/// returns the bytes to replay it from when it can be replayed. The body is changed in place
/// only when frames were taken from it. See the module docs.
///
/// A frame error is returned: the request fails before the inner service is called.
pub(crate) fn keep<B>(request: &mut Request<B>, limit: usize) -> Result<Option<Bytes>, B::Error>
where
    B: ReplayBody + Unpin,
{
    if request.body().is_end_stream() {
        return Ok(Some(Bytes::new()));
    }
    let limit = limit as u64;
    let hint = request.body().size_hint();
    if hint.lower() > limit {
        return Ok(None);
    }
    // A body whose size is known to fit needs no look at the header.
    if hint.upper().is_none_or(|upper| upper > limit) {
        let declared = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit) {
            return Ok(None);
        }
    }
    let body = request.body_mut();
    // Polled with a waker that does nothing: a `Pending` body is handed on to the inner
    // service, whose own poll registers its real waker (only the latest waker counts).
    let mut cx = Context::from_waker(Waker::noop());
    let mut taken = Taken::default();
    let mut len: u64 = 0;
    let mut ended = false;
    for _ in 0..MAX_FRAMES {
        match Pin::new(&mut *body).poll_frame(&mut cx) {
            Poll::Ready(None) => {
                ended = true;
                break;
            }
            Poll::Ready(Some(Ok(frame))) => {
                let data = match frame.into_data() {
                    Ok(data) => data,
                    Err(trailers) => {
                        // Kept bytes cannot carry trailers.
                        taken.push(trailers);
                        break;
                    }
                };
                len = len.saturating_add(data.len() as u64);
                if taken.is_empty() && len <= limit && body.is_end_stream() {
                    // One frame and the end (a `Full` body, a unary gRPC message): its bytes
                    // are shared by the request and the replay, nothing is copied or collected.
                    *body = B::from_kept(data.clone());
                    return Ok(Some(data));
                }
                taken.push(Frame::data(data));
                if len > limit {
                    break;
                }
                if body.is_end_stream() {
                    ended = true;
                    break;
                }
            }
            Poll::Ready(Some(Err(error))) => return Err(error),
            Poll::Pending => break,
        }
    }
    if ended {
        let kept = taken.into_data();
        *body = B::from_kept(kept.clone());
        return Ok(Some(kept));
    }
    if !taken.is_empty() {
        // The frames taken go back in front of the rest (the empty body in between is never
        // sent).
        let rest = std::mem::replace(body, B::from_kept(Bytes::new()));
        *body = B::rejoin(taken.into_vec(), rest);
    }
    Ok(None)
}

/// A request's head as it came, before `Authorization` went in, and the bytes of its body:
/// what a replay is rebuilt from. The fields are cloned one by one from the request, which
/// stays whole (no `into_parts` and back).
pub(crate) struct Kept {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
    body: Bytes,
}

impl Kept {
    /// The head of `request`, and `body`.
    #[inline]
    pub(crate) fn new<B>(request: &Request<B>, body: Bytes) -> Self {
        Self {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
            extensions: request.extensions().clone(),
            body,
        }
    }

    /// The request again, with a body of the kept bytes and nothing else added.
    pub(crate) fn into_request<B: ReplayBody>(self) -> Request<B> {
        let mut request = Request::new(B::from_kept(self.body));
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        *request.extensions_mut() = self.extensions;
        request
    }
}
