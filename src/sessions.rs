//! [`SessionSet`]: one user session per key, for a server that acts for its signed-in users
//! (a backend-for-frontend, a gateway), with idle sessions closed and forgotten.
//!
//! Each entry is a [`RefreshTokenGrant`] behind its own [`CognitoAuthLayer`] (its own cache:
//! one user's token never serves another). The grants share what every grant of the process
//! shares: the exchange threads, and the built-in HTTPS client when the configuration gives
//! none. It plays the part of Duende's `IUserTokenStore` or MSAL's token cache: the
//! application keeps the key (its own session id, the user's `sub`), the set keeps the tokens.
//!
//! ```
//! # #[cfg(feature = "test-util")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! use std::time::Duration;
//! use tower_cognito_auth::{RefreshTokenGrant, SessionSet, TokenSet, testing::TokenEndpoint};
//!
//! let endpoint = TokenEndpoint::builder().public_client(true).start().await?;
//! let (token_url, client_id) = (endpoint.token_url(), endpoint.client_id().to_owned());
//! let users = SessionSet::builder(move |set: TokenSet| {
//!     RefreshTokenGrant::builder()
//!         .token_url(&token_url)
//!         .client_id(&client_id)
//!         .restore(set)
//! })
//! .idle_timeout(Duration::from_secs(30 * 60))
//! .build();
//!
//! // A user signed in: what Cognito returned becomes their session.
//! users.sign_in("user-1", TokenSet::new(endpoint.new_session())).await?;
//! // Each request for that user: their layer (wrap a client with it, or ask for the token).
//! let layer = users.get(&"user-1").expect("signed in");
//! let token = layer.token().await?;
//! # let _ = token;
//! // From a timer: sessions nobody used for the idle timeout are closed and forgotten.
//! users.evict_idle().await;
//! users.sign_out(&"user-1").await?;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "test-util"))]
//! # fn main() {}
//! ```

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;
use crate::grant::{RefreshTokenGrant, RefreshTokenGrantBuilder, TokenSet};
use crate::layer::{CognitoAuthLayer, CognitoAuthLayerBuilder};

type MakeGrant = Box<dyn Fn(TokenSet) -> RefreshTokenGrantBuilder + Send + Sync>;
type MakeLayer = Box<dyn Fn(CognitoAuthLayerBuilder) -> CognitoAuthLayerBuilder + Send + Sync>;

/// One user session per key: see the [module docs](crate::sessions).
///
/// Cloning is cheap; clones share one set. `Debug` shows how many sessions it holds, never a
/// key or a token.
pub struct SessionSet<K> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for SessionSet<K> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<K> {
    grant: MakeGrant,
    layer: MakeLayer,
    idle_timeout: Duration,
    sessions: Mutex<HashMap<K, Entry>>,
}

struct Entry {
    grant: RefreshTokenGrant,
    layer: CognitoAuthLayer,
    /// The last sign-in or [`SessionSet::get`], on Tokio's clock.
    used: Instant,
}

/// Builds a [`SessionSet`]; see [`SessionSet::builder`].
pub struct SessionSetBuilder<K> {
    grant: MakeGrant,
    layer: MakeLayer,
    idle_timeout: Duration,
    _key: std::marker::PhantomData<fn() -> K>,
}

impl<K> fmt::Debug for SessionSetBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionSetBuilder")
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl<K> SessionSetBuilder<K> {
    /// How each session's layer is configured (`min_validity`, `replay`, ...). Default: the
    /// layer's defaults.
    pub fn layer(
        mut self,
        layer: impl Fn(CognitoAuthLayerBuilder) -> CognitoAuthLayerBuilder + Send + Sync + 'static,
    ) -> Self {
        self.layer = Box::new(layer);
        self
    }

    /// How long a session may go unused (no [`get`](SessionSet::get), no sign-in) before
    /// [`evict_idle`](SessionSet::evict_idle) closes and forgets it. Default is 30 minutes.
    pub fn idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// The set, empty.
    pub fn build(self) -> SessionSet<K> {
        SessionSet {
            inner: Arc::new(Inner {
                grant: self.grant,
                layer: self.layer,
                idle_timeout: self.idle_timeout,
                sessions: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl<K: Eq + Hash + Clone + Send + 'static> SessionSet<K> {
    /// A builder. `grant` configures the grant of a user who signs in with a [`TokenSet`]:
    /// the token endpoint, the client, `persist` (it may capture the key), and
    /// [`restore`](RefreshTokenGrantBuilder::restore) of the set it is given.
    pub fn builder(
        grant: impl Fn(TokenSet) -> RefreshTokenGrantBuilder + Send + Sync + 'static,
    ) -> SessionSetBuilder<K> {
        SessionSetBuilder {
            grant: Box::new(grant),
            layer: Box::new(|layer| layer),
            idle_timeout: Duration::from_secs(30 * 60),
            _key: std::marker::PhantomData,
        }
    }

    /// A user signed in (or signed in again): `set` becomes their session, under `key`, and
    /// its layer is returned. A session the key had before is signed in anew
    /// ([`RefreshTokenGrant::sign_in`]: no request carries its previous access token again).
    ///
    /// # Errors
    ///
    /// The [`Error`] of building the grant or the layer, or of the sign-in.
    pub async fn sign_in(&self, key: K, set: TokenSet) -> Result<CognitoAuthLayer, Error> {
        let existing = lock(&self.inner.sessions)
            .get(&key)
            .map(|entry| (entry.grant.clone(), entry.layer.clone()));
        let layer = match existing {
            Some((grant, layer)) => {
                grant.sign_in(set).await?;
                layer
            }
            None => {
                let grant = (self.inner.grant)(set).build()?;
                let layer =
                    (self.inner.layer)(CognitoAuthLayer::builder().token_source(grant.clone()))
                        .build()?;
                lock(&self.inner.sessions).insert(
                    key,
                    Entry {
                        grant,
                        layer: layer.clone(),
                        used: Instant::now(),
                    },
                );
                return Ok(layer);
            }
        };
        if let Some(entry) = lock(&self.inner.sessions).get_mut(&key) {
            entry.used = Instant::now();
        }
        Ok(layer)
    }

    /// The layer of `key`'s session, if the user is signed in; marks it used.
    pub fn get(&self, key: &K) -> Option<CognitoAuthLayer> {
        let mut sessions = lock(&self.inner.sessions);
        let entry = sessions.get_mut(key)?;
        entry.used = Instant::now();
        Some(entry.layer.clone())
    }

    /// The grant of `key`'s session (its [`status`](RefreshTokenGrant::status), `id_token`,
    /// claims), if the user is signed in. Does not mark it used.
    pub fn grant(&self, key: &K) -> Option<RefreshTokenGrant> {
        lock(&self.inner.sessions)
            .get(key)
            .map(|entry| entry.grant.clone())
    }

    /// Signs `key`'s user out ([`RefreshTokenGrant::sign_out`]: the refresh token revoked, the
    /// session ended) and forgets the session. Nothing to do for an unknown key.
    ///
    /// # Errors
    ///
    /// The [`Error`] of the revocation; the session is forgotten either way.
    pub async fn sign_out(&self, key: &K) -> Result<(), Error> {
        let entry = lock(&self.inner.sessions).remove(key);
        match entry {
            Some(entry) => entry.grant.sign_out().await,
            None => Ok(()),
        }
    }

    /// Closes ([`RefreshTokenGrant::close`]: an exchange in flight finished, a failed save
    /// tried once more) and forgets every session unused for the idle timeout; returns how
    /// many. Call it from a timer (`tokio::time::interval`). The user signs in again to get
    /// a new session; their refresh token stays valid at the server.
    pub async fn evict_idle(&self) -> usize {
        let now = Instant::now();
        let idle: Vec<Entry> = {
            let mut sessions = lock(&self.inner.sessions);
            let keys: Vec<K> = sessions
                .iter()
                .filter(|(_, entry)| {
                    now.saturating_duration_since(entry.used) >= self.inner.idle_timeout
                })
                .map(|(key, _)| key.clone())
                .collect();
            keys.iter().filter_map(|key| sessions.remove(key)).collect()
        };
        for entry in &idle {
            if let Err(error) = entry.grant.close().await {
                tracing::warn!(%error, "an idle session was evicted with its newest token set unsaved");
            }
        }
        idle.len()
    }

    /// How many sessions the set holds.
    pub fn len(&self) -> usize {
        lock(&self.inner.sessions).len()
    }

    /// Whether the set holds no session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K> fmt::Debug for SessionSet<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionSet")
            .field("sessions", &lock(&self.inner.sessions).len())
            .field("idle_timeout", &self.inner.idle_timeout)
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
