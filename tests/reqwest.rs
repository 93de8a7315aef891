//! The reqwest middleware (feature `reqwest`), with a real reqwest client against the loopback
//! token endpoint and protected API.
#![cfg(all(feature = "reqwest", feature = "test-util"))]

mod common;

use http::{Request, StatusCode};
use tower::{ServiceBuilder, ServiceExt as _};
use tower_cognito_auth::testing::{ProtectedApi, Rejection, Reply, TokenEndpoint};
use tower_cognito_auth::{CognitoAuthLayer, CognitoAuthLayerBuilder};

fn layer(endpoint: &TokenEndpoint) -> CognitoAuthLayerBuilder {
    CognitoAuthLayer::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret(endpoint.client_secret())
        .http_client(common::http())
}

fn client(auth: &CognitoAuthLayer) -> reqwest_middleware::ClientWithMiddleware {
    reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(auth.reqwest_middleware())
        .build()
}

/// Concurrent first requests wait on one refresh: one token request for all of them.
#[tokio::test]
async fn concurrent_first_requests_make_one_token_request() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    endpoint.set_delay(std::time::Duration::from_millis(50));
    let auth = layer(&endpoint).build().unwrap();
    let client = client(&auth);
    let requests: Vec<_> = (0..20)
        .map(|_| {
            let client = client.clone();
            let url = format!("{}/wallets", api.url());
            tokio::spawn(async move { client.get(url).send().await })
        })
        .collect();
    for request in requests {
        let response = request.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(endpoint.request_count(), 1);
    assert_eq!(auth.stats().token_requests, 1);
    assert_eq!(api.request_count(), 20);
}

/// A tower service and the middleware made from one layer share its cache: one token.
#[tokio::test]
async fn a_tower_service_and_the_middleware_share_one_cache() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    let auth = layer(&endpoint).build().unwrap();
    let service = ServiceBuilder::new()
        .layer(auth.clone())
        .service(common::http());
    let request = Request::get(format!("{}/wallets", api.url()))
        .body(http_body_util::Full::default())
        .unwrap();
    assert_eq!(service.oneshot(request).await.unwrap().status(), 200);
    let response = client(&auth)
        .get(format!("{}/wallets", api.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(endpoint.request_count(), 1);
    let tokens: Vec<_> = api.requests().into_iter().map(|r| r.token).collect();
    assert_eq!(tokens.len(), 2);
    assert_eq!(tokens[0], tokens[1], "both sent the one token");
    assert!(
        api.requests()[1]
            .headers
            .get(http::header::AUTHORIZATION)
            .is_some()
    );
}

/// A POST whose token is rejected is sent again with its body and the next token.
#[tokio::test]
async fn a_post_is_replayed_with_its_body_after_a_401() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    let auth = layer(&endpoint).build().unwrap();
    let client = client(&auth);
    auth.token().await.unwrap();
    api.revoke_current();
    let response = client
        .post(format!("{}/payments", api.url()))
        .body("{\"amount\": 1250}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "{\"amount\": 1250}");
    let seen = api.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].status, StatusCode::UNAUTHORIZED);
    assert_eq!(seen[1].status, StatusCode::OK);
    assert_eq!(seen[1].body, "{\"amount\": 1250}");
    assert_ne!(seen[0].token, seen[1].token);
    assert_eq!(auth.stats().replays, 1);
    assert_eq!(endpoint.request_count(), 2);
}

/// An API that rejects every token: at most two attempts per request, and the refreshes it
/// causes are throttled (one per `invalidation_throttle`), not one per request.
#[tokio::test]
async fn an_api_that_rejects_everything_costs_two_attempts_and_throttled_refreshes() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    api.reject_all(Some(Rejection::Unauthorized));
    let auth = layer(&endpoint).build().unwrap();
    let client = client(&auth);
    for _ in 0..5 {
        let response = client
            .get(format!("{}/wallets", api.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    // The first request: the token, a 401, a new token, the replay, a 401. The next four
    // find the rejection throttled: the same token, no replay.
    assert_eq!(api.request_count(), 6);
    assert_eq!(endpoint.request_count(), 2);
    assert_eq!(auth.stats().replays, 1);
    // Every 401 went back: the replay's, then four without a replay.
    assert_eq!(auth.stats().rejections_returned, 5);
}

/// A 401, then no new token (the token endpoint now refuses the client): the caller gets that
/// error, not the 401 it would otherwise take for "my token was bad" with no cause.
#[tokio::test]
async fn a_refresh_error_after_a_401_is_returned() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    let auth = layer(&endpoint).build().unwrap();
    auth.token().await.unwrap();
    api.revoke_current();
    endpoint.fail_with(Some(Reply::oauth_error(
        StatusCode::BAD_REQUEST,
        "invalid_client",
    )));
    let error = client(&auth)
        .get(format!("{}/wallets", api.url()))
        .send()
        .await
        .unwrap_err();
    let reqwest_middleware::Error::Middleware(inner) = &error else {
        panic!("expected the middleware's error, got {error:?}");
    };
    let ours = inner
        .downcast_ref::<tower_cognito_auth::Error>()
        .expect("this crate's error");
    assert!(ours.is_invalid_client(), "{ours}");
    assert_eq!(api.request_count(), 1);
    assert_eq!(auth.stats().invalidations, 1);
}

/// reqwest speaks no gRPC: a `grpc-status: 16` header on the answer to a POST is an ordinary
/// header, not a rejection (the tower layer's gRPC rule is for gRPC clients).
#[tokio::test]
async fn a_grpc_status_header_is_not_a_rejection_for_reqwest() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    let auth = layer(&endpoint).build().unwrap();
    auth.token().await.unwrap();
    api.revoke_current();
    let response = client(&auth)
        .post(format!("{}/payments", api.url()))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body("not really grpc")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers().get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"16"[..])
    );
    let stats = auth.stats();
    assert_eq!((stats.invalidations, stats.replays), (0, 0));
    assert_eq!(endpoint.request_count(), 1);
}

/// With `reqwest_client`, the token requests go through the application's reqwest client:
/// one HTTP stack (here it is the only client the layer is given).
#[tokio::test]
async fn token_requests_through_the_applications_reqwest_client() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    // The application's client, told apart by its user agent.
    let http = reqwest::Client::builder()
        .user_agent("the-application/1.0")
        .build()
        .unwrap();
    let auth = CognitoAuthLayer::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret(endpoint.client_secret())
        .reqwest_client(http.clone())
        .build()
        .unwrap();
    let client = reqwest_middleware::ClientBuilder::new(http)
        .with(auth.reqwest_middleware())
        .build();
    let response = client
        .get(format!("{}/wallets", api.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(endpoint.request_count(), 1);
    let seen = &endpoint.requests()[0];
    assert_eq!(
        seen.headers
            .get(http::header::USER_AGENT)
            .map(|v| v.as_bytes()),
        Some(&b"the-application/1.0"[..])
    );
    assert_eq!(
        seen.form_value("grant_type").as_deref(),
        Some("client_credentials")
    );
    assert_eq!(
        seen.basic_credentials(),
        Some((
            endpoint.client_id().to_owned(),
            endpoint.client_secret().to_owned()
        ))
    );

    // A refused client through reqwest is the same clear error.
    let refused = CognitoAuthLayer::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret("wrong")
        .reqwest_client(reqwest::Client::new())
        .build()
        .unwrap();
    assert!(refused.token().await.unwrap_err().is_invalid_client());
}

/// A failure to get a token is reqwest-middleware's `Middleware` error holding this crate's
/// error; the API is not called, and the secret appears nowhere.
#[tokio::test]
async fn invalid_client_is_our_error_and_the_api_is_not_called() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    let secret = "a-wrong-secret-that-must-not-leak";
    let auth = CognitoAuthLayer::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret(secret)
        .http_client(common::http())
        .build()
        .unwrap();
    let error = client(&auth)
        .get(format!("{}/wallets", api.url()))
        .send()
        .await
        .unwrap_err();
    let reqwest_middleware::Error::Middleware(inner) = &error else {
        panic!("expected the middleware's error, got {error:?}");
    };
    let ours = inner
        .downcast_ref::<tower_cognito_auth::Error>()
        .expect("this crate's error");
    assert!(ours.is_invalid_client(), "{ours}");
    assert_eq!(api.request_count(), 0);
    for text in [
        format!("{error}"),
        format!("{error:?}"),
        format!("{inner:#}"),
    ] {
        assert!(!text.contains(secret), "the secret leaked: {text}");
    }
}

/// A request that carries its own `Authorization` is left alone.
#[tokio::test]
async fn a_request_with_its_own_authorization_is_left_alone() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    let auth = layer(&endpoint).build().unwrap();
    let response = client(&auth)
        .get(format!("{}/wallets", api.url()))
        .header(http::header::AUTHORIZATION, "Bearer mine")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(endpoint.request_count(), 0);
    assert_eq!(api.requests()[0].token.as_deref(), Some("mine"));
}
