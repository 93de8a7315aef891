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

mod body;
mod future;
mod layer;
mod service;
#[cfg(test)]
mod tests;

pub use self::body::WatchTrailersBody;
pub use self::future::WatchTrailersFuture;
pub use self::layer::WatchTrailersLayer;
pub use self::service::WatchTrailers;
