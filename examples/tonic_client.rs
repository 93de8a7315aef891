//! A tonic `Channel` under `CognitoAuthLayer`, against a tonic server on loopback.
//!
//! ```text
//! cargo run --example tonic_client --features tonic
//! ```
//!
//! The server accepts a call only with a live token from the loopback token endpoint; when the
//! token is revoked it answers `UNAUTHENTICATED` before any message (a trailers-only response),
//! which the layer sees, so it gets a new token and replays the call: the caller sees `OK`.
//!
//! No protoc is needed: the messages here are raw bytes, through a small [`Codec`]. With
//! generated code (tonic-build / prost), the layer goes in the same place:
//!
//! ```text
//! let channel = Endpoint::from_static("https://api.example.com").connect().await?;
//! let mut client = MyServiceClient::new(ServiceBuilder::new().layer(auth).service(channel));
//! ```
//!
//! The crate's test `tests/tonic.rs` reuses this file's codec and server.

use std::convert::Infallible;
use std::error::Error;
use std::net::SocketAddr;
use std::task::{Context, Poll};

use bytes::{Buf as _, BufMut as _, Bytes};
use http::uri::PathAndQuery;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{NamedService, UnaryService};
use tonic::transport::Channel;
use tower::{Service, ServiceBuilder};
use tower_cognito_auth::testing::TokenEndpoint;
use tower_cognito_auth::{BoxFuture, CognitoAuth, CognitoAuthLayer};

/// Messages are the bytes themselves.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawCodec;

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
pub struct EchoServer {
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

/// Starts `echo.Echo` on 127.0.0.1, checking tokens with `endpoint`.
pub async fn start_echo_server(endpoint: &TokenEndpoint) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tonic::transport::Server::builder()
        .add_service(EchoServer {
            endpoint: endpoint.clone(),
        })
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    Ok(addr)
}

/// A gRPC client over a `Channel` to `addr`, with the layer in between.
pub async fn connect(
    addr: SocketAddr,
    auth: &CognitoAuthLayer,
) -> Result<tonic::client::Grpc<CognitoAuth<Channel>>, Box<dyn Error + Send + Sync>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    Ok(tonic::client::Grpc::new(
        ServiceBuilder::new().layer(auth.clone()).service(channel),
    ))
}

/// One unary call of `echo.Echo/Unary`.
pub async fn echo(
    grpc: &mut tonic::client::Grpc<CognitoAuth<Channel>>,
    message: &'static str,
) -> Result<Bytes, Status> {
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let request = tonic::Request::new(Bytes::from_static(message.as_bytes()));
    let path = PathAndQuery::from_static("/echo.Echo/Unary");
    Ok(grpc.unary(request, path, RawCodec).await?.into_inner())
}

#[cfg_attr(test, allow(dead_code))]
#[tokio::main]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    let endpoint = TokenEndpoint::start().await?;
    let addr = start_echo_server(&endpoint).await?;
    let auth = CognitoAuthLayer::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret(endpoint.client_secret())
        .build()?;
    let mut grpc = connect(addr, &auth).await?;
    println!(
        "tonic server on {addr}, token endpoint {}",
        endpoint.token_url()
    );

    let reply = echo(&mut grpc, "hello").await?;
    println!(
        "echo.Echo/Unary(\"hello\") -> {:?}   {:?}",
        reply,
        auth.stats()
    );
    if reply != "hello" {
        return Err("unexpected reply".into());
    }

    endpoint.revoke_all();
    println!("-- the server stops accepting the token --");
    let reply = echo(&mut grpc, "again").await?;
    let stats = auth.stats();
    println!("echo.Echo/Unary(\"again\") -> {reply:?}   {stats:?}");
    if reply != "again" || stats.replays != 1 || stats.token_requests != 2 {
        return Err("expected one transparent replay with a new token".into());
    }
    Ok(())
}
