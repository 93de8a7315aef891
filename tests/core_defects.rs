//! The cache core's defects, each pinned through the public API only, so that this file
//! compiles against the old cache and the rewritten one alike.
//!
//! Clocks: every test runs on Tokio's paused clock, or on runtimes built by hand (a runtime
//! that is never driven again, one that shuts down, one without a time driver). Nothing sleeps
//! in real time; the Redis test (defect 6) runs on the real clock, as Redis keeps real time.
#![cfg(feature = "test-util")]

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, Response};
use http_body_util::Full;
use tokio::runtime::{Builder, Runtime};
use tokio::time::Instant;
use tower::{Layer as _, Service, ServiceExt as _, service_fn};
use tower_cognito_auth::{
    AccessToken, BoxFuture, CognitoAuthLayer, CognitoAuthLayerBuilder, Error, ErrorKind, Token,
    TokenCache, TokenSource,
};

const HOUR: Duration = Duration::from_secs(3600);

/// Tokens `token-1`, `token-2`, … that live `lifetime`; counts its calls. With `hang_first`,
/// the first call never returns (a fetch stuck on the network).
#[derive(Clone)]
struct Source {
    calls: Arc<AtomicUsize>,
    lifetime: Duration,
    hang_first: bool,
}

impl Source {
    fn new(lifetime: Duration) -> Self {
        Self {
            calls: Arc::default(),
            lifetime,
            hang_first: false,
        }
    }

    fn hanging_first(lifetime: Duration) -> Self {
        Self {
            hang_first: true,
            ..Self::new(lifetime)
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl TokenSource for Source {
    fn fetch(&self) -> BoxFuture<'_, Result<Token, Error>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let (lifetime, hang) = (self.lifetime, self.hang_first && n == 1);
        Box::pin(async move {
            if hang {
                std::future::pending::<()>().await;
            }
            let expires_at = Instant::now() + lifetime;
            Ok(Token::new(
                AccessToken::new(format!("token-{n}"))?,
                expires_at,
            ))
        })
    }
}

fn paused_runtime() -> Runtime {
    Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

fn running_runtime() -> Runtime {
    Builder::new_current_thread().enable_all().build().unwrap()
}

/// A runtime on the real clock on which a refresh of `cache` has started and now waits on the
/// source's first call, which never returns. The runtime is not driven again by this helper.
fn runtime_with_a_hanging_refresh(cache: &TokenCache, source: &Source) -> Runtime {
    let runtime = running_runtime();
    runtime.block_on(async {
        let cache = cache.clone();
        let waiter = tokio::spawn(async move { cache.token().await });
        // The waiter starts the refresh; the refresh's task then calls the source.
        for _ in 0..100 {
            if source.calls() == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(
            source.calls(),
            1,
            "the refresh is running, stuck in the source"
        );
        waiter.abort();
    });
    runtime
}

/// The `Authorization` of each request an inner service saw.
type Seen = Arc<Mutex<Vec<Option<String>>>>;

fn recording() -> (
    Seen,
    impl Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone,
) {
    let seen = Seen::default();
    let log = seen.clone();
    let inner = service_fn(move |request: Request<Full<Bytes>>| {
        let token = request
            .headers()
            .get(AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_owned());
        log.lock().unwrap().push(token);
        async { Ok(Response::new(Full::<Bytes>::default())) }
    });
    (seen, inner)
}

fn last(seen: &Seen) -> Option<String> {
    seen.lock().unwrap().last().cloned().flatten()
}

/// Sends one request through `service` itself (not a clone), so that its copy of the token is
/// the one used and kept.
async fn send<S>(service: &mut S)
where
    S: Service<Request<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    service
        .ready()
        .await
        .unwrap()
        .call(Request::default())
        .await
        .unwrap();
}

/// Core defect 1: a service's copy of the token, taken while Tokio's clock was running, is
/// judged by the kernel's coarse clock, which `tokio::time::pause` + `advance` do not move: after
/// advancing past the token's usable life (100 s token, usable until 90 s), the same service
/// still sends the old token.
#[test]
fn a_copy_taken_before_pause_follows_advance() {
    running_runtime().block_on(async {
        let layer = CognitoAuthLayer::builder()
            .token_source(Source::new(Duration::from_secs(100)))
            .build()
            .unwrap();
        let (seen, inner) = recording();
        let mut service = layer.layer(inner);
        // The first request fetches token-1, the second serves from the service's own copy.
        send(&mut service).await;
        send(&mut service).await;
        assert_eq!(last(&seen).as_deref(), Some("Bearer token-1"));
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(95)).await;
        send(&mut service).await;
        assert_eq!(
            last(&seen).as_deref(),
            Some("Bearer token-2"),
            "a token past its usable life was sent after `advance`"
        );
    });
}

/// Core defect 2: the background refresher never replaces a stuck refresh. A refresh stuck on
/// a runtime that is alive but never driven again is joined by the background refresher over
/// and over, long past the refresh deadline; with no traffic, no new refresh ever starts.
#[test]
fn the_background_refresher_replaces_a_refresh_stuck_on_a_parked_runtime() {
    let source = Source::hanging_first(HOUR);
    let background = paused_runtime();
    // Built in `background`'s context: the background refresher is spawned there.
    let cache = {
        let _entered = background.enter();
        TokenCache::builder(source.clone())
            .background_refresh(true)
            .refresh_deadline(Duration::from_secs(30))
            .build()
            .unwrap()
    };
    // A refresh starts on `parked`, stuck in the source; `parked` lives on, never driven again.
    let parked = runtime_with_a_hanging_refresh(&cache, &source);
    background.block_on(async {
        // No traffic at all, for four times the refresh deadline.
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert!(
            cache.stats().token_requests >= 2,
            "no refresh replaced the stuck one: {:?}",
            cache.stats()
        );
        assert_eq!(source.calls(), 2, "the background refresher fetched anew");
        let token = cache.token().await.unwrap();
        assert_eq!(token.secret(), "token-2");
        assert_eq!(source.calls(), 2, "the token was there without a request");
    });
    drop(parked);
}

/// Core defect 3 (backoff): a refresh that had started and is then dropped by its runtime's
/// shutdown is taken for "the token source panicked" and starts a backoff; another runtime
/// sharing the cache must get a token at once instead.
#[test]
fn a_refresh_dropped_by_its_runtime_shutdown_starts_no_backoff() {
    let source = Source::hanging_first(HOUR);
    let cache = TokenCache::builder(source.clone()).build().unwrap();
    // The refresh is dropped mid-fetch, with its runtime.
    drop(runtime_with_a_hanging_refresh(&cache, &source));
    let got = paused_runtime().block_on(async {
        let start = Instant::now();
        let got = cache.token().await;
        assert_eq!(Instant::now(), start, "no wait on a paused clock");
        got
    });
    match got {
        Ok(token) => assert_eq!(token.secret(), "token-2"),
        Err(error) => panic!("the next request failed: {error}"),
    }
    assert_eq!(source.calls(), 2);
}

/// Core defect 3 (waiters): a request on a healthy runtime that joined a refresh which its own
/// runtime then dropped mid-fetch (shutdown) is told "the token source panicked"; it should
/// start over on its own runtime and get a token.
#[test]
fn a_waiter_of_a_refresh_dropped_by_shutdown_is_not_told_of_a_panic() {
    let source = Source::hanging_first(HOUR);
    let cache = TokenCache::builder(source.clone()).build().unwrap();
    let dying = runtime_with_a_hanging_refresh(&cache, &source);
    let got = paused_runtime().block_on(async {
        let joined = tokio::spawn({
            let cache = cache.clone();
            async move { cache.token().await }
        });
        tokio::task::yield_now().await;
        assert_eq!(
            source.calls(),
            1,
            "the request joined the refresh in flight"
        );
        // `dying` shuts down (on a thread of its own: no runtime is dropped inside another).
        std::thread::spawn(move || drop(dying)).join().unwrap();
        joined.await.unwrap()
    });
    match got {
        Ok(token) => assert_eq!(token.secret(), "token-2"),
        Err(error) => {
            assert!(
                !error.to_string().contains("panicked"),
                "the waiter was told: {error}"
            );
            panic!("the waiter failed: {error}");
        }
    }
}

/// Core defect 5: a runtime without a time driver gets `InvalidConfig`, which starts a 60 s
/// backoff for every runtime sharing the cache; the others must get a token at once.
#[test]
fn a_runtime_without_timers_backs_off_no_other_runtime() {
    let source = Source::new(HOUR);
    let cache = TokenCache::builder(source.clone()).build().unwrap();
    let no_timers = Builder::new_current_thread().build().unwrap();
    let error = no_timers.block_on(cache.token()).unwrap_err();
    assert!(error.to_string().contains("enable_time"), "{error}");
    match paused_runtime().block_on(cache.token()) {
        Ok(token) => assert!(token.secret().starts_with("token-")),
        Err(error) => panic!("a runtime with timers was refused: {error}"),
    }
}

/// Core defect 6: a rejection can be forgotten. The rejected token moves into the next refresh
/// and is lost if that refresh never runs (its runtime shut down first); with a shared store,
/// the refresh after it then adopts the very token just rejected. Real Redis, real HTTP.
#[cfg(feature = "redis")]
#[test]
fn a_rejection_outlives_a_refresh_that_never_ran() {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Waker};

    use tower_cognito_auth::store::RedisStore;
    use tower_cognito_auth::testing::{RedisServer, TokenEndpoint};

    let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let main = Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let member = |endpoint: &TokenEndpoint| {
        CognitoAuthLayer::builder()
            .token_url(endpoint.token_url())
            .client_id(endpoint.client_id())
            .client_secret(endpoint.client_secret())
            .http_client(common::http())
            .shared_store(RedisStore::new(redis.url()).unwrap())
            .build()
            .unwrap()
    };
    let (endpoint, a, b) = main.block_on(async {
        let endpoint = TokenEndpoint::start().await.unwrap();
        let (a, b) = (member(&endpoint), member(&endpoint));
        (endpoint, a, b)
    });
    let t1 = main.block_on(a.cache().get()).unwrap();
    let t1_text = t1.access_token().secret().to_owned();
    // T1 is in the shared store: another process adopts it.
    assert_eq!(main.block_on(b.token()).unwrap().secret(), t1_text);
    assert_eq!(endpoint.tokens_issued(), 1);
    // The API rejects T1.
    assert!(a.cache().invalidate(t1.generation()));
    // A's next refresh is queued on a runtime that shuts down before it runs.
    let dead = running_runtime();
    {
        let _entered = dead.enter();
        let mut wait = pin!(a.cache().token());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
    }
    drop(dead);
    let next = main.block_on(a.token()).unwrap();
    assert_ne!(
        next.secret(),
        t1_text,
        "the token just rejected was adopted again from the shared store"
    );
}

/// Core defect 8a: the layer builder silently ignores credential settings given beside a
/// custom token source; `build` must refuse them with `InvalidConfig`.
#[test]
fn credential_settings_beside_a_token_source_are_refused() {
    type Set = fn(CognitoAuthLayerBuilder) -> CognitoAuthLayerBuilder;
    let cases: [(&str, Set); 4] = [
        ("client_id", |b| b.client_id("x")),
        ("client_secret", |b| b.client_secret("x")),
        ("scope", |b| b.scope("x")),
        ("token_url", |b| {
            b.token_url("http://127.0.0.1:9/oauth2/token")
        }),
    ];
    let accepted: Vec<&str> = cases
        .iter()
        .filter(|(_, set)| {
            let builder = set(CognitoAuthLayer::builder().token_source(Source::new(HOUR)));
            !matches!(builder.build(), Err(e) if e.kind() == ErrorKind::InvalidConfig)
        })
        .map(|(name, _)| *name)
        .collect();
    assert!(
        accepted.is_empty(),
        "accepted beside `token_source`: {accepted:?}"
    );
}

/// Issue 28, core item 3, over HTTP: the token endpoint answers `429` with `Retry-After: 40`
/// to a refresh ahead, then the API rejects the token still served. The rejection drops the
/// token but must not shorten the endpoint's pause: no token request goes out before the 40 s
/// are over (the old code sent one at once, and one per invalidation throttle after that).
#[tokio::test(start_paused = true)]
async fn a_rejection_does_not_shorten_the_endpoints_retry_after() {
    use tower_cognito_auth::testing::{ProtectedApi, Rejection, Reply, TokenEndpoint};

    let endpoint = TokenEndpoint::start().await.unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    let layer = CognitoAuthLayer::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret(endpoint.client_secret())
        .http_client(common::http())
        .build()
        .unwrap();
    let client = layer.layer(common::http());
    let get = || {
        Request::get(format!("{}/wallets", api.url()))
            .body(Full::<Bytes>::default())
            .unwrap()
    };
    let ok = client.clone().oneshot(get()).await.unwrap();
    assert_eq!(ok.status(), http::StatusCode::OK);
    assert_eq!(endpoint.request_count(), 1);
    // Into the refresh-ahead window (the endpoint's tokens live an hour): the refresh ahead
    // is refused for 40 s, unseen by the callers.
    endpoint.fail_with(Some(
        Reply::status(http::StatusCode::TOO_MANY_REQUESTS).header("retry-after", "40"),
    ));
    tokio::time::sleep(Duration::from_secs(3400)).await;
    let ok = client.clone().oneshot(get()).await.unwrap();
    assert_eq!(ok.status(), http::StatusCode::OK, "the usable token served");
    for _ in 0..100 {
        if layer.stats().token_failures == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        layer.stats().token_failures,
        1,
        "the refresh ahead was refused"
    );
    let asked = endpoint.request_count();
    // The API rejects the token: dropped, and with no token to replay with, the 401 goes back.
    api.reject_all(Some(Rejection::Unauthorized));
    let rejected = client.clone().oneshot(get()).await.unwrap();
    assert_eq!(rejected.status(), http::StatusCode::UNAUTHORIZED);
    assert_eq!(layer.stats().invalidations, 1);
    assert_eq!(
        endpoint.request_count(),
        asked,
        "a token request within the endpoint's Retry-After"
    );
    // Until the 40 s are over, requests fail at once without asking the endpoint.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let refused = client.clone().oneshot(get()).await.unwrap_err();
    let refused = refused.downcast_ref::<Error>().expect("the crate's error");
    assert_eq!(refused.kind(), ErrorKind::RateLimited, "{refused}");
    assert_eq!(endpoint.request_count(), asked);
    // After them, the next request gets a token.
    endpoint.fail_with(None);
    api.reject_all(None);
    tokio::time::sleep(Duration::from_secs(11)).await;
    let ok = client.clone().oneshot(get()).await.unwrap();
    assert_eq!(ok.status(), http::StatusCode::OK);
    assert_eq!(endpoint.request_count(), asked + 1);
}
