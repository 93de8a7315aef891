//! Where tokens come from: the [`TokenSource`] trait the cache calls, and the grants that
//! implement it against an OAuth 2.0 token endpoint (Cognito's `/oauth2/token`, or any other).
//!
//! - [`ClientCredentials`]: a service's own token (the client_credentials grant).
//! - [`RefreshTokenGrant`]: a signed-in user's session (the refresh_token grant, with
//!   refresh-token rotation).
//!
//! Both send their requests through any tower HTTP service: by default the built-in HTTPS
//! client (feature `rustls`, in `https.rs`), in tests a plain hyper-util client talking to a
//! [loopback endpoint](crate::testing). What they share (the URL rules, client
//! authentication, the retries, reading the answer) is in `endpoint.rs`.

#[cfg(feature = "aws-secrets-manager")]
#[cfg_attr(docsrs, doc(cfg(feature = "aws-secrets-manager")))]
pub mod aws_secrets_manager;
pub mod client_assertion;
pub mod client_credentials;
pub mod client_secret;
mod cognito_api;
pub(crate) mod endpoint;
#[cfg(feature = "rustls")]
mod https;
pub mod refresh_token;
#[cfg(feature = "reqwest")]
mod reqwest_client;
mod source;

#[cfg(feature = "aws-secrets-manager")]
pub use aws_secrets_manager::AwsSecretsManager;
pub use client_assertion::ClientAssertionKey;
pub use client_credentials::{ClientCredentials, ClientCredentialsBuilder};
pub use client_secret::ClientSecret;
pub use cognito_api::RefreshFlow;
pub use endpoint::ClientAuth;
pub use refresh_token::{RefreshTokenGrant, RefreshTokenGrantBuilder, SessionStatus, TokenSet};
pub use source::{BoxFuture, SharedIdentity, TokenSource};
