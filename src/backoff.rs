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
mod tests;
