//! Core defect 7 and issue 28's core item 1, in a file of their own: they install a global
//! panic hook (and take turns at it).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tower_cognito_auth::{AccessToken, BoxFuture, Error, Token, TokenCache, TokenSource};

struct OneHour;

impl TokenSource for OneHour {
    fn fetch(&self) -> BoxFuture<'_, Result<Token, Error>> {
        Box::pin(async {
            let expires_at = tokio::time::Instant::now() + Duration::from_secs(3600);
            Ok(Token::new(AccessToken::new("token-1")?, expires_at))
        })
    }
}

static HOOK_CALLS: AtomicUsize = AtomicUsize::new(0);

/// The panic hook is the process's: one test at a time sets it.
static HOOK: Mutex<()> = Mutex::new(());

/// Core defect 7: a runtime without a time driver is found out without a panic on the hot
/// path, and with one probe (Tokio's panic, caught) per request that needs a refresh: Tokio
/// has no way to ask a runtime whether it has timers (tokio-rs/tokio#8361), so that one probe
/// stays until it does. The old code probed twice per request (in the refresh and in the
/// waiter). The request gets its error, naming `enable_time`.
#[test]
fn a_runtime_without_a_time_driver_gets_an_error_and_one_probe_at_most() {
    let _turn = HOOK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    HOOK_CALLS.store(0, Ordering::SeqCst);
    let cache = TokenCache::builder(OneHour).build().unwrap();
    let without_timers = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let with_timers = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {
        HOOK_CALLS.fetch_add(1, Ordering::SeqCst);
    }));
    let refused = without_timers.block_on(cache.token());
    let probes = HOOK_CALLS.swap(0, Ordering::SeqCst);
    // With a token in the cache, requests on the runtime without timers are served from it:
    // no probe, no panic.
    let fetched = with_timers.block_on(cache.token());
    let served: Vec<_> = (0..100)
        .map(|_| without_timers.block_on(cache.token()))
        .collect();
    let hot_path_panics = HOOK_CALLS.load(Ordering::SeqCst);
    std::panic::set_hook(previous);

    let error = refused.expect_err("no token without a time driver");
    assert!(error.to_string().contains("enable_time"), "{error}");
    assert_eq!(
        probes, 1,
        "the panic hook ran {probes} times for one request"
    );
    assert_eq!(fetched.unwrap().secret(), "token-1");
    assert!(served.iter().all(Result::is_ok));
    assert_eq!(
        hot_path_panics, 0,
        "the hot path panicked {hot_path_panics} times"
    );
}

/// Issue 28, core item 1: with the background refresher on, a cache built outside any runtime
/// and requests on a runtime without a time driver, no request on the hot path runs the timer
/// probe (Tokio's panic, caught): a panic hook (Sentry and the like) would record one panic
/// per request. The refresher finds out on its own, once for that runtime.
#[test]
fn a_background_refresher_without_timers_costs_the_hot_path_no_panic() {
    let _turn = HOOK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let cache = TokenCache::builder(OneHour)
        .background_refresh(true)
        .build()
        .unwrap();
    let without_timers = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // A token, fetched on a runtime with timers that then goes away, and the background
    // refresher it ran with it.
    let with_timers = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fetched = with_timers.block_on(cache.token());
    drop(with_timers);
    let previous = std::panic::take_hook();
    HOOK_CALLS.store(0, Ordering::SeqCst);
    std::panic::set_hook(Box::new(|_| {
        HOOK_CALLS.fetch_add(1, Ordering::SeqCst);
    }));
    let served: Vec<_> = (0..100)
        .map(|_| {
            without_timers.block_on(async {
                let token = cache.token().await;
                // Whatever the requests spawned runs now.
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                token
            })
        })
        .collect();
    let panics = HOOK_CALLS.load(Ordering::SeqCst);
    std::panic::set_hook(previous);

    assert_eq!(fetched.unwrap().secret(), "token-1");
    assert!(served.iter().all(Result::is_ok));
    // One: the refresher's task, spawned by the first request, found no timers and ended;
    // no request probed, and none spawned it again.
    assert_eq!(
        panics, 1,
        "{panics} panics for 100 requests served from the cache"
    );
}
