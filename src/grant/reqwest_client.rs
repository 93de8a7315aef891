//! The token endpoint through the application's own `reqwest::Client` (feature `reqwest`): an
//! adapter from the tower service the grants send through to reqwest, a leaf like `https.rs`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};

/// The token endpoint through the application's own [`reqwest::Client`]: its proxy, its
/// roots, its pool. Made by the builders' `reqwest_client` setters; a tower service from
/// `Request<Full<Bytes>>` to `Response<reqwest::Body>`, as their `http_client` takes.
#[derive(Clone, Debug)]
pub(crate) struct ReqwestHttp(pub(crate) reqwest::Client);

type Sending =
    Pin<Box<dyn Future<Output = Result<http::Response<reqwest::Body>, reqwest::Error>> + Send>>;

impl tower::Service<http::Request<Full<Bytes>>> for ReqwestHttp {
    type Response = http::Response<reqwest::Body>;
    type Error = reqwest::Error;
    type Future = Sending;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Full<Bytes>>) -> Self::Future {
        let client = self.0.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            // `Full` is one frame, ready at once; its error type is `Infallible`.
            let bytes = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(never) => match never {},
            };
            let request = reqwest::Request::try_from(http::Request::from_parts(parts, bytes))?;
            let response = client.execute(request).await?;
            Ok(http::Response::from(response))
        })
    }
}
