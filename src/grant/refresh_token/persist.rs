//! Saving the session: the `persist` hook, awaited after each exchange, bounded by its timeout,
//! and a failed save tried again with backoff.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{Inner, TokenSet};

/// The first pause before a failed save is tried again; it doubles up to [`SAVE_RETRY_CAP`].
const SAVE_RETRY_FIRST: Duration = Duration::from_secs(1);
const SAVE_RETRY_CAP: Duration = Duration::from_secs(60);

impl Inner {
    /// Saves a new token set before its access token is used: the newest set wins; a failure
    /// is reported (status, warning) and tried again later, and never fails the exchange.
    pub(super) async fn save(self: &Arc<Self>, set: TokenSet) {
        let mut unsaved = self.unsaved.lock().await;
        if self.save_once(set.clone()).await {
            *unsaved = None;
            self.status.send_modify(|status| status.unsaved = false);
            return;
        }
        *unsaved = Some(set);
        drop(unsaved);
        self.status.send_modify(|status| status.unsaved = true);
        if !self.retrying.swap(true, Ordering::AcqRel) {
            tokio::spawn(retry_saves(Arc::downgrade(self)));
        }
    }

    /// One call of the persist hook, bounded by `persist_timeout`; a panic in it counts as a
    /// failure. Reports a failure; returns whether the set was saved.
    pub(super) async fn save_once(&self, set: TokenSet) -> bool {
        let Some(hook) = &self.persist else {
            return true;
        };
        let call = tokio::spawn(hook(set));
        let abort = call.abort_handle();
        let failure = match tokio::time::timeout(self.persist_timeout, call).await {
            Ok(Ok(Ok(()))) => return true,
            Ok(Ok(Err(error))) => format!("the persist hook failed: {error}"),
            Ok(Err(_)) => "the persist hook panicked".to_owned(),
            Err(_) => {
                abort.abort();
                format!(
                    "the persist hook did not finish within {:?}",
                    self.persist_timeout
                )
            }
        };
        self.status.send_modify(|status| status.save_failures += 1);
        tracing::warn!(
            failure,
            "could not save the session; the newest refresh token is kept in memory and the \
             save is tried again"
        );
        false
    }
}

/// Tries a failed save again, with backoff on the session thread's clock (1 s doubling to
/// 60 s), until the newest set is saved or the grant is gone.
async fn retry_saves(inner: Weak<Inner>) {
    let mut delay = SAVE_RETRY_FIRST;
    loop {
        tokio::time::sleep(delay).await;
        delay = delay.saturating_mul(2).min(SAVE_RETRY_CAP);
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let mut unsaved = inner.unsaved.lock().await;
        let Some(set) = unsaved.clone() else {
            inner.retrying.store(false, Ordering::Release);
            return;
        };
        if inner.save_once(set).await {
            *unsaved = None;
            inner.status.send_modify(|status| status.unsaved = false);
            inner.retrying.store(false, Ordering::Release);
            tracing::info!("the session was saved after an earlier failure");
            return;
        }
    }
}
