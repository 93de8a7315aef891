//! Nothing secret reaches the logs on Cognito's user-pool API either: every event at TRACE
//! level, from `GetTokensFromRefreshToken` with rotation, `REFRESH_TOKEN_AUTH` with its
//! `SECRET_HASH`, and a `NotAuthorizedException`, is captured and searched for the client
//! secret, the `SECRET_HASH`, every refresh token and every access token; `Debug` output too.
//!
//! A binary of its own, with a global subscriber (see tests/redaction.rs).
#![cfg(feature = "test-util")]

use std::time::Duration;

use base64::Engine as _;
use tower_cognito_auth::testing::TokenEndpoint;
use tower_cognito_auth::{RefreshFlow, RefreshTokenGrant, TokenSource};

mod common;

use common::{Capture, http};

#[tokio::test]
async fn trace_output_never_holds_a_secret_of_the_user_pool_api() {
    let capture = Capture::install();

    const SECRET: &str = "user-pool-client-secret-value";
    const DEVICE_KEY: &str = "us-east-1_device-key-value";
    let endpoint = TokenEndpoint::builder()
        .client_secret(SECRET)
        .rotate_refresh_tokens(true)
        .rotation_grace_period(Duration::from_secs(10))
        .start()
        .await
        .unwrap();
    let builder = |refresh_token: &str| {
        RefreshTokenGrant::builder()
            .user_pool_api_url(endpoint.user_pool_api_url())
            .client_id(endpoint.client_id())
            .client_secret(SECRET)
            .refresh_token(refresh_token)
            .device_key(DEVICE_KEY)
            .http_client(http())
    };
    let mut refresh_tokens = Vec::new();
    let mut access_tokens = Vec::new();

    // GetTokensFromRefreshToken, twice: two rotations, one of them after a lost answer.
    let first = endpoint.new_session_for("uuid-1");
    refresh_tokens.push(first.clone());
    let rotating = builder(&first).build().unwrap();
    access_tokens.push(rotating.fetch().await.unwrap());
    refresh_tokens.extend(endpoint.current_refresh_token());
    endpoint.lose_answers(1);
    access_tokens.push(rotating.fetch().await.unwrap());
    refresh_tokens.extend(endpoint.current_refresh_token());

    // REFRESH_TOKEN_AUTH with a SECRET_HASH, then one over the wrong name.
    let second = endpoint.new_session_for("uuid-2");
    refresh_tokens.push(second.clone());
    let hashing = builder(&second)
        .refresh_flow(RefreshFlow::RefreshTokenAuth)
        .username("uuid-2")
        .build()
        .unwrap();
    access_tokens.push(hashing.fetch().await.unwrap());
    let wrong = builder(&endpoint.new_session_for("uuid-3"))
        .refresh_flow(RefreshFlow::RefreshTokenAuth)
        .username("alice@example.com")
        .build()
        .unwrap();
    let refused = wrong.fetch().await.unwrap_err();
    assert!(refused.is_invalid_grant(), "{refused}");

    let hashes: Vec<String> = endpoint
        .requests()
        .iter()
        .filter_map(|r| {
            let body: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
            body.pointer("/AuthParameters/SECRET_HASH")?
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(hashes.len(), 2);
    assert_eq!(refresh_tokens.len(), 4);

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("token request succeeded") || logs.contains("refresh_token grant answered"),
        "events were captured:\n{logs}"
    );
    assert!(logs.contains("answer was lost"), "{logs}");
    let debug = format!("{rotating:?}{hashing:?}{wrong:?}{refused:?}{access_tokens:?}");
    let texts = [logs.as_str(), debug.as_str(), &refused.to_string()].concat();
    let basic = base64::engine::general_purpose::STANDARD.encode(SECRET);
    for needle in [SECRET, DEVICE_KEY, basic.as_str()]
        .into_iter()
        .chain(hashes.iter().map(String::as_str))
        .chain(refresh_tokens.iter().map(String::as_str))
        .chain(access_tokens.iter().map(|t| t.access_token().secret()))
    {
        assert!(!texts.contains(needle), "a secret leaked: {needle}");
    }
}
