//! Canned replies, recorded requests, and the helpers that read a request and write an answer.

use super::*;

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
/// - `Reply::cognito_error(StatusCode::BAD_REQUEST, "TooManyRequestsException", "Rate exceeded")`
/// - `Reply::status(StatusCode::OK).json(serde_json::json!({"access_token": "x"}))`
#[derive(Clone, Debug)]
pub struct Reply {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
    pub(super) delay: Duration,
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

    /// An error of Cognito's user-pool API, as Cognito sends it: this status (400 for the
    /// client's errors, 500 for `InternalErrorException`), `content-type:
    /// application/x-amz-json-1.1` and the body `{"__type": error_type, "message": message}`,
    /// e.g. `Reply::cognito_error(StatusCode::BAD_REQUEST, "TooManyRequestsException", "Rate
    /// exceeded")`.
    pub fn cognito_error(status: StatusCode, error_type: &str, message: &str) -> Reply {
        let mut reply = Reply::status(status)
            .json(serde_json::json!({ "__type": error_type, "message": message }));
        reply.headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(super::user_pool_api::AMZ_JSON),
        );
        reply
    }

    pub(super) fn into_response(self) -> Response<Full<Bytes>> {
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

pub(super) fn json_response(
    status: StatusCode,
    value: &serde_json::Value,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub(super) fn empty_response(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

pub(super) fn oauth_error(error: &str) -> Response<Full<Bytes>> {
    json_response(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({ "error": error }),
    )
}

/// Decodes one `application/x-www-form-urlencoded` component: `+` is a space, `%XX` a byte.
/// Malformed escapes are kept as they are; invalid UTF-8 becomes U+FFFD.
pub(super) fn form_decode(input: &str) -> String {
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
pub(super) fn has_basic_scheme(headers: &HeaderMap) -> bool {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_start().split_once(' '))
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
}

/// The decoded client id and secret of an `Authorization: Basic` header.
pub(super) fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
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
