//! The policy's property test: random sequences of events and time steps, checked after every
//! step against the invariants the README promises. The test plays the shell: it keeps the
//! refreshes the policy started, and finishes or abandons them when the sequence says so.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

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
    /// A started refresh (picked by index) ends with a token that lives this many seconds.
    FinishOk(usize, u64),
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
        3 => (0..3usize, prop_oneof![1..20u64, 20..4_000u64]).prop_map(|(i, l)| Op::FinishOk(i, l)),
        2 => (0..3usize, 0..3u8, proptest::option::of(0..200u64))
            .prop_map(|(i, k, r)| Op::FinishErr(i, k, r)),
        1 => (0..3usize).prop_map(Op::Abandon),
        1 => Just(Op::RejectCurrent),
        1 => Just(Op::RejectOld),
        1 => Just(Op::SourceChanged),
    ]
}

/// The shell the test plays, and what it remembers to check the invariants.
struct World {
    policy: Policy,
    config: Config,
    now: Instant,
    /// Refreshes started and not yet ended: id, start.
    started: Vec<(FlightId, Instant)>,
    /// The live refresh, as the rules define it (started, not ended, not past its deadline
    /// and grace).
    live: Option<(FlightId, Instant)>,
    /// Each token's lifetime, by generation, for its `min_validity`.
    lifetimes: HashMap<Generation, Duration>,
    /// No refresh may start before this: the backoff of the live refresh's failure, as far as
    /// it is known without the jitter (a permanent error: the cap; `Retry-After`: what it
    /// asked, capped).
    not_before: Option<Instant>,
    /// The generations handed out so far, for rejections of older ones.
    generations: Vec<Generation>,
    token_count: u64,
    /// Refreshes started before the last new sign-in: what they bring back is dropped.
    stale: Vec<FlightId>,
}

impl World {
    fn new(config: Config, seed: u64) -> Self {
        Self {
            policy: Policy::new(config, fastrand::Rng::with_seed(seed)),
            config,
            now: Instant::now(),
            started: Vec::new(),
            live: None,
            lifetimes: HashMap::new(),
            not_before: None,
            generations: Vec::new(),
            token_count: 0,
            stale: Vec::new(),
        }
    }

    fn abandon_at(&self, started: Instant) -> Option<Instant> {
        started
            .checked_add(self.config.refresh_deadline)?
            .checked_add(ABANDON_GRACE)
    }

    /// The live refresh, forgetting it once past its deadline and grace.
    fn live(&mut self) -> Option<(FlightId, Instant)> {
        if let Some((_, started)) = self.live
            && self.abandon_at(started).is_some_and(|at| self.now >= at)
        {
            self.live = None;
        }
        self.live
    }

    fn usable(&self) -> Option<Arc<Entry>> {
        self.policy
            .current()
            .filter(|e| self.now < e.usable_until)
            .cloned()
    }

    fn min_validity(&self, entry: &Entry) -> Duration {
        let lifetime = self.lifetimes[&entry.generation()];
        self.config.min_validity.min(lifetime / 10)
    }

    /// A token handed out has at least its `min_validity` left.
    fn check_served(&self, entry: &Entry) {
        let left = entry.token.expires_at.saturating_duration_since(self.now);
        assert!(
            left >= self.min_validity(entry),
            "a token with {left:?} left was handed out (min_validity {:?})",
            self.min_validity(entry)
        );
        assert!(self.now < entry.usable_until);
    }

    /// A refresh starts: none may be live, and no backoff may hold it back.
    fn check_start(&mut self, start: &Start) {
        assert!(
            self.live().is_none(),
            "a second refresh started while {:?} was live",
            self.live
        );
        if let Some(at) = self.not_before {
            assert!(
                self.now >= at,
                "a refresh started {:?} before its backoff ended",
                at - self.now
            );
        }
        assert_eq!(
            start.deadline,
            self.now.checked_add(self.config.refresh_deadline)
        );
        self.live = Some((start.flight, self.now));
        self.started.push((start.flight, self.now));
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Advance(ms) => self.now += Duration::from_millis(ms),
            Op::Want => self.want(),
            Op::WantUnable => {
                let usable = self.usable();
                let live = self.live().map(|(id, _)| id);
                let unable = Error::invalid_config("no time driver");
                match self.policy.decide(
                    self.now,
                    Event::Want {
                        unable: Some(unable),
                    },
                ) {
                    Decision::Serve(entry) => {
                        assert!(usable.is_some_and(|u| Arc::ptr_eq(&u, &entry)));
                        self.check_served(&entry);
                    }
                    Decision::Fail(error) => {
                        assert!(usable.is_none(), "a usable token was refused");
                        assert_eq!(error.to_string(), "invalid configuration: no time driver");
                    }
                    other => panic!("a caller that cannot run a refresh got {other:?}"),
                }
                // Nothing was started for it.
                assert_eq!(self.live().map(|(id, _)| id), live);
            }
            Op::Background => self.background(),
            Op::FinishOk(i, lifetime) => {
                let Some((id, _)) = self.pick(i) else { return };
                if self.finished_stale(id) {
                    return;
                }
                self.token_count += 1;
                let lifetime = Duration::from_secs(lifetime);
                let access = AccessToken::new(format!("token-{}", self.token_count)).unwrap();
                let token = Token::new(access, self.now + lifetime);
                let own = self.is_last_started(id);
                let before = self.policy.current().cloned();
                let rejection_pending = self.policy.rejected.is_some();
                let decision = self.policy.decide(
                    self.now,
                    Event::Finished {
                        flight: id,
                        result: Ok(token),
                    },
                );
                let Decision::Settled { outcome } = decision else {
                    panic!("a finished refresh settles: {decision:?}");
                };
                if let Outcome::Token(entry) = &outcome {
                    self.lifetimes.insert(entry.generation(), lifetime);
                    self.generations.push(entry.generation());
                    let newer = before
                        .as_ref()
                        .is_none_or(|b| entry.token.expires_at > b.token.expires_at);
                    if own || (newer && !rejection_pending) {
                        assert!(
                            self.policy.current().is_some_and(|c| Arc::ptr_eq(c, entry)),
                            "the live refresh's token (or a newer one) became current"
                        );
                    }
                    let kept = !newer && before.as_ref().is_some_and(|b| self.now < b.usable_until);
                    if !own && (kept || rejection_pending) {
                        assert!(
                            self.policy.current().map(|c| c.generation())
                                == before.as_ref().map(|b| b.generation()),
                            "a late refresh replaced a newer usable token, or came during a rejection"
                        );
                    }
                }
                if own {
                    self.live = None;
                    // An older-or-equal token paces like a failure (jittered: not checked).
                    self.not_before = None;
                }
            }
            Op::FinishErr(i, kind, retry_after) => {
                let Some((id, _)) = self.pick(i) else { return };
                if self.finished_stale(id) {
                    return;
                }
                let retry_after = retry_after.map(Duration::from_secs);
                let error = match kind {
                    0 => Error::server_error(http::StatusCode::SERVICE_UNAVAILABLE, retry_after),
                    1 => Error::rate_limited(retry_after),
                    _ => {
                        Error::rejected(http::StatusCode::BAD_REQUEST, Some("invalid_client"), None)
                    }
                };
                let permanent = error.is_permanent();
                let usable_before = self.usable();
                let own = self.is_last_started(id);
                let decision = self.policy.decide(
                    self.now,
                    Event::Finished {
                        flight: id,
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
                    self.live = None;
                    let cap = self.config.backoff.cap();
                    let mut least = if permanent { cap } else { Duration::ZERO };
                    if let Some(asked) = retry_after {
                        least = least.max(asked.min(cap));
                    }
                    self.not_before = Some(self.now + least);
                }
                // A failure behind a usable token is invisible: the same token is served (and
                // a refresh starts again if the backoff drew no pause).
                if let Some(entry) = usable_before {
                    match self.policy.decide(self.now, Event::Want { unable: None }) {
                        Decision::Serve(served) => assert!(Arc::ptr_eq(&served, &entry)),
                        Decision::ServeAndStart(served, start) => {
                            assert!(Arc::ptr_eq(&served, &entry));
                            self.check_start(&start);
                        }
                        other => panic!("a failure behind a usable token was visible: {other:?}"),
                    }
                }
            }
            Op::Abandon(i) => {
                let Some((id, _)) = self.pick(i) else { return };
                let own = self.is_last_started(id);
                // What paced refreshes before the abandon (an earlier failure's backoff).
                let paced = self.policy.retry_at.is_some_and(|at| self.now < at);
                let decision = self
                    .policy
                    .decide(self.now, Event::Abandoned { flight: id });
                assert!(matches!(
                    decision,
                    Decision::Settled {
                        outcome: Outcome::Abandoned
                    }
                ));
                if own {
                    self.live = None;
                    // Replaced without a backoff: unless an earlier failure still paces, a
                    // request with no usable token starts another at once.
                    if self.usable().is_none() && !paced {
                        match self.policy.decide(self.now, Event::Want { unable: None }) {
                            Decision::StartAndWait(start, _) => self.check_start(&start),
                            other => panic!("an abandoned refresh was not replaced: {other:?}"),
                        }
                    }
                }
            }
            Op::SourceChanged => {
                assert!(matches!(
                    self.policy.decide(self.now, Event::SourceChanged),
                    Decision::Noted
                ));
                // Nothing of the previous session stays: its token, its refresh in flight
                // (whatever that brings back is dropped), the pacing.
                assert!(self.policy.current().is_none());
                self.stale.extend(self.started.iter().map(|(id, _)| *id));
                self.live = None;
                self.not_before = None;
                match self.policy.decide(self.now, Event::Want { unable: None }) {
                    Decision::StartAndWait(start, _) => self.check_start(&start),
                    other => panic!("a request after a new sign-in did not refresh: {other:?}"),
                }
            }
            Op::RejectCurrent => {
                let Some(current) = self.policy.current().cloned() else {
                    return;
                };
                let decision = self.policy.decide(
                    self.now,
                    Event::Rejected {
                        generation: current.generation(),
                    },
                );
                if let Decision::Dropped(true) = decision {
                    assert!(self.policy.current().is_none());
                    // News the backoff did not know of.
                    self.not_before = None;
                }
            }
            Op::RejectOld => {
                let current = self.policy.current().map(|c| c.generation());
                let Some(old) = self
                    .generations
                    .iter()
                    .copied()
                    .find(|g| Some(*g) != current)
                else {
                    return;
                };
                let before = self.policy.current().cloned();
                let decision = self
                    .policy
                    .decide(self.now, Event::Rejected { generation: old });
                assert!(matches!(decision, Decision::Dropped(false)));
                assert_eq!(
                    self.policy.current().map(|c| c.generation()),
                    before.map(|b| b.generation()),
                    "a rejection of an older generation dropped a later one"
                );
            }
        }
    }

    /// Whether `id` is the refresh the policy started last and has not seen end: its end is
    /// the policy's own news (pacing, the rejection it carried), even past its deadline.
    /// A refresh started before a new sign-in ended: it settles as abandoned and changes
    /// nothing. Returns whether `id` was such a refresh.
    fn finished_stale(&mut self, id: FlightId) -> bool {
        if !self.stale.contains(&id) {
            return false;
        }
        let before = self.policy.current().map(|c| c.generation());
        let live = self.policy.flight.as_ref().map(|f| f.id);
        let access = AccessToken::new("stale").unwrap();
        let decision = self.policy.decide(
            self.now,
            Event::Finished {
                flight: id,
                result: Ok(Token::new(access, self.now + Duration::from_secs(3600))),
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
        assert_eq!(self.policy.current().map(|c| c.generation()), before);
        assert_eq!(self.policy.flight.as_ref().map(|f| f.id), live);
        true
    }

    fn is_last_started(&self, id: FlightId) -> bool {
        self.policy.flight.as_ref().is_some_and(|f| f.id == id)
    }

    /// A started refresh, removed from the list (it ends now).
    fn pick(&mut self, i: usize) -> Option<(FlightId, Instant)> {
        if self.started.is_empty() {
            return None;
        }
        let i = i % self.started.len();
        Some(self.started.remove(i))
    }

    fn want(&mut self) {
        let fresh = self
            .policy
            .current()
            .filter(|e| self.now < e.fresh_until)
            .cloned();
        let usable = self.usable();
        let decision = self.policy.decide(self.now, Event::Want { unable: None });
        if let Some(fresh) = &fresh {
            // A fresh token never makes a request wait, nor starts anything.
            match &decision {
                Decision::Serve(entry) => assert!(Arc::ptr_eq(entry, fresh)),
                other => panic!("a fresh token was not served at once: {other:?}"),
            }
        }
        match decision {
            Decision::Serve(entry) => self.check_served(&entry),
            Decision::ServeAndStart(entry, start) => {
                self.check_served(&entry);
                assert!(start.ahead);
                self.check_start(&start);
            }
            Decision::Wait(wait) => {
                assert!(
                    usable.is_none(),
                    "a request waited though a token was usable"
                );
                let (id, started) = self.live().expect("a wait is for the live refresh");
                assert_eq!(wait.flight, id);
                // Every waiter is answered by its own deadline: the refresh's, and its grace.
                assert_eq!(wait.until, self.abandon_at(started));
            }
            Decision::StartAndWait(start, wait) => {
                assert!(
                    usable.is_none(),
                    "a request waited though a token was usable"
                );
                assert!(!start.ahead);
                self.check_start(&start);
                assert_eq!(wait.flight, start.flight);
                assert_eq!(
                    wait.until,
                    start.deadline.and_then(|d| d.checked_add(ABANDON_GRACE))
                );
            }
            Decision::Fail(_) => {
                assert!(
                    usable.is_none(),
                    "a request failed though a token was usable"
                );
                assert!(
                    self.live().is_none(),
                    "a request failed while a refresh was live"
                );
            }
            other => panic!("not a decision for a request: {other:?}"),
        }
    }

    fn background(&mut self) {
        match self.policy.decide(self.now, Event::Background) {
            // Never a sleep that ends at once: the refresher cannot spin.
            Decision::Sleep(until) => assert!(until > self.now, "a sleep until the past"),
            Decision::Wait(wait) => {
                let (id, started) = self.live().expect("a wait is for the live refresh");
                assert_eq!(wait.flight, id);
                assert_eq!(wait.until, self.abandon_at(started));
            }
            Decision::StartAndWait(start, wait) => {
                assert!(
                    self.policy
                        .current()
                        .is_none_or(|e| self.now >= e.fresh_until),
                    "the background refreshed a fresh token"
                );
                self.check_start(&start);
                assert_eq!(
                    wait.until,
                    start.deadline.and_then(|d| d.checked_add(ABANDON_GRACE))
                );
            }
            other => panic!("not a decision for the background refresher: {other:?}"),
        }
    }
}

fn config() -> impl Strategy<Value = Config> {
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
                let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
                if !backoff_jitter {
                    backoff = backoff.without_jitter();
                }
                Config {
                    refresh_ahead: Duration::from_secs(ahead),
                    min_validity: Duration::from_secs(validity),
                    refresh_deadline: Duration::from_secs(deadline),
                    invalidation_throttle: Duration::from_secs(throttle),
                    backoff,
                    refresh_jitter: jitter,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_invariants_hold_after_every_step(
        config in config(),
        seed in any::<u64>(),
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        let mut world = World::new(config, seed);
        for op in ops {
            world.step(op);
        }
    }
}

/// The table's rows that a random sequence reaches rarely, one by one.
#[test]
fn a_refresh_past_its_deadline_and_grace_is_replaced() {
    let config = Config::default();
    let mut world = World::new(config, 1);
    world.step(Op::Want);
    let first = world.live.expect("a refresh started").0;
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
    let mut world = World::new(Config::default(), 7);
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
