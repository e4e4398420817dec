//! Free-space checks: a replica that hit a full disk stays fenced until a write with margin
//! succeeds, and a snapshot is not started that cannot fit.

use super::error::{Result, StorageError};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

/// Margin kept free beyond what the next write needs, and the size of the probe file.
pub const SPACE_MARGIN_BYTES: u64 = 4 << 20;

/// Name of the probe file (removed again at once; a leftover is overwritten by the next probe).
pub const PROBE_FILE_NAME: &str = "space-probe.tmp";

/// Bytes an unprivileged process may still write on the file system holding `dir`.
pub fn free_disk_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs is plain old data; all-zero is a valid value.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `stat` a writable statvfs.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// Proves the disk takes writes again, with margin: writes [`SPACE_MARGIN_BYTES`] to a probe
/// file in `dir`, fdatasyncs it and deletes it. A bare "open works" would unfence a replica
/// whose next batch fails again at once (flapping).
pub fn probe_write(dir: &Path) -> Result<()> {
    const CHUNK_BYTES: usize = 64 << 10;
    let path = dir.join(PROBE_FILE_NAME);
    let result = write_probe(&path, CHUNK_BYTES);
    // Always try to give the space back, also after a failed write.
    let removed = fs::remove_file(&path);
    result?;
    removed.map_err(|e| StorageError::io("remove space probe", &path, e))
}

fn write_probe(path: &Path, chunk_bytes: usize) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| StorageError::io("create space probe", path, e))?;
    let chunk = vec![0xA5u8; chunk_bytes];
    let mut left = SPACE_MARGIN_BYTES;
    while left > 0 {
        let n = left.min(chunk_bytes as u64) as usize;
        file.write_all(&chunk[..n])
            .map_err(|e| StorageError::io("write space probe", path, e))?;
        left -= n as u64;
    }
    file.sync_data()
        .map_err(|e| StorageError::io("fdatasync space probe", path, e))
}

/// Ok when `dir` has room for a snapshot about `last_snapshot_bytes` large plus the margin;
/// otherwise a message saying how much is missing (the caller postpones the snapshot).
pub fn check_snapshot_space(dir: &Path, last_snapshot_bytes: u64) -> Result<(), String> {
    let needed = last_snapshot_bytes.saturating_add(SPACE_MARGIN_BYTES);
    let free = free_disk_bytes(dir)
        .map_err(|e| format!("cannot check free space in {}: {e}", dir.display()))?;
    if free < needed {
        return Err(format!(
            "{free} bytes free in {}, a snapshot needs {needed} (last snapshot {last_snapshot_bytes} + {SPACE_MARGIN_BYTES} margin)",
            dir.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_leaves_nothing_behind() {
        let tmp = tempfile::TempDir::new().expect("tempdir");
        probe_write(tmp.path()).expect("probe");
        assert!(!tmp.path().join(PROBE_FILE_NAME).exists());
    }

    #[test]
    fn probe_in_a_missing_directory_fails() {
        let tmp = tempfile::TempDir::new().expect("tempdir");
        assert!(probe_write(&tmp.path().join("gone")).is_err());
    }

    #[test]
    fn snapshot_space_check_refuses_impossible_sizes() {
        let tmp = tempfile::TempDir::new().expect("tempdir");
        check_snapshot_space(tmp.path(), 0).expect("4 MiB free in a temp dir");
        let err = check_snapshot_space(tmp.path(), u64::MAX).expect_err("cannot fit");
        assert!(err.contains("a snapshot needs"), "{err}");
    }
}
