//! One process per replica directory, enforced with `flock`.

use super::error::{Result, StorageError};
use super::fsutil::ensure_dir;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Name of the lock file inside a replica directory.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// An exclusive lock on a replica directory, held until the value is dropped.
///
/// The lock is an advisory `flock(LOCK_EX | LOCK_NB)` on `dir/LOCK`. The kernel releases it
/// when the process dies (including `kill -9`), so a stale `LOCK` file never needs cleaning
/// up and is never deleted. Each [`DirLock::acquire`] opens its own file description, so a
/// second acquire of the same directory fails even inside the same process.
#[derive(Debug)]
pub struct DirLock {
    /// Keeps the lock alive; closing it releases the lock.
    _file: File,
    dir: PathBuf,
}

impl DirLock {
    /// Creates `dir` if it is missing and locks it.
    ///
    /// Fails with [`StorageError::Locked`] if another live holder (another process, or
    /// another `DirLock` in this one) has it.
    pub fn acquire(dir: impl AsRef<Path>) -> Result<DirLock> {
        let dir = dir.as_ref();
        ensure_dir(dir)?;
        let path = dir.join(LOCK_FILE_NAME);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StorageError::io("open lock file", &path, e))?;
        loop {
            // SAFETY: `file` is an open descriptor owned by this function for the whole call;
            // flock does not touch memory.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(code) if code == libc::EWOULDBLOCK || code == libc::EAGAIN => {
                    return Err(StorageError::Locked {
                        dir: dir.to_path_buf(),
                    });
                }
                _ => return Err(StorageError::io("flock", &path, err)),
            }
        }
        Ok(DirLock {
            _file: file,
            dir: dir.to_path_buf(),
        })
    }

    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_fails_until_first_is_dropped() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("replica-0");
        let first = DirLock::acquire(&dir).expect("first acquire");
        assert_eq!(first.dir(), dir.as_path());
        assert!(dir.join(LOCK_FILE_NAME).exists());
        match DirLock::acquire(&dir) {
            Err(StorageError::Locked { dir: locked }) => assert_eq!(locked, dir),
            other => panic!("expected Locked, got {other:?}"),
        }
        let message = DirLock::acquire(&dir).unwrap_err().to_string();
        assert!(
            message.contains("another server is using that replica directory"),
            "{message}"
        );
        assert!(message.contains(&dir.display().to_string()), "{message}");
        drop(first);
        let again = DirLock::acquire(&dir).expect("acquire after drop");
        drop(again);
    }

    #[test]
    fn different_directories_do_not_conflict() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let _a = DirLock::acquire(tmp.path().join("a")).expect("a");
        let _b = DirLock::acquire(tmp.path().join("b")).expect("b");
    }
}
