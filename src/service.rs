//! [`CognitoAuth`], the service the layer wraps around an inner service.

use std::fmt;
use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{Method, Request, Response};
use tower_service::Service;

use crate::cache::{Lookup, TokenCache};
use crate::error::BoxError;
use crate::future::{CacheHandle, Resend, ResponseFuture, header_and_generation};
use crate::replay::{Kept, Replay, ReplayBody, keep};

/// Adds `Authorization: Bearer <token>` to every request, and replays a request once when the
/// inner service rejects its token.
///
/// Made by [`CognitoAuthLayer`](crate::CognitoAuthLayer); see the [crate docs](crate) for an
/// example.
///
/// # Clone
///
/// A replay goes through a clone of the inner service, made ready again first (as tower's
/// `Retry` does), so `S: Clone`. Services that are not `Clone` can be wrapped in
/// `tower::buffer::Buffer`. Clones of `CognitoAuth` share one token cache; cloning one per
/// request (`service.clone().oneshot(request)`, as axum handlers and hyper-util users do) is
/// the expected use and costs a reference count.
///
/// # The hot path
///
/// A request with a fresh token reads Tokio's clock and the cache's version (one atomic load,
/// no lock), clones its thread's copy of the token's header (a reference count no other
/// thread writes), and holds the service's own handle to the cache (a reference count shared
/// by this service and its clones only, not by the services
/// [`Layer::layer`](tower_layer::Layer::layer) made for other connections). Nothing else: the
/// decisions are the cache's (see [`cache`](crate::cache)).
#[derive(Clone)]
pub struct CognitoAuth<S> {
    inner: S,
    cache: CacheHandle,
    replay: Replay,
    replay_body_limit: usize,
}

impl<S> CognitoAuth<S> {
    pub(crate) fn new(
        inner: S,
        cache: TokenCache,
        replay: Replay,
        replay_body_limit: usize,
    ) -> Self {
        Self {
            inner,
            cache: Arc::new(cache),
            replay,
            replay_body_limit,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The token cache this service shares with its layer.
    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }
}

impl<S: fmt::Debug> fmt::Debug for CognitoAuth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CognitoAuth")
            .field("inner", &self.inner)
            .field("replay", &self.replay)
            .field("replay_body_limit", &self.replay_body_limit)
            .finish_non_exhaustive()
    }
}

impl<S, B, ResBody> Service<Request<B>> for CognitoAuth<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    B: ReplayBody + Unpin,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Token errors leave through the response future, never here: an error from
        // `poll_ready` tells callers to drop the service.
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // (An empty map, a GET's, is told without a lookup.)
        if !request.headers().is_empty() && request.headers().contains_key(AUTHORIZATION) {
            // The caller chose its own credentials.
            return ResponseFuture::passthrough(self.inner.call(request));
        }
        let kept = if self.replay.allows(request.method()) {
            match keep(&mut request, self.replay_body_limit) {
                // The head is cloned before `Authorization` goes in, so a replay starts clean.
                Ok(kept) => kept.map(|body| Kept::new(&request, body)),
                Err(error) => return ResponseFuture::failed(error.into()),
            }
        } else {
            // Nothing is kept: the request goes on as it came, plus the header.
            None
        };
        let token = match self.cache.fresh_header() {
            Some(fresh) => Lookup::Ready(fresh),
            None => self.cache.lookup(header_and_generation),
        };
        match token {
            Lookup::Ready((header, generation)) => {
                request.headers_mut().insert(AUTHORIZATION, header);
                let post = request.method() == Method::POST;
                let future = self.inner.call(request);
                // (Made after the call, as tower's `Retry` clones its service: the future is
                // then built where it goes, not moved there.)
                let replay = kept.map(|kept| Resend {
                    service: self.inner.clone(),
                    kept,
                });
                let cache = Arc::clone(&self.cache);
                ResponseFuture::called(future, cache, generation, post, replay)
            }
            Lookup::Wait(wait) => self.wait_for_token(wait, request, kept),
            Lookup::Failed(error) => ResponseFuture::failed(error.into()),
        }
    }
}

impl<S> CognitoAuth<S> {
    /// No usable token yet: the ready service moves into the future, which calls it once the
    /// token is there; `self` keeps a clone, to be made ready by the next `poll_ready`. See
    /// https://docs.rs/tower-service/latest/tower_service/trait.Service.html#be-careful-when-cloning-inner-services
    #[cold]
    fn wait_for_token<B>(
        &mut self,
        wait: crate::cache::TokenWait,
        request: Request<B>,
        kept: Option<Kept>,
    ) -> ResponseFuture<S, B>
    where
        S: Service<Request<B>> + Clone,
    {
        let clone = self.inner.clone();
        let ready = mem::replace(&mut self.inner, clone);
        let cache = Arc::clone(&self.cache);
        ResponseFuture::wait_token(wait, cache, ready, request, kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::test_runtime;
    use crate::{AccessToken, BoxFuture, CognitoAuthLayer, Error, Token, TokenSource};
    use bytes::Bytes;
    use http_body_util::Full;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tokio::time::Instant;
    use tower::{ServiceExt as _, service_fn};
    use tower_layer::Layer as _;

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
        let last =
            |seen: &Mutex<Vec<Option<String>>>| seen.lock().unwrap().last().cloned().flatten();
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
}
