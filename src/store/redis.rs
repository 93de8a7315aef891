//! [`RedisStore`]: a [`TokenStore`] on one Redis (or Valkey) server, or on a cluster.

mod cluster;
mod scripts;
mod subscriber;
mod tls;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, RedisError, Value};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tower::BoxError;

use self::cluster::{Cluster, Conn};
use self::scripts::{Scripts, channel};
use super::{Stored, TokenStore};
use crate::error::Error;
use crate::grant::BoxFuture;

/// The default time one command may take, connecting included.
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(200);
/// The default time one connection attempt may take (TCP, TLS, `AUTH`, `SELECT`).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The least time between two connection attempts after a failed one.
const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);
/// TCP keepalive: the first probe after this much silence, then one every
/// [`KEEPALIVE_INTERVAL`], [`KEEPALIVE_PROBES`] in all, so that the kernel closes a connection
/// to a host that went silent in about 11 s rather than the default two hours.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_PROBES: u32 = 3;
/// `TCP_USER_TIMEOUT` (Linux): data unacknowledged this long closes the connection, in place of
/// the ~15 minutes of retransmissions by default.
const USER_TIMEOUT: Duration = Duration::from_secs(10);

/// A [`TokenStore`] on one Redis (or Valkey) server, standalone or a replication primary, or
/// on a cluster ([`cluster`](RedisStore::cluster)).
///
/// Built from a URL: `redis://[[user]:password@]host[:port][/db]`, `rediss://…` for TLS (rustls,
/// with the ring provider), or `redis+unix:///path/to.sock`.
/// [`new`](RedisStore::new) does not connect: the connection is made on first use, in a task of
/// its own with a short timeout (one second by default, see
/// [`connect_timeout`](RedisStore::connect_timeout)); when that fails, the next attempt is made
/// by a later command, at most one at a time and no more often than once a second. Every
/// command has a short timeout (see [`timeout`](RedisStore::timeout)), so a slow or unreachable
/// Redis costs a refresh at most that long before the process fetches for itself. A command
/// that finds the connection broken drops it, and the next command connects anew; a command
/// that times out has a `PING` probe the connection, which is dropped unless it answers within
/// a second: a host that went silent, or a failover that moved the address to another server
/// while the old connection hangs, costs a timeout and a second, not one timeout per refresh
/// until the kernel gives up on the socket, while a slow server keeps its connection. TCP keepalive (5 s, then every 2 s, 3 probes) and, on Linux, `TCP_USER_TIMEOUT`
/// (10 s) let the kernel close such a socket too. An answer saying the server is not the
/// primary (`READONLY` from a primary a failover demoted but left reachable, `MASTERDOWN`,
/// `LOADING`) drops the connection too, and the next command connects at once, resolving the
/// name again.
///
/// The Lua scripts are sent by `EVALSHA`, falling back to `EVAL` when the server does not know
/// them yet (after a restart, say).
///
/// # TLS
///
/// `rediss://` uses rustls with ring, passed to the connection: the process-wide default
/// `CryptoProvider` is neither read nor installed, so the application remains free to install
/// its own. (Cluster mode is the exception: its TLS is the `redis` crate's, which reads the
/// process-wide provider; see [`cluster`](RedisStore::cluster).) The server's certificate is checked against the Mozilla roots that `webpki-roots`
/// bundles (as for the token endpoint's HTTPS client: no system certificate store is read), or
/// only against the authorities given to [`root_certificates`](RedisStore::root_certificates)
/// (a private CA). There is no mode without verification. A Redis that asks for a client
/// certificate (`tls-auth-clients yes`) is given the one set by
/// [`client_certificate`](RedisStore::client_certificate).
///
/// # Clone
///
/// Cloning is cheap; clones share one connection, and each keeps its own
/// [`timeout`](RedisStore::timeout) (the connection has none of its own). `Debug` shows the
/// address, the database and the timeouts, never a user name or a password.
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
    timeout: Duration,
    connect_timeout: Duration,
}

struct Shared {
    /// The parsed URL, always without TLS (the TLS is ours: see `tls`); in cluster mode, the
    /// first seed.
    client: Client,
    /// Cluster mode: the seeds and the cluster client that commands go through.
    cluster: Option<Cluster>,
    /// `host:port` or the socket path (the seeds, in cluster mode), for `Debug`.
    addr: String,
    /// For `rediss://`: the rustls configuration, ring passed in (never installed
    /// process-wide), with the bundled Mozilla roots or the authorities given.
    tls: Option<tls::Tls>,
    db: i64,
    has_credentials: bool,
    scripts: Scripts,
    conn: Mutex<ConnState>,
    /// The subscriber connection through which [`TokenStore::watch`] hears of writes.
    subs: Mutex<subscriber::SubState>,
    /// Whether a refused `SUBSCRIBE` was reported (once, until one is accepted).
    subscribe_refused: AtomicBool,
}

impl Shared {
    /// What a store keeps of its client: the address and database for `Debug`, its TLS
    /// configuration, whether it has credentials (never which).
    fn new(client: Client, cluster: Option<Cluster>, tls: Option<tls::Tls>) -> Shared {
        let info = client.get_connection_info();
        let addr = cluster
            .as_ref()
            .map_or_else(|| info.addr().to_string(), Cluster::addrs);
        let settings = info.redis_settings();
        let has_credentials = settings.username().is_some() || settings.password().is_some();
        let db = settings.db();
        Shared {
            client,
            cluster,
            addr,
            tls,
            db,
            has_credentials,
            scripts: Scripts::new(),
            conn: Mutex::new(ConnState::default()),
            subs: Mutex::new(subscriber::SubState::default()),
            subscribe_refused: AtomicBool::new(false),
        }
    }
}

/// A connection attempt's outcome: the connection and its number.
type ConnectOutcome = Option<Result<(u64, Conn), StoreError>>;

/// The connection in use, with the task that drives it.
struct Live {
    /// Its number, so that a command that saw it fail discards it and no newer one.
    id: u64,
    conn: Conn,
    /// The task that drives a connection to one server (a cluster connection drives itself).
    driver: Option<AbortHandle>,
    /// Set while a `PING` probes it after a command timed out.
    probing: Arc<AtomicBool>,
}

/// Why the connection is kept by hand rather than by the `redis` crate's `ConnectionManager`
/// (reconnect with backoff) and its `TcpSettings`: both connect through the crate's own
/// connect path, and for `rediss://` that is its `tls-rustls` feature, which builds its rustls
/// configuration with `rustls::ClientConfig::builder()`, reading (and needing) the
/// process-wide `CryptoProvider` this crate promises never to read or install. What remains is
/// small: one connection, one attempt in flight, a pause of a second after a failed attempt,
/// and dropping the connection on a broken socket, a timeout its `PING` probe confirms, or a
/// server that is no longer the primary (`READONLY`, `MASTERDOWN`, `LOADING`). In cluster mode
/// the connection is the crate's cluster client, with its own reconnects and `TcpSettings`
/// (its TLS may read the process-wide provider: the application chose to install one, see
/// [`RedisStore::cluster`]); this state then only makes it once and drops it when it breaks.
#[derive(Default)]
struct ConnState {
    /// The connection, once made. A command that times out or sees it broken discards it: the
    /// next command makes a new one (to wherever the address points now).
    live: Option<Live>,
    /// The connection attempt in flight; commands wait on it.
    connecting: Option<watch::Receiver<ConnectOutcome>>,
    /// When the last attempt started, until one succeeds.
    last_attempt: Option<Instant>,
    /// The number of the next connection.
    next_id: u64,
}

/// What went wrong talking to Redis. Its text never holds a password or a stored value.
#[derive(Clone, Debug, thiserror::Error)]
enum StoreError {
    #[error("redis: {0}")]
    Redis(#[source] RedisError),
    #[error("redis: the command timed out after {0:?}")]
    Timeout(Duration),
    #[error("redis: connecting timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("redis: not connected; the last connection attempt failed less than a second ago")]
    NotYet,
    #[error("redis: the connection attempt ended without a result")]
    Lost,
    #[error("redis: SUBSCRIBE refused (NOPERM): no notifications, the caller polls")]
    Refused,
    #[error("redis: {0}")]
    Io(Arc<str>),
    #[error("redis: unexpected reply to {0}")]
    Unexpected(&'static str),
    #[error(
        "redis: the server is a node of a cluster (it answered MOVED): build the store with \
         RedisStore::cluster"
    )]
    Clustered,
}

impl RedisStore {
    /// A store on the Redis server at `url`. Does not connect; see the
    /// [type docs](RedisStore).
    ///
    /// # Errors
    ///
    /// An [`Error`] of kind [`InvalidConfig`](crate::ErrorKind::InvalidConfig) when the URL does
    /// not parse as a `redis://`, `rediss://` or `redis+unix://` URL, or asks for TLS without
    /// certificate verification (`#insecure`). The message never repeats the URL, which may
    /// hold a password.
    pub fn new(url: impl AsRef<str>) -> Result<RedisStore, Error> {
        let url = url.as_ref();
        let scheme_ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
            .iter()
            .any(|scheme| {
                url.get(..scheme.len())
                    .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
            });
        if !scheme_ok {
            return Err(Error::invalid_config(
                "the Redis URL must start with redis://, rediss:// or redis+unix://",
            ));
        }
        let tls = url
            .get(.."rediss://".len())
            .is_some_and(|s| s.eq_ignore_ascii_case("rediss://"));
        // The TLS is ours: the rest of a `rediss://` URL is parsed as `redis://`.
        let plain = if tls {
            let rest = &url["rediss://".len()..];
            if rest.contains('#') {
                return Err(Error::invalid_config(
                    "the Redis URL asks for TLS without certificate verification (#insecure), which is not supported",
                ));
            }
            format!("redis://{rest}")
        } else {
            url.to_owned()
        };
        let client = Client::open(plain.as_str()).map_err(|_| {
            Error::invalid_config("the Redis URL does not parse (expected redis://[[user]:password@]host[:port][/db])")
        })?;
        let tls = if tls {
            Some(tls::Tls::bundled()?)
        } else {
            None
        };
        Ok(RedisStore {
            shared: Arc::new(Shared::new(client, None, tls)),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        })
    }

    /// A store on a Redis (or Valkey) cluster: ElastiCache or MemoryDB in cluster mode,
    /// ElastiCache Serverless (which speaks only the cluster protocol, over TLS). `nodes` are
    /// seed URLs, all `redis://[[user]:password@]host:port` or all `rediss://…`, with one user
    /// and password (given in each, or in none). One is enough, and the best one is a name
    /// that follows the cluster: ElastiCache's configuration endpoint, or Serverless's one
    /// endpoint. The seeds are where the store connects first, where it connects again when
    /// every node it knew is gone, and where its subscriber connects; node addresses that a
    /// scaling or a node replacement retires would leave it nowhere to go. The rest of the
    /// cluster is read from them. Does not connect; see the [type docs](RedisStore).
    ///
    /// Commands go through the `redis` crate's cluster client: it maps the slots to their
    /// primaries, follows `MOVED` and `ASK` (a slot moved or half moved by a reshard), and
    /// after a failover (a primary demoted, killed or gone silent) goes to the new primary.
    /// All the keys of one token share a hash slot, so the store's scripts run unchanged on
    /// the node that owns it. Processes waiting for another's token are woken across the
    /// cluster: a `PUBLISH` reaches every node, and the store subscribes on one seed (the
    /// next, in turn, after that connection ends). The same setters as for
    /// [`new`](Self::new) apply. Authentication is a user and password (ElastiCache's RBAC, or
    /// `AUTH`); IAM authentication, whose tokens expire, is not supported.
    ///
    /// ```
    /// # use tower_cognito_auth::store::RedisStore;
    /// # fn main() -> Result<(), tower_cognito_auth::Error> {
    /// // Cluster mode's TLS takes rustls's process-wide provider: install the application's
    /// // choice first thing in `main` (ring's here; aws-lc-rs's with that feature of rustls).
    /// # #[allow(deprecated)] // rustls 0.23.48: ring's provider has no post-quantum key exchange.
    /// let _ = rustls::crypto::ring::default_provider().install_default();
    /// let store = RedisStore::cluster([
    ///     "rediss://fleet:PASSWORD@clustercfg.my-cache.abc123.use1.cache.amazonaws.com:6379",
    /// ])?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # TLS in cluster mode
    ///
    /// `rediss://` seeds are connected by the cluster client's own TLS, which the `redis`
    /// crate builds with rustls's *process-wide* `CryptoProvider` (unlike [`new`](Self::new),
    /// which passes ring in). The application installs one at the start of `main`, e.g.
    /// `rustls::crypto::ring::default_provider().install_default()`; without one, `cluster`
    /// says so (rather than installing one behind the application's back). Roots and client
    /// certificates set by [`root_certificates`](Self::root_certificates) and
    /// [`client_certificate`](Self::client_certificate) apply to every node.
    ///
    /// # Errors
    ///
    /// An [`Error`] of kind [`InvalidConfig`](crate::ErrorKind::InvalidConfig) when `nodes` is
    /// empty, a seed does not parse as a `redis://` or `rediss://` URL with a host, the seeds
    /// mix the two schemes or name different users or passwords, a seed names a database other
    /// than 0 (a cluster has only that one) or asks for TLS without verification
    /// (`#insecure`), or the seeds are `rediss://` and no process-wide rustls `CryptoProvider`
    /// is installed when `cluster` is called (rustls may install one lazily when a client is
    /// first built elsewhere in the process: install it explicitly, first thing in `main`).
    /// The message never repeats a URL.
    pub fn cluster<I>(nodes: I) -> Result<RedisStore, Error>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let cluster = Cluster::new(nodes)?;
        let tls = if cluster.is_tls() {
            Some(tls::Tls::bundled()?)
        } else {
            None
        };
        Ok(RedisStore {
            shared: Arc::new(Shared::new(
                cluster.first_seed().clone(),
                Some(cluster),
                tls,
            )),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        })
    }

    /// How long one command may take, waiting for the connection included; after it the
    /// command fails and the process fetches its token for itself. Keep it short: a refresh
    /// makes a few commands. Default is 200 milliseconds.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long one connection attempt may take: TCP, TLS, authentication and database
    /// selection. The attempt runs in a task of its own, so a command that gives up after its
    /// [`timeout`](Self::timeout) does not cancel it. Default is 1 second.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Trusts these certificate authorities for `rediss://`, and only these, in place of the
    /// bundled Mozilla roots: for a Redis whose certificate a private authority signed. `pem`
    /// holds one or more `CERTIFICATE` blocks (PEM, not DER). The store returned has a
    /// connection of its own: clones made before the call keep the roots they had.
    ///
    /// ```no_run
    /// # use tower_cognito_auth::store::RedisStore;
    /// # fn main() -> Result<(), tower::BoxError> {
    /// let ca = std::fs::read("/etc/redis/ca.pem")?;
    /// let store = RedisStore::new("rediss://cache.internal:6380")?.root_certificates(ca)?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// An [`Error`] of kind [`InvalidConfig`](crate::ErrorKind::InvalidConfig) when the URL is
    /// not `rediss://`, or `pem` holds no certificate, or one that does not parse.
    pub fn root_certificates(self, pem: impl AsRef<[u8]>) -> Result<Self, Error> {
        let Some(tls) = &self.shared.tls else {
            return Err(Error::invalid_config(
                "root certificates are for a rediss:// URL",
            ));
        };
        let tls = tls.with_roots(pem.as_ref())?;
        let cluster = self
            .shared
            .cluster
            .as_ref()
            .map(|cluster| cluster.with_certificates(Some(pem.as_ref()), None))
            .transpose()?;
        Ok(self.with_tls(tls, cluster))
    }

    /// Presents this client certificate for `rediss://`, for a Redis that asks for one (Redis
    /// and Valkey do by default, `tls-auth-clients yes`; so does a proxy doing mutual TLS).
    /// `chain_pem` holds the client's certificate first, then any intermediates (`CERTIFICATE`
    /// blocks); `key_pem` its private key (`PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE
    /// KEY`). Composes with [`root_certificates`](Self::root_certificates), in either order.
    /// The store returned has a connection of its own: clones made before the call keep what
    /// they had. `Debug` never shows the key.
    ///
    /// ```no_run
    /// # use tower_cognito_auth::store::RedisStore;
    /// # fn main() -> Result<(), tower::BoxError> {
    /// let store = RedisStore::new("rediss://cache.internal:6380")?
    ///     .root_certificates(std::fs::read("/etc/redis/ca.pem")?)?
    ///     .client_certificate(
    ///         std::fs::read("/etc/redis/client.pem")?,
    ///         std::fs::read("/etc/redis/client.key")?,
    ///     )?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// An [`Error`] of kind [`InvalidConfig`](crate::ErrorKind::InvalidConfig) when the URL is
    /// not `rediss://`, `chain_pem` holds no certificate or one that does not parse, `key_pem`
    /// holds no private key that parses, or the key does not suit the certificate. The message
    /// never quotes the key.
    pub fn client_certificate(
        self,
        chain_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
    ) -> Result<Self, Error> {
        let Some(tls) = &self.shared.tls else {
            return Err(Error::invalid_config(
                "a client certificate is for a rediss:// URL",
            ));
        };
        let tls = tls.with_client(chain_pem.as_ref(), key_pem.as_ref())?;
        let cluster = self
            .shared
            .cluster
            .as_ref()
            .map(|cluster| {
                cluster.with_certificates(None, Some((chain_pem.as_ref(), key_pem.as_ref())))
            })
            .transpose()?;
        Ok(self.with_tls(tls, cluster))
    }

    /// The same store with `tls`, on a connection of its own.
    fn with_tls(self, tls: tls::Tls, cluster: Option<Cluster>) -> Self {
        RedisStore {
            shared: Arc::new(Shared::new(self.shared.client.clone(), cluster, Some(tls))),
            ..self
        }
    }

    /// Runs one command under the timeout. A command that times out, or finds the connection
    /// broken, discards the connection: a connection that stops answering (a silent host, a
    /// failover that moved the address) is replaced by the next command, never retried.
    async fn run<T, F, Fut>(&self, name: &'static str, key: &str, command: F) -> Result<T, BoxError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let deadline = Instant::now() + self.timeout;
        let (id, conn) = match tokio::time::timeout_at(deadline, self.connection()).await {
            Ok(Ok(live)) => live,
            Ok(Err(error)) => return Err(error.into()),
            Err(_) => return Err(StoreError::Timeout(self.timeout).into()),
        };
        let probe = conn.clone();
        match tokio::time::timeout_at(deadline, command(conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                tracing::trace!(command = name, %error, "redis command failed");
                if self.shared.cluster.is_none() && is_redirection(&error) {
                    // One server's store on a cluster: most of the slots live elsewhere.
                    return Err(StoreError::Clustered.into());
                }
                if error.is_io_error()
                    || error.is_connection_dropped()
                    || error.is_unrecoverable_error()
                    || error.is_timeout()
                {
                    self.shared.discard(id, "it failed", true);
                } else if not_the_primary(&error) {
                    self.shared.discard(
                        id,
                        "the server is no longer a primary that answers",
                        false,
                    );
                }
                Err(StoreError::Redis(error).into())
            }
            Err(_) => {
                Shared::probe(&self.shared, id, probe, key);
                Err(StoreError::Timeout(self.timeout).into())
            }
        }
    }

    /// The connection: the one made, or the attempt in flight, or a new attempt unless the last
    /// one failed less than [`RECONNECT_INTERVAL`] ago.
    async fn connection(&self) -> Result<(u64, Conn), StoreError> {
        let mut rx = {
            let mut state = self.shared.lock();
            if let Some(live) = &state.live {
                return Ok((live.id, live.conn.clone()));
            }
            match &state.connecting {
                // An attempt whose task is gone (dropped with its runtime) never answers: it
                // is replaced, never waited on.
                Some(rx) if rx.has_changed().is_ok() => rx.clone(),
                _ => {
                    let now = Instant::now();
                    if state
                        .last_attempt
                        .is_some_and(|last| now < last + RECONNECT_INTERVAL)
                    {
                        return Err(StoreError::NotYet);
                    }
                    state.last_attempt = Some(now);
                    let (tx, rx) = watch::channel(None);
                    state.connecting = Some(rx.clone());
                    tokio::spawn(connect(
                        Arc::clone(&self.shared),
                        tx,
                        self.connect_timeout,
                        self.timeout,
                    ));
                    rx
                }
            }
        };
        match rx.wait_for(Option::is_some).await {
            Ok(outcome) => match outcome.as_ref() {
                Some(result) => result.clone(),
                None => Err(StoreError::Lost),
            },
            Err(_) => Err(StoreError::Lost),
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ConnState> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// After a command on connection `id` timed out: a `PING` on it, from a task of its own
    /// (one at a time), decides. Answered within [`RECONNECT_INTERVAL`], the connection is
    /// kept: the server is slow, not gone, and reconnecting (every process of a fleet at once,
    /// TLS included) would only add to a latency spike. Not answered, the connection is
    /// dropped (a silent host, a failover that left the old connection hanging) and the next
    /// command connects anew.
    ///
    /// In cluster mode the probe is a `PTTL` of the command's key, which goes to the node that
    /// owns its slot: the cluster client, asked again and again, would wait on a silent node
    /// for ever (its timeouts are retried on the same node, and the slots never read again),
    /// while a new cluster connection reads them from the seeds that answer.
    fn probe(shared: &Arc<Shared>, id: u64, mut conn: Conn, key: &str) {
        let probing = match &shared.lock().live {
            Some(live) if live.id == id => Arc::clone(&live.probing),
            _ => return,
        };
        if probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let shared = Arc::clone(shared);
        let ping = match conn {
            Conn::Server(_) => ::redis::cmd("PING"),
            Conn::Cluster(_) => ::redis::cmd("PTTL").arg(key).to_owned(),
        };
        tokio::spawn(async move {
            let ping = ping.query_async::<Value>(&mut conn);
            match tokio::time::timeout(RECONNECT_INTERVAL, ping).await {
                Ok(Ok(_)) => {
                    probing.store(false, Ordering::Release);
                    tracing::debug!(addr = %shared.addr, "a redis command timed out, but the connection answers a PING: kept");
                }
                _ => shared.discard(id, "a command timed out and a PING went unanswered", false),
            }
        });
    }

    /// Drops connection `id` if it is still the one in use, closing its socket. With `pace`,
    /// the next attempt waits [`RECONNECT_INTERVAL`] (a broken or silent connection: the
    /// server may be struggling); without, the next command connects at once (the server
    /// answered that it is not the primary).
    fn discard(&self, id: u64, why: &'static str, pace: bool) {
        let live = {
            let mut state = self.lock();
            match &state.live {
                Some(live) if live.id == id => {
                    if pace {
                        state.last_attempt = Some(Instant::now());
                    }
                    state.live.take()
                }
                _ => None,
            }
        };
        if let Some(live) = live {
            if let Some(driver) = live.driver {
                driver.abort();
            }
            tracing::debug!(addr = %self.addr, why, "dropped the redis connection: the next command makes a new one");
        }
    }
}

/// One connection attempt, in a task of its own; publishes its outcome to the state, then to
/// the commands waiting on it. `timeout` is the command timeout of the store that asked (see
/// [`Cluster::connect`]).
async fn connect(
    shared: Arc<Shared>,
    tx: watch::Sender<ConnectOutcome>,
    connect_timeout: Duration,
    timeout: Duration,
) {
    let opened = open(&shared, connect_timeout, timeout);
    let result = match tokio::time::timeout(connect_timeout, opened).await {
        Ok(Ok(opened)) => Ok(opened),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(StoreError::ConnectTimeout(connect_timeout)),
    };
    let result = {
        let mut state = shared.lock();
        state.connecting = None;
        result.map(|(conn, driver)| {
            // Paced only after a failed attempt: a connection dropped for an answer (say,
            // `READONLY`) is made again by the next command.
            state.last_attempt = None;
            let id = state.next_id;
            state.next_id += 1;
            if let Some(old) = state.live.replace(Live {
                probing: Arc::new(AtomicBool::new(false)),
                id,
                conn: conn.clone(),
                driver,
            }) && let Some(driver) = old.driver
            {
                driver.abort();
            }
            (id, conn)
        })
    };
    match &result {
        Ok(_) => tracing::debug!(addr = %shared.addr, "connected to redis"),
        Err(error) => tracing::debug!(addr = %shared.addr, %error, "could not connect to redis"),
    }
    tx.send_replace(Some(result));
}

/// A byte stream to Redis: TCP, TLS over TCP, or a Unix socket.
trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Opens a connection: TCP with keepalive and a user timeout (TLS over it for `rediss://`),
/// or a Unix socket; then `AUTH` and `SELECT` as the URL says.
/// In cluster mode, the cluster client's connection instead.
async fn open(
    shared: &Shared,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<(Conn, Option<AbortHandle>), StoreError> {
    if let Some(cluster) = &shared.cluster {
        let conn = cluster
            .connect(connect_timeout, timeout)
            .await
            .map_err(StoreError::Redis)?;
        return Ok((Conn::Cluster(conn), None));
    }
    let stream = stream(shared, shared.client.get_connection_info()).await?;
    let (conn, driver) = handshake(shared, stream).await?;
    Ok((Conn::Server(conn), Some(driver)))
}

/// The byte stream to the server `info` names, TLS done.
async fn stream(shared: &Shared, info: &ConnectionInfo) -> Result<Box<dyn Io>, StoreError> {
    match info.addr() {
        ConnectionAddr::Tcp(host, port) => {
            let tcp = tcp(host, *port).await?;
            match &shared.tls {
                None => Ok(Box::new(tcp)),
                Some(config) => {
                    let name =
                        rustls::pki_types::ServerName::try_from(host.clone()).map_err(|_| {
                            StoreError::Io("the host is not a valid TLS server name".into())
                        })?;
                    let stream = tokio_rustls::TlsConnector::from(Arc::clone(config.config()))
                        .connect(name, tcp)
                        .await
                        .map_err(|error| StoreError::Io(format!("TLS: {error}").into()))?;
                    Ok(Box::new(stream))
                }
            }
        }
        #[cfg(unix)]
        ConnectionAddr::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|error| StoreError::Io(error.to_string().into()))?;
            Ok(Box::new(stream))
        }
        _ => Err(StoreError::Io("unsupported Redis address".into())),
    }
}

/// A TCP connection to the first address of `host` that answers, with keepalive and a user
/// timeout, so that a dead peer is noticed by the kernel too.
async fn tcp(host: &str, port: u16) -> Result<tokio::net::TcpStream, StoreError> {
    let io = |error: std::io::Error| StoreError::Io(error.to_string().into());
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await.map_err(io)? {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let socket = socket2::SockRef::from(&stream);
                let keepalive = socket2::TcpKeepalive::new()
                    .with_time(KEEPALIVE_IDLE)
                    .with_interval(KEEPALIVE_INTERVAL)
                    .with_retries(KEEPALIVE_PROBES);
                if let Err(error) = socket.set_tcp_keepalive(&keepalive) {
                    tracing::debug!(%error, "could not set TCP keepalive on the redis connection");
                }
                #[cfg(any(target_os = "linux", target_os = "android"))]
                if let Err(error) = socket.set_tcp_user_timeout(Some(USER_TIMEOUT)) {
                    tracing::debug!(%error, "could not set TCP_USER_TIMEOUT on the redis connection");
                }
                return Ok(stream);
            }
            Err(error) => last = Some(error),
        }
    }
    Err(last.map_or_else(|| StoreError::Io("the host has no address".into()), io))
}

/// The Redis handshake (`AUTH`, `SELECT`) over `stream`, and the task that drives the
/// connection. No response timeout inside: each command's own (per store clone) applies.
async fn handshake<C>(
    shared: &Shared,
    stream: C,
) -> Result<(MultiplexedConnection, AbortHandle), StoreError>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = AsyncConnectionConfig::new().set_response_timeout(None);
    let settings = shared.client.get_connection_info().redis_settings();
    let (conn, driver) = MultiplexedConnection::new_with_config(settings, stream, config)
        .await
        .map_err(StoreError::Redis)?;
    let driver = tokio::spawn(driver).abort_handle();
    Ok((conn, driver))
}

/// Whether `error` says the server at the other end is not (or not yet) the primary that
/// serves this address: `READONLY` (a primary demoted by a failover, still reachable, while
/// the name now points to the new one), `MASTERDOWN` (a replica cut off from its primary),
/// `LOADING` (a restarted server loading its data). The connection is dropped, so that the next
/// command connects anew, resolving the name again.
fn not_the_primary(error: &RedisError) -> bool {
    matches!(
        error.kind(),
        ::redis::ErrorKind::Server(
            ::redis::ServerErrorKind::ReadOnly
                | ::redis::ServerErrorKind::MasterDown
                | ::redis::ServerErrorKind::BusyLoading
        )
    )
}

/// Whether `error` sends the command to another node of a cluster (`MOVED`, `ASK`).
fn is_redirection(error: &RedisError) -> bool {
    matches!(
        error.kind(),
        ::redis::ErrorKind::Server(::redis::ServerErrorKind::Moved | ::redis::ServerErrorKind::Ask)
    )
}

/// PX wants whole, positive milliseconds.
fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

impl TokenStore for RedisStore {
    fn load(&self, key: &str) -> BoxFuture<'_, Result<Option<Stored>, BoxError>> {
        let key = key.to_owned();
        Box::pin(async move {
            // Borrowed by the command and by the probe after a timeout (cluster mode).
            let key = key.as_str();
            let reply: Value = self
                .run("load", key, |mut conn| async move {
                    self.shared.scripts.load.invoke(&mut conn, key, &[]).await
                })
                .await?;
            match reply {
                Value::Nil => Ok(None),
                Value::Array(items) => match items.as_slice() {
                    [Value::BulkString(value), Value::Int(pttl)] => {
                        let ttl =
                            u64::try_from(*pttl).map_or(Duration::ZERO, Duration::from_millis);
                        Ok(Some(Stored::new(Bytes::copy_from_slice(value), ttl)))
                    }
                    _ => Err(StoreError::Unexpected("the load script").into()),
                },
                _ => Err(StoreError::Unexpected("the load script").into()),
            }
        })
    }

    fn save_if_longer(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, BoxError>> {
        let key = key.to_owned();
        Box::pin(async move {
            // Borrowed by the command and by the probe after a timeout (cluster mode).
            let key = key.as_str();
            let ms = millis(ttl);
            if ms == 0 {
                return Ok(false);
            }
            let ms = ms.to_string();
            let wrote: i64 = self
                .run("save_if_longer", key, |mut conn| async move {
                    self.shared
                        .scripts
                        .save_if_longer
                        .invoke(
                            &mut conn,
                            key,
                            &[value.as_ref(), ms.as_bytes(), channel(key).as_bytes()],
                        )
                        .await
                })
                .await?;
            Ok(wrote == 1)
        })
    }

    fn remove_if_prefix(&self, key: &str, prefix: &[u8]) -> BoxFuture<'_, Result<bool, BoxError>> {
        let key = key.to_owned();
        let prefix = prefix.to_vec();
        Box::pin(async move {
            // Borrowed by the command and by the probe after a timeout (cluster mode).
            let key = key.as_str();
            let removed: i64 = self
                .run("remove_if_prefix", key, |mut conn| async move {
                    self.shared
                        .scripts
                        .remove_if_prefix
                        .invoke(&mut conn, key, &[prefix.as_slice()])
                        .await
                })
                .await?;
            Ok(removed == 1)
        })
    }

    fn remove_if_equal(&self, key: &str, value: &[u8]) -> BoxFuture<'_, Result<bool, BoxError>> {
        let key = key.to_owned();
        let value = value.to_vec();
        Box::pin(async move {
            // Borrowed by the command and by the probe after a timeout (cluster mode).
            let key = key.as_str();
            let removed: i64 = self
                .run("remove_if_equal", key, |mut conn| async move {
                    self.shared
                        .scripts
                        .remove_if_equal
                        .invoke(&mut conn, key, &[value.as_slice()])
                        .await
                })
                .await?;
            Ok(removed == 1)
        })
    }

    fn try_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, BoxError>> {
        let key = key.to_owned();
        let holder = holder.to_owned();
        Box::pin(async move {
            // Borrowed by the command and by the probe after a timeout (cluster mode).
            let key = key.as_str();
            let ms = millis(ttl).max(1).to_string();
            let taken: i64 = self
                .run("try_lease", key, |mut conn| async move {
                    self.shared
                        .scripts
                        .try_lease
                        .invoke(&mut conn, key, &[holder.as_bytes(), ms.as_bytes()])
                        .await
                })
                .await?;
            Ok(taken == 1)
        })
    }

    fn extend_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, BoxError>> {
        let key = key.to_owned();
        let holder = holder.to_owned();
        Box::pin(async move {
            // Borrowed by the command and by the probe after a timeout (cluster mode).
            let key = key.as_str();
            let ms = millis(ttl).max(1).to_string();
            let extended: i64 = self
                .run("extend_lease", key, |mut conn| async move {
                    self.shared
                        .scripts
                        .extend_lease
                        .invoke(&mut conn, key, &[holder.as_bytes(), ms.as_bytes()])
                        .await
                })
                .await?;
            Ok(extended == 1)
        })
    }

    fn release_lease(&self, key: &str, holder: &str) -> BoxFuture<'_, Result<(), BoxError>> {
        let key = key.to_owned();
        let holder = holder.to_owned();
        Box::pin(async move {
            // Borrowed by the command and by the probe after a timeout (cluster mode).
            let key = key.as_str();
            let _: i64 = self
                .run("release_lease", key, |mut conn| async move {
                    self.shared
                        .scripts
                        .release_lease
                        .invoke(&mut conn, key, &[holder.as_bytes()])
                        .await
                })
                .await?;
            Ok(())
        })
    }

    fn watch(
        &self,
        key: &str,
        seen: Option<u64>,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<u64, BoxError>> {
        let channel = channel(key);
        Box::pin(async move { Ok(self.watch_channel(channel, seen, timeout).await?) })
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RedisStore");
        d.field("addr", &self.shared.addr);
        if self.shared.cluster.is_some() {
            d.field("cluster", &true);
        }
        d.field("tls", &self.shared.tls.is_some())
            .field("db", &self.shared.db);
        if self.shared.has_credentials {
            d.field("credentials", &"[redacted]");
        }
        d.field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests;
