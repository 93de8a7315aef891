//! Unit tests of `backoff`.

use super::*;
use proptest::prelude::*;

#[test]
fn ceiling_doubles_to_cap() {
    let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let secs: Vec<u64> = (0..9).map(|n| b.ceiling(n).as_secs()).collect();
    assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(60));
}

#[test]
fn full_jitter_stays_under_ceiling() {
    let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    for n in 0..20 {
        for _ in 0..50 {
            assert!(b.delay(n) <= b.ceiling(n));
        }
    }
    assert_eq!(b.without_jitter().delay(3), Duration::from_millis(800));
}

#[test]
fn retry_after_forms() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
    let v = |s: &'static str| HeaderValue::from_static(s);
    assert_eq!(
        parse_retry_after(&v("1"), now),
        Some(Duration::from_secs(1))
    );
    assert_eq!(
        parse_retry_after(&v(" 120 "), now),
        Some(Duration::from_secs(120))
    );
    assert_eq!(
        parse_retry_after(&v("99999999999999999999999"), now),
        Some(MAX_RETRY_AFTER)
    );
    // 2015-10-21 07:28:00 GMT is 1_445_412_480.
    assert_eq!(
        parse_retry_after(&v("Wed, 21 Oct 2015 07:28:30 GMT"), now),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        parse_retry_after(&v("Wed, 21 Oct 2015 07:00:00 GMT"), now),
        Some(Duration::ZERO)
    );
    assert_eq!(parse_retry_after(&v("soon"), now), None);
    assert_eq!(parse_retry_after(&v("-1"), now), None);
    assert_eq!(parse_retry_after(&v(""), now), None);
}

proptest! {
    #[test]
    fn retry_after_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64), secs in any::<u64>()) {
        if let Ok(v) = HeaderValue::from_bytes(&bytes) {
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(secs % (1 << 40));
            if let Some(d) = parse_retry_after(&v, now) {
                prop_assert!(d <= MAX_RETRY_AFTER);
            }
        }
    }

    #[test]
    fn delay_never_panics(base_ms in any::<u64>(), cap_ms in any::<u64>(), n in any::<u32>()) {
        let b = Backoff::new(Duration::from_millis(base_ms), Duration::from_millis(cap_ms));
        prop_assert!(b.delay(n) <= Duration::from_millis(cap_ms));
    }
}
