//! The store's Lua scripts, each one atomic step on one key, and how they are sent: `EVALSHA`,
//! then `EVAL` with the source on `NOSCRIPT`; never `SCRIPT LOAD`, which a cluster client sends
//! to every node.

use ::redis::{RedisError, Script};

use super::cluster::Conn;

/// `GET` and `PTTL` together: `{value, pttl}`, or nil when the key is absent.
const LOAD: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return false end
return {v, redis.call('PTTL', KEYS[1])}
";

/// `SET .. PX` only if the key is absent, has no expiry, or expires sooner; then `PUBLISH` on
/// the key's channel (its name, see [`channel`]), so that waiting processes wake. The
/// `PUBLISH` is a `pcall`: an ACL without the channel refuses it, and the write still happened.
const SAVE_IF_LONGER: &str = r"
local pttl = redis.call('PTTL', KEYS[1])
if pttl >= 0 and pttl >= tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.pcall('PUBLISH', ARGV[3], '')
return 1
";

/// The channel on which writes to `key` are published.
pub(super) fn channel(key: &str) -> String {
    format!("{key}:written")
}

/// `DEL` only if the value starts with the prefix (Lua strings are binary-safe).
const REMOVE_IF_PREFIX: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, string.len(ARGV[1])) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

/// `DEL` only if the value is exactly this one.
const REMOVE_IF_EQUAL: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// `SET .. PX` only if nobody holds the lease; 1 when this holder holds it now. Asked again by
/// the holder (a command sent again after a lost reply, its first attempt having taken the
/// lease), it answers 1: a plain `SET NX` would answer nil, and nobody would release the lease.
const TRY_LEASE: &str = r"
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then return 1 end
if held then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// `PEXPIRE` only if the lease still names this holder.
const EXTEND_LEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// `DEL` only if the lease still names this holder.
const RELEASE_LEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The store's scripts, their hashes computed once per store.
pub(super) struct Scripts {
    pub(super) load: Lua,
    pub(super) save_if_longer: Lua,
    pub(super) remove_if_prefix: Lua,
    pub(super) remove_if_equal: Lua,
    pub(super) try_lease: Lua,
    pub(super) release_lease: Lua,
    pub(super) extend_lease: Lua,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Scripts {
            load: Lua::new(LOAD),
            save_if_longer: Lua::new(SAVE_IF_LONGER),
            remove_if_prefix: Lua::new(REMOVE_IF_PREFIX),
            remove_if_equal: Lua::new(REMOVE_IF_EQUAL),
            try_lease: Lua::new(TRY_LEASE),
            release_lease: Lua::new(RELEASE_LEASE),
            extend_lease: Lua::new(EXTEND_LEASE),
        }
    }
}

/// One of the store's Lua scripts: its source, and its SHA1.
pub(super) struct Lua {
    script: Script,
    source: &'static str,
}

impl Lua {
    fn new(source: &'static str) -> Lua {
        Lua {
            script: Script::new(source),
            source,
        }
    }

    /// Runs the script on `key` with `args`: `EVALSHA`, then `EVAL` with the source when the
    /// server does not have it (`NOSCRIPT`: a restarted or new primary; `EVAL` caches it
    /// there). Never `SCRIPT LOAD`: a cluster client sends that to every node and needs an
    /// answer from each, so one silent replica anywhere would stall the fleet; both commands
    /// here go to the node that owns `key`.
    pub(super) async fn invoke<T: ::redis::FromRedisValue>(
        &self,
        conn: &mut Conn,
        key: &str,
        args: &[&[u8]],
    ) -> Result<T, RedisError> {
        let command = |name: &str, script: &str| {
            let mut command = ::redis::cmd(name);
            command.arg(script).arg(1).arg(key);
            for arg in args {
                command.arg(*arg);
            }
            command
        };
        match command("EVALSHA", self.script.get_hash())
            .query_async(conn)
            .await
        {
            Err(error)
                if error.kind()
                    == ::redis::ErrorKind::Server(::redis::ServerErrorKind::NoScript) =>
            {
                command("EVAL", self.source).query_async(conn).await
            }
            result => result,
        }
    }
}
