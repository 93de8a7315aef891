//! The race at token expiry, and its fix, on loopback.
//!
//! ```text
//! cargo run --example demo
//! cargo run --example demo -- --help
//! ```
//!
//! Starts, in this process on 127.0.0.1, a Cognito-compatible token endpoint (client_credentials,
//! tokens that live a few seconds, a little slow to answer, as a real one is) and a protected API
//! that accepts only live tokens. Then it runs the same workload twice, many concurrent callers
//! across several token lifetimes:
//!
//! 1. **before**: the hand-written cache most clients start with (and many integration guides show): each
//!    caller checks the expiry, and refreshes itself when the token is gone. No single flight,
//!    and the expiry is counted from when the answer arrived;
//! 2. **after**: the same HTTP client wrapped in `CognitoAuthLayer`.
//!
//! and prints what it measured: requests, failures (401s reaching the caller), token requests
//! and latency.

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt as _};
use tower_cognito_auth::CognitoAuthLayer;
use tower_cognito_auth::testing::{ProtectedApi, TokenEndpoint};

type HttpClient = Client<HttpConnector, Full<Bytes>>;
type BoxResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

const HELP: &str = "\
Usage: cargo run --example demo -- [OPTIONS]

Runs one workload twice against a local token endpoint and API on 127.0.0.1: first with a
naive check-then-refresh token cache, then through CognitoAuthLayer, and compares them.

Options:
  --callers N        concurrent callers                         [default: 200]
  --seconds S        how long each run lasts, in seconds        [default: 8]
  --lifetime S       token lifetime (expires_in), in seconds    [default: 3]
  --token-delay MS   how long the token endpoint takes to answer [default: 100]
  --pause MS         pause between two requests of one caller   [default: 10]
  -h, --help         print this help";

#[derive(Clone, Copy, Debug)]
struct Options {
    callers: usize,
    seconds: u64,
    lifetime: u64,
    token_delay: u64,
    pause: u64,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        callers: 200,
        seconds: 8,
        lifetime: 3,
        token_delay: 100,
        pause: 10,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Err(String::new());
        }
        let mut value = |name: &str| -> Result<u64, String> {
            args.next()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| format!("{name} needs a whole number"))
        };
        match arg.as_str() {
            "--callers" => options.callers = value("--callers")?.clamp(1, 10_000) as usize,
            "--seconds" => options.seconds = value("--seconds")?.clamp(1, 600),
            "--lifetime" => options.lifetime = value("--lifetime")?.clamp(1, 3600),
            "--token-delay" => options.token_delay = value("--token-delay")?.min(10_000),
            "--pause" => options.pause = value("--pause")?.min(10_000),
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    Ok(options)
}

/// What one run measured.
#[derive(Debug, Default)]
struct Outcome {
    requests: u64,
    failures: u64,
    token_requests: usize,
    latencies: Vec<Duration>,
}

impl Outcome {
    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let index = ((sorted.len() - 1) as f64 * p).round() as usize;
        sorted[index.min(sorted.len() - 1)]
    }
}

#[tokio::main]
async fn main() -> BoxResult<()> {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) if message.is_empty() => {
            println!("{HELP}");
            return Ok(());
        }
        Err(message) => {
            eprintln!("error: {message}\n\n{HELP}");
            std::process::exit(2);
        }
    };
    println!(
        "tower-cognito-auth demo: {} callers, {} s per run, tokens live {} s, the token endpoint answers in {} ms\n",
        options.callers, options.seconds, options.lifetime, options.token_delay
    );

    println!(
        "[1/2] naive cache: check the expiry, refresh when gone, per caller (the usual hand-written pattern)"
    );
    let naive = run(options, Mode::Naive).await?;
    println!("[2/2] CognitoAuthLayer: single-flight refresh ahead of expiry, replay on 401");
    let layer = run(options, Mode::Layer).await?;

    println!();
    println!(
        "{:<34} {:>9} {:>15} {:>15} {:>9} {:>9}",
        "", "requests", "failures (401)", "token requests", "p50", "p99"
    );
    for (name, o) in [
        ("naive check-then-refresh", &naive),
        ("CognitoAuthLayer", &layer),
    ] {
        println!(
            "{:<34} {:>9} {:>15} {:>15} {:>9} {:>9}",
            name,
            o.requests,
            o.failures,
            o.token_requests,
            format_ms(o.percentile(0.50)),
            format_ms(o.percentile(0.99)),
        );
    }
    println!();
    let refreshes = (options.seconds as f64 / (options.lifetime as f64 / 2.0)).ceil();
    println!(
        "The naive cache: every caller that finds the token gone fetches one (no single flight),\n\
         and a token is used until the expiry computed from when its answer arrived, so requests\n\
         at the end of its life reach the API with a dead token (401).\n\
         The layer: one refresh at a time, ahead of expiry (about {refreshes} in this run), while\n\
         callers keep the old token; a caller waits only when no usable token is left."
    );
    if layer.failures > 0 {
        return Err(format!("{} requests failed through the layer", layer.failures).into());
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Naive,
    Layer,
}

async fn run(options: Options, mode: Mode) -> BoxResult<Outcome> {
    let endpoint = TokenEndpoint::builder()
        .lifetime(Duration::from_secs(options.lifetime))
        .delay(Duration::from_millis(options.token_delay))
        .start()
        .await?;
    let api = ProtectedApi::start(&endpoint).await?;
    let http: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("{}/api/v1/wallets", api.url());
    let requests = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(options.seconds);

    let naive = Arc::new(NaiveClient {
        http: http.clone(),
        token_url: endpoint.token_url(),
        client_id: endpoint.client_id().to_owned(),
        client_secret: endpoint.client_secret().to_owned(),
        cached: Mutex::new(None),
    });
    let layer = CognitoAuthLayer::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret(endpoint.client_secret())
        .http_client(http.clone())
        .build()?;

    let mut tasks = Vec::with_capacity(options.callers);
    for _ in 0..options.callers {
        let (naive, url, requests, failures) = (
            naive.clone(),
            url.clone(),
            requests.clone(),
            failures.clone(),
        );
        let mut client = ServiceBuilder::new()
            .layer(layer.clone())
            .service(http.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            // Bounded: at most one request per `pause`, until `stop`.
            while Instant::now() < stop {
                let started = Instant::now();
                let status = match mode {
                    Mode::Naive => naive.get(&url).await,
                    Mode::Layer => layered_get(&mut client, &url).await,
                };
                latencies.push(started.elapsed());
                requests.fetch_add(1, Ordering::Relaxed);
                if status != Some(StatusCode::OK) {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(options.pause)).await;
            }
            latencies
        }));
    }

    // Progress, once a second, while the callers run.
    let name = if mode == Mode::Naive {
        "naive"
    } else {
        "layer"
    };
    for second in 1..=options.seconds {
        tokio::time::sleep_until(stop - Duration::from_secs(options.seconds - second)).await;
        println!(
            "      {name}: {second:>3}/{} s  {:>7} requests  {:>5} failures  {:>5} token requests",
            options.seconds,
            requests.load(Ordering::Relaxed),
            failures.load(Ordering::Relaxed),
            endpoint.tokens_issued(),
        );
    }
    let mut outcome = Outcome::default();
    for task in tasks {
        outcome.latencies.extend(task.await?);
    }
    outcome.requests = requests.load(Ordering::Relaxed);
    outcome.failures = failures.load(Ordering::Relaxed);
    outcome.token_requests = endpoint.request_count();
    Ok(outcome)
}

async fn layered_get<S>(client: &mut S, url: &str) -> Option<StatusCode>
where
    S: Service<Request<Full<Bytes>>, Response = http::Response<hyper::body::Incoming>>,
{
    let request = Request::get(url).body(Full::default()).ok()?;
    let response = client.ready().await.ok()?.call(request).await.ok()?;
    Some(response.status())
}

/// The "before": a token cache as integration guides often write it, shared by all callers.
///
/// `get` checks the cached token's expiry and, when it is gone, fetches a new one itself. Two
/// things go wrong under load: every caller that finds the token gone at the same moment
/// fetches one (no single flight), and the expiry is counted from when the answer *arrived*,
/// later than when the token was issued, so the last moments of a token's life send dead
/// tokens. The guide subtracts a 5-minute margin, which hides the second problem for one-hour
/// tokens; a margin must be shorter than the token's life, and here, as in Amplify's race, none
/// is left.
struct NaiveClient {
    http: HttpClient,
    token_url: String,
    client_id: String,
    client_secret: String,
    cached: Mutex<Option<(String, Instant)>>,
}

impl NaiveClient {
    async fn token(&self) -> Option<String> {
        if let Some((token, expires_at)) = self.cached.lock().await.clone()
            && Instant::now() < expires_at
        {
            return Some(token);
        }
        // Refresh: the caller does it itself.
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("client_id", &self.client_id)
            .append_pair("client_secret", &self.client_secret)
            .finish();
        let request = Request::post(&self.token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))
            .ok()?;
        let response = self.http.request(request).await.ok()?;
        let body = response.into_body().collect().await.ok()?.to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).ok()?;
        let token = json["access_token"].as_str()?.to_owned();
        let expires_in = json["expires_in"].as_u64()?;
        let expires_at = Instant::now() + Duration::from_secs(expires_in);
        *self.cached.lock().await = Some((token.clone(), expires_at));
        Some(token)
    }

    async fn get(&self, url: &str) -> Option<StatusCode> {
        let token = self.token().await?;
        let request = Request::get(url)
            .header("authorization", format!("Bearer {token}"))
            .body(Full::default())
            .ok()?;
        Some(self.http.request(request).await.ok()?.status())
    }
}

fn format_ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
