//! A custom `TokenSource` reports its failures with this crate's `Error`, and the cache paces
//! them as it paces its own: a permanent error like `invalid_client`, a passing one by backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::advance;
use tower_cognito_auth::{BoxFuture, CognitoAuthLayer, Error, ErrorKind, Token, TokenSource};

/// A source that always fails with the error it was given, and counts its calls.
#[derive(Clone)]
struct Failing {
    error: Error,
    calls: Arc<AtomicUsize>,
}

impl TokenSource for Failing {
    fn fetch(&self) -> BoxFuture<'_, Result<Token, Error>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let error = self.error.clone();
        Box::pin(async move { Err(error) })
    }
}

/// How many fetches a request every 100 ms causes over 59.9 s, and the error they saw.
async fn fetches_in_a_minute(error: Error) -> (usize, Error) {
    let calls = Arc::new(AtomicUsize::new(0));
    let source = Failing {
        error,
        calls: Arc::clone(&calls),
    };
    let auth = CognitoAuthLayer::builder()
        .token_source(source)
        .build()
        .unwrap();
    let mut last = None;
    for _ in 0..600 {
        last = Some(auth.token().await.unwrap_err());
        advance(Duration::from_millis(100)).await;
    }
    (calls.load(Ordering::SeqCst), last.unwrap())
}

#[tokio::test(start_paused = true)]
async fn a_custom_permanent_error_is_paced_like_invalid_client() {
    let (calls, error) = fetches_in_a_minute(Error::new(
        ErrorKind::Rejected,
        "the identity provider refused this service's key",
    ))
    .await;
    assert_eq!(calls, 1, "one attempt, then the slowest rate: 60 s");
    assert!(error.is_permanent());
    assert_eq!(
        error.to_string(),
        "the identity provider refused this service's key"
    );

    let (calls, error) =
        fetches_in_a_minute(Error::new(ErrorKind::InvalidConfig, "no key file")).await;
    assert_eq!(calls, 1, "a configuration error is permanent too");
    assert_eq!(error.kind(), ErrorKind::InvalidConfig);
}

#[tokio::test(start_paused = true)]
async fn a_custom_retryable_error_is_retried_by_backoff() {
    let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
    let (calls, error) = fetches_in_a_minute(Error::with_source(
        ErrorKind::Unavailable,
        "the key service broke off",
        io,
    ))
    .await;
    // 1 s doubling to 60 s, full jitter: more than one attempt in a minute, far fewer than
    // the 600 requests.
    assert!((2..=12).contains(&calls), "{calls}");
    assert!(error.is_retryable());
    assert!(std::error::Error::source(&error).is_some());
}
