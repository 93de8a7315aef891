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

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::Error;
use crate::grant::{BoxFuture, TokenSource};
use crate::token::{AccessToken, Token};

mod background;
mod flight;
mod local;
pub(crate) mod policy;
mod stats;
#[cfg(test)]
mod tests;

use flight::{Launch, Waiter};
pub(crate) use policy::Entry;
use policy::{Config, Decision, Event, FlightId, Outcome, Policy, Published, Wait};
pub use stats::Stats;
use stats::{Counters, bump};

/// Which token a request carried, so that a rejection drops that token and no newer one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Generation(pub(crate) u64);

/// A token as the cache holds it: the secret, its generation and its expiry.
#[derive(Clone, Debug)]
pub struct CachedToken {
    pub(crate) access_token: AccessToken,
    pub(crate) generation: Generation,
    pub(crate) expires_at: Instant,
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

/// Waits for a token; boxed, as it sits beside a network round trip.
pub(crate) type TokenWait = BoxFuture<'static, Result<Arc<Entry>, Error>>;

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

pub(crate) struct Shared {
    /// This cache's number, for the threads' copies of its header (see `local`): never reused.
    id: u64,
    /// What the hot path serves: one atomic load, no lock. The policy's current token and
    /// [until when](Policy::serve_until) a request is served it without a decision, replaced
    /// under the lock after each decision that changes either.
    current: ArcSwapOption<Published>,
    /// Changes each time `current` does (after it does): the threads' copies of the header
    /// are taken anew when it moves.
    version: AtomicU64,
    /// The token source's [epoch](TokenSource::epoch) the published token belongs to, stored
    /// after the token: the hot path serves it only while the source's epoch is still this
    /// one, so that no request after a new sign-in carries the previous session's token.
    source_epoch: AtomicU64,
    core: Mutex<Core>,
    /// The policy's settings, for the shared store and the background refresher.
    config: Config,
    source: Box<dyn TokenSource>,
    /// The fleet's shared store, consulted by each refresh (never by a request).
    #[cfg(feature = "store")]
    fleet: Option<crate::store::fleet::Fleet>,
    background: background::Control,
    stats: Counters,
    /// Waits, replays and the token's expiry (feature `metrics`).
    metrics: crate::metrics::Metrics,
    /// How often the lock was taken (tests check the hot path takes none).
    #[cfg(test)]
    locks: AtomicU64,
}

/// What the lock guards: the policy, and the channel its live refresh answers on.
struct Core {
    policy: Policy,
    /// The token source's [epoch](TokenSource::epoch) the policy last heard of.
    source_epoch: u64,
    channel: Option<(FlightId, watch::Receiver<Option<Outcome>>)>,
}

/// Builds a [`TokenCache`]. Every setter takes and returns `Self` and states its default.
pub struct TokenCacheBuilder {
    source: Box<dyn TokenSource>,
    config: Config,
    background_refresh: bool,
    metrics_client: Option<String>,
    /// Whether the source is a user session, whose cache sets no expiry gauge.
    session: bool,
    #[cfg(feature = "store")]
    store: Option<Arc<dyn crate::store::TokenStore>>,
}

impl fmt::Debug for TokenCacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCacheBuilder")
            .field("config", &self.config)
            .field("background_refresh", &self.background_refresh)
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
        self.background_refresh = enabled;
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

    /// Shares the token with every process of the fleet through `store` (feature `store`):
    /// each refresh first looks there and adopts a token another process fetched, and only
    /// one process of the fleet fetches when none is there. Requests never touch the store,
    /// and trouble with it never fails one: the process then fetches for itself. See
    /// [`store`](crate::store). Default is none (each process fetches its own).
    ///
    /// The token source must say what it shares
    /// ([`TokenSource::shared_identity`]); [`build`](Self::build) refuses one that does not.
    #[cfg(feature = "store")]
    #[cfg_attr(docsrs, doc(cfg(feature = "store")))]
    pub fn shared_store(mut self, store: impl crate::store::TokenStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    #[cfg(feature = "store")]
    pub(crate) fn shared_store_arc(mut self, store: Arc<dyn crate::store::TokenStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The `client` label of the crate's [metrics](crate::metrics) (feature `metrics`), for a
    /// process with several caches of one client. Default is the source's
    /// [client id](TokenSource::client_id), or `unknown`.
    pub fn metrics_client(mut self, label: impl Into<String>) -> Self {
        self.metrics_client = Some(label.into());
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
    /// [shared identity](TokenSource::shared_identity), or a shared store is set and
    /// `refresh_deadline` is under one second (a third of it, at most 10 s, is the fleet's
    /// lease, which a process whose holder died waits out).
    pub fn build(self) -> Result<TokenCache, Error> {
        if self.config.refresh_deadline.is_zero() {
            return Err(Error::invalid_config("refresh_deadline must not be zero"));
        }
        let mut metrics = crate::metrics::Metrics::new(
            self.metrics_client
                .as_deref()
                .or_else(|| self.source.client_id())
                .unwrap_or("unknown"),
        );
        if self.session {
            metrics = metrics.without_expiry_gauge();
        }
        #[cfg(feature = "store")]
        let fleet = match self.store {
            None => None,
            Some(store) => {
                let identity = self.source.shared_identity().ok_or_else(|| {
                    Error::invalid_config(
                        "shared_store: this token source cannot be shared (its \
                         `TokenSource::shared_identity` is None; a client secret from \
                         `client_secret_source` needs a `shared_store_key`)",
                    )
                })?;
                Some(
                    crate::store::fleet::Fleet::new(
                        store,
                        &identity,
                        crate::store::fleet::FleetConfig::for_refresh_deadline(
                            self.config.refresh_deadline,
                        )?,
                    )?
                    .with_metrics(metrics.clone()),
                )
            }
        };
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let shared = Arc::new(Shared {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            current: ArcSwapOption::empty(),
            version: AtomicU64::new(0),
            source_epoch: AtomicU64::new(self.source.epoch()),
            core: Mutex::new(Core {
                policy: Policy::new(self.config, fastrand::Rng::new()),
                source_epoch: self.source.epoch(),
                channel: None,
            }),
            config: self.config,
            source: self.source,
            #[cfg(feature = "store")]
            fleet,
            background: background::Control::new(self.background_refresh),
            stats: Counters::default(),
            metrics,
            #[cfg(test)]
            locks: AtomicU64::new(0),
        });
        if let Ok(runtime) = Handle::try_current() {
            background::spawn(&shared, &runtime);
        }
        Ok(TokenCache { shared })
    }
}

/// Whether `S` is a user's session, told apart by its type (the grant, or the grant in an
/// `Arc`).
pub(crate) fn is_user_session<S: 'static>() -> bool {
    use crate::grant::RefreshTokenGrant;
    use std::any::TypeId;
    let id = TypeId::of::<S>();
    id == TypeId::of::<RefreshTokenGrant>() || id == TypeId::of::<Arc<RefreshTokenGrant>>()
}

impl TokenCache {
    /// A builder over a token source, such as [`ClientCredentials`](crate::ClientCredentials).
    pub fn builder<S: TokenSource>(source: S) -> TokenCacheBuilder {
        Self::builder_boxed(Box::new(source), is_user_session::<S>())
    }

    pub(crate) fn builder_boxed(source: Box<dyn TokenSource>, session: bool) -> TokenCacheBuilder {
        TokenCacheBuilder {
            source,
            config: Config::default(),
            background_refresh: false,
            metrics_client: None,
            session,
            #[cfg(feature = "store")]
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
        let dropped = {
            let mut core = self.shared.lock();
            matches!(
                self.shared
                    .decide(&mut core, now, Event::Rejected { generation }),
                Decision::Dropped(true)
            )
        };
        if dropped {
            bump(&self.shared.stats.invalidations);
            self.shared.metrics.invalidation();
            tracing::debug!("token rejected by the service: dropped");
        } else {
            tracing::debug!("token rejection ignored: an older token, or within the throttle");
        }
        dropped
    }

    /// Drops the cached token if it is the one whose `Authorization` header value this is:
    /// [`invalidate`](Self::invalidate) for callers that kept the header rather than the
    /// generation.
    pub(crate) fn invalidate_token(&self, header: &http::HeaderValue) -> bool {
        let generation = match self.shared.current.load().as_deref() {
            Some(published) if published.entry.header.as_bytes() == header.as_bytes() => {
                published.entry.generation()
            }
            _ => return false,
        };
        self.invalidate(generation)
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        #[allow(unused_mut)]
        let mut stats = self.shared.stats.snapshot();
        #[cfg(feature = "store")]
        if let Some(fleet) = &self.shared.fleet {
            let f = fleet.stats();
            stats.adopted = f.adopted;
            stats.lease_fetches = f.lease_fetches;
            stats.store_fallbacks = f.fallbacks;
            stats.token_requests = f.lease_fetches + f.fallbacks;
        }
        stats
    }

    pub(crate) fn count_replay(&self) {
        bump(&self.shared.stats.replays);
        self.shared.metrics.replay();
    }

    /// A rejection goes back to the caller (with no replay made, or the replay's).
    pub(crate) fn count_rejection_returned(&self) {
        bump(&self.shared.stats.rejections_returned);
        self.shared.metrics.rejection_returned();
    }

    /// The fresh token's header and generation, from this thread's copy: what a request puts
    /// on when it can, before it asks [`lookup`](Self::lookup). See `local`.
    #[inline]
    pub(crate) fn fresh_header(&self) -> Option<(http::HeaderValue, Generation)> {
        let header = local::fresh_header(&self.shared);
        if header.is_some() {
            self.shared.background.check(&self.shared);
        }
        header
    }

    /// What a request does about its token. A fresh token costs a clock read and one atomic
    /// load, and so does a usable one while a refresh runs or a backoff holds: the policy's
    /// first rows, read from what it published ([`Policy::serve_until`]). Anything else asks
    /// the policy, under the lock.
    #[inline]
    pub(crate) fn lookup<T>(&self, project: impl FnOnce(&Entry) -> T) -> Lookup<T> {
        let now = Instant::now();
        // The source's epoch before the token (see `Shared::source_epoch`).
        if self.shared.same_source() {
            let current = self.shared.current.load();
            if let Some(published) = current.as_deref()
                && now < published.serve_until
            {
                self.shared.background.check(&self.shared);
                return Lookup::Ready(project(&published.entry));
            }
        }
        self.shared.want(now, project)
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

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Core> {
        #[cfg(test)]
        self.locks.fetch_add(1, Ordering::Relaxed);
        // No code panics while holding the lock, but a poisoned lock must not become a panic
        // on every request.
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Which token is current: read before the token itself (see `local`).
    #[inline]
    fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Whether the published token still belongs to the source's credentials (no new sign-in
    /// since). Read before the token.
    #[inline]
    fn same_source(&self) -> bool {
        self.source_epoch.load(Ordering::Acquire) == self.source.epoch()
    }

    /// Asks the policy, and publishes what changed for the hot path: the current token and
    /// until when it is served without a decision, in one object. Called with the lock held.
    fn decide(&self, core: &mut Core, now: Instant, event: Event) -> Decision {
        // A new sign-in first: the policy then forgets the previous session's token and drops
        // what its refresh in flight brings back.
        let source_epoch = self.source.epoch();
        let changed = source_epoch != core.source_epoch;
        if changed {
            core.source_epoch = source_epoch;
            core.policy.decide(now, Event::SourceChanged);
        }
        let decision = core.policy.decide(now, event);
        let next = core.policy.serve_until(now);
        let published = self.current.load();
        let (same_token, same) = match (published.as_deref(), next) {
            (Some(p), Some((entry, until))) => {
                let same_token = Arc::ptr_eq(&p.entry, entry);
                (same_token, same_token && p.serve_until == until)
            }
            (None, None) => (true, true),
            _ => (false, false),
        };
        if !same {
            self.current.store(next.map(|(entry, serve_until)| {
                Arc::new(Published {
                    entry: Arc::clone(entry),
                    serve_until,
                })
            }));
            self.version.fetch_add(1, Ordering::Release);
            if let (false, Some((entry, _))) = (same_token, next) {
                self.metrics
                    .expiry(entry.token.expires_at.saturating_duration_since(now));
            }
        }
        if changed {
            // After the token: a request that sees the new epoch sees what replaced the token.
            self.source_epoch.store(source_epoch, Ordering::Release);
        }
        decision
    }

    /// The token published for the hot path, if it is usable now.
    fn usable(&self, now: Instant) -> Option<Arc<Entry>> {
        let published = self.current.load();
        let entry = &published.as_deref()?.entry;
        entry.usable_at(now).then(|| Arc::clone(entry))
    }

    /// A request with no token it can use at once: the policy decides.
    #[cold]
    #[inline(never)]
    fn want<T>(self: &Arc<Self>, now: Instant, project: impl FnOnce(&Entry) -> T) -> Lookup<T> {
        match self.want_step(now) {
            Step::Ready(entry) => Lookup::Ready(project(&entry)),
            Step::Wait(waiter) => {
                bump(&self.stats.waited);
                self.metrics.wait();
                Lookup::Wait(Box::pin(Arc::clone(self).wait(waiter)))
            }
            Step::Failed(error) => Lookup::Failed(error),
            Step::Sleep(_) => Lookup::Failed(unexpected_step()),
        }
    }

    /// The policy's answer to a request, carried out.
    fn want_step(self: &Arc<Self>, now: Instant) -> Step {
        // Whether this caller's runtime can run a refresh and time a wait, found out before
        // the lock is taken: a runtime that cannot is that caller's problem, not the
        // endpoint's, and the policy paces nobody for it.
        let (unable, runtime) = match flight::runtime_with_timers() {
            Ok(runtime) => {
                self.background.resume(self, &runtime);
                (None, Some(runtime))
            }
            Err(error) => (Some(error), None),
        };
        self.carry_out(now, Event::Want { unable }, runtime)
    }

    /// Asks the policy about a request or the background refresher and carries the decision
    /// out: the one place a refresh is launched. `runtime` (which has timers) runs the refresh
    /// a decision starts; the policy starts none for a caller without one. The refresh is
    /// spawned once the lock is released (a runtime that is shutting down drops the task on
    /// the spot, and its drop takes the lock to report that): a caller that would wait for a
    /// refresh its runtime refused is told the runtime is shutting down.
    fn carry_out(self: &Arc<Self>, now: Instant, event: Event, runtime: Option<Handle>) -> Step {
        // (`decide` tells the policy of a new sign-in first.)
        let mut core = self.lock();
        // A step now, or a wait for the refresh in flight: queued once a start is launched.
        enum Then {
            Step(Step),
            Wait(Wait),
        }
        let (start, then) = match self.decide(&mut core, now, event) {
            Decision::Serve(entry) => (None, Then::Step(Step::Ready(entry))),
            // Nobody waits on it.
            Decision::ServeAndStart(entry, start) => (Some(start), Then::Step(Step::Ready(entry))),
            Decision::Wait(wait) => (None, Then::Wait(wait)),
            Decision::StartAndWait(start, wait) => (Some(start), Then::Wait(wait)),
            Decision::Sleep(until) => (None, Then::Step(Step::Sleep(until))),
            Decision::Fail(error) => (None, Then::Step(Step::Failed(error))),
            other => (None, Then::Step(Step::Failed(unexpected(&other)))),
        };
        let launch = match (start, runtime) {
            (None, _) => None,
            (Some(start), Some(runtime)) => {
                let (tx, rx) = watch::channel(None);
                core.channel = Some((start.flight, rx));
                Some(Launch::new(runtime, Arc::clone(self), tx, start))
            }
            // The policy starts nothing for a caller that cannot run it: never here.
            (Some(_), None) => return Step::Failed(unexpected_step()),
        };
        let step = match then {
            Then::Step(step) => step,
            Then::Wait(wait) => core.waiter(wait),
        };
        drop(core);
        if let Some(launch) = launch
            && !launch.spawn()
            && matches!(step, Step::Wait(_))
        {
            return Step::Failed(shutting_down());
        }
        step
    }

    /// A refresh began to run.
    fn count_refresh(&self, ahead: bool) {
        bump(&self.stats.refreshes);
        if ahead {
            bump(&self.stats.refresh_ahead);
        }
    }

    /// Carries a refresh's end to the policy, then to those who waited for it.
    fn settle(&self, tx: &watch::Sender<Option<Outcome>>, event: Event) {
        let now = Instant::now();
        let decision = {
            let mut core = self.lock();
            self.decide(&mut core, now, event)
        };
        let outcome = match decision {
            Decision::Settled { outcome, .. } => outcome,
            other => Outcome::Failed(unexpected(&other)),
        };
        match &outcome {
            Outcome::Token(entry) => tracing::debug!(
                generation = entry.generation().0,
                lifetime_secs = entry
                    .token
                    .expires_at
                    .saturating_duration_since(now)
                    .as_secs(),
                "token refreshed"
            ),
            Outcome::Failed(error) => {
                bump(&self.stats.token_failures);
                self.metrics
                    .refresh_failure(crate::metrics::error_outcome(error));
                tracing::warn!(%error, "token refresh failed");
            }
            Outcome::Abandoned => {
                tracing::debug!("token refresh abandoned: its runtime went away");
            }
        }
        tx.send_replace(Some(outcome));
    }

    /// One refresh's token: from the fleet's shared store when there is one, else from the
    /// source; what the source records carries this cache's metrics label.
    fn fetch(&self, rejected: Option<AccessToken>) -> BoxFuture<'_, Result<Token, Error>> {
        self.metrics.scoped(|| self.fetch_unlabelled(rejected))
    }

    fn fetch_unlabelled(
        &self,
        rejected: Option<AccessToken>,
    ) -> BoxFuture<'_, Result<Token, Error>> {
        #[cfg(feature = "store")]
        if let Some(fleet) = &self.fleet {
            let config = &self.config;
            let margins = crate::store::fleet::Margins {
                refresh_ahead: config.refresh_ahead,
                min_validity: config.min_validity,
            };
            return Box::pin(async move {
                fleet.fetch(&*self.source, margins, rejected.as_ref()).await
            });
        }
        drop(rejected);
        self.source.fetch()
    }

    /// Waits for a refresh's outcome. A token that is no longer usable when this waiter wakes
    /// (the clock moved on), or a refresh its runtime abandoned, sends the waiter back to the
    /// policy, a bounded number of times.
    async fn wait(self: Arc<Self>, mut waiter: Waiter) -> Result<Arc<Entry>, Error> {
        for _ in 0..3 {
            match waiter.outcome().await {
                Outcome::Token(entry) if entry.usable_at(Instant::now()) => return Ok(entry),
                Outcome::Failed(error) => {
                    // A usable token may have come meanwhile (a late refresh's): it serves.
                    return self.usable(Instant::now()).ok_or(error);
                }
                Outcome::Token(_) | Outcome::Abandoned => {}
            }
            match self.want_step(Instant::now()) {
                Step::Ready(entry) => return Ok(entry),
                Step::Wait(next) => waiter = next,
                Step::Failed(error) => return Err(error),
                Step::Sleep(_) => return Err(unexpected_step()),
            }
        }
        Err(Error::internal(
            "no token stayed usable long enough to be handed out",
        ))
    }
}

/// A decision for a request or the background refresher, as the cache carries it out.
enum Step {
    Ready(Arc<Entry>),
    Wait(Waiter),
    Failed(Error),
    /// The background refresher sleeps until then.
    Sleep(Instant),
}

impl Core {
    /// A place in the queue for the live refresh's outcome.
    fn waiter(&self, wait: Wait) -> Step {
        match &self.channel {
            Some((flight, rx)) if *flight == wait.flight => {
                let limit = self.policy.config().refresh_deadline;
                Step::Wait(Waiter::new(rx.clone(), wait.until, limit))
            }
            _ => Step::Failed(Error::internal("the token refresh to wait for is gone")),
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
        .expect("a test runtime")
}

/// The error of a request whose runtime dropped the refresh it started, unrun.
fn shutting_down() -> Error {
    Error::internal("the Tokio runtime is shutting down: no token refresh can run on it")
}

/// A step the cache does not take for that caller (a request told to sleep, a refresh to
/// start with no runtime): an internal error, never a panic.
fn unexpected_step() -> Error {
    Error::internal("the token cache's policy made an unexpected decision")
}

/// A decision the policy does not make for that event: an internal error, never a panic.
fn unexpected(decision: &Decision) -> Error {
    tracing::error!(
        ?decision,
        "the token cache's policy made an unexpected decision"
    );
    Error::internal("the token cache's policy made an unexpected decision")
}
