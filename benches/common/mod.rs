//! Shared by the benches: a token source, an always-ready inner service, and polling in place.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, TE, USER_AGENT};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use tower::Service;
use tower_cognito_auth::{
    AccessToken, BoxFuture, CognitoAuthLayerBuilder, Error, Token, TokenSource,
};

/// A Cognito access token is about 900 bytes.
pub fn token_text(n: usize) -> String {
    format!("eyJ{n:06}{}", "x".repeat(900))
}

/// A token source that takes `delay` and returns tokens that live `lifetime`.
pub struct Source {
    pub delay: Duration,
    pub lifetime: Duration,
    pub calls: AtomicUsize,
}

impl Source {
    pub fn new(delay: Duration, lifetime: Duration) -> Arc<Self> {
        Arc::new(Self {
            delay,
            lifetime,
            calls: AtomicUsize::new(0),
        })
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl TokenSource for Source {
    fn fetch(&self) -> BoxFuture<'_, Result<Token, Error>> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let sent = tokio::time::Instant::now();
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            Ok(Token::new(
                AccessToken::new(token_text(n))?,
                sent + self.lifetime,
            ))
        })
    }
}

/// A layer builder over `source`.
pub fn builder(source: &Arc<Source>) -> CognitoAuthLayerBuilder {
    tower_cognito_auth::CognitoAuthLayer::builder().token_source(Arc::clone(source))
}

/// An inner service that is always ready and answers 200 at once.
#[derive(Clone, Copy, Debug, Default)]
pub struct Noop;

impl<B> Service<Request<B>> for Noop {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request<B>) -> Self::Future {
        ready(Ok(Response::new(Full::default())))
    }
}

/// An inner service that is always ready and answers 200 at once with the headers a server
/// sends (`content-type`, `content-length`, `date`): a real answer has headers, and a layer
/// that looks for `grpc-status` in them pays for that here.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopHeaders;

const DATE: HeaderValue = HeaderValue::from_static("Tue, 01 Dec 2026 18:00:00 GMT");

impl<B> Service<Request<B>> for NoopHeaders {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request<B>) -> Self::Future {
        let mut response = Response::new(Full::default());
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, JSON);
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        headers.insert(http::header::DATE, DATE);
        ready(Ok(response))
    }
}

/// An inner service that answers 401 and 200 in turn: each request is rejected once.
#[derive(Clone, Debug, Default)]
pub struct RejectEveryOther(pub Arc<AtomicBool>);

impl<B> Service<Request<B>> for RejectEveryOther {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request<B>) -> Self::Future {
        let reject = !self.0.fetch_xor(true, Ordering::Relaxed);
        let mut response = Response::new(Full::default());
        if reject {
            *response.status_mut() = StatusCode::UNAUTHORIZED;
        }
        ready(Ok(response))
    }
}

// Requests are built as clients build them (headers inserted one by one, so the map has the
// room it grew to), from a URI parsed once and static header values: parsing a URI costs
// more than the header insert the benches measure, and would only add noise to every row.

static GET_URI: LazyLock<Uri> = LazyLock::new(|| Uri::from_static("http://api.example/wallets"));
static GET_4_HEADERS_URI: LazyLock<Uri> =
    LazyLock::new(|| Uri::from_static("http://api.example/wallets?page=2"));
static GRPC_URI: LazyLock<Uri> = LazyLock::new(|| Uri::from_static("/wallets.v1.Wallets/Get"));
static POST_1K_URI: LazyLock<Uri> =
    LazyLock::new(|| Uri::from_static("http://api.example/payments"));

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const JSON: HeaderValue = HeaderValue::from_static("application/json");

fn request(method: Method, uri: &LazyLock<Uri>, body: Full<Bytes>) -> Request<Full<Bytes>> {
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = Uri::clone(uri);
    request
}

pub fn get() -> Request<Full<Bytes>> {
    request(Method::GET, &GET_URI, Full::default())
}

/// A realistic GET: four headers, as an HTTP client sends them.
pub fn get_4_headers() -> Request<Full<Bytes>> {
    let mut request = request(Method::GET, &GET_4_HEADERS_URI, Full::default());
    let headers = request.headers_mut();
    headers.insert(ACCEPT, JSON);
    headers.insert(USER_AGENT, HeaderValue::from_static("bench/1.0"));
    headers.insert(
        X_REQUEST_ID,
        HeaderValue::from_static("7f3a9c2e-51e0-4b2d-9b2d-0123456789ab"),
    );
    headers.insert(CONTENT_TYPE, JSON);
    request
}

/// Something in the request's extensions, as tonic puts there.
#[derive(Clone, Debug)]
pub struct GrpcMethod(pub &'static str);

/// A tonic-shaped unary call: POST to a path-only URI over HTTP/2, gRPC headers, an extension,
/// and a 100-byte message.
pub fn grpc_post() -> Request<Full<Bytes>> {
    let mut request = request(
        Method::POST,
        &GRPC_URI,
        Full::new(Bytes::from_static(&[b'g'; 100])),
    );
    *request.version_mut() = http::Version::HTTP_2;
    let headers = request.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(TE, HeaderValue::from_static("trailers"));
    request
        .extensions_mut()
        .insert(GrpcMethod("wallets.v1.Wallets/Get"));
    request
}

pub const JSON_1K: &[u8] = &[b'7'; 1024];

pub fn post_1k() -> Request<Full<Bytes>> {
    let mut request = request(
        Method::POST,
        &POST_1K_URI,
        Full::new(Bytes::from_static(JSON_1K)),
    );
    request.headers_mut().insert(CONTENT_TYPE, JSON);
    request
}

/// The body of [`call_now`] and [`call_as_compiled`]: a macro, not a function, so that each of
/// them is what the compiler inlines or not (a shared function would be inlined into both, and
/// make `call_as_compiled` a call of nothing but it, which the compiler then inlines everywhere).
macro_rules! ready_call_poll {
    ($service:expr, $request:expr) => {{
        let mut cx = Context::from_waker(Waker::noop());
        match $service.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => {}
            _ => not_ready(),
        }
        match pin!($service.call($request)).poll(&mut cx) {
            Poll::Ready(Ok(response)) => response,
            Poll::Ready(Err(e)) => failed(e),
            Poll::Pending => waited(),
        }
    }};
}

// The harness's failures, out of line: a panic's formatting inline in the harness would make it
// larger for services with an error to print than for those whose error is `Infallible`.
#[cold]
#[inline(never)]
fn not_ready() -> ! {
    panic!("the inner service is always ready")
}

#[cold]
#[inline(never)]
fn failed<E: std::fmt::Debug>(error: E) -> ! {
    panic!("call failed: {error:?}")
}

#[cold]
#[inline(never)]
fn waited() -> ! {
    panic!("the hot path waited")
}

/// Readies `service` and calls it, polling everything in place with a waker that does nothing:
/// the hot path with a fresh token never waits. Always inline into the measuring loop, so that
/// every row has the same harness around its layer: left to the compiler ([`call_as_compiled`]),
/// it goes inline for some services and not for others, and the call between moves the request
/// and the response once more, which is the harness's cost, not the layer's.
#[inline(always)]
pub fn call_now<S, R>(service: &mut S, request: R) -> S::Response
where
    S: Service<R>,
    S::Error: std::fmt::Debug,
{
    ready_call_poll!(service, request)
}

/// [`call_now`], inline into the measuring loop or not as the compiler decides: it decides yes for
/// `SetRequestHeader` (whose future is the inner service's) and no for `CognitoAuth`. For the
/// `hot_path` rows that show what that choice alone moves.
pub fn call_as_compiled<S, R>(service: &mut S, request: R) -> S::Response
where
    S: Service<R>,
    S::Error: std::fmt::Debug,
{
    ready_call_poll!(service, request)
}

pub fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Short criterion settings, so that `cargo bench` runs all benches in a few minutes.
pub fn config(sample_size: usize, measurement: Duration) -> criterion::Criterion {
    criterion::Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(measurement)
        .sample_size(sample_size)
}

/// Criterion's median estimates of the benches that ran in this process, read back from the
/// files criterion writes (`<dir>/<group>/<bench>/new/estimates.json`), so that a bench can
/// print the ratios the benchmarks set goals on, computed from one run.
pub struct Medians {
    dir: std::path::PathBuf,
    since: std::time::SystemTime,
    lines: Vec<String>,
}

impl Medians {
    /// Call before the benches run: estimates written earlier (an earlier run, or a bench
    /// filtered out of this one) are not read.
    pub fn start() -> Self {
        Self {
            dir: criterion_dir(),
            since: std::time::SystemTime::now(),
            lines: Vec::new(),
        }
    }

    /// The median, in ns, of bench `id` (`group/bench`, as criterion names its directory), if
    /// it ran in this process.
    pub fn ns(&self, id: &str) -> Option<f64> {
        let path = self.dir.join(id).join("new").join("estimates.json");
        let written = std::fs::metadata(&path).ok()?.modified().ok()?;
        if written < self.since {
            return None;
        }
        let estimates: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
        estimates["median"]["point_estimate"].as_f64()
    }

    /// Adds a line to print.
    pub fn line(&mut self, line: String) {
        self.lines.push(line);
    }

    /// Adds `(a − bare) / (b − bare)`, the overhead of `a` over that of `b`, from the medians of
    /// this run, if all three ran.
    pub fn overhead_ratio(&mut self, what: &str, bare: &str, a: &str, b: &str, goal: &str) {
        let (Some(bare), Some(a), Some(b)) = (self.ns(bare), self.ns(a), self.ns(b)) else {
            return;
        };
        let ratio = if b > bare {
            format!("{:.2}", (a - bare) / (b - bare))
        } else {
            "n/a, the second measured at or below the bare service".to_owned()
        };
        self.line(format!(
            "{what}: ({a:.1} - {bare:.1}) / ({b:.1} - {bare:.1}) = {ratio} ({goal})"
        ));
    }

    /// Prints the lines under `heading`, or says why there are none.
    pub fn print(&self, heading: &str) {
        if self.lines.is_empty() {
            // (`--test`, `--list` and `--profile-time` write no estimates.)
            eprintln!(
                "no ratios: no estimates of this run under {}",
                self.dir.display()
            );
            return;
        }
        println!("\n{heading}");
        for line in &self.lines {
            println!("{line}");
        }
    }
}

/// Where criterion writes, found as criterion finds it: `CRITERION_HOME`, else `criterion` in
/// `CARGO_TARGET_DIR`, else in the target directory `cargo metadata` names, else
/// `target/criterion`.
fn criterion_dir() -> std::path::PathBuf {
    use std::path::PathBuf;
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(target).join("criterion");
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .ok()
        .and_then(|out| serde_json::from_slice::<serde_json::Value>(&out.stdout).ok())
        .and_then(|metadata| metadata["target_directory"].as_str().map(PathBuf::from));
    target
        .unwrap_or_else(|| PathBuf::from("target"))
        .join("criterion")
}
