//! A user's session, restored from a file, kept alive through the layer, and its rotated
//! refresh token written back to the file.
//!
//! ```text
//! cargo run --example user_session
//! ```
//!
//! Starts, in this process on 127.0.0.1, a Cognito-compatible token endpoint for a public app
//! client (no secret) that rotates refresh tokens on every use and revokes a session whose old
//! refresh token is presented again, with access tokens that live 2 s; and an API that accepts
//! only live access tokens. A sign-in leaves the session's refresh token in a file under the
//! temporary directory. The example then restores the session from that file (refresh token
//! only: the first request refreshes), sends requests through `CognitoAuthLayer` for a few
//! token lifetimes, writes every rotated refresh token back to the file, and checks at the end
//! that the file holds the refresh token the server accepts now. No token is ever printed.

use std::error::Error;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt as _};
use tower_cognito_auth::testing::{ProtectedApi, TokenEndpoint};
use tower_cognito_auth::{CognitoAuthLayer, RefreshTokenGrant};

type BoxResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

const LIFETIME: Duration = Duration::from_secs(2);
const REQUESTS: usize = 18;
const PAUSE: Duration = Duration::from_millis(250);

#[tokio::main]
async fn main() -> BoxResult<()> {
    // The identity provider and the API.
    let endpoint = TokenEndpoint::builder()
        .public_client(true)
        .rotate_refresh_tokens(true)
        .lifetime(LIFETIME)
        .start()
        .await?;
    let api = ProtectedApi::start(&endpoint).await?;

    // What an earlier sign-in left on disk: the session's refresh token.
    let dir = std::env::temp_dir().join(format!(
        "tower-cognito-auth-user-session-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("session");
    save(&file, &endpoint.new_session())?;
    println!("signed in; refresh token stored in {}", file.display());

    let outcome = run(&endpoint, &api, &file).await;
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

async fn run(endpoint: &TokenEndpoint, api: &ProtectedApi, file: &Path) -> BoxResult<()> {
    // Restore the session at startup: the refresh token only, so the first request refreshes.
    let stored = std::fs::read_to_string(file)?.trim().to_owned();
    let rotations = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let grant = RefreshTokenGrant::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .refresh_token(stored)
        .on_rotation({
            let file = file.to_owned();
            let rotations = Arc::clone(&rotations);
            move |new_refresh_token: &str| {
                let n = rotations.fetch_add(1, Ordering::SeqCst) + 1;
                let at = started.elapsed().as_secs_f64();
                match save(&file, new_refresh_token) {
                    Ok(()) => println!(
                        "  {at:5.2} s  rotation #{n}: the new refresh token is written to the file"
                    ),
                    Err(error) => eprintln!(
                        "  {at:5.2} s  rotation #{n}: could not write the session file: {error}"
                    ),
                }
            }
        })
        .http_client(http.clone())
        .build()?;
    let auth = CognitoAuthLayer::builder().token_source(grant).build()?;
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

    let on_disk = std::fs::read_to_string(file)?;
    let current = endpoint.current_refresh_token();
    let file_is_current = current.as_deref() == Some(on_disk.trim());
    let stats = auth.stats();
    println!();
    println!("requests:                     {REQUESTS}, {failures} failed");
    println!(
        "token requests (refreshes):   {}, {} ahead of expiry",
        stats.token_requests, stats.refresh_ahead
    );
    println!(
        "rotations:                    {} by the server, {} written to the file",
        endpoint.rotations(),
        rotations.load(Ordering::SeqCst)
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

/// Writes the refresh token to `path` through a temporary file and a rename, so that a crash
/// leaves the old token or the new one, never half of one. On Unix the file is private (0600).
fn save(path: &Path, refresh_token: &str) -> std::io::Result<()> {
    let mut temporary = PathBuf::from(path);
    temporary.set_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&temporary)?;
    file.write_all(refresh_token.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}
