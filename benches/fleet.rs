//! The shared store (feature `redis`), on a real `redis-server` on 127.0.0.1 and the loopback
//! token endpoint:
//!
//! - `fleet_cold_start`: 100 caches (each its own layer and `RedisStore`, as 100 processes would
//!   have) ask for a token at the same moment, the endpoint taking 50 ms: wall time until all
//!   100 have one; the token requests per round are printed (`fleet cold start: …`).
//! - `refresh`: one process's refresh that adopts the token another stored, against one that
//!   fetches it from the loopback endpoint (answering at once).
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
use tower_cognito_auth::CognitoAuthLayer;
use tower_cognito_auth::store::RedisStore;
use tower_cognito_auth::testing::{RedisServer, TokenEndpoint};

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

fn fleet(c: &mut Criterion) {
    let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
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
                        "fleet cold start: {FLEET} caches, {} token request(s), {elapsed:?}",
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
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config(10, Duration::from_secs(3));
    targets = fleet
}
criterion_main!(benches);
