//! The partitions this worker owns: each one's buffered messages, in order, its stored offset,
//! and whether a batch of it is being written. A partition whose buffer fills (in messages)
//! while a batch is written stops fetching (pause) until the batch is done. The worker stops
//! receiving while all partitions together hold its budget of bytes (buffered or in batches
//! being written), so that memory is bounded however many partitions are owned and however
//! long the backlog. A message that is not the next offset is counted as a gap.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;

use crate::domain::TopicPartition;
use crate::metrics;
use crate::source::{message_bytes, Assignment, Source};

/// A size in messages and in bytes of keys and values, reached when either is: a batch's
/// largest size.
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
    in_flight: bool,
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
    /// Bytes of the keys and values of the batch being written.
    in_flight_bytes: usize,
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
            in_flight_bytes: 0,
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

    /// Bytes this partition holds: buffered, and in the batch being written.
    fn held_bytes(&self) -> usize {
        self.buffered_bytes + self.in_flight_bytes
    }

    /// Its batch is done (written or not).
    pub fn batch_done(&mut self) {
        self.in_flight = false;
        self.in_flight_bytes = 0;
    }

    fn due_at(&self, linger: Duration) -> Option<Instant> {
        self.oldest.map(|t| t + linger)
    }

    /// Starts over from `stored` (after a fence, its batch done), keeping the pause.
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
        self.oldest = None;
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

/// A partition's state borrowed to change it: when dropped, the partitions' count of held
/// bytes takes the difference the change made.
pub(super) struct StateMut<'a> {
    state: &'a mut PartitionState,
    held_bytes: &'a mut usize,
    /// The bytes the state held when borrowed.
    before: usize,
}

impl std::ops::Deref for StateMut<'_> {
    type Target = PartitionState;

    fn deref(&self) -> &PartitionState {
        self.state
    }
}

impl std::ops::DerefMut for StateMut<'_> {
    fn deref_mut(&mut self) -> &mut PartitionState {
        self.state
    }
}

impl Drop for StateMut<'_> {
    fn drop(&mut self) {
        *self.held_bytes = (*self.held_bytes + self.state.held_bytes()) - self.before;
    }
}

/// The partitions this worker owns.
#[derive(Default)]
pub(super) struct Partitions {
    states: HashMap<TopicPartition, PartitionState>,
    next_epoch: u64,
    /// The bytes every partition holds, buffered or in batches being written: adjusted by each
    /// change made through a borrowed state ([`StateMut`]: an arrival, a batch done, a restart,
    /// a clear), and counted down by what a revoked or replaced state held. A revoked
    /// partition's batch still being written no longer counts, so just after a rebalance the
    /// worker may hold up to about twice the budget.
    held_bytes: usize,
}

impl Partitions {
    pub fn apply(&mut self, changes: Vec<Assignment>) {
        for change in changes {
            match change {
                Assignment::Assigned(assigned) => {
                    for assigned in assigned {
                        self.next_epoch += 1;
                        let state = PartitionState::starting_at(assigned.stored, self.next_epoch);
                        // Assigned again without a revocation first: what it held is let go.
                        if let Some(old) = self.states.insert(assigned.partition, state) {
                            self.held_bytes -= old.held_bytes();
                        }
                    }
                }
                Assignment::Revoked(revoked) => {
                    for partition in revoked {
                        if let Some(old) = self.states.remove(&partition) {
                            self.held_bytes -= old.held_bytes();
                        }
                    }
                }
            }
        }
    }

    /// The bytes all partitions hold, buffered or in batches being written.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Buffers a message of an owned partition; pauses the partition when its buffer holds
    /// `messages`, or when told to (librdkafka then drops what it prefetched for it and fetches
    /// it again after the resume, once its batch is done).
    pub fn accept(
        &mut self,
        consumer: &impl Fetching,
        message: OwnedMessage,
        messages: usize,
        pause: bool,
    ) {
        let partition = TopicPartition::new(message.topic(), message.partition());
        let Some(mut state) = self.borrow(&partition, None) else {
            return;
        };
        state.accept(message);
        if (pause || state.buffer.len() >= messages) && !state.paused {
            state.paused = consumer.set_paused(&partition, true);
        }
    }

    /// Whether all partitions together hold less than `budget` bytes, buffered or in batches
    /// being written: the worker receives from librdkafka only then. Otherwise messages wait
    /// in librdkafka's queue, which stops fetching once it holds its own bound, without a
    /// pause (a pause drops the prefetched messages, and a resume takes librdkafka a while).
    pub fn has_room(&self, budget: usize) -> bool {
        self.held_bytes < budget
    }

    /// Resumes the partition, paused for its buffer's messages, once its batch is done.
    pub fn resume_if_drained(&mut self, consumer: &impl Fetching, partition: &TopicPartition) {
        if let Some(state) = self.states.get_mut(partition) {
            if state.paused && !state.in_flight {
                state.paused = !consumer.set_paused(partition, false);
            }
        }
    }

    /// The partition's state, to change, unless it was reassigned since `epoch`. What the
    /// change does to the bytes it holds (a batch done, a restart, a clear) is counted when
    /// the borrow ends.
    pub fn current(&mut self, partition: &TopicPartition, epoch: u64) -> Option<StateMut<'_>> {
        self.borrow(partition, Some(epoch))
    }

    /// The partition's state, to change (of assignment `epoch` only, when given); what the
    /// change does to the bytes it holds is counted when the borrow ends.
    fn borrow(&mut self, partition: &TopicPartition, epoch: Option<u64>) -> Option<StateMut<'_>> {
        let state = self
            .states
            .get_mut(partition)
            .filter(|s| epoch.is_none_or(|epoch| s.epoch == epoch))?;
        let before = state.held_bytes();
        Some(StateMut {
            state,
            held_bytes: &mut self.held_bytes,
            before,
        })
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
                let held = state.buffered_bytes;
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
                state.in_flight_bytes = held;
                if cut < messages.len() {
                    // Keep the rest (arrived while the previous batch was written) for the next.
                    state.buffer = messages.split_off(cut);
                    state.in_flight_bytes = messages.iter().map(message_bytes).sum();
                    state.buffered_bytes = held - state.in_flight_bytes;
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

/// What stops and starts fetching a partition: librdkafka's consumer (a recorder in tests).
pub(super) trait Fetching {
    /// Pauses or resumes fetching one partition; true when it was done.
    fn set_paused(&self, partition: &TopicPartition, pause: bool) -> bool;
}

impl Fetching for Source {
    fn set_paused(&self, partition: &TopicPartition, pause: bool) -> bool {
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition(&partition.topic, partition.partition);
        let result = if pause {
            self.pause(&tpl)
        } else {
            self.resume(&tpl)
        };
        if let Err(error) = &result {
            tracing::warn!(%error, %partition, pause, "Pause/resume failed.");
        }
        result.is_ok()
    }
}

/// Sleeps until `deadline`, or forever without one.
pub(super) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
