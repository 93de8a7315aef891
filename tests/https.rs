//! The built-in HTTPS client's way out: proxies (from the environment, set on the builder, or
//! none) and trust roots (extra PEM roots; the platform's with `native-roots`), against a real
//! TLS token endpoint (a rustls front, with a certificate from a throwaway CA, before
//! `testing::TokenEndpoint`) and a real CONNECT proxy nobody here wrote (proxy.py from PyPI,
//! fetched by `.ci/get-proxy`).
//!
//! A test binary of its own, and every test holds one lock: the proxy variables and
//! `SSL_CERT_FILE` are process-wide, and the built-in client reads them when it is built.
#![cfg(all(feature = "rustls", feature = "test-util"))]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tower_cognito_auth::testing::TokenEndpoint;
use tower_cognito_auth::{ClientCredentials, ClientCredentialsBuilder, CognitoAuthLayer};
use tower_cognito_auth::{Error, TokenSource};

/// Held by every test: the environment is shared by the whole binary.
static ENV: Mutex<()> = Mutex::const_new(());

const PROXY_VARS: [&str; 8] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// Sets exactly these proxy variables (and `SSL_CERT_FILE` when given); unsets the others.
fn set_env(vars: &[(&str, &str)]) {
    for name in PROXY_VARS.iter().chain(&["SSL_CERT_FILE", "SSL_CERT_DIR"]) {
        // SAFETY: every test of this binary holds `ENV` while it touches or reads the
        // environment, and nothing else in the binary reads it concurrently.
        unsafe { std::env::remove_var(name) };
    }
    for (name, value) in vars {
        // SAFETY: as above.
        unsafe { std::env::set_var(name, value) };
    }
}

/// A throwaway certificate authority and a certificate it signed for `127.0.0.1`: (CA PEM,
/// server certificate PEM, server key PEM).
fn private_ca() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), server.pem(), key.serialize_pem())
}

/// The token endpoint behind TLS: a rustls server on 127.0.0.1 that relays each connection,
/// decrypted, to `TokenEndpoint`.
struct TlsEndpoint {
    endpoint: TokenEndpoint,
    addr: SocketAddr,
    ca: String,
    task: tokio::task::JoinHandle<()>,
}

impl TlsEndpoint {
    async fn start() -> TlsEndpoint {
        let endpoint = TokenEndpoint::start().await.unwrap();
        let (ca, chain, key) = private_ca();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        #[allow(deprecated)] // rustls 0.23.48: ring's provider has no post-quantum groups.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = endpoint.addr();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut plain) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsEndpoint {
            endpoint,
            addr,
            ca,
            task,
        }
    }

    fn token_url(&self) -> String {
        format!("https://{}/oauth2/token", self.addr)
    }

    /// A source for this endpoint through the built-in client (no `http_client`).
    fn source(&self) -> ClientCredentialsBuilder {
        ClientCredentials::builder()
            .token_url(self.token_url())
            .client_id(self.endpoint.client_id())
            .client_secret(self.endpoint.client_secret())
            .max_attempts(1)
    }
}

impl Drop for TlsEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const PROXY_USER: &str = "egress";
const PROXY_PASSWORD: &str = "pr0xy-s3cret";

/// proxy.py on 127.0.0.1, asking for `PROXY_USER:PROXY_PASSWORD`, logging to a file.
struct Proxy {
    child: Child,
    port: u16,
    log: PathBuf,
    dir: PathBuf,
}

impl Proxy {
    async fn start() -> Proxy {
        let launcher = std::env::var_os("TOWER_COGNITO_AUTH_PROXY")
            .map(PathBuf::from)
            .or_else(|| {
                let cache = std::env::var_os("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .or_else(|| {
                        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache"))
                    })?;
                Some(cache.join("tower-cognito-auth").join("proxy-py"))
            })
            .filter(|path| path.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "proxy.py was not found: run `.ci/get-proxy` (it installs proxy.py from PyPI \
                     into ~/.cache/tower-cognito-auth/ without root), or set \
                     TOWER_COGNITO_AUTH_PROXY to a launcher that takes proxy.py's arguments"
                )
            });
        let dir = std::env::temp_dir().join(format!(
            "tower-cognito-auth-proxy-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let port_file = dir.join("port");
        let log = dir.join("log");
        let child = Command::new(&launcher)
            .args(["--hostname", "127.0.0.1", "--port", "0", "--port-file"])
            .arg(&port_file)
            .args(["--num-workers", "1", "--num-acceptors", "1", "--threaded"])
            .args(["--basic-auth", &format!("{PROXY_USER}:{PROXY_PASSWORD}")])
            .arg("--log-file")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", launcher.display()));
        let mut proxy = Proxy {
            child,
            port: 0,
            log,
            dir,
        };
        // Its start-up: at most 30 s, then the test fails with the log.
        for _ in 0..600 {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                proxy.port = port;
                return proxy;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("proxy.py did not start: {}", proxy.log());
    }

    fn url(&self, password: &str) -> String {
        format!("http://{PROXY_USER}:{password}@127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (at most 10 s) until the proxy's access log has a line containing `needle`: it
    /// writes one when a connection it carried closes.
    async fn logged(&self, needle: &str) -> bool {
        for _ in 0..200 {
            if self.log().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // SIGTERM, so that proxy.py ends its worker processes too.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `HTTPS_PROXY` (with credentials) carries the token requests to an `https://` endpoint
/// through `CONNECT`: the token arrives, the endpoint counted it, and the proxy logged the
/// tunnel to the endpoint's address.
#[tokio::test]
async fn https_proxy_from_the_environment_carries_the_token_requests() {
    let _env = ENV.lock().await;
    let tls = TlsEndpoint::start().await;
    let proxy = Proxy::start().await;
    set_env(&[("HTTPS_PROXY", &proxy.url(PROXY_PASSWORD))]);

    let source = tls.source().root_certificates(&tls.ca).build().unwrap();
    let token = source.fetch().await.unwrap();
    assert!(tls.endpoint.is_valid(token.access_token().secret()));
    assert_eq!(tls.endpoint.request_count(), 1);
    drop(source); // closes the pooled connection, so the proxy logs it
    assert!(
        proxy.logged(&format!("CONNECT {}", tls.addr)).await,
        "the proxy did not carry the request: {}",
        proxy.log()
    );
}

/// `NO_PROXY` naming the endpoint's host sends it past the proxy of `https_proxy` (here a port
/// nothing listens on); the same variables without `no_proxy` fail through it (the control).
#[tokio::test]
async fn no_proxy_from_the_environment_is_honoured() {
    let _env = ENV.lock().await;
    let tls = TlsEndpoint::start().await;
    let dead = dead_proxy().await;

    set_env(&[("https_proxy", &dead), ("no_proxy", "localhost,127.0.0.1")]);
    let direct = tls.source().root_certificates(&tls.ca).build().unwrap();
    direct.fetch().await.unwrap();
    assert_eq!(tls.endpoint.request_count(), 1);

    set_env(&[("https_proxy", &dead)]);
    let proxied = tls.source().root_certificates(&tls.ca).build().unwrap();
    let error = proxied.fetch().await.unwrap_err();
    assert!(error.to_string().contains("through the proxy"), "{error}");
    assert_eq!(tls.endpoint.request_count(), 1);
}

/// The URL of a proxy that is not there: a port just bound and released.
async fn dead_proxy() -> String {
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    url
}

/// An `http://` (loopback) token URL behind `HTTP_PROXY` goes to the proxy as an
/// absolute-form request, with the credentials in `Proxy-Authorization`.
#[tokio::test]
async fn http_proxy_from_the_environment_carries_plain_http_requests() {
    let _env = ENV.lock().await;
    let endpoint = TokenEndpoint::start().await.unwrap();
    let proxy = Proxy::start().await;
    set_env(&[("HTTP_PROXY", &proxy.url(PROXY_PASSWORD))]);

    let source = ClientCredentials::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret(endpoint.client_secret())
        .max_attempts(1)
        .build()
        .unwrap();
    source.fetch().await.unwrap();
    drop(source);
    assert_eq!(endpoint.request_count(), 1);
    assert!(
        proxy
            .logged(&format!("POST {}/oauth2/token - 200", endpoint.addr()))
            .await,
        "{}",
        proxy.log()
    );
}

/// `.proxy(url)` on the layer's builder: used without any variable; wrong credentials are a
/// clear error (the proxy's 407) that names no password, nor does any `Debug`.
#[tokio::test]
async fn explicit_proxy_with_credentials_and_their_redaction() {
    let _env = ENV.lock().await;
    set_env(&[]);
    let tls = TlsEndpoint::start().await;
    let proxy = Proxy::start().await;

    let layer = |password: &str| {
        CognitoAuthLayer::builder()
            .token_url(tls.token_url())
            .client_id(tls.endpoint.client_id())
            .client_secret(tls.endpoint.client_secret())
            .max_attempts(1)
            .proxy(proxy.url(password))
            .root_certificates(&tls.ca)
    };
    let wrong = "wr0ng-passw0rd";
    let builder = layer(wrong);
    assert!(!format!("{builder:?}").contains(wrong), "{builder:?}");
    let refused = builder.build().unwrap();
    let error = refused.token().await.unwrap_err();
    let shown = format!("{error} {error:?}");
    assert!(shown.contains("proxy"), "{shown}");
    assert!(!shown.contains(wrong), "{shown}");
    assert!(!format!("{refused:?}").contains(wrong));
    assert_eq!(tls.endpoint.request_count(), 0);

    let accepted = layer(PROXY_PASSWORD).build().unwrap();
    accepted.token().await.unwrap();
    assert_eq!(tls.endpoint.request_count(), 1);
    drop(accepted);
    assert!(
        proxy.logged(&format!("CONNECT {}", tls.addr)).await,
        "{}",
        proxy.log()
    );
}

/// `.no_proxy()` connects directly whatever `HTTPS_PROXY` says (here: nothing listens there).
#[tokio::test]
async fn no_proxy_setter_ignores_the_environment() {
    let _env = ENV.lock().await;
    let tls = TlsEndpoint::start().await;
    set_env(&[("HTTPS_PROXY", &dead_proxy().await)]);

    let through_env = tls.source().root_certificates(&tls.ca).build().unwrap();
    let error = through_env.fetch().await.unwrap_err();
    assert!(error.to_string().contains("proxy"), "{error}");

    let direct = tls
        .source()
        .root_certificates(&tls.ca)
        .no_proxy()
        .build()
        .unwrap();
    direct.fetch().await.unwrap();
    assert_eq!(tls.endpoint.request_count(), 1);
}

/// Extra roots: the endpoint's private CA is not trusted by default, and is once given.
#[tokio::test]
async fn root_certificates_add_a_private_ca() {
    let _env = ENV.lock().await;
    set_env(&[]);
    let tls = TlsEndpoint::start().await;

    let error = tls.source().build().unwrap().fetch().await.unwrap_err();
    let chain = std::iter::successors(Some(&error as &(dyn std::error::Error + 'static)), |e| {
        e.source()
    })
    .map(|e| e.to_string())
    .collect::<Vec<_>>()
    .join(": ");
    assert!(chain.contains("UnknownIssuer"), "{chain}");
    assert_eq!(tls.endpoint.request_count(), 0);

    let trusted = tls.source().root_certificates(&tls.ca).build().unwrap();
    trusted.fetch().await.unwrap();
    assert_eq!(tls.endpoint.request_count(), 1);
}

/// What `build` refuses: a proxy URL it cannot use, PEM that holds no certificate, and the
/// built-in client's settings beside a client of one's own.
#[tokio::test]
async fn build_refuses_what_it_cannot_use() {
    let _env = ENV.lock().await;
    set_env(&[]);
    let base = || {
        ClientCredentials::builder()
            .token_url("https://auth.example.com/oauth2/token")
            .client_id("id")
            .client_secret("secret")
    };
    let invalid = |result: Result<ClientCredentials, Error>| {
        let error = result.unwrap_err();
        assert_eq!(
            error.kind(),
            tower_cognito_auth::ErrorKind::InvalidConfig,
            "{error}"
        );
        error.to_string()
    };
    for url in ["socks5://127.0.0.1:1080", "https://proxy:3128", "not a url"] {
        let message = invalid(base().proxy(url).build());
        assert!(message.contains("proxy URL"), "{url}: {message}");
    }
    let message = invalid(base().root_certificates("no certificate here").build());
    assert!(message.contains("PEM"), "{message}");
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let message = invalid(base().http_client(http).no_proxy().build());
    assert!(message.contains("no_proxy"), "{message}");
}

/// `native-roots`: the platform's store is what is trusted; on Linux rustls-native-certs reads
/// `SSL_CERT_FILE`, so the private CA placed there is trusted with no `root_certificates`.
#[cfg(feature = "native-roots")]
#[tokio::test]
async fn native_roots_trust_the_platform_store() {
    let _env = ENV.lock().await;
    let tls = TlsEndpoint::start().await;
    let file = std::env::temp_dir().join(format!(
        "tower-cognito-auth-ca-{}-{}.pem",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::write(&file, &tls.ca).unwrap();
    set_env(&[("SSL_CERT_FILE", file.to_str().unwrap())]);
    let source = tls.source().build();
    std::fs::remove_file(&file).unwrap();
    source.unwrap().fetch().await.unwrap();
    assert_eq!(tls.endpoint.request_count(), 1);
}

/// A user's session (`RefreshTokenGrant`) through `.proxy(url)` and `.root_certificates(pem)`:
/// the refresh token crosses the proxy inside the tunnel.
#[tokio::test]
async fn session_grant_through_an_explicit_proxy() {
    let _env = ENV.lock().await;
    set_env(&[]);
    let tls = TlsEndpoint::start().await;
    let proxy = Proxy::start().await;
    let grant = tower_cognito_auth::RefreshTokenGrant::builder()
        .token_url(tls.token_url())
        .client_id(tls.endpoint.client_id())
        .client_secret(tls.endpoint.client_secret())
        .refresh_token(tls.endpoint.new_session())
        .proxy(proxy.url(PROXY_PASSWORD))
        .root_certificates(&tls.ca)
        .build()
        .unwrap();
    let token = grant.fetch().await.unwrap();
    assert!(tls.endpoint.is_valid(token.access_token().secret()));
    drop(grant);
    assert!(
        proxy.logged(&format!("CONNECT {}", tls.addr)).await,
        "{}",
        proxy.log()
    );
}

/// A proxy of a kind the built-in client cannot speak (`https://`, `socks5://`), named by the
/// environment: the token request fails and says what to do, rather than going around it.
#[tokio::test]
async fn an_unsupported_proxy_from_the_environment_is_a_clear_error() {
    let _env = ENV.lock().await;
    let tls = TlsEndpoint::start().await;
    for proxy in ["https://127.0.0.1:1", "socks5://127.0.0.1:1"] {
        set_env(&[("HTTPS_PROXY", proxy)]);
        let source = tls.source().root_certificates(&tls.ca).build().unwrap();
        let error = source.fetch().await.unwrap_err();
        assert!(
            error.to_string().contains("not an http:// proxy"),
            "{proxy}: {error}"
        );
    }
    assert_eq!(tls.endpoint.request_count(), 0);
}
