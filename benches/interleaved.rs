//! The hot path's overhead ratios, measured in interleaved rounds.
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
//! the defaults' over `FollowRedirect`'s on the realistic requests. The inner service answers
//! without headers, as in the criterion benches; the GET is measured once more with an inner
//! service that answers with headers, as servers do (`get_answer_headers`), for what the
//! layer's look for `grpc-status` costs.
//!
//! A process's memory layout (where the kernel puts its stack and heap, new at each start)
//! moves these few-nanosecond figures by more than their differences: one process measures a
//! bare GET at 65 ns, the next at 80. So the rounds run in 5 processes, one after the other,
//! and each figure is printed per process and as the median of the 5.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Noop, NoopHeaders, Source, call_now, get, get_4_headers, grpc_post};
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use std::convert::Infallible;
use tower::{Layer, Service};
use tower_cognito_auth::{CognitoAuthLayer, CognitoAuthLayerBuilder, Replay};
use tower_http::follow_redirect::FollowRedirectLayer;
use tower_http::set_header::SetRequestHeaderLayer;

type MakeRequest = fn() -> Request<Full<Bytes>>;

/// One row: a name and a closure that sends one request through its own service.
type Row = (String, Box<dyn FnMut()>);

fn row<S>(name: String, mut service: S, make: MakeRequest) -> Row
where
    S: Service<Request<Full<Bytes>>> + 'static,
    S::Error: std::fmt::Debug,
{
    (name, Box::new(move || drop(call_now(&mut service, make()))))
}

/// The layers each kind of request goes through.
struct Layers {
    set_header: SetRequestHeaderLayer<HeaderValue>,
    defaults: CognitoAuthLayer,
    never: CognitoAuthLayer,
}

impl Layers {
    /// The rows of one kind of request: the bare inner service and each layer over it.
    fn rows<I>(&self, rows: &mut Vec<Row>, kind: &str, inner: I, make: MakeRequest)
    where
        I: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible>
            + Clone
            + 'static,
    {
        rows.push(row(format!("{kind}/bare"), inner.clone(), make));
        rows.push(row(
            format!("{kind}/set_header"),
            self.set_header.layer(inner.clone()),
            make,
        ));
        rows.push(row(
            format!("{kind}/follow_redirect"),
            FollowRedirectLayer::new().layer(inner.clone()),
            make,
        ));
        rows.push(row(
            format!("{kind}/cognito_auth"),
            self.defaults.layer(inner.clone()),
            make,
        ));
        rows.push(row(
            format!("{kind}/cognito_auth_replay_never"),
            self.never.layer(inner),
            make,
        ));
    }
}

/// The kind of the GET answered with headers.
const ANSWER_HEADERS: &str = "get_answer_headers";

const ROUNDS: usize = 40;
const PER_SLICE: u32 = 20_000;
const PROCESSES: usize = 5;
/// Set in the processes the bench starts: they measure and print their figures.
const ONE_PROCESS: &str = "INTERLEAVED_ONE_PROCESS";

fn main() {
    if std::env::var_os(ONE_PROCESS).is_some() {
        return measure();
    }
    let exe = std::env::current_exe().expect("the bench's own path");
    // figure name -> its value in each process
    let mut figures: Vec<(String, Vec<f64>)> = Vec::new();
    for _ in 0..PROCESSES {
        let out = Command::new(&exe)
            .env(ONE_PROCESS, "1")
            .output()
            .expect("the bench runs itself");
        assert!(out.status.success(), "a measuring process failed");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            match figures.iter_mut().find(|(n, _)| n == name) {
                Some((_, values)) => values.push(value),
                None => figures.push((name.to_owned(), vec![value])),
            }
        }
    }
    println!(
        "{PROCESSES} processes, each the median of {ROUNDS} interleaved rounds; \
         the last column is the median of the processes"
    );
    for (name, mut values) in figures {
        let each: Vec<String> = values.iter().map(|v| format!("{v:.2}")).collect();
        values.sort_by(f64::total_cmp);
        let median = values[values.len() / 2];
        println!("{name:<52} {:<36} {median:>8.2}", each.join(" "));
    }
}

/// One process's rounds: prints `name value` lines, ns per request and the ratios.
fn measure() {
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

    let layers = Layers {
        set_header: SetRequestHeaderLayer::overriding(AUTHORIZATION, header),
        defaults,
        never,
    };
    let kinds: [(&str, MakeRequest); 3] = [
        ("get", get),
        ("get_4_headers", get_4_headers),
        ("grpc_post", grpc_post),
    ];
    let mut rows: Vec<Row> = Vec::new();
    for (kind, make) in kinds {
        layers.rows(&mut rows, kind, Noop, make);
    }
    // The GET again, answered with headers as a server answers: the layer looks for
    // `grpc-status` in them.
    layers.rows(&mut rows, ANSWER_HEADERS, NoopHeaders, get);

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
    // The median of a figure computed within each round.
    let per_round = |figure: &dyn Fn(&[f64]) -> Option<f64>| -> Option<f64> {
        let mut values: Vec<f64> = ns
            .iter()
            .map(|round| figure(round))
            .collect::<Option<_>>()?;
        values.sort_by(f64::total_cmp);
        Some(values[values.len() / 2])
    };
    for (i, (name, _)) in rows.iter().enumerate() {
        if let Some(median) = per_round(&|round: &[f64]| Some(round[i])) {
            println!("ns {name} {median:.1}");
        }
    }
    for kind in kinds.iter().map(|(kind, _)| *kind).chain([ANSWER_HEADERS]) {
        let overhead = |variant: &str| {
            let row = at(&format!("{kind}/{variant}"));
            let bare = at(&format!("{kind}/bare"));
            move |round: &[f64]| Some(round[row?] - round[bare?])
        };
        let ratio = |a: &str, b: &str| {
            let (a, b) = (overhead(a), overhead(b));
            per_round(&move |round: &[f64]| Some(a(round)? / b(round)?))
        };
        if let Some(median) = ratio("cognito_auth_replay_never", "set_header") {
            println!("ratio {kind}: Replay::Never / SetRequestHeader {median:.3}");
        }
        if let Some(median) = ratio("cognito_auth", "follow_redirect") {
            println!("ratio {kind}: defaults / FollowRedirect {median:.3}");
        }
    }
}
