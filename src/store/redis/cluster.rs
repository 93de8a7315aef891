//! Cluster mode ([`RedisStore::cluster`](super::RedisStore::cluster)): commands go through the
//! `redis` crate's cluster client, which maps slots to nodes, follows `MOVED` and `ASK`, and
//! reconnects and re-reads the topology after a failover. The fleet's keys share one hash slot
//! (see `seal.rs`), so each script runs on the one node that owns the token.
//!
//! The subscriber connection is not the cluster client's: a `PUBLISH` reaches every node of a
//! cluster, so the store subscribes on one node (a seed, the next one in turn after a
//! connection ends), over its own TLS like a single server's.
//!
//! TLS is the cluster client's own (`rediss://` seeds): its rustls configuration is built by the
//! `redis` crate with `rustls::ClientConfig::builder()`, which takes the process-wide
//! `CryptoProvider`. That is why [`Cluster::new`] refuses `rediss://` seeds when the
//! application installed none, rather than installing one for it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ::redis::aio::{ConnectionLike, MultiplexedConnection};
use ::redis::cluster::{ClusterClient, ClusterClientBuilder};
use ::redis::cluster_async::ClusterConnection;
use ::redis::io::tcp::{TcpSettings, socket2};
use ::redis::{Client, ClientTlsConfig, Cmd, Pipeline, RedisFuture, TlsCertificates, Value};

use super::{KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_PROBES, RECONNECT_INTERVAL};
use crate::error::Error;

/// How many times the cluster client tries a command again: after a `MOVED` (it reads the
/// slots again), an `ASK` (it follows it), a refused or dropped connection (it reconnects that
/// node), or a reply over its response timeout (sent again to the same node: it never reads
/// the slots again for a silent node, see the store's probe). `TRYAGAIN`, `CLUSTERDOWN` and
/// `LOADING` wait at least about a second first, past the store's default timeout. Every
/// command is bounded by the store's own timeout anyway; these only keep a failover's or a
/// slot move's first command from giving up before the new topology is read.
const RETRIES: u32 = 4;

/// A cluster's seeds and its client.
pub(super) struct Cluster {
    /// The seed URLs as given: they may hold a password, and are never shown.
    urls: Vec<String>,
    tls: bool,
    /// The seeds parsed without TLS, for the subscriber connection (the TLS is ours there).
    seeds: Vec<Client>,
    /// The seed the next subscriber connection goes to.
    next_seed: AtomicUsize,
    /// The certificates given, kept to build the client again when another is set.
    roots: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    client: ClusterClient,
}

impl Cluster {
    /// Parses the seeds: all `redis://` or all `rediss://`, host and port (no Unix socket).
    pub(super) fn new<I>(nodes: I) -> Result<Cluster, Error>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let urls: Vec<String> = nodes.into_iter().map(|n| n.as_ref().to_owned()).collect();
        if urls.is_empty() {
            return Err(Error::invalid_config(
                "a Redis cluster needs at least one seed URL",
            ));
        }
        let scheme = |url: &str, scheme: &str| {
            url.get(..scheme.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
        };
        let tls = scheme(&urls[0], "rediss://");
        let mut seeds = Vec::with_capacity(urls.len());
        for url in &urls {
            let plain = if tls && scheme(url, "rediss://") {
                if url.contains('#') {
                    return Err(Error::invalid_config(
                        "a Redis cluster seed asks for TLS without certificate verification (#insecure), which is not supported",
                    ));
                }
                format!("redis://{}", &url["rediss://".len()..])
            } else if !tls && scheme(url, "redis://") {
                url.clone()
            } else {
                return Err(Error::invalid_config(
                    "the seeds of a Redis cluster must all start with redis://, or all with rediss://",
                ));
            };
            let client = Client::open(plain.as_str()).map_err(|_| {
                Error::invalid_config(
                    "a Redis cluster seed does not parse (expected redis://[[user]:password@]host[:port])",
                )
            })?;
            if !matches!(
                client.get_connection_info().addr(),
                ::redis::ConnectionAddr::Tcp(..)
            ) {
                return Err(Error::invalid_config(
                    "a Redis cluster seed must be a host and a port",
                ));
            }
            seeds.push(client);
        }
        // The cluster client compares the seeds' credentials only when the first names some;
        // a seed that names others would authenticate the subscriber but not the commands.
        let settings = |seed: &Client| {
            let settings = seed.get_connection_info().redis_settings();
            (
                settings.username().map(str::to_owned),
                settings.password().map(str::to_owned),
                settings.db(),
            )
        };
        let first = settings(&seeds[0]);
        if seeds.iter().any(|seed| settings(seed) != first) {
            return Err(Error::invalid_config(
                "the seeds of a Redis cluster must all name the same user and password (or none)",
            ));
        }
        if first.2 != 0 {
            return Err(Error::invalid_config(
                "a Redis cluster has one database, 0: the seeds must not name another",
            ));
        }
        if tls && rustls::crypto::CryptoProvider::get_default().is_none() {
            return Err(Error::invalid_config(
                "TLS to a Redis cluster is made by the redis crate's cluster client, which needs \
                 rustls's process-wide CryptoProvider, and none is installed: install one at the \
                 start of main, e.g. `rustls::crypto::ring::default_provider().install_default()`",
            ));
        }
        let client = build(&urls, tls, None, None)?;
        Ok(Cluster {
            urls,
            tls,
            seeds,
            next_seed: AtomicUsize::new(0),
            roots: None,
            identity: None,
            client,
        })
    }

    /// The same seeds, with these certificates (each `None` keeps what was set).
    pub(super) fn with_certificates(
        &self,
        roots: Option<&[u8]>,
        identity: Option<(&[u8], &[u8])>,
    ) -> Result<Cluster, Error> {
        let roots = roots.map(<[u8]>::to_vec).or_else(|| self.roots.clone());
        let identity = identity
            .map(|(chain, key)| (chain.to_vec(), key.to_vec()))
            .or_else(|| self.identity.clone());
        let client = build(&self.urls, self.tls, roots.as_deref(), identity.as_ref())?;
        Ok(Cluster {
            urls: self.urls.clone(),
            tls: self.tls,
            seeds: self.seeds.clone(),
            next_seed: AtomicUsize::new(0),
            roots,
            identity,
            client,
        })
    }

    /// Whether the seeds are `rediss://`.
    pub(super) fn is_tls(&self) -> bool {
        self.tls
    }

    /// The first seed: its settings (user, password) are the cluster's.
    pub(super) fn first_seed(&self) -> &Client {
        &self.seeds[0]
    }

    /// The seed the next subscriber connection goes to: each in turn.
    pub(super) fn next_seed(&self) -> &Client {
        let turn = self.next_seed.fetch_add(1, Ordering::Relaxed);
        &self.seeds[turn % self.seeds.len()]
    }

    /// `host:port` of each seed, for `Debug`.
    pub(super) fn addrs(&self) -> String {
        let addrs: Vec<String> = self
            .seeds
            .iter()
            .map(|seed| seed.get_connection_info().addr().to_string())
            .collect();
        addrs.join(",")
    }

    /// Connects to the cluster: reads the slots from a seed and connects to their primaries.
    /// Both steps connect to nodes (in parallel within each), and a seed gone silent holds
    /// the first up to its connection timeout: each node gets half of `connect_timeout`, so
    /// that the connection is made within it from the seeds that answer.
    ///
    /// A reply slower than the response timeout is asked for again, on the same node: the
    /// timeout is at least the store's command `timeout`, so that a command is sent again only
    /// once its caller has given up on it (and the client then drops it), never while the
    /// caller still waits for the first answer.
    pub(super) async fn connect(
        &self,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<ClusterConnection, ::redis::RedisError> {
        let config = ::redis::cluster::ClusterConfig::new()
            .set_connection_timeout(connect_timeout / 2)
            .set_response_timeout(timeout.max(RECONNECT_INTERVAL));
        self.client.get_async_connection_with_config(config).await
    }
}

/// The cluster client: TCP keepalive and user timeout as for one server, a few retries (the
/// response timeout and the connection timeout are set at each connection, see
/// [`Cluster::connect`]).
fn build(
    urls: &[String],
    tls: bool,
    roots: Option<&[u8]>,
    identity: Option<&(Vec<u8>, Vec<u8>)>,
) -> Result<ClusterClient, Error> {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    let tcp = TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive);
    #[cfg(any(target_os = "android", target_os = "linux"))]
    let tcp = tcp.set_user_timeout(super::USER_TIMEOUT);
    let mut builder = ClusterClientBuilder::new(urls.to_vec())
        .tcp_settings(tcp)
        .overall_response_timeout(None)
        .retries(RETRIES);
    if tls {
        builder = builder.certs(TlsCertificates {
            client_tls: identity.map(|(chain, key)| ClientTlsConfig {
                client_cert: chain.clone(),
                client_key: key.clone(),
            }),
            root_cert: roots.map(<[u8]>::to_vec),
        });
    }
    // The seeds were parsed and compared already; the client's own words are about its
    // configuration (its TLS certificates), never a URL.
    builder.build().map_err(|error| {
        Error::invalid_config(format!(
            "the Redis cluster client refused its configuration: {error}"
        ))
    })
}

/// A connection to one server or to a cluster: what the store's commands run on.
#[derive(Clone)]
pub(super) enum Conn {
    Server(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Server(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Server(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Server(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}
