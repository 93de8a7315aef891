//! [`Stats`]: the cache's counters.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters, for tests, dashboards and the demo. Read them with
/// [`TokenCache::stats`](super::TokenCache::stats) or `CognitoAuthLayer::stats`. `Debug` shows
/// the shared store's counters only with the feature (`store`) that counts them.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Token requests sent: calls to [`TokenSource::fetch`](crate::TokenSource::fetch). (Retries
    /// inside one fetch of [`ClientCredentials`](crate::ClientCredentials) are not counted
    /// separately.) Without a shared store, one per refresh; with one, only the refreshes that
    /// fetched (`lease_fetches + store_fallbacks`), not those that adopted a stored token.
    pub token_requests: u64,
    /// Refreshes started, whether they fetched a token or adopted one from the shared store;
    /// counted when the refresh's task first runs (one its runtime dropped unrun, shutting
    /// down, asked nothing of anyone and is not counted).
    pub refreshes: u64,
    /// Refreshes that failed.
    pub token_failures: u64,
    /// Refreshes started ahead of expiry, while the current token was still usable (by a
    /// request in the refresh-ahead window or by the background task).
    pub refresh_ahead: u64,
    /// Requests that found no usable token and had to wait for a refresh.
    pub waited: u64,
    /// Tokens dropped after the downstream service rejected them.
    pub invalidations: u64,
    /// Requests the layer sent again with a new token after a rejection.
    pub replays: u64,
    /// Rejections handed back to the caller: without a replay (the body was too large or
    /// streaming, [`Replay`](crate::Replay) said no, or no newer token could be had: the
    /// rejection was throttled), or the replay's own.
    pub rejections_returned: u64,
    /// Refreshes that adopted a token another process had stored in the shared store: no
    /// token request. Zero without a [shared store](super::TokenCacheBuilder::shared_store).
    pub adopted: u64,
    /// Token requests this process made as the holder of the shared store's lease, for the
    /// whole fleet (counted in `token_requests` too).
    pub lease_fetches: u64,
    /// Refreshes that fetched for this process alone because the shared store failed, was too
    /// slow, or another process took too long.
    pub store_fallbacks: u64,
}

impl fmt::Debug for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Stats");
        d.field("token_requests", &self.token_requests)
            .field("refreshes", &self.refreshes)
            .field("token_failures", &self.token_failures)
            .field("refresh_ahead", &self.refresh_ahead)
            .field("waited", &self.waited)
            .field("invalidations", &self.invalidations)
            .field("replays", &self.replays)
            .field("rejections_returned", &self.rejections_returned);
        #[cfg(feature = "store")]
        d.field("adopted", &self.adopted)
            .field("lease_fetches", &self.lease_fetches)
            .field("store_fallbacks", &self.store_fallbacks);
        d.finish()
    }
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) refreshes: AtomicU64,
    pub(super) token_failures: AtomicU64,
    pub(super) refresh_ahead: AtomicU64,
    pub(super) waited: AtomicU64,
    pub(super) invalidations: AtomicU64,
    pub(super) replays: AtomicU64,
    pub(super) rejections_returned: AtomicU64,
}

impl Counters {
    pub(super) fn snapshot(&self) -> Stats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            token_requests: load(&self.refreshes),
            refreshes: load(&self.refreshes),
            token_failures: load(&self.token_failures),
            refresh_ahead: load(&self.refresh_ahead),
            waited: load(&self.waited),
            invalidations: load(&self.invalidations),
            replays: load(&self.replays),
            rejections_returned: load(&self.rejections_returned),
            adopted: 0,
            lease_fetches: 0,
            store_fallbacks: 0,
        }
    }
}

pub(super) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::Stats;

    /// `Debug` names the store's counters only where the feature that counts them is on.
    #[test]
    fn debug_shows_what_the_features_count() {
        let text = format!("{:?}", Stats::default());
        assert!(text.contains("token_requests: 0"), "{text}");
        assert_eq!(text.contains("adopted"), cfg!(feature = "store"), "{text}");
    }
}
