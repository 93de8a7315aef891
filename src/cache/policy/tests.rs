//! The policy's property test: random sequences of events and time steps, each decision
//! checked against a model of the policy's own: the test records what happened (each token's
//! expiry and lifetime, each failure and its `Retry-After`, each rejection, which refresh was
//! started last and whether it ended) and works out from that alone, with its own arithmetic,
//! what the rules in the table require: which token is current and until when it is usable,
//! when it stops being fresh, whether a refresh is live, when a pause ends. It reads nothing
//! of the policy but its answers: `decide`'s decisions and what the shell publishes from it
//! (`quiet_until`, `serve_until`).
//!
//! Where the policy draws a random number (the refresh moment's jitter, the backoff's full
//! jitter), the model knows the range: a decision on either side of an uncertain moment is
//! allowed, one that only the other side allows is not.

use std::time::Duration;

use proptest::prelude::*;

use super::*;

/// The backoff schedule of every generated configuration: 1 s doubling to 60 s.
const BASE: Duration = Duration::from_secs(1);
const CAP: Duration = Duration::from_secs(60);

/// One step of a sequence.
#[derive(Clone, Debug)]
enum Op {
    /// Time passes (milliseconds).
    Advance(u64),
    /// A request wants a token.
    Want,
    /// A request from a runtime that cannot run a refresh (no time driver).
    WantUnable,
    /// The background refresher wakes up.
    Background,
    /// A started refresh (picked by index) ends with a token that has this many seconds
    /// left; with `Some(s)`, one a shared store kept, issued `s` seconds longer ago
    /// (`Token::with_lifetime`).
    FinishOk(usize, u64, Option<u64>),
    /// A started refresh ends with an error: 0 unavailable, 1 rate limited, 2 permanent;
    /// with a `Retry-After` in seconds.
    FinishErr(usize, u8, Option<u64>),
    /// A started refresh's runtime drops it.
    Abandon(usize),
    /// A service rejects the current token, or an older one.
    RejectCurrent,
    RejectOld,
    /// The source's credentials changed (a new sign-in).
    SourceChanged,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop_oneof![0..2_000u64, 0..120_000u64, 0..4_000_000u64].prop_map(Op::Advance),
        4 => Just(Op::Want),
        1 => Just(Op::WantUnable),
        2 => Just(Op::Background),
        3 => (
            0..3usize,
            prop_oneof![1..20u64, 20..4_000u64],
            proptest::option::weighted(0.25, 0..4_000u64),
        )
            .prop_map(|(i, left, stored)| Op::FinishOk(i, left, stored)),
        2 => (0..3usize, 0..3u8, proptest::option::of(0..200u64))
            .prop_map(|(i, k, r)| Op::FinishErr(i, k, r)),
        1 => (0..3usize).prop_map(Op::Abandon),
        1 => Just(Op::RejectCurrent),
        1 => Just(Op::RejectOld),
        1 => Just(Op::SourceChanged),
    ]
}

/// Whether something holds at `now`, as far as the model can tell through the jitter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tri {
    Yes,
    Maybe,
    No,
}

/// `now` against a moment known to lie in `[lo, hi]`: before it for sure, after it for sure,
/// or either.
fn before(now: Instant, lo: Instant, hi: Instant) -> Tri {
    if now < lo {
        Tri::Yes
    } else if now >= hi {
        Tri::No
    } else {
        Tri::Maybe
    }
}

/// A token as the model knows it.
#[derive(Clone, Debug)]
struct Known {
    generation: Generation,
    secret: String,
    expires_at: Instant,
    /// `expires_at` less `min_validity` scaled to the lifetime (or the earlier token's, if
    /// this one expires no later).
    usable_until: Instant,
    /// The moment it stops being fresh lies in `[fresh_lo, fresh_hi]` (one moment without
    /// jitter).
    fresh_lo: Instant,
    fresh_hi: Instant,
}

/// A refresh started and not ended.
#[derive(Clone, Debug)]
struct Flight {
    id: FlightId,
    started: Instant,
    /// The rejected token it was given to drop.
    carries: Option<String>,
}

/// A pause after a failure: no refresh before `lo` for sure, and one may start from `hi` on.
#[derive(Clone, Copy, Debug)]
struct Pause {
    lo: Instant,
    hi: Instant,
}

/// The model, and the shell the test plays: it keeps the refreshes the policy started, and
/// finishes or abandons them when the sequence says so.
struct Model {
    policy: Policy,
    config: Config,
    backoff_jitter: bool,
    now: Instant,
    current: Option<Known>,
    /// The refresh started last, until it ends: the policy's own (its end paces, and settles
    /// the rejection it carried), live until its deadline and grace.
    latest: Option<Flight>,
    /// Every refresh started and not yet ended, the latest among them.
    started: Vec<Flight>,
    /// Failed refreshes (and refreshes that brought nothing newer) in a row.
    failures: u32,
    /// The error on record, as the callers would see it.
    last_error: Option<String>,
    pause: Option<Pause>,
    /// The part of the pause the endpoint asked for (a `Retry-After`, a permanent error's).
    held: Option<Instant>,
    /// The token a rejection dropped, until a refresh that carried it succeeds.
    rejected: Option<String>,
    last_rejection: Option<Instant>,
    /// Every generation handed out, for rejections of older ones.
    generations: Vec<Generation>,
    token_count: u64,
    /// Refreshes started before the last new sign-in: what they bring back is dropped.
    stale: Vec<FlightId>,
}

impl Model {
    fn new(config: Config, backoff_jitter: bool, seed: u64) -> Self {
        Self {
            policy: Policy::new(config, fastrand::Rng::with_seed(seed)),
            config,
            backoff_jitter,
            now: Instant::now(),
            current: None,
            latest: None,
            started: Vec::new(),
            failures: 0,
            last_error: None,
            pause: None,
            held: None,
            rejected: None,
            last_rejection: None,
            generations: Vec::new(),
            token_count: 0,
            stale: Vec::new(),
        }
    }

    // What the model works out.

    fn abandon_at(&self, started: Instant) -> Option<Instant> {
        started
            .checked_add(self.config.refresh_deadline)?
            .checked_add(Duration::from_secs(1))
    }

    /// The live refresh: the latest, until its deadline and a second of grace.
    fn live(&self) -> Option<Flight> {
        self.latest
            .clone()
            .filter(|f| self.abandon_at(f.started).is_none_or(|at| self.now < at))
    }

    fn usable(&self) -> Option<Known> {
        self.current.clone().filter(|t| self.now < t.usable_until)
    }

    fn fresh(&self) -> Tri {
        self.current
            .as_ref()
            .map_or(Tri::No, |t| before(self.now, t.fresh_lo, t.fresh_hi))
    }

    /// Whether a failure's pause holds.
    fn paced(&self) -> Tri {
        self.pause.map_or(Tri::No, |p| before(self.now, p.lo, p.hi))
    }

    /// The backoff's ceiling before retry `n`.
    fn ceiling(n: u32) -> Duration {
        BASE.saturating_mul(2u32.saturating_pow(n)).min(CAP)
    }

    /// A failure (or a refresh that brought nothing newer: `None`) starts a pause.
    fn pace(&mut self, error: Option<(bool, Option<Duration>)>) {
        let n = self.failures;
        self.failures += 1;
        let (permanent, asked) = error.unwrap_or((false, None));
        let held =
            if permanent { CAP } else { Duration::ZERO }.max(asked.unwrap_or_default().min(CAP));
        let (lo, hi) = if permanent {
            (CAP, CAP)
        } else if self.backoff_jitter {
            (held, Self::ceiling(n).max(held))
        } else {
            let delay = Self::ceiling(n).max(held);
            (delay, delay)
        };
        self.pause = Some(Pause {
            lo: self.now + lo,
            hi: self.now + hi,
        });
        self.held = (!held.is_zero()).then(|| self.now + held);
    }

    /// The token a refresh brings, as the rules make it: its margins scaled to its lifetime;
    /// `None` if it would not be usable now.
    fn known(&self, secret: &str, expires_at: Instant, lifetime: Duration) -> Option<Known> {
        let ahead = self.config.refresh_ahead.min(lifetime / 2);
        let validity = self.config.min_validity.min(lifetime / 10);
        let jitter = if self.config.refresh_jitter {
            lifetime / 10
        } else {
            Duration::ZERO
        };
        let mut usable_until = expires_at.checked_sub(validity).unwrap_or(self.now);
        if let Some(current) = &self.current
            && expires_at <= current.expires_at
        {
            usable_until = usable_until.min(current.usable_until);
        }
        if self.now >= usable_until {
            return None;
        }
        let at_most = |margin: Duration| {
            expires_at
                .checked_sub(margin)
                .unwrap_or(self.now)
                .min(usable_until)
        };
        Some(Known {
            generation: Generation(u64::MAX),
            secret: secret.to_owned(),
            expires_at,
            usable_until,
            fresh_lo: at_most(ahead + jitter),
            fresh_hi: at_most(ahead),
        })
    }

    // The checks.

    /// A token handed out is the current one, as the model knows it, and usable.
    fn check_served(&self, known: &Known, entry: &Entry) {
        assert_eq!(
            entry.generation(),
            known.generation,
            "not the current token"
        );
        assert_eq!(entry.access_token().secret(), known.secret);
        assert_eq!(entry.usable_until, known.usable_until);
        assert!(
            self.now < known.usable_until,
            "an unusable token was handed out"
        );
    }

    /// A refresh starts: record it.
    fn started(&mut self, start: &Start) {
        assert!(
            self.live().is_none(),
            "a second refresh started while one was live"
        );
        assert_eq!(
            start.deadline,
            self.now.checked_add(self.config.refresh_deadline)
        );
        assert_eq!(
            start.rejected.as_ref().map(|t| t.secret().to_owned()),
            self.rejected,
            "the refresh was not given the pending rejection to drop"
        );
        let flight = Flight {
            id: start.flight,
            started: self.now,
            carries: self.rejected.clone(),
        };
        self.latest = Some(flight.clone());
        self.started.push(flight);
    }

    fn check_wait_for_start(&self, start: &Start, wait: &Wait) {
        assert_eq!(wait.flight, start.flight);
        assert_eq!(
            wait.until,
            start.deadline.and_then(|d| d.checked_add(ABANDON_GRACE))
        );
    }

    /// What the shell publishes for the hot path agrees with the model: the quiet mark, and
    /// until when the current token is served without a decision.
    fn check_published(&self) {
        let live = self.live().map(|f| self.abandon_at(f.started));
        let paced = self.paced();
        match self.policy.quiet_until(self.now) {
            None => {
                assert!(live.is_none(), "not quiet while a refresh is live");
                assert_ne!(paced, Tri::Yes, "not quiet within a pause");
            }
            Some(quiet) => {
                assert!(quiet > self.now, "a quiet mark in the past");
                match (live, self.pause) {
                    (Some(Some(abandon)), pause) => {
                        assert!(
                            quiet >= abandon,
                            "quiet ends before the refresh is abandoned"
                        );
                        if paced == Tri::No || pause.is_some_and(|p| p.hi <= abandon) {
                            assert_eq!(quiet, abandon);
                        }
                    }
                    (Some(None), _) => {}
                    (None, Some(pause)) => {
                        assert_ne!(paced, Tri::No, "quiet with nothing live or pacing");
                        assert!(
                            quiet >= pause.lo && quiet <= pause.hi,
                            "quiet off the pause"
                        );
                    }
                    (None, None) => panic!("quiet with nothing live or pacing"),
                }
            }
        }
        match self.policy.serve_until(self.now) {
            None => assert!(self.current.is_none(), "the current token is not published"),
            Some((entry, until)) => {
                let known = self.current.as_ref().expect("a token the model knows of");
                assert_eq!(entry.generation(), known.generation);
                // The hot path never serves a token past its usable moment, ...
                assert!(until <= known.usable_until, "served past the usable moment");
                // ... serves a fresh one at once, ...
                assert!(until >= known.fresh_lo, "a fresh token not served at once");
                // ... and sends a stale one to the policy when a refresh may start.
                if self.fresh() == Tri::No && live.is_none() && paced == Tri::No {
                    assert!(
                        until <= self.now,
                        "a stale token served with nothing pacing"
                    );
                }
                // While a refresh is live or a pause holds, a usable token is served.
                if self.usable().is_some() && (live.is_some() || paced == Tri::Yes) {
                    assert!(until > self.now, "a usable token not served while quiet");
                }
            }
        }
    }

    // The steps.

    fn step(&mut self, op: Op) {
        match op {
            Op::Advance(ms) => self.now += Duration::from_millis(ms),
            Op::Want => self.want(),
            Op::WantUnable => self.want_unable(),
            Op::Background => self.background(),
            Op::FinishOk(i, left, stored) => self.finish_ok(i, left, stored),
            Op::FinishErr(i, kind, retry_after) => self.finish_err(i, kind, retry_after),
            Op::Abandon(i) => self.abandon(i),
            Op::RejectCurrent => self.reject_current(),
            Op::RejectOld => self.reject_old(),
            Op::SourceChanged => self.source_changed(),
        }
        self.check_published();
    }

    fn want(&mut self) {
        let live = self.live();
        let usable = self.usable();
        let (fresh, paced) = (self.fresh(), self.paced());
        let decision = self.policy.decide(self.now, Event::Want { unable: None });
        match (&usable, decision) {
            (Some(known), Decision::Serve(entry)) => {
                self.check_served(known, &entry);
                assert!(
                    fresh != Tri::No || live.is_some() || paced != Tri::No,
                    "a stale token with nothing live or pacing was served without a refresh"
                );
            }
            (Some(known), Decision::ServeAndStart(entry, start)) => {
                self.check_served(known, &entry);
                assert_ne!(fresh, Tri::Yes, "a fresh token started a refresh");
                assert_ne!(paced, Tri::Yes, "a refresh ahead started within a pause");
                assert!(start.ahead);
                self.started(&start);
            }
            (None, Decision::Wait(wait)) => {
                let live = live.expect("a wait is for the live refresh");
                assert_eq!(wait.flight, live.id);
                // Every waiter is answered by its own deadline: the refresh's, and its grace.
                assert_eq!(wait.until, self.abandon_at(live.started));
            }
            (None, Decision::Fail(error)) => {
                assert!(live.is_none(), "a request failed while a refresh was live");
                assert_eq!(
                    Some(error.to_string()),
                    self.last_error,
                    "a request failed with no error on record, or another one"
                );
                // Liveness: nothing pacing means a refresh starts.
                assert_ne!(paced, Tri::No, "a request failed though nothing paced");
            }
            (None, Decision::StartAndWait(start, wait)) => {
                assert!(
                    self.last_error.is_none() || paced != Tri::Yes,
                    "a refresh started within the pause of a failure"
                );
                assert!(!start.ahead);
                self.check_wait_for_start(&start, &wait);
                self.started(&start);
            }
            (usable, other) => panic!(
                "usable: {}; not a decision for it: {other:?}",
                usable.is_some()
            ),
        }
    }

    fn want_unable(&mut self) {
        let usable = self.usable();
        let latest = self.latest.as_ref().map(|f| f.id);
        let unable = Error::invalid_config("no time driver");
        match (
            &usable,
            self.policy.decide(
                self.now,
                Event::Want {
                    unable: Some(unable),
                },
            ),
        ) {
            (Some(known), Decision::Serve(entry)) => self.check_served(known, &entry),
            (None, Decision::Fail(error)) => {
                assert_eq!(error.to_string(), "invalid configuration: no time driver");
            }
            (usable, other) => panic!(
                "a caller that cannot run a refresh (usable: {}) got {other:?}",
                usable.is_some()
            ),
        }
        // Nothing was started for it (a start would show in the next decision's flight).
        assert_eq!(self.latest.as_ref().map(|f| f.id), latest);
    }

    fn background(&mut self) {
        let live = self.live();
        let (fresh, paced) = (self.fresh(), self.paced());
        match self.policy.decide(self.now, Event::Background) {
            Decision::Wait(wait) => {
                let live = live.expect("a wait is for the live refresh");
                assert_eq!(wait.flight, live.id);
                assert_eq!(wait.until, self.abandon_at(live.started));
            }
            Decision::Sleep(until) => {
                assert!(live.is_none(), "slept while a refresh was live");
                // Never a sleep that ends at once: the refresher cannot spin.
                assert!(until > self.now, "a sleep until the past");
                let known = self.current.as_ref();
                let till_stale = known.is_some_and(|k| until >= k.fresh_lo && until <= k.fresh_hi);
                let till_paced = self.pause.is_some_and(|p| until >= p.lo && until <= p.hi);
                match fresh {
                    Tri::Yes => assert!(till_stale, "not a sleep until the token is stale"),
                    // Liveness: stale, nothing live, nothing pacing means a refresh starts.
                    Tri::No => {
                        assert_ne!(
                            paced,
                            Tri::No,
                            "the refresher slept with nothing to wait for"
                        );
                        assert!(till_paced, "not a sleep until the pause ends");
                    }
                    Tri::Maybe => assert!(till_stale || till_paced),
                }
            }
            Decision::StartAndWait(start, wait) => {
                assert_ne!(fresh, Tri::Yes, "the background refreshed a fresh token");
                assert_ne!(paced, Tri::Yes, "the background refreshed within a pause");
                assert_eq!(start.ahead, self.usable().is_some());
                self.check_wait_for_start(&start, &wait);
                self.started(&start);
            }
            other => panic!("not a decision for the background refresher: {other:?}"),
        }
    }

    /// A started refresh, removed from the list (it ends now), and whether it is the
    /// policy's own.
    fn pick(&mut self, i: usize) -> Option<(Flight, bool)> {
        if self.started.is_empty() {
            return None;
        }
        let flight = self.started.remove(i % self.started.len());
        let own = self.latest.as_ref().is_some_and(|l| l.id == flight.id);
        if own {
            self.latest = None;
        }
        Some((flight, own))
    }

    /// A refresh started before a new sign-in ended (with a token when `ok`): it settles as
    /// abandoned and changes nothing. Returns whether `flight` was such a refresh.
    fn finished_stale(&mut self, flight: &Flight, ok: bool) -> bool {
        if !self.stale.contains(&flight.id) {
            return false;
        }
        let before = self.policy.current().map(|c| c.generation());
        let result = if ok {
            let access = AccessToken::new("previous-session").unwrap();
            Ok(Token::new(access, self.now + Duration::from_secs(3600)))
        } else {
            Err(Error::rejected(
                http::StatusCode::BAD_REQUEST,
                Some("invalid_grant"),
                None,
            ))
        };
        let decision = self.policy.decide(
            self.now,
            Event::Finished {
                flight: flight.id,
                result,
            },
        );
        assert!(
            matches!(
                decision,
                Decision::Settled {
                    outcome: Outcome::Abandoned
                }
            ),
            "a refresh of the previous session settled with {decision:?}"
        );
        assert_eq!(
            self.policy.current().map(|c| c.generation()),
            before,
            "a refresh of the previous session changed the token"
        );
        true
    }

    fn finish_ok(&mut self, i: usize, left: u64, stored: Option<u64>) {
        let Some((flight, own)) = self.pick(i) else {
            return;
        };
        if self.finished_stale(&flight, true) {
            return;
        }
        self.token_count += 1;
        let secret = format!("token-{}", self.token_count);
        let left = Duration::from_secs(left);
        let lifetime = left + Duration::from_secs(stored.unwrap_or(0));
        let expires_at = self.now + left;
        let mut token = Token::new(AccessToken::new(secret.clone()).unwrap(), expires_at);
        if stored.is_some() {
            token = token.with_lifetime(lifetime);
        }
        let known = self.known(&secret, expires_at, lifetime);
        let newer = self
            .current
            .as_ref()
            .is_none_or(|c| expires_at > c.expires_at);
        let current_usable = self.usable().is_some();
        let decision = self.policy.decide(
            self.now,
            Event::Finished {
                flight: flight.id,
                result: Ok(token),
            },
        );
        let Decision::Settled { outcome } = decision else {
            panic!("a finished refresh settles: {decision:?}");
        };
        match (known, outcome) {
            (Some(mut known), Outcome::Token(entry)) => {
                assert_eq!(entry.token.expires_at, expires_at);
                assert_eq!(entry.usable_until, known.usable_until, "the usable moment");
                assert!(
                    entry.fresh_until >= known.fresh_lo && entry.fresh_until <= known.fresh_hi,
                    "the fresh moment is off the margin scaled to the lifetime"
                );
                known.generation = entry.generation();
                self.generations.push(known.generation);
                // The live refresh's token replaces the current one; a late refresh's only if
                // it is newer, or the current one unusable, and no rejection is pending.
                if own || (self.rejected.is_none() && (newer || !current_usable)) {
                    self.current = Some(known);
                }
                if own {
                    if flight.carries.is_some() {
                        self.rejected = None;
                    }
                    self.last_error = None;
                    if newer {
                        self.failures = 0;
                        self.pause = None;
                        self.held = None;
                    } else {
                        // An older-or-equal token paces like a failure.
                        self.pace(None);
                    }
                }
            }
            (None, Outcome::Failed(error)) => {
                assert_eq!(error.kind(), crate::ErrorKind::InvalidResponse);
                if own {
                    self.pace(Some((false, None)));
                    self.last_error = Some(error.to_string());
                }
            }
            (known, outcome) => panic!(
                "a token usable: {}; the refresh settled with {outcome:?}",
                known.is_some()
            ),
        }
    }

    fn finish_err(&mut self, i: usize, kind: u8, retry_after: Option<u64>) {
        let Some((flight, own)) = self.pick(i) else {
            return;
        };
        if self.finished_stale(&flight, false) {
            return;
        }
        let retry_after = retry_after.map(Duration::from_secs);
        let error = match kind {
            0 => Error::server_error(http::StatusCode::SERVICE_UNAVAILABLE, retry_after),
            1 => Error::rate_limited(retry_after),
            _ => Error::rejected(http::StatusCode::BAD_REQUEST, Some("invalid_client"), None),
        };
        let permanent = kind >= 2;
        let text = error.to_string();
        let decision = self.policy.decide(
            self.now,
            Event::Finished {
                flight: flight.id,
                result: Err(error),
            },
        );
        assert!(matches!(
            decision,
            Decision::Settled {
                outcome: Outcome::Failed(_)
            }
        ));
        if own {
            self.pace(Some((permanent, retry_after)));
            self.last_error = Some(text);
        }
        // A failure behind a usable token is invisible: the same token is served (and a
        // refresh starts again if the backoff drew no pause).
        if self.usable().is_some() {
            self.want();
        }
    }

    fn abandon(&mut self, i: usize) {
        let Some((flight, own)) = self.pick(i) else {
            return;
        };
        let decision = self
            .policy
            .decide(self.now, Event::Abandoned { flight: flight.id });
        assert!(matches!(
            decision,
            Decision::Settled {
                outcome: Outcome::Abandoned
            }
        ));
        // Replaced without a pause: a request with no usable token starts another at once,
        // unless an earlier failure still paces.
        if own && self.usable().is_none() {
            self.want();
        }
    }

    fn reject_current(&mut self) {
        let Some(current) = self.current.clone() else {
            return;
        };
        let throttled = self.last_rejection.is_some_and(|last| {
            last.checked_add(self.config.invalidation_throttle)
                .is_none_or(|until| self.now < until)
        });
        let decision = self.policy.decide(
            self.now,
            Event::Rejected {
                generation: current.generation,
            },
        );
        match decision {
            Decision::Dropped(dropped) => assert_eq!(dropped, !throttled, "throttle"),
            other => panic!("a rejection: {other:?}"),
        }
        if !throttled {
            self.current = None;
            self.rejected = Some(current.secret);
            self.last_rejection = Some(self.now);
            // News the backoff did not know of; what the endpoint asked for still holds.
            self.pause = self
                .held
                .filter(|at| self.now < *at)
                .map(|at| Pause { lo: at, hi: at });
        }
    }

    fn reject_old(&mut self) {
        let current = self.current.as_ref().map(|c| c.generation);
        let Some(old) = self
            .generations
            .iter()
            .copied()
            .find(|g| Some(*g) != current)
        else {
            return;
        };
        let decision = self
            .policy
            .decide(self.now, Event::Rejected { generation: old });
        assert!(
            matches!(decision, Decision::Dropped(false)),
            "a rejection of an older generation dropped something: {decision:?}"
        );
    }

    fn source_changed(&mut self) {
        assert!(matches!(
            self.policy.decide(self.now, Event::SourceChanged),
            Decision::Noted
        ));
        // A new sign-in, maybe another user: nothing of the previous session stays: its token,
        // its refresh in flight (whatever that brings back is dropped), a pending rejection,
        // the pacing.
        assert!(
            self.policy.current().is_none(),
            "the previous session's token stayed"
        );
        self.current = None;
        self.latest = None;
        self.stale.extend(self.started.iter().map(|f| f.id));
        self.rejected = None;
        self.last_rejection = None;
        self.failures = 0;
        self.pause = None;
        self.held = None;
        self.last_error = None;
        // The next request starts a refresh at once.
        self.want();
    }
}

fn config() -> impl Strategy<Value = (Config, bool)> {
    (
        prop_oneof![Just(300u64), 0..4_000u64],
        prop_oneof![Just(30u64), 0..600u64],
        prop_oneof![Just(30u64), 1..120u64],
        prop_oneof![Just(10u64), 0..60u64],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(ahead, validity, deadline, throttle, jitter, backoff_jitter)| {
                let mut backoff = Backoff::new(BASE, CAP);
                if !backoff_jitter {
                    backoff = backoff.without_jitter();
                }
                let config = Config {
                    refresh_ahead: Duration::from_secs(ahead),
                    min_validity: Duration::from_secs(validity),
                    refresh_deadline: Duration::from_secs(deadline),
                    invalidation_throttle: Duration::from_secs(throttle),
                    backoff,
                    refresh_jitter: jitter,
                };
                (config, backoff_jitter)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_decision_agrees_with_the_model(
        (config, backoff_jitter) in config(),
        seed in any::<u64>(),
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        let mut model = Model::new(config, backoff_jitter, seed);
        for op in ops {
            model.step(op);
        }
    }
}

/// The table's rows that a random sequence reaches rarely, one by one.
#[test]
fn a_refresh_past_its_deadline_and_grace_is_replaced() {
    let config = Config::default();
    let mut world = Model::new(config, true, 1);
    world.step(Op::Want);
    let first = world.latest.as_ref().expect("a refresh started").id;
    world.step(Op::Advance(30_999));
    match world.policy.decide(world.now, Event::Want { unable: None }) {
        Decision::Wait(wait) => assert_eq!(wait.flight, first),
        other => panic!("joined the live refresh: {other:?}"),
    }
    world.step(Op::Advance(1));
    match world.policy.decide(world.now, Event::Want { unable: None }) {
        Decision::StartAndWait(start, _) => assert_ne!(start.flight, first),
        other => panic!("replaced the abandoned refresh: {other:?}"),
    }
}

/// A rejected token is never served again, and a late refresh cannot bring back a token while
/// a rejection is pending (it may have been fetched before the rejection).
#[test]
fn a_rejected_token_stays_rejected() {
    let mut world = Model::new(Config::default(), true, 7);
    let token = |name: &str, now: Instant| {
        Token::new(
            AccessToken::new(name).unwrap(),
            now + Duration::from_secs(3600),
        )
    };
    // F1 starts and stalls; it is abandoned at its deadline and grace, and F2 replaces it.
    let Decision::StartAndWait(f1, _) =
        world.policy.decide(world.now, Event::Want { unable: None })
    else {
        panic!("a first refresh");
    };
    world.now += Duration::from_secs(31);
    let Decision::StartAndWait(f2, _) =
        world.policy.decide(world.now, Event::Want { unable: None })
    else {
        panic!("a second refresh");
    };
    let b = token("token-b", world.now);
    world.policy.decide(
        world.now,
        Event::Finished {
            flight: f2.flight,
            result: Ok(b),
        },
    );
    let current = world.policy.current().cloned().expect("token-b");
    // A service rejects token-b; the next refresh carries the rejection.
    assert!(matches!(
        world.policy.decide(
            world.now,
            Event::Rejected {
                generation: current.generation()
            }
        ),
        Decision::Dropped(true)
    ));
    let Decision::StartAndWait(f3, _) =
        world.policy.decide(world.now, Event::Want { unable: None })
    else {
        panic!("a refresh after the rejection");
    };
    assert_eq!(
        f3.rejected.as_ref().map(AccessToken::secret),
        Some("token-b")
    );
    // F1 finishes late, with a token fetched before the rejection: not taken.
    world.now += Duration::from_secs(1);
    let late = token("token-late", world.now);
    world.policy.decide(
        world.now,
        Event::Finished {
            flight: f1.flight,
            result: Ok(late),
        },
    );
    assert!(world.policy.current().is_none(), "a late token came back");
    // F3 brings back token-b itself (a shared store still held it): refused.
    let again = token("token-b", world.now);
    let decision = world.policy.decide(
        world.now,
        Event::Finished {
            flight: f3.flight,
            result: Ok(again),
        },
    );
    assert!(
        matches!(
            decision,
            Decision::Settled {
                outcome: Outcome::Failed(_)
            }
        ),
        "{decision:?}"
    );
    assert!(world.policy.current().is_none());
    // The rejection is still pending: the next refresh carries it again.
    world.now += Duration::from_secs(120);
    let Decision::StartAndWait(f4, _) =
        world.policy.decide(world.now, Event::Want { unable: None })
    else {
        panic!("a refresh after the backoff");
    };
    assert_eq!(
        f4.rejected.as_ref().map(AccessToken::secret),
        Some("token-b")
    );
}
