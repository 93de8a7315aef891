//! Loopback servers for tests and demos: a Cognito-compatible token endpoint and a protected API
//! (feature `test-util`).
//!
//! This module is a supported part of the public API. The crate's own tests, its demo and your
//! own tests use the same two servers, so a test can exercise the whole token flow over real
//! sockets without any AWS account or network access:
//!
//! - [`TokenEndpoint`] answers `POST /oauth2/token` with the OAuth 2.0 `client_credentials`
//!   grant the way Amazon Cognito's token endpoint does: client authentication by HTTP Basic
//!   (RFC 6749 §2.3.1) or by form fields, `400 {"error":"invalid_client"}` for wrong credentials,
//!   and a JSON answer with `access_token`, `expires_in` and `token_type`. It also serves the
//!   `refresh_token` grant for user sessions ([`TokenEndpoint::new_session`]), optionally with
//!   strict rotation and reuse detection (a reused refresh token revokes the session) and for a
//!   public client without a secret. Tokens are opaque
//!   random strings or, on request, JWT-shaped. The endpoint records every request it receives,
//!   counts the tokens it issues, and can be made slow ([`TokenEndpoint::set_delay`]) or made to
//!   answer with any status, headers and body ([`TokenEndpoint::push_reply`],
//!   [`TokenEndpoint::fail_with`]).
//! - [`ProtectedApi`] accepts a request only when its `Authorization: Bearer` token was issued by
//!   its [`TokenEndpoint`], has not been revoked and has not expired. It echoes the request body,
//!   records every request, and rejects the way real services do: HTTP `401` with
//!   `WWW-Authenticate: Bearer error="invalid_token"`, or for gRPC requests a trailers-only
//!   response with `grpc-status: 16` (`UNAUTHENTICATED`). It speaks HTTP/1.1 and HTTP/2 with
//!   prior knowledge (h2c) on the same port, so gRPC clients can call it.
//!
//! Both servers listen on an ephemeral port of `127.0.0.1`, run on the Tokio runtime that started
//! them, and stop, dropping every open connection, when the last clone of their handle is dropped.
//! Token lifetimes and delays are measured with [`tokio::time::Instant`] and
//! [`tokio::time::sleep`], so tests with a paused clock (`#[tokio::test(start_paused = true)]`,
//! `tokio::time::advance`) control expiry and slowness without waiting.
//!
//! The servers never log client secrets or tokens, and the [`Debug`] output of the handles hides
//! the client secret.
//!
//! ```
//! use std::time::Duration;
//! use http::StatusCode;
//! use tower_cognito_auth::testing::{ProtectedApi, Rejection, Reply, TokenEndpoint};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! // A token endpoint issuing one-minute tokens, and an API that accepts only its live tokens.
//! let endpoint = TokenEndpoint::builder()
//!     .client_id("my-client")
//!     .client_secret("my-secret")
//!     .lifetime(Duration::from_secs(60))
//!     .start()
//!     .await?;
//! let api = ProtectedApi::start(&endpoint).await?;
//! // Point the client under test at `endpoint.token_url()` and `api.url()`.
//! assert!(endpoint.token_url().starts_with("http://127.0.0.1:"));
//!
//! // Script the identity provider: the next token request is rate limited.
//! endpoint.push_reply(Reply::status(StatusCode::TOO_MANY_REQUESTS).header("retry-after", "1"));
//! // Make the API drop the current token early, or reject everything as a gRPC server would.
//! api.revoke_current();
//! api.reject_all(Some(Rejection::GrpcUnauthenticated));
//! api.reject_all(None);
//! assert_eq!(endpoint.request_count(), 0);
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

/// The path the token endpoint serves, as Cognito's domain does.
const TOKEN_PATH: &str = "/oauth2/token";
/// Largest request body the token endpoint reads (1 MiB); larger ones get `413`.
const TOKEN_BODY_LIMIT: usize = 1024 * 1024;
/// Largest request body the protected API reads (16 MiB); larger ones get `413`.
const API_BODY_LIMIT: usize = 16 * 1024 * 1024;
/// Pause after a failed `accept`, so a persistent error (such as too many open files) does not
/// turn the accept loop into a busy loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);
/// Length of opaque tokens.
const OPAQUE_TOKEN_LEN: usize = 40;
/// What `Debug` prints instead of a client secret.
const REDACTED: &str = "[redacted]";

const DEFAULT_CLIENT_ID: &str = "test-client-id";
const DEFAULT_CLIENT_SECRET: &str = "test-client-secret";
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// Locks a mutex, recovering the data if a panicking thread poisoned it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

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

/// A request the [`ProtectedApi`] received, with the answer it got, as
/// [`ProtectedApi::requests`] returns it.
#[derive(Clone, Debug)]
pub struct RecordedApiRequest {
    /// The request method.
    pub method: Method,
    /// The request URI (over HTTP/2 it includes scheme and authority).
    pub uri: Uri,
    /// The HTTP version the request came in with.
    pub version: Version,
    /// The request headers, as received.
    pub headers: HeaderMap,
    /// The bearer token of the `Authorization` header, if it had one.
    pub token: Option<String>,
    /// The request body; empty when it was larger than the 16 MiB limit or could not be read.
    pub body: Bytes,
    /// The HTTP status of the answer.
    pub status: StatusCode,
    /// The `grpc-status` of the answer: `Some(0)` or `Some(16)` for gRPC answers, `None` for
    /// plain HTTP ones.
    pub grpc_status: Option<u32>,
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
}

/// A user's session as the endpoint keeps it: only its current refresh token works.
struct UserSession {
    current: String,
    revoked: bool,
}

/// The state of a token endpoint, shared by its handle, its connections and the protected APIs
/// that validate its tokens.
struct EndpointState {
    client_id: String,
    client_secret: String,
    jwt: bool,
    omit_expires_in: bool,
    public_client: bool,
    rotate_refresh_tokens: bool,
    inner: Mutex<EndpointInner>,
}

impl EndpointState {
    fn is_valid(&self, token: &str) -> bool {
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

    fn revoke_last(&self) {
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
        let (current, revoked) = match inner.sessions.get(id) {
            Some(session) => (session.current.clone(), session.revoked),
            None => return oauth_error("invalid_grant"),
        };
        if revoked {
            return oauth_error("invalid_grant");
        }
        if refresh_token != Some(current.as_str()) {
            tracing::debug!(
                session = id,
                "an old refresh token was reused: revoking the session"
            );
            Self::revoke_session(&mut inner, id);
            return oauth_error("invalid_grant");
        }
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
                session.current = next.clone();
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

/// The bearer token of an `Authorization` header (scheme matched case-insensitively).
fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

fn header_starts_with(headers: &HeaderMap, name: HeaderName, prefix: &str) -> bool {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .get(..prefix.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
        })
}

/// How reading a request body ended.
enum BodyRead {
    Complete(Bytes),
    TooLarge,
    Failed,
}

async fn read_body(body: Incoming, limit: usize) -> BodyRead {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => BodyRead::Complete(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => BodyRead::TooLarge,
        Err(error) => {
            tracing::debug!(%error, "could not read a request body");
            BodyRead::Failed
        }
    }
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
    let (delay, canned) = {
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
        (inner.delay, canned)
    };

    match read {
        BodyRead::TooLarge => return empty_response(StatusCode::PAYLOAD_TOO_LARGE),
        BodyRead::Failed => return oauth_error("invalid_request"),
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
        None => answer_token_request(&state, &parts, &body),
    };
    if !total_delay.is_zero() {
        tokio::time::sleep(total_delay).await;
    }
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
// Server plumbing
// ---------------------------------------------------------------------------------------------

/// Aborts the accept loop (and with it every connection) when dropped.
struct ServerTask(AbortHandle);

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn bind_loopback() -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Spawns the accept loop of a server that answers every request with `handler`.
///
/// Connections speak HTTP/1.1 or HTTP/2 with prior knowledge, and run in a `JoinSet` owned by
/// the accept loop, so aborting the loop drops them all.
fn spawn_server<F, Fut, B>(listener: TcpListener, handler: F) -> ServerTask
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes, Error = Infallible> + Send + 'static,
{
    let task = tokio::spawn(async move {
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let mut connections = JoinSet::new();
        loop {
            // Reap connections that have finished.
            while connections.try_join_next().is_some() {}
            let stream = match listener.accept().await {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    tracing::debug!(%error, "test server: accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            let handler = handler.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                let answer = handler(request);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            connections.spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "test server: connection ended with an error");
                }
            });
        }
    });
    ServerTask(task.abort_handle())
}

// ---------------------------------------------------------------------------------------------
// TokenEndpoint
// ---------------------------------------------------------------------------------------------

struct EndpointHandle {
    state: Arc<EndpointState>,
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
///    [`rotate_refresh_tokens`](TokenEndpointBuilder::rotate_refresh_tokens)), else `400
///    {"error":"invalid_grant"}`.
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
    handle: Arc<EndpointHandle>,
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

// ---------------------------------------------------------------------------------------------
// ProtectedApi
// ---------------------------------------------------------------------------------------------

/// How [`ProtectedApi::reject_all`] rejects every request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// HTTP `401 Unauthorized` with `www-authenticate: Bearer error="invalid_token"`.
    Unauthorized,
    /// A gRPC trailers-only answer: HTTP `200`, `content-type: application/grpc`,
    /// `grpc-status: 16` (`UNAUTHENTICATED`) and `grpc-message: invalid token`. It is given to
    /// any request; [`CognitoAuth`](crate::CognitoAuth) takes it for a rejection of the token in
    /// the answer to a `POST` only, as every gRPC call is one.
    GrpcUnauthenticated,
}

/// The response body of the protected API: at most one data frame, then optional trailers.
struct ApiBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl ApiBody {
    fn empty() -> Self {
        ApiBody {
            data: None,
            trailers: None,
        }
    }

    fn new(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        ApiBody {
            data: (!data.is_empty()).then_some(data),
            trailers,
        }
    }
}

impl Body for ApiBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let len = self.data.as_ref().map_or(0, |d| d.len() as u64);
        if self.trailers.is_none() {
            SizeHint::with_exact(len)
        } else {
            let mut hint = SizeHint::new();
            hint.set_lower(len);
            hint
        }
    }
}

struct ApiInner {
    reject_all: Option<Rejection>,
    requests: Vec<RecordedApiRequest>,
    rejected: usize,
}

struct ApiState {
    endpoint: Arc<EndpointState>,
    inner: Mutex<ApiInner>,
}

struct ApiHandle {
    state: Arc<ApiState>,
    addr: SocketAddr,
    _server: ServerTask,
}

/// A protected API on `127.0.0.1` that accepts only live tokens of one [`TokenEndpoint`].
///
/// It serves any path and method over HTTP/1.1 and HTTP/2 with prior knowledge (h2c) on the
/// same port. The bearer token of the `Authorization` header (scheme matched
/// case-insensitively) is accepted when [`TokenEndpoint::is_valid`] holds for it and
/// [`reject_all`](ProtectedApi::reject_all) is off. Requests whose `content-type` starts with
/// `application/grpc` are gRPC requests, whatever their method (a real gRPC call is a `POST`,
/// and [`CognitoAuth`](crate::CognitoAuth) looks for `grpc-status` in the answers to `POST`s
/// only).
///
/// - Accepted: `200`, echoing the request body. Plain requests get the request's
///   `content-type` back; gRPC requests get `content-type: application/grpc` and the trailer
///   `grpc-status: 0`.
/// - Rejected: `401` with `www-authenticate: Bearer error="invalid_token"` and an empty body;
///   gRPC requests get a trailers-only answer instead: `200` with `content-type:
///   application/grpc`, `grpc-status: 16` and `grpc-message: invalid token`.
/// - Bodies over 16 MiB get `413`.
///
/// Every request is recorded with the answer it got ([`requests`](ProtectedApi::requests)).
/// The handle is cheap to clone; the server stops when the last clone is dropped. The endpoint's
/// token registry stays shared with the API even if the endpoint's own server is stopped.
#[derive(Clone)]
pub struct ProtectedApi {
    handle: Arc<ApiHandle>,
}

impl fmt::Debug for ProtectedApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = lock(&self.handle.state.inner);
        f.debug_struct("ProtectedApi")
            .field("addr", &self.handle.addr)
            .field("reject_all", &inner.reject_all)
            .field("request_count", &inner.requests.len())
            .field("rejected_count", &inner.rejected)
            .finish()
    }
}

impl ProtectedApi {
    /// Binds an ephemeral port of `127.0.0.1` and starts an API that validates tokens against
    /// `endpoint`'s registry of issued tokens.
    ///
    /// Must be called within a Tokio runtime; the server runs on it.
    pub async fn start(endpoint: &TokenEndpoint) -> std::io::Result<ProtectedApi> {
        let (listener, addr) = bind_loopback().await?;
        let state = Arc::new(ApiState {
            endpoint: Arc::clone(&endpoint.handle.state),
            inner: Mutex::new(ApiInner {
                reject_all: None,
                requests: Vec::new(),
                rejected: 0,
            }),
        });
        let server_state = Arc::clone(&state);
        let server = spawn_server(listener, move |request| {
            serve_api_request(Arc::clone(&server_state), request)
        });
        Ok(ProtectedApi {
            handle: Arc::new(ApiHandle {
                state,
                addr,
                _server: server,
            }),
        })
    }

    /// The base URL, `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.handle.addr)
    }

    /// The address the API listens on.
    pub fn addr(&self) -> SocketAddr {
        self.handle.addr
    }

    /// With `Some`, every request is rejected that way, whatever its token; with `None`, tokens
    /// decide again.
    pub fn reject_all(&self, how: Option<Rejection>) {
        lock(&self.handle.state.inner).reject_all = how;
    }

    /// How many requests it has received, whatever their outcome.
    pub fn request_count(&self) -> usize {
        lock(&self.handle.state.inner).requests.len()
    }

    /// How many requests it has rejected (HTTP `401` or gRPC `UNAUTHENTICATED`).
    pub fn rejected_count(&self) -> usize {
        lock(&self.handle.state.inner).rejected
    }

    /// Every request it has received so far, with the answers, in the order they were answered.
    pub fn requests(&self) -> Vec<RecordedApiRequest> {
        lock(&self.handle.state.inner).requests.clone()
    }

    /// Revokes the token its endpoint issued most recently, as if the identity provider had
    /// invalidated it early; the next request with it is rejected.
    pub fn revoke_current(&self) {
        self.handle.state.endpoint.revoke_last();
    }
}

/// What the API answers a request with.
enum ApiOutcome {
    Accepted,
    Unauthorized,
    GrpcUnauthenticated,
    TooLarge,
    BadBody,
}

async fn serve_api_request(state: Arc<ApiState>, request: Request<Incoming>) -> Response<ApiBody> {
    let (parts, body) = request.into_parts();
    let token = bearer_token(&parts.headers);
    let grpc = header_starts_with(&parts.headers, CONTENT_TYPE, "application/grpc");
    let read = read_body(body, API_BODY_LIMIT).await;

    let reject_all = lock(&state.inner).reject_all;
    let (outcome, body) = match read {
        BodyRead::TooLarge => (ApiOutcome::TooLarge, Bytes::new()),
        BodyRead::Failed => (ApiOutcome::BadBody, Bytes::new()),
        BodyRead::Complete(body) => {
            let outcome = match reject_all {
                Some(Rejection::Unauthorized) => ApiOutcome::Unauthorized,
                Some(Rejection::GrpcUnauthenticated) => ApiOutcome::GrpcUnauthenticated,
                None if token.as_deref().is_some_and(|t| state.endpoint.is_valid(t)) => {
                    ApiOutcome::Accepted
                }
                None if grpc => ApiOutcome::GrpcUnauthenticated,
                None => ApiOutcome::Unauthorized,
            };
            (outcome, body)
        }
    };

    let (response, grpc_status, rejected) = match outcome {
        ApiOutcome::Accepted if grpc => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let mut response = Response::new(ApiBody::new(body.clone(), Some(trailers)));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            (response, Some(0), false)
        }
        ApiOutcome::Accepted => {
            let mut response = Response::new(ApiBody::new(body.clone(), None));
            if let Some(content_type) = parts.headers.get(CONTENT_TYPE) {
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, content_type.clone());
            }
            (response, None, false)
        }
        ApiOutcome::Unauthorized => {
            let mut response = Response::new(ApiBody::empty());
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer error="invalid_token""#),
            );
            (response, None, true)
        }
        ApiOutcome::GrpcUnauthenticated => {
            let mut response = Response::new(ApiBody::empty());
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert("grpc-status", HeaderValue::from_static("16"));
            headers.insert("grpc-message", HeaderValue::from_static("invalid token"));
            (response, Some(16), true)
        }
        ApiOutcome::TooLarge => {
            let mut response = Response::new(ApiBody::empty());
            *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            (response, None, false)
        }
        ApiOutcome::BadBody => {
            let mut response = Response::new(ApiBody::empty());
            *response.status_mut() = StatusCode::BAD_REQUEST;
            (response, None, false)
        }
    };

    let status = response.status();
    tracing::debug!(%status, ?grpc_status, "protected API answered");
    let mut inner = lock(&state.inner);
    if rejected {
        inner.rejected += 1;
    }
    inner.requests.push(RecordedApiRequest {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        token,
        body,
        status,
        grpc_status,
    });
    drop(inner);
    response
}

// ---------------------------------------------------------------------------------------------
// RedisServer
// ---------------------------------------------------------------------------------------------

/// How to install `redis-server`, in the error [`RedisServer::start`] returns without it.
const REDIS_NOT_FOUND: &str =
    "redis-server not found: install it with `apt-get install -y redis-server`";
/// How long `redis-server` gets to accept connections.
const REDIS_READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How many free ports are tried when another process takes the one picked.
const REDIS_PORT_ATTEMPTS: usize = 5;

/// A throwaway `redis-server` on `127.0.0.1`, for tests of a shared token store.
///
/// [`start`](RedisServer::start) runs `redis-server` from `PATH` (Debian package
/// `redis-server`) on a free port of `127.0.0.1`, with protected mode on, no persistence
/// (`--save "" --appendonly no`) and a temporary working directory, and waits until it answers
/// `PING`. The process is killed, and the directory removed, when the handle is dropped; a test
/// that panics leaves no server behind. [`stop`](RedisServer::stop) and
/// [`restart`](RedisServer::restart) (same port, empty data) simulate an outage.
///
/// Without `redis-server` on `PATH`, `start` fails with an error that says how to install it,
/// so that a test needing Redis fails loudly instead of skipping.
///
/// [`start_tls`](RedisServer::start_tls) also listens for TLS on a second port, with the
/// certificate you give it (from a throwaway authority of the test's own), for `rediss://`.
///
/// ```no_run
/// use tower_cognito_auth::testing::RedisServer;
///
/// # fn main() -> std::io::Result<()> {
/// let mut redis = RedisServer::start()?;
/// assert!(redis.url().starts_with("redis://127.0.0.1:"));
/// redis.stop(); // Redis is down: connections are refused
/// redis.restart()?; // and back, on the same port, empty
/// # Ok(())
/// # }
/// ```
pub struct RedisServer {
    child: Option<std::process::Child>,
    addr: SocketAddr,
    dir: std::path::PathBuf,
    /// The TLS port, when started with TLS (its certificate and key are in `dir`).
    tls_port: Option<u16>,
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer")
            .field("addr", &self.addr)
            .field("tls_port", &self.tls_port)
            .field("running", &self.child.is_some())
            .finish()
    }
}

/// A port the system says is free on `127.0.0.1`, with the listener that holds it until the
/// caller lets go (someone may take it after that, before Redis binds it).
fn free_port() -> std::io::Result<(u16, std::net::TcpListener)> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok((listener.local_addr()?.port(), listener))
}

impl RedisServer {
    /// Starts `redis-server` on a free port of `127.0.0.1` and waits (at most 5 seconds) until
    /// it answers `PING`. It blocks the calling thread meanwhile (usually a few milliseconds),
    /// needs no runtime, and works under Tokio's paused clock.
    ///
    /// # Errors
    ///
    /// An [`std::io::Error`] of kind `NotFound` saying "redis-server not found: install it with
    /// `apt-get install -y redis-server`" when `redis-server` is not on `PATH`; another error
    /// when no temporary directory can be made, or the server exits or does not answer in time
    /// (its log is quoted).
    pub fn start() -> std::io::Result<RedisServer> {
        Self::start_with(None)
    }

    /// As [`start`](Self::start), and also listens for TLS on a second free port of
    /// `127.0.0.1` ([`tls_url`](Self::tls_url)), presenting `cert_chain_pem` (the server's
    /// certificate first, for `127.0.0.1`) with `key_pem`. Clients are not asked for a
    /// certificate. The plain port stays open, for `PING` and for tests that want both.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start); also when the files cannot be written, or `redis-server` was
    /// built without TLS or rejects the certificate (its log is quoted).
    pub fn start_tls(cert_chain_pem: &str, key_pem: &str) -> std::io::Result<RedisServer> {
        Self::start_with(Some((cert_chain_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> std::io::Result<RedisServer> {
        let dir = std::env::temp_dir().join(format!(
            "tower-cognito-auth-redis-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir)?;
        let mut server = RedisServer {
            child: None,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            dir,
            tls_port: None,
        };
        if let Some((cert, key)) = tls {
            std::fs::write(server.dir.join("tls.crt"), cert)?;
            std::fs::write(server.dir.join("tls.key"), key)?;
        }
        let mut last_error = None;
        for _ in 0..REDIS_PORT_ATTEMPTS {
            // Redis refuses `--port 0`: take a port the system says is free, and try again if
            // someone else takes it before Redis binds it.
            // Both ports are held until both are picked, so that they differ.
            let (port, plain) = free_port()?;
            let tls_port = tls.map(|_| free_port()).transpose()?;
            server.addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            server.tls_port = tls_port.map(|(port, held)| {
                drop(held);
                port
            });
            drop(plain);
            match server.launch() {
                Ok(()) => return Ok(server),
                // Not there, or not built for TLS: another port will not help.
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::Unsupported
                    ) =>
                {
                    return Err(error);
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| std::io::Error::other("redis-server did not start")))
    }

    /// `rediss://127.0.0.1:TLS_PORT` for a server started by [`start_tls`](Self::start_tls).
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port
            .map(|port| format!("rediss://127.0.0.1:{port}"))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// The address the server listens on (also while it is stopped).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's working directory, where `SAVE` writes `dump.rdb`.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Kills the server (`SIGKILL`) and waits for it to exit; connections to it are refused
    /// from then on. Does nothing when it is stopped already.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server if it runs and starts it again on the same port (ports, with TLS),
    /// empty, waiting until it answers `PING`.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start); also when another process took the port meanwhile.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        self.launch()
    }

    /// Runs `redis-server` on `self.addr` and waits for `PONG`.
    fn launch(&mut self) -> std::io::Result<()> {
        let log = self.dir.join("redis.log");
        let mut command = std::process::Command::new("redis-server");
        if let Some(port) = self.tls_port {
            command
                .args(["--tls-port", &port.to_string()])
                .arg("--tls-cert-file")
                .arg(self.dir.join("tls.crt"))
                .arg("--tls-key-file")
                .arg(self.dir.join("tls.key"))
                .args(["--tls-auth-clients", "no"]);
        }
        let spawned = command
            .args(["--port", &self.addr.port().to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--protected-mode", "yes"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            // Arguments are checked before the log file is open: their errors go here.
            .stderr(std::fs::File::create(self.dir.join("redis.stderr"))?)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    REDIS_NOT_FOUND,
                ));
            }
            Err(error) => return Err(error),
        };
        self.child = Some(child);
        let deadline = std::time::Instant::now() + REDIS_READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                let log = std::fs::read_to_string(&log).unwrap_or_default()
                    + &std::fs::read_to_string(self.dir.join("redis.stderr")).unwrap_or_default();
                let kind = if self.tls_port.is_some() && log.contains("Bad directive") {
                    // A redis-server built without TLS does not know `tls-port`.
                    std::io::ErrorKind::Unsupported
                } else {
                    std::io::ErrorKind::Other
                };
                return Err(std::io::Error::new(
                    kind,
                    format!(
                        "redis-server exited ({status}) before accepting connections: {}",
                        log.trim()
                    ),
                ));
            }
            if ping(self.addr) {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                self.stop();
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "redis-server did not answer PING on {} within {REDIS_READY_TIMEOUT:?}",
                        self.addr
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Whether a Redis server at `addr` answers `PING` with `+PONG`.
fn ping(addr: SocketAddr) -> bool {
    use std::io::{Read as _, Write as _};
    let attempt = || -> std::io::Result<bool> {
        let timeout = Duration::from_millis(500);
        let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.write_all(b"PING\r\n")?;
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply)?;
        Ok(&reply == b"+PONG\r\n")
    };
    matches!(attempt(), Ok(true))
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
