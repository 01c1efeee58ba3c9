//! How shared data is laid out in Redis, and the two operations on it.
//!
//! Each filter key is one Redis hash holding the value (`v`) and its CAS version (`c`). A read is
//! one `HMGET`; a write is one Lua script, so the version check and the write are atomic on the
//! server, exactly like the memory backend's compare-and-swap. Each operation touches one key,
//! so it routes to one node in Redis Cluster.

use proxy_wasm_host::abi::Status;
use proxy_wasm_host::SharedValue;
use redis::aio::ConnectionLike;
use redis::{RedisResult, Script};
use std::sync::LazyLock;
use std::time::Duration;

/// Compare-and-swap write. KEYS[1]: the key; ARGV: expected version (0 = any), value (empty
/// deletes), TTL in milliseconds (0 = none). Returns the new version, 0 for a delete, -1 on a
/// version mismatch. A new key's version comes from the server clock, so a key deleted and written
/// again does not reuse the version a stale writer may still hold.
const SET_SCRIPT: &str = r"
local current = redis.call('HGET', KEYS[1], 'c')
local expected = tonumber(ARGV[1])
if current and expected ~= 0 and tonumber(current) ~= expected then
  return -1
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
  return 0
end
local version
if current then
  version = tonumber(current) % 4294967295 + 1
else
  local now = redis.call('TIME')
  version = (tonumber(now[1]) * 1000000 + tonumber(now[2])) % 4294967295 + 1
end
redis.call('HSET', KEYS[1], 'c', version, 'v', ARGV[2])
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
else
  redis.call('PERSIST', KEYS[1])
end
return version
";

static SET: LazyLock<Script> = LazyLock::new(|| Script::new(SET_SCRIPT));

/// The Redis key of a filter's key: `{prefix}{len(vm_id)}:{vm_id}:{key}`. The length keeps
/// `(vm_id, key)` pairs apart even when either contains the separator.
pub(crate) fn redis_key(prefix: &str, vm_id: &str, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + vm_id.len() + key.len() + 8);
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(vm_id.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(vm_id.as_bytes());
    out.push(b':');
    out.extend_from_slice(key);
    out
}

/// Reads a value and its version.
pub(crate) async fn get(
    conn: &mut impl ConnectionLike,
    key: &[u8],
) -> RedisResult<Option<SharedValue>> {
    let (cas, value): (Option<u32>, Option<Vec<u8>>) = redis::cmd("HMGET")
        .arg(key)
        .arg("c")
        .arg("v")
        .query_async(conn)
        .await?;
    Ok(cas
        .zip(value)
        .map(|(cas, value)| SharedValue { value, cas }))
}

/// Writes (or, with an empty value, deletes) a value if `cas` matches.
pub(crate) async fn set(
    conn: &mut impl ConnectionLike,
    key: &[u8],
    value: &[u8],
    cas: u32,
    ttl: Option<Duration>,
) -> RedisResult<Status> {
    let ttl_ms = ttl.map_or(0, |t| t.as_millis().max(1) as u64);
    let outcome: i64 = SET
        .key(key)
        .arg(cas)
        .arg(value)
        .arg(ttl_ms)
        .invoke_async(conn)
        .await?;
    Ok(if outcome < 0 {
        Status::CasMismatch
    } else {
        Status::Ok
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_vm_ids_apart() {
        assert_eq!(redis_key("gw:", "rl", b"k"), b"gw:2:rl:k");
        assert_ne!(
            redis_key("gw:", "a:b", b"c"),
            redis_key("gw:", "a", b"b:c"),
            "a separator inside the vm_id or key cannot make two keys collide"
        );
    }
}
