//! A refresh in flight, and the requests that wait for it.
//!
//! A refresh runs in a task of its own ([`Launch::spawn`]), so that a waiter that is dropped
//! (its request timed out, say) does not cancel it for the others. It reports its end to the
//! policy and then to its waiters, whatever happens to it:
//! - it finished, with a token or an error (its deadline included): `Finished`;
//! - the token source panicked, in the call to `fetch()` or in a poll of its future, with or
//!   without a shared store: the panic is caught, and it is `Finished` with an error, which the
//!   policy paces like any failure;
//! - its runtime dropped it (shutting down, before or after it started, even while its thread
//!   unwinds from another panic): `Abandoned`, which says nothing of the token endpoint, so
//!   nobody is paced and whoever waited looks again.
//!
//! A waiter bounds its wait on its own timer: a refresh whose runtime is parked (alive but no
//! longer driven) cannot hang the requests of other runtimes.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::time::Instant;

use super::Shared;
use super::policy::{Event, Outcome, Start};
use crate::error::Error;
use crate::grant::BoxFuture;
use crate::token::Token;

/// A refresh that is ready to start on the runtime of the request that started it.
pub(super) struct Launch {
    runtime: Handle,
    task: Flight,
}

impl Launch {
    pub(super) fn new(
        runtime: Handle,
        shared: Arc<Shared>,
        tx: watch::Sender<Option<Outcome>>,
        start: Start,
    ) -> Self {
        Self {
            runtime,
            task: Flight {
                shared,
                tx,
                start,
                done: false,
            },
        }
    }

    /// Spawns the refresh. Call it with the cache's lock released. `false` when the runtime
    /// dropped it at once, never to run: it is shutting down.
    pub(super) fn spawn(self) -> bool {
        let mut rx = self.task.tx.subscribe();
        self.runtime.spawn(self.task.run());
        // Only the task's drop publishes `Abandoned`, and nothing else can have ended it yet.
        !matches!(*rx.borrow_and_update(), Some(Outcome::Abandoned))
    }
}

/// The refresh task. Its drop reports an end that `run` did not reach.
struct Flight {
    shared: Arc<Shared>,
    tx: watch::Sender<Option<Outcome>>,
    start: Start,
    done: bool,
}

impl Flight {
    async fn run(mut self) {
        let shared = Arc::clone(&self.shared);
        // Counted once it runs: a runtime that drops it unrun (shutting down) fetched nothing.
        shared.count_refresh(self.start.ahead);
        let limit = shared.config.refresh_deadline;
        let rejected = self.start.rejected.take();
        let fetch = CatchPanic::new(|| shared.fetch(rejected));
        let result = match self.start.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, fetch)
                .await
                .unwrap_or_else(|_| Err(Error::timeout("the token refresh", limit))),
            None => fetch.await,
        };
        self.done = true;
        let flight = self.start.flight;
        self.shared
            .settle(&self.tx, Event::Finished { flight, result });
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // The runtime dropped the task (shutting down), before or after it first ran: a panic
        // of the token source never gets here, `CatchPanic` turns it into an error.
        let flight = self.start.flight;
        self.shared.settle(&self.tx, Event::Abandoned { flight });
    }
}

/// The fetch, with a panic caught and turned into an error, so that the refresh reports it as
/// a failure of the source: a panic in the call that makes the future (the synchronous part
/// of `TokenSource::fetch`) as well as one inside its `poll`, with or without a shared store.
/// (Where panics abort, there is nothing to catch.)
struct CatchPanic<'a>(Option<BoxFuture<'a, Result<Token, Error>>>);

impl<'a> CatchPanic<'a> {
    fn new(fetch: impl FnOnce() -> BoxFuture<'a, Result<Token, Error>>) -> Self {
        Self(std::panic::catch_unwind(AssertUnwindSafe(fetch)).ok())
    }
}

impl Future for CatchPanic<'_> {
    type Output = Result<Token, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(fetch) = self.0.as_mut() else {
            return Poll::Ready(Err(panicked()));
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| fetch.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(_) => Poll::Ready(Err(panicked())),
        }
    }
}

fn panicked() -> Error {
    Error::internal("the token source panicked")
}

/// A request's place in the queue for a refresh's outcome, with its own deadline.
pub(super) struct Waiter {
    rx: watch::Receiver<Option<Outcome>>,
    until: Option<Instant>,
    /// The refresh deadline, for the timeout's message.
    limit: Duration,
}

impl Waiter {
    pub(super) fn new(
        rx: watch::Receiver<Option<Outcome>>,
        until: Option<Instant>,
        limit: Duration,
    ) -> Self {
        Self { rx, until, limit }
    }

    /// The refresh's outcome, or a timeout at this waiter's deadline, on its own timer (a
    /// waiter's runtime has timers: the policy makes none wait on a runtime without).
    pub(super) async fn outcome(&mut self) -> Outcome {
        let Some(deadline) = self.until else {
            return published(&mut self.rx).await;
        };
        tokio::select! {
            biased;
            outcome = published(&mut self.rx) => outcome,
            () = tokio::time::sleep_until(deadline) => {
                Outcome::Failed(Error::timeout("waiting for the token refresh", self.limit))
            }
        }
    }
}

/// The outcome, once published. A sender gone without one (which `Flight`'s drop prevents)
/// reads as abandoned: the waiter looks again.
async fn published(rx: &mut watch::Receiver<Option<Outcome>>) -> Outcome {
    match rx.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.clone().unwrap_or(Outcome::Abandoned),
        Err(_) => Outcome::Abandoned,
    }
}

/// The current runtime, if it can run a refresh: a refresh needs timers for its deadline.
pub(super) fn runtime_with_timers() -> Result<Handle, Error> {
    let runtime = Handle::try_current()
        .map_err(|_| Error::internal("no Tokio runtime to refresh the token on"))?;
    if !timers_enabled() {
        return Err(Error::invalid_config(
            "the Tokio runtime has no time driver, which the token cache needs for its \
             deadlines: build the runtime with `enable_time()` (or `enable_all()`)",
        ));
    }
    Ok(runtime)
}

/// Whether this thread's runtime has a time driver.
///
/// Tokio has no way to ask (tokio-rs/tokio#8361): creating a timer without one panics. The
/// panic is caught here, off the hot path (when a request reaches the policy, and in the
/// background refresher's task), and only on a runtime built without `enable_time`. Where panics abort, it cannot be caught:
/// timers are assumed, and such a runtime fails as Tokio makes it fail.
pub(super) fn timers_enabled() -> bool {
    #[cfg(panic = "unwind")]
    {
        std::panic::catch_unwind(|| drop(tokio::time::sleep(Duration::ZERO))).is_ok()
    }
    #[cfg(not(panic = "unwind"))]
    {
        true
    }
}
