//! User sessions through Cognito's own user-pool API (`GetTokensFromRefreshToken`,
//! `InitiateAuth` `REFRESH_TOKEN_AUTH`), the way Amplify and the AWS SDKs refresh them: the
//! grant behind the layer, against the `testing` kit's user-pool API on 127.0.0.1 (the same
//! server as its token endpoint, sharing sessions and tokens with the protected API).
#![cfg(feature = "test-util")]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use tower::{ServiceBuilder, ServiceExt as _};
use tower_cognito_auth::testing::{ProtectedApi, RecordedTokenRequest, Reply, TokenEndpoint};
use tower_cognito_auth::{
    CognitoAuthLayer, ErrorKind, RefreshFlow, RefreshTokenGrant, RefreshTokenGrantBuilder,
    TokenSet, TokenSource,
};

mod common;

use common::http;

const TARGET: &str = "AWSCognitoIdentityProviderService.";

/// A confidential app client with rotation and a grace period, as a pool without a domain has
/// it, and a protected API that accepts its tokens.
async fn pool(grace: Duration) -> (TokenEndpoint, ProtectedApi) {
    let endpoint = TokenEndpoint::builder()
        .client_id("app-client-1")
        .client_secret("app-secret-1")
        .rotate_refresh_tokens(true)
        .rotation_grace_period(grace)
        .lifetime(Duration::from_secs(300))
        .start()
        .await
        .unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    (endpoint, api)
}

/// A grant on the kit's user-pool API for `refresh_token`, with the app client's secret.
fn grant_for(endpoint: &TokenEndpoint, refresh_token: String) -> RefreshTokenGrantBuilder {
    RefreshTokenGrant::builder()
        .user_pool_api_url(endpoint.user_pool_api_url())
        .client_id(endpoint.client_id())
        .client_secret(endpoint.client_secret())
        .refresh_token(refresh_token)
        .http_client(http())
}

/// The JSON body of a recorded call to the user-pool API.
fn json(request: &RecordedTokenRequest) -> serde_json::Value {
    serde_json::from_slice(&request.body).unwrap()
}

/// The refresh tokens the API received, in order, whichever operation carried them.
fn sent_refresh_tokens(endpoint: &TokenEndpoint) -> Vec<String> {
    endpoint
        .requests()
        .iter()
        .filter_map(|r| {
            let body = json(r);
            body.get("RefreshToken")
                .or_else(|| body.pointer("/AuthParameters/REFRESH_TOKEN"))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        })
        .collect()
}

/// One raw call to the kit's user-pool API.
async fn call(
    endpoint: &TokenEndpoint,
    operation: &str,
    body: serde_json::Value,
) -> (StatusCode, serde_json::Value) {
    let request = Request::post(endpoint.user_pool_api_url())
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", format!("{TARGET}{operation}"))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = http().request(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

/// A JWT-shaped access token as Cognito's, with this `username` claim (unsigned).
fn access_token_of(username: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    format!(
        "{}.{}.c2ln",
        b64(serde_json::json!({"alg": "RS256"})),
        b64(serde_json::json!({
            "token_use": "access",
            "username": username,
            "iat": now,
            "exp": now + 3600,
        }))
    )
}

#[tokio::test(start_paused = true)]
async fn get_tokens_from_refresh_token_rotates_through_the_layer() {
    let (endpoint, api) = pool(Duration::from_secs(10)).await;
    let saved = Arc::new(Mutex::new(Vec::<String>::new()));
    let grant = grant_for(&endpoint, endpoint.new_session())
        .device_key("us-east-1_device-1")
        .persist({
            let saved = Arc::clone(&saved);
            move |set: TokenSet| {
                let saved = Arc::clone(&saved);
                async move {
                    saved.lock().unwrap().push(set.refresh_token().to_owned());
                    Ok::<_, std::io::Error>(())
                }
            }
        })
        .build()
        .unwrap();
    let layer = CognitoAuthLayer::builder()
        .token_source(grant)
        .build()
        .unwrap();
    let client = ServiceBuilder::new().layer(layer).service(http());

    // Three token lifetimes: each request needs a new access token, each refresh rotates.
    for _ in 0..3 {
        let request = Request::get(format!("{}/me", api.url()))
            .body(Full::default())
            .unwrap();
        let response = client.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        tokio::time::advance(Duration::from_secs(301)).await;
    }

    let requests = endpoint.requests();
    assert_eq!(requests.len(), 3);
    for request in &requests {
        assert_eq!(request.path, "/");
        assert_eq!(
            request.headers["content-type"],
            "application/x-amz-json-1.1"
        );
        assert_eq!(
            request.headers["x-amz-target"],
            "AWSCognitoIdentityProviderService.GetTokensFromRefreshToken"
        );
        // The client authenticates in the body, never in a header.
        assert!(request.headers.get("authorization").is_none());
        let body = json(request);
        assert_eq!(body["ClientId"], "app-client-1");
        assert_eq!(body["ClientSecret"], "app-secret-1");
        assert_eq!(body["DeviceKey"], "us-east-1_device-1");
        assert!(body.get("SECRET_HASH").is_none() && body.get("AuthFlow").is_none());
    }
    assert_eq!(endpoint.rotations(), 3);
    assert!(!endpoint.is_session_revoked());
    // Each exchange sent the refresh token the previous one received, and each rotation was
    // saved before its access token was used.
    let sent = sent_refresh_tokens(&endpoint);
    let saved = saved.lock().unwrap().clone();
    assert_eq!(sent[1..], saved[..2]);
    assert_eq!(saved.last().cloned(), endpoint.current_refresh_token());
    assert_eq!(api.rejected_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn refresh_token_auth_hashes_the_username_claim_of_the_latest_access_token() {
    let (endpoint, api) = pool(Duration::ZERO).await;
    // A pool that signs in by email: Cognito's name for the user is a UUID.
    let username = "0f6e8c1a-5b7d-4e5e-9b1a-3c2d1e0f9a8b";
    let grant = grant_for(&endpoint, endpoint.new_session_for(username))
        .refresh_flow(RefreshFlow::RefreshTokenAuth)
        .device_key("device-2")
        // The access token saved at sign-in: its `username` claim names the user.
        .access_token_from_jwt(access_token_of(username))
        .build()
        .unwrap();
    // The restored token first, without a request.
    grant.fetch().await.unwrap();
    assert_eq!(endpoint.request_count(), 0);
    for _ in 0..2 {
        let token = grant.fetch().await.unwrap();
        assert!(endpoint.is_valid(token.access_token().secret()));
    }
    let requests = endpoint.requests();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert_eq!(
            request.headers["x-amz-target"],
            "AWSCognitoIdentityProviderService.InitiateAuth"
        );
        let body = json(request);
        assert_eq!(body["AuthFlow"], "REFRESH_TOKEN_AUTH");
        assert_eq!(body["AuthParameters"]["DEVICE_KEY"], "device-2");
        assert!(body["AuthParameters"]["SECRET_HASH"].is_string());
        assert!(
            body.get("ClientSecret").is_none(),
            "the secret itself never goes"
        );
    }
    // No rotation under this flow.
    assert_eq!(endpoint.rotations(), 0);
    assert!(!endpoint.is_session_revoked());
    drop(api);
}

/// The bug every SDK had: a `SECRET_HASH` over the name the user typed (an email), not the
/// pool's name for the user. The kit refuses it as Cognito does, and that ends the session with
/// a message that says to sign in again and what Cognito said.
#[tokio::test(start_paused = true)]
async fn a_secret_hash_over_the_wrong_name_is_refused_and_ends_the_session() {
    let (endpoint, _api) = pool(Duration::ZERO).await;
    let refresh_token = endpoint.new_session_for("uuid-of-alice");
    let grant = grant_for(&endpoint, refresh_token.clone())
        .refresh_flow(RefreshFlow::RefreshTokenAuth)
        .username("alice@example.com")
        .build()
        .unwrap();
    let status = grant.status();
    let error = grant.fetch().await.unwrap_err();
    assert!(error.is_invalid_grant() && error.is_permanent(), "{error}");
    let text = format!("{error} {error:?}");
    assert!(text.contains("sign in again"), "{text}");
    assert!(
        text.contains("NotAuthorizedException: Unable to verify secret hash"),
        "{text}"
    );
    for secret in [refresh_token.as_str(), endpoint.client_secret()] {
        assert!(!text.contains(secret), "{text}");
    }
    assert!(status.borrow().ended.is_some());
    // The session is over: no further request.
    assert!(grant.fetch().await.unwrap_err().is_invalid_grant());
    assert_eq!(endpoint.request_count(), 1);
}

#[tokio::test]
async fn a_secret_without_a_username_fails_build_and_names_the_setter() {
    let (endpoint, _api) = pool(Duration::ZERO).await;
    let error = grant_for(&endpoint, endpoint.new_session())
        .refresh_flow(RefreshFlow::RefreshTokenAuth)
        .build()
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidConfig);
    assert!(error.to_string().contains(".username(..)"), "{error}");
    // A restored access token without the claim does not name anyone either.
    let error = grant_for(&endpoint, endpoint.new_session())
        .refresh_flow(RefreshFlow::RefreshTokenAuth)
        .access_token_expiring_at("opaque", SystemTime::now() + Duration::from_secs(600))
        .build()
        .unwrap_err();
    assert!(error.to_string().contains(".username(..)"), "{error}");

    // GetTokensFromRefreshToken sends the secret itself: no name needed.
    grant_for(&endpoint, endpoint.new_session())
        .build()
        .unwrap();
    // Nor does a public client's REFRESH_TOKEN_AUTH.
    RefreshTokenGrant::builder()
        .user_pool_api_url(endpoint.user_pool_api_url())
        .client_id(endpoint.client_id())
        .refresh_token("r")
        .refresh_flow(RefreshFlow::RefreshTokenAuth)
        .build()
        .unwrap();

    // Both a token endpoint and the API, an API region that is not one, a scope: refused.
    for builder in [
        grant_for(&endpoint, "r".into()).token_url(endpoint.token_url()),
        grant_for(&endpoint, "r".into()).user_pool_api("us-east-1.evil.com"),
        grant_for(&endpoint, "r".into()).scope("openid"),
        grant_for(&endpoint, "r".into()).user_pool_api_url("http://cognito.example.com/"),
    ] {
        let error = builder.build().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidConfig, "{error}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_revoked_refresh_token_ends_the_session_with_cognitos_message() {
    let (endpoint, _api) = pool(Duration::ZERO).await;
    let refresh_token = endpoint.new_session();
    let grant = grant_for(&endpoint, refresh_token.clone()).build().unwrap();
    grant.fetch().await.unwrap();
    let current = endpoint.current_refresh_token().unwrap();
    // The user signed out elsewhere: the app revoked the refresh token (RevokeToken).
    let (status, answer) = call(
        &endpoint,
        "RevokeToken",
        serde_json::json!({
            "Token": current,
            "ClientId": endpoint.client_id(),
            "ClientSecret": endpoint.client_secret(),
        }),
    )
    .await;
    assert_eq!((status, answer), (StatusCode::OK, serde_json::json!({})));
    assert!(endpoint.is_session_revoked());

    let error = grant.fetch().await.unwrap_err();
    assert!(error.is_invalid_grant() && error.is_permanent(), "{error}");
    let text = error.to_string();
    assert!(text.contains("sign in again"), "{text}");
    assert!(text.contains("Refresh Token has been revoked"), "{text}");
    assert!(!text.contains(&current) && !text.contains(endpoint.client_secret()));
}

#[tokio::test(start_paused = true)]
async fn too_many_requests_and_internal_errors_are_retryable_and_keep_the_session() {
    let (endpoint, _api) = pool(Duration::from_secs(10)).await;
    let grant = grant_for(&endpoint, endpoint.new_session())
        .build()
        .unwrap();

    endpoint.push_reply(
        Reply::cognito_error(
            StatusCode::BAD_REQUEST,
            "TooManyRequestsException",
            "Rate exceeded",
        )
        .header("retry-after", "3"),
    );
    let error = grant.fetch().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::RateLimited, "{error}");
    assert!(error.is_retryable());
    assert_eq!(error.retry_after(), Some(Duration::from_secs(3)));

    // A 500 may be an answer lost after the server acted: presented once more, then reported.
    for _ in 0..2 {
        endpoint.push_reply(Reply::cognito_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalErrorException",
            "Internal error",
        ));
    }
    let error = grant.fetch().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(error.is_retryable());
    assert_eq!(endpoint.request_count(), 3);

    // Any other refusal is permanent and names Cognito's error type, but does not end the
    // session.
    endpoint.push_reply(Reply::cognito_error(
        StatusCode::BAD_REQUEST,
        "InvalidParameterException",
        "1 validation error",
    ));
    let error = grant.fetch().await.unwrap_err();
    assert!(error.is_permanent() && !error.is_invalid_grant(), "{error}");
    assert!(
        error.to_string().contains("InvalidParameterException"),
        "{error}"
    );

    assert!(grant.status().borrow().ended.is_none());
    grant.fetch().await.unwrap();
    assert!(!endpoint.is_session_revoked());
}

#[tokio::test(start_paused = true)]
async fn a_lost_answer_is_retried_within_the_grace_period() {
    let (endpoint, _api) = pool(Duration::from_secs(10)).await;
    let first = endpoint.new_session();
    let grant = grant_for(&endpoint, first.clone()).build().unwrap();
    endpoint.lose_answers(1);
    grant.fetch().await.unwrap();
    // The server rotated, its answer was lost: the old token once more, within the grace.
    assert_eq!(sent_refresh_tokens(&endpoint), [first.clone(), first]);
    assert!(!endpoint.is_session_revoked());
    grant.fetch().await.unwrap();
    assert!(!endpoint.is_session_revoked());

    // Without a grace period the retry is a reuse: Cognito's RefreshTokenReuseException ends
    // the session, as the next refresh would have.
    let (strict, _api) = pool(Duration::ZERO).await;
    let grant = grant_for(&strict, strict.new_session()).build().unwrap();
    strict.lose_answers(1);
    let error = grant.fetch().await.unwrap_err();
    assert!(error.is_invalid_grant(), "{error}");
    assert!(
        error.to_string().contains("RefreshTokenReuseException"),
        "{error}"
    );
    assert!(strict.is_session_revoked());
}

/// The kit's own checks, by raw calls: what an application's tests rely on.
#[tokio::test]
async fn the_kit_checks_secret_hashes_and_signs_users_out() {
    let (endpoint, api) = pool(Duration::ZERO).await;
    let client_id = endpoint.client_id().to_owned();
    let alice = endpoint.new_session_for("alice");
    let refresh = |hash: Option<&str>| {
        let mut parameters = serde_json::json!({"REFRESH_TOKEN": alice});
        if let Some(hash) = hash {
            parameters["SECRET_HASH"] = hash.into();
        }
        serde_json::json!({
            "AuthFlow": "REFRESH_TOKEN_AUTH",
            "ClientId": client_id,
            "AuthParameters": parameters,
        })
    };
    let (status, answer) = call(&endpoint, "InitiateAuth", refresh(None)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["__type"], "NotAuthorizedException");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("SECRET_HASH was not received")
    );
    let (status, answer) = call(&endpoint, "InitiateAuth", refresh(Some("AAAA"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("Unable to verify secret hash")
    );

    // Python's hmac: base64(hmac(b"app-secret-1", b"alice" + b"app-client-1", sha256)).
    let hash = "vLYRmru7dBp8bJv06mCbQpwr7MUyg4vQ3ndY3gRplGc=";
    let (status, answer) = call(&endpoint, "InitiateAuth", refresh(Some(hash))).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let result = &answer["AuthenticationResult"];
    assert_eq!(result["TokenType"], "Bearer");
    assert_eq!(result["ExpiresIn"], 300);
    assert!(
        result.get("RefreshToken").is_none(),
        "REFRESH_TOKEN_AUTH never rotates"
    );
    let access_token = result["AccessToken"].as_str().unwrap().to_owned();
    assert!(api.url().starts_with("http://127.0.0.1:"));
    assert!(endpoint.is_valid(&access_token));

    // GetTokensFromRefreshToken wants the secret itself.
    let (status, answer) = call(
        &endpoint,
        "GetTokensFromRefreshToken",
        serde_json::json!({"ClientId": client_id, "RefreshToken": alice}),
    )
    .await;
    assert_eq!(
        (status, &answer["__type"]),
        (StatusCode::BAD_REQUEST, &"NotAuthorizedException".into())
    );
    let (status, answer) = call(
        &endpoint,
        "GetTokensFromRefreshToken",
        serde_json::json!({"ClientId": "other", "RefreshToken": alice, "ClientSecret": "x"}),
    )
    .await;
    assert_eq!(
        (status, &answer["__type"]),
        (StatusCode::BAD_REQUEST, &"ResourceNotFoundException".into())
    );

    // GlobalSignOut ends every session of the user, and their access tokens.
    let second = endpoint.new_session_for("alice");
    let bob = endpoint.new_session_for("bob");
    let (status, _) = call(
        &endpoint,
        "GlobalSignOut",
        serde_json::json!({"AccessToken": access_token}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!endpoint.is_valid(&access_token));
    for (token, revoked) in [(&alice, true), (&second, true), (&bob, false)] {
        let (status, answer) = call(
            &endpoint,
            "GetTokensFromRefreshToken",
            serde_json::json!({
                "ClientId": client_id,
                "RefreshToken": token,
                "ClientSecret": endpoint.client_secret(),
            }),
        )
        .await;
        assert_eq!(status != StatusCode::OK, revoked, "{answer}");
    }
    let (status, answer) = call(&endpoint, "SignUp", serde_json::json!({})).await;
    assert_eq!(
        (status, &answer["__type"]),
        (StatusCode::BAD_REQUEST, &"UnknownOperationException".into())
    );
}

/// A new sign-in may be another user's: the `SECRET_HASH` of the next refresh must not be
/// computed over the previous user's name.
#[tokio::test(start_paused = true)]
async fn a_new_sign_in_forgets_the_previous_users_name() {
    let (endpoint, _api) = pool(Duration::ZERO).await;
    let grant = grant_for(&endpoint, endpoint.new_session_for("uuid-of-alice"))
        .refresh_flow(RefreshFlow::RefreshTokenAuth)
        .access_token_from_jwt(access_token_of("uuid-of-alice"))
        .build()
        .unwrap();
    grant.fetch().await.unwrap();
    grant.fetch().await.unwrap();
    assert_eq!(endpoint.request_count(), 1);

    grant
        .replace_refresh_token(endpoint.new_session_for("uuid-of-bob"))
        .await
        .unwrap();
    let error = grant.fetch().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidConfig, "{error}");
    assert!(error.to_string().contains(".username(..)"), "{error}");
    // Nothing was sent with Alice's name.
    assert_eq!(endpoint.request_count(), 1);
    assert!(!endpoint.is_session_revoked());
}

/// A secret from a file (a Kubernetes secret, the CSI driver) on the user-pool API: read for
/// each call, whitespace trimmed, both as `ClientSecret` and as the key of `SECRET_HASH`; a
/// file that is gone sends nothing and names the path.
#[tokio::test(start_paused = true)]
async fn a_secret_from_a_file_is_read_for_each_call_of_both_flows() {
    let (endpoint, _api) = pool(Duration::ZERO).await;
    let dir = std::env::temp_dir().join(format!(
        "tower-cognito-auth-user-pool-secret-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("client-secret");
    std::fs::write(&path, format!("{}\n", endpoint.client_secret())).unwrap();
    let from_file = |refresh_token: String, flow: RefreshFlow| {
        RefreshTokenGrant::builder()
            .user_pool_api_url(endpoint.user_pool_api_url())
            .client_id(endpoint.client_id())
            .client_secret_source(tower_cognito_auth::ClientSecret::from_file(&path))
            .refresh_token(refresh_token)
            .refresh_flow(flow)
            .username("uuid-7")
            .http_client(http())
            .build()
            .unwrap()
    };
    let rotating = from_file(
        endpoint.new_session_for("uuid-7"),
        RefreshFlow::GetTokensFromRefreshToken,
    );
    let hashing = from_file(
        endpoint.new_session_for("uuid-7"),
        RefreshFlow::RefreshTokenAuth,
    );
    rotating.fetch().await.unwrap();
    hashing.fetch().await.unwrap();
    assert_eq!(
        json(&endpoint.requests()[0])["ClientSecret"],
        "app-secret-1"
    );

    std::fs::remove_file(&path).unwrap();
    for grant in [&rotating, &hashing] {
        let error = grant.fetch().await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidConfig, "{error}");
        assert!(error.to_string().contains("client-secret"), "{error}");
    }
    assert_eq!(endpoint.request_count(), 2, "no call without a secret");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `sign_out()` on a session through the user-pool API revokes its refresh token there
/// (`RevokeToken`, with the app client's secret): the server refuses it afterwards.
#[tokio::test]
async fn sign_out_revokes_the_refresh_token_through_the_user_pool_api() {
    let (endpoint, _api) = pool(Duration::ZERO).await;
    let refresh = endpoint.new_session();
    let grant = grant_for(&endpoint, refresh).build().unwrap();
    grant.fetch().await.unwrap();
    let current = endpoint.current_refresh_token().unwrap();
    grant.sign_out().await.unwrap();
    assert!(grant.status().borrow().closed);
    let revoke = endpoint
        .requests()
        .into_iter()
        .rfind(|r| {
            r.headers
                .get("x-amz-target")
                .is_some_and(|t| t == "AWSCognitoIdentityProviderService.RevokeToken")
        })
        .expect("no RevokeToken call was made");
    let body = json(&revoke);
    assert_eq!(body["Token"], current.as_str());
    assert_eq!(body["ClientSecret"], endpoint.client_secret());
    // Another process holding the same refresh token is told to sign in again.
    let error = grant_for(&endpoint, current)
        .build()
        .unwrap()
        .fetch()
        .await
        .unwrap_err();
    assert!(error.is_invalid_grant(), "{error}");
}

/// A wrong client secret on the user-pool API is `NotAuthorizedException`, reported as
/// `invalid_grant` (DESIGN's mapping); but a secret read from a file can change, so the
/// session is kept: once the file holds the right secret again, the same session refreshes
/// (the refresh token was never refused).
#[tokio::test(start_paused = true)]
async fn a_wrong_secret_from_a_file_heals_once_rewritten_and_the_session_lives_on() {
    let (endpoint, _api) = pool(Duration::ZERO).await;
    let dir = std::env::temp_dir().join(format!(
        "tower-cognito-auth-user-pool-heal-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("client-secret");
    std::fs::write(&path, endpoint.client_secret()).unwrap();
    let grant = RefreshTokenGrant::builder()
        .user_pool_api_url(endpoint.user_pool_api_url())
        .client_id(endpoint.client_id())
        .client_secret_source(tower_cognito_auth::ClientSecret::from_file(&path))
        .refresh_token(endpoint.new_session())
        .http_client(http())
        .build()
        .unwrap();
    grant.fetch().await.unwrap();

    std::fs::write(&path, "a-secret-the-pool-never-had").unwrap();
    let error = grant.fetch().await.unwrap_err();
    assert!(error.is_invalid_grant() && error.is_permanent(), "{error}");
    assert!(
        grant.status().borrow().ended.is_none(),
        "a refused secret from a file ended the session: {error}"
    );

    std::fs::write(&path, endpoint.client_secret()).unwrap();
    grant.fetch().await.unwrap();
    assert_eq!(endpoint.request_count(), 3);
    let _ = std::fs::remove_dir_all(&dir);
}
