//! A hyper-util client under `CognitoAuthLayer`, against the loopback token endpoint and API.
//!
//! ```text
//! cargo run --example hyper_client
//! ```
//!
//! A GET and a POST carry a token fetched once; then the API revokes the token, and the next
//! POST is rejected with 401 inside the layer, which gets a new token and replays the request
//! (body included) before the caller sees anything: the caller sees 200.

use std::error::Error;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt as _};
use tower_cognito_auth::CognitoAuthLayer;
use tower_cognito_auth::testing::{ProtectedApi, TokenEndpoint};

type BoxResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

#[tokio::main]
async fn main() -> BoxResult<()> {
    let endpoint = TokenEndpoint::start().await?;
    let api = ProtectedApi::start(&endpoint).await?;
    println!("token endpoint {}, API {}", endpoint.token_url(), api.url());

    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let auth = CognitoAuthLayer::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret(endpoint.client_secret())
        .http_client(http.clone())
        .build()?;
    let mut client = ServiceBuilder::new().layer(auth.clone()).service(http);

    let get = Request::get(format!("{}/api/v1/wallets", api.url())).body(Full::default())?;
    let (status, _) = send(&mut client, get).await?;
    step("GET  /api/v1/wallets", status, &auth);
    expect(status == StatusCode::OK, "the GET should succeed")?;

    let payment = Bytes::from_static(br#"{"amount": 1250, "currency": "BRL"}"#);
    let post = || {
        Request::post(format!("{}/api/v1/payments", api.url()))
            .header("content-type", "application/json")
            .body(Full::new(payment.clone()))
    };
    let (status, body) = send(&mut client, post()?).await?;
    step("POST /api/v1/payments", status, &auth);
    expect(
        status == StatusCode::OK && body == payment,
        "the POST should be echoed",
    )?;

    api.revoke_current();
    println!("-- the API revokes the current token --");
    let (status, body) = send(&mut client, post()?).await?;
    step("POST /api/v1/payments", status, &auth);
    let stats = auth.stats();
    expect(
        status == StatusCode::OK,
        "the caller should see 200 after the replay",
    )?;
    expect(
        body == payment,
        "the replayed body should reach the API unchanged",
    )?;
    expect(
        (stats.token_requests, stats.invalidations, stats.replays) == (2, 1, 1),
        "one new token, one invalidation, one replay",
    )?;
    let seen = api.requests();
    println!(
        "the API saw {} requests: {}",
        seen.len(),
        seen.iter()
            .map(|r| r.status.as_str().to_owned())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

async fn send<S>(client: &mut S, request: Request<Full<Bytes>>) -> BoxResult<(StatusCode, Bytes)>
where
    S: Service<Request<Full<Bytes>>, Response = http::Response<hyper::body::Incoming>>,
    S::Error: Into<Box<dyn Error + Send + Sync>>,
{
    let response = client
        .ready()
        .await
        .map_err(Into::into)?
        .call(request)
        .await
        .map_err(Into::into)?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

fn step(what: &str, status: StatusCode, auth: &CognitoAuthLayer) {
    let s = auth.stats();
    println!(
        "{what:<24} -> {status}   (token requests {}, invalidations {}, replays {})",
        s.token_requests, s.invalidations, s.replays
    );
}

fn expect(ok: bool, what: &str) -> BoxResult<()> {
    if ok {
        Ok(())
    } else {
        Err(format!("unexpected outcome: {what}").into())
    }
}
