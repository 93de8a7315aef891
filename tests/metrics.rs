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
use tower_cognito_auth::{CognitoAuthLayer, RefreshTokenGrant, Replay};

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
    // The same cache without replays: a rejection goes back to the caller (the new token is
    // revoked within the invalidation throttle, so it is not dropped again).
    let no_replay = CognitoAuthLayer::from_cache(auth.cache().clone()).replay(Replay::Never);
    api.revoke_current();
    let unreplayed = ServiceBuilder::new()
        .layer(no_replay)
        .service(common::http())
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(unreplayed.status(), 401);
    let stats = auth.stats();
    assert_eq!(
        (
            stats.invalidations,
            stats.replays,
            stats.rejections_returned
        ),
        (1, 1, 1)
    );

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
    // The same, shared behind an `Arc`.
    let shared_grant = RefreshTokenGrant::builder()
        .token_url(endpoint.token_url())
        .client_id(&id)
        .client_secret(endpoint.client_secret())
        .refresh_token(endpoint.new_session())
        .http_client(common::http())
        .build()
        .unwrap();
    let shared_session = CognitoAuthLayer::builder()
        .token_source(std::sync::Arc::new(shared_grant))
        .metrics_client("arc-session")
        .build()
        .unwrap();
    shared_session.token().await.unwrap();

    // Two caches under one label, the first with tokens of ten minutes, the second of an
    // hour: the gauge is the one that got its token last (no registry joins them).
    let shared_label = |lifetime: u64| {
        endpoint.set_lifetime(Duration::from_secs(lifetime));
        CognitoAuthLayer::builder()
            .token_url(endpoint.token_url())
            .client_id(&id)
            .client_secret(endpoint.client_secret())
            .http_client(common::http())
            .metrics_client("shared")
            .build()
            .unwrap()
    };
    let gauge = |scrape: &str| {
        value(
            scrape,
            "cognito_auth_token_expiry_timestamp_seconds{client=\"shared\"}",
        )
        .expect("the expiry gauge of the shared label")
    };
    let unix_now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let short = shared_label(600);
    short.token().await.unwrap();
    let left = gauge(&recorder.render()) - unix_now();
    assert!(left > 540.0 && left <= 600.0, "{left}");
    let long = shared_label(3600);
    long.token().await.unwrap();
    let left = gauge(&recorder.render()) - unix_now();
    assert!(left > 3540.0 && left <= 3600.0, "{left}");
    drop((short, long));

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
        // The service's two tokens: the session's exchange carries the session's label.
        Some(2.0),
        "{scrape}"
    );
    for (name, expected) in [
        ("cognito_auth_token_requests_total", 1.0),
        ("cognito_auth_refresh_failures_total", 1.0),
        ("cognito_auth_token_request_duration_seconds_count", 1.0),
    ] {
        assert_eq!(
            value(
                &scrape,
                &series(name, "client=\"batch-jobs\",outcome=\"rejected\"")
            ),
            Some(expected),
            "{name}: {scrape}"
        );
    }
    assert_eq!(
        value(
            &scrape,
            "cognito_auth_token_requests_total{client=\"user-session\",outcome=\"ok\"}"
        ),
        Some(1.0),
        "the session grant's requests carry the layer's label: {scrape}"
    );
    assert_eq!(
        value(
            &scrape,
            "cognito_auth_session_rotations_total{client=\"user-session\"}"
        ),
        Some(1.0),
        "{scrape}"
    );
    for (name, expected) in [
        ("cognito_auth_waits_total", 3.0),
        ("cognito_auth_replays_total", 1.0),
        ("cognito_auth_invalidations_total", 1.0),
        ("cognito_auth_rejections_returned_total", 1.0),
    ] {
        assert_eq!(
            value(&scrape, &series(name, &client_label)),
            Some(expected),
            "{name}: {scrape}"
        );
    }
    assert_eq!(
        value(
            &scrape,
            &series(
                "cognito_auth_token_request_duration_seconds_count",
                &format!("{client_label},outcome=\"ok\"")
            )
        ),
        Some(2.0),
        "{scrape}"
    );
    // Every series recorded here has its description.
    for (name, help) in [
        (
            "cognito_auth_token_requests_total",
            "HTTP requests sent to the OAuth token endpoint",
        ),
        (
            "cognito_auth_token_request_duration_seconds",
            "Time of one HTTP request",
        ),
        (
            "cognito_auth_refresh_failures_total",
            "Token refreshes that failed",
        ),
        (
            "cognito_auth_invalidations_total",
            "Tokens dropped because the service rejected them",
        ),
        ("cognito_auth_replays_total", "Requests sent again"),
        (
            "cognito_auth_rejections_returned_total",
            "handed back to the caller",
        ),
        ("cognito_auth_waits_total", "waited for a refresh"),
        (
            "cognito_auth_token_expiry_timestamp_seconds",
            "When the current access token",
        ),
        (
            "cognito_auth_session_rotations_total",
            "Refresh tokens rotated",
        ),
    ] {
        let line = scrape
            .lines()
            .find(|line| line.starts_with(&format!("# HELP {name} ")))
            .unwrap_or_else(|| panic!("no HELP for {name}: {scrape}"));
        assert!(line.contains(help), "{line}");
    }
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
    // A user session's cache sets no expiry gauge (its series are counted under its label).
    for label in ["user-session", "arc-session"] {
        assert!(
            value(
                &scrape,
                &format!("cognito_auth_token_expiry_timestamp_seconds{{client=\"{label}\"}}")
            )
            .is_none(),
            "{label}: {scrape}"
        );
    }
}
