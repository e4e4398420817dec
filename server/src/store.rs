//! Where a replica's persisted records and snapshots go. The driver calls
//! [`ReplicaStore::persist`] once per Ready batch and acknowledges nothing that depends on it
//! until it returns Ok.

use crate::storage::{
    load_latest_snapshot, remove_segments_below, write_snapshot, DirLock, FaultInjector,
    StorageError, Wal, WalOptions,
};
use paxoskv::{Record, Snapshot};
use std::path::{Path, PathBuf};

/// Why persisting failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage layer failed (I/O, corruption, lock).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// What a store held when it was opened: rebuild the core from this.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Newest snapshot, if any.
    pub snapshot: Option<Snapshot>,
    /// Log records written after it, in order.
    pub records: Vec<Record>,
}

/// A snapshot to be written in the background: the log already continues in `segment`.
#[derive(Debug, Clone)]
pub struct SnapshotJob {
    dir: PathBuf,
    /// First log segment the snapshot does not cover.
    pub segment: u64,
}

impl SnapshotJob {
    /// Writes `snapshot` durably (temp file, fsync, rename, directory fsync); returns its size.
    pub fn write(&self, snapshot: &Snapshot) -> Result<u64, StoreError> {
        write_snapshot(&self.dir, snapshot.through, snapshot, self.segment)?;
        let path = crate::storage::snapshot_path(&self.dir, snapshot.through);
        let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
        Ok(bytes)
    }
}

/// Durable (or, for experiments, throwaway) storage of one replica.
pub trait ReplicaStore: Send + 'static {
    /// Makes `records` durable, in order, with one sync for the batch.
    fn persist(&mut self, records: &[Record]) -> Result<(), StoreError>;

    /// Bytes of log kept since the last snapshot.
    fn log_bytes(&self) -> u64;

    /// Starts a new log segment beginning with `live` (the state a snapshot will not hold)
    /// and returns the job that writes the snapshot; `None` if this store keeps no snapshots.
    fn begin_snapshot(&mut self, live: &[Record]) -> Result<Option<SnapshotJob>, StoreError>;

    /// The job's snapshot is durable: drop the log it covers.
    fn finish_snapshot(&mut self, job: &SnapshotJob) -> Result<(), StoreError>;

    /// Re-reads what is durable (after a failure), making the store usable again.
    fn reopen(&mut self) -> Result<Recovered, StoreError>;

    /// Proves the storage takes writes with margin again (a fenced replica calls it before
    /// [`ReplicaStore::reopen`]).
    fn probe_space(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Ok when a snapshot about `last_snapshot_bytes` large fits with margin; otherwise why
    /// not (the snapshot is postponed).
    fn snapshot_space(&self, _last_snapshot_bytes: u64) -> Result<(), String> {
        Ok(())
    }

    /// Short description for logs ("in-memory", a directory...).
    fn describe(&self) -> String;

    /// The directory for this replica's temp files (a snapshot being received), if it has
    /// one; without, the runtime uses a private temp directory.
    fn scratch_dir(&self) -> Option<PathBuf> {
        None
    }
}

/// Keeps nothing: state lives only in the replica's memory and dies with the process.
#[derive(Debug, Default)]
pub struct MemoryStore;

impl ReplicaStore for MemoryStore {
    fn persist(&mut self, _: &[Record]) -> Result<(), StoreError> {
        Ok(())
    }

    fn log_bytes(&self) -> u64 {
        0
    }

    fn begin_snapshot(&mut self, _: &[Record]) -> Result<Option<SnapshotJob>, StoreError> {
        Ok(None)
    }

    fn finish_snapshot(&mut self, _: &SnapshotJob) -> Result<(), StoreError> {
        Ok(())
    }

    fn reopen(&mut self) -> Result<Recovered, StoreError> {
        Err(StoreError::Other(
            "an in-memory store has nothing to reopen".into(),
        ))
    }

    fn describe(&self) -> String {
        "in-memory (nothing survives a restart)".into()
    }
}

/// A replica directory: lock, write-ahead log, snapshots.
pub struct DiskStore {
    dir: PathBuf,
    _lock: DirLock,
    wal: Option<Wal<Record>>,
    faults: FaultInjector,
}

impl DiskStore {
    /// Locks `dir` (creating it) and recovers what it holds.
    pub fn open(dir: &Path) -> Result<(DiskStore, Recovered), StoreError> {
        Self::open_with_faults(dir, FaultInjector::new())
    }

    /// Like [`DiskStore::open`], with a fault injector tests can arm.
    pub fn open_with_faults(
        dir: &Path,
        faults: FaultInjector,
    ) -> Result<(DiskStore, Recovered), StoreError> {
        let lock = DirLock::acquire(dir)?;
        let mut store = DiskStore {
            dir: dir.to_path_buf(),
            _lock: lock,
            wal: None,
            faults,
        };
        let recovered = store.reopen()?;
        Ok((store, recovered))
    }

    fn wal(&mut self) -> Result<&mut Wal<Record>, StoreError> {
        self.wal
            .as_mut()
            .ok_or_else(|| StoreError::Other("the log is closed after a failure".into()))
    }
}

impl ReplicaStore for DiskStore {
    fn persist(&mut self, records: &[Record]) -> Result<(), StoreError> {
        let wal = self.wal()?;
        if let Err(e) = wal.append_and_sync(records) {
            // Cut the unsynced tail at once, so that not even a process crash before the
            // reopen can replay bytes the failed sync may have left only in the page cache.
            // If the cut fails too, the reopen tries again (and refuses until it works).
            if let Err(cut) = wal.cut_unsynced_tail() {
                tracing::error!(error = %cut, "cannot cut the WAL back to its synced length");
            }
            return Err(e.into());
        }
        Ok(())
    }

    fn probe_space(&mut self) -> Result<(), StoreError> {
        crate::storage::probe_write(&self.dir)?;
        Ok(())
    }

    fn snapshot_space(&self, last_snapshot_bytes: u64) -> Result<(), String> {
        crate::storage::check_snapshot_space(&self.dir, last_snapshot_bytes)
    }

    fn log_bytes(&self) -> u64 {
        self.wal.as_ref().map_or(0, |w| w.size_bytes())
    }

    fn begin_snapshot(&mut self, live: &[Record]) -> Result<Option<SnapshotJob>, StoreError> {
        let segment = self.wal()?.rotate(live)?;
        Ok(Some(SnapshotJob {
            dir: self.dir.clone(),
            segment,
        }))
    }

    fn finish_snapshot(&mut self, job: &SnapshotJob) -> Result<(), StoreError> {
        // Even a fenced (poisoned or closed) log frees the space the snapshot made obsolete:
        // on a full disk that is what lets the replica recover.
        match self.wal.as_mut() {
            Some(wal) => wal.remove_segments_below(job.segment)?,
            None => {
                remove_segments_below(&self.dir, job.segment)?;
            }
        }
        Ok(())
    }

    fn reopen(&mut self) -> Result<Recovered, StoreError> {
        // Never reopen over bytes a failed sync may have left only in the page cache.
        if let Some(wal) = self.wal.as_mut() {
            wal.cut_unsynced_tail()?;
        }
        let snapshot = load_latest_snapshot::<Snapshot>(&self.dir)?;
        let from_segment = snapshot.as_ref().map_or(0, |(_, m)| m.wal_segment_start);
        let options = WalOptions {
            from_segment,
            faults: self.faults.clone(),
        };
        self.wal = None; // Its file is cut back to what is durable; the open replays it.
        let (wal, records) = Wal::open(&self.dir, options)?;
        self.wal = Some(wal);
        Ok(Recovered {
            snapshot: snapshot.map(|(s, _)| s),
            records,
        })
    }

    fn describe(&self) -> String {
        format!("{}", self.dir.display())
    }

    fn scratch_dir(&self) -> Option<PathBuf> {
        Some(self.dir.clone())
    }
}
