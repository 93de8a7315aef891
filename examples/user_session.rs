//! A user's session in a pool without a domain, refreshed through Cognito's user-pool API
//! (`GetTokensFromRefreshToken`, as Amplify and the AWS SDKs do), restored from a file, kept
//! alive through the layer, and every new token set written back to the file by an async
//! `persist` hook.
//!
//! ```text
//! cargo run --example user_session
//! ```
//!
//! Starts, in this process on 127.0.0.1, the `testing` kit's Cognito user-pool API (what
//! `RefreshTokenGrant::builder().user_pool_api("us-east-1")` talks to in production) for a
//! public app client (no secret) that rotates refresh tokens on every use and revokes a session
//! whose old refresh token is presented again, with access tokens that live 2 s; and an API that accepts
//! only live access tokens. A first run signs in, refreshes once and saves the session (refresh
//! token, access token and its wall-clock expiry) to a file under the temporary directory. The
//! example then restores the session from that file (the access token is used while it has
//! life left: the first request sends no token request), sends requests through
//! `CognitoAuthLayer` for a few token lifetimes, saves every new token set with an async hook
//! that writes a temporary file and renames it, closes the grant (waiting for an exchange in
//! flight and its save), and checks at the end that the file holds the refresh token the
//! server accepts now. No token is ever printed.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt as _};
use tower_cognito_auth::testing::{ProtectedApi, TokenEndpoint};
use tower_cognito_auth::{CognitoAuthLayer, RefreshTokenGrant, TokenSet, TokenSource as _};

type BoxResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

const LIFETIME: Duration = Duration::from_secs(2);
const REQUESTS: usize = 18;
const PAUSE: Duration = Duration::from_millis(250);

#[tokio::main]
async fn main() -> BoxResult<()> {
    // The identity provider (its user-pool API at `endpoint.user_pool_api_url()`) and the API.
    let endpoint = TokenEndpoint::builder()
        .public_client(true)
        .rotate_refresh_tokens(true)
        .lifetime(LIFETIME)
        // JWT access tokens, as Cognito's: a restored one's lifetime is read from it.
        .jwt(true)
        .start()
        .await?;
    let api = ProtectedApi::start(&endpoint).await?;

    let dir = std::env::temp_dir().join(format!(
        "tower-cognito-auth-user-session-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("session");

    let outcome = async {
        first_run(&endpoint, &file).await?;
        run(&endpoint, &api, &file).await
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

/// An earlier run: the user signed in, one refresh, the session saved to the file.
async fn first_run(endpoint: &TokenEndpoint, file: &Path) -> BoxResult<()> {
    let grant = RefreshTokenGrant::builder()
        .user_pool_api_url(endpoint.user_pool_api_url())
        .client_id(endpoint.client_id())
        .refresh_token(endpoint.new_session())
        .persist(persist_to(file, Arc::default()))
        .http_client(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>())
        .build()?;
    grant.fetch().await?;
    grant.close().await?;
    println!("signed in; the session is stored in {}", file.display());
    Ok(())
}

/// The `persist` hook: writes the token set to `file` (refresh token, access token, expiry in
/// Unix seconds, one per line) through a temporary file and a rename, so that a crash leaves
/// the old session or the new one, never half of one. On Unix the file is private (0600).
fn persist_to(
    file: &Path,
    saves: Arc<AtomicUsize>,
) -> impl Fn(TokenSet) -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>
+ Send
+ Sync
+ 'static {
    let file = file.to_owned();
    move |set: TokenSet| {
        let file = file.clone();
        let saves = Arc::clone(&saves);
        Box::pin(async move {
            let expiry = set
                .expires_at()
                .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            let text = format!(
                "{}\n{}\n{}\n",
                set.refresh_token(),
                set.access_token().map_or("", |t| t.secret()),
                expiry
            );
            let mut temporary = PathBuf::from(&file);
            temporary.set_extension("tmp");
            let mut options = tokio::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            options.mode(0o600);
            let mut out = options.open(&temporary).await?;
            tokio::io::AsyncWriteExt::write_all(&mut out, text.as_bytes()).await?;
            out.sync_all().await?;
            tokio::fs::rename(&temporary, &file).await?;
            saves.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }
}

async fn run(endpoint: &TokenEndpoint, api: &ProtectedApi, file: &Path) -> BoxResult<()> {
    // Restore the session at startup: the refresh token, and the access token while it has
    // life left (its expiry kept on the wall clock).
    let stored = tokio::fs::read_to_string(file).await?;
    let mut lines = stored.lines();
    let refresh_token = lines.next().unwrap_or_default().to_owned();
    let access_token = lines.next().unwrap_or_default().to_owned();
    let expires_at = lines
        .next()
        .and_then(|secs| secs.parse::<u64>().ok())
        .map(|secs| UNIX_EPOCH + Duration::from_secs(secs));
    let saves = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut saved = TokenSet::new(refresh_token);
    if let Some(at) = expires_at.filter(|at| *at > SystemTime::now() && !access_token.is_empty()) {
        saved = saved.with_access_token(access_token, Some(at))?;
        println!("restored the refresh token and the access token");
    }
    let requests_before = endpoint.request_count();
    // A pool without a domain: the session is refreshed through Cognito's user-pool API
    // (`user_pool_api("us-east-1")` on AWS), here the `testing` kit's on loopback.
    let builder = RefreshTokenGrant::builder()
        .user_pool_api_url(endpoint.user_pool_api_url())
        .client_id(endpoint.client_id())
        .restore(saved)
        .persist(persist_to(file, Arc::clone(&saves)))
        // A client not shared with the application's requests: its connections live on the
        // exchange threads.
        .http_client(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let grant = builder.build()?;
    let auth = CognitoAuthLayer::builder()
        .token_source(grant.clone())
        .build()?;
    let client = ServiceBuilder::new().layer(auth.clone()).service(http);

    println!(
        "{REQUESTS} requests, one every {} ms, with {} s access tokens:",
        PAUSE.as_millis(),
        LIFETIME.as_secs()
    );
    let mut failures = 0;
    for _ in 0..REQUESTS {
        let request = Request::get(format!("{}/me", api.url())).body(Full::default())?;
        let at = started.elapsed().as_secs_f64();
        match client.clone().oneshot(request).await {
            Ok(response) if response.status() == StatusCode::OK => {
                println!("  {at:5.2} s  GET /me -> 200");
            }
            Ok(response) => {
                failures += 1;
                println!("  {at:5.2} s  GET /me -> {}", response.status());
            }
            Err(error) => {
                failures += 1;
                println!("  {at:5.2} s  GET /me failed: {error}");
            }
        }
        tokio::time::sleep(PAUSE).await;
    }

    // Before exiting: wait for an exchange in flight and its save.
    grant.close().await?;
    let on_disk = std::fs::read_to_string(file)?;
    let current = endpoint.current_refresh_token();
    let file_is_current = current.as_deref() == on_disk.lines().next();
    let stats = auth.stats();
    let status = grant.status().borrow().clone();
    println!();
    println!("requests:                     {REQUESTS}, {failures} failed");
    println!(
        "token requests (refreshes):   {}, {} ahead of expiry; the restored token saved {}",
        stats.token_requests,
        stats.refresh_ahead,
        if endpoint.request_count() - requests_before < stats.token_requests as usize {
            "one"
        } else {
            "none"
        }
    );
    println!(
        "rotations:                    {} by the server, {} saved to the file by this run ({} failed saves)",
        endpoint.rotations(),
        saves.load(Ordering::SeqCst),
        status.save_failures
    );
    println!(
        "session revoked:              {}",
        if endpoint.is_session_revoked() {
            "yes"
        } else {
            "no"
        }
    );
    println!(
        "file holds the current token: {}",
        if file_is_current { "yes" } else { "no" }
    );
    if failures > 0 || !file_is_current || endpoint.is_session_revoked() {
        return Err("the session was not kept".into());
    }
    Ok(())
}
