//! [`TokenSet`]: a session as it is saved and restored (and handed over at sign-in), with
//! its serde form under the feature `serde`.

use std::fmt;
#[cfg(feature = "serde")]
use std::time::Duration;
use std::time::SystemTime;

use crate::error::Error;
use crate::grant::endpoint::Secret;
use crate::token::AccessToken;

/// A user's session as it is saved, restored and handed over at sign-in: the refresh token,
/// the access token with its wall-clock expiry, and the OpenID Connect `id_token`.
///
/// [`persist`](super::RefreshTokenGrantBuilder::persist) receives one after each successful
/// exchange (and after a new sign-in); [`restore`](super::RefreshTokenGrantBuilder::restore)
/// takes one back at the next start, and [`sign_in`](super::RefreshTokenGrant::sign_in) hands
/// over the one a new sign-in returned. With the feature `serde` it serialises as
/// `{"refresh_token", "access_token", "expires_at", "id_token"}`, `expires_at` in seconds since
/// the Unix epoch, absent parts left out: what a file, a database row or a keychain item keeps.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_cognito_auth::TokenSet;
///
/// # fn main() -> Result<(), tower_cognito_auth::Error> {
/// // What a sign-in returned (Cognito's hosted UI, InitiateAuth, ...).
/// let set = TokenSet::new("the refresh token")
///     .with_access_token("the-access-token", Some(SystemTime::now() + Duration::from_secs(3600)))?
///     .with_id_token("the-id-token");
/// assert_eq!(set.refresh_token(), "the refresh token");
/// assert!(set.access_token().is_some());
/// # Ok(())
/// # }
/// ```
///
/// `Debug` prints which parts are there, never a token.
#[derive(Clone)]
pub struct TokenSet {
    pub(super) refresh_token: Secret,
    pub(super) rotated: bool,
    pub(super) access_token: Option<AccessToken>,
    pub(super) expires_at: Option<SystemTime>,
    pub(super) id_token: Option<Secret>,
}

impl TokenSet {
    /// A set with only a refresh token (the access token comes with the first refresh).
    /// [`restore`](super::RefreshTokenGrantBuilder::restore) and
    /// [`sign_in`](super::RefreshTokenGrant::sign_in) refuse an empty one.
    pub fn new(refresh_token: impl Into<String>) -> Self {
        Self {
            refresh_token: Secret(refresh_token.into()),
            rotated: false,
            access_token: None,
            expires_at: None,
            id_token: None,
        }
    }

    /// Adds the access token and when it expires on the wall clock; `None` reads the expiry
    /// from the token itself, a JWT's `exp` claim, when it is restored.
    ///
    /// # Errors
    ///
    /// An [`Error`] of kind [`InvalidConfig`](crate::ErrorKind::InvalidConfig) when the token
    /// is empty, longer than 16 KiB, or has characters that cannot go into an HTTP header.
    pub fn with_access_token(
        mut self,
        access_token: impl Into<String>,
        expires_at: Option<SystemTime>,
    ) -> Result<Self, Error> {
        let access_token = AccessToken::new(access_token.into()).map_err(|_| {
            Error::invalid_config(
                "the access token is empty, longer than 16 KiB, or has characters that cannot \
                 go into an HTTP header",
            )
        })?;
        self.access_token = Some(access_token);
        self.expires_at = expires_at;
        Ok(self)
    }

    /// Adds the OpenID Connect `id_token`.
    pub fn with_id_token(mut self, id_token: impl Into<String>) -> Self {
        self.id_token = Some(Secret(id_token.into()));
        self
    }

    /// The session's refresh token from now on: the rotated one when the server sent one,
    /// else the one the exchange presented. Treat it as a password.
    pub fn refresh_token(&self) -> &str {
        &self.refresh_token.0
    }

    /// Whether the server rotated the refresh token in this exchange (`false` for a set built
    /// by the application or restored).
    pub fn rotated(&self) -> bool {
        self.rotated
    }

    /// The access token, unless the answer's was unusable (the rotation still counts) or the
    /// set has none.
    pub fn access_token(&self) -> Option<&AccessToken> {
        self.access_token.as_ref()
    }

    /// When the access token expires, on the wall clock: what
    /// [`restore`](super::RefreshTokenGrantBuilder::restore) takes back at the next start.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// The OpenID Connect `id_token`, if there is one (Cognito sends one). Treat it as a
    /// password.
    pub fn id_token(&self) -> Option<&str> {
        self.id_token.as_ref().map(|t| t.0.as_str())
    }
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field("refresh_token", &self.refresh_token)
            .field("rotated", &self.rotated)
            .field("access_token", &self.access_token)
            .field("expires_at", &self.expires_at)
            .field("id_token", &self.id_token)
            .finish()
    }
}

/// The serde form: tokens as strings, the expiry in whole seconds since the Unix epoch.
#[cfg(feature = "serde")]
#[derive(serde::Serialize, serde::Deserialize)]
struct Form {
    refresh_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    access_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
}

#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
#[cfg(feature = "serde")]
impl serde::Serialize for TokenSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Form {
            refresh_token: self.refresh_token.0.clone(),
            access_token: self.access_token.as_ref().map(|t| t.secret().to_owned()),
            expires_at: self
                .expires_at
                .and_then(|at| at.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|since| since.as_secs()),
            id_token: self.id_token.as_ref().map(|t| t.0.clone()),
        }
        .serialize(serializer)
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for TokenSet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let form = Form::deserialize(deserializer)?;
        let mut set = TokenSet::new(form.refresh_token);
        if let Some(access_token) = form.access_token {
            let expires_at = form
                .expires_at
                .and_then(|secs| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs)));
            set = set
                .with_access_token(access_token, expires_at)
                .map_err(|_| serde::de::Error::custom("the access token is not a valid token"))?;
        }
        if let Some(id_token) = form.id_token {
            set = set.with_id_token(id_token);
        }
        Ok(set)
    }
}
