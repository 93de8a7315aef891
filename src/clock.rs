//! The clock a request with a cached token reads: the kernel's coarse monotonic clock.
//!
//! Every decision of the cache is made on Tokio's clock ([`tokio::time::Instant`]), so that
//! paused-clock tests drive it. A request whose service holds a fresh copy of the token only
//! needs to know that the copy's freshness has not run out, and freshness ends well before the
//! token stops being usable (`refresh_ahead` against `min_validity`: 300 s against 30 s by
//! default, and at least 40 % of the lifetime for short tokens). A clock that is a few
//! milliseconds behind is exact enough for that, and on Linux there is one that costs a read
//! of the vDSO page and no timer hardware: `CLOCK_MONOTONIC_COARSE`, the monotonic clock as of
//! the last kernel tick (about a quarter of the cost of `Instant::now` on the machine the
//! README's benchmarks come from). It runs on through a process that was frozen (a Lambda between
//! invocations, a stopped container), so a copy cannot outlive its freshness however long its
//! runtime slept; a timer alone could not promise that, because a runtime that wakes runs its
//! callers before its timers.
//!
//! Tokio's clock can also be paused (`time::pause`, `start_paused`) and moved by `advance`,
//! which the kernel's clock does not follow: a service that finds Tokio's clock paused when it
//! copies a token (two readings in a row are equal) judges that copy on Tokio's clock instead.
//!
//! Elsewhere than on Linux the same functions read [`std::time::Instant`].

use std::time::Duration;

/// A reading of the coarse clock, in nanoseconds from an arbitrary origin.
pub(crate) type Ticks = u64;

/// Now, on the coarse clock.
#[inline]
pub(crate) fn now() -> Ticks {
    let now = read();
    #[cfg(test)]
    let now = now.wrapping_add(SKIPPED.with(std::cell::Cell::get));
    now
}

#[cfg(any(target_os = "linux", target_os = "android"))]
#[inline]
fn read() -> Ticks {
    use rustix::time::{ClockId, clock_gettime};
    to_ticks(clock_gettime(ClockId::MonotonicCoarse))
}

/// How far the coarse clock may be behind the precise one: its resolution (one kernel tick).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn lag() -> Duration {
    use rustix::time::{ClockId, clock_getres};
    static LAG: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *LAG.get_or_init(|| {
        let res = clock_getres(ClockId::MonotonicCoarse);
        // Never less than a tick of the slowest common kernel configuration (100 Hz).
        Duration::from_nanos(to_ticks(res)).max(Duration::from_millis(10))
    })
}

/// A monotonic reading (never negative, and 584 years of uptime away from overflowing) in
/// nanoseconds.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[inline]
fn to_ticks(t: rustix::time::Timespec) -> Ticks {
    (t.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(t.tv_nsec as u64)
}

/// The precise clock, where no coarse one is at hand.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
#[inline]
fn read() -> Ticks {
    static ORIGIN: std::sync::LazyLock<std::time::Instant> =
        std::sync::LazyLock::new(std::time::Instant::now);
    u64::try_from(ORIGIN.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The precise clock is never behind itself.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn lag() -> Duration {
    Duration::ZERO
}

/// The coarse reading before which `remaining` has surely not run out: `start + remaining -
/// lag()`, where `start` is a coarse reading taken before the precise one `remaining` was
/// measured from (so that a pause between the two can only make the deadline early). `None`
/// when that is not after `start`.
pub(crate) fn deadline_in(start: Ticks, remaining: Duration) -> Option<Ticks> {
    let remaining = remaining.checked_sub(lag())?;
    if remaining.is_zero() {
        return None;
    }
    let nanos = u64::try_from(remaining.as_nanos()).unwrap_or(u64::MAX);
    Some(start.saturating_add(nanos))
}

#[cfg(test)]
thread_local! {
    /// How far this thread's coarse clock was moved on by `skip`.
    static SKIPPED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Moves this thread's coarse clock on by `by`, as if that much time had passed: what a
/// process frozen with its runtime sees when it wakes (Tokio's paused clock moves apart).
#[cfg(test)]
pub(crate) fn skip(by: Duration) {
    let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
    SKIPPED.with(|skipped| skipped.set(skipped.get().saturating_add(by)));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The coarse clock measures what the precise one does, give or take its lag (each coarse
    /// reading is bracketed by precise ones, so a preemption between them cannot fail this).
    #[test]
    fn the_coarse_clock_keeps_up_with_the_precise_one() {
        let p0 = std::time::Instant::now();
        let c0 = now();
        let p1 = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(25));
        let p2 = std::time::Instant::now();
        let c1 = now();
        let p3 = std::time::Instant::now();
        let coarse = Duration::from_nanos(c1 - c0);
        assert!(
            coarse <= p3 - p0 + lag(),
            "{coarse:?} ran ahead of {:?}",
            p3 - p0
        );
        assert!(
            coarse + lag() >= p2 - p1,
            "{coarse:?} fell behind {:?}",
            p2 - p1
        );
    }

    #[test]
    fn a_deadline_is_the_remaining_time_less_the_lag() {
        let start = now();
        assert_eq!(deadline_in(start, Duration::ZERO), None);
        assert_eq!(deadline_in(start, lag()), None);
        let less = u64::try_from((Duration::from_secs(60) - lag()).as_nanos()).unwrap();
        assert_eq!(
            deadline_in(start, Duration::from_secs(60)),
            Some(start + less)
        );
        assert_eq!(deadline_in(start, Duration::MAX), Some(u64::MAX));
    }
}
