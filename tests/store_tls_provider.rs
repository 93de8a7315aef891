//! Defect 12 of issue 21: `rediss://` must not install a process-wide rustls `CryptoProvider`.
//! An application that installs its own provider after the store connected, and `expect()`s
//! the result (as rustls' docs show), must not panic. In a test binary of its own: the default
//! provider is process-wide state.
#![cfg(all(feature = "redis", feature = "test-util"))]

use std::time::Duration;

use tower_cognito_auth::store::{RedisStore, TokenStore};
use tower_cognito_auth::testing::RedisServer;

#[tokio::test]
async fn rediss_leaves_the_process_default_crypto_provider_alone() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    // Issue 29: cluster mode's TLS is the redis crate's, which needs the process-wide provider.
    // Without one, `cluster` says so and installs none (rather than taking the choice from the
    // application, or panicking in rustls at the first connection).
    let error = RedisStore::cluster(["rediss://127.0.0.1:1", "rediss://127.0.0.1:2"]).unwrap_err();
    assert_eq!(error.kind(), tower_cognito_auth::ErrorKind::InvalidConfig);
    assert!(error.to_string().contains("CryptoProvider"), "{error}");
    assert!(rustls::crypto::CryptoProvider::get_default().is_none());
    let redis = RedisServer::start_tls(&server.pem(), &key.serialize_pem())
        .unwrap_or_else(|e| panic!("{e}"));
    let store = RedisStore::new(redis.tls_url().unwrap())
        .unwrap()
        .root_certificates(ca.pem())
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(5));
    // The store works over TLS...
    let loaded = tokio::time::timeout(Duration::from_secs(10), store.load("k"))
        .await
        .expect("the store answers");
    assert_eq!(loaded.unwrap(), None);
    // ...and installed no provider for the whole process.
    assert!(
        rustls::crypto::CryptoProvider::get_default().is_none(),
        "the store installed a process-wide rustls provider"
    );
    #[allow(deprecated)] // rustls 0.23.48: ring's provider has no post-quantum key exchange.
    let provider = rustls::crypto::ring::default_provider();
    provider
        .install_default()
        .expect("the application installs its own provider");
    // Once it has, cluster mode takes `rediss://` seeds.
    assert!(RedisStore::cluster(["rediss://127.0.0.1:1"]).is_ok());
}
