//! [`CognitoAuth`], the service the layer wraps around an inner service.

use std::fmt;
use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Method, Request, Response};
use tokio::time::Instant;
use tower_service::Service;

use crate::cache::{CacheRef, Generation, Lookup, TokenCache};
use crate::clock;
use crate::error::BoxError;
use crate::future::{Resend, ResponseFuture, header_and_generation};
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
/// `tower::buffer::Buffer`. Clones of `CognitoAuth` share one token cache.
///
/// # The hot path
///
/// Each service keeps its own copy of the current token's header (copied once per token) and
/// checks it against the cache's version, one atomic that changes when the token does (or the
/// background refresher stops), and its freshness against the kernel's coarse monotonic clock
/// (a read of the vDSO page; on a paused Tokio clock, in tests, against Tokio's). A response
/// future names the cache by a number; one whose request is kept for a replay also holds the
/// service's own handle to the cache, a reference count that no other service's requests
/// write, so that the replay happens even if the service is dropped after the call
/// (`oneshot`). So a request with a fresh token writes no memory that requests on other cores
/// also write, and takes no lock. Services made by [`Layer::layer`](tower_layer::Layer::layer)
/// are independent; a clone starts from its parent's copy and shares its handle.
///
/// A 401 for a request that is not kept for a replay, coming back after the last layer and
/// service of its cache were dropped, is handed back as it is: no token is left to drop.
#[derive(Clone)]
pub struct CognitoAuth<S> {
    inner: S,
    cache: TokenCache,
    /// `cache`, as the response futures of requests that are not kept for a replay name it.
    cache_ref: CacheRef,
    /// `cache`, as requests kept for a replay hold it.
    handle: CacheHandle,
    local: Local,
    replay: Replay,
    replay_body_limit: usize,
}

/// The cache as a request kept for a replay holds it: a reference count of the service's own,
/// so that the requests of services on other cores do not write one count.
pub(crate) type CacheHandle = Arc<TokenCache>;

/// A service's copy of the current token.
#[derive(Clone)]
struct Local {
    /// The cache's version this copy was taken at; `u64::MAX` before the first.
    version: u64,
    token: Option<LocalToken>,
}

#[derive(Clone)]
struct LocalToken {
    /// `Bearer …`, in bytes of this service's own.
    header: HeaderValue,
    generation: Generation,
    fresh_until: FreshUntil,
}

/// Until when a copy is used without asking the cache, on the clock a request reads.
#[derive(Clone, Copy)]
enum FreshUntil {
    /// On the kernel's coarse clock (see `clock`), less that clock's lag: before it, the token
    /// is surely fresh on Tokio's clock too.
    Coarse(clock::Ticks),
    /// On Tokio's clock, when it is paused (a test): `advance` moves it, not the kernel's.
    /// The choice is made when the copy is taken, on the clock of the runtime it is taken in:
    /// a copy taken before `time::pause()`, or in another runtime, goes by the kernel's clock.
    Tokio(Instant),
}

impl Local {
    const EMPTY: Local = Local {
        version: u64::MAX,
        token: None,
    };

    /// A copy of what the cache holds at `version` (read before the entry, so a change in
    /// between makes the next request look again). A token that is no longer fresh is not
    /// copied: requests go to the cache until the next version.
    fn load(cache: &TokenCache, version: u64) -> Local {
        let token = cache.current().and_then(|entry| {
            // The coarse clock first: a pause before Tokio's is read makes the deadline early.
            let coarse = clock::now();
            let now = Instant::now();
            let remaining = entry.fresh_until().checked_duration_since(now)?;
            // Two readings in a row are equal when Tokio's clock is paused (and on a clock
            // too coarse to tell them apart, which is then read as exactly, if slower).
            let fresh_until = if Instant::now() == now {
                FreshUntil::Tokio(entry.fresh_until())
            } else {
                FreshUntil::Coarse(clock::deadline_in(coarse, remaining)?)
            };
            let shared = entry.access_token().header_value();
            let mut header =
                HeaderValue::from_maybe_shared(Bytes::copy_from_slice(shared.as_bytes())).ok()?;
            header.set_sensitive(true);
            Some(LocalToken {
                header,
                generation: entry.generation(),
                fresh_until,
            })
        });
        Local { version, token }
    }
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
            cache_ref: cache.by_ref(),
            handle: Arc::new(cache.clone()),
            cache,
            local: Local::EMPTY,
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

    /// The token's header and generation from this service's copy, while it is fresh; else
    /// `None`, and the request goes to the cache (refresh-ahead window, expiry, a first
    /// request).
    #[inline(always)]
    fn fresh_local(&mut self) -> Option<(HeaderValue, Generation)> {
        let version = self.cache.version();
        if version != self.local.version {
            self.reload(version);
        }
        let token = self.local.token.as_ref()?;
        // The clock is read on every request, on purpose: a timer that marked the copy stale
        // would fire only when its runtime's driver turns, and a runtime idle for an hour (a
        // `block_on` in a CLI, a process frozen between Lambda invocations) runs the caller
        // before its timers. The coarse clock costs a quarter of `Instant::now()`; its lag
        // is taken off the deadline.
        let fresh = match token.fresh_until {
            FreshUntil::Coarse(until) => clock::now() < until,
            FreshUntil::Tokio(until) => Instant::now() < until,
        };
        if fresh {
            Some((token.header.clone(), token.generation))
        } else {
            None
        }
    }
}

impl<S> CognitoAuth<S> {
    /// A new copy, each time the cache's version changes.
    #[cold]
    #[inline(never)]
    fn reload(&mut self, version: u64) {
        self.cache.check_background();
        self.local = Local::load(&self.cache, version);
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
        if !self.replay.allows(request.method()) {
            // Nothing is kept: the request goes on as it came, plus the header.
            return match self.fresh_local() {
                Some((header, generation)) => {
                    request.headers_mut().insert(AUTHORIZATION, header);
                    let post = request.method() == Method::POST;
                    let future = self.inner.call(request);
                    ResponseFuture::called(future, self.cache_ref, generation, post, None)
                }
                None => self.call_from_cache(request, None),
            };
        }
        let kept = match keep(&mut request, self.replay_body_limit) {
            Ok(kept) => kept,
            Err(error) => return ResponseFuture::failed(error.into()),
        };
        // The head is cloned before `Authorization` goes in, so a replay starts clean.
        let kept = kept.map(|body| Kept::new(&request, body));
        match self.fresh_local() {
            Some((header, generation)) => {
                request.headers_mut().insert(AUTHORIZATION, header);
                let post = request.method() == Method::POST;
                let future = self.inner.call(request);
                // (Made after the call, as tower's `Retry` clones its service: the future is
                // then built where it goes, not moved there.)
                let replay = kept.map(|kept| Resend {
                    service: self.inner.clone(),
                    kept,
                    cache: Arc::clone(&self.handle),
                });
                ResponseFuture::called(future, self.cache_ref, generation, post, replay)
            }
            None => self.call_from_cache(request, kept),
        }
    }
}

impl<S> CognitoAuth<S> {
    /// A request this service's copy of the token cannot serve: the cache decides (the
    /// refresh-ahead window, a wait for a refresh, a failure).
    #[cold]
    fn call_from_cache<B>(
        &mut self,
        mut request: Request<B>,
        kept: Option<Kept>,
    ) -> ResponseFuture<S, B>
    where
        S: Service<Request<B>> + Clone,
    {
        match self.cache.lookup(header_and_generation) {
            Lookup::Ready((header, generation)) => {
                request.headers_mut().insert(AUTHORIZATION, header);
                let post = request.method() == Method::POST;
                let future = self.inner.call(request);
                // (Made after the call, as tower's `Retry` clones its service: the future is
                // then built where it goes, not moved there.)
                let replay = kept.map(|kept| Resend {
                    service: self.inner.clone(),
                    kept,
                    cache: Arc::clone(&self.handle),
                });
                ResponseFuture::called(future, self.cache_ref, generation, post, replay)
            }
            Lookup::Wait(wait) => {
                // The ready service moves into the future, which calls it once the token is
                // there; `self` keeps a clone, to be made ready by the next `poll_ready`. See
                // https://docs.rs/tower-service/latest/tower_service/trait.Service.html#be-careful-when-cloning-inner-services
                let clone = self.inner.clone();
                let ready = mem::replace(&mut self.inner, clone);
                let kept = kept.map(|kept| (kept, Arc::clone(&self.handle)));
                ResponseFuture::wait_token(wait, self.cache_ref, ready, request, kept)
            }
            Lookup::Failed(error) => ResponseFuture::failed(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::test_runtime;
    use crate::{AccessToken, BoxFuture, CognitoAuthLayer, Error, Token, TokenSource};
    use http_body_util::Full;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
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

    /// A service with a copy of a 100 s token (fresh for at most 50 s), made on the clock the
    /// test runs on.
    async fn warm() -> CognitoAuth<impl Service<Request<Full<Bytes>>> + Clone> {
        let layer = CognitoAuthLayer::builder()
            .token_source(Counting::default())
            .build()
            .unwrap();
        layer.cache().token().await.unwrap();
        let mut service = layer.layer(recording(0).1);
        assert!(service.fresh_local().is_some());
        service
    }

    /// On a real clock a copy is judged by the kernel's coarse clock alone, which runs on
    /// through a process frozen with its runtime (a Lambda between invocations, a `block_on`
    /// that returned): when it wakes, no timer has had to run for the copy to be refused.
    #[tokio::test]
    async fn a_copy_past_its_freshness_on_the_coarse_clock_is_not_used() {
        let mut service = warm().await;
        let copy = service.local.token.as_ref().map(|t| t.fresh_until);
        assert!(matches!(copy, Some(FreshUntil::Coarse(_))));
        // The freeze: 51 s pass on the kernel's clock, none on this thread's runtime.
        clock::skip(Duration::from_secs(51));
        assert!(service.fresh_local().is_none());
    }

    /// Under Tokio's paused clock a copy is judged by Tokio's clock: `advance` moves it, and
    /// the copy is refused at once, before any task (a timer of the cache's, say) has run.
    #[tokio::test(start_paused = true)]
    async fn a_copy_past_its_freshness_on_a_paused_clock_is_not_used() {
        let mut service = warm().await;
        let copy = service.local.token.as_ref().map(|t| t.fresh_until);
        assert!(matches!(copy, Some(FreshUntil::Tokio(_))));
        tokio::time::advance(Duration::from_secs(51)).await;
        assert!(service.fresh_local().is_none());
    }

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

    /// A request that is not kept for a replay names its cache by a number and holds no
    /// reference count: its 401, back after the last layer and service of that cache were
    /// dropped, is handed back as it is (no token is left to drop).
    #[tokio::test(start_paused = true)]
    async fn a_401_not_to_be_replayed_after_the_cache_is_gone_is_handed_back() {
        let layer = CognitoAuthLayer::builder()
            .token_source(Counting::default())
            .replay(Replay::Never)
            .build()
            .unwrap();
        let (seen, inner) = recording(usize::MAX);
        layer.cache().token().await.unwrap();
        let by_ref = layer.cache().by_ref();
        let service = tower::ServiceBuilder::new().layer(layer).service(inner);
        let future = service.oneshot(Request::default());
        let response = future.await.unwrap();
        assert!(by_ref.find().is_none(), "the cache is gone");
        assert_eq!(response.status(), http::StatusCode::UNAUTHORIZED);
        assert_eq!(seen.lock().unwrap().len(), 1);
    }
}
