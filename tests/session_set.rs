//! `SessionSet` (issue 26): one session per user for a backend-for-frontend, each with its
//! own cache, idle sessions closed and forgotten, sign-out revoking; against the loopback
//! token endpoint on 127.0.0.1.
#![cfg(feature = "test-util")]

use std::time::Duration;

use tower_cognito_auth::testing::TokenEndpoint;
use tower_cognito_auth::{RefreshTokenGrant, SessionSet, TokenSet};

mod common;

async fn set() -> (TokenEndpoint, SessionSet<String>) {
    let endpoint = TokenEndpoint::builder()
        .public_client(true)
        .rotate_refresh_tokens(true)
        .start()
        .await
        .unwrap();
    let (url, id) = (endpoint.token_url(), endpoint.client_id().to_owned());
    let users = SessionSet::builder(move |set: TokenSet| {
        RefreshTokenGrant::builder()
            .token_url(&url)
            .client_id(&id)
            .http_client(common::http())
            .restore(set)
    })
    .idle_timeout(Duration::from_secs(600))
    .build();
    (endpoint, users)
}

/// Each user's requests carry their own token; a second sign-in of a user replaces their
/// session only.
#[tokio::test(start_paused = true)]
async fn each_user_has_a_session_of_their_own() {
    let (endpoint, users) = set().await;
    let alice = users
        .sign_in("alice".into(), TokenSet::new(endpoint.new_session()))
        .await
        .unwrap();
    let bob = users
        .sign_in("bob".into(), TokenSet::new(endpoint.new_session()))
        .await
        .unwrap();
    let (a, b) = (alice.token().await.unwrap(), bob.token().await.unwrap());
    assert_ne!(a.secret(), b.secret());
    assert_eq!(users.len(), 2);
    assert_eq!(
        users
            .get(&"alice".into())
            .unwrap()
            .token()
            .await
            .unwrap()
            .secret(),
        a.secret()
    );
    // Alice signs in again: her old token is never served again, Bob's stays.
    users
        .sign_in("alice".into(), TokenSet::new(endpoint.new_session()))
        .await
        .unwrap();
    assert_ne!(alice.token().await.unwrap().secret(), a.secret());
    assert_eq!(bob.token().await.unwrap().secret(), b.secret());
    assert_eq!(users.len(), 2);
}

/// Sessions unused for the idle timeout are closed and forgotten; one in use stays.
#[tokio::test(start_paused = true)]
async fn idle_sessions_are_evicted() {
    let (endpoint, users) = set().await;
    for user in ["a", "b", "c"] {
        users
            .sign_in(user.into(), TokenSet::new(endpoint.new_session()))
            .await
            .unwrap();
    }
    tokio::time::advance(Duration::from_secs(400)).await;
    assert!(users.get(&"b".into()).is_some());
    assert_eq!(users.evict_idle().await, 0);
    tokio::time::advance(Duration::from_secs(300)).await;
    let a = users.grant(&"a".into()).unwrap();
    assert_eq!(users.evict_idle().await, 2);
    assert!(
        a.status().borrow().closed,
        "an evicted session was not closed"
    );
    assert!(users.get(&"a".into()).is_none());
    assert!(users.get(&"b".into()).is_some());
    assert_eq!(users.len(), 1);
}

/// Signing a user out revokes their refresh token and forgets the session.
#[tokio::test(start_paused = true)]
async fn sign_out_revokes_and_forgets() {
    let (endpoint, users) = set().await;
    let layer = users
        .sign_in("alice".into(), TokenSet::new(endpoint.new_session()))
        .await
        .unwrap();
    layer.token().await.unwrap();
    users.sign_out(&"alice".into()).await.unwrap();
    assert!(endpoint.is_session_revoked());
    assert!(users.is_empty());
    assert!(layer.token().await.is_err());
    users.sign_out(&"nobody".into()).await.unwrap();
}
