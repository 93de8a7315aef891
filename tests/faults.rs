//! A token endpoint that misbehaves on purpose (issue #10's fault suite).
//!
//! The endpoint is a raw TCP server on 127.0.0.1 that reads each request and then, depending on
//! the fault it is told to play, resets the connection mid-response, sends half a JSON body and
//! closes, drips one byte per second, accepts and never answers, sends a `Content-Length`
//! larger than its body, or answers `503` with a strange `Retry-After`. For each fault:
//!
//! - with no token yet, every caller gets a clear error within `refresh_deadline`, from one
//!   refresh, and nothing panics or hangs;
//! - with a token that is still usable, every caller keeps getting it at once, while the
//!   refreshes behind it stay within the backoff schedule.
//!
//! Everything runs on Tokio's paused clock: the drip, the timeouts and the backoff take no
//! real time.
#![cfg(feature = "test-util")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, advance};
use tower_cognito_auth::{CognitoAuthLayer, ErrorKind};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Headers and part of the body, then a TCP reset.
    Reset,
    /// `Content-Length` for the whole body, half of it, then a clean close.
    HalfJson,
    /// The whole answer, one byte per second.
    Drip,
    /// Reads the request and never answers (the connection stays open).
    Silent,
    /// `200` whose `Content-Length` promises more than is sent; the connection stays open.
    ShortBody,
    /// `503` with this `Retry-After`.
    RetryAfter(&'static str),
}

const LIFETIME_SECS: u64 = 100;

/// The misbehaving endpoint. With no fault set, it answers a good token response.
struct FaultyEndpoint {
    url: String,
    fault: Arc<Mutex<Option<Fault>>>,
    /// Token requests received, whatever the answer (a pooled connection carries several).
    requests: Arc<AtomicUsize>,
    issued: Arc<AtomicUsize>,
}

impl FaultyEndpoint {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/oauth2/token", listener.local_addr().unwrap());
        let endpoint = Self {
            url,
            fault: Arc::default(),
            requests: Arc::default(),
            issued: Arc::default(),
        };
        let (fault, requests, issued) = (
            endpoint.fault.clone(),
            endpoint.requests.clone(),
            endpoint.issued.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve(
                    stream,
                    fault.clone(),
                    issued.clone(),
                    requests.clone(),
                ));
            }
        });
        endpoint
    }

    fn set(&self, fault: Option<Fault>) {
        *self.fault.lock().unwrap() = fault;
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn layer(&self) -> CognitoAuthLayer {
        CognitoAuthLayer::builder()
            .token_url(&self.url)
            .client_id("id")
            .client_secret("secret")
            .http_client(common::http())
            .build()
            .unwrap()
    }
}

/// Reads one request: its head, and as much body as `Content-Length` says.
async fn read_request(stream: &mut TcpStream) -> Option<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(());
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
    }
}

fn good_answer(n: usize) -> String {
    let body = format!(
        r#"{{"access_token":"good-{n}","expires_in":{LIFETIME_SECS},"token_type":"Bearer"}}"#
    );
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

async fn serve(
    mut stream: TcpStream,
    fault: Arc<Mutex<Option<Fault>>>,
    issued: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
) {
    // Keep-alive: answer requests on this connection until it ends, each as the fault of the
    // moment says (a client reuses pooled connections).
    while read_request(&mut stream).await.is_some() {
        requests.fetch_add(1, Ordering::SeqCst);
        let fault = *fault.lock().unwrap();
        let good = || good_answer(issued.fetch_add(1, Ordering::SeqCst) + 1);
        let Some(fault) = fault else {
            if stream.write_all(good().as_bytes()).await.is_err() {
                return;
            }
            continue;
        };
        match fault {
            Fault::Reset => {
                let answer = good();
                let _ = stream
                    .write_all(&answer.as_bytes()[..answer.len() - 20])
                    .await;
                #[allow(deprecated)] // a zero linger makes the close a reset; it does not block
                let _ = stream.set_linger(Some(Duration::ZERO));
                return;
            }
            Fault::HalfJson => {
                let answer = good();
                let _ = stream
                    .write_all(&answer.as_bytes()[..answer.len() - 30])
                    .await;
                let _ = stream.shutdown().await;
                return;
            }
            Fault::Drip => {
                for byte in good().bytes() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if stream.write_all(&[byte]).await.is_err() {
                        return;
                    }
                }
            }
            Fault::Silent => {
                std::future::pending::<()>().await;
            }
            Fault::ShortBody => {
                let body = r#"{"access_token":"short","expires_in":100,"token_type":"Bearer"}"#;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len() + 100
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                std::future::pending::<()>().await;
            }
            Fault::RetryAfter(value) => {
                let answer = format!(
                    "HTTP/1.1 503 Service Unavailable\r\nretry-after: {value}\r\ncontent-length: 0\r\n\r\n"
                );
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// What callers are told, in words, for each fault with no usable token.
fn expected_message(fault: Fault) -> &'static str {
    match fault {
        Fault::Reset | Fault::HalfJson => "broke off",
        Fault::Drip | Fault::Silent | Fault::ShortBody => "timed out",
        Fault::RetryAfter(_) => "unavailable (HTTP 503",
    }
}

const FAULTS: &[Fault] = &[
    Fault::Reset,
    Fault::HalfJson,
    Fault::Drip,
    Fault::Silent,
    Fault::ShortBody,
    Fault::RetryAfter("999999999"),
    Fault::RetryAfter("-5"),
    Fault::RetryAfter("Wed, 21 Oct 2015 07:28:00 GMT"),
];

/// The refresh deadline (the default), which bounds every caller's wait.
const REFRESH_DEADLINE: Duration = Duration::from_secs(30);

/// No token yet: 20 callers at once get one clear error each, within the refresh deadline,
/// from one refresh; later callers fail fast during the backoff.
async fn cold_start_under(fault: Fault) {
    let endpoint = FaultyEndpoint::start().await;
    endpoint.set(Some(fault));
    let layer = endpoint.layer();
    let start = Instant::now();
    let callers: Vec<_> = (0..20)
        .map(|_| {
            let layer = layer.clone();
            tokio::spawn(async move { layer.token().await })
        })
        .collect();
    let mut seen = String::new();
    for caller in callers {
        let error = caller
            .await
            .expect("no caller panics")
            .expect_err("no token can be had");
        assert!(
            error.is_retryable() || error.kind() == ErrorKind::InvalidResponse,
            "{fault:?}: {error}"
        );
        let message = error.to_string();
        assert!(message.contains("token"), "{fault:?}: {message}");
        assert!(
            message.contains(expected_message(fault)),
            "{fault:?}: {message}"
        );
        seen = message;
    }
    println!(
        "cold start, {fault:?}: callers see `{seen}` after {:?}; {} refresh, {} HTTP attempts",
        Instant::now() - start,
        layer.stats().token_requests,
        endpoint.requests()
    );
    assert!(
        Instant::now() - start <= REFRESH_DEADLINE,
        "{fault:?}: waited {:?}",
        Instant::now() - start
    );
    assert_eq!(layer.stats().token_requests, 1, "{fault:?}: one refresh");
    // Each fetch makes at most 4 attempts (ClientCredentials' default).
    assert!(endpoint.requests() <= 4, "{fault:?}");
    // A caller right after it fails at once: the backoff, not the request rate, paces fetches.
    let before = Instant::now();
    assert!(layer.token().await.is_err());
    assert_eq!(Instant::now(), before, "{fault:?}: failed fast");
    assert_eq!(layer.stats().token_requests, 1, "{fault:?}");
    // Once the endpoint is healthy again, the cache recovers within the backoff cap.
    endpoint.set(None);
    advance(Duration::from_secs(61)).await;
    let token = layer.token().await.expect("recovered");
    assert!(token.secret().starts_with("good-"), "{fault:?}");
}

/// A usable token: callers keep getting it at once while refreshes behind it fail, and those
/// refreshes stay within the backoff schedule.
async fn usable_token_under(fault: Fault) {
    let endpoint = FaultyEndpoint::start().await;
    let layer = endpoint.layer();
    let first = layer.token().await.unwrap();
    assert_eq!(first.secret(), "good-1");
    endpoint.set(Some(fault));
    // A 100 s token is usable until 10 s before expiry (min_validity scaled to a tenth).
    let usable_for = Duration::from_secs(LIFETIME_SECS - 11);
    let start = Instant::now();
    while Instant::now() - start < usable_for {
        let before = Instant::now();
        let token = layer.token().await.expect("the usable token is served");
        assert_eq!(token.secret(), "good-1", "{fault:?}");
        assert_eq!(Instant::now(), before, "{fault:?}: no caller waits");
        advance(Duration::from_millis(500)).await;
    }
    let stats = layer.stats();
    println!(
        "usable token, {fault:?}: served at once for {usable_for:?}; {} refreshes, {} HTTP attempts",
        stats.token_requests - 1,
        endpoint.requests() - 1
    );
    assert!(stats.token_requests >= 2, "{fault:?}: refreshes were tried");
    // Refreshes are spaced by the cache's backoff (full jitter, 1 s doubling to 60 s) over
    // about 40 s of the refresh-ahead window: a handful, however many requests came.
    assert!(
        stats.token_requests <= 20,
        "{fault:?}: {} refreshes",
        stats.token_requests
    );
    // The first, good request, then at most 4 attempts per refresh.
    assert!(endpoint.requests() <= 1 + 4 * stats.token_requests as usize);
}

#[tokio::test(start_paused = true)]
async fn cold_start_under_every_fault() {
    for fault in FAULTS {
        tokio::time::timeout(Duration::from_secs(3600), cold_start_under(*fault))
            .await
            .unwrap_or_else(|_| panic!("{fault:?}: hung"));
    }
}

#[tokio::test(start_paused = true)]
async fn usable_token_keeps_being_served_under_every_fault() {
    for fault in FAULTS {
        tokio::time::timeout(Duration::from_secs(3600), usable_token_under(*fault))
            .await
            .unwrap_or_else(|_| panic!("{fault:?}: hung"));
    }
}

/// Defect 3 over HTTP: `Retry-After: 999999999` pauses fetches for at most the backoff cap.
#[tokio::test(start_paused = true)]
async fn a_huge_retry_after_pauses_fetches_for_at_most_the_cap() {
    let endpoint = FaultyEndpoint::start().await;
    endpoint.set(Some(Fault::RetryAfter("999999999")));
    let layer = endpoint.layer();
    let error = layer.token().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable);
    // The message quotes what the endpoint asked, as its request, not as how long the cache
    // will wait (at most 60 s, below).
    let message = error.to_string();
    assert!(
        message.ends_with("the endpoint asked to retry after a day or more"),
        "{message}"
    );
    endpoint.set(None);
    advance(Duration::from_secs(60)).await;
    assert_eq!(layer.token().await.unwrap().secret(), "good-1");
    assert_eq!(layer.stats().token_requests, 2);
}
