//! The protected API: [`ProtectedApi`], how it rejects ([`Rejection`]), the requests it records
//! and its response body.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::server::{
    BodyRead, ServerTask, bind_loopback, header_starts_with, lock, read_body, spawn_server,
};
use super::token_endpoint::{EndpointState, TokenEndpoint};

/// Largest request body the protected API reads (16 MiB); larger ones get `413`.
const API_BODY_LIMIT: usize = 16 * 1024 * 1024;

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

/// The bearer token of an `Authorization` header (scheme matched case-insensitively).
fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

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
