//! Access tokens and the token endpoint's JSON answer.
//!
//! A token endpoint answers the client_credentials grant with
//! `{"access_token": "<JWT>", "expires_in": 3600, "token_type": "Bearer"}`. [`Token`] is that
//! answer, parsed and checked; [`AccessToken`] is its secret part, which prints as
//! `[redacted]` and is reached only through [`AccessToken::secret`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::{BufMut as _, BytesMut};
use http::HeaderValue;
use tokio::time::Instant;

use crate::error::Error;

/// The lifetime assumed when a response has neither `expires_in` nor a JWT `exp` claim.
pub(crate) const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// Longer lifetimes are cut to this, so that no deadline computation can overflow.
pub(crate) const MAX_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// The longest access token accepted. Cognito's are about 1 KiB.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// An OAuth 2.0 access token: the secret that goes into `Authorization: Bearer`.
///
/// Cloning is cheap (reference counts). `Debug` prints `AccessToken([redacted])`; the token's
/// text is reached only through [`secret`](AccessToken::secret).
///
/// ```
/// use tower_cognito_auth::AccessToken;
///
/// let token = AccessToken::new("eyJraWQiOi.example.sig")?;
/// assert_eq!(format!("{token:?}"), "AccessToken([redacted])");
/// assert_eq!(token.secret(), "eyJraWQiOi.example.sig");
/// assert!(token.header_value().is_sensitive());
/// # Ok::<(), tower_cognito_auth::Error>(())
/// ```
#[derive(Clone)]
pub struct AccessToken {
    text: Arc<str>,
    header: HeaderValue,
}

impl AccessToken {
    /// Wraps a token's text, checking that it can travel in an `Authorization` header: not
    /// empty, at most 16 KiB, visible ASCII without spaces (RFC 6750's `b64token` and JWTs fit).
    ///
    /// # Errors
    ///
    /// An [`Error`] of kind [`InvalidResponse`](crate::ErrorKind::InvalidResponse) that says
    /// which rule the text breaks (never the text itself).
    pub fn new(secret: impl Into<String>) -> Result<Self, Error> {
        let text: String = secret.into();
        if text.is_empty() {
            return Err(Error::invalid_response("the access token is empty"));
        }
        if text.len() > MAX_TOKEN_LEN {
            return Err(Error::invalid_response(
                "the access token is longer than 16 KiB",
            ));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::invalid_response(
                "the access token has characters that cannot go into an HTTP header",
            ));
        }
        let mut value = BytesMut::with_capacity(7 + text.len());
        value.put_slice(b"Bearer ");
        value.put_slice(text.as_bytes());
        let mut header = HeaderValue::from_maybe_shared(value.freeze()).map_err(|_| {
            Error::invalid_response("the access token cannot go into an HTTP header")
        })?;
        header.set_sensitive(true);
        Ok(Self {
            text: Arc::from(text),
            header,
        })
    }

    /// The token's text. Treat it as a password: do not log it.
    pub fn secret(&self) -> &str {
        &self.text
    }

    /// `Bearer <token>` as a header value, marked [sensitive](HeaderValue::set_sensitive).
    ///
    /// Cloning the returned value does not copy the token.
    pub fn header_value(&self) -> HeaderValue {
        self.header.clone()
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken([redacted])")
    }
}

/// A token as a [`TokenSource`](crate::TokenSource) delivers it: the secret, when it expires
/// on Tokio's clock, and the scope the endpoint granted, if it said.
#[derive(Clone, Debug)]
pub struct Token {
    access_token: AccessToken,
    expires_at: Instant,
    scope: Option<String>,
    /// The lifetime the token was issued with, when known (a shared store keeps it, so that
    /// margins are computed from it and not from the remaining life).
    lifetime: Option<Duration>,
    /// Offered rather than fetched (an access token a session kept or restored): a cache
    /// whose margins it does not meet asks the source again at once, without counting it as
    /// a failure.
    kept: bool,
}

impl Token {
    /// A token that expires at `expires_at` (on Tokio's clock, so paused-clock tests drive it).
    pub fn new(access_token: AccessToken, expires_at: Instant) -> Self {
        Self {
            access_token,
            expires_at,
            scope: None,
            lifetime: None,
            kept: false,
        }
    }

    /// Marks the token as offered rather than fetched (see `kept`).
    pub(crate) fn kept(mut self) -> Self {
        self.kept = true;
        self
    }

    /// Whether the token was offered rather than fetched.
    pub(crate) fn is_kept(&self) -> bool {
        self.kept
    }

    /// Records the lifetime the token was issued with.
    #[cfg_attr(not(feature = "store"), allow(dead_code))]
    pub(crate) fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = Some(lifetime);
        self
    }

    /// The lifetime the token was issued with, when known.
    #[cfg_attr(not(feature = "store"), allow(dead_code))]
    pub(crate) fn lifetime(&self) -> Option<Duration> {
        self.lifetime
    }

    /// Sets the scope the endpoint granted.
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// The secret.
    pub fn access_token(&self) -> &AccessToken {
        &self.access_token
    }

    /// When the token expires.
    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }

    /// The scope the endpoint granted, if it said.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    pub(crate) fn into_access_token(self) -> AccessToken {
        self.access_token
    }
}

#[derive(serde::Deserialize)]
struct RawTokenResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    #[serde(default)]
    expires_in: serde_json::Value,
    scope: Option<String>,
}

/// Parses a 2xx token response.
///
/// `sent_at` is when the request was sent (Tokio's clock), and `sent_at_wall` the same moment
/// on the wall clock, which a JWT `exp` claim is measured against.
pub(crate) fn parse_token_response(
    body: &[u8],
    sent_at: Instant,
    sent_at_wall: SystemTime,
) -> Result<(Token, Duration), Error> {
    let raw: RawTokenResponse = serde_json::from_slice(body)
        .map_err(|_| Error::invalid_response("the body is not a JSON token response"))?;
    let secret = match raw.access_token {
        Some(t) => t,
        None => return Err(Error::invalid_response("`access_token` is missing")),
    };
    match raw.token_type.as_deref() {
        Some(t) if t.eq_ignore_ascii_case("bearer") => {}
        Some(_) => {
            return Err(Error::invalid_response("`token_type` is not `Bearer`"));
        }
        None => return Err(Error::invalid_response("`token_type` is missing")),
    }
    let lifetime = match parse_expires_in(&raw.expires_in)? {
        Some(lifetime) => lifetime,
        None => match jwt_exp(&secret) {
            Some(exp) => lifetime_from_exp(exp, sent_at_wall)?,
            None => DEFAULT_LIFETIME,
        },
    };
    let lifetime = lifetime.min(MAX_LIFETIME);
    let access_token = AccessToken::new(secret)?;
    let expires_at = sent_at
        .checked_add(lifetime)
        .ok_or_else(|| Error::invalid_response("`expires_in` is out of range"))?;
    let mut token = Token::new(access_token, expires_at).with_lifetime(lifetime);
    token.scope = raw.scope;
    Ok((token, lifetime))
}

/// `expires_in` as a whole number of seconds; a numeric string is tolerated. `Ok(None)` when
/// absent or `null`.
fn parse_expires_in(value: &serde_json::Value) -> Result<Option<Duration>, Error> {
    let secs = match value {
        serde_json::Value::Null => return Ok(None),
        serde_json::Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f.min(MAX_LIFETIME.as_secs_f64()) as u64)
        }),
        serde_json::Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    match secs {
        Some(0) => Err(Error::invalid_response("`expires_in` is zero")),
        Some(secs) => Ok(Some(Duration::from_secs(secs.min(MAX_LIFETIME.as_secs())))),
        None => Err(Error::invalid_response(
            "`expires_in` is not a non-negative number of seconds",
        )),
    }
}

fn lifetime_from_exp(exp: u64, sent_at_wall: SystemTime) -> Result<Duration, Error> {
    let now = sent_at_wall
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match exp.checked_sub(now) {
        Some(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
        _ => Err(Error::invalid_response(
            "the token's `exp` claim is in the past",
        )),
    }
}

/// Reads the `exp` claim of a JWT-shaped token, without checking its signature: we are the
/// client, the resource server verifies it. `None` when the token is not a JWT or has no
/// usable `exp`. Reads at most the token's own length, which callers have already bounded.
pub(crate) fn jwt_exp(token: &str) -> Option<u64> {
    jwt_times(token).and_then(|(_, exp)| exp)
}

/// The `iat` and `exp` claims of a JWT-shaped token (unverified, as [`jwt_exp`]); `None` when
/// the token is not a JWT.
pub(crate) fn jwt_times(token: &str) -> Option<(Option<u64>, Option<u64>)> {
    let json = jwt_payload(token)?;
    #[derive(serde::Deserialize)]
    struct Claims {
        #[serde(default)]
        iat: serde_json::Value,
        exp: Option<serde_json::Number>,
    }
    let claims: Claims = serde_json::from_slice(&json).ok()?;
    let seconds = |n: serde_json::Number| {
        n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f as u64)
        })
    };
    let iat = match claims.iat {
        serde_json::Value::Number(n) => seconds(n),
        _ => None,
    };
    Some((iat, claims.exp.and_then(seconds)))
}

/// The `id_token` of a 2xx answer (OpenID Connect), if it is a non-empty string.
pub(crate) fn parse_id_token(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct RawId {
        id_token: Option<serde_json::Value>,
    }
    let raw: RawId = serde_json::from_slice(body).ok()?;
    match raw.id_token? {
        serde_json::Value::String(token) if !token.is_empty() => Some(token),
        _ => None,
    }
}

/// The `refresh_token` of a 2xx answer, read on its own so that a rotation is seen even when
/// the rest of the answer is unusable. `None` when absent, not a string, or empty.
pub(crate) fn parse_refresh_token(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct RawRefresh {
        refresh_token: Option<serde_json::Value>,
    }
    let raw: RawRefresh = serde_json::from_slice(body).ok()?;
    match raw.refresh_token? {
        serde_json::Value::String(token) if !token.is_empty() => Some(token),
        _ => None,
    }
}

/// The OAuth error fields of a 4xx answer, if the body is such JSON.
pub(crate) fn parse_oauth_error(body: &[u8]) -> Option<(String, Option<String>)> {
    #[derive(serde::Deserialize)]
    struct RawError {
        error: String,
        error_description: Option<String>,
    }
    let raw: RawError = serde_json::from_slice(body).ok()?;
    Some((raw.error, raw.error_description))
}

#[cfg(test)]
mod tests;

/// The decoded payload of a JWT-shaped token (three dot-separated parts, base64url), not
/// verified; `None` for anything else.
fn jwt_payload(token: &str) -> Option<Vec<u8>> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || payload.len() > MAX_TOKEN_LEN {
        return None;
    }
    const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    LENIENT.decode(payload).ok()
}

/// The claims of a JWT-shaped token, **not verified**: `None` when it is not a JWT whose
/// payload is a JSON object.
pub(crate) fn jwt_claims(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    serde_json::from_slice(&jwt_payload(token)?).ok()
}
