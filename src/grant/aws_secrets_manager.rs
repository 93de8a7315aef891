//! [`AwsSecretsManager`] (feature `aws-secrets-manager`): the client secret read from AWS
//! Secrets Manager, cached, read again every few minutes and after an `invalid_client`, never
//! more than once at a time.
//!
//! The request is Secrets Manager's `GetSecretValue` (a JSON POST, signed with SigV4 by
//! `aws-sigv4`), sent through the same HTTP client as the token requests. Credentials come from
//! any `aws-credential-types` provider: the one `aws-config` loads (environment, IRSA, an
//! instance profile, SSO), or fixed keys.
//!
//! ```no_run
//! use aws_credential_types::provider::SharedCredentialsProvider;
//! use tower_cognito_auth::{AwsSecretsManager, ClientSecret, CognitoAuthLayer};
//!
//! # fn main() -> Result<(), tower::BoxError> {
//! # let credentials = SharedCredentialsProvider::new(aws_credential_types::Credentials::new(
//! #     "AKID", "secret", None, None, "example",
//! # ));
//! // `credentials`: e.g. `aws_config::load_defaults(..).await.credentials_provider()`.
//! let secret = AwsSecretsManager::new("prod/cognito-client", "us-east-1", credentials)
//!     .json_field("client_secret"); // the secret is a JSON object; omit for a plain string
//! let auth = CognitoAuthLayer::builder()
//!     .cognito_domain("my-pool", "us-east-1")
//!     .client_id("my-client-id")
//!     .client_secret_source(ClientSecret::from_aws_secrets_manager(secret))
//!     .build()?;
//! # let _ = auth;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials as _, SharedCredentialsProvider};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::{BodyExt as _, Full};
use tokio::time::Instant;
use tower::Service;
use tower::ServiceExt as _;

use super::endpoint::{HttpClient, HttpsOptions, client_or_built_in, erase_client, is_loopback};
use crate::error::{BoxError, Error, ErrorKind};

/// How long a value read from Secrets Manager is used before it is read again. Default.
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// The most of an answer that is read.
const MAX_ANSWER: usize = 64 * 1024;
/// After a failure for good (`invalid_client`), a request with no token reads the secret again
/// in the background at most this often.
const RECHECK_EVERY: Duration = Duration::from_secs(1);
/// One `GetSecretValue` call's time.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A client secret kept in AWS Secrets Manager (feature `aws-secrets-manager`); give it to
/// [`ClientSecret::from_aws_secrets_manager`](crate::ClientSecret::from_aws_secrets_manager).
///
/// The value is cached: a token request reads it again only when it is older than
/// [`refresh_every`](Self::refresh_every) (default 5 minutes), or after the token endpoint
/// refused it (`invalid_client`: the secret was rotated), and never two reads at once. A read
/// that fails for a passing reason (throttling, 5xx, no connection) while a value is cached uses
/// the cached value. See the [module docs](crate::grant::aws_secrets_manager) for an example.
#[derive(Clone)]
pub struct AwsSecretsManager {
    secret_id: String,
    region: String,
    credentials: SharedCredentialsProvider,
    json_field: Option<String>,
    endpoint_url: Option<String>,
    refresh_every: Duration,
    http: Option<HttpClient>,
}

impl AwsSecretsManager {
    /// The secret `secret_id` (a name or an ARN) in `region`, read with `credentials`.
    pub fn new(
        secret_id: impl Into<String>,
        region: impl Into<String>,
        credentials: SharedCredentialsProvider,
    ) -> Self {
        Self {
            secret_id: secret_id.into(),
            region: region.into(),
            credentials,
            json_field: None,
            endpoint_url: None,
            refresh_every: DEFAULT_REFRESH,
            http: None,
        }
    }

    /// The secret's value is a JSON object: the client secret is its string field `field` (as
    /// the console's key/value secrets are). Default is none: the whole `SecretString`.
    pub fn json_field(mut self, field: impl Into<String>) -> Self {
        self.json_field = Some(field.into());
        self
    }

    /// Another endpoint than `https://secretsmanager.{region}.amazonaws.com/`: a VPC endpoint,
    /// or an emulator (`http://` on a loopback host only). Default is the regional endpoint.
    pub fn endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.endpoint_url = Some(url.into());
        self
    }

    /// How long a value read is used before a token request reads it again. Default is 5
    /// minutes.
    pub fn refresh_every(mut self, period: Duration) -> Self {
        self.refresh_every = period;
        self
    }

    /// The HTTP client for Secrets Manager, as
    /// [`ClientCredentialsBuilder::http_client`](crate::ClientCredentialsBuilder::http_client).
    /// Default is the built-in HTTPS client (feature `rustls`).
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

    /// The endpoint to call.
    fn uri(&self) -> Result<Uri, Error> {
        let url = match &self.endpoint_url {
            Some(url) => url.clone(),
            None => format!("https://secretsmanager.{}.amazonaws.com/", self.region),
        };
        let uri: Uri = url.parse().map_err(|_| {
            Error::invalid_config("the Secrets Manager endpoint URL does not parse as a URL")
        })?;
        match (uri.scheme_str(), uri.host()) {
            (Some("https"), Some(_)) => Ok(uri),
            (Some("http"), Some(host)) if is_loopback(host) => Ok(uri),
            _ => Err(Error::invalid_config(
                "the Secrets Manager endpoint must be https:// (http:// only on a loopback host)",
            )),
        }
    }
}

impl fmt::Debug for AwsSecretsManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsSecretsManager")
            .field("secret_id", &self.secret_id)
            .field("region", &self.region)
            .field("json_field", &self.json_field)
            .field("endpoint_url", &self.endpoint_url)
            .field("refresh_every", &self.refresh_every)
            .finish_non_exhaustive()
    }
}

/// The cached secret of one [`AwsSecretsManager`], and the one read in progress.
pub(crate) struct SecretsManagerCache {
    config: AwsSecretsManager,
    http: Result<HttpClient, Error>,
    state: Mutex<Cached>,
    /// Held by the one read in progress.
    reading: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Cached {
    value: Option<(String, Instant)>,
    /// The cached value was refused: the next read goes to Secrets Manager.
    stale: bool,
    /// When a background read was last started.
    rechecked: Option<Instant>,
}

impl fmt::Debug for SecretsManagerCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config.fmt(f)
    }
}

impl SecretsManagerCache {
    pub(crate) fn new(config: AwsSecretsManager) -> Self {
        let http = client_or_built_in(config.http.clone(), &HttpsOptions::default());
        Self {
            config,
            http,
            state: Mutex::new(Cached::default()),
            reading: tokio::sync::Mutex::new(()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Cached> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached value while it is fresh and not refused.
    fn fresh(&self) -> Option<String> {
        let state = self.state();
        match &state.value {
            Some((value, at)) if !state.stale && at.elapsed() < self.config.refresh_every => {
                Some(value.clone())
            }
            _ => None,
        }
    }

    /// The secret for a token request: the cached value, or a read (one at a time).
    pub(crate) async fn get(&self) -> Result<String, Error> {
        if let Some(value) = self.fresh() {
            return Ok(value);
        }
        let _reading = self.reading.lock().await;
        // Whoever held the lock may have read it meanwhile.
        if let Some(value) = self.fresh() {
            return Ok(value);
        }
        match self.call().await {
            Ok(value) => {
                let mut state = self.state();
                state.value = Some((value.clone(), Instant::now()));
                state.stale = false;
                Ok(value)
            }
            Err(error) => {
                let cached = self.state().value.as_ref().map(|(v, _)| v.clone());
                match cached {
                    Some(value) if error.is_retryable() => {
                        tracing::warn!(%error, "AWS Secrets Manager could not be read; using the cached client secret");
                        Ok(value)
                    }
                    _ => Err(error),
                }
            }
        }
    }

    /// The cached value, without I/O; after a failure for good, starts a read in the
    /// background (at most once a second), whose value a later call returns.
    pub(crate) fn peek(self: &Arc<Self>, recheck: bool) -> Option<String> {
        let mut state = self.state();
        let due = state
            .rechecked
            .is_none_or(|at| at.elapsed() >= RECHECK_EVERY);
        if recheck
            && due
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            state.rechecked = Some(Instant::now());
            state.stale = true;
            let this = Arc::clone(self);
            runtime.spawn(async move {
                let _ = this.get().await;
            });
        }
        state.value.as_ref().map(|(v, _)| v.clone())
    }

    /// The token endpoint refused the secret: the next token request reads it again.
    pub(crate) fn refused(&self) {
        self.state().stale = true;
    }

    /// One `GetSecretValue` call.
    async fn call(&self) -> Result<String, Error> {
        let config = &self.config;
        let http = self.http.clone()?;
        let uri = config.uri()?;
        let body = serde_json::json!({ "SecretId": config.secret_id }).to_string();
        let credentials = config
            .credentials
            .provide_credentials()
            .await
            .map_err(|e| {
                Error::with_source(
                    ErrorKind::InvalidConfig,
                    "no AWS credentials to read the client secret from Secrets Manager",
                    e,
                )
            })?;
        let host = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        let mut request = Request::new(Full::new(Bytes::from(body.clone())));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri.clone();
        let headers = request.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-amz-json-1.1"),
        );
        headers.insert(
            "x-amz-target",
            HeaderValue::from_static("secretsmanager.GetSecretValue"),
        );
        headers.insert(
            HOST,
            HeaderValue::from_str(&host)
                .map_err(|_| Error::invalid_config("the Secrets Manager host is not a header"))?,
        );
        let identity = credentials.into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&config.region)
            .name("secretsmanager")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|_| Error::internal("the Secrets Manager request could not be signed"))?
            .into();
        let signable = SignableRequest::new(
            "POST",
            uri.to_string(),
            request
                .headers()
                .iter()
                .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|_| Error::internal("the Secrets Manager request could not be signed"))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|_| Error::internal("the Secrets Manager request could not be signed"))?
            .into_parts();
        instructions.apply_to_request_http1x(&mut request);

        let what = || format!("AWS Secrets Manager ({})", config.secret_id);
        let response = match tokio::time::timeout(CALL_TIMEOUT, http.oneshot(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                return Err(Error::with_source(
                    ErrorKind::Unavailable,
                    format!("could not reach {}", what()),
                    e,
                ));
            }
            Err(_) => return Err(Error::timeout("reading AWS Secrets Manager", CALL_TIMEOUT)),
        };
        let status = response.status();
        let body = read(response).await?;
        if !status.is_success() {
            return Err(failure(status, &body, &what()));
        }
        let answer: serde_json::Value = serde_json::from_slice(&body).map_err(|_| {
            Error::new(
                ErrorKind::InvalidResponse,
                format!("{} answered something that is not JSON", what()),
            )
        })?;
        let Some(text) = answer.get("SecretString").and_then(|v| v.as_str()) else {
            return Err(Error::invalid_config(format!(
                "{} holds no SecretString (a binary secret is not a client secret)",
                what()
            )));
        };
        match &config.json_field {
            None => Ok(text.to_owned()),
            Some(field) => serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|json| json.get(field)?.as_str().map(str::to_owned))
                .ok_or_else(|| {
                    Error::invalid_config(format!(
                        "{} is not a JSON object with the string field {field:?}",
                        what()
                    ))
                }),
        }
    }
}

/// Reads an answer, at most [`MAX_ANSWER`] bytes (frame by frame, as the token endpoint's
/// answers are, for the same reason: `Limited::collect` trips rustc's `Send` inference).
async fn read(
    response: Response<http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>>,
) -> Result<Bytes, Error> {
    let mut body = response.into_body();
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            Error::with_source(
                ErrorKind::Unavailable,
                "AWS Secrets Manager's answer broke off",
                e,
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_ANSWER {
                return Err(Error::new(
                    ErrorKind::InvalidResponse,
                    "AWS Secrets Manager's answer is larger than 64 KiB",
                ));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// An error answer of Secrets Manager (`{"__type": "...", "message": "..."}`) as an [`Error`]:
/// throttling and 5xx pass; a missing secret, a denied or unsigned request are for good.
fn failure(status: StatusCode, body: &[u8], what: &str) -> Error {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let kind = json
        .as_ref()
        .and_then(|j| j.get("__type")?.as_str())
        .map(|t| t.rsplit('#').next().unwrap_or(t).to_owned())
        .unwrap_or_default();
    if status.is_server_error() || kind == "InternalServiceError" {
        return Error::new(
            ErrorKind::Unavailable,
            format!("{what} is unavailable (HTTP {status})"),
        );
    }
    if status == StatusCode::TOO_MANY_REQUESTS || kind.contains("Throttling") {
        return Error::new(
            ErrorKind::RateLimited,
            format!("{what} is throttling this client ({kind})"),
        );
    }
    let kind = if kind.is_empty() {
        format!("HTTP {status}")
    } else {
        kind
    };
    Error::invalid_config(format!("{what} refused to give the client secret: {kind}"))
}
