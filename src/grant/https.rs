//! The built-in HTTPS client for the token endpoint (feature `rustls`): hyper-util's legacy
//! `Client` over hyper-rustls, with the ring provider and the webpki roots, so that no system
//! certificate store, cmake or nasm is needed. Plain `http://` is let through for the loopback
//! hosts that [`ClientCredentialsBuilder::token_url`](crate::ClientCredentialsBuilder::token_url)
//! allows it for.

use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::error::Error;
use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;

/// The built-in client; the endpoint erases its type.
pub(crate) fn client() -> Result<Client<HttpsConnector<HttpConnector>, Full<Bytes>>, Error> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .map_err(|_| Error::invalid_config("the TLS provider cannot be set up"))?
        .https_or_http()
        .enable_http1()
        .build();
    let client = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector);
    Ok(client)
}
