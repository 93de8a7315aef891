//! Unit tests of `service`.

use super::*;
use crate::cache::test_runtime;
use crate::{AccessToken, BoxFuture, CognitoAuthLayer, Error, Token, TokenSource};
use bytes::Bytes;
use http_body_util::Full;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tower::Layer as _;
use tower::{ServiceExt as _, service_fn};

/// Tokens `token-1`, `token-2`, … that live 100 s; the count of fetches is shared.
#[derive(Default)]
struct Counting(Arc<AtomicUsize>);

impl TokenSource for Counting {
    fn fetch(&self) -> BoxFuture<'_, Result<Token, Error>> {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            let at = Instant::now() + Duration::from_secs(100);
            Ok(Token::new(AccessToken::new(format!("token-{n}"))?, at))
        })
    }
}

/// Sends one request through `service` itself, not a clone: the copy of the token it
/// keeps is the one used, and kept for the next request.
async fn send<S>(service: &mut S)
where
    S: Service<Request<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    let ready = service.ready().await.unwrap();
    ready.call(Request::default()).await.unwrap();
}

/// Issue #13: each service keeps its own copy of the token; one that sleeps through a token
/// change, or past its copy's freshness, never sends a token that is no longer usable.
#[tokio::test(start_paused = true)]
async fn a_service_asleep_through_a_token_change_sends_the_new_token() {
    let layer = CognitoAuthLayer::builder()
        .token_source(Counting::default())
        .build()
        .unwrap();
    let (seen, inner) = recording(0);
    // The token first, so that the services' first requests copy it.
    layer.cache().token().await.unwrap();
    let mut sleeper = layer.layer(inner.clone());
    let mut busy = layer.layer(inner);
    let last = |seen: &Mutex<Vec<Option<String>>>| seen.lock().unwrap().last().cloned().flatten();
    // Both copy token-1.
    send(&mut sleeper).await;
    send(&mut busy).await;
    assert_eq!(last(&seen).as_deref(), Some("Bearer token-1"));
    // The busy one goes on into the refresh-ahead window (100 s token: fresh for 50 s at
    // most, usable for 90 s); token-2 replaces token-1 there.
    for _ in 0..60 {
        tokio::time::advance(Duration::from_secs(1)).await;
        send(&mut busy).await;
    }
    assert_eq!(last(&seen).as_deref(), Some("Bearer token-2"));
    // The sleeper wakes after token-1 stopped being usable: it sends token-2.
    tokio::time::advance(Duration::from_secs(35)).await;
    send(&mut sleeper).await;
    assert_eq!(last(&seen).as_deref(), Some("Bearer token-2"));
    // A clone that sleeps past its copy's freshness with no other traffic at all: the
    // request goes to the cache, never out with a token past its margin.
    let mut alone = sleeper.clone();
    tokio::time::advance(Duration::from_secs(200)).await;
    send(&mut alone).await;
    assert_eq!(last(&seen).as_deref(), Some("Bearer token-3"));
}

/// The `Authorization` of each request the inner service saw.
type Seen = Arc<Mutex<Vec<Option<String>>>>;

/// A service whose requests find a fresh copy does not look at the cache, yet the
/// background refresher, gone with its runtime, is started again by its next request: the
/// refresher's end changes the version.
#[test]
fn a_service_with_a_fresh_copy_restarts_the_background_refresher() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = CognitoAuthLayer::builder()
        .token_source(Counting(calls.clone()))
        .background_refresh(true)
        .build()
        .unwrap();
    let mut service = layer.layer(recording(0).1);
    let init = test_runtime(true);
    init.block_on(async {
        layer.cache().token().await.unwrap();
        send(&mut service).await;
    });
    drop(init);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    test_runtime(true).block_on(async {
        send(&mut service).await;
        // No traffic past the token's freshness (100 s tokens: fresh for 40 to 50 s), and
        // not past the next one's (at least 40 s more).
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "renewed in the background with no traffic"
        );
    });
}

/// An inner service that records each request's `Authorization` in `Seen`, and answers
/// the first `rejections` requests with a 401, the others with a 200.
fn recording(
    rejections: usize,
) -> (
    Seen,
    impl Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone,
) {
    let seen = Seen::default();
    let inner = {
        let seen = seen.clone();
        service_fn(move |request: Request<Full<Bytes>>| {
            let token = request
                .headers()
                .get(AUTHORIZATION)
                .map(|v| v.to_str().unwrap().to_owned());
            let mut seen = seen.lock().unwrap();
            seen.push(token);
            let mut response = Response::new(Full::<Bytes>::default());
            if seen.len() <= rejections {
                *response.status_mut() = http::StatusCode::UNAUTHORIZED;
            }
            async { Ok(response) }
        })
    };
    (seen, inner)
}

/// `oneshot` drops the service right after the call: a request kept for a replay holds its
/// cache, and is replayed with a new token though the layer and the service are gone.
#[tokio::test(start_paused = true)]
async fn a_request_whose_service_was_dropped_is_still_replayed() {
    let layer = CognitoAuthLayer::builder()
        .token_source(Counting::default())
        .build()
        .unwrap();
    let (seen, inner) = recording(1);
    layer.cache().token().await.unwrap();
    let service = tower::ServiceBuilder::new().layer(layer).service(inner);
    let response = service.oneshot(Request::default()).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [Some("Bearer token-1".into()), Some("Bearer token-2".into())]
    );
}

/// A request that is not kept for a replay holds its cache too: its 401, back after the
/// layer and the service were dropped (`oneshot`), is handed back and still drops its
/// token, so the next request does not send it again.
#[tokio::test(start_paused = true)]
async fn a_401_not_to_be_replayed_drops_its_token_after_the_service_is_gone() {
    let layer = CognitoAuthLayer::builder()
        .token_source(Counting::default())
        .replay(Replay::Never)
        .build()
        .unwrap();
    let (seen, inner) = recording(usize::MAX);
    let cache = layer.cache().clone();
    cache.token().await.unwrap();
    let service = tower::ServiceBuilder::new().layer(layer).service(inner);
    let future = service.oneshot(Request::default());
    let response = future.await.unwrap();
    assert_eq!(response.status(), http::StatusCode::UNAUTHORIZED);
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(cache.stats().invalidations, 1);
    assert_eq!(cache.token().await.unwrap().secret(), "token-2");
}
