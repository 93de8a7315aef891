//! Unit tests of `cognito_api`: the wire format, away from any server.

use super::*;
use crate::ErrorKind;

/// A JWT-shaped token with these claims (unsigned: nothing here verifies it).
fn jwt(claims: serde_json::Value) -> String {
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    format!(
        "{}.{}.c2lnbmF0dXJl",
        b64(&serde_json::json!({"alg": "RS256"})),
        b64(&claims)
    )
}

fn json(call: &Call) -> serde_json::Value {
    serde_json::from_str(&call.body.0).unwrap()
}

/// The values come from Python's `hmac` module, an implementation this crate does not use:
/// `base64.b64encode(hmac.new(b"client-secret-1", b"alice" + b"client-id-1", sha256).digest())`.
#[test]
fn secret_hash_is_base64_hmac_sha256_of_username_then_client_id() {
    assert_eq!(
        secret_hash("client-secret-1", "alice", "client-id-1"),
        "l/VSgomHZhtcv9CpK75U3kDeKGUVKGCc/r3+h+orw68="
    );
    assert_eq!(
        secret_hash("x", "", ""),
        "8n5lJ9a4QIQwpma3RgcMMH9UK7VO5+bcswPz5SwLCfs="
    );
}

#[test]
fn get_tokens_from_refresh_token_sends_the_secret_itself_and_no_username() {
    let api = UserPoolApi::new(
        RefreshFlow::GetTokensFromRefreshToken,
        "client-1".into(),
        None,
        Some("device-1".into()),
    );
    // No username anywhere: this flow does not need one.
    api.check_username(true).unwrap();
    let body = api.body("rt-1", Some("s3cret")).unwrap();
    assert_eq!(body.operation, "GetTokensFromRefreshToken");
    assert_eq!(
        json(&body),
        serde_json::json!({
            "ClientId": "client-1",
            "RefreshToken": "rt-1",
            "ClientSecret": "s3cret",
            "DeviceKey": "device-1",
        })
    );
    let public = UserPoolApi::new(
        RefreshFlow::GetTokensFromRefreshToken,
        "client-1".into(),
        None,
        None,
    )
    .body("rt-1", None)
    .unwrap();
    assert_eq!(
        json(&public),
        serde_json::json!({"ClientId": "client-1", "RefreshToken": "rt-1"})
    );
}

#[test]
fn refresh_token_auth_hashes_the_given_username_before_the_claim() {
    let api = UserPoolApi::new(
        RefreshFlow::RefreshTokenAuth,
        "client-1".into(),
        Some("alice".into()),
        Some("device-1".into()),
    );
    api.saw_access_token(&jwt(serde_json::json!({"username": "someone-else"})));
    let body = api.body("rt-1", Some("s3cret")).unwrap();
    assert_eq!(body.operation, "InitiateAuth");
    assert_eq!(
        json(&body),
        serde_json::json!({
            "AuthFlow": "REFRESH_TOKEN_AUTH",
            "ClientId": "client-1",
            "AuthParameters": {
                "REFRESH_TOKEN": "rt-1",
                "SECRET_HASH": secret_hash("s3cret", "alice", "client-1"),
                "DEVICE_KEY": "device-1",
            },
        })
    );
}

#[test]
fn refresh_token_auth_takes_the_latest_access_tokens_username_claim() {
    let api = UserPoolApi::new(RefreshFlow::RefreshTokenAuth, "client-1".into(), None, None);
    let no_name = api.check_username(true).unwrap_err();
    assert_eq!(no_name.kind(), ErrorKind::InvalidConfig);
    assert!(no_name.to_string().contains(".username(..)"), "{no_name}");
    let err = api.body("rt-1", Some("s3cret")).unwrap_err();
    assert!(err.to_string().contains(".username(..)"), "{err}");
    // A public client needs no hash, hence no name.
    api.check_username(false).unwrap();
    let body = api.body("rt-1", None).unwrap();
    assert_eq!(
        json(&body)["AuthParameters"],
        serde_json::json!({"REFRESH_TOKEN": "rt-1"})
    );

    api.saw_access_token(&jwt(serde_json::json!({"username": "uuid-1"})));
    api.check_username(true).unwrap();
    // A token without the claim (an id token's `cognito:username`, an opaque one) keeps it.
    api.saw_access_token(&jwt(serde_json::json!({"cognito:username": "x"})));
    api.saw_access_token("opaque");
    let body = api.body("rt-1", Some("s3cret")).unwrap();
    assert_eq!(
        json(&body)["AuthParameters"]["SECRET_HASH"],
        secret_hash("s3cret", "uuid-1", "client-1")
    );
    // The latest claim wins.
    api.saw_access_token(&jwt(serde_json::json!({"username": "uuid-2"})));
    let body = api.body("rt-1", Some("s3cret")).unwrap();
    assert_eq!(
        json(&body)["AuthParameters"]["SECRET_HASH"],
        secret_hash("s3cret", "uuid-2", "client-1")
    );
    api.forget_username_claim();
    assert!(api.check_username(true).is_err());
}

#[test]
fn the_answer_is_read_into_the_token_endpoints_shape() {
    let body = serde_json::json!({
        "AuthenticationResult": {
            "AccessToken": "at",
            "ExpiresIn": 3600,
            "IdToken": "it",
            "RefreshToken": "rt-2",
            "TokenType": "Bearer",
            "NewDeviceMetadata": {"DeviceKey": "k"},
        },
        "ChallengeParameters": {},
    });
    let answer = token_answer(body.to_string().as_bytes()).unwrap();
    assert_eq!(answer.access_token.as_deref(), Some("at"));
    let shaped: serde_json::Value = serde_json::from_str(&answer.json).unwrap();
    assert_eq!(
        shaped,
        serde_json::json!({
            "access_token": "at",
            "expires_in": 3600,
            "id_token": "it",
            "refresh_token": "rt-2",
            "token_type": "Bearer",
        })
    );
    let Err(challenge) = token_answer(br#"{"ChallengeName":"SMS_MFA","Session":"s"}"#) else {
        panic!("a challenge is not a token answer");
    };
    assert_eq!(challenge.kind(), ErrorKind::InvalidResponse);
    assert!(challenge.to_string().contains("SMS_MFA"), "{challenge}");
    assert!(token_answer(b"{}").is_err());
    assert!(token_answer(b"not json").is_err());
}

#[test]
fn errors_map_to_the_crates_kinds() {
    let body = |kind: &str, message: &str| {
        serde_json::json!({"__type": kind, "message": message})
            .to_string()
            .into_bytes()
    };
    let bad = StatusCode::BAD_REQUEST;

    let ended = api_error(
        bad,
        None,
        Some(&body(
            "NotAuthorizedException",
            "Refresh Token has been revoked",
        )),
        None,
        "",
        &[],
    );
    assert!(ended.is_invalid_grant() && ended.is_permanent());
    let text = ended.to_string();
    assert!(text.contains("sign in again"), "{text}");
    assert!(
        text.contains("NotAuthorizedException: Refresh Token has been revoked"),
        "{text}"
    );

    let reused = api_error(
        bad,
        None,
        Some(&body(
            "com.amazonaws.cognito.identity.idp.model#RefreshTokenReuseException",
            "reused",
        )),
        None,
        "",
        &[],
    );
    assert!(reused.is_invalid_grant());

    let limited = api_error(
        bad,
        Some(std::time::Duration::from_secs(2)),
        Some(&body("TooManyRequestsException", "Rate exceeded")),
        None,
        "",
        &[],
    );
    assert_eq!(limited.kind(), ErrorKind::RateLimited);
    assert_eq!(
        limited.retry_after(),
        Some(std::time::Duration::from_secs(2))
    );

    let internal = api_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        None,
        Some(&body("InternalErrorException", "oops")),
        None,
        "",
        &[],
    );
    assert_eq!(internal.kind(), ErrorKind::Unavailable);
    assert!(internal.is_retryable());
    let gateway = api_error(
        StatusCode::BAD_GATEWAY,
        None,
        Some(b"<html>"),
        None,
        "",
        &[],
    );
    assert_eq!(gateway.kind(), ErrorKind::Unavailable);

    let other = api_error(
        bad,
        None,
        Some(&body(
            "ResourceNotFoundException",
            "User pool client x does not exist.",
        )),
        None,
        "",
        &[],
    );
    assert!(other.is_permanent() && !other.is_invalid_grant());
    assert!(
        other.to_string().contains("ResourceNotFoundException"),
        "{other}"
    );
    assert_eq!(other.oauth_error(), Some("ResourceNotFoundException"));

    // The type from the header when the body lacks it, with its detail suffix dropped.
    let from_header = api_error(
        bad,
        None,
        Some(b"{}"),
        Some("NotAuthorizedException:http://internal.amazon.com/"),
        "",
        &[],
    );
    assert!(from_header.is_invalid_grant());
    let bare = api_error(StatusCode::FORBIDDEN, None, None, None, "", &[]);
    assert!(bare.is_permanent());
    assert_eq!(bare.status(), Some(StatusCode::FORBIDDEN));
}

#[test]
fn api_urls() {
    assert_eq!(
        api_url("eu-west-1").unwrap(),
        "https://cognito-idp.eu-west-1.amazonaws.com/"
    );
    assert_eq!(
        api_url("cn-north-1").unwrap(),
        "https://cognito-idp.cn-north-1.amazonaws.com.cn/"
    );
    assert!(api_url("eu-west-1.evil.com").is_err());
    assert!(parse_api_url("http://127.0.0.1:5000/").is_ok());
    assert_eq!(
        parse_api_url("http://localhost:5000/").unwrap().host(),
        Some("127.0.0.1")
    );
    let err = parse_api_url("http://cognito.example.com/").unwrap_err();
    assert!(
        err.to_string().contains("user-pool API URL must use https"),
        "{err}"
    );
}

/// moto answers a wrong `SECRET_HASH` with the hash as its message: what was sent never
/// reaches the error.
#[test]
fn an_echoed_secret_is_redacted_from_the_message() {
    let body = serde_json::json!({
        "__type": "NotAuthorizedException",
        "message": "bad hash l/VSgomH= for rt-1 with s3cret",
    })
    .to_string();
    let error = api_error(
        StatusCode::BAD_REQUEST,
        None,
        Some(body.as_bytes()),
        None,
        "rt-1",
        &["s3cret", "l/VSgomH=", ""],
    );
    // It repeats the client's secret and hash: a refusal of the client, not of the token.
    assert!(
        error.is_invalid_grant() && error.client_refused(),
        "{error}"
    );
    let text = format!("{error} {error:?}");
    for secret in ["rt-1", "s3cret", "l/VSgomH="] {
        assert!(!text.contains(secret), "{text}");
    }
    assert!(
        text.contains("bad hash [redacted] for [redacted]"),
        "{text}"
    );
}

/// `RevokeToken`, the user-pool API's half of a sign-out, against the `testing` kit.
#[cfg(feature = "test-util")]
#[tokio::test]
async fn revoke_token_ends_the_session() {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let kit = crate::testing::TokenEndpoint::builder()
        .client_secret("kit-secret")
        .start()
        .await
        .unwrap();
    let refresh_token = kit.new_session();
    let endpoint = Endpoint {
        token_url: parse_api_url(&kit.user_pool_api_url()).unwrap(),
        authorization: None,
        http: crate::grant::endpoint::erase_client(
            Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>(),
        ),
        request_timeout: std::time::Duration::from_secs(10),
        metrics: crate::metrics::Metrics::new("client"),
    };
    let api = UserPoolApi::new(
        RefreshFlow::GetTokensFromRefreshToken,
        kit.client_id().to_owned(),
        None,
        None,
    );
    assert!(
        api.post(&endpoint, &refresh_token, Some("kit-secret"))
            .await
            .is_ok()
    );

    // A wrong secret is refused, and the message does not repeat what was sent.
    let refused = api
        .revoke(&endpoint, &refresh_token, Some("wrong-secret"))
        .await
        .unwrap_err();
    assert!(refused.is_invalid_grant(), "{refused}");
    assert!(!kit.is_session_revoked());

    api.revoke(&endpoint, &refresh_token, Some("kit-secret"))
        .await
        .unwrap();
    assert!(kit.is_session_revoked());
    let revoke = kit.requests().pop().unwrap();
    assert_eq!(
        revoke.headers["x-amz-target"],
        "AWSCognitoIdentityProviderService.RevokeToken"
    );
    let body: serde_json::Value = serde_json::from_slice(&revoke.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "Token": refresh_token,
            "ClientId": kit.client_id(),
            "ClientSecret": "kit-secret",
        })
    );
    let Err(ended) = api
        .post(&endpoint, &refresh_token, Some("kit-secret"))
        .await
    else {
        panic!("a revoked refresh token still refreshes");
    };
    assert!(ended.is_invalid_grant(), "{ended}");
    assert!(
        ended.to_string().contains("Refresh Token has been revoked"),
        "{ended}"
    );
}
