//! Tower middleware that puts a valid OAuth 2.0 access token from AWS Cognito (or any
//! OAuth 2.0 token endpoint) on every request.
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]
#![warn(missing_debug_implementations, clippy::await_holding_lock)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backoff;
pub mod cache;
pub mod error;
#[cfg(feature = "rustls")]
mod https;
pub mod source;
mod token;

pub use cache::{CachedToken, Generation, Stats, TokenCache, TokenCacheBuilder};
pub use error::{Error, ErrorKind};
pub use source::{BoxFuture, ClientAuth, ClientCredentials, ClientCredentialsBuilder, TokenSource};
pub use token::{AccessToken, Token};
