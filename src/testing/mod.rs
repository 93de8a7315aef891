//! Loopback servers for tests and demos: a Cognito-compatible token endpoint and a protected API
//! (feature `test-util`).
//!
//! This module is a supported part of the public API. The crate's own tests, its demo and your
//! own tests use the same two servers, so a test can exercise the whole token flow over real
//! sockets without any AWS account or network access:
//!
//! - [`TokenEndpoint`] answers `POST /oauth2/token` with the OAuth 2.0 `client_credentials`
//!   grant the way Amazon Cognito's token endpoint does: client authentication by HTTP Basic
//!   (RFC 6749 §2.3.1) or by form fields, `400 {"error":"invalid_client"}` for wrong credentials,
//!   and a JSON answer with `access_token`, `expires_in` and `token_type`. It also serves the
//!   `refresh_token` grant for user sessions ([`TokenEndpoint::new_session`]), optionally with
//!   strict rotation and reuse detection (a reused refresh token revokes the session) and for a
//!   public client without a secret. It also answers Cognito's user-pool API at `POST /`
//!   ([`TokenEndpoint::user_pool_api_url`]: `GetTokensFromRefreshToken`, `InitiateAuth`
//!   `REFRESH_TOKEN_AUTH` with its `SECRET_HASH` check, `RevokeToken`, `GlobalSignOut`), over
//!   the same sessions and tokens, for pools without a domain. Tokens are opaque
//!   random strings or, on request, JWT-shaped. The endpoint records every request it receives,
//!   counts the tokens it issues, and can be made slow ([`TokenEndpoint::set_delay`]) or made to
//!   answer with any status, headers and body ([`TokenEndpoint::push_reply`],
//!   [`TokenEndpoint::fail_with`]).
//! - [`ProtectedApi`] accepts a request only when its `Authorization: Bearer` token was issued by
//!   its [`TokenEndpoint`], has not been revoked and has not expired. It echoes the request body,
//!   records every request, and rejects the way real services do: HTTP `401` with
//!   `WWW-Authenticate: Bearer error="invalid_token"`, or for gRPC requests a trailers-only
//!   response with `grpc-status: 16` (`UNAUTHENTICATED`). It speaks HTTP/1.1 and HTTP/2 with
//!   prior knowledge (h2c) on the same port, so gRPC clients can call it.
//!
//! Both servers listen on an ephemeral port of `127.0.0.1`, run on the Tokio runtime that started
//! them, and stop, dropping every open connection, when the last clone of their handle is dropped.
//! Token lifetimes and delays are measured with [`tokio::time::Instant`] and
//! [`tokio::time::sleep`], so tests with a paused clock (`#[tokio::test(start_paused = true)]`,
//! `tokio::time::advance`) control expiry and slowness without waiting.
//!
//! The servers never log client secrets or tokens, and the [`Debug`] output of the handles hides
//! the client secret.
//!
//! ```
//! use std::time::Duration;
//! use http::StatusCode;
//! use tower_cognito_auth::testing::{ProtectedApi, Rejection, Reply, TokenEndpoint};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! // A token endpoint issuing one-minute tokens, and an API that accepts only its live tokens.
//! let endpoint = TokenEndpoint::builder()
//!     .client_id("my-client")
//!     .client_secret("my-secret")
//!     .lifetime(Duration::from_secs(60))
//!     .start()
//!     .await?;
//! let api = ProtectedApi::start(&endpoint).await?;
//! // Point the client under test at `endpoint.token_url()` and `api.url()`.
//! assert!(endpoint.token_url().starts_with("http://127.0.0.1:"));
//!
//! // Script the identity provider: the next token request is rate limited.
//! endpoint.push_reply(Reply::status(StatusCode::TOO_MANY_REQUESTS).header("retry-after", "1"));
//! // Make the API drop the current token early, or reject everything as a gRPC server would.
//! api.revoke_current();
//! api.reject_all(Some(Rejection::GrpcUnauthenticated));
//! api.reject_all(None);
//! assert_eq!(endpoint.request_count(), 0);
//! # Ok(())
//! # }
//! ```

mod protected_api;
#[cfg(feature = "redis")]
mod redis_cluster;
mod redis_server;
mod server;
#[cfg(test)]
mod tests;
mod token_endpoint;

pub use protected_api::{ProtectedApi, RecordedApiRequest, Rejection};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis_cluster::{RedisCluster, SlotMove};
pub use redis_server::{RedisServer, SERVER_ENV};
pub use token_endpoint::{RecordedTokenRequest, Reply, TokenEndpoint, TokenEndpointBuilder};
