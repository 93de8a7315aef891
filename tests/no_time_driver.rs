//! Core defect 7, in a file of its own: it installs a global panic hook.

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

/// Core defect 7: a runtime without a time driver is found out without a panic on the hot
/// path, and with one probe (Tokio's panic, caught) per request that needs a refresh: Tokio
/// has no way to ask a runtime whether it has timers (tokio-rs/tokio#8361), so that one probe
/// stays until it does. The old code probed twice per request (in the refresh and in the
/// waiter). The request gets its error, naming `enable_time`.
#[test]
fn a_runtime_without_a_time_driver_gets_an_error_and_one_probe_at_most() {
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
