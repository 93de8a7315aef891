//! The client_credentials grant against a real token endpoint on 127.0.0.1.
#![cfg(feature = "test-util")]

use std::time::Duration;

use base64::Engine as _;
use http::StatusCode;
use tokio::time::Instant;
use tower_cognito_auth::testing::{Reply, TokenEndpoint};
use tower_cognito_auth::{ClientAuth, ClientCredentials, ErrorKind, TokenSource};

mod common;

use common::{http, source};

const ODD_ID: &str = "id:with/odd chars&=";
const ODD_SECRET: &str = "s3cr3t+/:%&=ü ";

async fn odd_endpoint() -> TokenEndpoint {
    TokenEndpoint::builder()
        .client_id(ODD_ID)
        .client_secret(ODD_SECRET)
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn basic_auth_sends_the_rfc6749_header() {
    let endpoint = odd_endpoint().await;
    let token = source(&endpoint).build().unwrap().fetch().await.unwrap();
    assert_eq!(
        Some(token.access_token().secret().to_owned()),
        endpoint.last_token()
    );

    let seen = endpoint.requests();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(request.method, http::Method::POST);
    assert_eq!(request.path, "/oauth2/token");
    assert_eq!(
        request.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    // RFC 6749 §2.3.1: form-url-encode id and secret, join with ':', then base64.
    let encoded = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            encoded(ODD_ID),
            encoded(ODD_SECRET)
        ))
    );
    assert_eq!(request.headers["authorization"], expected.as_str());
    assert_eq!(
        request.basic_credentials(),
        Some((ODD_ID.to_owned(), ODD_SECRET.to_owned()))
    );
    assert_eq!(
        request.form(),
        [("grant_type".to_owned(), "client_credentials".to_owned())]
    );
}

#[tokio::test]
async fn post_auth_sends_form_fields() {
    let endpoint = odd_endpoint().await;
    source(&endpoint)
        .client_auth(ClientAuth::Post)
        .build()
        .unwrap()
        .fetch()
        .await
        .unwrap();
    let request = &endpoint.requests()[0];
    assert!(request.headers.get("authorization").is_none());
    assert_eq!(
        request.form_value("grant_type").as_deref(),
        Some("client_credentials")
    );
    assert_eq!(request.form_value("client_id").as_deref(), Some(ODD_ID));
    assert_eq!(
        request.form_value("client_secret").as_deref(),
        Some(ODD_SECRET)
    );
    let raw = std::str::from_utf8(&request.body).unwrap();
    assert!(
        raw.contains("client_id=id%3Awith%2Fodd+chars%26%3D"),
        "{raw}"
    );
}

#[tokio::test]
async fn scopes_are_space_separated() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    source(&endpoint)
        .scope("wallets/read")
        .scope("wallets/write")
        .build()
        .unwrap()
        .fetch()
        .await
        .unwrap();
    let request = &endpoint.requests()[0];
    assert_eq!(
        request.form_value("scope").as_deref(),
        Some("wallets/read wallets/write")
    );

    source(&endpoint).build().unwrap().fetch().await.unwrap();
    assert_eq!(endpoint.requests()[1].form_value("scope"), None);
}

#[tokio::test]
async fn invalid_client_is_one_request_and_a_clear_error() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    let err = source(&endpoint)
        .client_secret("wrong-secret-value")
        .build()
        .unwrap()
        .fetch()
        .await
        .unwrap_err();
    assert_eq!(endpoint.request_count(), 1, "not retried");
    assert!(err.is_invalid_client());
    assert_eq!(err.kind(), ErrorKind::Rejected);
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
    assert!(!err.is_retryable());
    let message = err.to_string();
    assert!(message.contains("invalid_client"), "{message}");
    assert!(!message.contains("wrong-secret-value"));
    assert!(!format!("{err:?}").contains("wrong-secret-value"));
}

#[tokio::test(start_paused = true)]
async fn rate_limit_waits_for_retry_after() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    endpoint.push_reply(Reply::status(StatusCode::TOO_MANY_REQUESTS).header("retry-after", "1"));
    let start = Instant::now();
    let token = source(&endpoint).build().unwrap().fetch().await.unwrap();
    assert!(!token.access_token().secret().is_empty());
    assert_eq!(endpoint.request_count(), 2);
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn rate_limit_longer_than_the_deadline_is_returned() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    endpoint.push_reply(Reply::status(StatusCode::TOO_MANY_REQUESTS).header("retry-after", "3600"));
    let err = source(&endpoint)
        .build()
        .unwrap()
        .fetch()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RateLimited);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3600)));
    assert_eq!(endpoint.request_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn server_errors_are_retried() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    endpoint.push_reply(Reply::status(StatusCode::SERVICE_UNAVAILABLE));
    endpoint.push_reply(Reply::status(StatusCode::SERVICE_UNAVAILABLE));
    source(&endpoint).build().unwrap().fetch().await.unwrap();
    assert_eq!(endpoint.request_count(), 3);

    // Always failing: at most `max_attempts` requests, then the 5xx error.
    endpoint.fail_with(Some(Reply::status(StatusCode::BAD_GATEWAY)));
    let err = source(&endpoint)
        .max_attempts(3)
        .build()
        .unwrap()
        .fetch()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert_eq!(err.status(), Some(StatusCode::BAD_GATEWAY));
    assert_eq!(endpoint.request_count(), 6);
}

#[tokio::test(start_paused = true)]
async fn slow_endpoint_times_out() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    endpoint.set_delay(Duration::from_secs(60));
    let start = Instant::now();
    let err = source(&endpoint)
        .request_timeout(Duration::from_secs(2))
        .max_attempts(1)
        .build()
        .unwrap()
        .fetch()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(err.is_retryable());
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

async fn invalid(reply: Reply) -> tower_cognito_auth::Error {
    let endpoint = TokenEndpoint::start().await.unwrap();
    endpoint.push_reply(reply);
    let err = source(&endpoint)
        .build()
        .unwrap()
        .fetch()
        .await
        .unwrap_err();
    assert_eq!(
        endpoint.request_count(),
        1,
        "an invalid response is not retried"
    );
    assert_eq!(err.kind(), ErrorKind::InvalidResponse, "{err}");
    err
}

#[tokio::test]
async fn invalid_responses() {
    let ok = StatusCode::OK;
    let err = invalid(Reply::status(ok).body("<html>hello</html>")).await;
    assert!(err.to_string().contains("not a JSON"), "{err}");

    let err = invalid(Reply::status(ok).json(serde_json::json!({
        "expires_in": 3600, "token_type": "Bearer"
    })))
    .await;
    assert!(err.to_string().contains("access_token"), "{err}");

    let err = invalid(Reply::status(ok).json(serde_json::json!({
        "access_token": "secret-mac-token", "expires_in": 3600, "token_type": "mac"
    })))
    .await;
    assert!(err.to_string().contains("token_type"), "{err}");
    assert!(!err.to_string().contains("secret-mac-token"));

    let huge = vec![b'a'; 10 * 1024 * 1024];
    let err = invalid(Reply::status(ok).body(huge)).await;
    assert!(err.to_string().contains("64 KiB"), "{err}");
}

#[tokio::test]
async fn lifetime_from_the_jwt_exp_claim() {
    let endpoint = TokenEndpoint::builder()
        .jwt(true)
        .omit_expires_in(true)
        .lifetime(Duration::from_secs(900))
        .start()
        .await
        .unwrap();
    let sent = Instant::now();
    let token = source(&endpoint).build().unwrap().fetch().await.unwrap();
    assert_eq!(token.access_token().secret().split('.').count(), 3);
    let lifetime = token.expires_at() - sent;
    // `exp` has whole seconds on the wall clock.
    assert!(
        lifetime >= Duration::from_secs(898) && lifetime <= Duration::from_secs(901),
        "{lifetime:?}"
    );
}

#[tokio::test]
async fn expires_in_is_used_when_present() {
    let endpoint = TokenEndpoint::builder()
        .lifetime(Duration::from_secs(120))
        .start()
        .await
        .unwrap();
    let sent = Instant::now();
    let token = source(&endpoint).build().unwrap().fetch().await.unwrap();
    let lifetime = token.expires_at() - sent;
    // Counted from when the request was sent, which is after `sent`.
    assert!(
        lifetime >= Duration::from_secs(120) && lifetime < Duration::from_secs(121),
        "{lifetime:?}"
    );
}

#[cfg(feature = "rustls")]
#[tokio::test]
async fn default_client_reaches_a_loopback_endpoint() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    let token = ClientCredentials::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret(endpoint.client_secret())
        .build()
        .unwrap()
        .fetch()
        .await
        .unwrap();
    assert_eq!(
        Some(token.access_token().secret().to_owned()),
        endpoint.last_token()
    );
}

#[test]
fn plain_http_to_a_remote_host_is_refused() {
    let err = ClientCredentials::builder()
        .token_url("http://auth.example.com/oauth2/token")
        .client_id("id")
        .client_secret("secret")
        .http_client(http())
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert!(err.to_string().contains("https"));
}

/// An endpoint nobody listens on: the error names its host and the cause in its message, not
/// only in `source()`.
#[tokio::test]
async fn an_unreachable_endpoint_is_named_with_its_cause() {
    // Bind, read the port, close: nothing listens there now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let source = tower_cognito_auth::ClientCredentials::builder()
        .token_url(format!("http://127.0.0.1:{port}/oauth2/token"))
        .client_id("id")
        .client_secret("secret")
        .http_client(common::http())
        .max_attempts(1)
        .build()
        .unwrap();
    let error = tower_cognito_auth::TokenSource::fetch(&source)
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(
        text.starts_with("could not reach the token endpoint at 127.0.0.1: "),
        "{text}"
    );
    assert!(text.to_lowercase().contains("refused"), "{text}");
}
