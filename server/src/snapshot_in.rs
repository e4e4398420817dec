//! Receiving a snapshot from a peer: chunks stream into a temp file in the replica's data
//! directory (a private temp directory for an in-memory replica), never into memory beyond
//! one chunk. The announced size is checked against a limit and the free disk space before
//! anything is written; every number in a chunk is checked before arithmetic. The file is
//! deleted when the transfer completes (after decoding), is superseded by a new one, fails,
//! or stalls (no chunk for `stall`, enforced by a timer task, not only by the next chunk).

use paxoskv::refuse::MAX_SLOT;
use paxoskv::{ReplicaId, Snapshot};
use paxoskv_service::{SnapshotChunk, SNAPSHOT_CHUNK_BYTES};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Name prefix of the temp files; anything with it in the directory at start-up is a
/// leftover of a crash and is removed.
const TEMP_PREFIX: &str = "incoming-snap-";
/// Name suffix of the temp files.
const TEMP_SUFFIX: &str = ".part";
/// Free space kept on the disk beyond what a transfer needs: the same margin a fenced
/// replica's space probe writes (64 MiB refused every transfer on a small disk).
const FREE_DISK_RESERVE_BYTES: u64 = crate::storage::SPACE_MARGIN_BYTES;

/// Bounds of snapshot receiving.
#[derive(Clone, Debug)]
pub struct SnapshotReceiveLimits {
    /// Largest snapshot accepted (its announced `total_bytes`).
    pub max_bytes: u64,
    /// A transfer with no chunk for this long is abandoned and its file deleted.
    pub stall: Duration,
}

impl Default for SnapshotReceiveLimits {
    fn default() -> Self {
        SnapshotReceiveLimits {
            max_bytes: 8 << 30,
            stall: Duration::from_secs(10),
        }
    }
}

/// Where temp files go.
#[derive(Debug)]
struct TempDir {
    path: PathBuf,
    /// Created by us (in-memory replica): removed with everything in it on drop.
    owned: bool,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// One transfer in progress: the temp file and what has been written to it.
#[derive(Debug)]
pub struct SnapshotAssembly {
    from: ReplicaId,
    through: u64,
    total_bytes: u64,
    received_bytes: u64,
    file: Option<File>,
    path: PathBuf,
    last_chunk: Instant,
    generation: u64,
}

impl Drop for SnapshotAssembly {
    fn drop(&mut self) {
        self.file = None;
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(file = %self.path.display(), error = %e, "cannot remove snapshot temp file");
            }
        }
    }
}

/// What a chunk led to.
#[derive(Debug)]
pub enum ChunkOutcome {
    /// More chunks are expected from this offset on.
    More {
        /// The next offset.
        next_offset: u64,
    },
    /// The last chunk arrived: the whole snapshot, decoded (its temp file is gone).
    Complete(Box<Snapshot>),
}

/// Receives snapshots for one replica: at most one transfer at a time.
#[derive(Debug)]
pub struct SnapshotReceiver {
    id: ReplicaId,
    dir: TempDir,
    limits: SnapshotReceiveLimits,
    current: Arc<Mutex<Option<SnapshotAssembly>>>,
    generation: AtomicU64,
    /// Chunks refused so far (any reason), for status and tests.
    refused: AtomicU64,
}

impl SnapshotReceiver {
    /// A receiver writing into `dir` (the replica's data directory), or into a private temp
    /// directory when `dir` is `None`. Leftover temp files in `dir` are removed.
    pub fn new(
        id: ReplicaId,
        dir: Option<PathBuf>,
        limits: SnapshotReceiveLimits,
    ) -> std::io::Result<SnapshotReceiver> {
        let dir = match dir {
            Some(path) => {
                remove_leftovers(&path)?;
                TempDir { path, owned: false }
            }
            None => {
                let path = std::env::temp_dir().join(format!(
                    "paxoskv-snapshot-in-{}-{id}-{:016x}",
                    std::process::id(),
                    rand::random::<u64>()
                ));
                std::fs::create_dir_all(&path)?;
                TempDir { path, owned: true }
            }
        };
        Ok(SnapshotReceiver {
            id,
            dir,
            limits,
            current: Arc::default(),
            generation: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// The directory temp files go to.
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// Chunks refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Counts and returns a refusal.
    pub fn refuse(&self, reason: String) -> String {
        self.refused.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(replica = self.id, %reason, "snapshot chunk refused");
        reason
    }

    /// Handles one chunk from `from`; `expected` says whether the core asked `from` for a
    /// snapshot. Refusals are counted and explained.
    pub async fn receive(
        &self,
        from: ReplicaId,
        expected: bool,
        chunk: SnapshotChunk,
    ) -> Result<ChunkOutcome, String> {
        if !expected {
            return Err(self.refuse(format!(
                "replica {} did not ask replica {from} for a snapshot",
                self.id
            )));
        }
        check_numbers(&chunk, self.limits.max_bytes).map_err(|e| self.refuse(e))?;
        let mut slot = self.current.lock().await;
        if chunk.offset == 0 {
            *slot = None; // A new transfer supersedes the old one; its file goes.
            let assembly = self.start(from, &chunk).map_err(|e| self.refuse(e))?;
            self.watch_for_stall(assembly.generation);
            *slot = Some(assembly);
        }
        let fits = slot.as_ref().is_some_and(|a| {
            a.from == from
                && a.through == chunk.through
                && a.total_bytes == chunk.total_bytes
                && a.received_bytes == chunk.offset
        });
        if !fits {
            return Err(self.refuse(format!(
                "unexpected snapshot chunk from replica {from} at offset {} (through {}, {} bytes): no such transfer in progress; start at offset 0",
                chunk.offset, chunk.through, chunk.total_bytes
            )));
        }
        let Some(assembly) = slot.take() else {
            return Err(self.refuse("no snapshot transfer in progress".into()));
        };
        let written = tokio::task::spawn_blocking(move || append(assembly, &chunk.data))
            .await
            .map_err(|e| format!("snapshot write task failed: {e}"))?;
        let assembly = written.map_err(|e| self.refuse(e))?;
        if assembly.received_bytes < assembly.total_bytes {
            let next_offset = assembly.received_bytes;
            *slot = Some(assembly);
            return Ok(ChunkOutcome::More { next_offset });
        }
        drop(slot); // A new transfer may start while this one decodes.
        let snapshot = tokio::task::spawn_blocking(move || decode(assembly))
            .await
            .map_err(|e| format!("snapshot decode task failed: {e}"))?
            .map_err(|e| self.refuse(e))?;
        Ok(ChunkOutcome::Complete(Box::new(snapshot)))
    }

    /// Checks the disk has room and creates the temp file of a new transfer.
    fn start(&self, from: ReplicaId, chunk: &SnapshotChunk) -> Result<SnapshotAssembly, String> {
        // The file, then the snapshot the driver writes from it: twice the size.
        let needed = chunk
            .total_bytes
            .saturating_mul(2)
            .saturating_add(FREE_DISK_RESERVE_BYTES);
        let free = free_disk_bytes(&self.dir.path)
            .map_err(|e| format!("cannot check free disk space: {e}"))?;
        if free < needed {
            return Err(format!(
                "snapshot of {} bytes does not fit: {free} bytes free in {}, {needed} needed",
                chunk.total_bytes,
                self.dir.path.display()
            ));
        }
        let path = self.dir.path.join(format!(
            "{TEMP_PREFIX}{from}-{}{TEMP_SUFFIX}",
            chunk.through
        ));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(
            replica = self.id,
            from,
            through = chunk.through,
            total_bytes = chunk.total_bytes,
            file = %path.display(),
            "receiving a snapshot"
        );
        Ok(SnapshotAssembly {
            from,
            through: chunk.through,
            total_bytes: chunk.total_bytes,
            received_bytes: 0,
            file: Some(file),
            path,
            last_chunk: Instant::now(),
            generation,
        })
    }

    /// Abandons transfer `generation` (deleting its file) once no chunk came for `stall`.
    fn watch_for_stall(&self, generation: u64) {
        let current = self.current.clone();
        let stall = self.limits.stall;
        let id = self.id;
        let period = (stall / 4).max(Duration::from_millis(10));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let mut slot = current.lock().await;
                let Some(a) = slot.as_ref() else { return };
                if a.generation != generation {
                    return;
                }
                if a.last_chunk.elapsed() >= stall {
                    tracing::warn!(
                        replica = id,
                        from = a.from,
                        received_bytes = a.received_bytes,
                        total_bytes = a.total_bytes,
                        "snapshot transfer stalled; temp file deleted"
                    );
                    *slot = None;
                    return;
                }
            }
        });
    }

    /// True while a transfer is in progress (for tests).
    pub async fn in_progress(&self) -> bool {
        self.current.lock().await.is_some()
    }
}

/// Refuses a chunk whose numbers no honest sender produces, before any arithmetic on them.
fn check_numbers(chunk: &SnapshotChunk, max_bytes: u64) -> Result<(), String> {
    if chunk.total_bytes == 0 {
        return Err("snapshot of 0 bytes".into());
    }
    if chunk.total_bytes > max_bytes {
        return Err(format!(
            "snapshot of {} bytes is over the limit of {max_bytes} bytes",
            chunk.total_bytes
        ));
    }
    if chunk.through == 0 || chunk.through > MAX_SLOT {
        return Err(format!("snapshot position {} out of range", chunk.through));
    }
    if chunk.data.is_empty() || chunk.data.len() > SNAPSHOT_CHUNK_BYTES {
        return Err(format!(
            "snapshot chunk of {} bytes (must be 1 to {SNAPSHOT_CHUNK_BYTES})",
            chunk.data.len()
        ));
    }
    let end = chunk.offset.checked_add(chunk.data.len() as u64);
    if end.is_none_or(|end| end > chunk.total_bytes) {
        return Err(format!(
            "snapshot chunk at offset {} with {} bytes runs past the announced {} bytes",
            chunk.offset,
            chunk.data.len(),
            chunk.total_bytes
        ));
    }
    Ok(())
}

/// Writes one chunk at the end of the temp file (blocking).
fn append(mut a: SnapshotAssembly, data: &[u8]) -> Result<SnapshotAssembly, String> {
    let Some(file) = a.file.as_mut() else {
        return Err("snapshot temp file is closed".into());
    };
    file.write_all(data)
        .map_err(|e| format!("cannot write {}: {e}", a.path.display()))?;
    a.received_bytes += data.len() as u64; // Checked against total_bytes before.
    a.last_chunk = Instant::now();
    Ok(a)
}

/// Decodes the complete temp file (blocking); the file is deleted when `a` drops.
fn decode(mut a: SnapshotAssembly) -> Result<Snapshot, String> {
    use bincode::Options;
    a.file = None;
    let file = File::open(&a.path).map_err(|e| format!("cannot open {}: {e}", a.path.display()))?;
    // The sender encodes with `bincode::serialize` (fixed-width integers); the limit keeps
    // a forged length prefix from allocating more than the file holds.
    let options = bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(a.total_bytes);
    options
        .deserialize_from(BufReader::new(file))
        .map_err(|e| format!("undecodable snapshot: {e}"))
}

pub use crate::storage::free_disk_bytes;

fn remove_leftovers(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX) {
            tracing::warn!(file = %entry.path().display(), "removing leftover snapshot temp file");
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Temp files in `dir` (for tests).
pub fn temp_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX)
        })
        .map(|e| e.path())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use paxoskv::kv::KvState;

    fn snapshot_bytes(through: u64) -> Vec<u8> {
        let snapshot = Snapshot {
            through,
            kv: KvState::new(16),
        };
        bincode::serialize(&snapshot).expect("encodes")
    }

    fn chunk(through: u64, total: u64, offset: u64, data: &[u8]) -> SnapshotChunk {
        SnapshotChunk {
            through,
            total_bytes: total,
            offset,
            data: data.to_vec(),
        }
    }

    fn receiver(dir: &Path, stall: Duration) -> SnapshotReceiver {
        let limits = SnapshotReceiveLimits {
            max_bytes: 1 << 20,
            stall,
        };
        SnapshotReceiver::new(0, Some(dir.to_path_buf()), limits).expect("receiver")
    }

    #[tokio::test]
    async fn chunks_assemble_through_a_temp_file_that_is_gone_afterwards() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rx = receiver(dir.path(), Duration::from_secs(10));
        let bytes = snapshot_bytes(7);
        let (a, b) = bytes.split_at(bytes.len() / 2);
        let total = bytes.len() as u64;
        match rx.receive(1, true, chunk(7, total, 0, a)).await {
            Ok(ChunkOutcome::More { next_offset }) => assert_eq!(next_offset, a.len() as u64),
            other => panic!("{other:?}"),
        }
        assert_eq!(temp_files(dir.path()).len(), 1, "streams to one temp file");
        match rx
            .receive(1, true, chunk(7, total, a.len() as u64, b))
            .await
        {
            Ok(ChunkOutcome::Complete(s)) => assert_eq!(s.through, 7),
            other => panic!("{other:?}"),
        }
        assert!(temp_files(dir.path()).is_empty(), "deleted on completion");
        assert_eq!(rx.refused(), 0);
    }

    #[tokio::test]
    async fn unasked_oversized_and_malformed_chunks_are_refused_before_writing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rx = receiver(dir.path(), Duration::from_secs(10));
        let cases = [
            (false, chunk(7, 10, 0, b"x"), "did not ask"),
            (true, chunk(7, 16 << 30, 0, b"x"), "over the limit"),
            (true, chunk(7, 0, 0, b"x"), "0 bytes"),
            (true, chunk(0, 10, 0, b"x"), "out of range"),
            (true, chunk(u64::MAX, 10, 0, b"x"), "out of range"),
            (true, chunk(7, 10, u64::MAX, b"xx"), "runs past"),
            (true, chunk(7, 10, 9, b"xx"), "runs past"),
            (true, chunk(7, 10, 0, b""), "chunk of 0 bytes"),
            (true, chunk(7, 10, 4, b"x"), "start at offset 0"),
        ];
        for (i, (expected, c, why)) in cases.into_iter().enumerate() {
            let e = rx.receive(1, expected, c).await.expect_err("refused");
            assert!(e.contains(why), "case {i}: {e}");
        }
        assert_eq!(rx.refused(), 9);
        assert!(temp_files(dir.path()).is_empty());
        // Garbage that is not a snapshot: refused at decode, file removed.
        let e = rx
            .receive(1, true, chunk(7, 4, 0, &[0xff; 4]))
            .await
            .expect_err("undecodable");
        assert!(e.contains("undecodable"), "{e}");
        assert!(temp_files(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn a_new_transfer_supersedes_the_old_one_and_another_sender_cannot_continue_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rx = receiver(dir.path(), Duration::from_secs(10));
        rx.receive(1, true, chunk(7, 100, 0, &[1; 10]))
            .await
            .expect("first");
        let e = rx
            .receive(2, true, chunk(7, 100, 10, &[1; 10]))
            .await
            .expect_err("someone else's transfer");
        assert!(e.contains("unexpected"), "{e}");
        rx.receive(2, true, chunk(9, 100, 0, &[1; 10]))
            .await
            .expect("new one");
        let files = temp_files(dir.path());
        assert_eq!(files.len(), 1, "{files:?}");
        assert!(files[0].to_string_lossy().contains("incoming-snap-2-9"));
    }

    #[tokio::test]
    async fn a_stalled_transfer_is_dropped_by_the_timer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rx = receiver(dir.path(), Duration::from_millis(100));
        rx.receive(1, true, chunk(7, 100, 0, &[1; 10]))
            .await
            .expect("first");
        assert_eq!(temp_files(dir.path()).len(), 1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !temp_files(dir.path()).is_empty() {
            assert!(
                Instant::now() < deadline,
                "temp file outlived the stall timeout"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!rx.in_progress().await);
    }

    #[test]
    fn leftovers_are_removed_at_start_and_a_memory_replica_gets_a_private_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stale = dir.path().join("incoming-snap-1-5.part");
        std::fs::write(&stale, b"old").expect("write");
        let other = dir.path().join("snap-5.snap");
        std::fs::write(&other, b"keep").expect("write");
        let _rx = receiver(dir.path(), Duration::from_secs(1));
        assert!(!stale.exists());
        assert!(other.exists());
        let private =
            SnapshotReceiver::new(3, None, SnapshotReceiveLimits::default()).expect("private dir");
        let path = private.dir().to_path_buf();
        assert!(path.is_dir());
        drop(private);
        assert!(!path.exists());
        assert!(free_disk_bytes(dir.path()).expect("statvfs") > 0);
    }
}
