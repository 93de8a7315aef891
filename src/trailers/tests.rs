use crate::{AccessToken, BoxFuture, CognitoAuthLayer, Error, Token, TokenSource};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt as _, Full};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tower::{ServiceBuilder, ServiceExt as _, service_fn};

struct Counting(Arc<AtomicUsize>);

impl TokenSource for Counting {
    fn fetch(&self) -> BoxFuture<'_, Result<Token, Error>> {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            let at = tokio::time::Instant::now() + Duration::from_secs(3600);
            Ok(Token::new(AccessToken::new(format!("token-{n}"))?, at))
        })
    }
}

fn trailers(status: &'static str) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static(status));
    trailers
}

#[tokio::test(start_paused = true)]
async fn only_a_current_token_rejected_in_trailers_is_dropped() {
    let fetched = Arc::new(AtomicUsize::new(0));
    let auth = CognitoAuthLayer::builder()
        .token_source(Counting(fetched.clone()))
        .invalidation_throttle(Duration::ZERO)
        .build()
        .unwrap();
    let server = service_fn(|request: Request<Full<Bytes>>| async move {
        let status = request
            .headers()
            .get("x-status")
            .map_or("0", |v| if v == "16" { "16" } else { "0" });
        let body = Full::new(Bytes::from_static(b"message"))
            .with_trailers(async move { Some(Ok(trailers(status))) });
        Ok::<_, std::convert::Infallible>(Response::new(body))
    });
    let client = ServiceBuilder::new()
        .layer(auth.clone())
        .layer(auth.watch_trailers())
        .service(server);
    let call = |status: &'static str| {
        let client = client.clone();
        async move {
            let request = Request::post("/")
                .header("x-status", status)
                .body(Full::new(Bytes::new()))
                .unwrap();
            let response = client.oneshot(request).await.unwrap();
            let collected = response.into_body().collect().await.unwrap();
            assert_eq!(collected.trailers(), Some(&trailers(status)));
            collected.to_bytes()
        }
    };
    // grpc-status 0: nothing is dropped, and the frames pass untouched.
    assert_eq!(call("0").await, Bytes::from_static(b"message"));
    assert_eq!(auth.stats().invalidations, 0);
    // grpc-status 16 in the trailers: that token is dropped; the next call gets a new one.
    call("16").await;
    assert_eq!(auth.stats().invalidations, 1);
    assert_eq!(auth.token().await.unwrap().secret(), "token-2");
    // Two streams that started on token-2 and end rejected after token-3 replaced it:
    // the first drops token-2, the second finds token-3 and leaves it alone.
    let rejected_stream = || {
        let request = Request::post("/")
            .header("x-status", "16")
            .body(Full::new(Bytes::new()))
            .unwrap();
        client.clone().oneshot(request)
    };
    let first = rejected_stream().await.unwrap();
    let second = rejected_stream().await.unwrap();
    first.into_body().collect().await.unwrap();
    assert_eq!(auth.token().await.unwrap().secret(), "token-3");
    second.into_body().collect().await.unwrap();
    assert_eq!(auth.token().await.unwrap().secret(), "token-3");
    assert_eq!(auth.stats().invalidations, 2);
    assert_eq!(fetched.load(Ordering::SeqCst), 3);
    // The answer to a GET is no gRPC call's: its trailers are not looked at.
    let get = Request::get("/")
        .header("x-status", "16")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.clone().oneshot(get).await.unwrap();
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers(), Some(&trailers("16")));
    assert_eq!(auth.stats().invalidations, 2);
}
