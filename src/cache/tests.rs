//! The cache's tests: the shell around the policy, with a token source that counts.

use super::*;
use crate::grant::BoxFuture;
use std::sync::atomic::AtomicUsize;
use tokio::time::advance;

#[derive(Clone)]
enum Mode {
    Ok,
    Fail(Error),
    Panic,
    /// `fetch()` itself panics, before it returns a future.
    PanicAtOnce,
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
        let mode = self.mode.lock().unwrap().clone();
        if let Mode::PanicAtOnce = mode {
            self.calls.fetch_add(1, Ordering::SeqCst);
            panic!("the test source panics before it returns a future");
        }
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
                Mode::Panic | Mode::PanicAtOnce => panic!("the test source panics"),
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
    assert!(
        results.iter().all(
            |r| r.as_ref().unwrap_err().status() == Some(http::StatusCode::SERVICE_UNAVAILABLE)
        )
    );
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
            .expect("the waiter gave up on its own at the refresh deadline and its grace");
        assert!(waited.unwrap_err().is_timeout());
        assert!(Instant::now() - start <= Duration::from_secs(31));
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
    assert!(Instant::now() >= old.serve_until);
    // ... meanwhile another request starts the refresh-ahead, which completes.
    cache.get().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(source.calls(), 2);
    // The first request now finds no refresh running and asks for one, as the hot path does.
    let _ = cache.shared.want_step(Instant::now());
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

/// The threads' copies of the header (`local`) follow the cache's version: a copy taken while
/// a token was fresh is not used once that token is dropped (a rejection), and the next token
/// is copied in its place.
#[tokio::test(start_paused = true)]
async fn a_thread_copy_is_not_used_after_its_token_was_dropped() {
    let source = TestSource::new(Duration::ZERO, HOUR);
    let cache = source.cache().build().unwrap();
    let first = cache.get().await.unwrap();
    let (header, generation) = cache.fresh_header().expect("a copy of the fresh token");
    assert_eq!(generation, first.generation());
    assert!(header.is_sensitive());
    assert!(cache.invalidate(generation));
    assert!(
        cache.fresh_header().is_none(),
        "the dropped token's copy was used"
    );
    let second = cache.get().await.unwrap();
    let (next, next_generation) = cache.fresh_header().expect("a copy of the new token");
    assert_eq!(next_generation, second.generation());
    assert_eq!(next.to_str().unwrap(), "Bearer token-2");
}

/// A refresh dropped with its runtime while that runtime's thread unwinds from a panic of its
/// own (a failed assertion in a test, a worker thread that panics) is abandoned, not reported
/// as a panic of the token source: other runtimes sharing the cache are not paced for it.
#[test]
fn a_refresh_dropped_while_its_thread_unwinds_is_abandoned() {
    let source = TestSource::new(Duration::ZERO, HOUR);
    source.set(Mode::Hang);
    let cache = source.cache().build().unwrap();
    let on_dying = cache.clone();
    let unwound = std::thread::spawn(move || {
        let runtime = test_runtime(false);
        runtime.block_on(async {
            let waiting = tokio::spawn(async move { on_dying.token().await });
            // The refresh starts and hangs in the source.
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            drop(waiting);
        });
        // The runtime (and the refresh task in it) is dropped while this thread unwinds.
        let _runtime = runtime;
        panic!("the application's own panic");
    })
    .join();
    assert!(unwound.is_err(), "the thread panicked");
    assert_eq!(source.calls(), 1, "the refresh had started");
    source.set(Mode::Ok);
    let token = test_runtime(true).block_on(cache.token());
    assert_eq!(
        token.expect("no backoff for an abandoned refresh").secret(),
        "token-2"
    );
}

/// Issue #28, core item 2: a token source whose `fetch()` panics before it returns its future
/// is a failure of the source, caught and paced like a panic inside the future: one fetch,
/// an error that says so, and no second fetch before the backoff ends.
#[tokio::test(start_paused = true)]
async fn a_source_that_panics_before_its_future_is_paced() {
    let source = TestSource::new(Duration::ZERO, HOUR);
    source.set(Mode::PanicAtOnce);
    let cache = source.cache().build().unwrap();
    let error = cache.token().await.unwrap_err();
    assert_eq!(error.kind(), crate::ErrorKind::Internal);
    assert!(error.to_string().contains("panicked"), "{error}");
    assert_eq!(source.calls(), 1, "one fetch for one request");
    let again = cache.token().await.unwrap_err();
    assert!(again.to_string().contains("panicked"), "{again}");
    assert_eq!(source.calls(), 1, "no fetch before the backoff ends");
    assert_eq!(cache.stats().token_failures, 1);
    // After the backoff (1 s, no jitter), the source is asked again.
    source.set(Mode::Ok);
    advance(Duration::from_secs(1)).await;
    assert_eq!(cache.token().await.unwrap().secret(), "token-2");
}

/// Issue #28, core item 3: a rejection drops the token but does not shorten the pause a
/// server's `Retry-After` asked for, nor a permanent error's: with the API answering 401 and
/// the token endpoint answering 429, no token request goes out before the endpoint allows it.
#[tokio::test(start_paused = true)]
async fn a_rejection_does_not_shorten_a_retry_after_or_a_permanent_pause() {
    let cases = [
        (
            Error::rate_limited(Some(Duration::from_secs(40))),
            Duration::from_secs(40),
        ),
        (
            Error::rejected(http::StatusCode::BAD_REQUEST, Some("invalid_client"), None),
            Duration::from_secs(60),
        ),
    ];
    for (error, pause) in cases {
        let source = TestSource::new(Duration::ZERO, HOUR);
        let cache = source.cache().build().unwrap();
        let first = cache.get().await.unwrap();
        // Into the refresh-ahead window (fresh for 3300 s without jitter): the refresh ahead
        // fails, unseen by the callers, who keep the current token.
        source.set(Mode::Fail(error.clone()));
        advance(Duration::from_secs(3301)).await;
        assert_eq!(cache.get().await.unwrap().generation(), first.generation());
        for _ in 0..10 {
            if cache.stats().token_failures == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(cache.stats().token_failures, 1, "the refresh ahead failed");
        assert_eq!(source.calls(), 2);
        // The API rejects the current token: dropped, and the pause still holds.
        assert!(cache.invalidate(first.generation()));
        let refused = cache.get().await.unwrap_err();
        assert_eq!(refused.kind(), error.kind(), "{refused}");
        assert_eq!(
            source.calls(),
            2,
            "a token request before the pause of {pause:?} ended ({error})"
        );
        advance(pause - Duration::from_millis(1)).await;
        assert!(cache.get().await.is_err());
        assert_eq!(source.calls(), 2, "a token request within the pause");
        source.set(Mode::Ok);
        advance(Duration::from_millis(1)).await;
        assert_eq!(cache.token().await.unwrap().secret(), "token-3");
    }
}

/// Issue #28, core item 4: a request on a runtime that is shutting down (which drops a
/// spawned refresh on the spot) is told so at once, and no refresh is counted for a fetch
/// that never ran.
#[test]
fn a_request_on_a_runtime_shutting_down_is_told_so() {
    let source = TestSource::new(Duration::ZERO, HOUR);
    let cache = source.cache().build().unwrap();
    // A current-thread runtime shuts down in its drop, on this thread: its handle then
    // refuses every task.
    let dying = test_runtime(false);
    let handle = dying.handle().clone();
    drop(dying);
    let _entered = handle.enter();
    let error = match cache.lookup(|_| ()) {
        Lookup::Failed(error) => error,
        Lookup::Wait(mut wait) => {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match wait.as_mut().poll(&mut cx) {
                std::task::Poll::Ready(Err(error)) => error,
                other => panic!("the request was not answered at once: {other:?}"),
            }
        }
        Lookup::Ready(()) => panic!("a token without a fetch"),
    };
    assert_eq!(error.kind(), crate::ErrorKind::Internal);
    assert!(error.to_string().contains("shutting down"), "{error}");
    assert_eq!(source.calls(), 0);
    let stats = cache.stats();
    assert_eq!(
        stats.refreshes, 0,
        "refreshes counted with no fetch: {stats:?}"
    );
    assert_eq!(stats.token_requests, 0, "{stats:?}");
}

/// Issue #28, core item 1: a background refresher spawned by a request served at once on a
/// runtime without timers finds out in its own task and blocks itself (no request probes);
/// requests served at once then leave it alone, and a request that reaches the policy on a
/// runtime with timers starts it there.
#[test]
fn a_blocked_background_refresher_resumes_on_a_runtime_with_timers() {
    let source = TestSource::new(Duration::ZERO, HOUR);
    let cache = source.cache().background_refresh(true).build().unwrap();
    assert_eq!(
        cache.shared.background.state(),
        (false, false),
        "built outside a runtime"
    );
    // A token, fetched on a runtime with timers that then goes away with the refresher.
    test_runtime(false).block_on(cache.token()).unwrap();
    assert_eq!(cache.shared.background.state(), (false, false));
    let no_timers = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    no_timers.block_on(async {
        cache.token().await.unwrap();
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
    });
    assert_eq!(cache.shared.background.state(), (false, true), "blocked");
    let with_timers = test_runtime(false);
    with_timers.block_on(async {
        // Served at once: the blocked refresher is left alone.
        cache.token().await.unwrap();
        assert_eq!(cache.shared.background.state(), (false, true));
        // A request that reaches the policy has probed its runtime: the refresher starts.
        assert!(matches!(
            cache.shared.want_step(Instant::now()),
            Step::Ready(_)
        ));
        assert_eq!(cache.shared.background.state(), (true, false), "resumed");
    });
    drop(with_timers);
    assert_eq!(source.calls(), 1);
}
