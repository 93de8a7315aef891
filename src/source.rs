//! Where tokens come from: the [`TokenSource`] trait, and [`ClientCredentials`], the OAuth 2.0
//! client_credentials grant against Cognito's (or any) token endpoint.
//!
//! [`ClientCredentials`] sends its requests through any tower HTTP service, so the HTTP client
//! is pluggable: by default the built-in HTTPS client (feature `rustls`), in tests a plain
//! hyper-util client talking to a [loopback endpoint](crate::testing).
//!
//! ```no_run
//! use tower_cognito_auth::{ClientAuth, ClientCredentials, TokenSource};
//!
//! # async fn example() -> Result<(), tower_cognito_auth::Error> {
//! let source = ClientCredentials::builder()
//!     .cognito_domain("smart-capital", "us-east-1")
//!     .client_id("my-client-id")
//!     .client_secret("my-client-secret")
//!     .client_auth(ClientAuth::Post)
//!     .scope("wallets/read")
//!     .build()?;
//! let token = source.fetch().await?;
//! println!("token expires at {:?}", token.expires_at());
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};
use tokio::time::Instant;
use tower::ServiceExt as _;
use tower::util::BoxCloneSyncService;
use tower_service::Service;

use crate::backoff::{Backoff, parse_retry_after};
use crate::error::{BoxError, Error};
use crate::token::{Token, parse_oauth_error, parse_token_response};

/// A boxed, `Send` future, as [`TokenSource::fetch`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something that can fetch a new access token.
///
/// The cache calls [`fetch`](TokenSource::fetch) once per refresh, however many requests wait
/// for it, in a task of its own. Implement it to plug in another grant or a test double; the
/// cache adds single-flight, refresh-ahead, backoff and a deadline around it.
///
/// ```
/// use std::time::Duration;
/// use tower_cognito_auth::{AccessToken, BoxFuture, Error, Token, TokenSource};
///
/// struct Fixed;
///
/// impl TokenSource for Fixed {
///     fn fetch(&self) -> BoxFuture<'_, Result<Token, Error>> {
///         Box::pin(async {
///             let expires_at = tokio::time::Instant::now() + Duration::from_secs(3600);
///             Ok(Token::new(AccessToken::new("fixed")?, expires_at))
///         })
///     }
/// }
/// ```
pub trait TokenSource: Send + Sync + 'static {
    /// Fetches a new token.
    fn fetch(&self) -> BoxFuture<'_, Result<Token, Error>>;

    /// Which token this source delivers, and the secret that seals it, so that a fleet of
    /// processes can share one token through a shared store (feature `redis`).
    ///
    /// `None`, the default, means the token is not shared: each process fetches its own.
    /// [`ClientCredentials`] returns its token URL, client id, scopes and client secret. A
    /// source that returns an identity must deliver the same kind of token to every process
    /// that returns an equal identity: two processes with equal identities adopt each other's
    /// tokens. See [`SharedIdentity`].
    fn shared_identity(&self) -> Option<SharedIdentity> {
        None
    }
}

impl<T: TokenSource + ?Sized> TokenSource for Arc<T> {
    fn fetch(&self) -> BoxFuture<'_, Result<Token, Error>> {
        (**self).fetch()
    }

    fn shared_identity(&self) -> Option<SharedIdentity> {
        (**self).shared_identity()
    }
}

/// Which token a [`TokenSource`] delivers, and the secret material that seals it in a shared
/// store (see [`TokenSource::shared_identity`]).
///
/// It has two parts:
/// - a *namespace*: whatever tells this source's tokens apart from every other source's (for
///   example the token URL, the client id and the sorted scopes). Processes whose namespaces are
///   equal share a token; different namespaces never do. The store sees only a keyed hash of it.
/// - a *key*: secret material, at least 32 random bytes or a client secret, from which the keys
///   that encrypt and authenticate the stored token are derived. Whoever can read the store but
///   lacks the key learns nothing from it and cannot plant a token; processes with different
///   keys do not see each other's tokens (a rotated key is a miss, not an error).
///
/// `Debug` prints neither part. Cloning is cheap.
///
/// ```
/// use tower_cognito_auth::{BoxFuture, Error, SharedIdentity, Token, TokenSource};
///
/// struct MyGrant {
///     audience: String,
///     signing_key: Vec<u8>,
/// }
///
/// impl TokenSource for MyGrant {
///     fn fetch(&self) -> BoxFuture<'_, Result<Token, Error>> {
///         // ... ask the identity provider ...
///         # unimplemented!()
///     }
///
///     fn shared_identity(&self) -> Option<SharedIdentity> {
///         let namespace = format!("my-grant\n{}", self.audience);
///         Some(SharedIdentity::new(namespace, &self.signing_key))
///     }
/// }
/// ```
#[derive(Clone)]
pub struct SharedIdentity {
    /// The canonical, length-prefixed encoding of the namespace.
    namespace: Arc<[u8]>,
    key: Arc<[u8]>,
}

impl SharedIdentity {
    /// An identity from a namespace (any bytes that tell this source's tokens apart) and secret
    /// key material (at least 32 random bytes, or a client secret).
    ///
    /// A namespace given here never equals the identity [`ClientCredentials`] builds, whatever
    /// its bytes. An empty key is accepted here but refused when a shared store is set up.
    pub fn new(namespace: impl AsRef<[u8]>, key: impl AsRef<[u8]>) -> Self {
        let mut canonical = Vec::new();
        put_field(&mut canonical, b"custom");
        put_field(&mut canonical, namespace.as_ref());
        Self {
            namespace: canonical.into(),
            key: key.as_ref().into(),
        }
    }

    /// The identity of a client_credentials token: the token URL, the client id and the scopes
    /// (sorted and deduplicated, so their order does not matter), keyed by the client secret.
    pub(crate) fn client_credentials<'a>(
        token_url: &str,
        client_id: &str,
        scopes: impl IntoIterator<Item = &'a str>,
        secret: &str,
    ) -> Self {
        let mut scopes: Vec<&str> = scopes.into_iter().collect();
        scopes.sort_unstable();
        scopes.dedup();
        let mut canonical = Vec::new();
        put_field(&mut canonical, b"client_credentials");
        put_field(&mut canonical, token_url.as_bytes());
        put_field(&mut canonical, client_id.as_bytes());
        canonical.extend_from_slice(&(scopes.len() as u64).to_be_bytes());
        for scope in scopes {
            put_field(&mut canonical, scope.as_bytes());
        }
        Self {
            namespace: canonical.into(),
            key: secret.as_bytes().into(),
        }
    }

    /// The canonical encoding of the namespace: no two namespaces share one.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn canonical(&self) -> &[u8] {
        &self.namespace
    }

    /// The secret key material.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn key_material(&self) -> &[u8] {
        &self.key
    }
}

/// Appends a field as its length (u64, big-endian) and its bytes, so that no two sequences of
/// fields encode alike.
fn put_field(buf: &mut Vec<u8>, field: &[u8]) {
    buf.extend_from_slice(&(field.len() as u64).to_be_bytes());
    buf.extend_from_slice(field);
}

impl fmt::Debug for SharedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedIdentity([redacted])")
    }
}

/// How the client authenticates to the token endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientAuth {
    /// HTTP Basic: `Authorization: Basic base64(urlencode(id) ":" urlencode(secret))`
    /// (RFC 6749 §2.3.1). Cognito accepts it; the default.
    #[default]
    Basic,
    /// `client_id` and `client_secret` as form fields in the request body, as the A55 guide
    /// and many curl examples do.
    Post,
}

/// The type-erased HTTP client the token requests go through.
pub(crate) type HttpClient =
    BoxCloneSyncService<Request<Full<Bytes>>, Response<UnsyncBoxBody<Bytes, BoxError>>, BoxError>;

/// The most of a token endpoint's answer that is read.
pub(crate) const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// The OAuth 2.0 client_credentials grant (RFC 6749 §4.4).
///
/// Each [`fetch`](TokenSource::fetch) POSTs `grant_type=client_credentials` (and `scope`,
/// when set) to the token URL. `429`, `5xx`, connection failures and timeouts are retried
/// with exponential backoff and full jitter (100 ms doubling to 3 s, at most 4 attempts),
/// honouring `Retry-After`, within an overall deadline; a `4xx` answer such as
/// `invalid_client` is returned at once. Each attempt has its own timeout.
///
/// Cloning is cheap and shares the configuration. `Debug` shows the token URL, the client id
/// and the scope, never the secret. See the [module docs](crate::source) for an example.
#[derive(Clone)]
pub struct ClientCredentials {
    inner: Arc<Inner>,
}

struct Inner {
    token_url: Uri,
    client_id: String,
    scope: Option<String>,
    client_auth: ClientAuth,
    /// Kept for [`SharedIdentity`]; never printed.
    secret: Secret,
    /// The form body, with the secret in it under [`ClientAuth::Post`].
    body: Bytes,
    /// `Basic …`, under [`ClientAuth::Basic`]; marked sensitive.
    authorization: Option<HeaderValue>,
    http: HttpClient,
    request_timeout: Duration,
    max_attempts: u32,
    deadline: Duration,
    backoff: Backoff,
}

impl ClientCredentials {
    /// A builder; see [`ClientCredentialsBuilder`].
    pub fn builder() -> ClientCredentialsBuilder {
        ClientCredentialsBuilder::default()
    }

    async fn fetch_with_retries(inner: Arc<Inner>) -> Result<Token, Error> {
        let started = Instant::now();
        let deadline = started + inner.deadline;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let sent_at = Instant::now();
            let per_attempt = inner
                .request_timeout
                .min(deadline.saturating_duration_since(sent_at));
            let result =
                match tokio::time::timeout(per_attempt, Self::attempt(Arc::clone(&inner), sent_at))
                    .await
                {
                    Ok(result) => result,
                    Err(_) => Err(Error::timeout("the token request", per_attempt)),
                };
            let elapsed_ms = sent_at.elapsed().as_millis() as u64;
            let error = match result {
                Ok((token, lifetime)) => {
                    tracing::debug!(
                        attempt,
                        elapsed_ms,
                        expires_in = lifetime.as_secs(),
                        token_url = %inner.token_url,
                        "token request succeeded"
                    );
                    return Ok(token);
                }
                Err(error) => error,
            };
            let status = error.status().map(|s| s.as_u16());
            if !error.is_retryable() || attempt >= inner.max_attempts {
                tracing::warn!(attempt, elapsed_ms, ?status, %error, "token request failed");
                return Err(error);
            }
            let delay = error
                .retry_after()
                .unwrap_or_else(|| inner.backoff.delay(attempt - 1));
            if Instant::now() + delay >= deadline {
                tracing::warn!(attempt, elapsed_ms, ?status, %error, "token request failed; no time left to retry");
                return Err(error);
            }
            tracing::debug!(attempt, elapsed_ms, ?status, %error, retry_in_ms = delay.as_millis() as u64, "token request failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt(inner: Arc<Inner>, sent_at: Instant) -> Result<(Token, Duration), Error> {
        let sent_at_wall = SystemTime::now();
        let mut request = Request::new(Full::new(inner.body.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = inner.token_url.clone();
        let headers = request.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(authorization) = &inner.authorization {
            headers.insert(AUTHORIZATION, authorization.clone());
        }
        let response = inner
            .http
            .clone()
            .oneshot(request)
            .await
            .map_err(Error::connect)?;
        let status = response.status();
        tracing::trace!(status = status.as_u16(), "token endpoint answered");
        if status.is_success() {
            let body = read_limited(response).await?;
            return parse_token_response(&body, sent_at, sent_at_wall);
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| parse_retry_after(v, sent_at_wall));
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
            .and_then(|body| parse_oauth_error(&body));
        let (error, description) = match &oauth {
            Some((e, d)) => (Some(e.as_str()), d.as_deref()),
            None => (None, None),
        };
        Err(Error::rejected(status, error, description))
    }
}

/// Reads at most [`MAX_RESPONSE_BODY`] bytes; a longer body is an error, found from
/// `Content-Length` before reading when the server sends one.
async fn read_limited(response: Response<UnsyncBoxBody<Bytes, BoxError>>) -> Result<Bytes, Error> {
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
        let frame = frame.map_err(Error::connect)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_RESPONSE_BODY {
                return Err(Error::invalid_response(TOO_LARGE));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

impl TokenSource for ClientCredentials {
    fn fetch(&self) -> BoxFuture<'_, Result<Token, Error>> {
        Box::pin(Self::fetch_with_retries(Arc::clone(&self.inner)))
    }

    /// The token URL, the client id and the scopes, keyed by the client secret.
    fn shared_identity(&self) -> Option<SharedIdentity> {
        let inner = &self.inner;
        let scopes = inner.scope.as_deref().unwrap_or_default().split(' ');
        Some(SharedIdentity::client_credentials(
            &inner.token_url.to_string(),
            &inner.client_id,
            scopes.filter(|s| !s.is_empty()),
            &inner.secret.0,
        ))
    }
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("token_url", &self.inner.token_url)
            .field("client_id", &self.inner.client_id)
            .field("client_secret", &"[redacted]")
            .field("scope", &self.inner.scope)
            .field("client_auth", &self.inner.client_auth)
            .field("request_timeout", &self.inner.request_timeout)
            .finish_non_exhaustive()
    }
}

/// A client secret: kept out of `Debug`, moved in once.
#[derive(Clone, Default)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Clone, Debug)]
enum TokenUrl {
    Url(String),
    Cognito { domain: String, region: String },
}

/// Builds a [`ClientCredentials`]. Every setter takes and returns `Self`.
///
/// `CognitoAuthLayer::builder()` has the same setters and forwards them here.
#[derive(Clone, Default)]
pub struct ClientCredentialsBuilder {
    token_url: Option<TokenUrl>,
    client_id: Option<String>,
    client_secret: Option<Secret>,
    scopes: Vec<String>,
    client_auth: ClientAuth,
    http: Option<HttpClient>,
    request_timeout: Option<Duration>,
    max_attempts: Option<u32>,
    deadline: Option<Duration>,
}

impl fmt::Debug for ClientCredentialsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentialsBuilder")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("scopes", &self.scopes)
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

impl ClientCredentialsBuilder {
    /// The token endpoint's URL, e.g. `https://auth.example.com/oauth2/token`.
    ///
    /// `https://` is accepted for any host; `http://` only for loopback hosts (`127.0.0.0/8`,
    /// `[::1]`, `localhost`), so that tests and demos can run on 127.0.0.1 while no secret
    /// ever crosses a network in clear text. Checked by [`build`](Self::build).
    pub fn token_url(mut self, url: impl AsRef<str>) -> Self {
        self.token_url = Some(TokenUrl::Url(url.as_ref().to_owned()));
        self
    }

    /// The token endpoint of a Cognito user pool domain:
    /// `https://{domain}.auth.{region}.amazoncognito.com/oauth2/token`. For a custom domain,
    /// use [`token_url`](Self::token_url). Both parts are checked by [`build`](Self::build).
    pub fn cognito_domain(mut self, domain: impl Into<String>, region: impl Into<String>) -> Self {
        self.token_url = Some(TokenUrl::Cognito {
            domain: domain.into(),
            region: region.into(),
        });
        self
    }

    /// The app client's id. Required.
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    /// The app client's secret. Required. It never appears in `Debug` output, logs or errors.
    pub fn client_secret(mut self, client_secret: impl Into<String>) -> Self {
        self.client_secret = Some(Secret(client_secret.into()));
        self
    }

    /// Adds a scope to request, e.g. `wallets/read`; repeatable. Scopes are sent
    /// space-separated. By default none is sent and the endpoint grants the client's
    /// default scopes.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scopes.push(scope.into());
        self
    }

    /// How the client authenticates. Default is [`ClientAuth::Basic`].
    pub fn client_auth(mut self, client_auth: ClientAuth) -> Self {
        self.client_auth = client_auth;
        self
    }

    /// The HTTP client token requests go through: any tower service from
    /// `Request<Full<Bytes>>` to `Response<impl Body<Data = Bytes>>`, such as a hyper-util
    /// legacy `Client`.
    ///
    /// Default is the built-in HTTPS client (hyper-util and rustls with the webpki roots),
    /// under the default feature `rustls`; without that feature this setter is required.
    pub fn http_client<S, ResBody>(mut self, client: S) -> Self
    where
        S: Service<Request<Full<Bytes>>, Response = Response<ResBody>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        ResBody: Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Into<BoxError>,
    {
        self.http = Some(erase_client(client));
        self
    }

    /// How long one token request may take, from sending to the end of the answer.
    /// Default is 10 seconds.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// How many attempts one fetch makes at most when the endpoint fails in a way a retry can
    /// fix (429, 5xx, connection failure, timeout). Default is 4; 1 disables retries.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// The overall time one fetch may take, retries and their waits included. A retry that
    /// could not start before it is not made. Default is 20 seconds.
    pub fn fetch_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Checks the configuration and builds the source.
    ///
    /// # Errors
    ///
    /// An [`Error`] of kind [`InvalidConfig`](crate::ErrorKind::InvalidConfig), saying why, when:
    /// - no token URL was set, or it does not parse, has no host, carries credentials
    ///   (`user:pass@`), or is `http://` for a host that is not loopback, or neither http nor https;
    /// - a Cognito domain prefix is not 1 to 63 of `a-z`, `0-9`, `-` (not at either end), or the
    ///   region does not look like `us-east-1`;
    /// - the client id is missing or empty, or the client secret is missing or empty;
    /// - a scope is empty or has characters RFC 6749 §3.3 does not allow (space, `"`, `\`);
    /// - `request_timeout`, `fetch_deadline` or `max_attempts` is zero;
    /// - no HTTP client was given and the feature `rustls` is off.
    pub fn build(self) -> Result<ClientCredentials, Error> {
        let token_url = match self.token_url {
            None => {
                return Err(Error::invalid_config(
                    "no token endpoint: call `token_url` or `cognito_domain`",
                ));
            }
            Some(TokenUrl::Url(url)) => parse_token_url(&url)?,
            Some(TokenUrl::Cognito { domain, region }) => cognito_url(&domain, &region)?,
        };
        let client_id = match self.client_id {
            Some(id) if !id.is_empty() => id,
            Some(_) => return Err(Error::invalid_config("the client id is empty")),
            None => return Err(Error::invalid_config("no client id: call `client_id`")),
        };
        let secret = match self.client_secret {
            Some(Secret(s)) if !s.is_empty() => s,
            Some(_) => return Err(Error::invalid_config("the client secret is empty")),
            None => {
                return Err(Error::invalid_config(
                    "no client secret: call `client_secret`",
                ));
            }
        };
        for scope in &self.scopes {
            if scope.is_empty() || !scope.bytes().all(is_scope_char) {
                return Err(Error::invalid_config(
                    "a scope is empty or has a character OAuth does not allow (space, '\"', '\\')",
                ));
            }
        }
        let scope = (!self.scopes.is_empty()).then(|| self.scopes.join(" "));
        let request_timeout = self.request_timeout.unwrap_or(Duration::from_secs(10));
        let deadline = self.deadline.unwrap_or(Duration::from_secs(20));
        let max_attempts = self.max_attempts.unwrap_or(4);
        if request_timeout.is_zero() || deadline.is_zero() || max_attempts == 0 {
            return Err(Error::invalid_config(
                "request_timeout, fetch_deadline and max_attempts must not be zero",
            ));
        }
        let http = match self.http {
            Some(http) => http,
            None => default_client()?,
        };

        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if let Some(scope) = &scope {
            form.append_pair("scope", scope);
        }
        let authorization = match self.client_auth {
            ClientAuth::Basic => {
                let encode =
                    |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let pair = format!("{}:{}", encode(&client_id), encode(&secret));
                let value = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                );
                let mut value = HeaderValue::try_from(value).map_err(|_| {
                    Error::invalid_config("the client credentials cannot be encoded")
                })?;
                value.set_sensitive(true);
                Some(value)
            }
            ClientAuth::Post => {
                form.append_pair("client_id", &client_id);
                form.append_pair("client_secret", &secret);
                None
            }
        };
        Ok(ClientCredentials {
            inner: Arc::new(Inner {
                token_url,
                client_id,
                scope,
                client_auth: self.client_auth,
                secret: Secret(secret),
                body: Bytes::from(form.finish()),
                authorization,
                http,
                request_timeout,
                max_attempts,
                deadline,
                backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(3)),
            }),
        })
    }
}

/// RFC 6749 §3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
fn is_scope_char(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E)
}

fn parse_token_url(url: &str) -> Result<Uri, Error> {
    let uri: Uri = url
        .parse()
        .map_err(|_| Error::invalid_config("the token URL does not parse as a URL"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| Error::invalid_config("the token URL has no host"))?;
    if authority.as_str().contains('@') {
        return Err(Error::invalid_config(
            "the token URL must not carry credentials (`user:pass@`): use client_id and client_secret",
        ));
    }
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if is_loopback(authority.host()) => Ok(uri),
        Some("http") => Err(Error::invalid_config(
            "the token URL must use https (http is allowed only for loopback hosts such as 127.0.0.1): \
             the client secret would cross the network in clear text",
        )),
        _ => Err(Error::invalid_config(
            "the token URL must be an https:// URL",
        )),
    }
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

fn cognito_url(domain: &str, region: &str) -> Result<Uri, Error> {
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
    let parts: Vec<&str> = region.split('-').collect();
    let region_ok = parts.len() >= 3
        && parts.iter().all(|p| !p.is_empty())
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit());
    if !region_ok {
        return Err(Error::invalid_config(
            "the AWS region must look like `us-east-1`",
        ));
    }
    format!("https://{domain}.auth.{region}.amazoncognito.com/oauth2/token")
        .parse()
        .map_err(|_| Error::invalid_config("the Cognito domain does not form a valid URL"))
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

#[cfg(feature = "rustls")]
fn default_client() -> Result<HttpClient, Error> {
    crate::https::client()
}

#[cfg(not(feature = "rustls"))]
fn default_client() -> Result<HttpClient, Error> {
    Err(Error::invalid_config(
        "no HTTP client: enable the `rustls` feature or call `http_client`",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::service_fn;

    #[test]
    fn token_url_rules() {
        assert!(parse_token_url("https://auth.example.com/oauth2/token").is_ok());
        assert!(parse_token_url("http://127.0.0.1:8080/oauth2/token").is_ok());
        assert!(parse_token_url("http://127.9.9.9/oauth2/token").is_ok());
        assert!(parse_token_url("http://localhost:1/t").is_ok());
        assert!(parse_token_url("http://[::1]:1/t").is_ok());
        for bad in [
            "http://auth.example.com/oauth2/token",
            "http://10.0.0.1/t",
            "ftp://127.0.0.1/t",
            "https://user:pass@auth.example.com/t",
            "/oauth2/token",
            "not a url",
        ] {
            let err = parse_token_url(bad).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidConfig, "{bad}");
        }
        let err = parse_token_url("http://auth.example.com/t").unwrap_err();
        assert!(err.to_string().contains("must use https"));
    }

    #[test]
    fn cognito_domain_rules() {
        assert_eq!(
            cognito_url("smart-capital", "us-east-1").unwrap(),
            "https://smart-capital.auth.us-east-1.amazoncognito.com/oauth2/token"
        );
        assert!(cognito_url("a", "ap-southeast-2").is_ok());
        assert!(cognito_url("us-gov", "us-gov-west-1").is_ok());
        for (d, r) in [
            ("", "us-east-1"),
            ("-x", "us-east-1"),
            ("UPPER", "us-east-1"),
            ("evil.com/", "us-east-1"),
            ("ok", "useast1"),
            ("ok", "us-east-x"),
            ("ok", "us-east-1.evil.com"),
        ] {
            assert!(cognito_url(d, r).is_err(), "{d} {r}");
        }
    }

    #[test]
    fn builder_rejects_missing_parts() {
        let base = || {
            ClientCredentials::builder()
                .token_url("http://127.0.0.1:1/oauth2/token")
                .http_client(service_fn(|_req: Request<Full<Bytes>>| async {
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
                }))
        };
        assert!(base().client_id("id").client_secret("s").build().is_ok());
        let e = base().client_secret("s").build().unwrap_err();
        assert!(e.to_string().contains("client id"));
        let e = base().client_id("id").build().unwrap_err();
        assert!(e.to_string().contains("client secret"));
        let e = base()
            .client_id("id")
            .client_secret("s")
            .scope("a b")
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("scope"));
        let e = base()
            .client_id("id")
            .client_secret("hunter2-secret")
            .request_timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert!(!e.to_string().contains("hunter2"));
    }

    #[test]
    fn debug_hides_secret() {
        let b = ClientCredentials::builder()
            .token_url("http://127.0.0.1:1/t")
            .client_id("id")
            .client_secret("hunter2-secret")
            .http_client(service_fn(|_req: Request<Full<Bytes>>| async {
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
            }));
        assert!(!format!("{b:?}").contains("hunter2"));
        let cc = b.build().unwrap();
        assert!(!format!("{cc:?}").contains("hunter2"));
    }
}
