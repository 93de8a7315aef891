//! 10,000 concurrent requests arriving on an empty (expired) cache, with a token endpoint that
//! takes 50 ms: the layer's single-flight refresh against a naive per-caller
//! check-then-refresh (the A55 guide's pattern) on the same workload.
//!
//! ```text
//! cargo bench --bench stampede
//! ```
//!
//! Criterion measures the wall time for all 10,000 to complete; the number of token requests
//! and the p99 of the per-request wait are printed to stderr (`stampede: …`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Noop, Source};
use criterion::{Criterion, criterion_group, criterion_main};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tower::{Layer, ServiceExt as _};

const REQUESTS: usize = 10_000;
const TOKEN_DELAY: Duration = Duration::from_millis(50);

/// The layer: one refresh for everyone. Returns (token requests, per-request waits).
async fn through_layer() -> (usize, Vec<Duration>) {
    let source = Source::new(TOKEN_DELAY, Duration::from_secs(3600));
    let layer = common::builder(&source).build().expect("a valid layer");
    let tasks: Vec<_> = (0..REQUESTS)
        .map(|_| {
            let service = layer.layer(Noop);
            tokio::spawn(async move {
                let start = Instant::now();
                let response = service.oneshot(common::get()).await;
                assert!(response.is_ok());
                start.elapsed()
            })
        })
        .collect();
    let mut waits = Vec::with_capacity(REQUESTS);
    for task in tasks {
        waits.push(task.await.expect("a request task"));
    }
    (source.calls(), waits)
}

/// The naive cache: each caller checks, and refreshes itself when there is no token.
async fn naive() -> (usize, Vec<Duration>) {
    let source = Source::new(TOKEN_DELAY, Duration::from_secs(3600));
    let cached: Arc<Mutex<Option<(String, Instant)>>> = Arc::default();
    let tasks: Vec<_> = (0..REQUESTS)
        .map(|_| {
            let (source, cached) = (source.clone(), cached.clone());
            tokio::spawn(async move {
                let start = Instant::now();
                let current = cached.lock().await.clone();
                let _token = match current {
                    Some((token, expires_at)) if Instant::now() < expires_at => token,
                    _ => {
                        let token = tower_cognito_auth::TokenSource::fetch(&*source)
                            .await
                            .expect("a token");
                        let text = token.access_token().secret().to_owned();
                        *cached.lock().await = Some((text.clone(), token.expires_at()));
                        text
                    }
                };
                start.elapsed()
            })
        })
        .collect();
    let mut waits = Vec::with_capacity(REQUESTS);
    for task in tasks {
        waits.push(task.await.expect("a request task"));
    }
    (source.calls(), waits)
}

fn p99(mut waits: Vec<Duration>) -> Duration {
    waits.sort_unstable();
    waits[(waits.len() * 99 / 100).min(waits.len() - 1)]
}

fn stampede(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");

    let (layer_calls, layer_waits) = rt.block_on(through_layer());
    let (naive_calls, naive_waits) = rt.block_on(naive());
    assert_eq!(
        layer_calls, 1,
        "one token request for 10,000 waiting requests"
    );
    eprintln!(
        "stampede: cognito_auth token_requests={layer_calls} p99={:.1}ms; naive token_requests={naive_calls} p99={:.1}ms",
        p99(layer_waits).as_secs_f64() * 1e3,
        p99(naive_waits).as_secs_f64() * 1e3,
    );

    let mut group = c.benchmark_group("stampede");
    group.bench_function("cognito_auth_10k", |b| {
        b.to_async(&rt).iter(through_layer);
    });
    group.bench_function("naive_10k", |b| {
        b.to_async(&rt).iter(naive);
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config(10, Duration::from_secs(3));
    targets = stampede
}
criterion_main!(benches);
