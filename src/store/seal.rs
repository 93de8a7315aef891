//! Sealing tokens for a shared store: the key name a token is stored under, and the encrypted,
//! authenticated value.
//!
//! From a [`SharedIdentity`]'s key material, HKDF-SHA256 (with a fixed salt of this crate)
//! derives three keys, one per use: an AES-256-GCM key for the value, an HMAC-SHA256 key for the
//! token's tag, and an HMAC-SHA256 key for the key name.
//!
//! - Key name: `tower-cognito-auth:v1:` followed by the hex HMAC of the identity's canonical
//!   encoding in braces (`{…}`, a Redis Cluster hash tag), so the store never shows the token
//!   URL, the client id or the scopes. The lease is the name followed by `:lease`, the refusal
//!   record by `:refused`: the tag puts all three in one hash slot of a cluster.
//! - Value: `version (1 byte) ‖ tag (32 bytes: HMAC of the token) ‖ nonce (12 bytes, random) ‖
//!   AES-256-GCM(lifetime in ms ‖ expiry in ms since the Unix epoch ‖ token)` (both u64
//!   big-endian), with the key name as associated
//!   data, so a value copied under another name does not open. The tag lets a script in the
//!   store delete a token that was rejected without decrypting anything
//!   ([`TokenStore::remove_if_prefix`](super::TokenStore::remove_if_prefix) with
//!   [`Sealer::tag_prefix`]).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut as _, Bytes, BytesMut};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use ring::hmac;
use ring::rand::{SecureRandom as _, SystemRandom};

use crate::error::Error;
use crate::grant::SharedIdentity;

/// The first byte of every sealed value. Version 1 had no sealed expiry: its values read as
/// garbage (a miss), and are replaced.
pub(crate) const VERSION: u8 = 2;
/// `version ‖ tag`: what [`Sealer::tag_prefix`] returns.
pub(crate) const TAG_PREFIX_LEN: usize = 1 + TAG_LEN;
pub(crate) const TAG_LEN: usize = 32;
const NONCE_LEN: usize = aead::NONCE_LEN;
/// The lifetime and the expiry, in milliseconds.
const TIMES_LEN: usize = 16;
/// The shortest value that can open: header, the encrypted times, one token byte, the AEAD
/// tag.
const MIN_SEALED_LEN: usize = TAG_PREFIX_LEN + NONCE_LEN + TIMES_LEN + 1 + TAG_OVERHEAD;
const TAG_OVERHEAD: usize = 16;

/// Every key name starts with this.
pub(crate) const KEY_PREFIX: &str = "tower-cognito-auth:v1:";
/// The HKDF salt: fixed and specific to this crate and format version.
const HKDF_SALT: &[u8] = b"tower-cognito-auth shared token store v1";
const INFO_AEAD: &[u8] = b"tower-cognito-auth v1 aes-256-gcm value key";
const INFO_TAG: &[u8] = b"tower-cognito-auth v1 hmac-sha256 token tag key";
const INFO_NAME: &[u8] = b"tower-cognito-auth v1 hmac-sha256 key name key";

/// Seals and opens the tokens of one identity. Cheap to share behind an `Arc`; `Debug` shows
/// only the key name.
pub(crate) struct Sealer {
    aead: LessSafeKey,
    tag_key: hmac::Key,
    name: String,
    lease: String,
    refused: String,
    rng: SystemRandom,
}

impl Sealer {
    /// Derives the keys and the key name of `identity`.
    ///
    /// # Errors
    ///
    /// [`InvalidConfig`](crate::ErrorKind::InvalidConfig) when the identity's key material is
    /// empty: a value sealed with it would protect nothing.
    pub(crate) fn new(identity: &SharedIdentity) -> Result<Self, Error> {
        let material = identity.key_material();
        if material.is_empty() {
            return Err(Error::invalid_config(
                "the shared identity has no key material: a shared store needs a secret to seal tokens with",
            ));
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(material);
        let derive_failed = || Error::internal("key derivation failed");
        let aead_key: UnboundKey = prk
            .expand(&[INFO_AEAD], &aead::AES_256_GCM)
            .map_err(|_| derive_failed())?
            .into();
        let tag_key: hmac::Key = prk
            .expand(&[INFO_TAG], hmac::HMAC_SHA256)
            .map_err(|_| derive_failed())?
            .into();
        let name_key: hmac::Key = prk
            .expand(&[INFO_NAME], hmac::HMAC_SHA256)
            .map_err(|_| derive_failed())?
            .into();
        let digest = hmac::sign(&name_key, identity.canonical());
        // The hash in braces is the key's hash tag: the lease and the refusal record share
        // the token's slot in a Redis Cluster, so that each script finds its keys on one node.
        let name = format!("{KEY_PREFIX}{{{}}}", hex(digest.as_ref()));
        let lease = format!("{name}:lease");
        let refused = format!("{name}:refused");
        Ok(Self {
            aead: LessSafeKey::new(aead_key),
            tag_key,
            name,
            lease,
            refused,
            rng: SystemRandom::new(),
        })
    }

    /// The key the token is stored under.
    pub(crate) fn key_name(&self) -> &str {
        &self.name
    }

    /// The key of the lease that elects the one process that fetches.
    pub(crate) fn lease_name(&self) -> &str {
        &self.lease
    }

    /// The key of the fleet's record of a refusal by the token endpoint.
    pub(crate) fn refused_name(&self) -> &str {
        &self.refused
    }

    /// The keyed tag of a refusal record's `body`: whoever lacks the secret cannot forge one.
    /// Domain-separated from the tags of tokens.
    pub(crate) fn refusal_tag(&self, body: &[u8]) -> [u8; TAG_LEN] {
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(hmac::sign(&self.tag_key, &refusal_message(body)).as_ref());
        tag
    }

    /// Whether `tag` is the keyed tag of the refusal record `body` (compared in constant time).
    pub(crate) fn refusal_verifies(&self, body: &[u8], tag: &[u8]) -> bool {
        hmac::verify(&self.tag_key, &refusal_message(body), tag).is_ok()
    }

    /// `version ‖ tag` of `token`: every sealed value of this token starts with it.
    pub(crate) fn tag_prefix(&self, token: &str) -> [u8; TAG_PREFIX_LEN] {
        let mut prefix = [0u8; TAG_PREFIX_LEN];
        prefix[0] = VERSION;
        let tag = hmac::sign(&self.tag_key, token.as_bytes());
        prefix[1..].copy_from_slice(tag.as_ref());
        prefix
    }

    /// Seals `token` with the lifetime it was issued with and its expiry, `remaining` from now
    /// on this machine's wall clock.
    ///
    /// # Errors
    ///
    /// An internal error when the system's random number generator fails.
    pub(crate) fn seal(
        &self,
        token: &str,
        lifetime: Duration,
        remaining: Duration,
    ) -> Result<Bytes, Error> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| Error::internal("the system random number generator failed"))?;
        let lifetime_ms = u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX);
        let expires_ms = unix_ms(SystemTime::now())
            .saturating_add(u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX));
        let mut sealed = BytesMut::with_capacity(
            TAG_PREFIX_LEN + NONCE_LEN + TIMES_LEN + token.len() + TAG_OVERHEAD,
        );
        sealed.put_slice(&self.tag_prefix(token));
        sealed.put_slice(&nonce);
        let mut plaintext = Vec::with_capacity(TIMES_LEN + token.len() + TAG_OVERHEAD);
        plaintext.extend_from_slice(&lifetime_ms.to_be_bytes());
        plaintext.extend_from_slice(&expires_ms.to_be_bytes());
        plaintext.extend_from_slice(token.as_bytes());
        self.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.name.as_bytes()),
                &mut plaintext,
            )
            .map_err(|_| Error::internal("sealing the token failed"))?;
        sealed.put_slice(&plaintext);
        Ok(sealed.freeze())
    }

    /// Opens a sealed value: the token's text, the lifetime it was issued with and its expiry.
    /// `None` for anything that is not a value this sealer made for this key name (another
    /// version, truncated, tampered with, another key, not UTF-8, a tag that does not match).
    pub(crate) fn open(&self, value: &[u8]) -> Option<Opened> {
        if value.len() < MIN_SEALED_LEN || value[0] != VERSION {
            return None;
        }
        let (prefix, rest) = value.split_at(TAG_PREFIX_LEN);
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = ciphertext.to_vec();
        let plaintext = self
            .aead
            .open_in_place(nonce, Aad::from(self.name.as_bytes()), &mut buf)
            .ok()?;
        if plaintext.len() <= TIMES_LEN {
            return None;
        }
        let (times, token) = plaintext.split_at(TIMES_LEN);
        let (lifetime, expires) = times.split_at(8);
        let lifetime_ms = u64::from_be_bytes(lifetime.try_into().ok()?);
        let expires_ms = u64::from_be_bytes(expires.try_into().ok()?);
        let token = std::str::from_utf8(token).ok()?;
        // The tag is outside the AEAD: check that it belongs to this token, so that a value whose
        // prefix was changed cannot escape a rejection's compare-and-delete.
        let tag = &prefix[1..];
        hmac::verify(&self.tag_key, token.as_bytes(), tag).ok()?;
        Some(Opened {
            token: token.to_owned(),
            lifetime: Duration::from_millis(lifetime_ms),
            expires_ms,
        })
    }
}

/// What [`Sealer::open`] found in a value.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Opened {
    /// The token's text.
    pub(crate) token: String,
    /// The lifetime it was issued with.
    pub(crate) lifetime: Duration,
    /// Its expiry, in milliseconds since the Unix epoch, on the sealing machine's clock.
    expires_ms: u64,
}

impl Opened {
    /// How long the token has left by its sealed expiry, on this machine's clock: what bounds
    /// the store's time to live, so that a value stored again with a longer one (a replay, or
    /// a replica's clock) cannot extend it. Zero once past.
    pub(crate) fn sealed_remaining(&self) -> Duration {
        Duration::from_millis(self.expires_ms.saturating_sub(unix_ms(SystemTime::now())))
    }
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opened")
            .field("token", &"[redacted]")
            .field("lifetime", &self.lifetime)
            .field("expires_ms", &self.expires_ms)
            .finish()
    }
}

/// Milliseconds since the Unix epoch (zero before it).
/// What the tag of a refusal record covers: a context that no token starts with, and the body.
fn refusal_message(body: &[u8]) -> Vec<u8> {
    let mut message = b"tower-cognito-auth refusal\0".to_vec();
    message.extend_from_slice(body);
    message
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("key_name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Lower-case hex.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests;
