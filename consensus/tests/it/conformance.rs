//! openraft's storage conformance suite over the real log store and state
//! machine, each case in a fresh temp dir.

use bizra_consensus::{LogStore, StateMachine, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        let (log, sm, _reader) = bizra_consensus::open(dir.path(), crate::common::chain())
            .await
            .expect("a fresh data dir opens");
        Ok((dir, log, sm))
    }
}

/// Not a `#[tokio::test]`: the suite makes a runtime per case itself.
#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("the storage conformance suite passes");
}
