//! [`TokenEndpointBuilder`]: how a [`TokenEndpoint`] starts.

use super::*;

/// Configures and starts a [`TokenEndpoint`]; from [`TokenEndpoint::builder`].
///
/// Its [`Debug`] output does not show the client secret.
#[derive(Clone)]
pub struct TokenEndpointBuilder {
    client_id: String,
    client_secret: String,
    lifetime: Duration,
    jwt: bool,
    omit_expires_in: bool,
    delay: Duration,
    public_client: bool,
    rotate_refresh_tokens: bool,
    grace_period: Duration,
    honour_refresh_scope: bool,
}

impl Default for TokenEndpointBuilder {
    fn default() -> Self {
        TokenEndpointBuilder {
            client_id: DEFAULT_CLIENT_ID.to_owned(),
            client_secret: DEFAULT_CLIENT_SECRET.to_owned(),
            lifetime: DEFAULT_LIFETIME,
            jwt: false,
            omit_expires_in: false,
            delay: Duration::ZERO,
            public_client: false,
            rotate_refresh_tokens: false,
            grace_period: Duration::ZERO,
            honour_refresh_scope: false,
        }
    }
}

impl fmt::Debug for TokenEndpointBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEndpointBuilder")
            .field("client_id", &self.client_id)
            .field("client_secret", &REDACTED)
            .field("lifetime", &self.lifetime)
            .field("jwt", &self.jwt)
            .field("omit_expires_in", &self.omit_expires_in)
            .field("delay", &self.delay)
            .field("public_client", &self.public_client)
            .field("rotate_refresh_tokens", &self.rotate_refresh_tokens)
            .field("grace_period", &self.grace_period)
            .field("honour_refresh_scope", &self.honour_refresh_scope)
            .finish()
    }
}

impl TokenEndpointBuilder {
    /// The client id the endpoint accepts (default `test-client-id`).
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = client_id.into();
        self
    }

    /// The client secret the endpoint accepts (default `test-client-secret`).
    pub fn client_secret(mut self, client_secret: impl Into<String>) -> Self {
        self.client_secret = client_secret.into();
        self
    }

    /// The lifetime of issued tokens (default 3600 s); see [`TokenEndpoint::set_lifetime`].
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// Whether tokens are JWT-shaped (default `false`: opaque random 40-character tokens).
    ///
    /// A JWT-shaped token is `header.claims.signature` in base64url without padding: the header
    /// is `{"alg":"RS256","kid":"test"}`, the claims are `sub` (the client id), `token_use`
    /// (`access`), `scope` (the requested scope, or empty), `iat` and `exp` (Unix seconds from
    /// the system clock) and a random `jti`; the signature is 32 random bytes, so it does not
    /// verify against any key.
    pub fn jwt(mut self, jwt: bool) -> Self {
        self.jwt = jwt;
        self
    }

    /// Whether the answer leaves out `expires_in` (default `false`), so that clients must take
    /// the expiry from the JWT's `exp` claim (combine with [`jwt`](Self::jwt)).
    pub fn omit_expires_in(mut self, omit: bool) -> Self {
        self.omit_expires_in = omit;
        self
    }

    /// Waits this long before answering each request (default zero); see
    /// [`TokenEndpoint::set_delay`].
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Whether the app client is public (default `false`): it has no secret, names itself with
    /// the form field `client_id`, and may use only the refresh_token grant. A request from it
    /// with an `Authorization` header or a `client_secret` field, or for client_credentials,
    /// gets `400 {"error":"invalid_client"}`. The configured client secret is then not used.
    pub fn public_client(mut self, public: bool) -> Self {
        self.public_client = public;
        self
    }

    /// Whether the refresh_token grant rotates refresh tokens (default `false`).
    ///
    /// With rotation, each answer carries a new `refresh_token` and only that one works from
    /// then on; presenting an older one of the session (reuse, as after a lost answer or a
    /// double refresh) revokes the whole session, its refresh and access tokens, and gets
    /// `400 {"error":"invalid_grant"}`, as servers with reuse detection do. Without rotation,
    /// a session's refresh token stays the same and answers carry none.
    pub fn rotate_refresh_tokens(mut self, rotate: bool) -> Self {
        self.rotate_refresh_tokens = rotate;
        self
    }

    /// How long a refresh token that rotation replaced still works (default zero: none), as
    /// Cognito's `RetryGracePeriodSeconds` (0 to 60 s), Okta's and Auth0's reuse intervals
    /// allow, measured on Tokio's clock from the rotation. Within it, presenting the previous
    /// refresh token is answered as the current one would be (and rotates again); past it, it
    /// is a reuse that revokes the session. Only with
    /// [`rotate_refresh_tokens`](Self::rotate_refresh_tokens).
    pub fn rotation_grace_period(mut self, grace_period: Duration) -> Self {
        self.grace_period = grace_period;
        self
    }

    /// Whether the refresh_token grant grants the `scope` its request asks for (default
    /// `false`, as Cognito: its token endpoint reads `scope` for client_credentials only, and a
    /// refresh gets the scopes of the sign-in). With `true`, the requested scope goes into the
    /// new access token's `scope` claim, as servers that allow down-scoping do.
    pub fn honour_refresh_scope(mut self, honour: bool) -> Self {
        self.honour_refresh_scope = honour;
        self
    }

    /// Binds an ephemeral port of `127.0.0.1` and starts serving on the current Tokio runtime.
    pub async fn start(self) -> std::io::Result<TokenEndpoint> {
        let (listener, addr) = bind_loopback().await?;
        let state = Arc::new(EndpointState {
            client_id: self.client_id,
            client_secret: self.client_secret.clone(),
            jwt: self.jwt,
            omit_expires_in: self.omit_expires_in,
            public_client: self.public_client,
            rotate_refresh_tokens: self.rotate_refresh_tokens,
            grace_period: self.grace_period,
            honour_refresh_scope: self.honour_refresh_scope,
            hold: tokio::sync::watch::Sender::new(false),
            arrived: tokio::sync::watch::Sender::new(0),
            inner: Mutex::new(EndpointInner {
                lifetime: self.lifetime,
                delay: self.delay,
                queue: VecDeque::new(),
                fail_with: None,
                requests: Vec::new(),
                tokens_issued: 0,
                tokens: HashMap::new(),
                last_token: None,
                sessions: Vec::new(),
                refresh_tokens: HashMap::new(),
                rotations: 0,
                lose_answers: 0,
                secrets: vec![self.client_secret.clone()],
            }),
        });
        let server_state = Arc::clone(&state);
        let server = spawn_server(listener, move |request| {
            serve_token_request(Arc::clone(&server_state), request)
        });
        Ok(TokenEndpoint {
            handle: Arc::new(EndpointHandle {
                state,
                addr,
                _server: server,
            }),
        })
    }
}
