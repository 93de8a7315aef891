//! [`RefreshTokenGrantBuilder`]: the session's configuration, checked once by `build`.

use std::fmt;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tokio::sync::watch;
use tokio::time::Instant;
use tower::Service;

use super::restore::{Expiry, restored};
use super::sign_out::Revocation;
use super::{
    Inner, Latest, PersistHook, RefreshTokenGrant, RotationHook, Session, SessionStatus, TokenSet,
};
use crate::backoff::Backoff;
use crate::error::{BoxError, Error};
use crate::grant::client_secret::{ClientSecret, SecretCell};
use crate::grant::cognito_api::{RefreshFlow, UserPoolApi, api_url, parse_api_url};
use crate::grant::endpoint::{
    ClientAuth, Endpoint, HttpClient, HttpsOptions, RetryPolicy, Secret, TokenUrl,
    client_authentication, client_or_built_in, erase_client, join_scopes, never_sent,
    require_client_id,
};

/// Builds a [`RefreshTokenGrant`]. Every setter takes and returns `Self` and states its
/// default; [`build`](Self::build) checks them all.
///
/// Not `Clone`: it holds a refresh token, which only one session may use (with rotation, the
/// first exchange of one copy would make the other's token stale, and the other's next
/// exchange would end the session). Build once and clone the [`RefreshTokenGrant`]: clones
/// share one session.
///
/// ```compile_fail
/// let builder = tower_cognito_auth::RefreshTokenGrant::builder().refresh_token("r");
/// let _twice = (builder.clone(), builder);
/// ```
#[derive(Default)]
pub struct RefreshTokenGrantBuilder {
    token_url: Option<TokenUrl>,
    client_id: Option<String>,
    client_secret: Option<Secret>,
    secret_source: Option<ClientSecret>,
    scopes: Vec<String>,
    client_auth: ClientAuth,
    refresh_token: Option<Secret>,
    access_token: Option<(Secret, Expiry)>,
    id_token: Option<Secret>,
    on_rotation: Option<RotationHook>,
    persist: Option<PersistHook>,
    persist_timeout: Option<Duration>,
    max_unsaved_rotations: Option<u64>,
    revocation_url: Option<TokenUrl>,
    http: Option<HttpClient>,
    https: HttpsOptions,
    request_timeout: Option<Duration>,
    user_pool_api: Option<ApiUrl>,
    refresh_flow: RefreshFlow,
    username: Option<String>,
    device_key: Option<Secret>,
}

/// Where Cognito's user-pool API is, as the builder was told.
#[derive(Debug)]
enum ApiUrl {
    Region(String),
    Url(String),
}

impl fmt::Debug for RefreshTokenGrantBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshTokenGrantBuilder")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("client_secret_source", &self.secret_source)
            .field("scopes", &self.scopes)
            .field("client_auth", &self.client_auth)
            .field("refresh_token", &self.refresh_token)
            .field("access_token", &self.access_token.as_ref().map(|(t, _)| t))
            .field("on_rotation", &self.on_rotation.is_some())
            .field("persist", &self.persist.is_some())
            .field("user_pool_api", &self.user_pool_api)
            .field("refresh_flow", &self.refresh_flow)
            .field("username", &self.username)
            .field("device_key", &self.device_key)
            .field("https", &self.https)
            .finish_non_exhaustive()
    }
}

impl RefreshTokenGrantBuilder {
    /// The token endpoint's URL, e.g. `https://auth.example.com/oauth2/token`.
    ///
    /// `https://` is accepted for any host; `http://` only for loopback hosts (`127.0.0.0/8`,
    /// `[::1]`, and `localhost`, pinned to `127.0.0.1`). Checked by [`build`](Self::build).
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

    /// Refreshes through Cognito's user-pool API in `region`
    /// (`https://cognito-idp.{region}.amazonaws.com/`, `.amazonaws.com.cn` in the China
    /// regions) instead of a token endpoint, as Amplify
    /// and the AWS SDKs do: the way for a pool without a domain, and the only way to rotate
    /// refresh tokens outside the hosted domain. See [`refresh_flow`](Self::refresh_flow) for
    /// the operation, [`username`](Self::username) and [`device_key`](Self::device_key).
    /// Default is none: the token endpoint of [`token_url`](Self::token_url) or
    /// [`cognito_domain`](Self::cognito_domain) (set one or the other, not both). The region
    /// is checked by [`build`](Self::build).
    ///
    /// The API's errors map as the token endpoint's do: `NotAuthorizedException` (the refresh
    /// token expired, was revoked or was reused, or the secret is wrong) ends the session like
    /// `invalid_grant` ([`Error::is_invalid_grant`] is true; a refused secret from
    /// [`client_secret_source`](Self::client_secret_source) keeps the session, to heal once the
    /// source gives the right one), `TooManyRequestsException` is
    /// [`RateLimited`](crate::ErrorKind::RateLimited), `InternalErrorException` and 5xx are
    /// [`Unavailable`](crate::ErrorKind::Unavailable), any other refusal is permanent with
    /// Cognito's error type in the message. [`scope`](Self::scope) and
    /// [`client_auth`](Self::client_auth) do not apply.
    ///
    /// ```no_run
    /// use tower_cognito_auth::{CognitoAuthLayer, RefreshFlow, RefreshTokenGrant};
    /// # fn main() -> Result<(), tower::BoxError> {
    /// # let stored_refresh_token = String::new();
    /// let grant = RefreshTokenGrant::builder()
    ///     .user_pool_api("us-east-1")
    ///     .client_id("my-app-client-id") // .client_secret(..) when the app client has one
    ///     .refresh_token(stored_refresh_token)
    ///     .refresh_flow(RefreshFlow::GetTokensFromRefreshToken) // the default
    ///     .build()?;
    /// let auth = CognitoAuthLayer::builder().token_source(grant).build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn user_pool_api(mut self, region: impl Into<String>) -> Self {
        self.user_pool_api = Some(ApiUrl::Region(region.into()));
        self
    }

    /// Like [`user_pool_api`](Self::user_pool_api), at a URL given as it is: a VPC endpoint,
    /// or an emulator ([`testing::TokenEndpoint::user_pool_api_url`](crate::testing), moto).
    /// `https://` for any host, `http://` only for loopback hosts, as for
    /// [`token_url`](Self::token_url). Default is none.
    pub fn user_pool_api_url(mut self, url: impl AsRef<str>) -> Self {
        self.user_pool_api = Some(ApiUrl::Url(url.as_ref().to_owned()));
        self
    }

    /// Which operation of the user-pool API refreshes: [`RefreshFlow::GetTokensFromRefreshToken`]
    /// (the default; rotation when the app client has it on) or
    /// [`RefreshFlow::RefreshTokenAuth`] (`InitiateAuth`, no rotation). Used only with
    /// [`user_pool_api`](Self::user_pool_api).
    pub fn refresh_flow(mut self, flow: RefreshFlow) -> Self {
        self.refresh_flow = flow;
        self
    }

    /// The user's name in the pool, for the `SECRET_HASH` that
    /// [`RefreshFlow::RefreshTokenAuth`] sends when the app client has a secret
    /// (Base64(HMAC-SHA256(key: client secret, message: username + client id))). Default is
    /// none: the `username` claim of the latest access token, restored
    /// ([`access_token_from_jwt`](Self::access_token_from_jwt) and the like) or received.
    ///
    /// It must be the name Cognito keeps, the access token's `username` claim (for a pool
    /// that signs in by email, a UUID), not the email the user typed: a hash over another
    /// name is refused with `NotAuthorizedException`, which ends the session. With a secret,
    /// this flow, no username and no restored access token with that claim,
    /// [`build`](Self::build) fails and says to call this. Not used by
    /// [`RefreshFlow::GetTokensFromRefreshToken`], which sends the secret itself.
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// The device key of a pool with device tracking, captured at sign-in
    /// (`NewDeviceMetadata.DeviceKey`): sent as `DeviceKey` (or `DEVICE_KEY` under
    /// [`RefreshFlow::RefreshTokenAuth`]). Default is none. Used only with
    /// [`user_pool_api`](Self::user_pool_api).
    pub fn device_key(mut self, device_key: impl Into<String>) -> Self {
        self.device_key = Some(Secret(device_key.into()));
        self
    }

    /// The app client's id. Required.
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    /// The app client's secret, when it has one (a confidential client). Default is none: a
    /// public client, which sends `client_id` in the form and no `Authorization` header. It
    /// never appears in `Debug` output, logs or errors.
    pub fn client_secret(mut self, client_secret: impl Into<String>) -> Self {
        self.client_secret = Some(Secret(client_secret.into()));
        self
    }

    /// Where to read the app client's secret at each exchange (a file rewritten when it
    /// rotates, or a function of yours), for a confidential client; instead of
    /// [`client_secret`](Self::client_secret). `build()` does not read it. See
    /// [`ClientSecret`].
    pub fn client_secret_source(mut self, source: ClientSecret) -> Self {
        self.secret_source = Some(source);
        self
    }

    /// How a confidential client authenticates: [`ClientAuth::Basic`] (the default) or the id
    /// and secret in the form ([`ClientAuth::Post`]). Not used by a public client.
    pub fn client_auth(mut self, client_auth: ClientAuth) -> Self {
        self.client_auth = client_auth;
        self
    }

    /// Adds a scope to request; repeatable, sent space-separated. Default is none: the server
    /// grants the sign-in's scopes.
    ///
    /// OAuth 2.0 lets a refresh ask for the sign-in's scopes or fewer (RFC 6749 §6), but
    /// **Cognito ignores it**: its token endpoint reads `scope` for client_credentials only,
    /// and a refresh always gets the scopes of the sign-in. Down-scoping works only with
    /// servers that honour it; do not rely on it for least privilege at Cognito.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scopes.push(scope.into());
        self
    }

    /// The session's refresh token, as stored when the user signed in or as
    /// [`on_rotation`](Self::on_rotation) last gave it. Required. It never appears in `Debug`
    /// output, logs or errors.
    pub fn refresh_token(mut self, refresh_token: impl Into<String>) -> Self {
        self.refresh_token = Some(Secret(refresh_token.into()));
        self
    }

    /// An access token restored from storage, and when it expires on Tokio's clock. Default
    /// is none: the first request refreshes. For an expiry kept on disk, see
    /// [`access_token_expiring_at`](Self::access_token_expiring_at) and
    /// [`access_token_from_jwt`](Self::access_token_from_jwt).
    ///
    /// The first fetch hands it out without a request if it has not expired, and the cache
    /// judges it by its own margins, as any token: it is used while more than the layer's
    /// `min_validity` (at most a tenth of its lifetime) is left, its lifetime read from the
    /// JWT's `exp − iat`, or taken as an hour for an opaque token; one with less left is not
    /// used (a request that cannot be replayed would leave with a dying token), and the cache
    /// fetches at once, without counting a failure. It is renewed ahead of its expiry like
    /// any token. See [Restoring a session at
    /// startup](crate::grant::refresh_token#restoring-a-session-at-startup).
    pub fn access_token(mut self, access_token: impl Into<String>, expires_at: Instant) -> Self {
        self.access_token = Some((Secret(access_token.into()), Expiry::Tokio(expires_at)));
        self
    }

    /// Like [`access_token`](Self::access_token), with the expiry on the wall clock, as
    /// [`TokenSet::expires_at`] gave it and a file or database keeps it. It is converted to
    /// Tokio's clock when the first fetch hands it out. Default is none.
    ///
    /// The expiry is compared with this machine's clock: a clock that runs behind the
    /// server's by more than the layer's `min_validity` hands out a token the server already
    /// counts as expired. The API then answers `401`, and the layer drops the token and
    /// replays the request once with a new one.
    pub fn access_token_expiring_at(
        mut self,
        access_token: impl Into<String>,
        expires_at: SystemTime,
    ) -> Self {
        self.access_token = Some((Secret(access_token.into()), Expiry::Wall(expires_at)));
        self
    }

    /// Like [`access_token`](Self::access_token), with the expiry read from the token itself,
    /// a JWT (its `exp` claim, unverified: the API verifies it), as Cognito's access tokens
    /// are. Default is none. [`build`](Self::build) refuses a token that is not a JWT with an
    /// `exp`, and one whose `token_use` claim, when it has one, is not `access` (Cognito's
    /// `id_token` is a JWT with an `exp` too, and is not accepted by APIs that want an access
    /// token). An `exp` beyond what the platform's clock can represent counts as the longest
    /// lifetime the crate accepts.
    pub fn access_token_from_jwt(mut self, access_token: impl Into<String>) -> Self {
        self.access_token = Some((Secret(access_token.into()), Expiry::Jwt));
        self
    }

    /// Restores a session saved earlier, as one value: the [`TokenSet`]
    /// [`persist`](Self::persist) received (or one the application built, or deserialised
    /// with the feature `serde`). Sets the refresh token; the access token, if the set has
    /// one, with its wall-clock expiry (or, without one, the expiry read from the JWT, as
    /// [`access_token_from_jwt`](Self::access_token_from_jwt)); and the `id_token`
    /// ([`RefreshTokenGrant::id_token`]). Replaces what
    /// [`refresh_token`](Self::refresh_token) and the `access_token*` setters set.
    ///
    /// ```no_run
    /// use tower_cognito_auth::{RefreshTokenGrant, TokenSet};
    ///
    /// # fn load() -> TokenSet { TokenSet::new("r") }
    /// # fn main() -> Result<(), tower_cognito_auth::Error> {
    /// let saved: TokenSet = load(); // what `persist` saved last time
    /// let grant = RefreshTokenGrant::builder()
    ///     .cognito_domain("my-pool", "us-east-1")
    ///     .client_id("my-app-client-id")
    ///     .restore(saved)
    ///     .build()?;
    /// # let _ = grant;
    /// # Ok(())
    /// # }
    /// ```
    pub fn restore(mut self, set: TokenSet) -> Self {
        self.access_token = set.access_token.map(|token| {
            let expiry = match set.expires_at {
                Some(at) => Expiry::Wall(at),
                None => Expiry::Jwt,
            };
            (Secret(token.secret().to_owned()), expiry)
        });
        self.refresh_token = Some(set.refresh_token);
        self.id_token = set.id_token;
        self
    }

    /// Called with the new refresh token each time the server rotates it, so that the
    /// application can persist it. Default is none. For a save that is async or can fail (a
    /// database, a keychain), use [`persist`](Self::persist).
    ///
    /// It is called once per rotation, in rotation order and never twice at once, on the
    /// session exchange threads, before the new access token is handed out, and also when
    /// nobody waits for that token any more. Keep it short (write a file, send on a channel);
    /// while it runs no refresh can start. A panic in it is caught and logged, and the new
    /// token is still used, when panics unwind; under `panic = "abort"` it aborts the process,
    /// as any panic does.
    ///
    /// Deprecated: [`persist`](Self::persist) does the same job and more (the whole
    /// [`TokenSet`], async, failures retried and reported); one hook is enough. It still works.
    #[deprecated(
        since = "0.1.0",
        note = "use `persist`, which gets the whole TokenSet (refresh token included) and may fail"
    )]
    pub fn on_rotation(mut self, on_rotation: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.on_rotation = Some(Arc::new(on_rotation));
        self
    }

    /// Saves each new [`TokenSet`] (the refresh token, rotated or not, the access token and
    /// its wall-clock expiry, the `id_token`): an async hook that may fail. Default is none.
    ///
    /// After each successful exchange (and after a new sign-in), on the process's session
    /// exchange threads and after [`on_rotation`](Self::on_rotation), the grant awaits the
    /// hook's future before the new access token is handed out, at most
    /// [`persist_timeout`](Self::persist_timeout). Calls never overlap, and come in the order
    /// of the exchanges: a call that times out is not stopped (blocking work it started, a
    /// `tokio::fs` write or rename, could not be stopped anyway), and the next call waits for
    /// it first, at most `persist_timeout` more. When it fails, times out or panics, the
    /// exchange still succeeds: the new refresh token stays in memory (never the old one), the
    /// failure is reported ([`SessionStatus::unsaved`],
    /// [`unsaved_rotations`](SessionStatus::unsaved_rotations) and
    /// [`save_failures`](SessionStatus::save_failures) in [`RefreshTokenGrant::status`], a
    /// warning in the logs), and the newest set is saved again after 1 s, doubling to 60 s,
    /// until it is saved, a later exchange saves a newer one, or the grant is dropped (with a
    /// warning). [`RefreshTokenGrant::close`] tries once more. To stop refreshing while saves
    /// fail, see [`max_unsaved_rotations`](Self::max_unsaved_rotations).
    ///
    /// The hook runs on the exchange threads every session of the process shares: do not
    /// block in it (use async I/O, such as `tokio::fs`, or `spawn_blocking`), or other
    /// sessions' exchanges wait.
    ///
    /// Write it so that a crash cannot leave half a token: write a temporary file and rename
    /// it over the old one, or update a database row in one statement.
    ///
    /// ```no_run
    /// use tower_cognito_auth::{RefreshTokenGrant, TokenSet};
    ///
    /// # fn main() -> Result<(), tower_cognito_auth::Error> {
    /// let grant = RefreshTokenGrant::builder()
    ///     .cognito_domain("my-pool", "us-east-1")
    ///     .client_id("my-app-client-id")
    ///     .refresh_token("stored refresh token")
    ///     .persist(|set: TokenSet| async move {
    ///         let text = set.refresh_token().to_owned();
    ///         tokio::fs::write("session.tmp", text).await?;
    ///         tokio::fs::rename("session.tmp", "session").await
    ///     })
    ///     .build()?;
    /// # let _ = grant;
    /// # Ok(())
    /// # }
    /// ```
    pub fn persist<F, Fut, E>(mut self, persist: F) -> Self
    where
        F: Fn(TokenSet) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.persist = Some(Arc::new(move |set| {
            let saving = persist(set);
            Box::pin(async move { saving.await.map_err(Into::into) })
        }));
        self
    }

    /// How long one call of the [`persist`](Self::persist) hook may take before it counts as
    /// failed (it is tried again later; the call itself is left to finish, and the next one
    /// waits for it). It also bounds how much a slow save delays the new access token.
    /// Default is 10 seconds.
    pub fn persist_timeout(mut self, timeout: Duration) -> Self {
        self.persist_timeout = Some(timeout);
        self
    }

    /// Where [`sign_out`](RefreshTokenGrant::sign_out) revokes the refresh token (RFC 7009).
    /// Default: beside the token endpoint, its path's `/oauth2/token` replaced by
    /// `/oauth2/revoke`, as at a Cognito domain; none for a token URL with another path. The
    /// same rules as [`token_url`](Self::token_url), checked by [`build`](Self::build).
    pub fn revocation_url(mut self, url: impl AsRef<str>) -> Self {
        self.revocation_url = Some(TokenUrl::Url(url.as_ref().to_owned()));
        self
    }

    /// Stops refreshing while this many rotations of the refresh token are unsaved
    /// ([`SessionStatus::unsaved_rotations`]): each one is a refresh token that exists only in
    /// memory, lost with the process. Default is none: the session keeps refreshing, and
    /// [`RefreshTokenGrant::status`] reports the risk.
    ///
    /// Once reached, fetches fail with an error of kind
    /// [`Internal`](crate::ErrorKind::Internal) and no request, until a save succeeds (the
    /// failed save is tried again, 1 s doubling to 60 s, and by
    /// [`close`](RefreshTokenGrant::close)) or a new sign-in starts over. Requests keep the
    /// access token they have until it expires. Only counted with
    /// [`persist`](Self::persist); `0` counts as `1`.
    pub fn max_unsaved_rotations(mut self, max: u64) -> Self {
        self.max_unsaved_rotations = Some(max.max(1));
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

    /// Sends the built-in client's token requests through this HTTP proxy
    /// (`http://[user:password@]host[:port]`) instead of the one the environment names (the
    /// default: `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, with `NO_PROXY` honoured). The refresh
    /// token travels inside the `CONNECT` tunnel of an `https://` token URL. See
    /// [`ClientCredentialsBuilder::proxy`](crate::ClientCredentialsBuilder::proxy).
    #[cfg(feature = "rustls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
    pub fn proxy(mut self, url: impl Into<String>) -> Self {
        self.https.proxy(url.into());
        self
    }

    /// The built-in client connects directly, whatever the environment's proxy variables say.
    /// Default: the environment's proxy.
    #[cfg(feature = "rustls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
    pub fn no_proxy(mut self) -> Self {
        self.https.no_proxy();
        self
    }

    /// Trusts these certificate authorities (PEM) beside the built-in roots; repeatable.
    /// Default is none. See
    /// [`ClientCredentialsBuilder::root_certificates`](crate::ClientCredentialsBuilder::root_certificates).
    #[cfg(feature = "rustls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
    pub fn root_certificates(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.https.root_certificates(pem.as_ref().to_vec());
        self
    }

    /// Sends the exchanges through the application's own [`reqwest::Client`] (feature
    /// `reqwest`): its proxy, roots and pool; the same as [`http_client`](Self::http_client)
    /// with that client. Default is the built-in client. See
    /// [`ClientCredentialsBuilder::reqwest_client`](crate::ClientCredentialsBuilder::reqwest_client).
    #[cfg(feature = "reqwest")]
    #[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
    pub fn reqwest_client(self, client: reqwest::Client) -> Self {
        self.http_client(crate::grant::reqwest_client::ReqwestHttp(client))
    }

    /// How long one exchange may take, from sending to the end of the answer. Default is 10
    /// seconds.
    ///
    /// An answer that comes later is lost; the exchange then presents the same refresh token
    /// once more at once, which a server with a grace period (Cognito's
    /// `RetryGracePeriodSeconds`) accepts and a strict one answers by ending the session: keep
    /// it well above the endpoint's slowest answers. The exchange does not end earlier because
    /// the cache's `refresh_deadline` passed, a waiter gave up or its runtime shut down.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// Checks the configuration and builds the grant. No request is sent.
    ///
    /// # Errors
    ///
    /// An [`Error`] of kind [`InvalidConfig`](crate::ErrorKind::InvalidConfig), saying why, when:
    /// - no token URL was set, or it does not parse, has no host, carries credentials
    ///   (`user:pass@`), or is `http://` for a host that is not loopback, or neither http nor https;
    ///   the same rules for [`user_pool_api_url`](Self::user_pool_api_url);
    /// - a Cognito domain prefix is not 1 to 63 of `a-z`, `0-9`, `-` (not at either end), or the
    ///   region (here or in [`user_pool_api`](Self::user_pool_api)) does not look like
    ///   `us-east-1`;
    /// - both a token endpoint and the user-pool API were set;
    /// - with the user-pool API: a scope was set; the username or device key is empty; or
    ///   the app client has a secret, the flow is [`RefreshFlow::RefreshTokenAuth`], and
    ///   neither [`username`](Self::username) nor a restored access token with a `username`
    ///   claim says whose `SECRET_HASH` to send (the message names `.username(..)`);
    /// - with the user-pool API: a client authentication by assertion
    ///   ([`ClientAuth::PrivateKeyJwt`], [`ClientAuth::ClientSecretJwt`]), which it does not take;
    /// - the client id is missing or empty, or a client secret was given empty, or both
    ///   `client_secret` and `client_secret_source` are set (a secret source is not read here);
    /// - the refresh token is missing or empty;
    /// - the restored access token is empty, longer than 16 KiB, or has characters that cannot
    ///   go into an HTTP header, or [`access_token_from_jwt`](Self::access_token_from_jwt) was
    ///   given one that is not a JWT with an `exp` claim;
    /// - a scope is empty or has characters RFC 6749 §3.3 does not allow (space, `"`, `\`);
    /// - `request_timeout` or `persist_timeout` is zero;
    /// - no HTTP client was given and the feature `rustls` is off;
    /// - the proxy URL or the root certificates cannot be used, or they were set beside
    ///   `http_client` (see [`ClientCredentialsBuilder::build`](crate::ClientCredentialsBuilder::build)).
    pub fn build(self) -> Result<RefreshTokenGrant, Error> {
        let token_url = match (self.token_url, &self.user_pool_api) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid_config(
                    "both a token endpoint (`token_url` or `cognito_domain`) and Cognito's \
                     user-pool API (`user_pool_api` or `user_pool_api_url`) were set: set one",
                ));
            }
            (None, Some(ApiUrl::Region(region))) => api_url(region)?,
            (None, Some(ApiUrl::Url(url))) => parse_api_url(url)?,
            (None, None) => {
                return Err(Error::invalid_config(
                    "no endpoint: call `token_url`, `cognito_domain`, `user_pool_api` or \
                     `user_pool_api_url`",
                ));
            }
            (url, None) => TokenUrl::resolve(url)?,
        };
        let client_id = require_client_id(self.client_id)?;
        let source = match (self.client_secret, self.secret_source) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid_config(
                    "both `client_secret` and `client_secret_source` are set: keep one",
                ));
            }
            (Some(Secret(s)), None) => Some(ClientSecret::new(s)),
            (None, source) => source,
        };
        let secret = source.as_ref().and_then(ClientSecret::fixed);
        if secret.is_some_and(str::is_empty) {
            return Err(Error::invalid_config("the client secret is empty"));
        }
        let refresh_token = match self.refresh_token {
            Some(token) if !token.0.is_empty() => token,
            Some(_) => return Err(Error::invalid_config("the refresh token is empty")),
            None => {
                return Err(Error::invalid_config(
                    "no refresh token: call `refresh_token`",
                ));
            }
        };
        let stored = match self.access_token {
            Some((Secret(text), expiry)) => Some(restored(text, expiry)?),
            None => None,
        };
        let scope = join_scopes(&self.scopes)?;
        let user_pool_api = match self.user_pool_api {
            None => None,
            Some(_) => {
                if scope.is_some() {
                    return Err(Error::invalid_config(
                        "Cognito's user-pool API takes no scope: a refresh gets the sign-in's",
                    ));
                }
                let username = match self.username {
                    Some(name) if name.is_empty() => {
                        return Err(Error::invalid_config("the username is empty"));
                    }
                    other => other,
                };
                let device_key = match self.device_key {
                    Some(Secret(key)) if key.is_empty() => {
                        return Err(Error::invalid_config("the device key is empty"));
                    }
                    other => other.map(|Secret(key)| key),
                };
                let api =
                    UserPoolApi::new(self.refresh_flow, client_id.clone(), username, device_key);
                if let Some(token) = &stored {
                    api.saw_access_token(token.token.secret());
                }
                api.check_username(source.is_some())?;
                Some(api)
            }
        };
        let request_timeout = self.request_timeout.unwrap_or(Duration::from_secs(10));
        if request_timeout.is_zero() {
            return Err(Error::invalid_config("request_timeout must not be zero"));
        }
        let persist_timeout = self.persist_timeout.unwrap_or(Duration::from_secs(10));
        if persist_timeout.is_zero() {
            return Err(Error::invalid_config("persist_timeout must not be zero"));
        }
        let http = match self.http {
            // No client and no setting of the built-in one: the process's shared client.
            None if self.https.is_default() => shared_default_client()?,
            http => client_or_built_in(http, &self.https)?,
        };

        let mut tail = form_urlencoded::Serializer::new(String::new());
        if let Some(scope) = &scope {
            tail.append_pair("scope", scope);
        }
        // A secret read at each exchange authenticates it there; a fixed one (or none, a
        // public client) goes into the form's tail or the header now.
        if self.client_auth == ClientAuth::ClientSecretJwt && source.is_none() {
            return Err(Error::invalid_config(
                "ClientAuth::ClientSecretJwt needs a client secret",
            ));
        }
        let per_request_auth =
            self.client_auth.is_assertion() || (source.is_some() && secret.is_none());
        let audience = token_url.to_string();
        if user_pool_api.is_some() && self.client_auth.is_assertion() {
            return Err(Error::invalid_config(
                "Cognito's user-pool API takes the client secret in its body: client assertions \
                 (`ClientAuth::PrivateKeyJwt`, `ClientAuth::ClientSecretJwt`) are for token endpoints",
            ));
        }
        // The user-pool API authenticates the client in its body (read at each exchange),
        // never in a header.
        let authorization = if per_request_auth || user_pool_api.is_some() {
            None
        } else {
            client_authentication(&mut tail, &self.client_auth, &client_id, secret, &audience)?
        };
        let revocation_url = match self.revocation_url {
            Some(url) => Some(TokenUrl::resolve(Some(url))?),
            None => super::sign_out::beside(&token_url),
        };
        let revocation = match revocation_url {
            // A session through Cognito's user-pool API revokes through it (`RevokeToken`).
            _ if user_pool_api.is_some() => Revocation::UserPoolApi,
            Some(url) => {
                // The client authenticates as for an exchange: a fixed secret now, a secret
                // read at each request or an assertion at the revocation.
                let mut own = form_urlencoded::Serializer::new(String::new());
                let authorization = if per_request_auth {
                    None
                } else {
                    client_authentication(
                        &mut own,
                        &self.client_auth,
                        &client_id,
                        secret,
                        &audience,
                    )?
                };
                Revocation::OAuth {
                    endpoint: Box::new(Endpoint {
                        token_url: url,
                        authorization,
                        http: http.clone(),
                        request_timeout,
                        metrics: crate::metrics::Metrics::new(&client_id),
                    }),
                    form_tail: Secret(own.finish()),
                }
            }
            None => Revocation::None,
        };
        Ok(RefreshTokenGrant {
            inner: Arc::new(Inner {
                epoch: std::sync::atomic::AtomicU64::new(0),
                endpoint: Endpoint {
                    token_url,
                    authorization,
                    http,
                    request_timeout,
                    metrics: crate::metrics::Metrics::new(&client_id),
                },
                client_id,
                secret: source.map(SecretCell::new),
                per_request_auth,
                audience,
                client_auth: self.client_auth,
                scope,
                form_tail: Secret(tail.finish()),
                user_pool_api,
                session: Arc::new(tokio::sync::Mutex::new(Session {
                    refresh_token,
                    ended: None,
                    closed: false,
                    signed_out: false,
                    exchanges: 0,
                })),
                latest: Mutex::new(Latest {
                    access_token: stored.as_ref().map(|kept| kept.token.clone()),
                    id_token: self.id_token,
                }),
                stored: Mutex::new(stored),
                on_rotation: self.on_rotation,
                persist: self.persist,
                persist_timeout,
                unsaved: tokio::sync::Mutex::new(None),
                retrying: AtomicBool::new(false),
                late_save: Mutex::new(None),
                max_unsaved_rotations: self.max_unsaved_rotations,
                revocation,
                status: watch::Sender::new(SessionStatus::default()),
                retry: RetryPolicy {
                    max_attempts: 3,
                    deadline: request_timeout.saturating_add(Duration::from_secs(1)),
                    backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(1)),
                    retry_if: never_sent,
                },
            }),
        })
    }
}

/// The built-in HTTPS client, one for every session of the process that was given none: one
/// TLS configuration, one connection pool, one set of resumable TLS sessions. Built by the
/// first session that needs it.
fn shared_default_client() -> Result<HttpClient, Error> {
    static SHARED: Mutex<Option<HttpClient>> = Mutex::new(None);
    let mut shared = SHARED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(client) = shared.as_ref() {
        return Ok(client.clone());
    }
    let client = client_or_built_in(None, &HttpsOptions::default())?;
    *shared = Some(client.clone());
    Ok(client)
}
