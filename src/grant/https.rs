//! The built-in HTTPS client for the token endpoint (feature `rustls`): hyper-util's legacy
//! `Client` over hyper-rustls with the ring provider, so that no cmake or nasm is needed.
//! Plain `http://` is let through for the loopback hosts that
//! [`ClientCredentialsBuilder::token_url`](crate::ClientCredentialsBuilder::token_url) allows it
//! for.
//!
//! - Trust roots: webpki's (Mozilla's), or the platform's with the feature `native-roots`, plus
//!   any PEM roots the builder was given.
//! - Proxies: `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (and their lower-case
//!   forms) by default, read when the client is built, by hyper-util's own `Matcher` (curl's
//!   rules); or one proxy set explicitly; or none. An `https://` target goes through a `CONNECT`
//!   tunnel (hyper-util's `Tunnel`), an `http://` one as an absolute-form request to the proxy.
//!   A proxy URL's credentials go in `Proxy-Authorization` (marked sensitive) and are printed
//!   nowhere: hyper-util's `Matcher` strips them from the URI it keeps.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::PROXY_AUTHORIZATION;
use http::{Request, Uri};
use http_body_util::Full;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use tokio::net::TcpStream;
use tower::Service;
use tower::ServiceExt as _;

use super::endpoint::{HttpClient, erase_client, redact_userinfo};
use crate::error::{BoxError, Error};

/// How the built-in client finds a proxy.
#[derive(Clone, Default)]
enum ProxyChoice {
    /// `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY` (and lower case), read at build.
    #[default]
    Env,
    /// This one for every token request; the environment is not read.
    Url(String),
    /// None: connect directly whatever the environment says.
    Off,
}

/// What the builders were told about the built-in client: its proxy and extra trust roots.
#[derive(Clone, Default)]
pub(crate) struct HttpsOptions {
    proxy: ProxyChoice,
    /// PEM text, one or more certificates per entry, parsed by [`build`](Self::build).
    roots: Vec<Vec<u8>>,
    /// The setters called, so that a builder can refuse them beside its own `http_client`.
    pub(crate) settings: Vec<&'static str>,
}

impl fmt::Debug for HttpsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proxy = match &self.proxy {
            ProxyChoice::Env => "from the environment".into(),
            ProxyChoice::Url(url) => redact_userinfo(url),
            ProxyChoice::Off => "none".into(),
        };
        f.debug_struct("HttpsOptions")
            .field("proxy", &proxy)
            .field("root_certificates", &self.roots.len())
            .finish()
    }
}

impl HttpsOptions {
    /// Whether no setter was called: the built-in client with its defaults.
    pub(crate) fn is_default(&self) -> bool {
        self.settings.is_empty()
    }

    pub(crate) fn proxy(&mut self, url: String) {
        self.proxy = ProxyChoice::Url(url);
        self.settings.push("proxy");
    }

    pub(crate) fn no_proxy(&mut self) {
        self.proxy = ProxyChoice::Off;
        self.settings.push("no_proxy");
    }

    pub(crate) fn root_certificates(&mut self, pem: Vec<u8>) {
        self.roots.push(pem);
        self.settings.push("root_certificates");
    }

    /// Builds the client: reads the proxy environment (unless told otherwise), loads the roots.
    pub(crate) fn build(&self) -> Result<HttpClient, Error> {
        let matcher = match &self.proxy {
            ProxyChoice::Env => Some(Matcher::from_env()),
            ProxyChoice::Url(url) => Some(explicit_proxy(url)?),
            ProxyChoice::Off => None,
        }
        .map(Arc::new);
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(ring_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|_| Error::internal("rustls refused its default protocol versions"))?
            .with_root_certificates(self.root_store()?)
            .with_no_client_auth();
        let connector = ProxyConnector {
            http: http_connector(),
            matcher: matcher.clone(),
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client: Client<HttpsConnector<ProxyConnector>, Full<Bytes>> =
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .build(https);
        // A plain `http://` target behind a proxy carries the proxy's credentials itself (an
        // `https://` one carries them in its `CONNECT`).
        let client = client.map_request(move |mut request: Request<Full<Bytes>>| {
            if request.uri().scheme() == Some(&http::uri::Scheme::HTTP)
                && let Some(auth) = matcher
                    .as_ref()
                    .and_then(|m| m.intercept(request.uri()))
                    .and_then(|proxy| proxy.basic_auth().cloned())
            {
                request.headers_mut().insert(PROXY_AUTHORIZATION, auth);
            }
            request
        });
        Ok(erase_client(client))
    }

    /// The built-in roots (webpki's, or the platform's with `native-roots`) and the extra ones.
    fn root_store(&self) -> Result<rustls::RootCertStore, Error> {
        let mut roots = built_in_roots()?;
        for pem in &self.roots {
            let parsed: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
            let invalid = || {
                Error::invalid_config(
                    "the root certificates hold no PEM certificate, or one that does not parse",
                )
            };
            let certificates = parsed.map_err(|_| invalid())?;
            if certificates.is_empty() {
                return Err(invalid());
            }
            for certificate in certificates {
                roots.add(certificate).map_err(|_| {
                    Error::invalid_config("a root certificate was not accepted as a trust anchor")
                })?;
            }
        }
        Ok(roots)
    }
}

/// The ring provider. rustls 0.23.48 deprecates `ring::default_provider` ("no support for
/// post-quantum algorithms") without a replacement that keeps ring, and rustls itself reaches
/// it the same way (`CryptoProvider::from_crate_features`). The crate stays on ring (no cmake,
/// no nasm) and never installs a process-wide provider.
#[allow(deprecated)]
pub(crate) fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

#[cfg(not(feature = "native-roots"))]
fn built_in_roots() -> Result<rustls::RootCertStore, Error> {
    Ok(rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    })
}

/// The platform's roots (`rustls-native-certs`: the system bundle on Linux, honouring
/// `SSL_CERT_FILE` and `SSL_CERT_DIR`; the keychain on macOS; the store on Windows). A
/// certificate the store holds but rustls cannot use is skipped; a store that yields none is
/// an error.
#[cfg(feature = "native-roots")]
fn built_in_roots() -> Result<rustls::RootCertStore, Error> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _unusable) = roots.add_parsable_certificates(loaded.certs);
    if added == 0 {
        return Err(Error::invalid_config(
            "the platform's certificate store holds no usable root (feature `native-roots`)",
        ));
    }
    Ok(roots)
}

/// `.proxy(url)`: one `http://` proxy (credentials allowed) for every token request.
fn explicit_proxy(url: &str) -> Result<Matcher, Error> {
    let invalid = || {
        Error::invalid_config(
            "the proxy URL must be `http://[user:password@]host[:port]` (no other scheme is supported)",
        )
    };
    let uri: Uri = url.parse().map_err(|_| invalid())?;
    if uri.scheme() != Some(&http::uri::Scheme::HTTP) || uri.host().is_none_or(str::is_empty) {
        return Err(invalid());
    }
    let matcher = Matcher::builder().all(url.to_owned()).build();
    // The matcher drops a URL it cannot use; say so now rather than connect directly.
    match matcher.intercept(&Uri::from_static("https://example.com/")) {
        Some(_) => Ok(matcher),
        None => Err(invalid()),
    }
}

fn http_connector() -> HttpConnector {
    let mut http = HttpConnector::new();
    // hyper-rustls decides which targets may be plain HTTP.
    http.enforce_http(false);
    http.set_nodelay(true);
    http
}

/// Connects to the target, or to the proxy the matcher names for it.
#[derive(Clone)]
pub(crate) struct ProxyConnector {
    http: HttpConnector,
    matcher: Option<Arc<Matcher>>,
}

type Connecting = Pin<Box<dyn Future<Output = Result<ProxyStream, BoxError>> + Send>>;

impl Service<Uri> for ProxyConnector {
    type Response = ProxyStream;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, target: Uri) -> Self::Future {
        let intercept = self.matcher.as_ref().and_then(|m| m.intercept(&target));
        let Some(proxy) = intercept else {
            let connecting = self.http.call(target);
            return Box::pin(async move {
                let io = connecting.await?;
                Ok(ProxyStream { io, proxied: false })
            });
        };
        if proxy.uri().scheme() != Some(&http::uri::Scheme::HTTP) {
            return Box::pin(async {
                Err(io::Error::other(
                    "the proxy from the environment is not an http:// proxy, the only kind supported: \
                     set NO_PROXY for the token endpoint's host, or `no_proxy()` / `proxy(..)` on the builder",
                )
                .into())
            });
        }
        if target.scheme() == Some(&http::uri::Scheme::HTTPS) {
            let mut tunnel = Tunnel::new(proxy.uri().clone(), self.http.clone());
            if let Some(auth) = proxy.basic_auth() {
                tunnel = tunnel.with_auth(auth.clone());
            }
            Box::pin(async move {
                let io = tunnel.oneshot(target).await.map_err(proxy_error)?;
                Ok(ProxyStream { io, proxied: false })
            })
        } else {
            let connecting = self.http.call(proxy.uri().clone());
            Box::pin(async move {
                let io = connecting.await?;
                Ok(ProxyStream { io, proxied: true })
            })
        }
    }
}

/// A tunnel's failure, saying that the proxy was involved and then its innermost cause
/// ("Connection refused", or hyper-util's "proxy authorization required" for a 407). It has no
/// `source`, so that the crate's [`Error`] shows this message rather than only that cause.
fn proxy_error(error: impl std::error::Error + Send + Sync + 'static) -> BoxError {
    let mut cause: &(dyn std::error::Error + 'static) = &error;
    // Bounded: a cycle of sources cannot make this loop for ever.
    for _ in 0..16 {
        match cause.source() {
            Some(next) => cause = next,
            None => break,
        }
    }
    Box::new(ProxyError(format!("through the proxy: {cause}")))
}

#[derive(Debug)]
struct ProxyError(String);

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProxyError {}

/// A TCP connection, to the target or through a proxy. `proxied` says that requests on it go
/// to an HTTP proxy, which hyper then writes in absolute form.
pub(crate) struct ProxyStream {
    io: TokioIo<TcpStream>,
    proxied: bool,
}

impl Connection for ProxyStream {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.proxied)
    }
}

impl Read for ProxyStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for ProxyStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}
