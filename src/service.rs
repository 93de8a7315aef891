//! [`CognitoAuth`], the service the layer wraps around an inner service.

use std::fmt;
use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{Method, Request, Response};
use tower::Service;

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
/// [`Layer::layer`](tower::Layer::layer) made for other connections). Nothing else: the
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
mod tests;
