//! [`ClientSecret`]: where a grant finds its client secret, read again at each token request so
//! that a rotated secret is used at once, with no rebuild.
//!
//! Kubernetes secrets, the Secrets Store CSI driver (AWS Secrets Manager, Vault) and Vault agent
//! deliver a rotated secret by rewriting a file: [`ClientSecret::from_file`] is the recommended
//! setup. A secret kept elsewhere comes through [`ClientSecret::from_fn`].
//!
//! ```no_run
//! use tower_cognito_auth::{ClientSecret, CognitoAuthLayer};
//!
//! # fn main() -> Result<(), tower_cognito_auth::Error> {
//! let auth = CognitoAuthLayer::builder()
//!     .cognito_domain("my-pool", "us-east-1")
//!     .client_id("my-client-id")
//!     .client_secret_source(ClientSecret::from_file("/run/secrets/cognito-client-secret"))
//!     .build()?; // the file is not read yet: at the first token request
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::hash::{BuildHasher as _, RandomState};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;

/// The largest secret file read: a client secret is a few dozen bytes; anything past this is
/// not one.
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Where a grant finds its client secret: a fixed string, a file read at each token request, or
/// a function of yours.
///
/// Given to `client_secret_source(..)` on [`CognitoAuthLayerBuilder`](crate::CognitoAuthLayerBuilder),
/// [`ClientCredentialsBuilder`](crate::ClientCredentialsBuilder) and
/// [`RefreshTokenGrantBuilder`](crate::RefreshTokenGrantBuilder). A file or a function is read
/// once per token request (one per renewal: cheap), never by `build()`; its trailing whitespace
/// (a file's final newline) is trimmed. A secret that cannot be had (a missing, unreadable or
/// empty file) fails that token request with an [`InvalidConfig`](crate::ErrorKind::InvalidConfig)
/// error that names the file, never its content, and no request is sent.
///
/// A secret that changed is a new credential: after an `invalid_client` (or a missing secret)
/// the cache reads the secret again as requests come (at most ten times a second), and as soon
/// as it changed forgets the pause it was keeping, so a late rewrite heals on the next request
/// (within 100 ms of the rewrite).
///
/// `Debug` shows the file's path, never a secret. See the [module docs](crate::grant::client_secret)
/// for an example.
#[derive(Clone)]
pub struct ClientSecret {
    provider: Provider,
}

/// A secret provider: called at each token request; return the secret, or an [`Error`]
/// ([`Error::new`]) saying why there is none.
type SecretFn = dyn Fn() -> Result<String, Error> + Send + Sync;

#[derive(Clone)]
enum Provider {
    Fixed(Arc<str>),
    File(Arc<Path>),
    Fn(Arc<SecretFn>),
    #[cfg(feature = "aws-secrets-manager")]
    Aws(Arc<super::aws_secrets_manager::SecretsManagerCache>),
}

impl ClientSecret {
    /// A secret that never changes (what `client_secret(..)` sets).
    pub fn new(secret: impl Into<String>) -> Self {
        Self {
            provider: Provider::Fixed(secret.into().into()),
        }
    }

    /// A secret read from the file at `path` at each token request, trailing whitespace
    /// trimmed: a Kubernetes secret volume, a Secrets Store CSI driver mount, a Vault agent
    /// template. A missing, unreadable or empty file (whitespace only, or larger than 64 KiB)
    /// fails the token request with an [`InvalidConfig`](crate::ErrorKind::InvalidConfig) error
    /// that names the path.
    pub fn from_file(path: impl Into<PathBuf>) -> Self {
        Self {
            provider: Provider::File(path.into().into()),
        }
    }

    /// A secret returned by `provider`, called at each token request and, after an
    /// `invalid_client`, as requests come (at most ten times a second). It runs on the caller's
    /// thread inside the runtime, so it must return at once: a secret that lives behind the
    /// network is best kept in memory by a task of yours and returned from there. Trailing
    /// whitespace is trimmed; an empty secret is an [`InvalidConfig`](crate::ErrorKind::InvalidConfig)
    /// error, and an error it returns ([`Error::new`]) fails the token request as it is.
    ///
    /// ```
    /// use std::sync::{Arc, RwLock};
    /// use tower_cognito_auth::{ClientSecret, Error, ErrorKind};
    ///
    /// let current = Arc::new(RwLock::new(String::from("s3cr3t")));
    /// let secret = ClientSecret::from_fn({
    ///     let current = Arc::clone(&current);
    ///     move || {
    ///         current
    ///             .read()
    ///             .map(|s| s.clone())
    ///             .map_err(|_| Error::new(ErrorKind::Internal, "the secret's lock is poisoned"))
    ///     }
    /// });
    /// // A task of yours replaces it when the secret rotates:
    /// *current.write().unwrap() = String::from("n3w-s3cr3t");
    /// # let _ = secret;
    /// ```
    pub fn from_fn<F>(provider: F) -> Self
    where
        F: Fn() -> Result<String, Error> + Send + Sync + 'static,
    {
        Self {
            provider: Provider::Fn(Arc::new(provider)),
        }
    }

    /// A secret kept in AWS Secrets Manager (feature `aws-secrets-manager`): cached, read
    /// again every few minutes and after an `invalid_client`, never more than once at a time.
    /// See [`AwsSecretsManager`](crate::AwsSecretsManager).
    #[cfg(feature = "aws-secrets-manager")]
    #[cfg_attr(docsrs, doc(cfg(feature = "aws-secrets-manager")))]
    pub fn from_aws_secrets_manager(source: crate::AwsSecretsManager) -> Self {
        Self {
            provider: Provider::Aws(Arc::new(
                super::aws_secrets_manager::SecretsManagerCache::new(source),
            )),
        }
    }

    /// The secret when it never changes.
    pub(crate) fn fixed(&self) -> Option<&str> {
        match &self.provider {
            Provider::Fixed(secret) => Some(secret),
            _ => None,
        }
    }

    /// Reads the secret for a token request.
    async fn read(&self) -> Result<String, Error> {
        match &self.provider {
            #[cfg(feature = "aws-secrets-manager")]
            Provider::Aws(cache) => self.finish(cache.get().await?),
            _ => self.read_now(false),
        }
    }

    /// Reads the secret without waiting: a file, a function, or Secrets Manager's cached value
    /// (after a failure for good, `recheck`, with a read started in the background).
    fn read_now(&self, recheck: bool) -> Result<String, Error> {
        let secret = match &self.provider {
            // Taken as given: trailing whitespace is trimmed only from what is read.
            Provider::Fixed(secret) => return non_empty(secret.to_string(), || self.empty()),
            Provider::File(path) => read_file(path)?,
            Provider::Fn(provider) => provider()?,
            #[cfg(feature = "aws-secrets-manager")]
            Provider::Aws(cache) => cache.peek(recheck).ok_or_else(|| {
                Error::invalid_config("no client secret read from AWS Secrets Manager yet")
            })?,
        };
        let _ = recheck;
        self.finish(secret)
    }

    /// Trims a secret read; none left is an error.
    fn finish(&self, mut secret: String) -> Result<String, Error> {
        secret.truncate(secret.trim_end().len());
        non_empty(secret, || self.empty())
    }

    /// What an empty secret is called.
    fn empty(&self) -> String {
        match &self.provider {
            Provider::Fixed(_) => "the client secret is empty".to_owned(),
            Provider::File(path) => format!("the client secret file {} is empty", path.display()),
            Provider::Fn(_) => "the client secret provider returned an empty secret".to_owned(),
            #[cfg(feature = "aws-secrets-manager")]
            Provider::Aws(_) => "the client secret in AWS Secrets Manager is empty".to_owned(),
        }
    }
}

fn non_empty(secret: String, empty: impl FnOnce() -> String) -> Result<String, Error> {
    if secret.is_empty() {
        return Err(Error::invalid_config(empty()));
    }
    Ok(secret)
}

/// Reads a secret file; the errors name the path and the reason, never the content.
fn read_file(path: &Path) -> Result<String, Error> {
    let fail = |why: &str| {
        Error::invalid_config(format!("the client secret file {} {why}", path.display()))
    };
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => fail("does not exist"),
        std::io::ErrorKind::PermissionDenied => fail("cannot be read: permission denied"),
        _ => fail(&format!("cannot be read: {e}")),
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(&format!("cannot be read: {e}")))?;
    if bytes.len() as u64 > MAX_SECRET_FILE {
        return Err(fail("is larger than 64 KiB: not a client secret"));
    }
    String::from_utf8(bytes).map_err(|_| fail("is not UTF-8 text"))
}

impl From<String> for ClientSecret {
    fn from(secret: String) -> Self {
        Self::new(secret)
    }
}

impl From<&str> for ClientSecret {
    fn from(secret: &str) -> Self {
        Self::new(secret)
    }
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.provider {
            Provider::Fixed(_) => f.write_str("ClientSecret([redacted])"),
            Provider::File(path) => f.debug_tuple("ClientSecret::File").field(path).finish(),
            Provider::Fn(_) => f.write_str("ClientSecret::Fn"),
            #[cfg(feature = "aws-secrets-manager")]
            Provider::Aws(cache) => f.debug_tuple("ClientSecret::Aws").field(cache).finish(),
        }
    }
}

/// A grant's client secret as it reads it: the source, and what the reads so far saw, so that a
/// changed secret is noticed (see [`epoch`](SecretCell::epoch)).
pub(crate) struct SecretCell {
    source: ClientSecret,
    /// What the last read saw: a keyed hash of the secret (never the secret itself), or that
    /// there was none.
    seen: Mutex<Seen>,
    hasher: RandomState,
    /// Bumped each time a read made by [`epoch`](SecretCell::epoch) (after a failure for good)
    /// sees something else than the read before it.
    epoch: AtomicU64,
    /// Set while the last token request failed for good (`invalid_client`, no secret): then
    /// [`epoch`](SecretCell::epoch), which the cache asks at each request, reads the secret
    /// again, at most once per [`RECHECK_EVERY`].
    recheck: AtomicBool,
    /// When `epoch` last read the secret.
    rechecked: Mutex<Option<Instant>>,
}

/// How often, at most, a request reads the secret again while a failure for good is on record:
/// a rewrite is seen within this, and a flood of requests reads a file ten times a second.
pub(crate) const RECHECK_EVERY: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Seen {
    Never,
    Missing,
    Secret(u64),
}

impl SecretCell {
    pub(crate) fn new(source: ClientSecret) -> Self {
        Self {
            source,
            seen: Mutex::new(Seen::Never),
            hasher: RandomState::new(),
            epoch: AtomicU64::new(0),
            recheck: AtomicBool::new(false),
            rechecked: Mutex::new(None),
        }
    }

    /// The secret when it never changes.
    pub(crate) fn fixed(&self) -> Option<&str> {
        self.source.fixed()
    }

    /// Reads the secret for a token request.
    pub(crate) async fn read(&self) -> Result<String, Error> {
        let result = self.source.read().await;
        self.observe(&result, false);
        result
    }

    /// Notes what a read saw; with `bump`, a change bumps the epoch. A token request's own read
    /// does not: it uses what it read, and a new epoch would make the cache drop the token that
    /// request brings (as it does after a new sign-in) for nothing.
    fn observe(&self, result: &Result<String, Error>, bump: bool) {
        let now = match result {
            Ok(secret) => Seen::Secret(self.hasher.hash_one(secret.as_bytes())),
            Err(_) => Seen::Missing,
        };
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if bump && *seen != Seen::Never && *seen != now {
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        *seen = now;
    }

    /// Records how a token request with the secret ended: a permanent failure makes the next
    /// [`epoch`](SecretCell::epoch) calls read the secret again.
    pub(crate) fn note(&self, failed_for_good: bool) {
        if self.source.fixed().is_none() {
            self.recheck.store(failed_for_good, Ordering::Release);
        }
        #[cfg(feature = "aws-secrets-manager")]
        if let (true, Provider::Aws(cache)) = (failed_for_good, &self.source.provider) {
            cache.refused();
        }
    }

    /// A number that changes when the secret does, after a failure for good: only then is a
    /// rewrite what the cache waits for, and only then does this read the secret (at most once
    /// per [`RECHECK_EVERY`]; otherwise it is two atomic loads).
    pub(crate) fn epoch(&self) -> u64 {
        if self.recheck.load(Ordering::Acquire) && self.recheck_due() {
            // An error stays for the token request.
            self.observe(&self.source.read_now(true), true);
        }
        self.epoch.load(Ordering::Acquire)
    }

    fn recheck_due(&self) -> bool {
        let now = Instant::now();
        let mut last = self.rechecked.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| now.saturating_duration_since(at) < RECHECK_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }
}

impl fmt::Debug for SecretCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.source.fmt(f)
    }
}

#[cfg(test)]
mod tests;
