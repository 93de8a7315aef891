//! Per-request cost with a fresh token: what the layer adds on top of the inner service.
//!
//! ```text
//! cargo bench --bench hot_path
//! ```
//!
//! The inner service is always ready and answers at once; its future is polled in place, so
//! the numbers are the layer's own work. Requests are built as clients build them, from a URI
//! parsed once (see `common`), so that the bare row is small beside what the layers add. Variants: the bare inner service; tower-http's
//! `SetRequestHeader::overriding` with a static `Bearer` value (the floor: one header insert);
//! the layer with its defaults (the request head and the inner service are cloned for a
//! possible replay); with `replay_body_limit(0)`; with `Replay::Never`; and a 1 KiB POST.
//! Every row has the same harness, inline into criterion's loop (`common::call_now`). The
//! `_as_compiled` rows measure the bare service, `SetRequestHeader` and `Replay::Never` again
//! with the harness inline or not as the compiler chooses: it chooses inline for
//! `SetRequestHeader` and not for `CognitoAuth`, and those rows show what that choice moves.
//!
//! Note: the benches see `tokio` with the `test-util` feature (a dev-dependency), which makes
//! `tokio::time::Instant::now()` look for a paused clock first. A request with a fresh token
//! reads the kernel's coarse clock instead (on Linux), so only the rows that read Tokio's clock
//! are affected: a refresh, and `refresh_ahead`'s, whose clock is paused.

mod common;

use common::{Noop, Source, call_as_compiled, call_now, get, get_4_headers, grpc_post, post_1k};
use criterion::{Criterion, criterion_group};
use http::HeaderValue;
use http::header::AUTHORIZATION;
use std::future::Future as _;
use std::time::Duration;
use tower::Layer;
use tower_cognito_auth::Replay;
use tower_http::follow_redirect::FollowRedirectLayer;
use tower_http::set_header::SetRequestHeaderLayer;

fn hot_path(c: &mut Criterion) {
    let rt = common::current_thread();
    let mut group = c.benchmark_group("hot_path");

    let mut bare = Noop;
    group.bench_function("bare", |b| b.iter(|| call_now(&mut bare, get())));

    let header = HeaderValue::from_str(&format!("Bearer {}", common::token_text(0)))
        .expect("a valid header");
    let mut set_header = SetRequestHeaderLayer::overriding(AUTHORIZATION, header).layer(Noop);
    group.bench_function("set_header", |b| {
        b.iter(|| call_now(&mut set_header, get()))
    });

    let source = Source::new(Duration::ZERO, Duration::from_secs(3600));
    // `Replay::Never` right after `SetRequestHeader`, which it is compared with: the VM's speed
    // drifts over the seconds between two rows.
    for (name, builder) in [
        (
            "cognito_auth_replay_never",
            common::builder(&source).replay(Replay::Never),
        ),
        ("cognito_auth", common::builder(&source)),
        (
            "cognito_auth_replay_body_limit_0",
            common::builder(&source).replay_body_limit(0),
        ),
    ] {
        let layer = builder.build().expect("a valid layer");
        rt.block_on(layer.token()).expect("a token");
        let mut service = layer.layer(Noop);
        group.bench_function(name, |b| b.iter(|| call_now(&mut service, get())));
    }

    // The same three, with the harness inline or not as the compiler chooses (see
    // `common::call_as_compiled`).
    group.bench_function("bare_as_compiled", |b| {
        b.iter(|| call_as_compiled(&mut bare, get()))
    });
    group.bench_function("set_header_as_compiled", |b| {
        b.iter(|| call_as_compiled(&mut set_header, get()))
    });
    let never = common::builder(&source)
        .replay(Replay::Never)
        .build()
        .expect("a valid layer");
    rt.block_on(never.token()).expect("a token");
    let mut never = never.layer(Noop);
    group.bench_function("cognito_auth_replay_never_as_compiled", |b| {
        b.iter(|| call_as_compiled(&mut never, get()))
    });

    // `TokenCache::token()` on a fresh token, polled in place: the lookup alone.
    let cache = layer_for_cache(&rt, &source);
    group.bench_function("token_cache_hit", |b| {
        b.iter(|| {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match std::pin::pin!(cache.token()).poll(&mut cx) {
                std::task::Poll::Ready(Ok(token)) => token,
                _ => panic!("a fresh token is handed out at once"),
            }
        })
    });

    group.bench_function("bare_post_1k", |b| {
        b.iter(|| call_now(&mut bare, post_1k()))
    });
    let layer = common::builder(&source).build().expect("a valid layer");
    rt.block_on(layer.token()).expect("a token");
    let mut service = layer.layer(Noop);
    group.bench_function("cognito_auth_post_1k", |b| {
        b.iter(|| call_now(&mut service, post_1k()))
    });
    group.finish();

    // Realistic requests: the layer's defaults against tower-http's FollowRedirect,
    // which also keeps each request to resend it.
    // The way most users call a tower client: a clone of a template service per request
    // (`client.clone().oneshot(request)`), the template never serving itself. A GET with four
    // headers.
    let mut group = c.benchmark_group("clone_per_request");
    let header = HeaderValue::from_str(&format!("Bearer {}", common::token_text(0)))
        .expect("a valid header");
    let set_header = SetRequestHeaderLayer::overriding(AUTHORIZATION, header).layer(Noop);
    group.bench_function("bare", |b| {
        b.iter(|| call_now(&mut Noop.clone(), get_4_headers()))
    });
    group.bench_function("set_header", |b| {
        b.iter(|| call_now(&mut set_header.clone(), get_4_headers()))
    });
    for (name, builder) in [
        ("cognito_auth", common::builder(&source)),
        (
            "cognito_auth_replay_never",
            common::builder(&source).replay(Replay::Never),
        ),
    ] {
        let layer = builder.build().expect("a valid layer");
        rt.block_on(layer.token()).expect("a token");
        let template = layer.layer(Noop);
        group.bench_function(name, |b| {
            b.iter(|| call_now(&mut template.clone(), get_4_headers()))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("realistic");
    type MakeRequest = fn() -> http::Request<http_body_util::Full<bytes::Bytes>>;
    let requests: [(&str, MakeRequest); 2] =
        [("get_4_headers", get_4_headers), ("grpc_post", grpc_post)];
    for (kind, make) in requests {
        let mut bare = Noop;
        group.bench_function(format!("{kind}/bare"), |b| {
            b.iter(|| call_now(&mut bare, make()))
        });
        let header = HeaderValue::from_str(&format!("Bearer {}", common::token_text(0)))
            .expect("a valid header");
        let mut set_header = SetRequestHeaderLayer::overriding(AUTHORIZATION, header).layer(Noop);
        group.bench_function(format!("{kind}/set_header"), |b| {
            b.iter(|| call_now(&mut set_header, make()))
        });
        let mut follow = FollowRedirectLayer::new().layer(Noop);
        group.bench_function(format!("{kind}/follow_redirect"), |b| {
            b.iter(|| call_now(&mut follow, make()))
        });
        for (name, builder) in [
            ("cognito_auth", common::builder(&source)),
            (
                "cognito_auth_replay_never",
                common::builder(&source).replay(Replay::Never),
            ),
        ] {
            let layer = builder.build().expect("a valid layer");
            rt.block_on(layer.token()).expect("a token");
            let mut service = layer.layer(Noop);
            group.bench_function(format!("{kind}/{name}"), |b| {
                b.iter(|| call_now(&mut service, make()))
            });
        }
    }
    group.finish();
}

fn layer_for_cache(
    rt: &tokio::runtime::Runtime,
    source: &std::sync::Arc<Source>,
) -> tower_cognito_auth::TokenCache {
    let layer = common::builder(source).build().expect("a valid layer");
    rt.block_on(layer.token()).expect("a token");
    layer.cache().clone()
}

criterion_group! {
    name = benches;
    config = common::config(30, Duration::from_secs(2));
    targets = hot_path
}

/// `criterion_main!`, then the goals' ratios from the medians of this run.
fn main() {
    let mut medians = common::Medians::start();
    benches();
    Criterion::default().configure_from_args().final_summary();
    medians.overhead_ratio(
        "GET: Replay::Never's overhead / SetRequestHeader's",
        "hot_path/bare",
        "hot_path/cognito_auth_replay_never",
        "hot_path/set_header",
        "goal: at most 1.5",
    );
    medians.overhead_ratio(
        "the same, the harness as compiled",
        "hot_path/bare_as_compiled",
        "hot_path/cognito_auth_replay_never_as_compiled",
        "hot_path/set_header_as_compiled",
        "not a goal: the harness's inlining differs between the two",
    );
    for (kind, what) in [
        ("get_4_headers", "GET with 4 headers"),
        ("grpc_post", "tonic-shaped POST"),
    ] {
        let id = |variant: &str| format!("realistic/{kind}_{variant}");
        medians.overhead_ratio(
            &format!("{what}: defaults' overhead / FollowRedirect's"),
            &id("bare"),
            &id("cognito_auth"),
            &id("follow_redirect"),
            "goal: at most 1",
        );
        medians.overhead_ratio(
            &format!("{what}: Replay::Never's overhead / SetRequestHeader's"),
            &id("bare"),
            &id("cognito_auth_replay_never"),
            &id("set_header"),
            "not a goal",
        );
    }
    for variant in ["cognito_auth", "cognito_auth_replay_never"] {
        medians.overhead_ratio(
            &format!("GET with 4 headers, {variant}: cloned per request / reused (overheads)"),
            "clone_per_request/bare",
            &format!("clone_per_request/{variant}"),
            &format!("realistic/get_4_headers_{variant}"),
            "goal: at most 1.2 (the reused row's overhead is over its own bare row)",
        );
    }
    medians.print("The goals' ratios, from criterion's medians in this run (ns):");
}
