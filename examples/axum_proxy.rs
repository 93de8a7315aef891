//! An axum app whose handlers call an upstream API through `CognitoAuthLayer`.
//!
//! ```text
//! cargo run --example axum_proxy --features axum               # serves on 127.0.0.1:3000
//! curl -i http://127.0.0.1:3000/api/v1/wallets
//! cargo run --example axum_proxy --features axum -- --self-test # one request to itself, then exit
//! ```
//!
//! `/api/*` is forwarded, method, path, `content-type` and body, to the upstream API (here the
//! loopback `ProtectedApi`) through a hyper-util client wrapped in the layer. The request body
//! stays axum's own `Body` all the way (feature `axum` implements `ReplayBody` for it), so a
//! forwarded POST is replayed too when upstream rejects the token.

use std::error::Error;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header::CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt as _};
use tower_cognito_auth::testing::{ProtectedApi, TokenEndpoint};
use tower_cognito_auth::{CognitoAuth, CognitoAuthLayer};

type BoxResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// What every handler needs: the layered client (cheap to clone) and where upstream is.
#[derive(Clone)]
struct Upstream {
    client: CognitoAuth<Client<HttpConnector, Body>>,
    base: String,
}

async fn forward(State(upstream): State<Upstream>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut outgoing = http::Request::builder()
        .method(parts.method)
        .uri(format!("{}{path}", upstream.base));
    if let Some(content_type) = parts.headers.get(CONTENT_TYPE) {
        outgoing = outgoing.header(CONTENT_TYPE, content_type);
    }
    let outgoing = match outgoing.body(body) {
        Ok(request) => request,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    match upstream.client.oneshot(outgoing).await {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            Response::from_parts(parts, Body::new(body))
        }
        // A token failure (our `Error`) or a connection failure: say which, never a secret.
        Err(e) => (StatusCode::BAD_GATEWAY, format!("upstream: {e}")).into_response(),
    }
}

#[tokio::main]
async fn main() -> BoxResult<()> {
    let self_test = std::env::args().any(|a| a == "--self-test");

    // Upstream: the loopback token endpoint and protected API of `testing`.
    let endpoint = TokenEndpoint::start().await?;
    let api = ProtectedApi::start(&endpoint).await?;
    let auth = CognitoAuthLayer::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret(endpoint.client_secret())
        .build()?;
    let upstream = Upstream {
        client: ServiceBuilder::new()
            .layer(auth.clone())
            .service(Client::builder(TokioExecutor::new()).build_http()),
        base: api.url(),
    };
    let app = Router::new()
        .route("/api/{*rest}", any(forward))
        .with_state(upstream);

    let listener = tokio::net::TcpListener::bind(if self_test {
        "127.0.0.1:0"
    } else {
        "127.0.0.1:3000"
    })
    .await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    println!(
        "axum proxy on http://{addr}, forwarding /api/* to {}",
        api.url()
    );

    if !self_test {
        println!("try: curl -i http://{addr}/api/v1/wallets");
        println!(
            "     curl -i -X POST -H 'content-type: application/json' -d '{{\"amount\":1}}' http://{addr}/api/v1/payments"
        );
        server.await??;
        return Ok(());
    }

    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let post = |body: &'static str| {
        http::Request::post(format!("http://{addr}/api/v1/payments"))
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
    };
    let response = http.request(post(r#"{"amount":1}"#)?).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    println!(
        "POST /api/v1/payments -> {status} {}",
        String::from_utf8_lossy(&body)
    );
    if status != StatusCode::OK || body != r#"{"amount":1}"# {
        return Err("the proxy should forward the POST and its body".into());
    }

    api.revoke_current();
    let response = http.request(post(r#"{"amount":2}"#)?).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    println!(
        "after upstream revoked the token: POST -> {status} {}   {:?}",
        String::from_utf8_lossy(&body),
        auth.stats()
    );
    if status != StatusCode::OK || body != r#"{"amount":2}"# || auth.stats().replays != 1 {
        return Err("the forwarded POST should be replayed with a new token".into());
    }
    server.abort();
    Ok(())
}
