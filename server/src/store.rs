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
    /// Writes `snapshot` durably (temp file, fsync, rename, directory fsync), then deletes
    /// the log segments it made obsolete; returns its size. Then call
    /// [`ReplicaStore::finish_snapshot`].
    ///
    /// Needs no access to the store, so it runs on its own thread: those segments are
    /// closed (the log appends at `segment` or later), and unlinking them plus the directory
    /// fsync took 59-429 ms, which on the driver's turn was the largest put-latency stall of
    /// a snapshot. On a full disk this is also what frees the space, whatever state the log
    /// is in.
    pub fn write(&self, snapshot: &Snapshot) -> Result<u64, StoreError> {
        write_snapshot(&self.dir, snapshot.through, snapshot, self.segment)?;
        let path = crate::storage::snapshot_path(&self.dir, snapshot.through);
        let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
        remove_segments_below(&self.dir, self.segment)?;
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

    /// [`SnapshotJob::write`] succeeded: stop counting the log it removed. Touches no file,
    /// so the driver calls it on its own turn.
    fn finish_snapshot(&mut self, job: &SnapshotJob);

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

    fn finish_snapshot(&mut self, _: &SnapshotJob) {}

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

    fn finish_snapshot(&mut self, job: &SnapshotJob) {
        // A closed log (after a failure) has nothing to count; the reopen re-reads sizes.
        if let Some(wal) = self.wal.as_mut() {
            wal.forget_segments_below(job.segment);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::segment_path;
    use paxoskv::{Ballot, Config, Replica};

    fn promise(round: u64) -> Record {
        Record::Promised(Ballot { round, replica: 0 })
    }

    /// The snapshot's own thread deletes the segments it covers, with no access to the store
    /// (the driver keeps using it meanwhile); the store then only stops counting them.
    #[test]
    fn writing_a_snapshot_removes_the_log_it_covers() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (mut store, _) = DiskStore::open(tmp.path()).expect("open");
        store.persist(&[promise(1), promise(2)]).expect("persist");
        let before_bytes = store.log_bytes();
        let job = store
            .begin_snapshot(&[promise(2)])
            .expect("rotate")
            .expect("a disk store writes snapshots");
        let snapshot = Replica::recover(Config::new(0, 1), None, Vec::new())
            .expect("empty replica")
            .snapshot();
        // Appends to the new segment go on while the snapshot is written.
        store
            .persist(&[promise(3)])
            .expect("persist during the snapshot");
        assert!(segment_path(tmp.path(), 0).exists());

        let writer = job.clone();
        let bytes = std::thread::spawn(move || writer.write(&snapshot))
            .join()
            .expect("writer thread")
            .expect("write");
        assert!(bytes > 0);
        assert!(
            !segment_path(tmp.path(), 0).exists(),
            "the covered segment is gone once the snapshot is durable"
        );
        assert!(segment_path(tmp.path(), job.segment).exists());
        assert_eq!(
            store.log_bytes(),
            before_bytes + store_bytes_of_segment(&store, job.segment)
        );
        store.finish_snapshot(&job);
        assert_eq!(
            store.log_bytes(),
            store_bytes_of_segment(&store, job.segment)
        );

        drop(store);
        let (_, recovered) = DiskStore::open(tmp.path()).expect("reopen");
        assert!(recovered.snapshot.is_some());
        assert_eq!(recovered.records, vec![promise(2), promise(3)]);
    }

    fn store_bytes_of_segment(store: &DiskStore, segment: u64) -> u64 {
        let wal = store.wal.as_ref().expect("open log");
        assert_eq!(wal.segment_index(), segment);
        std::fs::metadata(wal.segment_path()).expect("stat").len()
    }
}
