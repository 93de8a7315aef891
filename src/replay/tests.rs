use std::collections::VecDeque;

use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{BodyExt as _, Empty, Full};

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
