//! One variant of the hot path, N times, for a profiler: instruction counts under callgrind
//! (repeatable, whatever else the machine does) or samples under `perf`.
//!
//! ```text
//! cargo bench --bench probe --no-run
//! valgrind --tool=callgrind target/release/deps/probe-<hash> never get 200000
//! perf record -e cpu-clock --call-graph dwarf target/release/deps/probe-<hash> never get 1000000
//! ```
//!
//! Arguments: the variant (`bare`, `srh` for tower-http's `SetRequestHeader`, `fr` for
//! `FollowRedirect`, `defaults`, `never` for `Replay::Never`), the request (`get`, `get4` for
//! the GET with four headers, `grpc`), the count (1,000,000 by default), and `headers` for an
//! inner service whose answers carry headers, as a server's do (`NoopHeaders`). It prints the time
//! per request, which under a profiler is the profiler's. Subtract the counts of two runs with
//! different N to take the setup out.

mod common;

use std::time::{Duration, Instant};

use common::{Noop, NoopHeaders, Source, call_now, get, get_4_headers, grpc_post};
use http::HeaderValue;
use http::header::AUTHORIZATION;
use tower::{Layer, Service};
use tower_cognito_auth::Replay;
use tower_http::follow_redirect::FollowRedirectLayer;
use tower_http::set_header::SetRequestHeaderLayer;

type MakeRequest = fn() -> http::Request<http_body_util::Full<bytes::Bytes>>;

fn run<S>(mut service: S, make: MakeRequest, n: usize) -> Duration
where
    S: Service<http::Request<http_body_util::Full<bytes::Bytes>>>,
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    for _ in 0..n {
        drop(call_now(&mut service, make()));
    }
    start.elapsed()
}

fn variant_run<I>(
    inner: I,
    variant: &str,
    make: MakeRequest,
    n: usize,
    source: &std::sync::Arc<Source>,
    rt: &tokio::runtime::Runtime,
    header: HeaderValue,
) -> Duration
where
    I: Service<
            http::Request<http_body_util::Full<bytes::Bytes>>,
            Response = http::Response<http_body_util::Full<bytes::Bytes>>,
            Error = std::convert::Infallible,
        > + Clone
        + 'static,
{
    let layer = |builder: tower_cognito_auth::CognitoAuthLayerBuilder| {
        let layer = builder.build().expect("a valid layer");
        rt.block_on(layer.token()).expect("a token");
        layer
    };
    match variant {
        "bare" => run(inner, make, n),
        "srh" => run(
            SetRequestHeaderLayer::overriding(AUTHORIZATION, header).layer(inner),
            make,
            n,
        ),
        "fr" => run(FollowRedirectLayer::new().layer(inner), make, n),
        "defaults" => run(layer(common::builder(source)).layer(inner), make, n),
        "never" => run(
            layer(common::builder(source).replay(Replay::Never)).layer(inner),
            make,
            n,
        ),
        other => panic!("unknown variant {other}: bare, srh, fr, defaults or never"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let variant = args.first().map_or("never", String::as_str);
    let make: MakeRequest = match args.get(1).map(String::as_str) {
        None | Some("get") => get,
        Some("get4") => get_4_headers,
        Some("grpc") => grpc_post,
        Some(other) => panic!("unknown request {other}: get, get4 or grpc"),
    };
    let n: usize = args
        .get(2)
        .map_or(1_000_000, |n| n.parse().expect("the count is a number"));
    let rt = common::current_thread();
    let source = Source::new(Duration::ZERO, Duration::from_secs(3600));
    let header = HeaderValue::from_str(&format!("Bearer {}", common::token_text(0)))
        .expect("a valid header");
    let elapsed = if args.get(3).map(String::as_str) == Some("headers") {
        variant_run(NoopHeaders, variant, make, n, &source, &rt, header)
    } else {
        variant_run(Noop, variant, make, n, &source, &rt, header)
    };
    println!(
        "{variant}: {:.1} ns per request",
        elapsed.as_nanos() as f64 / n as f64
    );
}
