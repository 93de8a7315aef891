//! The subscriber connection through which [`RedisStore`] hears of writes
//! ([`TokenStore::watch`](crate::store::TokenStore::watch)).
//!
//! The `redis` crate's own resubscribing connection (`ConnectionManager` with push messages)
//! needs RESP3 and its own TLS, which reads the process-wide rustls provider; this store brings
//! its own TLS stream, so it keeps one `PubSub` connection over it, made on the first `watch`
//! and again after it ends. What remains here: counting messages per channel, made comparable
//! across connections; noticing a connection whose reader died (with the runtime that ran it);
//! and an ACL that refuses `SUBSCRIBE`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use ::redis::aio::{PubSub, PubSubSink, PubSubStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::{RedisStore, Shared, StoreError, stream};

/// How long a store that was refused `SUBSCRIBE` (`NOPERM`: an ACL without the channel) goes
/// without notifications before it tries again (the ACL may have been fixed).
const REFUSED_RETRY: Duration = Duration::from_secs(60);

/// The subscriber connection, made on the first `watch`, and the channels it listens to.
#[derive(Default)]
pub(super) struct SubState {
    /// The connection's sink (to subscribe) and its number.
    sink: Option<(u64, PubSubSink)>,
    /// The task reading its messages.
    reader: Option<AbortHandle>,
    /// Per channel ever watched: the number of messages seen, across connections (never reset,
    /// so that a count taken before a resubscription compares with one after it). Dropping a
    /// connection adds one to each, so that its watchers wake and look for what they may have
    /// missed.
    counts: HashMap<String, watch::Sender<u64>>,
    /// The channels subscribed on the current connection.
    subscribed: HashSet<String>,
    next_id: u64,
    /// Until when `SUBSCRIBE` is not tried again: the server refused it.
    refused_until: Option<Instant>,
}

impl SubState {
    /// Forgets connection `id` (if current); its channels' watchers wake and look.
    pub(super) fn drop_connection(&mut self, id: u64) {
        if self
            .sink
            .as_ref()
            .is_some_and(|(current, _)| *current == id)
        {
            self.sink = None;
            self.subscribed.clear();
            for count in self.counts.values() {
                count.send_modify(|n| *n = n.wrapping_add(1));
            }
            if let Some(reader) = self.reader.take() {
                reader.abort();
            }
        }
    }

    /// The current connection, unless its reader is gone (the runtime that ran it shut down:
    /// the connection is deaf, and replaced).
    fn live_sink(&mut self) -> Option<(u64, PubSubSink)> {
        let (id, sink) = self.sink.clone()?;
        if self.reader.as_ref().is_some_and(AbortHandle::is_finished) {
            self.drop_connection(id);
            return None;
        }
        Some((id, sink))
    }
}

impl Drop for SubState {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.abort();
        }
    }
}

impl Shared {
    pub(super) fn lock_subs(&self) -> MutexGuard<'_, SubState> {
        self.subs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl RedisStore {
    /// [`TokenStore::watch`](crate::store::TokenStore::watch) on `channel`. When the server
    /// refused `SUBSCRIBE`, waits out `timeout` and reports nothing heard: the caller polls at
    /// its usual, rare pace, and no connection is made per call.
    pub(super) async fn watch_channel(
        &self,
        channel: String,
        seen: Option<u64>,
        timeout: Duration,
    ) -> Result<u64, StoreError> {
        let found = {
            let mut subs = self.shared.lock_subs();
            if subs
                .refused_until
                .is_some_and(|until| Instant::now() < until)
            {
                Found::Refused
            } else if subs.live_sink().is_some() && subs.subscribed.contains(&channel) {
                subs.counts
                    .get(&channel)
                    .map_or(Found::No, |count| Found::Subscribed(count.subscribe()))
            } else {
                Found::No
            }
        };
        let mut rx = match found {
            Found::Subscribed(rx) => rx,
            Found::Refused => return Ok(without_notifications(seen, timeout).await),
            Found::No => match self.subscribe(channel).await {
                Ok(rx) => rx,
                Err(StoreError::Refused) => return Ok(without_notifications(seen, timeout).await),
                Err(error) => return Err(error),
            },
        };
        let Some(seen) = seen else {
            return Ok(*rx.borrow_and_update());
        };
        match tokio::time::timeout(timeout, rx.wait_for(|n| *n > seen)).await {
            Ok(Ok(n)) => Ok(*n),
            Ok(Err(_)) => Err(StoreError::Lost),
            Err(_) => Ok(seen),
        }
    }

    /// Subscribes to `channel` on the subscriber connection (made if needed) and returns a
    /// watcher of its message count.
    async fn subscribe(&self, channel: String) -> Result<watch::Receiver<u64>, StoreError> {
        let (id, mut sink) = self.subscriber().await?;
        let result = tokio::time::timeout(self.timeout, sink.subscribe(&channel)).await;
        let mut subs = self.shared.lock_subs();
        match result {
            Ok(Ok(())) => {}
            Ok(Err(error)) if is_refused(&error) => {
                subs.drop_connection(id);
                subs.refused_until = Instant::now().checked_add(REFUSED_RETRY);
                if !self.shared.subscribe_refused.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        addr = %self.shared.addr,
                        %error,
                        "redis refused SUBSCRIBE (NOPERM): the fleet's processes poll for each \
                         other's tokens once a second instead of being woken; grant the channel \
                         pattern `&tower-cognito-auth:*` (see the docs of the store module)"
                    );
                }
                return Err(StoreError::Refused);
            }
            Ok(Err(error)) => {
                subs.drop_connection(id);
                return Err(StoreError::Redis(error));
            }
            Err(_) => {
                subs.drop_connection(id);
                return Err(StoreError::Timeout(self.timeout));
            }
        }
        if subs.sink.as_ref().map(|(current, _)| *current) != Some(id) {
            return Err(StoreError::Lost);
        }
        if subs.refused_until.take().is_some()
            && self.shared.subscribe_refused.swap(false, Ordering::AcqRel)
        {
            tracing::info!(addr = %self.shared.addr, "redis accepts SUBSCRIBE again");
        }
        subs.subscribed.insert(channel.clone());
        Ok(subs
            .counts
            .entry(channel)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe())
    }

    /// The subscriber connection's sink and number, connecting it if there is none. Its
    /// messages are counted per channel by a task that holds the store weakly; the connection
    /// is forgotten when it ends, its reader is gone or a subscription fails, and made anew by
    /// the next `watch`.
    async fn subscriber(&self) -> Result<(u64, PubSubSink), StoreError> {
        if let Some(live) = self.shared.lock_subs().live_sink() {
            return Ok(live);
        }
        let (sink, stream) =
            match tokio::time::timeout(self.connect_timeout, open_subscriber(&self.shared)).await {
                Ok(opened) => opened?,
                Err(_) => return Err(StoreError::ConnectTimeout(self.connect_timeout)),
            };
        let mut subs = self.shared.lock_subs();
        if let Some(live) = subs.live_sink() {
            // Another watcher connected meanwhile: ours is dropped.
            return Ok(live);
        }
        let id = subs.next_id;
        subs.next_id += 1;
        let weak = Arc::downgrade(&self.shared);
        let reader = tokio::spawn(read_messages(weak, stream, id)).abort_handle();
        subs.sink = Some((id, sink.clone()));
        subs.reader = Some(reader);
        tracing::debug!(addr = %self.shared.addr, "subscribed to the fleet's notifications");
        Ok((id, sink))
    }
}

/// What `watch_channel` finds of a channel's subscription.
enum Found {
    /// Subscribed on the live connection: its count.
    Subscribed(watch::Receiver<u64>),
    /// `SUBSCRIBE` was refused a while ago.
    Refused,
    /// To subscribe.
    No,
}

/// What `watch` does without notifications: nothing heard, after `timeout`.
async fn without_notifications(seen: Option<u64>, timeout: Duration) -> u64 {
    match seen {
        None => 0,
        Some(seen) => {
            tokio::time::sleep(timeout).await;
            seen
        }
    }
}

/// Whether the server refused `SUBSCRIBE` for want of permission on the channel.
fn is_refused(error: &::redis::RedisError) -> bool {
    matches!(
        error.kind(),
        ::redis::ErrorKind::Server(::redis::ServerErrorKind::NoPerm)
    ) || error.code() == Some("NOPERM")
}

/// Counts the messages of subscriber connection `id` per channel, until it ends.
async fn read_messages(shared: Weak<Shared>, stream: PubSubStream, id: u64) {
    let mut stream = std::pin::pin!(stream);
    while let Some(message) =
        std::future::poll_fn(|cx| futures_core::Stream::poll_next(stream.as_mut(), cx)).await
    {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let subs = shared.lock_subs();
        if let Some(count) = subs.counts.get(message.get_channel_name()) {
            count.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
    if let Some(shared) = shared.upgrade() {
        shared.lock_subs().drop_connection(id);
    }
}

/// A subscriber connection (`AUTH` and `SELECT` done), split into its sink and its stream.
/// In cluster mode it goes to a seed, the next one in turn each time: a `PUBLISH` reaches
/// every node of a cluster, and a seed that is down is passed over by the next attempt.
async fn open_subscriber(shared: &Shared) -> Result<(PubSubSink, PubSubStream), StoreError> {
    let server = shared
        .cluster
        .as_ref()
        .map_or(&shared.client, |cluster| cluster.next_seed());
    let info = server.get_connection_info();
    let stream = stream(shared, info).await?;
    let settings = info.redis_settings();
    let pubsub = PubSub::new(settings, stream)
        .await
        .map_err(StoreError::Redis)?;
    Ok(pubsub.split())
}
