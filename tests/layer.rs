//! CognitoAuthLayer end to end: a real token endpoint and a real protected API on 127.0.0.1,
//! reached through a hyper-util client wrapped in the layer.
#![cfg(feature = "test-util")]

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt as _, service_fn};
use tower_cognito_auth::testing::{ProtectedApi, Rejection, Reply, TokenEndpoint};
use tower_cognito_auth::{CognitoAuth, CognitoAuthLayer, CognitoAuthLayerBuilder, Error, Replay};

struct Env {
    endpoint: TokenEndpoint,
    api: ProtectedApi,
    layer: CognitoAuthLayer,
}

async fn env_with(
    endpoint: TokenEndpoint,
    configure: impl FnOnce(CognitoAuthLayerBuilder) -> CognitoAuthLayerBuilder,
) -> Env {
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    let builder = CognitoAuthLayer::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret(endpoint.client_secret())
        .http_client(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let layer = configure(builder).build().unwrap();
    Env {
        endpoint,
        api,
        layer,
    }
}

async fn env() -> Env {
    env_with(TokenEndpoint::start().await.unwrap(), |b| b).await
}

impl Env {
    fn client<B>(&self) -> CognitoAuth<Client<HttpConnector, B>>
    where
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let http = Client::builder(TokioExecutor::new()).build_http::<B>();
        ServiceBuilder::new()
            .layer(self.layer.clone())
            .service(http)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api.url())
    }

    /// A GET of `path` on the API, with an empty `Full` body.
    fn get(&self, path: &str) -> Request<Full<Bytes>> {
        Request::get(self.url(path))
            .body(Full::default())
            .expect("a valid request")
    }
}

async fn send<B>(
    client: &mut CognitoAuth<Client<HttpConnector, B>>,
    request: Request<B>,
) -> Result<Response<hyper::body::Incoming>, BoxError>
where
    B: tower_cognito_auth::replay::ReplayBody + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    client.ready().await?.call(request).await
}

async fn body_of(response: Response<hyper::body::Incoming>) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test]
async fn get_carries_a_sensitive_bearer_token() {
    let env = env().await;
    let mut client = env.client::<Empty<Bytes>>();
    let response = send(
        &mut client,
        Request::get(env.url("/wallets"))
            .body(Empty::new())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = env.api.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].token, env.endpoint.last_token());
    assert_eq!(env.layer.stats().token_requests, 1);
}

#[tokio::test]
async fn header_is_sensitive_and_a_preset_one_is_untouched() {
    let env = env().await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let inner = {
        let seen = seen.clone();
        service_fn(move |request: Request<Full<Bytes>>| {
            let seen = seen.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .push(request.headers().get("authorization").cloned());
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
            }
        })
    };
    let mut client = ServiceBuilder::new()
        .layer(env.layer.clone())
        .service(inner);
    let preset = Request::get("/")
        .header("authorization", "Basic dXNlcjpwYXNz")
        .body(Full::default())
        .unwrap();
    client.ready().await.unwrap().call(preset).await.unwrap();
    assert_eq!(
        env.layer.stats().token_requests,
        0,
        "no token fetched for a preset header"
    );
    client
        .ready()
        .await
        .unwrap()
        .call(Request::get("/").body(Full::default()).unwrap())
        .await
        .unwrap();

    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].as_ref().unwrap(), "Basic dXNlcjpwYXNz");
    let ours = seen[1].as_ref().unwrap();
    assert!(ours.is_sensitive());
    assert_eq!(
        ours.to_str().unwrap(),
        format!("Bearer {}", env.endpoint.last_token().unwrap())
    );
}

#[tokio::test]
async fn revoked_token_is_replaced_and_get_replayed() {
    let env = env().await;
    let mut client = env.client::<Empty<Bytes>>();
    let get = || {
        Request::get(env.url("/wallets"))
            .body(Empty::new())
            .unwrap()
    };
    assert_eq!(send(&mut client, get()).await.unwrap().status(), 200);
    let first = env.endpoint.last_token();
    env.api.revoke_current();
    assert_eq!(send(&mut client, get()).await.unwrap().status(), 200);
    let seen = env.api.requests();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[1].status, StatusCode::UNAUTHORIZED);
    assert_eq!(seen[1].token, first);
    assert_eq!(seen[2].status, StatusCode::OK);
    assert_ne!(seen[2].token, first);
    let stats = env.layer.stats();
    assert_eq!(
        (stats.token_requests, stats.invalidations, stats.replays),
        (2, 1, 1)
    );
}

/// Every body kind the crate can keep, built from the same bytes.
trait TestBody: tower_cognito_auth::replay::ReplayBody + Send + Unpin + 'static {
    fn make(bytes: &'static [u8]) -> Self;
}
impl TestBody for Full<Bytes> {
    fn make(bytes: &'static [u8]) -> Self {
        Full::new(Bytes::from_static(bytes))
    }
}
impl TestBody for String {
    fn make(bytes: &'static [u8]) -> Self {
        String::from_utf8(bytes.to_vec()).unwrap()
    }
}
impl TestBody for UnsyncBoxBody<Bytes, BoxError> {
    fn make(bytes: &'static [u8]) -> Self {
        // Two frames, to exercise the join.
        let (a, b) = bytes.split_at(bytes.len() / 2);
        ReadyFrames(vec![Bytes::from_static(a), Bytes::from_static(b)].into()).boxed_unsync()
    }
}
impl TestBody for BoxBody<Bytes, Infallible> {
    fn make(bytes: &'static [u8]) -> Self {
        Full::new(Bytes::from_static(bytes)).boxed()
    }
}

/// A body whose frames are all ready at once.
struct ReadyFrames(std::collections::VecDeque<Bytes>);
impl Body for ReadyFrames {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

/// A body fed by a channel: its frames arrive when a task sends them.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);
impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

const JSON: &[u8] = br#"{"amount": 1250, "currency": "BRL", "note": "replayed byte for byte"}"#;

async fn post_is_replayed_with_the_same_body<B: TestBody>()
where
    B::Error: Into<BoxError>,
{
    let env = env().await;
    let mut client = env.client::<B>();
    let post = || {
        Request::post(env.url("/payments"))
            .header("content-type", "application/json")
            .body(B::make(JSON))
            .unwrap()
    };
    assert_eq!(send(&mut client, post()).await.unwrap().status(), 200);
    env.api.revoke_current();
    let response = send(&mut client, post()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        body_of(response).await,
        JSON,
        "the API echoes what it received"
    );
    let seen = env.api.requests();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[1].status, StatusCode::UNAUTHORIZED);
    assert_eq!(seen[1].body, JSON);
    assert_eq!(seen[2].body, JSON, "replayed byte for byte");
    assert_eq!(seen[2].headers["content-type"], "application/json");
    assert_eq!(seen[2].method, Method::POST);
    assert_eq!(env.layer.stats().replays, 1);
}

#[tokio::test]
async fn post_replay_full() {
    post_is_replayed_with_the_same_body::<Full<Bytes>>().await;
}

#[tokio::test]
async fn post_replay_string() {
    post_is_replayed_with_the_same_body::<String>().await;
}

#[tokio::test]
async fn post_replay_unsync_box_body_of_two_frames() {
    post_is_replayed_with_the_same_body::<UnsyncBoxBody<Bytes, BoxError>>().await;
}

#[tokio::test]
async fn post_replay_box_body() {
    post_is_replayed_with_the_same_body::<BoxBody<Bytes, Infallible>>().await;
}

#[tokio::test]
async fn always_401_means_two_attempts_then_the_401() {
    let env = env().await;
    env.api.reject_all(Some(Rejection::Unauthorized));
    let mut client = env.client::<Full<Bytes>>();
    let response = send(&mut client, env.get("/x")).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(env.api.request_count(), 2, "exactly two attempts");
    assert_eq!(env.layer.stats().token_requests, 2);
    // The replay's 401 went back to the caller, and is counted as such.
    let stats = env.layer.stats();
    assert_eq!((stats.replays, stats.rejections_returned), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn always_401_does_not_turn_requests_into_token_requests() {
    let env = env().await;
    env.api.reject_all(Some(Rejection::Unauthorized));
    let mut client = env.client::<Full<Bytes>>();
    for _ in 0..1_000 {
        let response = send(&mut client, env.get("/x")).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // 5 s of requests, one 401-driven refresh per 10 s: the first token and one more.
    let token_requests = env.endpoint.tokens_issued();
    assert!(
        token_requests <= 3,
        "{token_requests} token requests for 1,000 rejected requests"
    );
    assert!(env.api.request_count() < 1_010);
}

#[tokio::test]
async fn forbidden_is_not_a_token_problem() {
    let env = env().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = {
        let calls = calls.clone();
        service_fn(move |_request: Request<Full<Bytes>>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async {
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::FORBIDDEN;
                Ok::<_, Infallible>(r)
            }
        })
    };
    let response = ServiceBuilder::new()
        .layer(env.layer.clone())
        .service(inner)
        .oneshot(Request::get("/").body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(env.layer.stats().invalidations, 0);
}

/// An inner service that answers each call `content-type: application/grpc` and a body, with
/// `grpc-status: 16` (trailers-only `UNAUTHENTICATED`) when `rejects(n)` holds for the call's
/// number `n` (from 0); `calls` counts them.
fn grpc_answers(
    calls: Arc<AtomicUsize>,
    rejects: fn(usize) -> bool,
) -> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone
{
    service_fn(move |_request: Request<Full<Bytes>>| {
        let reject = rejects(calls.fetch_add(1, Ordering::SeqCst));
        async move {
            let mut r = Response::new(Full::new(Bytes::from_static(b"answer")));
            r.headers_mut()
                .insert("content-type", "application/grpc".parse().unwrap());
            if reject {
                r.headers_mut().insert("grpc-status", "16".parse().unwrap());
            }
            Ok::<_, Infallible>(r)
        }
    })
}

/// gRPC calls are POSTs: `grpc-status` in the answer to another method is not gRPC's, and is
/// not looked for (which spares every GET answered with headers a lookup).
#[tokio::test]
async fn grpc_status_counts_in_the_answer_to_a_post_only() {
    let env = env().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = grpc_answers(calls.clone(), |_| true);
    let mut service = ServiceBuilder::new()
        .layer(env.layer.clone())
        .service(inner);
    let get = Request::get("/").body(Full::default()).unwrap();
    let response = service.ready().await.unwrap().call(get).await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "16");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(env.layer.stats().invalidations, 0);
    // The same answer to a POST rejects the token: dropped, and the call replayed once.
    let post = Request::post("/").body(Full::default()).unwrap();
    let response = service.ready().await.unwrap().call(post).await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "16");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(env.layer.stats().invalidations, 1);
}

/// The first POST of a layer waits for its token, then is answered: a trailers-only
/// `UNAUTHENTICATED` to it is a rejection too, and an answer with headers but no `grpc-status`
/// comes back as it was.
#[tokio::test]
async fn a_post_that_waited_for_its_token_is_checked_for_grpc_status() {
    let env = env().await;
    let calls = Arc::new(AtomicUsize::new(0));
    // The first answer rejects, the next ones do not.
    let inner = grpc_answers(calls.clone(), |n| n == 0);
    // A new layer: its cache is empty, so the first request waits for the token.
    let layer = env.layer.clone();
    let mut service = ServiceBuilder::new().layer(layer.clone()).service(inner);
    let post = || Request::post("/").body(Full::default()).unwrap();
    let response = service.ready().await.unwrap().call(post()).await.unwrap();
    assert_eq!(response.headers().get("grpc-status"), None);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(layer.stats().invalidations, 1);
    assert_eq!(layer.stats().replays, 1);
    // With a token at hand, an answer with headers and no `grpc-status` comes back whole.
    let response = service.ready().await.unwrap().call(post()).await.unwrap();
    assert_eq!(response.headers()["content-type"], "application/grpc");
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "answer"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(layer.stats().invalidations, 1);
}

#[tokio::test]
async fn grpc_trailers_only_unauthenticated_is_replayed() {
    let env = env().await;
    let http = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let mut client = ServiceBuilder::new().layer(env.layer.clone()).service(http);
    // A gRPC message: flag 0, length 5, "hello".
    let message = Bytes::from_static(b"\0\0\0\0\x05hello");
    let call = || {
        Request::post(env.url("/echo.Echo/Unary"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(message.clone()))
            .unwrap()
    };
    let response = client.ready().await.unwrap().call(call()).await.unwrap();
    assert_eq!(response.headers().get("grpc-status"), None);
    env.api.revoke_current();
    let response = client.ready().await.unwrap().call(call()).await.unwrap();
    assert_eq!(response.status(), 200);
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), message);
    let seen = env.api.requests();
    assert_eq!(seen[1].grpc_status, Some(16));
    assert_eq!(seen[2].grpc_status, Some(0));
    assert_eq!(seen[2].body, message);
    assert_eq!(seen[2].version, http::Version::HTTP_2);
}

#[tokio::test]
async fn replay_idempotent_only_skips_post() {
    let env = env_with(TokenEndpoint::start().await.unwrap(), |b| {
        b.replay(Replay::IdempotentOnly)
    })
    .await;
    let mut client = env.client::<Full<Bytes>>();
    send(&mut client, env.get("/")).await.unwrap();
    env.api.revoke_current();
    let post = Request::post(env.url("/"))
        .body(Full::new(Bytes::from_static(JSON)))
        .unwrap();
    let response = send(&mut client, post).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // The token was still dropped: the next request gets a fresh one at once.
    let response = send(
        &mut client,
        Request::put(env.url("/")).body(Full::default()).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(env.api.request_count(), 3);
    assert_eq!(env.layer.stats().replays, 0);
}

#[tokio::test]
async fn replay_never_hands_the_401_back_and_drops_the_token() {
    let env = env_with(TokenEndpoint::start().await.unwrap(), |b| {
        b.replay(Replay::Never)
    })
    .await;
    let mut client = env.client::<Full<Bytes>>();
    send(&mut client, env.get("/")).await.unwrap();
    env.api.revoke_current();
    let response = send(&mut client, env.get("/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // The rejected token was dropped: the next request carries a new one.
    let response = send(&mut client, env.get("/")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(env.api.request_count(), 3);
    assert_eq!(env.endpoint.request_count(), 2);
    assert_eq!(env.layer.stats().replays, 0);
    assert_eq!(env.layer.stats().invalidations, 1);
}

#[tokio::test]
async fn body_over_the_limit_is_not_kept_and_401_goes_back() {
    let env = env_with(TokenEndpoint::start().await.unwrap(), |b| {
        b.replay_body_limit(1024)
    })
    .await;
    let mut client = env.client::<Full<Bytes>>();
    send(&mut client, env.get("/")).await.unwrap();
    env.api.revoke_current();
    let big = Bytes::from(vec![b'x'; 4096]);
    let response = send(
        &mut client,
        Request::post(env.url("/"))
            .body(Full::new(big.clone()))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        env.api.requests()[1].body,
        big,
        "sent whole, without a copy"
    );
    let response = send(&mut client, env.get("/")).await.unwrap();
    assert_eq!(response.status(), 200, "the next request has a fresh token");
}

/// A body that streams `total` bytes in 64 KiB chunks from a task, so its first poll is
/// `Pending`.
fn streaming_body(total: usize) -> UnsyncBoxBody<Bytes, BoxError> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
    tokio::spawn(async move {
        let chunk = Bytes::from(vec![b's'; 64 * 1024]);
        let mut sent = 0;
        while sent < total {
            let n = chunk.len().min(total - sent);
            if tx.send(chunk.slice(..n)).await.is_err() {
                return;
            }
            sent += n;
        }
    });
    ChannelBody(rx).boxed_unsync()
}

#[tokio::test]
async fn streaming_one_mebibyte_rejected_with_401_does_not_hang() {
    let env = env().await;
    let mut client = env.client::<UnsyncBoxBody<Bytes, BoxError>>();
    send(
        &mut client,
        Request::get(env.url("/")).body(streaming_body(0)).unwrap(),
    )
    .await
    .unwrap();
    let first = env.endpoint.last_token();
    env.api.revoke_current();
    let request = Request::post(env.url("/upload"))
        .body(streaming_body(1024 * 1024))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(30), send(&mut client, request))
        .await
        .expect("no hang")
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(env.api.requests()[1].body.len(), 1024 * 1024);
    let response = send(
        &mut client,
        Request::get(env.url("/")).body(streaming_body(0)).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_ne!(
        env.api.requests()[2].token,
        first,
        "the next request used a fresh token"
    );
}

#[tokio::test]
async fn token_failure_is_our_error_and_the_service_is_not_called() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    endpoint.fail_with(Some(Reply::oauth_error(
        StatusCode::BAD_REQUEST,
        "invalid_client",
    )));
    let env = env_with(endpoint, |b| b).await;
    let mut client = env.client::<Full<Bytes>>();
    let err = send(&mut client, env.get("/")).await.unwrap_err();
    let err = err.downcast_ref::<Error>().expect("our Error");
    assert!(err.is_invalid_client());
    assert_eq!(env.api.request_count(), 0);
    // And the next request fails at once, without another token request (backoff).
    assert!(send(&mut client, env.get("/")).await.is_err());
    assert_eq!(env.endpoint.request_count(), 1);
}

#[tokio::test]
async fn inner_errors_pass_through_untouched() {
    let env = env().await;
    let mut client = env.client::<Full<Bytes>>();
    // Nothing listens on port 9 of 127.0.0.1.
    let err = send(
        &mut client,
        Request::get("http://127.0.0.1:9/")
            .body(Full::default())
            .unwrap(),
    )
    .await
    .unwrap_err();
    assert!(
        err.downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some(),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_across_several_token_lifetimes_never_fail() {
    // Tokens live 2 s on the API's clock; the run lasts 5 s.
    let endpoint = TokenEndpoint::builder()
        .lifetime(Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    let env = env_with(endpoint, |b| b).await;
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let stop = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let mut client = env.client::<Empty<Bytes>>();
        let url = env.url("/wallets");
        let (failures, done) = (failures.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..10_000 {
                if tokio::time::Instant::now() >= stop {
                    break;
                }
                let request = Request::get(&url).body(Empty::new()).unwrap();
                match send(&mut client, request).await {
                    Ok(r) if r.status() == 200 => {}
                    _ => {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    assert_eq!(
        env.api.rejected_count(),
        0,
        "no request ever reached the API with a dead token"
    );
    let requests = done.load(Ordering::SeqCst);
    let token_requests = env.endpoint.tokens_issued();
    // About one token per half lifetime (1 s, less up to 10% jitter) over 5 s: not per request.
    assert!(requests > 5_000, "{requests}");
    assert!(
        (4..=10).contains(&token_requests),
        "{token_requests} token requests"
    );
}

/// Wraps a service and counts its live clones, to see that futures dropped mid-flight do not
/// keep one.
#[derive(Clone)]
struct Counted<S> {
    inner: S,
    _alive: Arc<()>,
}

impl<S: Service<R>, R> Service<R> for Counted<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, request: R) -> S::Future {
        self.inner.call(request)
    }
}

#[tokio::test(start_paused = true)]
async fn dropping_the_future_at_each_await_point_leaves_the_layer_usable() {
    let env = env().await;
    let alive = Arc::new(());
    let slow_inner = {
        let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        service_fn(move |request: Request<Full<Bytes>>| {
            let http = http.clone();
            async move {
                if request.uri().path() == "/slow" {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                http.oneshot(request).await
            }
        })
    };
    let mut client = ServiceBuilder::new()
        .layer(env.layer.clone())
        .service(Counted {
            inner: slow_inner,
            _alive: alive.clone(),
        });
    let get = |path: &str| env.get(path);

    // 1. While waiting for the first token.
    env.endpoint.set_delay(Duration::from_secs(2));
    let future = client.ready().await.unwrap().call(get("/"));
    assert!(
        tokio::time::timeout(Duration::from_millis(100), future)
            .await
            .is_err()
    );
    // 2. While the inner service runs.
    let future = client.ready().await.unwrap().call(get("/slow"));
    assert!(
        tokio::time::timeout(Duration::from_secs(3), future)
            .await
            .is_err()
    );
    assert_eq!(
        env.layer.stats().token_requests,
        1,
        "the refresh outlived its dropped trigger"
    );
    // 3. While waiting for the replacement of a rejected token.
    env.api.revoke_current();
    let future = client.ready().await.unwrap().call(get("/"));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), future)
            .await
            .is_err()
    );
    assert_eq!(env.api.rejected_count(), 1);

    // The layer still works, and no dropped future kept a clone of the inner service.
    env.endpoint.set_delay(Duration::ZERO);
    let response = client.ready().await.unwrap().call(get("/")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        Arc::strong_count(&alive),
        2,
        "the test's handle and the client's inner service"
    );
    drop(client);
    assert_eq!(Arc::strong_count(&alive), 1);
}
