//! Unit tests of `client_credentials`.

use super::*;
use tower::service_fn;

#[test]
fn builder_rejects_missing_parts() {
    let base = || {
        ClientCredentials::builder()
            .token_url("http://127.0.0.1:1/oauth2/token")
            .http_client(service_fn(|_req: Request<Full<Bytes>>| async {
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
            }))
    };
    assert!(base().client_id("id").client_secret("s").build().is_ok());
    let e = base().client_secret("s").build().unwrap_err();
    assert!(e.to_string().contains("client id"));
    let e = base().client_id("id").build().unwrap_err();
    assert!(e.to_string().contains("client secret"));
    let e = base()
        .client_id("id")
        .client_secret("s")
        .scope("a b")
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("scope"));
    let e = base()
        .client_id("id")
        .client_secret("hunter2-secret")
        .request_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(!e.to_string().contains("hunter2"));
}

/// Issue #10: the builder's `Debug` does not print credentials from a token URL, which
/// `build` would reject.
#[test]
fn builder_debug_hides_url_credentials() {
    let b = ClientCredentials::builder().token_url("https://user:hunter2@auth.example.com/t");
    let shown = format!("{b:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!shown.contains("user:"), "{shown}");
    assert!(shown.contains("auth.example.com"), "{shown}");
}

/// Issue #10, defect 6: the longest durations saturate instead of overflowing `Instant`.
#[tokio::test]
async fn longest_durations_do_not_overflow() {
    let source = ClientCredentials::builder()
        .token_url("http://127.0.0.1:1/t")
        .client_id("id")
        .client_secret("s")
        .request_timeout(Duration::MAX)
        .fetch_deadline(Duration::MAX)
        .http_client(service_fn(|_req: Request<Full<Bytes>>| async {
            let body = r#"{"access_token":"t","expires_in":60,"token_type":"Bearer"}"#;
            Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(body))))
        }))
        .build()
        .unwrap();
    assert_eq!(source.fetch().await.unwrap().access_token().secret(), "t");
}

#[test]
fn debug_hides_secret() {
    let b = ClientCredentials::builder()
        .token_url("http://127.0.0.1:1/t")
        .client_id("id")
        .client_secret("hunter2-secret")
        .http_client(service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
        }));
    assert!(!format!("{b:?}").contains("hunter2"));
    let cc = b.build().unwrap();
    assert!(!format!("{cc:?}").contains("hunter2"));
}
