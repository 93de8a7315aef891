//! What a user session costs at a server's scale (issue 26): threads, file descriptors and
//! heap per session, for 10,000 sessions in one process, each refreshed once against the
//! loopback token endpoint with the built-in client (shared by all of them). Linux only.
//!
//! ```text
//! cargo bench --features test-util --bench sessions
//! ```
//!
//! Prints, for the grants alone and for grants each behind a layer holding its token: the
//! threads and descriptors before and after, the heap the sessions hold (live bytes counted by
//! a global allocator, measured as what dropping them frees, so that the loopback endpoint's
//! own records of 10,000 sessions are not counted), and the resident set growth, which does
//! include the endpoint's records (an upper bound).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};

use tower_cognito_auth::testing::TokenEndpoint;
use tower_cognito_auth::{CognitoAuthLayer, RefreshTokenGrant, TokenSource};

struct Counting;

/// Heap bytes allocated and not yet freed.
static LIVE: AtomicI64 = AtomicI64::new(0);

// Every call is forwarded to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        // SAFETY: as for `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SESSIONS: usize = 10_000;

fn status(field: &str) -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1)
}

fn descriptors() -> i64 {
    std::fs::read_dir("/proc/self/fd").map_or(-1, |d| d.count() as i64)
}

struct Sample {
    threads: i64,
    fds: i64,
    heap: i64,
    rss_kib: i64,
}

fn sample() -> Sample {
    Sample {
        threads: status("Threads:"),
        fds: descriptors(),
        heap: LIVE.load(Ordering::Relaxed),
        rss_kib: status("VmRSS:"),
    }
}

fn grant(endpoint: &TokenEndpoint) -> RefreshTokenGrant {
    RefreshTokenGrant::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .refresh_token(endpoint.new_session())
        .build()
        .expect("a grant")
}

fn report(what: &str, before: &Sample, with: &Sample, dropped: &Sample) {
    let per = |a: i64, b: i64| (b - a) as f64 / SESSIONS as f64;
    println!(
        "{what:<28} threads {:>3} -> {:<3} fds {:>3} -> {:<3} heap/session {:>6.0} B   RSS growth/session {:>5.2} KiB",
        before.threads,
        with.threads,
        before.fds,
        with.fds,
        per(dropped.heap, with.heap),
        per(before.rss_kib, with.rss_kib),
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let endpoint = TokenEndpoint::builder()
            .public_client(true)
            .rotate_refresh_tokens(true)
            .start()
            .await
            .expect("the loopback endpoint");
        // What all sessions share, started by the first ones.
        let warm: Vec<_> = (0..10).map(|_| grant(&endpoint)).collect();
        for g in &warm {
            g.fetch().await.expect("a token");
        }
        println!("{SESSIONS} sessions, each refreshed once (built-in client, loopback endpoint)");

        let before = sample();
        let mut grants = Vec::with_capacity(SESSIONS);
        for _ in 0..SESSIONS {
            let g = grant(&endpoint);
            g.fetch().await.expect("a token");
            grants.push(g);
        }
        let with = sample();
        drop(grants);
        report("grant", &before, &with, &sample());

        let before = sample();
        let mut layers = Vec::with_capacity(SESSIONS);
        for _ in 0..SESSIONS {
            let layer = CognitoAuthLayer::builder()
                .token_source(grant(&endpoint))
                .build()
                .expect("a layer");
            layer.token().await.expect("a token");
            layers.push(layer);
        }
        let with = sample();
        drop(layers);
        report("grant + layer with a token", &before, &with, &sample());
        drop(warm);
    });
}
