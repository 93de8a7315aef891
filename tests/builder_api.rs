//! Core defect 8, (b) and (c): the layer builder API of the rewritten crate. These do not
//! compile against the old crate (the methods do not exist there); `core_defects.rs` holds
//! what does.
#![cfg(feature = "test-util")]

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Layer as _, ServiceExt as _, service_fn};
use tower_cognito_auth::testing::{Reply, TokenEndpoint};
use tower_cognito_auth::{
    AccessToken, BoxFuture, CognitoAuthLayer, CognitoAuthLayerBuilder, Error, ErrorKind, Token,
    TokenCache, TokenSource,
};

fn credentials(endpoint: &TokenEndpoint) -> CognitoAuthLayerBuilder {
    CognitoAuthLayer::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret(endpoint.client_secret())
        .http_client(common::http())
}

/// Core defect 8b: the retry settings of a token fetch, `max_attempts` and `fetch_deadline`,
/// are set on the layer builder too (the old crate has them on `ClientCredentialsBuilder`
/// only), checked by `build` and used by the fetch.
#[tokio::test(start_paused = true)]
async fn the_layer_builder_takes_max_attempts_and_fetch_deadline() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    endpoint.fail_with(Some(Reply::status(StatusCode::BAD_GATEWAY)));
    let layer = credentials(&endpoint)
        .max_attempts(3)
        .fetch_deadline(Duration::from_secs(25))
        .build()
        .unwrap();
    let error = layer.token().await.unwrap_err();
    assert_eq!(error.status(), Some(StatusCode::BAD_GATEWAY), "{error}");
    assert_eq!(endpoint.request_count(), 3, "max_attempts(3) was used");
    for zero in [
        credentials(&endpoint).max_attempts(0),
        credentials(&endpoint).fetch_deadline(Duration::ZERO),
    ] {
        assert_eq!(zero.build().unwrap_err().kind(), ErrorKind::InvalidConfig);
    }
}

struct Counting(Arc<Mutex<usize>>);

impl TokenSource for Counting {
    fn fetch(&self) -> BoxFuture<'_, Result<Token, Error>> {
        let n = {
            let mut calls = self.0.lock().unwrap();
            *calls += 1;
            *calls
        };
        Box::pin(async move {
            let expires_at = tokio::time::Instant::now() + Duration::from_secs(3600);
            Ok(Token::new(
                AccessToken::new(format!("token-{n}"))?,
                expires_at,
            ))
        })
    }
}

/// Core defect 8c: a layer over an existing cache (`CognitoAuthLayer::from_cache`, and
/// `From<TokenCache>`) shares it: the token fetched through the cache is the one its services
/// send, and the counters are one.
#[tokio::test(start_paused = true)]
async fn a_layer_from_an_existing_cache_shares_it() {
    let calls = Arc::new(Mutex::new(0));
    let cache = TokenCache::builder(Counting(calls.clone()))
        .build()
        .unwrap();
    assert_eq!(cache.token().await.unwrap().secret(), "token-1");

    let seen = Arc::new(Mutex::new(Vec::new()));
    let inner = service_fn({
        let seen = seen.clone();
        move |request: Request<Full<Bytes>>| {
            let token = request.headers().get(AUTHORIZATION).cloned();
            seen.lock().unwrap().push(token);
            async { Ok::<_, Infallible>(Response::new(Full::<Bytes>::default())) }
        }
    });
    let layer = CognitoAuthLayer::from_cache(cache.clone());
    let from: CognitoAuthLayer = cache.clone().into();
    for layer in [&layer, &from] {
        let response = layer.layer(inner.clone()).oneshot(Request::default()).await;
        assert_eq!(response.unwrap().status(), StatusCode::OK);
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for header in seen {
        assert_eq!(header.unwrap(), "Bearer token-1");
    }
    assert_eq!(
        *calls.lock().unwrap(),
        1,
        "one token for the cache and both layers"
    );
    assert_eq!(layer.stats(), cache.stats());
    assert_eq!(from.stats().token_requests, 1);
}
