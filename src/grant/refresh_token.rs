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
//!     CognitoAuthLayer, RefreshTokenGrant,
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
//!     .on_rotation({
//!         let saved = Arc::clone(&saved);
//!         // Persist it: from now on only the new refresh token works.
//!         move |new_refresh_token: &str| {
//!             *saved.lock().unwrap() = Some(new_refresh_token.to_owned());
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
//! token, the access token with its wall-clock expiry and the `id_token`) or
//! [`on_rotation`](RefreshTokenGrantBuilder::on_rotation) (sync, the refresh token only). At
//! startup, pass the stored refresh token to
//! [`refresh_token`](RefreshTokenGrantBuilder::refresh_token): the first request then
//! refreshes. If you also stored the access token, pass it with its expiry as saved
//! ([`access_token_expiring_at`](RefreshTokenGrantBuilder::access_token_expiring_at), a
//! `SystemTime`) or read from the token itself
//! ([`access_token_from_jwt`](RefreshTokenGrantBuilder::access_token_from_jwt)): it is used
//! while it has the margins any token must have (30 s, at most a tenth of its lifetime), and
//! the first refresh happens only when it is needed.
//!
//! # Rotation
//!
//! When a token answer carries a new `refresh_token` (Cognito's refresh-token rotation, OAuth
//! 2.1), only the new one works from then on, and a server that sees an old one again may revoke
//! the whole session. So:
//! - one refresh at a time: the cache starts one fetch at a time, and each exchange holds the
//!   session's refresh token until its answer is in, so that a fetch started while an earlier
//!   exchange still runs waits for it and sends the newest refresh token;
//! - the exchange runs on a thread the grant owns (a small current-thread Tokio runtime,
//!   started by the first exchange, ended when the last clone of the grant is dropped), so that
//!   neither a cancelled waiter, nor the cache's `refresh_deadline`, nor the shutdown of the
//!   runtime that asked for it can drop an answer the server already sent: the new refresh
//!   token replaces the old one, [`on_rotation`](RefreshTokenGrantBuilder::on_rotation) is
//!   called with it and [`persist`](RefreshTokenGrantBuilder::persist) is awaited, before the
//!   access token is handed out and whether or not anyone still waits. The fetch waits for the
//!   answer from its runtime's blocking pool, so a runtime that shuts down (the end of
//!   `#[tokio::main]`) waits for an exchange in flight, and a test's paused clock stands still
//!   while one runs. [`RefreshTokenGrant::close`] waits for it explicitly;
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
//! Give the grant an HTTP client of its own (or the default one): the connections it opens
//! live on the session's thread, while a client shared with the application may hand it a
//! connection that lives, and dies, with the application's runtime.
//!
//! # When the session ends
//!
//! `400 invalid_grant` means the refresh token expired, was revoked or was reused: the user must
//! sign in again. The [`Error`] says so, [`is_permanent`](Error::is_permanent) and
//! [`is_invalid_grant`](Error::is_invalid_grant) are true, and the grant remembers it: later
//! fetches return the same error without a request, so requests through the layer fail at
//! once. No other refusal (`invalid_client`, `invalid_scope`, a bare `400`) ends the session.
//! [`RefreshTokenGrant::status`] reports the end as it happens, from a background refresh as
//! from a request, so the application can show its sign-in screen before a request fails;
//! after the new sign-in, [`RefreshTokenGrant::replace_refresh_token`] starts over without
//! rebuilding the grant or the layer.

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tokio::sync::{OwnedMutexGuard, mpsc, oneshot, watch};
use tokio::time::Instant;
use tower_service::Service;

use super::endpoint::{
    ClientAuth, Endpoint, HttpClient, RetryPolicy, Secret, TokenUrl, client_authentication,
    client_or_default, erase_client, join_scopes, never_sent, require_client_id,
};
use crate::backoff::Backoff;
use crate::error::{BoxError, Error, ErrorKind};
use crate::source::{BoxFuture, TokenSource};
use crate::token::{
    AccessToken, DEFAULT_LIFETIME, MAX_LIFETIME, Token, jwt_times, parse_id_token,
    parse_refresh_token, parse_token_response,
};

/// What [`on_rotation`](RefreshTokenGrantBuilder::on_rotation) stores.
type RotationHook = Arc<dyn Fn(&str) + Send + Sync>;

/// What [`persist`](RefreshTokenGrantBuilder::persist) stores.
type PersistHook = Arc<dyn Fn(TokenSet) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

/// An exchange, as the session's thread runs it.
type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What an exchange answers its caller: the token (on the session thread's clock) and the
/// lifetime it was issued with, from which the caller dates it on its own clock.
type Exchanged = Result<(Token, Duration), Error>;

/// The crate's default `min_validity`, by which a restored access token is judged.
const RESTORED_MIN_VALIDITY: Duration = Duration::from_secs(30);

/// The first pause before a failed save is tried again; it doubles up to [`SAVE_RETRY_CAP`].
const SAVE_RETRY_FIRST: Duration = Duration::from_secs(1);
const SAVE_RETRY_CAP: Duration = Duration::from_secs(60);

/// What the server sent in one successful exchange, as [`persist`] receives it: everything an
/// application needs to restore the session later.
///
/// `Debug` prints which parts are there, never a token.
///
/// [`persist`]: RefreshTokenGrantBuilder::persist
#[derive(Clone)]
pub struct TokenSet {
    refresh_token: Secret,
    rotated: bool,
    access_token: Option<AccessToken>,
    expires_at: Option<SystemTime>,
    id_token: Option<Secret>,
}

impl TokenSet {
    /// The session's refresh token from now on: the rotated one when the server sent one,
    /// else the one the exchange presented. Treat it as a password.
    pub fn refresh_token(&self) -> &str {
        &self.refresh_token.0
    }

    /// Whether the server rotated the refresh token in this exchange.
    pub fn rotated(&self) -> bool {
        self.rotated
    }

    /// The new access token, unless the answer's was unusable (the rotation still counts).
    pub fn access_token(&self) -> Option<&AccessToken> {
        self.access_token.as_ref()
    }

    /// When the access token expires, on the wall clock: what
    /// [`access_token_expiring_at`](RefreshTokenGrantBuilder::access_token_expiring_at) takes
    /// back at the next start.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// The OpenID Connect `id_token` of the answer, if it had one (Cognito sends one). Treat it
    /// as a password.
    pub fn id_token(&self) -> Option<&str> {
        self.id_token.as_ref().map(|t| t.0.as_str())
    }
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field("refresh_token", &self.refresh_token)
            .field("rotated", &self.rotated)
            .field("access_token", &self.access_token)
            .field("expires_at", &self.expires_at)
            .field("id_token", &self.id_token)
            .finish()
    }
}

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
/// [`ClientAuth::Post`]. See the [module docs](crate::grant::refresh_token) for rotation, restoring a session
/// and the end of a session.
///
/// Plug it into the layer with
/// [`CognitoAuthLayerBuilder::token_source`](crate::CognitoAuthLayerBuilder::token_source):
///
/// ```no_run
/// use tower_cognito_auth::{CognitoAuthLayer, RefreshTokenGrant};
/// # fn save(_: &str) {}
/// # fn main() -> Result<(), tower::BoxError> {
/// # let stored_refresh_token = String::new();
/// let grant = RefreshTokenGrant::builder()
///     .cognito_domain("my-pool", "us-east-1") // or .token_url(..)
///     .client_id("my-app-client-id") // .client_secret(..) when the app client has one
///     .refresh_token(stored_refresh_token)
///     .on_rotation(|new_refresh_token: &str| save(new_refresh_token))
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
    confidential: bool,
    client_auth: ClientAuth,
    scope: Option<String>,
    /// The encoded form fields after `grant_type` and `refresh_token`: the scope, then the
    /// client's own (with the secret in them under [`ClientAuth::Post`]).
    form_tail: Secret,
    /// The session's refresh token. An exchange holds this lock from before it sends the token
    /// until the answer has been applied and saved, so that no two requests ever carry the
    /// same token.
    session: Arc<tokio::sync::Mutex<Session>>,
    /// The access token restored from storage, handed out once by the first fetch.
    stored: Mutex<Option<Token>>,
    on_rotation: Option<RotationHook>,
    persist: Option<PersistHook>,
    persist_timeout: Duration,
    /// The newest token set that is not saved yet; locked by whoever saves, so that saves
    /// never overlap and an older set never overwrites a newer one.
    unsaved: tokio::sync::Mutex<Option<TokenSet>>,
    /// Whether a task is trying a failed save again.
    retrying: AtomicBool,
    status: watch::Sender<SessionStatus>,
    retry: RetryPolicy,
    /// The session's thread, started by the first exchange: see [`Worker`].
    worker: Mutex<Option<mpsc::UnboundedSender<Job>>>,
}

struct Session {
    refresh_token: Secret,
    /// Set by `invalid_grant`: the session is over and its refresh token is never sent again.
    ended: Option<Error>,
    /// Set by [`RefreshTokenGrant::close`]: no exchange starts any more.
    closed: bool,
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

    /// Starts over with the refresh token of a new sign-in, without rebuilding the grant or
    /// the layer: it replaces the session's refresh token, forgets an ended session
    /// (`invalid_grant`) and a restored access token, and the next fetch exchanges the new
    /// refresh token. Waits for an exchange in flight first, so that its answer cannot
    /// overwrite the new token.
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
        let mut session = self.inner.session.lock().await;
        if session.closed {
            return Err(closed());
        }
        session.refresh_token = Secret(refresh_token);
        session.ended = None;
        lock(&self.inner.stored).take();
        // The cache paces its refreshes after `invalid_grant`: this tells it that is old news.
        self.inner
            .epoch
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        self.inner.status.send_modify(|status| status.ended = None);
        tracing::debug!("the session's refresh token was replaced (a new sign-in)");
        Ok(())
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
        let mut unsaved = self.inner.unsaved.lock().await;
        match unsaved.take() {
            None => Ok(()),
            Some(set) => {
                if self.inner.save_once(set.clone()).await {
                    self.inner
                        .status
                        .send_modify(|status| status.unsaved = false);
                    Ok(())
                } else {
                    *unsaved = Some(set);
                    Err(Error::internal(
                        "the session's newest token set could not be saved",
                    ))
                }
            }
        }
    }

    async fn fetch_token(inner: Arc<Inner>) -> Result<Token, Error> {
        if let Some(token) = inner.take_stored() {
            return Ok(token);
        }
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            match Self::attempt(&inner).await {
                // The request surely never reached the server: the same refresh token may go
                // again, after a pause on this runtime's clock.
                Err(error) if never_sent(&error) && attempt < inner.retry.max_attempts => {
                    let delay = inner.retry.backoff.delay(attempt - 1);
                    tracing::debug!(attempt, %error, retry_in_ms = delay.as_millis() as u64, "token request never left; retrying");
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }

    /// One exchange: takes the session, hands it to the session's thread, and waits for the
    /// answer. Once the exchange is handed over, nothing that happens to this future or its
    /// runtime stops it.
    async fn attempt(inner: &Arc<Inner>) -> Result<Token, Error> {
        // Waits for an earlier exchange that is still running (one whose fetch was dropped at
        // the cache's deadline, say), so that this one sends the refresh token it left.
        let session = Arc::clone(&inner.session).lock_owned().await;
        let jobs = inner.worker()?;
        let sent_at = Instant::now();
        let (reply, answer) = oneshot::channel();
        // No await between taking the lock and handing the exchange over: once this fetch
        // holds the session, the exchange runs to its end whatever happens to the fetch.
        let job: Job = Box::pin(exchange(Arc::clone(inner), session, reply));
        jobs.send(job)
            .map_err(|_| Error::internal("the session's exchange thread has stopped"))?;
        let (token, lifetime) = wait(answer).await?;
        // Dated on this runtime's clock (which a test may have paused), from when the
        // exchange was handed over: never later than the server's own count.
        let expires_at = sent_at
            .checked_add(lifetime)
            .ok_or_else(|| Error::invalid_response("`expires_in` is out of range"))?;
        let mut dated =
            Token::new(token.access_token().clone(), expires_at).with_lifetime(lifetime);
        if let Some(scope) = token.scope() {
            dated = dated.with_scope(scope);
        }
        Ok(dated)
    }
}

/// Waits for an exchange's answer. On a Tokio runtime the wait happens on its blocking pool:
/// a runtime that shuts down (dropped, or at the end of `#[tokio::main]`) then waits for the
/// exchange to end, and a runtime whose clock a test paused does not jump ahead while the
/// exchange runs on the session's thread (Tokio does not auto-advance a paused clock while a
/// blocking task runs). The exchange itself never depends on this wait.
async fn wait(answer: oneshot::Receiver<Exchanged>) -> Exchanged {
    let lost = || {
        Error::internal(
            "the refresh_token exchange's answer was not delivered (the runtime is shutting \
             down); the exchange itself ran to its end",
        )
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => match runtime.spawn_blocking(move || answer.blocking_recv()).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) | Err(_) => Err(lost()),
        },
        Err(_) => answer.await.unwrap_or_else(|_| Err(lost())),
    }
}

/// An exchange on the session's thread: it holds the session from before the request leaves
/// until its answer is applied and saved, then answers whoever still waits.
async fn exchange(
    inner: Arc<Inner>,
    mut session: OwnedMutexGuard<Session>,
    reply: oneshot::Sender<Exchanged>,
) {
    let result = inner.exchange(&mut session).await;
    drop(session);
    if reply.send(result).is_err() {
        tracing::debug!("nobody waits for the exchange's answer any more; it was applied");
    }
}

/// Whether a failed request may have reached the server, which may then have rotated the
/// refresh token: a timeout, a 5xx, a connection that broke after it was made.
fn answer_lost(error: &Error) -> bool {
    matches!(error.kind(), ErrorKind::Timeout | ErrorKind::Unavailable)
        && error.status().is_none_or(|s| s.is_server_error())
        && !never_sent(error)
}

fn closed() -> Error {
    Error::invalid_config("the session was closed (RefreshTokenGrant::close)")
}

impl Inner {
    /// The session's thread: a current-thread runtime that runs every exchange, so that an
    /// exchange whose request left is carried to its end whatever happens to the runtime that
    /// asked for it. Started by the first exchange; it ends when the last handle to the grant
    /// is dropped (the job channel closes) and what it runs has ended.
    fn worker(&self) -> Result<mpsc::UnboundedSender<Job>, Error> {
        let mut slot = lock(&self.worker);
        if let Some(jobs) = slot.as_ref().filter(|jobs| !jobs.is_closed()) {
            return Ok(jobs.clone());
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|_| Error::internal("could not build the session's runtime"))?;
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
        std::thread::Builder::new()
            .name("cognito-session".into())
            .spawn(move || {
                runtime.block_on(async move {
                    while let Some(job) = queue.recv().await {
                        tokio::spawn(job);
                    }
                });
            })
            .map_err(|_| Error::internal("could not start the session's thread"))?;
        *slot = Some(jobs.clone());
        Ok(jobs)
    }

    /// The exchange proper, on the session's thread.
    async fn exchange(self: &Arc<Self>, session: &mut Session) -> Exchanged {
        if session.closed {
            return Err(closed());
        }
        if let Some(error) = &session.ended {
            tracing::debug!("the session has ended; its refresh token is not sent again");
            return Err(error.clone());
        }
        let form = self.form(&session.refresh_token.0);
        let mut answered = self.post(form.clone()).await;
        if let Err(error) = &answered
            && answer_lost(error)
        {
            // The server may have rotated and its answer is lost: the old refresh token is all
            // there is. Present it again at once, while a server's grace period (Cognito's
            // `RetryGracePeriodSeconds`, Okta's, Auth0's) still accepts it; a strict server
            // without one ends the session, as the next refresh would have.
            tracing::warn!(%error, "the token endpoint's answer was lost; retrying once with the same refresh token");
            answered = self.post(form).await;
        }
        let answer = match answered {
            Ok(answer) => answer,
            Err(error) => {
                if error.is_invalid_grant() {
                    tracing::warn!(
                        "the session has ended (invalid_grant): the user must sign in again"
                    );
                    session.ended = Some(error.clone());
                    self.status
                        .send_modify(|status| status.ended = Some(error.clone()));
                }
                return Err(error);
            }
        };
        // The rotation first: whatever is wrong with the rest of the answer, the server has
        // retired the old refresh token.
        let rotated = match parse_refresh_token(&answer.body) {
            Some(new) if new != session.refresh_token.0 => {
                session.refresh_token = Secret(new);
                self.status.send_modify(|status| status.rotations += 1);
                self.endpoint.metrics.rotation();
                if let Some(hook) = &self.on_rotation {
                    let new = session.refresh_token.0.as_str();
                    if catch_unwind(AssertUnwindSafe(|| hook(new))).is_err() {
                        tracing::warn!(
                            "on_rotation panicked; the new refresh token is kept in memory"
                        );
                    }
                }
                true
            }
            _ => false,
        };
        tracing::debug!(rotated, "refresh_token grant answered");
        let parsed = parse_token_response(&answer.body, answer.sent_at, answer.sent_at_wall);
        if self.persist.is_some() && (rotated || parsed.is_ok()) {
            let (access_token, expires_at) = match &parsed {
                Ok((token, lifetime)) => (
                    Some(token.access_token().clone()),
                    answer.sent_at_wall.checked_add(*lifetime),
                ),
                Err(_) => (None, None),
            };
            let set = TokenSet {
                refresh_token: session.refresh_token.clone(),
                rotated,
                access_token,
                expires_at,
                id_token: parse_id_token(&answer.body).map(Secret),
            };
            self.save(set).await;
        }
        parsed
    }

    /// One POST, bounded by `request_timeout` on the session thread's clock.
    async fn post(&self, form: Bytes) -> Result<super::endpoint::Answered, Error> {
        let timeout = self.endpoint.request_timeout;
        let sent_at = Instant::now();
        let result = match tokio::time::timeout(timeout, self.endpoint.post(form, sent_at)).await {
            Ok(result) => result,
            Err(_) => Err(Error::timeout("the token request", timeout)),
        };
        self.endpoint
            .metrics
            .token_request(crate::metrics::outcome(&result), sent_at.elapsed());
        result
    }

    /// Saves a new token set before its access token is used: the newest set wins; a failure
    /// is reported (status, warning) and tried again later, and never fails the exchange.
    async fn save(self: &Arc<Self>, set: TokenSet) {
        let mut unsaved = self.unsaved.lock().await;
        if self.save_once(set.clone()).await {
            *unsaved = None;
            self.status.send_modify(|status| status.unsaved = false);
            return;
        }
        *unsaved = Some(set);
        drop(unsaved);
        self.status.send_modify(|status| status.unsaved = true);
        if !self.retrying.swap(true, Ordering::AcqRel) {
            tokio::spawn(retry_saves(Arc::downgrade(self)));
        }
    }

    /// One call of the persist hook, bounded by `persist_timeout`; a panic in it counts as a
    /// failure. Reports a failure; returns whether the set was saved.
    async fn save_once(&self, set: TokenSet) -> bool {
        let Some(hook) = &self.persist else {
            return true;
        };
        let call = tokio::spawn(hook(set));
        let abort = call.abort_handle();
        let failure = match tokio::time::timeout(self.persist_timeout, call).await {
            Ok(Ok(Ok(()))) => return true,
            Ok(Ok(Err(error))) => format!("the persist hook failed: {error}"),
            Ok(Err(_)) => "the persist hook panicked".to_owned(),
            Err(_) => {
                abort.abort();
                format!(
                    "the persist hook did not finish within {:?}",
                    self.persist_timeout
                )
            }
        };
        self.status.send_modify(|status| status.save_failures += 1);
        tracing::warn!(
            failure,
            "could not save the session; the newest refresh token is kept in memory and the \
             save is tried again"
        );
        false
    }

    /// The access token restored from storage, once, if the cache's default margins let it
    /// be handed out: more than `min_validity` (30 s, a tenth of its lifetime at most) left.
    fn take_stored(&self) -> Option<Token> {
        let token = lock(&self.stored).take()?;
        let lifetime = token.lifetime().unwrap_or(DEFAULT_LIFETIME);
        let margin = RESTORED_MIN_VALIDITY.min(lifetime / 10);
        let left = token.expires_at().saturating_duration_since(Instant::now());
        if left > margin {
            tracing::debug!("using the stored access token");
            Some(token)
        } else {
            tracing::debug!("the stored access token has too little life left; refreshing");
            None
        }
    }

    fn form(&self, refresh_token: &str) -> Bytes {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "refresh_token");
        form.append_pair("refresh_token", refresh_token);
        let mut form = form.finish();
        if !self.form_tail.0.is_empty() {
            form.push('&');
            form.push_str(&self.form_tail.0);
        }
        Bytes::from(form)
    }
}

/// Tries a failed save again, with backoff on the session thread's clock (1 s doubling to
/// 60 s), until the newest set is saved or the grant is gone.
async fn retry_saves(inner: Weak<Inner>) {
    let mut delay = SAVE_RETRY_FIRST;
    loop {
        tokio::time::sleep(delay).await;
        delay = delay.saturating_mul(2).min(SAVE_RETRY_CAP);
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let mut unsaved = inner.unsaved.lock().await;
        let Some(set) = unsaved.clone() else {
            inner.retrying.store(false, Ordering::Release);
            return;
        };
        if inner.save_once(set).await {
            *unsaved = None;
            inner.status.send_modify(|status| status.unsaved = false);
            inner.retrying.store(false, Ordering::Release);
            tracing::info!("the session was saved after an earlier failure");
            return;
        }
    }
}

impl TokenSource for RefreshTokenGrant {
    fn fetch(&self) -> BoxFuture<'_, Result<Token, Error>> {
        Box::pin(Self::fetch_token(Arc::clone(&self.inner)))
    }

    fn client_id(&self) -> Option<&str> {
        Some(&self.inner.client_id)
    }

    fn epoch(&self) -> u64 {
        self.inner.epoch.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl fmt::Debug for RefreshTokenGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshTokenGrant")
            .field("token_url", &self.inner.endpoint.token_url)
            .field("client_id", &self.inner.client_id)
            .field(
                "client_secret",
                &self.inner.confidential.then_some("[redacted]"),
            )
            .field("refresh_token", &"[redacted]")
            .field("scope", &self.inner.scope)
            .field("client_auth", &self.inner.client_auth)
            .field("on_rotation", &self.inner.on_rotation.is_some())
            .field("persist", &self.inner.persist.is_some())
            .field("request_timeout", &self.inner.endpoint.request_timeout)
            .finish_non_exhaustive()
    }
}

/// How a restored access token's expiry was given.
enum Expiry {
    Tokio(Instant),
    Wall(SystemTime),
    /// Read from the token's `exp` claim.
    Jwt,
}

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
    scopes: Vec<String>,
    client_auth: ClientAuth,
    refresh_token: Option<Secret>,
    access_token: Option<(Secret, Expiry)>,
    on_rotation: Option<RotationHook>,
    persist: Option<PersistHook>,
    persist_timeout: Option<Duration>,
    http: Option<HttpClient>,
    request_timeout: Option<Duration>,
}

impl fmt::Debug for RefreshTokenGrantBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshTokenGrantBuilder")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("scopes", &self.scopes)
            .field("client_auth", &self.client_auth)
            .field("refresh_token", &self.refresh_token)
            .field("access_token", &self.access_token.as_ref().map(|(t, _)| t))
            .field("on_rotation", &self.on_rotation.is_some())
            .field("persist", &self.persist.is_some())
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
    /// The first fetch hands it out without a request only if the cache's default margins
    /// allow it: more than `min_validity` (30 s, at most a tenth of its lifetime) left, its
    /// lifetime read from the JWT's `exp − iat`, or taken as an hour for an opaque token (a
    /// token restored with 10 s left is not used: a request that cannot be replayed would
    /// leave with a dying token). The cache's margins then apply as to any token, so it is
    /// renewed ahead of its expiry. Every later fetch refreshes. See [Restoring a session at
    /// startup](crate::grant::refresh_token#restoring-a-session-at-startup).
    pub fn access_token(mut self, access_token: impl Into<String>, expires_at: Instant) -> Self {
        self.access_token = Some((Secret(access_token.into()), Expiry::Tokio(expires_at)));
        self
    }

    /// Like [`access_token`](Self::access_token), with the expiry on the wall clock, as
    /// [`TokenSet::expires_at`] gave it and a file or database keeps it. It is converted to
    /// Tokio's clock once, by [`build`](Self::build). Default is none.
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
    /// `exp`.
    pub fn access_token_from_jwt(mut self, access_token: impl Into<String>) -> Self {
        self.access_token = Some((Secret(access_token.into()), Expiry::Jwt));
        self
    }

    /// Called with the new refresh token each time the server rotates it, so that the
    /// application can persist it. Default is none. For a save that is async or can fail (a
    /// database, a keychain), use [`persist`](Self::persist).
    ///
    /// It is called once per rotation, in rotation order and never twice at once, on the
    /// grant's session thread, before the new access token is handed out, and also when
    /// nobody waits for that token any more. Keep it short (write a file, send on a channel);
    /// while it runs no refresh can start. A panic in it is caught and logged, and the new
    /// token is still used, when panics unwind; under `panic = "abort"` it aborts the process,
    /// as any panic does.
    pub fn on_rotation(mut self, on_rotation: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.on_rotation = Some(Arc::new(on_rotation));
        self
    }

    /// Saves each new [`TokenSet`] (the refresh token, rotated or not, the access token and
    /// its wall-clock expiry, the `id_token`): an async hook that may fail. Default is none.
    ///
    /// After each successful exchange, on the grant's session thread (a Tokio runtime of its
    /// own) and after [`on_rotation`](Self::on_rotation), the grant awaits the hook's future
    /// before the new access token is handed out, at most
    /// [`persist_timeout`](Self::persist_timeout). Calls never overlap, and come in the order
    /// of the exchanges. When it fails, times out or panics, the exchange still succeeds: the
    /// new refresh token stays in memory (never the old one), the failure is reported
    /// ([`SessionStatus::unsaved`] and [`save_failures`](SessionStatus::save_failures) in
    /// [`RefreshTokenGrant::status`], a warning in the logs), and the newest set is saved again
    /// after 1 s, doubling to 60 s, until it is saved, a later exchange saves a newer one, or
    /// the grant is dropped. [`RefreshTokenGrant::close`] tries once more.
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
    /// failed (it is then dropped, and tried again later). It also bounds how much a slow save
    /// delays the new access token. Default is 10 seconds.
    pub fn persist_timeout(mut self, timeout: Duration) -> Self {
        self.persist_timeout = Some(timeout);
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
    /// - a Cognito domain prefix is not 1 to 63 of `a-z`, `0-9`, `-` (not at either end), or the
    ///   region does not look like `us-east-1`;
    /// - the client id is missing or empty, or a client secret was given empty;
    /// - the refresh token is missing or empty;
    /// - the restored access token is empty, longer than 16 KiB, or has characters that cannot
    ///   go into an HTTP header, or [`access_token_from_jwt`](Self::access_token_from_jwt) was
    ///   given one that is not a JWT with an `exp` claim;
    /// - a scope is empty or has characters RFC 6749 §3.3 does not allow (space, `"`, `\`);
    /// - `request_timeout` or `persist_timeout` is zero;
    /// - no HTTP client was given and the feature `rustls` is off.
    pub fn build(self) -> Result<RefreshTokenGrant, Error> {
        let token_url = TokenUrl::resolve(self.token_url)?;
        let client_id = require_client_id(self.client_id)?;
        let secret = match self.client_secret {
            Some(Secret(s)) if s.is_empty() => {
                return Err(Error::invalid_config("the client secret is empty"));
            }
            Some(Secret(s)) => Some(s),
            None => None,
        };
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
        let request_timeout = self.request_timeout.unwrap_or(Duration::from_secs(10));
        if request_timeout.is_zero() {
            return Err(Error::invalid_config("request_timeout must not be zero"));
        }
        let persist_timeout = self.persist_timeout.unwrap_or(Duration::from_secs(10));
        if persist_timeout.is_zero() {
            return Err(Error::invalid_config("persist_timeout must not be zero"));
        }
        let http = client_or_default(self.http)?;

        let mut tail = form_urlencoded::Serializer::new(String::new());
        if let Some(scope) = &scope {
            tail.append_pair("scope", scope);
        }
        let authorization =
            client_authentication(&mut tail, self.client_auth, &client_id, secret.as_deref())?;
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
                confidential: secret.is_some(),
                client_auth: self.client_auth,
                scope,
                form_tail: Secret(tail.finish()),
                session: Arc::new(tokio::sync::Mutex::new(Session {
                    refresh_token,
                    ended: None,
                    closed: false,
                })),
                stored: Mutex::new(stored),
                on_rotation: self.on_rotation,
                persist: self.persist,
                persist_timeout,
                unsaved: tokio::sync::Mutex::new(None),
                retrying: AtomicBool::new(false),
                status: watch::Sender::new(SessionStatus::default()),
                worker: Mutex::new(None),
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

/// A restored access token, dated on Tokio's clock once, with the lifetime its margins are
/// computed from: the JWT's `exp − iat` when it has both, else an hour (or its remaining life,
/// if longer).
fn restored(text: String, expiry: Expiry) -> Result<Token, Error> {
    let times = jwt_times(&text);
    let access_token = AccessToken::new(text).map_err(|_| {
        Error::invalid_config(
            "the stored access token is empty, longer than 16 KiB, or has characters that \
             cannot go into an HTTP header",
        )
    })?;
    let now = Instant::now();
    let wall = |at: SystemTime| {
        let left = at.duration_since(SystemTime::now()).unwrap_or_default();
        now.checked_add(left.min(MAX_LIFETIME)).unwrap_or(now)
    };
    let expires_at = match expiry {
        Expiry::Tokio(at) => at,
        Expiry::Wall(at) => wall(at),
        Expiry::Jwt => match times.and_then(|(_, exp)| exp) {
            Some(exp) => wall(SystemTime::UNIX_EPOCH + Duration::from_secs(exp.min(u64::MAX / 2))),
            None => {
                return Err(Error::invalid_config(
                    "access_token_from_jwt: the stored access token is not a JWT with an `exp` claim",
                ));
            }
        },
    };
    let issued_for = match times {
        Some((Some(iat), Some(exp))) if exp > iat => Some(Duration::from_secs(exp - iat)),
        _ => None,
    };
    let left = expires_at.saturating_duration_since(now);
    let lifetime = issued_for
        .unwrap_or_else(|| DEFAULT_LIFETIME.max(left))
        .min(MAX_LIFETIME);
    Ok(Token::new(access_token, expires_at).with_lifetime(lifetime))
}

#[cfg(test)]
mod tests;
