//! A Cognito-compatible token endpoint and a protected API, as real HTTP servers on 127.0.0.1
//! (feature `test-util`).
//!
//! The crate's own tests, its demo and your tests share them: they are a supported part of the
//! API. [`TokenEndpoint`] answers the client_credentials grant as Cognito's `/oauth2/token`
//! does (HTTP Basic or form credentials, `invalid_client` for wrong ones, opaque or JWT-shaped
//! tokens of a chosen lifetime), records every request, and can be told to be slow or to answer
//! with any status, header and body. [`ProtectedApi`] accepts only live tokens that its endpoint
//! issued, on its own (Tokio) clock, echoes request bodies, and can revoke tokens or reject
//! everything, as HTTP 401 or as a gRPC trailers-only `UNAUTHENTICATED`.
//!
//! Both speak HTTP/1.1 (the API HTTP/2 as well), listen on an ephemeral port of 127.0.0.1, and
//! stop when the last handle is dropped. Delays use Tokio's clock, so paused-clock tests drive
//! them.
//!
//! ```
//! use std::time::Duration;
//! use http::StatusCode;
//! use tower_cognito_auth::testing::{ProtectedApi, Reply, TokenEndpoint};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let endpoint = TokenEndpoint::builder()
//!     .lifetime(Duration::from_secs(60))
//!     .start()
//!     .await?;
//! let api = ProtectedApi::start(&endpoint).await?;
//! // The next token request is rate limited, then they succeed again.
//! endpoint.push_reply(Reply::status(StatusCode::TOO_MANY_REQUESTS).header("retry-after", "1"));
//! println!("token URL {}, API {}", endpoint.token_url(), api.url());
//! assert_eq!(endpoint.request_count(), 0);
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body::{Body, Frame};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Aborts the accept loop (and with it every connection) when the last handle drops.
struct Server {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `handle` on 127.0.0.1:0, HTTP/1.1 and HTTP/2 (prior knowledge) on one port.
async fn serve<F, Fut>(handle: F) -> std::io::Result<Server>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<ReplyBody>> + Send + 'static,
{
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::debug!(%error, "test server: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            // Reap finished connections so the set does not grow.
            while connections.try_join_next().is_some() {}
            let handle = handle.clone();
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = handle(request);
                    async move { Ok::<_, Infallible>(response.await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(error) = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%error, "test server: connection ended with an error");
                }
            });
        }
    });
    Ok(Server { addr, task })
}

/// The body of the test servers' answers: data, then optional trailers.
#[derive(Debug)]
pub struct ReplyBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl ReplyBody {
    fn new(data: Bytes) -> Self {
        Self {
            data: (!data.is_empty()).then_some(data),
            trailers: None,
        }
    }
}

impl Body for ReplyBody {
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

    fn size_hint(&self) -> http_body::SizeHint {
        match (&self.data, &self.trailers) {
            (data, None) => {
                http_body::SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            _ => http_body::SizeHint::default(),
        }
    }
}

/// A canned answer for the token endpoint: status, headers, body, and an optional delay.
#[derive(Clone, Debug)]
pub struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    delay: Duration,
}

impl Reply {
    /// An answer with this status and an empty body.
    pub fn status(status: StatusCode) -> Reply {
        Reply {
            status,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            delay: Duration::ZERO,
        }
    }

    /// An OAuth 2.0 error answer, `{"error": "<error>"}`, as Cognito sends it.
    pub fn oauth_error(status: StatusCode, error: &str) -> Reply {
        Reply::status(status).json(serde_json::json!({ "error": error }))
    }

    /// Adds a header. An invalid value is ignored (this is test code: it must not panic).
    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        if let Ok(value) = HeaderValue::from_str(value) {
            self.headers.append(HeaderName::from_static(name), value);
        }
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets a JSON body and `content-type: application/json`.
    pub fn json(mut self, value: serde_json::Value) -> Self {
        self.body = Bytes::from(value.to_string());
        self.headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        self
    }

    /// Waits this long (on Tokio's clock) before answering.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    fn into_response(self) -> Response<ReplyBody> {
        let mut response = Response::new(ReplyBody::new(self.body));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        response
    }
}

/// A request the token endpoint received.
#[derive(Clone, Debug)]
pub struct RecordedTokenRequest {
    /// Its method.
    pub method: Method,
    /// Its path.
    pub path: String,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
}

impl RecordedTokenRequest {
    /// The body as `application/x-www-form-urlencoded` pairs, decoded.
    pub fn form(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }

    /// One form field, decoded.
    pub fn form_value(&self, key: &str) -> Option<String> {
        form_urlencoded::parse(&self.body)
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }

    /// The id and secret of an `Authorization: Basic` header, decoded as RFC 6749 §2.3.1 says
    /// (base64, split at the first `:`, each part form-url-decoded).
    pub fn basic_credentials(&self) -> Option<(String, String)> {
        basic_credentials(&self.headers)
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let unescape = |s: &str| -> String {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((unescape(id), unescape(secret)))
}

/// The tokens an endpoint issued, shared with the APIs that check them.
#[derive(Default)]
struct Registry {
    /// token → when it expires, on Tokio's clock.
    live: HashMap<String, Instant>,
    last: Option<String>,
}

struct EndpointState {
    client_id: String,
    client_secret: String,
    jwt: bool,
    omit_expires_in: bool,
    lifetime: Mutex<Duration>,
    delay: Mutex<Duration>,
    queue: Mutex<VecDeque<Reply>>,
    fail_with: Mutex<Option<Reply>>,
    requests: Mutex<Vec<RecordedTokenRequest>>,
    request_count: AtomicUsize,
    tokens_issued: AtomicUsize,
    registry: Mutex<Registry>,
}

/// A Cognito-compatible token endpoint on 127.0.0.1. Cloning is cheap; the server stops when
/// the last clone drops. See the [module docs](self).
#[derive(Clone)]
pub struct TokenEndpoint {
    state: Arc<EndpointState>,
    server: Arc<Server>,
}

impl fmt::Debug for TokenEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEndpoint")
            .field("addr", &self.server.addr)
            .field("client_id", &self.state.client_id)
            .field("client_secret", &"[redacted]")
            .field("request_count", &self.request_count())
            .finish()
    }
}

/// Builds a [`TokenEndpoint`].
#[derive(Clone)]
pub struct TokenEndpointBuilder {
    client_id: String,
    client_secret: String,
    lifetime: Duration,
    jwt: bool,
    omit_expires_in: bool,
    delay: Duration,
}

impl fmt::Debug for TokenEndpointBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEndpointBuilder")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("lifetime", &self.lifetime)
            .field("jwt", &self.jwt)
            .finish_non_exhaustive()
    }
}

impl Default for TokenEndpointBuilder {
    fn default() -> Self {
        Self {
            client_id: "test-client-id".into(),
            client_secret: "test-client-secret".into(),
            lifetime: Duration::from_secs(3600),
            jwt: false,
            omit_expires_in: false,
            delay: Duration::ZERO,
        }
    }
}

impl TokenEndpointBuilder {
    /// The client id it accepts. Default is `test-client-id`.
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = client_id.into();
        self
    }

    /// The client secret it accepts. Default is `test-client-secret`.
    pub fn client_secret(mut self, client_secret: impl Into<String>) -> Self {
        self.client_secret = client_secret.into();
        self
    }

    /// The lifetime of the tokens it issues (`expires_in`, whole seconds, at least 1).
    /// Default is 3600 seconds.
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// Issue JWT-shaped tokens (header, claims with `exp`, a random signature) instead of
    /// opaque ones. Default is off.
    pub fn jwt(mut self, jwt: bool) -> Self {
        self.jwt = jwt;
        self
    }

    /// Leave `expires_in` out of the answers, so that clients must read the JWT's `exp`.
    /// Default is off.
    pub fn omit_expires_in(mut self, omit: bool) -> Self {
        self.omit_expires_in = omit;
        self
    }

    /// Wait this long before every answer. Default is none.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Starts the endpoint on an ephemeral port of 127.0.0.1.
    ///
    /// # Errors
    ///
    /// When the port cannot be bound.
    pub async fn start(self) -> std::io::Result<TokenEndpoint> {
        let state = Arc::new(EndpointState {
            client_id: self.client_id,
            client_secret: self.client_secret,
            jwt: self.jwt,
            omit_expires_in: self.omit_expires_in,
            lifetime: Mutex::new(self.lifetime),
            delay: Mutex::new(self.delay),
            queue: Mutex::default(),
            fail_with: Mutex::default(),
            requests: Mutex::default(),
            request_count: AtomicUsize::new(0),
            tokens_issued: AtomicUsize::new(0),
            registry: Mutex::default(),
        });
        let handler_state = Arc::clone(&state);
        let server = serve(move |request| {
            let state = Arc::clone(&handler_state);
            async move { state.answer(request).await }
        })
        .await?;
        Ok(TokenEndpoint {
            state,
            server: Arc::new(server),
        })
    }
}

impl TokenEndpoint {
    /// Starts an endpoint with the defaults of [`TokenEndpointBuilder`].
    ///
    /// # Errors
    ///
    /// When the port cannot be bound.
    pub async fn start() -> std::io::Result<TokenEndpoint> {
        Self::builder().start().await
    }

    /// A builder.
    pub fn builder() -> TokenEndpointBuilder {
        TokenEndpointBuilder::default()
    }

    /// `http://127.0.0.1:PORT/oauth2/token`.
    pub fn token_url(&self) -> String {
        format!("http://{}/oauth2/token", self.server.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// The client id it accepts.
    pub fn client_id(&self) -> &str {
        &self.state.client_id
    }

    /// The client secret it accepts.
    pub fn client_secret(&self) -> &str {
        &self.state.client_secret
    }

    /// How many requests it received, whatever it answered.
    pub fn request_count(&self) -> usize {
        self.state.request_count.load(Ordering::SeqCst)
    }

    /// How many tokens it issued (successful answers).
    pub fn tokens_issued(&self) -> usize {
        self.state.tokens_issued.load(Ordering::SeqCst)
    }

    /// Every request it received, in order.
    pub fn requests(&self) -> Vec<RecordedTokenRequest> {
        lock(&self.state.requests).clone()
    }

    /// Answers the next request with `reply`, once. Replies queue up in order.
    pub fn push_reply(&self, reply: Reply) {
        lock(&self.state.queue).push_back(reply);
    }

    /// With `Some`, answers every request (once the queue is empty) with a copy of `reply`;
    /// `None` returns to normal.
    pub fn fail_with(&self, reply: Option<Reply>) {
        *lock(&self.state.fail_with) = reply;
    }

    /// Waits this long before every answer, from now on.
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.state.delay) = delay;
    }

    /// The lifetime of tokens issued from now on.
    pub fn set_lifetime(&self, lifetime: Duration) {
        *lock(&self.state.lifetime) = lifetime;
    }

    /// Whether `token` was issued here, is not revoked, and has not expired on Tokio's clock.
    pub fn is_valid(&self, token: &str) -> bool {
        self.state.is_valid(token)
    }

    /// Revokes one token.
    pub fn revoke(&self, token: &str) {
        lock(&self.state.registry).live.remove(token);
    }

    /// Revokes every token issued so far.
    pub fn revoke_all(&self) {
        lock(&self.state.registry).live.clear();
    }

    /// The most recently issued token.
    pub fn last_token(&self) -> Option<String> {
        lock(&self.state.registry).last.clone()
    }
}

impl EndpointState {
    fn is_valid(&self, token: &str) -> bool {
        lock(&self.registry)
            .live
            .get(token)
            .is_some_and(|expires_at| Instant::now() < *expires_at)
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<ReplyBody> {
        self.request_count.fetch_add(1, Ordering::SeqCst);
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, 1024 * 1024).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return Reply::status(StatusCode::PAYLOAD_TOO_LARGE).into_response(),
        };
        let recorded = RecordedTokenRequest {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            headers: parts.headers,
            body,
        };
        lock(&self.requests).push(recorded.clone());

        let delay = *lock(&self.delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let canned = lock(&self.queue)
            .pop_front()
            .or_else(|| lock(&self.fail_with).clone());
        if let Some(reply) = canned {
            if !reply.delay.is_zero() {
                tokio::time::sleep(reply.delay).await;
            }
            return reply.into_response();
        }
        self.grant(&recorded).into_response()
    }

    fn grant(&self, request: &RecordedTokenRequest) -> Reply {
        let invalid = |error: &str| Reply::oauth_error(StatusCode::BAD_REQUEST, error);
        if request.path != "/oauth2/token" {
            return Reply::status(StatusCode::NOT_FOUND);
        }
        if request.method != Method::POST {
            return Reply::status(StatusCode::METHOD_NOT_ALLOWED);
        }
        let form_content = request
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if !form_content {
            return invalid("invalid_request");
        }
        if request.form_value("grant_type").as_deref() != Some("client_credentials") {
            return invalid("unsupported_grant_type");
        }
        let credentials = if request.headers.contains_key(AUTHORIZATION) {
            request.basic_credentials()
        } else {
            request
                .form_value("client_id")
                .zip(request.form_value("client_secret"))
        };
        let authenticated = credentials
            .is_some_and(|(id, secret)| id == self.client_id && secret == self.client_secret);
        if !authenticated {
            return invalid("invalid_client");
        }
        let lifetime = (*lock(&self.lifetime)).max(Duration::from_secs(1));
        let scope = request.form_value("scope").unwrap_or_default();
        let token = if self.jwt {
            self.jwt_token(lifetime, &scope)
        } else {
            fastrand_alnum(40)
        };
        {
            let mut registry = lock(&self.registry);
            registry
                .live
                .insert(token.clone(), Instant::now() + lifetime);
            registry.last = Some(token.clone());
        }
        self.tokens_issued.fetch_add(1, Ordering::SeqCst);
        let mut answer = serde_json::json!({ "access_token": token, "token_type": "Bearer" });
        if !self.omit_expires_in {
            answer["expires_in"] = lifetime.as_secs().into();
        }
        Reply::status(StatusCode::OK).json(answer)
    }

    fn jwt_token(&self, lifetime: Duration, scope: &str) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let header = b64.encode(br#"{"alg":"RS256","kid":"test"}"#);
        let claims = serde_json::json!({
            "sub": self.client_id,
            "token_use": "access",
            "scope": scope,
            "iat": now,
            "exp": now + lifetime.as_secs(),
            "jti": fastrand_alnum(16),
        });
        let signature: Vec<u8> = (0..32).map(|_| fastrand::u8(..)).collect();
        format!(
            "{header}.{}.{}",
            b64.encode(claims.to_string()),
            b64.encode(signature)
        )
    }
}

fn fastrand_alnum(len: usize) -> String {
    (0..len).map(|_| fastrand::alphanumeric()).collect()
}

/// How [`ProtectedApi::reject_all`] turns requests away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// HTTP `401 Unauthorized` with `WWW-Authenticate: Bearer error="invalid_token"`.
    Unauthorized,
    /// A gRPC trailers-only answer: HTTP 200 with `grpc-status: 16` in the headers.
    GrpcUnauthenticated,
}

/// A request the protected API received, and what it answered.
#[derive(Clone, Debug)]
pub struct RecordedApiRequest {
    /// Its method.
    pub method: Method,
    /// Its URI.
    pub uri: Uri,
    /// Its HTTP version.
    pub version: Version,
    /// Its headers.
    pub headers: HeaderMap,
    /// The bearer token it carried.
    pub token: Option<String>,
    /// Its body.
    pub body: Bytes,
    /// The status the API answered.
    pub status: StatusCode,
    /// The gRPC status the API answered, for gRPC requests.
    pub grpc_status: Option<u32>,
}

struct ApiState {
    endpoint: Arc<EndpointState>,
    reject_all: Mutex<Option<Rejection>>,
    requests: Mutex<Vec<RecordedApiRequest>>,
    request_count: AtomicUsize,
    rejected_count: AtomicUsize,
}

/// An API that accepts only live tokens of one [`TokenEndpoint`]. Cloning is cheap; the server
/// stops when the last clone drops. See the [module docs](self).
#[derive(Clone)]
pub struct ProtectedApi {
    state: Arc<ApiState>,
    server: Arc<Server>,
}

impl fmt::Debug for ProtectedApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProtectedApi")
            .field("addr", &self.server.addr)
            .field("request_count", &self.request_count())
            .finish()
    }
}

impl ProtectedApi {
    /// Starts the API on an ephemeral port of 127.0.0.1, trusting the tokens of `endpoint`.
    ///
    /// # Errors
    ///
    /// When the port cannot be bound.
    pub async fn start(endpoint: &TokenEndpoint) -> std::io::Result<ProtectedApi> {
        let state = Arc::new(ApiState {
            endpoint: Arc::clone(&endpoint.state),
            reject_all: Mutex::default(),
            requests: Mutex::default(),
            request_count: AtomicUsize::new(0),
            rejected_count: AtomicUsize::new(0),
        });
        let handler_state = Arc::clone(&state);
        let server = serve(move |request| {
            let state = Arc::clone(&handler_state);
            async move { state.answer(request).await }
        })
        .await?;
        Ok(ProtectedApi {
            state,
            server: Arc::new(server),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// With `Some`, rejects every request that way, whatever its token; `None` returns to
    /// checking tokens.
    pub fn reject_all(&self, how: Option<Rejection>) {
        *lock(&self.state.reject_all) = how;
    }

    /// How many requests it received.
    pub fn request_count(&self) -> usize {
        self.state.request_count.load(Ordering::SeqCst)
    }

    /// How many requests it rejected.
    pub fn rejected_count(&self) -> usize {
        self.state.rejected_count.load(Ordering::SeqCst)
    }

    /// Every request it received, in order, with its answer.
    pub fn requests(&self) -> Vec<RecordedApiRequest> {
        lock(&self.state.requests).clone()
    }

    /// Revokes the endpoint's most recently issued token.
    pub fn revoke_current(&self) {
        let mut registry = lock(&self.state.endpoint.registry);
        if let Some(last) = registry.last.clone() {
            registry.live.remove(&last);
        }
    }
}

impl ApiState {
    async fn answer(&self, request: Request<Incoming>) -> Response<ReplyBody> {
        self.request_count.fetch_add(1, Ordering::SeqCst);
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, 16 * 1024 * 1024).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return Reply::status(StatusCode::PAYLOAD_TOO_LARGE).into_response(),
        };
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim().to_owned());
        let content_type = parts.headers.get(CONTENT_TYPE).cloned();
        let grpc = content_type
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        let forced = *lock(&self.reject_all);
        let valid = forced.is_none() && token.as_deref().is_some_and(|t| self.endpoint.is_valid(t));

        let (response, grpc_status) = if valid && grpc {
            let mut response = Response::new(ReplyBody {
                data: Some(body.clone()),
                trailers: Some(HeaderMap::from_iter([(
                    HeaderName::from_static("grpc-status"),
                    HeaderValue::from_static("0"),
                )])),
            });
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            (response, Some(0))
        } else if valid {
            let mut response = Response::new(ReplyBody::new(body.clone()));
            if let Some(content_type) = content_type {
                response.headers_mut().insert(CONTENT_TYPE, content_type);
            }
            (response, None)
        } else if forced == Some(Rejection::GrpcUnauthenticated) || (grpc && forced.is_none()) {
            self.rejected_count.fetch_add(1, Ordering::SeqCst);
            let mut response = Response::new(ReplyBody::new(Bytes::new()));
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert("grpc-status", HeaderValue::from_static("16"));
            headers.insert("grpc-message", HeaderValue::from_static("invalid token"));
            (response, Some(16))
        } else {
            self.rejected_count.fetch_add(1, Ordering::SeqCst);
            let mut response = Reply::status(StatusCode::UNAUTHORIZED)
                .header("www-authenticate", r#"Bearer error="invalid_token""#)
                .into_response();
            if grpc {
                // A gRPC client told to expect 401s: still say what happened.
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            }
            (response, None)
        };
        lock(&self.requests).push(RecordedApiRequest {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
            token,
            body,
            status: response.status(),
            grpc_status,
        });
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_decode() {
        let mut headers = HeaderMap::new();
        let value = base64::engine::general_purpose::STANDARD.encode("a%3Ab:s%2Bx");
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {value}")).unwrap(),
        );
        assert_eq!(
            basic_credentials(&headers),
            Some(("a:b".into(), "s+x".into()))
        );
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert_eq!(basic_credentials(&headers), None);
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(basic_credentials(&headers), None);
    }
}
