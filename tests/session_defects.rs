//! The session defects of issue 26, each pinned by a test that failed before its fix:
//! a new sign-in and the old session's token and saves, the restored token's margins, an
//! exchange whose waiter left, saves that fail for ever. Against the loopback token endpoint
//! (strict rotation, reuse revokes the session) and protected API, on 127.0.0.1.
#![cfg(feature = "test-util")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt as _};
use tower_cognito_auth::testing::{ProtectedApi, TokenEndpoint};
use tower_cognito_auth::{
    CognitoAuthLayer, RefreshTokenGrant, RefreshTokenGrantBuilder, TokenSet, TokenSource,
};

mod common;

use common::http;

async fn endpoint() -> TokenEndpoint {
    TokenEndpoint::builder()
        .public_client(true)
        .rotate_refresh_tokens(true)
        .start()
        .await
        .unwrap()
}

fn grant_for(endpoint: &TokenEndpoint) -> RefreshTokenGrantBuilder {
    RefreshTokenGrant::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .refresh_token(endpoint.new_session())
        .http_client(http())
}

/// What a `persist` hook saved, and how many of its first calls fail.
#[derive(Clone, Default)]
struct Saved {
    sets: Arc<Mutex<Vec<TokenSet>>>,
    calls: Arc<AtomicUsize>,
}

impl Saved {
    fn hook(
        &self,
        failures: usize,
    ) -> impl Fn(TokenSet) -> std::future::Ready<Result<(), std::io::Error>> + Send + Sync + 'static
    {
        let saved = self.clone();
        move |set: TokenSet| {
            if saved.calls.fetch_add(1, Ordering::SeqCst) < failures {
                return std::future::ready(Err(std::io::Error::other("the disk is full")));
            }
            saved.sets.lock().unwrap().push(set);
            std::future::ready(Ok(()))
        }
    }

    fn last(&self) -> Option<String> {
        let sets = self.sets.lock().unwrap();
        sets.last().map(|set| set.refresh_token().to_owned())
    }

    fn all(&self) -> Vec<String> {
        let sets = self.sets.lock().unwrap();
        sets.iter().map(|s| s.refresh_token().to_owned()).collect()
    }
}

/// Defect 1: after a new sign-in, no request carries the previous session's access token,
/// though it is still fresh for most of an hour: neither `token()` nor a request through the
/// layer's service.
#[tokio::test(start_paused = true)]
async fn a_new_sign_in_drops_the_old_sessions_token_at_once() {
    let endpoint = endpoint().await;
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    let grant = grant_for(&endpoint).build().unwrap();
    let layer = CognitoAuthLayer::builder()
        .token_source(grant.clone())
        .build()
        .unwrap();
    let client = ServiceBuilder::new().layer(layer.clone()).service(http());
    let get = || {
        let request = Request::get(format!("{}/me", api.url()))
            .body(Full::<Bytes>::default())
            .unwrap();
        client.clone().oneshot(request)
    };
    assert_eq!(get().await.unwrap().status(), StatusCode::OK);
    let old = layer.token().await.unwrap().secret().to_owned();

    let new_session = endpoint.new_session();
    grant
        .replace_refresh_token(new_session.clone())
        .await
        .unwrap();

    // A request through the service first (its thread's copy of the header), then `token()`.
    assert_eq!(get().await.unwrap().status(), StatusCode::OK);
    let sent = api.requests().last().and_then(|r| r.token.clone());
    assert_ne!(
        sent.as_deref(),
        Some(old.as_str()),
        "a request carried the old session's access token after the new sign-in"
    );
    let token = layer.token().await.unwrap();
    assert_ne!(
        token.secret(),
        old,
        "the old session's access token was served after the new sign-in"
    );
    let refreshed_with: Vec<_> = endpoint
        .requests()
        .iter()
        .filter_map(|r| r.form_value("refresh_token"))
        .collect();
    assert_eq!(refreshed_with.last(), Some(&new_session));
}

/// Defect 1: a refresh of the old session still in flight when the new sign-in comes does not
/// install the old session's token.
#[tokio::test(start_paused = true)]
async fn a_refresh_in_flight_at_a_new_sign_in_does_not_install_the_old_token() {
    let endpoint = endpoint().await;
    let grant = grant_for(&endpoint).build().unwrap();
    let layer = CognitoAuthLayer::builder()
        .token_source(grant.clone())
        .build()
        .unwrap();
    endpoint.hold_answers(true);
    let first = tokio::spawn({
        let layer = layer.clone();
        async move { layer.token().await }
    });
    endpoint.wait_for_requests(1).await;
    let replacing = tokio::spawn({
        let grant = grant.clone();
        let new_session = endpoint.new_session();
        async move { grant.replace_refresh_token(new_session).await }
    });
    endpoint.hold_answers(false);
    replacing.await.unwrap().unwrap();
    // The old session's exchange has answered (the replacement waited for it).
    let old = endpoint.last_token().unwrap();
    let _ = first.await.unwrap();

    let token = layer.token().await.unwrap();
    assert_ne!(
        token.secret(),
        old,
        "the old session's refresh installed its token after the new sign-in"
    );
    assert!(endpoint.is_valid(token.secret()));
}

/// Defect 2: a save of the old session that failed is not written over the new session's
/// later (neither by the retry nor by `close()`), and the new refresh token reaches `persist`.
#[tokio::test(start_paused = true)]
async fn a_new_sign_in_forgets_the_old_sessions_failed_save_and_saves_the_new_one() {
    let endpoint = endpoint().await;
    let saved = Saved::default();
    let grant = grant_for(&endpoint).persist(saved.hook(1)).build().unwrap();
    grant.fetch().await.unwrap();
    assert!(grant.status().borrow().unsaved);
    let old = endpoint.current_refresh_token().unwrap();

    let new_session = endpoint.new_session();
    grant
        .replace_refresh_token(new_session.clone())
        .await
        .unwrap();
    assert_eq!(
        saved.last().as_deref(),
        Some(new_session.as_str()),
        "the new sign-in's refresh token was not handed to persist"
    );
    // The old retry would have run by now.
    tokio::time::sleep(Duration::from_secs(5)).await;
    grant.close().await.unwrap();
    assert!(
        !saved.all().contains(&old),
        "the old session's token set was saved after the new sign-in"
    );
    assert_eq!(saved.last().as_deref(), Some(new_session.as_str()));
}

/// Defect 7: an exchange the cache's deadline dropped keeps the access token it obtained for
/// the next fetch: no extra token request, no extra rotation.
#[tokio::test(start_paused = true)]
async fn an_exchange_the_deadline_dropped_keeps_its_access_token() {
    let endpoint = endpoint().await;
    let grant = grant_for(&endpoint).build().unwrap();
    let layer = CognitoAuthLayer::builder()
        .token_source(grant.clone())
        .refresh_deadline(Duration::from_secs(1))
        .build()
        .unwrap();
    endpoint.hold_answers(true);
    let waiting = tokio::spawn({
        let layer = layer.clone();
        async move { layer.token().await }
    });
    endpoint.wait_for_requests(1).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(waiting.await.unwrap().unwrap_err().is_timeout());
    endpoint.hold_answers(false);
    // Past the cache's backoff; the clock moves once the exchange has ended.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let token = layer.token().await.unwrap();
    assert_eq!(
        endpoint.request_count(),
        1,
        "the token the dropped exchange obtained was thrown away"
    );
    assert_eq!(endpoint.last_token().as_deref(), Some(token.secret()));
    assert_eq!(endpoint.rotations(), 1);
}

/// Defect 6: a restored token is judged by the layer's `min_validity`, not a fixed 30 s: with
/// 20 s left and `min_validity` of 5 s it is used, with `min_validity` of a minute it is not.
#[tokio::test(start_paused = true)]
async fn a_restored_token_is_judged_by_the_layers_min_validity() {
    for (min_validity, used) in [(5, true), (60, false)] {
        let endpoint = endpoint().await;
        let grant = grant_for(&endpoint)
            .access_token(
                "restored-token",
                tokio::time::Instant::now() + Duration::from_secs(20),
            )
            .build()
            .unwrap();
        let layer = CognitoAuthLayer::builder()
            .token_source(grant)
            .min_validity(Duration::from_secs(min_validity))
            .build()
            .unwrap();
        let token = layer.token().await.unwrap();
        assert_eq!(
            token.secret() == "restored-token",
            used,
            "min_validity {min_validity} s, 20 s left"
        );
        assert_eq!(endpoint.request_count(), usize::from(!used));
    }
}

/// Defect 6: `access_token_from_jwt` refuses an `id_token` (its `token_use` says so), and an
/// `exp` at the end of `u64` is a token that never runs out, not a panic.
#[tokio::test]
async fn a_restored_jwt_must_be_an_access_token_and_any_exp_is_taken() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwt = |claims: &str| {
        format!(
            "{}.{}.{}",
            b64.encode("{}"),
            b64.encode(claims),
            b64.encode("s")
        )
    };
    let endpoint = endpoint().await;
    let error = grant_for(&endpoint)
        .access_token_from_jwt(jwt(r#"{"token_use":"id","exp":4102444800}"#))
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("id_token"), "{error}");
    let far = jwt(&format!(r#"{{"token_use":"access","exp":{}}}"#, u64::MAX));
    let grant = grant_for(&endpoint)
        .access_token_from_jwt(far.clone())
        .build()
        .unwrap();
    let token = grant.fetch().await.unwrap();
    assert_eq!(token.access_token().secret(), far);
    assert_eq!(endpoint.request_count(), 0);
}

/// Defect 4: a call of `persist` that timed out may still run blocking work (a `tokio::fs`
/// write or rename, which no abort stops): the next call waits for it, so calls never
/// overlap and a late write never puts an older refresh token over a newer one.
#[tokio::test(start_paused = true)]
async fn a_persist_call_that_timed_out_never_overlaps_the_next() {
    let endpoint = endpoint().await;
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let written = Arc::new(Mutex::new(Vec::<String>::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    // The first call's blocking work waits for `release`, then says it is done.
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (finished, first_done) = std::sync::mpsc::channel::<()>();
    let first_call = Arc::new(Mutex::new(Some((released, finished))));
    let hook = {
        let (running, most, written) = (running.clone(), most.clone(), written.clone());
        move |set: TokenSet| {
            let (running, most, written) = (running.clone(), most.clone(), written.clone());
            let first = (calls.fetch_add(1, Ordering::SeqCst) == 0)
                .then(|| first_call.lock().unwrap().take())
                .flatten();
            async move {
                tokio::task::spawn_blocking(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    if let Some((released, _)) = &first {
                        let _ = released.recv();
                    }
                    written.lock().unwrap().push(set.refresh_token().to_owned());
                    running.fetch_sub(1, Ordering::SeqCst);
                    if let Some((_, finished)) = &first {
                        let _ = finished.send(());
                    }
                })
                .await
                .map_err(std::io::Error::other)
            }
        }
    };
    let grant = grant_for(&endpoint)
        .persist(hook)
        .persist_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    grant.fetch().await.unwrap();
    assert!(grant.status().borrow().unsaved, "the first save timed out");
    grant.fetch().await.unwrap();
    release.send(()).unwrap();
    tokio::task::spawn_blocking(move || first_done.recv())
        .await
        .unwrap()
        .unwrap();
    grant.close().await.unwrap();

    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "two persist calls overlapped"
    );
    assert_eq!(
        written.lock().unwrap().last(),
        endpoint.current_refresh_token().as_ref(),
        "an older refresh token was written last"
    );
}

/// Defect 5: a save that fails for ever is bounded: with `max_unsaved_rotations(2)` the
/// session stops refreshing once two rotations are unsaved, and says so in its status.
#[tokio::test(start_paused = true)]
async fn refreshing_stops_while_too_many_rotations_are_unsaved() {
    let endpoint = endpoint().await;
    let saved = Saved::default();
    let grant = grant_for(&endpoint)
        .persist(saved.hook(usize::MAX))
        .max_unsaved_rotations(2)
        .build()
        .unwrap();
    let status = grant.status();
    grant.fetch().await.unwrap();
    assert_eq!(status.borrow().unsaved_rotations, 1);
    grant.fetch().await.unwrap();
    assert_eq!(status.borrow().unsaved_rotations, 2);
    let error = grant.fetch().await.unwrap_err();
    assert!(error.to_string().contains("unsaved"), "{error}");
    assert_eq!(endpoint.request_count(), 2, "a third rotation was made");
    // A new sign-in starts over.
    grant
        .replace_refresh_token(endpoint.new_session())
        .await
        .unwrap();
    assert_eq!(status.borrow().unsaved_rotations, 0);
    grant.fetch().await.unwrap();
    assert_eq!(endpoint.request_count(), 3);
}

/// Defect 5: a grant dropped with a token set it never saved says so in the logs (the only
/// test of this binary that installs a subscriber).
#[tokio::test(start_paused = true)]
async fn a_grant_dropped_with_an_unsaved_rotation_warns() {
    let capture = common::Capture::install();
    let endpoint = endpoint().await;
    let saved = Saved::default();
    let grant = grant_for(&endpoint)
        .persist(saved.hook(usize::MAX))
        .build()
        .unwrap();
    grant.fetch().await.unwrap();
    assert!(grant.status().borrow().unsaved);
    drop(grant);
    // The exchange thread lets go of the grant's state just after it answered: the last
    // reference, and the warning, may be its. Wait for it (bounded: 2 s at most).
    let mut logs = String::new();
    for _ in 0..400 {
        logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        if logs.contains("never saved was dropped") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(
        logs.contains("WARN") && logs.contains("never saved was dropped"),
        "{logs}"
    );
}
