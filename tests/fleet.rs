//! One token per fleet (issue #11): many layers, each with its own cache and its own
//! `RedisStore` as separate processes would have, sharing one real `redis-server` on
//! 127.0.0.1, one loopback token endpoint and one protected API.
//!
//! A lease holder killed with `SIGKILL` is in `tests/fleet_process.rs`, which runs a real
//! worker process.
//!
//! These tests need `redis-server` on `PATH` (Debian: `apt-get install -y redis-server`;
//! `.ci/run` installs it). Without it they fail and say so. Redis keeps real time, so these
//! tests run on the real clock; each takes a few seconds at most.
#![cfg(all(feature = "redis", feature = "test-util"))]

mod common;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt as _};
use tower_cognito_auth::store::RedisStore;
use tower_cognito_auth::testing::{ProtectedApi, RedisServer, TokenEndpoint};
use tower_cognito_auth::{CognitoAuthLayer, CognitoAuthLayerBuilder};

/// `RedisStore`'s default command timeout and connect timeout (see its docs).
const STORE_TIMEOUT: Duration = Duration::from_millis(200);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

fn redis() -> RedisServer {
    RedisServer::start().unwrap_or_else(|e| panic!("{e}"))
}

/// A layer as one process of the fleet would build it: its own cache, its own store client.
fn member(endpoint: &TokenEndpoint, redis_url: &str) -> CognitoAuthLayer {
    builder(endpoint)
        .shared_store(RedisStore::new(redis_url).unwrap())
        .build()
        .unwrap()
}

fn builder(endpoint: &TokenEndpoint) -> CognitoAuthLayerBuilder {
    CognitoAuthLayer::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret(endpoint.client_secret())
        .http_client(common::http())
}

async fn get(layer: &CognitoAuthLayer, api: &ProtectedApi) -> StatusCode {
    match try_get(layer, api).await {
        Ok(status) => status,
        Err(error) => panic!("request failed: {error}"),
    }
}

/// A request through `layer`: its status, or why it failed.
async fn try_get(layer: &CognitoAuthLayer, api: &ProtectedApi) -> Result<StatusCode, String> {
    let client = ServiceBuilder::new()
        .layer(layer.clone())
        .service(common::http());
    let request = Request::get(format!("{}/wallets", api.url()))
        .body(Full::<Bytes>::default())
        .unwrap();
    match client.oneshot(request).await {
        Ok(response) => Ok(response.status()),
        Err(error) => Err(error.to_string()),
    }
}

/// Every command the test's Redis has executed so far (`INFO commandstats`, script internals
/// included, the `INFO` calls themselves excluded).
async fn redis_commands(redis: &RedisServer) -> u64 {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .filter(|line| line.starts_with("cmdstat_") && !line.starts_with("cmdstat_info:"))
        .filter_map(|line| {
            let calls = line.split("calls=").nth(1)?;
            calls.split(',').next()?.parse::<u64>().ok()
        })
        .sum()
}

/// 20 processes start together: one token request, and the 19 waiters are woken by the
/// holder's write rather than polling through its 500 ms fetch. A waiter's part (script
/// internals counted): the load script twice before it waits (3 commands each), the refusal
/// record's (3), the lease's script (2: `EVALSHA`, `GET`), `SUBSCRIBE`, and the read that adopts
/// (3): 15, and at most one `NOSCRIPT` round (an `EVAL`) per script. Polling every 10 to 50 ms
/// instead (pub/sub broken) costs each waiter 5 commands per poll, some 50 over the fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_of_twenty_processes_makes_one_token_request() {
    /// The most one process may cost Redis at a cold start when it is woken by the write.
    const PER_PROCESS: u64 = 20;
    let redis = redis();
    let endpoint = TokenEndpoint::builder()
        .delay(Duration::from_millis(500))
        .start()
        .await
        .unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    let fleet: Vec<_> = (0..20).map(|_| member(&endpoint, &redis.url())).collect();
    let requests: Vec<_> = fleet
        .iter()
        .map(|layer| {
            let (layer, api) = (layer.clone(), api.clone());
            tokio::spawn(async move { get(&layer, &api).await })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(
        endpoint.tokens_issued(),
        1,
        "one token request for the fleet"
    );
    let lease_fetches: u64 = fleet.iter().map(|l| l.stats().lease_fetches).sum();
    let adopted: u64 = fleet.iter().map(|l| l.stats().adopted).sum();
    assert_eq!(lease_fetches, 1);
    assert_eq!(adopted, 19);
    // Defect 9 of issue 21: the stats tell refreshes from token requests sent, so that a
    // dashboard shows what the store saved.
    let sent: u64 = fleet.iter().map(|l| l.stats().token_requests).sum();
    let refreshes: u64 = fleet.iter().map(|l| l.stats().refreshes).sum();
    assert_eq!((sent, refreshes), (1, 20), "token requests sent, refreshes");
    let commands = redis_commands(&redis).await;
    assert!(
        commands <= 20 * PER_PROCESS,
        "{commands} Redis commands for 20 processes: the waiters polled"
    );
    println!("cold start of 20 processes: {commands} Redis commands");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_of_a_fleet_cost_one_request_per_refresh_not_per_process() {
    let redis = redis();
    let lifetime = Duration::from_secs(2);
    let endpoint = TokenEndpoint::builder()
        .lifetime(lifetime)
        .start()
        .await
        .unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    let fleet: Vec<_> = (0..6).map(|_| member(&endpoint, &redis.url())).collect();
    let run_for = Duration::from_secs(6);
    let workers: Vec<_> = fleet
        .iter()
        .map(|layer| {
            let (layer, api) = (layer.clone(), api.clone());
            tokio::spawn(async move {
                let start = std::time::Instant::now();
                let (mut ok, mut failed) = (0u32, 0u32);
                while start.elapsed() < run_for {
                    if get(&layer, &api).await == StatusCode::OK {
                        ok += 1;
                    } else {
                        failed += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (ok, failed)
            })
        })
        .collect();
    let mut total = 0;
    for worker in workers {
        let (ok, failed) = worker.await.unwrap();
        assert_eq!(failed, 0);
        total += ok;
    }
    assert!(total > 6 * 100, "steady traffic: {total} requests");
    assert_eq!(
        api.rejected_count(),
        0,
        "no request left with an expired token"
    );
    // Tokens are renewed at half their life (refresh-ahead is cut to half for short tokens),
    // by whichever process sees its copy turn stale first: about one token request per second
    // over 6 s for the whole fleet. Each process on its own would make 6 times as many.
    let issued = endpoint.tokens_issued();
    let lifetimes = (run_for.as_secs() / lifetime.as_secs()) as usize;
    println!("6 processes, 2 s tokens, 6 s: {issued} token requests ({lifetimes} lifetimes)");
    // One request per renewal: the first fetch, then one each time the first copy turns
    // stale, at half its life less at most the largest jitter (a tenth of it): 0.8 s here.
    let earliest_renewal = lifetime / 2 - lifetime / 10;
    let renewals = 1 + (run_for.as_millis() / earliest_renewal.as_millis()) as usize;
    assert!(
        issued <= renewals,
        "{issued} token requests, at most {renewals} renewals"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_costs_the_fleet_one_token_request() {
    let redis = redis();
    let endpoint = TokenEndpoint::start().await.unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    let fleet: Vec<_> = (0..6)
        .map(|_| {
            builder(&endpoint)
                .shared_store(RedisStore::new(redis.url()).unwrap())
                .build()
                .unwrap()
        })
        .collect();
    for layer in &fleet {
        assert_eq!(get(layer, &api).await, StatusCode::OK);
    }
    assert_eq!(endpoint.tokens_issued(), 1);
    api.revoke_current();
    let requests: Vec<_> = fleet
        .iter()
        .map(|layer| {
            let (layer, api) = (layer.clone(), api.clone());
            tokio::spawn(async move { get(&layer, &api).await })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::OK, "replayed once");
    }
    assert_eq!(endpoint.tokens_issued(), 2, "exactly one new token request");
    let replays: u64 = fleet.iter().map(|l| l.stats().replays).sum();
    assert_eq!(replays, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_and_back_never_fails_a_request() {
    let mut redis = redis();
    let endpoint = TokenEndpoint::builder()
        .lifetime(Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    let fleet: Vec<_> = (0..3).map(|_| member(&endpoint, &redis.url())).collect();
    let traffic = |fleet: Vec<CognitoAuthLayer>, api: ProtectedApi, run_for: Duration| async move {
        let start = std::time::Instant::now();
        let mut slowest = Duration::ZERO;
        while start.elapsed() < run_for {
            for layer in &fleet {
                let sent = std::time::Instant::now();
                assert_eq!(get(layer, &api).await, StatusCode::OK);
                slowest = slowest.max(sent.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        slowest
    };
    let sum = |fleet: &[CognitoAuthLayer], f: fn(&tower_cognito_auth::Stats) -> u64| {
        fleet.iter().map(|l| f(&l.stats())).sum::<u64>()
    };
    traffic(fleet.clone(), api.clone(), Duration::from_secs(2)).await;
    let before = (
        sum(&fleet, |s| s.lease_fetches),
        sum(&fleet, |s| s.store_fallbacks),
        endpoint.tokens_issued() as u64,
    );
    redis.stop();
    let slowest_down = traffic(fleet.clone(), api.clone(), Duration::from_secs(3)).await;
    let fallbacks = sum(&fleet, |s| s.store_fallbacks) - before.1;
    assert!(fallbacks > 0, "the processes fetched for themselves");
    // While Redis is down no lease is taken: every token request is a fallback.
    assert_eq!(
        (
            sum(&fleet, |s| s.lease_fetches) - before.0,
            endpoint.tokens_issued() as u64 - before.2
        ),
        (0, fallbacks),
        "lease fetches, token requests while Redis was down"
    );
    redis.restart().unwrap();
    let slowest_back = traffic(fleet.clone(), api.clone(), Duration::from_secs(3)).await;
    // While Redis is down, a refresh gives up on the store at its first failed operation
    // (refused at once, or at most the store's timeout, 200 ms by default, while a connection
    // attempt is in flight), then fetches from the loopback endpoint: generous room for that
    // fetch and the API's answer on a loaded machine, and none for a second store timeout.
    let down_bound = STORE_TIMEOUT + Duration::from_millis(500);
    // Once it is back, a refresh makes at most 6 store operations (each within the store's
    // timeout; a connection attempt is waited for within it), and a waiter subscribes once
    // (within the connect timeout, 1 s by default, and one store timeout): the same room.
    let back_bound = 7 * STORE_TIMEOUT + CONNECT_TIMEOUT + Duration::from_millis(500);
    println!(
        "slowest request while Redis was down: {slowest_down:?} (bound {down_bound:?}); \
         after it came back: {slowest_back:?} (bound {back_bound:?})"
    );
    assert!(
        slowest_down < down_bound,
        "a request waited {slowest_down:?} while Redis was down"
    );
    assert!(
        slowest_back < back_bound,
        "a request waited {slowest_back:?} after Redis came back"
    );
    // Back together: after the store returns, the last renewal is shared again. One process
    // fetches; the others adopt.
    let adopted_before: u64 = fleet.iter().map(|l| l.stats().adopted).sum();
    traffic(fleet.clone(), api.clone(), Duration::from_secs(2)).await;
    let adopted_after: u64 = fleet.iter().map(|l| l.stats().adopted).sum();
    assert!(
        adopted_after > adopted_before,
        "the fleet shares one token again"
    );
    // Every token request was a lease fetch or a fallback, nothing else.
    assert_eq!(
        endpoint.tokens_issued() as u64,
        sum(&fleet, |s| s.lease_fetches) + sum(&fleet, |s| s.store_fallbacks)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_scope_sets_get_two_tokens() {
    let redis = redis();
    let endpoint = TokenEndpoint::builder().jwt(true).start().await.unwrap();
    let read = builder(&endpoint)
        .scope("wallets/read")
        .shared_store(RedisStore::new(redis.url()).unwrap())
        .build()
        .unwrap();
    let write = builder(&endpoint)
        .scope("wallets/write")
        .shared_store(RedisStore::new(redis.url()).unwrap())
        .build()
        .unwrap();
    let read_token = read.token().await.unwrap();
    let write_token = write.token().await.unwrap();
    assert_ne!(read_token.secret(), write_token.secret());
    assert_eq!(endpoint.tokens_issued(), 2);
    let scopes: Vec<_> = endpoint
        .requests()
        .iter()
        .map(|r| r.form_value("scope"))
        .collect();
    assert_eq!(
        scopes,
        [
            Some("wallets/read".to_owned()),
            Some("wallets/write".to_owned())
        ]
    );
    // A third process reading wallets adopts the read token, never the write one.
    let another_reader = builder(&endpoint)
        .scope("wallets/read")
        .shared_store(RedisStore::new(redis.url()).unwrap())
        .build()
        .unwrap();
    assert_eq!(
        another_reader.token().await.unwrap().secret(),
        read_token.secret()
    );
    assert_eq!(endpoint.tokens_issued(), 2);
}

#[test]
fn a_source_that_cannot_be_shared_is_refused() {
    use tower_cognito_auth::{AccessToken, BoxFuture, Error, ErrorKind, Token, TokenSource};
    struct Anonymous;
    impl TokenSource for Anonymous {
        fn fetch(&self) -> BoxFuture<'_, Result<Token, Error>> {
            Box::pin(async {
                let at = tokio::time::Instant::now() + Duration::from_secs(3600);
                Ok(Token::new(AccessToken::new("anonymous")?, at))
            })
        }
    }
    let error = CognitoAuthLayer::builder()
        .token_source(Anonymous)
        .shared_store(RedisStore::new("redis://127.0.0.1:1").unwrap())
        .build()
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidConfig);
    assert!(error.to_string().contains("shared_identity"), "{error}");
}

/// Defect 1 of issue 21: the lease comes from the cache's `refresh_deadline`. A holder that
/// died mid-fetch leaves its lease (a third of the deadline) and nobody extends it; another
/// process with a 3 s refresh deadline still gets its token on its first refresh, inside that
/// deadline (with a fixed 10 s lease it waited until its refresh timed out, and the request
/// failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_refresh_deadline_leaves_a_waiter_time_to_fetch() {
    let redis = redis();
    let endpoint = TokenEndpoint::builder()
        .delay(Duration::from_secs(3600))
        .start()
        .await
        .unwrap();
    let deadline = Duration::from_secs(3);
    let member = || {
        builder(&endpoint)
            .refresh_deadline(deadline)
            .shared_store(RedisStore::new(redis.url()).unwrap())
            .build()
            .unwrap()
    };
    let holder = member();
    let hanging = tokio::spawn(async move { holder.token().await });
    for _ in 0..500 {
        if endpoint.request_count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(endpoint.request_count(), 1, "the holder's request hangs");
    // The holder dies: its lease stays for its time to live, and is no longer its own to
    // extend or release.
    let mut raw = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let leases: Vec<String> = redis::cmd("KEYS")
        .arg("*:lease")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(leases.len(), 1, "{leases:?}");
    // Its id replaced, the time to live it had kept (at most the lease, a third of the
    // deadline): its watchdog finds the lease no longer its own and stops extending it.
    let _: () = redis::cmd("SET")
        .arg(&leases[0])
        .arg("a-dead-holder")
        .arg("KEEPTTL")
        .query_async(&mut raw)
        .await
        .unwrap();
    hanging.abort();
    endpoint.set_delay(Duration::ZERO);
    let other = member();
    let start = std::time::Instant::now();
    let token = other.token().await;
    let took = start.elapsed();
    assert!(token.is_ok(), "{token:?} after {took:?}");
    assert!(took < deadline, "{took:?}");
    assert_eq!(other.stats().lease_fetches, 1, "took the lease over");
}

/// `build()` refuses a refresh deadline too short to share a token through a store.
#[test]
fn a_refresh_deadline_too_short_for_a_store_is_refused() {
    let endpoint_url = "http://127.0.0.1:1/oauth2/token";
    let error = CognitoAuthLayer::builder()
        .token_url(endpoint_url)
        .client_id("id")
        .client_secret("secret")
        .http_client(common::http())
        .refresh_deadline(Duration::from_millis(500))
        .shared_store(RedisStore::new("redis://127.0.0.1:1").unwrap())
        .build()
        .unwrap_err();
    assert_eq!(error.kind(), tower_cognito_auth::ErrorKind::InvalidConfig);
    assert!(error.to_string().contains("refresh_deadline"), "{error}");
}

/// Defect 1 of issue 29: a token endpoint whose answers take longer than the lease (and
/// longer than half the refresh deadline) costs the fleet one token request, and fails no
/// caller. Refresh deadline 6 s: the lease is 2 s; each answer takes 4 s. Before the fix the
/// lease lapsed while its holder fetched, a second process took it, and the rest fell back at
/// half the deadline: one token request per process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_slower_than_the_lease_costs_the_fleet_one_request() {
    let redis = redis();
    let endpoint = TokenEndpoint::builder()
        .delay(Duration::from_secs(4))
        .start()
        .await
        .unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    let fleet: Vec<_> = (0..8)
        .map(|_| {
            builder(&endpoint)
                .refresh_deadline(Duration::from_secs(6))
                .shared_store(RedisStore::new(redis.url()).unwrap())
                .build()
                .unwrap()
        })
        .collect();
    let requests: Vec<_> = fleet
        .iter()
        .map(|layer| {
            let (layer, api) = (layer.clone(), api.clone());
            tokio::spawn(async move { try_get(&layer, &api).await })
        })
        .collect();
    let mut failed = Vec::new();
    for request in requests {
        match request.await.unwrap() {
            Ok(StatusCode::OK) => {}
            Ok(status) => failed.push(status.to_string()),
            Err(error) => failed.push(error),
        }
    }
    let lease_fetches: u64 = fleet.iter().map(|l| l.stats().lease_fetches).sum();
    let fallbacks: u64 = fleet.iter().map(|l| l.stats().store_fallbacks).sum();
    let adopted: u64 = fleet.iter().map(|l| l.stats().adopted).sum();
    assert_eq!(
        (endpoint.request_count(), failed.as_slice()),
        (1, [].as_slice()),
        "token requests, failed requests (lease fetches {lease_fetches}, fallbacks \
         {fallbacks}, adopted {adopted})"
    );
    assert_eq!((lease_fetches, fallbacks, adopted), (1, 0, 7));
}

/// Defect 6 of issue 29: a refresh deadline without bound (`Duration::MAX`) still shares the
/// token. Before the fix the lease was a third of it, a `PX` Redis refuses, and every refresh
/// fell back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbounded_refresh_deadline_still_shares_the_token() {
    let redis = redis();
    let endpoint = TokenEndpoint::start().await.unwrap();
    let fleet: Vec<_> = (0..3)
        .map(|_| {
            builder(&endpoint)
                .refresh_deadline(Duration::MAX)
                .shared_store(RedisStore::new(redis.url()).unwrap())
                .build()
                .unwrap()
        })
        .collect();
    for layer in &fleet {
        layer.token().await.unwrap();
    }
    let fallbacks: u64 = fleet.iter().map(|l| l.stats().store_fallbacks).sum();
    let adopted: u64 = fleet.iter().map(|l| l.stats().adopted).sum();
    assert_eq!(
        (endpoint.tokens_issued(), fallbacks, adopted),
        (1, 0, 2),
        "token requests, fallbacks, adoptions"
    );
}
