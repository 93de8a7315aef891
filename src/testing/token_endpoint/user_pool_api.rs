//! The token endpoint's second door: Cognito's user-pool API at `POST /` (the refresh
//! operations, revocation and sign-out), over the same sessions and tokens. See
//! [`TokenEndpoint`]'s docs, "Cognito's user-pool API".

use super::*;

/// The media type of the user-pool API, both ways.
pub(super) const AMZ_JSON: &str = "application/x-amz-json-1.1";
/// What every operation's `X-Amz-Target` starts with.
const TARGET_PREFIX: &str = "AWSCognitoIdentityProviderService.";

/// An answer of the API: `200` with this JSON.
fn api_ok(value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = json_response(StatusCode::OK, &value);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(AMZ_JSON));
    response
}

/// An error of the API: `400 {"__type": kind, "message": message}`, as Cognito sends it.
fn api_error(kind: &str, message: &str) -> Response<Full<Bytes>> {
    Reply::cognito_error(StatusCode::BAD_REQUEST, kind, message).into_response()
}

fn not_authorized(message: &str) -> Response<Full<Bytes>> {
    api_error("NotAuthorizedException", message)
}

/// Answers one call of the user-pool API.
pub(super) fn answer_api_request(
    state: &EndpointState,
    parts: &http::request::Parts,
    body: &Bytes,
) -> Response<Full<Bytes>> {
    if !header_starts_with(&parts.headers, CONTENT_TYPE, AMZ_JSON) {
        return api_error(
            "SerializationException",
            "the content type must be application/x-amz-json-1.1",
        );
    }
    let operation = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix(TARGET_PREFIX))
        .unwrap_or_default()
        .to_owned();
    let Ok(serde_json::Value::Object(call)) = serde_json::from_slice::<serde_json::Value>(body)
    else {
        return api_error("SerializationException", "the body is not a JSON object");
    };
    let text = |object: &serde_json::Map<String, serde_json::Value>, name: &str| {
        object
            .get(name)
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    let client_id = text(&call, "ClientId");
    match operation.as_str() {
        "GetTokensFromRefreshToken" => {
            if let Some(refused) = check_client(state, client_id.as_deref(), &call) {
                return refused;
            }
            let Some(refresh_token) = text(&call, "RefreshToken") else {
                return missing("RefreshToken");
            };
            tokens(state.refresh_session(Some(&refresh_token), "", Via::GetTokens))
        }
        "InitiateAuth" => initiate_auth(state, client_id.as_deref(), &call),
        "RevokeToken" => {
            if let Some(refused) = check_client(state, client_id.as_deref(), &call) {
                return refused;
            }
            let Some(token) = text(&call, "Token") else {
                return missing("Token");
            };
            let mut inner = lock(&state.inner);
            if let Some(id) = inner.refresh_tokens.get(&token).copied() {
                tracing::debug!(session = id, "RevokeToken: revoking the session");
                EndpointState::revoke_session(&mut inner, id);
            }
            api_ok(serde_json::json!({}))
        }
        "GlobalSignOut" => {
            let Some(access_token) = text(&call, "AccessToken") else {
                return missing("AccessToken");
            };
            global_sign_out(state, &access_token)
        }
        _ => api_error(
            "UnknownOperationException",
            "this emulator answers GetTokensFromRefreshToken, InitiateAuth (REFRESH_TOKEN_AUTH), \
             RevokeToken and GlobalSignOut",
        ),
    }
}

fn missing(parameter: &str) -> Response<Full<Bytes>> {
    api_error(
        "InvalidParameterException",
        &format!("Missing required parameter {parameter}"),
    )
}

/// Checks the app client of a call that sends its secret as it is (`ClientSecret`); the
/// refusal, if any.
fn check_client(
    state: &EndpointState,
    client_id: Option<&str>,
    call: &serde_json::Map<String, serde_json::Value>,
) -> Option<Response<Full<Bytes>>> {
    let client_id = client_id.unwrap_or_default();
    if client_id != state.client_id {
        return Some(api_error(
            "ResourceNotFoundException",
            &format!("User pool client {client_id} does not exist."),
        ));
    }
    let secret = call.get("ClientSecret").and_then(serde_json::Value::as_str);
    match (state.public_client, secret) {
        (true, None) => None,
        (true, Some(_)) => Some(not_authorized(&format!("Client {client_id} has no secret"))),
        (false, None) => Some(not_authorized(&format!(
            "Client {client_id} is configured with secret but ClientSecret was not received"
        ))),
        (false, Some(secret)) if secret == state.client_secret => None,
        (false, Some(_)) => Some(not_authorized(&format!(
            "Unable to verify client secret for client {client_id}"
        ))),
    }
}

/// `InitiateAuth` with `REFRESH_TOKEN_AUTH`: the client by id, and by `SECRET_HASH` over the
/// session's username when it has a secret.
fn initiate_auth(
    state: &EndpointState,
    client_id: Option<&str>,
    call: &serde_json::Map<String, serde_json::Value>,
) -> Response<Full<Bytes>> {
    let flow = call.get("AuthFlow").and_then(serde_json::Value::as_str);
    if !matches!(flow, Some("REFRESH_TOKEN_AUTH" | "REFRESH_TOKEN")) {
        return api_error(
            "InvalidParameterException",
            "this emulator answers the AuthFlow REFRESH_TOKEN_AUTH only",
        );
    }
    let client_id = client_id.unwrap_or_default();
    if client_id != state.client_id {
        return api_error(
            "ResourceNotFoundException",
            &format!("User pool client {client_id} does not exist."),
        );
    }
    let parameters = call.get("AuthParameters").and_then(|p| p.as_object());
    let parameter = |name: &str| {
        parameters
            .and_then(|p| p.get(name))
            .and_then(serde_json::Value::as_str)
    };
    let Some(refresh_token) = parameter("REFRESH_TOKEN") else {
        return missing("REFRESH_TOKEN");
    };
    if state.public_client {
        return tokens(state.refresh_session(Some(refresh_token), "", Via::InitiateAuth));
    }
    let Some(sent_hash) = parameter("SECRET_HASH") else {
        return not_authorized(&format!(
            "Client {client_id} is configured with secret but SECRET_HASH was not received"
        ));
    };
    let check =
        |username: &str| secret_hash(&state.client_secret, username, client_id) == sent_hash;
    match state.refresh_session(Some(refresh_token), "", Via::SecretHash(&check)) {
        Err(Refusal::SecretHash) => not_authorized(&format!(
            "Unable to verify secret hash for client {client_id}"
        )),
        other => tokens(other),
    }
}

/// Base64(HMAC-SHA256(key: client secret, message: username + client id)).
fn secret_hash(client_secret: &str, username: &str, client_id: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, client_secret.as_bytes());
    let message = [username.as_bytes(), client_id.as_bytes()].concat();
    STANDARD.encode(ring::hmac::sign(&key, &message).as_ref())
}

/// A refresh's outcome as the API says it: `AuthenticationResult`, or the error for its
/// refusal.
fn tokens(
    outcome: Result<serde_json::Map<String, serde_json::Value>, Refusal>,
) -> Response<Full<Bytes>> {
    let answer = match outcome {
        Ok(answer) => answer,
        Err(Refusal::Unknown) => return not_authorized("Invalid Refresh Token"),
        Err(Refusal::Revoked) => return not_authorized("Refresh Token has been revoked"),
        Err(Refusal::Reused) => {
            return api_error(
                "RefreshTokenReuseException",
                "The refresh token was invalidated by rotation; the session is revoked",
            );
        }
        Err(Refusal::SecretHash) => return not_authorized("Unable to verify secret hash"),
    };
    let mut result = serde_json::Map::new();
    for (from, to) in [
        ("access_token", "AccessToken"),
        ("expires_in", "ExpiresIn"),
        ("token_type", "TokenType"),
        ("id_token", "IdToken"),
        ("refresh_token", "RefreshToken"),
    ] {
        if let Some(value) = answer.get(from) {
            result.insert(to.into(), value.clone());
        }
    }
    api_ok(serde_json::json!({
        "AuthenticationResult": result,
        "ChallengeParameters": {},
    }))
}

/// `GlobalSignOut`: a live access token's user loses every session.
fn global_sign_out(state: &EndpointState, access_token: &str) -> Response<Full<Bytes>> {
    let now = Instant::now();
    let mut inner = lock(&state.inner);
    let session = match inner.tokens.get(access_token) {
        Some(issued) if issued.is_live(now) => issued.session,
        Some(_) => return not_authorized("Access Token has been revoked"),
        None => return not_authorized("Invalid Access Token"),
    };
    let Some(username) = session
        .and_then(|id| inner.sessions.get(id))
        .map(|session| session.username.clone())
    else {
        return not_authorized("Access Token does not belong to a user");
    };
    let ids: Vec<usize> = inner
        .sessions
        .iter()
        .enumerate()
        .filter(|(_, session)| session.username == username)
        .map(|(id, _)| id)
        .collect();
    for id in ids {
        EndpointState::revoke_session(&mut inner, id);
    }
    tracing::debug!("GlobalSignOut: every session of the user revoked");
    api_ok(serde_json::json!({}))
}
