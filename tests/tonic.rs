//! A tonic `Channel` under the layer, against a tonic server on 127.0.0.1 that checks tokens
//! with the local token endpoint. No protoc: the messages are raw bytes, through a small codec.
#![cfg(all(feature = "test-util", feature = "tonic"))]

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::{Buf as _, BufMut as _, Bytes};
use http::uri::PathAndQuery;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{NamedService, UnaryService};
use tonic::{Code, Status};
use tower::{Service, ServiceBuilder};
use tower_cognito_auth::testing::TokenEndpoint;
use tower_cognito_auth::{BoxFuture, CognitoAuthLayer};

/// Messages are the bytes themselves.
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

/// `echo.Echo/Unary`: answers with the request's bytes, if its bearer token is live.
#[derive(Clone)]
struct EchoServer {
    endpoint: TokenEndpoint,
}

impl NamedService for EchoServer {
    const NAME: &'static str = "echo.Echo";
}

struct Unary(TokenEndpoint);

impl UnaryService<Bytes> for Unary {
    type Response = Bytes;
    type Future = BoxFuture<'static, Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let valid = token.is_some_and(|t| self.0.is_valid(&t));
        Box::pin(async move {
            if valid {
                Ok(tonic::Response::new(request.into_inner()))
            } else {
                Err(Status::unauthenticated("invalid token"))
            }
        })
    }
}

impl Service<http::Request<tonic::body::Body>> for EchoServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let endpoint = self.endpoint.clone();
        Box::pin(async move {
            if request.uri().path() != "/echo.Echo/Unary" {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(RawCodec);
            Ok(grpc.unary(Unary(endpoint), request).await)
        })
    }
}

#[tokio::test]
async fn tonic_unary_call_is_replayed_after_unauthenticated() {
    let endpoint = TokenEndpoint::start().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(EchoServer {
            endpoint: endpoint.clone(),
        })
        .serve_with_incoming(tokio_stream_listener(listener));
    tokio::spawn(server);

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let auth = CognitoAuthLayer::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret(endpoint.client_secret())
        .http_client(Client::builder(TokioExecutor::new()).build_http())
        .build()
        .unwrap();
    let mut grpc =
        tonic::client::Grpc::new(ServiceBuilder::new().layer(auth.clone()).service(channel));
    let path = PathAndQuery::from_static("/echo.Echo/Unary");

    grpc.ready().await.unwrap();
    let reply = grpc
        .unary(
            tonic::Request::new(Bytes::from_static(b"first")),
            path.clone(),
            RawCodec,
        )
        .await
        .unwrap();
    assert_eq!(reply.into_inner(), "first");

    // The server stops accepting the token: UNAUTHENTICATED inside, OK for the caller.
    endpoint.revoke_all();
    grpc.ready().await.unwrap();
    let reply = grpc
        .unary(
            tonic::Request::new(Bytes::from_static(b"second")),
            path.clone(),
            RawCodec,
        )
        .await
        .unwrap();
    assert_eq!(reply.into_inner(), "second");
    let stats = auth.stats();
    assert_eq!(
        (stats.token_requests, stats.invalidations, stats.replays),
        (2, 1, 1)
    );

    // A server that keeps refusing: the caller sees UNAUTHENTICATED after one replay.
    endpoint.revoke_all();
    let token_requests = endpoint.tokens_issued();
    grpc.ready().await.unwrap();
    let status = grpc
        .unary(
            tonic::Request::new(Bytes::from_static(b"third")),
            path,
            RawCodec,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    // The throttle (one 401-driven refresh per 10 s) keeps the token: no new token request.
    assert_eq!(endpoint.tokens_issued(), token_requests);
}

/// The listener as the stream of connections tonic's `serve_with_incoming` takes.
fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::wrappers::TcpListenerStream::new(listener)
}
