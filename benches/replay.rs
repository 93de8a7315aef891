//! The cost of a 401 and its transparent replay (with a 1 KiB JSON body), against sending the
//! same request twice by hand.
//!
//! ```text
//! cargo bench --bench replay
//! ```
//!
//! The inner service answers 401 and 200 in turn. The layer has no invalidation throttle here,
//! so every 401 drops the token and the replay waits for a new one, from a source that answers
//! at once on a spawned task: the figure includes that refresh.

mod common;

use std::time::Duration;

use common::{RejectEveryOther, Source, post_1k};
use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Layer, ServiceExt as _};

fn replay(c: &mut Criterion) {
    let rt = common::current_thread();
    let source = Source::new(Duration::ZERO, Duration::from_secs(3600));
    let layer = common::builder(&source)
        .invalidation_throttle(Duration::ZERO)
        .build()
        .expect("a valid layer");
    rt.block_on(layer.token()).expect("a token");

    let mut group = c.benchmark_group("replay");
    let inner = RejectEveryOther::default();
    group.bench_function("by_hand_twice", |b| {
        b.to_async(&rt).iter(|| {
            let inner = inner.clone();
            async move {
                let first = inner.clone().oneshot(post_1k()).await.expect("first");
                assert_eq!(first.status(), 401);
                let second = inner.oneshot(post_1k()).await.expect("second");
                assert_eq!(second.status(), 200);
            }
        })
    });

    let service = layer.layer(RejectEveryOther::default());
    group.bench_function("cognito_auth_401_then_replay", |b| {
        b.to_async(&rt).iter(|| {
            let service = service.clone();
            async move {
                let response = service.oneshot(post_1k()).await.expect("a response");
                assert_eq!(response.status(), 200);
            }
        })
    });
    group.finish();
    let stats = layer.stats();
    eprintln!(
        "replay: replays={} token_requests={} invalidations={}",
        stats.replays, stats.token_requests, stats.invalidations
    );
}

criterion_group! {
    name = benches;
    config = common::config(30, Duration::from_secs(2));
    targets = replay
}
criterion_main!(benches);
