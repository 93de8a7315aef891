//! A fleet of processes sharing one client id: token requests without and with the shared store.
//!
//! ```sh
//! cargo run --example fleet --features redis                  # 8 worker processes, 6 s per run
//! cargo run --example fleet --features redis -- --workers 16 --seconds 10 --lifetime 2
//! ```
//!
//! The parent starts the loopback token endpoint, the protected API and a `redis-server`, then
//! runs the same binary again as N worker *processes*, each with its own layer, first without
//! the shared store and then with it. Every worker sends steady traffic through its layer;
//! the parent prints one table. Needs `redis-server` on `PATH` (`apt-get install -y
//! redis-server`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{BoxError, ServiceBuilder, ServiceExt as _};
use tower_cognito_auth::CognitoAuthLayer;
use tower_cognito_auth::store::RedisStore;
use tower_cognito_auth::testing::{ProtectedApi, RedisServer, TokenEndpoint};

struct Options {
    workers: usize,
    seconds: u64,
    lifetime: u64,
}

fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        workers: 8,
        seconds: 6,
        lifetime: 2,
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number: u64 = value
            .parse()
            .map_err(|_| format!("{flag}: not a number: {value}"))?;
        match flag.as_str() {
            "--workers" => options.workers = number.clamp(1, 64) as usize,
            "--seconds" => options.seconds = number.clamp(1, 60),
            "--lifetime" => options.lifetime = number.clamp(1, 3600),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(options)
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--worker") {
        return worker(&args[1..]);
    }
    let options = match parse_options(&args) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}\nusage: fleet [--workers N] [--seconds S] [--lifetime S]");
            std::process::exit(2);
        }
    };
    let redis = match RedisServer::start() {
        Ok(redis) => redis,
        Err(error) => {
            eprintln!("{error}");
            std::process::exit(1);
        }
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(parent(options, redis))
}

async fn parent(options: Options, redis: RedisServer) -> Result<(), BoxError> {
    let endpoint = TokenEndpoint::builder()
        .lifetime(Duration::from_secs(options.lifetime))
        .delay(Duration::from_millis(50))
        .start()
        .await?;
    let api = ProtectedApi::start(&endpoint).await?;
    println!(
        "{} worker processes, {} s of steady traffic each run, {} s tokens, 50 ms token endpoint",
        options.workers, options.seconds, options.lifetime
    );
    println!();
    println!("| store | processes | requests | failures | token requests | per token lifetime |");
    println!("|---|---|---|---|---|---|");
    for store in [None, Some(redis.url())] {
        let before = endpoint.tokens_issued();
        let started = Instant::now();
        let children: Vec<_> = (0..options.workers)
            .map(|_| {
                let mut command = Command::new(std::env::current_exe()?);
                command
                    .arg("--worker")
                    .arg(endpoint.token_url())
                    .arg(endpoint.client_id())
                    .arg(api.url())
                    .arg(options.seconds.to_string())
                    .arg(store.clone().unwrap_or_else(|| "-".to_owned()))
                    .env("CLIENT_SECRET", endpoint.client_secret())
                    .stdout(Stdio::piped());
                command.spawn()
            })
            .collect::<Result<_, _>>()?;
        let (mut requests, mut failures) = (0u64, 0u64);
        for child in children {
            let output = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
            let text = String::from_utf8_lossy(&output.stdout);
            let mut numbers = text
                .split_whitespace()
                .map(|n| n.parse::<u64>().unwrap_or(0));
            requests += numbers.next().unwrap_or(0);
            failures += numbers.next().unwrap_or(0);
            if !output.status.success() {
                failures += 1;
            }
        }
        let issued = endpoint.tokens_issued() - before;
        let lifetimes = started.elapsed().as_secs_f64() / options.lifetime as f64;
        println!(
            "| {} | {} | {requests} | {failures} | {issued} | {:.1} |",
            if store.is_some() { "Redis" } else { "none" },
            options.workers,
            issued as f64 / lifetimes
        );
    }
    Ok(())
}

/// One process of the fleet: its own runtime, layer, cache and store client.
fn worker(args: &[String]) -> Result<(), BoxError> {
    let [token_url, client_id, api_url, seconds, store] = args else {
        return Err("worker: bad arguments".into());
    };
    let secret = std::env::var("CLIENT_SECRET")?;
    let seconds: u64 = seconds.parse()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let mut builder = CognitoAuthLayer::builder()
            .token_url(token_url)
            .client_id(client_id)
            .client_secret(secret)
            .http_client(http.clone());
        if store != "-" {
            builder = builder.shared_store(RedisStore::new(store)?);
        }
        let layer = builder.build()?;
        let client = ServiceBuilder::new().layer(layer).service(http);
        let (mut requests, mut failures) = (0u64, 0u64);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(seconds) {
            let request = Request::get(format!("{api_url}/wallets")).body(Full::default())?;
            requests += 1;
            match client.clone().oneshot(request).await {
                Ok(response) if response.status().is_success() => {}
                _ => failures += 1,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!("{requests} {failures}");
        Ok(())
    })
}
