//! The crate's error type.
//!
//! [`Error`] is what a token fetch, the token cache and the layer report when no token can be
//! had. It is opaque, cheap to clone (one failed refresh reaches every request that waited on
//! it), and its [`Display`](std::fmt::Display) says in words what failed without ever including
//! the client secret or a token.
//!
//! The layer's services return [`tower::BoxError`]; a token failure inside one downcasts to
//! [`Error`]:
//!
//! ```
//! use tower_cognito_auth::{Error, ErrorKind};
//!
//! fn explain(err: &tower::BoxError) -> &'static str {
//!     match err.downcast_ref::<Error>() {
//!         Some(e) if e.is_invalid_client() => "check COGNITO_CLIENT_ID and COGNITO_CLIENT_SECRET",
//!         Some(e) if e.kind() == ErrorKind::RateLimited => "Cognito is rate limiting us",
//!         Some(e) if e.is_retryable() => "the token endpoint had a passing failure",
//!         Some(_) => "no token could be had",
//!         None => "the inner service failed",
//!     }
//! }
//! # let e: tower::BoxError = Box::new(std::io::Error::other("boom"));
//! # assert_eq!(explain(&e), "the inner service failed");
//! ```

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The longest OAuth `error` / `error_description` text kept from a token endpoint's answer.
const MAX_OAUTH_TEXT: usize = 256;

/// The longest message kept from [`Error::new`].
const MAX_MESSAGE: usize = 1024;

/// What kind of failure an [`Error`] is.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The token endpoint refused the request (HTTP 4xx other than 429), usually with an OAuth
    /// error such as `invalid_client`. A retry will not help until the configuration changes.
    Rejected,
    /// The token endpoint answered `429 Too Many Requests`.
    RateLimited,
    /// The token endpoint answered with a 5xx status, or could not be reached at all.
    Unavailable,
    /// A token request, or a whole refresh, ran out of time.
    Timeout,
    /// The token endpoint answered 2xx with something that is not a usable token response.
    InvalidResponse,
    /// The layer or the token source was configured wrongly.
    InvalidConfig,
    /// A token refresh ended without a result: the token source panicked, the runtime is
    /// shutting down, or there is no Tokio runtime to run it on.
    Internal,
}

/// The OAuth 2.0 error a token endpoint sent (RFC 6749 §5.2).
#[derive(Debug)]
struct OAuthError {
    error: Box<str>,
    description: Option<Box<str>>,
    /// Cognito's user-pool API refused the app client's secret or `SECRET_HASH` (it answers
    /// that, too, with `NotAuthorizedException`, reported as `invalid_grant`).
    client_refused: bool,
}

#[derive(Debug, thiserror::Error)]
enum Repr {
    #[error("the token endpoint rejected the request with HTTP {status}{}", OAuthSuffix(.oauth.as_ref()))]
    Rejected {
        status: StatusCode,
        oauth: Option<OAuthError>,
    },
    #[error("the token endpoint is rate limiting this client (HTTP 429){}", RetryAfterSuffix(*.retry_after))]
    RateLimited { retry_after: Option<Duration> },
    #[error("the token endpoint is unavailable (HTTP {status}){}", RetryAfterSuffix(*.retry_after))]
    ServerError {
        status: StatusCode,
        retry_after: Option<Duration>,
    },
    #[error("could not reach the token endpoint at {host}: {}", Cause(.source.as_ref()))]
    Connect {
        host: Box<str>,
        #[source]
        source: BoxError,
    },
    #[error("the token endpoint's answer broke off before its end")]
    BrokenResponse(#[source] BoxError),
    #[error("{what} timed out after {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error("the token endpoint sent an invalid response: {0}")]
    InvalidResponse(Cow<'static, str>),
    #[error("invalid configuration: {0}")]
    InvalidConfig(Cow<'static, str>),
    #[error("{0}")]
    Internal(&'static str),
    #[error("{message}")]
    Custom {
        kind: ErrorKind,
        message: Box<str>,
        #[source]
        source: Option<BoxError>,
    },
}

struct OAuthSuffix<'a>(Option<&'a OAuthError>);

impl fmt::Display for OAuthSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(oauth) = self.0 {
            write!(f, ": {}", oauth.error)?;
            if let Some(description) = &oauth.description {
                write!(f, " ({description})")?;
            }
            if &*oauth.error == "invalid_grant" {
                f.write_str(
                    "; the session has ended (its refresh token expired, was revoked or was reused): \
                     the user must sign in again",
                )?;
            }
        }
        Ok(())
    }
}

/// The innermost cause of an error ("Connection refused (os error 111)"), which says more than
/// the wrappers around it ("client error (Connect)").
struct Cause<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for Cause<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut cause = self.0;
        // Bounded: a cycle of sources cannot make this loop for ever.
        for _ in 0..16 {
            match cause.source() {
                Some(next) => cause = next,
                None => break,
            }
        }
        write!(f, "{cause}")
    }
}

struct RetryAfterSuffix(Option<Duration>);

impl fmt::Display for RetryAfterSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The endpoint's request, not a promise: the cache caps its pause at the backoff's
        // ceiling. A value past the day that parsing keeps is not repeated as if it were exact,
        // and a date already past asks for nothing.
        match self.0 {
            Some(after) if after.is_zero() => Ok(()),
            Some(after) if after >= crate::backoff::MAX_RETRY_AFTER => {
                f.write_str(", the endpoint asked to retry after a day or more")
            }
            Some(after) => write!(f, ", the endpoint asked to retry after {after:?}"),
            None => Ok(()),
        }
    }
}

/// Why no token could be had.
///
/// Cheap to clone: every request that waited on one failed refresh gets a clone of the same
/// error. Match on [`kind()`](Error::kind) or use the predicates; the message never contains
/// the client secret or a token. See the [module docs](crate::error) for an example.
#[derive(Clone, thiserror::Error)]
#[error(transparent)]
pub struct Error(Arc<Repr>);

impl Error {
    fn from_repr(repr: Repr) -> Self {
        Self(Arc::new(repr))
    }

    /// An error of this kind, for a custom [`TokenSource`](crate::TokenSource) (or a
    /// [`ClientSecret`](crate::ClientSecret) provider) to report what went wrong.
    ///
    /// The cache treats it as its own errors of that kind: a permanent kind
    /// ([`Rejected`](ErrorKind::Rejected), [`InvalidConfig`](ErrorKind::InvalidConfig)) is
    /// retried only at the slowest backoff rate, as `invalid_client` is; the others by the
    /// usual backoff (1 s doubling to 60 s), and a retryable one
    /// ([`RateLimited`](ErrorKind::RateLimited), [`Unavailable`](ErrorKind::Unavailable),
    /// [`Timeout`](ErrorKind::Timeout), [`Internal`](ErrorKind::Internal)) behind a usable
    /// token stays invisible. `message` is the whole [`Display`](std::fmt::Display): say what
    /// failed, and never put a secret in it. Control characters are dropped and it is cut at
    /// 1,024 characters.
    ///
    /// ```
    /// use tower_cognito_auth::{Error, ErrorKind};
    ///
    /// let e = Error::new(ErrorKind::Rejected, "the identity provider refused our key");
    /// assert!(e.is_permanent());
    /// assert_eq!(e.to_string(), "the identity provider refused our key");
    /// ```
    pub fn new(kind: ErrorKind, message: impl AsRef<str>) -> Self {
        Self::from_repr(Repr::Custom {
            kind,
            message: sanitize_to(message.as_ref(), MAX_MESSAGE),
            source: None,
        })
    }

    /// Like [`new`](Error::new), with the underlying error as its
    /// [`source()`](std::error::Error::source) (which `Display` does not repeat; `Debug`
    /// shows it, so it must not hold a secret either).
    ///
    /// ```
    /// use std::error::Error as _;
    /// use tower_cognito_auth::{Error, ErrorKind};
    ///
    /// let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
    /// let e = Error::with_source(ErrorKind::Unavailable, "the key service broke off", io);
    /// assert!(e.is_retryable());
    /// assert!(e.source().is_some());
    /// ```
    pub fn with_source(
        kind: ErrorKind,
        message: impl AsRef<str>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::from_repr(Repr::Custom {
            kind,
            message: sanitize_to(message.as_ref(), MAX_MESSAGE),
            source: Some(source.into()),
        })
    }

    pub(crate) fn rejected(
        status: StatusCode,
        error: Option<&str>,
        description: Option<&str>,
    ) -> Self {
        let oauth = error.map(|error| OAuthError {
            error: sanitize(error),
            description: description.map(sanitize),
            client_refused: false,
        });
        Self::from_repr(Repr::Rejected { status, oauth })
    }

    /// `invalid_grant` from Cognito's user-pool API that refused the app client's secret or
    /// `SECRET_HASH`, not the refresh token: see [`client_refused`](Self::client_refused).
    pub(crate) fn rejected_client(status: StatusCode, description: &str) -> Self {
        let oauth = Some(OAuthError {
            error: sanitize("invalid_grant"),
            description: Some(sanitize(description)),
            client_refused: true,
        });
        Self::from_repr(Repr::Rejected { status, oauth })
    }

    /// Whether the user-pool API refused the app client's secret (or its `SECRET_HASH`) rather
    /// than the refresh token: a session whose secret is read from a source may heal once the
    /// secret is right.
    pub(crate) fn client_refused(&self) -> bool {
        matches!(
            &*self.0,
            Repr::Rejected {
                oauth: Some(OAuthError {
                    client_refused: true,
                    ..
                }),
                ..
            }
        )
    }

    pub(crate) fn rate_limited(retry_after: Option<Duration>) -> Self {
        Self::from_repr(Repr::RateLimited { retry_after })
    }

    pub(crate) fn server_error(status: StatusCode, retry_after: Option<Duration>) -> Self {
        Self::from_repr(Repr::ServerError {
            status,
            retry_after,
        })
    }

    /// The token endpoint at `host` could not be reached; `source` says why.
    pub(crate) fn connect(host: &str, source: BoxError) -> Self {
        Self::from_repr(Repr::Connect {
            host: sanitize(host),
            source,
        })
    }

    pub(crate) fn broken_response(source: BoxError) -> Self {
        Self::from_repr(Repr::BrokenResponse(source))
    }

    pub(crate) fn timeout(what: &'static str, after: Duration) -> Self {
        Self::from_repr(Repr::Timeout { what, after })
    }

    pub(crate) fn invalid_response(why: impl Into<Cow<'static, str>>) -> Self {
        Self::from_repr(Repr::InvalidResponse(why.into()))
    }

    pub(crate) fn invalid_config(why: impl Into<Cow<'static, str>>) -> Self {
        Self::from_repr(Repr::InvalidConfig(why.into()))
    }

    pub(crate) fn internal(why: &'static str) -> Self {
        Self::from_repr(Repr::Internal(why))
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match &*self.0 {
            Repr::Rejected { .. } => ErrorKind::Rejected,
            Repr::RateLimited { .. } => ErrorKind::RateLimited,
            Repr::ServerError { .. } | Repr::Connect { .. } | Repr::BrokenResponse(_) => {
                ErrorKind::Unavailable
            }
            Repr::Timeout { .. } => ErrorKind::Timeout,
            Repr::InvalidResponse(_) => ErrorKind::InvalidResponse,
            Repr::InvalidConfig(_) => ErrorKind::InvalidConfig,
            Repr::Internal(_) => ErrorKind::Internal,
            Repr::Custom { kind, .. } => *kind,
        }
    }

    /// Whether trying again later can succeed without a change of configuration: rate limits,
    /// 5xx answers, connection failures, timeouts and internal failures are; a rejection
    /// (`invalid_client` and the like), an invalid response and a configuration error are not.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::RateLimited
                | ErrorKind::Unavailable
                | ErrorKind::Timeout
                | ErrorKind::Internal
        )
    }

    /// Whether the failure stays until the configuration changes: the endpoint rejected the
    /// request (`invalid_client`, `invalid_scope`, …) or the configuration is invalid. For a
    /// user's session, `invalid_grant` stays until the user signs in again.
    pub fn is_permanent(&self) -> bool {
        matches!(self.kind(), ErrorKind::Rejected | ErrorKind::InvalidConfig)
    }

    /// Whether the token endpoint answered with the OAuth error `invalid_client`: the client id
    /// or secret is wrong, or the app client may not use this grant.
    pub fn is_invalid_client(&self) -> bool {
        self.oauth_error() == Some("invalid_client")
    }

    /// Whether the token endpoint answered with the OAuth error `invalid_grant`: for a
    /// [`RefreshTokenGrant`](crate::RefreshTokenGrant), the refresh token expired, was revoked
    /// or was reused, and the user must sign in again.
    pub fn is_invalid_grant(&self) -> bool {
        self.oauth_error() == Some("invalid_grant")
    }

    /// Whether this is a timeout.
    pub fn is_timeout(&self) -> bool {
        self.kind() == ErrorKind::Timeout
    }

    /// The HTTP status the token endpoint answered with, when it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match &*self.0 {
            Repr::Rejected { status, .. } | Repr::ServerError { status, .. } => Some(*status),
            Repr::RateLimited { .. } => Some(StatusCode::TOO_MANY_REQUESTS),
            _ => None,
        }
    }

    /// The OAuth `error` code the token endpoint sent, e.g. `invalid_client`.
    pub fn oauth_error(&self) -> Option<&str> {
        match &*self.0 {
            Repr::Rejected {
                oauth: Some(oauth), ..
            } => Some(&oauth.error),
            _ => None,
        }
    }

    /// The OAuth `error_description` the token endpoint sent, if any.
    pub fn oauth_error_description(&self) -> Option<&str> {
        match &*self.0 {
            Repr::Rejected {
                oauth: Some(oauth), ..
            } => oauth.description.as_deref(),
            _ => None,
        }
    }

    /// How long the token endpoint asked us to wait (`Retry-After`), if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match &*self.0 {
            Repr::RateLimited { retry_after } | Repr::ServerError { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind());
        d.field("message", &format_args!("{self}"));
        if let Repr::Connect { source, .. }
        | Repr::BrokenResponse(source)
        | Repr::Custom {
            source: Some(source),
            ..
        } = &*self.0
        {
            d.field("source", source);
        }
        d.finish()
    }
}

/// Keeps server-sent text short and printable, so that it cannot flood logs or forge lines.
fn sanitize(text: &str) -> Box<str> {
    sanitize_to(text, MAX_OAUTH_TEXT)
}

fn sanitize_to(text: &str, max: usize) -> Box<str> {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

#[cfg(test)]
mod tests;
