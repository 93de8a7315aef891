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
use tower_cognito_auth::{ClientAuth, ClientCredentials, ClientSecret, TokenSource};

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

    // Secrets read from a file and from a function, good and wrong: neither the secret nor
    // the file's content shows in logs, errors or `Debug`.
    const FILE_SECRET: &str = "rotated-secret-from-a-file";
    let dir = std::env::temp_dir().join(format!(
        "tower-cognito-auth-redaction-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("client-secret");
    std::fs::write(&path, format!("{FILE_SECRET}\n")).unwrap();
    let from_file = |secret: ClientSecret| {
        ClientCredentials::builder()
            .token_url(endpoint.token_url())
            .client_id(endpoint.client_id())
            .client_secret_source(secret)
            .http_client(http())
            .build()
            .unwrap()
    };
    let wrong_file = from_file(ClientSecret::from_file(&path));
    let refused = wrong_file.fetch().await.unwrap_err();
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    tokens.push(wrong_file.fetch().await.unwrap());
    let from_fn = from_file(ClientSecret::from_fn(|| Ok(SECRET.to_owned())));
    tokens.push(from_fn.fetch().await.unwrap());
    let wrong_fn = from_file(ClientSecret::from_fn(|| {
        Ok("a-wrong-secret-from-fn".to_owned())
    }));
    let refused_fn = wrong_fn.fetch().await.unwrap_err();
    let shown =
        format!("{refused} {refused:?} {refused_fn} {refused_fn:?} {wrong_file:?} {from_fn:?}");
    for needle in [SECRET, FILE_SECRET, "a-wrong-secret-from-fn"] {
        assert!(
            !shown.contains(needle),
            "a secret leaked into an error or Debug: {shown}"
        );
    }

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
        FILE_SECRET,
        "a-wrong-secret-from-fn",
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
