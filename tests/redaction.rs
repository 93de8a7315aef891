//! Nothing secret reaches the logs: every event at TRACE level, from a fetch that succeeds, one
//! that is retried, one that is refused and one through the layer, is captured and searched for
//! the client secret, the Basic credentials and every token.
//!
//! A binary of its own, with a global subscriber: tracing caches per-callsite interest across
//! threads, so a thread-local subscriber in a binary with other tests could miss events.
#![cfg(feature = "test-util")]

use base64::Engine as _;
use http::StatusCode;
use tower_cognito_auth::testing::{Reply, TokenEndpoint};
use tower_cognito_auth::{ClientAuth, TokenSource};

mod common;

use common::{Capture, http, source};

const PROXY_PASSWORD: &str = "the-proxy-password";

#[tokio::test]
async fn trace_output_never_holds_the_secret_or_a_token() {
    let capture = Capture::install();

    const SECRET: &str = "very-secret-client-secret";
    let endpoint = TokenEndpoint::builder()
        .client_secret(SECRET)
        .start()
        .await
        .unwrap();
    let good = source(&endpoint).build().unwrap();
    let post = source(&endpoint)
        .client_auth(ClientAuth::Post)
        .build()
        .unwrap();
    let mut tokens = Vec::new();
    tokens.push(good.fetch().await.unwrap());
    endpoint.push_reply(Reply::status(StatusCode::SERVICE_UNAVAILABLE));
    tokens.push(post.fetch().await.unwrap());
    let bad = source(&endpoint)
        .client_secret("another-secret-value")
        .build()
        .unwrap();
    assert!(bad.fetch().await.is_err());
    let layer = tower_cognito_auth::CognitoAuthLayer::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret(SECRET)
        .http_client(http())
        .build()
        .unwrap();
    let via_layer = layer.token().await.unwrap();
    // A proxy with credentials (feature `rustls`): nothing listens there, the request fails
    // at the proxy, and neither the password nor its Basic form is printed.
    #[cfg(feature = "rustls")]
    let proxied = {
        let builder = tower_cognito_auth::ClientCredentials::builder()
            .token_url("https://127.0.0.1:1/oauth2/token")
            .client_id(endpoint.client_id())
            .client_secret(SECRET)
            .proxy(format!("http://egress:{PROXY_PASSWORD}@127.0.0.1:1"))
            .max_attempts(1);
        let shown = format!("{builder:?}");
        let proxied = builder.build().unwrap();
        let error = proxied.fetch().await.unwrap_err();
        format!("{shown} {error} {error:?} {proxied:?}")
    };
    #[cfg(not(feature = "rustls"))]
    let proxied = String::new();

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("token request succeeded"),
        "events were captured:\n{logs}"
    );
    assert!(logs.contains("retrying"), "{logs}");
    assert!(logs.contains("invalid_client"), "{logs}");
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{SECRET}", endpoint.client_id()));
    let proxy_basic =
        base64::engine::general_purpose::STANDARD.encode(format!("egress:{PROXY_PASSWORD}"));
    for needle in [PROXY_PASSWORD, proxy_basic.as_str()] {
        assert!(
            !logs.contains(needle),
            "the proxy's password leaked into the logs"
        );
        assert!(!proxied.contains(needle), "{proxied}");
    }
    for needle in [
        SECRET,
        "another-secret-value",
        basic.as_str(),
        via_layer.secret(),
    ]
    .into_iter()
    .chain(tokens.iter().map(|t| t.access_token().secret()))
    {
        assert!(!logs.contains(needle), "a secret leaked into the logs");
    }
    for token in &tokens {
        assert!(!format!("{token:?}").contains(token.access_token().secret()));
    }
    assert!(!format!("{good:?}{layer:?}").contains(SECRET));
}
