//! Serving one request: record it, check it, answer it (or a canned reply), after the delay.

use super::*;

/// Answers one request to the token endpoint.
pub(super) async fn serve_token_request(
    state: Arc<EndpointState>,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let read = read_body(body, TOKEN_BODY_LIMIT).await;
    let body = match &read {
        BodyRead::Complete(bytes) => bytes.clone(),
        BodyRead::TooLarge | BodyRead::Failed => Bytes::new(),
    };

    // Record the request and take its canned reply, if any, under one lock, so concurrent
    // requests consume queued replies in the order they are recorded.
    let (delay, canned, count) = {
        let mut inner = lock(&state.inner);
        inner.requests.push(RecordedTokenRequest {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            headers: parts.headers.clone(),
            body: body.clone(),
        });
        let canned = match read {
            BodyRead::Complete(_) => inner.queue.pop_front().or_else(|| inner.fail_with.clone()),
            BodyRead::TooLarge | BodyRead::Failed => None,
        };
        (inner.delay, canned, inner.requests.len())
    };
    // Told once the request is decided (below), so that a test woken by it sees the rotation.
    let arrived = |count| {
        state.arrived.send_replace(count);
    };

    match read {
        BodyRead::TooLarge => {
            arrived(count);
            return empty_response(StatusCode::PAYLOAD_TOO_LARGE);
        }
        BodyRead::Failed => {
            arrived(count);
            return oauth_error("invalid_request");
        }
        BodyRead::Complete(_) => {}
    }

    // Decided on arrival (a token issued, a refresh token rotated), then held back by the
    // delays: a slow answer to a request the server has already acted on.
    let total_delay = delay.saturating_add(canned.as_ref().map_or(Duration::ZERO, |r| r.delay));
    let response = match canned {
        Some(reply) => {
            tracing::debug!(status = %reply.status, "token endpoint sends a canned reply");
            reply.into_response()
        }
        None => {
            let answer = answer_token_request(&state, &parts, &body);
            let lost = {
                let mut inner = lock(&state.inner);
                let lost = inner.lose_answers > 0;
                inner.lose_answers = inner.lose_answers.saturating_sub(1);
                lost
            };
            if lost {
                tracing::debug!("token endpoint loses its answer: 502 instead");
                empty_response(StatusCode::BAD_GATEWAY)
            } else {
                answer
            }
        }
    };
    arrived(count);
    if !total_delay.is_zero() {
        tokio::time::sleep(total_delay).await;
    }
    // Held back until released; a sender gone (the endpoint dropped) releases too.
    let mut hold = state.hold.subscribe();
    let _ = hold.wait_for(|held| !*held).await;
    tracing::debug!(status = %response.status(), "token endpoint answered");
    response
}

/// Validates a token request as Cognito does and issues a token when it is right.
fn answer_token_request(
    state: &EndpointState,
    parts: &http::request::Parts,
    body: &Bytes,
) -> Response<Full<Bytes>> {
    if parts.uri.path() == "/" && parts.method == Method::POST {
        return super::user_pool_api::answer_api_request(state, parts, body);
    }
    let revoking = parts.uri.path() == REVOKE_PATH;
    if parts.uri.path() != TOKEN_PATH && !revoking {
        return empty_response(StatusCode::NOT_FOUND);
    }
    if parts.method != Method::POST {
        let mut response = empty_response(StatusCode::METHOD_NOT_ALLOWED);
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    if !header_starts_with(
        &parts.headers,
        CONTENT_TYPE,
        "application/x-www-form-urlencoded",
    ) {
        return oauth_error("invalid_request");
    }

    let form: Vec<(String, String)> = form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };

    if revoking {
        return revoke(state, parts, &field);
    }
    let grant = field("grant_type");
    if !matches!(grant, Some("client_credentials" | "refresh_token")) {
        return oauth_error("unsupported_grant_type");
    }
    if !authenticated(state, parts, &field, grant == Some("refresh_token")) {
        return oauth_error("invalid_client");
    }

    let scope = field("scope").unwrap_or("");
    if grant == Some("refresh_token") {
        state.refresh(field("refresh_token"), scope)
    } else {
        state.issue(scope)
    }
}

/// `POST /oauth2/revoke` (RFC 7009), as Cognito serves it: the client authenticates as for a
/// refresh, and the refresh token in `token` is revoked with its session and every access
/// token issued from it. `200` whether or not the token was known (RFC 7009 §2.2).
fn revoke<'a>(
    state: &EndpointState,
    parts: &http::request::Parts,
    field: &impl Fn(&str) -> Option<&'a str>,
) -> Response<Full<Bytes>> {
    if !authenticated(state, parts, field, true) {
        return oauth_error("invalid_client");
    }
    let Some(token) = field("token") else {
        return oauth_error("invalid_request");
    };
    state.revoke_refresh_token(token);
    empty_response(StatusCode::OK)
}

/// Whether the request's client authentication is right: HTTP Basic, or the id and secret in
/// the form; a public client (allowed for the refresh_token grant and revocation) by its
/// `client_id` alone.
fn authenticated<'a>(
    state: &EndpointState,
    parts: &http::request::Parts,
    field: &impl Fn(&str) -> Option<&'a str>,
    public_allowed: bool,
) -> bool {
    // Any of the secrets the client holds now (two during a rotation).
    let accepted = |secret: &str| lock(&state.inner).secrets.iter().any(|s| s == secret);
    if state.public_client {
        // A public client has no secret: it names itself in the form, and nothing else.
        parts.headers.get(AUTHORIZATION).is_none()
            && field("client_secret").is_none()
            && field("client_id") == Some(state.client_id.as_str())
            && public_allowed
    } else if has_basic_scheme(&parts.headers) {
        basic_credentials(&parts.headers)
            .is_some_and(|(id, secret)| id == state.client_id && accepted(&secret))
    } else {
        field("client_id") == Some(state.client_id.as_str())
            && field("client_secret").is_some_and(accepted)
    }
}
