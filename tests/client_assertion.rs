//! `private_key_jwt` (RS256, ES256) and `client_secret_jwt` (HS256) against a server nobody
//! here wrote: panva's `oidc-provider` (npm), run by `tests/oidc/server.mjs` on 127.0.0.1 with
//! clients that authenticate only by those methods. `.ci/get-oidc-provider` installs it without
//! root; without it these tests fail and say so.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tower_cognito_auth::{
    ClientAssertionKey, ClientAuth, ClientCredentials, ClientCredentialsBuilder, CognitoAuthLayer,
    ErrorKind, TokenSource,
};

mod common;

/// A running oidc-provider; stopped when dropped.
struct Provider {
    _child: Child,
    token_url: String,
    rsa_pem: String,
    ec_pem: String,
    wrong_pem: String,
    secret: String,
}

/// Where `.ci/get-oidc-provider` installed oidc-provider.
fn install_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TOWER_COGNITO_AUTH_OIDC_PROVIDER") {
        return dir.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .expect("neither XDG_CACHE_HOME nor HOME is set");
    cache.join("tower-cognito-auth").join("oidc-provider")
}

async fn provider() -> Provider {
    let dir = install_dir();
    if !dir
        .join("node_modules/oidc-provider/package.json")
        .is_file()
    {
        panic!(
            "oidc-provider is not installed in {}: run `.ci/get-oidc-provider` (needs node and \
             npm, no root), or set TOWER_COGNITO_AUTH_OIDC_PROVIDER to an install",
            dir.display()
        );
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc/server.mjs");
    let mut child = Command::new("node")
        .arg(script)
        .env("OIDC_PROVIDER_DIR", &dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node (needed for oidc-provider): {e}"));
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).await.unwrap();
    let info: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("oidc-provider did not start ({e}): {line:?}"));
    let field = |name: &str| info[name].as_str().unwrap().to_owned();
    Provider {
        token_url: field("token_url"),
        rsa_pem: field("rsa_pem"),
        ec_pem: field("ec_pem"),
        wrong_pem: field("wrong_pem"),
        secret: field("secret"),
        _child: child,
    }
}

fn client(provider: &Provider, client_id: &str, auth: ClientAuth) -> ClientCredentialsBuilder {
    ClientCredentials::builder()
        .token_url(&provider.token_url)
        .client_id(client_id)
        .client_auth(auth)
        .max_attempts(1)
        .http_client(common::http())
}

fn key(pem: &str, kid: &str) -> ClientAssertionKey {
    ClientAssertionKey::from_pkcs8_pem(pem).unwrap().key_id(kid)
}

#[tokio::test]
async fn signed_assertions_get_tokens_from_oidc_provider() {
    let provider = provider().await;

    // RS256, twice: each request carries a new assertion (oidc-provider refuses a replayed jti).
    let rs256 = client(
        &provider,
        "rs256-client",
        ClientAuth::PrivateKeyJwt(key(&provider.rsa_pem, "rsa-1")),
    )
    .build()
    .unwrap();
    let first = rs256.fetch().await.unwrap();
    let second = rs256.fetch().await.unwrap();
    assert_ne!(
        first.access_token().secret(),
        second.access_token().secret()
    );

    // ES256 through the layer.
    let layer = CognitoAuthLayer::builder()
        .token_url(&provider.token_url)
        .client_id("es256-client")
        .client_auth(ClientAuth::PrivateKeyJwt(key(&provider.ec_pem, "ec-1")))
        .http_client(common::http())
        .build()
        .unwrap();
    layer.token().await.unwrap();

    // ES256 from a key file, read at each request.
    let dir = std::env::temp_dir().join(format!("tower-cognito-auth-oidc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("client-key.pem");
    std::fs::write(&path, &provider.ec_pem).unwrap();
    let from_file = client(
        &provider,
        "es256-client",
        ClientAuth::PrivateKeyJwt(ClientAssertionKey::from_file(&path)),
    )
    .build()
    .unwrap();
    from_file.fetch().await.unwrap();

    // HS256 over the client secret.
    let hs256 = client(&provider, "hs256-client", ClientAuth::ClientSecretJwt)
        .client_secret(&provider.secret)
        .build()
        .unwrap();
    hs256.fetch().await.unwrap();
    hs256.fetch().await.unwrap();
}

#[tokio::test]
async fn a_wrong_key_or_secret_is_a_clear_permanent_error() {
    let provider = provider().await;
    let wrong_key = client(
        &provider,
        "rs256-client",
        ClientAuth::PrivateKeyJwt(key(&provider.wrong_pem, "rsa-1")),
    )
    .build()
    .unwrap();
    let error = wrong_key.fetch().await.unwrap_err();
    assert!(error.is_invalid_client(), "{error}");
    assert!(error.is_permanent(), "{error}");
    assert_eq!(error.kind(), ErrorKind::Rejected);
    let text = error.to_string();
    assert!(text.contains("invalid_client"), "{text}");
    assert!(!text.contains("PRIVATE KEY"), "{text}");

    // The right key under the other client's name: refused too (its JWKS holds another key).
    let other_client = client(
        &provider,
        "es256-client",
        ClientAuth::PrivateKeyJwt(key(&provider.rsa_pem, "rsa-1")),
    )
    .build()
    .unwrap();
    assert!(other_client.fetch().await.unwrap_err().is_invalid_client());

    // A key file rewritten after the refusal: the next request through the layer is served
    // (a new credential ends the minute's pause that invalid_client starts).
    let dir = std::env::temp_dir().join(format!(
        "tower-cognito-auth-oidc-wrong-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("client-key.pem");
    std::fs::write(&path, &provider.wrong_pem).unwrap();
    let layer = CognitoAuthLayer::builder()
        .token_url(&provider.token_url)
        .client_id("es256-client")
        .client_auth(ClientAuth::PrivateKeyJwt(
            ClientAssertionKey::from_file(&path).key_id("ec-1"),
        ))
        .max_attempts(1)
        .http_client(common::http())
        .build()
        .unwrap();
    for _ in 0..3 {
        assert!(layer.token().await.unwrap_err().is_invalid_client());
    }
    assert_eq!(layer.stats().token_requests, 1, "paced");
    std::fs::write(&path, &provider.ec_pem).unwrap();
    // Requests read the key file again at most ten times a second: the first after that is
    // served, with one token request. Bounded: 50 tries, 20 ms apart.
    let mut healed = false;
    for _ in 0..50 {
        if layer.token().await.is_ok() {
            healed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(healed, "the rewritten key was never used");
    assert_eq!(layer.stats().token_requests, 2, "no request but the heal's");

    let wrong_secret = client(&provider, "hs256-client", ClientAuth::ClientSecretJwt)
        .client_secret("not-the-secret-of-this-client-at-all")
        .build()
        .unwrap();
    let error = wrong_secret.fetch().await.unwrap_err();
    assert!(error.is_invalid_client() && error.is_permanent(), "{error}");
}

/// A user session's exchanges sign a new assertion each (the loopback token endpoint does not
/// verify assertions: it refuses them as `invalid_client`, and records what was sent).
#[tokio::test]
async fn a_session_sends_a_new_assertion_at_each_exchange() {
    use base64::Engine as _;
    let endpoint = tower_cognito_auth::testing::TokenEndpoint::start()
        .await
        .unwrap();
    let generated = rcgen::KeyPair::generate().unwrap();
    let grant = tower_cognito_auth::RefreshTokenGrant::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_auth(ClientAuth::PrivateKeyJwt(
            ClientAssertionKey::from_pkcs8_pem(generated.serialize_pem())
                .unwrap()
                .key_id("k1"),
        ))
        .refresh_token(endpoint.new_session())
        .http_client(common::http())
        .build()
        .unwrap();
    for _ in 0..2 {
        assert!(grant.fetch().await.unwrap_err().is_invalid_client());
    }
    let claims: Vec<serde_json::Value> = endpoint
        .requests()
        .iter()
        .map(|request| {
            assert_eq!(
                request.form_value("client_assertion_type").as_deref(),
                Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            );
            assert!(request.headers.get("authorization").is_none());
            let jwt = request.form_value("client_assertion").unwrap();
            let payload = jwt.split('.').nth(1).unwrap();
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap();
            serde_json::from_slice(&bytes).unwrap()
        })
        .collect();
    assert_eq!(claims.len(), 2);
    for claim in &claims {
        assert_eq!(claim["aud"], endpoint.token_url().as_str());
        assert_eq!(claim["iss"], endpoint.client_id());
        assert_eq!(claim["sub"], endpoint.client_id());
    }
    assert_ne!(claims[0]["jti"], claims[1]["jti"]);
}
