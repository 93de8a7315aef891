//! The hot path's overhead ratios (issue #13), measured in interleaved rounds.
//!
//! ```text
//! cargo bench --bench interleaved
//! ```
//!
//! Criterion measures one variant after the other; on a shared VM the machine's speed drifts
//! between them by more than the differences measured here. This bench runs every variant for
//! a short slice in turn, in a new random order each round, 40 rounds. Each ratio is computed
//! within a round (both overheads against that round's bare service), and the median of the 40
//! is printed, with the interquartile range: the two sides of a ratio are measured seconds
//! apart, never minutes. The goals: `Replay::Never`'s overhead over `SetRequestHeader`'s, and
//! the defaults' over `FollowRedirect`'s on the realistic requests.

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

    // ns[round][row]
    let mut ns: Vec<Vec<f64>> = Vec::with_capacity(ROUNDS);
    let mut order: Vec<usize> = (0..rows.len()).collect();
    for _ in 0..ROUNDS {
        fastrand::shuffle(&mut order);
        let mut round = vec![0.0; rows.len()];
        for &i in &order {
            let send = &mut rows[i].1;
            for _ in 0..PER_SLICE / 10 {
                send();
            }
            let start = Instant::now();
            for _ in 0..PER_SLICE {
                send();
            }
            round[i] = start.elapsed().as_nanos() as f64 / f64::from(PER_SLICE);
        }
        ns.push(round);
    }
    let at = |name: &str| rows.iter().position(|(row, _)| row == name);
    // The median and interquartile range of a figure computed within each round.
    let per_round = |figure: &dyn Fn(&[f64]) -> Option<f64>| -> Option<[f64; 3]> {
        let mut values: Vec<f64> = ns
            .iter()
            .map(|round| figure(round))
            .collect::<Option<_>>()?;
        values.sort_by(f64::total_cmp);
        let q = |p: usize| values[(values.len() - 1) * p / 4];
        Some([q(1), q(2), q(3)])
    };
    println!("{:<40} {:>10}", "ns per request (median of rounds)", "");
    for (i, (name, _)) in rows.iter().enumerate() {
        if let Some([_, median, _]) = per_round(&|round: &[f64]| Some(round[i])) {
            println!("{name:<40} {median:>10.1}");
        }
    }
    for (kind, _) in kinds {
        let overhead = |variant: &str| {
            let row = at(&format!("{kind}/{variant}"));
            let bare = at(&format!("{kind}/bare"));
            move |round: &[f64]| Some(round[row?] - round[bare?])
        };
        let ratio = |a: &str, b: &str| {
            let (a, b) = (overhead(a), overhead(b));
            per_round(&move |round: &[f64]| Some(a(round)? / b(round)?))
        };
        let show = |figure: Option<[f64; 3]>| match figure {
            Some([low, median, high]) => format!("{median:.2}x (quartiles {low:.2}-{high:.2})"),
            None => "n/a".to_owned(),
        };
        println!(
            "{kind}: Replay::Never / SetRequestHeader {}; defaults / FollowRedirect {}",
            show(ratio("cognito_auth_replay_never", "set_header")),
            show(ratio("cognito_auth", "follow_redirect")),
        );
    }
}
