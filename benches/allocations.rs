//! Heap allocations per request on the hot path (fresh token), counted by a global allocator.
//!
//! ```text
//! cargo bench --bench allocations
//! ```
//!
//! Prints a table: allocations per request for the bare inner service, tower-http's
//! `SetRequestHeader`, and the layer in its configurations. Building the request itself
//! allocates (its header map, an extension); the difference to `bare` is what each middleware
//! adds.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Noop, Source, call_now, get, get_4_headers, grpc_post, post_1k};
use http::HeaderValue;
use http::header::AUTHORIZATION;
use tower::Layer;
use tower_cognito_auth::Replay;
use tower_http::follow_redirect::FollowRedirectLayer;
use tower_http::set_header::SetRequestHeaderLayer;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY-free: every call is forwarded to the system allocator unchanged; only a counter is
// added. (`unsafe` is needed by the trait itself.)
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `dealloc`, and `new_size` is the caller's to uphold.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const REQUESTS: u64 = 10_000;

fn per_request(mut one: impl FnMut()) -> f64 {
    for _ in 0..1_000 {
        one();
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..REQUESTS {
        one();
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / REQUESTS as f64
}

/// A row name that lives as long as the bench.
fn leak(name: String) -> &'static str {
    Box::leak(name.into_boxed_str())
}

fn main() {
    let rt = common::current_thread();
    let source = Source::new(Duration::ZERO, Duration::from_secs(3600));
    let filled = |builder: tower_cognito_auth::CognitoAuthLayerBuilder| {
        let layer = builder.build().expect("a valid layer");
        rt.block_on(layer.token()).expect("a token");
        layer
    };

    let mut rows: Vec<(&str, f64)> = Vec::new();
    let mut bare = Noop;
    rows.push((
        "GET, bare inner service",
        per_request(|| drop(call_now(&mut bare, get()))),
    ));
    let header = HeaderValue::from_str(&format!("Bearer {}", common::token_text(0)))
        .expect("a valid header");
    let mut set = SetRequestHeaderLayer::overriding(AUTHORIZATION, header).layer(Noop);
    rows.push((
        "GET, SetRequestHeader (floor)",
        per_request(|| drop(call_now(&mut set, get()))),
    ));
    let mut auth = filled(common::builder(&source)).layer(Noop);
    rows.push((
        "GET, CognitoAuth (defaults)",
        per_request(|| drop(call_now(&mut auth, get()))),
    ));
    let mut limit0 = filled(common::builder(&source).replay_body_limit(0)).layer(Noop);
    rows.push((
        "GET, CognitoAuth replay_body_limit(0)",
        per_request(|| drop(call_now(&mut limit0, get()))),
    ));
    let mut never = filled(common::builder(&source).replay(Replay::Never)).layer(Noop);
    rows.push((
        "GET, CognitoAuth Replay::Never",
        per_request(|| drop(call_now(&mut never, get()))),
    ));
    rows.push((
        "POST 1 KiB, bare inner service",
        per_request(|| drop(call_now(&mut bare, post_1k()))),
    ));
    rows.push((
        "POST 1 KiB, CognitoAuth (defaults)",
        per_request(|| drop(call_now(&mut auth, post_1k()))),
    ));

    type MakeRequest = fn() -> http::Request<http_body_util::Full<bytes::Bytes>>;
    let realistic: [(&str, MakeRequest); 2] = [
        ("GET, 4 headers", get_4_headers),
        ("gRPC POST, extension, 100 B", grpc_post),
    ];
    for (kind, make) in realistic {
        rows.push((
            leak(format!("{kind}, bare")),
            per_request(|| drop(call_now(&mut bare, make()))),
        ));
        rows.push((
            leak(format!("{kind}, SetRequestHeader")),
            per_request(|| drop(call_now(&mut set, make()))),
        ));
        let mut follow = FollowRedirectLayer::new().layer(Noop);
        rows.push((
            leak(format!("{kind}, FollowRedirect")),
            per_request(|| drop(call_now(&mut follow, make()))),
        ));
        rows.push((
            leak(format!("{kind}, CognitoAuth (defaults)")),
            per_request(|| drop(call_now(&mut auth, make()))),
        ));
        rows.push((
            leak(format!("{kind}, CognitoAuth Replay::Never")),
            per_request(|| drop(call_now(&mut never, make()))),
        ));
    }

    // A clone of a template service per request, as `client.clone().oneshot(request)` does.
    let template_set = set.clone();
    let template_auth = filled(common::builder(&source)).layer(Noop);
    let template_never = filled(common::builder(&source).replay(Replay::Never)).layer(Noop);
    rows.push((
        "GET, 4 headers, cloned per request, SetRequestHeader",
        per_request(|| drop(call_now(&mut template_set.clone(), get_4_headers()))),
    ));
    rows.push((
        "GET, 4 headers, cloned per request, CognitoAuth (defaults)",
        per_request(|| drop(call_now(&mut template_auth.clone(), get_4_headers()))),
    ));
    rows.push((
        "GET, 4 headers, cloned per request, CognitoAuth Replay::Never",
        per_request(|| drop(call_now(&mut template_never.clone(), get_4_headers()))),
    ));

    println!("{:<62} {:>12}", "allocations per request", "");
    for (name, n) in rows {
        println!("{name:<62} {n:>8.2}");
    }
}
