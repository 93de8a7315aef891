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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::policy::{Decision, Event};
use super::{Shared, Step};

/// Whether the refresher is on, whether its task lives, and the handle that stops it.
#[derive(Debug)]
pub(super) struct Control {
    enabled: bool,
    /// Cleared by the task itself when it ends or is dropped with its runtime.
    alive: AtomicBool,
    /// Dropping it (with the cache) stops the task.
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

impl Control {
    pub(super) fn new(enabled: bool) -> Self {
        Self {
            enabled,
            alive: AtomicBool::new(false),
            stop: Mutex::new(None),
        }
    }

    /// Starts the task again if it is configured and gone. One load of a flag on the hot path.
    #[inline]
    pub(super) fn check(&self, shared: &Arc<Shared>) {
        if self.enabled && !self.alive.load(Ordering::Relaxed) {
            ensure(shared);
        }
    }
}

/// Spawns the background refresher if it is configured and not running, on the current
/// runtime if there is one with timers. Takes no cache lock.
pub(super) fn ensure(shared: &Arc<Shared>) {
    let control = &shared.background;
    if !control.enabled {
        return;
    }
    let Ok(runtime) = super::flight::runtime_with_timers() else {
        return;
    };
    if control
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
    // The task was spawned on a runtime with timers, and runs on it.
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return Next::Sleep(super::policy::later(now, shared.config.refresh_deadline));
    };
    let mut core = shared.lock();
    let (next, launch) = match shared.decide(&mut core, now, Event::Background) {
        Decision::Sleep(until) => (Next::Sleep(until), None),
        Decision::Wait(wait) => (waiting(core.waiter(wait), now, shared), None),
        Decision::StartAndWait(start, wait) => {
            let launch = shared.launch(&mut core, start, runtime);
            (waiting(core.waiter(wait), now, shared), Some(launch))
        }
        _ => (
            Next::Sleep(super::policy::later(now, shared.config.refresh_deadline)),
            None,
        ),
    };
    drop(core);
    if let Some(launch) = launch {
        launch.spawn();
    }
    next
}

fn waiting(step: Step, now: Instant, shared: &Shared) -> Next {
    match step {
        Step::Wait(waiter) => Next::Wait(waiter),
        _ => Next::Sleep(super::policy::later(now, shared.config.refresh_deadline)),
    }
}
