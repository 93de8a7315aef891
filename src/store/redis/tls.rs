//! `rediss://`: rustls with ring passed in (the process-wide default `CryptoProvider` is
//! neither read nor installed), the authorities trusted and the client certificate presented.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::Error;

/// What a `rediss://` store trusts and presents, and the rustls configuration made of it.
#[derive(Clone)]
pub(super) struct Tls {
    roots: Arc<rustls::RootCertStore>,
    client: Option<Arc<ClientIdentity>>,
    config: Arc<rustls::ClientConfig>,
}

/// A client certificate chain and its private key (never shown).
struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Tls {
    /// The Mozilla roots that `webpki-roots` bundles, no client certificate.
    pub(super) fn bundled() -> Result<Tls, Error> {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        Tls::build(Arc::new(roots), None)
    }

    /// The rustls configuration.
    pub(super) fn config(&self) -> &Arc<rustls::ClientConfig> {
        &self.config
    }

    /// Trusts only the authorities in `pem`.
    pub(super) fn with_roots(&self, pem: &[u8]) -> Result<Tls, Error> {
        let invalid = || {
            Error::invalid_config(
                "the root certificates hold no PEM certificate, or one that does not parse",
            )
        };
        let certificates = certificates(pem).ok_or_else(invalid)?;
        let mut roots = rustls::RootCertStore::empty();
        for certificate in certificates {
            roots
                .add(certificate)
                .map_err(|_| Error::invalid_config("the root certificates were not accepted"))?;
        }
        Tls::build(Arc::new(roots), self.client.clone())
    }

    /// Presents the certificate chain `chain_pem` (the client's certificate first), proving
    /// it with the private key `key_pem` (PKCS#8, PKCS#1 or SEC1).
    pub(super) fn with_client(&self, chain_pem: &[u8], key_pem: &[u8]) -> Result<Tls, Error> {
        let chain = certificates(chain_pem).ok_or_else(|| {
            Error::invalid_config(
                "the client certificate chain holds no PEM certificate, or one that does not parse",
            )
        })?;
        // The key's text never goes into an error.
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| {
            Error::invalid_config("the client key is not a PEM private key that parses")
        })?;
        Tls::build(
            Arc::clone(&self.roots),
            Some(Arc::new(ClientIdentity { chain, key })),
        )
    }

    fn build(
        roots: Arc<rustls::RootCertStore>,
        client: Option<Arc<ClientIdentity>>,
    ) -> Result<Tls, Error> {
        // Deprecated by rustls 0.23.48 (ring has no post-quantum key exchange), with no other
        // constructor for ring's provider; see `grant/https.rs`.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|_| Error::internal("rustls refused its default protocol versions"))?
            .with_root_certificates(Arc::clone(&roots));
        let config = match &client {
            None => builder.with_no_client_auth(),
            Some(identity) => builder
                .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
                .map_err(|_| {
                    Error::invalid_config(
                        "the client key does not match the certificate, or is of a kind rustls \
                         does not support",
                    )
                })?,
        };
        Ok(Tls {
            roots,
            client,
            config: Arc::new(config),
        })
    }
}

/// The certificates in `pem`: `None` when there is none, or one does not parse.
fn certificates(pem: &[u8]) -> Option<Vec<CertificateDer<'static>>> {
    let parsed: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    parsed.ok().filter(|certificates| !certificates.is_empty())
}
