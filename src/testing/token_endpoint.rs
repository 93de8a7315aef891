//! The Cognito-compatible token endpoint: [`TokenEndpoint`], its builder, its canned replies
//! and recorded requests, and the state it keeps (issued tokens, user sessions, rotation).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::server::{
    BodyRead, ServerTask, bind_loopback, header_starts_with, lock, read_body, spawn_server,
};

/// The path the token endpoint serves, as Cognito's domain does.
pub(super) const TOKEN_PATH: &str = "/oauth2/token";
/// Largest request body the token endpoint reads (1 MiB); larger ones get `413`.
pub(super) const TOKEN_BODY_LIMIT: usize = 1024 * 1024;
/// Length of opaque tokens.
pub(super) const OPAQUE_TOKEN_LEN: usize = 40;
/// What `Debug` prints instead of a client secret.
const REDACTED: &str = "[redacted]";

const DEFAULT_CLIENT_ID: &str = "test-client-id";
const DEFAULT_CLIENT_SECRET: &str = "test-client-secret";
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------------------------
// Canned replies
// ---------------------------------------------------------------------------------------------

/// A canned answer for the [`TokenEndpoint`] to send verbatim instead of processing a request.
///
/// Queue one-shot answers with [`TokenEndpoint::push_reply`], or make every request fail with
/// [`TokenEndpoint::fail_with`]. A reply is built from a status and refined with headers, a body
/// and an optional extra delay:
///
/// - `Reply::status(StatusCode::TOO_MANY_REQUESTS).header("retry-after", "2")`
/// - `Reply::oauth_error(StatusCode::BAD_REQUEST, "invalid_client")`
/// - `Reply::status(StatusCode::OK).json(serde_json::json!({"access_token": "x"}))`
#[derive(Clone, Debug)]
pub struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    delay: Duration,
}

impl Reply {
    /// A reply with this status, no headers and an empty body.
    pub fn status(status: StatusCode) -> Reply {
        Reply {
            status,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            delay: Duration::ZERO,
        }
    }

    /// Adds a header (appended, so a name may repeat).
    ///
    /// An invalid header name or value is ignored rather than causing a panic.
    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(name), Ok(value)) => {
                self.headers.append(name, value);
            }
            _ => tracing::debug!(
                header = name,
                "ignoring an invalid header of a canned reply"
            ),
        }
        self
    }

    /// Sets the body, sent as it is.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets the body to this JSON value and `content-type` to `application/json`.
    pub fn json(mut self, value: serde_json::Value) -> Self {
        self.body = Bytes::from(value.to_string());
        self.headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        self
    }

    /// Waits this much longer (on Tokio's clock) before sending this reply, on top of the
    /// endpoint's own delay.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    /// An OAuth 2.0 error answer as Cognito sends it: this status, `content-type:
    /// application/json` and the body `{"error": error}`.
    pub fn oauth_error(status: StatusCode, error: &str) -> Reply {
        Reply::status(status).json(serde_json::json!({ "error": error }))
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(self.body));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        response
    }
}

// ---------------------------------------------------------------------------------------------
// Recorded requests
// ---------------------------------------------------------------------------------------------

/// A request the [`TokenEndpoint`] received, as [`TokenEndpoint::requests`] returns it.
#[derive(Clone, Debug)]
pub struct RecordedTokenRequest {
    /// The request method.
    pub method: Method,
    /// The request path, without the query.
    pub path: String,
    /// The request headers, as received (including `authorization`).
    pub headers: HeaderMap,
    /// The request body; empty when it was larger than the 1 MiB limit or could not be read.
    pub body: Bytes,
}

impl RecordedTokenRequest {
    /// The body parsed as `application/x-www-form-urlencoded`, pairs in order.
    pub fn form(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(&self.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    /// The first value of this form field, if the body has it.
    pub fn form_value(&self, key: &str) -> Option<String> {
        form_urlencoded::parse(&self.body)
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }

    /// The client id and secret of an `Authorization: Basic` header.
    ///
    /// The header's credentials are base64-decoded, split at the first `:`, and each part is
    /// form-url-decoded, as RFC 6749 §2.3.1 prescribes. `None` when there is no such header or
    /// it is malformed.
    pub fn basic_credentials(&self) -> Option<(String, String)> {
        basic_credentials(&self.headers)
    }
}

// ---------------------------------------------------------------------------------------------
// Token endpoint state
// ---------------------------------------------------------------------------------------------

/// A token the endpoint issued.
struct IssuedToken {
    issued_at: Instant,
    lifetime: Duration,
    revoked: bool,
    /// The user session it was issued to, for the refresh_token grant.
    session: Option<usize>,
}

impl IssuedToken {
    fn is_live(&self, now: Instant) -> bool {
        if self.revoked {
            return false;
        }
        match self.issued_at.checked_add(self.lifetime) {
            Some(expiry) => now < expiry,
            // A lifetime too long to represent never runs out.
            None => true,
        }
    }
}

/// What changes while the endpoint runs.
struct EndpointInner {
    lifetime: Duration,
    delay: Duration,
    queue: VecDeque<Reply>,
    fail_with: Option<Reply>,
    requests: Vec<RecordedTokenRequest>,
    tokens_issued: usize,
    tokens: HashMap<String, IssuedToken>,
    last_token: Option<String>,
    /// User sessions, in the order [`TokenEndpoint::new_session`] created them.
    sessions: Vec<UserSession>,
    /// Every refresh token ever issued, with the session it belongs to.
    refresh_tokens: HashMap<String, usize>,
    rotations: usize,
    /// How many of the next answers to processed requests are lost (see
    /// [`TokenEndpoint::lose_answers`]).
    lose_answers: usize,
}

/// A user's session as the endpoint keeps it: only its current refresh token works (and the
/// one it replaced, within the grace period).
struct UserSession {
    current: String,
    /// The refresh token rotated out last, and when.
    previous: Option<(String, Instant)>,
    revoked: bool,
}

/// The state of a token endpoint, shared by its handle, its connections and the protected APIs
/// that validate its tokens.
pub(super) struct EndpointState {
    client_id: String,
    client_secret: String,
    jwt: bool,
    omit_expires_in: bool,
    public_client: bool,
    rotate_refresh_tokens: bool,
    /// How long a rotated-out refresh token still works (Cognito's `RetryGracePeriodSeconds`).
    grace_period: Duration,
    /// Whether the refresh_token grant grants the `scope` it asks for (Cognito ignores it).
    honour_refresh_scope: bool,
    /// `true` while answers are held back ([`TokenEndpoint::hold_answers`]).
    hold: tokio::sync::watch::Sender<bool>,
    /// How many requests have arrived, for [`TokenEndpoint::wait_for_requests`].
    arrived: tokio::sync::watch::Sender<usize>,
    inner: Mutex<EndpointInner>,
}

impl EndpointState {
    pub(super) fn is_valid(&self, token: &str) -> bool {
        let now = Instant::now();
        lock(&self.inner)
            .tokens
            .get(token)
            .is_some_and(|issued| issued.is_live(now))
    }

    fn revoke(&self, token: &str) {
        if let Some(issued) = lock(&self.inner).tokens.get_mut(token) {
            issued.revoked = true;
        }
    }

    pub(super) fn revoke_last(&self) {
        let mut inner = lock(&self.inner);
        let EndpointInner {
            tokens, last_token, ..
        } = &mut *inner;
        if let Some(issued) = last_token.as_ref().and_then(|t| tokens.get_mut(t)) {
            issued.revoked = true;
        }
    }

    /// Issues a new token for a request with this scope: registers it and builds the JSON answer.
    fn issue(&self, scope: &str) -> Response<Full<Bytes>> {
        let mut inner = lock(&self.inner);
        let answer = self.issue_locked(&mut inner, scope, None);
        drop(inner);
        json_response(StatusCode::OK, &serde_json::Value::Object(answer))
    }

    /// Registers a new access token (of `session`, if any) and returns the answer's fields.
    fn issue_locked(
        &self,
        inner: &mut EndpointInner,
        scope: &str,
        session: Option<usize>,
    ) -> serde_json::Map<String, serde_json::Value> {
        let lifetime = inner.lifetime;
        let expires_in = lifetime.as_secs().max(1);
        let token = if self.jwt {
            jwt_token(&self.client_id, "access", scope, expires_in)
        } else {
            random_alphanumeric(OPAQUE_TOKEN_LEN)
        };
        inner.tokens.insert(
            token.clone(),
            IssuedToken {
                issued_at: Instant::now(),
                lifetime,
                revoked: false,
                session,
            },
        );
        inner.last_token = Some(token.clone());
        inner.tokens_issued += 1;

        let mut answer = serde_json::Map::new();
        answer.insert("access_token".into(), token.into());
        if !self.omit_expires_in {
            answer.insert("expires_in".into(), expires_in.into());
        }
        answer.insert("token_type".into(), "Bearer".into());
        answer
    }

    /// A new user session; returns its first refresh token.
    fn new_session(&self) -> String {
        let mut inner = lock(&self.inner);
        let id = inner.sessions.len();
        let refresh_token = new_refresh_token();
        inner.refresh_tokens.insert(refresh_token.clone(), id);
        inner.sessions.push(UserSession {
            current: refresh_token.clone(),
            previous: None,
            revoked: false,
        });
        refresh_token
    }

    /// Revokes a session: every refresh token and every access token issued to it.
    fn revoke_session(inner: &mut EndpointInner, id: usize) {
        if let Some(session) = inner.sessions.get_mut(id) {
            session.revoked = true;
        }
        for issued in inner.tokens.values_mut() {
            if issued.session == Some(id) {
                issued.revoked = true;
            }
        }
    }

    /// The refresh_token grant, once the client is authenticated: the current refresh token of
    /// a live session gets a new access token (and, with rotation, a new refresh token); any
    /// other gets `invalid_grant`, and an old one of a live session revokes that session.
    fn refresh(&self, refresh_token: Option<&str>, scope: &str) -> Response<Full<Bytes>> {
        let mut inner = lock(&self.inner);
        let Some(id) = refresh_token.and_then(|t| inner.refresh_tokens.get(t).copied()) else {
            return oauth_error("invalid_grant");
        };
        let (current, previous, revoked) = match inner.sessions.get(id) {
            Some(session) => (
                session.current.clone(),
                session.previous.clone(),
                session.revoked,
            ),
            None => return oauth_error("invalid_grant"),
        };
        if revoked {
            return oauth_error("invalid_grant");
        }
        let within_grace = previous.is_some_and(|(token, rotated_at)| {
            refresh_token == Some(token.as_str()) && rotated_at.elapsed() < self.grace_period
        });
        if within_grace {
            tracing::debug!(
                session = id,
                "a rotated-out refresh token within the grace period"
            );
        } else if refresh_token != Some(current.as_str()) {
            tracing::debug!(
                session = id,
                "an old refresh token was reused: revoking the session"
            );
            Self::revoke_session(&mut inner, id);
            return oauth_error("invalid_grant");
        }
        // Cognito's token endpoint reads `scope` for client_credentials only: a refresh gets
        // the sign-in's scopes (none here) whatever it asks for.
        let scope = if self.honour_refresh_scope { scope } else { "" };
        let mut answer = self.issue_locked(&mut inner, scope, Some(id));
        let expires_in = inner.lifetime.as_secs().max(1);
        answer.insert(
            "id_token".into(),
            jwt_token(&format!("user-{id}"), "id", "", expires_in).into(),
        );
        if self.rotate_refresh_tokens {
            let next = new_refresh_token();
            inner.refresh_tokens.insert(next.clone(), id);
            if let Some(session) = inner.sessions.get_mut(id) {
                let old = std::mem::replace(&mut session.current, next.clone());
                session.previous = Some((old, Instant::now()));
            }
            inner.rotations += 1;
            answer.insert("refresh_token".into(), next.into());
        }
        drop(inner);
        json_response(StatusCode::OK, &serde_json::Value::Object(answer))
    }
}

fn new_refresh_token() -> String {
    format!("rt-{}", random_alphanumeric(OPAQUE_TOKEN_LEN))
}

fn random_alphanumeric(len: usize) -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(len)
        .collect()
}

/// A JWT-shaped token: header and claims are real base64url JSON, the signature is random bytes.
fn jwt_token(subject: &str, token_use: &str, scope: &str, lifetime_secs: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let header = serde_json::json!({ "alg": "RS256", "kid": "test" });
    let claims = serde_json::json!({
        "sub": subject,
        "token_use": token_use,
        "scope": scope,
        "iat": now,
        "exp": now.saturating_add(lifetime_secs),
        "jti": random_alphanumeric(16),
    });
    let mut signature = [0u8; 32];
    fastrand::fill(&mut signature);
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature),
    )
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn empty_response(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

fn oauth_error(error: &str) -> Response<Full<Bytes>> {
    json_response(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({ "error": error }),
    )
}

/// Decodes one `application/x-www-form-urlencoded` component: `+` is a space, `%XX` a byte.
/// Malformed escapes are kept as they are; invalid UTF-8 becomes U+FFFD.
fn form_decode(input: &str) -> String {
    fn hex(digit: u8) -> Option<u8> {
        char::from(digit)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let high = bytes.get(i + 1).copied().and_then(hex);
                let low = bytes.get(i + 2).copied().and_then(hex);
                if let (Some(high), Some(low)) = (high, low) {
                    out.push(high * 16 + low);
                    i += 3;
                } else {
                    out.push(b'%');
                    i += 1;
                }
            }
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the headers carry an `Authorization` header with the `Basic` scheme.
fn has_basic_scheme(headers: &HeaderMap) -> bool {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_start().split_once(' '))
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
}

/// The decoded client id and secret of an `Authorization: Basic` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.trim_start().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(credentials.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id), form_decode(secret)))
}

/// Answers one request to the token endpoint.
async fn serve_token_request(
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
    if parts.uri.path() != TOKEN_PATH {
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

    let grant = field("grant_type");
    if !matches!(grant, Some("client_credentials" | "refresh_token")) {
        return oauth_error("unsupported_grant_type");
    }

    let authenticated = if state.public_client {
        // A public client has no secret: it names itself in the form, and nothing else.
        parts.headers.get(AUTHORIZATION).is_none()
            && field("client_secret").is_none()
            && field("client_id") == Some(state.client_id.as_str())
            && grant == Some("refresh_token")
    } else if has_basic_scheme(&parts.headers) {
        basic_credentials(&parts.headers)
            .is_some_and(|(id, secret)| id == state.client_id && secret == state.client_secret)
    } else {
        field("client_id") == Some(state.client_id.as_str())
            && field("client_secret") == Some(state.client_secret.as_str())
    };
    if !authenticated {
        return oauth_error("invalid_client");
    }

    let scope = field("scope").unwrap_or("");
    if grant == Some("refresh_token") {
        state.refresh(field("refresh_token"), scope)
    } else {
        state.issue(scope)
    }
}

// ---------------------------------------------------------------------------------------------
// TokenEndpoint
// ---------------------------------------------------------------------------------------------

pub(super) struct EndpointHandle {
    pub(super) state: Arc<EndpointState>,
    addr: SocketAddr,
    _server: ServerTask,
}

/// A Cognito-compatible OAuth 2.0 token endpoint on `127.0.0.1`, for tests and demos.
///
/// It serves `POST /oauth2/token` with the `client_credentials` and `refresh_token` grants,
/// over HTTP/1.1 (and HTTP/2 with prior knowledge). Requests are validated in this order:
///
/// 1. the path must be `/oauth2/token` (else `404`), the method `POST` (else `405`);
/// 2. `content-type` must be `application/x-www-form-urlencoded` (else `400
///    {"error":"invalid_request"}`);
/// 3. `grant_type` must be `client_credentials` or `refresh_token` (else `400
///    {"error":"unsupported_grant_type"}`);
/// 4. the client must authenticate, by `Authorization: Basic` when that header is present,
///    otherwise by the form fields `client_id` and `client_secret` (else `400
///    {"error":"invalid_client"}`, as Cognito answers); a
///    [public client](TokenEndpointBuilder::public_client) by `client_id` alone;
/// 5. for `refresh_token`, the form field `refresh_token` must be the current refresh token of
///    a session that is not revoked (see [`new_session`](TokenEndpoint::new_session) and
///    [`rotate_refresh_tokens`](TokenEndpointBuilder::rotate_refresh_tokens)), or the one
///    rotation replaced within the [grace
///    period](TokenEndpointBuilder::rotation_grace_period), else `400
///    {"error":"invalid_grant"}`. As at Cognito, a refresh's `scope` is ignored (unless
///    [`honour_refresh_scope`](TokenEndpointBuilder::honour_refresh_scope)).
///
/// A good request gets `200` with `{"access_token": …, "expires_in": …, "token_type":
/// "Bearer"}`; a refresh adds a JWT-shaped `id_token` and, with rotation, the new
/// `refresh_token`. Bodies over 1 MiB get `413`. Every request is recorded ([`requests`]) before
/// it is answered, whatever its outcome. A request is decided when it arrives (a token issued,
/// a refresh token rotated); the [delay](TokenEndpoint::set_delay) holds back only its answer.
///
/// The handle is cheap to clone; the server stops when the last clone is dropped. Its [`Debug`]
/// output does not show the client secret.
///
/// [`requests`]: TokenEndpoint::requests
#[derive(Clone)]
pub struct TokenEndpoint {
    pub(super) handle: Arc<EndpointHandle>,
}

impl fmt::Debug for TokenEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEndpoint")
            .field("addr", &self.handle.addr)
            .field("client_id", &self.handle.state.client_id)
            .field("client_secret", &REDACTED)
            .field("request_count", &self.request_count())
            .field("tokens_issued", &self.tokens_issued())
            .finish()
    }
}

impl TokenEndpoint {
    /// Starts an endpoint with the defaults: client id `test-client-id`, client secret
    /// `test-client-secret`, opaque tokens valid for 3600 s, no delay.
    ///
    /// Must be called within a Tokio runtime; the server runs on it.
    pub async fn start() -> std::io::Result<TokenEndpoint> {
        TokenEndpoint::builder().start().await
    }

    /// A builder to choose the credentials, token lifetime, token shape and delay.
    pub fn builder() -> TokenEndpointBuilder {
        TokenEndpointBuilder::default()
    }

    /// The full token URL, `http://127.0.0.1:PORT/oauth2/token`.
    pub fn token_url(&self) -> String {
        format!("http://{}{}", self.handle.addr, TOKEN_PATH)
    }

    /// The address the endpoint listens on.
    pub fn addr(&self) -> SocketAddr {
        self.handle.addr
    }

    /// The client id it accepts.
    pub fn client_id(&self) -> &str {
        &self.handle.state.client_id
    }

    /// The client secret it accepts.
    pub fn client_secret(&self) -> &str {
        &self.handle.state.client_secret
    }

    /// How many HTTP requests it has received, whatever their outcome.
    pub fn request_count(&self) -> usize {
        lock(&self.handle.state.inner).requests.len()
    }

    /// How many tokens it has issued: its successful `200` answers (canned replies not counted).
    pub fn tokens_issued(&self) -> usize {
        lock(&self.handle.state.inner).tokens_issued
    }

    /// Every request it has received so far, in the order they arrived.
    pub fn requests(&self) -> Vec<RecordedTokenRequest> {
        lock(&self.handle.state.inner).requests.clone()
    }

    /// Queues a one-shot canned reply.
    ///
    /// Each request takes the oldest queued reply, if there is one, and gets it verbatim (after
    /// the delays), without any validation and without issuing a token. A request whose body
    /// is over the 1 MiB limit or cannot be read gets `413` or `400` and leaves the queue alone.
    pub fn push_reply(&self, reply: Reply) {
        lock(&self.handle.state.inner).queue.push_back(reply);
    }

    /// With `Some`, every request that finds the [`push_reply`] queue empty gets a copy of this
    /// reply; with `None`, requests are processed normally again.
    ///
    /// [`push_reply`]: TokenEndpoint::push_reply
    pub fn fail_with(&self, reply: Option<Reply>) {
        lock(&self.handle.state.inner).fail_with = reply;
    }

    /// Waits this long (with [`tokio::time::sleep`], so a paused clock drives it) before
    /// answering each request from now on. Zero means no delay. The request itself is decided
    /// when it arrives: a slow answer to a refresh still means the server has rotated.
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.handle.state.inner).delay = delay;
    }

    /// Sets the lifetime of the tokens issued from now on.
    ///
    /// `expires_in` (and a JWT's `exp`) announce it in whole seconds, at least 1; validity
    /// ([`is_valid`]) uses the exact duration.
    ///
    /// [`is_valid`]: TokenEndpoint::is_valid
    pub fn set_lifetime(&self, lifetime: Duration) {
        lock(&self.handle.state.inner).lifetime = lifetime;
    }

    /// Whether this endpoint issued `token`, it has not been revoked, and it has not expired:
    /// [`tokio::time::Instant::now`] is before its issue instant plus its lifetime.
    pub fn is_valid(&self, token: &str) -> bool {
        self.handle.state.is_valid(token)
    }

    /// Revokes a token: it is no longer valid. Unknown tokens are ignored.
    pub fn revoke(&self, token: &str) {
        self.handle.state.revoke(token);
    }

    /// Revokes every token issued so far. Tokens issued later are valid as usual.
    pub fn revoke_all(&self) {
        for issued in lock(&self.handle.state.inner).tokens.values_mut() {
            issued.revoked = true;
        }
    }

    /// The most recently issued token, if any.
    pub fn last_token(&self) -> Option<String> {
        lock(&self.handle.state.inner).last_token.clone()
    }

    /// Starts a user's session, as a sign-in through the hosted UI would, and returns its first
    /// refresh token, for the refresh_token grant. The accessors below that speak of "the
    /// session" mean the one started last.
    pub fn new_session(&self) -> String {
        self.handle.state.new_session()
    }

    /// The refresh token that works now for the session started last: the one
    /// [`new_session`](TokenEndpoint::new_session) returned, or the latest rotation. `None`
    /// before any session, or once that session is revoked.
    pub fn current_refresh_token(&self) -> Option<String> {
        let inner = lock(&self.handle.state.inner);
        let session = inner.sessions.last()?;
        (!session.revoked).then(|| session.current.clone())
    }

    /// Whether the session started last has been revoked, by the reuse of an old refresh token
    /// or by [`revoke_session`](TokenEndpoint::revoke_session). `false` before any session.
    pub fn is_session_revoked(&self) -> bool {
        lock(&self.handle.state.inner)
            .sessions
            .last()
            .is_some_and(|session| session.revoked)
    }

    /// Revokes the session started last, as a sign-out everywhere or an administrator would:
    /// its refresh tokens get `invalid_grant` and its access tokens are no longer valid.
    pub fn revoke_session(&self) {
        let mut inner = lock(&self.handle.state.inner);
        if let Some(id) = inner.sessions.len().checked_sub(1) {
            EndpointState::revoke_session(&mut inner, id);
        }
    }

    /// How many times it has rotated a refresh token, over all sessions.
    pub fn rotations(&self) -> usize {
        lock(&self.handle.state.inner).rotations
    }

    /// Holds back every answer from now on (`true`) until called with `false`, without a
    /// clock: each request is recorded and decided when it arrives (a refresh token rotated),
    /// and its answer waits for the release. For tests that must act while an exchange is in
    /// flight whatever the runtime's clock does.
    pub fn hold_answers(&self, hold: bool) {
        self.handle.state.hold.send_replace(hold);
    }

    /// Waits until at least `count` requests have arrived and been decided (recorded, as
    /// [`requests`] shows, and a refresh token rotated if the request rotates one), whatever
    /// thread the endpoint runs on.
    ///
    /// [`requests`]: TokenEndpoint::requests
    pub async fn wait_for_requests(&self, count: usize) {
        let mut arrived = self.handle.state.arrived.subscribe();
        let _ = arrived.wait_for(|n| *n >= count).await;
    }

    /// Loses the answers of the next `count` requests that are processed: each is decided as
    /// usual (a token issued, a refresh token rotated) and then answered with `502 Bad
    /// Gateway`, as when a proxy or the network drops an answer the server has acted on.
    pub fn lose_answers(&self, count: usize) {
        lock(&self.handle.state.inner).lose_answers = count;
    }
}

/// Configures and starts a [`TokenEndpoint`]; from [`TokenEndpoint::builder`].
///
/// Its [`Debug`] output does not show the client secret.
#[derive(Clone)]
pub struct TokenEndpointBuilder {
    client_id: String,
    client_secret: String,
    lifetime: Duration,
    jwt: bool,
    omit_expires_in: bool,
    delay: Duration,
    public_client: bool,
    rotate_refresh_tokens: bool,
    grace_period: Duration,
    honour_refresh_scope: bool,
}

impl Default for TokenEndpointBuilder {
    fn default() -> Self {
        TokenEndpointBuilder {
            client_id: DEFAULT_CLIENT_ID.to_owned(),
            client_secret: DEFAULT_CLIENT_SECRET.to_owned(),
            lifetime: DEFAULT_LIFETIME,
            jwt: false,
            omit_expires_in: false,
            delay: Duration::ZERO,
            public_client: false,
            rotate_refresh_tokens: false,
            grace_period: Duration::ZERO,
            honour_refresh_scope: false,
        }
    }
}

impl fmt::Debug for TokenEndpointBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEndpointBuilder")
            .field("client_id", &self.client_id)
            .field("client_secret", &REDACTED)
            .field("lifetime", &self.lifetime)
            .field("jwt", &self.jwt)
            .field("omit_expires_in", &self.omit_expires_in)
            .field("delay", &self.delay)
            .field("public_client", &self.public_client)
            .field("rotate_refresh_tokens", &self.rotate_refresh_tokens)
            .field("grace_period", &self.grace_period)
            .field("honour_refresh_scope", &self.honour_refresh_scope)
            .finish()
    }
}

impl TokenEndpointBuilder {
    /// The client id the endpoint accepts (default `test-client-id`).
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = client_id.into();
        self
    }

    /// The client secret the endpoint accepts (default `test-client-secret`).
    pub fn client_secret(mut self, client_secret: impl Into<String>) -> Self {
        self.client_secret = client_secret.into();
        self
    }

    /// The lifetime of issued tokens (default 3600 s); see [`TokenEndpoint::set_lifetime`].
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// Whether tokens are JWT-shaped (default `false`: opaque random 40-character tokens).
    ///
    /// A JWT-shaped token is `header.claims.signature` in base64url without padding: the header
    /// is `{"alg":"RS256","kid":"test"}`, the claims are `sub` (the client id), `token_use`
    /// (`access`), `scope` (the requested scope, or empty), `iat` and `exp` (Unix seconds from
    /// the system clock) and a random `jti`; the signature is 32 random bytes, so it does not
    /// verify against any key.
    pub fn jwt(mut self, jwt: bool) -> Self {
        self.jwt = jwt;
        self
    }

    /// Whether the answer leaves out `expires_in` (default `false`), so that clients must take
    /// the expiry from the JWT's `exp` claim (combine with [`jwt`](Self::jwt)).
    pub fn omit_expires_in(mut self, omit: bool) -> Self {
        self.omit_expires_in = omit;
        self
    }

    /// Waits this long before answering each request (default zero); see
    /// [`TokenEndpoint::set_delay`].
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Whether the app client is public (default `false`): it has no secret, names itself with
    /// the form field `client_id`, and may use only the refresh_token grant. A request from it
    /// with an `Authorization` header or a `client_secret` field, or for client_credentials,
    /// gets `400 {"error":"invalid_client"}`. The configured client secret is then not used.
    pub fn public_client(mut self, public: bool) -> Self {
        self.public_client = public;
        self
    }

    /// Whether the refresh_token grant rotates refresh tokens (default `false`).
    ///
    /// With rotation, each answer carries a new `refresh_token` and only that one works from
    /// then on; presenting an older one of the session (reuse, as after a lost answer or a
    /// double refresh) revokes the whole session, its refresh and access tokens, and gets
    /// `400 {"error":"invalid_grant"}`, as servers with reuse detection do. Without rotation,
    /// a session's refresh token stays the same and answers carry none.
    pub fn rotate_refresh_tokens(mut self, rotate: bool) -> Self {
        self.rotate_refresh_tokens = rotate;
        self
    }

    /// How long a refresh token that rotation replaced still works (default zero: none), as
    /// Cognito's `RetryGracePeriodSeconds` (0 to 60 s), Okta's and Auth0's reuse intervals
    /// allow, measured on Tokio's clock from the rotation. Within it, presenting the previous
    /// refresh token is answered as the current one would be (and rotates again); past it, it
    /// is a reuse that revokes the session. Only with
    /// [`rotate_refresh_tokens`](Self::rotate_refresh_tokens).
    pub fn rotation_grace_period(mut self, grace_period: Duration) -> Self {
        self.grace_period = grace_period;
        self
    }

    /// Whether the refresh_token grant grants the `scope` its request asks for (default
    /// `false`, as Cognito: its token endpoint reads `scope` for client_credentials only, and a
    /// refresh gets the scopes of the sign-in). With `true`, the requested scope goes into the
    /// new access token's `scope` claim, as servers that allow down-scoping do.
    pub fn honour_refresh_scope(mut self, honour: bool) -> Self {
        self.honour_refresh_scope = honour;
        self
    }

    /// Binds an ephemeral port of `127.0.0.1` and starts serving on the current Tokio runtime.
    pub async fn start(self) -> std::io::Result<TokenEndpoint> {
        let (listener, addr) = bind_loopback().await?;
        let state = Arc::new(EndpointState {
            client_id: self.client_id,
            client_secret: self.client_secret,
            jwt: self.jwt,
            omit_expires_in: self.omit_expires_in,
            public_client: self.public_client,
            rotate_refresh_tokens: self.rotate_refresh_tokens,
            grace_period: self.grace_period,
            honour_refresh_scope: self.honour_refresh_scope,
            hold: tokio::sync::watch::Sender::new(false),
            arrived: tokio::sync::watch::Sender::new(0),
            inner: Mutex::new(EndpointInner {
                lifetime: self.lifetime,
                delay: self.delay,
                queue: VecDeque::new(),
                fail_with: None,
                requests: Vec::new(),
                tokens_issued: 0,
                tokens: HashMap::new(),
                last_token: None,
                sessions: Vec::new(),
                refresh_tokens: HashMap::new(),
                rotations: 0,
                lose_answers: 0,
            }),
        });
        let server_state = Arc::clone(&state);
        let server = spawn_server(listener, move |request| {
            serve_token_request(Arc::clone(&server_state), request)
        });
        Ok(TokenEndpoint {
            handle: Arc::new(EndpointHandle {
                state,
                addr,
                _server: server,
            }),
        })
    }
}
