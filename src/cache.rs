//! The token cache: single-flight, refresh-ahead, generation-checked.
//!
//! This is the fix for the race that breaks AWS Amplify JS at token expiry: a request sent at
//! the instant a token dies goes out with the dead token and gets `401 Unauthorized`. Here a
//! token is handed out only while it is *usable* (at least `min_validity` left), it is renewed
//! ahead of time while still in use, and however many requests arrive at once they all wait on
//! one refresh.
//!
//! # States of the cached token
//!
//! With `refresh_ahead` = 300 s and `min_validity` = 30 s (the defaults), a token that expires
//! in 3600 s is:
//! - *fresh* for its first 3300 s (less up to 10% of its lifetime, a jitter that keeps a fleet
//!   of processes from refreshing in the same second): handed out at once, by one atomic load;
//! - *usable* until 3570 s: handed out at once, while one background refresh runs;
//! - *expired* after that: requests wait for the one refresh in flight, starting it if needed.
//!
//! Both margins shrink for short-lived tokens, so that a token is used for at least half its
//! life: `refresh_ahead` to at most half the lifetime, `min_validity` to at most a tenth.
//!
//! # Refreshes
//!
//! One refresh at a time, in a task of its own: a waiter that is dropped (its request timed out,
//! say) does not cancel it for the others, and every waiter gets its outcome, success or error.
//! When a refresh fails and no usable token is left, the waiters get the error, and so does
//! every request until the next attempt is due: attempts are spaced by exponential backoff
//! (1 s doubling to 60 s, full jitter, at least what `Retry-After` asked), not by the request
//! rate; a permanent error (`invalid_client` and the like) is retried at the slowest rate only.
//! When a refresh fails while the current token is still usable, callers do not notice: they
//! keep the current token and the refresh is retried on the same schedule.
//!
//! ```
//! use std::time::Duration;
//! use tower_cognito_auth::{AccessToken, BoxFuture, Error, Token, TokenCache, TokenSource};
//!
//! struct OneHour;
//!
//! impl TokenSource for OneHour {
//!     fn fetch(&self) -> BoxFuture<'_, Result<Token, Error>> {
//!         Box::pin(async {
//!             let expires_at = tokio::time::Instant::now() + Duration::from_secs(3600);
//!             Ok(Token::new(AccessToken::new("t0k3n")?, expires_at))
//!         })
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Error> {
//! let cache = TokenCache::builder(OneHour).build()?;
//! let token = cache.token().await?;
//! assert_eq!(token.secret(), "t0k3n");
//! cache.token().await?; // cached: no second fetch
//! assert_eq!(cache.stats().token_requests, 1);
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::error::Error;
use crate::source::{BoxFuture, TokenSource};
use crate::token::{AccessToken, Token};

/// Which token a request carried, so that a rejection drops that token and no newer one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Generation(u64);

/// A cache, as a response future names it: by a number, which costs nothing to carry, where a
/// reference count would be written by every request. [`find`](CacheRef::find) finds the cache
/// while it lives (a 401 is rare); once the last handle to it is dropped, nothing is left to
/// refresh a token with, and `find` says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CacheRef(u64);

/// The caches that live, by the number of their `CacheRef`. Taken when a cache is built or
/// dropped and when a response future looks one up; never held while a cache is dropped (the
/// handle `find` upgrades is dropped after the lock is released).
static CACHES: Mutex<BTreeMap<u64, Weak<Shared>>> = Mutex::new(BTreeMap::new());
static NEXT_CACHE: AtomicU64 = AtomicU64::new(0);

fn caches() -> MutexGuard<'static, BTreeMap<u64, Weak<Shared>>> {
    CACHES.lock().unwrap_or_else(PoisonError::into_inner)
}

impl CacheRef {
    /// The cache, while any handle to it remains.
    pub(crate) fn find(self) -> Option<TokenCache> {
        let shared = caches().get(&self.0).and_then(Weak::upgrade)?;
        Some(TokenCache { shared })
    }
}

/// A token as the cache holds it: the secret, its generation and its expiry.
#[derive(Clone, Debug)]
pub struct CachedToken {
    access_token: AccessToken,
    generation: Generation,
    expires_at: Instant,
}

impl CachedToken {
    /// The secret.
    pub fn access_token(&self) -> &AccessToken {
        &self.access_token
    }

    /// Which fetch this token came from; pass it to [`TokenCache::invalidate`].
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// When the token expires, on Tokio's clock.
    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }
}

/// Counters, for tests, dashboards and the demo. Read them with [`TokenCache::stats`] or
/// `CognitoAuthLayer::stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Refreshes started: calls to [`TokenSource::fetch`]. (Retries inside one fetch of
    /// [`ClientCredentials`](crate::ClientCredentials) are not counted separately.)
    pub token_requests: u64,
    /// Refreshes that failed.
    pub token_failures: u64,
    /// Refreshes started ahead of expiry, while the current token was still usable (by a
    /// request in the refresh-ahead window or by the background task).
    pub refresh_ahead: u64,
    /// Requests that found no usable token and had to wait for a refresh.
    pub waited: u64,
    /// Tokens dropped after the downstream service rejected them.
    pub invalidations: u64,
    /// Requests the layer sent again with a new token after a rejection.
    pub replays: u64,
    /// Refreshes that adopted a token another process had stored in the shared store: no
    /// token request. Zero without a [shared store](TokenCacheBuilder::shared_store).
    pub adopted: u64,
    /// Token requests this process made as the holder of the shared store's lease, for the
    /// whole fleet (counted in `token_requests` too).
    pub lease_fetches: u64,
    /// Refreshes that fetched for this process alone because the shared store failed, was too
    /// slow, or another process took too long.
    pub store_fallbacks: u64,
}

#[derive(Default)]
struct Counters {
    token_requests: AtomicU64,
    token_failures: AtomicU64,
    refresh_ahead: AtomicU64,
    waited: AtomicU64,
    invalidations: AtomicU64,
    replays: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A cached token with the moments that decide what to do with it.
pub(crate) struct Entry {
    token: CachedToken,
    fresh_until: Instant,
    usable_until: Instant,
}

impl Entry {
    pub(crate) fn access_token(&self) -> &AccessToken {
        &self.token.access_token
    }

    pub(crate) fn generation(&self) -> Generation {
        self.token.generation
    }

    /// Until when the token is handed out without a thought.
    pub(crate) fn fresh_until(&self) -> Instant {
        self.fresh_until
    }
}

type Outcome = Result<Arc<Entry>, Error>;

/// Waits for a token; boxed, as it sits beside a network round trip.
pub(crate) type TokenWait = BoxFuture<'static, Outcome>;

/// What a request does about its token.
pub(crate) enum Lookup<T> {
    /// A usable token, projected by the caller.
    Ready(T),
    /// Wait for the refresh in flight.
    Wait(TokenWait),
    /// No token, and the next refresh is not due yet.
    Failed(Error),
}

/// The token cache. Cloning is cheap; clones share one cache.
///
/// See the [module docs](crate::cache) for how it behaves, and an example.
#[derive(Clone)]
pub struct TokenCache {
    shared: Arc<Shared>,
}

struct Shared {
    /// This cache's number in `CACHES`.
    id: u64,
    /// The fleet's shared store, consulted by each refresh (never by a request).
    #[cfg(feature = "redis")]
    fleet: Option<crate::store::fleet::Fleet>,
    /// The token handed out on the hot path: one atomic load, no lock.
    current: ArcSwapOption<Entry>,
    /// Changes each time `current` does (after it does), and when the background refresher
    /// stops: services keep a copy of the current token and check this one atomic, whose cache
    /// line nobody writes per request, to know the copy is still the current token and that
    /// nothing else needs a look.
    version: AtomicU64,
    /// No refresh-ahead before this moment, in nanoseconds after `epoch`; `u64::MAX` while a
    /// refresh is in flight, `0` when one may start now. Written under the lock, read without
    /// it: requests in the refresh-ahead window learn that a refresh runs, or that the backoff
    /// says not yet, from this one load.
    pace: AtomicU64,
    epoch: Instant,
    /// Whether a background refresher runs (see `background_refresh`): cleared by the task
    /// itself when it ends, e.g. because its runtime was dropped, so the next request starts
    /// another one.
    background_alive: AtomicBool,
    /// Dropping it stops the background refresher.
    background_stop: Mutex<Option<oneshot::Sender<()>>>,
    state: Mutex<State>,
    source: Box<dyn TokenSource>,
    config: Config,
    stats: Counters,
    /// How often the state lock was taken (tests check the hot path takes none).
    #[cfg(test)]
    locks: AtomicU64,
}

#[derive(Default)]
struct State {
    /// The refresh in flight.
    flight: Option<InFlight>,
    next_flight: u64,
    next_generation: u64,
    /// Consecutive failed refreshes.
    failures: u32,
    last_error: Option<Error>,
    /// No refresh starts before this moment (backoff after a failure).
    retry_at: Option<Instant>,
    /// The last invalidation that dropped a token (throttles 401-driven refreshes).
    last_invalidation: Option<Instant>,
    /// The token the last invalidation dropped, for the next refresh to drop from the shared
    /// store too (only if it is still the one stored).
    rejected: Option<AccessToken>,
}

/// The refresh in flight, as the state knows it.
struct InFlight {
    id: u64,
    rx: watch::Receiver<Option<Outcome>>,
    started: Instant,
}

/// A request's place in the queue for a refresh's outcome, with its own deadline.
pub(crate) struct Waiter {
    rx: watch::Receiver<Option<Outcome>>,
    /// The flight's start plus the refresh deadline; `None` if that does not fit in an
    /// `Instant` (a deadline of `Duration::MAX`).
    deadline: Option<Instant>,
    limit: Duration,
}

/// A flight that is ready to start: spawned only once the state lock is released, because a
/// runtime that is shutting down drops the task on the spot, and the task's drop guard takes
/// the lock to publish its error.
struct PendingFlight {
    runtime: tokio::runtime::Handle,
    flight: Flight,
}

impl PendingFlight {
    fn spawn(self) {
        self.runtime.spawn(self.flight.run());
    }
}

#[derive(Clone, Copy, Debug)]
struct Config {
    refresh_ahead: Duration,
    min_validity: Duration,
    refresh_deadline: Duration,
    invalidation_throttle: Duration,
    background_refresh: bool,
    backoff: Backoff,
    refresh_jitter: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            refresh_ahead: Duration::from_secs(300),
            min_validity: Duration::from_secs(30),
            refresh_deadline: Duration::from_secs(30),
            invalidation_throttle: Duration::from_secs(10),
            background_refresh: false,
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
            refresh_jitter: true,
        }
    }
}

/// Builds a [`TokenCache`]. Every setter takes and returns `Self` and states its default.
pub struct TokenCacheBuilder {
    source: Box<dyn TokenSource>,
    config: Config,
    #[cfg(feature = "redis")]
    store: Option<Arc<dyn crate::store::TokenStore>>,
}

impl fmt::Debug for TokenCacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCacheBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TokenCacheBuilder {
    /// How long before expiry a token stops being *fresh* and a refresh starts while it is
    /// still served. With a one-hour token and 300 s, the refresh starts after about 55 min.
    /// Cut to half the lifetime for short-lived tokens. Default is 300 seconds.
    pub fn refresh_ahead(mut self, refresh_ahead: Duration) -> Self {
        self.config.refresh_ahead = refresh_ahead;
        self
    }

    /// How much life a token must have left to be handed out: a request never leaves with a
    /// token that dies within this margin, so the clock skew and transit time to the API do not
    /// turn it into a 401. Cut to a tenth of the lifetime for short-lived tokens. Default is 30
    /// seconds.
    pub fn min_validity(mut self, min_validity: Duration) -> Self {
        self.config.min_validity = min_validity;
        self
    }

    /// Keeps the token fresh from a background task even with no traffic, so the first request
    /// after an idle hour does not wait. The task is spawned on the Tokio runtime that
    /// [`build`](Self::build) runs in (or, outside one, on the first request's) and ends when
    /// the last handle to the cache is dropped. Default is off.
    pub fn background_refresh(mut self, enabled: bool) -> Self {
        self.config.background_refresh = enabled;
        self
    }

    /// The most one refresh may take, all its retries included; after it, the waiters get a
    /// timeout error. It also bounds a token source that hangs. Default is 30 seconds.
    pub fn refresh_deadline(mut self, deadline: Duration) -> Self {
        self.config.refresh_deadline = deadline;
        self
    }

    /// The least time between two invalidations that drop a token (see
    /// [`TokenCache::invalidate`]): an API that rejects every token (a wrong audience, say)
    /// then costs one token request per period, not one per request. Default is 10 seconds.
    pub fn invalidation_throttle(mut self, period: Duration) -> Self {
        self.config.invalidation_throttle = period;
        self
    }

    /// Shares the token with every process of the fleet through `store` (feature `redis`):
    /// each refresh first looks there and adopts a token another process fetched, and only
    /// one process of the fleet fetches when none is there. Requests never touch the store,
    /// and trouble with it never fails one: the process then fetches for itself. See
    /// [`store`](crate::store). Default is none (each process fetches its own).
    ///
    /// The token source must say what it shares
    /// ([`TokenSource::shared_identity`]); [`build`](Self::build) refuses one that does not.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn shared_store(mut self, store: impl crate::store::TokenStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    #[cfg(feature = "redis")]
    pub(crate) fn shared_store_arc(mut self, store: Arc<dyn crate::store::TokenStore>) -> Self {
        self.store = Some(store);
        self
    }

    #[cfg(test)]
    pub(crate) fn deterministic(mut self) -> Self {
        self.config.backoff = self.config.backoff.without_jitter();
        self.config.refresh_jitter = false;
        self
    }

    /// Builds the cache. No token is fetched until one is asked for, unless
    /// [`background_refresh`](Self::background_refresh) is on and a runtime is running.
    ///
    /// # Errors
    ///
    /// An [`Error`] of kind [`InvalidConfig`](crate::ErrorKind::InvalidConfig) when
    /// `refresh_deadline` is zero, or a shared store is set and the token source has no
    /// [shared identity](TokenSource::shared_identity).
    pub fn build(self) -> Result<TokenCache, Error> {
        if self.config.refresh_deadline.is_zero() {
            return Err(Error::invalid_config("refresh_deadline must not be zero"));
        }
        #[cfg(feature = "redis")]
        let fleet = match self.store {
            None => None,
            Some(store) => {
                let identity = self.source.shared_identity().ok_or_else(|| {
                    Error::invalid_config(
                        "shared_store: this token source cannot be shared (its \
                         `TokenSource::shared_identity` is None)",
                    )
                })?;
                Some(crate::store::fleet::Fleet::new(
                    store,
                    &identity,
                    crate::store::fleet::FleetConfig::default(),
                )?)
            }
        };
        let id = NEXT_CACHE.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            id,
            #[cfg(feature = "redis")]
            fleet,
            current: ArcSwapOption::empty(),
            version: AtomicU64::new(0),
            pace: AtomicU64::new(0),
            epoch: Instant::now(),
            background_alive: AtomicBool::new(false),
            background_stop: Mutex::new(None),
            state: Mutex::new(State::default()),
            source: self.source,
            config: self.config,
            stats: Counters::default(),
            #[cfg(test)]
            locks: AtomicU64::new(0),
        });
        caches().insert(id, Arc::downgrade(&shared));
        shared.ensure_background();
        Ok(TokenCache { shared })
    }
}

impl TokenCache {
    /// A builder over a token source, such as [`ClientCredentials`](crate::ClientCredentials).
    pub fn builder(source: impl TokenSource) -> TokenCacheBuilder {
        Self::builder_boxed(Box::new(source))
    }

    pub(crate) fn builder_boxed(source: Box<dyn TokenSource>) -> TokenCacheBuilder {
        TokenCacheBuilder {
            source,
            config: Config::default(),
            #[cfg(feature = "redis")]
            store: None,
        }
    }

    /// A usable token: the cached one, or one from the refresh this call waits for.
    ///
    /// # Errors
    ///
    /// The refresh's error, when no usable token could be had.
    pub async fn token(&self) -> Result<AccessToken, Error> {
        self.get().await.map(|t| t.access_token)
    }

    /// Like [`token`](Self::token), with the token's generation and expiry.
    ///
    /// # Errors
    ///
    /// The refresh's error, when no usable token could be had.
    pub async fn get(&self) -> Result<CachedToken, Error> {
        match self.lookup(|entry| entry.token.clone()) {
            Lookup::Ready(token) => Ok(token),
            Lookup::Failed(error) => Err(error),
            Lookup::Wait(wait) => wait.await.map(|entry| entry.token.clone()),
        }
    }

    /// Drops the cached token if it is still the one of `generation`, which the caller saw
    /// rejected (a 401). Returns whether it dropped it.
    ///
    /// A stale generation (the token was already replaced) changes nothing, so N concurrent
    /// rejections of one token cause one refresh. At most one token is dropped per
    /// [`invalidation_throttle`](TokenCacheBuilder::invalidation_throttle) period.
    pub fn invalidate(&self, generation: Generation) -> bool {
        let now = Instant::now();
        let mut state = self.shared.lock();
        let current = self.shared.current.load();
        match current.as_deref() {
            Some(entry) if entry.generation() == generation => {}
            _ => return false,
        }
        if let Some(last) = state.last_invalidation {
            // A throttle too long to add to an `Instant` never runs out.
            let within = last
                .checked_add(self.shared.config.invalidation_throttle)
                .is_none_or(|until| now < until);
            if within {
                drop(state);
                tracing::debug!("token rejected again within the invalidation throttle: kept");
                return false;
            }
        }
        state.last_invalidation = Some(now);
        // A rejection is news the backoff did not know of: let the next request refresh.
        state.retry_at = None;
        state.rejected = current.as_deref().map(|entry| entry.access_token().clone());
        self.shared.current.store(None);
        self.shared.version.fetch_add(1, Ordering::Release);
        self.shared.publish_pace(&state);
        drop(state);
        bump(&self.shared.stats.invalidations);
        tracing::debug!("token rejected by the service: dropped");
        true
    }

    /// Drops the cached token if it is the one whose `Authorization` header value this is:
    /// [`invalidate`](Self::invalidate) for callers that kept the header rather than the
    /// generation.
    pub(crate) fn invalidate_token(&self, header: &http::HeaderValue) -> bool {
        let generation = match self.shared.current.load().as_deref() {
            Some(entry) if entry.access_token().header_value().as_bytes() == header.as_bytes() => {
                entry.generation()
            }
            _ => return false,
        };
        self.invalidate(generation)
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.stats;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        #[allow(unused_mut)]
        let mut stats = Stats {
            token_requests: load(&c.token_requests),
            token_failures: load(&c.token_failures),
            refresh_ahead: load(&c.refresh_ahead),
            waited: load(&c.waited),
            invalidations: load(&c.invalidations),
            replays: load(&c.replays),
            adopted: 0,
            lease_fetches: 0,
            store_fallbacks: 0,
        };
        #[cfg(feature = "redis")]
        if let Some(fleet) = &self.shared.fleet {
            let f = fleet.stats();
            stats.adopted = f.adopted;
            stats.lease_fetches = f.lease_fetches;
            stats.store_fallbacks = f.fallbacks;
        }
        stats
    }

    /// This cache, as response futures carry it.
    #[inline]
    pub(crate) fn by_ref(&self) -> CacheRef {
        CacheRef(self.shared.id)
    }

    pub(crate) fn count_replay(&self) {
        bump(&self.shared.stats.replays);
    }

    /// Which token is current: changes (after `current` does) each time it is replaced or
    /// dropped, and when the background refresher stops.
    #[inline]
    pub(crate) fn version(&self) -> u64 {
        self.shared.version.load(Ordering::Acquire)
    }

    /// The current entry, whatever its state.
    pub(crate) fn current(&self) -> Option<Arc<Entry>> {
        self.shared.current.load_full()
    }

    /// Starts the background refresher again if it is configured and its task is gone.
    #[inline]
    pub(crate) fn check_background(&self) {
        if self.shared.config.background_refresh
            && !self.shared.background_alive.load(Ordering::Relaxed)
        {
            self.shared.ensure_background();
        }
    }

    /// What a request does about its token: one atomic load and a clock read when the token
    /// is fresh. (Services ask this only when their own copy cannot serve.)
    pub(crate) fn lookup<T>(&self, project: impl FnOnce(&Entry) -> T) -> Lookup<T> {
        let now = Instant::now();
        self.check_background();
        {
            let current = self.shared.current.load();
            if let Some(entry) = current.as_deref() {
                if now < entry.fresh_until {
                    return Lookup::Ready(project(entry));
                }
                if now < entry.usable_until {
                    // No lock unless a refresh may start now: a refresh in flight or a backoff
                    // pause is read from one atomic.
                    if self.shared.nanos(now) >= self.shared.pace.load(Ordering::Acquire) {
                        self.shared.refresh_ahead(now);
                    }
                    return Lookup::Ready(project(entry));
                }
            }
        }
        match self.shared.slow_path(now) {
            Slow::Ready(entry) => Lookup::Ready(project(&entry)),
            Slow::Wait(rx) => {
                bump(&self.shared.stats.waited);
                Lookup::Wait(Box::pin(Arc::clone(&self.shared).wait(rx)))
            }
            Slow::Failed(error) => Lookup::Failed(error),
        }
    }
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("has_token", &self.shared.current.load().is_some())
            .field("stats", &self.stats())
            .finish()
    }
}

enum Slow {
    Ready(Arc<Entry>),
    Wait(Waiter),
    Failed(Error),
}

/// What the waiters of a flight that never ran (its runtime was shutting down) are told.
const NOT_RUN: &str = "the token refresh could not run: its Tokio runtime is shutting down";

/// How long a flight past its deadline is still joined rather than replaced: its own timer
/// fires at the deadline, and this leaves its runtime a moment to publish that.
const ABANDON_GRACE: Duration = Duration::from_secs(1);

/// Whether this thread's runtime has a time driver. Tokio panics when a timer is created
/// without one; that panic is caught here so that the cache can say what is wrong instead.
fn timers_enabled() -> bool {
    std::panic::catch_unwind(|| drop(tokio::time::sleep(Duration::ZERO))).is_ok()
}

fn no_time_driver() -> Error {
    Error::invalid_config(
        "the Tokio runtime has no time driver, which the token cache needs for its deadlines: \
         build the runtime with `enable_time()` (or `enable_all()`)",
    )
}

impl Waiter {
    /// The flight's outcome, or a timeout error at the flight's deadline, measured on this
    /// waiter's own timer: a flight whose runtime stopped running it cannot hang its waiters.
    async fn outcome(&mut self) -> Outcome {
        let Some(deadline) = self.deadline else {
            return outcome(&mut self.rx).await;
        };
        if !timers_enabled() {
            // The waiter's runtime has no timer; the flight's own deadline still holds.
            return outcome(&mut self.rx).await;
        }
        tokio::select! {
            biased;
            result = outcome(&mut self.rx) => result,
            () = tokio::time::sleep_until(deadline) => {
                Err(Error::timeout("waiting for the token refresh", self.limit))
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        #[cfg(test)]
        self.locks.fetch_add(1, Ordering::Relaxed);
        // No code panics while holding the lock, but a poisoned lock must not become a panic
        // on every request.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One refresh's token: from the fleet's shared store when there is one, else from the
    /// source.
    fn fetch(&self, rejected: Option<AccessToken>) -> BoxFuture<'_, Result<Token, Error>> {
        #[cfg(feature = "redis")]
        if let Some(fleet) = &self.fleet {
            let margins = crate::store::fleet::Margins {
                refresh_ahead: self.config.refresh_ahead,
                min_validity: self.config.min_validity,
            };
            return Box::pin(async move {
                fleet.fetch(&*self.source, margins, rejected.as_ref()).await
            });
        }
        drop(rejected);
        self.source.fetch()
    }

    /// `now` as the hot path's atomic `pace` counts it.
    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// Makes the state's "refresh in flight" and "not before" readable without the lock.
    /// Called with the state locked.
    fn publish_pace(&self, state: &State) {
        let pace = if state.flight.is_some() {
            u64::MAX
        } else {
            state.retry_at.map_or(0, |at| self.nanos(at))
        };
        self.pace.store(pace, Ordering::Release);
    }

    /// No usable token: take the one a racing refresh just published, join the refresh in
    /// flight, fail fast while backing off, or start a refresh.
    fn slow_path(self: &Arc<Self>, now: Instant) -> Slow {
        let mut state = self.lock();
        if let Some(entry) = self.current.load_full()
            && now < entry.usable_until
        {
            return Slow::Ready(entry);
        }
        if let Some(flight) = &state.flight {
            let abandoned = flight
                .started
                .checked_add(self.config.refresh_deadline)
                .and_then(|deadline| deadline.checked_add(ABANDON_GRACE))
                .is_some_and(|at| now >= at);
            if !abandoned {
                return Slow::Wait(self.waiter(flight));
            }
            // Its runtime has not run it to its deadline (parked, or gone): start another one
            // here. Should it finish after all, it publishes to its own waiters only.
            state.flight = None;
            tracing::warn!("the token refresh in flight is past its deadline: starting another");
        }
        if let (Some(retry_at), Some(error)) = (state.retry_at, &state.last_error)
            && now < retry_at
        {
            return Slow::Failed(error.clone());
        }
        match self.begin_flight(&mut state, now, false) {
            Ok((waiter, pending)) => {
                drop(state);
                pending.spawn();
                Slow::Wait(waiter)
            }
            Err(error) => Slow::Failed(error),
        }
    }

    fn waiter(&self, flight: &InFlight) -> Waiter {
        Waiter {
            rx: flight.rx.clone(),
            deadline: flight.started.checked_add(self.config.refresh_deadline),
            limit: self.config.refresh_deadline,
        }
    }

    /// A request in the refresh-ahead window: start a background refresh unless one runs, the
    /// backoff says not yet, or a refresh published a fresh token since the request looked.
    fn refresh_ahead(self: &Arc<Self>, now: Instant) {
        let mut state = self.lock();
        if state.flight.is_some() || state.retry_at.is_some_and(|at| now < at) {
            return;
        }
        if self
            .current
            .load()
            .as_deref()
            .is_some_and(|entry| now < entry.fresh_until)
        {
            return;
        }
        // Nobody waits on it; an error is recorded in the state by the refresh itself.
        if let Ok((_, pending)) = self.begin_flight(&mut state, now, true) {
            drop(state);
            pending.spawn();
        }
    }

    /// Prepares the one refresh. Called with the state locked; the caller spawns the returned
    /// flight once it has released the lock.
    fn begin_flight(
        self: &Arc<Self>,
        state: &mut State,
        now: Instant,
        ahead: bool,
    ) -> Result<(Waiter, PendingFlight), Error> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::internal("no Tokio runtime to refresh the token on"))?;
        let (tx, rx) = watch::channel(None);
        let id = state.next_flight;
        state.next_flight = state.next_flight.wrapping_add(1);
        let flight = InFlight {
            id,
            rx,
            started: now,
        };
        let waiter = self.waiter(&flight);
        state.flight = Some(flight);
        self.publish_pace(state);
        bump(&self.stats.token_requests);
        if ahead {
            bump(&self.stats.refresh_ahead);
        }
        let flight = Flight {
            shared: Arc::clone(self),
            tx,
            id,
            started: now,
            rejected: state.rejected.take(),
            ran: false,
            done: false,
        };
        Ok((waiter, PendingFlight { runtime, flight }))
    }

    /// Publishes a refresh's outcome: first in the state (so that a request arriving after
    /// this sees the new token or the backoff; the token goes in before the "in flight" mark
    /// goes out, so no request sees neither), then to the waiters of this flight. `paced` is
    /// false for a flight that never ran (its runtime was shutting down): that is no news
    /// about the token endpoint, so it starts no backoff.
    fn complete(
        &self,
        tx: &watch::Sender<Option<Outcome>>,
        id: u64,
        started: Instant,
        result: Result<Token, Error>,
        paced: bool,
    ) {
        let now = Instant::now();
        let mut state = self.lock();
        let own = state.flight.as_ref().is_some_and(|flight| flight.id == id);
        let previous = self.current.load_full();
        let outcome = result
            .and_then(|token| self.entry_for(token, started, now, previous.as_deref(), &mut state));
        let mut retry_in = None;
        match &outcome {
            Ok(entry) => {
                let newer = previous
                    .as_ref()
                    .is_none_or(|p| entry.token.expires_at > p.token.expires_at);
                // A flight that was abandoned and finished late never replaces a newer token.
                if own || newer || previous.as_ref().is_some_and(|p| now >= p.usable_until) {
                    self.current.store(Some(Arc::clone(entry)));
                    self.version.fetch_add(1, Ordering::Release);
                }
                if own {
                    state.last_error = None;
                    if newer {
                        state.failures = 0;
                        state.retry_at = None;
                    } else {
                        // The endpoint handed back a token that expires no later than the one
                        // we had (a cache in front of it, say): asking again at once would get
                        // the same, so further refreshes are paced like failures.
                        let delay = self.config.backoff.delay(state.failures);
                        state.failures = state.failures.saturating_add(1);
                        state.retry_at = now.checked_add(delay);
                        retry_in = Some(delay);
                    }
                }
            }
            Err(error) => {
                bump(&self.stats.token_failures);
                if own && paced {
                    let backoff = self.config.backoff;
                    let delay = if error.is_permanent() {
                        backoff.cap()
                    } else {
                        backoff.delay(state.failures)
                    };
                    // What a server may impose is clamped to the backoff's cap: one
                    // `Retry-After` must not stop every fetch for a day.
                    let asked = error.retry_after().unwrap_or_default().min(backoff.cap());
                    let delay = delay.max(asked);
                    state.failures = state.failures.saturating_add(1);
                    state.retry_at = now.checked_add(delay);
                    state.last_error = Some(error.clone());
                    retry_in = Some(delay);
                }
            }
        }
        if own {
            state.flight = None;
        }
        self.publish_pace(&state);
        let failures = state.failures;
        drop(state);

        match &outcome {
            Ok(entry) => tracing::debug!(
                generation = entry.generation().0,
                lifetime_secs = entry
                    .token
                    .expires_at
                    .saturating_duration_since(started)
                    .as_secs(),
                next_refresh_not_before_ms = retry_in.map(|d| d.as_millis() as u64),
                "token refreshed"
            ),
            Err(error) => tracing::warn!(
                failures,
                retry_in_ms = retry_in.map(|d| d.as_millis() as u64),
                %error,
                "token refresh failed"
            ),
        }
        tx.send_replace(Some(outcome));
    }

    /// The cache's entry for a new token, with its refresh moments. The margins scale with the
    /// token's lifetime; a token that expires no later than the `previous` one (an endpoint
    /// that hands out the same cached token again, its remaining life shrinking) keeps the
    /// previous one's margin, so that refetching it never makes it usable for longer.
    fn entry_for(
        &self,
        token: Token,
        started: Instant,
        now: Instant,
        previous: Option<&Entry>,
        state: &mut State,
    ) -> Outcome {
        let expires_at = token.expires_at();
        // A token adopted from the shared store carries its original lifetime: margins from
        // its remaining life would shrink with every adoption.
        let lifetime = token
            .lifetime()
            .unwrap_or_else(|| expires_at.saturating_duration_since(started));
        let refresh_ahead = self.config.refresh_ahead.min(lifetime / 2);
        let min_validity = self.config.min_validity.min(lifetime / 10);
        let jitter = if self.config.refresh_jitter {
            let max = u64::try_from((lifetime / 10).as_nanos()).unwrap_or(u64::MAX);
            Duration::from_nanos(fastrand::u64(0..=max))
        } else {
            Duration::ZERO
        };
        let mut usable_until = expires_at.checked_sub(min_validity).unwrap_or(started);
        if let Some(previous) = previous
            && expires_at <= previous.token.expires_at
        {
            usable_until = usable_until.min(previous.usable_until);
        }
        let fresh_until = expires_at
            .checked_sub(refresh_ahead.saturating_add(jitter))
            .unwrap_or(started)
            .min(usable_until);
        if now >= usable_until {
            return Err(Error::invalid_response(
                "the token endpoint issued a token that expires before it could be used",
            ));
        }
        let generation = Generation(state.next_generation);
        state.next_generation += 1;
        Ok(Arc::new(Entry {
            token: CachedToken {
                access_token: token.into_access_token(),
                generation,
                expires_at,
            },
            fresh_until,
            usable_until,
        }))
    }

    /// Waits for a refresh's outcome. A token that is no longer usable when this waiter wakes
    /// (the clock moved on) is not handed out: the waiter looks again, a bounded number of times.
    async fn wait(self: Arc<Self>, mut waiter: Waiter) -> Outcome {
        let mut never_ran = None;
        for _ in 0..3 {
            let now = match waiter.outcome().await {
                Ok(entry) => {
                    let now = Instant::now();
                    if now < entry.usable_until {
                        return Ok(entry);
                    }
                    now
                }
                // The flight was spawned on a runtime that was shutting down, perhaps not this
                // waiter's: that says nothing of the token endpoint, so start over here.
                Err(error) if error.is_internal(NOT_RUN) => {
                    never_ran = Some(error);
                    Instant::now()
                }
                Err(error) => return Err(error),
            };
            match self.slow_path(now) {
                Slow::Ready(entry) => return Ok(entry),
                Slow::Wait(next) => waiter = next,
                Slow::Failed(error) => return Err(error),
            }
        }
        Err(never_ran.unwrap_or_else(|| {
            Error::internal("no token stayed usable long enough to be handed out")
        }))
    }

    /// Spawns the background refresher if it is configured and not running: at build time, and
    /// again on the first request after its runtime went away. Takes no state lock.
    fn ensure_background(self: &Arc<Self>) {
        if !self.config.background_refresh {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self
            .background_alive
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let (stop, stopped) = oneshot::channel();
        *self
            .background_stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(stop);
        let alive = BackgroundAlive(Arc::downgrade(self));
        runtime.spawn(background(Arc::downgrade(self), stopped, alive));
    }

    /// The background refresher's step: join the refresh in flight, or start one unless the
    /// token is fresh or the backoff says not yet.
    fn refresh_if_due(self: &Arc<Self>, now: Instant) -> Option<Waiter> {
        let mut state = self.lock();
        if let Some(flight) = &state.flight {
            return Some(self.waiter(flight));
        }
        if self
            .current
            .load()
            .as_deref()
            .is_some_and(|entry| now < entry.fresh_until)
            || state.retry_at.is_some_and(|at| now < at)
        {
            return None;
        }
        let ahead = self.current.load().is_some();
        let (waiter, pending) = self.begin_flight(&mut state, now, ahead).ok()?;
        drop(state);
        pending.spawn();
        Some(waiter)
    }

    /// When the background refresher should look next.
    fn next_background_check(&self, now: Instant) -> Instant {
        let state = self.lock();
        let mut at = self
            .current
            .load()
            .as_deref()
            .map_or(now, |entry| entry.fresh_until);
        if let Some(retry_at) = state.retry_at {
            at = at.max(retry_at);
        }
        // Never spin, whatever the token's lifetime.
        at.max(now + Duration::from_millis(10))
    }
}

/// The refresh in flight. Dropping it without a result (the source panicked, or the runtime is
/// shutting down) still publishes an error, so no waiter is left hanging.
struct Flight {
    shared: Arc<Shared>,
    tx: watch::Sender<Option<Outcome>>,
    id: u64,
    started: Instant,
    /// The token a rejection dropped before this refresh, if any.
    rejected: Option<AccessToken>,
    /// Whether the task was ever polled: one dropped before (its runtime was shutting down)
    /// says nothing about the token endpoint.
    ran: bool,
    done: bool,
}

impl Flight {
    async fn run(mut self) {
        self.ran = true;
        let limit = self.shared.config.refresh_deadline;
        let result = if !timers_enabled() {
            Err(no_time_driver())
        } else {
            let rejected = self.rejected.take();
            let fetch = self.shared.fetch(rejected);
            match self.started.checked_add(limit) {
                Some(deadline) => match tokio::time::timeout_at(deadline, fetch).await {
                    Ok(result) => result,
                    Err(_) => Err(Error::timeout("the token refresh", limit)),
                },
                None => fetch.await,
            }
        };
        self.done = true;
        self.shared
            .complete(&self.tx, self.id, self.started, result, true);
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let why = if self.ran {
            "the token refresh ended without a result (the token source panicked)"
        } else {
            NOT_RUN
        };
        self.shared.complete(
            &self.tx,
            self.id,
            self.started,
            Err(Error::internal(why)),
            self.ran,
        );
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        caches().remove(&self.id);
    }
}

/// Marks the background refresher as gone when its task ends or is dropped with its runtime.
struct BackgroundAlive(Weak<Shared>);

impl Drop for BackgroundAlive {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade() {
            shared.background_alive.store(false, Ordering::Release);
            // Services look at the cache, and so restart the refresher, when the version
            // changes: their requests with a fresh token do not check on it.
            shared.version.fetch_add(1, Ordering::Release);
        }
    }
}

/// The outcome of a flight, once it is published.
async fn outcome(rx: &mut watch::Receiver<Option<Outcome>>) -> Outcome {
    // The value changes once, from `None` to the outcome; `Flight` publishes before it drops
    // the sender, so the loop runs at most twice.
    for _ in 0..2 {
        if let Some(outcome) = rx.borrow_and_update().as_ref() {
            return outcome.clone();
        }
        if rx.changed().await.is_err() {
            break;
        }
    }
    match rx.borrow().as_ref() {
        Some(outcome) => outcome.clone(),
        None => Err(Error::internal("the token refresh ended without a result")),
    }
}

/// Keeps the token fresh with no traffic. Holds only a weak handle, and stops when the cache is
/// dropped (the stop sender lives in the cache's state).
async fn background(
    shared: Weak<Shared>,
    mut stopped: oneshot::Receiver<()>,
    _alive: BackgroundAlive,
) {
    loop {
        let Some(wake_at) = shared
            .upgrade()
            .map(|s| s.next_background_check(Instant::now()))
        else {
            return;
        };
        tokio::select! {
            _ = &mut stopped => return,
            () = tokio::time::sleep_until(wake_at) => {}
        }
        let Some(mut waiter) = shared
            .upgrade()
            .and_then(|s| s.refresh_if_due(Instant::now()))
        else {
            continue;
        };
        tokio::select! {
            _ = &mut stopped => return,
            _ = waiter.outcome() => {}
        }
    }
}

/// A current-thread runtime with all its drivers, its clock paused if `paused`: for tests that
/// move a cache from one runtime to another.
#[cfg(test)]
pub(crate) fn test_runtime(paused: bool) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(paused)
        .build()
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::time::advance;

    #[derive(Clone)]
    enum Mode {
        Ok,
        Fail(Error),
        Panic,
        Hang,
        /// A token that always expires at this moment (an endpoint or sidecar that hands out
        /// one cached token until it dies).
        Fixed(Instant),
    }

    /// A token source that counts its calls, how many run at once, and can be told to fail.
    #[derive(Clone)]
    struct TestSource {
        calls: Arc<AtomicUsize>,
        running: Arc<AtomicUsize>,
        max_running: Arc<AtomicUsize>,
        delay: Duration,
        lifetime: Duration,
        mode: Arc<Mutex<Mode>>,
    }

    impl TestSource {
        fn new(delay: Duration, lifetime: Duration) -> Self {
            Self {
                calls: Arc::default(),
                running: Arc::default(),
                max_running: Arc::default(),
                delay,
                lifetime,
                mode: Arc::new(Mutex::new(Mode::Ok)),
            }
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
        fn set(&self, mode: Mode) {
            *self.mode.lock().unwrap() = mode;
        }
        fn cache(&self) -> TokenCacheBuilder {
            TokenCache::builder(self.clone()).deterministic()
        }
    }

    impl TokenSource for TestSource {
        fn fetch(&self) -> BoxFuture<'_, Result<Token, Error>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
                let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
                self.max_running.fetch_max(running, Ordering::SeqCst);
                struct Done<'a>(&'a AtomicUsize);
                impl Drop for Done<'_> {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                let _done = Done(&self.running);
                let sent = Instant::now();
                tokio::time::sleep(self.delay).await;
                let mode = self.mode.lock().unwrap().clone();
                match mode {
                    Mode::Ok => Ok(Token::new(
                        AccessToken::new(format!("token-{n}"))?,
                        sent + self.lifetime,
                    )),
                    Mode::Fail(e) => Err(e),
                    Mode::Panic => panic!("the test source panics"),
                    Mode::Hang => std::future::pending().await,
                    Mode::Fixed(at) => Ok(Token::new(AccessToken::new("fixed")?, at)),
                }
            })
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    fn unavailable() -> Error {
        Error::server_error(http::StatusCode::SERVICE_UNAVAILABLE, None)
    }

    /// Calls `token()` from `n` tasks at once and checks every token is usable when handed out.
    async fn concurrent(cache: &TokenCache, n: usize) -> Vec<Result<CachedToken, Error>> {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move {
                    let got = cache.get().await;
                    if let Ok(token) = &got {
                        // min_validity for a one-hour token is 30 s.
                        assert!(Instant::now() + Duration::from_secs(30) < token.expires_at());
                    }
                    got
                })
            })
            .collect();
        let mut out = Vec::with_capacity(n);
        for task in tasks {
            out.push(task.await.unwrap());
        }
        out
    }

    /// Response futures name their cache by a number: it is found while any handle to the
    /// cache lives, and not after the last one is dropped (nor is it kept in the registry).
    #[tokio::test(start_paused = true)]
    async fn a_cache_is_found_by_its_ref_while_it_lives() {
        let source = TestSource::new(Duration::ZERO, HOUR);
        let cache = source.cache().build().unwrap();
        let other = source.cache().build().unwrap();
        let by_ref = cache.by_ref();
        assert_ne!(by_ref, other.by_ref());
        let found = by_ref.find().expect("the cache lives");
        assert!(Arc::ptr_eq(&found.shared, &cache.shared));
        drop((found, cache));
        assert!(by_ref.find().is_none());
        assert!(!caches().contains_key(&by_ref.0));
        assert!(other.by_ref().find().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn ten_thousand_callers_one_fetch() {
        let source = TestSource::new(Duration::from_secs(2), HOUR);
        let cache = source.cache().build().unwrap();
        let results = concurrent(&cache, 10_000).await;
        assert_eq!(source.calls(), 1);
        assert!(
            results
                .iter()
                .all(|r| r.as_ref().unwrap().access_token().secret() == "token-1")
        );
        assert_eq!(cache.stats().token_requests, 1);
        assert_eq!(cache.stats().waited, 10_000);
    }

    #[tokio::test(start_paused = true)]
    async fn at_expiry_and_on_the_min_validity_boundary() {
        let source = TestSource::new(Duration::from_millis(500), HOUR);
        let cache = source.cache().build().unwrap();
        let first = cache.get().await.unwrap();
        // Exactly `expires_at - min_validity`: the token is no longer usable, whatever the
        // refresh-ahead state. Every caller waits for the one new token.
        let boundary = first.expires_at() - Duration::from_secs(30);
        advance(boundary - Instant::now()).await;
        let results = concurrent(&cache, 1_000).await;
        assert_eq!(source.calls(), 2);
        for r in &results {
            assert_eq!(r.as_ref().unwrap().access_token().secret(), "token-2");
        }
        // One tick before the boundary, a token is still handed out at once.
        let second = cache.get().await.unwrap();
        let before = second.expires_at() - Duration::from_secs(30) - Duration::from_millis(1);
        advance(before - Instant::now()).await;
        let got = cache.get().await.unwrap();
        assert_eq!(got.access_token().secret(), "token-2");
        // That request was in the refresh-ahead window: it started token-3 in the background.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(source.calls(), 3);
        // And after expiry, the same: one refresh for all.
        advance(Duration::from_secs(3600)).await;
        let results = concurrent(&cache, 1_000).await;
        assert!(results.iter().all(|r| r.is_ok()));
        // token-3 was started by the refresh-ahead request above; token-4 after expiry.
        assert_eq!(source.calls(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_ahead_serves_old_token_while_one_refresh_runs() {
        let source = TestSource::new(Duration::from_secs(5), HOUR);
        let cache = source.cache().build().unwrap();
        cache.get().await.unwrap();
        // 3300 s is the fresh limit (3600 - 300); 3310 s is inside the window.
        advance(Duration::from_secs(3310 - 5)).await;
        let start = Instant::now();
        for _ in 0..100 {
            let t = cache.get().await.unwrap();
            assert_eq!(t.access_token().secret(), "token-1");
        }
        assert_eq!(Instant::now(), start, "no caller waited");
        tokio::task::yield_now().await;
        assert_eq!(source.calls(), 2, "one background refresh");
        assert_eq!(cache.stats().refresh_ahead, 1);
        assert_eq!(cache.stats().waited, 1, "only the very first call waited");
        tokio::time::sleep(Duration::from_secs(6)).await;
        let t = cache.get().await.unwrap();
        assert_eq!(t.access_token().secret(), "token-2");
        assert_eq!(source.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_trigger_does_not_cancel_the_refresh() {
        let source = TestSource::new(Duration::from_secs(3), HOUR);
        let cache = source.cache().build().unwrap();
        let trigger = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.token().await })
        };
        tokio::task::yield_now().await;
        assert_eq!(source.calls(), 1);
        let others = {
            let cache = cache.clone();
            tokio::spawn(async move { concurrent(&cache, 50).await })
        };
        advance(Duration::from_secs(1)).await;
        trigger.abort();
        assert!(trigger.await.unwrap_err().is_cancelled());
        let results = others.await.unwrap();
        assert!(results.iter().all(|r| r.is_ok()));
        assert_eq!(source.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn invalidate_current_generation_once_stale_never() {
        let source = TestSource::new(Duration::from_secs(1), HOUR);
        // No throttle: the generation check alone must keep the new token.
        let cache = source
            .cache()
            .invalidation_throttle(Duration::ZERO)
            .build()
            .unwrap();
        let rejected = cache.get().await.unwrap().generation();
        // 1,000 concurrent rejections of the same token: one drop, one refresh.
        let tasks: Vec<_> = (0..1_000)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move {
                    let dropped = cache.invalidate(rejected);
                    (dropped, cache.get().await.unwrap())
                })
            })
            .collect();
        let mut dropped = 0;
        for t in tasks {
            let (d, token) = t.await.unwrap();
            dropped += usize::from(d);
            assert_eq!(token.access_token().secret(), "token-2");
            assert_ne!(token.generation(), rejected);
        }
        assert_eq!(dropped, 1);
        assert_eq!(source.calls(), 2);
        assert_eq!(cache.stats().invalidations, 1);
        // A stale generation changes nothing.
        assert!(!cache.invalidate(rejected));
        cache.get().await.unwrap();
        assert_eq!(source.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn invalidations_are_throttled() {
        let source = TestSource::new(Duration::ZERO, HOUR);
        let cache = source.cache().build().unwrap();
        let g1 = cache.get().await.unwrap().generation();
        assert!(cache.invalidate(g1));
        let g2 = cache.get().await.unwrap().generation();
        // Within 10 s of the last drop, the new token is kept.
        advance(Duration::from_secs(9)).await;
        assert!(!cache.invalidate(g2));
        assert_eq!(cache.get().await.unwrap().generation(), g2);
        advance(Duration::from_secs(1)).await;
        assert!(cache.invalidate(g2));
        assert_ne!(cache.get().await.unwrap().generation(), g2);
        assert_eq!(source.calls(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn failure_reaches_all_waiters_then_backoff_paces_attempts() {
        let source = TestSource::new(Duration::from_secs(1), HOUR);
        source.set(Mode::Fail(unavailable()));
        let cache = source.cache().build().unwrap();
        let results = concurrent(&cache, 100).await;
        assert_eq!(source.calls(), 1);
        assert!(results.iter().all(
            |r| r.as_ref().unwrap_err().status() == Some(http::StatusCode::SERVICE_UNAVAILABLE)
        ));
        // The failure completed at t = 1 s. From then on, a request every 100 ms for a minute:
        // attempts only when the backoff (1, 2, 4, 8, 16, 32 s; no jitter here) allows, and the
        // requests in between fail at once.
        let start = Instant::now();
        let mut failed_fast = 0;
        for _ in 0..600 {
            let before = Instant::now();
            let calls = source.calls();
            assert!(cache.token().await.is_err());
            if source.calls() == calls {
                assert_eq!(
                    Instant::now(),
                    before,
                    "a request during the pause does not wait"
                );
                failed_fast += 1;
            }
            advance(Duration::from_millis(100)).await;
        }
        // Attempts at 1, 1+1+2=4... each attempt takes 1 s: t = 2, 5, 10, 19, 36 after start.
        let attempts = source.calls() - 1;
        assert_eq!(
            attempts, 5,
            "attempts in the minute after the first failure"
        );
        assert!(failed_fast > 500);
        assert!(Instant::now() - start >= Duration::from_secs(60));
        assert_eq!(cache.stats().token_failures, 6);
        // Recovery once the endpoint is back and the pause is over.
        source.set(Mode::Ok);
        advance(Duration::from_secs(64)).await;
        let t = cache.token().await.unwrap();
        assert_eq!(t.secret(), format!("token-{}", source.calls()));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_error_is_retried_at_the_slowest_rate() {
        let source = TestSource::new(Duration::ZERO, HOUR);
        source.set(Mode::Fail(Error::rejected(
            http::StatusCode::BAD_REQUEST,
            Some("invalid_client"),
            None,
        )));
        let cache = source.cache().build().unwrap();
        for _ in 0..599 {
            let e = cache.token().await.unwrap_err();
            assert!(e.is_invalid_client());
            advance(Duration::from_millis(100)).await;
        }
        assert_eq!(source.calls(), 1, "no retry within 60 s");
        advance(Duration::from_millis(100)).await;
        assert!(cache.token().await.is_err());
        assert_eq!(source.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn failure_while_usable_is_invisible() {
        let source = TestSource::new(Duration::from_secs(1), HOUR);
        let cache = source.cache().build().unwrap();
        cache.get().await.unwrap();
        source.set(Mode::Fail(unavailable()));
        // Into the refresh-ahead window: every call gets the old token at once.
        advance(Duration::from_secs(3400)).await;
        for _ in 0..100 {
            assert_eq!(cache.token().await.unwrap().secret(), "token-1");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let calls = source.calls();
        assert!(calls > 2, "background refreshes were retried");
        assert!(
            calls < 10,
            "spaced by backoff, not by the request rate: {calls}"
        );
        source.set(Mode::Ok);
        tokio::time::sleep(Duration::from_secs(60)).await;
        let _ = cache.token().await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let t = cache.token().await.unwrap();
        assert_ne!(t.secret(), "token-1");
    }

    #[tokio::test(start_paused = true)]
    async fn panicking_source_gives_an_error_not_a_hang() {
        let source = TestSource::new(Duration::from_millis(10), HOUR);
        source.set(Mode::Panic);
        let cache = source.cache().build().unwrap();
        let results = concurrent(&cache, 10).await;
        for r in results {
            assert_eq!(r.unwrap_err().kind(), crate::ErrorKind::Internal);
        }
        // The cache is still usable afterwards.
        source.set(Mode::Ok);
        advance(Duration::from_secs(2)).await;
        assert!(cache.token().await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn hanging_source_times_out_at_the_deadline() {
        let source = TestSource::new(Duration::ZERO, HOUR);
        source.set(Mode::Hang);
        let cache = source
            .cache()
            .refresh_deadline(Duration::from_secs(30))
            .build()
            .unwrap();
        let start = Instant::now();
        let results = concurrent(&cache, 10).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(30));
        for r in results {
            assert!(r.unwrap_err().is_timeout());
        }
        assert_eq!(
            source.running.load(Ordering::SeqCst),
            0,
            "the hung fetch was dropped"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn background_refresh_without_callers_and_stops_on_drop() {
        let metrics = tokio::runtime::Handle::current().metrics();
        let tasks_before = metrics.num_alive_tasks();
        let source = TestSource::new(Duration::from_secs(1), HOUR);
        let cache = source.cache().background_refresh(true).build().unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(source.calls(), 1, "warmed up without any caller");
        // Fresh until 3600 - 300 s after the fetch started; renewed then, with no caller.
        tokio::time::sleep(Duration::from_secs(3290)).await;
        assert_eq!(source.calls(), 1);
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(source.calls(), 2);
        assert_eq!(cache.stats().waited, 0);
        let t = cache.token().await.unwrap();
        assert_eq!(t.secret(), "token-2");
        assert_eq!(
            cache.stats().waited,
            0,
            "the first request found a fresh token"
        );
        drop(cache);
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert_eq!(
            metrics.num_alive_tasks(),
            tasks_before,
            "the background task ended"
        );
        tokio::time::sleep(Duration::from_secs(7200)).await;
        assert_eq!(source.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn short_lived_tokens_scale_the_margins() {
        // A 10 s token: refresh ahead at most 5 s, min validity at most 1 s.
        let source = TestSource::new(Duration::ZERO, Duration::from_secs(10));
        let cache = source.cache().build().unwrap();
        cache.get().await.unwrap();
        advance(Duration::from_millis(4_900)).await;
        cache.get().await.unwrap();
        assert_eq!(source.calls(), 1, "fresh for the first half");
        advance(Duration::from_millis(200)).await;
        cache.get().await.unwrap();
        tokio::task::yield_now().await;
        assert_eq!(source.calls(), 2, "refreshed ahead after half its life");
    }

    /// Issue #10, defect 1: a flight spawned on a runtime that is shutting down is dropped on
    /// the spot; that must neither deadlock on the cache's own lock nor break other runtimes.
    #[test]
    fn a_runtime_shutting_down_does_not_deadlock_the_cache() {
        let source = TestSource::new(Duration::ZERO, HOUR);
        let cache = source.cache().build().unwrap();
        let dying = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let handle = dying.handle().clone();
        dying.shutdown_background();
        let (done, returned) = std::sync::mpsc::channel();
        let on_dying = cache.clone();
        std::thread::spawn(move || {
            let _entered = handle.enter();
            // A request arrives on the expired (absent) token while the runtime goes away.
            let failed = matches!(on_dying.lookup(|_| ()), Lookup::Failed(_));
            let _ = done.send(failed);
        });
        returned
            .recv_timeout(Duration::from_secs(30))
            .expect("the request on the dying runtime returned instead of deadlocking");
        let other = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let token = other
            .block_on(async { tokio::time::timeout(Duration::from_secs(30), cache.token()).await })
            .expect("no hang on another runtime")
            .expect("another runtime sharing the cache gets a token");
        assert_eq!(token.secret(), "token-1");
    }

    /// A request on a healthy runtime that joined a flight spawned on a runtime then shutting
    /// down (so the flight never runs) starts over on its own runtime instead of failing.
    #[test]
    fn a_waiter_starts_over_when_the_flight_it_joined_never_ran() {
        let source = TestSource::new(Duration::ZERO, HOUR);
        let cache = source.cache().build().unwrap();
        let idle = test_runtime(false);
        {
            // The flight is queued on `idle`, which nobody drives.
            let _entered = idle.enter();
            assert!(matches!(cache.lookup(|_| ()), Lookup::Wait(_)));
        }
        let token = test_runtime(false).block_on(async {
            let waiting = tokio::spawn({
                let cache = cache.clone();
                async move { cache.token().await }
            });
            // It joins the queued flight.
            tokio::task::yield_now().await;
            assert_eq!(cache.stats().waited, 2);
            // `idle` goes away, and its queued flight with it, never having run.
            std::thread::spawn(move || drop(idle)).join().unwrap();
            waiting.await.unwrap()
        });
        assert_eq!(token.unwrap().secret(), "token-1");
        assert_eq!(source.calls(), 1);
    }

    /// Issue #10, defect 2: waiters bound their wait on their own timer, so a flight stuck on a
    /// runtime that nobody drives does not hang them; the next request starts over.
    #[test]
    fn waiters_have_their_own_deadline_when_the_refreshing_runtime_is_parked() {
        let source = TestSource::new(Duration::from_secs(1), HOUR);
        let cache = source
            .cache()
            .refresh_deadline(Duration::from_secs(30))
            .build()
            .unwrap();
        let parked = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        {
            let _entered = parked.enter();
            // The refresh is spawned on `parked`, which nobody drives from now on.
            assert!(matches!(cache.lookup(|_| ()), Lookup::Wait(_)));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let start = Instant::now();
            let waited = tokio::time::timeout(HOUR, cache.token())
                .await
                .expect("the waiter gave up on its own at the refresh deadline");
            assert!(waited.unwrap_err().is_timeout());
            assert!(Instant::now() - start <= Duration::from_secs(30));
            // The stuck flight is abandoned: a later request refreshes on this runtime.
            advance(Duration::from_secs(5)).await;
            let token = tokio::time::timeout(HOUR, cache.token())
                .await
                .expect("no hang")
                .expect("recovered");
            assert_eq!(token.secret(), "token-1");
        });
        drop(parked);
    }

    /// Issue #10, defect 3: a server's `Retry-After` cannot pause token fetches beyond the
    /// backoff cap (60 s).
    #[tokio::test(start_paused = true)]
    async fn retry_after_is_clamped_to_the_backoff_cap() {
        let source = TestSource::new(Duration::ZERO, HOUR);
        source.set(Mode::Fail(Error::server_error(
            http::StatusCode::SERVICE_UNAVAILABLE,
            Some(Duration::from_secs(24 * 3600)),
        )));
        let cache = source.cache().build().unwrap();
        assert!(cache.token().await.is_err());
        source.set(Mode::Ok);
        advance(Duration::from_secs(59)).await;
        assert!(cache.token().await.is_err(), "still pausing");
        assert_eq!(source.calls(), 1);
        advance(Duration::from_secs(1)).await;
        assert!(
            cache.token().await.is_ok(),
            "the next attempt comes within the cap"
        );
        assert_eq!(source.calls(), 2);
    }

    /// Issue #10, defect 4: a request that loaded the old token just before a refresh-ahead
    /// published the new one must not start a second, wasted refresh.
    #[tokio::test(start_paused = true)]
    async fn no_second_refresh_right_after_a_refresh_ahead() {
        let source = TestSource::new(Duration::from_secs(1), HOUR);
        let cache = source.cache().build().unwrap();
        cache.get().await.unwrap();
        advance(Duration::from_secs(3310)).await;
        // A request loads the old token (stale, still usable) ...
        let old = cache.shared.current.load_full().unwrap();
        assert!(Instant::now() >= old.fresh_until);
        // ... meanwhile another request starts the refresh-ahead, which completes.
        cache.get().await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(source.calls(), 2);
        // The first request now finds no refresh running and asks for one, as the hot path does.
        cache.shared.refresh_ahead(Instant::now());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(source.calls(), 2, "one refresh per window");
        assert_eq!(cache.stats().refresh_ahead, 1);
    }

    /// Issue #10, defect 5: during a brownout of the token endpoint, requests in the
    /// refresh-ahead window read the backoff without taking the lock.
    #[tokio::test(start_paused = true)]
    async fn requests_in_the_window_during_backoff_take_no_lock() {
        let source = TestSource::new(Duration::from_millis(10), HOUR);
        let cache = source.cache().build().unwrap();
        cache.get().await.unwrap();
        source.set(Mode::Fail(unavailable()));
        advance(Duration::from_secs(3310)).await;
        cache.get().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(source.calls(), 2, "the refresh-ahead ran and failed");
        // The backoff's first pause is 1 s; within it, no request takes the lock.
        let locks = cache.shared.locks.load(Ordering::SeqCst);
        for _ in 0..100 {
            assert!(matches!(cache.lookup(|_| ()), Lookup::Ready(())));
        }
        assert_eq!(cache.shared.locks.load(Ordering::SeqCst), locks);
        assert_eq!(source.calls(), 2);
    }

    /// Issue #10, defect 6: extreme durations saturate instead of overflowing `Instant`.
    #[tokio::test(start_paused = true)]
    async fn extreme_durations_do_not_panic() {
        for d in [Duration::ZERO, Duration::MAX] {
            let source = TestSource::new(Duration::ZERO, HOUR);
            let cache = source
                .cache()
                .refresh_ahead(d)
                .min_validity(d)
                .invalidation_throttle(d)
                .refresh_deadline(Duration::MAX)
                .background_refresh(true)
                .build()
                .unwrap();
            for _ in 0..3 {
                let token = cache.get().await.unwrap();
                cache.invalidate(token.generation());
            }
            advance(Duration::from_secs(3599)).await;
            cache.get().await.unwrap();
        }
    }

    /// Issue #10, defect 7: a background refresher whose runtime went away is started again on
    /// the next request's runtime.
    #[test]
    fn background_refresher_restarts_under_a_new_runtime() {
        let source = TestSource::new(Duration::from_secs(1), HOUR);
        let init = test_runtime(true);
        let cache = init.block_on(async {
            let cache = source.cache().background_refresh(true).build().unwrap();
            cache.token().await.unwrap();
            cache
        });
        drop(init);
        test_runtime(true).block_on(async {
            cache.token().await.unwrap();
            assert_eq!(source.calls(), 1);
            // No traffic for longer than the token is fresh.
            tokio::time::sleep(Duration::from_secs(3400)).await;
            assert_eq!(
                source.calls(),
                2,
                "renewed in the background with no traffic"
            );
        });
    }

    /// Issue #10: a runtime without a time driver gets an error that says so.
    #[test]
    fn no_time_driver_is_named() {
        let source = TestSource::new(Duration::ZERO, HOUR);
        let cache = source.cache().build().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let error = rt.block_on(cache.token()).unwrap_err();
        assert_eq!(error.kind(), crate::ErrorKind::InvalidConfig);
        assert!(error.to_string().contains("enable_time"), "{error}");
    }

    /// Issue #10: an endpoint that hands out the same cached token again and again (its
    /// remaining life shrinking) causes neither a burst of refreshes nor a token with less
    /// than the configured margin left.
    #[tokio::test(start_paused = true)]
    async fn a_half_used_token_does_not_shrink_the_margins() {
        let source = TestSource::new(Duration::ZERO, HOUR);
        let expires_at = Instant::now() + Duration::from_secs(600);
        source.set(Mode::Fixed(expires_at));
        let cache = source.cache().build().unwrap();
        let mut served = 0;
        while Instant::now() + Duration::from_millis(100) < expires_at {
            if let Ok(token) = cache.get().await {
                served += 1;
                assert!(
                    token.expires_at() - Instant::now() > Duration::from_secs(30),
                    "a token with {:?} left was handed out",
                    token.expires_at() - Instant::now()
                );
            }
            advance(Duration::from_millis(100)).await;
        }
        assert!(served > 5_000);
        // Fresh for the first 300 s; then refreshes paced by the backoff (1, 2, 4 … 60 s)
        // over the remaining 270 s of use: about a dozen, not one per halving of the life.
        assert!(source.calls() <= 15, "{} refreshes", source.calls());
    }

    #[test]
    fn no_runtime_is_an_error_not_a_panic() {
        let source = TestSource::new(Duration::ZERO, HOUR);
        let cache = source.cache().build().unwrap();
        match cache.lookup(|_| ()) {
            Lookup::Failed(e) => assert_eq!(e.kind(), crate::ErrorKind::Internal),
            _ => panic!("expected an error"),
        }
    }

    /// Random interleavings of callers, rejections and clock moves, over many seeds: at most one
    /// fetch ever runs, no caller gets an unusable token, and every caller finishes.
    #[test]
    fn randomised_interleavings() {
        for seed in 0..64u64 {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut rng = fastrand::Rng::with_seed(seed);
                let lifetime = Duration::from_secs(rng.u64(2..120));
                let source = TestSource::new(Duration::from_millis(rng.u64(0..2000)), lifetime);
                let cache = source.cache().build().unwrap();
                let min_validity = Duration::from_secs(30).min(lifetime / 10);
                let mut tasks = Vec::new();
                for i in 0..200u64 {
                    let cache = cache.clone();
                    let source = source.clone();
                    let (wait, reject, fail) =
                        (rng.u64(0..5_000), rng.u8(0..10) == 0, rng.u8(0..20) == 0);
                    tasks.push(tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(wait + i)).await;
                        if fail {
                            source.set(Mode::Fail(unavailable()));
                        } else if i % 7 == 0 {
                            source.set(Mode::Ok);
                        }
                        if let Ok(t) = cache.get().await {
                            assert!(
                                Instant::now() + min_validity
                                    < t.expires_at() + Duration::from_nanos(1)
                            );
                            if reject {
                                cache.invalidate(t.generation());
                            }
                        }
                    }));
                }
                let all = async {
                    for t in tasks {
                        t.await.unwrap();
                    }
                };
                tokio::time::timeout(Duration::from_secs(3600), all)
                    .await
                    .expect("every caller finishes");
                assert!(
                    source.max_running.load(Ordering::SeqCst) <= 1,
                    "seed {seed}"
                );
            });
        }
    }
}
