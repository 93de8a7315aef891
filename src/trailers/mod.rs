//! Dropping a token that a gRPC stream rejected in its trailers (opt-in).
//!
//! A gRPC server that turns a call away before any message answers trailers-only, with
//! `grpc-status: 16` (`UNAUTHENTICATED`) in the response headers: [`CognitoAuth`] sees that,
//! drops the token and replays the call. A streaming call rejected *after* it started (the
//! token was revoked mid-stream, say) carries the status in real trailers, at the end of the
//! body, long after [`CognitoAuth`]'s response future has completed. That call cannot be
//! replayed, but its token should still be dropped so that the next calls get a new one.
//!
//! [`CognitoAuth`] hands the inner service's response back as it is (its `Response` type is
//! the inner service's), so it cannot watch the body. [`WatchTrailersLayer`], made by
//! [`CognitoAuthLayer::watch_trailers`], goes *under* it, next to the transport: it sees the
//! token each request carries and wraps the response body; when the trailers say
//! `UNAUTHENTICATED`, it drops that token from the cache, only if it is still the current one
//! (so N streams rejected on one token cause one refresh, and a token that was already replaced
//! is left alone). The body's frames pass through untouched. It watches the answers to
//! `POST`s only, as every gRPC call is one (and as [`CognitoAuth`] looks for `grpc-status` in
//! those only). It costs a reference count per `POST` and a check of each trailers frame, and
//! is off unless you add it.
//!
//! ```
//! use bytes::Bytes;
//! use http::{HeaderMap, HeaderValue, Request, Response};
//! use http_body_util::{BodyExt as _, Full};
//! use tower::{ServiceBuilder, ServiceExt as _, service_fn};
//! use tower_cognito_auth::{AccessToken, BoxFuture, CognitoAuthLayer, Error, Token, TokenSource};
//!
//! # struct OneHour;
//! # impl TokenSource for OneHour {
//! #     fn fetch(&self) -> BoxFuture<'_, Result<Token, Error>> {
//! #         Box::pin(async {
//! #             let at = tokio::time::Instant::now() + std::time::Duration::from_secs(3600);
//! #             Ok(Token::new(AccessToken::new("t0k3n")?, at))
//! #         })
//! #     }
//! # }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let auth = CognitoAuthLayer::builder().token_source(OneHour).build()?;
//! // A stream that the server ends with `grpc-status: 16` in its trailers.
//! let server = service_fn(|_request: Request<Full<Bytes>>| async {
//!     let mut trailers = HeaderMap::new();
//!     trailers.insert("grpc-status", HeaderValue::from_static("16"));
//!     let body = Full::new(Bytes::from_static(b"message")).with_trailers(async { Some(Ok(trailers)) });
//!     Ok::<_, std::convert::Infallible>(Response::new(body))
//! });
//! let client = ServiceBuilder::new()
//!     .layer(auth.clone())
//!     .layer(auth.watch_trailers()) // under the auth layer, next to the transport
//!     .service(server);
//!
//! let call = Request::post("/echo.Echo/Stream").body(Full::new(Bytes::new()))?;
//! let response = client.oneshot(call).await?;
//! response.into_body().collect().await?; // the application reads the stream to its end
//! assert_eq!(auth.stats().invalidations, 1); // the next call gets a new token
//! # Ok(())
//! # }
//! ```
//!
//! [`CognitoAuth`]: crate::CognitoAuth
//! [`CognitoAuthLayer::watch_trailers`]: crate::CognitoAuthLayer::watch_trailers

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::header::AUTHORIZATION;
use http::{HeaderValue, Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::cache::TokenCache;
use crate::reject::is_grpc_unauthenticated;

/// A [`Layer`] that drops a token rejected in a response's trailers. Made by
/// [`CognitoAuthLayer::watch_trailers`](crate::CognitoAuthLayer::watch_trailers); see the
/// [module docs](crate::trailers) for where it goes and an example.
#[derive(Clone)]
pub struct WatchTrailersLayer {
    cache: TokenCache,
}

impl WatchTrailersLayer {
    pub(crate) fn new(cache: TokenCache) -> Self {
        Self { cache }
    }
}

impl fmt::Debug for WatchTrailersLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WatchTrailersLayer")
    }
}

impl<S> Layer<S> for WatchTrailersLayer {
    type Service = WatchTrailers<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WatchTrailers {
            inner,
            cache: self.cache.clone(),
        }
    }
}

/// The service of [`WatchTrailersLayer`]. See the [module docs](crate::trailers).
#[derive(Clone)]
pub struct WatchTrailers<S> {
    inner: S,
    cache: TokenCache,
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

/// The token a request carried, to drop if the trailers reject it.
struct Watch {
    token: HeaderValue,
    cache: TokenCache,
}

pin_project! {
    /// The response future of [`WatchTrailers`].
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct WatchTrailersFuture<F> {
        #[pin]
        future: F,
        watch: Option<Watch>,
    }
}

impl<F> fmt::Debug for WatchTrailersFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WatchTrailersFuture")
    }
}

impl<F, ResBody, E> Future for WatchTrailersFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<WatchTrailersBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.future.poll(cx))?;
        let watch = this.watch.take();
        Poll::Ready(Ok(response.map(|inner| WatchTrailersBody { inner, watch })))
    }
}

pin_project! {
    /// A response body that drops its request's token when its trailers say
    /// `grpc-status: 16`. Its frames are the inner body's, untouched.
    pub struct WatchTrailersBody<B> {
        #[pin]
        inner: B,
        watch: Option<Watch>,
    }
}

impl<B> fmt::Debug for WatchTrailersBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WatchTrailersBody")
    }
}

impl<B: Body> Body for WatchTrailersBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(trailers) = frame.trailers_ref()
            && is_grpc_unauthenticated(trailers)
            && let Some(watch) = this.watch.take()
        {
            watch.cache.invalidate_token(&watch.token);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AccessToken, BoxFuture, CognitoAuthLayer, Error, Token, TokenSource};
    use bytes::Bytes;
    use http::HeaderMap;
    use http_body_util::{BodyExt as _, Full};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tower::{ServiceBuilder, ServiceExt as _, service_fn};

    struct Counting(Arc<AtomicUsize>);

    impl TokenSource for Counting {
        fn fetch(&self) -> BoxFuture<'_, Result<Token, Error>> {
            let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            Box::pin(async move {
                let at = tokio::time::Instant::now() + Duration::from_secs(3600);
                Ok(Token::new(AccessToken::new(format!("token-{n}"))?, at))
            })
        }
    }

    fn trailers(status: &'static str) -> HeaderMap {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static(status));
        trailers
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_current_token_rejected_in_trailers_is_dropped() {
        let fetched = Arc::new(AtomicUsize::new(0));
        let auth = CognitoAuthLayer::builder()
            .token_source(Counting(fetched.clone()))
            .invalidation_throttle(Duration::ZERO)
            .build()
            .unwrap();
        let server = service_fn(|request: Request<Full<Bytes>>| async move {
            let status = request
                .headers()
                .get("x-status")
                .map_or("0", |v| if v == "16" { "16" } else { "0" });
            let body = Full::new(Bytes::from_static(b"message"))
                .with_trailers(async move { Some(Ok(trailers(status))) });
            Ok::<_, std::convert::Infallible>(Response::new(body))
        });
        let client = ServiceBuilder::new()
            .layer(auth.clone())
            .layer(auth.watch_trailers())
            .service(server);
        let call = |status: &'static str| {
            let client = client.clone();
            async move {
                let request = Request::post("/")
                    .header("x-status", status)
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let response = client.oneshot(request).await.unwrap();
                let collected = response.into_body().collect().await.unwrap();
                assert_eq!(collected.trailers(), Some(&trailers(status)));
                collected.to_bytes()
            }
        };
        // grpc-status 0: nothing is dropped, and the frames pass untouched.
        assert_eq!(call("0").await, Bytes::from_static(b"message"));
        assert_eq!(auth.stats().invalidations, 0);
        // grpc-status 16 in the trailers: that token is dropped; the next call gets a new one.
        call("16").await;
        assert_eq!(auth.stats().invalidations, 1);
        assert_eq!(auth.token().await.unwrap().secret(), "token-2");
        // Two streams that started on token-2 and end rejected after token-3 replaced it:
        // the first drops token-2, the second finds token-3 and leaves it alone.
        let rejected_stream = || {
            let request = Request::post("/")
                .header("x-status", "16")
                .body(Full::new(Bytes::new()))
                .unwrap();
            client.clone().oneshot(request)
        };
        let first = rejected_stream().await.unwrap();
        let second = rejected_stream().await.unwrap();
        first.into_body().collect().await.unwrap();
        assert_eq!(auth.token().await.unwrap().secret(), "token-3");
        second.into_body().collect().await.unwrap();
        assert_eq!(auth.token().await.unwrap().secret(), "token-3");
        assert_eq!(auth.stats().invalidations, 2);
        assert_eq!(fetched.load(Ordering::SeqCst), 3);
        // The answer to a GET is no gRPC call's: its trailers are not looked at.
        let get = Request::get("/")
            .header("x-status", "16")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = client.clone().oneshot(get).await.unwrap();
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers("16")));
        assert_eq!(auth.stats().invalidations, 2);
    }
}
