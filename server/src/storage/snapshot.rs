//! Snapshots: the applied state up to a slot, written atomically (temp file, fsync, rename,
//! fsync directory).
//!
//! File `snap-{slot:016}.snap`:
//!
//! ```text
//! magic    8 bytes  "PXKVSNP1"
//! crc32c   u32 LE   of the body
//! len      u64 LE   of the body (== file length - 20)
//! body     bincode 1.3 (varint, little endian) of SnapshotMeta, then of S
//! ```
//!
//! Writing and loading stream through large buffers and compute the checksum on whole chunks,
//! so a 100 MB snapshot costs roughly one pass of (de)serialization.

use super::error::{Result, StorageError};
use super::fsutil::{fsync_dir, list_numbered, remove_if_present};
use bincode::Options;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// First bytes of every snapshot file (format version 1).
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"PXKVSNP1";

/// Bytes before the body: magic, checksum, length.
pub const SNAPSHOT_HEADER_BYTES: usize = 8 + 4 + 8;

/// Largest snapshot body accepted, in bytes.
pub const MAX_SNAPSHOT_BYTES: u64 = 16 << 30;

/// I/O buffer size for snapshot reads and writes.
const IO_BUFFER_BYTES: usize = 1 << 20;

/// While writing, start writeback every this many bytes and wait for the previous range, so
/// dirty pages never pile up into one huge final fsync that queues the WAL's fdatasync
/// behind ~100 MB of snapshot on the same disk.
const WRITEBACK_CHUNK_BYTES: u64 = 8 << 20;

/// Nice value of threads that encode snapshots (see [`run_at_low_priority`]).
const LOW_PRIORITY_NICE: libc::c_int = 10;

const SNAPSHOT_PREFIX: &str = "snap-";
const SNAPSHOT_SUFFIX: &str = ".snap";
const TEMP_SUFFIX: &str = ".tmp";

/// What a snapshot covers, stored in front of the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Last slot (or sequence number) included in the snapshot.
    pub slot: u64,
    /// First WAL segment needed on top of this snapshot: pass it as
    /// [`super::WalOptions::from_segment`].
    pub wal_segment_start: u64,
}

/// Path of the snapshot of `slot` in `dir`.
pub fn snapshot_path(dir: &Path, slot: u64) -> PathBuf {
    dir.join(format!("{SNAPSHOT_PREFIX}{slot:016}{SNAPSHOT_SUFFIX}"))
}

fn temp_path(dir: &Path, slot: u64) -> PathBuf {
    dir.join(format!("{SNAPSHOT_PREFIX}{slot:016}{TEMP_SUFFIX}"))
}

/// bincode 1.3 configuration for decoding; `limit` bounds every allocation by the body size.
fn decode_codec(limit: u64) -> impl Options {
    bincode::DefaultOptions::new()
        .with_little_endian()
        .with_varint_encoding()
        .with_limit(limit)
}

/// The same encoding without a limit (a bincode limit costs a second sizing pass; the size is
/// bounded by [`CrcWriter`] instead).
fn encode_codec() -> impl Options {
    bincode::DefaultOptions::new()
        .with_little_endian()
        .with_varint_encoding()
        .with_no_limit()
}

/// Writes the snapshot of `slot` atomically and deletes older snapshots.
///
/// Steps: stream `snap-{slot}.tmp`, fsync it, rename it to `snap-{slot}.snap`, fsync the
/// directory, then remove older `.snap` files and stray `.tmp` files and fsync the directory
/// again. A crash at any point leaves either the old snapshot or the new one loadable.
///
/// Callers typically [`super::Wal::rotate`] first, pass the new segment index as
/// `wal_segment_start`, and call [`super::Wal::remove_segments_below`] afterwards.
pub fn write_snapshot<S: Serialize>(
    dir: &Path,
    slot: u64,
    snapshot: &S,
    wal_segment_start: u64,
) -> Result<SnapshotMeta> {
    let meta = SnapshotMeta {
        slot,
        wal_segment_start,
    };
    let tmp = temp_path(dir, slot);
    if let Err(e) = write_temp(&tmp, &meta, snapshot) {
        // Best effort: the leftover would be removed by the next load anyway.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    let path = snapshot_path(dir, slot);
    fs::rename(&tmp, &path)
        .map_err(|e| StorageError::io("rename snapshot into place", &path, e))?;
    fsync_dir(dir)?;

    let mut removed = false;
    for (older, old_path) in list_numbered(dir, SNAPSHOT_PREFIX, SNAPSHOT_SUFFIX)? {
        if older < slot {
            remove_if_present(&old_path, "remove old snapshot")?;
            removed = true;
        }
    }
    // Only older ones: a snapshot received from a peer (a later slot) may be streaming into
    // its temp file on another thread right now.
    removed |= remove_temp_files(dir, slot)?;
    if removed {
        fsync_dir(dir)?;
    }
    Ok(meta)
}

fn write_temp<S: Serialize>(tmp: &Path, meta: &SnapshotMeta, snapshot: &S) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)
        .map_err(|e| StorageError::io("create snapshot file", tmp, e))?;
    let mut out = BufWriter::with_capacity(
        IO_BUFFER_BYTES,
        CrcWriter {
            file,
            crc: 0,
            written: 0,
            over_limit: false,
            writeback_from: 0,
        },
    );
    out.write_all(&[0u8; SNAPSHOT_HEADER_BYTES])
        .map_err(|e| StorageError::io("write snapshot", tmp, e))?;
    let encoded = encode_codec()
        .serialize_into(&mut out, meta)
        .and_then(|()| encode_codec().serialize_into(&mut out, snapshot));
    if let Err(e) = encoded {
        if out.get_ref().over_limit {
            return Err(StorageError::TooLarge {
                size_bytes: MAX_SNAPSHOT_BYTES + 1,
                max_bytes: MAX_SNAPSHOT_BYTES,
            });
        }
        return Err(match *e {
            bincode::ErrorKind::Io(source) => StorageError::io("write snapshot", tmp, source),
            other => StorageError::Encode {
                what: "snapshot",
                reason: other.to_string(),
            },
        });
    }
    let writer = out
        .into_inner()
        .map_err(|e| StorageError::io("write snapshot", tmp, e.into_error()))?;
    let body_len = writer.written - SNAPSHOT_HEADER_BYTES as u64;
    if body_len > MAX_SNAPSHOT_BYTES {
        return Err(StorageError::TooLarge {
            size_bytes: body_len,
            max_bytes: MAX_SNAPSHOT_BYTES,
        });
    }
    let body_crc = writer.crc;
    let mut file = writer.file;
    let mut header = [0u8; SNAPSHOT_HEADER_BYTES];
    header[..8].copy_from_slice(&SNAPSHOT_MAGIC);
    header[8..12].copy_from_slice(&body_crc.to_le_bytes());
    header[12..20].copy_from_slice(&body_len.to_le_bytes());
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.write_all(&header))
        .map_err(|e| StorageError::io("write snapshot header", tmp, e))?;
    let started = std::time::Instant::now();
    file.sync_all()
        .map_err(|e| StorageError::io("fsync snapshot", tmp, e))?;
    tracing::debug!(
        file = %tmp.display(),
        bytes = body_len,
        fsync_ms = started.elapsed().as_millis() as u64,
        "snapshot written"
    );
    Ok(())
}

/// Runs `f` on a fresh thread with a lower CPU priority (nice 10) and waits for it.
///
/// Encoding a 1M-key snapshot keeps a core busy for about a second; on a small machine at
/// normal priority it competes with the driver and the WAL sync threads and shows up as put
/// latency. A fresh thread is used because a pooled (tokio blocking) thread could not raise
/// its priority back afterwards without privileges.
pub fn run_at_low_priority<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    let mut task = Some(f);
    let done = std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("snapshot-encode".into())
            .spawn_scoped(scope, || {
                lower_this_thread_priority();
                task.take().map(|f| f())
            });
        match worker.map(|handle| handle.join()) {
            Ok(Ok(value)) => value,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => None, // No thread to be had: run it here below.
        }
    });
    match (done, task.take()) {
        (Some(value), _) => value,
        (None, Some(f)) => f(),
        (None, None) => unreachable!("the task either ran on the thread or is still here"),
    }
}

#[cfg(target_os = "linux")]
fn lower_this_thread_priority() {
    // SAFETY: plain syscalls on the calling thread; failure only leaves the priority as is.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let _ = libc::setpriority(libc::PRIO_PROCESS, tid, LOW_PRIORITY_NICE);
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_this_thread_priority() {}

/// Starts writeback of `[from, to)` of `file` and waits for the range before it (the usual
/// `sync_file_range` pipeline). Only a hint to the page cache: durability still comes from
/// the final `sync_all`, so errors are ignored here and surface there.
#[cfg(target_os = "linux")]
fn write_back(file: &File, from: u64, to: u64) {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let len = (to - from) as libc::off64_t;
    // SAFETY: fd is open for the lifetime of `file`; ranges are within what was written.
    unsafe {
        let _ = libc::sync_file_range(fd, from as libc::off64_t, len, libc::SYNC_FILE_RANGE_WRITE);
        if from >= WRITEBACK_CHUNK_BYTES {
            let _ = libc::sync_file_range(
                fd,
                (from - WRITEBACK_CHUNK_BYTES) as libc::off64_t,
                WRITEBACK_CHUNK_BYTES as libc::off64_t,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            );
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn write_back(_file: &File, _from: u64, _to: u64) {}

/// Counts and checksums what passes through to the file; the header (first
/// [`SNAPSHOT_HEADER_BYTES`]) is counted but not checksummed.
struct CrcWriter {
    file: File,
    crc: u32,
    written: u64,
    /// Set when a write would have passed [`MAX_SNAPSHOT_BYTES`].
    over_limit: bool,
    /// Start of the range not yet handed to writeback.
    writeback_from: u64,
}

impl Write for CrcWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written.saturating_add(buf.len() as u64)
            > MAX_SNAPSHOT_BYTES + SNAPSHOT_HEADER_BYTES as u64
        {
            self.over_limit = true;
            return Err(io::Error::other(format!(
                "snapshot exceeds the limit of {MAX_SNAPSHOT_BYTES} bytes"
            )));
        }
        let n = self.file.write(buf)?;
        let header_left = (SNAPSHOT_HEADER_BYTES as u64).saturating_sub(self.written) as usize;
        if n > header_left {
            self.crc = crc32c::crc32c_append(self.crc, &buf[header_left..n]);
        }
        self.written += n as u64;
        if self.written - self.writeback_from >= WRITEBACK_CHUNK_BYTES {
            let to = self.writeback_from + WRITEBACK_CHUNK_BYTES;
            write_back(&self.file, self.writeback_from, to);
            self.writeback_from = to;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Loads the newest snapshot in `dir`, or `None` if there is none (or no directory).
///
/// Leftover `.tmp` files from an interrupted write are removed first. If the newest snapshot
/// is damaged this fails with [`StorageError::Corrupt`] naming it; it never falls back to an
/// older one silently.
pub fn load_latest_snapshot<S: DeserializeOwned>(dir: &Path) -> Result<Option<(S, SnapshotMeta)>> {
    if !dir.exists() {
        return Ok(None);
    }
    if remove_temp_files(dir, u64::MAX)? {
        fsync_dir(dir)?;
    }
    let Some((slot, path)) = list_numbered(dir, SNAPSHOT_PREFIX, SNAPSHOT_SUFFIX)?.pop() else {
        return Ok(None);
    };
    let (snapshot, meta) = read_snapshot::<S>(&path)?;
    if meta.slot != slot {
        return Err(StorageError::corrupt(
            &path,
            0,
            format!(
                "file name says slot {slot} but the snapshot says {}",
                meta.slot
            ),
        ));
    }
    Ok(Some((snapshot, meta)))
}

/// Reads and verifies one snapshot file.
pub fn read_snapshot<S: DeserializeOwned>(path: &Path) -> Result<(S, SnapshotMeta)> {
    let mut file = File::open(path).map_err(|e| StorageError::io("open snapshot", path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| StorageError::io("stat snapshot", path, e))?
        .len();
    let mut header = [0u8; SNAPSHOT_HEADER_BYTES];
    if file_len < SNAPSHOT_HEADER_BYTES as u64 {
        return Err(StorageError::corrupt(
            path,
            0,
            format!("file of {file_len} bytes is shorter than the snapshot header"),
        ));
    }
    file.read_exact(&mut header)
        .map_err(|e| StorageError::io("read snapshot header", path, e))?;
    if header[..8] != SNAPSHOT_MAGIC {
        return Err(StorageError::corrupt(
            path,
            0,
            "bad magic: not a paxoskv snapshot (version 1)",
        ));
    }
    let mut crc_bytes = [0u8; 4];
    crc_bytes.copy_from_slice(&header[8..12]);
    let stored_crc = u32::from_le_bytes(crc_bytes);
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&header[12..20]);
    let body_len = u64::from_le_bytes(len_bytes);
    let actual_len = file_len - SNAPSHOT_HEADER_BYTES as u64;
    if body_len != actual_len || body_len > MAX_SNAPSHOT_BYTES {
        return Err(StorageError::corrupt(
            path,
            12,
            format!("header says the body is {body_len} bytes but the file holds {actual_len}"),
        ));
    }

    let mut reader = CrcReader::new(file, body_len);
    let decoded = decode_codec(body_len)
        .deserialize_from::<_, SnapshotMeta>(&mut reader)
        .and_then(|meta| {
            let snapshot = decode_codec(body_len).deserialize_from::<_, S>(&mut reader)?;
            Ok((snapshot, meta))
        });
    // Read whatever the decoder left, so the checksum covers the whole body.
    let trailing = io::copy(&mut reader, &mut io::sink())
        .map_err(|e| StorageError::io("read snapshot", path, e))?;
    let body_offset = SNAPSHOT_HEADER_BYTES as u64;
    if reader.crc != stored_crc {
        return Err(StorageError::corrupt(
            path,
            body_offset,
            format!(
                "checksum mismatch (stored {stored_crc:#010x}, computed {:#010x})",
                reader.crc
            ),
        ));
    }
    let (snapshot, meta) = match decoded {
        Ok(decoded) => decoded,
        Err(e) => {
            return Err(match *e {
                bincode::ErrorKind::Io(source) if source.kind() != io::ErrorKind::UnexpectedEof => {
                    StorageError::io("read snapshot", path, source)
                }
                other => StorageError::corrupt(
                    path,
                    body_offset,
                    format!("checksum is valid but the body does not decode ({other}); written by an incompatible version?"),
                ),
            });
        }
    };
    if trailing != 0 {
        return Err(StorageError::corrupt(
            path,
            body_offset,
            format!("{trailing} unexpected bytes after the snapshot body"),
        ));
    }
    Ok((snapshot, meta))
}

/// Removes `snap-*.tmp` leftovers; returns whether any was removed.
/// Removes the temp files of snapshots below `below_slot`.
fn remove_temp_files(dir: &Path, below_slot: u64) -> Result<bool> {
    let leftovers: Vec<_> = list_numbered(dir, SNAPSHOT_PREFIX, TEMP_SUFFIX)?
        .into_iter()
        .filter(|(slot, _)| *slot < below_slot)
        .collect();
    for (_, path) in &leftovers {
        tracing::warn!(file = %path.display(), "removing leftover temporary snapshot file");
        remove_if_present(path, "remove temporary snapshot")?;
    }
    Ok(!leftovers.is_empty())
}

/// Buffered reader over the body that checksums each chunk as it is read from the file and
/// never reads past the body.
struct CrcReader {
    file: File,
    buf: Box<[u8]>,
    pos: usize,
    filled: usize,
    /// Body bytes not yet read from the file.
    remaining: u64,
    crc: u32,
}

impl CrcReader {
    fn new(file: File, body_len: u64) -> CrcReader {
        CrcReader {
            file,
            buf: vec![0u8; IO_BUFFER_BYTES].into_boxed_slice(),
            pos: 0,
            filled: 0,
            remaining: body_len,
            crc: 0,
        }
    }

    /// Refills the buffer; leaves it empty at the end of the body.
    fn refill(&mut self) -> io::Result<()> {
        self.pos = 0;
        self.filled = 0;
        let want = self.remaining.min(self.buf.len() as u64) as usize;
        if want == 0 {
            return Ok(());
        }
        let n = loop {
            match self.file.read(&mut self.buf[..want]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "snapshot file ended before its body did",
                    ))
                }
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        self.crc = crc32c::crc32c_append(self.crc, &self.buf[..n]);
        self.remaining -= n as u64;
        self.filled = n;
        Ok(())
    }
}

impl Read for CrcReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.filled {
            self.refill()?;
        }
        let n = out.len().min(self.filled - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }

    fn read_exact(&mut self, out: &mut [u8]) -> io::Result<()> {
        // Fast path: the decoder asks for a few bytes at a time.
        let end = self.pos + out.len();
        if end <= self.filled {
            out.copy_from_slice(&self.buf[self.pos..end]);
            self.pos = end;
            return Ok(());
        }
        let mut done = 0;
        while done < out.len() {
            let n = self.read(&mut out[done..])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "snapshot body ended early",
                ));
            }
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tempfile::TempDir;

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    struct State {
        map: HashMap<String, Vec<u8>>,
        sessions: HashMap<u64, (u64, String)>,
        through: u64,
    }

    fn state(n: u64) -> State {
        State {
            map: (0..n)
                .map(|i| (format!("key-{i}"), vec![i as u8; 10]))
                .collect(),
            sessions: (0..3).map(|c| (c, (c * 10, format!("ok {c}")))).collect(),
            through: n,
        }
    }

    #[test]
    fn round_trip_and_older_snapshots_are_deleted() {
        let tmp = TempDir::new().expect("tempdir");
        let dir = tmp.path();
        assert!(load_latest_snapshot::<State>(dir).expect("load").is_none());
        assert!(load_latest_snapshot::<State>(&dir.join("absent"))
            .expect("load")
            .is_none());

        let meta = write_snapshot(dir, 10, &state(10), 3).expect("write");
        assert_eq!(
            meta,
            SnapshotMeta {
                slot: 10,
                wal_segment_start: 3
            }
        );
        let (loaded, meta) = load_latest_snapshot::<State>(dir)
            .expect("load")
            .expect("some");
        assert_eq!(loaded, state(10));
        assert_eq!(
            meta,
            SnapshotMeta {
                slot: 10,
                wal_segment_start: 3
            }
        );

        write_snapshot(dir, 25, &state(25), 5).expect("write");
        assert!(!snapshot_path(dir, 10).exists());
        let (loaded, meta) = load_latest_snapshot::<State>(dir)
            .expect("load")
            .expect("some");
        assert_eq!(loaded, state(25));
        assert_eq!(
            meta,
            SnapshotMeta {
                slot: 25,
                wal_segment_start: 5
            }
        );
        let names: Vec<String> = fs::read_dir(dir)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["snap-0000000000000025.snap".to_string()]);
    }

    #[test]
    fn flipped_byte_anywhere_is_refused_naming_the_file() {
        let tmp = TempDir::new().expect("tempdir");
        let dir = tmp.path();
        write_snapshot(dir, 7, &state(4), 1).expect("write");
        let path = snapshot_path(dir, 7);
        let good = fs::read(&path).expect("read");
        for pos in 0..good.len() {
            let mut damaged = good.clone();
            damaged[pos] ^= 0x20;
            fs::write(&path, &damaged).expect("write");
            match load_latest_snapshot::<State>(dir) {
                Err(e @ StorageError::Corrupt { .. }) => {
                    let message = e.to_string();
                    assert!(message.contains(&path.display().to_string()), "{message}");
                }
                other => panic!("flip at {pos}: expected Corrupt, got {other:?}"),
            }
        }
        // Truncated at any length: refused as well.
        for len in [0, 5, SNAPSHOT_HEADER_BYTES, good.len() - 1] {
            fs::write(&path, &good[..len]).expect("write");
            assert!(
                matches!(
                    load_latest_snapshot::<State>(dir),
                    Err(StorageError::Corrupt { .. })
                ),
                "truncated to {len}"
            );
        }
        fs::write(&path, &good).expect("restore");
        assert_eq!(
            load_latest_snapshot::<State>(dir)
                .expect("load")
                .expect("some")
                .0,
            state(4)
        );
    }

    #[test]
    fn damaged_newest_snapshot_does_not_fall_back_to_an_older_one() {
        let tmp = TempDir::new().expect("tempdir");
        let dir = tmp.path();
        write_snapshot(dir, 5, &state(5), 1).expect("write");
        let older = fs::read(snapshot_path(dir, 5)).expect("read");
        write_snapshot(dir, 9, &state(9), 2).expect("write");
        fs::write(snapshot_path(dir, 5), older).expect("put the older one back");
        let newest = snapshot_path(dir, 9);
        let mut bytes = fs::read(&newest).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&newest, bytes).expect("write");
        match load_latest_snapshot::<State>(dir) {
            Err(StorageError::Corrupt { file, .. }) => assert_eq!(file, newest),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn leftover_temp_files_are_ignored_and_removed() {
        let tmp = TempDir::new().expect("tempdir");
        let dir = tmp.path();
        write_snapshot(dir, 3, &state(3), 0).expect("write");
        // An interrupted write of a newer snapshot.
        let leftover = dir.join("snap-0000000000000008.tmp");
        fs::write(&leftover, b"half a snapshot").expect("write");
        let (loaded, meta) = load_latest_snapshot::<State>(dir)
            .expect("load")
            .expect("some");
        assert_eq!((loaded, meta.slot), (state(3), 3));
        assert!(!leftover.exists());
        // A leftover with only a .tmp and no complete snapshot: no snapshot at all.
        let empty = TempDir::new().expect("tempdir");
        let only_tmp = empty.path().join("snap-0000000000000001.tmp");
        fs::write(&only_tmp, b"x").expect("write");
        assert!(load_latest_snapshot::<State>(empty.path())
            .expect("load")
            .is_none());
        assert!(!only_tmp.exists());
    }

    #[test]
    fn wrong_type_with_valid_checksum_is_reported_as_undecodable() {
        let tmp = TempDir::new().expect("tempdir");
        let dir = tmp.path();
        write_snapshot(dir, 1, &vec![1u8, 2, 3], 0).expect("write");
        match load_latest_snapshot::<State>(dir) {
            Err(StorageError::Corrupt { reason, .. }) => {
                assert!(
                    reason.contains("does not decode") || reason.contains("unexpected bytes"),
                    "{reason}"
                )
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn large_snapshot_spans_many_buffers() {
        let tmp = TempDir::new().expect("tempdir");
        let big = State {
            map: (0..20_000u32)
                .map(|i| (format!("k{i}"), i.to_le_bytes().repeat(40)))
                .collect(),
            sessions: HashMap::new(),
            through: 1,
        };
        write_snapshot(tmp.path(), 1, &big, 0).expect("write");
        assert!(
            fs::metadata(snapshot_path(tmp.path(), 1))
                .expect("stat")
                .len()
                > 3 * IO_BUFFER_BYTES as u64
        );
        let (loaded, _) = load_latest_snapshot::<State>(tmp.path())
            .expect("load")
            .expect("some");
        assert_eq!(loaded, big);
    }

    #[test]
    fn snapshot_larger_than_several_writeback_chunks_round_trips() {
        let tmp = TempDir::new().expect("tempdir");
        let big = State {
            map: (0..100_000u32)
                .map(|i| (format!("k{i}"), i.to_le_bytes().repeat(64)))
                .collect(),
            sessions: HashMap::new(),
            through: 3,
        };
        write_snapshot(tmp.path(), 3, &big, 0).expect("write");
        let len = fs::metadata(snapshot_path(tmp.path(), 3))
            .expect("stat")
            .len();
        assert!(len > 2 * WRITEBACK_CHUNK_BYTES, "{len} bytes");
        let (loaded, meta) = load_latest_snapshot::<State>(tmp.path())
            .expect("load")
            .expect("some");
        assert_eq!(meta.slot, 3);
        assert_eq!(loaded, big);
    }

    #[cfg(target_os = "linux")]
    fn this_thread_nice() -> libc::c_int {
        // SAFETY: plain syscalls on the calling thread.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::getpriority(libc::PRIO_PROCESS, tid)
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn low_priority_work_runs_niced_and_leaves_the_caller_alone() {
        let before = this_thread_nice();
        let (inside, value) = run_at_low_priority(|| (this_thread_nice(), 42));
        assert_eq!(value, 42);
        assert!(inside >= LOW_PRIORITY_NICE, "nice {inside}");
        assert_eq!(this_thread_nice(), before);
    }
}
