//! The exchange: one refresh at a time on the exchange threads, the answer applied (rotation,
//! save) whether or not anyone still waits for it.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{OwnedMutexGuard, oneshot};
use tokio::time::Instant;

use super::executor::EXCHANGES;
use super::restore::{Kept, KeptExpiry};
use super::{Inner, RefreshTokenGrant, Session, TokenSet, lock};
use crate::error::{Error, ErrorKind};
use crate::grant::endpoint::{Answered, Secret, client_authentication, never_sent};
use crate::token::{Token, parse_id_token, parse_refresh_token, parse_token_response};
use http::HeaderValue;

/// What an exchange answers its caller: the token (on the exchange thread's clock) and the
/// lifetime it was issued with, from which the caller dates it on its own clock.
type Exchanged = Result<(Token, Duration), Error>;

/// What the fetch receives: the exchange's number (to claim the token it kept) and its result.
type Answer = (Option<u64>, Exchanged);

impl RefreshTokenGrant {
    pub(super) async fn fetch_token(inner: Arc<Inner>) -> Result<Token, Error> {
        if let Some(token) = inner.take_stored() {
            return Ok(token);
        }
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            match Self::attempt(&inner).await {
                // The request surely never reached the server: the same refresh token may go
                // again, after a pause on this runtime's clock.
                Err(error) if never_sent(&error) && attempt < inner.retry.max_attempts => {
                    let delay = inner.retry.backoff.delay(attempt - 1);
                    tracing::debug!(attempt, %error, retry_in_ms = delay.as_millis() as u64, "token request never left; retrying");
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }

    /// One exchange: takes the session, hands it to the exchange threads, and waits for the
    /// answer. Once the exchange is handed over, nothing that happens to this future or its
    /// runtime stops it.
    async fn attempt(inner: &Arc<Inner>) -> Result<Token, Error> {
        // Waits for an earlier exchange that is still running (one whose fetch was dropped at
        // the cache's deadline, say), so that this one sends the refresh token it left.
        let session = Arc::clone(&inner.session).lock_owned().await;
        let sent_at = Instant::now();
        let (reply, answer) = oneshot::channel();
        // No await between taking the lock and handing the exchange over: once this fetch
        // holds the session, the exchange runs to its end whatever happens to the fetch.
        // Under the metrics label of the cache that fetches (this task's), on the exchanges'
        // thread too.
        let labelled = inner.endpoint.metrics.in_scope();
        EXCHANGES.spawn(Box::pin(exchange(
            Arc::clone(inner),
            session,
            reply,
            labelled,
        )))?;
        let (serial, result) = wait(answer).await;
        // The exchange kept its token for a fetch that no longer waits; this one does.
        {
            let mut kept = lock(&inner.stored);
            if serial.is_some() && kept.as_ref().is_some_and(|k| k.exchange == serial) {
                kept.take();
            }
        }
        let (token, lifetime) = result?;
        // Dated on this runtime's clock (which a test may have paused), from when the
        // exchange was handed over: never later than the server's own count.
        let expires_at = sent_at
            .checked_add(lifetime)
            .ok_or_else(|| Error::invalid_response("`expires_in` is out of range"))?;
        let mut dated =
            Token::new(token.access_token().clone(), expires_at).with_lifetime(lifetime);
        if let Some(scope) = token.scope() {
            dated = dated.with_scope(scope);
        }
        Ok(dated)
    }
}

/// Waits for an exchange's answer. On a Tokio runtime the wait happens on its blocking pool:
/// a runtime that shuts down (dropped, or at the end of `#[tokio::main]`) then waits for the
/// exchange to end, and a runtime whose clock a test paused does not jump ahead while the
/// exchange runs on an exchange thread (Tokio does not auto-advance a paused clock while a
/// blocking task runs). The exchange itself never depends on this wait.
async fn wait(answer: oneshot::Receiver<Answer>) -> Answer {
    let lost = || {
        (
            None,
            Err(Error::internal(
                "the refresh_token exchange's answer was not delivered (the runtime is \
                 shutting down); the exchange itself ran to its end",
            )),
        )
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => match runtime.spawn_blocking(move || answer.blocking_recv()).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) | Err(_) => lost(),
        },
        Err(_) => answer.await.unwrap_or_else(|_| lost()),
    }
}

/// An exchange on an exchange thread: it holds the session from before the request leaves
/// until its answer is applied and saved, keeps the access token for the next fetch (claimed
/// at once by the fetch that waits for it, if it still does: one the cache's deadline dropped
/// does not), then answers whoever still waits.
async fn exchange(
    inner: Arc<Inner>,
    mut session: OwnedMutexGuard<Session>,
    reply: oneshot::Sender<Answer>,
    labelled: crate::metrics::Metrics,
) {
    session.exchanges += 1;
    let serial = session.exchanges;
    let sent_wall = SystemTime::now();
    let result = labelled.labelling(inner.exchange(&mut session)).await;
    if let Ok((token, lifetime)) = &result
        && let Some(expires) = sent_wall.checked_add(*lifetime)
    {
        *lock(&inner.stored) = Some(Kept {
            token: token.access_token().clone(),
            scope: token.scope().map(str::to_owned),
            lifetime: Some(*lifetime),
            expiry: KeptExpiry::Wall(expires),
            exchange: Some(serial),
        });
    }
    drop(session);
    if reply.send((Some(serial), result)).is_err() {
        tracing::debug!("nobody waits for the exchange's answer any more; it was applied");
    }
}

/// Whether a failed request may have reached the server, which may then have rotated the
/// refresh token: a timeout, a 5xx, a connection that broke after it was made.
fn answer_lost(error: &Error) -> bool {
    matches!(error.kind(), ErrorKind::Timeout | ErrorKind::Unavailable)
        && error.status().is_none_or(|s| s.is_server_error())
        && !never_sent(error)
}

pub(super) fn closed() -> Error {
    Error::invalid_config("the session was closed (RefreshTokenGrant::close)")
}

impl Inner {
    /// The exchange proper, on an exchange thread.
    async fn exchange(self: &Arc<Self>, session: &mut Session) -> Exchanged {
        if session.closed {
            return Err(closed());
        }
        if let Some(max) = self.max_unsaved_rotations
            && self.status.borrow().unsaved_rotations >= max
        {
            tracing::warn!(
                max,
                "not refreshing: that many rotations of the refresh token are unsaved"
            );
            return Err(Error::internal(
                "too many rotations of the refresh token are unsaved (the persist hook keeps \
                 failing; see max_unsaved_rotations): not refreshing until a save succeeds",
            ));
        }
        if let Some(error) = &session.ended {
            tracing::debug!("the session has ended; its refresh token is not sent again");
            return Err(error.clone());
        }
        let mut answered = self.post(&session.refresh_token.0).await;
        if let Err(error) = &answered
            && answer_lost(error)
        {
            // The server may have rotated and its answer is lost: the old refresh token is all
            // there is. Present it again at once, while a server's grace period (Cognito's
            // `RetryGracePeriodSeconds`, Okta's, Auth0's) still accepts it; a strict server
            // without one ends the session, as the next refresh would have.
            tracing::warn!(%error, "the token endpoint's answer was lost; retrying once with the same refresh token");
            answered = self.post(&session.refresh_token.0).await;
        }
        if let Some(cell) = &self.secret {
            // A refusal of the client (`invalid_client`), not of the session (`invalid_grant`:
            // the refresh token expired), makes the secret be read again.
            cell.note(matches!(&answered, Err(error)
                if error.is_permanent() && (!error.is_invalid_grant() || error.client_refused())));
        }
        let answer = match answered {
            Ok(answer) => answer,
            Err(error) => {
                // A refusal of the app client's secret ends the session only when the secret
                // cannot change: one read from a source heals once it is right (the refresh
                // token was never refused).
                let secret_may_change = self.secret.as_ref().is_some_and(|c| c.fixed().is_none());
                if error.is_invalid_grant() && !(error.client_refused() && secret_may_change) {
                    tracing::warn!(
                        "the session has ended (invalid_grant): the user must sign in again"
                    );
                    session.ended = Some(error.clone());
                    self.status
                        .send_modify(|status| status.ended = Some(error.clone()));
                }
                return Err(error);
            }
        };
        // The rotation first: whatever is wrong with the rest of the answer, the server has
        // retired the old refresh token.
        let rotated = match parse_refresh_token(&answer.body) {
            Some(new) if new != session.refresh_token.0 => {
                session.refresh_token = Secret(new);
                let counted = self.persist.is_some();
                self.status.send_modify(|status| {
                    status.rotations += 1;
                    status.unsaved_rotations += u64::from(counted);
                });
                self.endpoint.metrics.rotation();
                if let Some(hook) = &self.on_rotation {
                    let new = session.refresh_token.0.as_str();
                    if catch_unwind(AssertUnwindSafe(|| hook(new))).is_err() {
                        tracing::warn!(
                            "on_rotation panicked; the new refresh token is kept in memory"
                        );
                    }
                }
                true
            }
            _ => false,
        };
        tracing::debug!(rotated, "refresh_token grant answered");
        let parsed = parse_token_response(&answer.body, answer.sent_at, answer.sent_at_wall);
        let id_token = parse_id_token(&answer.body).map(Secret);
        if let Ok((token, _)) = &parsed {
            let mut latest = lock(&self.latest);
            latest.access_token = Some(token.access_token().clone());
            if id_token.is_some() {
                latest.id_token = id_token.clone();
            }
        }
        if self.persist.is_some() && (rotated || parsed.is_ok()) {
            let (access_token, expires_at) = match &parsed {
                Ok((token, lifetime)) => (
                    Some(token.access_token().clone()),
                    answer.sent_at_wall.checked_add(*lifetime),
                ),
                Err(_) => (None, None),
            };
            let set = TokenSet {
                refresh_token: session.refresh_token.clone(),
                rotated,
                access_token,
                expires_at,
                id_token,
            };
            self.save(set).await;
        }
        parsed
    }

    /// One POST of the refresh token, to the token endpoint or to Cognito's user-pool API,
    /// bounded by `request_timeout` on the exchange thread's clock. A secret read at each
    /// request is read here, and an assertion signed here: a retry gets a fresh one.
    async fn post(&self, refresh_token: &str) -> Result<Answered, Error> {
        let limit = self.endpoint.request_timeout;
        match &self.user_pool_api {
            Some(api) => {
                let secret = match &self.secret {
                    Some(cell) => Some(cell.read().await.inspect_err(|_| cell.note(true))?),
                    None => None,
                };
                let call = api.post(&self.endpoint, refresh_token, secret.as_deref());
                self.endpoint.timed(limit, call).await
            }
            None => {
                let (form, authorization) = self.form(refresh_token).await?;
                let call =
                    self.endpoint
                        .post_authorized(form, authorization.as_ref(), Instant::now());
                self.endpoint.timed(limit, call).await
            }
        }
    }

    /// The form of an exchange, and its `Authorization` header: the endpoint's, or, for a
    /// secret read at each request ([`ClientSecret`](crate::ClientSecret)) or a signed
    /// assertion, one made now (no request without a secret).
    async fn form(&self, refresh_token: &str) -> Result<(Bytes, Option<HeaderValue>), Error> {
        let secret = match &self.secret {
            Some(cell) if self.per_request_auth => {
                Some(cell.read().await.inspect_err(|_| cell.note(true))?)
            }
            _ => None,
        };
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "refresh_token");
        form.append_pair("refresh_token", refresh_token);
        let mut authorization = self.endpoint.authorization.clone();
        if self.per_request_auth {
            authorization = client_authentication(
                &mut form,
                &self.client_auth,
                &self.client_id,
                secret.as_deref(),
                &self.audience,
            )?;
        }
        let mut form = form.finish();
        if !self.form_tail.0.is_empty() {
            form.push('&');
            form.push_str(&self.form_tail.0);
        }
        Ok((Bytes::from(form), authorization))
    }
}
