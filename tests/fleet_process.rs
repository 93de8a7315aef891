//! A lease holder that is a real process, killed with `SIGKILL` while its token request hangs
//! (issue #11): another process takes the lease over once it lapses, and gets the token within
//! the refresh deadline.
//!
//! This test target has no libtest harness (`harness = false` in Cargo.toml): the same binary
//! runs again as the worker process when `FLEET_WORKER` is set, and prints libtest's summary
//! line itself otherwise. Needs `redis-server` on `PATH` (`apt-get install -y redis-server`).

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_cognito_auth::CognitoAuthLayer;
use tower_cognito_auth::store::RedisStore;
use tower_cognito_auth::testing::{RedisServer, TokenEndpoint};

const WORKER: &str = "FLEET_WORKER";
const SECRET: &str = "FLEET_WORKER_SECRET";

/// The fleet's lease in `redis_url` (the only key ending in `:lease`): its holder id and its
/// remaining time to live. `None` when nobody holds it.
async fn lease(redis_url: &str) -> Option<(String, Duration)> {
    let client = redis::Client::open(redis_url).expect("a Redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("a connection to the test's Redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("tower-cognito-auth:*:lease")
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    assert!(keys.len() <= 1, "one lease at most: {keys:?}");
    let key = keys.first()?;
    let holder: Option<String> = redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("GET");
    let pttl: i64 = redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    Some((holder?, Duration::from_millis(u64::try_from(pttl).ok()?)))
}

fn layer(token_url: &str, client_id: &str, secret: &str, redis_url: &str) -> CognitoAuthLayer {
    CognitoAuthLayer::builder()
        .token_url(token_url)
        .client_id(client_id)
        .client_secret(secret)
        .http_client(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>())
        .shared_store(RedisStore::new(redis_url).expect("a Redis URL"))
        .build()
        .expect("a valid layer")
}

/// The worker: asks for a token, which takes the fleet's lease and then hangs at the endpoint
/// until the parent kills this process.
fn worker(config: &str) {
    let mut parts = config.split(' ');
    let (Some(token_url), Some(client_id), Some(redis_url)) =
        (parts.next(), parts.next(), parts.next())
    else {
        panic!("{WORKER} holds: token URL, client id, Redis URL");
    };
    let secret = std::env::var(SECRET).expect("the client secret in the environment");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let layer = layer(token_url, client_id, &secret, redis_url);
        let _ = layer.token().await;
    });
}

/// Kills the worker when the test ends, whatever happens.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn a_killed_lease_holder_is_replaced() {
    let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let endpoint = TokenEndpoint::builder()
            .delay(Duration::from_secs(3600))
            .start()
            .await
            .expect("a token endpoint");
        let config = format!(
            "{} {} {}",
            endpoint.token_url(),
            endpoint.client_id(),
            redis.url()
        );
        let child = Command::new(std::env::current_exe().expect("this test's binary"))
            .env(WORKER, config)
            .env(SECRET, endpoint.client_secret())
            .spawn()
            .expect("the worker process starts");
        let mut worker = Killed(child);
        // The worker holds the lease once its token request reached the endpoint.
        for _ in 0..1_000 {
            if endpoint.request_count() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(endpoint.request_count(), 1, "the worker asked for a token");
        // Nothing but the worker has touched this Redis: the lease it holds is the worker's.
        let (holder, left) = lease(&redis.url())
            .await
            .expect("the worker holds the fleet's lease while its token request hangs");
        worker.0.kill().expect("SIGKILL");
        worker.0.wait().expect("the worker is gone");
        let killed_at = Instant::now();
        endpoint.set_delay(Duration::ZERO);
        // Killed, it released nothing: its lease stays until it lapses.
        let (still, _) = lease(&redis.url())
            .await
            .expect("the killed worker's lease outlives it");
        assert_eq!(still, holder, "the same holder");

        let other = layer(
            &endpoint.token_url(),
            endpoint.client_id(),
            endpoint.client_secret(),
            &redis.url(),
        );
        let start = Instant::now();
        let token = other.token().await.expect("another process took over");
        let waited = start.elapsed();
        println!("the lease lapsed and was taken over after {waited:?}");
        assert_eq!(endpoint.last_token().as_deref(), Some(token.secret()));
        let stats = other.stats();
        assert_eq!(stats.lease_fetches, 1, "it fetched as the new lease holder");
        assert_eq!(stats.store_fallbacks, 0, "not by giving up on the store");
        assert_eq!(endpoint.request_count(), 2);
        // Taken over when the killed worker's lease lapsed, not before (the rest of the
        // lease when it was read, less the time between that read and the kill).
        let lapsed = killed_at.elapsed();
        assert!(
            lapsed + Duration::from_millis(100) >= left,
            "took over {lapsed:?} after the kill, the lease had {left:?} left"
        );
        assert!(
            lease(&redis.url()).await.is_none(),
            "the new holder released it"
        );
    });
}

fn main() {
    if let Ok(config) = std::env::var(WORKER) {
        worker(&config);
        return;
    }
    match std::panic::catch_unwind(a_killed_lease_holder_is_replaced) {
        Ok(()) => {
            println!("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out")
        }
        Err(_) => {
            println!(
                "test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out"
            );
            std::process::exit(1);
        }
    }
}
