//! Exponential backoff with full jitter, and `Retry-After`.
//!
//! Full jitter (each delay drawn uniformly from zero to the exponential ceiling) spreads a
//! fleet of clients that failed together, so that they do not come back together. tower's
//! `ExponentialBackoff` adds jitter on top of the base instead, hence a module of our own.

use std::time::{Duration, SystemTime};

use http::HeaderValue;

/// The longest `Retry-After` honoured; a longer one is cut to this.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Exponential backoff: the `n`th retry waits a random time in `[0, min(cap, base × 2ⁿ)]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backoff {
    base: Duration,
    cap: Duration,
    jitter: bool,
}

impl Backoff {
    /// A backoff that starts at `base` and doubles up to `cap`, with full jitter.
    pub(crate) const fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            jitter: true,
        }
    }

    /// The same schedule without jitter, so tests can count attempts exactly.
    #[cfg(test)]
    pub(crate) const fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// The longest delay.
    pub(crate) const fn cap(&self) -> Duration {
        self.cap
    }

    /// The upper bound of the delay before retry number `n` (0 for the first retry).
    pub(crate) fn ceiling(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay before retry number `n` (0 for the first retry).
    pub(crate) fn delay(&self, n: u32) -> Duration {
        self.delay_with(n, &mut fastrand::Rng::new())
    }

    /// [`delay`](Self::delay), drawing its jitter from `rng`.
    pub(crate) fn delay_with(&self, n: u32, rng: &mut fastrand::Rng) -> Duration {
        let ceiling = self.ceiling(n);
        if !self.jitter {
            return ceiling;
        }
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.u64(0..=nanos))
    }
}

/// Reads a `Retry-After` header: delay-seconds or an HTTP date (RFC 9110 §10.2.3). A date in
/// the past means "now". `None` for anything unreadable; a huge value is cut to one day.
pub(crate) fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let secs = text.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

#[cfg(test)]
mod tests {
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
}
