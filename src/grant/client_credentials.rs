//! [`ClientCredentials`], the OAuth 2.0 client_credentials grant against Cognito's (or any)
//! token endpoint: how a service gets its own token.
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
//!     .cognito_domain("my-pool", "us-east-1")
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
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower::Service;

use super::client_secret::{ClientSecret, SecretCell};
use super::endpoint::{
    ClientAuth, Endpoint, HttpClient, HttpsOptions, RetryPolicy, Secret, TokenUrl,
    client_authentication, client_or_built_in, erase_client, join_scopes, require_client_id,
};
use crate::backoff::Backoff;
use crate::error::{BoxError, Error};
use crate::grant::{BoxFuture, SharedIdentity, TokenSource};
use crate::token::{Token, parse_token_response};

/// The OAuth 2.0 client_credentials grant (RFC 6749 §4.4).
///
/// Each [`fetch`](TokenSource::fetch) POSTs `grant_type=client_credentials` (and `scope`,
/// when set) to the token URL. `429`, `5xx`, connection failures and timeouts are retried
/// with exponential backoff and full jitter (100 ms doubling to 3 s, at most 4 attempts),
/// honouring `Retry-After`, within an overall deadline; a `4xx` answer such as
/// `invalid_client` is returned at once. Each attempt has its own timeout.
///
/// Cloning is cheap and shares the configuration. `Debug` shows the token URL, the client id
/// and the scope, never the secret. See the [module docs](crate::grant::client_credentials) for an example.
#[derive(Clone)]
pub struct ClientCredentials {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    client_id: String,
    scope: Option<String>,
    client_auth: ClientAuth,
    /// Read at each fetch (and kept for [`SharedIdentity`] when fixed); never printed. None
    /// under [`ClientAuth::PrivateKeyJwt`].
    secret: Option<SecretCell>,
    /// A [`ClientAssertionKey::from_file`](crate::ClientAssertionKey::from_file)'s file,
    /// watched as a secret is: a rewritten key is a new credential.
    key_file: Option<SecretCell>,
    /// The key that seals the token in a shared store when the secret is not fixed.
    store_key: Option<Secret>,
    /// The form without the client's authentication: `grant_type` and `scope`.
    form_head: String,
    /// The token URL, an assertion's `aud`.
    audience: String,
    retry: RetryPolicy,
}

impl ClientCredentials {
    /// A builder; see [`ClientCredentialsBuilder`].
    pub fn builder() -> ClientCredentialsBuilder {
        ClientCredentialsBuilder::default()
    }

    async fn fetch_with_retries(inner: Arc<Inner>) -> Result<Token, Error> {
        if let Some(key_file) = &inner.key_file {
            // Only to see a change: the key itself is read and parsed where it signs.
            let _ = key_file.read().await;
        }
        let result = Self::fetch_with_secret(&inner).await;
        let failed_for_good = matches!(&result, Err(error) if error.is_permanent());
        for cell in [&inner.secret, &inner.key_file].into_iter().flatten() {
            cell.note(failed_for_good);
        }
        result
    }

    /// Reads the secret (no request without one), then sends the token request, retried as
    /// the policy says.
    async fn fetch_with_secret(inner: &Inner) -> Result<Token, Error> {
        let secret = match &inner.secret {
            Some(cell) => Some(cell.read().await?),
            None => None,
        };
        let (body, authorization) = {
            let mut form = form_urlencoded::Serializer::for_suffix(inner.form_head.clone(), 0);
            let authorization = client_authentication(
                &mut form,
                &inner.client_auth,
                &inner.client_id,
                secret.as_deref(),
                &inner.audience,
            )?;
            (Bytes::from(form.finish()), authorization)
        };
        let endpoint = &inner.endpoint;
        let (body, authorization) = (&body, &authorization);
        endpoint
            .with_retries(&inner.retry, |sent_at| async move {
                let answer = endpoint
                    .post_authorized(body.clone(), authorization.as_ref(), sent_at)
                    .await?;
                let (token, _lifetime) =
                    parse_token_response(&answer.body, answer.sent_at, answer.sent_at_wall)?;
                Ok(token)
            })
            .await
    }
}

impl TokenSource for ClientCredentials {
    fn fetch(&self) -> BoxFuture<'_, Result<Token, Error>> {
        Box::pin(Self::fetch_with_retries(Arc::clone(&self.inner)))
    }

    fn client_id(&self) -> Option<&str> {
        Some(&self.inner.client_id)
    }

    /// The token URL, the client id and the scopes, keyed by the client secret when it is
    /// fixed, else by the [`shared_store_key`](ClientCredentialsBuilder::shared_store_key)
    /// (`None` without one: a secret that rotates cannot seal a token that outlives it).
    fn shared_identity(&self) -> Option<SharedIdentity> {
        let inner = &self.inner;
        let key = match (&inner.store_key, inner.secret.as_ref()?.fixed()) {
            (Some(key), _) => key.0.as_str(),
            (None, Some(secret)) => secret,
            (None, None) => return None,
        };
        let scopes = inner.scope.as_deref().unwrap_or_default().split(' ');
        Some(SharedIdentity::client_credentials(
            &inner.endpoint.token_url.to_string(),
            &inner.client_id,
            scopes.filter(|s| !s.is_empty()),
            key,
        ))
    }

    /// Changes when a secret read from a file or a function does (see [`ClientSecret`]), or a
    /// key read from a file.
    fn epoch(&self) -> u64 {
        let inner = &self.inner;
        let secret = inner.secret.as_ref().map_or(0, SecretCell::epoch);
        secret.wrapping_add(inner.key_file.as_ref().map_or(0, SecretCell::epoch))
    }
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("token_url", &self.inner.endpoint.token_url)
            .field("client_id", &self.inner.client_id)
            .field("client_secret", &self.inner.secret)
            .field("scope", &self.inner.scope)
            .field("client_auth", &self.inner.client_auth)
            .field("request_timeout", &self.inner.endpoint.request_timeout)
            .finish_non_exhaustive()
    }
}

/// Builds a [`ClientCredentials`]. Every setter takes and returns `Self`.
///
/// `CognitoAuthLayer::builder()` has the same setters and forwards them here.
#[derive(Clone, Default)]
pub struct ClientCredentialsBuilder {
    token_url: Option<TokenUrl>,
    client_id: Option<String>,
    client_secret: Option<Secret>,
    secret_source: Option<ClientSecret>,
    store_key: Option<Secret>,
    scopes: Vec<String>,
    client_auth: ClientAuth,
    http: Option<HttpClient>,
    https: HttpsOptions,
    request_timeout: Option<Duration>,
    max_attempts: Option<u32>,
    deadline: Option<Duration>,
    metrics_client: Option<String>,
}

impl fmt::Debug for ClientCredentialsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentialsBuilder")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("client_secret_source", &self.secret_source)
            .field("scopes", &self.scopes)
            .field("client_auth", &self.client_auth)
            .field("https", &self.https)
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

    /// The app client's secret. Required, unless
    /// [`client_secret_source`](Self::client_secret_source) is set. It never appears in `Debug`
    /// output, logs or errors.
    pub fn client_secret(mut self, client_secret: impl Into<String>) -> Self {
        self.client_secret = Some(Secret(client_secret.into()));
        self
    }

    /// Where to read the app client's secret at each token request: a file rewritten when it
    /// rotates (Kubernetes, the Secrets Store CSI driver, Vault agent), or a function of yours.
    /// `build()` does not read it. Instead of [`client_secret`](Self::client_secret), not beside
    /// it. See [`ClientSecret`].
    ///
    /// ```no_run
    /// use tower_cognito_auth::{ClientCredentials, ClientSecret};
    ///
    /// # fn main() -> Result<(), tower_cognito_auth::Error> {
    /// let source = ClientCredentials::builder()
    ///     .cognito_domain("my-pool", "us-east-1")
    ///     .client_id("my-client-id")
    ///     .client_secret_source(ClientSecret::from_file("/run/secrets/cognito-client-secret"))
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn client_secret_source(mut self, source: ClientSecret) -> Self {
        self.secret_source = Some(source);
        self
    }

    /// The key that seals the token in a fleet's shared store (feature `store`) when the
    /// secret comes from [`client_secret_source`](Self::client_secret_source): at least 32
    /// random bytes, the same in every process of the fleet. A fixed client secret seals the
    /// token itself and needs none. A secret that rotates cannot: processes on the old and the
    /// new secret would seal with different keys and not see each other's tokens while the
    /// rotation lasts, so the sealing key must be one that does not rotate with it. Whoever
    /// can read the store but lacks this key learns nothing from it. Default is none.
    pub fn shared_store_key(mut self, key: impl Into<String>) -> Self {
        self.store_key = Some(Secret(key.into()));
        self
    }

    /// Adds a scope to request, e.g. `wallets/read`; repeatable. Scopes are sent
    /// space-separated. By default none is sent and the endpoint grants the client's
    /// default scopes.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scopes.push(scope.into());
        self
    }

    /// How the client authenticates: with the secret ([`ClientAuth::Basic`], [`ClientAuth::Post`],
    /// [`ClientAuth::ClientSecretJwt`]) or with a private key ([`ClientAuth::PrivateKeyJwt`],
    /// which needs no secret). Default is [`ClientAuth::Basic`].
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

    /// Sends the token requests of the built-in client through this HTTP proxy, whatever the
    /// environment says: `http://host:port`, or `http://user:password@host:port` for a proxy
    /// that asks for credentials (sent in `Proxy-Authorization`, printed nowhere; percent-encode
    /// reserved characters). An `https://` token URL goes through a `CONNECT` tunnel, so the
    /// proxy sees the host and port but not the secret.
    ///
    /// Default: the proxy the environment names, as curl, reqwest and the AWS SDKs read it:
    /// `HTTPS_PROXY` (for `https://`), `HTTP_PROXY` (for `http://`), `ALL_PROXY` (for both),
    /// `NO_PROXY` (hosts, domains and IP ranges to reach directly), each also in lower case;
    /// read once, by [`build`](Self::build). Checked by `build`; not with
    /// [`http_client`](Self::http_client), whose client has its own settings.
    ///
    /// ```
    /// # fn main() -> Result<(), tower_cognito_auth::Error> {
    /// let source = tower_cognito_auth::ClientCredentials::builder()
    ///     .cognito_domain("my-pool", "us-east-1")
    ///     .client_id("my-client-id")
    ///     .client_secret("my-client-secret")
    ///     .proxy("http://egress.internal:3128")
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "rustls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
    pub fn proxy(mut self, url: impl Into<String>) -> Self {
        self.https.proxy(url.into());
        self
    }

    /// The built-in client connects directly, whatever `HTTPS_PROXY` and the like say.
    /// Default: the environment's proxy; see [`proxy`](Self::proxy).
    #[cfg(feature = "rustls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
    pub fn no_proxy(mut self) -> Self {
        self.https.no_proxy();
        self
    }

    /// Trusts these certificate authorities too (PEM, one or more certificates), beside the
    /// built-in roots: a company CA that signs a private token endpoint or a TLS-inspecting
    /// proxy. Repeatable. The built-in roots are webpki's (Mozilla's), or the platform's store
    /// with the feature `native-roots`. Checked by [`build`](Self::build); not with
    /// [`http_client`](Self::http_client). Default is none.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let source = tower_cognito_auth::ClientCredentials::builder()
    ///     .token_url("https://auth.corp.example/oauth2/token")
    ///     .client_id("my-client-id")
    ///     .client_secret("my-client-secret")
    ///     .root_certificates(std::fs::read("/etc/ssl/corp-ca.pem")?)
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "rustls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
    pub fn root_certificates(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.https.root_certificates(pem.as_ref().to_vec());
        self
    }

    /// Sends the token requests through the application's own [`reqwest::Client`] (feature
    /// `reqwest`): its proxy, trust roots and connection pool, so that a service built on
    /// reqwest carries one HTTP and TLS stack. The same as [`http_client`](Self::http_client)
    /// with that client; the built-in client's settings (`proxy`, `root_certificates`) are then
    /// reqwest's to make. Default is the built-in client.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), tower_cognito_auth::Error> {
    /// let http = reqwest::Client::new();
    /// let source = tower_cognito_auth::ClientCredentials::builder()
    ///     .cognito_domain("my-pool", "us-east-1")
    ///     .client_id("my-client-id")
    ///     .client_secret("my-client-secret")
    ///     .reqwest_client(http.clone())
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "reqwest")]
    #[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
    pub fn reqwest_client(self, client: reqwest::Client) -> Self {
        self.http_client(crate::grant::reqwest_client::ReqwestHttp(client))
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

    /// The `client` label of the crate's [metrics](crate::metrics) (feature `metrics`), for a
    /// process with several caches of one client. Default is the client id.
    pub fn metrics_client(mut self, label: impl Into<String>) -> Self {
        self.metrics_client = Some(label.into());
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
    /// - the client id is missing or empty, or the client secret is missing or empty, or both
    ///   `client_secret` and `client_secret_source` are set (a secret source is not read here),
    ///   or a client secret is set beside [`ClientAuth::PrivateKeyJwt`] (which needs none);
    /// - a `shared_store_key` is shorter than 32 bytes;
    /// - a scope is empty or has characters RFC 6749 §3.3 does not allow (space, `"`, `\`);
    /// - `request_timeout`, `fetch_deadline` or `max_attempts` is zero;
    /// - no HTTP client was given and the feature `rustls` is off;
    /// - the proxy URL is not `http://[user:password@]host[:port]`, or root certificates are not
    ///   PEM certificates rustls accepts, or with `native-roots` the platform's store holds no
    ///   usable root;
    /// - `proxy`, `no_proxy` or `root_certificates` was called beside `http_client`.
    pub fn build(self) -> Result<ClientCredentials, Error> {
        let token_url = TokenUrl::resolve(self.token_url)?;
        let client_id = require_client_id(self.client_id)?;
        let keyed = matches!(self.client_auth, ClientAuth::PrivateKeyJwt(_));
        let secret = match (self.client_secret, self.secret_source) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid_config(
                    "both `client_secret` and `client_secret_source` are set: keep one",
                ));
            }
            (Some(_), None) | (None, Some(_)) if keyed => {
                return Err(Error::invalid_config(
                    "ClientAuth::PrivateKeyJwt signs with a key: a client secret would not be used",
                ));
            }
            (Some(Secret(s)), None) => Some(ClientSecret::new(s)),
            (None, Some(source)) => Some(source),
            (None, None) if keyed => None,
            (None, None) => {
                return Err(Error::invalid_config(
                    "no client secret: call `client_secret` or `client_secret_source`",
                ));
            }
        };
        let fixed = secret.as_ref().and_then(ClientSecret::fixed);
        if fixed.is_some_and(str::is_empty) {
            return Err(Error::invalid_config("the client secret is empty"));
        }
        if self.store_key.as_ref().is_some_and(|k| k.0.len() < 32) {
            return Err(Error::invalid_config(
                "the shared_store_key is shorter than 32 bytes",
            ));
        }
        let scope = join_scopes(&self.scopes)?;
        let request_timeout = self.request_timeout.unwrap_or(Duration::from_secs(10));
        let deadline = self.deadline.unwrap_or(Duration::from_secs(20));
        let max_attempts = self.max_attempts.unwrap_or(4);
        if request_timeout.is_zero() || deadline.is_zero() || max_attempts == 0 {
            return Err(Error::invalid_config(
                "request_timeout, fetch_deadline and max_attempts must not be zero",
            ));
        }
        let http = client_or_built_in(self.http, &self.https)?;

        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if let Some(scope) = &scope {
            form.append_pair("scope", scope);
        }
        if let Some(fixed) = fixed.filter(|_| !self.client_auth.is_assertion()) {
            // Found out now rather than at the first request: a secret a header cannot carry.
            client_authentication(
                &mut form_urlencoded::Serializer::new(String::new()),
                &self.client_auth,
                &client_id,
                Some(fixed),
                "",
            )?;
        }
        let audience = token_url.to_string();
        let key_file = match &self.client_auth {
            ClientAuth::PrivateKeyJwt(key) => key
                .file()
                .map(|path| SecretCell::new(ClientSecret::from_file(path))),
            _ => None,
        };
        Ok(ClientCredentials {
            inner: Arc::new(Inner {
                endpoint: Endpoint {
                    token_url,
                    authorization: None,
                    http,
                    request_timeout,
                    metrics: crate::metrics::Metrics::new(
                        self.metrics_client.as_deref().unwrap_or(&client_id),
                    ),
                },
                client_id,
                scope,
                client_auth: self.client_auth,
                secret: secret.map(SecretCell::new),
                key_file,
                store_key: self.store_key,
                form_head: form.finish(),
                audience,
                retry: RetryPolicy {
                    max_attempts,
                    deadline,
                    backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(3)),
                    retry_if: Error::is_retryable,
                },
            }),
        })
    }
}

#[cfg(test)]
mod tests;
