//! Moving a hash slot from one primary to another, as `redis-cli --cluster reshard` does:
//! [`RedisCluster::move_slot`], or in two steps with a half-moved slot in between.

use std::io;
use std::time::Instant;

use super::{CLUSTER_WAIT, Node, RedisCluster, expect_ok, query};

/// How many keys one `CLUSTER GETKEYSINSLOT` lists, and one `MIGRATE` moves.
const BATCH: u16 = 100;
/// How long one `MIGRATE` may wait for the target, in milliseconds: within the time the kit
/// waits for a reply (2 s), so that the source's own error (`IOERR`) is the one reported.
const MIGRATE_TIMEOUT_MS: u64 = 1000;

/// A hash slot half moved by [`RedisCluster::begin_slot_move`]: its source primary reports it
/// `MIGRATING` to the target, the target `IMPORTING` from the source, and some of its keys are
/// on the target already. [`RedisCluster::finish_slot_move`] moves the rest and hands the slot
/// over.
///
/// Meanwhile the cluster answers as during a reshard: every node but the source redirects the
/// slot to the source with `MOVED`; the source serves the keys it still holds and answers `ASK`
/// (naming the target) for the others, and the target serves them only to a client that sent
/// `ASKING` first (`MOVED` to the source otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMove {
    slot: u16,
    source_id: String,
    target_id: String,
    source_url: String,
    target_url: String,
}

impl SlotMove {
    /// The hash slot being moved.
    pub fn slot(&self) -> u16 {
        self.slot
    }

    /// `redis://127.0.0.1:PORT` of the primary the slot is moving from.
    pub fn source_url(&self) -> &str {
        &self.source_url
    }

    /// `redis://127.0.0.1:PORT` of the primary the slot is moving to.
    pub fn target_url(&self) -> &str {
        &self.target_url
    }
}

impl RedisCluster {
    /// Moves `key`'s hash slot, with every key in it, to the next primary (the one that follows
    /// the slot's primary in the order the nodes were started, cyclically; its replicas follow
    /// it), the way `redis-cli --cluster reshard` does and a managed service scaling a cluster
    /// does online: [`begin_slot_move`](Self::begin_slot_move) with no key, then
    /// [`finish_slot_move`](Self::finish_slot_move). It returns once every live node maps the
    /// slot to its new primary and reports `cluster_state:ok`, with the new primary's
    /// `redis://127.0.0.1:PORT`.
    ///
    /// ```no_run
    /// use tower_cognito_auth::testing::RedisCluster;
    ///
    /// # fn main() -> std::io::Result<()> {
    /// let cluster = RedisCluster::start(3, 1)?;
    /// let before = cluster.primary_url_for("token")?;
    /// let after = cluster.move_slot("token")?;
    /// assert_ne!(before, after);
    /// assert!(cluster.urls().contains(&after)); // another of the first primaries
    /// assert_eq!(cluster.primary_url_for("token")?, after);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`finish_slot_move`](Self::finish_slot_move).
    pub fn move_slot(&self, key: &str) -> io::Result<String> {
        let slot_move = self.begin_slot_move(key, &[])?;
        self.finish_slot_move(&slot_move)
    }

    /// The first half of [`move_slot`](Self::move_slot): `CLUSTER SETSLOT <slot> IMPORTING` on
    /// the next primary, `CLUSTER SETSLOT <slot> MIGRATING` on the slot's primary, then `MIGRATE`
    /// of those of `first` that exist (all of them in `key`'s slot), and no other key. The slot
    /// stays half moved (see [`SlotMove`]) until
    /// [`finish_slot_move`](Self::finish_slot_move).
    ///
    /// ```no_run
    /// use tower_cognito_auth::testing::RedisCluster;
    ///
    /// # fn main() -> std::io::Result<()> {
    /// let cluster = RedisCluster::start(3, 0)?;
    /// // "{t}a" on the target already, "{t}b" still on the source.
    /// let half = cluster.begin_slot_move("{t}", &["{t}a"])?;
    /// assert_eq!(cluster.primary_url_for("{t}")?, half.source_url()); // its owner still
    /// let after = cluster.finish_slot_move(&half)?;
    /// assert_eq!(after, half.target_url());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// `InvalidInput` when a key of `first` is not in `key`'s slot; an error quoting the node
    /// when a command fails (among them, the slot is being moved already).
    pub fn begin_slot_move(&self, key: &str, first: &[&str]) -> io::Result<SlotMove> {
        let (slot, range) = self.range_for(key)?;
        let source = self.node(&range.primary.id)?;
        let target = self.next_primary(source)?;
        for other in first {
            let other_slot = query::<u16>(
                &source.server,
                redis::cmd("CLUSTER").arg("KEYSLOT").arg(*other),
            )?;
            if other_slot != slot {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{other:?} is in slot {other_slot}, not in {key:?}'s slot {slot}"),
                ));
            }
        }
        expect_ok(
            target,
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("IMPORTING")
                .arg(&source.id),
        )?;
        expect_ok(
            source,
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("MIGRATING")
                .arg(&target.id),
        )?;
        migrate(source, target, first)?;
        Ok(SlotMove {
            slot,
            source_id: source.id.clone(),
            target_id: target.id.clone(),
            source_url: source.server.url(),
            target_url: target.server.url(),
        })
    }

    /// The second half of [`move_slot`](Self::move_slot): `MIGRATE` of every key the source
    /// still holds in the slot (`CLUSTER GETKEYSINSLOT`, a hundred at a time, until none is
    /// left), then `CLUSTER SETSLOT <slot> NODE <target>` on the target, the source and every
    /// other primary, in that order. It returns once every live node maps the slot to the
    /// target and reports `cluster_state:ok`, with the target's `redis://127.0.0.1:PORT`.
    ///
    /// # Errors
    ///
    /// When a command fails (among them, `slot_move` was finished already), or the nodes do not
    /// agree within 15 seconds (what they said last is quoted).
    pub fn finish_slot_move(&self, slot_move: &SlotMove) -> io::Result<String> {
        let source = self.node(&slot_move.source_id)?;
        let target = self.node(&slot_move.target_id)?;
        let slot = slot_move.slot;
        // Bounded: a key the source no longer holds is never written there again (the source
        // answers `ASK` for it), so each round moves what is left, until nothing is.
        let deadline = Instant::now() + CLUSTER_WAIT;
        loop {
            let keys = query::<Vec<String>>(
                &source.server,
                redis::cmd("CLUSTER")
                    .arg("GETKEYSINSLOT")
                    .arg(slot)
                    .arg(BATCH),
            )?;
            if keys.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} still holds keys of slot {slot} after {CLUSTER_WAIT:?}",
                        source.server.url()
                    ),
                ));
            }
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            migrate(source, target, &keys)?;
        }
        let owner = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("NODE")
            .arg(&target.id)
            .clone();
        // The target first, so that it serves the slot before the source sends clients to it.
        expect_ok(target, &owner)?;
        expect_ok(source, &owner)?;
        for primary in self.primaries_now()? {
            if primary.id != target.id && primary.id != source.id {
                expect_ok(primary, &owner)?;
            }
        }
        self.wait_for_primary(slot, target, true, &mut || Ok(()))?;
        Ok(target.server.url())
    }

    /// The primary that follows `node` among the primaries now, in the order the nodes were
    /// started, cyclically.
    fn next_primary(&self, node: &Node) -> io::Result<&Node> {
        let primaries = self.primaries_now()?;
        let at = primaries
            .iter()
            .position(|primary| primary.id == node.id)
            .ok_or_else(|| {
                io::Error::other(format!("{} is not a primary now", node.server.url()))
            })?;
        primaries
            .get(at + 1)
            .or_else(|| primaries.first())
            .filter(|next| next.id != node.id)
            .copied()
            .ok_or_else(|| io::Error::other("the cluster has one primary"))
    }

    /// The nodes a live node's `CLUSTER SLOTS` names as primaries, in the order the nodes were
    /// started.
    fn primaries_now(&self) -> io::Result<Vec<&Node>> {
        let node = self
            .live()
            .next()
            .ok_or_else(|| io::Error::other("no node of the cluster is alive"))?;
        let map = super::slots(&node.server).map_err(io::Error::other)?;
        Ok(self
            .nodes
            .iter()
            .filter(|node| map.iter().any(|range| range.primary.id == node.id))
            .collect())
    }
}

/// `MIGRATE` of `keys` from `source` to `target` (over TLS to its TLS port when the cluster
/// has TLS: `MIGRATE` goes the way the cluster bus does). `NOKEY` (none of them exists) is not
/// an error.
fn migrate(source: &Node, target: &Node, keys: &[&str]) -> io::Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let port = target
        .server
        .tls_url()
        .and_then(|url| url.rsplit(':').next()?.parse::<u16>().ok())
        .unwrap_or_else(|| target.server.addr().port());
    let reply = query::<redis::Value>(
        &source.server,
        redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(port)
            .arg("")
            .arg(0)
            .arg(MIGRATE_TIMEOUT_MS)
            .arg("KEYS")
            .arg(keys),
    )?;
    match reply {
        redis::Value::Okay => Ok(()),
        redis::Value::SimpleString(status) if status == "NOKEY" => Ok(()),
        other => Err(io::Error::other(format!(
            "{}: MIGRATE answered {other:?}",
            source.server.url()
        ))),
    }
}
