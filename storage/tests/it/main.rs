//! Integration tests of bizra-storage (one binary, modules per concern).

mod group_commit;
mod log_store;
mod state_tables;

use std::io::Cursor;

use openraft::{CommittedLeaderId, EntryPayload, LogId};

openraft::declare_raft_types!(
    /// A minimal type config: the log store is generic, string payloads do.
    TestConfig: D = String, R = String
);

type Entry = openraft::Entry<TestConfig>;
type Log = bizra_storage::LogStore<TestConfig>;

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 0), index)
}

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(format!("entry {index}")),
    }
}
