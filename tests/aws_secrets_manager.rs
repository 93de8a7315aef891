//! The client secret read from AWS Secrets Manager (feature `aws-secrets-manager`), against
//! moto's Secrets Manager (PyPI `moto[server]`, an emulator nobody here wrote) and the loopback
//! token endpoint, on 127.0.0.1: cached, read again after `invalid_client`, one read at a time.
//!
//! Needs `moto_server`: `TOWER_COGNITO_AUTH_MOTO_SERVER`, else on `PATH`, else where
//! `.ci/get-moto` installs it; without one these tests fail and say so. moto keeps real time,
//! so these tests run on the real clock.
#![cfg(all(feature = "aws-secrets-manager", feature = "test-util"))]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt as _, Full};
use tower::ServiceExt as _;
use tower_cognito_auth::testing::TokenEndpoint;
use tower_cognito_auth::{
    AwsSecretsManager, ClientCredentials, ClientSecret, CognitoAuthLayer, ErrorKind, TokenSource,
};

mod common;

/// A moto server on a free port; killed when dropped.
struct Moto {
    child: Child,
    url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_binary() -> PathBuf {
    if let Some(named) = std::env::var_os("TOWER_COGNITO_AUTH_MOTO_SERVER") {
        return named.into();
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("moto_server"))
            .find(|candidate| candidate.is_file())
    });
    let cached = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|cache| cache.join("tower-cognito-auth/moto/bin/moto_server"))
        .filter(|p| p.is_file());
    on_path.or(cached).unwrap_or_else(|| {
        panic!(
            "moto_server not found: run `.ci/get-moto` (PyPI `moto[server]`, no root), or `pip \
             install 'moto[server]'`, or set TOWER_COGNITO_AUTH_MOTO_SERVER"
        )
    })
}

impl Moto {
    async fn start() -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(moto_binary())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run moto_server: {e}"));
        let moto = Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        // Ready when it accepts connections (it imports a lot of Python): bounded, a minute.
        for _ in 0..600 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return moto;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("moto_server did not start listening on port {port}");
    }

    /// One Secrets Manager call (moto checks no signature).
    async fn call(&self, target: &str, body: serde_json::Value) -> serde_json::Value {
        let request = Request::post(format!("{}/", self.url))
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", format!("secretsmanager.{target}"))
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/secretsmanager/aws4_request, \
                 SignedHeaders=host, Signature=0",
            )
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let response = common::http().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert!(status.is_success(), "{target}: {status} {bytes:?}");
        serde_json::from_slice(&bytes).unwrap()
    }

    async fn put_secret(&self, name: &str, value: &str, create: bool) {
        if create {
            self.call(
                "CreateSecret",
                serde_json::json!({ "Name": name, "SecretString": value }),
            )
            .await;
        } else {
            self.call(
                "PutSecretValue",
                serde_json::json!({ "SecretId": name, "SecretString": value }),
            )
            .await;
        }
    }
}

/// The HTTP client for Secrets Manager, counting the requests it sends.
fn counting(
    calls: &Arc<AtomicUsize>,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = http::Response<hyper::body::Incoming>,
    Error = hyper_util::client::legacy::Error,
    Future = impl Send + 'static,
> + Clone
+ Send
+ Sync
+ 'static {
    let calls = Arc::clone(calls);
    common::http().map_request(move |request: Request<Full<Bytes>>| {
        calls.fetch_add(1, Ordering::SeqCst);
        request
    })
}

fn credentials() -> SharedCredentialsProvider {
    SharedCredentialsProvider::new(Credentials::new("test", "test", None, None, "moto"))
}

fn grant(endpoint: &TokenEndpoint, source: AwsSecretsManager) -> ClientCredentials {
    ClientCredentials::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret_source(ClientSecret::from_aws_secrets_manager(source))
        .http_client(common::http())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_field_is_read_once_and_cached_and_again_after_invalid_client() {
    let moto = Moto::start().await;
    let endpoint = TokenEndpoint::builder()
        .client_secret("the-old-secret")
        .start()
        .await
        .unwrap();
    moto.put_secret(
        "prod/cognito",
        r#"{"client_secret":"the-old-secret","note":"x"}"#,
        true,
    )
    .await;
    let calls = Arc::new(AtomicUsize::new(0));
    let source = grant(
        &endpoint,
        AwsSecretsManager::new("prod/cognito", "us-east-1", credentials())
            .endpoint_url(&moto.url)
            .json_field("client_secret")
            .http_client(counting(&calls)),
    );
    // Ten token requests at once: one read of Secrets Manager.
    let fetches: Vec<_> = (0..10)
        .map(|_| {
            let source = source.clone();
            tokio::spawn(async move { source.fetch().await })
        })
        .collect();
    for fetch in fetches {
        fetch.await.unwrap().unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one read, then the cache");
    assert_eq!(endpoint.request_count(), 10);

    // Rotated: Secrets Manager and the endpoint hold only the new secret. The token request
    // with the cached old one is refused, and the next reads Secrets Manager again.
    moto.put_secret(
        "prod/cognito",
        r#"{"client_secret":"the-new-secret"}"#,
        false,
    )
    .await;
    endpoint.set_client_secrets(["the-new-secret"]);
    assert!(source.fetch().await.unwrap_err().is_invalid_client());
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the cache was used");
    source.fetch().await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "read again after invalid_client"
    );
    source.fetch().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_heals_after_a_rotation_and_a_missing_secret_is_a_clear_error() {
    let moto = Moto::start().await;
    let endpoint = TokenEndpoint::builder()
        .client_secret("plain-old")
        .start()
        .await
        .unwrap();
    moto.put_secret("plain", "plain-old\n", true).await;
    let layer = CognitoAuthLayer::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret_source(ClientSecret::from_aws_secrets_manager(
            AwsSecretsManager::new("plain", "us-east-1", credentials())
                .endpoint_url(&moto.url)
                .http_client(common::http()),
        ))
        .http_client(common::http())
        .build()
        .unwrap();
    // A token in hand, then rejected by an API (a 401): the next request needs a new one.
    let first = layer.cache().get().await.unwrap();
    assert!(layer.cache().invalidate(first.generation()));
    moto.put_secret("plain", "plain-new", false).await;
    endpoint.set_client_secrets(["plain-new"]);
    assert!(layer.token().await.unwrap_err().is_invalid_client());
    // The cache pauses a minute after invalid_client, unless the secret changed: the requests
    // that find no token start a read of Secrets Manager in the background, and the first one
    // after it is served. Bounded: at most 100 requests, 50 ms apart.
    let mut healed = false;
    for _ in 0..100 {
        if layer.token().await.is_ok() {
            healed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(healed, "the new secret was never used");
    assert_eq!(
        endpoint
            .requests()
            .last()
            .unwrap()
            .basic_credentials()
            .unwrap()
            .1,
        "plain-new"
    );

    let missing = grant(
        &endpoint,
        AwsSecretsManager::new("no/such/secret", "us-east-1", credentials())
            .endpoint_url(&moto.url)
            .http_client(common::http()),
    );
    let before = endpoint.request_count();
    let error = missing.fetch().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidConfig);
    let text = error.to_string();
    assert!(text.contains("no/such/secret"), "{text}");
    assert!(text.contains("ResourceNotFoundException"), "{text}");
    assert_eq!(endpoint.request_count(), before, "no token request");

    // Neither the secret nor the AWS credentials show in `Debug` or errors.
    let keyed = SharedCredentialsProvider::new(Credentials::new(
        "AKIDDISTINCTIVE",
        "aws-secret-access-key-distinctive",
        None,
        None,
        "test",
    ));
    let source = ClientSecret::from_aws_secrets_manager(
        AwsSecretsManager::new("plain", "us-east-1", keyed)
            .endpoint_url(&moto.url)
            .http_client(common::http()),
    );
    let shown = format!("{source:?} {layer:?} {error:?} {missing:?}");
    for needle in [
        "plain-new",
        "plain-old",
        "aws-secret-access-key-distinctive",
    ] {
        assert!(!shown.contains(needle), "{shown}");
    }
}
