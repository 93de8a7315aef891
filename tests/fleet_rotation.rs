//! The fleet during a client secret rotation, against a real `redis-server` on 127.0.0.1: a
//! secret read from a file seals nothing (it rotates); the `shared_store_key`, which does not,
//! seals the fleet's token, so processes on the old and on the new secret share one token.
//!
//! Needs `redis-server` on `PATH` (`.ci/run` installs it); without it the tests fail and say so.
#![cfg(all(feature = "redis", feature = "test-util"))]

mod common;

use std::path::{Path, PathBuf};

use tower_cognito_auth::store::RedisStore;
use tower_cognito_auth::testing::{RedisServer, TokenEndpoint};
use tower_cognito_auth::{ClientSecret, CognitoAuthLayer, CognitoAuthLayerBuilder, ErrorKind};

const OLD: &str = "the-old-client-secret";
const NEW: &str = "the-new-client-secret";
const STORE_KEY: &str = "0123456789abcdef0123456789abcdef-fleet";

fn redis() -> RedisServer {
    RedisServer::start().unwrap_or_else(|e| panic!("{e}"))
}

fn secret_file(test: &str, name: &str, secret: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tower-cognito-auth-fleet-rotation-{}-{test}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    path
}

fn builder(endpoint: &TokenEndpoint) -> CognitoAuthLayerBuilder {
    CognitoAuthLayer::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .http_client(common::http())
}

/// One process of the fleet, reading its secret from `path`.
fn member(endpoint: &TokenEndpoint, redis: &RedisServer, path: &Path) -> CognitoAuthLayer {
    builder(endpoint)
        .client_secret_source(ClientSecret::from_file(path))
        .shared_store_key(STORE_KEY)
        .shared_store(RedisStore::new(redis.url()).unwrap())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_on_the_old_and_the_new_secret_share_one_token() {
    let redis = redis();
    let endpoint = TokenEndpoint::builder()
        .client_secret(OLD)
        .start()
        .await
        .unwrap();
    endpoint.set_client_secrets([OLD, NEW]);
    // Mid-rotation: one process still reads the old secret, another the new one.
    let on_old = member(&endpoint, &redis, &secret_file("share", "old", OLD));
    let on_new = member(&endpoint, &redis, &secret_file("share", "new", NEW));
    let first = on_old.token().await.unwrap();
    let adopted = on_new.token().await.unwrap();
    assert_eq!(adopted.secret(), first.secret(), "adopted through Redis");
    assert_eq!(endpoint.request_count(), 1, "one token request for both");
    assert_eq!(on_new.stats().adopted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_secrets_that_differ_do_not_share() {
    // What a fixed secret does during a rotation: the processes on the old one and those on
    // the new one seal with different keys, so each group fetches its own token (one extra
    // token request per renewal while both run).
    let redis = redis();
    let endpoint = TokenEndpoint::builder()
        .client_secret(OLD)
        .start()
        .await
        .unwrap();
    endpoint.set_client_secrets([OLD, NEW]);
    let fixed = |secret: &str| {
        builder(&endpoint)
            .client_secret(secret)
            .shared_store(RedisStore::new(redis.url()).unwrap())
            .build()
            .unwrap()
    };
    let (on_old, on_new) = (fixed(OLD), fixed(NEW));
    let first = on_old.token().await.unwrap();
    let second = on_new.token().await.unwrap();
    assert_ne!(first.secret(), second.secret());
    assert_eq!(endpoint.request_count(), 2);
    // A second process on the old secret adopts the first one's token.
    assert_eq!(fixed(OLD).token().await.unwrap().secret(), first.secret());
    assert_eq!(endpoint.request_count(), 2);
}

#[test]
fn a_secret_source_needs_a_store_key_of_32_bytes_to_share() {
    let endpoint_url = "https://auth.example.com/oauth2/token";
    let store = || RedisStore::new("redis://127.0.0.1:6379").unwrap();
    let base = || {
        CognitoAuthLayer::builder()
            .token_url(endpoint_url)
            .client_id("id")
            .client_secret_source(ClientSecret::from_file("/run/secrets/cognito"))
    };
    let missing = base().shared_store(store()).build().unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::InvalidConfig);
    assert!(
        missing.to_string().contains("shared_store_key"),
        "{missing}"
    );
    let short = base()
        .shared_store_key("too-short")
        .shared_store(store())
        .build()
        .unwrap_err();
    assert!(short.to_string().contains("32 bytes"), "{short}");
    assert!(!short.to_string().contains("too-short"), "{short}");
}
