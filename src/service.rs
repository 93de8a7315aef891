//! [`CognitoAuth`], the service the layer wraps around an inner service.

use std::fmt;
use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response};
use tokio::time::Instant;
use tower_service::Service;

use crate::cache::{Generation, Lookup, TokenCache};
use crate::error::BoxError;
use crate::future::{Replay as Kept, ResponseFuture, header_and_generation};
use crate::replay::{Replay, ReplayBody, prepare};

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
/// checks it against the cache's version, one atomic that changes only when the token does.
/// A request with a fresh token thus writes no memory that services on other cores also
/// write. Services made by [`Layer::layer`](tower_layer::Layer::layer) are independent; a clone
/// starts from its parent's copy and shares the handle its response futures keep for a 401.
#[derive(Clone)]
pub struct CognitoAuth<S> {
    inner: S,
    cache: CacheHandle,
    local: Local,
    replay: Replay,
    replay_body_limit: usize,
}

/// The cache as a service and its response futures hold it: one more reference count per
/// service, so that the futures of one service do not all count on the cache's own.
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
    fresh_until: Instant,
}

impl Local {
    const EMPTY: Local = Local {
        version: u64::MAX,
        token: None,
    };

    /// A copy of what the cache holds at `version` (read before the entry, so a change in
    /// between makes the next request look again).
    fn load(cache: &TokenCache, version: u64) -> Local {
        let token = cache.current().and_then(|entry| {
            let shared = entry.access_token().header_value();
            let mut header =
                HeaderValue::from_maybe_shared(Bytes::copy_from_slice(shared.as_bytes())).ok()?;
            header.set_sensitive(true);
            Some(LocalToken {
                header,
                generation: entry.generation(),
                fresh_until: entry.fresh_until(),
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
            cache: Arc::new(cache),
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
    /// the request goes to the cache (refresh-ahead window, expiry, a first request), with the
    /// clock reading if one was made.
    #[inline]
    fn fresh_local(&mut self) -> Result<(HeaderValue, Generation), Option<Instant>> {
        self.cache.check_background();
        let version = self.cache.version();
        if version != self.local.version {
            self.local = Local::load(&self.cache, version);
        }
        let Some(token) = self.local.token.as_ref() else {
            return Err(None);
        };
        // Read on every request, on purpose: a timer that marks the copy stale fires only when
        // its runtime's driver turns, and a runtime idle for an hour (a `block_on` in a CLI,
        // a process frozen between Lambda invocations) runs the caller before its timers: the
        // first request would leave with a dead token. See the README's benchmarks.
        let now = Instant::now();
        if now < token.fresh_until {
            Ok((token.header.clone(), token.generation))
        } else {
            Err(Some(now))
        }
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
        if request.headers().contains_key(AUTHORIZATION) {
            // The caller chose its own credentials.
            return ResponseFuture::passthrough(self.inner.call(request));
        }
        if !self.replay.allows(request.method()) {
            // Nothing is kept: the request goes on as it came, plus the header.
            return match self.fresh_local() {
                Ok((header, generation)) => {
                    request.headers_mut().insert(AUTHORIZATION, header);
                    let future = self.inner.call(request);
                    ResponseFuture::called(future, self.cache.clone(), generation, None)
                }
                Err(now) => self.call_from_cache(request, None, now),
            };
        }
        let (parts, body) = request.into_parts();
        let prepared = match prepare(&parts.headers, body, self.replay_body_limit) {
            Ok(prepared) => prepared,
            Err(error) => return ResponseFuture::failed(error.into()),
        };
        // The head is cloned before `Authorization` goes in, so a replay starts clean.
        let kept = prepared.kept.map(|body| (parts.clone(), body));
        let mut request = Request::from_parts(parts, prepared.body);
        match self.fresh_local() {
            Ok((header, generation)) => {
                request.headers_mut().insert(AUTHORIZATION, header);
                let replay = kept.map(|(parts, body)| Kept {
                    service: self.inner.clone(),
                    parts,
                    body,
                });
                let future = self.inner.call(request);
                ResponseFuture::called(future, self.cache.clone(), generation, replay)
            }
            Err(now) => self.call_from_cache(request, kept, now),
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
        kept: Option<(http::request::Parts, Bytes)>,
        now: Option<Instant>,
    ) -> ResponseFuture<S, B>
    where
        S: Service<Request<B>> + Clone,
    {
        let lookup = match now {
            Some(now) => self.cache.lookup_at(now, header_and_generation),
            None => self.cache.lookup(header_and_generation),
        };
        match lookup {
            Lookup::Ready((header, generation)) => {
                request.headers_mut().insert(AUTHORIZATION, header);
                let replay = kept.map(|(parts, body)| Kept {
                    service: self.inner.clone(),
                    parts,
                    body,
                });
                let future = self.inner.call(request);
                ResponseFuture::called(future, self.cache.clone(), generation, replay)
            }
            Lookup::Wait(wait) => {
                // The ready service moves into the future, which calls it once the token is
                // there; `self` keeps a clone, to be made ready by the next `poll_ready`. See
                // https://docs.rs/tower-service/latest/tower_service/trait.Service.html#be-careful-when-cloning-inner-services
                let clone = self.inner.clone();
                let ready = mem::replace(&mut self.inner, clone);
                ResponseFuture::wait_token(wait, self.cache.clone(), ready, request, kept)
            }
            Lookup::Failed(error) => ResponseFuture::failed(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AccessToken, BoxFuture, CognitoAuthLayer, Error, Token, TokenSource};
    use http_body_util::Full;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tower::{ServiceExt as _, service_fn};
    use tower_layer::Layer as _;

    /// Tokens `token-1`, `token-2`, … that live 100 s.
    struct Counting(AtomicUsize);

    impl TokenSource for Counting {
        fn fetch(&self) -> BoxFuture<'_, Result<Token, Error>> {
            let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            Box::pin(async move {
                let at = Instant::now() + Duration::from_secs(100);
                Ok(Token::new(AccessToken::new(format!("token-{n}"))?, at))
            })
        }
    }

    /// Issue #13: each service keeps its own copy of the token; one that sleeps through a token
    /// change, or past its copy's freshness, never sends a token that is no longer usable.
    #[tokio::test(start_paused = true)]
    async fn a_service_asleep_through_a_token_change_sends_the_new_token() {
        let layer = CognitoAuthLayer::builder()
            .token_source(Counting(AtomicUsize::new(0)))
            .build()
            .unwrap();
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let inner = {
            let seen = seen.clone();
            service_fn(move |request: Request<Full<Bytes>>| {
                let token = request
                    .headers()
                    .get(AUTHORIZATION)
                    .map(|v| v.to_str().unwrap().to_owned());
                seen.lock().unwrap().push(token);
                async { Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default())) }
            })
        };
        let mut sleeper = layer.layer(inner.clone());
        let mut busy = layer.layer(inner);
        let send = |service: &mut CognitoAuth<_>| {
            let service = service.clone();
            async move {
                service
                    .oneshot(Request::new(Full::<Bytes>::default()))
                    .await
                    .unwrap();
            }
        };
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
}
