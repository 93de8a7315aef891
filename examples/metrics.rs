//! The crate's metrics (feature `metrics`) in a Prometheus scrape, after some traffic against
//! the loopback token endpoint and API.
//!
//! ```text
//! cargo run --features metrics --example metrics
//! ```
//!
//! The application installs its own recorder (here `metrics-exporter-prometheus`'s, without its
//! HTTP listener: the scrape is rendered and printed); the crate records into it. Ten GETs
//! share one token, the API then revokes it and the next request is replayed with a new one.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use metrics_exporter_prometheus::PrometheusBuilder;
use tower::{ServiceBuilder, ServiceExt as _};
use tower_cognito_auth::CognitoAuthLayer;
use tower_cognito_auth::testing::{ProtectedApi, TokenEndpoint};

#[tokio::main]
async fn main() -> Result<(), tower::BoxError> {
    let scrape = PrometheusBuilder::new().install_recorder()?;

    let endpoint = TokenEndpoint::start().await?;
    let api = ProtectedApi::start(&endpoint).await?;
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let auth = CognitoAuthLayer::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret(endpoint.client_secret())
        .http_client(http.clone())
        .build()?;
    let client = ServiceBuilder::new().layer(auth.clone()).service(http);
    let get = || Request::get(format!("{}/wallets", api.url())).body(Full::default());

    for _ in 0..10 {
        client.clone().oneshot(get()?).await?;
    }
    api.revoke_current();
    let response = client.clone().oneshot(get()?).await?;
    println!("after a revoked token: {}", response.status());

    let text = scrape.render();
    println!("--- scrape (cognito_auth_*) ---");
    for line in text.lines().filter(|l| l.starts_with("cognito_auth_")) {
        println!("{line}");
    }
    let client_id = endpoint.client_id();
    for expected in [
        format!("cognito_auth_token_requests_total{{client=\"{client_id}\",outcome=\"ok\"}} 2"),
        format!("cognito_auth_replays_total{{client=\"{client_id}\"}} 1"),
        format!("cognito_auth_waits_total{{client=\"{client_id}\"}} 2"),
        format!("cognito_auth_token_expiry_timestamp_seconds{{client=\"{client_id}\"}}"),
    ] {
        if !text.lines().any(|line| line.starts_with(&expected)) {
            return Err(format!("the scrape has no line starting with {expected}").into());
        }
    }
    println!("ok");
    Ok(())
}
