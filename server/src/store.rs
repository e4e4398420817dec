//! Where a replica's persisted records go. The driver calls [`ReplicaStore::persist`] once per
//! Ready batch and acknowledges nothing that depends on it until it returns Ok.

use paxoskv::Record;

/// Why persisting failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// Durable (or, for experiments, throwaway) storage of one replica.
pub trait ReplicaStore: Send + 'static {
    /// Makes `records` durable, in order, with one sync for the batch.
    fn persist(&mut self, records: &[Record]) -> Result<(), StoreError>;

    /// Short description for logs ("in-memory", a directory...).
    fn describe(&self) -> String;
}

/// Keeps nothing: state lives only in the replica's memory and dies with the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    records: u64,
}

impl ReplicaStore for MemoryStore {
    fn persist(&mut self, records: &[Record]) -> Result<(), StoreError> {
        self.records += records.len() as u64;
        Ok(())
    }

    fn describe(&self) -> String {
        "in-memory (nothing survives a restart)".into()
    }
}
