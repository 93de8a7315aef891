//! [`CognitoAuth`], the service the layer wraps around an inner service.

use std::fmt;
use std::mem;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{Request, Response};
use tower_service::Service;

use crate::cache::{Lookup, TokenCache};
use crate::error::BoxError;
use crate::future::{Replay as Kept, ResponseFuture, header_and_generation};
use crate::layer::Replay;
use crate::replay::{ReplayBody, prepare};

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
#[derive(Clone)]
pub struct CognitoAuth<S> {
    inner: S,
    cache: TokenCache,
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
            cache,
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

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if request.headers().contains_key(AUTHORIZATION) {
            // The caller chose its own credentials.
            return ResponseFuture::passthrough(self.inner.call(request));
        }
        let (request, kept) = if self.replay.allows(request.method()) {
            let (parts, body) = request.into_parts();
            let prepared = match prepare(&parts.headers, body, self.replay_body_limit) {
                Ok(prepared) => prepared,
                Err(error) => return ResponseFuture::failed(error.into()),
            };
            // The head is cloned before `Authorization` goes in, so a replay starts clean.
            let kept = prepared.kept.map(|body| (parts.clone(), body));
            (Request::from_parts(parts, prepared.body), kept)
        } else {
            (request, None)
        };
        let mut request = request;
        match self.cache.lookup(header_and_generation) {
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
