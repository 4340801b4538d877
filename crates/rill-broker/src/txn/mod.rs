//! The transaction coordinator's core: transactional ids, their producer
//! ids and epochs, and the transactions they run, as Kafka's
//! `TransactionCoordinator` keeps them (classic transactions, Kafka's
//! `transaction.version` 0 and 1: the client adds partitions with
//! AddPartitionsToTxn, and the epoch is bumped only by InitProducerId
//! and by fencing; KIP-890 part 2 is not here).
//!
//! A transactional id belongs to partition `abs(hashCode(id)) % partitions`
//! of the internal topic `__transaction_state` ([`partition_for`], the same
//! hash as the group coordinator's); the node leading that partition is
//! the id's coordinator. Every change to a transaction is a record in that
//! partition, written durably before anyone is told of it: the state
//! machine says what to write, the caller writes it and then confirms it.
//!
//! - [`state`]: the state machine of one `__transaction_state` partition,
//!   in memory, time and producer ids passed in; no I/O, no async.
//! - [`records`]: the `__transaction_state` key and value formats.
//!
//! **Architecture Invariant:** the transactions of a partition are a
//! function of the records written to it: a node that loads the partition
//! ([`state::Transactions::load`]) has the same ids, producer ids,
//! epochs, states and partitions as the node that wrote them, and finishes
//! the transactions it finds prepared ([`state::Transactions::prepared`]).

pub mod coordinator;
pub mod markers;
pub mod records;
pub mod state;

/// The internal topic that holds transactions.
pub const TRANSACTION_STATE_TOPIC: &str = "__transaction_state";
/// `transaction.state.log.num.partitions`' default.
pub const TRANSACTION_STATE_PARTITIONS_DEFAULT: i32 = 50;

/// The `__transaction_state` partition of a transactional id: Kafka's
/// `Utils.abs(transactionalId.hashCode) % partitions`, the same hash as a
/// group's.
pub fn partition_for(transactional_id: &str, partitions: i32) -> i32 {
    crate::group::partition_for(transactional_id, partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactional_ids_hash_as_in_kafka() {
        // "test-group".hashCode() = 627841412 in Java.
        assert_eq!(partition_for("test-group", 50), 12);
        assert_eq!(
            partition_for("polygenelubricants", TRANSACTION_STATE_PARTITIONS_DEFAULT),
            0
        );
    }
}
