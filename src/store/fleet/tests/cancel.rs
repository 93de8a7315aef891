//! Unit tests of `fleet`: a refresh cancelled while the store may hold its lease.

use super::*;
use crate::store::{RedisStore, Stored};

/// A real `RedisStore` whose `try_lease` runs the `SET NX` on the server, notes it, and then
/// never answers.
struct LeaseReplyHangs(RedisStore, Arc<AtomicUsize>);

impl TokenStore for LeaseReplyHangs {
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
            self.1.fetch_add(1, Ordering::SeqCst);
            std::future::pending().await
        })
    }
    fn release_lease(&self, key: &str, holder: &str) -> BoxFuture<'_, Result<(), BoxError>> {
        self.0.release_lease(key, holder)
    }
}

/// Defect 3 of issue 29: a refresh cancelled while the store may hold its lease (mid-`SET
/// NX`, whose reply never came; mid-fetch) releases it: the others do not wait out its time
/// to live (6 s here).
#[tokio::test]
async fn a_cancelled_refresh_releases_its_lease() {
    let redis = server();
    let config = FleetConfig {
        lease_ttl: Duration::from_secs(6),
        ..test_config()
    };
    let store = RedisStore::new(redis.url()).unwrap();
    let source = Source::new(Duration::from_secs(3600), Duration::ZERO);

    // Cancelled mid-`SET NX`.
    let sets = Arc::new(AtomicUsize::new(0));
    let hangs = Arc::new(
        Fleet::new(
            Arc::new(LeaseReplyHangs(store.clone(), Arc::clone(&sets))),
            &identity("secret"),
            config,
        )
        .unwrap(),
    );
    let lease = hangs.sealer.lease_name().to_owned();
    let task = {
        let (hangs, source) = (Arc::clone(&hangs), source.clone());
        tokio::spawn(async move { hangs.fetch(&source, MARGINS, None).await })
    };
    for _ in 0..500 {
        if sets.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(sets.load(Ordering::SeqCst), 1, "the SET NX ran");
    task.abort();
    let left = lease_left(&redis, &lease).await;
    assert_eq!(
        left, -2,
        "cancelled mid-SET NX: the lease is held for {left} ms more"
    );

    // Cancelled mid-fetch.
    source.set(Mode::Hang);
    let holder = Arc::new(Fleet::new(Arc::new(store), &identity("secret"), config).unwrap());
    let task = {
        let (holder, source) = (Arc::clone(&holder), source.clone());
        tokio::spawn(async move { holder.fetch(&source, MARGINS, None).await })
    };
    for _ in 0..500 {
        if source.calls() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(source.calls(), 1, "the holder fetches");
    task.abort();
    let left = lease_left(&redis, &lease).await;
    assert_eq!(
        left, -2,
        "cancelled mid-fetch: the lease is held for {left} ms more"
    );
}
