//! The session API users expect (issue 26): save and restore as one value (`TokenSet`, serde
//! under the feature `serde`), a new sign-in that hands over the whole set, the `id_token`
//! and the claims, against the loopback token endpoint on 127.0.0.1.
#![cfg(feature = "test-util")]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tower_cognito_auth::testing::TokenEndpoint;
use tower_cognito_auth::{
    CognitoAuthLayer, RefreshTokenGrant, RefreshTokenGrantBuilder, TokenSet, TokenSource,
};

mod common;

use common::http;

async fn endpoint() -> TokenEndpoint {
    TokenEndpoint::builder()
        .public_client(true)
        .rotate_refresh_tokens(true)
        .jwt(true)
        .start()
        .await
        .unwrap()
}

fn builder(endpoint: &TokenEndpoint) -> RefreshTokenGrantBuilder {
    RefreshTokenGrant::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .http_client(http())
}

/// Every set `persist` received.
#[derive(Clone, Default)]
struct Saved(Arc<Mutex<Vec<TokenSet>>>);

impl Saved {
    fn hook(
        &self,
    ) -> impl Fn(TokenSet) -> std::future::Ready<Result<(), std::io::Error>> + Send + Sync + 'static
    {
        let saved = self.clone();
        move |set| {
            saved.0.lock().unwrap().push(set);
            std::future::ready(Ok(()))
        }
    }

    fn last(&self) -> TokenSet {
        self.0.lock().unwrap().last().cloned().expect("a saved set")
    }
}

/// What `persist` saved is what `restore` takes back: the next process uses the saved access
/// token without a request, sends the saved refresh token when it refreshes, and knows the
/// saved `id_token`.
#[tokio::test(start_paused = true)]
async fn what_persist_saved_restores_the_session() {
    let endpoint = endpoint().await;
    let saved = Saved::default();
    let first = builder(&endpoint)
        .refresh_token(endpoint.new_session())
        .persist(saved.hook())
        .build()
        .unwrap();
    let token = first.fetch().await.unwrap();
    first.close().await.unwrap();
    let set = saved.last();
    assert_eq!(
        set.access_token().map(|t| t.secret()),
        Some(token.access_token().secret())
    );
    assert!(set.id_token().is_some());

    let restored = builder(&endpoint).restore(set.clone()).build().unwrap();
    assert_eq!(restored.id_token().as_deref(), set.id_token());
    let layer = CognitoAuthLayer::builder()
        .token_source(restored.clone())
        .build()
        .unwrap();
    assert_eq!(
        layer.token().await.unwrap().secret(),
        token.access_token().secret()
    );
    assert_eq!(
        endpoint.request_count(),
        1,
        "the restored token was not used"
    );
    // Its next refresh sends the saved (rotated) refresh token.
    restored.fetch().await.unwrap();
    let sent = endpoint
        .requests()
        .last()
        .unwrap()
        .form_value("refresh_token");
    assert_eq!(sent.as_deref(), Some(set.refresh_token()));
    assert!(!endpoint.is_session_revoked());
}

/// With the feature `serde`, a `TokenSet` goes to JSON and back whole.
#[cfg(feature = "serde")]
#[test]
fn a_token_set_round_trips_through_json() {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(4_102_444_800);
    let set = TokenSet::new("refresh")
        .with_access_token("access", Some(at))
        .unwrap()
        .with_id_token("id");
    let json = serde_json::to_value(&set).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "refresh_token": "refresh",
            "access_token": "access",
            "expires_at": 4_102_444_800u64,
            "id_token": "id",
        })
    );
    let back: TokenSet = serde_json::from_value(json).unwrap();
    assert_eq!(back.refresh_token(), "refresh");
    assert_eq!(back.access_token().unwrap().secret(), "access");
    assert_eq!(back.expires_at(), Some(at));
    assert_eq!(back.id_token(), Some("id"));
    let only: TokenSet = serde_json::from_str(r#"{"refresh_token":"r"}"#).unwrap();
    assert!(only.access_token().is_none() && only.id_token().is_none());
    assert!(
        serde_json::from_str::<TokenSet>(r#"{"refresh_token":"r","access_token":"a\nb"}"#).is_err()
    );
}

/// A new sign-in hands over the whole set: its access token is used at once (no refresh), its
/// `id_token` is the session's, and `persist` gets the set.
#[tokio::test(start_paused = true)]
async fn a_sign_in_hands_over_the_whole_token_set() {
    let endpoint = endpoint().await;
    let saved = Saved::default();
    let grant = builder(&endpoint)
        .refresh_token(endpoint.new_session())
        .persist(saved.hook())
        .build()
        .unwrap();
    let layer = CognitoAuthLayer::builder()
        .token_source(grant.clone())
        .build()
        .unwrap();
    layer.token().await.unwrap();
    let requests = endpoint.request_count();

    let expires = SystemTime::now() + Duration::from_secs(3600);
    let set = TokenSet::new(endpoint.new_session())
        .with_access_token("signed-in-access-token", Some(expires))
        .unwrap()
        .with_id_token("signed-in-id-token");
    grant.sign_in(set.clone()).await.unwrap();
    assert_eq!(
        layer.token().await.unwrap().secret(),
        "signed-in-access-token"
    );
    assert_eq!(
        endpoint.request_count(),
        requests,
        "the sign-in was followed by a refresh"
    );
    assert_eq!(grant.id_token().as_deref(), Some("signed-in-id-token"));
    let persisted = saved.last();
    assert_eq!(persisted.refresh_token(), set.refresh_token());
    assert_eq!(
        persisted.access_token().map(|t| t.secret()),
        Some("signed-in-access-token")
    );
    assert_eq!(persisted.id_token(), Some("signed-in-id-token"));
    assert!(grant.sign_in(TokenSet::new("")).await.is_err());
}

/// The newest `id_token` and the access token's claims are readable (unverified).
#[tokio::test(start_paused = true)]
async fn the_id_token_and_the_claims_are_readable() {
    let endpoint = endpoint().await;
    let grant = builder(&endpoint)
        .refresh_token(endpoint.new_session())
        .build()
        .unwrap();
    assert!(grant.id_token().is_none() && grant.access_token_claims().is_none());
    let token = grant.fetch().await.unwrap();
    let access = grant.access_token_claims().unwrap();
    assert_eq!(access["token_use"], "access");
    let id = grant.id_token_claims().unwrap();
    assert_eq!(id["token_use"], "id");
    assert!(grant.id_token().is_some());
    assert_ne!(
        grant.id_token().as_deref(),
        Some(token.access_token().secret())
    );
}

/// `sign_out()` revokes the refresh token at `/oauth2/revoke` (RFC 7009), drops the access
/// token the layer holds (no request carries it again), ends the session and says so.
#[tokio::test(start_paused = true)]
async fn sign_out_revokes_drops_the_token_and_ends_the_session() {
    let endpoint = endpoint().await;
    let grant = builder(&endpoint)
        .refresh_token(endpoint.new_session())
        .build()
        .unwrap();
    let layer = CognitoAuthLayer::builder()
        .token_source(grant.clone())
        .build()
        .unwrap();
    let before = layer.token().await.unwrap();
    let refresh_token = endpoint.current_refresh_token().unwrap();

    grant.sign_out().await.unwrap();
    let revocation = endpoint.requests().last().cloned().unwrap();
    assert_eq!(revocation.path, "/oauth2/revoke");
    assert_eq!(revocation.form_value("token"), Some(refresh_token));
    assert_eq!(
        revocation.form_value("client_id").as_deref(),
        Some(endpoint.client_id())
    );
    assert!(endpoint.is_session_revoked());
    assert!(!endpoint.is_valid(before.secret()));
    assert!(grant.status().borrow().closed);
    assert!(grant.id_token().is_none());

    let requests = endpoint.request_count();
    let after = layer.token().await;
    assert!(after.is_err(), "a token after sign-out: {after:?}");
    assert_eq!(
        endpoint.request_count(),
        requests,
        "an exchange after sign-out"
    );
    // Again: nothing more to do.
    grant.sign_out().await.unwrap();
    assert_eq!(endpoint.request_count(), requests);
}

/// A session closed for the process's end (`close()`) and then signed out is signed out all
/// the same: its refresh token is revoked and the layer no longer serves its access token.
#[tokio::test(start_paused = true)]
async fn sign_out_after_close_still_revokes_and_drops_the_token() {
    let endpoint = endpoint().await;
    let grant = builder(&endpoint)
        .refresh_token(endpoint.new_session())
        .build()
        .unwrap();
    let layer = CognitoAuthLayer::builder()
        .token_source(grant.clone())
        .build()
        .unwrap();
    layer.token().await.unwrap();
    grant.close().await.unwrap();

    grant.sign_out().await.unwrap();
    assert_eq!(
        endpoint
            .requests()
            .last()
            .map(|r| r.path.clone())
            .as_deref(),
        Some("/oauth2/revoke"),
        "no revocation after close"
    );
    assert!(endpoint.is_session_revoked());
    let after = layer.token().await;
    assert!(after.is_err(), "a token after sign-out: {after:?}");
}
