//! Unit tests of `fleet`.

use super::refusal::{REFUSAL_MARK, now_ms};
use super::*;
use crate::store::seal::TAG_LEN;
use crate::store::seal::VERSION;
use crate::store::{RedisStore, Stored};
use crate::testing::RedisServer;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;

const MARGINS: Margins = Margins {
    refresh_ahead: Duration::from_secs(300),
    min_validity: Duration::from_secs(30),
};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Ok,
    Fail,
    Hang,
}

/// Counts fetches; each fetch issues `token-N` for `lifetime`, after `delay`.
#[derive(Clone)]
struct Source {
    calls: Arc<AtomicUsize>,
    lifetime: Duration,
    delay: Duration,
    mode: Arc<Mutex<Mode>>,
}

impl Source {
    fn new(lifetime: Duration, delay: Duration) -> Self {
        Self {
            calls: Arc::default(),
            lifetime,
            delay,
            mode: Arc::new(Mutex::new(Mode::Ok)),
        }
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }
}

impl TokenSource for Source {
    fn fetch(&self) -> BoxFuture<'_, Result<Token, Error>> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let mode = *self.mode.lock().unwrap();
            let sent = Instant::now();
            match mode {
                Mode::Hang => std::future::pending::<()>().await,
                Mode::Fail => {
                    return Err(Error::server_error(http::StatusCode::BAD_GATEWAY, None));
                }
                Mode::Ok => {}
            }
            tokio::time::sleep(self.delay).await;
            Ok(Token::new(
                AccessToken::new(format!("token-{n}"))?,
                sent + self.lifetime,
            )
            .with_lifetime(self.lifetime))
        })
    }
}

fn identity(secret: &str) -> SharedIdentity {
    SharedIdentity::client_credentials("http://127.0.0.1:1/oauth2/token", "id", ["a"], secret)
}

fn test_config() -> FleetConfig {
    FleetConfig {
        lease_ttl: Duration::from_millis(600),
        poll_min: Duration::from_millis(10),
        poll_max: Duration::from_millis(30),
        poll_fallback: Duration::from_millis(300),
        store_timeout: Duration::from_millis(500),
        max_wait: Duration::from_secs(5),
        hold_max: Duration::from_secs(5),
        refusal_min: Duration::from_secs(1),
        refusal_max: Duration::from_secs(60),
    }
}

fn server() -> RedisServer {
    match RedisServer::start() {
        Ok(server) => server,
        Err(error) => panic!("{error}"),
    }
}

fn fleet(url: &str, secret: &str) -> Fleet {
    let store = RedisStore::new(url)
        .unwrap()
        .timeout(Duration::from_millis(500));
    Fleet::new(Arc::new(store), &identity(secret), test_config()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fleets_fetch_once_and_share() {
    let redis = server();
    let source = Source::new(Duration::from_secs(3600), Duration::from_millis(100));
    let fleets: Vec<Arc<Fleet>> = (0..8)
        .map(|_| Arc::new(fleet(&redis.url(), "secret")))
        .collect();
    let mut tasks = Vec::new();
    for f in &fleets {
        let f = Arc::clone(f);
        let source = source.clone();
        tasks.push(tokio::spawn(async move {
            f.fetch(&source, MARGINS, None).await
        }));
    }
    let mut texts = Vec::new();
    for task in tasks {
        let token = task.await.unwrap().unwrap();
        assert!(token.expires_at() > Instant::now() + Duration::from_secs(3500));
        assert_eq!(token.lifetime(), Some(Duration::from_secs(3600)));
        texts.push(token.access_token().secret().to_owned());
    }
    assert_eq!(source.calls(), 1);
    assert!(texts.iter().all(|t| t == "token-1"), "{texts:?}");
    let total = fleets.iter().fold(FleetStats::default(), |mut acc, f| {
        let s = f.stats();
        acc.adopted += s.adopted;
        acc.lease_fetches += s.lease_fetches;
        acc.fallbacks += s.fallbacks;
        acc
    });
    assert_eq!(total.lease_fetches, 1);
    assert_eq!(total.adopted, 7);
    assert_eq!(total.fallbacks, 0);
    // A later refresh adopts without fetching.
    let token = fleets[0].fetch(&source, MARGINS, None).await.unwrap();
    assert_eq!(token.access_token().secret(), "token-1");
    assert_eq!(source.calls(), 1);
}

#[tokio::test]
async fn a_token_with_too_little_left_is_not_adopted() {
    let redis = server();
    let store = RedisStore::new(redis.url()).unwrap();
    let f = fleet(&redis.url(), "secret");
    let name = f.sealer.key_name().to_owned();
    // Issued for an hour, 6 minutes left: inside refresh_ahead (300 s) + jitter (360 s).
    let sealed = f
        .sealer
        .seal(
            "old-token",
            Duration::from_secs(3600),
            Duration::from_secs(3600),
        )
        .unwrap();
    assert!(
        store
            .save_if_longer(&name, sealed, Duration::from_secs(360))
            .await
            .unwrap()
    );
    let source = Source::new(Duration::from_secs(3600), Duration::ZERO);
    let token = f.fetch(&source, MARGINS, None).await.unwrap();
    assert_eq!(token.access_token().secret(), "token-1");
    assert_eq!(source.calls(), 1);
    // The new token replaced the old one (it lives longer) and is adopted by the next.
    let g = fleet(&redis.url(), "secret");
    let token = g.fetch(&source, MARGINS, None).await.unwrap();
    assert_eq!(token.access_token().secret(), "token-1");
    assert_eq!(g.stats().adopted, 1);

    // Just over 11 minutes left of an hour: adopted, its remaining life from the store.
    let sealed = f
        .sealer
        .seal(
            "other-token",
            Duration::from_secs(3600),
            Duration::from_secs(3600),
        )
        .unwrap();
    store.remove_if_prefix(&name, b"").await.unwrap();
    store
        .save_if_longer(&name, sealed, Duration::from_secs(700))
        .await
        .unwrap();
    let token = g.fetch(&source, MARGINS, None).await.unwrap();
    assert_eq!(token.access_token().secret(), "other-token");
    let left = token.expires_at().saturating_duration_since(Instant::now());
    assert!(left <= Duration::from_secs(700) && left > Duration::from_secs(600));
    assert_eq!(token.lifetime(), Some(Duration::from_secs(3600)));
    assert_eq!(source.calls(), 1);
}

#[test]
fn adoption_margins() {
    let hour = Duration::from_secs(3600);
    let s = Duration::from_secs;
    assert!(!adoptable(s(660), hour, MARGINS));
    assert!(adoptable(s(661), hour, MARGINS));
    // A 60 s token: refresh_ahead scales to 30 s, jitter 6 s, min_validity 6 s.
    assert!(!adoptable(s(36), s(60), MARGINS));
    assert!(adoptable(s(37), s(60), MARGINS));
    assert!(!adoptable(Duration::ZERO, Duration::ZERO, MARGINS));
}

#[tokio::test]
async fn rejected_token_is_removed_only_if_still_stored() {
    let redis = server();
    let store = RedisStore::new(redis.url()).unwrap();
    let f = fleet(&redis.url(), "secret");
    let name = f.sealer.key_name().to_owned();
    let source = Source::new(Duration::from_secs(3600), Duration::ZERO);
    let first = f.fetch(&source, MARGINS, None).await.unwrap();
    assert_eq!(first.access_token().secret(), "token-1");

    // Rejected while stored: removed, and a new one is fetched and stored.
    let second = f
        .fetch(&source, MARGINS, Some(first.access_token()))
        .await
        .unwrap();
    assert_eq!(second.access_token().secret(), "token-2");
    assert_eq!(source.calls(), 2);

    // Another process rejected on the first token later: the second stays and is adopted.
    let g = fleet(&redis.url(), "secret");
    let adopted = g
        .fetch(&source, MARGINS, Some(first.access_token()))
        .await
        .unwrap();
    assert_eq!(adopted.access_token().secret(), "token-2");
    assert_eq!(source.calls(), 2);
    let stored = store.load(&name).await.unwrap().unwrap();
    assert_eq!(
        f.sealer.open(stored.value()).map(|o| o.token).as_deref(),
        Some("token-2")
    );
}

/// A holder that died (its lease is in the store, nobody extends it) is taken over once its
/// lease lapses: not before (Redis keeps a `PX` at least that long), and without a fallback.
#[tokio::test]
async fn a_dead_holders_lease_is_taken_over_when_it_lapses() {
    let redis = server();
    let store = RedisStore::new(redis.url()).unwrap();
    let source = Source::new(Duration::from_secs(3600), Duration::ZERO);
    let other = fleet(&redis.url(), "secret");
    let lease = test_config().lease_ttl;
    let planted = Instant::now();
    assert!(
        store
            .try_lease(other.sealer.lease_name(), "dead-holder", lease)
            .await
            .unwrap()
    );
    let token = other.fetch(&source, MARGINS, None).await.unwrap();
    let waited = planted.elapsed();
    assert_eq!(token.access_token().secret(), "token-1");
    assert!(
        waited >= lease,
        "taken over after {waited:?}, before the lease lapsed"
    );
    assert_eq!(
        (other.stats().lease_fetches, other.stats().fallbacks),
        (1, 0),
        "took the lease over"
    );
}

/// Defect 1 of issue 29: a live holder whose fetch is slower than the lease keeps it (the
/// watchdog extends it): a waiting process never takes it, and adopts the holder's token.
#[tokio::test]
async fn a_slow_holder_keeps_its_lease_and_the_others_wait() {
    let redis = server();
    let lease = test_config().lease_ttl;
    // Three leases long.
    let slow = Source::new(Duration::from_secs(3600), lease * 3);
    let fleets: Vec<Arc<Fleet>> = (0..4)
        .map(|_| Arc::new(fleet(&redis.url(), "secret")))
        .collect();
    let tasks: Vec<_> = fleets
        .iter()
        .map(|f| {
            let (f, slow) = (Arc::clone(f), slow.clone());
            tokio::spawn(async move { f.fetch(&slow, MARGINS, None).await })
        })
        .collect();
    for task in tasks {
        let token = task.await.unwrap().unwrap();
        assert_eq!(token.access_token().secret(), "token-1");
    }
    let stats: Vec<_> = fleets.iter().map(|f| f.stats()).collect();
    let sum = |f: fn(&FleetStats) -> u64| stats.iter().map(f).sum::<u64>();
    assert_eq!(slow.calls(), 1, "{stats:?}");
    assert_eq!(
        (
            sum(|s| s.lease_fetches),
            sum(|s| s.adopted),
            sum(|s| s.fallbacks)
        ),
        (1, 3, 0)
    );
}

#[tokio::test]
async fn a_failed_holder_releases_and_returns_its_error() {
    let redis = server();
    let source = Source::new(Duration::from_secs(3600), Duration::ZERO);
    source.set(Mode::Fail);
    // A lease far longer than the wait below: only a release lets the next one in.
    let config = FleetConfig {
        lease_ttl: Duration::from_secs(6),
        max_wait: Duration::from_secs(8),
        refusal_min: Duration::from_millis(300),
        ..test_config()
    };
    let f = Fleet::new(
        Arc::new(RedisStore::new(redis.url()).unwrap()),
        &identity("secret"),
        config,
    )
    .unwrap();
    let err = f.fetch(&source, MARGINS, None).await.unwrap_err();
    assert_eq!(err.kind(), crate::ErrorKind::Unavailable);
    // The lease was released: the next refresh does not wait for it. It returns the
    // recorded refusal at once, and fetches once the fleet's pause is over.
    source.set(Mode::Ok);
    let start = Instant::now();
    let refused = f.fetch(&source, MARGINS, None).await.unwrap_err();
    assert_eq!(refused.kind(), crate::ErrorKind::Unavailable);
    assert!(start.elapsed() < config.lease_ttl / 2);
    tokio::time::sleep(config.refusal_min).await;
    let start = Instant::now();
    let token = f.fetch(&source, MARGINS, None).await.unwrap();
    let waited = start.elapsed();
    assert_eq!(token.access_token().secret(), "token-2");
    assert_eq!(f.stats().lease_fetches, 2);
    assert!(waited < config.lease_ttl / 2, "waited {waited:?}");
}

#[tokio::test]
async fn store_down_falls_back_without_error() {
    // A port nothing listens on.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let f = fleet(&format!("redis://127.0.0.1:{port}"), "secret");
    let source = Source::new(Duration::from_secs(3600), Duration::ZERO);
    for n in 1..=3 {
        let token = f.fetch(&source, MARGINS, None).await.unwrap();
        assert_eq!(token.access_token().secret(), format!("token-{n}"));
    }
    assert_eq!(f.stats().fallbacks, 3);
    assert!(f.outage.load(Ordering::SeqCst));

    // And a server that stops and comes back.
    let mut redis = server();
    let f = fleet(&redis.url(), "secret");
    f.fetch(&source, MARGINS, None).await.unwrap();
    assert_eq!(f.stats().lease_fetches, 1);
    redis.stop();
    f.fetch(&source, MARGINS, None).await.unwrap();
    assert_eq!(f.stats().fallbacks, 1);
    redis.restart().unwrap();
    // The store forgot everything (no persistence): a lease fetch again, once reconnected.
    let mut fetched = false;
    for _ in 0..50 {
        f.fetch(&source, MARGINS, None).await.unwrap();
        if f.stats().lease_fetches == 2 {
            fetched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(fetched, "{:?}", f.stats());
    assert!(!f.outage.load(Ordering::SeqCst));
}

#[tokio::test]
async fn garbage_is_a_miss_and_is_replaced() {
    let redis = server();
    let store = RedisStore::new(redis.url()).unwrap();
    let f = fleet(&redis.url(), "secret");
    let name = f.sealer.key_name().to_owned();
    let source = Source::new(Duration::from_secs(3600), Duration::ZERO);
    let mut version_garbage = vec![VERSION];
    version_garbage.extend_from_slice(&[0xAB; 60]);
    for (n, garbage) in [b"not a token".to_vec(), version_garbage, vec![0xFF; 3]]
        .into_iter()
        .enumerate()
    {
        store.remove_if_prefix(&name, b"").await.unwrap();
        // Garbage that outlives any token.
        assert!(
            store
                .save_if_longer(&name, garbage.into(), Duration::from_secs(86_400))
                .await
                .unwrap()
        );
        let token = f.fetch(&source, MARGINS, None).await.unwrap();
        assert_eq!(token.access_token().secret(), format!("token-{}", n + 1));
        let stored = store.load(&name).await.unwrap().unwrap();
        assert_eq!(
            f.sealer.open(stored.value()).map(|o| o.token),
            Some(format!("token-{}", n + 1))
        );
    }
    // A token sealed with another secret under our name is garbage too.
    let rotated = Fleet::new(
        Arc::new(store.clone()),
        &identity("old-secret"),
        test_config(),
    )
    .unwrap();
    let foreign = rotated
        .sealer
        .seal(
            "foreign",
            Duration::from_secs(3600),
            Duration::from_secs(3600),
        )
        .unwrap();
    store.remove_if_prefix(&name, b"").await.unwrap();
    store
        .save_if_longer(&name, foreign, Duration::from_secs(3600))
        .await
        .unwrap();
    let token = f.fetch(&source, MARGINS, None).await.unwrap();
    assert_ne!(token.access_token().secret(), "foreign");
    assert_eq!(f.stats().fallbacks, 0);
}

/// Defect 11 of issue 21: short garbage that starts with the version byte, stored with a
/// long time to live, reads as a miss and is replaced (it used to stay, and make every
/// write refuse).
#[tokio::test]
async fn short_garbage_with_the_version_byte_is_replaced() {
    let redis = server();
    let store = RedisStore::new(redis.url()).unwrap();
    let f = fleet(&redis.url(), "secret");
    let name = f.sealer.key_name().to_owned();
    let source = Source::new(Duration::from_secs(3600), Duration::ZERO);
    for (n, garbage) in [vec![VERSION], vec![VERSION, 0xAB, 0xCD]]
        .into_iter()
        .enumerate()
    {
        store.remove_if_prefix(&name, b"").await.unwrap();
        assert!(
            store
                .save_if_longer(&name, garbage.into(), Duration::from_secs(86_400))
                .await
                .unwrap()
        );
        let token = f.fetch(&source, MARGINS, None).await.unwrap();
        assert_eq!(token.access_token().secret(), format!("token-{}", n + 1));
        let stored = store.load(&name).await.unwrap().unwrap();
        assert_eq!(
            f.sealer.open(stored.value()).map(|o| o.token),
            Some(format!("token-{}", n + 1)),
            "the garbage stayed"
        );
    }
}

/// Defect 7 of issue 21: whoever can write the store can re-`SET` an old sealed value
/// with a long time to live; its remaining life is capped by its sealed issue time and
/// lifetime, so the fleet never adopts it once expired.
#[tokio::test]
async fn a_replayed_value_with_a_long_ttl_is_not_adopted() {
    let redis = server();
    let store = RedisStore::new(redis.url()).unwrap();
    let f = fleet(&redis.url(), "secret");
    let name = f.sealer.key_name().to_owned();
    let lifetime = Duration::from_millis(800);
    let source = Source::new(lifetime, Duration::ZERO);
    f.fetch(&source, MARGINS, None).await.unwrap();
    let old = store.load(&name).await.unwrap().unwrap().into_value();
    tokio::time::sleep(lifetime + Duration::from_millis(200)).await;
    assert_eq!(store.load(&name).await.unwrap(), None, "it expired");
    // Replayed, with an hour to live.
    assert!(
        store
            .save_if_longer(&name, old, Duration::from_secs(3600))
            .await
            .unwrap()
    );
    let g = fleet(&redis.url(), "secret");
    let token = g.fetch(&source, MARGINS, None).await.unwrap();
    assert_eq!(
        token.access_token().secret(),
        "token-2",
        "the replayed token was adopted"
    );
    assert_eq!(g.stats().adopted, 0);
}

#[tokio::test]
async fn two_identities_use_two_keys() {
    let redis = server();
    let store = RedisStore::new(redis.url()).unwrap();
    let a = fleet(&redis.url(), "secret-a");
    let b = fleet(&redis.url(), "secret-b");
    assert_ne!(a.sealer.key_name(), b.sealer.key_name());
    let source_a = Source::new(Duration::from_secs(3600), Duration::ZERO);
    let source_b = Source::new(Duration::from_secs(3600), Duration::ZERO);
    a.fetch(&source_a, MARGINS, None).await.unwrap();
    b.fetch(&source_b, MARGINS, None).await.unwrap();
    assert_eq!((source_a.calls(), source_b.calls()), (1, 1));
    assert!(store.load(a.sealer.key_name()).await.unwrap().is_some());
    assert!(store.load(b.sealer.key_name()).await.unwrap().is_some());
}

/// What Redis writes to disk holds neither the token, nor the client secret, nor the
/// client id, the token URL or the scopes.
#[tokio::test]
async fn a_snapshot_shows_no_secret_and_no_identity() {
    let redis = server();
    const TOKEN: &str = "eyJhbGciOi.distinctive-access-token-7f3a9c.sig";
    const SECRET: &str = "distinctive-client-secret-51e0";
    const CLIENT_ID: &str = "distinctive-client-id-9b2d";
    const URL: &str = "http://127.0.0.1:1/distinctive-token-path";
    const SCOPE: &str = "distinctive/scope";
    let identity = SharedIdentity::client_credentials(URL, CLIENT_ID, [SCOPE], SECRET);
    let store = RedisStore::new(redis.url()).unwrap();
    let f = Fleet::new(Arc::new(store), &identity, test_config()).unwrap();

    struct Fixed;
    impl TokenSource for Fixed {
        fn fetch(&self) -> BoxFuture<'_, Result<Token, Error>> {
            Box::pin(async {
                let token = AccessToken::new(TOKEN)?;
                Ok(Token::new(
                    token,
                    Instant::now() + Duration::from_secs(3600),
                ))
            })
        }
    }
    f.fetch(&Fixed, MARGINS, None).await.unwrap();
    assert_eq!(f.stats().lease_fetches, 1);

    let client = ::redis::Client::open(redis.url()).unwrap();
    // No response timeout: `SAVE` on a loaded test machine may take longer than the
    // client's default 500 ms.
    let config = ::redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    let () = ::redis::cmd("CONFIG")
        .arg("SET")
        .arg("rdbcompression")
        .arg("no")
        .query_async(&mut conn)
        .await
        .unwrap();
    let () = ::redis::cmd("SAVE").query_async(&mut conn).await.unwrap();
    let dump = std::fs::read(redis.dir().join("dump.rdb")).unwrap();
    let contains = |needle: &str| dump.windows(needle.len()).any(|w| w == needle.as_bytes());
    // The snapshot is readable and holds the entry.
    assert!(contains(f.sealer.key_name()));
    for secret in [
        TOKEN,
        "distinctive-access-token",
        SECRET,
        CLIENT_ID,
        URL,
        SCOPE,
    ] {
        assert!(!contains(secret), "{secret} is in the snapshot");
    }
}

/// Defect 10 of issue 21: a late refresh of this process, whose lease lapsed and was taken
/// by a newer refresh of the same process, does not release the newer one's lease.
#[tokio::test]
async fn a_late_refresh_does_not_release_a_newer_refreshs_lease() {
    let redis = server();
    let store = RedisStore::new(redis.url()).unwrap();
    let f = Arc::new(fleet(&redis.url(), "secret"));
    let lease = f.sealer.lease_name().to_owned();
    let slow = Source::new(Duration::from_secs(3600), Duration::from_millis(1200));
    let late = {
        let (f, slow) = (Arc::clone(&f), slow.clone());
        tokio::spawn(async move { f.fetch(&slow, MARGINS, None).await })
    };
    while slow.calls() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Its lease lapses while it fetches (as when the store was out of reach longer than the
    // lease, so that its holder could not extend it).
    let mut raw = raw(&redis).await;
    let _: () = ::redis::cmd("DEL")
        .arg(&lease)
        .query_async(&mut raw)
        .await
        .unwrap();
    let hanging = Source::new(Duration::from_secs(3600), Duration::ZERO);
    hanging.set(Mode::Hang);
    let newer = {
        let (f, hanging) = (Arc::clone(&f), hanging.clone());
        tokio::spawn(async move { f.fetch(&hanging, MARGINS, None).await })
    };
    for _ in 0..500 {
        if hanging.calls() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(hanging.calls(), 1, "the newer refresh took the lease");
    late.await.unwrap().unwrap();
    // The newer refresh still holds the lease.
    let taken = store
        .try_lease(&lease, "another-process", Duration::from_secs(1))
        .await
        .unwrap();
    assert!(
        !taken,
        "the late refresh released the newer refresh's lease"
    );
    newer.abort();
}

/// A raw connection to `redis`, for what the store does not do.
pub(super) async fn raw(redis: &RedisServer) -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A real `RedisStore` whose `try_lease` reply is lost: the `SET NX` runs on the server,
/// and the caller sees an error, as when the reply arrives after the timeout.
struct LeaseReplyLost(RedisStore);

impl TokenStore for LeaseReplyLost {
    fn load(&self, key: &str) -> BoxFuture<'_, Result<Option<Stored>, BoxError>> {
        self.0.load(key)
    }
    fn save_if_longer(
        &self,
        key: &str,
        value: bytes::Bytes,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, BoxError>> {
        self.0.save_if_longer(key, value, ttl)
    }
    fn remove_if_prefix(&self, key: &str, prefix: &[u8]) -> BoxFuture<'_, Result<bool, BoxError>> {
        self.0.remove_if_prefix(key, prefix)
    }
    fn remove_if_equal(&self, key: &str, value: &[u8]) -> BoxFuture<'_, Result<bool, BoxError>> {
        self.0.remove_if_equal(key, value)
    }
    fn try_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, BoxError>> {
        let set = self.0.try_lease(key, holder, ttl);
        Box::pin(async move {
            set.await?;
            Err("the reply to SET NX was lost".into())
        })
    }
    fn release_lease(&self, key: &str, holder: &str) -> BoxFuture<'_, Result<(), BoxError>> {
        self.0.release_lease(key, holder)
    }
}

/// Defect 2 of issue 21: a process whose lease reply was lost falls back, and releases the
/// lease it may hold: the others do not wait for it to lapse.
#[tokio::test]
async fn a_lost_lease_reply_does_not_stall_the_others() {
    let redis = server();
    let config = FleetConfig {
        lease_ttl: Duration::from_secs(6),
        max_wait: Duration::from_secs(8),
        ..test_config()
    };
    let store = RedisStore::new(redis.url()).unwrap();
    let lost = Fleet::new(
        Arc::new(LeaseReplyLost(store.clone())),
        &identity("secret"),
        config,
    )
    .unwrap();
    let lease = lost.sealer.lease_name().to_owned();
    let source = Source::new(Duration::from_secs(3600), Duration::ZERO);
    lost.fetch(&source, MARGINS, None).await.unwrap();
    assert_eq!(lost.stats().fallbacks, 1);
    // Released from a task of its own, long before its 6 s would lapse.
    let left = lease_left(&redis, &lease).await;
    assert_eq!(left, -2, "the lease is still held, for {left} ms");
    // The token it fetched for itself is shared all the same.
    let other = Fleet::new(Arc::new(store), &identity("secret"), config).unwrap();
    let token = other.fetch(&source, MARGINS, None).await.unwrap();
    assert_eq!(token.access_token().secret(), "token-1");
    assert_eq!((source.calls(), other.stats().adopted), (1, 1));
}

/// Defect 5 of issue 21: a refused fetch is recorded; the others return it without
/// fetching while it holds; a forged record is ignored, and a genuine one stored again
/// with a long time to live is honoured for at most `refusal_max` in a row.
#[tokio::test]
async fn a_refusal_is_shared_and_bounded() {
    let redis = server();
    let store = RedisStore::new(redis.url()).unwrap();
    let config = FleetConfig {
        refusal_min: Duration::from_millis(400),
        refusal_max: Duration::from_millis(800),
        ..test_config()
    };
    let make = || {
        Fleet::new(
            Arc::new(RedisStore::new(redis.url()).unwrap()),
            &identity("secret"),
            config,
        )
        .unwrap()
    };
    let (a, b) = (make(), make());
    let source = Source::new(Duration::from_secs(3600), Duration::ZERO);
    source.set(Mode::Fail);
    let refused = a.fetch(&source, MARGINS, None).await.unwrap_err();
    assert_eq!(refused.status(), Some(http::StatusCode::BAD_GATEWAY));
    let shared = b.fetch(&source, MARGINS, None).await.unwrap_err();
    assert_eq!(shared.status(), Some(http::StatusCode::BAD_GATEWAY));
    let left = shared.retry_after().unwrap();
    assert!(left <= config.refusal_min && !left.is_zero(), "{left:?}");
    assert_eq!(source.calls(), 1, "the refusal was not honoured");
    assert_eq!(b.stats().refusals_honoured, 1);

    // The next refusal in a row doubles the pause.
    tokio::time::sleep(config.refusal_min + Duration::from_millis(50)).await;
    a.fetch(&source, MARGINS, None).await.unwrap_err();
    assert_eq!(source.calls(), 2);
    let left = b
        .fetch(&source, MARGINS, None)
        .await
        .unwrap_err()
        .retry_after();
    assert!(left.unwrap() > config.refusal_min, "{left:?}");

    // A record without the secret's tag is ignored.
    let name = a.sealer.refused_name().to_owned();
    store.remove_if_prefix(&name, b"").await.unwrap();
    let mut forged = vec![REFUSAL_MARK, 1, 1, 0xAD];
    forged.extend_from_slice(&u64::MAX.to_be_bytes());
    forged.extend_from_slice(&now_ms().to_be_bytes());
    forged.extend_from_slice(&[0u8; TAG_LEN]);
    store
        .save_if_longer(&name, forged.into(), Duration::from_secs(86_400))
        .await
        .unwrap();
    source.set(Mode::Ok);
    let c = make();
    c.fetch(&source, MARGINS, None).await.unwrap();
    assert_eq!(source.calls(), 3, "a forged record stopped a fetch");

    // A genuine record stored again for a day: honoured, for at most `refusal_max`.
    let genuine = Refusal::new(true, 429, Duration::from_secs(43_200)).encode(&a.sealer);
    let name_token = a.sealer.key_name().to_owned();
    store.remove_if_prefix(&name_token, b"").await.unwrap();
    store.remove_if_prefix(&name, b"").await.unwrap();
    store
        .save_if_longer(&name, genuine.into(), Duration::from_secs(86_400))
        .await
        .unwrap();
    let d = make();
    let error = d.fetch(&source, MARGINS, None).await.unwrap_err();
    let left = error.retry_after().unwrap();
    // Clamped to `refusal_max`, less the moments since it was made.
    assert!(
        left <= config.refusal_max && left > config.refusal_min,
        "{left:?}"
    );
    assert_eq!(source.calls(), 3);
    tokio::time::sleep(config.refusal_max + Duration::from_millis(50)).await;
    d.fetch(&source, MARGINS, None).await.unwrap();
    assert_eq!(
        source.calls(),
        4,
        "honoured the replayed record for too long"
    );
}

/// A store whose every operation fails, to check the fallback without Redis.
struct Broken;

impl TokenStore for Broken {
    fn load(&self, _: &str) -> BoxFuture<'_, Result<Option<Stored>, BoxError>> {
        Box::pin(async { Err("broken".into()) })
    }
    fn save_if_longer(
        &self,
        _: &str,
        _: bytes::Bytes,
        _: Duration,
    ) -> BoxFuture<'_, Result<bool, BoxError>> {
        Box::pin(async { Err("broken".into()) })
    }
    fn remove_if_prefix(&self, _: &str, _: &[u8]) -> BoxFuture<'_, Result<bool, BoxError>> {
        Box::pin(async { Err("broken".into()) })
    }
    fn remove_if_equal(&self, _: &str, _: &[u8]) -> BoxFuture<'_, Result<bool, BoxError>> {
        Box::pin(async { Err("broken".into()) })
    }
    fn try_lease(&self, _: &str, _: &str, _: Duration) -> BoxFuture<'_, Result<bool, BoxError>> {
        Box::pin(async { Err("broken".into()) })
    }
    fn release_lease(&self, _: &str, _: &str) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async { Err("broken".into()) })
    }
}

#[tokio::test]
async fn a_broken_store_is_a_fallback() {
    let f = Fleet::new(Arc::new(Broken), &identity("s"), test_config()).unwrap();
    let source = Source::new(Duration::from_secs(60), Duration::ZERO);
    let first = f.fetch(&source, MARGINS, None).await.unwrap();
    f.fetch(&source, MARGINS, Some(first.access_token()))
        .await
        .unwrap();
    assert_eq!(f.stats().fallbacks, 2);
    assert_eq!(source.calls(), 2);
}

/// Defect 5 of issue 29: a refusal record carries when it was made. An old genuine record,
/// stored again with a long time to live by whoever can write the store after it lapsed, stops
/// no fetch.
#[tokio::test]
async fn a_replayed_refusal_record_is_ignored() {
    let redis = server();
    let store = RedisStore::new(redis.url()).unwrap();
    let config = FleetConfig {
        refusal_min: Duration::from_millis(300),
        ..test_config()
    };
    let make = || {
        Fleet::new(
            Arc::new(RedisStore::new(redis.url()).unwrap()),
            &identity("secret"),
            config,
        )
        .unwrap()
    };
    let a = make();
    let source = Source::new(Duration::from_secs(3600), Duration::ZERO);
    source.set(Mode::Fail);
    a.fetch(&source, MARGINS, None).await.unwrap_err();
    let name = a.sealer.refused_name().to_owned();
    let recorded = store.load(&name).await.unwrap().unwrap().into_value();
    // The record lapses (it is kept for twice its pause).
    for _ in 0..300 {
        if store.load(&name).await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(store.load(&name).await.unwrap().is_none(), "never lapsed");
    // Stored again, for a minute.
    assert!(
        store
            .save_if_longer(&name, recorded, Duration::from_secs(60))
            .await
            .unwrap()
    );
    source.set(Mode::Ok);
    let b = make();
    let token = b.fetch(&source, MARGINS, None).await;
    assert!(
        token.is_ok(),
        "the replayed refusal was honoured: {token:?}"
    );
    assert_eq!((source.calls(), b.stats().refusals_honoured), (2, 0));
}

/// Waits (bounded) until `lease` is gone from `redis`; its remaining life in ms, or -2 when
/// it is gone.
pub(super) async fn lease_left(redis: &RedisServer, lease: &str) -> i64 {
    let mut raw = raw(redis).await;
    let mut left: i64 = -3;
    for _ in 0..100 {
        left = ::redis::cmd("PTTL")
            .arg(lease)
            .query_async(&mut raw)
            .await
            .unwrap();
        if left == -2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    left
}

mod cancel;
