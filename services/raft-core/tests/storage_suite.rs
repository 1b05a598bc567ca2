//! openraft's own storage test suite over our RocksDB log store and state machine (a fresh
//! database in a temporary directory per case): log state, vote, append/truncate/purge,
//! membership from log and state machine, snapshots, applied state.

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use plasmacloud_raft::log_store::LogStore;
use plasmacloud_raft::state_machine::StateMachine;
use plasmacloud_raft::{NodeId, TypeConfig};

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RocksBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let io = |e: String| {
            StorageError::from_io_error(
                openraft::ErrorSubject::Store,
                openraft::ErrorVerb::Write,
                std::io::Error::other(e),
            )
        };
        let dir = tempfile::tempdir().map_err(|e| io(e.to_string()))?;
        let db = plasmacloud_raft::db::open_db(dir.path(), true).map_err(|e| io(e.to_string()))?;
        // Node id 0: the suite's entries name other leaders, so every append takes the
        // synced-before-flushed path.
        let log = LogStore::new(db.clone(), 0).map_err(|e| io(e.to_string()))?;
        let sm = StateMachine::open(db, dir.path().join("snapshots"))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    if let Err(e) = Suite::test_all(RocksBuilder) {
        panic!("openraft storage suite: {e}");
    }
}
