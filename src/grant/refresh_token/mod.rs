//! A user's session: [`RefreshTokenGrant`], the OAuth 2.0 refresh_token grant (RFC 6749 §6)
//! with refresh-token rotation, behind the same cache, layer and replay as the
//! client_credentials grant.
//!
//! A backend, CLI, desktop app or agent that acts for a signed-in user holds the refresh token
//! the Cognito hosted UI (or any OAuth 2.0 server) gave it at sign-in. [`RefreshTokenGrant`]
//! trades it for access tokens; [`CognitoAuthLayer`](crate::CognitoAuthLayer) puts them on
//! requests, renews them ahead of expiry with one refresh at a time, and replays a request once
//! after a `401`. A request made at the instant the access token expires waits for the one
//! refresh instead of leaving with the dead token (the AWS Amplify race).
//!
//! A complete run against the crate's loopback servers (feature `test-util`, see
//! [`testing`](crate::testing)), with a public app client and rotation on:
//!
//! ```
//! # #[cfg(feature = "test-util")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! use std::sync::{Arc, Mutex};
//!
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::{client::legacy::Client, rt::TokioExecutor};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_cognito_auth::{
//!     CognitoAuthLayer, RefreshTokenGrant, TokenSet,
//!     testing::{ProtectedApi, TokenEndpoint},
//! };
//!
//! let endpoint = TokenEndpoint::builder()
//!     .public_client(true)
//!     .rotate_refresh_tokens(true)
//!     .start()
//!     .await?;
//! let api = ProtectedApi::start(&endpoint).await?;
//! // The refresh token the application stored when the user signed in.
//! let stored = endpoint.new_session();
//!
//! let saved = Arc::new(Mutex::new(None::<String>));
//! let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
//! let grant = RefreshTokenGrant::builder()
//!     .token_url(endpoint.token_url())
//!     .client_id(endpoint.client_id()) // a public client: no secret
//!     .refresh_token(stored)
//!     .persist({
//!         let saved = Arc::clone(&saved);
//!         // Persist it: from now on only the new refresh token works.
//!         move |set: TokenSet| {
//!             *saved.lock().unwrap() = Some(set.refresh_token().to_owned());
//!             std::future::ready(Ok::<_, std::io::Error>(()))
//!         }
//!     })
//!     .http_client(http.clone())
//!     .build()?;
//! let auth = CognitoAuthLayer::builder().token_source(grant).build()?;
//! let client = ServiceBuilder::new().layer(auth).service(http);
//!
//! let request = http::Request::get(format!("{}/me", api.url())).body(Full::default())?;
//! let response = client.oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//! // The server rotated the refresh token, and the application has the new one.
//! assert_eq!(*saved.lock().unwrap(), endpoint.current_refresh_token());
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "test-util"))]
//! # fn main() {}
//! ```
//!
//! # Restoring a session at startup
//!
//! Save the session when the user signs in, and again each time the server sends a new token
//! set: [`persist`](RefreshTokenGrantBuilder::persist) (async, may fail; it gets the refresh
//! token, the access token with its wall-clock expiry and the `id_token`, as one
//! [`TokenSet`]). At startup, hand the saved set back to
//! [`restore`](RefreshTokenGrantBuilder::restore), or pass the stored refresh token to
//! [`refresh_token`](RefreshTokenGrantBuilder::refresh_token): the first request then
//! refreshes. If you also stored the access token, pass it with its expiry as saved
//! ([`access_token_expiring_at`](RefreshTokenGrantBuilder::access_token_expiring_at), a
//! `SystemTime`) or read from the token itself
//! ([`access_token_from_jwt`](RefreshTokenGrantBuilder::access_token_from_jwt)): it is used
//! while it has the margins the layer gives any token (its `min_validity`, at most a tenth of
//! the token's lifetime), and the first refresh happens only when it is needed.
//!
//! # Rotation
//!
//! When a token answer carries a new `refresh_token` (Cognito's refresh-token rotation, OAuth
//! 2.1), only the new one works from then on, and a server that sees an old one again may revoke
//! the whole session. So:
//! - one refresh at a time: the cache starts one fetch at a time, and each exchange holds the
//!   session's refresh token until its answer is in, so that a fetch started while an earlier
//!   exchange still runs waits for it and sends the newest refresh token;
//! - the exchange runs on the process's exchange threads (two threads, each with a
//!   current-thread Tokio runtime, started by the first exchange of the process and shared by
//!   every session in it), so that neither a cancelled waiter, nor the cache's
//!   `refresh_deadline`, nor the shutdown of the runtime that asked for it can drop an answer
//!   the server already sent: the new refresh token replaces the old one,
//!   [`on_rotation`](RefreshTokenGrantBuilder::on_rotation) is called with it and
//!   [`persist`](RefreshTokenGrantBuilder::persist) is awaited, before the access token is
//!   handed out and whether or not anyone still waits. The fetch waits for the answer from its
//!   runtime's blocking pool, so a runtime that shuts down (the end of `#[tokio::main]`) waits
//!   for an exchange in flight, and a test's paused clock stands still while one runs.
//!   [`RefreshTokenGrant::close`] waits for it explicitly;
//! - one attempt per fetch, unless the connection was refused (the request surely never reached
//!   the server) or the answer was lost (a timeout, a 5xx, a connection that broke): the server
//!   may have rotated, and the old refresh token is all there is, so it is presented once more
//!   at once. A server with a grace period (Cognito's `RetryGracePeriodSeconds`, up to 60 s;
//!   Okta's and Auth0's reuse intervals) accepts it; past the grace period, or without one, the
//!   server sees a reuse and ends the session, as the next refresh would have: the user must
//!   sign in again;
//! - an answer whose access token is unusable still rotates the refresh token;
//! - an answer without a `refresh_token` (no rotation) keeps the current one.
//!
//! # Many sessions in one process
//!
//! A server that acts for its signed-in users (a backend-for-frontend, a gateway) holds one
//! grant per user: a session costs memory (under 3 KiB; about 4 KiB with a layer holding its
//! token, see BENCHMARKS.md), not a
//! thread, a runtime or a socket. Every grant built without
//! [`http_client`](RefreshTokenGrantBuilder::http_client) shares one built-in HTTPS client
//! (one TLS configuration, one connection pool), and every exchange runs on the same two
//! threads. While an exchange runs, the fetch waiting for it holds one thread of its own
//! runtime's blocking pool (bounded by that runtime's `max_blocking_threads`): threads follow
//! the exchanges in flight, never the number of sessions.
//!
//! Give the grants an HTTP client that is not shared with the application's own requests (or
//! the default one): the connections it opens live on the exchange threads, while a client
//! shared with the application may hand an exchange a connection that lives, and dies, with
//! the application's runtime.
//!
//! # When the session ends
//!
//! `400 invalid_grant` (on Cognito's user-pool API, `NotAuthorizedException` or
//! `RefreshTokenReuseException`) means the refresh token expired, was revoked or was reused
//! (or, there, that the secret or `SECRET_HASH` is wrong): the user must sign in again. The [`Error`] says so, [`is_permanent`](Error::is_permanent) and
//! [`is_invalid_grant`](Error::is_invalid_grant) are true, and the grant remembers it: later
//! fetches return the same error without a request, so requests through the layer fail at
//! once. No other refusal (`invalid_client`, `invalid_scope`, a bare `400`) ends the session.
//! [`RefreshTokenGrant::status`] reports the end as it happens, from a background refresh as
//! from a request, so the application can show its sign-in screen before a request fails;
//! after the new sign-in, [`RefreshTokenGrant::replace_refresh_token`] starts over without
//! rebuilding the grant or the layer.
use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use super::client_secret::SecretCell;
use super::cognito_api::UserPoolApi;
use super::endpoint::{ClientAuth, Endpoint, RetryPolicy, Secret};
use crate::error::{BoxError, Error};
use crate::grant::{BoxFuture, TokenSource};
use crate::token::{AccessToken, Token, jwt_claims};

mod builder;
mod exchange;
mod executor;
mod persist;
mod restore;
mod sign_out;
mod token_set;

pub use builder::RefreshTokenGrantBuilder;
pub use token_set::TokenSet;

/// What [`on_rotation`](RefreshTokenGrantBuilder::on_rotation) stores.
type RotationHook = Arc<dyn Fn(&str) + Send + Sync>;

/// What [`persist`](RefreshTokenGrantBuilder::persist) stores.
type PersistHook = Arc<dyn Fn(TokenSet) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

/// Where a user's session stands, as [`RefreshTokenGrant::status`] reports it.
///
/// A [`watch`] receiver sees each change: an application can show its sign-in screen when
/// [`ended`](Self::ended) turns `Some` (a background refresh met `invalid_grant`), before a
/// request fails.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SessionStatus {
    /// The error that ended the session (`invalid_grant`: the refresh token expired, was
    /// revoked or was reused), until [`RefreshTokenGrant::replace_refresh_token`] starts a new
    /// one. `None` while the session lives.
    pub ended: Option<Error>,
    /// Whether the newest token set has not been saved by
    /// [`persist`](RefreshTokenGrantBuilder::persist) yet (its save failed and is being tried
    /// again). The refresh token in memory is the newest either way.
    pub unsaved: bool,
    /// How many times the server has rotated the refresh token since the newest token set
    /// that [`persist`](RefreshTokenGrantBuilder::persist) saved: `0` while saves succeed.
    /// Each one is a refresh token that exists only in memory; see
    /// [`max_unsaved_rotations`](RefreshTokenGrantBuilder::max_unsaved_rotations).
    pub unsaved_rotations: u64,
    /// Whether the session was closed here ([`RefreshTokenGrant::close`]) or the user
    /// signed out ([`RefreshTokenGrant::sign_out`]): no exchange starts any more.
    pub closed: bool,
    /// How many saves have failed or timed out so far.
    pub save_failures: u64,
    /// How many times the server has rotated the refresh token so far.
    pub rotations: u64,
}

/// The OAuth 2.0 refresh_token grant for a user's session, with refresh-token rotation.
///
/// Each [`fetch`](TokenSource::fetch) POSTs `grant_type=refresh_token&refresh_token=…` (and
/// `scope` when set) to the token URL. A public app client (no secret) sends `client_id` in the
/// form and no `Authorization` header; a confidential one authenticates like
/// [`ClientCredentials`](crate::ClientCredentials), by [`ClientAuth::Basic`] or
/// [`ClientAuth::Post`]. With [`user_pool_api`](RefreshTokenGrantBuilder::user_pool_api) it
/// calls Cognito's user-pool API instead (`GetTokensFromRefreshToken`, or `InitiateAuth`
/// `REFRESH_TOKEN_AUTH`: see [`RefreshFlow`](crate::RefreshFlow)), under the same rules. See
/// the [module docs](crate::grant::refresh_token) for rotation, restoring a session
/// and the end of a session.
///
/// Plug it into the layer with
/// [`CognitoAuthLayerBuilder::token_source`](crate::CognitoAuthLayerBuilder::token_source):
///
/// ```no_run
/// use tower_cognito_auth::{CognitoAuthLayer, RefreshTokenGrant, TokenSet};
/// # async fn save(_: TokenSet) -> std::io::Result<()> { Ok(()) }
/// # fn main() -> Result<(), tower::BoxError> {
/// # let stored_refresh_token = String::new();
/// let grant = RefreshTokenGrant::builder()
///     .cognito_domain("my-pool", "us-east-1") // or .token_url(..)
///     .client_id("my-app-client-id") // .client_secret(..) when the app client has one
///     .refresh_token(stored_refresh_token) // or .restore(saved_token_set)
///     .persist(save)
///     .build()?;
/// let auth = CognitoAuthLayer::builder().token_source(grant).build()?;
/// # Ok(())
/// # }
/// ```
///
/// # Clone
///
/// Clones share one session: one refresh token, one exchange at a time, one set of hooks, one
/// [`status`](Self::status). Give the layer a clone and keep one to
/// [`close`](Self::close) the session or [replace](Self::replace_refresh_token) its refresh
/// token. `Debug` shows the token URL, the client id and the scope, never the client secret,
/// the refresh token or an access token.
#[derive(Clone)]
pub struct RefreshTokenGrant {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    /// Bumped by each new sign-in ([`TokenSource::epoch`]).
    epoch: std::sync::atomic::AtomicU64,
    client_id: String,
    /// A confidential client's secret; one that is read at each exchange authenticates it
    /// there, a fixed one is already in `form_tail` or the endpoint's header.
    secret: Option<SecretCell>,
    /// Whether each exchange authenticates the client anew (a secret read at each request, a
    /// signed assertion), rather than with `form_tail` and the endpoint's header.
    per_request_auth: bool,
    /// The token URL, an assertion's `aud`.
    audience: String,
    client_auth: ClientAuth,
    scope: Option<String>,
    /// The encoded form fields after `grant_type` and `refresh_token`: the scope, then the
    /// client's own (with the secret in them under [`ClientAuth::Post`]).
    form_tail: Secret,
    /// Cognito's user-pool API in place of the token endpoint, when configured
    /// ([`user_pool_api`](RefreshTokenGrantBuilder::user_pool_api)).
    user_pool_api: Option<UserPoolApi>,
    /// The session's refresh token. An exchange holds this lock from before it sends the token
    /// until the answer has been applied and saved, so that no two requests ever carry the
    /// same token.
    session: Arc<tokio::sync::Mutex<Session>>,
    /// The access token kept for the next fetch (restored from storage, or obtained by an
    /// exchange nobody waited for any more), handed out once.
    stored: Mutex<Option<restore::Kept>>,
    /// The newest access token and `id_token` the session has seen (received, restored or
    /// handed over at sign-in), for [`RefreshTokenGrant::id_token`] and the claims.
    latest: Mutex<Latest>,
    on_rotation: Option<RotationHook>,
    persist: Option<PersistHook>,
    persist_timeout: Duration,
    /// The newest token set that is not saved yet; locked by whoever saves, so that saves
    /// never overlap and an older set never overwrites a newer one.
    unsaved: tokio::sync::Mutex<Option<TokenSet>>,
    /// Whether a task is trying a failed save again.
    retrying: AtomicBool,
    /// A call of the persist hook that timed out and may still be running (its blocking work
    /// cannot be stopped): the next call waits for it, so that calls never overlap.
    late_save: Mutex<Option<tokio::task::JoinHandle<Result<(), BoxError>>>>,
    /// No exchange starts while this many rotations are unsaved.
    max_unsaved_rotations: Option<u64>,
    /// How [`RefreshTokenGrant::sign_out`] revokes the refresh token.
    revocation: sign_out::Revocation,
    status: watch::Sender<SessionStatus>,
    retry: RetryPolicy,
}

/// What [`Inner::latest`] holds.
#[derive(Default)]
struct Latest {
    access_token: Option<AccessToken>,
    id_token: Option<Secret>,
}

struct Session {
    refresh_token: Secret,
    /// Set by `invalid_grant`: the session is over and its refresh token is never sent again.
    ended: Option<Error>,
    /// Set by [`RefreshTokenGrant::close`] and `sign_out`: no exchange starts any more.
    closed: bool,
    /// Set by `sign_out`: the session's refresh token was revoked (or no revocation endpoint
    /// is known), and its access token is not served again.
    signed_out: bool,
    /// How many exchanges have run: tells the one whose token is kept.
    exchanges: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RefreshTokenGrant {
    /// A builder; see [`RefreshTokenGrantBuilder`].
    pub fn builder() -> RefreshTokenGrantBuilder {
        RefreshTokenGrantBuilder::default()
    }

    /// The session's status, as a [`watch`] receiver that sees each change: the end of the
    /// session (`invalid_grant`), failed saves, rotations. It works from any runtime, and
    /// outside one ([`watch::Receiver::borrow`]).
    ///
    /// ```
    /// # #[cfg(feature = "test-util")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower::BoxError> {
    /// # use tower_cognito_auth::{RefreshTokenGrant, testing::TokenEndpoint};
    /// # let endpoint = TokenEndpoint::builder().public_client(true).start().await?;
    /// # let grant = RefreshTokenGrant::builder()
    /// #     .token_url(endpoint.token_url())
    /// #     .client_id(endpoint.client_id())
    /// #     .refresh_token(endpoint.new_session())
    /// #     .http_client(hyper_util::client::legacy::Client::builder(
    /// #         hyper_util::rt::TokioExecutor::new()).build_http())
    /// #     .build()?;
    /// let mut status = grant.status();
    /// tokio::spawn(async move {
    ///     // Wakes when a refresh, in the background or for a request, meets `invalid_grant`.
    ///     if status.wait_for(|s| s.ended.is_some()).await.is_ok() {
    ///         // show the sign-in screen
    ///     }
    /// });
    /// # Ok(())
    /// # }
    /// # #[cfg(not(feature = "test-util"))]
    /// # fn main() {}
    /// ```
    pub fn status(&self) -> watch::Receiver<SessionStatus> {
        self.inner.status.subscribe()
    }

    /// Starts over with everything a new sign-in returned (the refresh token, and the access
    /// token and `id_token` when the set has them), without rebuilding the grant or the
    /// layer: like [`replace_refresh_token`](Self::replace_refresh_token), and the access
    /// token is used at once (the cache judges it by its margins, as a restored one) instead
    /// of an immediate refresh. The set is handed to
    /// [`persist`](RefreshTokenGrantBuilder::persist) before this returns.
    ///
    /// ```
    /// # #[cfg(feature = "test-util")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower::BoxError> {
    /// use std::time::{Duration, SystemTime};
    /// use tower_cognito_auth::{RefreshTokenGrant, TokenSet, TokenSource, testing::TokenEndpoint};
    ///
    /// let endpoint = TokenEndpoint::builder().public_client(true).start().await?;
    /// let grant = RefreshTokenGrant::builder()
    ///     .token_url(endpoint.token_url())
    ///     .client_id(endpoint.client_id())
    ///     .refresh_token(endpoint.new_session())
    ///     .build()?;
    /// // The user signed in again (maybe as someone else): hand over what the sign-in returned.
    /// let signed_in = TokenSet::new(endpoint.new_session())
    ///     .with_access_token("new-access-token", Some(SystemTime::now() + Duration::from_secs(3600)))?;
    /// grant.sign_in(signed_in).await?;
    /// assert_eq!(grant.fetch().await?.access_token().secret(), "new-access-token");
    /// assert_eq!(endpoint.request_count(), 0);
    /// # Ok(())
    /// # }
    /// # #[cfg(not(feature = "test-util"))]
    /// # fn main() {}
    /// ```
    ///
    /// # Errors
    ///
    /// An [`Error`] of kind [`InvalidConfig`](crate::ErrorKind::InvalidConfig) when the
    /// refresh token is empty, the access token has no expiry and is not a JWT with an `exp`
    /// (or is an `id_token`), or the grant was [closed](Self::close) or
    /// [signed out](Self::sign_out).
    pub async fn sign_in(&self, set: TokenSet) -> Result<(), Error> {
        if set.refresh_token.0.is_empty() {
            return Err(Error::invalid_config("the refresh token is empty"));
        }
        let kept = match &set.access_token {
            Some(token) => {
                let expiry = match set.expires_at {
                    Some(at) => restore::Expiry::Wall(at),
                    None => restore::Expiry::Jwt,
                };
                Some(restore::restored(token.secret().to_owned(), expiry)?)
            }
            None => None,
        };
        self.inner.start_over(set, kept).await
    }

    /// The newest OpenID Connect `id_token` of the session (from the last answer that had
    /// one, the restored [`TokenSet`] or the sign-in's), if any. Treat it as a password.
    pub fn id_token(&self) -> Option<String> {
        lock(&self.inner.latest)
            .id_token
            .as_ref()
            .map(|t| t.0.clone())
    }

    /// The claims of the newest `id_token` (the user's `sub`, `email`, `cognito:username`,
    /// ...), read **without verifying its signature**: for display and routing inside the
    /// application that received it from the token endpoint, never to authorise anything.
    /// `None` when there is none or it is not a JWT.
    pub fn id_token_claims(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        let latest = lock(&self.inner.latest);
        jwt_claims(&latest.id_token.as_ref()?.0)
    }

    /// The claims of the newest access token the session has seen (`scope`, `exp`,
    /// `username`, `client_id`, ...), read **without verifying its signature**: the API that
    /// receives the token verifies it; these are for the application's own use. `None` when
    /// there is none yet or it is not a JWT (an opaque token).
    pub fn access_token_claims(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        let latest = lock(&self.inner.latest);
        jwt_claims(latest.access_token.as_ref()?.secret())
    }

    /// Starts over with the refresh token of a new sign-in, without rebuilding the grant or
    /// the layer: it replaces the session's refresh token, forgets an ended session
    /// (`invalid_grant`) and a restored access token, and the next fetch exchanges the new
    /// refresh token. Waits for an exchange in flight first, so that its answer cannot
    /// overwrite the new token.
    ///
    /// No request after it carries the previous session's access token: a layer's cache drops
    /// it at once (its next request refreshes), and what a refresh of the previous session
    /// still in flight brings back is dropped. A save of the previous session that failed is
    /// forgotten, and the new refresh token is handed to
    /// [`persist`](RefreshTokenGrantBuilder::persist) (a [`TokenSet`] without an access token)
    /// before this returns.
    ///
    /// A layer's cache that met `invalid_grant` keeps failing requests with it until its
    /// pause ends (at most a minute, the slowest backoff), then asks the grant again.
    ///
    /// # Errors
    ///
    /// An [`Error`] of kind [`InvalidConfig`](crate::ErrorKind::InvalidConfig) when
    /// `refresh_token` is empty, or the grant was [closed](Self::close).
    pub async fn replace_refresh_token(
        &self,
        refresh_token: impl Into<String>,
    ) -> Result<(), Error> {
        let refresh_token = refresh_token.into();
        if refresh_token.is_empty() {
            return Err(Error::invalid_config("the refresh token is empty"));
        }
        let set = TokenSet {
            refresh_token: Secret(refresh_token),
            rotated: false,
            access_token: None,
            expires_at: None,
            id_token: None,
        };
        self.inner.start_over(set, None).await
    }

    /// Closes the session for this process: waits for an exchange in flight to end (its
    /// answer read, the rotation applied, the token set saved or its save failed), tries once
    /// more to save a token set whose save failed, and from then on refuses to exchange
    /// (fetches fail with an error of kind [`InvalidConfig`](crate::ErrorKind::InvalidConfig)).
    /// Call it before the application exits, so that no rotation the server has made is lost
    /// with the process. Clones share the closed session.
    ///
    /// # Errors
    ///
    /// An [`Error`] of kind [`Internal`](crate::ErrorKind::Internal) when the newest token set
    /// could not be saved (the hook failed or took longer than
    /// [`persist_timeout`](RefreshTokenGrantBuilder::persist_timeout)): the application
    /// should then keep what [`TokenSet::refresh_token`] last told it by other means.
    pub async fn close(&self) -> Result<(), Error> {
        let mut session = self.inner.session.lock().await;
        session.closed = true;
        drop(session);
        self.inner.status.send_modify(|status| status.closed = true);
        // On the exchange threads, as every save: its timeout runs on their clock, not on a
        // caller's that a test may have paused.
        let inner = Arc::clone(&self.inner);
        executor::run(async move { inner.save_unsaved().await }).await?
    }
}

impl TokenSource for RefreshTokenGrant {
    fn fetch(&self) -> BoxFuture<'_, Result<Token, Error>> {
        Box::pin(Self::fetch_token(Arc::clone(&self.inner)))
    }

    fn client_id(&self) -> Option<&str> {
        Some(&self.inner.client_id)
    }

    /// Bumped by each new sign-in, and by a change of a client secret read from a file or a
    /// function.
    fn epoch(&self) -> u64 {
        let secret = self.inner.secret.as_ref().map_or(0, SecretCell::epoch);
        self.inner
            .epoch
            .load(std::sync::atomic::Ordering::Acquire)
            .wrapping_add(secret)
    }
}

impl fmt::Debug for RefreshTokenGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshTokenGrant")
            .field("token_url", &self.inner.endpoint.token_url)
            .field("user_pool_api", &self.inner.user_pool_api)
            .field("client_id", &self.inner.client_id)
            .field("client_secret", &self.inner.secret)
            .field("refresh_token", &"[redacted]")
            .field("scope", &self.inner.scope)
            .field("client_auth", &self.inner.client_auth)
            .field("on_rotation", &self.inner.on_rotation.is_some())
            .field("persist", &self.inner.persist.is_some())
            .field("request_timeout", &self.inner.endpoint.request_timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
