//! What the loopback servers share: the accept loop and its task, and request helpers.

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinSet};

/// Pause after a failed `accept`, so a persistent error (such as too many open files) does not
/// turn the accept loop into a busy loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Locks a mutex, recovering the data if a panicking thread poisoned it.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn header_starts_with(headers: &HeaderMap, name: HeaderName, prefix: &str) -> bool {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .get(..prefix.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
        })
}

/// How reading a request body ended.
pub(super) enum BodyRead {
    Complete(Bytes),
    TooLarge,
    Failed,
}

pub(super) async fn read_body(body: Incoming, limit: usize) -> BodyRead {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => BodyRead::Complete(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => BodyRead::TooLarge,
        Err(error) => {
            tracing::debug!(%error, "could not read a request body");
            BodyRead::Failed
        }
    }
}

/// Aborts the accept loop (and with it every connection) when dropped.
pub(super) struct ServerTask(AbortHandle);

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(super) async fn bind_loopback() -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Spawns the accept loop of a server that answers every request with `handler`.
///
/// Connections speak HTTP/1.1 or HTTP/2 with prior knowledge, and run in a `JoinSet` owned by
/// the accept loop, so aborting the loop drops them all.
pub(super) fn spawn_server<F, Fut, B>(listener: TcpListener, handler: F) -> ServerTask
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes, Error = Infallible> + Send + 'static,
{
    let task = tokio::spawn(async move {
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let mut connections = JoinSet::new();
        loop {
            // Reap connections that have finished.
            while connections.try_join_next().is_some() {}
            let stream = match listener.accept().await {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    tracing::debug!(%error, "test server: accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            let handler = handler.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                let answer = handler(request);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            connections.spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "test server: connection ended with an error");
                }
            });
        }
    });
    ServerTask(task.abort_handle())
}
