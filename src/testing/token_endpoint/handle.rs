//! [`TokenEndpoint`]: the handle tests hold.

use super::*;

/// A Cognito-compatible OAuth 2.0 token endpoint on `127.0.0.1`, for tests and demos.
///
/// It serves `POST /oauth2/token` with the `client_credentials` and `refresh_token` grants,
/// over HTTP/1.1 (and HTTP/2 with prior knowledge). Requests are validated in this order:
///
/// 1. the path must be `/oauth2/token` (else `404`), the method `POST` (else `405`);
/// 2. `content-type` must be `application/x-www-form-urlencoded` (else `400
///    {"error":"invalid_request"}`);
/// 3. `grant_type` must be `client_credentials` or `refresh_token` (else `400
///    {"error":"unsupported_grant_type"}`);
/// 4. the client must authenticate, by `Authorization: Basic` when that header is present,
///    otherwise by the form fields `client_id` and `client_secret` (else `400
///    {"error":"invalid_client"}`, as Cognito answers); a
///    [public client](TokenEndpointBuilder::public_client) by `client_id` alone;
/// 5. for `refresh_token`, the form field `refresh_token` must be the current refresh token of
///    a session that is not revoked (see [`new_session`](TokenEndpoint::new_session) and
///    [`rotate_refresh_tokens`](TokenEndpointBuilder::rotate_refresh_tokens)), or the one
///    rotation replaced within the [grace
///    period](TokenEndpointBuilder::rotation_grace_period), else `400
///    {"error":"invalid_grant"}`. As at Cognito, a refresh's `scope` is ignored (unless
///    [`honour_refresh_scope`](TokenEndpointBuilder::honour_refresh_scope)).
///
/// `POST /oauth2/revoke` (RFC 7009) takes a refresh token in `token`, from a client that
/// authenticates as above, and revokes its session with every access token issued from it
/// (`200` whether or not the token was known), as Cognito's revocation endpoint does.
///
/// A good request gets `200` with `{"access_token": …, "expires_in": …, "token_type":
/// "Bearer"}`; a refresh adds a JWT-shaped `id_token` and, with rotation, the new
/// `refresh_token`. Bodies over 1 MiB get `413`. Every request is recorded ([`requests`]) before
/// it is answered, whatever its outcome. A request is decided when it arrives (a token issued,
/// a refresh token rotated); the [delay](TokenEndpoint::set_delay) holds back only its answer.
///
/// # Cognito's user-pool API
///
/// The same server answers Cognito's user-pool API at `POST /` ([`user_pool_api_url`]), as
/// `cognito-idp.{region}.amazonaws.com` does for a pool with or without a domain: `Content-Type:
/// application/x-amz-json-1.1`, the operation in `X-Amz-Target:
/// AWSCognitoIdentityProviderService.<Operation>`, JSON in and out, errors as `400
/// {"__type": …, "message": …}`. It shares the sessions, tokens, rotation, grace period,
/// delays, canned replies and lost answers of the token endpoint, and always issues JWT
/// access tokens with the session's `username` claim (see
/// [`new_session_for`](TokenEndpoint::new_session_for)):
///
/// - `GetTokensFromRefreshToken` `{ClientId, ClientSecret?, RefreshToken, DeviceKey?}`: the
///   client secret itself (required for a client with one, refused for a public one); with
///   [rotation](TokenEndpointBuilder::rotate_refresh_tokens) the answer carries the new
///   `RefreshToken`, and the old one works on within the grace period; past it, its reuse is
///   `RefreshTokenReuseException` and revokes the session;
/// - `InitiateAuth` with `AuthFlow` `REFRESH_TOKEN_AUTH` (or `REFRESH_TOKEN`) and
///   `AuthParameters {REFRESH_TOKEN, SECRET_HASH?, DEVICE_KEY?}`: never rotates; a client
///   with a secret must send `SECRET_HASH` = Base64(HMAC-SHA256(client secret, username +
///   client id)) over the session's username, else `NotAuthorizedException` (`Unable to
///   verify secret hash for client …`);
/// - `RevokeToken` `{Token, ClientId, ClientSecret?}`: revokes the refresh token's session and
///   the access tokens issued to it; `GlobalSignOut` `{AccessToken}`: revokes every session of
///   that access token's user.
///
/// Unknown or revoked refresh tokens get `NotAuthorizedException` (`Invalid Refresh Token`,
/// `Refresh Token has been revoked`), a wrong client id `ResourceNotFoundException`, an
/// unknown operation `UnknownOperationException`; script the rest (say
/// `TooManyRequestsException`) with [`Reply::cognito_error`] and
/// [`push_reply`](TokenEndpoint::push_reply).
///
/// The handle is cheap to clone; the server stops when the last clone is dropped. Its [`Debug`]
/// output does not show the client secret.
///
/// [`requests`]: TokenEndpoint::requests
/// [`user_pool_api_url`]: TokenEndpoint::user_pool_api_url
#[derive(Clone)]
pub struct TokenEndpoint {
    pub(in crate::testing) handle: Arc<EndpointHandle>,
}

impl fmt::Debug for TokenEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEndpoint")
            .field("addr", &self.handle.addr)
            .field("client_id", &self.handle.state.client_id)
            .field("client_secret", &REDACTED)
            .field("request_count", &self.request_count())
            .field("tokens_issued", &self.tokens_issued())
            .finish()
    }
}

impl TokenEndpoint {
    /// Starts an endpoint with the defaults: client id `test-client-id`, client secret
    /// `test-client-secret`, opaque tokens valid for 3600 s, no delay.
    ///
    /// Must be called within a Tokio runtime; the server runs on it.
    pub async fn start() -> std::io::Result<TokenEndpoint> {
        TokenEndpoint::builder().start().await
    }

    /// A builder to choose the credentials, token lifetime, token shape and delay.
    pub fn builder() -> TokenEndpointBuilder {
        TokenEndpointBuilder::default()
    }

    /// The full token URL, `http://127.0.0.1:PORT/oauth2/token`.
    pub fn token_url(&self) -> String {
        format!("http://{}{}", self.handle.addr, TOKEN_PATH)
    }

    /// The URL of its Cognito user-pool API, `http://127.0.0.1:PORT/`, for
    /// [`user_pool_api_url`](crate::RefreshTokenGrantBuilder::user_pool_api_url); see the
    /// [type docs](TokenEndpoint#cognitos-user-pool-api) for what it answers.
    pub fn user_pool_api_url(&self) -> String {
        format!("http://{}/", self.handle.addr)
    }

    /// The address the endpoint listens on.
    pub fn addr(&self) -> SocketAddr {
        self.handle.addr
    }

    /// The client id it accepts.
    pub fn client_id(&self) -> &str {
        &self.handle.state.client_id
    }

    /// The client secret it was built with, accepted until
    /// [`set_client_secrets`](Self::set_client_secrets) changes the accepted set.
    pub fn client_secret(&self) -> &str {
        &self.handle.state.client_secret
    }

    /// Replaces the client secrets it accepts, from the next request on, as a Cognito app
    /// client's secrets change during a rotation (`AddUserPoolClientSecret` adds a second one,
    /// `DeleteUserPoolClientSecret` removes the old one). Tokens issued before stay valid, as
    /// Cognito's do. An empty set refuses every client with `invalid_client`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// use tower_cognito_auth::testing::TokenEndpoint;
    ///
    /// let endpoint = TokenEndpoint::start().await?;
    /// let old = endpoint.client_secret().to_owned();
    /// endpoint.set_client_secrets([old.as_str(), "the-new-secret"]); // both, for a while
    /// endpoint.set_client_secrets(["the-new-secret"]); // then only the new one
    /// assert_eq!(endpoint.client_secrets(), ["the-new-secret"]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_client_secrets<S: Into<String>>(&self, secrets: impl IntoIterator<Item = S>) {
        lock(&self.handle.state.inner).secrets = secrets.into_iter().map(Into::into).collect();
    }

    /// The client secrets it accepts now.
    pub fn client_secrets(&self) -> Vec<String> {
        lock(&self.handle.state.inner).secrets.clone()
    }

    /// How many HTTP requests it has received, whatever their outcome.
    pub fn request_count(&self) -> usize {
        lock(&self.handle.state.inner).requests.len()
    }

    /// How many tokens it has issued: its successful `200` answers (canned replies not counted).
    pub fn tokens_issued(&self) -> usize {
        lock(&self.handle.state.inner).tokens_issued
    }

    /// Every request it has received so far, in the order they arrived.
    pub fn requests(&self) -> Vec<RecordedTokenRequest> {
        lock(&self.handle.state.inner).requests.clone()
    }

    /// Queues a one-shot canned reply.
    ///
    /// Each request takes the oldest queued reply, if there is one, and gets it verbatim (after
    /// the delays), without any validation and without issuing a token. A request whose body
    /// is over the 1 MiB limit or cannot be read gets `413` or `400` and leaves the queue alone.
    pub fn push_reply(&self, reply: Reply) {
        lock(&self.handle.state.inner).queue.push_back(reply);
    }

    /// With `Some`, every request that finds the [`push_reply`] queue empty gets a copy of this
    /// reply; with `None`, requests are processed normally again.
    ///
    /// [`push_reply`]: TokenEndpoint::push_reply
    pub fn fail_with(&self, reply: Option<Reply>) {
        lock(&self.handle.state.inner).fail_with = reply;
    }

    /// Waits this long (with [`tokio::time::sleep`], so a paused clock drives it) before
    /// answering each request from now on. Zero means no delay. The request itself is decided
    /// when it arrives: a slow answer to a refresh still means the server has rotated.
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.handle.state.inner).delay = delay;
    }

    /// Sets the lifetime of the tokens issued from now on.
    ///
    /// `expires_in` (and a JWT's `exp`) announce it in whole seconds, at least 1; validity
    /// ([`is_valid`]) uses the exact duration.
    ///
    /// [`is_valid`]: TokenEndpoint::is_valid
    pub fn set_lifetime(&self, lifetime: Duration) {
        lock(&self.handle.state.inner).lifetime = lifetime;
    }

    /// Whether this endpoint issued `token`, it has not been revoked, and it has not expired:
    /// [`tokio::time::Instant::now`] is before its issue instant plus its lifetime.
    pub fn is_valid(&self, token: &str) -> bool {
        self.handle.state.is_valid(token)
    }

    /// Revokes a token: it is no longer valid. Unknown tokens are ignored.
    pub fn revoke(&self, token: &str) {
        self.handle.state.revoke(token);
    }

    /// Revokes every token issued so far. Tokens issued later are valid as usual.
    pub fn revoke_all(&self) {
        for issued in lock(&self.handle.state.inner).tokens.values_mut() {
            issued.revoked = true;
        }
    }

    /// The most recently issued token, if any.
    pub fn last_token(&self) -> Option<String> {
        lock(&self.handle.state.inner).last_token.clone()
    }

    /// Starts a user's session, as a sign-in through the hosted UI would, and returns its first
    /// refresh token, for the refresh_token grant. The accessors below that speak of "the
    /// session" mean the one started last.
    /// Its user's name is `user-{n}` (`n` counting sessions from 0); see
    /// [`new_session_for`](TokenEndpoint::new_session_for).
    pub fn new_session(&self) -> String {
        self.handle.state.new_session(None, None)
    }

    /// Like [`new_session`](TokenEndpoint::new_session), for the user named `username` in
    /// the pool: the `username` claim of the session's JWT access tokens, and the name a
    /// `SECRET_HASH` of the [user-pool API](TokenEndpoint::user_pool_api_url) must be computed
    /// over. (For a pool that signs in by email, Cognito's name is a UUID, not the email.)
    pub fn new_session_for(&self, username: &str) -> String {
        self.handle.state.new_session(Some(username), None)
    }

    /// Starts a user's session whose first refresh token is `refresh_token`, as if the user had
    /// signed in before: for trying an application that restores a saved session across a
    /// restart. Otherwise as [`new_session`](TokenEndpoint::new_session); returns the token.
    ///
    /// ```
    /// # #[cfg(feature = "test-util")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower::BoxError> {
    /// use tower_cognito_auth::testing::TokenEndpoint;
    /// use tower_cognito_auth::{RefreshTokenGrant, TokenSource};
    ///
    /// let endpoint = TokenEndpoint::builder()
    ///     .rotate_refresh_tokens(true)
    ///     .start()
    ///     .await?;
    /// // What the application saved before it stopped.
    /// endpoint.new_session_with("refresh-token-saved-last-run");
    /// let grant = RefreshTokenGrant::builder()
    ///     .token_url(endpoint.token_url())
    ///     .client_id(endpoint.client_id())
    ///     .client_secret(endpoint.client_secret())
    ///     .refresh_token("refresh-token-saved-last-run")
    ///     .build()?;
    /// grant.fetch().await?;
    /// assert_ne!(
    ///     endpoint.current_refresh_token().as_deref(),
    ///     Some("refresh-token-saved-last-run"),
    ///     "rotated"
    /// );
    /// # Ok(())
    /// # }
    /// # #[cfg(not(feature = "test-util"))]
    /// # fn main() {}
    /// ```
    pub fn new_session_with(&self, refresh_token: impl Into<String>) -> String {
        self.handle
            .state
            .new_session(None, Some(refresh_token.into()))
    }

    /// The refresh token that works now for the session started last: the one
    /// [`new_session`](TokenEndpoint::new_session) returned, or the latest rotation. `None`
    /// before any session, or once that session is revoked.
    pub fn current_refresh_token(&self) -> Option<String> {
        let inner = lock(&self.handle.state.inner);
        let session = inner.sessions.last()?;
        (!session.revoked).then(|| session.current.clone())
    }

    /// Whether the session started last has been revoked, by the reuse of an old refresh token
    /// or by [`revoke_session`](TokenEndpoint::revoke_session). `false` before any session.
    pub fn is_session_revoked(&self) -> bool {
        lock(&self.handle.state.inner)
            .sessions
            .last()
            .is_some_and(|session| session.revoked)
    }

    /// Revokes the session started last, as a sign-out everywhere or an administrator would:
    /// its refresh tokens get `invalid_grant` and its access tokens are no longer valid.
    pub fn revoke_session(&self) {
        let mut inner = lock(&self.handle.state.inner);
        if let Some(id) = inner.sessions.len().checked_sub(1) {
            EndpointState::revoke_session(&mut inner, id);
        }
    }

    /// How many times it has rotated a refresh token, over all sessions.
    pub fn rotations(&self) -> usize {
        lock(&self.handle.state.inner).rotations
    }

    /// Holds back every answer from now on (`true`) until called with `false`, without a
    /// clock: each request is recorded and decided when it arrives (a refresh token rotated),
    /// and its answer waits for the release. For tests that must act while an exchange is in
    /// flight whatever the runtime's clock does.
    pub fn hold_answers(&self, hold: bool) {
        self.handle.state.hold.send_replace(hold);
    }

    /// Waits until at least `count` requests have arrived and been decided (recorded, as
    /// [`requests`] shows, and a refresh token rotated if the request rotates one), whatever
    /// thread the endpoint runs on.
    ///
    /// [`requests`]: TokenEndpoint::requests
    pub async fn wait_for_requests(&self, count: usize) {
        let mut arrived = self.handle.state.arrived.subscribe();
        let _ = arrived.wait_for(|n| *n >= count).await;
    }

    /// Loses the answers of the next `count` requests that are processed: each is decided as
    /// usual (a token issued, a refresh token rotated) and then answered with `502 Bad
    /// Gateway`, as when a proxy or the network drops an answer the server has acted on.
    pub fn lose_answers(&self, count: usize) {
        lock(&self.handle.state.inner).lose_answers = count;
    }
}
