//! Restoring a session: an access token kept for later (restored from storage, or obtained by
//! an exchange nobody waited for any more), dated on the fetching runtime's clock when it is
//! handed out. The cache judges it by its own margins (`min_validity`).

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{Inner, lock};
use crate::error::Error;
use crate::token::{AccessToken, DEFAULT_LIFETIME, MAX_LIFETIME, Token, jwt_claims, jwt_times};

/// How a restored access token's expiry was given.
pub(super) enum Expiry {
    Tokio(Instant),
    Wall(SystemTime),
    /// Read from the token's `exp` claim.
    Jwt,
}

/// When a kept token expires: on Tokio's clock (of whoever restored it), or on the wall clock
/// (dated on the fetching runtime's clock when it is handed out).
#[derive(Clone, Copy)]
pub(super) enum KeptExpiry {
    Tokio(Instant),
    Wall(SystemTime),
}

/// An access token the session holds for its next fetch.
pub(super) struct Kept {
    pub(super) token: AccessToken,
    pub(super) scope: Option<String>,
    /// The lifetime it was issued with, when known: its margins are computed from it.
    pub(super) lifetime: Option<Duration>,
    pub(super) expiry: KeptExpiry,
    /// The exchange that obtained it, whose own fetch claims it when it gets the answer;
    /// `None` for a restored token.
    pub(super) exchange: Option<u64>,
}

impl Inner {
    /// The access token the session kept, once, unless it has expired. The cache judges it
    /// by its own margins; one they do not allow makes it fetch again at once.
    pub(super) fn take_stored(&self) -> Option<Token> {
        let kept = lock(&self.stored).take()?;
        let now = Instant::now();
        let expires_at = match kept.expiry {
            KeptExpiry::Tokio(at) => at,
            KeptExpiry::Wall(at) => {
                let left = at.duration_since(SystemTime::now()).unwrap_or_default();
                now.checked_add(left.min(MAX_LIFETIME)).unwrap_or(now)
            }
        };
        let left = expires_at.saturating_duration_since(now);
        if left.is_zero() {
            tracing::debug!("the kept access token has expired; refreshing");
            return None;
        }
        tracing::debug!("handing out the kept access token");
        let lifetime = kept
            .lifetime
            .unwrap_or_else(|| DEFAULT_LIFETIME.max(left))
            .min(MAX_LIFETIME);
        let mut token = Token::new(kept.token, expires_at)
            .with_lifetime(lifetime)
            .kept();
        if let Some(scope) = kept.scope {
            token = token.with_scope(scope);
        }
        Some(token)
    }
}

/// A restored access token, checked: a header-safe value, and for
/// [`Expiry::Jwt`] a JWT with an `exp` claim that is not an `id_token`. Its lifetime is the
/// JWT's `exp − iat` when it has both.
pub(super) fn restored(text: String, expiry: Expiry) -> Result<Kept, Error> {
    let times = jwt_times(&text);
    if let Some(token_use) = jwt_claims(&text)
        .as_ref()
        .and_then(|claims| claims.get("token_use"))
        .and_then(|value| value.as_str())
        && token_use != "access"
    {
        return Err(Error::invalid_config(format!(
            "the stored access token is not an access token (its `token_use` is `{}`): pass \
             the access token, not the id_token",
            token_use.chars().take(16).collect::<String>()
        )));
    }
    let access_token = AccessToken::new(text).map_err(|_| {
        Error::invalid_config(
            "the stored access token is empty, longer than 16 KiB, or has characters that \
             cannot go into an HTTP header",
        )
    })?;
    let expiry = match expiry {
        Expiry::Tokio(at) => KeptExpiry::Tokio(at),
        Expiry::Wall(at) => KeptExpiry::Wall(at),
        Expiry::Jwt => match times.and_then(|(_, exp)| exp) {
            // An `exp` beyond what the platform's clock can hold is as good as never.
            Some(exp) => KeptExpiry::Wall(
                SystemTime::UNIX_EPOCH
                    .checked_add(Duration::from_secs(exp))
                    .unwrap_or_else(far_future),
            ),
            None => {
                return Err(Error::invalid_config(
                    "access_token_from_jwt: the stored access token is not a JWT with an `exp` claim",
                ));
            }
        },
    };
    let lifetime = match times {
        Some((Some(iat), Some(exp))) if exp > iat => {
            Some(Duration::from_secs(exp - iat).min(MAX_LIFETIME))
        }
        _ => None,
    };
    Ok(Kept {
        token: access_token,
        scope: None,
        lifetime,
        expiry,
        exchange: None,
    })
}

/// The latest expiry a kept token can have: [`MAX_LIFETIME`] from now.
fn far_future() -> SystemTime {
    let now = SystemTime::now();
    now.checked_add(MAX_LIFETIME).unwrap_or(now)
}
