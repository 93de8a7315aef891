//! Unit tests of `RedisStore`'s URLs, seeds and `Debug`.

use super::*;

#[test]
fn urls() {
    for good in [
        "redis://127.0.0.1:6379",
        "redis://:pw@127.0.0.1:6379/2",
        "redis://user:pw@cache.internal",
        "rediss://cache.internal:6380",
        "REDIS://localhost",
        "redis+unix:///run/redis.sock",
    ] {
        assert!(RedisStore::new(good).is_ok(), "{good}");
    }
    for bad in [
        "",
        "http://127.0.0.1:6379",
        "redis//x",
        "127.0.0.1:6379",
        "rediss://cache.internal/#insecure",
        "redis://:secret-pw@[::1",
    ] {
        let err = RedisStore::new(bad).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidConfig, "{bad}");
        assert!(!err.to_string().contains("secret-pw"));
    }
}

#[test]
fn cluster_seeds() {
    for good in [
        &["redis://127.0.0.1:7000"][..],
        &["redis://:pw@10.0.1.10:6379", "REDIS://:pw@10.0.2.10:6379"],
    ] {
        assert!(RedisStore::cluster(good).is_ok(), "{good:?}");
    }
    for bad in [
        &[][..],
        &["redis://127.0.0.1:7000", "rediss://127.0.0.1:7001"],
        &["rediss://cache.internal:6379/#insecure"],
        &["redis+unix:///run/redis.sock"],
        &["http://127.0.0.1:7000"],
        &["redis://:secret-pw@[::1"],
        &[
            "redis://:secret-pw@10.0.1.10:6379",
            "redis://:other-pw@10.0.2.10:6379",
        ],
        // The first without credentials, another with: the cluster client would take
        // the first's (none) for the commands, the subscriber the other's.
        &[
            "redis://10.0.1.10:6379",
            "redis://:secret-pw@10.0.2.10:6379",
        ],
        &["redis://10.0.1.10:6379/2"],
    ] {
        let err = RedisStore::cluster(bad).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidConfig, "{bad:?}");
        assert!(!err.to_string().contains("secret-pw"));
    }
    let store = RedisStore::cluster([
        "redis://admin:hunter2-pw@10.0.1.10:6379",
        "redis://admin:hunter2-pw@10.0.2.10:6379",
    ])
    .unwrap();
    let debug = format!("{store:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(debug.contains("10.0.1.10:6379,10.0.2.10:6379"), "{debug}");
    assert!(debug.contains("cluster: true"), "{debug}");
    assert!(debug.contains("[redacted]"), "{debug}");
}

#[test]
fn debug_hides_credentials() {
    let store = RedisStore::new("rediss://admin:hunter2-pw@cache.internal:6380/3").unwrap();
    let debug = format!("{store:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(!debug.contains("admin"), "{debug}");
    assert!(debug.contains("cache.internal:6380"), "{debug}");
    assert!(debug.contains("[redacted]"), "{debug}");
    assert!(debug.contains("db: 3"), "{debug}");
}
