use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Version};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use super::token_endpoint::{OPAQUE_TOKEN_LEN, TOKEN_BODY_LIMIT, TOKEN_PATH};
use super::{ProtectedApi, Rejection, Reply, TokenEndpoint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

type TestClient = Client<HttpConnector, Full<Bytes>>;
/// A request, the status it should get and the OAuth error it should carry.
type Case = (Request<Full<Bytes>>, StatusCode, Option<&'static str>);

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn h2_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Sends a request and returns status, headers, body and trailers, within a time bound.
async fn send(
    client: &TestClient,
    request: Request<Full<Bytes>>,
) -> (StatusCode, HeaderMap, Bytes, Option<HeaderMap>) {
    let exchange = async {
        let response = client.request(request).await.expect("request failed");
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.expect("body failed");
        let trailers = collected.trailers().cloned();
        (parts.status, parts.headers, collected.to_bytes(), trailers)
    };
    // Real time would not do under a paused clock, so bound the exchange on Tokio's clock.
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("exchange timed out")
}

fn form_request(url: &str) -> http::request::Builder {
    Request::post(url).header(CONTENT_TYPE, "application/x-www-form-urlencoded")
}

fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

async fn token_with_basic(
    client: &TestClient,
    endpoint: &TokenEndpoint,
) -> (StatusCode, serde_json::Value) {
    let body = "grant_type=client_credentials&scope=api%2Fread";
    let request = form_request(&endpoint.token_url())
        .header(
            AUTHORIZATION,
            basic(endpoint.client_id(), endpoint.client_secret()),
        )
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let (status, _, body, _) = send(client, request).await;
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, json)
}

fn api_request(api: &ProtectedApi, token: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(format!("{}/echo", api.url()))
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .header(CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test]
async fn basic_auth_gets_a_token() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    let client = client();
    let (status, json) = token_with_basic(&client, &endpoint).await;
    assert_eq!(status, StatusCode::OK);
    let token = json["access_token"].as_str().unwrap();
    assert_eq!(token.len(), OPAQUE_TOKEN_LEN);
    assert_eq!(json["expires_in"], 3600);
    assert_eq!(json["token_type"], "Bearer");
    assert!(endpoint.is_valid(token));
    assert_eq!(endpoint.last_token().as_deref(), Some(token));
    assert_eq!(endpoint.tokens_issued(), 1);
    assert_eq!(endpoint.request_count(), 1);
    let recorded = &endpoint.requests()[0];
    assert_eq!(recorded.method, Method::POST);
    assert_eq!(recorded.path, TOKEN_PATH);
    assert_eq!(
        recorded.form_value("grant_type").as_deref(),
        Some("client_credentials")
    );
    assert_eq!(recorded.form_value("scope").as_deref(), Some("api/read"));
    assert_eq!(
        recorded.basic_credentials(),
        Some(("test-client-id".to_owned(), "test-client-secret".to_owned()))
    );
}

#[tokio::test]
async fn basic_auth_parts_are_form_url_decoded() {
    let endpoint = TokenEndpoint::builder()
        .client_id("id with space")
        .client_secret("s3cr+t:/&=")
        .start()
        .await
        .unwrap();
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let body = "grant_type=client_credentials";
    let request = form_request(&endpoint.token_url())
        .header(
            AUTHORIZATION,
            basic(&encode("id with space"), &encode("s3cr+t:/&=")),
        )
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let (status, _, _, _) = send(&client(), request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        endpoint.requests()[0].basic_credentials(),
        Some(("id with space".to_owned(), "s3cr+t:/&=".to_owned()))
    );
}

#[tokio::test]
async fn post_auth_gets_a_jwt_shaped_token() {
    let endpoint = TokenEndpoint::builder()
        .jwt(true)
        .omit_expires_in(true)
        .lifetime(Duration::from_secs(120))
        .start()
        .await
        .unwrap();
    let body = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}&scope=a%20b",
        endpoint.client_id(),
        endpoint.client_secret()
    );
    let request = form_request(&endpoint.token_url())
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let (status, headers, body, _) = send(&client(), request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[CONTENT_TYPE], "application/json");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(json.get("expires_in").is_none());
    let token = json["access_token"].as_str().unwrap();
    assert!(endpoint.is_valid(token));
    let segments: Vec<&str> = token.split('.').collect();
    assert_eq!(segments.len(), 3);
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segments[1]).unwrap()).unwrap();
    assert_eq!(claims["sub"], "test-client-id");
    assert_eq!(claims["token_use"], "access");
    assert_eq!(claims["scope"], "a b");
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(lifetime, 120);
    assert_eq!(URL_SAFE_NO_PAD.decode(segments[2]).unwrap().len(), 32);
}

#[tokio::test]
async fn wrong_secret_is_invalid_client() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    let client = client();
    let body = "grant_type=client_credentials";
    let request = form_request(&endpoint.token_url())
        .header(AUTHORIZATION, basic(endpoint.client_id(), "wrong"))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let (status, headers, body, _) = send(&client, request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(headers[CONTENT_TYPE], "application/json");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json, serde_json::json!({ "error": "invalid_client" }));
    assert_eq!(endpoint.tokens_issued(), 0);
    assert_eq!(endpoint.request_count(), 1);
    assert_eq!(endpoint.last_token(), None);
}

#[tokio::test]
async fn malformed_requests_get_errors_not_panics() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    let client = client();
    let url = endpoint.token_url();
    let cases: Vec<Case> = vec![
        (
            Request::post(format!("http://{}/other", endpoint.addr()))
                .body(Full::default())
                .unwrap(),
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            Request::get(&url).body(Full::default()).unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            None,
        ),
        (
            Request::post(&url)
                .header(CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap(),
            StatusCode::BAD_REQUEST,
            Some("invalid_request"),
        ),
        (
            form_request(&url)
                .body(Full::new(Bytes::from_static(b"grant_type=password")))
                .unwrap(),
            StatusCode::BAD_REQUEST,
            Some("unsupported_grant_type"),
        ),
        (
            form_request(&url)
                .header(AUTHORIZATION, "Basic !!!not-base64")
                .body(Full::new(Bytes::from_static(
                    b"grant_type=client_credentials",
                )))
                .unwrap(),
            StatusCode::BAD_REQUEST,
            Some("invalid_client"),
        ),
        (
            form_request(&url)
                .header(
                    AUTHORIZATION,
                    format!("Basic {}", STANDARD.encode([0xff, b':', 0xfe])),
                )
                .body(Full::new(Bytes::from_static(
                    b"grant_type=client_credentials",
                )))
                .unwrap(),
            StatusCode::BAD_REQUEST,
            Some("invalid_client"),
        ),
        (
            form_request(&url)
                .header(
                    AUTHORIZATION,
                    HeaderValue::from_bytes(b"Basic \xff\xfe").unwrap(),
                )
                .body(Full::new(Bytes::from_static(
                    b"grant_type=client_credentials&x=\xff%zz",
                )))
                .unwrap(),
            StatusCode::BAD_REQUEST,
            Some("invalid_client"),
        ),
        (
            form_request(&url)
                .body(Full::new(Bytes::from(vec![b'a'; TOKEN_BODY_LIMIT + 1])))
                .unwrap(),
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
        ),
    ];
    let count = cases.len();
    for (request, expected, error) in cases {
        let (status, _, body, _) = send(&client, request).await;
        assert_eq!(status, expected);
        if let Some(error) = error {
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["error"], error);
        }
    }
    assert_eq!(endpoint.request_count(), count);
    assert_eq!(endpoint.tokens_issued(), 0);
}

#[tokio::test]
async fn pushed_reply_is_used_once_and_fail_with_until_cleared() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    let client = client();
    endpoint.push_reply(
        Reply::status(StatusCode::TOO_MANY_REQUESTS)
            .header("Retry-After", "1")
            .header("bad", "new\nline")
            .body("slow down"),
    );
    let request = Request::post(endpoint.token_url())
        .body(Full::default())
        .unwrap();
    let (status, headers, body, _) = send(&client, request).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "1");
    assert!(headers.get("bad").is_none());
    assert_eq!(body, "slow down");

    let (status, _) = token_with_basic(&client, &endpoint).await;
    assert_eq!(status, StatusCode::OK);

    endpoint.fail_with(Some(Reply::oauth_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
    )));
    for _ in 0..2 {
        let (status, json) = token_with_basic(&client, &endpoint).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(json["error"], "server_error");
    }
    endpoint.fail_with(None);
    let (status, _) = token_with_basic(&client, &endpoint).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(endpoint.request_count(), 5);
    assert_eq!(endpoint.tokens_issued(), 2);
}

#[tokio::test]
async fn api_accepts_issued_tokens_and_rejects_others() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    let client = client();
    let (_, json) = token_with_basic(&client, &endpoint).await;
    let token = json["access_token"].as_str().unwrap().to_owned();

    let (status, headers, body, _) = send(&client, api_request(&api, &token, "hello")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[CONTENT_TYPE], "text/plain");
    assert_eq!(body, "hello");

    let (status, headers, body, _) = send(&client, api_request(&api, "unknown", "x")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[WWW_AUTHENTICATE], r#"Bearer error="invalid_token""#);
    assert!(body.is_empty());

    api.revoke_current();
    assert!(!endpoint.is_valid(&token));
    let (status, _, _, _) = send(&client, api_request(&api, &token, "again")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let recorded = api.requests();
    assert_eq!(recorded.len(), 3);
    assert_eq!(api.request_count(), 3);
    assert_eq!(api.rejected_count(), 2);
    assert_eq!(recorded[0].token.as_deref(), Some(token.as_str()));
    assert_eq!(recorded[0].body, "hello");
    assert_eq!(recorded[0].status, StatusCode::OK);
    assert_eq!(recorded[0].uri.path(), "/echo");
    assert_eq!(recorded[0].grpc_status, None);
    assert_eq!(recorded[1].status, StatusCode::UNAUTHORIZED);

    // A fresh token works; reject_all overrides it.
    let (_, json) = token_with_basic(&client, &endpoint).await;
    let fresh = json["access_token"].as_str().unwrap().to_owned();
    api.reject_all(Some(Rejection::Unauthorized));
    let (status, _, _, _) = send(&client, api_request(&api, &fresh, "x")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    api.reject_all(None);
    let (status, _, _, _) = send(&client, api_request(&api, &fresh, "x")).await;
    assert_eq!(status, StatusCode::OK);
    endpoint.revoke_all();
    let (status, _, _, _) = send(&client, api_request(&api, &fresh, "x")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn grpc_requests_over_h2() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    let (_, json) = token_with_basic(&client(), &endpoint).await;
    let token = json["access_token"].as_str().unwrap().to_owned();
    let client = h2_client();
    // One framed gRPC message: uncompressed, length 3, payload "abc".
    let message = Bytes::from_static(b"\x00\x00\x00\x00\x03abc");
    let grpc = |token: &str| {
        Request::post(format!("{}/pkg.Service/Method", api.url()))
            .header(CONTENT_TYPE, "application/grpc")
            .header("te", "trailers")
            .header(AUTHORIZATION, format!("bearer {token}"))
            .body(Full::new(message.clone()))
            .unwrap()
    };

    let (status, headers, body, trailers) = send(&client, grpc(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[CONTENT_TYPE], "application/grpc");
    assert_eq!(body, message);
    assert_eq!(trailers.unwrap()["grpc-status"], "0");

    let (status, headers, body, trailers) = send(&client, grpc("unknown")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[CONTENT_TYPE], "application/grpc");
    assert_eq!(headers["grpc-status"], "16");
    assert_eq!(headers["grpc-message"], "invalid token");
    assert!(body.is_empty());
    assert!(trailers.is_none());

    // reject_all(GrpcUnauthenticated) answers the same way, even a plain request.
    api.reject_all(Some(Rejection::GrpcUnauthenticated));
    let (status, headers, _, _) = send(&client, api_request(&api, &token, "x")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["grpc-status"], "16");

    let recorded = api.requests();
    assert_eq!(recorded[0].version, Version::HTTP_2);
    assert_eq!(recorded[0].grpc_status, Some(0));
    assert_eq!(recorded[1].grpc_status, Some(16));
    assert_eq!(recorded[2].grpc_status, Some(16));
    assert_eq!(api.rejected_count(), 2);
}

fn refresh_request(endpoint: &TokenEndpoint, form: &str) -> Request<Full<Bytes>> {
    form_request(&endpoint.token_url())
        .body(Full::new(Bytes::from(form.to_owned())))
        .unwrap()
}

#[tokio::test]
async fn refresh_tokens_rotate_and_reuse_revokes_the_session() {
    let endpoint = TokenEndpoint::builder()
        .public_client(true)
        .rotate_refresh_tokens(true)
        .start()
        .await
        .unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    assert_eq!(endpoint.current_refresh_token(), None);
    assert!(!endpoint.is_session_revoked());
    let first = endpoint.new_session();
    assert_eq!(
        endpoint.current_refresh_token().as_deref(),
        Some(first.as_str())
    );
    let id = endpoint.client_id().to_owned();
    let form = |rt: &str| format!("grant_type=refresh_token&refresh_token={rt}&client_id={id}");

    let (status, _, body, _) = send(&client(), refresh_request(&endpoint, &form(&first))).await;
    assert_eq!(status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let second = json["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    assert_eq!(json["id_token"].as_str().unwrap().split('.').count(), 3);
    let access = json["access_token"].as_str().unwrap().to_owned();
    assert!(endpoint.is_valid(&access));
    assert_eq!(endpoint.current_refresh_token(), Some(second.clone()));
    assert_eq!(endpoint.rotations(), 1);
    let (status, _, _, _) = send(&client(), api_request(&api, &access, "x")).await;
    assert_eq!(status, StatusCode::OK);

    // The old one again: the whole session goes, access tokens included.
    let (status, _, body, _) = send(&client(), refresh_request(&endpoint, &form(&first))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"], "invalid_grant");
    assert!(endpoint.is_session_revoked());
    assert_eq!(endpoint.current_refresh_token(), None);
    assert!(!endpoint.is_valid(&access));
    let (status, _, _, _) = send(&client(), refresh_request(&endpoint, &form(&second))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _, _) = send(&client(), refresh_request(&endpoint, &form("unknown"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A public client may not authenticate otherwise, nor use client_credentials.
    let other = endpoint.new_session();
    for (request, error) in [
        (
            form_request(&endpoint.token_url())
                .header(AUTHORIZATION, basic(&id, endpoint.client_secret()))
                .body(Full::new(Bytes::from(format!(
                    "grant_type=refresh_token&refresh_token={other}"
                ))))
                .unwrap(),
            "invalid_client",
        ),
        (
            refresh_request(&endpoint, &format!("{}&client_secret=x", form(&other))),
            "invalid_client",
        ),
        (
            refresh_request(
                &endpoint,
                &format!("grant_type=client_credentials&client_id={id}"),
            ),
            "invalid_client",
        ),
    ] {
        let (status, _, body, _) = send(&client(), request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"], error);
    }
    assert!(!endpoint.is_session_revoked());
    endpoint.revoke_session();
    assert!(endpoint.is_session_revoked());
}

#[tokio::test]
async fn without_rotation_the_refresh_token_stays() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    let refresh = endpoint.new_session();
    for _ in 0..2 {
        let request = form_request(&endpoint.token_url())
            .header(
                AUTHORIZATION,
                basic(endpoint.client_id(), endpoint.client_secret()),
            )
            .body(Full::new(Bytes::from(format!(
                "grant_type=refresh_token&refresh_token={refresh}"
            ))))
            .unwrap();
        let (status, _, body, _) = send(&client(), request).await;
        assert_eq!(status, StatusCode::OK);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(json.get("refresh_token").is_none());
    }
    assert_eq!(endpoint.current_refresh_token(), Some(refresh));
    assert_eq!(endpoint.rotations(), 0);
    assert!(!endpoint.is_session_revoked());
}

#[tokio::test(start_paused = true)]
async fn tokens_expire_on_tokio_clock() {
    let endpoint = TokenEndpoint::builder()
        .lifetime(Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    let (status, json) = token_with_basic(&client(), &endpoint).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["expires_in"], 2);
    let token = json["access_token"].as_str().unwrap().to_owned();
    assert!(endpoint.is_valid(&token));
    tokio::time::advance(Duration::from_secs(3)).await;
    assert!(!endpoint.is_valid(&token));
}

#[tokio::test(start_paused = true)]
async fn delays_run_on_tokio_clock() {
    let endpoint = TokenEndpoint::builder()
        .delay(Duration::from_secs(5))
        .start()
        .await
        .unwrap();
    endpoint.push_reply(Reply::status(StatusCode::OK).delay(Duration::from_secs(10)));
    let started = Instant::now();
    let (status, _) = token_with_basic(&client(), &endpoint).await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_secs(15));
    endpoint.set_delay(Duration::ZERO);
    let started = Instant::now();
    let (status, _) = token_with_basic(&client(), &endpoint).await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn debug_hides_the_secret_and_dropping_stops_the_server() {
    let endpoint = TokenEndpoint::builder()
        .client_secret("very-secret-value")
        .start()
        .await
        .unwrap();
    assert!(!format!("{endpoint:?}").contains("very-secret-value"));
    let builder = TokenEndpoint::builder().client_secret("another-secret");
    assert!(!format!("{builder:?}").contains("another-secret"));
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    let _ = format!("{api:?}");

    let addr = endpoint.addr();
    let copy = endpoint.clone();
    // A pooled keep-alive connection to the endpoint.
    let pooled = client();
    let (status, _) = token_with_basic(&pooled, &endpoint).await;
    assert_eq!(status, StatusCode::OK);
    drop(endpoint);
    // A clone keeps it running.
    assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
    drop(copy);
    // Give the aborted accept loop a moment to be dropped, then connecting fails.
    let mut refused = false;
    for _ in 0..100 {
        tokio::task::yield_now().await;
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the listener should be closed");
    // The open connection was dropped too.
    let request = Request::post(format!("http://{addr}{TOKEN_PATH}"))
        .body(Full::default())
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(30), pooled.request(request)).await;
    assert!(
        matches!(outcome, Ok(Err(_))),
        "the connection should be closed"
    );
}
