//! Issue #10, defect 6: every `Duration` setter of the layer's builder, at `Duration::ZERO` and
//! `Duration::MAX`, either builds a layer that works (requests, a rejection and its replay, a
//! second rejection inside the throttle) or is refused with a clear error. None panics.
#![cfg(feature = "test-util")]

mod common;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt as _};
use tower_cognito_auth::testing::{ProtectedApi, TokenEndpoint};
use tower_cognito_auth::{CognitoAuthLayer, CognitoAuthLayerBuilder, ErrorKind};

type Setter = fn(CognitoAuthLayerBuilder, Duration) -> CognitoAuthLayerBuilder;

const SETTERS: &[(&str, Setter)] = &[
    ("request_timeout", |b, d| b.request_timeout(d)),
    ("refresh_ahead", |b, d| b.refresh_ahead(d)),
    ("min_validity", |b, d| b.min_validity(d)),
    ("refresh_deadline", |b, d| b.refresh_deadline(d)),
    ("invalidation_throttle", |b, d| b.invalidation_throttle(d)),
];

#[tokio::test]
async fn every_duration_setter_at_zero_and_max() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    for (name, set) in SETTERS {
        for value in [Duration::ZERO, Duration::MAX] {
            let builder = CognitoAuthLayer::builder()
                .token_url(endpoint.token_url())
                .client_id(endpoint.client_id())
                .client_secret(endpoint.client_secret())
                .http_client(common::http());
            let layer = match set(builder, value).build() {
                Ok(layer) => layer,
                Err(error) => {
                    assert_eq!(error.kind(), ErrorKind::InvalidConfig, "{name} = {value:?}");
                    assert!(error.to_string().contains(name), "{name}: {error}");
                    continue;
                }
            };
            let client = ServiceBuilder::new().layer(layer).service(common::http());
            for round in 0..3 {
                if round > 0 {
                    // A rejection, its replay, and (round 2) a rejection within the throttle.
                    api.revoke_current();
                }
                let request = Request::get(format!("{}/wallets", api.url()))
                    .body(Full::<Bytes>::default())
                    .unwrap();
                let response = client.clone().oneshot(request).await;
                let response = response.unwrap_or_else(|e| panic!("{name} = {value:?}: {e}"));
                assert!(
                    response.status() == StatusCode::OK
                        || response.status() == StatusCode::UNAUTHORIZED,
                    "{name} = {value:?}: {}",
                    response.status()
                );
            }
        }
    }
}
