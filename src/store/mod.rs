//! One token per fleet: a shared store through which many processes share one access token
//! (feature `store`; [`RedisStore`] with feature `redis`).
//!
//! Cognito bills every token request and limits them per account and region. A fleet of
//! processes that each keep their own token sends one token request per process per token
//! lifetime, and a deploy that starts them together sends them in the same second. With a shared
//! store, the process whose token turns stale first fetches a new one and stores it; the others
//! adopt it when theirs turns stale. The hot path does not change: requests read the process's
//! own cache, and the store is touched only by the process's one refresh.
//!
//! ```no_run
//! # #[cfg(feature = "redis")]
//! # fn main() -> Result<(), tower::BoxError> {
//! use tower_cognito_auth::{CognitoAuthLayer, store::RedisStore};
//!
//! // Connects lazily: Redis being down now, or later, never fails a request.
//! let store = RedisStore::new("rediss://:password@cache.internal:6379/0")?;
//! let auth = CognitoAuthLayer::builder()
//!     .cognito_domain("my-pool", "us-east-1")
//!     .client_id(std::env::var("COGNITO_CLIENT_ID")?)
//!     .client_secret(std::env::var("COGNITO_CLIENT_SECRET")?)
//!     .shared_store(store)
//!     .build()?;
//! # let _ = auth;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "redis"))]
//! # fn main() {}
//! ```
//!
//! # What is stored
//!
//! Under a key that is a keyed hash of the token URL, the client id and the sorted scopes
//! (`tower-cognito-auth:v1:{<hex>}`, the braces a Redis Cluster hash tag), so two configurations never share a token and the store never
//! shows them: the token, encrypted and authenticated with AES-256-GCM under a key derived
//! (HKDF-SHA256) from the client secret, with the lifetime it was issued with, its expiry and a
//! keyed tag (HMAC-SHA256) of the token. Whoever can read the store but lacks the secret learns
//! nothing and cannot plant a token: not even an old sealed value stored again with a longer
//! time to live, since an adopted token's remaining life is capped by its sealed expiry; a rotated secret makes old entries unreadable, which is a miss. The
//! entry expires with the token. Beside it, while one process fetches, a short lease
//! (`<key>:lease`) holding that process's random id.
//!
//! # How a refresh uses it
//!
//! - A stored token with enough life left (more than the refresh-ahead margin plus the largest
//!   refresh jitter, both computed from its *original* lifetime) is adopted: no token request.
//!   Its remaining life comes from the store's own time to live, never from comparing clocks.
//! - Otherwise the process takes the lease, fetches, stores the token only if it expires later
//!   than the one stored (an older token never replaces a newer one), and releases the lease.
//!   While it fetches, it extends the lease every third of its time to live
//!   ([`TokenStore::extend_lease`]), so a slow token endpoint never lets a second holder in;
//!   a refresh cancelled while it may hold the lease releases it. The others wait as long as
//!   the lease is held: they are woken when the token is written ([`TokenStore::watch`];
//!   Redis: `PUBLISH` in the write's script, `SUBSCRIBE` on a connection of the store's own),
//!   poll once a second as a fallback (jittered), and take the lease over if its holder died
//!   (its lease lapses within one time to live). A store without notifications is polled
//!   after 10 ms, the pause doubling to 50 ms.
//! - A holder whose fetch the endpoint refuses (a 429 or a 5xx) records the refusal beside the
//!   token (`<key>:refused`: kind, status and pause, with a keyed tag), for `Retry-After`
//!   clamped to 60 s, at least 1 s doubling with each refusal in a row, and when it was made.
//!   The others return that error without a token request while it holds, and honour
//!   refusals in a row for at most 60 s: the fleet backs off together, and a record stored
//!   again is ignored once older than its pause.
//! - A token the API rejected (a 401) is deleted from the store only if it is still the one
//!   stored, compared by its tag: N processes rejected on one revoked token cause one token
//!   request, not N.
//! - The store never makes a request fail: when it is down, slow (every operation has a short
//!   timeout) or holds garbage, the process fetches for itself, warns once per outage, and uses
//!   the store again once it answers. A token fetched that way is stored for the others.
//!
//! What the store needs from a Redis ACL, and the whole protocol (keys, channel, scripts,
//! states), is in `docs/faults.md`: keys `~tower-cognito-auth:*`, channels
//! `&tower-cognito-auth:*`, and `GET`, `SET`, `DEL`, `PTTL`, `PEXPIRE`, `PUBLISH`,
//! `SUBSCRIBE`, `EVALSHA`, `EVAL` (in cluster mode also `CLUSTER SLOTS`, `ASKING`, `PING`).
//!
//! # Other stores
//!
//! [`RedisStore`] speaks to one Redis (or Valkey) server, or to a cluster
//! ([`RedisStore::cluster`]). For another store, implement
//! [`TokenStore`]: the values are opaque bytes and the keys opaque names, and each operation
//! must be atomic as its documentation says.

pub(crate) mod fleet;
#[cfg(feature = "redis")]
mod redis;
pub(crate) mod seal;

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use tower::BoxError;

use crate::grant::BoxFuture;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::RedisStore;

/// What a shared store offers: six atomic operations on opaque names and values, and two
/// optional ones: a notification of writes, and the extension of a lease.
///
/// Values are sealed bytes (binary, any length up to a few KiB); keys are printable ASCII names.
/// Every operation must be atomic with respect to the others on the same key, and may fail: an
/// error makes the process fetch its token for itself, never fails a request. Implementations
/// should bound each operation with a short timeout (the caller also does).
///
/// A time to live is in milliseconds precision; a store with coarser expiry may round *down*
/// the remaining life it reports, never up.
///
/// Waiting for another process's fetch is done by [`watch`](TokenStore::watch) when the store
/// offers it (a notification when [`save_if_longer`](TokenStore::save_if_longer) writes), with a
/// rare poll of [`load`](TokenStore::load) as a fallback; a store without it is polled.
pub trait TokenStore: Send + Sync + 'static {
    /// The value under `key` and its remaining time to live, read together atomically (Redis:
    /// `GET` and `PTTL` in one Lua script). `Ok(None)` when `key` is absent. A value that has no
    /// expiry (this crate never writes one) is reported with a zero time to live.
    fn load(&self, key: &str) -> BoxFuture<'_, Result<Option<Stored>, BoxError>>;

    /// Stores `value` under `key`, to expire after `ttl`, only if `key` is absent or its value
    /// expires sooner than `ttl` from now (or never expires); otherwise leaves it untouched.
    /// Compare and write are one atomic step (Redis: a Lua script comparing `PTTL`). Returns
    /// whether it wrote. A `ttl` under one millisecond writes nothing.
    fn save_if_longer(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, BoxError>>;

    /// Deletes `key` only if its value starts with the bytes `prefix` (binary-safe; an empty
    /// prefix matches any value). Compare and delete are one atomic step. Returns whether it
    /// deleted.
    fn remove_if_prefix(&self, key: &str, prefix: &[u8]) -> BoxFuture<'_, Result<bool, BoxError>>;

    /// Deletes `key` only if its value is exactly `value` (binary-safe). Compare and delete are
    /// one atomic step. Returns whether it deleted. Used to clear an entry that does not open
    /// (garbage), without touching a valid one written since.
    fn remove_if_equal(&self, key: &str, value: &[u8]) -> BoxFuture<'_, Result<bool, BoxError>>;

    /// Takes the lease `key` for `holder`, to expire after `ttl`, only if nobody holds it (Redis:
    /// `SET key holder NX PX ttl`, in a script). Returns whether `holder` holds it now: asked
    /// again by the holder, as a client that sends a command again after a lost reply does,
    /// it answers `true` (and leaves the time to live alone), so that the lease is never held
    /// by a process that believes it lost it.
    fn try_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, BoxError>>;

    /// Waits for a write to `key` by [`save_if_longer`](TokenStore::save_if_longer), from any
    /// process (Redis: `PUBLISH` on a channel named after the key, in the write's script, and
    /// `SUBSCRIBE` on a connection of the store's own).
    ///
    /// Returns the number of writes to `key` seen so far by this store value's subscription
    /// (it starts at zero when the subscription is made). With `seen` `None`, subscribes if
    /// needed and returns at once; with `Some(n)`, returns as soon as more than `n` writes were
    /// seen, or after `timeout` with the same number. A notification may be lost (callers
    /// still poll now and then); an error (a lost subscription) makes the caller poll.
    ///
    /// The default says it is not supported: the caller polls.
    fn watch(
        &self,
        key: &str,
        seen: Option<u64>,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<u64, BoxError>> {
        let _ = (key, seen, timeout);
        Box::pin(async { Err("this store does not notify writes".into()) })
    }

    /// Extends the lease `key` to expire after `ttl` from now, only if `holder` still holds it
    /// (compare and `PEXPIRE`, atomically). Returns whether it did. A holder calls it while
    /// its fetch runs, so that a slow token endpoint never lets a second holder in.
    ///
    /// The default extends nothing (`Ok(false)`): a lease then lasts its first time to live,
    /// and a fetch slower than that lets another process take the lease and fetch too.
    fn extend_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, BoxError>> {
        let _ = (key, holder, ttl);
        Box::pin(async { Ok(false) })
    }

    /// Releases the lease `key` if `holder` still holds it (compare and delete, atomically); a
    /// lease that expired and was taken by another holder is left alone.
    fn release_lease(&self, key: &str, holder: &str) -> BoxFuture<'_, Result<(), BoxError>>;
}

/// A value read from a [`TokenStore`], with its remaining time to live.
#[derive(Clone, PartialEq, Eq)]
pub struct Stored {
    value: Bytes,
    ttl: Duration,
}

impl Stored {
    /// A value and how long it has left to live.
    pub fn new(value: impl Into<Bytes>, ttl: Duration) -> Self {
        Self {
            value: value.into(),
            ttl,
        }
    }

    /// The stored bytes.
    pub fn value(&self) -> &Bytes {
        &self.value
    }

    /// How long the value has left to live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The stored bytes, by value.
    pub fn into_value(self) -> Bytes {
        self.value
    }
}

impl fmt::Debug for Stored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stored")
            .field("len", &self.value.len())
            .field("ttl", &self.ttl)
            .finish()
    }
}
