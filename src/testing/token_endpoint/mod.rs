//! The Cognito-compatible token endpoint: [`TokenEndpoint`], its builder, its canned replies
//! and recorded requests, and the state it keeps (issued tokens, user sessions, rotation).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::server::{
    BodyRead, ServerTask, bind_loopback, header_starts_with, lock, read_body, spawn_server,
};

/// The path the token endpoint serves, as Cognito's domain does.
pub(super) const TOKEN_PATH: &str = "/oauth2/token";
/// The path of the revocation endpoint (RFC 7009), as Cognito's domain serves it.
pub(super) const REVOKE_PATH: &str = "/oauth2/revoke";
/// Largest request body the token endpoint reads (1 MiB); larger ones get `413`.
pub(super) const TOKEN_BODY_LIMIT: usize = 1024 * 1024;
/// Length of opaque tokens.
pub(super) const OPAQUE_TOKEN_LEN: usize = 40;
/// What `Debug` prints instead of a client secret.
const REDACTED: &str = "[redacted]";

const DEFAULT_CLIENT_ID: &str = "test-client-id";
const DEFAULT_CLIENT_SECRET: &str = "test-client-secret";
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

mod builder;
mod handle;
mod reply;
mod serve;
mod user_pool_api;

pub use builder::TokenEndpointBuilder;
pub use handle::TokenEndpoint;
pub use reply::{RecordedTokenRequest, Reply};
use reply::{basic_credentials, empty_response, has_basic_scheme, json_response, oauth_error};
use serve::serve_token_request;

// ---------------------------------------------------------------------------------------------
// Token endpoint state
// ---------------------------------------------------------------------------------------------

/// A token the endpoint issued.
struct IssuedToken {
    issued_at: Instant,
    lifetime: Duration,
    revoked: bool,
    /// The user session it was issued to, for the refresh_token grant.
    session: Option<usize>,
}

impl IssuedToken {
    fn is_live(&self, now: Instant) -> bool {
        if self.revoked {
            return false;
        }
        match self.issued_at.checked_add(self.lifetime) {
            Some(expiry) => now < expiry,
            // A lifetime too long to represent never runs out.
            None => true,
        }
    }
}

/// What changes while the endpoint runs.
struct EndpointInner {
    lifetime: Duration,
    delay: Duration,
    queue: VecDeque<Reply>,
    fail_with: Option<Reply>,
    requests: Vec<RecordedTokenRequest>,
    tokens_issued: usize,
    tokens: HashMap<String, IssuedToken>,
    last_token: Option<String>,
    /// User sessions, in the order [`TokenEndpoint::new_session`] created them.
    sessions: Vec<UserSession>,
    /// Every refresh token ever issued, with the session it belongs to.
    refresh_tokens: HashMap<String, usize>,
    rotations: usize,
    /// How many of the next answers to processed requests are lost (see
    /// [`TokenEndpoint::lose_answers`]).
    lose_answers: usize,
    /// The client secrets accepted now (see [`TokenEndpoint::set_client_secrets`]).
    secrets: Vec<String>,
}

/// A user's session as the endpoint keeps it: only its current refresh token works (and the
/// one it replaced, within the grace period).
struct UserSession {
    /// The user's name in the pool: the `username` claim of its access tokens, and what a
    /// `SECRET_HASH` of Cognito's API is computed over.
    username: String,
    current: String,
    /// The refresh token rotated out last, and when.
    previous: Option<(String, Instant)>,
    revoked: bool,
}

/// The state of a token endpoint, shared by its handle, its connections and the protected APIs
/// that validate its tokens.
pub(super) struct EndpointState {
    client_id: String,
    client_secret: String,
    jwt: bool,
    omit_expires_in: bool,
    public_client: bool,
    rotate_refresh_tokens: bool,
    /// How long a rotated-out refresh token still works (Cognito's `RetryGracePeriodSeconds`).
    grace_period: Duration,
    /// Whether the refresh_token grant grants the `scope` it asks for (Cognito ignores it).
    honour_refresh_scope: bool,
    /// `true` while answers are held back ([`TokenEndpoint::hold_answers`]).
    hold: tokio::sync::watch::Sender<bool>,
    /// How many requests have arrived, for [`TokenEndpoint::wait_for_requests`].
    arrived: tokio::sync::watch::Sender<usize>,
    inner: Mutex<EndpointInner>,
}

impl EndpointState {
    pub(super) fn is_valid(&self, token: &str) -> bool {
        let now = Instant::now();
        lock(&self.inner)
            .tokens
            .get(token)
            .is_some_and(|issued| issued.is_live(now))
    }

    fn revoke(&self, token: &str) {
        if let Some(issued) = lock(&self.inner).tokens.get_mut(token) {
            issued.revoked = true;
        }
    }

    pub(super) fn revoke_last(&self) {
        let mut inner = lock(&self.inner);
        let EndpointInner {
            tokens, last_token, ..
        } = &mut *inner;
        if let Some(issued) = last_token.as_ref().and_then(|t| tokens.get_mut(t)) {
            issued.revoked = true;
        }
    }

    /// Issues a new token for a request with this scope: registers it and builds the JSON answer.
    fn issue(&self, scope: &str) -> Response<Full<Bytes>> {
        let mut inner = lock(&self.inner);
        let answer = self.issue_locked(&mut inner, scope, None, false);
        drop(inner);
        json_response(StatusCode::OK, &serde_json::Value::Object(answer))
    }

    /// Registers a new access token (of `session`, if any) and returns the answer's fields. A
    /// session's JWT carries its `username`; `jwt` asks for a JWT whatever the builder said
    /// (Cognito's user-pool API issues nothing else).
    fn issue_locked(
        &self,
        inner: &mut EndpointInner,
        scope: &str,
        session: Option<usize>,
        jwt: bool,
    ) -> serde_json::Map<String, serde_json::Value> {
        let lifetime = inner.lifetime;
        let expires_in = lifetime.as_secs().max(1);
        let username = session
            .and_then(|id| inner.sessions.get(id))
            .map(|session| session.username.clone());
        let token = if self.jwt || jwt {
            jwt_token(
                &self.client_id,
                "access",
                scope,
                expires_in,
                username.as_deref(),
            )
        } else {
            random_alphanumeric(OPAQUE_TOKEN_LEN)
        };
        inner.tokens.insert(
            token.clone(),
            IssuedToken {
                issued_at: Instant::now(),
                lifetime,
                revoked: false,
                session,
            },
        );
        inner.last_token = Some(token.clone());
        inner.tokens_issued += 1;

        let mut answer = serde_json::Map::new();
        answer.insert("access_token".into(), token.into());
        if !self.omit_expires_in {
            answer.insert("expires_in".into(), expires_in.into());
        }
        answer.insert("token_type".into(), "Bearer".into());
        answer
    }

    /// A new user session of `username` (default `user-{n}`), with this first refresh token or
    /// a random one; returns it.
    fn new_session(&self, username: Option<&str>, refresh_token: Option<String>) -> String {
        let mut inner = lock(&self.inner);
        let id = inner.sessions.len();
        let refresh_token = refresh_token.unwrap_or_else(new_refresh_token);
        inner.refresh_tokens.insert(refresh_token.clone(), id);
        inner.sessions.push(UserSession {
            username: username.map_or_else(|| format!("user-{id}"), str::to_owned),
            current: refresh_token.clone(),
            previous: None,
            revoked: false,
        });
        refresh_token
    }

    /// Revokes a session: every refresh token and every access token issued to it.
    /// Revokes the session `refresh_token` belongs to (current or rotated out), if any.
    fn revoke_refresh_token(&self, refresh_token: &str) {
        let mut inner = lock(&self.inner);
        if let Some(&id) = inner.refresh_tokens.get(refresh_token) {
            tracing::debug!(
                session = id,
                "a refresh token was revoked: revoking its session"
            );
            Self::revoke_session(&mut inner, id);
        }
    }

    fn revoke_session(inner: &mut EndpointInner, id: usize) {
        if let Some(session) = inner.sessions.get_mut(id) {
            session.revoked = true;
        }
        for issued in inner.tokens.values_mut() {
            if issued.session == Some(id) {
                issued.revoked = true;
            }
        }
    }

    /// The refresh_token grant, once the client is authenticated: the current refresh token of
    /// a live session gets a new access token (and, with rotation, a new refresh token); any
    /// other gets `invalid_grant`, and an old one of a live session revokes that session.
    fn refresh(&self, refresh_token: Option<&str>, scope: &str) -> Response<Full<Bytes>> {
        match self.refresh_session(refresh_token, scope, Via::TokenEndpoint) {
            Ok(answer) => json_response(StatusCode::OK, &serde_json::Value::Object(answer)),
            Err(_) => oauth_error("invalid_grant"),
        }
    }

    /// A refresh of a session, by whichever door it came: the answer's fields in the token
    /// endpoint's shape, or why it was refused.
    fn refresh_session(
        &self,
        refresh_token: Option<&str>,
        scope: &str,
        via: Via,
    ) -> Result<serde_json::Map<String, serde_json::Value>, Refusal> {
        let mut inner = lock(&self.inner);
        let Some(id) = refresh_token.and_then(|t| inner.refresh_tokens.get(t).copied()) else {
            return Err(Refusal::Unknown);
        };
        let (current, previous, revoked) = match inner.sessions.get(id) {
            Some(session) => (
                session.current.clone(),
                session.previous.clone(),
                session.revoked,
            ),
            None => return Err(Refusal::Unknown),
        };
        if revoked {
            return Err(Refusal::Revoked);
        }
        let within_grace = previous.is_some_and(|(token, rotated_at)| {
            refresh_token == Some(token.as_str()) && rotated_at.elapsed() < self.grace_period
        });
        if within_grace {
            tracing::debug!(
                session = id,
                "a rotated-out refresh token within the grace period"
            );
        } else if refresh_token != Some(current.as_str()) {
            tracing::debug!(
                session = id,
                "an old refresh token was reused: revoking the session"
            );
            Self::revoke_session(&mut inner, id);
            return Err(Refusal::Reused);
        }
        if let Via::SecretHash(check) = &via {
            let username = inner
                .sessions
                .get(id)
                .map(|session| session.username.clone())
                .unwrap_or_default();
            if !check(&username) {
                return Err(Refusal::SecretHash);
            }
        }
        // Cognito's token endpoint reads `scope` for client_credentials only: a refresh gets
        // the sign-in's scopes (none here) whatever it asks for.
        let scope = if self.honour_refresh_scope { scope } else { "" };
        let api = !matches!(via, Via::TokenEndpoint);
        let mut answer = self.issue_locked(&mut inner, scope, Some(id), api);
        let expires_in = inner.lifetime.as_secs().max(1);
        answer.insert(
            "id_token".into(),
            jwt_token(&format!("user-{id}"), "id", "", expires_in, None).into(),
        );
        // REFRESH_TOKEN_AUTH never rotates.
        let rotates = !matches!(via, Via::SecretHash(_) | Via::InitiateAuth);
        if self.rotate_refresh_tokens && rotates {
            let next = new_refresh_token();
            inner.refresh_tokens.insert(next.clone(), id);
            if let Some(session) = inner.sessions.get_mut(id) {
                let old = std::mem::replace(&mut session.current, next.clone());
                session.previous = Some((old, Instant::now()));
            }
            inner.rotations += 1;
            answer.insert("refresh_token".into(), next.into());
        }
        Ok(answer)
    }
}

/// By which door a refresh came.
enum Via<'a> {
    /// The OAuth token endpoint's refresh_token grant.
    TokenEndpoint,
    /// The user-pool API's `GetTokensFromRefreshToken`.
    GetTokens,
    /// The user-pool API's `InitiateAuth` `REFRESH_TOKEN_AUTH` of a public client.
    InitiateAuth,
    /// The same, of a client with a secret: the check of its `SECRET_HASH` against the
    /// session's username.
    SecretHash(&'a dyn Fn(&str) -> bool),
}

/// Why a refresh was refused: the token endpoint says `invalid_grant` to all of them, the
/// user-pool API tells them apart.
#[derive(Debug)]
enum Refusal {
    /// Not a refresh token this endpoint issued.
    Unknown,
    /// The session was revoked (reuse, sign-out, revocation).
    Revoked,
    /// A refresh token rotation replaced, past the grace period: the session is now revoked.
    Reused,
    /// A `SECRET_HASH` over another name or with another secret.
    SecretHash,
}

fn new_refresh_token() -> String {
    format!("rt-{}", random_alphanumeric(OPAQUE_TOKEN_LEN))
}

fn random_alphanumeric(len: usize) -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(len)
        .collect()
}

/// A JWT-shaped token: header and claims are real base64url JSON, the signature is random bytes.
/// A session's access token also carries its `username`, as Cognito's do.
fn jwt_token(
    subject: &str,
    token_use: &str,
    scope: &str,
    lifetime_secs: u64,
    username: Option<&str>,
) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let header = serde_json::json!({ "alg": "RS256", "kid": "test" });
    let mut claims = serde_json::json!({
        "sub": subject,
        "token_use": token_use,
        "scope": scope,
        "iat": now,
        "exp": now.saturating_add(lifetime_secs),
        "jti": random_alphanumeric(16),
    });
    if let (Some(username), Some(claims)) = (username, claims.as_object_mut()) {
        claims.insert("username".into(), username.into());
        claims.insert("client_id".into(), subject.into());
    }
    let mut signature = [0u8; 32];
    fastrand::fill(&mut signature);
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature),
    )
}

// ---------------------------------------------------------------------------------------------
// TokenEndpoint
// ---------------------------------------------------------------------------------------------

pub(super) struct EndpointHandle {
    pub(super) state: Arc<EndpointState>,
    addr: SocketAddr,
    _server: ServerTask,
}
