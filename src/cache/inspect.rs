//! Reads that check the cache from outside the pipeline (the demo's summary, tests): keys by
//! pattern, by SCAN (never KEYS), and sizes.

use fred::prelude::*;

use super::CacheError;

/// The keys matching `pattern` on a single Redis server.
pub async fn scan_keys(redis: &Client, pattern: &str) -> Result<Vec<String>, CacheError> {
    let mut cursor = "0".to_owned();
    let mut all = Vec::new();
    loop {
        let (next, keys): (String, Vec<String>) = redis
            .custom(
                fred::cmd!("SCAN"),
                vec![
                    cursor.clone(),
                    "MATCH".into(),
                    pattern.into(),
                    "COUNT".into(),
                    "1000".into(),
                ],
            )
            .await?;
        all.extend(keys);
        if next == "0" {
            return Ok(all);
        }
        cursor = next;
    }
}

/// How many keys match `pattern`.
pub async fn count_keys(redis: &Client, pattern: &str) -> Result<usize, CacheError> {
    Ok(scan_keys(redis, pattern).await?.len())
}

/// How many fields the hash `key` holds (0 when absent).
pub async fn hash_len(redis: &Client, key: &str) -> Result<usize, CacheError> {
    Ok(redis.hlen(key).await?)
}

/// The members of the set `key` (none when absent).
pub async fn set_members(redis: &Client, key: &str) -> Result<Vec<String>, CacheError> {
    Ok(redis.smembers(key).await?)
}
