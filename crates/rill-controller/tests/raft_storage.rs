//! openraft's conformance suite for log stores and state machines, run
//! against the controller's file-backed `LogStore` and `StateMachine`.

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use rill_controller::raft::{LogStore, RaftNodeId, StateMachine, TypeConfig};
use tempfile::TempDir;

struct FileStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for FileStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<RaftNodeId>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log_store = LogStore::open(dir.path()).expect("open log store");
        let state_machine = StateMachine::open(dir.path()).expect("open state machine");
        Ok((dir, log_store, state_machine))
    }
}

#[test]
fn openraft_storage_suite() -> anyhow::Result<()> {
    Suite::test_all(FileStoreBuilder)?;
    Ok(())
}
