//! The coordination of one refresh with the other processes of a fleet, through a
//! [`TokenStore`]: adopt a stored token, or elect one fetcher by a lease and wait for it.
//!
//! The cache calls [`Fleet::fetch`] in place of [`TokenSource::fetch`], once per refresh (it
//! keeps refreshes single-flight inside the process). What happens:
//!
//! 1. A rejected token (the refresh follows a 401) is deleted from the store, only if it is
//!    still the one stored (compared by its tag).
//! 2. The stored token is read. One that opens and has enough life left, judged by margins
//!    computed from its original lifetime, is adopted. One that does not open (garbage, another
//!    format, a rotated secret) is a miss, and is deleted if it is still exactly that value
//!    (so a valid token written since is left alone), so that a fetched token can take its
//!    place.
//! 3. Otherwise the lease is tried. Its holder reads once more (the token may have been stored
//!    between the read and the lease), fetches while a watchdog extends the lease every third of
//!    its time to live ([`TokenStore::extend_lease`]), stores the token if it expires later than
//!    the stored one, and releases the lease. A refresh dropped while the store may hold its
//!    lease (mid-`SET NX`, mid-fetch) releases it from a task of its own. A fetch error the endpoint answered with (a 429 or a
//!    5xx) is recorded as the fleet's refusal (see [`Refusal`]); then the lease is released and
//!    the error returned. While a refusal holds, every process (before the lease, and a new
//!    holder before its fetch) returns that error without fetching.
//! 4. The others wait for the write of the token ([`TokenStore::watch`]), polling once a second
//!    (jittered) as a fallback, or, when the store cannot notify, after 10 ms, the pause
//!    doubling to 50 ms (jittered): they adopt the token once it is stored, and
//!    try the lease on each poll, so they take over as soon as the holder released it after a
//!    failure or its lease expired (it died: nobody extends it, and it lapses within one time
//!    to live). They wait as long as the lease is held, however slow the holder's fetch: the
//!    cache's refresh deadline ends a wait (`max_wait`, the same deadline, bounds it for a
//!    caller without one).
//!
//! The store never makes the refresh fail: any store error or timeout falls back to fetching for
//! this process, warning once per outage; the token it fetches is stored for the others from a
//! task of its own.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ring::rand::{SecureRandom as _, SystemRandom};
use tokio::time::Instant;
use tower::BoxError;

use super::TokenStore;
use super::seal::Sealer;
use crate::error::Error;
use crate::grant::{BoxFuture, SharedIdentity, TokenSource};
use crate::token::{AccessToken, Token};

/// How the fleet coordinates: derived from the cache's refresh deadline by
/// [`for_refresh_deadline`](FleetConfig::for_refresh_deadline).
#[derive(Clone, Copy, Debug)]
pub(crate) struct FleetConfig {
    /// How long a lease lasts unless its holder extends it: a dead holder is replaced after
    /// it. A third of the refresh deadline, at most [`MAX_LEASE`] (10 s of 30 s). A live holder
    /// extends it to this again every third of it while its fetch runs (see
    /// [`TokenStore::extend_lease`]), however slow the token endpoint.
    pub(crate) lease_ttl: Duration,
    /// The first pause of a waiting process before it polls: the pauses double from it, with
    /// jitter, so that a token fetched in tens of milliseconds is seen soon after it is stored,
    /// and a long wait (a holder that died) costs few reads. 10 ms.
    pub(crate) poll_min: Duration,
    /// The longest pause between two polls when the store cannot notify writes. 50 ms: a
    /// waiting process sees the token at most about that long after it is stored.
    pub(crate) poll_max: Duration,
    /// The pause between two polls when the store notifies writes ([`TokenStore::watch`]): a
    /// waiting process is woken by the write, and polls this rarely (jittered down to three
    /// quarters of it) for what a notification does not tell (a lease released after a
    /// failure, a holder that died) or lost. 1 s.
    pub(crate) poll_fallback: Duration,
    /// The most one store operation may take, whatever the store's own timeout (which should
    /// be shorter): a tenth of the refresh deadline, at most 3 s.
    pub(crate) store_timeout: Duration,
    /// The most a process spends reading the store, waiting for another's fetch and trying
    /// the lease before it fetches for itself: the refresh deadline. A process waits as long
    /// as the lease is held (its holder extends it while it fetches, and a dead holder's lease
    /// lapses within one time to live), so the cache's own deadline ends a wait first; this
    /// bounds the wait of a caller without one.
    pub(crate) max_wait: Duration,
    /// The longest a holder extends its lease: the refresh deadline, after which the cache
    /// has given up on its fetch anyway.
    pub(crate) hold_max: Duration,
    /// The fleet's pause after its first refused fetch (a 429 or a 5xx without a longer
    /// `Retry-After`): 1 s, doubling with each refusal in a row.
    pub(crate) refusal_min: Duration,
    /// The longest pause the fleet takes after a refusal, whatever `Retry-After` asked or a
    /// record in the store says; also how long a process honours refusals in a row before it
    /// fetches for itself once: 60 s, the cache's longest backoff.
    pub(crate) refusal_max: Duration,
}

/// The shortest refresh deadline a shared store works with: a third of it is the lease.
pub(crate) const MIN_REFRESH_DEADLINE: Duration = Duration::from_secs(1);

/// The longest lease (before its holder extends it): a dead holder is replaced within it,
/// however long the refresh deadline (`Duration::MAX` included, which Redis would refuse as a
/// `PX`).
pub(crate) const MAX_LEASE: Duration = Duration::from_secs(10);

/// The longest cap on one store operation.
const MAX_STORE_TIMEOUT: Duration = Duration::from_secs(3);

impl FleetConfig {
    /// The coordination for a cache whose refreshes must end within `refresh_deadline`: the
    /// lease is a third of it (at most 10 s), extended while its holder fetches, so that a
    /// process whose holder died takes the lease over with two thirds of its deadline left.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`](crate::ErrorKind::InvalidConfig) when `refresh_deadline` is under
    /// one second.
    pub(crate) fn for_refresh_deadline(refresh_deadline: Duration) -> Result<Self, Error> {
        if refresh_deadline < MIN_REFRESH_DEADLINE {
            return Err(Error::invalid_config(
                "with a shared store, refresh_deadline must be at least 1 second (a third of it \
                 is the fleet's lease, which a process whose holder died waits out)",
            ));
        }
        Ok(Self {
            lease_ttl: (refresh_deadline / 3).min(MAX_LEASE),
            poll_min: Duration::from_millis(10),
            poll_max: Duration::from_millis(50),
            poll_fallback: Duration::from_secs(1),
            store_timeout: (refresh_deadline / 10).min(MAX_STORE_TIMEOUT),
            max_wait: refresh_deadline,
            hold_max: refresh_deadline,
            refusal_min: Duration::from_secs(1),
            refusal_max: Duration::from_secs(60),
        })
    }
}

/// The cache's margins, as configured (not yet scaled to a lifetime).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Margins {
    pub(crate) refresh_ahead: Duration,
    pub(crate) min_validity: Duration,
}

/// What the fleet did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FleetStats {
    /// Refreshes that adopted a stored token: no token request.
    pub(crate) adopted: u64,
    /// Token requests made as the lease holder, for the fleet.
    pub(crate) lease_fetches: u64,
    /// Token requests made without the store: it failed or was too slow, or waiting for
    /// another process took too long.
    pub(crate) fallbacks: u64,
    /// Refreshes that returned the refusal another process recorded, without a token request.
    pub(crate) refusals_honoured: u64,
}

#[derive(Default)]
struct FleetCounters {
    adopted: AtomicU64,
    lease_fetches: AtomicU64,
    fallbacks: AtomicU64,
    refusals_honoured: AtomicU64,
}

/// Why the coordination gave up; the process then fetches for itself.
enum Trouble {
    Store(BoxError),
    WaitedTooLong,
}

impl From<BoxError> for Trouble {
    fn from(error: BoxError) -> Self {
        Trouble::Store(error)
    }
}

/// How a process's wait for the fleet ended.
enum Elected {
    /// A stored token it may adopt.
    Adopted(Token),
    /// It holds the lease: it fetches for the fleet. With the refusal record as read just
    /// before it took the lease at its first try (else it reads it again).
    Holder(Option<RefusalState>),
    /// Another process's fetch was refused a moment ago: this error, without a fetch.
    Refused(Error),
}

/// What the refusal record says now.
#[derive(Default)]
struct RefusalState {
    /// The error to return without fetching, while a recorded refusal holds.
    holds: Option<Error>,
    /// The pause of the last refusal, remembered for a while after it ended.
    last_pause: Option<Duration>,
}

/// One process's side of the shared store.
pub(crate) struct Fleet {
    store: Arc<dyn TokenStore>,
    sealer: Sealer,
    config: FleetConfig,
    /// Set while the store fails, so that an outage is logged once.
    outage: AtomicBool,
    /// Since when this process has honoured other processes' refusals without fetching itself.
    honouring_since: Mutex<Option<Instant>>,
    stats: FleetCounters,
    metrics: crate::metrics::Metrics,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("key", &self.sealer.key_name())
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// The fleet side of `identity` over `store`.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`](crate::ErrorKind::InvalidConfig) when the identity has no key
    /// material.
    pub(crate) fn new(
        store: Arc<dyn TokenStore>,
        identity: &SharedIdentity,
        config: FleetConfig,
    ) -> Result<Self, Error> {
        Ok(Self {
            store,
            sealer: Sealer::new(identity)?,
            config,
            outage: AtomicBool::new(false),
            honouring_since: Mutex::new(None),
            stats: FleetCounters::default(),
            metrics: crate::metrics::Metrics::default(),
        })
    }

    /// Records adoptions and fallbacks through `metrics` too (feature `metrics`).
    pub(crate) fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The counters so far.
    pub(crate) fn stats(&self) -> FleetStats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FleetStats {
            adopted: load(&self.stats.adopted),
            lease_fetches: load(&self.stats.lease_fetches),
            fallbacks: load(&self.stats.fallbacks),
            refusals_honoured: load(&self.stats.refusals_honoured),
        }
    }

    /// One refresh of this process: adopt the fleet's token, or fetch it for the fleet, or,
    /// when the store fails, fetch for this process alone (and store that token for the
    /// others, from a task of its own).
    ///
    /// # Errors
    ///
    /// Only the token source's: store trouble never surfaces.
    pub(crate) async fn fetch(
        &self,
        source: &dyn TokenSource,
        margins: Margins,
        rejected: Option<&AccessToken>,
    ) -> Result<Token, Error> {
        let rejected = rejected.map(AccessToken::secret);
        match self.coordinate(source, margins, rejected).await {
            Ok(result) => result,
            Err(trouble) => {
                match trouble {
                    Trouble::WaitedTooLong => tracing::debug!(
                        max_wait_ms = self.config.max_wait.as_millis() as u64,
                        "waited too long for another process's token: fetching for this one"
                    ),
                    Trouble::Store(error) => tracing::debug!(
                        %error,
                        "the shared store failed: fetching for this process"
                    ),
                }
                self.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
                self.metrics.fallback();
                self.fetched_myself();
                let started = Instant::now();
                let result = source.fetch().await;
                if let Ok(token) = &result {
                    // Shared all the same: the others adopt it rather than fetch their own.
                    self.publish_detached(token, started);
                }
                result
            }
        }
    }

    /// Everything but the fallback. The outer `Err` is store trouble; the inner result is final.
    async fn coordinate(
        &self,
        source: &dyn TokenSource,
        margins: Margins,
        rejected: Option<&str>,
    ) -> Result<Result<Token, Error>, Trouble> {
        // One id per lease, never per process: a late refresh of this process, whose lease
        // lapsed and was taken by a newer refresh of the same process, must not release it.
        // Dropped while the store may hold it (this refresh cancelled), it is released.
        let mut lease = Lease::new(self);
        let elected = tokio::time::timeout(
            self.config.max_wait,
            self.elect(&mut lease, margins, rejected),
        )
        .await
        .map_err(|_| Trouble::WaitedTooLong)??;
        match elected {
            Elected::Adopted(token) => Ok(Ok(self.adopted(token))),
            Elected::Refused(error) => Ok(Err(error)),
            Elected::Holder(refusal) => {
                let result = self
                    .hold(&mut lease, source, margins, rejected, refusal)
                    .await;
                lease.release(self).await;
                result
            }
        }
    }

    /// Adopts the stored token, or takes the lease, waiting for another process's fetch
    /// meanwhile: for as long as another holds the lease.
    async fn elect(
        &self,
        lease: &mut Lease,
        margins: Margins,
        rejected: Option<&str>,
    ) -> Result<Elected, Trouble> {
        let name = self.sealer.key_name();
        if let Some(rejected) = rejected {
            let prefix = self.sealer.tag_prefix(rejected);
            if self
                .call(self.store.remove_if_prefix(name, &prefix))
                .await?
            {
                tracing::debug!("dropped the rejected token from the shared store");
            }
        }
        if let Some(token) = self.look(margins, rejected).await? {
            return Ok(Elected::Adopted(token));
        }
        let mut refusal = self.refusal().await?;
        if let Some(error) = refusal.holds.take() {
            return Ok(Elected::Refused(error));
        }
        let mut refusal = Some(refusal);
        let mut polls: u32 = 0;
        // Subscribed once the lease is found taken (once per process: later waits reuse the
        // subscription); a write before the subscription is found by the next poll.
        let mut seen = None;
        loop {
            // An error may hide a `SET NX` that ran and whose reply was lost: this process may
            // hold the lease while it fetches alone. The lease is then released as it is
            // dropped (compare-and-delete on our id, so no one else's lease), from a task of
            // its own, without making this refresh wait.
            if lease.try_take(self).await? {
                return Ok(Elected::Holder(refusal));
            }
            // Read again by the holder, after the wait.
            refusal = None;
            if polls == 0 {
                seen = self.watch(name, None, Duration::ZERO).await;
                // The holder may have written before the subscription.
                if let Some(token) = self.look(margins, rejected).await? {
                    return Ok(Elected::Adopted(token));
                }
            }
            seen = match seen {
                Some(n) => {
                    let max =
                        u64::try_from(self.config.poll_fallback.as_micros()).unwrap_or(u64::MAX);
                    let pause = Duration::from_micros(fastrand::u64(max / 4 * 3..=max));
                    self.watch(name, Some(n), pause).await
                }
                None => None,
            };
            if seen.is_none() {
                tokio::time::sleep(self.poll_pause(polls)).await;
            }
            polls = polls.saturating_add(1);
            if let Some(token) = self.look(margins, rejected).await? {
                return Ok(Elected::Adopted(token));
            }
        }
    }

    /// The lease holder's part: look once more, then fetch (extending the lease meanwhile)
    /// and store. The caller releases the lease.
    async fn hold(
        &self,
        lease: &mut Lease,
        source: &dyn TokenSource,
        margins: Margins,
        rejected: Option<&str>,
        refusal: Option<RefusalState>,
    ) -> Result<Result<Token, Error>, Trouble> {
        if let Some(token) = self.look(margins, rejected).await? {
            return Ok(Ok(self.adopted(token)));
        }
        // The holder before us may have been refused: then so are we, without a fetch. (Read
        // just before the lease when it was taken at the first try.)
        let refusal = match refusal {
            Some(state) => state,
            None => self.refusal().await?,
        };
        if let Some(error) = refusal.holds {
            return Ok(Err(error));
        }
        let started = Instant::now();
        self.stats.lease_fetches.fetch_add(1, Ordering::Relaxed);
        self.fetched_myself();
        let result = self.keep_lease(lease, source.fetch()).await;
        match &result {
            Ok(token) => {
                self.publish(token, started).await;
                if refusal.last_pause.is_some() {
                    // The endpoint answers again: the next refusal starts the pauses over.
                    let refused = self.sealer.refused_name();
                    let _ = self.call(self.store.remove_if_prefix(refused, b"")).await;
                }
            }
            Err(error) => self.record_refusal(error, refusal.last_pause).await,
        }
        Ok(result)
    }

    /// Runs `work` (the holder's fetch) while keeping `lease` alive: extended to its full time
    /// to live every third of it, so that a fetch slower than the lease never lets a second
    /// holder in, while a holder that dies stops extending and its lease lapses within one time
    /// to live. It stops extending once the lease is no longer this holder's (or the store
    /// cannot extend leases), and after `hold_max`.
    async fn keep_lease<T>(&self, lease: &Lease, work: impl Future<Output = T>) -> T {
        let ttl = self.config.lease_ttl;
        let every = (ttl / 3).max(Duration::from_millis(1));
        let until = Instant::now().checked_add(self.config.hold_max);
        let watchdog = async {
            loop {
                tokio::time::sleep(every).await;
                if until.is_some_and(|until| Instant::now() >= until) {
                    break;
                }
                match self
                    .call(self.store.extend_lease(&lease.name, &lease.id, ttl))
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::debug!("the lease is no longer this process's: not extended");
                        break;
                    }
                    // Logged by `call`; tried again, the lease may lapse meanwhile.
                    Err(_) => {}
                }
            }
            std::future::pending::<()>().await;
        };
        let mut work = std::pin::pin!(work);
        tokio::select! {
            out = &mut work => out,
            () = watchdog => work.await,
        }
    }

    /// Waits up to `pause` for a write to `key` after the `seen`-th (with `None`, subscribes
    /// and returns at once): the count of writes, or `None` when the store cannot notify
    /// (then the caller polls). Not an outage: a store without notifications is polled.
    async fn watch(&self, key: &str, seen: Option<u64>, pause: Duration) -> Option<u64> {
        let cap = pause.saturating_add(self.config.store_timeout);
        match tokio::time::timeout(cap, self.store.watch(key, seen, pause)).await {
            Ok(Ok(n)) => Some(n),
            Ok(Err(error)) => {
                tracing::trace!(%error, "no notifications from the shared store: polling");
                None
            }
            Err(_) => None,
        }
    }

    /// Reads the fleet's refusal record. A record that does not verify is ignored. A process
    /// honours refusals in a row for at most `refusal_max`, then fetches itself once: a record
    /// stored again by whoever can write the store cannot stop the fleet for longer.
    async fn refusal(&self) -> Result<RefusalState, Trouble> {
        let name = self.sealer.refused_name();
        let Some(stored) = self.call(self.store.load(name)).await? else {
            self.fetched_myself();
            return Ok(RefusalState::default());
        };
        let Some(refusal) = Refusal::decode(stored.value(), &self.sealer) else {
            tracing::debug!("the shared store holds a refusal record that does not verify");
            self.fetched_myself();
            return Ok(RefusalState::default());
        };
        let pause = refusal.pause.min(self.config.refusal_max);
        let age = refusal.age();
        if age >= pause.saturating_mul(2) {
            // Made longer ago than a record lives: stored again by whoever can write the
            // store, or a clock far ahead of the writer's. Nothing to honour or remember.
            tracing::debug!("the shared store holds an old refusal record: ignored");
            self.fetched_myself();
            return Ok(RefusalState::default());
        }
        let mut state = RefusalState {
            holds: None,
            last_pause: Some(pause),
        };
        let left = stored
            .ttl()
            .saturating_sub(refusal.pause)
            .min(pause.saturating_sub(age));
        if left.is_zero() {
            self.fetched_myself();
            return Ok(state);
        }
        {
            let mut since = self
                .honouring_since
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let first = *since.get_or_insert_with(Instant::now);
            if first.elapsed() >= self.config.refusal_max {
                tracing::debug!("honoured the fleet's refusals for too long: fetching once");
                return Ok(state);
            }
        }
        self.stats.refusals_honoured.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            left_ms = left.as_millis() as u64,
            "the token endpoint refused another process of the fleet: backing off with it"
        );
        state.holds = Some(refusal.error(left));
        Ok(state)
    }

    /// Records a refused fetch for the fleet: the pause is what `Retry-After` asked (at most
    /// `refusal_max`), and at least the last pause doubled (`refusal_min` at first).
    async fn record_refusal(&self, error: &Error, last_pause: Option<Duration>) {
        let Some((rate_limited, status)) = Refusal::of(error) else {
            return;
        };
        let max = self.config.refusal_max;
        let backoff = last_pause
            .map_or(self.config.refusal_min, |p| p.saturating_mul(2))
            .min(max);
        let pause = error
            .retry_after()
            .map_or(backoff, |asked| asked.min(max).max(backoff));
        let refusal = Refusal::new(rate_limited, status, pause);
        let name = self.sealer.refused_name();
        let value = refusal.encode(&self.sealer);
        let _ = self
            .call(
                self.store
                    .save_if_longer(name, value.into(), pause.saturating_mul(2)),
            )
            .await;
        tracing::debug!(
            pause_ms = pause.as_millis() as u64,
            "the token endpoint refused the fleet's fetch: the fleet pauses"
        );
    }

    /// This process sends a token request itself, or no refusal holds: the refusals it
    /// honoured in a row, if any, end.
    fn fetched_myself(&self) {
        *self
            .honouring_since
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }

    /// Reads the stored token: `Some` when it can be adopted.
    async fn look(
        &self,
        margins: Margins,
        rejected: Option<&str>,
    ) -> Result<Option<Token>, Trouble> {
        let name = self.sealer.key_name();
        // The remaining life is counted from before the read: never later than the truth.
        let asked_at = Instant::now();
        let Some(stored) = self.call(self.store.load(name)).await? else {
            return Ok(None);
        };
        let Some(opened) = self.sealer.open(stored.value()) else {
            tracing::debug!("the shared store holds an entry that does not open: a miss");
            // Exactly this value: a valid entry written since is left alone.
            self.call(self.store.remove_if_equal(name, stored.value()))
                .await?;
            return Ok(None);
        };
        if rejected == Some(opened.token.as_str()) {
            // Stored again by a process that fetched it before the rejection.
            let prefix = self.sealer.tag_prefix(&opened.token);
            self.call(self.store.remove_if_prefix(name, &prefix))
                .await?;
            return Ok(None);
        }
        // The store's time to live, capped by the sealed expiry: whoever can write the store
        // cannot extend a token's life by storing its value again with a longer one, and a
        // replica promoted with a skewed clock is bounded the same way.
        let ttl = stored.ttl().min(opened.sealed_remaining());
        let lifetime = opened.lifetime;
        if !adoptable(ttl, lifetime.max(ttl), margins) {
            return Ok(None);
        }
        let Ok(access_token) = AccessToken::new(opened.token) else {
            return Ok(None);
        };
        let Some(expires_at) = asked_at.checked_add(ttl) else {
            return Ok(None);
        };
        Ok(Some(
            Token::new(access_token, expires_at).with_lifetime(lifetime.max(ttl)),
        ))
    }

    fn adopted(&self, token: Token) -> Token {
        self.fetched_myself();
        self.stats.adopted.fetch_add(1, Ordering::Relaxed);
        self.metrics.adoption();
        tracing::debug!(
            remaining_secs = token
                .expires_at()
                .saturating_duration_since(Instant::now())
                .as_secs(),
            "adopted the fleet's token from the shared store"
        );
        token
    }

    /// Stores a fetched token for the others, unless a longer-lived one is stored.
    async fn publish(&self, token: &Token, started: Instant) {
        let Some((sealed, remaining)) = self.seal(token, started) else {
            return;
        };
        let name = self.sealer.key_name();
        match self
            .call(self.store.save_if_longer(name, sealed, remaining))
            .await
        {
            Ok(true) => tracing::debug!("stored the token for the fleet"),
            Ok(false) => tracing::debug!("a longer-lived token is stored already: kept it"),
            // Logged by `call`; the token is good for this process anyway.
            Err(_) => {}
        }
    }

    /// A fetched token sealed for the store, and its remaining life (`None` when it has
    /// none left or does not seal).
    fn seal(&self, token: &Token, started: Instant) -> Option<(bytes::Bytes, Duration)> {
        let now = Instant::now();
        let remaining = token.expires_at().saturating_duration_since(now);
        if remaining.is_zero() {
            return None;
        }
        let lifetime = token
            .lifetime()
            .unwrap_or_else(|| token.expires_at().saturating_duration_since(started))
            .max(remaining);
        match self
            .sealer
            .seal(token.access_token().secret(), lifetime, remaining)
        {
            Ok(sealed) => Some((sealed, remaining)),
            Err(error) => {
                tracing::warn!(%error, "could not seal the token for the shared store");
                None
            }
        }
    }

    /// Stores a token this process fetched for itself, from a task of its own: the refresh
    /// does not wait for a store that just failed it.
    fn publish_detached(&self, token: &Token, started: Instant) {
        let Some((sealed, remaining)) = self.seal(token, started) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = Arc::clone(&self.store);
        let name = self.sealer.key_name().to_owned();
        let cap = self.config.store_timeout;
        runtime.spawn(async move {
            let saved = tokio::time::timeout(cap, store.save_if_longer(&name, sealed, remaining));
            if let Ok(Ok(true)) = saved.await {
                tracing::debug!("stored the token this process fetched for itself, for the fleet");
            }
        });
    }

    /// One store operation under the fleet's cap; notes outages and recoveries.
    async fn call<T>(&self, op: BoxFuture<'_, Result<T, BoxError>>) -> Result<T, BoxError> {
        let cap = self.config.store_timeout;
        let result = match tokio::time::timeout(cap, op).await {
            Ok(result) => result,
            Err(_) => Err(format!("the shared token store did not answer within {cap:?}").into()),
        };
        match &result {
            Ok(_) => {
                if self.outage.load(Ordering::Relaxed) && self.outage.swap(false, Ordering::AcqRel)
                {
                    tracing::info!("the shared token store answers again");
                }
            }
            Err(error) => {
                if !self.outage.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        %error,
                        "the shared token store failed: fetching tokens without it until it answers"
                    );
                } else {
                    tracing::debug!(%error, "the shared token store failed again");
                }
            }
        }
        result
    }

    /// The pause before poll number `n`: `poll_min` doubling up to `poll_max`, drawn from the
    /// upper half of that ceiling so that waiting processes spread out.
    fn poll_pause(&self, n: u32) -> Duration {
        let ceiling = self
            .config
            .poll_min
            .saturating_mul(1u32.checked_shl(n.min(16)).unwrap_or(u32::MAX))
            .min(self.config.poll_max.max(self.config.poll_min));
        let max = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
        // Never spin, whatever the configuration.
        Duration::from_micros(fastrand::u64(max / 2..=max)).max(Duration::from_millis(1))
    }
}

/// This refresh's lease: its random id, and whether the store may hold it under that id. A
/// lease dropped while the store may hold it (the refresh cancelled mid-`SET NX` or
/// mid-fetch by a timeout, the refresh deadline or a runtime shutting down, or a `SET NX`
/// whose reply was lost) is released from a task of its own (compare-and-delete on its id),
/// so that the others do not wait out its time to live.
struct Lease {
    store: Arc<dyn TokenStore>,
    name: String,
    id: String,
    cap: Duration,
    ttl: Duration,
    may_hold: bool,
}

impl Lease {
    fn new(fleet: &Fleet) -> Self {
        Lease {
            store: Arc::clone(&fleet.store),
            name: fleet.sealer.lease_name().to_owned(),
            id: holder_id(),
            cap: fleet.config.store_timeout,
            ttl: fleet.config.lease_ttl,
            may_hold: false,
        }
    }

    /// Tries to take the lease; until the store answered, it may hold it.
    async fn try_take(&mut self, fleet: &Fleet) -> Result<bool, BoxError> {
        self.may_hold = true;
        let taken = fleet
            .call(self.store.try_lease(&self.name, &self.id, self.ttl))
            .await?;
        self.may_hold = taken;
        Ok(taken)
    }

    /// Releases the lease if the store may hold it; an error only costs the others its time
    /// to live.
    async fn release(&mut self, fleet: &Fleet) {
        if self.may_hold {
            let _ = fleet
                .call(self.store.release_lease(&self.name, &self.id))
                .await;
            self.may_hold = false;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.may_hold {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = Arc::clone(&self.store);
        let (name, id, cap) = (
            std::mem::take(&mut self.name),
            std::mem::take(&mut self.id),
            self.cap,
        );
        runtime.spawn(async move {
            let _ = tokio::time::timeout(cap, store.release_lease(&name, &id)).await;
        });
    }
}

/// Whether a stored token with `ttl` left, issued for `lifetime`, may be adopted: it must
/// outlive the refresh-ahead margin plus the largest refresh jitter (else it would be stale at
/// once, and re-adopted in a loop), and the minimum validity, both scaled to its lifetime as the
/// cache scales them.
pub(crate) fn adoptable(ttl: Duration, lifetime: Duration, margins: Margins) -> bool {
    let scaled = crate::cache::policy::Scaled::margins(
        margins.refresh_ahead,
        margins.min_validity,
        lifetime,
    );
    let stale = scaled.refresh_ahead.saturating_add(scaled.max_jitter);
    ttl > stale && ttl > scaled.min_validity
}

/// A random id for one lease.
fn holder_id() -> String {
    let mut bytes = [0u8; 16];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        bytes = fastrand::u128(..).to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

mod refusal;
#[cfg(all(test, feature = "redis"))]
mod tests;

use refusal::Refusal;
