//! A user's session end to end: `RefreshTokenGrant` behind `CognitoAuthLayer`, against the
//! loopback token endpoint with strict refresh-token rotation and reuse detection (a reused
//! refresh token revokes the session) and the protected API, on 127.0.0.1.
#![cfg(feature = "test-util")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use tokio::time::Instant;
use tower::{BoxError, ServiceBuilder, ServiceExt as _};
use tower_cognito_auth::testing::{ProtectedApi, TokenEndpoint};
use tower_cognito_auth::{
    ClientAuth, CognitoAuth, CognitoAuthLayer, CognitoAuthLayerBuilder, Error, RefreshTokenGrant,
    RefreshTokenGrantBuilder, SessionStatus, TokenSet, TokenSource,
};

mod common;

use common::{Capture, http};

/// Every value `on_rotation` was called with, in order.
#[derive(Clone, Default)]
struct Rotations(Arc<Mutex<Vec<String>>>);

impl Rotations {
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    fn last(&self) -> Option<String> {
        self.0.lock().unwrap().last().cloned()
    }
}

/// A grant for a new session of `endpoint` (a public client unless told otherwise), with its
/// rotations recorded (through the deprecated `on_rotation`, which still works).
#[allow(deprecated)]
fn grant_for(endpoint: &TokenEndpoint, rotations: &Rotations) -> RefreshTokenGrantBuilder {
    let seen = rotations.clone();
    RefreshTokenGrant::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .refresh_token(endpoint.new_session())
        .on_rotation(move |new: &str| seen.0.lock().unwrap().push(new.to_owned()))
        .http_client(http())
}

struct Env {
    endpoint: TokenEndpoint,
    api: ProtectedApi,
    rotations: Rotations,
    layer: CognitoAuthLayer,
    client: CognitoAuth<Client<HttpConnector, Full<Bytes>>>,
    status: tokio::sync::watch::Receiver<SessionStatus>,
}

/// A public client with rotation on, `lifetime` tokens, and the given grant and layer settings.
async fn env(
    lifetime: Duration,
    grant: impl FnOnce(RefreshTokenGrantBuilder) -> RefreshTokenGrantBuilder,
    layer: impl FnOnce(CognitoAuthLayerBuilder) -> CognitoAuthLayerBuilder,
) -> Env {
    let endpoint = TokenEndpoint::builder()
        .public_client(true)
        .rotate_refresh_tokens(true)
        .lifetime(lifetime)
        .start()
        .await
        .unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    let rotations = Rotations::default();
    let grant = grant(grant_for(&endpoint, &rotations)).build().unwrap();
    let status = grant.status();
    let layer = layer(CognitoAuthLayer::builder().token_source(grant))
        .build()
        .unwrap();
    let client = ServiceBuilder::new().layer(layer.clone()).service(http());
    Env {
        endpoint,
        api,
        rotations,
        layer,
        client,
        status,
    }
}

impl Env {
    async fn get(&self) -> Result<StatusCode, BoxError> {
        let request = Request::get(format!("{}/me", self.api.url()))
            .body(Full::default())
            .unwrap();
        let response = self.client.clone().oneshot(request).await?;
        Ok(response.status())
    }

    /// The refresh tokens the endpoint received, in order.
    fn sent_refresh_tokens(&self) -> Vec<String> {
        sent_refresh_tokens(&self.endpoint)
    }

    /// The session is alive, the application holds the server's current refresh token, and
    /// it was told of every rotation exactly once.
    fn assert_session_intact(&self) {
        assert!(
            !self.endpoint.is_session_revoked(),
            "the session was revoked"
        );
        assert_eq!(self.rotations.last(), self.endpoint.current_refresh_token());
        assert_eq!(self.rotations.all().len(), self.endpoint.rotations());
        let sent = self.sent_refresh_tokens();
        let mut unique = sent.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), sent.len(), "a refresh token was sent twice");
    }
}

fn sent_refresh_tokens(endpoint: &TokenEndpoint) -> Vec<String> {
    endpoint
        .requests()
        .iter()
        .filter_map(|r| r.form_value("refresh_token"))
        .collect()
}

fn token_error(error: &BoxError) -> &Error {
    error
        .downcast_ref::<Error>()
        .unwrap_or_else(|| panic!("not a token error: {error}"))
}

#[tokio::test(start_paused = true)]
async fn hundred_callers_over_several_lifetimes_never_lose_the_session() {
    let env = Arc::new(env(Duration::from_secs(2), |g| g, |l| l).await);
    let mut callers = tokio::task::JoinSet::new();
    for caller in 0..100u64 {
        let env = Arc::clone(&env);
        callers.spawn(async move {
            let mut failures = Vec::new();
            for _ in 0..20 {
                match env.get().await {
                    Ok(StatusCode::OK) => {}
                    Ok(status) => failures.push(status.to_string()),
                    Err(error) => failures.push(error.to_string()),
                }
                // Callers spread over the lifetimes, some at the very instant of expiry.
                tokio::time::sleep(Duration::from_millis(50 * (caller % 7 + 1))).await;
            }
            failures
        });
    }
    let started = Instant::now();
    let mut failures = Vec::new();
    while let Some(result) = callers.join_next().await {
        failures.extend(result.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} failures: {:?}",
        failures.len(),
        &failures[..1]
    );
    assert!(
        started.elapsed() >= Duration::from_secs(6),
        "the run spans several 2 s lifetimes"
    );
    assert_eq!(env.api.request_count(), 2_000);
    assert_eq!(env.api.rejected_count(), 0);
    assert!(
        env.endpoint.rotations() >= 3,
        "{}",
        env.endpoint.rotations()
    );
    assert_eq!(env.layer.stats().token_failures, 0);
    env.assert_session_intact();
    // Every exchange but the last one's answer was used by the next exchange.
    let sent = env.sent_refresh_tokens();
    let rotations = env.rotations.all();
    assert_eq!(sent[1..], rotations[..rotations.len() - 1]);
}

// The exchanges run on the grant's own thread. While one runs, the runtime that asked for it
// keeps its paused clock still (its wait sits on the blocking pool), so these tests hold the
// endpoint's answers instead of delaying them on the clock: a request is decided (the refresh
// token rotated) when it arrives, and its answer leaves when the test releases it.

#[tokio::test(start_paused = true)]
async fn a_cancelled_fetch_does_not_lose_the_rotation() {
    let endpoint = TokenEndpoint::builder()
        .rotate_refresh_tokens(true)
        .public_client(true)
        .start()
        .await
        .unwrap();
    let rotations = Rotations::default();
    let grant = grant_for(&endpoint, &rotations).build().unwrap();
    let first = endpoint.current_refresh_token().unwrap();
    // The server rotates on arrival; the fetch is dropped before its answer leaves.
    endpoint.hold_answers(true);
    let fetch = tokio::spawn({
        let grant = grant.clone();
        async move { grant.fetch().await }
    });
    endpoint.wait_for_requests(1).await;
    fetch.abort();
    assert!(fetch.await.unwrap_err().is_cancelled());
    assert_eq!(endpoint.request_count(), 1);
    endpoint.hold_answers(false);
    // The clock moves on only once the exchange has ended, with nobody waiting; it told the
    // application.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rotations.all(), [endpoint.current_refresh_token().unwrap()]);

    // The access token that exchange obtained is handed out (issue 26, defect 7); the next
    // exchange sends the rotated refresh token.
    let kept = grant.fetch().await.unwrap();
    assert_eq!(
        endpoint.last_token().as_deref(),
        Some(kept.access_token().secret())
    );
    assert_eq!(sent_refresh_tokens(&endpoint), std::slice::from_ref(&first));
    grant.fetch().await.unwrap();
    let sent = sent_refresh_tokens(&endpoint);
    assert_eq!(sent, [first, rotations.all()[0].clone()]);
    assert!(!endpoint.is_session_revoked());
    assert_eq!(rotations.last(), endpoint.current_refresh_token());
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_does_not_lose_the_rotation() {
    let env = Arc::new(env(Duration::from_secs(60), |g| g, |l| l).await);
    let first = env.endpoint.current_refresh_token().unwrap();
    env.endpoint.hold_answers(true);
    // The only request waiting for the first token gives up during the refresh.
    let get = |env: &Arc<Env>| {
        let env = Arc::clone(env);
        tokio::spawn(async move { env.get().await })
    };
    let waiting = get(&env);
    env.endpoint.wait_for_requests(1).await;
    waiting.abort();
    // A second one arrives and is dropped too, while the same exchange runs.
    let waiting = get(&env);
    tokio::task::yield_now().await;
    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());
    assert_eq!(env.endpoint.request_count(), 1);
    env.endpoint.hold_answers(false);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.rotations.all().len(), 1);

    // The token that exchange got is used, and the next refresh presents the newest refresh
    // token.
    assert_eq!(env.get().await.unwrap(), StatusCode::OK);
    assert_eq!(env.endpoint.request_count(), 1);
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(env.get().await.unwrap(), StatusCode::OK);
    assert_eq!(
        env.sent_refresh_tokens(),
        [first, env.rotations.all()[0].clone()]
    );
    env.assert_session_intact();
}

#[tokio::test(start_paused = true)]
async fn a_refresh_deadline_after_the_server_rotated_keeps_the_new_token() {
    let env = Arc::new(
        env(
            Duration::from_secs(60),
            |g| g,
            |l| l.refresh_deadline(Duration::from_secs(1)),
        )
        .await,
    );
    let first = env.endpoint.current_refresh_token().unwrap();
    env.endpoint.hold_answers(true);
    let waiting = tokio::spawn({
        let env = Arc::clone(&env);
        async move { env.get().await }
    });
    env.endpoint.wait_for_requests(1).await;
    // The cache's deadline passes while the answer is held.
    tokio::time::advance(Duration::from_secs(1)).await;
    let error = waiting.await.unwrap().unwrap_err();
    assert!(token_error(&error).is_timeout(), "{error}");
    assert_eq!(env.endpoint.request_count(), 1);
    // The server rotated on arrival; its answer is still on the way.
    let rotated = env.endpoint.current_refresh_token().unwrap();
    assert_ne!(rotated, first);
    assert!(env.rotations.all().is_empty());
    env.endpoint.hold_answers(false);

    // Past the cache's backoff (the clock moves once the first exchange has ended): the next
    // refresh sends the token that exchange's answer carried, not the old one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(env.get().await.unwrap(), StatusCode::OK);
    // The access token that exchange obtained serves (issue 26, defect 7): no new request.
    assert_eq!(env.sent_refresh_tokens(), std::slice::from_ref(&first));
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(env.get().await.unwrap(), StatusCode::OK);
    assert_eq!(env.sent_refresh_tokens(), [first, rotated.clone()]);
    assert_eq!(env.rotations.all()[0], rotated);
    assert_eq!(env.rotations.all().len(), 2);
    env.assert_session_intact();
}

#[tokio::test]
async fn a_public_client_sends_its_id_in_the_form_and_no_authorization() {
    let env = env(Duration::from_secs(3600), |g| g.scope("openid"), |l| l).await;
    let refresh_token = env.endpoint.current_refresh_token().unwrap();
    assert_eq!(env.get().await.unwrap(), StatusCode::OK);
    let seen = env.endpoint.requests();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(request.method, http::Method::POST);
    assert_eq!(request.path, "/oauth2/token");
    assert_eq!(
        request.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(request.headers["accept"], "application/json");
    assert!(request.headers.get("authorization").is_none());
    let pairs = |p: &[(&str, &str)]| -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    assert_eq!(
        request.form(),
        pairs(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh_token),
            ("scope", "openid"),
            ("client_id", env.endpoint.client_id()),
        ])
    );
}

#[tokio::test]
async fn a_confidential_client_uses_basic_or_post() {
    let endpoint = TokenEndpoint::builder()
        .client_secret("s3cr3t:/+")
        .start()
        .await
        .unwrap();
    let rotations = Rotations::default();
    let basic = grant_for(&endpoint, &rotations)
        .client_secret(endpoint.client_secret())
        .build()
        .unwrap();
    basic.fetch().await.unwrap();
    let post = grant_for(&endpoint, &rotations)
        .client_secret(endpoint.client_secret())
        .client_auth(ClientAuth::Post)
        .build()
        .unwrap();
    post.fetch().await.unwrap();
    // Without rotation the refresh token stays: the next fetch sends the same one.
    post.fetch().await.unwrap();
    assert!(rotations.all().is_empty());

    let seen = endpoint.requests();
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:s3cr3t%3A%2F%2B", endpoint.client_id()))
    );
    assert_eq!(seen[0].headers["authorization"], expected.as_str());
    let form: Vec<String> = seen[0].form().into_iter().map(|(k, _)| k).collect();
    assert_eq!(form, ["grant_type", "refresh_token"]);
    assert!(seen[1].headers.get("authorization").is_none());
    assert_eq!(
        seen[1].form_value("client_secret").as_deref(),
        Some("s3cr3t:/+")
    );
    assert_eq!(
        seen[1].form_value("client_id").as_deref(),
        Some(endpoint.client_id())
    );
    assert_eq!(
        seen[1].form_value("refresh_token"),
        seen[2].form_value("refresh_token")
    );
}

#[tokio::test(start_paused = true)]
async fn a_revoked_session_is_a_clear_permanent_error_and_fails_fast() {
    let env = env(Duration::from_secs(2), |g| g, |l| l).await;
    assert_eq!(env.get().await.unwrap(), StatusCode::OK);
    env.endpoint.revoke_session();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let before = env.endpoint.request_count();
    for _ in 0..50 {
        let error = env.get().await.unwrap_err();
        let error = token_error(&error);
        assert!(error.is_permanent());
        assert_eq!(error.oauth_error(), Some("invalid_grant"));
        assert!(error.is_invalid_grant());
        let message = error.to_string();
        assert!(message.contains("sign in again"), "{message}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent = env.endpoint.request_count() - before;
    assert!(sent <= 1, "{sent} token requests for 50 requests");
    // Much later, the grant still does not send the dead refresh token again.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(env.get().await.is_err());
    assert_eq!(env.endpoint.request_count() - before, sent);
    assert_eq!(env.api.request_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_restored_access_token_is_used_until_a_refresh_is_needed() {
    let endpoint = TokenEndpoint::builder()
        .public_client(true)
        .rotate_refresh_tokens(true)
        .lifetime(Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    let rotations = Rotations::default();
    // Yesterday's run signed in and stored the session.
    let earlier = grant_for(&endpoint, &rotations).build().unwrap();
    let token = earlier.fetch().await.unwrap();
    let stored_refresh = rotations.last().unwrap();
    drop(earlier);

    let grant = RefreshTokenGrant::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .refresh_token(stored_refresh.clone())
        .access_token(token.access_token().secret(), token.expires_at())
        .http_client(http())
        .build()
        .unwrap();
    let layer = CognitoAuthLayer::builder()
        .token_source(grant)
        .build()
        .unwrap();
    let client = ServiceBuilder::new().layer(layer.clone()).service(http());
    let get = || {
        let request = Request::get(format!("{}/me", api.url()))
            .body(Full::default())
            .unwrap();
        client.clone().oneshot(request)
    };
    assert_eq!(get().await.unwrap().status(), StatusCode::OK);
    assert_eq!(endpoint.request_count(), 1, "no refresh for a live token");
    assert_eq!(
        api.requests()[0].token.as_deref(),
        Some(token.access_token().secret())
    );

    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(get().await.unwrap().status(), StatusCode::OK);
    assert_eq!(endpoint.request_count(), 2);
    assert_eq!(sent_refresh_tokens(&endpoint)[1], stored_refresh);
    assert!(!endpoint.is_session_revoked());
}

/// The only test of this binary that installs a subscriber: a global one, since tracing
/// caches per-callsite interest across threads. It captures the other tests' events too,
/// which holds them to the same rule.
#[tokio::test(start_paused = true)]
async fn trace_output_and_debug_never_hold_a_token_or_secret() {
    let capture = Capture::install();

    const SECRET: &str = "confidential-client-secret";
    let endpoint = TokenEndpoint::builder()
        .client_secret(SECRET)
        .rotate_refresh_tokens(true)
        .lifetime(Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    let rotations = Rotations::default();
    let builder = grant_for(&endpoint, &rotations)
        .client_secret(SECRET)
        .client_auth(ClientAuth::Post);
    let first_refresh = endpoint.current_refresh_token().unwrap();
    let builder_debug = format!("{builder:?}");
    let grant = builder.build().unwrap();
    let layer = CognitoAuthLayer::builder()
        .token_source(grant.clone())
        .build()
        .unwrap();
    let client = ServiceBuilder::new().layer(layer.clone()).service(http());
    let mut debug = vec![builder_debug, format!("{grant:?}"), format!("{layer:?}")];
    for _ in 0..4 {
        let request = Request::get(format!("{}/me", api.url()))
            .body(Full::default())
            .unwrap();
        let response = client.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        debug.push(format!("{response:?}"));
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    // The end of the session, through the layer and through the grant.
    endpoint.revoke_session();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let request = Request::get(format!("{}/me", api.url()))
        .body(Full::default())
        .unwrap();
    let error = client.clone().oneshot(request).await.unwrap_err();
    debug.push(format!("{error:?} {error}"));
    let error = grant.fetch().await.unwrap_err();
    debug.push(format!("{error:?} {error}"));
    debug.push(format!("{:?}", layer.token().await));

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("rotated=true"),
        "events were captured:\n{logs}"
    );
    assert!(logs.contains("invalid_grant"), "{logs}");
    assert!(rotations.all().len() >= 2);
    let access_tokens: Vec<String> = api.requests().into_iter().filter_map(|r| r.token).collect();
    assert!(!access_tokens.is_empty());
    let secrets = [SECRET.to_owned(), first_refresh]
        .into_iter()
        .chain(rotations.all())
        .chain(sent_refresh_tokens(&endpoint))
        .chain(access_tokens);
    let debug = debug.join("\n");
    for secret in secrets {
        assert!(!logs.contains(&secret), "a secret leaked into the logs");
        assert!(
            !debug.contains(&secret),
            "a secret leaked into Debug output"
        );
    }
}

/// Issue 22, defect 1: the runtime that started an exchange shuts down after its request left.
/// The exchange is carried to its end anyway, and the grant, used from another runtime, sends
/// the rotated refresh token: no reuse, and the application saw the newest one.
#[test]
fn a_runtime_shut_down_mid_exchange_loses_no_rotation() {
    // The identity provider lives on a runtime that outlives the others.
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let endpoint = server
        .block_on(
            TokenEndpoint::builder()
                .public_client(true)
                .rotate_refresh_tokens(true)
                .start(),
        )
        .unwrap();
    let rotations = Rotations::default();
    let grant = grant_for(&endpoint, &rotations).build().unwrap();
    let first = endpoint.current_refresh_token().unwrap();

    let started = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    endpoint.hold_answers(true);
    started.block_on(async {
        let grant = grant.clone();
        tokio::spawn(async move { grant.fetch().await });
        endpoint.wait_for_requests(1).await;
    });
    // The server has rotated; its answer is released while the runtime that asked for it is
    // no longer driven, and then that runtime shuts down.
    let rotated = endpoint.current_refresh_token().unwrap();
    assert_ne!(rotated, first);
    endpoint.hold_answers(false);
    drop(started);

    let later = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    later.block_on(async {
        // The access token the exchange obtained (issue 26, defect 7), then a refresh.
        let token = grant.fetch().await;
        assert!(token.is_ok(), "{token:?}");
        assert_eq!(sent_refresh_tokens(&endpoint), std::slice::from_ref(&first));
        let token = grant.fetch().await;
        assert!(token.is_ok(), "{token:?}");
    });
    assert!(!endpoint.is_session_revoked(), "the session was revoked");
    assert_eq!(sent_refresh_tokens(&endpoint), [first, rotated.clone()]);
    assert_eq!(rotations.all()[0], rotated);
    assert_eq!(rotations.last(), endpoint.current_refresh_token());
}

/// Issue 22, defect 2: a restored access token is judged by the same margins as any other: with
/// 10 s left of an hour it is not handed out under the default `min_validity` (30 s).
#[tokio::test(start_paused = true)]
async fn a_restored_token_with_ten_seconds_left_is_not_handed_out() {
    let endpoint = TokenEndpoint::builder()
        .public_client(true)
        .rotate_refresh_tokens(true)
        .start()
        .await
        .unwrap();
    let rotations = Rotations::default();
    let grant = grant_for(&endpoint, &rotations)
        .access_token("restored-token", Instant::now() + Duration::from_secs(10))
        .build()
        .unwrap();
    let layer = CognitoAuthLayer::builder()
        .token_source(grant)
        .build()
        .unwrap();
    let token = layer.token().await.unwrap();
    assert_ne!(token.secret(), "restored-token");
    assert_eq!(endpoint.request_count(), 1);
}

/// Issue 22, defect 4: Cognito's token endpoint ignores `scope` on a refresh; the loopback
/// endpoint does the same by default, so the scope asked for is not the scope granted.
#[tokio::test]
async fn the_refresh_scope_is_not_granted_by_a_cognito_like_endpoint() {
    let endpoint = TokenEndpoint::builder()
        .public_client(true)
        .jwt(true)
        .start()
        .await
        .unwrap();
    let rotations = Rotations::default();
    let grant = grant_for(&endpoint, &rotations)
        .scope("openid")
        .build()
        .unwrap();
    let token = grant.fetch().await.unwrap();
    assert_eq!(jwt_claim(token.access_token().secret(), "scope"), "");
}

/// A claim of a JWT-shaped token, as a string.
fn jwt_claim(token: &str, claim: &str) -> String {
    let payload = token.split('.').nth(1).unwrap();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&json).unwrap();
    claims[claim].as_str().unwrap_or_default().to_owned()
}

/// `close()` waits for an exchange in flight: its answer read, the rotation applied and
/// saved; after it, the grant exchanges no more.
#[tokio::test(start_paused = true)]
async fn close_waits_for_an_exchange_in_flight() {
    let endpoint = TokenEndpoint::builder()
        .public_client(true)
        .rotate_refresh_tokens(true)
        .start()
        .await
        .unwrap();
    let rotations = Rotations::default();
    let saved = Saved::default();
    let grant = grant_for(&endpoint, &rotations)
        .persist(saved.hook(0))
        .build()
        .unwrap();
    endpoint.hold_answers(true);
    let fetch = tokio::spawn({
        let grant = grant.clone();
        async move { grant.fetch().await }
    });
    endpoint.wait_for_requests(1).await;
    let closing = tokio::spawn({
        let grant = grant.clone();
        async move { grant.close().await }
    });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(
        !closing.is_finished(),
        "close returned with an exchange in flight"
    );
    assert!(saved.last().is_none());
    endpoint.hold_answers(false);
    closing.await.unwrap().unwrap();
    assert_eq!(saved.last(), endpoint.current_refresh_token());
    assert_eq!(rotations.last(), endpoint.current_refresh_token());
    assert!(fetch.await.unwrap().is_ok());
    let error = grant.fetch().await.unwrap_err();
    assert!(error.to_string().contains("closed"), "{error}");
    assert_eq!(endpoint.request_count(), 1);
}

/// What a `persist` hook saved, and how many calls fail first.
#[derive(Clone, Default)]
struct Saved {
    sets: Arc<Mutex<Vec<TokenSet>>>,
    calls: Arc<std::sync::atomic::AtomicUsize>,
}

impl Saved {
    /// A hook whose first `failures` calls fail.
    fn hook(
        &self,
        failures: usize,
    ) -> impl Fn(TokenSet) -> std::future::Ready<Result<(), std::io::Error>> + Send + Sync + 'static
    {
        let saved = self.clone();
        move |set: TokenSet| {
            let call = saved
                .calls
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if call < failures {
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

    fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A persist hook that fails twice: requests keep working, the failures are reported, and
/// the newest refresh token is the one saved in the end.
#[tokio::test(start_paused = true)]
async fn a_failing_save_never_fails_a_request_and_the_newest_token_is_saved() {
    let saved = Saved::default();
    let env = env(Duration::from_secs(2), |g| g.persist(saved.hook(2)), |l| l).await;
    let grant_status = env.status.clone();
    for _ in 0..3 {
        assert_eq!(env.get().await.unwrap(), StatusCode::OK);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert_eq!(env.get().await.unwrap(), StatusCode::OK);
    assert!(saved.calls() >= 3);
    let status = grant_status.borrow().clone();
    assert_eq!(status.save_failures, 2);
    assert!(!status.unsaved);
    assert_eq!(saved.last(), env.endpoint.current_refresh_token());
    let set = saved.sets.lock().unwrap().last().cloned().unwrap();
    assert!(set.rotated());
    assert!(set.access_token().is_some());
    assert!(set.id_token().is_some(), "Cognito sends an id_token");
    assert!(set.expires_at().unwrap() > std::time::SystemTime::now());
    env.assert_session_intact();
}

/// A persist hook that never returns is bounded by `persist_timeout` and reported; the request
/// gets its token, and the next exchange sends the newest refresh token.
#[tokio::test(start_paused = true)]
async fn a_save_that_never_returns_is_bounded_and_reported() {
    let env = env(
        Duration::from_secs(60),
        |g| {
            g.persist(|_: TokenSet| std::future::pending::<Result<(), std::io::Error>>())
                // On the session thread's own clock: the one real wait of these tests.
                .persist_timeout(Duration::from_millis(1))
        },
        |l| l,
    )
    .await;
    assert_eq!(env.get().await.unwrap(), StatusCode::OK);
    let status = env.status.borrow().clone();
    assert_eq!(status.save_failures, 1);
    assert!(status.unsaved);
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(env.get().await.unwrap(), StatusCode::OK);
    env.assert_session_intact();
}

/// A session restored from a wall-clock expiry: used without a request while it has its
/// margin.
#[tokio::test(start_paused = true)]
async fn a_session_restored_with_a_system_time_expiry() {
    let endpoint = TokenEndpoint::builder()
        .public_client(true)
        .rotate_refresh_tokens(true)
        .start()
        .await
        .unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    let rotations = Rotations::default();
    let saved = Saved::default();
    // Yesterday's run saved its token set.
    let earlier = grant_for(&endpoint, &rotations)
        .persist(saved.hook(0))
        .build()
        .unwrap();
    earlier.fetch().await.unwrap();
    earlier.close().await.unwrap();
    let set = saved.sets.lock().unwrap().last().cloned().unwrap();

    let grant = RefreshTokenGrant::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .refresh_token(set.refresh_token())
        .access_token_expiring_at(
            set.access_token().unwrap().secret(),
            set.expires_at().unwrap(),
        )
        .http_client(http())
        .build()
        .unwrap();
    let layer = CognitoAuthLayer::builder()
        .token_source(grant)
        .build()
        .unwrap();
    let client = ServiceBuilder::new().layer(layer).service(http());
    let request = Request::get(format!("{}/me", api.url()))
        .body(Full::default())
        .unwrap();
    assert_eq!(client.oneshot(request).await.unwrap().status(), 200);
    assert_eq!(
        endpoint.request_count(),
        1,
        "no refresh for a restored token"
    );
    assert_eq!(
        api.requests()[0].token.as_deref(),
        Some(set.access_token().unwrap().secret())
    );
}

/// A background refresh that meets `invalid_grant` tells the application, before any request
/// fails; a new sign-in replaces the refresh token without rebuilding anything.
#[tokio::test(start_paused = true)]
async fn the_end_of_a_session_is_an_event_and_a_new_sign_in_replaces_it() {
    let endpoint = TokenEndpoint::builder()
        .public_client(true)
        .rotate_refresh_tokens(true)
        .lifetime(Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let rotations = Rotations::default();
    let grant = grant_for(&endpoint, &rotations).build().unwrap();
    let mut status = grant.status();
    let layer = CognitoAuthLayer::builder()
        .token_source(grant.clone())
        .background_refresh(true)
        .build()
        .unwrap();
    layer.token().await.unwrap();
    endpoint.revoke_session();
    // No request: the background refresh meets invalid_grant.
    tokio::time::timeout(
        Duration::from_secs(120),
        status.wait_for(|s| s.ended.is_some()),
    )
    .await
    .expect("the session's end was reported")
    .unwrap();
    assert!(status.borrow().ended.as_ref().unwrap().is_invalid_grant());

    // The user signs in again.
    grant
        .replace_refresh_token(endpoint.new_session())
        .await
        .unwrap();
    assert!(status.borrow().ended.is_none());
    let token = grant.fetch().await.unwrap();
    assert!(endpoint.is_valid(token.access_token().secret()));
    assert!(!endpoint.is_session_revoked());
    assert!(grant.replace_refresh_token("").await.is_err());
}

/// A lost answer (the server rotated, a proxy answered 502): within the server's grace period
/// the same refresh token is presented once more, at once, and the session lives.
#[tokio::test(start_paused = true)]
async fn a_lost_answer_is_retried_within_the_grace_period() {
    let endpoint = TokenEndpoint::builder()
        .public_client(true)
        .rotate_refresh_tokens(true)
        .rotation_grace_period(Duration::from_secs(10))
        .start()
        .await
        .unwrap();
    let rotations = Rotations::default();
    let grant = grant_for(&endpoint, &rotations).build().unwrap();
    let first = endpoint.current_refresh_token().unwrap();
    endpoint.lose_answers(1);
    grant.fetch().await.unwrap();
    assert_eq!(
        sent_refresh_tokens(&endpoint),
        [first.clone(), first.clone()]
    );
    assert!(!endpoint.is_session_revoked());
    assert_eq!(rotations.last(), endpoint.current_refresh_token());
    grant.fetch().await.unwrap();
    assert!(!endpoint.is_session_revoked());

    // Without a grace period, the same retry is a reuse: the session ends, as the next
    // refresh would have ended it.
    let strict = TokenEndpoint::builder()
        .public_client(true)
        .rotate_refresh_tokens(true)
        .start()
        .await
        .unwrap();
    let grant = grant_for(&strict, &rotations).build().unwrap();
    strict.lose_answers(1);
    let error = grant.fetch().await.unwrap_err();
    assert!(error.is_invalid_grant(), "{error}");
    assert!(strict.is_session_revoked());
}

/// Clones of a grant share one session: a rotation one of them made is what the other sends.
#[tokio::test]
async fn grant_clones_share_one_session() {
    let endpoint = TokenEndpoint::builder()
        .public_client(true)
        .rotate_refresh_tokens(true)
        .start()
        .await
        .unwrap();
    let rotations = Rotations::default();
    let grant = grant_for(&endpoint, &rotations).build().unwrap();
    let other = grant.clone();
    grant.fetch().await.unwrap();
    other.fetch().await.unwrap();
    grant.fetch().await.unwrap();
    assert!(!endpoint.is_session_revoked());
    assert_eq!(sent_refresh_tokens(&endpoint)[1..], rotations.all()[..2]);
}

/// A token set whose save failed is kept to be saved again: `close()` tries once more.
#[tokio::test(start_paused = true)]
async fn close_saves_what_a_failed_save_left() {
    let endpoint = TokenEndpoint::builder()
        .public_client(true)
        .rotate_refresh_tokens(true)
        .start()
        .await
        .unwrap();
    let rotations = Rotations::default();
    let saved = Saved::default();
    let grant = grant_for(&endpoint, &rotations)
        .persist(saved.hook(1))
        .build()
        .unwrap();
    let status = grant.status();
    grant.fetch().await.unwrap();
    assert!(status.borrow().unsaved);
    assert!(saved.last().is_none());
    grant.close().await.unwrap();
    assert_eq!(saved.last(), endpoint.current_refresh_token());
    assert!(!status.borrow().unsaved);
}

/// After `invalid_grant` a layer paces its refreshes (a permanent error: one a minute); a new
/// sign-in (`replace_refresh_token`) is news that pacing did not know of, so the layer's next
/// request gets a token at once instead of the old error.
#[tokio::test(start_paused = true)]
async fn a_layer_serves_at_once_after_a_new_sign_in() {
    let endpoint = TokenEndpoint::builder()
        .public_client(true)
        .rotate_refresh_tokens(true)
        .start()
        .await
        .unwrap();
    let rotations = Rotations::default();
    let grant = grant_for(&endpoint, &rotations).build().unwrap();
    let layer = CognitoAuthLayer::builder()
        .token_source(grant.clone())
        .build()
        .unwrap();
    endpoint.revoke_session();
    let ended = layer.token().await.unwrap_err();
    assert!(ended.is_invalid_grant(), "{ended}");
    // Still paced: the same error at once, no new exchange.
    let requests = endpoint.request_count();
    assert!(layer.token().await.unwrap_err().is_invalid_grant());
    assert_eq!(endpoint.request_count(), requests);

    grant
        .replace_refresh_token(endpoint.new_session())
        .await
        .unwrap();
    let token = layer
        .token()
        .await
        .expect("a token at once after the new sign-in");
    assert!(endpoint.is_valid(token.secret()));
}
