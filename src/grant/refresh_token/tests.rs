//! Unit tests of `refresh_token`.

use super::*;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;
use tokio::time::Instant;
use tower::service_fn;

type Seen = Arc<Mutex<Vec<Request<Full<Bytes>>>>>;

/// A grant builder whose HTTP client answers every request with `answer` and keeps them.
fn builder(status: u16, answer: &'static str) -> (RefreshTokenGrantBuilder, Seen) {
    let seen: Seen = Arc::default();
    let client = {
        let seen = Arc::clone(&seen);
        service_fn(move |request: Request<Full<Bytes>>| {
            lock(&seen).push(request);
            async move {
                let mut response = Response::new(Full::new(Bytes::from_static(answer.as_bytes())));
                *response.status_mut() =
                    http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
                Ok::<_, std::convert::Infallible>(response)
            }
        })
    };
    let builder = RefreshTokenGrant::builder()
        .token_url("http://127.0.0.1:1/oauth2/token")
        .client_id("app")
        .refresh_token("r1-very-secret")
        .http_client(client);
    (builder, seen)
}

async fn body(request: Request<Full<Bytes>>) -> String {
    use http_body_util::BodyExt as _;
    let bytes = request.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[test]
fn builder_rejects_missing_parts() {
    let base = || builder(200, "").0;
    assert!(base().build().is_ok());
    let e = base().refresh_token("").build().unwrap_err();
    assert!(e.to_string().contains("refresh token is empty"));
    let e = RefreshTokenGrant::builder()
        .token_url("http://127.0.0.1:1/t")
        .client_id("app")
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("no refresh token"));
    let e = base().client_secret("").build().unwrap_err();
    assert!(e.to_string().contains("client secret is empty"));
    let e = base().client_id("").build().unwrap_err();
    assert!(e.to_string().contains("client id"));
    let e = base()
        .access_token("a b", Instant::now())
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("stored access token"));
    let e = base().access_token_from_jwt("opaque").build().unwrap_err();
    assert!(e.to_string().contains("not a JWT"), "{e}");
    let e = base().request_timeout(Duration::ZERO).build().unwrap_err();
    assert!(e.to_string().contains("request_timeout"));
    let e = base().persist_timeout(Duration::ZERO).build().unwrap_err();
    assert!(e.to_string().contains("persist_timeout"));
    let e = base()
        .token_url("http://auth.example.com/t")
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("https"));
}

#[test]
fn debug_hides_every_secret() {
    let (base, _) = builder(200, "");
    let b = base
        .client_secret("hunter2-secret")
        .access_token("stored-access-token", Instant::now());
    let text = format!("{b:?}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!text.contains("r1-very-secret"), "{text}");
    assert!(!text.contains("stored-access-token"), "{text}");
    let grant = b.build().unwrap();
    let text = format!("{grant:?}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!text.contains("r1-very-secret"), "{text}");
    assert!(text.contains("[redacted]"), "{text}");
}

#[tokio::test]
#[allow(deprecated)]
async fn rotation_is_kept_even_when_the_access_token_is_unusable() {
    let (base, seen) = builder(
        200,
        r#"{"refresh_token":"r2","access_token":"a b","token_type":"Bearer","expires_in":60}"#,
    );
    let rotations = Arc::new(AtomicUsize::new(0));
    let grant = base
        .on_rotation({
            let rotations = Arc::clone(&rotations);
            move |new: &str| {
                assert_eq!(new, "r2");
                rotations.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build()
        .unwrap();
    let err = grant.fetch().await.unwrap_err();
    assert_eq!(err.kind(), crate::ErrorKind::InvalidResponse);
    assert_eq!(rotations.load(Ordering::SeqCst), 1);
    // The next exchange presents the rotated token; the same one again is no rotation.
    let _ = grant.fetch().await;
    assert_eq!(rotations.load(Ordering::SeqCst), 1);
    let requests: Vec<_> = std::mem::take(&mut *lock(&seen));
    assert_eq!(requests.len(), 2);
    let mut bodies = Vec::new();
    for request in requests {
        assert!(request.headers().get("authorization").is_none());
        bodies.push(body(request).await);
    }
    assert_eq!(
        bodies,
        [
            "grant_type=refresh_token&refresh_token=r1-very-secret&client_id=app",
            "grant_type=refresh_token&refresh_token=r2&client_id=app",
        ]
    );
}

#[tokio::test]
#[allow(deprecated)]
async fn a_panicking_hook_does_not_lose_the_token() {
    let (base, seen) = builder(
        200,
        r#"{"refresh_token":"r2","access_token":"a","token_type":"Bearer","expires_in":60}"#,
    );
    let grant = base
        .on_rotation(|_: &str| panic!("the hook failed"))
        .build()
        .unwrap();
    assert_eq!(grant.fetch().await.unwrap().access_token().secret(), "a");
    grant.fetch().await.unwrap();
    let last = lock(&seen).pop().unwrap();
    assert!(body(last).await.contains("refresh_token=r2&"));
}

/// A client whose first answers are these connection errors, then a token.
fn failing_client(errors: Vec<std::io::ErrorKind>) -> (RefreshTokenGrantBuilder, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(Mutex::new(errors));
    let client = {
        let calls = Arc::clone(&calls);
        service_fn(move |_request: Request<Full<Bytes>>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let next = {
                let mut errors = lock(&errors);
                (!errors.is_empty()).then(|| errors.remove(0))
            };
            async move {
                match next {
                    Some(kind) => Err(std::io::Error::from(kind)),
                    None => Ok(Response::new(Full::new(Bytes::from_static(
                        br#"{"access_token":"a","token_type":"Bearer"}"#,
                    )))),
                }
            }
        })
    };
    let builder = RefreshTokenGrant::builder()
        .token_url("http://127.0.0.1:1/oauth2/token")
        .client_id("app")
        .refresh_token("r1")
        .http_client(client);
    (builder, calls)
}

#[tokio::test(start_paused = true)]
async fn only_a_request_that_never_left_is_sent_again() {
    use std::io::ErrorKind::{ConnectionRefused, ConnectionReset};
    let (builder, calls) = failing_client(vec![ConnectionRefused, ConnectionRefused]);
    builder.build().unwrap().fetch().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    let (builder, calls) = failing_client(vec![ConnectionRefused; 5]);
    let err = builder.build().unwrap().fetch().await.unwrap_err();
    assert_eq!(err.kind(), crate::ErrorKind::Unavailable);
    assert_eq!(calls.load(Ordering::SeqCst), 3, "at most three attempts");

    // The connection broke after the request may have reached the server: the answer may
    // have rotated the token, and is lost. The old token is presented once more, at once
    // (within a grace period a server accepts it), and not again within this fetch.
    let (builder, calls) = failing_client(vec![ConnectionReset, ConnectionReset]);
    let err = builder.build().unwrap().fetch().await.unwrap_err();
    assert_eq!(err.kind(), crate::ErrorKind::Unavailable);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_server_error_is_retried_once_at_once_and_then_left_to_the_cache() {
    let (base, seen) = builder(503, "");
    let err = base.build().unwrap().fetch().await.unwrap_err();
    assert_eq!(err.kind(), crate::ErrorKind::Unavailable);
    assert!(
        err.is_retryable(),
        "the cache retries it later, with backoff"
    );
    assert_eq!(lock(&seen).len(), 2, "the lost answer's retry, once");
    // A refusal is no lost answer: not retried.
    let (base, seen) = builder(429, "");
    base.build().unwrap().fetch().await.unwrap_err();
    assert_eq!(lock(&seen).len(), 1);
}

/// Only `invalid_grant` ends a session: other refusals leave the refresh token usable.
#[tokio::test]
async fn only_invalid_grant_ends_the_session() {
    for answer in [
        r#"{"error":"invalid_client"}"#,
        r#"{"error":"invalid_scope"}"#,
        r#"{"error":"unauthorized_client"}"#,
        "",
    ] {
        let (base, seen) = builder(400, answer);
        let grant = base.build().unwrap();
        let mut status = grant.status();
        for _ in 0..2 {
            let err = grant.fetch().await.unwrap_err();
            assert!(!err.is_invalid_grant(), "{answer}: {err}");
        }
        assert_eq!(lock(&seen).len(), 2, "{answer}: the token is sent again");
        assert!(status.borrow_and_update().ended.is_none(), "{answer}");
    }
    let (base, _) = builder(400, r#"{"error":"invalid_grant"}"#);
    let grant = base.build().unwrap();
    grant.fetch().await.unwrap_err();
    assert!(grant.status().borrow().ended.is_some());
}

#[tokio::test]
async fn invalid_grant_ends_the_session() {
    let (base, seen) = builder(400, r#"{"error":"invalid_grant"}"#);
    let grant = base.build().unwrap();
    for _ in 0..3 {
        let err = grant.fetch().await.unwrap_err();
        assert!(err.is_invalid_grant() && err.is_permanent());
        assert!(err.to_string().contains("sign in again"), "{err}");
    }
    assert_eq!(lock(&seen).len(), 1, "a dead refresh token is sent once");
}

#[tokio::test(start_paused = true)]
async fn stored_access_token_is_used_once_while_it_has_not_expired() {
    let answer = r#"{"access_token":"fresh","token_type":"Bearer","expires_in":60}"#;
    let (base, seen) = builder(200, answer);
    let grant = base
        .access_token("stored", Instant::now() + Duration::from_secs(31))
        .build()
        .unwrap();
    assert_eq!(
        grant.fetch().await.unwrap().access_token().secret(),
        "stored"
    );
    assert_eq!(lock(&seen).len(), 0);
    assert_eq!(
        grant.fetch().await.unwrap().access_token().secret(),
        "fresh"
    );
    assert_eq!(lock(&seen).len(), 1);

    // The grant hands out any kept token that has not expired; the cache judges its margins
    // by its own `min_validity` (issue 26, defect 6).
    for (left, expected) in [(0, "fresh"), (10, "stored"), (30, "stored")] {
        let (base, _) = builder(200, answer);
        let grant = base
            .access_token("stored", Instant::now() + Duration::from_secs(left))
            .build()
            .unwrap();
        let token = grant.fetch().await.unwrap();
        assert_eq!(token.access_token().secret(), expected, "{left} s left");
    }
}

#[tokio::test(start_paused = true)]
async fn a_restored_jwt_is_judged_by_its_own_lifetime() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Issued for 60 s, 10 s left: its margin is 6 s, so it is used.
    let claims = format!(r#"{{"iat":{},"exp":{}}}"#, now - 50, now + 10);
    let jwt = format!(
        "{}.{}.{}",
        b64.encode("{}"),
        b64.encode(claims),
        b64.encode("s")
    );
    let (base, seen) = builder(200, r#"{"access_token":"fresh","token_type":"Bearer"}"#);
    let grant = base.access_token_from_jwt(jwt.clone()).build().unwrap();
    let token = grant.fetch().await.unwrap();
    assert_eq!(token.access_token().secret(), jwt);
    assert_eq!(token.lifetime(), Some(Duration::from_secs(60)));
    let left = token.expires_at() - Instant::now();
    assert!(
        left <= Duration::from_secs(10) && left > Duration::from_secs(8),
        "{left:?}"
    );
    assert_eq!(lock(&seen).len(), 0);

    // The same expiry given on the wall clock.
    let (base, _) = builder(200, r#"{"access_token":"fresh","token_type":"Bearer"}"#);
    let at = SystemTime::now() + Duration::from_secs(10);
    let grant = base
        .access_token_expiring_at(jwt.clone(), at)
        .build()
        .unwrap();
    assert_eq!(grant.fetch().await.unwrap().access_token().secret(), jwt);
}

#[tokio::test]
async fn confidential_clients_authenticate_like_client_credentials() {
    let (base, seen) = builder(200, r#"{"access_token":"a","token_type":"Bearer"}"#);
    let basic = base
        .client_secret("s3cret")
        .scope("openid")
        .build()
        .unwrap();
    basic.fetch().await.unwrap();
    let post = RefreshTokenGrant::builder()
        .token_url("http://127.0.0.1:1/oauth2/token")
        .client_id("app")
        .refresh_token("r1-very-secret")
        .http_client(basic.inner.endpoint.http.clone())
        .client_secret("s3cret")
        .client_auth(ClientAuth::Post)
        .build()
        .unwrap();
    post.fetch().await.unwrap();
    let mut requests: Vec<_> = std::mem::take(&mut *lock(&seen));
    let second = requests.pop().unwrap();
    let first = requests.pop().unwrap();
    assert!(first.headers()["authorization"].is_sensitive());
    assert_eq!(
        body(first).await,
        "grant_type=refresh_token&refresh_token=r1-very-secret&scope=openid"
    );
    assert!(second.headers().get("authorization").is_none());
    assert_eq!(
        body(second).await,
        "grant_type=refresh_token&refresh_token=r1-very-secret&client_id=app&client_secret=s3cret"
    );
}

/// Defect 3 (issue 26): a thread that cannot be started (a thread or pid limit) fails the
/// exchange that needed it with an error, inside async code, without a panic (the old code
/// dropped a built runtime there); the next exchange starts the thread and runs.
#[tokio::test]
async fn a_thread_that_cannot_start_is_an_error_and_the_next_exchange_tries_again() {
    let executor = super::executor::Executor::new();
    executor
        .fail_next_start
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let error = executor
        .spawn(Box::pin(async {}))
        .expect_err("the thread could not start");
    assert_eq!(error.kind(), crate::ErrorKind::Internal);
    assert!(error.to_string().contains("thread"), "{error}");
    let (ran, done) = tokio::sync::oneshot::channel();
    executor
        .spawn(Box::pin(async move {
            let _ = ran.send(std::thread::current().name().map(str::to_owned));
        }))
        .unwrap();
    let name = done.await.unwrap();
    assert_eq!(name.as_deref(), Some("cognito-session"));
}
