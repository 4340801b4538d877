use super::*;

const PID: i64 = 7;

fn batch(epoch: i16, first_seq: i32, count: i32, first_offset: i64) -> ProducerBatch {
    ProducerBatch {
        producer_id: PID,
        producer_epoch: epoch,
        first_seq,
        last_seq: last_sequence(first_seq, count - 1),
        first_offset,
        last_offset: first_offset + i64::from(count) - 1,
        max_timestamp: 1_000,
        is_transactional: false,
        is_control: false,
    }
}

fn manager() -> ProducerStateManager {
    ProducerStateManager::new(ProducerStateConfig::default())
}

/// Checks and records a batch as the broker does, returning the check.
fn append(
    state: &mut ProducerStateManager,
    batch: ProducerBatch,
) -> Result<AppendCheck, ProducerStateError> {
    let check = state.check(&batch)?;
    if check == AppendCheck::Append {
        state.record(&batch, 0);
    }
    Ok(check)
}

#[test]
fn sequences_follow_on_and_wrap() {
    assert_eq!(last_sequence(0, 0), 0);
    assert_eq!(last_sequence(0, 9), 9);
    assert_eq!(last_sequence(i32::MAX, 0), i32::MAX);
    assert_eq!(last_sequence(i32::MAX, 1), 0);
    assert_eq!(last_sequence(i32::MAX - 1, 5), 3);
    assert_eq!(last_sequence(NO_SEQUENCE, 5), NO_SEQUENCE);
    assert!(in_sequence(NO_SEQUENCE, 0));
    assert!(in_sequence(4, 5));
    assert!(in_sequence(i32::MAX, 0));
    assert!(!in_sequence(4, 4));
    assert!(!in_sequence(4, 6));
    assert!(!in_sequence(i32::MAX - 1, 0));
}

#[test]
fn batches_in_sequence_are_appended() {
    let mut state = manager();
    assert_eq!(
        append(&mut state, batch(0, 0, 3, 0)),
        Ok(AppendCheck::Append)
    );
    assert_eq!(
        append(&mut state, batch(0, 3, 1, 3)),
        Ok(AppendCheck::Append)
    );
    assert_eq!(
        append(&mut state, batch(0, 4, 10, 4)),
        Ok(AppendCheck::Append)
    );
    let entry = state.entry(PID).unwrap();
    assert_eq!(entry.producer_epoch(), 0);
    assert_eq!(entry.last_seq(), 13);
    assert_eq!(entry.batches().count(), 3);
}

#[test]
fn a_retry_of_any_of_the_last_five_is_a_duplicate_with_the_original_offsets() {
    let mut state = manager();
    for i in 0..7 {
        append(&mut state, batch(0, i * 2, 2, 100 + i64::from(i) * 2)).unwrap();
    }
    // Batches 2..=6 are retained; each retry gets its original offsets.
    for i in 2..7 {
        let original = batch(0, i * 2, 2, 100 + i64::from(i) * 2);
        let retry = batch(0, i * 2, 2, -1);
        assert_eq!(
            state.check(&retry),
            Ok(AppendCheck::Duplicate(original.metadata())),
            "batch {i}"
        );
    }
    // Batch 1 fell out of the window: Kafka now calls it out of order.
    assert!(matches!(
        state.check(&batch(0, 2, 2, -1)),
        Err(ProducerStateError::OutOfOrderSequence { last_seq: 13, .. })
    ));
    // A batch that overlaps a retained one without matching it exactly
    // is not a duplicate.
    assert!(matches!(
        state.check(&batch(0, 12, 1, -1)),
        Err(ProducerStateError::OutOfOrderSequence { .. })
    ));
    assert_eq!(
        state.entry(PID).unwrap().batches().count(),
        BATCHES_RETAINED
    );
}

#[test]
fn a_gap_is_out_of_order() {
    let mut state = manager();
    append(&mut state, batch(0, 0, 5, 0)).unwrap();
    assert_eq!(
        state.check(&batch(0, 6, 1, -1)),
        Err(ProducerStateError::OutOfOrderSequence {
            producer_id: PID,
            producer_epoch: 0,
            sequence: 6,
            last_seq: 4
        })
    );
    // Nothing was recorded: the right batch still goes in.
    assert_eq!(
        append(&mut state, batch(0, 5, 1, 5)),
        Ok(AppendCheck::Append)
    );
}

#[test]
fn older_epochs_are_fenced_and_new_epochs_start_at_zero() {
    let mut state = manager();
    append(&mut state, batch(3, 0, 2, 0)).unwrap();
    assert_eq!(
        state.check(&batch(2, 2, 1, -1)),
        Err(ProducerStateError::InvalidProducerEpoch {
            producer_id: PID,
            producer_epoch: 2,
            current_epoch: 3
        })
    );
    // Even a retry of an old-epoch batch is fenced, not a duplicate.
    assert!(matches!(
        state.check(&batch(2, 0, 2, -1)),
        Err(ProducerStateError::InvalidProducerEpoch { .. })
    ));
    assert_eq!(
        state.check(&batch(4, 2, 1, -1)),
        Err(ProducerStateError::OutOfOrderSequence {
            producer_id: PID,
            producer_epoch: 4,
            sequence: 2,
            last_seq: NO_SEQUENCE
        })
    );
    assert_eq!(
        append(&mut state, batch(4, 0, 1, 2)),
        Ok(AppendCheck::Append)
    );
    let entry = state.entry(PID).unwrap();
    assert_eq!(entry.producer_epoch(), 4);
    // The old epoch's batches are gone with it.
    assert_eq!(entry.batches().count(), 1);
    assert_eq!(
        append(&mut state, batch(4, 1, 1, 3)),
        Ok(AppendCheck::Append)
    );
    assert!(matches!(
        state.check(&batch(3, 2, 1, -1)),
        Err(ProducerStateError::InvalidProducerEpoch { .. })
    ));
}

#[test]
fn an_unknown_producer_may_start_at_any_sequence() {
    let mut state = manager();
    assert_eq!(
        append(&mut state, batch(5, 42, 3, 0)),
        Ok(AppendCheck::Append)
    );
    assert_eq!(state.entry(PID).unwrap().last_seq(), 44);
    assert!(matches!(
        state.check(&batch(5, 46, 1, -1)),
        Err(ProducerStateError::OutOfOrderSequence { .. })
    ));
}

#[test]
fn a_batch_with_a_producer_id_needs_a_sequence() {
    let state = manager();
    assert_eq!(
        state.check(&batch(0, -1, 1, -1)),
        Err(ProducerStateError::InvalidSequence {
            producer_id: PID,
            sequence: -1
        })
    );
}

#[test]
fn sequences_wrap_at_i32_max() {
    let mut state = manager();
    append(&mut state, batch(0, i32::MAX - 2, 2, 0)).unwrap();
    // The next batch spans the wrap: MAX-0 .. 1.
    let spanning = batch(0, i32::MAX, 3, 2);
    assert_eq!(spanning.last_seq, 1);
    assert_eq!(append(&mut state, spanning), Ok(AppendCheck::Append));
    assert_eq!(
        state.check(&batch(0, i32::MAX, 3, -1)),
        Ok(AppendCheck::Duplicate(spanning.metadata()))
    );
    assert_eq!(
        append(&mut state, batch(0, 2, 1, 5)),
        Ok(AppendCheck::Append)
    );
    // And a batch ending exactly at MAX is followed by 0.
    let mut state = manager();
    append(&mut state, batch(0, i32::MAX - 1, 2, 0)).unwrap();
    assert_eq!(
        append(&mut state, batch(0, 0, 1, 2)),
        Ok(AppendCheck::Append)
    );
}

#[test]
fn producers_are_independent() {
    let mut state = manager();
    append(&mut state, batch(0, 0, 1, 0)).unwrap();
    let mut other = batch(0, 0, 1, 1);
    other.producer_id = PID + 1;
    assert_eq!(append(&mut state, other), Ok(AppendCheck::Append));
    assert_eq!(
        append(&mut state, batch(0, 1, 1, 2)),
        Ok(AppendCheck::Append)
    );
    assert_eq!(state.len(), 2);
}

#[test]
fn idle_producers_expire() {
    let config = ProducerStateConfig {
        producer_id_expiration_ms: 1_000,
        ..ProducerStateConfig::default()
    };
    let mut state = ProducerStateManager::new(config);
    state.record(&batch(0, 0, 1, 0), 10_000);
    let mut other = batch(0, 0, 1, 1);
    other.producer_id = PID + 1;
    state.record(&other, 10_500);
    assert_eq!(state.expire(10_999), 0);
    assert_eq!(state.expire(11_000), 1);
    assert!(state.entry(PID).is_none());
    assert!(state.entry(PID + 1).is_some());
    // Forgotten, it may start anywhere again.
    assert_eq!(state.check(&batch(0, 9, 1, -1)), Ok(AppendCheck::Append));
}

#[test]
fn the_longest_idle_producer_makes_room() {
    let config = ProducerStateConfig {
        producers_max: 3,
        ..ProducerStateConfig::default()
    };
    let mut state = ProducerStateManager::new(config);
    for (i, now) in [(0, 30), (1, 10), (2, 20)] {
        let mut b = batch(0, 0, 1, i);
        b.producer_id = i;
        state.record(&b, now);
    }
    let mut b = batch(0, 0, 1, 3);
    b.producer_id = 3;
    state.record(&b, 40);
    assert_eq!(state.len(), 3);
    assert!(state.entry(1).is_none());
    assert_eq!(state.take_evicted(), 1);
    assert_eq!(state.take_evicted(), 0);
}

#[test]
fn replay_rebuilds_what_appends_recorded() {
    let mut live = manager();
    let mut headers = Vec::new();
    let mut offset = 0;
    for (epoch, seq, count) in [(0, 0, 3), (0, 3, 2), (1, 0, 4), (1, 4, 1), (1, 5, 1)] {
        let b = batch(epoch, seq, count, offset);
        append(&mut live, b).unwrap();
        headers.push(BatchHeader {
            base_offset: offset,
            batch_length: 100,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: count - 1,
            base_timestamp: 0,
            max_timestamp: 1_000,
            producer_id: PID,
            producer_epoch: epoch,
            base_sequence: seq,
            record_count: count,
        });
        offset += i64::from(count);
    }
    let mut rebuilt = manager();
    for header in &headers {
        assert_eq!(rebuilt.replay(header, None, 0), None);
    }
    assert_eq!(rebuilt.entry(PID), live.entry(PID));
}

#[test]
fn snapshots_round_trip_and_refuse_damage() {
    let mut state = manager();
    for pid in 0..4 {
        for i in 0..(pid as i32 + 2) {
            let mut b = batch(pid as i16, i, 1, pid * 100 + i64::from(i));
            b.producer_id = pid;
            state.record(&b, 1_000 + pid);
        }
    }
    let bytes = state.take_snapshot().unwrap();
    assert!(state.take_snapshot().is_none(), "nothing changed since");
    let back = ProducerStateManager::decode(&bytes, state.config()).unwrap();
    assert_eq!(back.producers, state.producers);
    assert_eq!(back.encode(), bytes);

    for cut in 0..bytes.len() {
        assert!(ProducerStateManager::decode(&bytes[..cut], state.config()).is_err());
    }
    for at in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x40;
        assert!(
            ProducerStateManager::decode(&damaged, state.config()).is_err(),
            "flipped byte {at}"
        );
    }
    let empty = manager().encode();
    assert!(ProducerStateManager::decode(&empty, state.config())
        .unwrap()
        .is_empty());
}

// -----------------------------------------------------------------
// Transactions.

/// A transactional batch of producer `pid`.
fn txn_batch(pid: i64, epoch: i16, first_seq: i32, count: i32, first_offset: i64) -> ProducerBatch {
    let mut b = batch(epoch, first_seq, count, first_offset);
    b.producer_id = pid;
    b.is_transactional = true;
    b
}

fn commit(coordinator_epoch: i32) -> EndTxnMarker {
    EndTxnMarker {
        control_type: ControlType::Commit,
        coordinator_epoch,
    }
}

fn abort(coordinator_epoch: i32) -> EndTxnMarker {
    EndTxnMarker {
        control_type: ControlType::Abort,
        coordinator_epoch,
    }
}

#[test]
fn a_transaction_begins_with_its_first_batch_and_ends_with_its_marker() {
    let mut state = manager();
    assert_eq!(state.first_unstable_offset(), None);
    append(&mut state, txn_batch(PID, 0, 0, 2, 10)).unwrap();
    append(&mut state, txn_batch(PID, 0, 2, 3, 12)).unwrap();
    let entry = state.entry(PID).unwrap();
    assert_eq!(entry.current_txn_first_offset(), Some(10));
    assert_eq!(entry.coordinator_epoch(), NO_COORDINATOR_EPOCH);
    assert_eq!(state.first_unstable_offset(), Some(10));
    state.check_invariants();

    assert_eq!(state.check_marker(PID, 0, 4), Ok(()));
    let completed = state.record_marker(PID, 0, commit(4), 15, 0);
    assert_eq!(
        completed,
        Some(CompletedTxn {
            producer_id: PID,
            first_offset: 10,
            last_offset: 15,
            is_aborted: false
        })
    );
    let entry = state.entry(PID).unwrap();
    assert_eq!(entry.current_txn_first_offset(), None);
    assert_eq!(entry.coordinator_epoch(), 4);
    // The marker holds no sequence: the next batch follows the last data batch.
    assert_eq!(entry.last_seq(), 4);
    assert_eq!(state.first_unstable_offset(), None);
    assert_eq!(state.last_stable_offset_after(&completed.unwrap()), 16);

    // The next transaction, aborted.
    append(&mut state, txn_batch(PID, 0, 5, 1, 16)).unwrap();
    assert_eq!(state.first_unstable_offset(), Some(16));
    let completed = state.record_marker(PID, 0, abort(4), 17, 0).unwrap();
    assert!(completed.is_aborted);
    assert_eq!((completed.first_offset, completed.last_offset), (16, 17));
    assert_eq!(
        completed.aborted_txn(18),
        AbortedTxn {
            producer_id: PID,
            first_offset: 16,
            last_offset: 17,
            last_stable_offset: 18
        }
    );
    // A marker with nothing ongoing (a retry, or a transaction without
    // batches here) ends nothing.
    assert_eq!(state.record_marker(PID, 0, abort(4), 18, 0), None);
    state.check_invariants();
}

#[test]
fn the_first_unstable_offset_is_the_oldest_ongoing_transaction() {
    let mut state = manager();
    append(&mut state, txn_batch(1, 0, 0, 1, 0)).unwrap();
    append(&mut state, txn_batch(2, 0, 0, 1, 1)).unwrap();
    append(&mut state, txn_batch(3, 0, 0, 1, 2)).unwrap();
    append(&mut state, txn_batch(1, 0, 1, 1, 3)).unwrap();
    assert_eq!(state.first_unstable_offset(), Some(0));
    // Producer 2 ends first: 1's transaction still holds the LSO at 0.
    let two = state.record_marker(2, 0, abort(0), 4, 0).unwrap();
    assert_eq!(state.first_unstable_offset(), Some(0));
    assert_eq!(state.last_stable_offset_after(&two), 0);
    let one = state.record_marker(1, 0, commit(0), 5, 0).unwrap();
    assert_eq!((one.first_offset, one.last_offset), (0, 5));
    assert_eq!(state.first_unstable_offset(), Some(2));
    assert_eq!(state.last_stable_offset_after(&one), 2);
    let three = state.record_marker(3, 0, commit(0), 6, 0).unwrap();
    assert_eq!(state.first_unstable_offset(), None);
    assert_eq!(state.last_stable_offset_after(&three), 7);
    // A non-transactional producer never holds it.
    append(&mut state, batch(0, 0, 1, 7)).unwrap();
    assert_eq!(state.first_unstable_offset(), None);
    state.check_invariants();
}

#[test]
fn a_non_transactional_write_during_a_transaction_is_refused() {
    let mut state = manager();
    append(&mut state, txn_batch(PID, 0, 0, 1, 0)).unwrap();
    assert_eq!(
        state.check(&batch(0, 1, 1, -1)),
        Err(ProducerStateError::InvalidTxnState {
            producer_id: PID,
            txn_first_offset: 0
        })
    );
    // The sequence and epoch rules come first, as in Kafka.
    assert!(matches!(
        state.check(&batch(0, 5, 1, -1)),
        Err(ProducerStateError::OutOfOrderSequence { .. })
    ));
    // A retry of the transactional batch is still a duplicate.
    assert!(matches!(
        state.check(&batch(0, 0, 1, -1)),
        Ok(AppendCheck::Duplicate(_))
    ));
    state.record_marker(PID, 0, commit(0), 1, 0).unwrap();
    assert_eq!(
        append(&mut state, batch(0, 1, 1, 2)),
        Ok(AppendCheck::Append)
    );
}

#[test]
fn markers_from_old_producer_or_coordinator_epochs_are_refused() {
    let mut state = manager();
    // An unknown producer takes any marker.
    assert_eq!(state.check_marker(PID, 0, 0), Ok(()));
    append(&mut state, txn_batch(PID, 3, 0, 1, 0)).unwrap();
    state.record_marker(PID, 3, commit(5), 1, 0).unwrap();
    assert_eq!(
        state.check_marker(PID, 2, 5),
        Err(ProducerStateError::InvalidProducerEpoch {
            producer_id: PID,
            producer_epoch: 2,
            current_epoch: 3
        })
    );
    assert_eq!(
        state.check_marker(PID, 3, 4),
        Err(ProducerStateError::TransactionCoordinatorFenced {
            producer_id: PID,
            coordinator_epoch: 4,
            current_coordinator_epoch: 5
        })
    );
    assert_eq!(state.check_marker(PID, 3, 5), Ok(()));
    // A newer epoch (the coordinator bumps it when it aborts on a
    // timeout) and a newer coordinator are fine.
    assert_eq!(state.check_marker(PID, 4, 6), Ok(()));
    assert_eq!(state.record_marker(PID, 4, abort(6), 2, 0), None);
    let entry = state.entry(PID).unwrap();
    assert_eq!(entry.producer_epoch(), 4);
    assert_eq!(entry.coordinator_epoch(), 6);
    assert_eq!(entry.batches().count(), 0, "the old epoch's batches went");
}

#[test]
fn producers_with_an_ongoing_transaction_do_not_expire_and_are_evicted_last() {
    let config = ProducerStateConfig {
        producer_id_expiration_ms: 1_000,
        producers_max: 2,
    };
    let mut state = ProducerStateManager::new(config);
    state.record(&txn_batch(1, 0, 0, 1, 0), 0);
    state.record(&txn_batch(2, 0, 0, 1, 1), 500);
    assert_eq!(state.expire(1_000_000), 0);
    assert_eq!(state.len(), 2);
    state.record_marker(1, 0, commit(0), 2, 600).unwrap();
    assert_eq!(state.expire(1_600), 1);
    assert!(state.entry(1).is_none());
    // Producer 3 (idle, no transaction) goes before 2 (older, ongoing).
    state.record(&txn_batch(3, 0, 0, 1, 3), 700);
    state.record_marker(3, 0, commit(0), 4, 700).unwrap();
    state.record(&batch(0, 0, 1, 5), 800);
    assert!(state.entry(3).is_none());
    assert!(state.entry(2).is_some());
    assert_eq!(state.take_evicted(), 1);
    // With every producer in a transaction, the longest idle goes, and
    // its transaction with it.
    state.record(&txn_batch(PID, 0, 1, 1, 6), 900);
    state.record(&txn_batch(9, 0, 0, 1, 7), 1_000);
    assert!(state.entry(2).is_none());
    assert_eq!(state.first_unstable_offset(), Some(6));
    state.check_invariants();
}

#[test]
fn replay_of_markers_rebuilds_what_the_live_path_recorded() {
    let mut live = manager();
    let mut rebuilt = manager();
    let mut log: Vec<(BatchHeader, Option<EndTxnMarker>)> = Vec::new();
    let header = |pid: i64, offset: i64, count: i32, seq: i32, attributes: i16| BatchHeader {
        base_offset: offset,
        batch_length: 100,
        partition_leader_epoch: 0,
        magic: 2,
        crc: 0,
        attributes,
        last_offset_delta: count - 1,
        base_timestamp: 0,
        max_timestamp: 1_000,
        producer_id: pid,
        producer_epoch: 0,
        base_sequence: seq,
        record_count: count,
    };
    let mut completed_live = Vec::new();
    for (pid, offset, seq) in [(1, 0, 0), (2, 2, 0), (1, 4, 2)] {
        let b = txn_batch(pid, 0, seq, 2, offset);
        append(&mut live, b).unwrap();
        log.push((header(pid, offset, 2, seq, 0x10), None));
    }
    completed_live.extend(live.record_marker(1, 0, abort(2), 6, 0));
    log.push((header(1, 6, 1, -1, 0x30), Some(abort(2))));
    // An unreadable marker changes nothing on replay.
    log.push((header(2, 7, 1, -1, 0x30), None));
    let mut completed_rebuilt = Vec::new();
    for (header, marker) in &log {
        completed_rebuilt.extend(rebuilt.replay(header, *marker, 0));
    }
    assert_eq!(completed_rebuilt, completed_live);
    assert_eq!(rebuilt.producers, live.producers);
    assert_eq!(rebuilt.first_unstable_offset(), Some(2));
    rebuilt.check_invariants();
}

#[test]
fn snapshots_keep_transactions_and_version_1_still_decodes() {
    let mut state = manager();
    append(&mut state, txn_batch(1, 0, 0, 2, 0)).unwrap();
    append(&mut state, txn_batch(2, 1, 0, 1, 2)).unwrap();
    state.record_marker(2, 1, commit(7), 3, 0).unwrap();
    append(&mut state, batch(0, 0, 1, 4)).unwrap();
    let bytes = state.take_snapshot().unwrap();
    assert_eq!(&bytes[..2], &[0, 2]);
    let back = ProducerStateManager::decode(&bytes, state.config()).unwrap();
    assert_eq!(
        back,
        ProducerStateManager {
            dirty: false,
            ..state.clone()
        }
    );
    assert_eq!(back.first_unstable_offset(), Some(0));
    assert_eq!(back.entry(2).unwrap().coordinator_epoch(), 7);
    assert_eq!(back.encode(), bytes);

    // Version 1: the same producers without the transaction fields.
    let mut body = Vec::new();
    body.extend_from_slice(&1u32.to_be_bytes());
    body.extend_from_slice(&PID.to_be_bytes());
    body.extend_from_slice(&3i16.to_be_bytes());
    body.extend_from_slice(&1_234i64.to_be_bytes());
    body.push(1);
    for field in [0i32, 4] {
        body.extend_from_slice(&field.to_be_bytes());
    }
    for field in [10i64, 14, 99] {
        body.extend_from_slice(&field.to_be_bytes());
    }
    let mut v1 = vec![0, 1];
    v1.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
    v1.extend_from_slice(&body);
    let old = ProducerStateManager::decode(&v1, ProducerStateConfig::default()).unwrap();
    let entry = old.entry(PID).unwrap();
    assert_eq!(entry.producer_epoch(), 3);
    assert_eq!(entry.last_append_ms(), 1_234);
    assert_eq!(entry.coordinator_epoch(), NO_COORDINATOR_EPOCH);
    assert_eq!(entry.current_txn_first_offset(), None);
    assert_eq!(
        entry.batches().copied().collect::<Vec<_>>(),
        vec![BatchMetadata {
            first_seq: 0,
            last_seq: 4,
            first_offset: 10,
            last_offset: 14,
            timestamp: 99
        }]
    );
    assert_eq!(old.first_unstable_offset(), None);
    // Read as version 2, those bytes are too short for their producer.
    let mut as_v2 = v1.clone();
    as_v2[1] = 2;
    assert!(ProducerStateManager::decode(&as_v2, ProducerStateConfig::default()).is_err());
}

#[test]
fn a_snapshot_with_an_impossible_transaction_is_refused() {
    let mut state = manager();
    append(&mut state, txn_batch(1, 0, 0, 2, 5)).unwrap();
    let bytes = state.encode();
    // After the header, the producer's id (8 bytes), epoch (2), last
    // append (8) and coordinator epoch (4): then the first offset.
    let at = 10 + 8 + 2 + 8 + 4;
    for (first_offset, valid) in [(5i64, true), (6, true), (7, false), (-2, false)] {
        let mut edited = bytes.clone();
        edited[at..at + 8].copy_from_slice(&first_offset.to_be_bytes());
        let crc = crc32c::crc32c(&edited[6..]);
        edited[2..6].copy_from_slice(&crc.to_be_bytes());
        let decoded = ProducerStateManager::decode(&edited, state.config());
        assert_eq!(decoded.is_ok(), valid, "first offset {first_offset}");
    }
}
