//! The partitions' buffers, batches, pauses and byte budget, without a broker.

use super::*;
use rdkafka::message::Timestamp;

fn message(offset: i64) -> OwnedMessage {
    message_of(0, offset)
}

/// A message of 100 bytes on partition `partition` of topic "t".
fn message_of(partition: i32, offset: i64) -> OwnedMessage {
    OwnedMessage::new(
        Some(vec![0; 100]),
        None,
        "t".into(),
        Timestamp::NotAvailable,
        partition,
        offset,
        None,
    )
}

/// A batch bound that takes everything buffered.
const UNBOUNDED: Bounds = Bounds {
    messages: usize::MAX,
    bytes: usize::MAX,
};

/// Records what the partitions asked to pause (true) and resume (false).
#[derive(Default)]
struct Recorder(std::cell::RefCell<Vec<(i32, bool)>>);

impl Recorder {
    fn take(&self) -> Vec<(i32, bool)> {
        self.0.take()
    }
}

impl Fetching for Recorder {
    fn set_paused(&self, partition: &TopicPartition, pause: bool) -> bool {
        self.0.borrow_mut().push((partition.partition, pause));
        true
    }
}

/// Partitions 0.. of topic "t", assigned with no stored offset.
fn assigned(count: i32) -> Partitions {
    let mut partitions = Partitions::default();
    partitions.apply(vec![assignment(0..count)]);
    partitions
}

/// The assignment of `partitions` of topic "t", with no stored offset.
fn assignment(partitions: impl IntoIterator<Item = i32>) -> Assignment {
    let assigned = partitions
        .into_iter()
        .map(|p| crate::source::AssignedPartition {
            partition: TopicPartition::new("t", p),
            stored: None,
        })
        .collect();
    Assignment::Assigned(assigned)
}

/// Sends `count` messages to `partition`, after the ones it already has; a partition pauses
/// at 5 buffered messages.
fn receive(partitions: &mut Partitions, fetching: &Recorder, partition: i32, count: usize) {
    for _ in 0..count {
        let state = &partitions.states[&TopicPartition::new("t", partition)];
        let next = state.position.unwrap_or(0);
        partitions.accept(fetching, message_of(partition, next), 5, false);
    }
}

/// Marks the batch of `partition` among `batches` done.
fn done(partitions: &mut Partitions, batches: &[ReadyBatch], partition: i32) {
    let batch = batches.iter().find(|b| b.partition.partition == partition);
    let batch = batch.unwrap();
    let mut state = partitions.current(&batch.partition, batch.epoch).unwrap();
    state.batch_done();
}

#[test]
fn the_partitions_have_room_until_their_buffers_and_batches_hold_the_budget() {
    // 100 bytes a message, a budget of 1,000.
    let fetching = Recorder::default();
    let mut partitions = assigned(3);
    receive(&mut partitions, &fetching, 0, 4);
    receive(&mut partitions, &fetching, 1, 3);
    assert!(partitions.has_room(1000), "700 bytes");
    receive(&mut partitions, &fetching, 2, 3);
    assert!(!partitions.has_room(1000), "1,000 bytes");
    assert_eq!(
        fetching.take(),
        [],
        "the budget stops receiving, not fetching"
    );

    let batches = partitions.take_ready(UNBOUNDED, Duration::ZERO);
    assert_eq!(batches.len(), 3);
    assert!(
        !partitions.has_room(1000),
        "batches being written still hold their bytes"
    );
    assert_eq!(partitions.held_bytes(), 1000);
    done(&mut partitions, &batches, 0);
    assert!(partitions.has_room(1000), "600 bytes");
    assert_eq!(
        partitions.held_bytes(),
        600,
        "counted off when the batch is done"
    );

    receive(&mut partitions, &fetching, 0, 5);
    assert_eq!(fetching.take(), [(0, true)], "its own 5 messages");
    assert!(!partitions.has_room(1000), "1,100 bytes");
    done(&mut partitions, &batches, 1);
    done(&mut partitions, &batches, 2);
    assert!(partitions.has_room(1000), "500 bytes");
    assert_eq!(partitions.held_bytes(), 500, "partition 0's buffer");
    partitions.resume_if_drained(&fetching, &TopicPartition::new("t", 0));
    assert_eq!(fetching.take(), [(0, false)]);
}

#[test]
fn a_partition_told_to_pause_pauses_once_and_resumes_when_its_batch_is_done() {
    let fetching = Recorder::default();
    let mut partitions = assigned(1);
    let partition = TopicPartition::new("t", 0);
    partitions.accept(&fetching, message_of(0, 0), 5, true);
    partitions.accept(&fetching, message_of(0, 1), 5, true);
    assert_eq!(fetching.take(), [(0, true)]);
    let batches = partitions.take_ready(UNBOUNDED, Duration::ZERO);
    partitions.resume_if_drained(&fetching, &partition);
    assert_eq!(fetching.take(), [], "its batch is being written");
    done(&mut partitions, &batches, 0);
    partitions.resume_if_drained(&fetching, &partition);
    assert_eq!(fetching.take(), [(0, false)]);
}

#[test]
fn a_revoked_partition_leaves_room() {
    let fetching = Recorder::default();
    let mut partitions = assigned(3);
    receive(&mut partitions, &fetching, 1, 4);
    receive(&mut partitions, &fetching, 2, 4);
    receive(&mut partitions, &fetching, 0, 2);
    assert!(!partitions.has_room(1000));
    partitions.apply(vec![Assignment::Revoked(vec![
        TopicPartition::new("t", 1),
        TopicPartition::new("t", 2),
    ])]);
    assert!(partitions.has_room(1000), "200 bytes left");
    assert_eq!(
        partitions.held_bytes(),
        200,
        "counted again at the revocation"
    );
}

#[test]
fn a_restarted_or_reassigned_partition_lets_go_of_what_it_held() {
    let fetching = Recorder::default();
    let mut partitions = assigned(2);
    receive(&mut partitions, &fetching, 0, 3);
    let batches = partitions.take_ready(UNBOUNDED, Duration::ZERO);
    receive(&mut partitions, &fetching, 0, 2);
    receive(&mut partitions, &fetching, 1, 1);
    assert_eq!(partitions.held_bytes(), 600);
    // After a fence: its batch and its buffer are gone.
    let partition = TopicPartition::new("t", 0);
    let epoch = batches[0].epoch;
    partitions
        .current(&partition, epoch)
        .unwrap()
        .restart_at(Some(0));
    assert_eq!(partitions.held_bytes(), 100, "partition 1's message");
    // Assigned again without being revoked first.
    partitions.apply(vec![assignment([1])]);
    assert_eq!(partitions.held_bytes(), 0);
}

#[test]
fn a_cleared_partition_has_no_batch_to_take() {
    let fetching = Recorder::default();
    let mut partitions = assigned(1);
    receive(&mut partitions, &fetching, 0, 2);
    let batches = partitions.take_ready(UNBOUNDED, Duration::ZERO);
    receive(&mut partitions, &fetching, 0, 2);
    done(&mut partitions, &batches, 0);
    let partition = TopicPartition::new("t", 0);
    partitions
        .current(&partition, batches[0].epoch)
        .unwrap()
        .clear();
    assert_eq!(partitions.next_due(Duration::ZERO), None);
    assert!(partitions.take_ready(UNBOUNDED, Duration::ZERO).is_empty());
    assert_eq!(
        partitions.held_bytes(),
        0,
        "the cleared buffer is counted off"
    );
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
    partitions.apply(vec![assignment([0])]);
    let epoch = partitions.states[&partition].epoch;
    let mut state = partitions.current(&partition, epoch).unwrap();
    (0..5).for_each(|offset| assert!(state.accept(message(offset))));
    drop(state);
    let offsets = |partitions: &mut Partitions, bytes| -> Vec<i64> {
        let batch = Bounds { messages: 4, bytes };
        let ready = partitions.take_ready(batch, Duration::ZERO);
        let epoch = ready[0].epoch;
        partitions.current(&partition, epoch).unwrap().batch_done();
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

#[test]
fn a_cut_batch_holds_its_own_bytes_and_the_buffer_the_rest() {
    let fetching = Recorder::default();
    let mut partitions = assigned(1);
    receive(&mut partitions, &fetching, 0, 5);
    let batch = Bounds {
        messages: 4,
        bytes: 250,
    };
    partitions.take_ready(batch, Duration::ZERO);
    let state = &partitions.states[&TopicPartition::new("t", 0)];
    assert_eq!((state.in_flight_bytes, state.buffered_bytes), (200, 300));
    assert!(!partitions.has_room(500), "500 bytes held in all");
    assert!(partitions.has_room(501));
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
        let epoch = partitions.states[partition].epoch;
        let mut state = partitions.current(partition, epoch).unwrap();
        (first..first + 3).for_each(|offset| assert!(state.accept(message(offset))));
    }
    let in_flight = partitions.take_ready(UNBOUNDED, Duration::ZERO);
    let epoch_of = |p: &TopicPartition| in_flight.iter().find(|b| &b.partition == p).unwrap().epoch;
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
    drop(state);
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
fn a_batch_is_ready_at_either_bound() {
    let mut state = PartitionState::starting_at(None, 1);
    let batch = Bounds {
        messages: 10,
        bytes: 250,
    };
    state.accept(message(0));
    state.accept(message(1));
    assert!(!state.reaches(batch));
    state.accept(message(2));
    assert!(state.reaches(batch), "300 bytes");
    state.take_batch();
    assert!(!state.reaches(batch));
    let by_count = Bounds {
        messages: 1,
        bytes: usize::MAX,
    };
    state.accept(message(3));
    assert!(state.reaches(by_count));
}
