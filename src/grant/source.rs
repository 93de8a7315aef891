//! The [`TokenSource`] trait the cache calls, and the [`SharedIdentity`] a source gives to
//! share its token through a fleet's store.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::error::Error;
use crate::token::Token;

/// A boxed, `Send` future, as [`TokenSource::fetch`] returns: the very type of
/// `futures::future::BoxFuture` (`Pin<Box<dyn Future<Output = T> + Send + 'a>>`), so where
/// both names are in scope, import either one.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something that can fetch a new access token.
///
/// The cache calls [`fetch`](TokenSource::fetch) once per refresh, however many requests wait
/// for it, in a task of its own. Implement it to plug in another grant or a test double; the
/// cache adds single-flight, refresh-ahead, backoff and a deadline around it.
///
/// ```
/// use std::time::Duration;
/// use tower_cognito_auth::{AccessToken, BoxFuture, Error, Token, TokenSource};
///
/// struct Fixed;
///
/// impl TokenSource for Fixed {
///     fn fetch(&self) -> BoxFuture<'_, Result<Token, Error>> {
///         Box::pin(async {
///             let expires_at = tokio::time::Instant::now() + Duration::from_secs(3600);
///             Ok(Token::new(AccessToken::new("fixed")?, expires_at))
///         })
///     }
/// }
/// ```
pub trait TokenSource: Send + Sync + 'static {
    /// Fetches a new token.
    fn fetch(&self) -> BoxFuture<'_, Result<Token, Error>>;

    /// Which token this source delivers, and the secret that seals it, so that a fleet of
    /// processes can share one token through a shared store (feature `store`).
    ///
    /// `None`, the default, means the token is not shared: each process fetches its own.
    /// [`ClientCredentials`](crate::ClientCredentials) returns its token URL, client id, scopes and client secret. A
    /// source that returns an identity must deliver the same kind of token to every process
    /// that returns an equal identity: two processes with equal identities adopt each other's
    /// tokens. See [`SharedIdentity`].
    fn shared_identity(&self) -> Option<SharedIdentity> {
        None
    }

    /// The OAuth client id this source fetches tokens for, if it has one: the default `client`
    /// label of the crate's [metrics](crate::metrics). Default is `None` (label `unknown`).
    fn client_id(&self) -> Option<&str> {
        None
    }

    /// A number that changes when the source's credentials do (a user signed in again): the
    /// cache then forgets a failure it is pacing its refreshes after (an `invalid_grant`, say),
    /// and the next request refreshes at once. Default is `0`, for ever.
    fn epoch(&self) -> u64 {
        0
    }
}

impl<T: TokenSource + ?Sized> TokenSource for Arc<T> {
    fn fetch(&self) -> BoxFuture<'_, Result<Token, Error>> {
        (**self).fetch()
    }

    fn shared_identity(&self) -> Option<SharedIdentity> {
        (**self).shared_identity()
    }

    fn client_id(&self) -> Option<&str> {
        (**self).client_id()
    }

    fn epoch(&self) -> u64 {
        (**self).epoch()
    }
}

/// Which token a [`TokenSource`] delivers, and the secret material that seals it in a shared
/// store (see [`TokenSource::shared_identity`]).
///
/// It has two parts:
/// - a *namespace*: whatever tells this source's tokens apart from every other source's (for
///   example the token URL, the client id and the sorted scopes). Processes whose namespaces are
///   equal share a token; different namespaces never do. The store sees only a keyed hash of it.
/// - a *key*: secret material, at least 32 random bytes or a client secret, from which the keys
///   that encrypt and authenticate the stored token are derived. Whoever can read the store but
///   lacks the key learns nothing from it and cannot plant a token; processes with different
///   keys do not see each other's tokens (a rotated key is a miss, not an error).
///
/// `Debug` prints neither part. Cloning is cheap.
///
/// ```
/// use tower_cognito_auth::{BoxFuture, Error, SharedIdentity, Token, TokenSource};
///
/// struct MyGrant {
///     audience: String,
///     signing_key: Vec<u8>,
/// }
///
/// impl TokenSource for MyGrant {
///     fn fetch(&self) -> BoxFuture<'_, Result<Token, Error>> {
///         // ... ask the identity provider ...
///         # unimplemented!()
///     }
///
///     fn shared_identity(&self) -> Option<SharedIdentity> {
///         let namespace = format!("my-grant\n{}", self.audience);
///         Some(SharedIdentity::new(namespace, &self.signing_key))
///     }
/// }
/// ```
#[derive(Clone)]
pub struct SharedIdentity {
    /// The canonical, length-prefixed encoding of the namespace.
    namespace: Arc<[u8]>,
    key: Arc<[u8]>,
}

impl SharedIdentity {
    /// An identity from a namespace (any bytes that tell this source's tokens apart) and secret
    /// key material (at least 32 random bytes, or a client secret).
    ///
    /// A namespace given here never equals the identity [`ClientCredentials`](crate::ClientCredentials) builds, whatever
    /// its bytes. An empty key is accepted here but refused when a shared store is set up.
    pub fn new(namespace: impl AsRef<[u8]>, key: impl AsRef<[u8]>) -> Self {
        let mut canonical = Vec::new();
        put_field(&mut canonical, b"custom");
        put_field(&mut canonical, namespace.as_ref());
        Self {
            namespace: canonical.into(),
            key: key.as_ref().into(),
        }
    }

    /// The identity of a client_credentials token: the token URL, the client id and the scopes
    /// (sorted and deduplicated, so their order does not matter), keyed by the client secret.
    pub(crate) fn client_credentials<'a>(
        token_url: &str,
        client_id: &str,
        scopes: impl IntoIterator<Item = &'a str>,
        secret: &str,
    ) -> Self {
        let mut scopes: Vec<&str> = scopes.into_iter().collect();
        scopes.sort_unstable();
        scopes.dedup();
        let mut canonical = Vec::new();
        put_field(&mut canonical, b"client_credentials");
        put_field(&mut canonical, token_url.as_bytes());
        put_field(&mut canonical, client_id.as_bytes());
        canonical.extend_from_slice(&(scopes.len() as u64).to_be_bytes());
        for scope in scopes {
            put_field(&mut canonical, scope.as_bytes());
        }
        Self {
            namespace: canonical.into(),
            key: secret.as_bytes().into(),
        }
    }

    /// The canonical encoding of the namespace: no two namespaces share one.
    #[cfg_attr(not(feature = "store"), allow(dead_code))]
    pub(crate) fn canonical(&self) -> &[u8] {
        &self.namespace
    }

    /// The secret key material.
    #[cfg_attr(not(feature = "store"), allow(dead_code))]
    pub(crate) fn key_material(&self) -> &[u8] {
        &self.key
    }
}

/// Appends a field as its length (u64, big-endian) and its bytes, so that no two sequences of
/// fields encode alike.
fn put_field(buf: &mut Vec<u8>, field: &[u8]) {
    buf.extend_from_slice(&(field.len() as u64).to_be_bytes());
    buf.extend_from_slice(field);
}

impl fmt::Debug for SharedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedIdentity([redacted])")
    }
}
