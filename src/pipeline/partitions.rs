//! The partitions this worker owns: each one's buffered messages, in order, its stored offset,
//! and whether a batch of it is being written. A partition whose buffer fills (in messages or
//! in bytes) while a batch is written stops fetching (pause) until the batch is done. A message
//! that is not the next offset is counted as a gap.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;

use crate::domain::TopicPartition;
use crate::metrics;
use crate::source::{message_bytes, Assignment, Source};

/// A size in messages and in bytes of keys and values, reached when either is: a batch's
/// largest size, and a buffer's size at which its partition pauses.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bounds {
    pub messages: usize,
    pub bytes: usize,
}

/// One partition's state.
pub(super) struct PartitionState {
    /// Which assignment this state belongs to; a batch of an older one is ignored.
    epoch: u64,
    /// A batch of this partition is being written.
    pub in_flight: bool,
    /// Fetching is paused because the buffer is full while a batch is being written.
    paused: bool,
    /// The next offset stored in Postgres, as this worker last saw it.
    pub committed: Option<i64>,
    /// The next offset to accept into the buffer (drops anything already buffered or written).
    position: Option<i64>,
    buffer: Vec<OwnedMessage>,
    /// No message was received since the partition was assigned at its stored offset.
    fresh: bool,
    /// Bytes of the buffered messages' keys and values.
    buffered_bytes: usize,
    oldest: Option<Instant>,
}

impl PartitionState {
    fn starting_at(stored: Option<i64>, epoch: u64) -> Self {
        Self {
            epoch,
            in_flight: false,
            paused: false,
            committed: stored,
            position: stored,
            buffer: Vec::new(),
            fresh: true,
            buffered_bytes: 0,
            oldest: None,
        }
    }

    fn accept(&mut self, message: OwnedMessage) -> bool {
        let offset = message.offset();
        if std::mem::take(&mut self.fresh) {
            // librdkafka starts below the stored offset only when that offset was beyond the
            // log (the topic was recreated or truncated) and auto.offset.reset took it to the
            // log's start: start again there rather than drop every message up to it.
            if let Some(stored) = self.position.filter(|stored| offset < *stored) {
                metrics::offset_reset(message.topic(), message.partition(), stored, offset);
                self.position = Some(offset);
            }
        }
        match self.position {
            Some(expected) if offset < expected => return false,
            Some(expected) if offset > expected => {
                metrics::offset_gap(message.topic(), message.partition(), expected, offset);
            }
            _ => {}
        }
        self.position = Some(offset + 1);
        self.oldest.get_or_insert_with(Instant::now);
        self.buffered_bytes += message_bytes(&message);
        self.buffer.push(message);
        true
    }

    fn reaches(&self, bounds: Bounds) -> bool {
        self.buffer.len() >= bounds.messages || self.buffered_bytes >= bounds.bytes
    }

    fn due_at(&self, linger: Duration) -> Option<Instant> {
        self.oldest.map(|t| t + linger)
    }

    /// Starts over from `stored` (after a fence), keeping the pause.
    pub fn restart_at(&mut self, stored: Option<i64>) {
        let paused = self.paused;
        *self = Self::starting_at(stored, self.epoch);
        self.paused = paused;
        // Messages fetched before the seek may still arrive, below the new stored offset.
        self.fresh = false;
    }

    /// Drops the buffered messages (they will be fetched again after a reassignment).
    pub fn clear(&mut self) {
        self.buffer.clear();
        self.buffered_bytes = 0;
    }

    fn is_ready(&self, batch: Bounds, linger: Duration, now: Instant) -> bool {
        !self.in_flight && (self.reaches(batch) || self.due_at(linger).is_some_and(|t| t <= now))
    }

    fn take_batch(&mut self) -> Vec<OwnedMessage> {
        self.oldest = None;
        self.buffered_bytes = 0;
        std::mem::take(&mut self.buffer)
    }
}

/// A batch taken from a partition's buffer, to be written.
pub(super) struct ReadyBatch {
    pub partition: TopicPartition,
    /// The assignment the batch belongs to.
    pub epoch: u64,
    /// The partition's stored next offset when the batch was taken.
    pub committed: Option<i64>,
    pub messages: Vec<OwnedMessage>,
}

/// The partitions this worker owns.
#[derive(Default)]
pub(super) struct Partitions {
    states: HashMap<TopicPartition, PartitionState>,
    next_epoch: u64,
}

impl Partitions {
    pub fn apply(&mut self, changes: Vec<Assignment>) {
        for change in changes {
            match change {
                Assignment::Assigned(assigned) => {
                    for assigned in assigned {
                        self.next_epoch += 1;
                        let state = PartitionState::starting_at(assigned.stored, self.next_epoch);
                        self.states.insert(assigned.partition, state);
                    }
                }
                Assignment::Revoked(revoked) => {
                    for partition in revoked {
                        self.states.remove(&partition);
                    }
                }
            }
        }
    }

    /// Buffers a message of an owned partition; pauses the partition when its buffer is full.
    pub fn accept(&mut self, consumer: &Source, message: OwnedMessage, pause_at: Bounds) {
        let partition = TopicPartition::new(message.topic(), message.partition());
        let Some(state) = self.states.get_mut(&partition) else {
            return;
        };
        state.accept(message);
        if state.reaches(pause_at) && !state.paused {
            state.paused = set_paused(consumer, &partition, true);
        }
    }

    pub fn resume_if_drained(&mut self, consumer: &Source, partition: &TopicPartition) {
        if let Some(state) = self.states.get_mut(partition) {
            if state.paused && !state.in_flight {
                state.paused = !set_paused(consumer, partition, false);
            }
        }
    }

    /// The partition's state, unless it was reassigned since `epoch`.
    pub fn current(
        &mut self,
        partition: &TopicPartition,
        epoch: u64,
    ) -> Option<&mut PartitionState> {
        self.states.get_mut(partition).filter(|s| s.epoch == epoch)
    }

    /// When the next lingering batch is due.
    pub fn next_due(&self, linger: Duration) -> Option<Instant> {
        self.states
            .values()
            .filter(|p| !p.in_flight)
            .filter_map(|p| p.due_at(linger))
            .min()
    }

    /// Takes the batches that are full or have lingered long enough, marking them in flight.
    /// A batch holds at most `batch` messages and bytes (and at least one message).
    pub fn take_ready(&mut self, batch: Bounds, linger: Duration) -> Vec<ReadyBatch> {
        let now = Instant::now();
        self.states
            .iter_mut()
            .filter(|(_, state)| state.is_ready(batch, linger, now))
            .map(|(partition, state)| {
                state.in_flight = true;
                let mut messages = state.take_batch();
                let mut bytes = 0;
                let cut = messages
                    .iter()
                    .position(|m| {
                        bytes += message_bytes(m);
                        bytes > batch.bytes
                    })
                    .map_or(messages.len(), |over| over.max(1))
                    .min(batch.messages);
                if cut < messages.len() {
                    // Keep the rest (arrived while the previous batch was written) for the next.
                    state.buffer = messages.split_off(cut);
                    state.buffered_bytes = state.buffer.iter().map(message_bytes).sum();
                    state.oldest = Some(now);
                }
                ReadyBatch {
                    partition: partition.clone(),
                    epoch: state.epoch,
                    committed: state.committed,
                    messages,
                }
            })
            .collect()
    }
}

/// Pauses or resumes fetching one partition; true when librdkafka accepted it.
fn set_paused(consumer: &Source, partition: &TopicPartition, pause: bool) -> bool {
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition(&partition.topic, partition.partition);
    let result = if pause {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    if let Err(error) = &result {
        tracing::warn!(%error, %partition, pause, "Pause/resume failed.");
    }
    result.is_ok()
}

/// Sleeps until `deadline`, or forever without one.
pub(super) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Timestamp;

    fn message(offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            Some(vec![0; 100]),
            None,
            "t".into(),
            Timestamp::NotAvailable,
            0,
            offset,
            None,
        )
    }

    #[test]
    fn partition_accepts_each_offset_once_from_the_stored_one() {
        let mut state = PartitionState::starting_at(Some(10), 1);
        assert!(state.accept(message(10)));
        assert!(!state.accept(message(9)));
        assert!(!state.accept(message(10)));
        assert!(state.accept(message(12)));
        let batch = state.take_batch();
        assert_eq!(
            batch.iter().map(|m| m.offset()).collect::<Vec<_>>(),
            vec![10, 12]
        );
        assert!(state.due_at(Duration::from_millis(5)).is_none());
    }

    #[test]
    fn a_log_that_ends_before_the_stored_offset_is_read_from_its_start() {
        let mut state = PartitionState::starting_at(Some(1000), 1);
        assert!(state.accept(message(0)), "the first message after a reset");
        assert!(state.accept(message(1)));
        assert!(
            !state.accept(message(1)),
            "later, lower offsets are still dropped"
        );
        let mut refenced = PartitionState::starting_at(Some(5), 1);
        refenced.restart_at(Some(1000));
        assert!(
            !refenced.accept(message(7)),
            "fetched before a seek after a fence"
        );
    }

    #[test]
    fn a_batch_is_cut_at_its_bytes_and_keeps_at_least_one_message() {
        let partition = TopicPartition::new("t", 0);
        let mut partitions = Partitions::default();
        partitions.apply(vec![Assignment::Assigned(vec![
            crate::source::AssignedPartition {
                partition: partition.clone(),
                stored: None,
            },
        ])]);
        let state = partitions.states.get_mut(&partition).unwrap();
        (0..5).for_each(|offset| assert!(state.accept(message(offset))));
        let offsets = |partitions: &mut Partitions, bytes| -> Vec<i64> {
            let batch = Bounds { messages: 4, bytes };
            let ready = partitions.take_ready(batch, Duration::ZERO);
            partitions.states.get_mut(&partition).unwrap().in_flight = false;
            ready[0].messages.iter().map(|m| m.offset()).collect()
        };
        assert_eq!(offsets(&mut partitions, 250), [0, 1], "100 bytes each");
        assert_eq!(
            offsets(&mut partitions, 50),
            [2],
            "one message however large"
        );
        assert_eq!(offsets(&mut partitions, usize::MAX), [3, 4]);
    }

    /// A cooperative rebalance revokes some partitions and adds others: the kept ones keep
    /// their assignment, buffer and batch in flight; a revoked one's batch is no longer current
    /// (its outcome is ignored, and the stored offset fences it), even once it comes back.
    #[test]
    fn a_partial_revocation_and_an_added_assignment_leave_the_kept_partitions_as_they_were() {
        let [kept, moved, added] = [0, 1, 2].map(|p| TopicPartition::new("t", p));
        let at = |partition: &TopicPartition, stored| crate::source::AssignedPartition {
            partition: partition.clone(),
            stored,
        };
        let mut partitions = Partitions::default();
        partitions.apply(vec![Assignment::Assigned(vec![
            at(&kept, Some(10)),
            at(&moved, Some(20)),
        ])]);
        for (partition, first) in [(&kept, 10), (&moved, 20)] {
            let state = partitions.states.get_mut(partition).unwrap();
            (first..first + 3).for_each(|offset| assert!(state.accept(message(offset))));
        }
        let unbounded = Bounds {
            messages: usize::MAX,
            bytes: usize::MAX,
        };
        let in_flight = partitions.take_ready(unbounded, Duration::ZERO);
        let epoch_of =
            |p: &TopicPartition| in_flight.iter().find(|b| &b.partition == p).unwrap().epoch;
        let (kept_epoch, moved_epoch) = (epoch_of(&kept), epoch_of(&moved));
        partitions
            .current(&kept, kept_epoch)
            .unwrap()
            .accept(message(13));

        partitions.apply(vec![
            Assignment::Revoked(vec![moved.clone()]),
            Assignment::Assigned(vec![at(&added, Some(5))]),
        ]);
        let state = partitions
            .current(&kept, kept_epoch)
            .expect("kept as it was");
        assert!(state.in_flight);
        assert_eq!(state.committed, Some(10));
        let buffered: Vec<i64> = state.buffer.iter().map(|m| m.offset()).collect();
        assert_eq!(buffered, [13]);
        assert!(partitions.current(&moved, moved_epoch).is_none());
        let added_state = partitions.states.get(&added).unwrap();
        assert_eq!(
            (added_state.committed, added_state.position),
            (Some(5), Some(5))
        );

        partitions.apply(vec![Assignment::Assigned(vec![at(&moved, Some(23))])]);
        assert!(
            partitions.current(&moved, moved_epoch).is_none(),
            "a batch from before the revocation stays stale"
        );
        assert_eq!(partitions.states.get(&moved).unwrap().committed, Some(23));
    }

    #[test]
    fn a_buffer_is_full_at_either_bound() {
        let mut state = PartitionState::starting_at(None, 1);
        let pause_at = Bounds {
            messages: 10,
            bytes: 250,
        };
        state.accept(message(0));
        state.accept(message(1));
        assert!(!state.reaches(pause_at));
        state.accept(message(2));
        assert!(state.reaches(pause_at), "300 bytes");
        state.take_batch();
        assert!(!state.reaches(pause_at));
        let by_count = Bounds {
            messages: 1,
            bytes: usize::MAX,
        };
        state.accept(message(3));
        assert!(state.reaches(by_count));
    }
}
