//! Helpers shared by the integration tests.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use tower_cognito_auth::testing::TokenEndpoint;
use tower_cognito_auth::{ClientCredentials, ClientCredentialsBuilder};

/// A plain HTTP/1 client for the loopback servers.
pub fn http() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A client_credentials source configured for `endpoint`.
pub fn source(endpoint: &TokenEndpoint) -> ClientCredentialsBuilder {
    ClientCredentials::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret(endpoint.client_secret())
        .http_client(http())
}
