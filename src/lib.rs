//! Tower middleware that puts a valid OAuth 2.0 access token from AWS Cognito (or any OAuth 2.0
//! token endpoint) on every request of an HTTP or gRPC client, so that the code using the client
//! never thinks about tokens.
//!
//! [`CognitoAuthLayer`] wraps any `tower::Service<http::Request<B>>`: a hyper-util client, a
//! tonic `Channel`, an axum or tower stack. Each request gets `Authorization: Bearer <token>`,
//! the token coming from the OAuth 2.0 client_credentials grant and kept in a cache that
//! renews it before it expires. For an application acting for a signed-in user, the same layer
//! takes its tokens from the user's refresh token, with refresh-token rotation handled safely:
//! see [`grant::refresh_token`] and [`RefreshTokenGrant`].
//!
//! ```no_run
//! use tower::ServiceBuilder;
//! use tower_cognito_auth::CognitoAuthLayer;
//! # use bytes::Bytes;
//! # use http_body_util::Full;
//! # use hyper_util::{client::legacy::{Client, connect::HttpConnector}, rt::TokioExecutor};
//!
//! # fn main() -> Result<(), tower::BoxError> {
//! # let any_http_service: Client<HttpConnector, Full<Bytes>> =
//! #     Client::builder(TokioExecutor::new()).build_http();
//! let auth = CognitoAuthLayer::builder()
//!     .cognito_domain("my-pool", "us-east-1") // or .token_url("https://…/oauth2/token")
//!     .client_id(std::env::var("COGNITO_CLIENT_ID").map_err(|_| "COGNITO_CLIENT_ID is not set")?)
//!     .client_secret(std::env::var("COGNITO_CLIENT_SECRET").map_err(|_| "COGNITO_CLIENT_SECRET is not set")?)
//!     .scope("wallets/read") // optional, repeatable
//!     .build()?; // default HTTPS client, default timings
//!
//! let client = ServiceBuilder::new().layer(auth.clone()).service(any_http_service);
//! // every request through `client` now carries `Authorization: Bearer <token>`
//! # Ok(())
//! # }
//! ```
//!
//! A complete run against the crate's own loopback token endpoint and protected API (feature
//! `test-util`, see [`testing`]):
//!
//! ```
//! # #[cfg(feature = "test-util")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::{client::legacy::Client, rt::TokioExecutor};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_cognito_auth::{
//!     CognitoAuthLayer,
//!     testing::{ProtectedApi, TokenEndpoint},
//! };
//!
//! let endpoint = TokenEndpoint::start().await?;
//! let api = ProtectedApi::start(&endpoint).await?;
//!
//! let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
//! let auth = CognitoAuthLayer::builder()
//!     .token_url(endpoint.token_url())
//!     .client_id(endpoint.client_id())
//!     .client_secret(endpoint.client_secret())
//!     .http_client(http.clone())
//!     .build()?;
//! let client = ServiceBuilder::new().layer(auth.clone()).service(http);
//!
//! let request = http::Request::get(format!("{}/wallets", api.url())).body(Full::default())?;
//! let response = client.oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//! assert_eq!(auth.stats().token_requests, 1);
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "test-util"))]
//! # fn main() {}
//! ```
//!
//! # What it guarantees
//!
//! - **No request leaves with a dying token.** A token is handed out only while it has at
//!   least `min_validity` (30 s) to live, and is renewed `refresh_ahead` (300 s) before expiry
//!   while still in use. This is the race that breaks AWS Amplify JS, where a request sent at the
//!   instant of expiry goes out with a dead token and gets a 401.
//! - **One refresh, however many requests.** Requests that find no usable token all wait on
//!   one refresh, run in a task of its own so that no cancelled request cancels it; when it
//!   fails they all get its error, and further attempts are spaced by backoff, not by the
//!   request rate. See [`cache`].
//! - **A rejected token is replaced, once.** A `401`, or a gRPC trailers-only
//!   `UNAUTHENTICATED` (in the answer to a `POST`, as every gRPC call is), drops that token
//!   (only that one), gets a new one and replays the request once, transparently. Bodies up to
//!   `replay_body_limit` (64 KiB) are kept for it; streams are forwarded untouched. See [`replay`]. A stream rejected in its trailers, after it started,
//!   cannot be replayed; [`trailers`] (opt-in) still drops its token.
//! - **Secrets stay secret.** The client secret and tokens never appear in `Debug` output,
//!   logs or errors; the `Authorization` header is marked sensitive; the token endpoint must be
//!   HTTPS (loopback excepted). A request that already has an `Authorization` header is left
//!   alone.
//! - **Careful with the token endpoint.** `400 invalid_client` is a clear error, not retried
//!   within the token fetch; the cache asks again at most once a minute, when a token is
//!   wanted. `429` and `5xx` back off exponentially with jitter and honour `Retry-After`.
//!
//! # Errors
//!
//! [`CognitoAuth`]'s error type is [`tower::BoxError`]: the inner service's errors pass
//! through untouched (they still downcast to hyper-util's or tonic's error), and a failure to
//! get a token is an [`Error`] (the inner service is then not called). See [`error`].
//!
//! # Features
//!
//! - `rustls` (default): the built-in HTTPS client for the token endpoint (hyper-util,
//!   rustls with the ring provider and the webpki roots), which honours `HTTPS_PROXY` /
//!   `NO_PROXY` and takes `proxy`, `no_proxy` and `root_certificates` on the builders. Without
//!   it, pass your own client to `http_client`.
//! - `native-roots`: `rustls`, trusting the platform's certificate store instead of webpki's.
//! - `tonic`: [`ReplayBody`](replay::ReplayBody) for `tonic::body::Body`, so a tonic
//!   `Channel` can sit under the layer.
//! - `axum`: [`ReplayBody`](replay::ReplayBody) for axum's body type.
//! - `store`: [`store`], a token shared by a whole fleet of processes through a
//!   [`TokenStore`](store::TokenStore) (the trait and the fleet's coordination, no store
//!   client): one token request per token lifetime for the fleet instead of one per process.
//! - `redis`: `store` and [`RedisStore`](store::RedisStore), a store on Redis or Valkey
//!   (`redis://`, or `rediss://` over rustls with the ring provider).
//! - `reqwest`: [`CognitoAuthLayer::reqwest_middleware`], the same tokens for a reqwest
//!   client through reqwest-middleware (see [`reqwest_auth`]), and `reqwest_client` on the
//!   builders, for token requests through the application's own `reqwest::Client`.
//! - `aws-secrets-manager`: [`ClientSecret::from_aws_secrets_manager`], the client secret
//!   read from AWS Secrets Manager (cached, read again after `invalid_client`).
//! - `metrics`: counters, a histogram and a gauge through the `metrics` facade, for your own
//!   exporter (see `metrics` for the names).
//! - `test-util`: [`testing`], a Cognito-compatible token endpoint and a protected API on
//!   127.0.0.1 and a `redis-server` runner, for your own tests.
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]
#![warn(missing_debug_implementations, clippy::await_holding_lock)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backoff;
pub mod cache;
pub mod error;
pub mod future;
pub mod grant;
mod layer;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
#[cfg(not(feature = "metrics"))]
mod metrics;
mod reject;
pub mod replay;
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub mod reqwest_auth;
mod service;
pub mod sessions;
#[cfg(feature = "store")]
#[cfg_attr(docsrs, doc(cfg(feature = "store")))]
pub mod store;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing;
mod token;
pub mod trailers;

pub use cache::{CachedToken, Generation, Stats, TokenCache, TokenCacheBuilder};
pub use error::{Error, ErrorKind};
#[cfg(feature = "aws-secrets-manager")]
#[cfg_attr(docsrs, doc(cfg(feature = "aws-secrets-manager")))]
pub use grant::AwsSecretsManager;
pub use grant::{BoxFuture, SharedIdentity, TokenSource};
pub use grant::{ClientAssertionKey, ClientSecret};
pub use grant::{
    ClientAuth, ClientCredentials, ClientCredentialsBuilder, RefreshFlow, RefreshTokenGrant,
    RefreshTokenGrantBuilder, SessionStatus, TokenSet,
};
pub use layer::{CognitoAuthLayer, CognitoAuthLayerBuilder, DEFAULT_REPLAY_BODY_LIMIT};
pub use replay::Replay;
pub use service::CognitoAuth;
pub use sessions::{SessionSet, SessionSetBuilder};
pub use token::{AccessToken, Token};

/// Compiles the README's Rust code as doctests. Its examples are whole programs, with no
/// hidden lines, and some use the features `reqwest`, `redis` and `test-util`: they are compiled
/// when those are on (`cargo test --all-features`).
#[cfg(all(doctest, feature = "reqwest", feature = "redis", feature = "test-util"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
