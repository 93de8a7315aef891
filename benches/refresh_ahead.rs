//! Requests flowing through the refresh-ahead window: no caller waits, one token request.
//!
//! ```text
//! cargo bench --bench refresh_ahead
//! ```
//!
//! Tokio's clock is paused, so the token can be held inside its window (usable, no longer
//! fresh) for as long as criterion measures. The refresh runs on that runtime, which is not
//! driven while measuring: it stays in flight, the state every request of a real window meets
//! until the new token arrives. `fresh` is the same hot path with a fresh token, on the same
//! paused clock, for comparison. A line on stderr gives p50/p99 of single calls in both
//! states and the token requests (`refresh_ahead: …`).

mod common;

use std::time::{Duration, Instant};

use common::{Noop, Source, call_now, get};
use criterion::{Criterion, criterion_group, criterion_main};
use tower::Layer;

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort_unstable();
    let at = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)];
    (at(50), at(99))
}

fn single_calls<S>(service: &mut S) -> Vec<Duration>
where
    S: tower::Service<http::Request<http_body_util::Full<bytes::Bytes>>>,
    S::Error: std::fmt::Debug,
{
    (0..20_000)
        .map(|_| {
            let start = Instant::now();
            call_now(service, get());
            start.elapsed()
        })
        .collect()
}

fn refresh_ahead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let _inside = rt.enter();
    let source = Source::new(Duration::from_millis(50), Duration::from_secs(3600));
    let layer = common::builder(&source).build().expect("a valid layer");
    rt.block_on(layer.token()).expect("a token");
    let mut service = layer.layer(Noop);

    let (fresh_p50, fresh_p99) = percentiles(single_calls(&mut service));
    let mut group = c.benchmark_group("refresh_ahead");
    group.bench_function("fresh", |b| b.iter(|| call_now(&mut service, get())));

    // Into the window: fresh until 3300 s (less up to 360 s of jitter), usable until 3570 s.
    rt.block_on(tokio::time::advance(Duration::from_secs(3400)));
    let (window_p50, window_p99) = percentiles(single_calls(&mut service));
    group.bench_function("in_window_refresh_running", |b| {
        b.iter(|| call_now(&mut service, get()))
    });
    group.finish();

    let stats = layer.stats();
    eprintln!(
        "refresh_ahead: token_requests={} (refresh_ahead={}, waited={}) window p50={}ns p99={}ns; fresh p50={}ns p99={}ns",
        stats.token_requests,
        stats.refresh_ahead,
        stats.waited,
        window_p50.as_nanos(),
        window_p99.as_nanos(),
        fresh_p50.as_nanos(),
        fresh_p99.as_nanos(),
    );
    assert_eq!(
        stats.token_requests, 2,
        "the first token and one refresh ahead"
    );
    assert_eq!(stats.waited, 1, "only the very first request waited");
}

criterion_group! {
    name = benches;
    config = common::config(30, Duration::from_secs(2));
    targets = refresh_ahead
}
criterion_main!(benches);
