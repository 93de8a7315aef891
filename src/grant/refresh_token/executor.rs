//! Where every session's exchanges run: a few threads for the whole process, however many
//! sessions it holds.
//!
//! Each thread runs a current-thread Tokio runtime of its own, built on that thread, that
//! spawns the exchanges (and the retries of failed saves) handed to it. The threads are
//! started by the first exchange of the process, one at a time as exchanges need them, up to
//! [`THREADS`], and live as long as the process. A session costs none of them: only the
//! memory of its state.
//!
//! What runs there runs to its end whatever happens to the runtime that asked for it (its
//! shutdown, a cancelled waiter, the cache's deadline), and the connections the HTTP client
//! opens for it live there too, not on an application runtime that may go away.
//!
//! A thread that cannot be started (a thread or pid limit, which many sessions make likely)
//! is an error for the exchange that needed it, and the next exchange tries again: nothing is
//! dropped in async code, nothing panics.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::{mpsc, oneshot};

use crate::error::Error;

/// A task for the executor: an exchange, or a retry of a failed save.
pub(super) type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How many threads run the exchanges of every session in the process.
pub(crate) const THREADS: usize = 2;

/// The process's executor.
pub(super) static EXCHANGES: Executor = Executor::new();

/// A fixed number of threads, each with a current-thread runtime, fed round robin.
pub(super) struct Executor {
    /// The job queue of each started thread.
    threads: Mutex<Vec<mpsc::UnboundedSender<Job>>>,
    next: AtomicUsize,
    /// Tests make the next thread start fail, as a thread limit would.
    #[cfg(test)]
    pub(super) fail_next_start: std::sync::atomic::AtomicBool,
}

impl Executor {
    pub(super) const fn new() -> Self {
        Self {
            threads: Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
            #[cfg(test)]
            fail_next_start: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Runs `job` to its end on one of the executor's threads, starting that thread first if
    /// it is not running yet.
    ///
    /// # Errors
    ///
    /// An [`Error`] of kind [`Internal`](crate::ErrorKind::Internal) when no thread could be
    /// started, or the one chosen has stopped (its runtime could not be built).
    pub(super) fn spawn(&self, job: Job) -> Result<(), Error> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % THREADS;
        let mut threads = self.lock();
        // A thread whose runtime could not be built has closed its queue: start it again.
        threads.retain(|queue| !queue.is_closed());
        let queue = match threads.get(turn) {
            Some(queue) => queue.clone(),
            None => {
                let queue = self.start()?;
                threads.push(queue.clone());
                queue
            }
        };
        drop(threads);
        queue
            .send(job)
            .map_err(|_| Error::internal("the session exchange thread has stopped"))
    }

    /// Starts one thread. Its runtime is built on the thread itself, so a failure to start
    /// the thread drops nothing but a closure and a channel.
    fn start(&self) -> Result<mpsc::UnboundedSender<Job>, Error> {
        let (queue, mut jobs) = mpsc::unbounded_channel::<Job>();
        let run = move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::error!(%error, "could not build the session exchange runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                while let Some(job) = jobs.recv().await {
                    tokio::spawn(job);
                }
            });
        };
        #[cfg(test)]
        if self.fail_next_start.swap(false, Ordering::SeqCst) {
            drop(run);
            return Err(start_failed(&std::io::Error::other("injected")));
        }
        std::thread::Builder::new()
            .name("cognito-session".into())
            .spawn(run)
            .map_err(|error| start_failed(&error))?;
        Ok(queue)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<mpsc::UnboundedSender<Job>>> {
        self.threads.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn start_failed(error: &std::io::Error) -> Error {
    tracing::warn!(%error, "could not start a session exchange thread");
    Error::internal(
        "could not start a thread for the session's exchanges (a thread limit?); the next \
         exchange tries again",
    )
}

/// Runs `job` on the process's executor and waits for its output. On a Tokio runtime the
/// wait happens on its blocking pool, as an exchange's does: a runtime that shuts down waits
/// for the job, and a paused clock stands still while it runs.
///
/// # Errors
///
/// An [`Error`] of kind [`Internal`](crate::ErrorKind::Internal) when the executor could not
/// take the job, or its output was not delivered (the caller's runtime shutting down).
pub(super) async fn run<T, F>(job: F) -> Result<T, Error>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let (done, output) = oneshot::channel();
    EXCHANGES.spawn(Box::pin(async move {
        let _ = done.send(job.await);
    }))?;
    let delivered = match tokio::runtime::Handle::try_current() {
        Ok(runtime) => runtime
            .spawn_blocking(move || output.blocking_recv())
            .await
            .ok()
            .and_then(Result::ok),
        Err(_) => output.await.ok(),
    };
    delivered.ok_or_else(|| {
        Error::internal(
            "the session's work ran to its end on its exchange thread, but its outcome was not \
             delivered (the runtime is shutting down)",
        )
    })
}
