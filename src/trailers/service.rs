use std::fmt;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{Method, Request, Response};
use tower::Service;

use super::body::Watch;
use super::{WatchTrailersBody, WatchTrailersFuture};
use crate::cache::TokenCache;

/// The service of [`WatchTrailersLayer`](super::WatchTrailersLayer). See the
/// [module docs](crate::trailers).
#[derive(Clone)]
pub struct WatchTrailers<S> {
    pub(super) inner: S,
    pub(super) cache: TokenCache,
}

impl<S> WatchTrailers<S> {
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
}

impl<S: fmt::Debug> fmt::Debug for WatchTrailers<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchTrailers")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B, ResBody> Service<Request<B>> for WatchTrailers<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<WatchTrailersBody<ResBody>>;
    type Error = S::Error;
    type Future = WatchTrailersFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // gRPC calls are `POST`s; the answer to any other method is not watched.
        let token = if request.method() == Method::POST {
            request.headers().get(AUTHORIZATION).cloned()
        } else {
            None
        };
        WatchTrailersFuture {
            future: self.inner.call(request),
            watch: token.map(|token| Watch {
                token,
                cache: self.cache.clone(),
            }),
        }
    }
}
