//! The cache writes of committed batches, run beside the next batches' Postgres writes: a
//! partition's next batch need not wait for Redis, since the outbox keeps the work safe.
//!
//! Per partition the writes stay in commit order, one at a time: the cache writer relies on it
//! (a batch that moved a keyspace's generation writes its own rows into the new generation, which
//! must not overtake a later batch's write of the same row).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;

use futures::stream::{FuturesUnordered, StreamExt};

use crate::domain::{QueuedCache, TopicPartition};

/// A cache write in progress: done when it yields its partition.
pub(super) type CacheWrite<'a> = Pin<Box<dyn Future<Output = TopicPartition> + Send + 'a>>;

/// The cache writes in flight and those waiting behind an earlier one of their partition.
pub(super) struct CacheWrites<'a, W> {
    start: W,
    running: FuturesUnordered<CacheWrite<'a>>,
    waiting: HashMap<TopicPartition, VecDeque<Vec<QueuedCache>>>,
    waiting_count: usize,
}

impl<'a, W> CacheWrites<'a, W>
where
    W: Fn(TopicPartition, Vec<QueuedCache>) -> CacheWrite<'a>,
{
    /// `start` begins one write (and yields its partition when done).
    pub fn new(start: W) -> Self {
        Self {
            start,
            running: FuturesUnordered::new(),
            waiting: HashMap::new(),
            waiting_count: 0,
        }
    }

    /// Writes, or queues behind the partition's write in flight.
    pub fn push(&mut self, partition: TopicPartition, cache: Vec<QueuedCache>) {
        if cache.is_empty() {
            return;
        }
        match self.waiting.get_mut(&partition) {
            Some(queue) => {
                queue.push_back(cache);
                self.waiting_count += 1;
            }
            None => {
                self.waiting.insert(partition.clone(), VecDeque::new());
                self.running.push((self.start)(partition, cache));
            }
        }
    }

    /// Writes in flight or waiting.
    pub fn len(&self) -> usize {
        self.running.len() + self.waiting_count
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Waits for one write to finish and starts the next of its partition. `None` when none is
    /// in flight.
    pub async fn next(&mut self) -> Option<()> {
        let partition = self.running.next().await?;
        let queue = self
            .waiting
            .get_mut(&partition)
            .expect("a running partition");
        match queue.pop_front() {
            Some(cache) => {
                self.waiting_count -= 1;
                self.running.push((self.start)(partition, cache));
            }
            None => {
                self.waiting.remove(&partition);
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::domain::CacheItem;

    fn work(id: i64) -> Vec<QueuedCache> {
        vec![QueuedCache {
            outbox_id: id,
            item: CacheItem::Order {
                tenant: uuid::Uuid::nil(),
                order_id: "o".into(),
                version: id,
                json: "{}".into(),
            },
        }]
    }

    #[tokio::test]
    async fn a_partition_writes_in_commit_order_one_at_a_time() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let started = log.clone();
        let mut writes = CacheWrites::new(move |p: TopicPartition, cache: Vec<QueuedCache>| {
            let log = started.clone();
            Box::pin(async move {
                log.lock()
                    .unwrap()
                    .push((p.partition, cache[0].outbox_id, "start"));
                tokio::task::yield_now().await;
                log.lock()
                    .unwrap()
                    .push((p.partition, cache[0].outbox_id, "end"));
                p
            }) as CacheWrite<'static>
        });
        let (a, b) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
        writes.push(a.clone(), work(1));
        writes.push(a.clone(), work(2));
        writes.push(b.clone(), work(3));
        writes.push(a, work(4));
        assert_eq!(writes.len(), 4);
        while writes.next().await.is_some() {}
        assert_eq!(writes.len(), 0);
        let log = log.lock().unwrap();
        let of_a: Vec<(i64, &str)> = log
            .iter()
            .filter(|(p, ..)| *p == 0)
            .map(|(_, id, what)| (*id, *what))
            .collect();
        assert_eq!(
            of_a,
            [
                (1, "start"),
                (1, "end"),
                (2, "start"),
                (2, "end"),
                (4, "start"),
                (4, "end")
            ]
        );
        assert!(log.contains(&(1, 3, "end")));
    }
}
