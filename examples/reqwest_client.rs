//! A reqwest client with the layer's tokens, through reqwest-middleware, against the loopback
//! token endpoint and API.
//!
//! ```text
//! cargo run --features reqwest --example reqwest_client
//! ```
//!
//! A GET and a POST carry a token fetched once; the API then revokes the token, and the next
//! POST is rejected with 401 inside the middleware, which gets a new token and sends the POST
//! again (body included) before the caller sees anything. Last, a client with a wrong secret
//! gets this crate's error out of reqwest-middleware's. The token requests go through the same
//! `reqwest::Client` as the API calls (`reqwest_client`): one HTTP stack.

use tower_cognito_auth::CognitoAuthLayer;
use tower_cognito_auth::testing::{ProtectedApi, TokenEndpoint};

#[tokio::main]
async fn main() -> Result<(), tower::BoxError> {
    let endpoint = TokenEndpoint::start().await?;
    let api = ProtectedApi::start(&endpoint).await?;
    println!("token endpoint {}, API {}", endpoint.token_url(), api.url());

    let http = reqwest::Client::new();
    let auth = CognitoAuthLayer::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret(endpoint.client_secret())
        .reqwest_client(http.clone())
        .build()?;
    let client = reqwest_middleware::ClientBuilder::new(http)
        .with(auth.reqwest_middleware())
        .build();

    let response = client
        .get(format!("{}/api/v1/wallets", api.url()))
        .send()
        .await?;
    step("GET  /api/v1/wallets", response.status(), &auth);
    expect(response.status() == 200, "the GET should succeed")?;

    let payment = r#"{"amount": 1250, "currency": "BRL"}"#;
    let post = || {
        client
            .post(format!("{}/api/v1/payments", api.url()))
            .header("content-type", "application/json")
            .body(payment)
    };
    let response = post().send().await?;
    step("POST /api/v1/payments", response.status(), &auth);
    expect(
        response.text().await? == payment,
        "the POST should be echoed",
    )?;

    api.revoke_current();
    println!("-- the API revokes the current token --");
    let response = post().send().await?;
    step("POST /api/v1/payments", response.status(), &auth);
    expect(response.status() == 200, "the replay should succeed")?;
    expect(
        auth.stats().replays == 1 && auth.stats().token_requests == 2,
        "one replay with one new token",
    )?;

    let wrong = CognitoAuthLayer::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret("not-the-secret")
        .build()?;
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(wrong.reqwest_middleware())
        .build();
    match client
        .get(format!("{}/api/v1/wallets", api.url()))
        .send()
        .await
    {
        Err(reqwest_middleware::Error::Middleware(error)) => {
            let ours = error.downcast_ref::<tower_cognito_auth::Error>();
            println!("wrong secret: {error}");
            expect(
                ours.is_some_and(|e| e.is_invalid_client()),
                "the error should be invalid_client",
            )?;
        }
        other => return Err(format!("expected the middleware's error, got {other:?}").into()),
    }
    println!("ok");
    Ok(())
}

fn step(what: &str, status: reqwest::StatusCode, auth: &CognitoAuthLayer) {
    let stats = auth.stats();
    println!(
        "{what} -> {status}   (token requests: {}, replays: {})",
        stats.token_requests, stats.replays
    );
}

fn expect(ok: bool, what: &str) -> Result<(), tower::BoxError> {
    if ok { Ok(()) } else { Err(what.into()) }
}
