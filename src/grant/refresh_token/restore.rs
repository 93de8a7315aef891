//! Restoring a session: an access token saved earlier, dated on Tokio's clock once and handed
//! out by the first fetch if it has the margins any token must have.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{Inner, lock};
use crate::error::Error;
use crate::token::{AccessToken, DEFAULT_LIFETIME, MAX_LIFETIME, Token, jwt_times};

/// The crate's default `min_validity`, by which a restored access token is judged.
const RESTORED_MIN_VALIDITY: Duration = Duration::from_secs(30);

/// How a restored access token's expiry was given.
pub(super) enum Expiry {
    Tokio(Instant),
    Wall(SystemTime),
    /// Read from the token's `exp` claim.
    Jwt,
}

impl Inner {
    /// The access token restored from storage, once, if the cache's default margins let it
    /// be handed out: more than `min_validity` (30 s, a tenth of its lifetime at most) left.
    pub(super) fn take_stored(&self) -> Option<Token> {
        let token = lock(&self.stored).take()?;
        let lifetime = token.lifetime().unwrap_or(DEFAULT_LIFETIME);
        let margin = RESTORED_MIN_VALIDITY.min(lifetime / 10);
        let left = token.expires_at().saturating_duration_since(Instant::now());
        if left > margin {
            tracing::debug!("using the stored access token");
            Some(token)
        } else {
            tracing::debug!("the stored access token has too little life left; refreshing");
            None
        }
    }
}

/// A restored access token, dated on Tokio's clock once, with the lifetime its margins are
/// computed from: the JWT's `exp − iat` when it has both, else an hour (or its remaining life,
/// if longer).
pub(super) fn restored(text: String, expiry: Expiry) -> Result<Token, Error> {
    let times = jwt_times(&text);
    let access_token = AccessToken::new(text).map_err(|_| {
        Error::invalid_config(
            "the stored access token is empty, longer than 16 KiB, or has characters that \
             cannot go into an HTTP header",
        )
    })?;
    let now = Instant::now();
    let wall = |at: SystemTime| {
        let left = at.duration_since(SystemTime::now()).unwrap_or_default();
        now.checked_add(left.min(MAX_LIFETIME)).unwrap_or(now)
    };
    let expires_at = match expiry {
        Expiry::Tokio(at) => at,
        Expiry::Wall(at) => wall(at),
        Expiry::Jwt => match times.and_then(|(_, exp)| exp) {
            Some(exp) => wall(SystemTime::UNIX_EPOCH + Duration::from_secs(exp.min(u64::MAX / 2))),
            None => {
                return Err(Error::invalid_config(
                    "access_token_from_jwt: the stored access token is not a JWT with an `exp` claim",
                ));
            }
        },
    };
    let issued_for = match times {
        Some((Some(iat), Some(exp))) if exp > iat => Some(Duration::from_secs(exp - iat)),
        _ => None,
    };
    let left = expires_at.saturating_duration_since(now);
    let lifetime = issued_for
        .unwrap_or_else(|| DEFAULT_LIFETIME.max(left))
        .min(MAX_LIFETIME);
    Ok(Token::new(access_token, expires_at).with_lifetime(lifetime))
}
