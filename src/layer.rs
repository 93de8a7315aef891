//! [`CognitoAuthLayer`] and its builder: configuration and validation.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower::Layer;
use tower::Service;

use crate::cache::{Stats, TokenCache, TokenCacheBuilder};
use crate::error::{BoxError, Error};
use crate::grant::TokenSource;
use crate::grant::{ClientAuth, ClientCredentialsBuilder, ClientSecret};
use crate::replay::Replay;
use crate::service::CognitoAuth;
use crate::token::AccessToken;
use crate::trailers::WatchTrailersLayer;

/// The default [`replay_body_limit`](CognitoAuthLayerBuilder::replay_body_limit): 64 KiB.
pub const DEFAULT_REPLAY_BODY_LIMIT: usize = 64 * 1024;

/// A [`Layer`] that puts a valid OAuth 2.0 access token on every request.
///
/// Build it with [`CognitoAuthLayer::builder`]. Clones share one token cache, so one layer
/// cloned into many services costs one token for all of them. See the [crate docs](crate) for
/// an example.
#[derive(Clone)]
pub struct CognitoAuthLayer {
    cache: TokenCache,
    replay: Replay,
    replay_body_limit: usize,
}

impl CognitoAuthLayer {
    /// A builder; see [`CognitoAuthLayerBuilder`].
    pub fn builder() -> CognitoAuthLayerBuilder {
        CognitoAuthLayerBuilder::default()
    }

    /// A usable access token, for callers that need it raw (a WebSocket handshake, say).
    ///
    /// # Errors
    ///
    /// The refresh's [`Error`] when no usable token could be had.
    pub async fn token(&self) -> Result<AccessToken, Error> {
        self.cache.token().await
    }

    /// The counters so far: token requests, failures, requests that waited, replays.
    pub fn stats(&self) -> Stats {
        self.cache.stats()
    }

    /// The token cache the layer's services share.
    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    /// A layer to put *under* this one, next to the transport, that drops a token which a gRPC
    /// stream rejects in its trailers (`grpc-status: 16` after the call started, which cannot
    /// be replayed). Opt-in; see [`trailers`](crate::trailers).
    pub fn watch_trailers(&self) -> WatchTrailersLayer {
        WatchTrailersLayer::new(self.cache.clone())
    }
}

impl CognitoAuthLayer {
    /// A layer over a cache you built yourself (with [`TokenCache::builder`]), whose token
    /// its services then share with every other user of that cache: a CLI that also needs the
    /// raw token, a test that drives the cache. Replay is [`Replay::Always`] with the default
    /// body limit; change them with [`replay`](Self::replay) and
    /// [`replay_body_limit`](Self::replay_body_limit). `From<TokenCache>` does the same.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_cognito_auth::{AccessToken, BoxFuture, CognitoAuthLayer, Error, Replay};
    /// use tower_cognito_auth::{Token, TokenCache, TokenSource};
    ///
    /// struct Fixed;
    ///
    /// impl TokenSource for Fixed {
    ///     fn fetch(&self) -> BoxFuture<'_, Result<Token, Error>> {
    ///         Box::pin(async {
    ///             let expires_at = tokio::time::Instant::now() + Duration::from_secs(3600);
    ///             Ok(Token::new(AccessToken::new("t0k3n")?, expires_at))
    ///         })
    ///     }
    /// }
    ///
    /// # fn main() -> Result<(), Error> {
    /// let cache = TokenCache::builder(Fixed).build()?;
    /// let layer = CognitoAuthLayer::from_cache(cache.clone()).replay(Replay::IdempotentOnly);
    /// assert_eq!(layer.stats(), cache.stats());
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_cache(cache: TokenCache) -> Self {
        Self {
            cache,
            replay: Replay::default(),
            replay_body_limit: DEFAULT_REPLAY_BODY_LIMIT,
        }
    }

    /// Which requests this layer's services replay once after a rejection. See
    /// [`CognitoAuthLayerBuilder::replay`].
    pub fn replay(mut self, replay: Replay) -> Self {
        self.replay = replay;
        self
    }

    /// The largest body this layer's services keep for a replay. See
    /// [`CognitoAuthLayerBuilder::replay_body_limit`].
    pub fn replay_body_limit(mut self, limit: usize) -> Self {
        self.replay_body_limit = limit;
        self
    }
}

#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
impl CognitoAuthLayer {
    /// A [reqwest-middleware](https://docs.rs/reqwest-middleware) middleware over this layer's
    /// cache: tower services and reqwest clients built from one layer share one token. See
    /// [`reqwest_auth`](crate::reqwest_auth).
    pub fn reqwest_middleware(&self) -> crate::reqwest_auth::CognitoAuthMiddleware {
        crate::reqwest_auth::CognitoAuthMiddleware::new(
            self.cache.clone(),
            self.replay,
            self.replay_body_limit,
        )
    }
}

impl From<TokenCache> for CognitoAuthLayer {
    fn from(cache: TokenCache) -> Self {
        Self::from_cache(cache)
    }
}

impl<S> Layer<S> for CognitoAuthLayer {
    type Service = CognitoAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CognitoAuth::new(
            inner,
            self.cache.clone(),
            self.replay,
            self.replay_body_limit,
        )
    }
}

impl fmt::Debug for CognitoAuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CognitoAuthLayer")
            .field("cache", &self.cache)
            .field("replay", &self.replay)
            .field("replay_body_limit", &self.replay_body_limit)
            .finish()
    }
}

/// Builds a [`CognitoAuthLayer`]. Every setter takes and returns `Self` and states its default;
/// [`build`](Self::build) checks them all.
///
/// Token settings are those of [`ClientCredentialsBuilder`]; cache settings those of
/// [`TokenCacheBuilder`].
#[derive(Default)]
pub struct CognitoAuthLayerBuilder {
    credentials: ClientCredentialsBuilder,
    /// The credential setters called, so that `build` can refuse them beside a token source.
    credential_settings: Vec<&'static str>,
    source: Option<Box<dyn TokenSource>>,
    /// Whether `source` is a user session (its cache sets no expiry gauge).
    session: bool,
    refresh_ahead: Option<Duration>,
    min_validity: Option<Duration>,
    background_refresh: bool,
    refresh_deadline: Option<Duration>,
    invalidation_throttle: Option<Duration>,
    replay: Replay,
    replay_body_limit: Option<usize>,
    metrics_client: Option<String>,
    #[cfg(feature = "store")]
    store: Option<std::sync::Arc<dyn crate::store::TokenStore>>,
}

impl fmt::Debug for CognitoAuthLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CognitoAuthLayerBuilder")
            .field("credentials", &self.credentials)
            .field("custom_source", &self.source.is_some())
            .field("replay", &self.replay)
            .finish_non_exhaustive()
    }
}

impl CognitoAuthLayerBuilder {
    /// The token endpoint's URL; `https://` for any host, `http://` for loopback hosts only.
    /// See [`ClientCredentialsBuilder::token_url`].
    pub fn token_url(mut self, url: impl AsRef<str>) -> Self {
        self.credentials = self.credentials.token_url(url);
        self.credential_settings.push("token_url");
        self
    }

    /// The token endpoint of a Cognito domain:
    /// `https://{domain}.auth.{region}.amazoncognito.com/oauth2/token`.
    pub fn cognito_domain(mut self, domain: impl Into<String>, region: impl Into<String>) -> Self {
        self.credentials = self.credentials.cognito_domain(domain, region);
        self.credential_settings.push("cognito_domain");
        self
    }

    /// The app client's id. Required, unless [`token_source`](Self::token_source) is used.
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.credentials = self.credentials.client_id(client_id);
        self.credential_settings.push("client_id");
        self
    }

    /// The app client's secret. Required, unless [`token_source`](Self::token_source),
    /// [`client_secret_source`](Self::client_secret_source) or [`ClientAuth::PrivateKeyJwt`]
    /// is used.
    /// It never appears in `Debug` output, logs or errors.
    pub fn client_secret(mut self, client_secret: impl Into<String>) -> Self {
        self.credentials = self.credentials.client_secret(client_secret);
        self.credential_settings.push("client_secret");
        self
    }

    /// Where to read the app client's secret at each token request (a file that is rewritten
    /// when the secret rotates, or a function of yours); instead of
    /// [`client_secret`](Self::client_secret). `build()` does not read it; a changed secret is
    /// used from the next token request on, and heals an `invalid_client` at once. See
    /// [`ClientSecret`] and [`ClientCredentialsBuilder::client_secret_source`].
    ///
    /// ```no_run
    /// use tower_cognito_auth::{ClientSecret, CognitoAuthLayer};
    ///
    /// # fn main() -> Result<(), tower_cognito_auth::Error> {
    /// let auth = CognitoAuthLayer::builder()
    ///     .cognito_domain("my-pool", "us-east-1")
    ///     .client_id("my-client-id")
    ///     .client_secret_source(ClientSecret::from_file("/run/secrets/cognito-client-secret"))
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn client_secret_source(mut self, source: ClientSecret) -> Self {
        self.credentials = self.credentials.client_secret_source(source);
        self.credential_settings.push("client_secret_source");
        self
    }

    /// The key that seals the token in the [shared store](Self::shared_store) when the secret
    /// comes from [`client_secret_source`](Self::client_secret_source): at least 32 random
    /// bytes, the same in every process. See [`ClientCredentialsBuilder::shared_store_key`].
    /// Default is none.
    pub fn shared_store_key(mut self, key: impl Into<String>) -> Self {
        self.credentials = self.credentials.shared_store_key(key);
        self.credential_settings.push("shared_store_key");
        self
    }

    /// Adds a scope to request; repeatable. Default is none (the client's default scopes).
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.credentials = self.credentials.scope(scope);
        self.credential_settings.push("scope");
        self
    }

    /// HTTP Basic (the default), the client id and secret in the form body, or a signed JWT
    /// instead of the secret ([`ClientAuth::PrivateKeyJwt`] with a key and no secret,
    /// [`ClientAuth::ClientSecretJwt`]). See [`ClientCredentialsBuilder::client_auth`].
    pub fn client_auth(mut self, client_auth: ClientAuth) -> Self {
        self.credentials = self.credentials.client_auth(client_auth);
        self.credential_settings.push("client_auth");
        self
    }

    /// The HTTP client for token requests. Default is the built-in HTTPS client (feature
    /// `rustls`). See [`ClientCredentialsBuilder::http_client`].
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
        self.credentials = self.credentials.http_client(client);
        self.credential_settings.push("http_client");
        self
    }

    /// Sends token requests through this HTTP proxy (`http://[user:password@]host[:port]`)
    /// instead of the one `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` name (the default, with
    /// `NO_PROXY` honoured). See [`ClientCredentialsBuilder::proxy`].
    #[cfg(feature = "rustls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
    pub fn proxy(mut self, url: impl Into<String>) -> Self {
        self.credentials = self.credentials.proxy(url);
        self.credential_settings.push("proxy");
        self
    }

    /// Token requests go directly to the token endpoint, whatever the environment's proxy
    /// variables say. Default: the environment's proxy. See [`ClientCredentialsBuilder::no_proxy`].
    #[cfg(feature = "rustls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
    pub fn no_proxy(mut self) -> Self {
        self.credentials = self.credentials.no_proxy();
        self.credential_settings.push("no_proxy");
        self
    }

    /// Trusts these certificate authorities (PEM) beside the built-in roots; repeatable.
    /// Default is none. See [`ClientCredentialsBuilder::root_certificates`].
    #[cfg(feature = "rustls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
    pub fn root_certificates(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.credentials = self.credentials.root_certificates(pem);
        self.credential_settings.push("root_certificates");
        self
    }

    /// Sends the token requests through the application's own [`reqwest::Client`] (feature
    /// `reqwest`), so that a reqwest-only service carries one HTTP and TLS stack. Default is the
    /// built-in client. See [`ClientCredentialsBuilder::reqwest_client`].
    #[cfg(feature = "reqwest")]
    #[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
    pub fn reqwest_client(mut self, client: reqwest::Client) -> Self {
        self.credentials = self.credentials.reqwest_client(client);
        self.credential_settings.push("reqwest_client");
        self
    }

    /// How long one token request may take. Default is 10 seconds.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.credentials = self.credentials.request_timeout(timeout);
        self.credential_settings.push("request_timeout");
        self
    }

    /// How many times one token request may be sent, the first included, when the endpoint
    /// answers `429` or `5xx` or cannot be reached. Default is 4. See
    /// [`ClientCredentialsBuilder::max_attempts`].
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.credentials = self.credentials.max_attempts(attempts);
        self.credential_settings.push("max_attempts");
        self
    }

    /// The overall time one fetch may take, retries and their waits included. Default is 20
    /// seconds. See [`ClientCredentialsBuilder::fetch_deadline`].
    pub fn fetch_deadline(mut self, deadline: Duration) -> Self {
        self.credentials = self.credentials.fetch_deadline(deadline);
        self.credential_settings.push("fetch_deadline");
        self
    }

    /// Fetch tokens from this source (a [`RefreshTokenGrant`](crate::RefreshTokenGrant), your
    /// own [`TokenSource`]) instead of the client_credentials grant. The credential setters
    /// above (`token_url`, `client_id`, … `fetch_deadline`) configure that grant, so
    /// [`build`](Self::build) refuses them beside a token source: configure the source itself.
    pub fn token_source<S: TokenSource>(mut self, source: S) -> Self {
        self.session = crate::cache::is_user_session::<S>();
        self.source = Some(Box::new(source));
        self
    }

    /// Refresh this long before expiry, while the token is still served. Default is 300
    /// seconds, cut to half the lifetime of short-lived tokens.
    /// See [`TokenCacheBuilder::refresh_ahead`].
    pub fn refresh_ahead(mut self, refresh_ahead: Duration) -> Self {
        self.refresh_ahead = Some(refresh_ahead);
        self
    }

    /// Never send a token with less life than this left. Default is 30 seconds, cut to a tenth
    /// of the lifetime of short-lived tokens. See [`TokenCacheBuilder::min_validity`].
    pub fn min_validity(mut self, min_validity: Duration) -> Self {
        self.min_validity = Some(min_validity);
        self
    }

    /// Keep the token fresh from a background task even with no traffic. Default is off.
    /// See [`TokenCacheBuilder::background_refresh`].
    pub fn background_refresh(mut self, enabled: bool) -> Self {
        self.background_refresh = enabled;
        self
    }

    /// The most one refresh may take, retries included. Default is 30 seconds.
    pub fn refresh_deadline(mut self, deadline: Duration) -> Self {
        self.refresh_deadline = Some(deadline);
        self
    }

    /// At most one 401-driven refresh per period, so an API that rejects every token does not
    /// turn every request into a token request. Default is 10 seconds.
    pub fn invalidation_throttle(mut self, period: Duration) -> Self {
        self.invalidation_throttle = Some(period);
        self
    }

    /// Shares one token with the whole fleet through `store`, e.g.
    /// `RedisStore` (feature `redis`): one token request per token
    /// lifetime for all processes, instead of one per process. Requests never touch the store,
    /// and trouble with it never fails one. See [`TokenCacheBuilder::shared_store`] and
    /// [`store`](crate::store). Default is none.
    #[cfg(feature = "store")]
    #[cfg_attr(docsrs, doc(cfg(feature = "store")))]
    pub fn shared_store(mut self, store: impl crate::store::TokenStore) -> Self {
        self.store = Some(std::sync::Arc::new(store));
        self
    }

    /// Which requests are replayed once after a rejection. Default is [`Replay::Always`].
    pub fn replay(mut self, replay: Replay) -> Self {
        self.replay = replay;
        self
    }

    /// The largest body kept for a replay, in bytes. A larger or streaming body is sent
    /// without a copy and is not replayed (the rejection goes back to the caller, and the next
    /// request gets a new token). Each request in flight holds up to this much: with the
    /// default 64 KiB and 1,000 concurrent requests, up to 64 MiB. `0` keeps only empty bodies
    /// (GET and the like still replay). Default is 64 KiB.
    pub fn replay_body_limit(mut self, limit: usize) -> Self {
        self.replay_body_limit = Some(limit);
        self
    }

    /// The `client` label of the crate's [metrics](crate::metrics) (feature `metrics`), for a
    /// process with several caches of one client. Default is the client id (of the token
    /// source's, with [`token_source`](Self::token_source)).
    pub fn metrics_client(mut self, label: impl Into<String>) -> Self {
        let label = label.into();
        self.credentials = self.credentials.metrics_client(label.clone());
        self.metrics_client = Some(label);
        self
    }

    /// Checks the configuration and builds the layer. No token is fetched yet (unless
    /// `background_refresh` is on inside a Tokio runtime).
    ///
    /// # Errors
    ///
    /// An [`Error`] of kind [`InvalidConfig`](crate::ErrorKind::InvalidConfig) for anything
    /// [`ClientCredentialsBuilder::build`] rejects (no token URL, `http://` for a host that is
    /// not loopback, a malformed Cognito domain or region, a missing client id or secret, both
    /// `client_secret` and `client_secret_source`, an invalid scope, a zero timeout), for a zero `refresh_deadline`, and for credential
    /// setters called beside [`token_source`](Self::token_source).
    pub fn build(self) -> Result<CognitoAuthLayer, Error> {
        let source: Box<dyn TokenSource> = match self.source {
            Some(_) if !self.credential_settings.is_empty() => {
                return Err(Error::invalid_config(format!(
                    "`token_source` is set, so the client_credentials settings {} would not be \
                     used: set them on the token source instead",
                    self.credential_settings.join(", ")
                )));
            }
            Some(source) => source,
            None => Box::new(self.credentials.build()?),
        };
        let mut cache: TokenCacheBuilder = TokenCache::builder_boxed(source, self.session)
            .background_refresh(self.background_refresh);
        if let Some(label) = self.metrics_client {
            cache = cache.metrics_client(label);
        }
        if let Some(d) = self.refresh_ahead {
            cache = cache.refresh_ahead(d);
        }
        if let Some(d) = self.min_validity {
            cache = cache.min_validity(d);
        }
        if let Some(d) = self.refresh_deadline {
            cache = cache.refresh_deadline(d);
        }
        if let Some(d) = self.invalidation_throttle {
            cache = cache.invalidation_throttle(d);
        }
        #[cfg(feature = "store")]
        if let Some(store) = self.store {
            cache = cache.shared_store_arc(store);
        }
        Ok(CognitoAuthLayer {
            cache: cache.build()?,
            replay: self.replay,
            replay_body_limit: self.replay_body_limit.unwrap_or(DEFAULT_REPLAY_BODY_LIMIT),
        })
    }
}
