//! The shared store (feature `redis`), on a real `redis-server` on 127.0.0.1 and the loopback
//! token endpoint:
//!
//! - `fleet_cold_start`: 100 caches (each its own layer and `RedisStore`, as 100 processes would
//!   have) ask for a token at the same moment, the endpoint taking 50 ms: wall time until all
//!   100 have one; the token requests per round are printed (`fleet cold start: …`).
//! - `refresh`: one process's refresh that adopts the token another stored, against one that
//!   fetches it from the loopback endpoint (answering at once).
//! - Redis operations, counted (printed before the timed benches, `fleet operations: …`): the
//!   `TokenStore` calls of a refresh that fetches, of one that adopts, and of a process waiting
//!   for another's fetch, per second; with the commands Redis executed (`INFO commandstats`,
//!   script internals included).
//! - `refresh/adopts_from_cluster` and `fleet_cold_start_100_caches_cluster`: the same through
//!   a Redis Cluster of three primaries (`RedisStore::cluster`, `testing::RedisCluster`).
//! - `recovery_after_restart`: `redis-server` stopped and started again on its port: wall time
//!   until a store that was connected answers again (it reconnects at most once a second).
//!
//! ```text
//! cargo bench --features redis --bench fleet
//! ```

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tower_cognito_auth::CognitoAuthLayer;

use tower::BoxError;
use tower_cognito_auth::BoxFuture;
use tower_cognito_auth::store::{RedisStore, Stored, TokenStore};
use tower_cognito_auth::testing::{RedisCluster, RedisServer, TokenEndpoint};

const FLEET: usize = 100;

fn layer(endpoint: &TokenEndpoint, store: Option<RedisStore>) -> CognitoAuthLayer {
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut builder = CognitoAuthLayer::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret(endpoint.client_secret())
        .http_client(http);
    if let Some(store) = store {
        builder = builder.shared_store(store);
    }
    builder.build().expect("a valid layer")
}

/// A layer asking for `scope`, through `store`.
fn layer_with_scope(endpoint: &TokenEndpoint, store: RedisStore, scope: &str) -> CognitoAuthLayer {
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    CognitoAuthLayer::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret(endpoint.client_secret())
        .scope(scope)
        .http_client(http)
        .shared_store(store)
        .build()
        .expect("a valid layer")
}

async fn flush(redis: &RedisServer) {
    let client = redis::Client::open(redis.url()).expect("a Redis URL");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis answers");
    let () = redis::cmd("FLUSHALL")
        .query_async(&mut connection)
        .await
        .expect("FLUSHALL");
}

/// A `RedisStore` that counts the operations made through it.
#[derive(Clone)]
struct Counted(RedisStore, Arc<AtomicU64>);

impl Counted {
    fn new(redis: &RedisServer) -> Self {
        Counted(
            RedisStore::new(redis.url()).expect("a Redis URL"),
            Arc::default(),
        )
    }
    fn count(&self) -> u64 {
        self.1.load(Ordering::SeqCst)
    }
    fn tick(&self) {
        self.1.fetch_add(1, Ordering::SeqCst);
    }
}

impl TokenStore for Counted {
    fn load(&self, key: &str) -> BoxFuture<'_, Result<Option<Stored>, BoxError>> {
        self.tick();
        self.0.load(key)
    }
    fn save_if_longer(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, BoxError>> {
        self.tick();
        self.0.save_if_longer(key, value, ttl)
    }
    fn remove_if_prefix(&self, key: &str, prefix: &[u8]) -> BoxFuture<'_, Result<bool, BoxError>> {
        self.tick();
        self.0.remove_if_prefix(key, prefix)
    }
    fn remove_if_equal(&self, key: &str, value: &[u8]) -> BoxFuture<'_, Result<bool, BoxError>> {
        self.tick();
        self.0.remove_if_equal(key, value)
    }
    fn try_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, BoxError>> {
        self.tick();
        self.0.try_lease(key, holder, ttl)
    }
    fn release_lease(&self, key: &str, holder: &str) -> BoxFuture<'_, Result<(), BoxError>> {
        self.tick();
        self.0.release_lease(key, holder)
    }
    fn watch(
        &self,
        key: &str,
        seen: Option<u64>,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<u64, BoxError>> {
        // A wait is an operation only when it subscribes (a command to Redis); later waits
        // are local until a publication or their timeout.
        if seen.is_none() {
            self.tick();
        }
        self.0.watch(key, seen, timeout)
    }
}

fn counted_layer(endpoint: &TokenEndpoint, store: Counted) -> CognitoAuthLayer {
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    CognitoAuthLayer::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret(endpoint.client_secret())
        .http_client(http)
        .shared_store(store)
        .build()
        .expect("a valid layer")
}

/// Every command Redis executed so far (`INFO commandstats`, script internals included, `INFO`
/// excluded).
async fn commands(redis: &RedisServer) -> u64 {
    let client = redis::Client::open(redis.url()).expect("a Redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis answers");
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .expect("INFO");
    info.lines()
        .filter(|line| line.starts_with("cmdstat_") && !line.starts_with("cmdstat_info:"))
        .filter_map(|line| {
            line.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Counts the Redis operations of a refresh that fetches, one that adopts, and a waiting
/// process per second, and prints them.
async fn count_operations(redis: &RedisServer) {
    flush(redis).await;
    let endpoint = TokenEndpoint::start().await.expect("a token endpoint");
    let fetcher = Counted::new(redis);
    let before = commands(redis).await;
    counted_layer(&endpoint, fetcher.clone())
        .token()
        .await
        .expect("a token");
    let fetch_commands = commands(redis).await - before;
    let adopter = Counted::new(redis);
    let before = commands(redis).await;
    counted_layer(&endpoint, adopter.clone())
        .token()
        .await
        .expect("a token");
    let adopt_commands = commands(redis).await - before;
    eprintln!(
        "fleet operations: a refresh that fetches {} ({fetch_commands} commands), one that adopts {} ({adopt_commands} commands)",
        fetcher.count(),
        adopter.count()
    );

    // A process waiting 5 s for another's fetch.
    flush(redis).await;
    let fetch = Duration::from_secs(6);
    endpoint.set_delay(fetch);
    let holder = counted_layer(&endpoint, Counted::new(redis));
    let held = tokio::spawn(async move { holder.token().await });
    let sent = Instant::now();
    while endpoint.request_count() < 2 && sent.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let waiter = Counted::new(redis);
    let layer = counted_layer(&endpoint, waiter.clone());
    let waited = tokio::spawn(async move { layer.token().await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let window = Duration::from_secs(4);
    let (ops, before) = (waiter.count(), commands(redis).await);
    tokio::time::sleep(window).await;
    let (ops, spent) = (waiter.count() - ops, commands(redis).await - before);
    held.await.expect("a task").expect("a token");
    waited.await.expect("a task").expect("a token");
    endpoint.set_delay(Duration::ZERO);
    eprintln!(
        "fleet operations: a waiting process {:.1} per second ({:.1} commands per second), over {window:?}",
        ops as f64 / window.as_secs_f64(),
        spent as f64 / window.as_secs_f64()
    );
}

fn fleet(c: &mut Criterion) {
    let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(count_operations(&redis));
    let endpoint = runtime
        .block_on(
            TokenEndpoint::builder()
                .delay(Duration::from_millis(50))
                .start(),
        )
        .expect("a token endpoint");

    c.bench_function("fleet_cold_start_100_caches", |b| {
        b.to_async(&runtime).iter_custom(|rounds| {
            let (endpoint, redis) = (endpoint.clone(), &redis);
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..rounds {
                    flush(redis).await;
                    let layers: Vec<_> = (0..FLEET)
                        .map(|_| {
                            let store = RedisStore::new(redis.url()).expect("a Redis URL");
                            layer(&endpoint, Some(store))
                        })
                        .collect();
                    let before = endpoint.tokens_issued();
                    let start = Instant::now();
                    let tasks: Vec<_> = layers
                        .into_iter()
                        .map(|layer| tokio::spawn(async move { layer.token().await }))
                        .collect();
                    for task in tasks {
                        task.await.expect("a task").expect("a token");
                    }
                    let elapsed = start.elapsed();
                    total += elapsed;
                    eprintln!(
                        "fleet cold start: {FLEET} caches, {} token request(s), {elapsed:?} \
                         (goal: 2 x 50 ms endpoint + a few round trips)",
                        endpoint.tokens_issued() - before
                    );
                }
                total
            }
        });
    });

    let quick = runtime
        .block_on(TokenEndpoint::start())
        .expect("a token endpoint");
    let store = RedisStore::new(redis.url()).expect("a Redis URL");
    // One process stores a token; every measured refresh below adopts it.
    runtime
        .block_on(layer(&quick, Some(store.clone())).token())
        .expect("a stored token");
    let mut group = c.benchmark_group("refresh");
    group.bench_function("adopts_from_redis", |b| {
        b.to_async(&runtime).iter(|| {
            let layer = layer(&quick, Some(store.clone()));
            async move {
                layer.token().await.expect("a token");
                assert_eq!(layer.stats().adopted, 1);
            }
        });
    });
    group.bench_function("fetches_from_endpoint", |b| {
        b.to_async(&runtime).iter(|| {
            let layer = layer(&quick, None);
            async move {
                layer.token().await.expect("a token");
            }
        });
    });
    // The same adoption through a cluster of three primaries (`RedisStore::cluster`).
    let cluster = RedisCluster::start(3, 0).unwrap_or_else(|e| panic!("{e}"));
    let cluster_store = RedisStore::cluster(cluster.urls()).expect("seed URLs");
    runtime
        .block_on(layer(&quick, Some(cluster_store.clone())).token())
        .expect("a stored token");
    group.bench_function("adopts_from_cluster", |b| {
        b.to_async(&runtime).iter(|| {
            let layer = layer(&quick, Some(cluster_store.clone()));
            async move {
                layer.token().await.expect("a token");
                assert_eq!(layer.stats().adopted, 1);
            }
        });
    });
    group.finish();

    // The cold start again, through the cluster: each cache its own cluster client (a
    // connection per primary, and a subscriber on one seed, the seeds given in turn).
    c.bench_function("fleet_cold_start_100_caches_cluster", |b| {
        b.to_async(&runtime).iter_custom(|rounds| {
            let (endpoint, cluster) = (endpoint.clone(), &cluster);
            async move {
                let mut total = Duration::ZERO;
                for round in 0..rounds {
                    // A token of its own per round: scopes make another key.
                    let scope = format!("round/{round}-{}", fastrand::u64(..));
                    let layers: Vec<_> = (0..FLEET)
                        .map(|i| {
                            let mut seeds = cluster.urls();
                            let turn = i % seeds.len();
                            seeds.rotate_left(turn);
                            let store = RedisStore::cluster(seeds).expect("seed URLs");
                            layer_with_scope(&endpoint, store, &scope)
                        })
                        .collect();
                    let before = endpoint.tokens_issued();
                    let start = Instant::now();
                    let tasks: Vec<_> = layers
                        .into_iter()
                        .map(|layer| tokio::spawn(async move { layer.token().await }))
                        .collect();
                    for task in tasks {
                        task.await.expect("a task").expect("a token");
                    }
                    let elapsed = start.elapsed();
                    total += elapsed;
                    eprintln!(
                        "fleet cold start on a cluster: {FLEET} caches, {} token request(s), \
                         {elapsed:?}",
                        endpoint.tokens_issued() - before
                    );
                }
                total
            }
        });
    });

    // A restart of Redis on its port: how long until a connected store answers again.
    let redis = std::sync::Mutex::new(redis);
    let probe = RedisStore::new(redis.lock().expect("not poisoned").url()).expect("a Redis URL");
    c.bench_function("recovery_after_restart", |b| {
        b.to_async(&runtime).iter_custom(|rounds| {
            let probe = probe.clone();
            let redis = &redis;
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..rounds {
                    probe.load("probe").await.expect("connected");
                    redis
                        .lock()
                        .expect("not poisoned")
                        .restart()
                        .expect("Redis restarts");
                    let start = Instant::now();
                    while probe.load("probe").await.is_err() {
                        assert!(start.elapsed() < Duration::from_secs(10), "never recovered");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    let elapsed = start.elapsed();
                    eprintln!(
                        "fleet recovery: the store answers {elapsed:?} after Redis restarted"
                    );
                    total += elapsed;
                }
                total
            }
        });
    });
}

criterion_group! {
    name = benches;
    config = common::config(10, Duration::from_secs(3));
    targets = fleet
}
criterion_main!(benches);
