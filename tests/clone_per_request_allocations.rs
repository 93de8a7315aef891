//! Core defect 4, in a file of its own: it replaces the global allocator with one that counts
//! the allocations of the measuring thread (a thread-local counter, so the test harness's other
//! threads do not count).
#![cfg(feature = "test-util")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use tower::{Layer as _, Service, ServiceExt as _};
use tower_cognito_auth::{
    AccessToken, BoxFuture, CognitoAuthLayer, Error, Replay, Token, TokenSource,
};
use tower_http::set_header::SetRequestHeaderLayer;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

struct Counting;

// Every call is forwarded to the system allocator unchanged; only a thread-local counter is
// added (no allocation of its own: const-initialised cells without destructors).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as for `dealloc`, and `new_size` is the caller's to uphold.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const REQUESTS: u64 = 10_000;

/// Allocations per call of `one`, on this thread, averaged over many calls after a warm-up.
fn per_request(mut one: impl FnMut()) -> f64 {
    for _ in 0..1_000 {
        one();
    }
    let before = ALLOCATIONS.with(Cell::get);
    COUNTING.with(|on| on.set(true));
    for _ in 0..REQUESTS {
        one();
    }
    COUNTING.with(|on| on.set(false));
    (ALLOCATIONS.with(Cell::get) - before) as f64 / REQUESTS as f64
}

/// A Cognito access token is about 900 bytes.
fn token_text(n: usize) -> String {
    format!("eyJ{n:06}{}", "x".repeat(900))
}

/// One-hour tokens of realistic size.
struct Source(AtomicUsize);

impl TokenSource for Source {
    fn fetch(&self) -> BoxFuture<'_, Result<Token, Error>> {
        let n = self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let expires_at = tokio::time::Instant::now() + Duration::from_secs(3600);
            Ok(Token::new(AccessToken::new(token_text(n))?, expires_at))
        })
    }
}

/// Always ready, answers 200 at once, allocates nothing.
#[derive(Clone, Copy)]
struct Noop;

impl<B> Service<Request<B>> for Noop {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request<B>) -> Self::Future {
        ready(Ok(Response::new(Full::default())))
    }
}

/// A GET as a client builds it (a static URI: no parsing in the measured loop).
fn get() -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::default());
    *request.uri_mut() = Uri::from_static("http://api.example/wallets");
    request
}

/// Polls `future` once, in place; the hot path with a fresh token never waits.
fn now<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the hot path waited"),
    }
}

/// `template.clone().oneshot(get())`, the template never serving itself.
fn clone_per_request<S>(template: &S) -> f64
where
    S: Service<Request<Full<Bytes>>> + Clone,
    S::Error: std::fmt::Debug,
{
    per_request(|| drop(now(template.clone().oneshot(get())).unwrap()))
}

/// The same service for every request.
fn reused<S>(mut service: S) -> f64
where
    S: Service<Request<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    per_request(|| {
        now(service.ready()).unwrap();
        drop(now(service.call(get())).unwrap());
    })
}

/// Core defect 4: a service cloned per request (`svc.clone().oneshot(req)`, from a template
/// that never serves itself) allocates per request: each clone copies the ~900-byte token.
/// Clone-per-request must cost no more than tower-http's `SetRequestHeader` (with
/// `Replay::Never`), and no more than the same service reused (with the default replay, whose
/// copy of the request head is the same either way).
#[test]
fn a_service_cloned_per_request_allocates_no_more_than_one_reused() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = rt.enter();
    let warm = |replay: Replay| {
        let layer = CognitoAuthLayer::builder()
            .token_source(Source(AtomicUsize::new(0)))
            .replay(replay)
            .build()
            .unwrap();
        rt.block_on(layer.token()).unwrap();
        layer
    };
    let header = HeaderValue::from_str(&format!("Bearer {}", token_text(0))).unwrap();
    let set_header = SetRequestHeaderLayer::if_not_present(AUTHORIZATION, header).layer(Noop);
    let never = warm(Replay::Never);
    let defaults = warm(Replay::default());

    let floor = clone_per_request(&set_header);
    let never_cloned = clone_per_request(&never.layer(Noop));
    let defaults_cloned = clone_per_request(&defaults.layer(Noop));
    let defaults_reused = reused(defaults.layer(Noop));
    let never_reused = reused(never.layer(Noop));
    let table = format!(
        "allocations per request: SetRequestHeader cloned {floor:.2}; Replay::Never cloned \
         {never_cloned:.2}, reused {never_reused:.2}; defaults cloned {defaults_cloned:.2}, \
         reused {defaults_reused:.2}"
    );
    // Allocation counts are whole numbers per request; half an allocation of slack absorbs a
    // one-off allocation in the loop (a lazily grown table), never one per request.
    let mut violations = Vec::new();
    if never_cloned >= floor + 0.5 {
        violations.push("Replay::Never cloned per request allocates more than SetRequestHeader");
    }
    if (defaults_cloned - defaults_reused).abs() >= 0.5 {
        violations.push("defaults: cloned per request allocates other than reused");
    }
    assert!(violations.is_empty(), "{violations:?}; {table}");
}
