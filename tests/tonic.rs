//! A tonic `Channel` under the layer, against a tonic server on 127.0.0.1 that checks tokens
//! with the local token endpoint (the server and codec of `examples/tonic_client.rs`).
#![cfg(all(feature = "test-util", feature = "tonic"))]

#[path = "../examples/tonic_client.rs"]
#[allow(dead_code, unreachable_pub)]
mod example;

use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tonic::Code;
use tower_cognito_auth::CognitoAuthLayer;
use tower_cognito_auth::testing::TokenEndpoint;

#[tokio::test]
async fn tonic_unary_call_is_replayed_after_unauthenticated() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    let addr = example::start_echo_server(&endpoint).await.unwrap();
    let auth = CognitoAuthLayer::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret(endpoint.client_secret())
        .http_client(Client::builder(TokioExecutor::new()).build_http())
        .build()
        .unwrap();
    let mut grpc = example::connect(addr, &auth).await.unwrap();

    assert_eq!(example::echo(&mut grpc, "first").await.unwrap(), "first");

    // The server stops accepting the token: UNAUTHENTICATED inside, OK for the caller.
    endpoint.revoke_all();
    assert_eq!(example::echo(&mut grpc, "second").await.unwrap(), "second");
    let stats = auth.stats();
    assert_eq!(
        (stats.token_requests, stats.invalidations, stats.replays),
        (2, 1, 1)
    );

    // A server that keeps refusing: the caller sees UNAUTHENTICATED after one attempt, and the
    // throttle (one 401-driven refresh per 10 s) keeps the token: no new token request.
    endpoint.revoke_all();
    let token_requests = endpoint.tokens_issued();
    let status = example::echo(&mut grpc, "third").await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(endpoint.tokens_issued(), token_requests);
}
