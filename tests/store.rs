//! `RedisStore` against a real `redis-server` (started by `testing::RedisServer`): the
//! semantics every `TokenStore` must have, timeouts, lazy connection, credentials and redaction.
//! The sealing and the fleet coordination are tested inside the crate (`src/store/`).
#![cfg(all(feature = "redis", feature = "test-util"))]

use std::time::Duration;

use bytes::Bytes;
use tower_cognito_auth::ErrorKind;
use tower_cognito_auth::store::{RedisStore, TokenStore};
use tower_cognito_auth::testing::RedisServer;

/// Starts Redis, or fails the test with the message that says how to install it.
fn server() -> RedisServer {
    match RedisServer::start() {
        Ok(server) => server,
        Err(error) => panic!("{error}"),
    }
}

/// Bounds a call that must not hang (a failure of the test, not a timing measurement).
async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(10), f).await {
        Ok(value) => value,
        Err(_) => panic!("the store hung"),
    }
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

async fn raw(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    // No response timeout: a loaded test machine may be slower than the client's 500 ms default.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap()
}

#[tokio::test]
async fn load_and_save_if_longer_never_shortens() {
    let redis = server();
    let store = RedisStore::new(redis.url()).unwrap();
    let key = "tower-cognito-auth:test:save";
    assert_eq!(store.load(key).await.unwrap(), None);

    assert!(
        store
            .save_if_longer(key, Bytes::from_static(b"ten"), Duration::from_secs(10))
            .await
            .unwrap()
    );
    let stored = store.load(key).await.unwrap().unwrap();
    assert_eq!(stored.value().as_ref(), b"ten");
    assert!(stored.ttl() <= Duration::from_secs(10) && stored.ttl() > Duration::from_secs(5));

    // Shorter or equal: kept.
    assert!(
        !store
            .save_if_longer(key, Bytes::from_static(b"five"), Duration::from_secs(5))
            .await
            .unwrap()
    );
    assert_eq!(
        store.load(key).await.unwrap().unwrap().value().as_ref(),
        b"ten"
    );
    // Longer: replaced.
    assert!(
        store
            .save_if_longer(
                key,
                Bytes::from_static(b"hundred"),
                Duration::from_secs(100)
            )
            .await
            .unwrap()
    );
    let stored = store.load(key).await.unwrap().unwrap();
    assert_eq!(stored.value().as_ref(), b"hundred");
    assert!(stored.ttl() > Duration::from_secs(10));
    // Under a millisecond: nothing written.
    assert!(
        !store
            .save_if_longer(key, Bytes::from_static(b"x"), Duration::from_micros(10))
            .await
            .unwrap()
    );

    // A value without expiry (never written by the crate) counts as expired: replaced.
    let mut conn = raw(&redis).await;
    let () = redis::cmd("SET")
        .arg(key)
        .arg("forever")
        .query_async(&mut conn)
        .await
        .unwrap();
    let stored = store.load(key).await.unwrap().unwrap();
    assert_eq!(stored.ttl(), Duration::ZERO);
    assert!(
        store
            .save_if_longer(key, Bytes::from_static(b"new"), Duration::from_secs(1))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn values_are_binary_safe() {
    let redis = server();
    let store = RedisStore::new(redis.url()).unwrap();
    let key = "tower-cognito-auth:test:binary";
    let value: Vec<u8> = (0..=255u8).chain([0, 0, 0xff]).collect();
    store
        .save_if_longer(key, Bytes::from(value.clone()), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        store.load(key).await.unwrap().unwrap().value().as_ref(),
        value.as_slice()
    );
    // An empty value and a garbage one load as they are (the sealing layer calls them a miss).
    let mut conn = raw(&redis).await;
    let () = redis::cmd("SET")
        .arg(key)
        .arg("")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(store.load(key).await.unwrap().unwrap().value().len(), 0);
    // A key of another type is an error, not a panic.
    let _: i64 = redis::cmd("HSET")
        .arg("tower-cognito-auth:test:hash")
        .arg("f")
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(store.load("tower-cognito-auth:test:hash").await.is_err());
}

#[tokio::test]
async fn remove_if_prefix_compares_bytes() {
    let redis = server();
    let store = RedisStore::new(redis.url()).unwrap();
    let key = "tower-cognito-auth:test:remove";
    let value = Bytes::from_static(b"\x01\x00\xffprefix-and-the-rest");
    store
        .save_if_longer(key, value.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(!store.remove_if_prefix(key, b"\x01\x00\xfe").await.unwrap());
    assert!(
        !store
            .remove_if_prefix(key, b"\x01\x00\xffprefix-and-the-rest-and-more")
            .await
            .unwrap()
    );
    assert!(store.load(key).await.unwrap().is_some());
    assert!(
        store
            .remove_if_prefix(key, b"\x01\x00\xffprefix")
            .await
            .unwrap()
    );
    assert_eq!(store.load(key).await.unwrap(), None);
    assert!(!store.remove_if_prefix(key, b"").await.unwrap());
}

#[tokio::test]
async fn remove_if_equal_compares_the_whole_value() {
    let redis = server();
    let store = RedisStore::new(redis.url()).unwrap();
    let key = "tower-cognito-auth:test:remove-equal";
    let value = Bytes::from_static(b"\x01\x00\xffwhole");
    store
        .save_if_longer(key, value.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    for other in [&b"\x01\x00\xff"[..], b"\x01\x00\xffwhole!", b"\x01", b""] {
        assert!(!store.remove_if_equal(key, other).await.unwrap());
    }
    assert!(store.load(key).await.unwrap().is_some());
    assert!(store.remove_if_equal(key, &value).await.unwrap());
    assert_eq!(store.load(key).await.unwrap(), None);
    assert!(!store.remove_if_equal(key, &value).await.unwrap());
}

#[tokio::test]
async fn leases_are_exclusive_and_released_only_by_their_holder() {
    let redis = server();
    let store = RedisStore::new(redis.url()).unwrap();
    let lease = "tower-cognito-auth:test:lease";
    let ttl = Duration::from_secs(10);
    assert!(store.try_lease(lease, "holder-a", ttl).await.unwrap());
    assert!(!store.try_lease(lease, "holder-b", ttl).await.unwrap());
    // Issue 29 (review): asked again by its holder (a command the cluster client sent again
    // after a lost reply, its first attempt having taken the lease), the lease is the
    // holder's: a "no" would leave a lease nobody releases for its time to live.
    assert!(store.try_lease(lease, "holder-a", ttl).await.unwrap());
    // B cannot release A's lease.
    store.release_lease(lease, "holder-b").await.unwrap();
    assert!(!store.try_lease(lease, "holder-b", ttl).await.unwrap());
    store.release_lease(lease, "holder-a").await.unwrap();
    assert!(store.try_lease(lease, "holder-b", ttl).await.unwrap());

    // A lease lapses after its time to live.
    let short = "tower-cognito-auth:test:short-lease";
    assert!(
        store
            .try_lease(short, "holder-a", Duration::from_millis(30))
            .await
            .unwrap()
    );
    let mut taken = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if store.try_lease(short, "holder-b", ttl).await.unwrap() {
            taken = true;
            break;
        }
    }
    assert!(taken);
}

#[tokio::test]
async fn new_with_redis_down_succeeds_and_commands_fail_fast() {
    let store = RedisStore::new(format!("redis://127.0.0.1:{}", closed_port())).unwrap();
    for _ in 0..3 {
        assert!(bounded(store.load("k")).await.is_err());
        assert!(
            bounded(store.try_lease("k", "h", Duration::from_secs(1)))
                .await
                .is_err()
        );
    }
}

#[tokio::test]
async fn a_stopped_server_is_an_error_and_a_restarted_one_is_used_again() {
    let mut redis = server();
    let store = RedisStore::new(redis.url()).unwrap();
    let key = "tower-cognito-auth:test:outage";
    store
        .save_if_longer(key, Bytes::from_static(b"v"), Duration::from_secs(60))
        .await
        .unwrap();
    redis.stop();
    assert!(bounded(store.load(key)).await.is_err());
    assert!(
        bounded(store.save_if_longer(key, Bytes::from_static(b"v"), Duration::from_secs(60)))
            .await
            .is_err()
    );
    redis.restart().unwrap();
    // Reconnects within a few attempts (at most one connection attempt a second).
    let mut back = false;
    for _ in 0..50 {
        if bounded(store.load(key)).await.is_ok() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back);
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    // Accepts connections (the kernel does, from the backlog) and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let store = RedisStore::new(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .timeout(Duration::from_millis(100))
        .connect_timeout(Duration::from_millis(300));
    let error = bounded(store.load("k")).await.unwrap_err();
    assert!(error.to_string().contains("timed out"), "{error}");
    drop(listener);
}

#[tokio::test]
async fn credentials_in_the_url_are_used_and_never_shown() {
    let redis = server();
    let mut conn = raw(&redis).await;
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("s3cret-pw")
        .query_async(&mut conn)
        .await
        .unwrap();
    let port = redis.addr().port();

    let good = RedisStore::new(format!("redis://:s3cret-pw@127.0.0.1:{port}/1")).unwrap();
    assert!(good.load("k").await.unwrap().is_none());
    let user = RedisStore::new(format!("redis://default:s3cret-pw@127.0.0.1:{port}")).unwrap();
    assert!(user.load("k").await.unwrap().is_none());

    let wrong = RedisStore::new(format!("redis://:wrong-pw@127.0.0.1:{port}")).unwrap();
    let error = wrong.load("k").await.unwrap_err();
    assert!(!error.to_string().contains("wrong-pw"), "{error}");
    let none = RedisStore::new(redis.url()).unwrap();
    assert!(none.load("k").await.is_err());

    for store in [&good, &user, &wrong] {
        let debug = format!("{store:?}");
        assert!(!debug.contains("pw"), "{debug}");
        assert!(!debug.contains("default"), "{debug}");
        assert!(debug.contains(&format!("127.0.0.1:{port}")), "{debug}");
    }
}

#[tokio::test]
async fn rediss_urls_parse_and_fail_cleanly_against_a_plain_server() {
    let redis = server();
    let store = RedisStore::new(format!("rediss://:pw@127.0.0.1:{}/0", redis.addr().port()))
        .unwrap()
        .timeout(Duration::from_millis(500));
    let debug = format!("{store:?}");
    assert!(debug.contains("tls: true"), "{debug}");
    // A TLS handshake with a server that speaks plain RESP: an error, not a panic or a hang.
    let error = bounded(store.load("k")).await.unwrap_err().to_string();
    assert!(!error.contains("without a result"), "{error}");
    assert!(!error.contains("pw"), "{error}");
}

#[test]
fn bad_urls_are_invalid_config() {
    for bad in ["", "http://127.0.0.1", "localhost:6379", "redis://[::1"] {
        let error = RedisStore::new(bad).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidConfig, "{bad}");
    }
}

#[test]
fn clones_are_cheap_handles() {
    fn check<T: Clone + Send + Sync + std::fmt::Debug + 'static>() {}
    check::<RedisStore>();
    let store = RedisStore::new("redis://127.0.0.1:1").unwrap();
    let _ = store.clone();
}

/// A throwaway certificate authority and a certificate it signed for `127.0.0.1`: (CA PEM,
/// server chain PEM, server key PEM).
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

/// Starts Redis with TLS on a second port, or fails the test with the reason.
fn tls_server(chain: &str, key: &str) -> RedisServer {
    match RedisServer::start_tls(chain, key) {
        Ok(server) => server,
        Err(error) => panic!("{error}"),
    }
}

/// `rediss://` end to end: a real TLS handshake (rustls, ring) with a Redis whose certificate a
/// private authority signed, trusted through `root_certificates`; the store works over it.
#[tokio::test]
async fn rediss_with_a_private_ca_works_end_to_end() {
    let (ca, chain, key) = private_ca();
    let redis = tls_server(&chain, &key);
    let url = redis.tls_url().unwrap();
    let store = RedisStore::new(&url)
        .unwrap()
        .root_certificates(&ca)
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(5));
    let key = "tower-cognito-auth:test:tls";
    assert_eq!(bounded(store.load(key)).await.unwrap(), None);
    assert!(
        bounded(store.save_if_longer(key, Bytes::from_static(b"sealed"), Duration::from_secs(60)))
            .await
            .unwrap()
    );
    let stored = bounded(store.load(key)).await.unwrap().unwrap();
    assert_eq!(stored.value().as_ref(), b"sealed");
    assert!(
        bounded(store.try_lease("lease", "me", Duration::from_secs(10)))
            .await
            .unwrap()
    );
}

/// Without the authority, the server's certificate is not trusted: every command is an error
/// (the fleet then fetches for itself), never a connection to an unverified server.
#[tokio::test]
async fn rediss_refuses_a_certificate_no_trusted_authority_signed() {
    let (ca, chain, key) = private_ca();
    let redis = tls_server(&chain, &key);
    let url = redis.tls_url().unwrap();
    // The bundled roots, then another authority's: neither signed this server's certificate.
    let (other_ca, _, _) = private_ca();
    for store in [
        RedisStore::new(&url).unwrap(),
        RedisStore::new(&url)
            .unwrap()
            .root_certificates(&other_ca)
            .unwrap(),
    ] {
        let store = store
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(5));
        let error = bounded(store.load("k")).await.unwrap_err().to_string();
        // The handshake's verdict, not a timeout or a refused port.
        assert!(error.contains("invalid peer certificate"), "{error}");
    }
    // The same server with its own authority trusted: it was the certificate, not the server.
    let store = RedisStore::new(&url)
        .unwrap()
        .root_certificates(&ca)
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(5));
    assert_eq!(bounded(store.load("k")).await.unwrap(), None);
}

#[test]
fn root_certificates_need_rediss_and_a_certificate() {
    let (ca, _, _) = private_ca();
    let plain = RedisStore::new("redis://127.0.0.1:1").unwrap();
    assert_eq!(
        plain.root_certificates(&ca).unwrap_err().kind(),
        ErrorKind::InvalidConfig
    );
    for bad in [
        "",
        "not a certificate",
        "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
    ] {
        let store = RedisStore::new("rediss://127.0.0.1:1").unwrap();
        assert_eq!(
            store.root_certificates(bad).unwrap_err().kind(),
            ErrorKind::InvalidConfig,
            "{bad}"
        );
    }
}

/// Defect 3 of issue 21: a connection attempt whose runtime is dropped mid-attempt does not
/// leave the store unable to connect for good (the cache itself may move between runtimes).
#[test]
fn a_connection_attempt_dropped_with_its_runtime_does_not_poison_the_store() {
    let redis = server();
    let store = RedisStore::new(redis.url())
        .unwrap()
        .connect_timeout(Duration::from_secs(5));
    // The kernel accepts the connection; the server answers nothing: the attempt hangs.
    redis.freeze().unwrap();
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    first.block_on(async {
        assert!(store.load("k").await.is_err(), "a frozen server times out");
    });
    // The attempt's task dies with its runtime.
    drop(first);
    redis.thaw().unwrap();
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    second.block_on(async {
        let mut last = None;
        // The next attempt is allowed a second after the last one: a few seconds at most.
        for _ in 0..50 {
            match store.load("k").await {
                Ok(_) => return,
                Err(error) => last = Some(error.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the store never connected again: {last:?}");
    });
}

/// `watch` hears of writes by `save_if_longer` from another store (another process), and of
/// nothing else; a watch with nothing written returns the same count after its timeout.
#[tokio::test]
async fn watch_hears_of_writes_from_another_store() {
    let redis = server();
    let watcher = RedisStore::new(redis.url()).unwrap();
    let writer = RedisStore::new(redis.url()).unwrap();
    let start = bounded(watcher.watch("k", None, Duration::ZERO))
        .await
        .unwrap();
    // Not a write: nothing heard.
    assert!(
        writer
            .try_lease("lease", "holder", Duration::from_secs(5))
            .await
            .unwrap()
    );
    let quiet = bounded(watcher.watch("k", Some(start), Duration::from_millis(200)))
        .await
        .unwrap();
    assert_eq!(quiet, start);
    let waiting = {
        let watcher = watcher.clone();
        tokio::spawn(async move {
            watcher
                .watch("k", Some(start), Duration::from_secs(5))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        writer
            .save_if_longer("k2", Bytes::from_static(b"v"), Duration::from_secs(5))
            .await
            .unwrap()
    );
    assert!(
        writer
            .save_if_longer("k", Bytes::from_static(b"v"), Duration::from_secs(5))
            .await
            .unwrap()
    );
    let heard = bounded(waiting).await.unwrap().unwrap();
    assert_eq!(heard, start + 1);
    // A write refused (a longer-lived value is there) is not heard.
    assert!(
        !writer
            .save_if_longer("k", Bytes::from_static(b"w"), Duration::from_secs(1))
            .await
            .unwrap()
    );
    let quiet = bounded(watcher.watch("k", Some(heard), Duration::from_millis(200)))
        .await
        .unwrap();
    assert_eq!(quiet, heard);
}

/// What docs/faults.md says the store needs from a Redis ACL, for user `fleet`.
const FLEET_ACL: &[&str] = &[
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
];

/// Creates user `fleet` with `rules` and returns a store URL that logs in as it.
async fn acl_user(redis: &RedisServer, rules: &[&str]) -> String {
    let mut conn = raw(redis).await;
    let () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("fleet")
        .arg(rules)
        .query_async(&mut conn)
        .await
        .unwrap();
    format!("redis://fleet:fleet-pw@{}", redis.addr())
}

/// Connections the server accepted so far.
async fn connections(redis: &RedisServer) -> u64 {
    let mut conn = raw(redis).await;
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("total_connections_received:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

/// Issue 29: a user with exactly the ACL the docs give can do all the store does, notifications
/// included.
#[tokio::test]
async fn the_documented_acl_is_enough() {
    let redis = server();
    let store = RedisStore::new(acl_user(&redis, FLEET_ACL).await).unwrap();
    let writer = RedisStore::new(acl_user(&redis, FLEET_ACL).await).unwrap();
    let key = "tower-cognito-auth:v1:acl";
    let lease = "tower-cognito-auth:v1:acl:lease";
    let start = bounded(store.watch(key, None, Duration::ZERO))
        .await
        .unwrap();
    assert!(
        store
            .try_lease(lease, "me", Duration::from_secs(5))
            .await
            .unwrap()
    );
    assert!(
        store
            .extend_lease(lease, "me", Duration::from_secs(9))
            .await
            .unwrap()
    );
    assert!(
        writer
            .save_if_longer(key, Bytes::from_static(b"v"), Duration::from_secs(5))
            .await
            .unwrap()
    );
    let heard = bounded(store.watch(key, Some(start), Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(heard, start + 1, "the write was heard");
    assert!(store.load(key).await.unwrap().is_some());
    assert!(store.remove_if_equal(key, b"v").await.unwrap());
    store.release_lease(lease, "me").await.unwrap();
    assert!(!store.remove_if_prefix(key, b"").await.unwrap());
}

/// Defect 4 of issue 29: under an ACL without channels (Redis 7's default `resetchannels`),
/// the `PUBLISH` inside the write's script is refused (`NOPERM`): the write happened, and is
/// reported as done. `SUBSCRIBE` is refused too: `watch` then waits out its timeout (the
/// caller polls at its usual, rare pace), and does not open a connection per call.
#[tokio::test]
async fn an_acl_without_channels_writes_and_waits_without_reconnecting() {
    let redis = server();
    let no_channels: Vec<&str> = FLEET_ACL
        .iter()
        .copied()
        .filter(|rule| !rule.starts_with('&'))
        .collect();
    let store = RedisStore::new(acl_user(&redis, &no_channels).await).unwrap();
    let key = "tower-cognito-auth:v1:acl";
    let wrote = store
        .save_if_longer(key, Bytes::from_static(b"v"), Duration::from_secs(5))
        .await;
    assert!(matches!(wrote, Ok(true)), "{wrote:?}");
    assert!(store.load(key).await.unwrap().is_some());
    let before = connections(&redis).await;
    for _ in 0..5 {
        let seen = bounded(store.watch(key, None, Duration::ZERO)).await;
        assert!(seen.is_ok(), "{seen:?}");
        let started = tokio::time::Instant::now();
        let waited = bounded(store.watch(key, Some(0), Duration::from_millis(100))).await;
        assert!(matches!(waited, Ok(0)), "{waited:?}");
        assert!(
            started.elapsed() >= Duration::from_millis(100),
            "it waited its timeout"
        );
    }
    // One subscriber connection refused, and `connections` own two: not one per call.
    let opened = connections(&redis).await - before;
    assert!(opened <= 3, "{opened} connections for 10 watches");
}

/// Defect 6 of issue 29: counts stay comparable across a resubscription. A watcher that saw
/// `n` writes before the subscriber connection was dropped hears the next write after it
/// (before the fix the new subscription counted from zero again, and the wait for more than
/// `n` missed it).
#[tokio::test]
async fn a_resubscription_keeps_counts_comparable() {
    let redis = server();
    let watcher = RedisStore::new(redis.url()).unwrap();
    let writer = RedisStore::new(redis.url()).unwrap();
    let write = || writer.save_if_longer("k", Bytes::from_static(b"v"), Duration::from_secs(60));
    let start = bounded(watcher.watch("k", None, Duration::ZERO))
        .await
        .unwrap();
    assert!(write().await.unwrap());
    let mut seen = bounded(watcher.watch("k", Some(start), Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(seen, start + 1);
    // The server drops the subscriber connection.
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut raw(&redis).await)
        .await
        .unwrap();
    assert_eq!(killed, 1);
    // The watcher notices (a wake-up to look, or nothing heard) and subscribes again.
    for _ in 0..10 {
        seen = bounded(watcher.watch("k", Some(seen), Duration::from_millis(20)))
            .await
            .unwrap_or(seen);
    }
    let _ = bounded(watcher.watch("k", None, Duration::ZERO))
        .await
        .unwrap();
    // A longer-lived value: written.
    assert!(
        writer
            .save_if_longer("k", Bytes::from_static(b"w"), Duration::from_secs(120))
            .await
            .unwrap()
    );
    let heard = bounded(watcher.watch("k", Some(seen), Duration::from_secs(2)))
        .await
        .unwrap();
    assert!(
        heard > seen,
        "the write after the resubscription was missed"
    );
}

/// Defect 6 of issue 29: a subscriber connection whose reader died with the runtime that ran
/// it is replaced (before the fix the store kept it: deaf for the store's life).
#[tokio::test]
async fn a_subscriber_that_died_with_its_runtime_is_replaced() {
    let redis = server();
    let watcher = RedisStore::new(redis.url()).unwrap();
    let writer = RedisStore::new(redis.url()).unwrap();
    {
        let watcher = watcher.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime
                .block_on(watcher.watch("k", None, Duration::ZERO))
                .unwrap();
        })
        .join()
        .unwrap();
    }
    let seen = bounded(watcher.watch("k", None, Duration::ZERO))
        .await
        .unwrap();
    assert!(
        writer
            .save_if_longer("k", Bytes::from_static(b"v"), Duration::from_secs(60))
            .await
            .unwrap()
    );
    let heard = bounded(watcher.watch("k", Some(seen), Duration::from_secs(2)))
        .await
        .unwrap();
    assert!(heard > seen, "deaf: the write was not heard");
}

/// A client certificate and its key, signed by a fresh authority: `(ca, chain, key)`.
fn client_identity() -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("clients {:x}", fastrand::u64(..)),
    );
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(vec!["fleet.internal".to_owned()]).unwrap();
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = client.signed_by(&key, &ca).unwrap();
    (ca.pem(), client.pem(), key.serialize_pem())
}

/// Issue 29: client certificates for `rediss://`. Against a Redis with `tls-auth-clients yes`
/// (its default) and an authority for clients, a store without a certificate is refused, one
/// with a certificate another authority signed is refused, and one with the right certificate
/// works; the setter composes with `root_certificates` in either order.
#[tokio::test]
async fn rediss_with_a_client_certificate_works_against_tls_auth_clients_yes() {
    let (ca, chain, key) = private_ca();
    let redis = tls_server(&chain, &key);
    let (clients_ca, client_chain, client_key) = client_identity();
    let (_, stranger_chain, stranger_key) = client_identity();
    let ca_file = redis.dir().join("clients-ca.pem");
    std::fs::write(&ca_file, &clients_ca).unwrap();
    let mut conn = raw(&redis).await;
    for (name, value) in [
        ("tls-ca-cert-file", ca_file.to_str().unwrap()),
        ("tls-auth-clients", "yes"),
    ] {
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let url = redis.tls_url().unwrap();
    let settle = |store: RedisStore| {
        store
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(5))
    };
    let without = settle(
        RedisStore::new(&url)
            .unwrap()
            .root_certificates(&ca)
            .unwrap(),
    );
    assert!(bounded(without.load("k")).await.is_err(), "no certificate");
    let stranger = settle(
        RedisStore::new(&url)
            .unwrap()
            .root_certificates(&ca)
            .unwrap()
            .client_certificate(&stranger_chain, &stranger_key)
            .unwrap(),
    );
    assert!(
        bounded(stranger.load("k")).await.is_err(),
        "a stranger's certificate"
    );
    for store in [
        RedisStore::new(&url)
            .unwrap()
            .root_certificates(&ca)
            .unwrap()
            .client_certificate(&client_chain, &client_key)
            .unwrap(),
        RedisStore::new(&url)
            .unwrap()
            .client_certificate(&client_chain, &client_key)
            .unwrap()
            .root_certificates(&ca)
            .unwrap(),
    ] {
        let store = settle(store);
        bounded(store.load("k")).await.unwrap();
        bounded(store.try_lease("lease", "me", Duration::from_secs(9)))
            .await
            .unwrap();
        let debug = format!("{store:?}");
        assert!(!debug.contains("PRIVATE"), "{debug}");
    }
}

#[test]
fn client_certificates_need_rediss_a_certificate_and_its_key() {
    let (_, chain, key) = client_identity();
    let (_, _, other_key) = client_identity();
    let plain = RedisStore::new("redis://127.0.0.1:6379").unwrap();
    let error = plain.client_certificate(&chain, &key).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidConfig);
    let tls = || RedisStore::new("rediss://127.0.0.1:6380").unwrap();
    for (chain, key) in [
        ("", key.as_str()),
        (chain.as_str(), ""),
        (key.as_str(), key.as_str()),
        (chain.as_str(), chain.as_str()),
    ] {
        let error = tls().client_certificate(chain, key).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidConfig);
        assert!(!error.to_string().contains("PRIVATE"), "{error}");
    }
    // A key of another certificate: refused now or by the server, never a panic.
    let _ = tls().client_certificate(&chain, &other_key);
}
