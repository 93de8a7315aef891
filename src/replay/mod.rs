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

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::{Extensions, HeaderMap, Method, Request, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{BodyExt as _, Empty, Full};
use pin_project_lite::pin_project;

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

fn join_data(taken: Vec<Frame<Bytes>>) -> Bytes {
    let mut data: Vec<Bytes> = taken
        .into_iter()
        .filter_map(|frame| frame.into_data().ok())
        .collect();
    match data.len() {
        0 => Bytes::new(),
        1 => data.pop().unwrap_or_default(),
        _ => {
            let mut joined = BytesMut::with_capacity(data.iter().map(Bytes::len).sum());
            for chunk in data {
                joined.extend_from_slice(&chunk);
            }
            joined.freeze()
        }
    }
}

/// `Full` yields its one frame and is then exhausted, so `rejoin` only meets an empty rest.
impl ReplayBody for Full<Bytes> {
    fn from_kept(kept: Bytes) -> Self {
        Full::new(kept)
    }

    fn rejoin(taken: Vec<Frame<Bytes>>, _rest: Self) -> Self {
        Full::new(join_data(taken))
    }
}

/// `Empty` yields nothing: what is kept is always empty.
impl ReplayBody for Empty<Bytes> {
    fn from_kept(_kept: Bytes) -> Self {
        Empty::new()
    }

    fn rejoin(_taken: Vec<Frame<Bytes>>, rest: Self) -> Self {
        rest
    }
}

/// A `String` yields its text as one frame and is then empty. Rebuilding one copies the bytes
/// (a `String` cannot share them); prefer `Full<Bytes>` for large bodies.
impl ReplayBody for String {
    fn from_kept(kept: Bytes) -> Self {
        match String::from_utf8(kept.to_vec()) {
            Ok(text) => text,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    fn rejoin(taken: Vec<Frame<Bytes>>, rest: Self) -> Self {
        let mut text = Self::from_kept(join_data(taken));
        text.push_str(&rest);
        text
    }
}

impl<E: 'static> ReplayBody for UnsyncBoxBody<Bytes, E> {
    fn from_kept(kept: Bytes) -> Self {
        Full::new(kept).map_err(never::<E>).boxed_unsync()
    }

    fn rejoin(taken: Vec<Frame<Bytes>>, rest: Self) -> Self {
        Rejoin::new(taken, rest).boxed_unsync()
    }
}

impl<E: 'static> ReplayBody for BoxBody<Bytes, E> {
    fn from_kept(kept: Bytes) -> Self {
        Full::new(kept).map_err(never::<E>).boxed()
    }

    fn rejoin(taken: Vec<Frame<Bytes>>, rest: Self) -> Self {
        Rejoin::new(taken, rest).boxed()
    }
}

#[cfg(feature = "tonic")]
impl ReplayBody for tonic::body::Body {
    fn from_kept(kept: Bytes) -> Self {
        tonic::body::Body::new(Full::new(kept))
    }

    fn rejoin(taken: Vec<Frame<Bytes>>, rest: Self) -> Self {
        tonic::body::Body::new(Rejoin::new(taken, rest))
    }
}

#[cfg(feature = "axum")]
impl ReplayBody for axum_core::body::Body {
    fn from_kept(kept: Bytes) -> Self {
        axum_core::body::Body::new(Full::new(kept))
    }

    fn rejoin(taken: Vec<Frame<Bytes>>, rest: Self) -> Self {
        axum_core::body::Body::new(Rejoin::new(taken, rest))
    }
}

fn never<E>(never: Infallible) -> E {
    match never {}
}

pin_project! {
    /// A body that yields frames already taken from a body, then the rest of that body.
    ///
    /// The building block for [`ReplayBody::rejoin`] on boxed and wrapping body types.
    #[derive(Debug)]
    pub struct Rejoin<B> {
        taken: VecDeque<Frame<Bytes>>,
        #[pin]
        rest: B,
    }
}

impl<B> Rejoin<B> {
    /// The frames in `taken`, then `rest`.
    pub fn new(taken: Vec<Frame<Bytes>>, rest: B) -> Self {
        Self {
            taken: taken.into(),
            rest,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for Rejoin<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        match this.taken.pop_front() {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            None => this.rest.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.taken.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let taken: u64 = self
            .taken
            .iter()
            .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
            .sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(taken));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(taken));
        }
        hint
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What `keep` makes of a body: what to send, and the bytes to replay it from.
    struct Prepared<B> {
        body: B,
        kept: Option<Bytes>,
    }

    fn prepare<B: ReplayBody + Unpin>(
        headers: &HeaderMap,
        body: B,
        limit: usize,
    ) -> Result<Prepared<B>, B::Error> {
        let mut request = Request::new(body);
        *request.headers_mut() = headers.clone();
        let kept = keep(&mut request, limit)?;
        Ok(Prepared {
            body: request.into_body(),
            kept,
        })
    }
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Step {
        Data(Bytes),
        /// `Pending` once (waking the task at once), then the next step.
        Pending,
        Trailers,
        Error,
    }

    /// A body that plays a script; with `endless`, it yields data frames forever.
    #[derive(Debug)]
    struct Scripted {
        steps: VecDeque<Step>,
        endless: bool,
    }

    impl Scripted {
        fn new(steps: Vec<Step>) -> Self {
            Self {
                steps: steps.into(),
                endless: false,
            }
        }
    }

    impl Body for Scripted {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            if self.endless {
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))));
            }
            match self.steps.pop_front() {
                None => Poll::Ready(None),
                Some(Step::Data(b)) => Poll::Ready(Some(Ok(Frame::data(b)))),
                Some(Step::Pending) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Some(Step::Trailers) => {
                    let mut t = HeaderMap::new();
                    t.insert("x-checksum", http::HeaderValue::from_static("1"));
                    Poll::Ready(Some(Ok(Frame::trailers(t))))
                }
                Some(Step::Error) => Poll::Ready(Some(Err(std::io::Error::other("broken")))),
            }
        }
    }

    type Boxed = UnsyncBoxBody<Bytes, std::io::Error>;

    fn boxed(steps: Vec<Step>) -> Boxed {
        Scripted::new(steps).boxed_unsync()
    }

    async fn collect(body: Boxed) -> (Bytes, Option<HeaderMap>) {
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        (collected.to_bytes(), trailers)
    }

    fn data(s: &'static str) -> Step {
        Step::Data(Bytes::from_static(s.as_bytes()))
    }

    #[tokio::test]
    async fn empty_and_full_bodies() {
        let p = prepare(&HeaderMap::new(), Empty::<Bytes>::new(), 10).unwrap();
        assert_eq!(p.kept, Some(Bytes::new()));

        let p = prepare(
            &HeaderMap::new(),
            Full::new(Bytes::from_static(b"hello")),
            10,
        )
        .unwrap();
        assert_eq!(p.kept.as_deref(), Some(&b"hello"[..]));
        assert_eq!(p.body.collect().await.unwrap().to_bytes(), "hello");

        // Over the limit by size hint: untouched, not kept.
        let p = prepare(
            &HeaderMap::new(),
            Full::new(Bytes::from_static(b"hello")),
            4,
        )
        .unwrap();
        assert_eq!(p.kept, None);
        assert_eq!(p.body.collect().await.unwrap().to_bytes(), "hello");

        // Over the limit by Content-Length: not even polled.
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, http::HeaderValue::from_static("100"));
        let p = prepare(&headers, boxed(vec![Step::Error]), 10).unwrap();
        assert_eq!(p.kept, None);

        // A body whose size is known to fit is kept whatever the header says: the header is
        // looked at only when the size hint leaves the fit open.
        let p = prepare(&headers, Full::new(Bytes::from_static(b"hello")), 10).unwrap();
        assert_eq!(p.kept.as_deref(), Some(&b"hello"[..]));
        assert_eq!(p.body.collect().await.unwrap().to_bytes(), "hello");
    }

    #[tokio::test]
    async fn ready_frames_are_joined_and_kept() {
        let p = prepare(
            &HeaderMap::new(),
            boxed(vec![data("ab"), data("cd"), data("e")]),
            10,
        )
        .unwrap();
        assert_eq!(p.kept.as_deref(), Some(&b"abcde"[..]));
        assert_eq!(collect(p.body).await.0, "abcde");
    }

    #[tokio::test]
    async fn pending_first_is_forwarded_whole() {
        let p = prepare(
            &HeaderMap::new(),
            boxed(vec![Step::Pending, data("ab"), data("cd")]),
            10,
        )
        .unwrap();
        assert_eq!(p.kept, None);
        assert_eq!(collect(p.body).await.0, "abcd");

        let p = prepare(
            &HeaderMap::new(),
            boxed(vec![data("ab"), Step::Pending, data("cd")]),
            10,
        )
        .unwrap();
        assert_eq!(p.kept, None, "a stream that pauses is not waited for");
        assert_eq!(collect(p.body).await.0, "abcd");
    }

    #[tokio::test]
    async fn over_the_limit_while_reading_is_rejoined() {
        let p = prepare(
            &HeaderMap::new(),
            boxed(vec![data("abc"), data("def"), data("g")]),
            4,
        )
        .unwrap();
        assert_eq!(p.kept, None);
        assert_eq!(collect(p.body).await.0, "abcdefg");
    }

    #[tokio::test]
    async fn trailers_are_kept_in_order_and_not_replayed() {
        let p = prepare(
            &HeaderMap::new(),
            boxed(vec![data("ab"), Step::Trailers]),
            10,
        )
        .unwrap();
        assert_eq!(p.kept, None);
        let (bytes, trailers) = collect(p.body).await;
        assert_eq!(bytes, "ab");
        assert_eq!(trailers.unwrap()["x-checksum"], "1");
    }

    #[tokio::test]
    async fn endless_body_does_not_hang() {
        let body = Scripted {
            steps: VecDeque::new(),
            endless: true,
        };
        // Tiny frames, far under the byte limit: the frame bound stops the reading.
        let p = prepare(&HeaderMap::new(), body.boxed_unsync(), 1 << 20).unwrap();
        assert_eq!(p.kept, None);
        let mut body = p.body;
        for _ in 0..(MAX_FRAMES + 10) {
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "x");
        }
    }

    #[tokio::test]
    async fn a_frame_error_fails_before_sending() {
        assert!(prepare(&HeaderMap::new(), boxed(vec![data("a"), Step::Error]), 10).is_err());
    }

    #[tokio::test]
    async fn every_body_kind_rebuilds_from_kept() {
        let kept = Bytes::from_static(b"payload");
        assert_eq!(
            Full::from_kept(kept.clone())
                .collect()
                .await
                .unwrap()
                .to_bytes(),
            kept
        );
        assert_eq!(String::from_kept(kept.clone()), "payload");
        assert_eq!(
            Boxed::from_kept(kept.clone())
                .collect()
                .await
                .unwrap()
                .to_bytes(),
            kept
        );
        let b = BoxBody::<Bytes, std::io::Error>::from_kept(kept.clone());
        assert_eq!(b.collect().await.unwrap().to_bytes(), kept);
        assert!(Empty::<Bytes>::from_kept(Bytes::new()).is_end_stream());
    }

    #[cfg(feature = "tonic")]
    #[tokio::test]
    async fn tonic_body_unary_message_is_kept() {
        let message = Bytes::from_static(b"\0\0\0\0\x05hello");
        let body = tonic::body::Body::new(Full::new(message.clone()));
        let p = prepare(&HeaderMap::new(), body, 1024).unwrap();
        assert_eq!(p.kept, Some(message.clone()));
        assert_eq!(p.body.collect().await.unwrap().to_bytes(), message);

        let streaming = tonic::body::Body::new(Scripted::new(vec![Step::Pending, data("later")]));
        let p = prepare(&HeaderMap::new(), streaming, 1024).unwrap();
        assert_eq!(p.kept, None);
        assert_eq!(p.body.collect().await.unwrap().to_bytes(), "later");
    }

    #[cfg(feature = "axum")]
    #[tokio::test]
    async fn axum_body_is_kept() {
        let body = axum_core::body::Body::from("json");
        let p = prepare(&HeaderMap::new(), body, 1024).unwrap();
        assert_eq!(p.kept.as_deref(), Some(&b"json"[..]));
        assert_eq!(p.body.collect().await.unwrap().to_bytes(), "json");
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(|v| Step::Data(Bytes::from(v))),
            1 => Just(Step::Pending),
        ]
    }

    proptest! {
        /// Whatever the body's shape and the limit: the inner service receives exactly the
        /// original bytes, in order, and they are kept iff they could be read without waiting,
        /// within the limit.
        #[test]
        fn forwarded_body_is_the_original(
            steps in proptest::collection::vec(step(), 0..80),
            limit in 0usize..512,
        ) {
            let original: Vec<u8> = steps.iter().flat_map(|s| match s {
                Step::Data(b) => b.to_vec(),
                _ => Vec::new(),
            }).collect();
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let p = prepare(&HeaderMap::new(), boxed(steps.clone()), limit).unwrap();
            if let Some(kept) = &p.kept {
                prop_assert_eq!(&kept[..], &original[..]);
                prop_assert!(kept.len() <= limit);
            }
            let ready_prefix = steps.iter().take_while(|s| !matches!(s, Step::Pending)).count();
            if ready_prefix == steps.len() && original.len() <= limit && steps.len() < MAX_FRAMES {
                prop_assert!(p.kept.is_some(), "a small, ready body is kept");
            }
            let (sent, _) = rt.block_on(collect(p.body));
            prop_assert_eq!(&sent[..], &original[..]);
        }
    }
}
