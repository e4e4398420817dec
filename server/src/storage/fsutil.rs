//! Small file-system helpers shared by the WAL and the snapshot code.

use super::error::{Result, StorageError};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

/// Makes the directory entries of `dir` durable (after create, rename or unlink inside it).
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    let handle = File::open(dir).map_err(|e| StorageError::io("open directory", dir, e))?;
    handle
        .sync_all()
        .map_err(|e| StorageError::io("fsync directory", dir, e))
}

/// Removes `path`; one that is already gone is fine. Two snapshot writers (our own and one
/// received from a peer) may clean up the same old files at once.
pub(crate) fn remove_if_present(path: &Path, op: &'static str) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StorageError::io(op, path, e)),
        _ => Ok(()),
    }
}

/// Creates `dir` (and parents) if it does not exist, and makes each new directory entry
/// durable by syncing its parent: without that a power loss can take back a replica
/// directory whose files were all synced.
pub(crate) fn ensure_dir(dir: &Path) -> Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|a| !a.exists()).collect();
    fs::create_dir_all(dir).map_err(|e| StorageError::io("create directory", dir, e))?;
    // Deepest first, so each parent is synced after its child's entry was made.
    for created in missing {
        if let Some(parent) = created.parent() {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            fsync_dir(parent)?;
        }
    }
    Ok(())
}

/// Lists the regular entries of `dir` whose names are `{prefix}{16 digits}{suffix}`, as
/// `(number, path)` pairs in ascending order. Names that do not match exactly are skipped.
pub(crate) fn list_numbered(dir: &Path, prefix: &str, suffix: &str) -> Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| StorageError::io("list directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io("list directory", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(number) = parse_numbered(name, prefix, suffix) {
            found.push((number, entry.path()));
        }
    }
    found.sort_unstable_by_key(|(number, _)| *number);
    Ok(found)
}

/// `{prefix}{16 decimal digits}{suffix}` -> the number.
fn parse_numbered(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if digits.len() != 16 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_numbered;

    #[test]
    fn parses_only_exact_names() {
        assert_eq!(
            parse_numbered("wal-0000000000000012.log", "wal-", ".log"),
            Some(12)
        );
        assert_eq!(parse_numbered("wal-12.log", "wal-", ".log"), None);
        assert_eq!(
            parse_numbered("wal-000000000000001x.log", "wal-", ".log"),
            None
        );
        assert_eq!(
            parse_numbered("wal-0000000000000012.log.bak", "wal-", ".log"),
            None
        );
        assert_eq!(
            parse_numbered("snap-0000000000000012.snap", "wal-", ".log"),
            None
        );
    }
}
