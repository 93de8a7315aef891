//! A client secret rotated as Cognito allows (old accepted, then both, then only the new),
//! delivered by rewriting a file, under traffic through the layer to a protected API on
//! 127.0.0.1: no request fails, whatever the token lifetime; a rewrite that comes after the old
//! secret was deleted heals on the next request.
#![cfg(feature = "test-util")]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use tower::{BoxError, ServiceBuilder, ServiceExt as _};
use tower_cognito_auth::testing::{ProtectedApi, TokenEndpoint};
use tower_cognito_auth::{ClientSecret, CognitoAuth, CognitoAuthLayer, Error};

mod common;

use common::http;

const OLD: &str = "the-old-client-secret";
const NEW: &str = "the-new-client-secret";

struct Env {
    endpoint: TokenEndpoint,
    api: ProtectedApi,
    path: PathBuf,
    client: CognitoAuth<Client<HttpConnector, Full<Bytes>>>,
}

impl Env {
    async fn start(test: &str, lifetime: Duration) -> Env {
        let endpoint = TokenEndpoint::builder()
            .client_secret(OLD)
            .lifetime(lifetime)
            .start()
            .await
            .unwrap();
        let api = ProtectedApi::start(&endpoint).await.unwrap();
        let dir = std::env::temp_dir().join(format!(
            "tower-cognito-auth-rotation-{}-{test}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cognito-client-secret");
        std::fs::write(&path, format!("{OLD}\n")).unwrap();
        let layer = CognitoAuthLayer::builder()
            .token_url(endpoint.token_url())
            .client_id(endpoint.client_id())
            .client_secret_source(ClientSecret::from_file(&path))
            .http_client(http())
            .build()
            .unwrap();
        let client = ServiceBuilder::new().layer(layer).service(http());
        Env {
            endpoint,
            api,
            path,
            client,
        }
    }

    async fn get(&self) -> Result<StatusCode, BoxError> {
        let request = Request::get(format!("{}/wallets", self.api.url()))
            .body(Full::default())
            .unwrap();
        Ok(self.client.clone().oneshot(request).await?.status())
    }

    /// Rewrites the secret file as a Kubernetes volume or the CSI driver does: a new file
    /// renamed over the old one.
    fn rewrite(&self, secret: &str) {
        let next = self.path.with_extension("next");
        std::fs::write(&next, format!("{secret}\n")).unwrap();
        std::fs::rename(&next, &self.path).unwrap();
    }

    /// How many token requests carried `secret`.
    fn requests_with(&self, secret: &str) -> usize {
        self.endpoint
            .requests()
            .iter()
            .filter(|r| r.basic_credentials().is_some_and(|(_, s)| s == secret))
            .count()
    }
}

/// Five callers, each sending a request every `lifetime / 20`, while the secret is rotated in
/// phases of 1.7 lifetimes (never in step with the renewals): old only; both; the file
/// rewritten; only the new. Returns every failure seen.
async fn rotate_under_traffic(env: Arc<Env>, lifetime: Duration) -> Vec<String> {
    let phase = lifetime.mul_f64(1.7);
    let stop = tokio::time::Instant::now() + phase * 5;
    let mut callers = tokio::task::JoinSet::new();
    for caller in 0..5u32 {
        let env = Arc::clone(&env);
        let pause = lifetime / 20 + Duration::from_millis(u64::from(caller) * 7);
        callers.spawn(async move {
            let mut failures = Vec::new();
            while tokio::time::Instant::now() < stop {
                match env.get().await {
                    Ok(StatusCode::OK) => {}
                    Ok(status) => failures.push(status.to_string()),
                    Err(error) => failures.push(error.to_string()),
                }
                tokio::time::sleep(pause).await;
            }
            failures
        });
    }
    tokio::time::sleep(phase).await;
    env.endpoint.set_client_secrets([OLD, NEW]); // AddUserPoolClientSecret
    tokio::time::sleep(phase).await;
    env.rewrite(NEW); // every process moves to the new secret
    tokio::time::sleep(phase).await;
    env.endpoint.set_client_secrets([NEW]); // DeleteUserPoolClientSecret (the old one)
    let mut failures = Vec::new();
    while let Some(result) = callers.join_next().await {
        failures.extend(result.unwrap());
    }
    failures
}

#[tokio::test(start_paused = true)]
async fn a_two_secret_rotation_fails_no_request_whatever_the_token_lifetime() {
    for (n, seconds) in [60u64, 900, 3600].into_iter().enumerate() {
        let lifetime = Duration::from_secs(seconds);
        let env = Arc::new(Env::start(&format!("rotation-{n}"), lifetime).await);
        let failures = rotate_under_traffic(Arc::clone(&env), lifetime).await;
        assert!(
            failures.is_empty(),
            "lifetime {seconds} s: {} requests failed, the first with {:?}",
            failures.len(),
            failures.first()
        );
        assert!(env.api.request_count() > 400, "{}", env.api.request_count());
        // Both secrets were used, and none was refused.
        assert!(env.requests_with(OLD) >= 2, "lifetime {seconds} s");
        assert!(env.requests_with(NEW) >= 2, "lifetime {seconds} s");
        assert_eq!(
            env.requests_with(OLD) + env.requests_with(NEW),
            env.endpoint.request_count()
        );
        assert_eq!(env.endpoint.tokens_issued(), env.endpoint.request_count());
    }
}

#[tokio::test(start_paused = true)]
async fn a_rewrite_after_the_old_secret_was_deleted_heals_on_the_next_request() {
    let lifetime = Duration::from_secs(600);
    let env = Env::start("late", lifetime).await;
    assert_eq!(env.get().await.unwrap(), StatusCode::OK);
    // The operator deletes the old secret before the file was rewritten: the token in hand
    // still serves, and the renewals fail with invalid_client.
    env.endpoint.set_client_secrets([NEW]);
    let mut first_failure = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        if let Err(error) = env.get().await {
            first_failure = Some(error);
            break;
        }
    }
    let error = first_failure.expect("the token ran out");
    let error = error.downcast_ref::<Error>().unwrap();
    assert!(error.is_invalid_client(), "{error}");
    let refused = env.endpoint.request_count();

    // Inside the minute's pause that an invalid_client starts, the rewrite arrives: the next
    // request is served.
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.rewrite(NEW);
    assert_eq!(env.get().await.unwrap(), StatusCode::OK);
    assert_eq!(
        env.endpoint.request_count(),
        refused + 1,
        "one token request"
    );
    assert_eq!(env.requests_with(NEW), 1);
}
