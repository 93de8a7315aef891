//! The cache's decisions, in one pure function: [`Policy::decide`].
//!
//! From the cache's state, the time and an [`Event`] (a request wants a token, the background
//! timer fired, a refresh finished or was abandoned, a token was rejected) to a [`Decision`]
//! (serve this token, serve it and start a refresh, wait for the refresh in flight, start one
//! and wait, fail now, sleep until). No I/O and no clock inside: the time comes in as an
//! argument and the randomness (jitter) from a generator the state owns, so a test can replay
//! any sequence of events exactly. The rest of the cache (`mod.rs`, `flight.rs`,
//! `background.rs`) only carries decisions out: it spawns the refresh a decision starts,
//! hands its waiters the outcome, publishes the current token for the hot path, and sleeps
//! as long as it is told.
//!
//! # The decision table
//!
//! A token is *fresh* while `now < fresh_until`, *usable* while `now < usable_until`. A
//! refresh in flight is *live* until its deadline plus [`ABANDON_GRACE`]; after that it is
//! forgotten (its runtime is parked or gone) and a new one may start. *Paced* means a failure's
//! backoff has not run out (`now < retry_at`).
//!
//! | event | state | decision |
//! |---|---|---|
//! | `Want` | fresh | `Serve` |
//! | `Want` | usable, a refresh live or paced, or the caller cannot run one | `Serve` |
//! | `Want` | usable, otherwise | `ServeAndStart` (refresh-ahead) |
//! | `Want` | not usable, the caller cannot run a refresh | `Fail` with the caller's error |
//! | `Want` | not usable, refresh live | `Wait` until it would be abandoned (its deadline and the grace) |
//! | `Want` | not usable, paced, an error on record | `Fail` with that error |
//! | `Want` | not usable, otherwise | `StartAndWait` |
//! | `Background` | refresh live | `Wait` until it is abandoned |
//! | `Background` | fresh | `Sleep` until it is not |
//! | `Background` | paced | `Sleep` until the backoff ends |
//! | `Background` | otherwise | `StartAndWait` |
//! | `Finished(Ok)` | | the rejected token, or one not usable on arrival: as `Finished(Err)`; else the own refresh's token replaces the current one, a late refresh's only if it is newer (or the current one is unusable) and no rejection is pending; the own refresh's end clears the error on record and the rejection it carried, and resets the backoff (or paces like a failure if its token is no newer); `Settled` |
//! | `Finished(Ok)` of a kept token (restored by a session) these margins refuse | | as `Abandoned`: its waiters ask again, the source fetches |
//! | `Finished(Err)` | | backoff (the slowest for a permanent error, at least `Retry-After`); `Settled` |
//! | `Abandoned` | | the refresh is forgotten, no backoff: its runtime went away, which says nothing of the endpoint; `Settled` |
//! | `Rejected(g)` | `g` current, not throttled | the token is dropped and remembered as rejected until a refresh succeeds; backoff cleared, but for what the endpoint asked (a `Retry-After`, a permanent error's pause); `Dropped(true)` |
//! | `Rejected(g)` | otherwise | `Dropped(false)` |
//! | `SourceChanged` | | a new sign-in: the current token, the refresh in flight (its result is dropped when it ends), the pending rejection, the backoff and the error on record are all forgotten; `Noted` |
//!
//! `Finished` and `Abandoned` of a refresh that is no longer the live one (it was abandoned
//! at its deadline and finished late) change no backoff; a late token is still taken if it
//! expires later than the current one.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::error::Error;
use crate::token::{AccessToken, Token};

use super::{CachedToken, Generation};

/// How long a refresh past its deadline is still taken for live: its own timer fires at the
/// deadline, and this leaves its runtime a moment to report that.
pub(crate) const ABANDON_GRACE: Duration = Duration::from_secs(1);

/// Which refresh an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FlightId(pub(crate) u64);

/// The cache's settings, as the policy reads them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Config {
    pub(crate) refresh_ahead: Duration,
    pub(crate) min_validity: Duration,
    pub(crate) refresh_deadline: Duration,
    pub(crate) invalidation_throttle: Duration,
    pub(crate) backoff: Backoff,
    /// Whether the refresh moment is jittered (off in tests that count refreshes exactly).
    pub(crate) refresh_jitter: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            refresh_ahead: Duration::from_secs(300),
            min_validity: Duration::from_secs(30),
            refresh_deadline: Duration::from_secs(30),
            invalidation_throttle: Duration::from_secs(10),
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
            refresh_jitter: true,
        }
    }
}

/// A token as the cache holds it: the token, its header, and the moments that decide what to
/// do with it.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) token: CachedToken,
    /// `Bearer …`, marked sensitive, made once per token.
    pub(crate) header: HeaderValue,
    pub(crate) fresh_until: Instant,
    pub(crate) usable_until: Instant,
}

impl Entry {
    /// Whether the token may be handed out at `now`: at least its `min_validity` left. The
    /// one definition of *usable*, for the policy and the shell alike.
    pub(crate) fn usable_at(&self, now: Instant) -> bool {
        now < self.usable_until
    }

    /// Whether the token is *fresh* at `now`: no refresh is due.
    pub(crate) fn fresh_at(&self, now: Instant) -> bool {
        now < self.fresh_until
    }

    pub(crate) fn generation(&self) -> Generation {
        self.token.generation
    }

    pub(crate) fn access_token(&self) -> &AccessToken {
        &self.token.access_token
    }
}

/// What the shell publishes for the hot path after each decision, from
/// [`Policy::serve_until`]: a request before `serve_until` is served `entry` without asking
/// the policy.
#[derive(Debug)]
pub(crate) struct Published {
    pub(crate) entry: Arc<Entry>,
    pub(crate) serve_until: Instant,
}

/// The margins scaled to one token's lifetime, so that a token is used for at least half its
/// life: `refresh_ahead` to at most half of it, `min_validity` and the refresh jitter to at
/// most a tenth. The one formula, for the cache's tokens and the fleet's stored ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Scaled {
    pub(crate) refresh_ahead: Duration,
    pub(crate) min_validity: Duration,
    /// The largest jitter subtracted from the refresh moment.
    pub(crate) max_jitter: Duration,
}

impl Scaled {
    /// The configured `refresh_ahead` and `min_validity`, scaled to `lifetime`.
    pub(crate) fn margins(
        refresh_ahead: Duration,
        min_validity: Duration,
        lifetime: Duration,
    ) -> Self {
        Self {
            refresh_ahead: refresh_ahead.min(lifetime / 2),
            min_validity: min_validity.min(lifetime / 10),
            max_jitter: lifetime / 10,
        }
    }
}

/// What happened.
#[derive(Debug)]
pub(crate) enum Event {
    /// A request needs a token. `unable` says why its runtime could not run a refresh or
    /// time a wait (no time driver, no runtime), if it cannot: such a request is served a
    /// usable token and nothing more, and gets this error where it would start or wait.
    Want { unable: Option<Error> },
    /// The background refresher woke up.
    Background,
    /// A refresh ended with a token or an error.
    Finished {
        flight: FlightId,
        result: Result<Token, Error>,
    },
    /// A refresh ended without a result because its runtime dropped it (shutting down), or it
    /// could not be started there (no time driver).
    Abandoned { flight: FlightId },
    /// A service rejected the token of this generation (a 401).
    Rejected { generation: Generation },
    /// The token source's credentials changed (a new sign-in): a failure on record is old news.
    SourceChanged,
}

/// A refresh to start.
#[derive(Debug)]
pub(crate) struct Start {
    pub(crate) flight: FlightId,
    /// When it gives up (`None`: a deadline too long for an `Instant`).
    pub(crate) deadline: Option<Instant>,
    /// The token a rejection dropped, for a shared store to drop too; kept by the policy until
    /// a refresh succeeds, so a refresh that never ran cannot lose it.
    pub(crate) rejected: Option<AccessToken>,
    /// Started while the current token was still usable.
    pub(crate) ahead: bool,
}

/// A wait for the refresh in flight, bounded by `until` (`None`: no bound fits an `Instant`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Wait {
    pub(crate) flight: FlightId,
    pub(crate) until: Option<Instant>,
}

/// What the outcome of a refresh is, for those who waited for it.
#[derive(Clone, Debug)]
pub(crate) enum Outcome {
    Token(Arc<Entry>),
    Failed(Error),
    /// The refresh's runtime dropped it: those who waited look again (and start another).
    Abandoned,
}

/// What to do.
#[derive(Debug)]
pub(crate) enum Decision {
    Serve(Arc<Entry>),
    ServeAndStart(Arc<Entry>, Start),
    Wait(Wait),
    StartAndWait(Start, Wait),
    Fail(Error),
    Sleep(Instant),
    /// A refresh ended: its waiters get `outcome`.
    Settled {
        outcome: Outcome,
    },
    /// A rejection: whether the token was dropped.
    Dropped(bool),
    /// Noted; nothing to carry out.
    Noted,
}

#[derive(Debug)]
struct InFlight {
    id: FlightId,
    started: Instant,
    /// Its `Start` carried the pending rejection (to drop from a shared store).
    carries_rejection: bool,
}

/// The cache's state and the rules over it.
#[derive(Debug)]
pub(crate) struct Policy {
    config: Config,
    rng: fastrand::Rng,
    current: Option<Arc<Entry>>,
    flight: Option<InFlight>,
    next_flight: u64,
    next_generation: u64,
    /// Failed refreshes in a row.
    failures: u32,
    last_error: Option<Error>,
    /// No refresh starts before this (a failure's backoff).
    retry_at: Option<Instant>,
    /// The part of `retry_at` that the endpoint asked for: a `Retry-After`, a permanent
    /// error's pause. A rejection clears the backoff but not this.
    held_until: Option<Instant>,
    /// The last rejection that dropped a token (throttles them).
    last_rejection: Option<Instant>,
    /// The token the last rejection dropped, until a refresh succeeds.
    rejected: Option<AccessToken>,
    /// Refreshes numbered below this were started before the source's credentials changed:
    /// what they bring back belongs to the previous session and is dropped.
    stale_before: u64,
}

impl Policy {
    pub(crate) fn new(config: Config, rng: fastrand::Rng) -> Self {
        Self {
            config,
            rng,
            current: None,
            flight: None,
            next_flight: 0,
            next_generation: 0,
            failures: 0,
            last_error: None,
            retry_at: None,
            held_until: None,
            last_rejection: None,
            rejected: None,
            stale_before: 0,
        }
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// The current token, whatever its state.
    #[cfg(test)]
    pub(crate) fn current(&self) -> Option<&Arc<Entry>> {
        self.current.as_ref()
    }

    /// The current token and until when a `Want` is answered `Serve` with it, if no other
    /// event comes first: while it is fresh, and while it is usable and nothing new can start
    /// (a refresh is live, or a backoff holds). The moment may be past. The first rows of the
    /// table, in one place: [`want`](Self::want) reads them here, and the shell publishes them
    /// for the hot path, which then serves without a lock while a refresh runs or the
    /// endpoint is down.
    pub(crate) fn serve_until(&self, now: Instant) -> Option<(&Arc<Entry>, Instant)> {
        let entry = self.current.as_ref()?;
        let until = match self.quiet_until(now) {
            Some(quiet) => entry.fresh_until.max(quiet.min(entry.usable_until)),
            None => entry.fresh_until,
        };
        Some((entry, until))
    }

    /// Until when nothing new can start: a live refresh (until it would be abandoned) or a
    /// backoff. `None` when a refresh may start now; else a moment after `now`.
    pub(crate) fn quiet_until(&self, now: Instant) -> Option<Instant> {
        let live = self.live_flight(now).map(|f| self.abandon_at(f));
        let paced = self.retry_at.filter(|at| now < *at);
        match (live, paced) {
            (Some(Some(a)), Some(b)) => Some(a.max(b)),
            // A refresh that is never abandoned (a deadline too long for an `Instant`).
            (Some(None), _) => Some(far_future(now)),
            (Some(Some(a)), None) => Some(a),
            (None, b) => b,
        }
    }

    /// The decision for `event` at `now`. Every path of the cache comes through here.
    pub(crate) fn decide(&mut self, now: Instant, event: Event) -> Decision {
        match event {
            Event::Want { unable } => self.want(now, unable),
            Event::Background => self.background(now),
            Event::Finished { flight, result } => self.finished(now, flight, result),
            Event::Abandoned { flight } => {
                if self.is_own(flight) {
                    self.flight = None;
                }
                Decision::Settled {
                    outcome: Outcome::Abandoned,
                }
            }
            Event::Rejected { generation } => Decision::Dropped(self.rejected(now, generation)),
            Event::SourceChanged => {
                // A new sign-in, maybe another user: nothing of the previous session is
                // served again, not even a token still fresh or one a refresh brings back.
                self.current = None;
                self.flight = None;
                self.stale_before = self.next_flight;
                self.rejected = None;
                self.last_rejection = None;
                self.failures = 0;
                self.retry_at = None;
                self.held_until = None;
                self.last_error = None;
                Decision::Noted
            }
        }
    }

    fn want(&mut self, now: Instant, unable: Option<Error>) -> Decision {
        if let Some((entry, until)) = self.serve_until(now)
            && now < until
        {
            return Decision::Serve(Arc::clone(entry));
        }
        if let Some(entry) = self.current.as_ref().filter(|e| e.usable_at(now)) {
            let entry = Arc::clone(entry);
            if unable.is_some() {
                return Decision::Serve(entry);
            }
            let start = self.start(now, true);
            return Decision::ServeAndStart(entry, start);
        }
        if let Some(error) = unable {
            return Decision::Fail(error);
        }
        if let Some(flight) = self.live_flight(now) {
            return Decision::Wait(Wait {
                flight: flight.id,
                until: self.abandon_at(flight),
            });
        }
        if let (Some(error), Some(_)) = (&self.last_error, self.retry_at.filter(|at| now < *at)) {
            return Decision::Fail(error.clone());
        }
        let start = self.start(now, false);
        let wait = Wait {
            flight: start.flight,
            until: start
                .deadline
                .and_then(|deadline| deadline.checked_add(ABANDON_GRACE)),
        };
        Decision::StartAndWait(start, wait)
    }

    fn background(&mut self, now: Instant) -> Decision {
        if let Some(flight) = self.live_flight(now) {
            return Decision::Wait(Wait {
                flight: flight.id,
                until: self.abandon_at(flight),
            });
        }
        if let Some(entry) = self.current.as_ref().filter(|e| e.fresh_at(now)) {
            return Decision::Sleep(entry.fresh_until);
        }
        if let Some(at) = self.retry_at.filter(|at| now < *at) {
            return Decision::Sleep(at);
        }
        let ahead = self.current.as_ref().is_some_and(|e| e.usable_at(now));
        let start = self.start(now, ahead);
        let until = start
            .deadline
            .and_then(|deadline| deadline.checked_add(ABANDON_GRACE));
        let wait = Wait {
            flight: start.flight,
            until,
        };
        Decision::StartAndWait(start, wait)
    }

    fn finished(&mut self, now: Instant, id: FlightId, result: Result<Token, Error>) -> Decision {
        if id.0 < self.stale_before {
            // Started before the source's credentials changed: its waiters ask again.
            return Decision::Settled {
                outcome: Outcome::Abandoned,
            };
        }
        let own = self.is_own(id);
        let carried = own && self.flight.as_ref().is_some_and(|f| f.carries_rejection);
        if own {
            self.flight = None;
        }
        let kept = result.as_ref().is_ok_and(Token::is_kept);
        let result = result.and_then(|token| {
            // A rejected token is never served again, whoever brings it back (a shared store,
            // an endpoint that hands out a cached token).
            if self
                .rejected
                .as_ref()
                .is_some_and(|r| r.secret() == token.access_token().secret())
            {
                return Err(Error::invalid_response(
                    "the refresh brought back the token that was just rejected",
                ));
            }
            self.entry_for(token, now)
        });
        match result {
            Ok(entry) => {
                let previous = self.current.as_ref();
                let newer = previous.is_none_or(|p| entry.token.expires_at > p.token.expires_at);
                // A late refresh (no longer the live one) is taken only if its token is newer, or
                // the current one is no longer usable; never while a rejection is pending: its
                // token may have been fetched before that rejection.
                let late_ok = self.rejected.is_none()
                    && (newer || previous.is_some_and(|p| !p.usable_at(now)));
                if own || late_ok {
                    self.current = Some(Arc::clone(&entry));
                }
                if carried {
                    // This refresh carried the rejection (its `Start`): it is settled.
                    self.rejected = None;
                }
                if own {
                    self.last_error = None;
                    if newer {
                        self.failures = 0;
                        self.retry_at = None;
                        self.held_until = None;
                    } else {
                        // The endpoint handed back a token that expires no later than the one
                        // we had (a cache in front of it, say): asking again at once would get
                        // the same, so further refreshes are paced like failures.
                        self.pace_after_failure(now, None);
                    }
                }
                Decision::Settled {
                    outcome: Outcome::Token(entry),
                }
            }
            Err(_) if kept => {
                // A token the source kept (restored from storage, say) that these margins do
                // not allow: no failure of the endpoint; the waiters ask again, and the
                // source fetches.
                Decision::Settled {
                    outcome: Outcome::Abandoned,
                }
            }
            Err(error) => {
                if own {
                    self.pace_after_failure(now, Some(&error));
                    self.last_error = Some(error.clone());
                }
                Decision::Settled {
                    outcome: Outcome::Failed(error),
                }
            }
        }
    }

    /// Backoff after a failed refresh (or one that brought nothing newer): the next delay of
    /// the schedule; for a permanent error the slowest; never less than what `Retry-After`
    /// asked, clamped to the cap so that one header cannot stop every refresh for a day.
    fn pace_after_failure(&mut self, now: Instant, error: Option<&Error>) {
        let backoff = self.config.backoff;
        // What the endpoint asked for, which no rejection shortens.
        let mut held = match error {
            Some(error) if error.is_permanent() => backoff.cap(),
            _ => Duration::ZERO,
        };
        if let Some(asked) = error.and_then(Error::retry_after) {
            held = held.max(asked.min(backoff.cap()));
        }
        let delay = if error.is_some_and(Error::is_permanent) {
            held
        } else {
            backoff.delay_with(self.failures, &mut self.rng).max(held)
        };
        self.failures = self.failures.saturating_add(1);
        self.retry_at = now.checked_add(delay);
        self.held_until = if held.is_zero() {
            None
        } else {
            now.checked_add(held)
        };
    }

    fn rejected(&mut self, now: Instant, generation: Generation) -> bool {
        if self.current.as_ref().map(|e| e.generation()) != Some(generation) {
            return false;
        }
        if let Some(last) = self.last_rejection {
            // A throttle too long to add to an `Instant` never runs out.
            let within = last
                .checked_add(self.config.invalidation_throttle)
                .is_none_or(|until| now < until);
            if within {
                return false;
            }
        }
        self.last_rejection = Some(now);
        // A rejection is news the backoff did not know of: let the next request refresh, once
        // the endpoint allows it (its `Retry-After`, a permanent error's pause).
        self.retry_at = self.held_until.filter(|at| now < *at);
        self.rejected = self.current.take().map(|e| e.access_token().clone());
        true
    }

    /// Starts a refresh: it becomes the live one.
    fn start(&mut self, now: Instant, ahead: bool) -> Start {
        let id = FlightId(self.next_flight);
        self.next_flight = self.next_flight.wrapping_add(1);
        self.flight = Some(InFlight {
            id,
            started: now,
            carries_rejection: self.rejected.is_some(),
        });
        Start {
            flight: id,
            deadline: now.checked_add(self.config.refresh_deadline),
            rejected: self.rejected.clone(),
            ahead,
        }
    }

    fn is_own(&self, id: FlightId) -> bool {
        self.flight.as_ref().is_some_and(|f| f.id == id)
    }

    /// The refresh in flight, unless it is past its deadline and grace: forgotten then (its
    /// runtime has not run it to its end), so that another may start.
    fn live_flight(&self, now: Instant) -> Option<&InFlight> {
        self.flight
            .as_ref()
            .filter(|f| self.abandon_at(f).is_none_or(|at| now < at))
    }

    fn abandon_at(&self, flight: &InFlight) -> Option<Instant> {
        flight
            .started
            .checked_add(self.config.refresh_deadline)?
            .checked_add(ABANDON_GRACE)
    }

    /// The entry for a new token, with its moments. The margins scale with the token's
    /// lifetime (from when the refresh ended, or the original lifetime a shared store kept);
    /// a token that expires no later than the current one (an endpoint that hands the same
    /// cached token out again) keeps the current one's margin, so refetching it never makes
    /// it usable for longer.
    fn entry_for(&mut self, token: Token, now: Instant) -> Result<Arc<Entry>, Error> {
        let expires_at = token.expires_at();
        let lifetime = token
            .lifetime()
            .unwrap_or_else(|| expires_at.saturating_duration_since(now));
        let Scaled {
            refresh_ahead,
            min_validity,
            max_jitter,
        } = Scaled::margins(
            self.config.refresh_ahead,
            self.config.min_validity,
            lifetime,
        );
        let jitter = if self.config.refresh_jitter {
            let max = u64::try_from(max_jitter.as_nanos()).unwrap_or(u64::MAX);
            Duration::from_nanos(self.rng.u64(0..=max))
        } else {
            Duration::ZERO
        };
        let mut usable_until = expires_at.checked_sub(min_validity).unwrap_or(now);
        if let Some(previous) = &self.current
            && expires_at <= previous.token.expires_at
        {
            usable_until = usable_until.min(previous.usable_until);
        }
        let fresh_until = expires_at
            .checked_sub(refresh_ahead.saturating_add(jitter))
            .unwrap_or(now)
            .min(usable_until);
        if now >= usable_until {
            return Err(Error::invalid_response(
                "the token endpoint issued a token that expires before it could be used",
            ));
        }
        let generation = Generation(self.next_generation);
        self.next_generation += 1;
        let access_token = token.into_access_token();
        Ok(Arc::new(Entry {
            header: access_token.header_value(),
            token: CachedToken {
                access_token,
                generation,
                expires_at,
            },
            fresh_until,
            usable_until,
        }))
    }
}

/// `now + by`, or the farthest moment that fits an `Instant` near that.
pub(crate) fn later(now: Instant, by: Duration) -> Instant {
    now.checked_add(by).unwrap_or_else(|| far_future(now))
}

/// A moment far enough away to stand for "never", that still fits an `Instant`.
fn far_future(now: Instant) -> Instant {
    let mut step = Duration::from_secs(100 * 365 * 24 * 3600);
    loop {
        if let Some(at) = now.checked_add(step) {
            return at;
        }
        step /= 2;
    }
}

#[cfg(test)]
mod tests;
