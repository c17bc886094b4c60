//! The Lua scripts that write the cache atomically per key, with their version checks, and the
//! script call that applies each [`CacheItem`]. Every script touches keys of one keyspace only,
//! so Redis Cluster routes it by the keyspace's hash tag.

use std::sync::OnceLock;

use fred::prelude::Value;
use fred::types::{ClusterHash, CustomCommand};

use super::keys::{category_key, order_key};
use super::writer::Ttl;
use crate::domain::CacheItem;

/// Writes an order's JSON unless the cached value's `version` is already >= the new one.
/// KEYS: generation, order key. ARGV: the generation the key belongs to, JSON, version, TTL
/// (seconds, 0: none). Returns 1 written, 0 skipped as older, -1 when the generation moved
/// (the caller reads it again and rebuilds the key).
///
/// The cached version is read from the value's first 2,048 bytes (`GETRANGE`), in O(1)
/// whatever the value's size: `order_cache_json` writes `"version"` after the tenant id and the
/// order id (at most 200 characters, 1,200 bytes escaped). Quotes inside strings are escaped, so
/// the pattern cannot match inside the order id. Only a value without it there (written by
/// something else) is decoded whole.
pub(super) static SET_IF_NEWER: Script = Script::new(
    r#"
if tonumber(redis.call('GET', KEYS[1]) or '0') ~= tonumber(ARGV[1]) then
  return -1
end
local head = redis.call('GETRANGE', KEYS[2], 0, 2047)
if head ~= '' then
  local cached = tonumber(string.match(head, '"version" : (%d+)'))
  if not cached then
    local ok, decoded = pcall(cjson.decode, redis.call('GET', KEYS[2]))
    if ok and type(decoded) == 'table' then
      cached = tonumber(decoded['version'])
    end
  end
  if cached and cached >= tonumber(ARGV[3]) then
    return 0
  end
end
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  redis.call('SET', KEYS[2], ARGV[2], 'EX', ttl)
else
  redis.call('SET', KEYS[2], ARGV[2])
end
return 1
"#,
);

/// How much of a cached order [`SET_IF_NEWER`] reads to find its version.
#[cfg(test)]
const VERSION_PREFIX_BYTES: usize = 2048;

/// Sets or deletes one versioned entry: a hash field (settings, SLA policies) or a whole key
/// (profile, category, with an optional index set). Its version lives in the keyspace's
/// `versions` hash, which also keeps the version of a deletion, so an older write cannot bring a
/// deleted entry back.
/// KEYS: generation, versions hash, target, [index set]. ARGV: generation, versions field,
/// version, TTL, 'hash' or 'string', '1' when there is a value, value, hash field or index member.
/// Returns 1 written, 0 skipped as older, -1 when the generation moved.
pub(super) static APPLY_ENTRY: Script = Script::new(
    r#"
if tonumber(redis.call('GET', KEYS[1]) or '0') ~= tonumber(ARGV[1]) then
  return -1
end
local present = ARGV[6] == '1'
local current = tonumber(redis.call('HGET', KEYS[2], ARGV[2]))
if current and current >= tonumber(ARGV[3]) then
  -- The same version may be written again when its value expired or was evicted while the
  -- versions hash lived on; anything older is skipped.
  local gone = false
  if present and current == tonumber(ARGV[3]) then
    if ARGV[5] == 'hash' then
      gone = redis.call('HEXISTS', KEYS[3], ARGV[8]) == 0
    else
      gone = redis.call('EXISTS', KEYS[3]) == 0
    end
  end
  if not gone then
    return 0
  end
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
if ARGV[5] == 'hash' then
  if present then
    redis.call('HSET', KEYS[3], ARGV[8], ARGV[7])
  else
    redis.call('HDEL', KEYS[3], ARGV[8])
  end
elseif present then
  redis.call('SET', KEYS[3], ARGV[7])
else
  redis.call('DEL', KEYS[3])
end
if KEYS[4] then
  if present then
    redis.call('SADD', KEYS[4], ARGV[8])
  else
    redis.call('SREM', KEYS[4], ARGV[8])
  end
end
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  for i = 2, #KEYS do
    redis.call('EXPIRE', KEYS[i], ttl)
  end
end
return 1
"#,
);

/// Retires a keyspace's keys in O(1): increments its generation. With a version (> 0), only once
/// per version (a suspension applied again, by the drainer or a replay, does not bump again).
/// KEYS: generation, last bumped version. ARGV: version or 0. Returns the generation.
pub(super) static BUMP_GENERATION: Script = Script::new(
    r#"
local version = tonumber(ARGV[1])
if version > 0 then
  local last = tonumber(redis.call('GET', KEYS[2]) or '-1')
  if last >= version then
    return tonumber(redis.call('GET', KEYS[1]) or '0')
  end
  redis.call('SET', KEYS[2], ARGV[1])
end
return redis.call('INCR', KEYS[1])
"#,
);

/// A Lua script, which Redis runs by its SHA1 once it has loaded it (EVALSHA): each call then
/// sends 40 bytes instead of the script, and Redis does not hash the script again.
pub(super) struct Script {
    pub body: &'static str,
    sha: OnceLock<String>,
}

impl Script {
    const fn new(body: &'static str) -> Self {
        Self {
            body,
            sha: OnceLock::new(),
        }
    }

    pub(super) fn sha(&self) -> &str {
        self.sha.get_or_init(|| fred::util::sha1_hash(self.body))
    }
}

/// A script call: the script, its keys and its arguments.
pub(super) struct ScriptCall {
    pub script: &'static Script,
    pub keys: Vec<String>,
    pub args: Vec<Value>,
}

impl ScriptCall {
    /// The call as EVALSHA arguments (SHA1, numkeys, keys, args).
    pub(super) fn evalsha_args(&self) -> Vec<Value> {
        let mut all: Vec<Value> = Vec::with_capacity(2 + self.keys.len() + self.args.len());
        all.push(self.script.sha().into());
        all.push((self.keys.len() as i64).into());
        all.extend(self.keys.iter().map(|k| Value::from(k.as_str())));
        all.extend(self.args.iter().cloned());
        all
    }
}

/// The script call that applies `item` in generation `generation`.
pub(super) fn apply_item(item: &CacheItem, generation: i64, ttl: &Ttl) -> ScriptCall {
    let space = item.keyspace();
    let gen_key = space.generation_key();
    let versions = space.key(generation, "versions");
    let entry = |field: String, mode: &str, value: &Option<String>, member: &str| -> Vec<Value> {
        vec![
            generation.into(),
            field.into(),
            item.version().into(),
            (ttl.config as i64).into(),
            mode.into(),
            if value.is_some() { "1" } else { "0" }.into(),
            value.clone().unwrap_or_default().into(),
            member.into(),
        ]
    };
    match item {
        CacheItem::Order {
            tenant,
            order_id,
            version,
            json,
        } => ScriptCall {
            script: &SET_IF_NEWER,
            keys: vec![gen_key, order_key(tenant, generation, order_id)],
            args: vec![
                generation.into(),
                json.as_str().into(),
                (*version).into(),
                (ttl.orders as i64).into(),
            ],
        },
        CacheItem::Profile { json, .. } => ScriptCall {
            script: &APPLY_ENTRY,
            keys: vec![gen_key, versions, space.key(generation, "profile")],
            args: entry("profile".into(), "string", &Some(json.clone()), ""),
        },
        CacheItem::Entry {
            map, key, value, ..
        } => ScriptCall {
            script: &APPLY_ENTRY,
            keys: vec![gen_key, versions, space.key(generation, map.name())],
            args: entry(format!("{}:{key}", map.name()), "hash", value, key),
        },
        CacheItem::Category { id, value, .. } => ScriptCall {
            script: &APPLY_ENTRY,
            keys: vec![
                gen_key,
                versions,
                category_key(generation, id),
                space.key(generation, "ids"),
            ],
            args: entry(id.clone(), "string", value, id),
        },
    }
}

/// EVALSHA as a custom command, because fred pipelines have no Lua interface; the first key
/// (argument 2: SHA1, numkeys, key) picks the cluster node.
pub(super) fn evalsha() -> CustomCommand {
    CustomCommand::new("EVALSHA", ClusterHash::Offset(2), false)
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::domain::{Keyspace, TenantMap};

    const TENANT: &str = "6f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b";

    #[test]
    fn every_script_key_of_an_item_is_in_its_keyspace() {
        let tenant = Uuid::parse_str(TENANT).unwrap();
        let ttl = Ttl {
            orders: 10,
            config: 20,
        };
        let items = [
            CacheItem::Entry {
                tenant,
                map: TenantMap::SlaPolicies,
                key: "default".into(),
                version: 4,
                value: None,
            },
            CacheItem::Category {
                id: "books".into(),
                version: 1,
                value: Some("{}".into()),
            },
        ];
        for item in items {
            let ScriptCall { keys, args, .. } = apply_item(&item, 7, &ttl);
            let tag = match item.keyspace() {
                Keyspace::Tenant(_) => format!("{{{TENANT}}}"),
                Keyspace::Reference => "{category}".to_owned(),
            };
            assert!(keys.iter().all(|k| k.contains(&tag)), "{keys:?}");
            assert_eq!(args[0], Value::from(7_i64));
            assert_eq!(args[3], Value::from(20_i64));
        }
    }

    /// The version sits where the script looks for it, however long the order id.
    #[test]
    fn the_order_version_is_within_the_prefix_the_script_reads() {
        let order_id = "\u{1}\"".repeat(100);
        let escaped = serde_json::to_string(&order_id).unwrap();
        // json_build_object's layout, up to the version (order_cache_json).
        let head = format!(r#"{{"tenant_id" : "{TENANT}", "order_id" : {escaped}, "version" : 7"#);
        assert!(head.len() <= VERSION_PREFIX_BYTES, "{}", head.len());
        assert!(SET_IF_NEWER.body.contains("GETRANGE', KEYS[2], 0, 2047"));
        assert_eq!(VERSION_PREFIX_BYTES - 1, 2047);
    }
}
