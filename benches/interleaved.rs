//! The hot path's overhead ratios (issue #13), measured in interleaved rounds.
//!
//! ```text
//! cargo bench --bench interleaved
//! ```
//!
//! Criterion measures one variant after the other; on a shared VM the machine's speed drifts
//! between them by more than the differences measured here. This bench runs every variant for
//! a short slice in turn, 40 rounds, and takes each variant's 10th-percentile slice (the rounds
//! least disturbed by the rest of the machine), so that the ratios compare slices measured
//! seconds apart. It prints ns per request and the ratios of the goals:
//! `Replay::Never`'s overhead over `SetRequestHeader`'s, and the defaults' over
//! `FollowRedirect`'s on the realistic requests.

mod common;

use std::time::{Duration, Instant};

use common::{Noop, Source, call_now, get, get_4_headers, grpc_post};
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request};
use http_body_util::Full;
use tower::{Layer, Service};
use tower_cognito_auth::{CognitoAuthLayerBuilder, Replay};
use tower_http::follow_redirect::FollowRedirectLayer;
use tower_http::set_header::SetRequestHeaderLayer;

type MakeRequest = fn() -> Request<Full<bytes::Bytes>>;

/// One row: a name and a closure that sends one request through its own service.
type Row = (String, Box<dyn FnMut()>);

fn row<S>(name: String, mut service: S, make: MakeRequest) -> Row
where
    S: Service<Request<Full<bytes::Bytes>>> + 'static,
    S::Error: std::fmt::Debug,
{
    (name, Box::new(move || drop(call_now(&mut service, make()))))
}

const ROUNDS: usize = 40;
const PER_SLICE: u32 = 20_000;

fn main() {
    let rt = common::current_thread();
    let source = Source::new(Duration::ZERO, Duration::from_secs(3600));
    let filled = |builder: CognitoAuthLayerBuilder| {
        let layer = builder.build().expect("a valid layer");
        rt.block_on(layer.token()).expect("a token");
        layer
    };
    let defaults = filled(common::builder(&source));
    let never = filled(common::builder(&source).replay(Replay::Never));
    let header = HeaderValue::from_str(&format!("Bearer {}", common::token_text(0)))
        .expect("a valid header");
    let set_header = SetRequestHeaderLayer::overriding(AUTHORIZATION, header);

    let kinds: [(&str, MakeRequest); 3] = [
        ("get", get),
        ("get_4_headers", get_4_headers),
        ("grpc_post", grpc_post),
    ];
    let mut rows: Vec<Row> = Vec::new();
    for (kind, make) in kinds {
        rows.push(row(format!("{kind}/bare"), Noop, make));
        rows.push(row(
            format!("{kind}/set_header"),
            set_header.layer(Noop),
            make,
        ));
        rows.push(row(
            format!("{kind}/follow_redirect"),
            FollowRedirectLayer::new().layer(Noop),
            make,
        ));
        rows.push(row(
            format!("{kind}/cognito_auth"),
            defaults.layer(Noop),
            make,
        ));
        rows.push(row(
            format!("{kind}/cognito_auth_replay_never"),
            never.layer(Noop),
            make,
        ));
    }

    let mut slices: Vec<Vec<f64>> = vec![Vec::with_capacity(ROUNDS); rows.len()];
    for _ in 0..ROUNDS {
        for ((_, send), slices) in rows.iter_mut().zip(&mut slices) {
            for _ in 0..PER_SLICE / 10 {
                send();
            }
            let start = Instant::now();
            for _ in 0..PER_SLICE {
                send();
            }
            slices.push(start.elapsed().as_nanos() as f64 / f64::from(PER_SLICE));
        }
    }
    let ns: Vec<f64> = slices
        .iter_mut()
        .map(|slices| {
            slices.sort_by(f64::total_cmp);
            slices[ROUNDS / 10]
        })
        .collect();
    println!(
        "{:<40} {:>10}",
        "ns per request (10th percentile slice)", ""
    );
    for ((name, _), ns) in rows.iter().zip(&ns) {
        println!("{name:<40} {ns:>10.1}");
    }
    let at = |name: &str| {
        rows.iter()
            .position(|(row, _)| row == name)
            .map(|i| ns[i])
            .unwrap_or(f64::NAN)
    };
    let overhead =
        |kind: &str, variant: &str| at(&format!("{kind}/{variant}")) - at(&format!("{kind}/bare"));
    for (kind, _) in kinds {
        let never = overhead(kind, "cognito_auth_replay_never");
        let set = overhead(kind, "set_header");
        let defaults = overhead(kind, "cognito_auth");
        let follow = overhead(kind, "follow_redirect");
        println!(
            "{kind}: Replay::Never +{never:.0} ns / SetRequestHeader +{set:.0} ns = {:.2}x; \
             defaults +{defaults:.0} ns / FollowRedirect +{follow:.0} ns = {:.2}x",
            never / set,
            defaults / follow
        );
    }
}
