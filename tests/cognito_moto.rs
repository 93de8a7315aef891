//! A user's session refreshed through Cognito's user-pool API of an emulator nobody here
//! wrote: moto (PyPI `moto[server]`, `.ci/get-moto`), on 127.0.0.1. moto implements
//! `InitiateAuth` (`USER_PASSWORD_AUTH`, `REFRESH_TOKEN_AUTH` with its `SECRET_HASH` check),
//! `GetUser` and `GlobalSignOut`, but not `GetTokensFromRefreshToken`: these tests use
//! `RefreshFlow::RefreshTokenAuth`. Without moto they fail, saying how to get it.
#![cfg(feature = "test-util")]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{BoxError, ServiceBuilder, ServiceExt as _};
use tower_cognito_auth::{CognitoAuthLayer, RefreshFlow, RefreshTokenGrant, TokenSource};

mod common;

use common::http;
use common::moto::Moto;

fn cognito(operation: &str) -> String {
    format!("AWSCognitoIdentityProviderService.{operation}")
}

/// Base64(HMAC-SHA256(secret, username + client id)), written here apart from the crate's.
fn secret_hash(secret: &str, username: &str, client_id: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, format!("{username}{client_id}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
}

/// A pool, an app client with a secret that allows USER_PASSWORD_AUTH and
/// REFRESH_TOKEN_AUTH, a user, and that user's sign-in.
struct SignedIn {
    client_id: String,
    client_secret: String,
    refresh_token: String,
    access_token: String,
}

async fn sign_in(moto: &Moto, username: &str) -> SignedIn {
    let pool = moto
        .ok(
            &cognito("CreateUserPool"),
            serde_json::json!({"PoolName": "tower-cognito-auth"}),
        )
        .await;
    let pool_id = pool["UserPool"]["Id"].as_str().unwrap().to_owned();
    let client = moto
        .ok(
            &cognito("CreateUserPoolClient"),
            serde_json::json!({
                "UserPoolId": pool_id,
                "ClientName": "backend",
                "GenerateSecret": true,
                "ExplicitAuthFlows": ["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
            }),
        )
        .await;
    let client_id = client["UserPoolClient"]["ClientId"]
        .as_str()
        .unwrap()
        .to_owned();
    let client_secret = client["UserPoolClient"]["ClientSecret"]
        .as_str()
        .unwrap()
        .to_owned();
    let password = "Corr3ct-horse!";
    moto.ok(
        &cognito("AdminCreateUser"),
        serde_json::json!({"UserPoolId": pool_id, "Username": username, "MessageAction": "SUPPRESS"}),
    )
    .await;
    moto.ok(
        &cognito("AdminSetUserPassword"),
        serde_json::json!({
            "UserPoolId": pool_id,
            "Username": username,
            "Password": password,
            "Permanent": true,
        }),
    )
    .await;
    let signed_in = moto
        .ok(
            &cognito("InitiateAuth"),
            serde_json::json!({
                "AuthFlow": "USER_PASSWORD_AUTH",
                "ClientId": client_id,
                "AuthParameters": {
                    "USERNAME": username,
                    "PASSWORD": password,
                    "SECRET_HASH": secret_hash(&client_secret, username, &client_id),
                },
            }),
        )
        .await;
    let result = &signed_in["AuthenticationResult"];
    SignedIn {
        refresh_token: result["RefreshToken"].as_str().unwrap().to_owned(),
        access_token: result["AccessToken"].as_str().unwrap().to_owned(),
        client_id,
        client_secret,
    }
}

/// The protected API of this test: moto's `GetUser`, called with the bearer token the layer
/// put on the request. `200` with the user's name when moto accepts the token.
async fn get_user(moto: &Moto, request: Request<Full<Bytes>>) -> Response<Full<Bytes>> {
    let token = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let (status, answer) = moto
        .call(
            &cognito("GetUser"),
            serde_json::json!({"AccessToken": token}),
        )
        .await;
    let mut response = Response::new(Full::new(Bytes::from(answer.to_string())));
    *response.status_mut() = if status.is_success() {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    };
    response
}

#[tokio::test]
async fn refresh_token_auth_with_a_secret_hash_through_the_layer() {
    let moto = Arc::new(Moto::start());
    let session = sign_in(&moto, "alice").await;
    // The access token saved at sign-in, about to expire: the grant must refresh, and takes
    // the SECRET_HASH's username from this token's `username` claim.
    let grant = RefreshTokenGrant::builder()
        .user_pool_api_url(moto.url())
        .client_id(&session.client_id)
        .client_secret(&session.client_secret)
        .refresh_token(&session.refresh_token)
        .refresh_flow(RefreshFlow::RefreshTokenAuth)
        .access_token_expiring_at(
            &session.access_token,
            SystemTime::now() + Duration::from_secs(5),
        )
        .http_client(http())
        .build()
        .unwrap();
    let status = grant.status();
    let layer = CognitoAuthLayer::builder()
        .token_source(grant)
        .build()
        .unwrap();
    let api = tower::service_fn({
        let moto = Arc::clone(&moto);
        move |request: Request<Full<Bytes>>| {
            let moto = Arc::clone(&moto);
            async move { Ok::<_, BoxError>(get_user(&moto, request).await) }
        }
    });
    let client = ServiceBuilder::new().layer(layer).service(api);

    let mut tokens = Vec::new();
    for _ in 0..2 {
        let response = client
            .clone()
            .oneshot(
                Request::get("http://api.test/me")
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let user: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(user["Username"], "alice");
        tokens.push(user);
    }
    assert!(status.borrow().ended.is_none());

    // moto's GlobalSignOut revokes the refresh token: the next refresh ends the session.
    moto.ok(
        &cognito("GlobalSignOut"),
        serde_json::json!({"AccessToken": session.access_token}),
    )
    .await;
    let grant = RefreshTokenGrant::builder()
        .user_pool_api_url(moto.url())
        .client_id(&session.client_id)
        .client_secret(&session.client_secret)
        .refresh_token(&session.refresh_token)
        .refresh_flow(RefreshFlow::RefreshTokenAuth)
        .username("alice")
        .http_client(http())
        .build()
        .unwrap();
    let error = grant.fetch().await.unwrap_err();
    assert!(error.is_invalid_grant() && error.is_permanent(), "{error}");
    let text = error.to_string();
    assert!(text.contains("sign in again"), "{text}");
    assert!(text.contains("Refresh Token has been revoked"), "{text}");
}

/// A wrong secret is `NotAuthorizedException` at moto, whose message is the SECRET_HASH that
/// was sent: the error says to sign in again and never repeats the hash.
#[tokio::test]
async fn a_wrong_secret_ends_the_session_and_the_echoed_hash_is_redacted() {
    let moto = Moto::start();
    let session = sign_in(&moto, "bob").await;
    let wrong = "not-the-secret";
    let grant = RefreshTokenGrant::builder()
        .user_pool_api_url(moto.url())
        .client_id(&session.client_id)
        .client_secret(wrong)
        .refresh_token(&session.refresh_token)
        .refresh_flow(RefreshFlow::RefreshTokenAuth)
        .username("bob")
        .http_client(http())
        .build()
        .unwrap();
    let error = grant.fetch().await.unwrap_err();
    assert!(error.is_invalid_grant(), "{error}");
    let text = format!("{error} {error:?}");
    assert!(
        text.contains("NotAuthorizedException: [redacted]"),
        "{text}"
    );
    for secret in [
        secret_hash(wrong, "bob", &session.client_id),
        session.refresh_token.clone(),
        wrong.to_owned(),
    ] {
        assert!(!text.contains(&secret), "{text}");
    }
}
