//! Client authentication by a signed JWT instead of a secret sent in clear (RFC 7523 §2.2,
//! OpenID Connect Core §9): [`ClientAssertionKey`] for `private_key_jwt` (RS256 or ES256), and
//! the HS256 assertion of `client_secret_jwt`.
//!
//! Every token request carries a new assertion: `iss` = `sub` = the client id, `aud` = the token
//! URL, a random `jti` (servers refuse a replayed one), `iat` and `nbf` now, `exp` five minutes
//! later, and `kid` in the header when the key has one. Signed with `ring`.
//!
//! ```no_run
//! use tower_cognito_auth::{ClientAssertionKey, ClientAuth, CognitoAuthLayer};
//!
//! # fn main() -> Result<(), tower_cognito_auth::Error> {
//! # let pem = "";
//! let key = ClientAssertionKey::from_pkcs8_pem(pem)?.key_id("kid-1"); // RS256, or ES256 for an EC key
//! let auth = CognitoAuthLayer::builder()
//!     .token_url("https://idp.example.com/oauth2/token")
//!     .client_id("my-client-id")
//!     .client_auth(ClientAuth::PrivateKeyJwt(key))
//!     .build()?;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{self, EcdsaKeyPair, RsaKeyPair};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject as _;

use crate::error::Error;

/// How long an assertion is valid: at most five minutes (RFC 7523 leaves it to the server;
/// Entra ID and Okta refuse longer ones).
pub(crate) const ASSERTION_LIFETIME: Duration = Duration::from_secs(300);

/// The largest key file read: a PKCS#8 PEM of a 4096-bit RSA key is about 3.3 KiB.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// The `client_assertion_type` of a JWT bearer assertion (RFC 7523 §2.2).
pub(crate) const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A private key that signs the client's assertions ([`ClientAuth::PrivateKeyJwt`](crate::ClientAuth::PrivateKeyJwt)):
/// an RSA key (RS256) or an EC P-256 key (ES256), in PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
///
/// The identity provider holds the public half (a client's JWKS, or a certificate uploaded to
/// it); [`key_id`](Self::key_id) names it when the provider asks for a `kid`. The key never
/// appears in `Debug` output, logs or errors. See the [module docs](crate::grant::client_assertion)
/// for an example.
#[derive(Clone)]
pub struct ClientAssertionKey {
    source: KeySource,
    kid: Option<Arc<str>>,
}

#[derive(Clone)]
enum KeySource {
    Loaded(Arc<SigningKey>),
    File(Arc<Path>),
}

/// A parsed private key.
enum SigningKey {
    Rs256(RsaKeyPair),
    Es256(EcdsaKeyPair),
}

impl ClientAssertionKey {
    /// A key from its PKCS#8 PEM text (`-----BEGIN PRIVATE KEY-----`): RSA (2048 bits or more)
    /// signs RS256, EC P-256 signs ES256.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`](crate::ErrorKind::InvalidConfig) when the text holds no PKCS#8 private
    /// key, or one of another kind or size. The message never holds the key.
    pub fn from_pkcs8_pem(pem: impl AsRef<[u8]>) -> Result<Self, Error> {
        let key = parse(pem.as_ref(), || "the client assertion key".to_owned())?;
        Ok(Self {
            source: KeySource::Loaded(Arc::new(key)),
            kid: None,
        })
    }

    /// A key read from the PKCS#8 PEM file at `path` at each token request, as a
    /// [`ClientSecret::from_file`](crate::ClientSecret::from_file) is: a key that a secret
    /// volume or an agent rewrites is used from the next request on. Nothing is read here; a
    /// missing or unusable file fails the token request with an
    /// [`InvalidConfig`](crate::ErrorKind::InvalidConfig) error that names the path.
    pub fn from_file(path: impl Into<PathBuf>) -> Self {
        Self {
            source: KeySource::File(path.into().into()),
            kid: None,
        }
    }

    /// The key's id, sent as the assertion header's `kid`, for a provider that holds several
    /// keys of the client. Default is none.
    pub fn key_id(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into().into());
        self
    }

    /// The file the key is read from, if it is read at each request.
    pub(crate) fn file(&self) -> Option<&Path> {
        match &self.source {
            KeySource::File(path) => Some(path),
            KeySource::Loaded(_) => None,
        }
    }

    /// A signed assertion for one token request.
    pub(crate) fn assertion(&self, client_id: &str, audience: &str) -> Result<String, Error> {
        let key = match &self.source {
            KeySource::Loaded(key) => Arc::clone(key),
            KeySource::File(path) => Arc::new(read_key(path)?),
        };
        let alg = match *key {
            SigningKey::Rs256(_) => "RS256",
            SigningKey::Es256(_) => "ES256",
        };
        let signing_input = signing_input(alg, self.kid.as_deref(), client_id, audience)?;
        let rng = SystemRandom::new();
        let failed = || Error::internal("the client assertion could not be signed");
        let signature = match &*key {
            SigningKey::Rs256(pair) => {
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    signing_input.as_bytes(),
                    &mut signature,
                )
                .map_err(|_| failed())?;
                signature
            }
            SigningKey::Es256(pair) => pair
                .sign(&rng, signing_input.as_bytes())
                .map_err(|_| failed())?
                .as_ref()
                .to_vec(),
        };
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

/// The HS256 assertion of `client_secret_jwt`, keyed by the client secret.
pub(crate) fn secret_assertion(
    secret: &str,
    client_id: &str,
    audience: &str,
) -> Result<String, Error> {
    let signing_input = signing_input("HS256", None, client_id, audience)?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, signing_input.as_bytes());
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(tag.as_ref())
    ))
}

/// `base64url(header) "." base64url(claims)`, with a new `jti` and the current time.
fn signing_input(
    alg: &str,
    kid: Option<&str>,
    client_id: &str,
    audience: &str,
) -> Result<String, Error> {
    let mut header = serde_json::json!({ "alg": alg, "typ": "JWT" });
    if let Some(kid) = kid {
        header["kid"] = kid.into();
    }
    let mut jti = [0u8; 16];
    SystemRandom::new()
        .fill(&mut jti)
        .map_err(|_| Error::internal("no randomness for the client assertion's jti"))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = serde_json::json!({
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": URL_SAFE_NO_PAD.encode(jti),
        "iat": now,
        "nbf": now,
        "exp": now + ASSERTION_LIFETIME.as_secs(),
    });
    Ok(format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    ))
}

/// Parses a PKCS#8 PEM private key; `what` names it in errors.
fn parse(pem: &[u8], what: impl Fn() -> String) -> Result<SigningKey, Error> {
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem).map_err(|_| {
        Error::invalid_config(format!(
            "{} is not a PKCS#8 PEM private key (-----BEGIN PRIVATE KEY-----)",
            what()
        ))
    })?;
    let der = der.secret_pkcs8_der();
    if let Ok(pair) = RsaKeyPair::from_pkcs8(der) {
        return Ok(SigningKey::Rs256(pair));
    }
    let rng = SystemRandom::new();
    if let Ok(pair) =
        EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
    {
        return Ok(SigningKey::Es256(pair));
    }
    Err(Error::invalid_config(format!(
        "{} is neither an RSA key of 2048 bits or more (RS256) nor an EC P-256 key (ES256)",
        what()
    )))
}

/// Reads and parses a key file; the errors name the path, never the content.
fn read_key(path: &Path) -> Result<SigningKey, Error> {
    use std::io::Read as _;
    let what = || format!("the client assertion key file {}", path.display());
    let fail = |why: String| Error::invalid_config(format!("{} {why}", what()));
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => fail("does not exist".to_owned()),
        _ => fail(format!("cannot be read: {e}")),
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot be read: {e}")))?;
    if bytes.len() as u64 > MAX_KEY_FILE {
        return Err(fail("is larger than 64 KiB: not a key".to_owned()));
    }
    parse(&bytes, what)
}

impl fmt::Debug for ClientAssertionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ClientAssertionKey");
        match &self.source {
            KeySource::Loaded(key) => d.field(
                "alg",
                &match **key {
                    SigningKey::Rs256(_) => "RS256",
                    SigningKey::Es256(_) => "ES256",
                },
            ),
            KeySource::File(path) => d.field("file", path),
        };
        d.field("kid", &self.kid).finish_non_exhaustive()
    }
}

/// Two keys are equal when they are the same key (clones of one another) with the same `kid`,
/// or read from the same file.
impl PartialEq for ClientAssertionKey {
    fn eq(&self, other: &Self) -> bool {
        let same = match (&self.source, &other.source) {
            (KeySource::Loaded(a), KeySource::Loaded(b)) => Arc::ptr_eq(a, b),
            (KeySource::File(a), KeySource::File(b)) => a == b,
            _ => false,
        };
        same && self.kid == other.kid
    }
}

impl Eq for ClientAssertionKey {}

#[cfg(test)]
mod tests;
