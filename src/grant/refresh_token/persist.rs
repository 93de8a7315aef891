//! Saving the session: the `persist` hook, awaited after each exchange, bounded by its timeout,
//! and a failed save tried again with backoff.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::exchange::closed;
use super::executor::{self, EXCHANGES};
use super::restore::Kept;
use super::{Inner, Latest, TokenSet, lock};
use crate::error::Error;

/// The first pause before a failed save is tried again; it doubles up to [`SAVE_RETRY_CAP`].
const SAVE_RETRY_FIRST: Duration = Duration::from_secs(1);
const SAVE_RETRY_CAP: Duration = Duration::from_secs(60);

impl Inner {
    /// A new sign-in: the session starts over with `set` (and `stored`, its access token
    /// dated on Tokio's clock). Waits for an exchange in flight; forgets the ended session and
    /// the previous session's unsaved set, tells the caches (the epoch) and saves `set`.
    pub(super) async fn start_over(
        self: &Arc<Self>,
        set: TokenSet,
        stored: Option<Kept>,
    ) -> Result<(), Error> {
        let mut session = self.session.lock().await;
        if session.closed {
            return Err(closed());
        }
        session.refresh_token = set.refresh_token.clone();
        session.ended = None;
        // The new sign-in may be another user's: its `SECRET_HASH` must not take the old name,
        // only the new access token's, if the set brings one.
        if let Some(api) = &self.user_pool_api {
            api.forget_username_claim();
            if let Some(access_token) = &set.access_token {
                api.saw_access_token(access_token.secret());
            }
        }
        *lock(&self.stored) = stored;
        *lock(&self.latest) = Latest {
            access_token: set.access_token.clone(),
            id_token: set.id_token.clone(),
        };
        self.status.send_modify(|status| {
            status.ended = None;
            status.unsaved_rotations = 0;
        });
        // After the new refresh token is in place: a cache that sees the new epoch drops the
        // previous session's access token and whatever its refresh in flight brings back.
        self.epoch.fetch_add(1, Ordering::Release);
        tracing::debug!("the session starts over (a new sign-in)");
        if self.persist.is_some() {
            // The new set takes the place of the previous session's unsaved one, if any, so
            // that a retry never writes that over it. Still holding the session: the new
            // session's first exchange saves after this. On the exchange threads, as every
            // save.
            let inner = Arc::clone(self);
            executor::run(async move { inner.save(set).await }).await?;
        }
        drop(session);
        Ok(())
    }

    /// Saves a new token set before its access token is used: the newest set wins; a failure
    /// is reported (status, warning) and tried again later, and never fails the exchange.
    pub(super) async fn save(self: &Arc<Self>, set: TokenSet) {
        let mut unsaved = self.unsaved.lock().await;
        if self.save_once(set.clone()).await {
            *unsaved = None;
            self.saved();
            return;
        }
        *unsaved = Some(set);
        drop(unsaved);
        self.status.send_modify(|status| status.unsaved = true);
        if !self.retrying.swap(true, Ordering::AcqRel)
            && EXCHANGES
                .spawn(Box::pin(retry_saves(Arc::downgrade(self))))
                .is_err()
        {
            // The next failed save tries again; `close()` saves in any case.
            self.retrying.store(false, Ordering::Release);
        }
    }

    /// Saves the token set whose save failed, if any: what [`close`] does last.
    ///
    /// [`close`]: super::RefreshTokenGrant::close
    pub(super) async fn save_unsaved(&self) -> Result<(), Error> {
        let mut unsaved = self.unsaved.lock().await;
        let Some(set) = unsaved.take() else {
            return Ok(());
        };
        if self.save_once(set.clone()).await {
            self.saved();
            Ok(())
        } else {
            *unsaved = Some(set);
            Err(Error::internal(
                "the session's newest token set could not be saved",
            ))
        }
    }

    /// The newest token set is saved: reported.
    pub(super) fn saved(&self) {
        self.status.send_modify(|status| {
            status.unsaved = false;
            status.unsaved_rotations = 0;
        });
    }

    /// One call of the persist hook, bounded by `persist_timeout`; a panic in it counts as a
    /// failure. Calls never overlap: a call that timed out is not aborted (blocking work it
    /// started, a `tokio::fs` write or rename, could not be stopped anyway), and the next
    /// call waits for it first, at most `persist_timeout` (else it fails without calling the
    /// hook). Callers hold `unsaved`, so no two run at once. Reports a failure; returns
    /// whether the set was saved.
    pub(super) async fn save_once(&self, set: TokenSet) -> bool {
        let Some(hook) = &self.persist else {
            return true;
        };
        let previous = lock(&self.late_save).take();
        let failure = match previous {
            Some(mut previous) => {
                match tokio::time::timeout(self.persist_timeout, &mut previous).await {
                    Ok(_) => None,
                    Err(_) => {
                        *lock(&self.late_save) = Some(previous);
                        Some(format!(
                            "an earlier call of the persist hook, which timed out, has still not \
                             finished after another {:?}; not calling it again meanwhile",
                            self.persist_timeout
                        ))
                    }
                }
            }
            None => None,
        };
        let failure = match failure {
            Some(failure) => failure,
            None => {
                let mut call = tokio::spawn(hook(set));
                match tokio::time::timeout(self.persist_timeout, &mut call).await {
                    Ok(Ok(Ok(()))) => return true,
                    Ok(Ok(Err(error))) => format!("the persist hook failed: {error}"),
                    Ok(Err(_)) => "the persist hook panicked".to_owned(),
                    Err(_) => {
                        *lock(&self.late_save) = Some(call);
                        format!(
                            "the persist hook did not finish within {:?}",
                            self.persist_timeout
                        )
                    }
                }
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

impl Drop for Inner {
    fn drop(&mut self) {
        if self.unsaved.get_mut().is_some() {
            tracing::warn!(
                "a session whose newest token set was never saved was dropped: its newest \
                 refresh token is lost (call `RefreshTokenGrant::close` before dropping it)"
            );
        }
    }
}

/// Tries a failed save again, with backoff on the exchange thread's clock (1 s doubling to
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
            inner.saved();
            inner.retrying.store(false, Ordering::Release);
            tracing::info!("the session was saved after an earlier failure");
            return;
        }
    }
}
