//! The fleet on a Redis Cluster (issue 29): layers with their own caches and their own
//! `RedisStore::cluster` clients, as separate processes would have, sharing a real cluster of
//! `redis-server --cluster-enabled yes` (or `valkey-server`) on 127.0.0.1, formed by
//! `testing::RedisCluster`, one loopback token endpoint and one protected API.
//!
//! Each member is given the seeds in another order, so that the members' subscriber
//! connections (one seed each) spread over the nodes: a waiter is woken by a write on another
//! node than the one it listens to.
//!
//! These tests need `redis-server` or `valkey-server` (see `testing::RedisServer`); without
//! one they fail and say how to get it. Redis keeps real time, so they run on the real clock.
#![cfg(all(feature = "redis", feature = "test-util"))]

mod common;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt as _};
use tower_cognito_auth::store::RedisStore;
use tower_cognito_auth::testing::{ProtectedApi, RedisCluster, TokenEndpoint};
use tower_cognito_auth::{CognitoAuthLayer, Stats};

fn cluster(primaries: usize, replicas: usize) -> RedisCluster {
    RedisCluster::start(primaries, replicas).unwrap_or_else(|e| panic!("{e}"))
}

/// Member `i` of the fleet: its own cache and its own cluster client, given the seeds
/// starting at the `i`-th.
fn member(endpoint: &TokenEndpoint, seeds: &[String], i: usize) -> CognitoAuthLayer {
    let mut seeds = seeds.to_vec();
    let turn = i % seeds.len();
    seeds.rotate_left(turn);
    member_with(endpoint, RedisStore::cluster(&seeds).unwrap())
}

fn member_with(endpoint: &TokenEndpoint, store: RedisStore) -> CognitoAuthLayer {
    CognitoAuthLayer::builder()
        .token_url(endpoint.token_url())
        .client_id(endpoint.client_id())
        .client_secret(endpoint.client_secret())
        .http_client(common::http())
        .shared_store(store)
        .build()
        .unwrap()
}

/// A request through `layer`: its status, or why it failed.
async fn get(layer: &CognitoAuthLayer, api: &ProtectedApi) -> Result<StatusCode, String> {
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

/// One request from each member at the same moment (a cold start): each gets a `200`.
async fn all_at_once(fleet: &[CognitoAuthLayer], api: &ProtectedApi) {
    let requests: Vec<_> = fleet
        .iter()
        .map(|layer| {
            let (layer, api) = (layer.clone(), api.clone());
            tokio::spawn(async move { get(&layer, &api).await })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), Ok(StatusCode::OK));
    }
}

/// Every member sends a request every 20 ms for `run_for`; the requests that did not get a
/// `200`, with what they got.
fn traffic(
    fleet: &[CognitoAuthLayer],
    api: &ProtectedApi,
    run_for: Duration,
) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    let (fleet, api) = (fleet.to_vec(), api.clone());
    tokio::spawn(async move {
        let workers: Vec<_> = fleet
            .into_iter()
            .map(|layer| {
                let api = api.clone();
                tokio::spawn(async move {
                    let start = std::time::Instant::now();
                    let (mut ok, mut failed) = (0u64, Vec::new());
                    while start.elapsed() < run_for {
                        match get(&layer, &api).await {
                            Ok(StatusCode::OK) => ok += 1,
                            other => failed.push(format!("{other:?}")),
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    (ok, failed)
                })
            })
            .collect();
        let (mut ok, mut failed) = (0, Vec::new());
        for worker in workers {
            let (o, f) = worker.await.unwrap();
            ok += o;
            failed.extend(f);
        }
        (ok, failed)
    })
}

fn sum(fleet: &[CognitoAuthLayer], f: fn(&Stats) -> u64) -> u64 {
    fleet.iter().map(|l| f(&l.stats())).sum()
}

/// The most token requests a fleet sharing its tokens makes in `window` with tokens of
/// `lifetime`: one, then one each time the first copy turns stale, at half its life less at
/// most the largest jitter (a tenth of it). Each of N processes on its own would make N times
/// as many.
fn renewals(lifetime: Duration, window: Duration) -> usize {
    let earliest_renewal = lifetime / 2 - lifetime / 10;
    1 + (window.as_millis() / earliest_renewal.as_millis()) as usize
}

/// The key the fleet's token is stored under, found on the primaries.
fn token_key(urls: &[String]) -> String {
    for url in urls {
        let mut conn = redis::Client::open(url.as_str())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(2))
            .unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("tower-cognito-auth:*")
            .query(&mut conn)
            .unwrap();
        if let Some(key) = keys.into_iter().find(|k| k.ends_with('}')) {
            return key;
        }
    }
    panic!("no token stored on {urls:?}");
}

/// The store's commands the cluster's primaries `urls` executed so far: those of its protocol
/// (`docs/faults.md`), script internals included. Connection handshakes (`PING`, `CLIENT
/// SETINFO`, which Valkey counts and Redis 7.0 does not know) and the cluster client's topology
/// reads (`CLUSTER SLOTS`) are not the store's protocol, and grow with connections, not polls.
fn commands(urls: &[String]) -> u64 {
    const PROTOCOL: &[&str] = &[
        "evalsha",
        "eval",
        "get",
        "set",
        "pttl",
        "del",
        "pexpire",
        "publish",
        "subscribe",
        "script|load",
    ];
    urls.iter()
        .map(|url| {
            let mut conn = redis::Client::open(url.as_str())
                .unwrap()
                .get_connection_with_timeout(Duration::from_secs(2))
                .unwrap();
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .query(&mut conn)
                .unwrap();
            info.lines()
                .filter_map(|line| {
                    let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                    if !PROTOCOL.contains(&name) {
                        return None;
                    }
                    let calls = stats.split("calls=").nth(1)?;
                    calls.split(',').next()?.parse::<u64>().ok()
                })
                .sum::<u64>()
        })
        .sum()
}

/// 20 processes start together against a cluster: one token request, 19 adoptions, no
/// fallback (a `MOVED` not followed would make the store fall back), and the waiters are woken
/// by the holder's write on whichever node owns the token, rather than polling through its
/// 500 ms fetch (20 commands each at most; see `tests/fleet.rs` for the count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_of_twenty_processes_on_a_cluster_makes_one_token_request() {
    const PER_PROCESS: u64 = 20;
    let cluster = cluster(3, 0);
    let endpoint = TokenEndpoint::builder()
        .delay(Duration::from_millis(500))
        .start()
        .await
        .unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    let seeds = cluster.urls();
    let fleet: Vec<_> = (0..20).map(|i| member(&endpoint, &seeds, i)).collect();
    all_at_once(&fleet, &api).await;
    assert_eq!(
        endpoint.tokens_issued(),
        1,
        "one token request for the fleet"
    );
    assert_eq!(sum(&fleet, |s| s.store_fallbacks), 0, "no fallback");
    assert_eq!(sum(&fleet, |s| s.lease_fetches), 1);
    assert_eq!(sum(&fleet, |s| s.adopted), 19);
    let commands = commands(&seeds);
    assert!(
        commands <= 20 * PER_PROCESS,
        "{commands} Redis commands for 20 processes: the waiters polled"
    );
    println!("cold start of 20 processes on a cluster: {commands} Redis commands");
}

/// What happens to the token's slot while the fleet renews.
#[derive(Clone, Copy, Debug)]
enum SlotChange {
    /// A planned failover: the old primary demoted, still reachable (as ElastiCache does it).
    Demote,
    /// The primary killed, its replica taking over.
    Kill,
    /// The primary silent (frozen: connections to it hang), its replica taking over: the
    /// store's probe must notice the silence and connect to the cluster anew (the cluster
    /// client alone sends timed-out commands to the same node again and again).
    Freeze,
    /// The slot and its keys moved to another primary (an online reshard, as when a managed
    /// cluster is scaled).
    Move,
    /// The same in two steps, with the slot half moved in between until the fleet has renewed
    /// twice more; begun while a renewal holds the lease (its token request's answer held
    /// back), moving the token first: the keys are split, the token on the new primary, the
    /// lease held on the old one. The old primary answers `ASK` for the token, and for the
    /// lease once it is released: the next `SET NX` takes it on the new primary.
    HalfMove,
}

/// Renewals through a cluster while the token's slot changes hands: no request fails, none
/// leaves with an expired token, and the fleet still makes one token request per renewal, after
/// the change as before.
async fn renewals_through(change: SlotChange) {
    let mut cluster = cluster(3, 1);
    let lifetime = Duration::from_secs(2);
    let endpoint = TokenEndpoint::builder()
        .lifetime(lifetime)
        .start()
        .await
        .unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    let seeds = cluster.urls();
    let fleet: Vec<_> = (0..6).map(|i| member(&endpoint, &seeds, i)).collect();
    let before = Duration::from_secs(3);
    let after = Duration::from_secs(5);
    let first = traffic(&fleet, &api, before);
    let (ok, failed) = first.await.unwrap();
    assert!(failed.is_empty(), "failed before the change: {failed:?}");
    assert!(ok > 6 * 50, "steady traffic: {ok} requests");
    let key = token_key(&seeds);
    let old_primary = cluster.primary_url_for(&key).unwrap();
    // Requests go on while the slot changes hands.
    let during = traffic(&fleet, &api, after);
    let started = std::time::Instant::now();
    let new_primary = tokio::task::spawn_blocking({
        let endpoint = endpoint.clone();
        move || {
            // While half moved: the new primary's `ASKING` and `SET` counts.
            let mut half_moved = None;
            let new = match change {
                SlotChange::Demote => cluster.failover(&key),
                SlotChange::Kill => cluster.kill_primary(&key),
                SlotChange::Freeze => cluster.freeze_primary(&key),
                SlotChange::Move => cluster.move_slot(&key),
                SlotChange::HalfMove => half_move(&cluster, &key, &endpoint).map(|(new, seen)| {
                    half_moved = Some(seen);
                    new
                }),
            };
            (cluster, new.unwrap_or_else(|e| panic!("{e}")), half_moved)
        }
    });
    let (cluster, new_primary, half_moved) = new_primary.await.unwrap();
    let issued_at_change = endpoint.tokens_issued();
    let change_took = started.elapsed();
    let (ok, failed) = during.await.unwrap();
    assert_ne!(new_primary, old_primary);
    assert!(
        failed.is_empty(),
        "failed during the {change:?}: {failed:?}"
    );
    assert!(ok > 6 * 50, "steady traffic: {ok} requests");
    assert_eq!(
        api.rejected_count(),
        0,
        "no request left with an expired token"
    );
    let issued = endpoint.tokens_issued();
    let bound = renewals(lifetime, before + after);
    let fallbacks = sum(&fleet, |s| s.store_fallbacks);
    let asked = half_moved.map_or_else(String::new, |(asking, set)| {
        format!(", half moved: {asking} ASKING and {set} SET on the new primary")
    });
    // The `MOVED` the old primary answered, when it is alive to say.
    let moved = match change {
        SlotChange::Kill | SlotChange::Freeze => None,
        SlotChange::Demote | SlotChange::Move | SlotChange::HalfMove => {
            Some(error_count(&old_primary, "MOVED"))
        }
    };
    println!(
        "6 processes, 2 s tokens, {change:?} in {change_took:?}: {issued} token requests \
         (at most {bound}), {issued_at_change} when it ended, {fallbacks} fallbacks{}{asked}",
        moved.map_or_else(String::new, |n| format!(", {n} MOVED from the old primary"))
    );
    if let SlotChange::Move | SlotChange::HalfMove = change {
        // A moved slot: the old primary, still its members' idea of the owner, sent them on.
        assert!(moved > Some(0), "the fleet met no MOVED from {old_primary}");
    }
    if let Some((asking, set)) = half_moved {
        // While the slot was half moved, the fleet's commands reached the new primary through
        // `ASK` (the cluster client sends `ASKING` first), the lease's `SET NX` among them: the
        // old primary did not hold the lease.
        assert!(asking > 0, "no ASK was followed to {new_primary}");
        assert!(
            set > 0,
            "no lease was taken on {new_primary} while half moved"
        );
    }
    if let SlotChange::Freeze = change {
        // A node gone silent gives no sign: each process's next command to it times out, and
        // it fetches for itself, until a probe of the node goes unanswered (a second) and it
        // connects to the cluster anew. At most two fetches of its own per process.
        let own = 2 * fleet.len();
        assert!(
            fallbacks <= own as u64,
            "{fallbacks} fallbacks, at most {own}"
        );
        assert!(
            issued <= bound + own,
            "{issued} token requests, at most {bound} and {own} of their own"
        );
        // Then the fleet shares again: one request per renewal, and no more fallbacks.
        let settled = Duration::from_secs(4);
        let (issued, fallbacks) = (endpoint.tokens_issued(), sum(&fleet, |s| s.store_fallbacks));
        let (ok, failed) = traffic(&fleet, &api, settled).await.unwrap();
        assert!(failed.is_empty(), "failed after the {change:?}: {failed:?}");
        assert!(ok > 6 * 50, "steady traffic: {ok} requests");
        let (issued, fallbacks) = (
            endpoint.tokens_issued() - issued,
            sum(&fleet, |s| s.store_fallbacks) - fallbacks,
        );
        let bound = renewals(lifetime, settled);
        println!(
            "then {settled:?}: {issued} token requests (at most {bound}), {fallbacks} fallbacks"
        );
        assert_eq!(
            fallbacks, 0,
            "the fleet still fell back after the {change:?}"
        );
        assert!(issued <= bound, "{issued} token requests, at most {bound}");
        drop(cluster);
        return;
    }
    // The cluster client followed the change: no process fetched for itself.
    assert_eq!(fallbacks, 0, "the fleet fell back through the {change:?}");
    assert!(issued <= bound, "{issued} token requests, at most {bound}");
    // After the change, the fleet shares again: one request per renewal in what remains.
    let remaining = (before + after).saturating_sub(before + change_took);
    let bound_after = renewals(lifetime, remaining);
    assert!(
        issued - issued_at_change <= bound_after,
        "{} token requests after the {change:?}, at most {bound_after}",
        issued - issued_at_change
    );
    drop(cluster);
}

/// [`SlotChange::HalfMove`]: moves `key`'s slot in two steps, the first while a renewal holds
/// the lease, and checks the keys are split then. Returns the new primary and its `ASKING` and
/// `SET` counts while the slot was half moved.
fn half_move(
    cluster: &RedisCluster,
    key: &str,
    endpoint: &TokenEndpoint,
) -> std::io::Result<(String, (u64, u64))> {
    let lease = format!("{key}:lease");
    let source = cluster.primary_url_for(key)?;
    // A renewal in flight, its answer held back: its process holds the lease on the source.
    let requests = endpoint.request_count();
    endpoint.hold_answers(true);
    let begun = wait_until("a renewal's token request", || {
        endpoint.request_count() > requests
    })
    .and_then(|()| cluster.begin_slot_move(key, &[key]));
    let split = (exists(&source, &lease), exists(&source, key));
    endpoint.hold_answers(false);
    let half = begun?;
    assert_eq!(split.0, Ok(true), "the lease is not held on {source}");
    match split.1 {
        Err(error) => assert_eq!(error.code(), Some("ASK"), "{error}"),
        Ok(there) => panic!("the token was not moved: EXISTS answered {there}"),
    }
    let issued = endpoint.tokens_issued();
    wait_until("two renewals while the slot is half moved", || {
        endpoint.tokens_issued() >= issued + 2
    })?;
    let seen = (
        command_calls(half.target_url(), "asking"),
        command_calls(half.target_url(), "set"),
    );
    Ok((cluster.finish_slot_move(&half)?, seen))
}

/// Runs `check` every 25 ms until it holds, for 20 s at most.
fn wait_until(what: &str, mut check: impl FnMut() -> bool) -> std::io::Result<()> {
    for _ in 0..800 {
        if check() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err(std::io::Error::other(format!("waited 20 s for {what}")))
}

/// `EXISTS key` at the node `url`, following no redirection.
fn exists(url: &str, key: &str) -> redis::RedisResult<bool> {
    let mut conn = redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(2))?;
    redis::cmd("EXISTS").arg(key).query(&mut conn)
}

/// How many `code` errors (`MOVED`, `ASK`) the node at `url` answered (`INFO errorstats`).
fn error_count(url: &str, code: &str) -> u64 {
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap();
    let info: String = redis::cmd("INFO")
        .arg("errorstats")
        .query(&mut conn)
        .unwrap();
    let prefix = format!("errorstat_{code}:count=");
    info.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or(0)
}

/// How many times the node at `url` executed `command` (`INFO commandstats`).
fn command_calls(url: &str, command: &str) -> u64 {
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut conn)
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_that_demotes_the_tokens_primary_fails_no_request() {
    renewals_through(SlotChange::Demote).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tokens_primary_killed_and_taken_over_fails_no_request() {
    renewals_through(SlotChange::Kill).await;
}

/// The token's primary goes silent (a host cut off: its connections hang, nothing is refused)
/// and its replica takes over: the members' commands to it time out and they fetch for
/// themselves meanwhile, no request fails, and once the cluster client gives up on the silent
/// node and reads the slots again, the fleet shares again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tokens_primary_gone_silent_and_taken_over_fails_no_request() {
    renewals_through(SlotChange::Freeze).await;
}

/// An online reshard moves the token's slot, with its keys, to another primary: the fleet
/// follows `MOVED` and shares as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tokens_slot_moved_to_another_primary_fails_no_request() {
    renewals_through(SlotChange::Move).await;
}

/// The fleet renews while the token's slot is half moved (what a client meets during a
/// reshard), the token on the new primary and the lease held on the old one: the renewal in
/// flight completes, the fleet follows `ASK` for the token and takes the next leases on the new
/// primary, and shares one token per renewal throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_while_the_tokens_slot_is_half_moved_fail_no_request() {
    renewals_through(SlotChange::HalfMove).await;
}

/// A throwaway certificate authority and a certificate it signed for `127.0.0.1` (servers and,
/// for the cluster bus, nodes as clients of each other): (CA PEM, chain PEM, key PEM).
fn private_ca() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Named apart from the certificate: see `RedisCluster::start_tls`.
    ca.distinguished_name
        .push(DnType::CommonName, "tower-cognito-auth test authority");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut cert = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    cert.distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let cert = cert.signed_by(&key, &ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// `rediss://` seeds of a cluster that asks every client for a certificate
/// (`tls-auth-clients yes`, Redis's default): with the private authority and a client
/// certificate, the fleet shares one token with no fallback; without the certificate, every
/// node refuses the store, and the process fetches for itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_cluster_with_client_certificates_shares_one_token() {
    // Cluster mode's TLS takes the process-wide provider (see `RedisStore::cluster`).
    #[allow(deprecated)] // rustls 0.23.48: ring's provider has no post-quantum key exchange.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (ca, chain, key) = private_ca();
    let cluster =
        RedisCluster::start_tls(3, 0, &ca, &chain, &key, true).unwrap_or_else(|e| panic!("{e}"));
    let seeds = cluster.tls_urls();
    let endpoint = TokenEndpoint::start().await.unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    let store = |i: usize, certificate: bool| {
        let mut seeds = seeds.clone();
        let turn = i % seeds.len();
        seeds.rotate_left(turn);
        let store = RedisStore::cluster(&seeds)
            .unwrap()
            .root_certificates(&ca)
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5));
        if certificate {
            store.client_certificate(&chain, &key).unwrap()
        } else {
            store
        }
    };
    let fleet: Vec<_> = (0..4)
        .map(|i| member_with(&endpoint, store(i, true)))
        .collect();
    for layer in &fleet {
        assert_eq!(get(layer, &api).await, Ok(StatusCode::OK));
    }
    assert_eq!(
        endpoint.tokens_issued(),
        1,
        "one token request for the fleet"
    );
    assert_eq!(sum(&fleet, |s| s.store_fallbacks), 0, "no fallback");
    assert_eq!(sum(&fleet, |s| s.adopted), 3);
    // Without a client certificate: refused, and the process fetches for itself.
    let outsider = member_with(&endpoint, store(0, false));
    assert_eq!(get(&outsider, &api).await, Ok(StatusCode::OK));
    assert_eq!(outsider.stats().adopted, 0);
    assert_eq!(outsider.stats().store_fallbacks, 1);
}

/// A store for one server pointed at a cluster node (the mistake the issue found silent: every
/// `MOVED` made the store fall back, for good) says what to do instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_for_one_server_on_a_cluster_says_to_use_cluster_mode() {
    use tower_cognito_auth::store::TokenStore as _;
    let cluster = cluster(3, 0);
    let store = RedisStore::new(&cluster.urls()[0]).unwrap();
    let mut refused = 0;
    // Hash tags spread over the slots: about two thirds live on the other two primaries.
    for i in 0..30 {
        let key = format!("tower-cognito-auth:v1:{{k{i}}}");
        if let Err(error) = store.load(&key).await {
            let error = error.to_string();
            assert!(error.contains("RedisStore::cluster"), "{error}");
            refused += 1;
        }
    }
    assert!(refused > 0, "every key was on the first node");
}

/// The ACL `docs/faults.md` gives for cluster mode: one server's, plus `CLUSTER SLOTS` (the
/// topology), `ASKING` (a half-moved slot) and `PING` (the cluster client checks a connection it
/// reuses with it), set on every node.
const CLUSTER_ACL: &[&str] = &[
    "on",
    ">fleet-pw",
    "resetkeys",
    "~tower-cognito-auth:*",
    "resetchannels",
    "&tower-cognito-auth:*",
    "-@all",
    "+get",
    "+set",
    "+del",
    "+pttl",
    "+pexpire",
    "+publish",
    "+subscribe",
    "+evalsha",
    "+eval",
    "+cluster|slots",
    "+asking",
    "+ping",
];

/// Issue 29: a fleet whose user has exactly the documented ACL on every node shares one token
/// through the cluster, woken by notifications, with no fallback; and renews through a slot
/// half moved (`ASK`, `ASKING`) and then moved (`MOVED`, the slots read again), with no
/// fallback either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_is_enough_on_a_cluster() {
    let cluster = cluster(3, 0);
    let mut seeds = Vec::new();
    for url in cluster.urls() {
        let mut conn = redis::Client::open(url.as_str())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(2))
            .unwrap();
        let () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg("fleet")
            .arg(CLUSTER_ACL)
            .query(&mut conn)
            .unwrap();
        seeds.push(url.replacen("redis://", "redis://fleet:fleet-pw@", 1));
    }
    let endpoint = TokenEndpoint::builder()
        .delay(Duration::from_millis(300))
        .lifetime(Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    let fleet: Vec<_> = (0..6).map(|i| member(&endpoint, &seeds, i)).collect();
    all_at_once(&fleet, &api).await;
    assert_eq!(
        endpoint.tokens_issued(),
        1,
        "one token request for the fleet"
    );
    assert_eq!(sum(&fleet, |s| s.store_fallbacks), 0, "no fallback");
    assert_eq!(sum(&fleet, |s| s.adopted), 5);
    endpoint.set_delay(Duration::ZERO);
    // The token moves to another primary, its lease not yet: renewals meet `ASK`.
    let key = token_key(&cluster.urls());
    let half = cluster.begin_slot_move(&key, &[key.as_str()]).unwrap();
    let (_, failed) = traffic(&fleet, &api, Duration::from_secs(3)).await.unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        sum(&fleet, |s| s.store_fallbacks),
        0,
        "a fallback while half moved"
    );
    cluster.finish_slot_move(&half).unwrap();
    let (_, failed) = traffic(&fleet, &api, Duration::from_secs(2)).await.unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        sum(&fleet, |s| s.store_fallbacks),
        0,
        "a fallback after the move"
    );
}

/// A write on one node wakes a watcher subscribed on another: a `PUBLISH` reaches every node
/// of a cluster. The watcher's subscriber connection goes to its first seed; the key is chosen
/// so that its slot lives on another primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_node_wakes_a_watcher_subscribed_on_another() {
    use tower_cognito_auth::store::TokenStore as _;
    let cluster = cluster(3, 0);
    let seeds = cluster.urls();
    let key = (0..100)
        .map(|i| format!("tower-cognito-auth:v1:{{w{i}}}"))
        .find(|key| cluster.primary_url_for(key).unwrap() != seeds[0])
        .unwrap();
    let watcher = RedisStore::cluster(&seeds).unwrap();
    let mut others = seeds.clone();
    others.rotate_left(1);
    let writer = RedisStore::cluster(&others).unwrap();
    let seen = watcher.watch(&key, None, Duration::ZERO).await.unwrap();
    let wait = tokio::spawn({
        let (watcher, key) = (watcher.clone(), key.clone());
        // Long enough that only a missed notification ends it: then nothing was heard.
        async move {
            watcher
                .watch(&key, Some(seen), Duration::from_secs(30))
                .await
        }
    });
    // The write happens after the watch subscribed (it did, in the first call).
    assert!(
        writer
            .save_if_longer(&key, Bytes::from_static(b"v"), Duration::from_secs(60))
            .await
            .unwrap()
    );
    let heard = wait.await.unwrap().unwrap();
    assert!(heard > seen, "the write on another node was not heard");
}

/// Review of issue 29: a script the token's primary has not cached (a new primary, a restarted
/// one, `SCRIPT FLUSH`) is sent to that primary alone, as `EVAL`: not loaded on every node of
/// the cluster (the cluster client sends `SCRIPT LOAD` to all of them and needs every answer),
/// so one silent replica anywhere does not make the fleet fall back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_missing_on_the_tokens_primary_does_not_wait_for_a_silent_replica() {
    let mut cluster = cluster(3, 1);
    let lifetime = Duration::from_secs(2);
    let endpoint = TokenEndpoint::builder()
        .lifetime(lifetime)
        .start()
        .await
        .unwrap();
    let api = ProtectedApi::start(&endpoint).await.unwrap();
    let seeds = cluster.urls();
    let fleet: Vec<_> = (0..6).map(|i| member(&endpoint, &seeds, i)).collect();
    let (_, failed) = traffic(&fleet, &api, Duration::from_secs(2)).await.unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    let key = token_key(&seeds);
    let primary = cluster.primary_url_for(&key).unwrap();
    let replica = cluster.replica_urls().unwrap().into_iter().next().unwrap();
    cluster.freeze_node(&replica).unwrap();
    let mut conn = redis::Client::open(primary.as_str())
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap();
    let () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut conn).unwrap();
    let (issued, fallbacks) = (endpoint.tokens_issued(), sum(&fleet, |s| s.store_fallbacks));
    let window = Duration::from_secs(4);
    let (ok, failed) = traffic(&fleet, &api, window).await.unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(ok > 6 * 50, "steady traffic: {ok} requests");
    let (issued, fallbacks) = (
        endpoint.tokens_issued() - issued,
        sum(&fleet, |s| s.store_fallbacks) - fallbacks,
    );
    let bound = renewals(lifetime, window);
    println!(
        "scripts flushed on the token's primary, a replica silent: {issued} token requests (at most {bound}), {fallbacks} fallbacks"
    );
    assert_eq!(fallbacks, 0, "the fleet fell back");
    assert!(issued <= bound, "{issued} token requests, at most {bound}");
}
