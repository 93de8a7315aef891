//! The `call` example against the loopback token endpoint and API.
#![cfg(all(feature = "test-util", feature = "rustls"))]

#[path = "../examples/call.rs"]
#[allow(dead_code, unreachable_pub)]
mod call;

use std::collections::HashMap;

use tower_cognito_auth::testing::{ProtectedApi, TokenEndpoint};

fn env_of<'a>(vars: &'a HashMap<&'static str, String>) -> impl Fn(&str) -> Option<String> + 'a {
    move |name| vars.get(name).cloned()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn call_gets_and_posts_through_the_layer() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    let vars = HashMap::from([
        ("COGNITO_TOKEN_URL", endpoint.token_url()),
        ("COGNITO_CLIENT_ID", endpoint.client_id().to_owned()),
        ("COGNITO_CLIENT_SECRET", endpoint.client_secret().to_owned()),
        ("COGNITO_SCOPES", "wallets/read,wallets/write".to_owned()),
    ]);
    let url = format!("{}/api/v1/wallets", api.url());
    let out = call::run(&args(&["get", &url]), env_of(&vars))
        .await
        .unwrap();
    assert_eq!(out.status_line, "HTTP/1.1 200 OK");

    let out = call::run(
        &args(&["POST", &url, "-d", r#"{"amount":100}"#]),
        env_of(&vars),
    )
    .await
    .unwrap();
    assert_eq!(out.body, r#"{"amount":100}"#);
    let seen = api.requests();
    assert_eq!(seen[1].headers["content-type"], "application/json");
    assert_eq!(seen[1].token, endpoint.last_token());
    assert_eq!(
        endpoint.requests()[0].form_value("scope").as_deref(),
        Some("wallets/read wallets/write")
    );
}

#[tokio::test]
async fn call_names_missing_variables_and_never_the_secret() {
    let vars = HashMap::from([("COGNITO_CLIENT_SECRET", "do-not-print-me".to_owned())]);
    let err = call::run(&args(&["GET", "https://example.invalid/"]), env_of(&vars))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("COGNITO_CLIENT_ID"), "{err}");
    assert!(
        err.contains("COGNITO_TOKEN_URL (or COGNITO_DOMAIN and COGNITO_REGION)"),
        "{err}"
    );
    assert!(!err.contains("COGNITO_CLIENT_SECRET,"), "{err}");
    assert!(!err.contains("do-not-print-me"));

    let err = call::run(&args(&["GET"]), env_of(&vars))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected METHOD and URL"));
}

#[tokio::test]
async fn call_reports_a_refused_secret_clearly() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    let vars = HashMap::from([
        ("COGNITO_TOKEN_URL", endpoint.token_url()),
        ("COGNITO_CLIENT_ID", endpoint.client_id().to_owned()),
        ("COGNITO_CLIENT_SECRET", "a-wrong-secret".to_owned()),
    ]);
    let err = call::run(&args(&["GET", &api.url()]), env_of(&vars))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid_client"), "{err}");
    assert!(!err.contains("a-wrong-secret"));
    assert_eq!(api.request_count(), 0);
}
