//! The write-ahead log: numbered segment files of framed records.

use super::error::{Result, StorageError};
use super::fault::{injected_error, FaultInjector};
use super::frame::{encode_frames, parse_segment};
use super::fsutil::{ensure_dir, fsync_dir, list_numbered, remove_if_present};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

const SEGMENT_PREFIX: &str = "wal-";
const SEGMENT_SUFFIX: &str = ".log";

/// An append buffer that grew past this is released after use, to bound idle memory.
const RETAINED_BUFFER_BYTES: usize = 4 << 20;

/// Path of WAL segment `index` in `dir`: `wal-{index:016}.log`.
pub fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{SEGMENT_PREFIX}{index:016}{SEGMENT_SUFFIX}"))
}

/// How to open a [`Wal`].
#[derive(Clone, Debug, Default)]
pub struct WalOptions {
    /// First segment to replay: the `wal_segment_start` of the snapshot that was loaded, or 0
    /// without a snapshot. Older segment files are ignored (and removed by
    /// [`Wal::remove_segments_below`]). Segments from this one on must be contiguous.
    pub from_segment: u64,
    /// Failure injection; inert unless armed.
    pub faults: FaultInjector,
}

/// A write-ahead log of records of type `R`.
///
/// Appends go to the newest segment. [`Wal::append`] only writes; durability comes from
/// [`Wal::sync`] (one `fdatasync`), so callers append a batch and sync once (group commit).
///
/// After any failed write, sync or rotation the tail of the file is unknown, so the log is
/// *poisoned*: every later call fails with [`StorageError::Poisoned`]. To recover, call
/// [`Wal::cut_unsynced_tail`] (until it succeeds), drop the log and call [`Wal::open`] again.
/// The cut matters: after a failed `fdatasync` Linux marks the dirty pages clean, so a reopen
/// would read records from the page cache that never reached the disk and a power loss could
/// later take back. Every record that a successful [`Wal::sync`] covered survives this.
#[derive(Debug)]
pub struct Wal<R> {
    dir: PathBuf,
    /// The newest segment, opened for appending.
    file: File,
    path: PathBuf,
    index: u64,
    /// Size in bytes of every live segment (index >= the replay start), by index.
    sizes: BTreeMap<u64, u64>,
    /// Length of the current segment known durable (covered by a successful sync).
    synced_len: u64,
    /// Bytes written since the last sync.
    dirty: bool,
    poisoned: Option<String>,
    faults: FaultInjector,
    buf: Vec<u8>,
    _records: PhantomData<fn(R) -> R>,
}

impl<R: Serialize + DeserializeOwned> Wal<R> {
    /// Opens the log in `dir`, replaying every segment with index >= `options.from_segment`.
    ///
    /// Returns the log, positioned to append at the end of the newest segment, and every
    /// record in order. A torn final record in the newest segment is truncated away (with a
    /// warning naming file and offset); any other damage, or a missing segment, is
    /// [`StorageError::Corrupt`] and nothing is returned. The rule is documented in
    /// the `frame` module. If no segment exists, segment `from_segment` is created.
    ///
    /// Memory: one segment's bytes plus the decoded records.
    pub fn open(dir: impl AsRef<Path>, options: WalOptions) -> Result<(Wal<R>, Vec<R>)> {
        let dir = dir.as_ref().to_path_buf();
        ensure_dir(&dir)?;
        let segments: Vec<(u64, PathBuf)> = list_numbered(&dir, SEGMENT_PREFIX, SEGMENT_SUFFIX)?
            .into_iter()
            .filter(|(index, _)| *index >= options.from_segment)
            .collect();
        check_contiguous(&dir, options.from_segment, &segments)?;

        let mut sizes = BTreeMap::new();
        let mut records = Vec::new();
        let last = segments.len().checked_sub(1);
        for (position, (index, path)) in segments.iter().enumerate() {
            let is_last = Some(position) == last;
            let bytes =
                fs::read(path).map_err(|e| StorageError::io("read WAL segment", path, e))?;
            let parsed = parse_segment::<R>(&bytes, path, is_last)?;
            drop(bytes);
            if let Some(reason) = &parsed.torn_reason {
                tracing::warn!(
                    file = %path.display(),
                    offset = parsed.valid_len,
                    "WAL segment has a torn final record ({reason}); truncating it at offset {}",
                    parsed.valid_len
                );
                truncate(path, parsed.valid_len)?;
            }
            records.extend(parsed.records);
            sizes.insert(*index, parsed.valid_len);
        }

        let (index, path, file) = match segments.last() {
            Some((index, path)) => {
                let file = open_append(path)?;
                // After a process crash the tail may live only in the page cache: make it
                // durable before anything we say depends on it.
                file.sync_data()
                    .map_err(|e| StorageError::io("fdatasync newest WAL segment", path, e))?;
                (*index, path.clone(), file)
            }
            None => {
                let index = options.from_segment;
                let path = segment_path(&dir, index);
                let file = create_segment(&path)?;
                file.sync_all()
                    .map_err(|e| StorageError::io("fsync new WAL segment", &path, e))?;
                fsync_dir(&dir)?;
                sizes.insert(index, 0);
                (index, path, file)
            }
        };
        let synced_len = sizes.get(&index).copied().unwrap_or(0);
        let wal = Wal {
            dir,
            file,
            path,
            index,
            sizes,
            synced_len,
            dirty: false,
            poisoned: None,
            faults: options.faults,
            buf: Vec::new(),
            _records: PhantomData,
        };
        Ok((wal, records))
    }

    /// Writes `records` to the end of the log with one `write_all`. Not durable until
    /// [`Wal::sync`]. An empty slice does nothing.
    ///
    /// A record that does not encode, encodes to nothing, or is larger than
    /// [`super::MAX_RECORD_BYTES`] fails the whole batch before anything is written, and the
    /// log stays usable. A failed write poisons the log.
    pub fn append(&mut self, records: &[R]) -> Result<()> {
        self.check_usable()?;
        if records.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        let encoded = encode_frames(records, &mut self.buf);
        if let Err(e) = encoded {
            self.release_buffer();
            return Err(e);
        }
        let written = self.write_buf();
        self.release_buffer();
        written
    }

    /// Makes everything appended so far durable with one `fdatasync`. A failure poisons the
    /// log: which appended bytes reached the disk is then unknown.
    pub fn sync(&mut self) -> Result<()> {
        self.check_usable()?;
        if self.faults.take_sync_fault() {
            return Err(self.poison("fdatasync WAL segment", injected_error()));
        }
        if !self.dirty {
            return Ok(());
        }
        if let Err(e) = self.file.sync_data() {
            return Err(self.poison("fdatasync WAL segment", e));
        }
        self.dirty = false;
        self.synced_len = self.sizes.get(&self.index).copied().unwrap_or(0);
        Ok(())
    }

    /// After a failure: cuts the current segment back to the length known durable, deletes
    /// segment files a failed rotation left behind, and makes both durable. Call it (until
    /// it succeeds) before reopening; never reopen a log whose cut failed, as the reopen
    /// would trust bytes that may exist only in the page cache. Does nothing on a healthy log.
    pub fn cut_unsynced_tail(&mut self) -> Result<()> {
        if self.poisoned.is_none() {
            return Ok(());
        }
        let leftovers: Vec<(u64, PathBuf)> =
            list_numbered(&self.dir, SEGMENT_PREFIX, SEGMENT_SUFFIX)?
                .into_iter()
                .filter(|(number, _)| *number > self.index)
                .collect();
        for (_, path) in &leftovers {
            fs::remove_file(path)
                .map_err(|e| StorageError::io("remove half-made WAL segment", path, e))?;
        }
        self.file
            .set_len(self.synced_len)
            .map_err(|e| StorageError::io("cut unsynced tail of WAL segment", &self.path, e))?;
        self.file
            .sync_all()
            .map_err(|e| StorageError::io("fsync cut WAL segment", &self.path, e))?;
        fsync_dir(&self.dir)?;
        tracing::warn!(
            file = %self.path.display(),
            offset = self.synced_len,
            "WAL cut back to its last synced length after a failure"
        );
        self.sizes.insert(self.index, self.synced_len);
        self.dirty = false;
        Ok(())
    }

    /// Length of the current segment known durable.
    pub fn synced_len(&self) -> u64 {
        self.synced_len
    }

    /// [`Wal::append`] then [`Wal::sync`].
    pub fn append_and_sync(&mut self, records: &[R]) -> Result<()> {
        self.append(records)?;
        self.sync()
    }

    /// Syncs the current segment, starts segment `segment_index() + 1` holding exactly
    /// `first_records` (the caller re-logs the live state there), makes the new file and its
    /// directory entry durable, and returns the new index. Older segments stay until
    /// [`Wal::remove_segments_below`].
    ///
    /// If `first_records` cannot be encoded nothing happens; any I/O failure poisons the log.
    pub fn rotate(&mut self, first_records: &[R]) -> Result<u64> {
        self.check_usable()?;
        self.buf.clear();
        if let Err(e) = encode_frames(first_records, &mut self.buf) {
            self.release_buffer();
            return Err(e);
        }
        let rotated = self.rotate_with_buf();
        self.release_buffer();
        rotated
    }

    /// Deletes every segment file with an index below `index` (never the current segment),
    /// including leftovers older than the replay start, then syncs the directory.
    ///
    /// Works on a poisoned log too: it touches only files older than the current segment,
    /// which a durable snapshot made obsolete, and a full disk needs that space back.
    pub fn remove_segments_below(&mut self, index: u64) -> Result<()> {
        debug_assert!(index <= self.index, "cannot remove the active WAL segment");
        remove_segments_below(&self.dir, index.min(self.index))?;
        self.forget_segments_below(index);
        Ok(())
    }

    /// Stops counting segments below `index` in [`Wal::size_bytes`]: someone else (the
    /// snapshot writer's thread) removed their files. Touches no file.
    pub fn forget_segments_below(&mut self, index: u64) {
        let index = index.min(self.index);
        self.sizes.retain(|number, _| *number >= index);
    }

    /// Total bytes of the live segments (those replayed or written by this log and not yet
    /// removed).
    pub fn size_bytes(&self) -> u64 {
        self.sizes.values().sum()
    }

    /// Index of the segment being appended to.
    pub fn segment_index(&self) -> u64 {
        self.index
    }

    /// Path of the segment being appended to.
    pub fn segment_path(&self) -> &Path {
        &self.path
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Why the log is poisoned, if it is.
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    fn check_usable(&self) -> Result<()> {
        match &self.poisoned {
            Some(reason) => Err(StorageError::Poisoned {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Records the failure, poisons the log and returns the error to report.
    fn poison(&mut self, op: &'static str, source: std::io::Error) -> StorageError {
        let error = StorageError::io(op, &self.path, source);
        tracing::error!(file = %self.path.display(), "WAL poisoned: {error}");
        self.poisoned = Some(error.to_string());
        error
    }

    /// Writes `self.buf` to the current segment.
    fn write_buf(&mut self) -> Result<()> {
        let len = self.buf.len();
        if let Some(after) = self.faults.take_append_fault() {
            let partial = after.min(len);
            self.dirty = true;
            if let Err(e) = self.file.write_all(&self.buf[..partial]) {
                return Err(self.poison("append to WAL segment", e));
            }
            return Err(self.poison("append to WAL segment", injected_error()));
        }
        self.dirty = true;
        if let Err(e) = self.file.write_all(&self.buf) {
            return Err(self.poison("append to WAL segment", e));
        }
        *self.sizes.entry(self.index).or_insert(0) += len as u64;
        Ok(())
    }

    fn rotate_with_buf(&mut self) -> Result<u64> {
        self.sync()?;
        let next = self.index + 1;
        let path = segment_path(&self.dir, next);
        // A failure after the create leaves a half-made file: `cut_unsynced_tail` removes it.
        let mut file = match create_segment(&path) {
            Ok(file) => file,
            Err(e) => return Err(self.poison_with(e)),
        };
        if let Err(e) = file.write_all(&self.buf) {
            return Err(self.poison_with(StorageError::io("write new WAL segment", &path, e)));
        }
        if let Err(e) = file.sync_all() {
            return Err(self.poison_with(StorageError::io("fsync new WAL segment", &path, e)));
        }
        if let Err(e) = fsync_dir(&self.dir) {
            return Err(self.poison_with(e));
        }
        self.file = file;
        self.path = path;
        self.index = next;
        self.sizes.insert(next, self.buf.len() as u64);
        self.synced_len = self.buf.len() as u64;
        self.dirty = false;
        Ok(next)
    }

    fn poison_with(&mut self, error: StorageError) -> StorageError {
        tracing::error!(file = %self.path.display(), "WAL poisoned: {error}");
        self.poisoned = Some(error.to_string());
        error
    }

    fn release_buffer(&mut self) {
        if self.buf.capacity() > RETAINED_BUFFER_BYTES {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
    }
}

/// Deletes every WAL segment file in `dir` with an index below `index`, then syncs the
/// directory; returns the indexes removed. For a store whose log could not be opened: the
/// caller must know a durable snapshot starts at `index` or later.
pub fn remove_segments_below(dir: &Path, index: u64) -> Result<Vec<u64>> {
    let doomed: Vec<(u64, PathBuf)> = list_numbered(dir, SEGMENT_PREFIX, SEGMENT_SUFFIX)?
        .into_iter()
        .filter(|(number, _)| *number < index)
        .collect();
    if doomed.is_empty() {
        return Ok(Vec::new());
    }
    for (_, path) in &doomed {
        remove_if_present(path, "remove WAL segment")?;
    }
    fsync_dir(dir)?;
    Ok(doomed.into_iter().map(|(number, _)| number).collect())
}

/// Segments at or after `from` must be `from, from + 1, ...` with no gap.
fn check_contiguous(dir: &Path, from: u64, segments: &[(u64, PathBuf)]) -> Result<()> {
    for (expected, (index, _)) in (from..).zip(segments) {
        if *index != expected {
            return Err(StorageError::corrupt(
                &segment_path(dir, expected),
                0,
                format!(
                    "WAL segment {expected} is missing (the next one found is {index}); \
                     records in it would be lost"
                ),
            ));
        }
    }
    Ok(())
}

fn create_segment(path: &Path) -> Result<File> {
    OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(path)
        .map_err(|e| StorageError::io("create WAL segment", path, e))
}

fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| StorageError::io("open WAL segment", path, e))
}

/// Cuts a torn tail off and makes the new length durable.
fn truncate(path: &Path, len: u64) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| StorageError::io("open WAL segment for truncation", path, e))?;
    file.set_len(len)
        .map_err(|e| StorageError::io("truncate torn tail of WAL segment", path, e))?;
    file.sync_all()
        .map_err(|e| StorageError::io("fsync truncated WAL segment", path, e))
}
