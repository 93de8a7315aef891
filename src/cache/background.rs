//! The background refresher: keeps the token fresh with no traffic, so that the first request
//! after an idle hour does not wait.
//!
//! It is a loop over the policy's `Background` decisions: sleep until the token stops being
//! fresh (or the backoff ends), or start a refresh and wait for it, or wait for the refresh in
//! flight until it would be abandoned. Every wait is bounded by the policy, so a refresh stuck
//! on a runtime nobody drives is replaced at its deadline, and the loop never spins.
//!
//! The task holds only a weak handle to the cache and stops when the cache is dropped (the
//! stop sender lives in the cache). It is spawned on the runtime `build` runs in, or on the
//! first request's; when that runtime goes away the task is dropped with it, and the next
//! request on another runtime starts it again.
//!
//! A request never probes its runtime for a time driver on the hot path (the probe is Tokio's
//! panic, caught, which a panic hook would record): a request served at once spawns the
//! refresher without asking, and the task looks for itself. On a runtime without timers it
//! marks itself *blocked* and ends; requests served at once then leave it alone, and a request
//! that reaches the policy on a runtime with timers (it has probed that one anyway) starts it
//! there.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::policy::Event;
use super::{Shared, Step};

/// Whether the refresher is on, whether its task lives, and the handle that stops it.
#[derive(Debug)]
pub(super) struct Control {
    enabled: bool,
    /// Cleared by the task itself when it ends or is dropped with its runtime.
    alive: AtomicBool,
    /// Set by the task when its runtime had no time driver (before it clears `alive`); cleared
    /// by a request that found timers on its own runtime.
    blocked: AtomicBool,
    /// Dropping it (with the cache) stops the task.
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

impl Control {
    pub(super) fn new(enabled: bool) -> Self {
        Self {
            enabled,
            alive: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
            stop: Mutex::new(None),
        }
    }

    /// The hot path's check: starts the task again on this thread's runtime if it is
    /// configured, gone, and not blocked. Loads of flags, and never a probe.
    #[inline]
    pub(super) fn check(&self, shared: &Arc<Shared>) {
        // `Acquire`: a task that set `blocked` and then cleared `alive` is seen blocked.
        if self.enabled
            && !self.alive.load(Ordering::Acquire)
            && !self.blocked.load(Ordering::Relaxed)
            && let Ok(runtime) = Handle::try_current()
        {
            spawn(shared, &runtime);
        }
    }

    /// Whether the task lives, and whether it found its runtime without timers.
    #[cfg(test)]
    pub(super) fn state(&self) -> (bool, bool) {
        (
            self.alive.load(Ordering::Acquire),
            self.blocked.load(Ordering::Relaxed),
        )
    }

    /// A request found that `runtime` has timers: the task may run there.
    pub(super) fn resume(&self, shared: &Arc<Shared>, runtime: &Handle) {
        if self.enabled {
            if self.blocked.load(Ordering::Relaxed) {
                self.blocked.store(false, Ordering::Relaxed);
            }
            if !self.alive.load(Ordering::Acquire) {
                spawn(shared, runtime);
            }
        }
    }
}

/// Spawns the background refresher on `runtime` if it is configured and not running. Takes
/// no cache lock, and does not probe the runtime: the task does.
#[cold]
#[inline(never)]
pub(super) fn spawn(shared: &Arc<Shared>, runtime: &Handle) {
    let control = &shared.background;
    if !control.enabled
        || control
            .alive
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    let (stop, stopped) = oneshot::channel();
    *control.stop.lock().unwrap_or_else(PoisonError::into_inner) = Some(stop);
    let alive = Alive(Arc::downgrade(shared));
    runtime.spawn(run(Arc::downgrade(shared), stopped, alive));
}

/// Marks the refresher as gone when its task ends or is dropped with its runtime.
struct Alive(Weak<Shared>);

impl Drop for Alive {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade() {
            shared.background.alive.store(false, Ordering::Release);
        }
    }
}

/// What the refresher does next.
enum Next {
    Sleep(Instant),
    Wait(super::flight::Waiter),
}

async fn run(shared: Weak<Shared>, mut stopped: oneshot::Receiver<()>, _alive: Alive) {
    if !super::flight::timers_enabled() {
        // Off every request's path: once per spawn, and requests then stop spawning it.
        if let Some(shared) = shared.upgrade() {
            shared.background.blocked.store(true, Ordering::Relaxed);
        }
        return;
    }
    loop {
        let Some(next) = shared.upgrade().map(|shared| step(&shared)) else {
            return;
        };
        match next {
            Next::Sleep(until) => tokio::select! {
                _ = &mut stopped => return,
                () = tokio::time::sleep_until(until) => {}
            },
            Next::Wait(mut waiter) => tokio::select! {
                _ = &mut stopped => return,
                _ = waiter.outcome() => {}
            },
        }
    }
}

/// The policy's `Background` decision, carried out.
fn step(shared: &Arc<Shared>) -> Next {
    let now = Instant::now();
    let later = super::policy::later(now, shared.config.refresh_deadline);
    // The task was spawned on a runtime with timers, and runs on it.
    let Ok(runtime) = Handle::try_current() else {
        return Next::Sleep(later);
    };
    match shared.carry_out(now, Event::Background, Some(runtime)) {
        Step::Sleep(until) => Next::Sleep(until),
        Step::Wait(waiter) => Next::Wait(waiter),
        // Not a decision for the refresher, or a refresh its runtime refused (shutting down,
        // and this task with it): look again later, never spin.
        Step::Ready(_) | Step::Failed(_) => Next::Sleep(later),
    }
}
