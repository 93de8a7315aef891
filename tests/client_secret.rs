//! Client secrets read where they live (`ClientSecret::from_file`, `from_fn`) at each token
//! request, against a real token endpoint on 127.0.0.1: a missing file is a clear error with no
//! request, a late rewrite heals on the next request.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tower_cognito_auth::testing::TokenEndpoint;
use tower_cognito_auth::{
    ClientCredentials, ClientSecret, CognitoAuthLayer, ErrorKind, TokenSource,
};

mod common;

use common::http;

/// A fresh path for a test's secret file (the file itself is not created).
fn secret_path(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tower-cognito-auth-client-secret-{}-{test}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cognito-client-secret");
    let _ = std::fs::remove_file(&path);
    path
}

fn layer(endpoint: &TokenEndpoint, secret: ClientSecret) -> CognitoAuthLayer {
    CognitoAuthLayer::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret_source(secret)
        .http_client(http())
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_secret_file_is_read_at_the_token_request_and_trimmed() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    let path = secret_path("trimmed");
    // `build()` does not read it: the file does not exist yet.
    let auth = layer(&endpoint, ClientSecret::from_file(&path));
    std::fs::write(&path, format!("{}\n", endpoint.client_secret())).unwrap();
    auth.token().await.unwrap();
    assert_eq!(endpoint.request_count(), 1);
    assert_eq!(
        endpoint.requests()[0].basic_credentials().unwrap().1,
        endpoint.client_secret(),
        "the final newline is not part of the secret"
    );
}

#[tokio::test(start_paused = true)]
async fn a_missing_file_names_the_path_sends_nothing_and_heals_when_it_appears() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    let path = secret_path("missing");
    let auth = layer(&endpoint, ClientSecret::from_file(&path));
    for _ in 0..3 {
        let error = auth.token().await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidConfig);
        let text = error.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("does not exist"), "{text}");
    }
    assert_eq!(
        endpoint.request_count(),
        0,
        "no token request without a secret"
    );

    // Whitespace only is no secret either (still no secret: no change, the pause goes on).
    std::fs::write(&path, "   \n").unwrap();
    assert_eq!(
        auth.token().await.unwrap_err().kind(),
        ErrorKind::InvalidConfig
    );
    assert_eq!(endpoint.request_count(), 0);

    // The secret appears: the next request (a tenth of a second on, the most that requests
    // wait between two reads of the file) is served, no minute's pause.
    std::fs::write(&path, endpoint.client_secret()).unwrap();
    tokio::time::advance(Duration::from_millis(100)).await;
    auth.token().await.unwrap();
    assert_eq!(endpoint.request_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_late_rewrite_heals_within_one_request() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    let path = secret_path("late");
    std::fs::write(&path, "the-secret-that-was-deleted").unwrap();
    let auth = layer(&endpoint, ClientSecret::from_file(&path));
    for _ in 0..3 {
        assert!(auth.token().await.unwrap_err().is_invalid_client());
    }
    assert_eq!(endpoint.request_count(), 1, "invalid_client is paced");

    std::fs::write(&path, endpoint.client_secret()).unwrap();
    tokio::time::advance(Duration::from_millis(100)).await;
    auth.token().await.unwrap();
    assert_eq!(endpoint.request_count(), 2, "one request: the rewrite's");
}

#[tokio::test(start_paused = true)]
async fn a_function_is_asked_at_each_token_request() {
    let endpoint = TokenEndpoint::builder()
        .lifetime(Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let secret = ClientSecret::from_fn({
        let calls = Arc::clone(&calls);
        let secret = endpoint.client_secret().to_owned();
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(secret.clone())
        }
    });
    let source = ClientCredentials::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret_source(secret)
        .http_client(http())
        .build()
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 0, "build() does not ask");
    source.fetch().await.unwrap();
    source.fetch().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn client_secret_beside_client_secret_source_is_refused() {
    let error = ClientCredentials::builder()
        .token_url("https://auth.example.com/oauth2/token")
        .client_id("id")
        .client_secret("fixed")
        .client_secret_source(ClientSecret::from_file("/run/secrets/x"))
        .build()
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidConfig);
    assert!(
        error.to_string().contains("client_secret_source"),
        "{error}"
    );
    assert!(!error.to_string().contains("fixed"), "{error}");
}

/// A confidential app client's user session: the grant reads its secret at each exchange, and
/// a rewrite after `invalid_client` heals on the next request.
#[tokio::test(start_paused = true)]
async fn a_session_reads_its_client_secret_at_each_exchange() {
    let endpoint = TokenEndpoint::builder()
        .lifetime(Duration::from_secs(300))
        .start()
        .await
        .unwrap();
    let path = secret_path("session");
    std::fs::write(&path, "a-wrong-secret\n").unwrap();
    let grant = tower_cognito_auth::RefreshTokenGrant::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret_source(ClientSecret::from_file(&path))
        .refresh_token(endpoint.new_session())
        .http_client(http())
        .build()
        .unwrap();
    let auth = CognitoAuthLayer::builder()
        .token_source(grant)
        .build()
        .unwrap();
    for _ in 0..3 {
        assert!(auth.token().await.unwrap_err().is_invalid_client());
    }
    assert_eq!(endpoint.request_count(), 1);

    std::fs::write(&path, format!("{}\n", endpoint.client_secret())).unwrap();
    tokio::time::advance(Duration::from_millis(100)).await;
    auth.token().await.unwrap();
    assert_eq!(endpoint.request_count(), 2);
    assert_eq!(
        endpoint.requests()[1].basic_credentials().unwrap().1,
        endpoint.client_secret()
    );
    assert!(!endpoint.is_session_revoked());

    let both = tower_cognito_auth::RefreshTokenGrant::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret("fixed")
        .client_secret_source(ClientSecret::from_file(&path))
        .refresh_token("r")
        .http_client(http())
        .build()
        .unwrap_err();
    assert_eq!(both.kind(), ErrorKind::InvalidConfig);
}

/// After an `invalid_client` behind a token that still serves, every request asks the source's
/// epoch (on the hot path): the secret is read again at most ten times a second, not once per
/// request.
#[tokio::test(start_paused = true)]
async fn a_flood_of_requests_reads_the_secret_ten_times_a_second_at_most() {
    let endpoint = TokenEndpoint::builder()
        .lifetime(Duration::from_secs(600))
        .start()
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let secret = ClientSecret::from_fn({
        let calls = Arc::clone(&calls);
        let secret = endpoint.client_secret().to_owned();
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(secret.clone())
        }
    });
    let auth = layer(&endpoint, secret);
    auth.token().await.unwrap();
    // The secret is deleted at the endpoint; the refresh ahead of expiry is refused, and the
    // token in hand still serves.
    endpoint.set_client_secrets(["another"]);
    tokio::time::advance(Duration::from_secs(560)).await;
    auth.token().await.unwrap();
    endpoint.wait_for_requests(2).await;
    for _ in 0..50 {
        if auth.stats().token_failures == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(auth.stats().token_failures, 1, "the refresh was refused");
    let before = calls.load(Ordering::SeqCst);
    for _ in 0..1_000 {
        auth.token().await.unwrap();
    }
    tokio::time::advance(Duration::from_millis(100)).await;
    for _ in 0..1_000 {
        auth.token().await.unwrap();
    }
    let reads = calls.load(Ordering::SeqCst) - before;
    assert!((1..=2).contains(&reads), "{reads} reads for 2,000 requests");
}

/// A session that ended (`invalid_grant`: its refresh token was revoked) is not a refusal of
/// the client: requests afterwards do not read the client secret again and again.
#[tokio::test(start_paused = true)]
async fn an_ended_session_does_not_make_requests_read_the_secret() {
    let endpoint = TokenEndpoint::builder().start().await.unwrap();
    let reads = Arc::new(AtomicUsize::new(0));
    let secret = {
        let reads = Arc::clone(&reads);
        let value = endpoint.client_secret().to_owned();
        ClientSecret::from_fn(move || {
            reads.fetch_add(1, Ordering::SeqCst);
            Ok(value.clone())
        })
    };
    let refresh_token = endpoint.new_session();
    endpoint.revoke_session();
    let grant = tower_cognito_auth::RefreshTokenGrant::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret_source(secret)
        .refresh_token(refresh_token)
        .http_client(http())
        .build()
        .unwrap();
    let auth = CognitoAuthLayer::builder()
        .token_source(grant)
        .build()
        .unwrap();
    assert!(auth.token().await.unwrap_err().is_invalid_grant());
    let after_the_end = reads.load(Ordering::SeqCst);
    for _ in 0..20 {
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(auth.token().await.is_err());
    }
    assert_eq!(
        reads.load(Ordering::SeqCst),
        after_the_end,
        "the secret was read again after the session ended"
    );
}
