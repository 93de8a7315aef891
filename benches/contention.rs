//! The hot path from 1, 2 and 4 threads at once on one shared layer: per-thread throughput
//! must not collapse (the hot path takes no lock; a fresh token is one atomic load).
//!
//! ```text
//! cargo bench --bench contention
//! ```
//!
//! Each thread has its own `CognitoAuth` service from the same layer, so all share one cache.
//! Reported time is per request per thread; on a 2-core machine, 4 threads share 2 cores.
//! `set_header/N` is tower-http's `SetRequestHeader` (a static header, one service per thread)
//! under the same load: how far this machine scales at all.

mod common;

use std::sync::Barrier;
use std::time::{Duration, Instant};

use common::{Noop, Source, call_now, get};
use criterion::{BenchmarkId, Criterion, criterion_group};
use http::HeaderValue;
use http::header::AUTHORIZATION;
use tower::{Layer, Service};
use tower_http::set_header::SetRequestHeaderLayer;

/// Per-request time per thread, with `threads` threads each calling its own service.
fn per_thread<S, F>(threads: usize, iters: u64, make: F) -> Duration
where
    S: Service<http::Request<http_body_util::Full<bytes::Bytes>>> + Send,
    S::Error: std::fmt::Debug,
    F: Fn() -> S,
{
    let barrier = Barrier::new(threads);
    let elapsed: Vec<Duration> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let mut service = make();
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        call_now(&mut service, get());
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a bench thread"))
            .collect()
    });
    // Every thread did `iters` requests: the slowest one is the per-thread time.
    elapsed.into_iter().max().unwrap_or_default()
}

fn contention(c: &mut Criterion) {
    let rt = common::current_thread();
    let source = Source::new(Duration::ZERO, Duration::from_secs(3600));
    let layer = common::builder(&source).build().expect("a valid layer");
    rt.block_on(layer.token()).expect("a token");

    let mut group = c.benchmark_group("contention");
    for threads in [1usize, 2, 4] {
        group.bench_with_input(
            BenchmarkId::new("cognito_auth", threads),
            &threads,
            |b, &threads| b.iter_custom(|iters| per_thread(threads, iters, || layer.layer(Noop))),
        );
    }
    let header = HeaderValue::from_str(&format!("Bearer {}", common::token_text(0)))
        .expect("a valid header");
    let set_header = SetRequestHeaderLayer::overriding(AUTHORIZATION, header);
    for threads in [1usize, 2, 4] {
        group.bench_with_input(
            BenchmarkId::new("set_header", threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| per_thread(threads, iters, || set_header.layer(Noop)))
            },
        );
    }
    group.finish();
    if source.calls() != 1 {
        eprintln!("contention: unexpected token requests: {}", source.calls());
    }
}

criterion_group! {
    name = benches;
    config = common::config(20, Duration::from_secs(2));
    targets = contention
}
/// `criterion_main!`, then the goal's ratio from the medians of this run.
fn main() {
    let mut medians = common::Medians::start();
    benches();
    Criterion::default().configure_from_args().final_summary();
    for (name, goal) in [
        ("cognito_auth", "goal: at least 1.8"),
        ("set_header", "how far this machine scales"),
    ] {
        let at = |threads: usize| medians.ns(&format!("contention/{name}/{threads}"));
        if let (Some(one), Some(two)) = (at(1), at(2)) {
            medians.line(format!(
                "{name}: throughput of 2 threads / of 1: 2 x {one:.1} / {two:.1} = {:.2} ({goal})",
                2.0 * one / two
            ));
        }
    }
    medians.print(
        "The goal's ratio, from criterion's medians in this run (ns per request per thread):",
    );
}
