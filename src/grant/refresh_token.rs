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
//! Store the refresh token when the user signs in, and again in
//! [`on_rotation`](RefreshTokenGrantBuilder::on_rotation) each time the server replaces it. At
//! startup, pass the stored one to [`refresh_token`](RefreshTokenGrantBuilder::refresh_token):
//! the first request then refreshes. If you also stored the access token and its expiry, pass
//! them to [`access_token`](RefreshTokenGrantBuilder::access_token): it is used while it has
//! life left, and the first refresh happens only when it is needed. An expiry kept as wall-clock
//! time converts to Tokio's clock with
//! `Instant::now() + expires_at.duration_since(SystemTime::now()).unwrap_or_default()`.
//!
//! # Rotation
//!
//! When a token answer carries a new `refresh_token` (Cognito's refresh-token rotation, OAuth
//! 2.1), only the new one works from then on, and a server that sees an old one again may revoke
//! the whole session. So:
//! - one refresh at a time: the cache starts one fetch at a time, and each exchange holds the
//!   session's refresh token until its answer is in, so that a fetch started while an earlier
//!   exchange still runs waits for it and sends the newest refresh token;
//! - one attempt per fetch, unless the connection was refused (the request surely never reached
//!   the server): a retry after the server rotated would present the old token;
//! - the exchange runs in a task of its own, so that a cancelled waiter or the cache's
//!   `refresh_deadline` cannot drop an answer the server already sent: the new refresh token
//!   replaces the old one, and [`on_rotation`](RefreshTokenGrantBuilder::on_rotation) is called
//!   with it, before the access token is handed out and whether or not anyone still waits;
//! - an answer whose access token is unusable still rotates the refresh token;
//! - an answer without a `refresh_token` (no rotation) keeps the current one.
//!
//! # When the session ends
//!
//! `400 invalid_grant` means the refresh token expired, was revoked or was reused: the user must
//! sign in again. The [`Error`] says so, [`is_permanent`](Error::is_permanent) and
//! [`is_invalid_grant`](Error::is_invalid_grant) are true, and the grant remembers it: later
//! fetches return the same error without a request, so requests through the layer fail at
//! once. Build a new grant (and layer) with the refresh token of the new sign-in.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;
use tower_service::Service;

use super::endpoint::{
    ClientAuth, Endpoint, HttpClient, RetryPolicy, Secret, TokenUrl, client_authentication,
    client_or_default, erase_client, join_scopes, never_sent, require_client_id,
};
use crate::backoff::Backoff;
use crate::error::{BoxError, Error};
use crate::source::{BoxFuture, TokenSource};
use crate::token::{AccessToken, Token, parse_refresh_token, parse_token_response};

/// What [`on_rotation`](RefreshTokenGrantBuilder::on_rotation) stores.
type RotationHook = Arc<dyn Fn(&str) + Send + Sync>;

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
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let stored_refresh_token = String::new();
/// let grant = RefreshTokenGrant::builder()
///     .cognito_domain("smart-capital", "us-east-1") // or .token_url(..)
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
/// Clones share one session: one refresh token, one rotation at a time, one hook. `Debug`
/// shows the token URL, the client id and the scope, never the client secret, the refresh
/// token or an access token.
#[derive(Clone)]
pub struct RefreshTokenGrant {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    client_id: String,
    confidential: bool,
    client_auth: ClientAuth,
    scope: Option<String>,
    /// The encoded form fields after `grant_type` and `refresh_token`: the scope, then the
    /// client's own (with the secret in them under [`ClientAuth::Post`]).
    form_tail: Secret,
    /// The session's refresh token. An exchange holds this lock from before it sends the token
    /// until the answer has been applied, so that no two requests ever carry the same token.
    session: Arc<tokio::sync::Mutex<Session>>,
    /// The access token restored from storage, handed out once by the first fetch.
    stored: Mutex<Option<Token>>,
    on_rotation: Option<RotationHook>,
    retry: RetryPolicy,
}

struct Session {
    refresh_token: Secret,
    /// Set by `invalid_grant`: the session is over and its refresh token is never sent again.
    ended: Option<Error>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RefreshTokenGrant {
    /// A builder; see [`RefreshTokenGrantBuilder`].
    pub fn builder() -> RefreshTokenGrantBuilder {
        RefreshTokenGrantBuilder::default()
    }

    async fn fetch_token(inner: Arc<Inner>) -> Result<Token, Error> {
        if let Some(token) = inner.take_stored() {
            return Ok(token);
        }
        // Waits for an earlier exchange that is still running (one whose fetch was dropped at
        // the cache's deadline, say), so that this one sends the refresh token it left.
        let session = Arc::clone(&inner.session).lock_owned().await;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::internal("no Tokio runtime to refresh the token on"))?;
        // No await between taking the lock and spawning: once this fetch holds the session,
        // the exchange runs to its end whatever happens to the fetch.
        let exchange = runtime.spawn(Self::exchange(Arc::clone(&inner), session));
        match exchange.await {
            Ok(result) => result,
            Err(_) => Err(Error::internal(
                "the refresh_token exchange ended without a result (the runtime is shutting down)",
            )),
        }
    }

    /// One exchange of the refresh token, holding the session until the answer is applied.
    async fn exchange(
        inner: Arc<Inner>,
        mut session: OwnedMutexGuard<Session>,
    ) -> Result<Token, Error> {
        if let Some(error) = &session.ended {
            tracing::debug!("the session has ended; its refresh token is not sent again");
            return Err(error.clone());
        }
        let form = inner.form(&session.refresh_token.0);
        let form = &form;
        let endpoint = &inner.endpoint;
        let answered = endpoint
            .with_retries(&inner.retry, |sent_at| async move {
                endpoint.post(form.clone(), sent_at).await
            })
            .await;
        let answer = match answered {
            Ok(answer) => answer,
            Err(error) => {
                if error.is_invalid_grant() {
                    tracing::warn!(
                        "the session has ended (invalid_grant): the user must sign in again"
                    );
                    session.ended = Some(error.clone());
                }
                return Err(error);
            }
        };
        // The rotation first: whatever is wrong with the rest of the answer, the server has
        // retired the old refresh token.
        let rotated = match parse_refresh_token(&answer.body) {
            Some(new) if new != session.refresh_token.0 => {
                session.refresh_token = Secret(new);
                inner.endpoint.metrics.rotation();
                if let Some(hook) = &inner.on_rotation {
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
        let (token, _lifetime) =
            parse_token_response(&answer.body, answer.sent_at, answer.sent_at_wall)?;
        Ok(token)
    }
}

impl Inner {
    /// The access token restored from storage, once, if it still has life left.
    fn take_stored(&self) -> Option<Token> {
        let token = lock(&self.stored).take()?;
        if token.expires_at() > Instant::now() {
            tracing::debug!("using the stored access token");
            Some(token)
        } else {
            tracing::debug!("the stored access token has expired; refreshing");
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

impl TokenSource for RefreshTokenGrant {
    fn fetch(&self) -> BoxFuture<'_, Result<Token, Error>> {
        Box::pin(Self::fetch_token(Arc::clone(&self.inner)))
    }

    fn client_id(&self) -> Option<&str> {
        Some(&self.inner.client_id)
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
            .field("request_timeout", &self.inner.endpoint.request_timeout)
            .finish_non_exhaustive()
    }
}

/// Builds a [`RefreshTokenGrant`]. Every setter takes and returns `Self` and states its
/// default; [`build`](Self::build) checks them all.
#[derive(Clone, Default)]
pub struct RefreshTokenGrantBuilder {
    token_url: Option<TokenUrl>,
    client_id: Option<String>,
    client_secret: Option<Secret>,
    scopes: Vec<String>,
    client_auth: ClientAuth,
    refresh_token: Option<Secret>,
    access_token: Option<(Secret, Instant)>,
    on_rotation: Option<RotationHook>,
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

    /// Adds a scope to request; repeatable, sent space-separated. A refresh may ask for the
    /// sign-in's scopes or fewer. Default is none: the server grants the sign-in's scopes.
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
    /// is none: the first request refreshes.
    ///
    /// The first fetch hands it out without a request if it expires later than now; the
    /// cache's margins then apply as to any token, so it is renewed ahead of its expiry. Every
    /// later fetch refreshes. See [Restoring a session at
    /// startup](crate::grant::refresh_token#restoring-a-session-at-startup).
    pub fn access_token(mut self, access_token: impl Into<String>, expires_at: Instant) -> Self {
        self.access_token = Some((Secret(access_token.into()), expires_at));
        self
    }

    /// Called with the new refresh token each time the server rotates it, so that the
    /// application can persist it. Default is none.
    ///
    /// It is called once per rotation, in rotation order and never twice at once, from the
    /// task that made the exchange, before the new access token is handed out, and also when
    /// nobody waits for that token any more. Keep it short (write a file, send on a channel);
    /// while it runs no refresh can start. A panic in it is caught and logged; the new token is
    /// still used.
    pub fn on_rotation(mut self, on_rotation: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.on_rotation = Some(Arc::new(on_rotation));
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
    /// An answer that comes later is lost, and if the server rotated the refresh token with it,
    /// the session is too: keep it well above the endpoint's slowest answers. The exchange does
    /// not end earlier because the cache's `refresh_deadline` passed or a waiter gave up.
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
    ///   go into an HTTP header;
    /// - a scope is empty or has characters RFC 6749 §3.3 does not allow (space, `"`, `\`);
    /// - `request_timeout` is zero;
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
            Some((Secret(text), expires_at)) => {
                let access_token = AccessToken::new(text).map_err(|_| {
                    Error::invalid_config(
                        "the stored access token is empty, longer than 16 KiB, or has characters \
                         that cannot go into an HTTP header",
                    )
                })?;
                Some(Token::new(access_token, expires_at))
            }
            None => None,
        };
        let scope = join_scopes(&self.scopes)?;
        let request_timeout = self.request_timeout.unwrap_or(Duration::from_secs(10));
        if request_timeout.is_zero() {
            return Err(Error::invalid_config("request_timeout must not be zero"));
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
                })),
                stored: Mutex::new(stored),
                on_rotation: self.on_rotation,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::service_fn;

    type Seen = Arc<Mutex<Vec<Request<Full<Bytes>>>>>;

    /// A grant builder whose HTTP client answers every request with `answer` and keeps them.
    fn builder(status: u16, answer: &'static str) -> (RefreshTokenGrantBuilder, Seen) {
        let seen: Seen = Arc::default();
        let client = {
            let seen = Arc::clone(&seen);
            service_fn(move |request: Request<Full<Bytes>>| {
                lock(&seen).push(request);
                async move {
                    let mut response =
                        Response::new(Full::new(Bytes::from_static(answer.as_bytes())));
                    *response.status_mut() =
                        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
                    Ok::<_, std::convert::Infallible>(response)
                }
            })
        };
        let builder = RefreshTokenGrant::builder()
            .token_url("http://127.0.0.1:1/oauth2/token")
            .client_id("app")
            .refresh_token("r1-very-secret")
            .http_client(client);
        (builder, seen)
    }

    async fn body(request: Request<Full<Bytes>>) -> String {
        use http_body_util::BodyExt as _;
        let bytes = request.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn builder_rejects_missing_parts() {
        let (base, _) = builder(200, "");
        assert!(base.clone().build().is_ok());
        let e = base.clone().refresh_token("").build().unwrap_err();
        assert!(e.to_string().contains("refresh token is empty"));
        let e = RefreshTokenGrant::builder()
            .token_url("http://127.0.0.1:1/t")
            .client_id("app")
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("no refresh token"));
        let e = base.clone().client_secret("").build().unwrap_err();
        assert!(e.to_string().contains("client secret is empty"));
        let e = base.clone().client_id("").build().unwrap_err();
        assert!(e.to_string().contains("client id"));
        let e = base
            .clone()
            .access_token("a b", Instant::now())
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("stored access token"));
        let e = base
            .clone()
            .request_timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("request_timeout"));
        let e = base
            .token_url("http://auth.example.com/t")
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("https"));
    }

    #[test]
    fn debug_hides_every_secret() {
        let (base, _) = builder(200, "");
        let b = base
            .client_secret("hunter2-secret")
            .access_token("stored-access-token", Instant::now());
        let text = format!("{b:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("r1-very-secret"), "{text}");
        assert!(!text.contains("stored-access-token"), "{text}");
        let grant = b.build().unwrap();
        let text = format!("{grant:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("r1-very-secret"), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
    }

    #[tokio::test]
    async fn rotation_is_kept_even_when_the_access_token_is_unusable() {
        let (base, seen) = builder(
            200,
            r#"{"refresh_token":"r2","access_token":"a b","token_type":"Bearer","expires_in":60}"#,
        );
        let rotations = Arc::new(AtomicUsize::new(0));
        let grant = base
            .on_rotation({
                let rotations = Arc::clone(&rotations);
                move |new: &str| {
                    assert_eq!(new, "r2");
                    rotations.fetch_add(1, Ordering::SeqCst);
                }
            })
            .build()
            .unwrap();
        let err = grant.fetch().await.unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidResponse);
        assert_eq!(rotations.load(Ordering::SeqCst), 1);
        // The next exchange presents the rotated token; the same one again is no rotation.
        let _ = grant.fetch().await;
        assert_eq!(rotations.load(Ordering::SeqCst), 1);
        let requests: Vec<_> = std::mem::take(&mut *lock(&seen));
        assert_eq!(requests.len(), 2);
        let mut bodies = Vec::new();
        for request in requests {
            assert!(request.headers().get("authorization").is_none());
            bodies.push(body(request).await);
        }
        assert_eq!(
            bodies,
            [
                "grant_type=refresh_token&refresh_token=r1-very-secret&client_id=app",
                "grant_type=refresh_token&refresh_token=r2&client_id=app",
            ]
        );
    }

    #[tokio::test]
    async fn a_panicking_hook_does_not_lose_the_token() {
        let (base, seen) = builder(
            200,
            r#"{"refresh_token":"r2","access_token":"a","token_type":"Bearer","expires_in":60}"#,
        );
        let grant = base
            .on_rotation(|_: &str| panic!("the hook failed"))
            .build()
            .unwrap();
        assert_eq!(grant.fetch().await.unwrap().access_token().secret(), "a");
        grant.fetch().await.unwrap();
        let last = lock(&seen).pop().unwrap();
        assert!(body(last).await.contains("refresh_token=r2&"));
    }

    /// A client whose first answers are these connection errors, then a token.
    fn failing_client(
        errors: Vec<std::io::ErrorKind>,
    ) -> (RefreshTokenGrantBuilder, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(Mutex::new(errors));
        let client = {
            let calls = Arc::clone(&calls);
            service_fn(move |_request: Request<Full<Bytes>>| {
                calls.fetch_add(1, Ordering::SeqCst);
                let next = {
                    let mut errors = lock(&errors);
                    (!errors.is_empty()).then(|| errors.remove(0))
                };
                async move {
                    match next {
                        Some(kind) => Err(std::io::Error::from(kind)),
                        None => Ok(Response::new(Full::new(Bytes::from_static(
                            br#"{"access_token":"a","token_type":"Bearer"}"#,
                        )))),
                    }
                }
            })
        };
        let builder = RefreshTokenGrant::builder()
            .token_url("http://127.0.0.1:1/oauth2/token")
            .client_id("app")
            .refresh_token("r1")
            .http_client(client);
        (builder, calls)
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_request_that_never_left_is_sent_again() {
        use std::io::ErrorKind::{ConnectionRefused, ConnectionReset};
        let (builder, calls) = failing_client(vec![ConnectionRefused, ConnectionRefused]);
        builder.build().unwrap().fetch().await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let (builder, calls) = failing_client(vec![ConnectionRefused; 5]);
        let err = builder.build().unwrap().fetch().await.unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Unavailable);
        assert_eq!(calls.load(Ordering::SeqCst), 3, "at most three attempts");

        // The connection broke after the request may have reached the server: the answer may
        // have rotated the token, so the old one is not presented again within this fetch.
        let (builder, calls) = failing_client(vec![ConnectionReset]);
        let err = builder.build().unwrap().fetch().await.unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Unavailable);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn server_errors_are_not_retried_within_a_fetch() {
        let (base, seen) = builder(503, "");
        let err = base.build().unwrap().fetch().await.unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Unavailable);
        assert!(
            err.is_retryable(),
            "the cache retries it later, with backoff"
        );
        assert_eq!(lock(&seen).len(), 1);
    }

    #[tokio::test]
    async fn invalid_grant_ends_the_session() {
        let (base, seen) = builder(400, r#"{"error":"invalid_grant"}"#);
        let grant = base.build().unwrap();
        for _ in 0..3 {
            let err = grant.fetch().await.unwrap_err();
            assert!(err.is_invalid_grant() && err.is_permanent());
            assert!(err.to_string().contains("sign in again"), "{err}");
        }
        assert_eq!(lock(&seen).len(), 1, "a dead refresh token is sent once");
    }

    #[tokio::test(start_paused = true)]
    async fn stored_access_token_is_used_once_while_alive() {
        let (base, seen) = builder(
            200,
            r#"{"access_token":"fresh","token_type":"Bearer","expires_in":60}"#,
        );
        let grant = base
            .clone()
            .access_token("stored", Instant::now() + Duration::from_secs(5))
            .build()
            .unwrap();
        assert_eq!(
            grant.fetch().await.unwrap().access_token().secret(),
            "stored"
        );
        assert_eq!(lock(&seen).len(), 0);
        assert_eq!(
            grant.fetch().await.unwrap().access_token().secret(),
            "fresh"
        );
        assert_eq!(lock(&seen).len(), 1);

        let expired = base.access_token("stored", Instant::now()).build().unwrap();
        assert_eq!(
            expired.fetch().await.unwrap().access_token().secret(),
            "fresh"
        );
    }

    #[tokio::test]
    async fn confidential_clients_authenticate_like_client_credentials() {
        let (base, seen) = builder(200, r#"{"access_token":"a","token_type":"Bearer"}"#);
        let basic = base
            .clone()
            .client_secret("s3cret")
            .scope("openid")
            .build()
            .unwrap();
        basic.fetch().await.unwrap();
        let post = base
            .client_secret("s3cret")
            .client_auth(ClientAuth::Post)
            .build()
            .unwrap();
        post.fetch().await.unwrap();
        let mut requests: Vec<_> = std::mem::take(&mut *lock(&seen));
        let second = requests.pop().unwrap();
        let first = requests.pop().unwrap();
        assert!(first.headers()["authorization"].is_sensitive());
        assert_eq!(
            body(first).await,
            "grant_type=refresh_token&refresh_token=r1-very-secret&scope=openid"
        );
        assert!(second.headers().get("authorization").is_none());
        assert_eq!(
            body(second).await,
            "grant_type=refresh_token&refresh_token=r1-very-secret&client_id=app&client_secret=s3cret"
        );
    }
}
