//! What every grant shares: the token URL rules, client authentication, the type-erased HTTP
//! client, one POST to the token endpoint with its answer read under a size limit and mapped to
//! an [`Error`], and the attempt/retry loop around it.
//!
//! [`ClientCredentials`](crate::ClientCredentials) and
//! [`RefreshTokenGrant`](crate::RefreshTokenGrant) differ only in the form they send, in which
//! failures they may retry, and in what they do with a `2xx` answer.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};
use tokio::time::Instant;
use tower::Service;
use tower::ServiceExt as _;
use tower::util::BoxCloneSyncService;

use super::client_assertion::ClientAssertionKey;
use crate::backoff::{Backoff, parse_retry_after};
use crate::error::{BoxError, Error};

/// The type-erased HTTP client the token requests go through.
pub(crate) type HttpClient =
    BoxCloneSyncService<Request<Full<Bytes>>, Response<UnsyncBoxBody<Bytes, BoxError>>, BoxError>;

/// How the client authenticates to the token endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientAuth {
    /// HTTP Basic: `Authorization: Basic base64(urlencode(id) ":" urlencode(secret))`
    /// (RFC 6749 §2.3.1). Cognito accepts it; the default.
    #[default]
    Basic,
    /// `client_id` and `client_secret` as form fields in the request body, as many guides
    /// and many curl examples do.
    Post,
    /// `private_key_jwt` (RFC 7523 §2.2, OpenID Connect Core §9): a JWT signed with this key
    /// (RS256 or ES256) in the form's `client_assertion`, new for every token request; no
    /// client secret. Okta, Entra ID, Auth0 and Keycloak support it (Cognito does not). See
    /// [`ClientAssertionKey`].
    PrivateKeyJwt(ClientAssertionKey),
    /// `client_secret_jwt` (OpenID Connect Core §9): a JWT signed HS256 with the client secret
    /// in the form's `client_assertion`, new for every token request, so the secret itself
    /// never crosses the network.
    ClientSecretJwt,
}

impl ClientAuth {
    /// Whether the client sends a signed assertion, made anew for each request.
    pub(crate) fn is_assertion(&self) -> bool {
        matches!(
            self,
            ClientAuth::PrivateKeyJwt(_) | ClientAuth::ClientSecretJwt
        )
    }
}

/// The most of a token endpoint's answer that is read.
pub(crate) const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// A secret (client secret, refresh token): kept out of `Debug`, moved in once.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Secret(pub(crate) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where the token endpoint is, as a builder was told.
#[derive(Clone)]
pub(crate) enum TokenUrl {
    Url(String),
    Cognito { domain: String, region: String },
}

impl fmt::Debug for TokenUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Not yet checked: it may carry `user:password@`, which `build` refuses.
            TokenUrl::Url(url) => f.debug_tuple("Url").field(&redact_userinfo(url)).finish(),
            TokenUrl::Cognito { domain, region } => f
                .debug_struct("Cognito")
                .field("domain", domain)
                .field("region", region)
                .finish(),
        }
    }
}

/// The URL with anything between `://` and an `@` of its authority replaced by `[redacted]`.
pub(crate) fn redact_userinfo(url: &str) -> std::borrow::Cow<'_, str> {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.into();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}[redacted]{}", &url[..scheme_end], &rest[at..]).into(),
        None => url.into(),
    }
}

impl TokenUrl {
    /// Checks and resolves the configured endpoint; `None` is an error that names the setters.
    pub(crate) fn resolve(url: Option<TokenUrl>) -> Result<Uri, Error> {
        match url {
            None => Err(Error::invalid_config(
                "no token endpoint: call `token_url` or `cognito_domain`",
            )),
            Some(TokenUrl::Url(url)) => parse_token_url(&url),
            Some(TokenUrl::Cognito { domain, region }) => cognito_url(&domain, &region),
        }
    }
}

/// Checks a client id: present and not empty.
pub(crate) fn require_client_id(client_id: Option<String>) -> Result<String, Error> {
    match client_id {
        Some(id) if !id.is_empty() => Ok(id),
        Some(_) => Err(Error::invalid_config("the client id is empty")),
        None => Err(Error::invalid_config("no client id: call `client_id`")),
    }
}

/// Checks the scopes and joins them space-separated; `None` when there is none.
pub(crate) fn join_scopes(scopes: &[String]) -> Result<Option<String>, Error> {
    for scope in scopes {
        if scope.is_empty() || !scope.bytes().all(is_scope_char) {
            return Err(Error::invalid_config(
                "a scope is empty or has a character OAuth does not allow (space, '\"', '\\')",
            ));
        }
    }
    Ok((!scopes.is_empty()).then(|| scopes.join(" ")))
}

/// RFC 6749 §3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
fn is_scope_char(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E)
}

/// How the client authenticates to the token endpoint.
///
/// With a secret: [`ClientAuth::Basic`] gives the `Authorization` header to send,
/// [`ClientAuth::Post`] appends `client_id` and `client_secret` to the form, and
/// [`ClientAuth::ClientSecretJwt`] an assertion signed with it for `audience` (the token URL).
/// [`ClientAuth::PrivateKeyJwt`] appends an assertion signed with its key. Without a secret (a
/// public client): `client_id` goes into the form and there is no header.
pub(crate) fn client_authentication(
    form: &mut form_urlencoded::Serializer<'_, String>,
    client_auth: &ClientAuth,
    client_id: &str,
    secret: Option<&str>,
    audience: &str,
) -> Result<Option<HeaderValue>, Error> {
    let assertion = match (secret, client_auth) {
        (_, ClientAuth::PrivateKeyJwt(key)) => key.assertion(client_id, audience)?,
        (Some(secret), ClientAuth::ClientSecretJwt) => {
            super::client_assertion::secret_assertion(secret, client_id, audience)?
        }
        (None, ClientAuth::ClientSecretJwt) => {
            return Err(Error::invalid_config(
                "ClientAuth::ClientSecretJwt needs a client secret",
            ));
        }
        (None, _) => {
            form.append_pair("client_id", client_id);
            return Ok(None);
        }
        (Some(secret), ClientAuth::Basic) => {
            let encode =
                |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let pair = format!("{}:{}", encode(client_id), encode(secret));
            let value = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            );
            let mut value = HeaderValue::try_from(value)
                .map_err(|_| Error::invalid_config("the client credentials cannot be encoded"))?;
            value.set_sensitive(true);
            return Ok(Some(value));
        }
        (Some(secret), ClientAuth::Post) => {
            form.append_pair("client_id", client_id);
            form.append_pair("client_secret", secret);
            return Ok(None);
        }
    };
    form.append_pair("client_id", client_id);
    form.append_pair(
        "client_assertion_type",
        super::client_assertion::ASSERTION_TYPE,
    );
    form.append_pair("client_assertion", &assertion);
    Ok(None)
}

/// A `2xx` answer of the token endpoint, read in full, with when its request was sent.
pub(crate) struct Answered {
    pub(crate) body: Bytes,
    /// When the request was sent, on Tokio's clock.
    pub(crate) sent_at: Instant,
    /// The same moment on the wall clock, which a JWT `exp` claim is measured against.
    pub(crate) sent_at_wall: SystemTime,
}

/// Which failures a fetch may retry, how often and for how long.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetryPolicy {
    pub(crate) max_attempts: u32,
    /// The whole fetch's time, retries and their waits included.
    pub(crate) deadline: Duration,
    pub(crate) backoff: Backoff,
    pub(crate) retry_if: fn(&Error) -> bool,
}

/// The token endpoint as a grant talks to it: where, how the client authenticates (the header
/// part; form fields are the grant's), through which HTTP client, with which timeout per attempt.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub(crate) token_url: Uri,
    /// `Basic …` under [`ClientAuth::Basic`] with a secret; marked sensitive.
    pub(crate) authorization: Option<HeaderValue>,
    pub(crate) http: HttpClient,
    pub(crate) request_timeout: Duration,
    /// Where each token request is counted (feature `metrics`).
    pub(crate) metrics: crate::metrics::Metrics,
}

impl Endpoint {
    /// Runs `attempt` until it succeeds, fails in a way `policy` does not retry, runs out of
    /// attempts, or no retry could start before the deadline. Each attempt gets the instant it
    /// starts and is bounded by `request_timeout` (less when the deadline is nearer).
    pub(crate) async fn with_retries<T, F, Fut>(
        &self,
        policy: &RetryPolicy,
        mut attempt: F,
    ) -> Result<T, Error>
    where
        F: FnMut(Instant) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        // A deadline too long to add to an `Instant` is no deadline.
        let deadline = Instant::now().checked_add(policy.deadline);
        let mut number: u32 = 0;
        loop {
            number += 1;
            let sent_at = Instant::now();
            let per_attempt = match deadline {
                Some(deadline) => self
                    .request_timeout
                    .min(deadline.saturating_duration_since(sent_at)),
                None => self.request_timeout,
            };
            let result = self.timed(per_attempt, attempt(sent_at)).await;
            let elapsed_ms = sent_at.elapsed().as_millis() as u64;
            let error = match result {
                Ok(value) => {
                    tracing::debug!(
                        attempt = number,
                        elapsed_ms,
                        token_url = %self.token_url,
                        "token request succeeded"
                    );
                    return Ok(value);
                }
                Err(error) => error,
            };
            let status = error.status().map(|s| s.as_u16());
            if !(policy.retry_if)(&error) || number >= policy.max_attempts {
                tracing::warn!(attempt = number, elapsed_ms, ?status, %error, "token request failed");
                return Err(error);
            }
            let delay = error
                .retry_after()
                .unwrap_or_else(|| policy.backoff.delay(number - 1));
            if deadline.is_some_and(|deadline| Instant::now() + delay >= deadline) {
                tracing::warn!(attempt = number, elapsed_ms, ?status, %error, "token request failed; no time left to retry");
                return Err(error);
            }
            tracing::debug!(attempt = number, elapsed_ms, ?status, %error, retry_in_ms = delay.as_millis() as u64, "token request failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// One POST of `form` to the token endpoint, with `authorization` (the grant's client
    /// authentication for this request) as its `Authorization` header. A `2xx` answer is read (at most
    /// [`MAX_RESPONSE_BODY`]) and returned; anything else becomes an [`Error`]: `429` rate
    /// limited, `5xx` unavailable (both with `Retry-After`), other statuses rejected with the
    /// OAuth error of the body, if any.
    pub(crate) async fn post_authorized(
        &self,
        form: Bytes,
        authorization: Option<&HeaderValue>,
        sent_at: Instant,
    ) -> Result<Answered, Error> {
        let sent_at_wall = SystemTime::now();
        let mut request = self.request(form, "application/x-www-form-urlencoded");
        // The grant's client authentication for this request (a secret read now, an
        // assertion), in place of the endpoint's.
        let headers = request.headers_mut();
        headers.remove(AUTHORIZATION);
        if let Some(authorization) = authorization {
            headers.insert(AUTHORIZATION, authorization.clone());
        }
        let response = self.send(request).await?;
        let status = response.status();
        if status.is_success() {
            let body = read_limited(response).await?;
            return Ok(Answered {
                body,
                sent_at,
                sent_at_wall,
            });
        }
        let retry_after = retry_after(&response, sent_at_wall);
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(Error::rate_limited(retry_after));
        }
        if status.is_server_error() {
            return Err(Error::server_error(status, retry_after));
        }
        // A refusal: read the OAuth error, if the body holds one and is not too large.
        let oauth = read_limited(response)
            .await
            .ok()
            .and_then(|body| crate::token::parse_oauth_error(&body));
        let (error, description) = match &oauth {
            Some((e, d)) => (Some(e.as_str()), d.as_deref()),
            None => (None, None),
        };
        Err(Error::rejected(status, error, description))
    }

    /// A POST of `body` to the endpoint's URL, as `content_type`, with `Accept:
    /// application/json` and the client's `Authorization` header, if it has one.
    pub(crate) fn request(&self, body: Bytes, content_type: &'static str) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.token_url.clone();
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(authorization) = &self.authorization {
            headers.insert(AUTHORIZATION, authorization.clone());
        }
        request
    }

    /// Sends a request through the client; a failure to get an answer is a connect error that
    /// names the host.
    pub(crate) async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<UnsyncBoxBody<Bytes, BoxError>>, Error> {
        let response = self
            .http
            .clone()
            .oneshot(request)
            .await
            .map_err(|e| Error::connect(self.token_url.host().unwrap_or_default(), e))?;
        tracing::trace!(
            status = response.status().as_u16(),
            "token endpoint answered"
        );
        Ok(response)
    }

    /// Runs one request bounded by `limit`, and counts it in the metrics with its outcome and
    /// how long it took.
    pub(crate) async fn timed<T>(
        &self,
        limit: Duration,
        request: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let sent_at = Instant::now();
        let result = match tokio::time::timeout(limit, request).await {
            Ok(result) => result,
            Err(_) => Err(Error::timeout("the token request", limit)),
        };
        self.metrics
            .token_request(crate::metrics::outcome(&result), sent_at.elapsed());
        result
    }
}

/// The `Retry-After` of an answer, as a delay from `sent_at_wall`.
pub(crate) fn retry_after<B>(response: &Response<B>, sent_at_wall: SystemTime) -> Option<Duration> {
    response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| parse_retry_after(v, sent_at_wall))
}

/// Reads at most [`MAX_RESPONSE_BODY`] bytes; a longer body is an error, found from
/// `Content-Length` before reading when the server sends one.
pub(crate) async fn read_limited(
    response: Response<UnsyncBoxBody<Bytes, BoxError>>,
) -> Result<Bytes, Error> {
    const TOO_LARGE: &str = "the response body is larger than 64 KiB";
    let declared = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_RESPONSE_BODY as u64) {
        return Err(Error::invalid_response(TOO_LARGE));
    }
    // Frame by frame rather than `Limited::collect`, whose `Into<BoxError>` bound trips rustc's
    // `Send` inference for this future. Bounded by the byte limit and the attempt's timeout.
    let mut body = response.into_body();
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Error::broken_response)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_RESPONSE_BODY {
                return Err(Error::invalid_response(TOO_LARGE));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

pub(crate) fn parse_token_url(url: &str) -> Result<Uri, Error> {
    parse_endpoint_url(url, "token URL")
}

/// Checks an endpoint's URL (`what` names it in errors: "token URL"): `https://` for any host,
/// `http://` only for loopback hosts (`localhost` pinned to `127.0.0.1`), no credentials.
pub(crate) fn parse_endpoint_url(url: &str, what: &'static str) -> Result<Uri, Error> {
    let uri: Uri = url
        .parse()
        .map_err(|_| Error::invalid_config(format!("the {what} does not parse as a URL")))?;
    let authority = uri
        .authority()
        .ok_or_else(|| Error::invalid_config(format!("the {what} has no host")))?;
    if authority.as_str().contains('@') {
        return Err(Error::invalid_config(format!(
            "the {what} must not carry credentials (`user:pass@`): use client_id and client_secret"
        )));
    }
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if authority.host().eq_ignore_ascii_case("localhost") => {
            pin_localhost(&uri, what)
        }
        Some("http") if is_loopback(authority.host()) => Ok(uri),
        Some("http") => Err(Error::invalid_config(format!(
            "the {what} must use https (http is allowed only for loopback hosts such as \
             127.0.0.1): the client secret would cross the network in clear text"
        ))),
        _ => Err(Error::invalid_config(format!(
            "the {what} must be an https:// URL"
        ))),
    }
}

/// `http://localhost…` with the name replaced by `127.0.0.1`: the system resolver may map
/// `localhost` elsewhere, and the secret would then cross a network in clear text.
fn pin_localhost(uri: &Uri, what: &'static str) -> Result<Uri, Error> {
    let authority = match uri.port_u16() {
        Some(port) => format!("127.0.0.1:{port}"),
        None => "127.0.0.1".to_owned(),
    };
    let unparsable = || Error::invalid_config(format!("the {what} does not parse as a URL"));
    let mut parts = uri.clone().into_parts();
    parts.authority = Some(authority.parse().map_err(|_| unparsable())?);
    Uri::from_parts(parts).map_err(|_| unparsable())
}

/// `localhost`, `127.0.0.0/8` and `[::1]`.
pub(crate) fn is_loopback(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(IpAddr::V6(ip)) => ip == Ipv6Addr::LOCALHOST,
        Err(_) => false,
    }
}

pub(crate) fn cognito_url(domain: &str, region: &str) -> Result<Uri, Error> {
    let label_ok = |s: &str| {
        (1..=63).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    if !label_ok(domain) {
        return Err(Error::invalid_config(
            "the Cognito domain prefix must be 1 to 63 of a-z, 0-9 and '-', not starting or ending with '-'",
        ));
    }
    check_region(region)?;
    format!("https://{domain}.auth.{region}.amazoncognito.com/oauth2/token")
        .parse()
        .map_err(|_| Error::invalid_config("the Cognito domain does not form a valid URL"))
}

/// Checks an AWS region name: it must look like `us-east-1` (lower-case words, then digits).
pub(crate) fn check_region(region: &str) -> Result<(), Error> {
    let parts: Vec<&str> = region.split('-').collect();
    let region_ok = parts.len() >= 3
        && parts.iter().all(|p| !p.is_empty())
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit());
    if region_ok {
        Ok(())
    } else {
        Err(Error::invalid_config(
            "the AWS region must look like `us-east-1`",
        ))
    }
}

pub(crate) fn erase_client<S, ResBody>(client: S) -> HttpClient
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let client = client
        .map_err(Into::into)
        .map_response(|response: Response<ResBody>| {
            response.map(|body| body.map_err(Into::into).boxed_unsync())
        });
    BoxCloneSyncService::new(client)
}

/// What a builder holds for the built-in client (feature `rustls`): its proxy and extra roots.
#[cfg(feature = "rustls")]
pub(crate) use super::https::HttpsOptions;

/// Without the feature `rustls` there is no built-in client, and nothing to configure.
#[cfg(not(feature = "rustls"))]
#[derive(Clone, Debug, Default)]
pub(crate) struct HttpsOptions {}

#[cfg(not(feature = "rustls"))]
impl HttpsOptions {
    /// Always: there is nothing to set.
    pub(crate) fn is_default(&self) -> bool {
        true
    }
}

/// The given client, or the built-in HTTPS client configured by `https`. Settings of the
/// built-in client beside a client of one's own are refused: they would not be used.
#[cfg(feature = "rustls")]
pub(crate) fn client_or_built_in(
    http: Option<HttpClient>,
    https: &HttpsOptions,
) -> Result<HttpClient, Error> {
    match http {
        Some(_) if !https.settings.is_empty() => Err(Error::invalid_config(format!(
            "`http_client` is set, so the built-in client's settings {} would not be used: \
             configure your own client instead",
            https.settings.join(", ")
        ))),
        Some(http) => Ok(http),
        None => https.build(),
    }
}

/// The given client; without the feature `rustls` there is no other.
#[cfg(not(feature = "rustls"))]
pub(crate) fn client_or_built_in(
    http: Option<HttpClient>,
    _https: &HttpsOptions,
) -> Result<HttpClient, Error> {
    http.ok_or_else(|| {
        Error::invalid_config("no HTTP client: enable the `rustls` feature or call `http_client`")
    })
}

/// Whether a failed request surely never reached the server: the connection was refused, or
/// hyper-util's client could not connect at all. Only then may a refresh token be sent again.
pub(crate) fn never_sent(error: &Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        // hyper-util's client: the built-in one, or one the application passed (which it can
        // check only when hyper-util is a dependency of this crate's, with `rustls` or
        // `test-util`; a refused connection is still seen above).
        #[cfg(any(feature = "rustls", feature = "test-util"))]
        if let Some(client) = cause.downcast_ref::<hyper_util::client::legacy::Error>()
            && client.is_connect()
        {
            return true;
        }
        #[cfg(feature = "reqwest")]
        if let Some(client) = cause.downcast_ref::<reqwest::Error>()
            && client.is_connect()
        {
            return true;
        }
        source = cause.source();
    }
    false
}

#[cfg(test)]
mod tests;
