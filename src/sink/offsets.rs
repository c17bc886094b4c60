//! Consumer progress: `(consumer group, topic, partition) → next offset`, written by each batch
//! in its own transaction with a compare-and-set (the fence).

use std::collections::HashMap;

use sqlx::{PgPool, Postgres, Transaction};

use super::SinkError;

/// Where a partition's progress is stored.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PartitionKey {
    pub group: String,
    pub topic: String,
    pub partition: i32,
}

/// The stored next offsets of `partitions` (absent: never written).
pub async fn load_stored_offsets(
    pool: &PgPool,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<HashMap<i32, i64>, SinkError> {
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT partition, next_offset FROM consumer_offsets
          WHERE consumer_group = $1 AND topic = $2 AND partition = ANY($3)",
    )
    .bind(group)
    .bind(topic)
    .bind(partitions)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// How many partitions have a stored offset (any group), for `check`.
pub async fn count_stored_offsets(pool: &PgPool) -> Result<i64, SinkError> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM consumer_offsets")
        .fetch_one(pool)
        .await?)
}

/// Compare-and-set of the stored offset: from `expected` (`None`: nothing stored yet) to
/// `next_offset`. False when another writer moved it.
pub(super) async fn advance(
    tx: &mut Transaction<'_, Postgres>,
    key: &PartitionKey,
    expected: Option<i64>,
    next_offset: i64,
) -> Result<bool, SinkError> {
    let result = match expected {
        Some(expected) => {
            sqlx::query(
                "UPDATE consumer_offsets SET next_offset = $4, updated_at = now()
                  WHERE consumer_group = $1 AND topic = $2 AND partition = $3
                    AND next_offset = $5",
            )
            .bind(&key.group)
            .bind(&key.topic)
            .bind(key.partition)
            .bind(next_offset)
            .bind(expected)
            .execute(&mut **tx)
            .await?
        }
        None => {
            sqlx::query(
                "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(&key.group)
            .bind(&key.topic)
            .bind(key.partition)
            .bind(next_offset)
            .execute(&mut **tx)
            .await?
        }
    };
    Ok(result.rows_affected() == 1)
}
