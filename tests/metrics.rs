//! The metrics (feature `metrics`), read from a real Prometheus recorder's scrape after real
//! traffic on loopback. One test: the recorder is global to the process.
#![cfg(all(feature = "metrics", feature = "test-util"))]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Request;
use http_body_util::Full;
use metrics_exporter_prometheus::PrometheusBuilder;
use tower::{ServiceBuilder, ServiceExt as _};
use tower_cognito_auth::testing::{ProtectedApi, TokenEndpoint};
use tower_cognito_auth::{CognitoAuthLayer, RefreshTokenGrant};

/// The value of the scrape's line that starts with `series` (labels included), if any.
fn value(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test]
async fn the_names_and_labels_of_the_contract_are_recorded() {
    let recorder = PrometheusBuilder::new().install_recorder().unwrap();
    let endpoint = TokenEndpoint::builder()
        .rotate_refresh_tokens(true)
        .start()
        .await
        .unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    let id = endpoint.client_id().to_owned();

    // A service: two waits for one token (two requests at once), a revoked token, one replay.
    let auth = CognitoAuthLayer::builder()
        .token_url(endpoint.token_url())
        .client_id(&id)
        .client_secret(endpoint.client_secret())
        .http_client(common::http())
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(auth.clone())
        .service(common::http());
    let get = || {
        Request::get(format!("{}/wallets", api.url()))
            .body(Full::default())
            .unwrap()
    };
    let (a, b) = tokio::join!(client.clone().oneshot(get()), client.clone().oneshot(get()));
    assert_eq!(a.unwrap().status(), 200);
    assert_eq!(b.unwrap().status(), 200);
    api.revoke_current();
    assert_eq!(client.clone().oneshot(get()).await.unwrap().status(), 200);

    // A refused client, labelled by the builder.
    let refused = CognitoAuthLayer::builder()
        .token_url(endpoint.token_url())
        .client_id(&id)
        .client_secret("wrong")
        .http_client(common::http())
        .metrics_client("batch-jobs")
        .build()
        .unwrap();
    assert!(refused.token().await.unwrap_err().is_invalid_client());

    // A user session whose refresh token rotates.
    let grant = RefreshTokenGrant::builder()
        .token_url(endpoint.token_url())
        .client_id(&id)
        .client_secret(endpoint.client_secret())
        .refresh_token(endpoint.new_session())
        .http_client(common::http())
        .build()
        .unwrap();
    let session = CognitoAuthLayer::builder()
        .token_source(grant)
        .metrics_client("user-session")
        .build()
        .unwrap();
    session.token().await.unwrap();

    let scrape = recorder.render();
    let series = |name: &str, labels: &str| format!("{name}{{{labels}}}");
    let client_label = format!("client=\"{id}\"");
    assert_eq!(
        value(
            &scrape,
            &series(
                "cognito_auth_token_requests_total",
                &format!("{client_label},outcome=\"ok\"")
            )
        ),
        // The service's two tokens; the session's exchange is labelled by the grant's client
        // id too (the grant counts its own requests).
        Some(3.0),
        "{scrape}"
    );
    assert_eq!(
        value(
            &scrape,
            "cognito_auth_token_requests_total{client=\"batch-jobs\",outcome=\"rejected\"}"
        ),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        value(&scrape, &series("cognito_auth_waits_total", &client_label)),
        Some(3.0),
        "{scrape}"
    );
    assert_eq!(
        value(
            &scrape,
            &series("cognito_auth_replays_total", &client_label)
        ),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        value(
            &scrape,
            &series(
                "cognito_auth_token_request_duration_seconds_count",
                &client_label
            )
        ),
        Some(3.0),
        "{scrape}"
    );
    assert_eq!(
        value(
            &scrape,
            &series("cognito_auth_session_rotations_total", &client_label)
        ),
        Some(1.0),
        "{scrape}"
    );
    let expiry = value(
        &scrape,
        &series("cognito_auth_token_expiry_timestamp_seconds", &client_label),
    )
    .expect("the expiry gauge");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    // The endpoint's tokens live an hour.
    let hour = Duration::from_secs(3600).as_secs_f64();
    assert!(
        expiry > now + hour - 60.0 && expiry <= now + hour,
        "{expiry} against {now}"
    );
    assert!(
        value(
            &scrape,
            "cognito_auth_token_expiry_timestamp_seconds{client=\"user-session\"}"
        )
        .is_some(),
        "{scrape}"
    );
}
