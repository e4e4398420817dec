//! Durable per-replica storage: a directory lock, a write-ahead log and snapshots.
//!
//! Everything here is synchronous `std::fs` code; the runtime calls it from a blocking
//! context. It is generic over the record type `R` and the snapshot type `S` (any serde
//! types), so it does not depend on the core.
//!
//! # Directory layout
//!
//! ```text
//! <replica dir>/LOCK                      flock'ed by the running server (see DirLock)
//! <replica dir>/wal-{index:016}.log       WAL segments, replayed in index order
//! <replica dir>/snap-{slot:016}.snap      the newest snapshot (older ones are deleted)
//! <replica dir>/snap-{slot:016}.tmp       a snapshot being written (removed on load)
//! ```
//!
//! WAL frame: `len: u32 LE | crc32c(payload): u32 LE | payload` where payload is bincode 1.3
//! (varint, little endian) of `R`, `0 < len <= MAX_RECORD_BYTES`. See the `frame` module
//! for the torn-tail versus corruption rule, and `snapshot` for the snapshot format.
//!
//! # Start-up sequence
//!
//! 1. [`DirLock::acquire`] the replica directory (keep the lock for the life of the server).
//! 2. [`load_latest_snapshot`]; take `meta.wal_segment_start` (or 0 without a snapshot).
//! 3. [`Wal::open`] with that as [`WalOptions::from_segment`], and replay the records on top
//!    of the snapshot.
//!
//! # Compaction
//!
//! [`Wal::rotate`] with the records that re-log the live (not yet snapshotted) state, then
//! [`write_snapshot`] with the new segment index as `wal_segment_start`, then
//! [`Wal::remove_segments_below`] that index. A crash between the steps leaves a consistent
//! directory: the old snapshot with its segments, or the new one with extra old segments that
//! are ignored and removed later.

mod error;
mod fault;
mod frame;
mod fsutil;
mod lock;
mod snapshot;
mod space;
mod wal;

pub use error::StorageError;
pub use fault::FaultInjector;
pub use frame::{FRAME_HEADER_BYTES, MAX_RECORD_BYTES, SCAN_BUDGET_BYTES};
pub use lock::{DirLock, LOCK_FILE_NAME};
pub use snapshot::{
    load_latest_snapshot, read_snapshot, run_at_low_priority, snapshot_path, write_snapshot,
    SnapshotMeta, MAX_SNAPSHOT_BYTES, SNAPSHOT_HEADER_BYTES, SNAPSHOT_MAGIC,
};
pub use space::{
    check_snapshot_space, free_disk_bytes, probe_write, PROBE_FILE_NAME, SPACE_MARGIN_BYTES,
};
pub use wal::{remove_segments_below, segment_path, Wal, WalOptions};

#[cfg(test)]
mod wal_tests;
