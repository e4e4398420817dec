//! The one error type of the storage layer.

use std::io;
use std::path::{Path, PathBuf};

/// Why a storage operation failed. Every variant names the file or directory involved so an
/// operator can act on the message alone.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Another live process holds the lock on this replica directory.
    #[error(
        "replica directory {} is locked: another server is using that replica directory \
         (stop it first; the lock is released automatically when that process exits)",
        .dir.display()
    )]
    Locked {
        /// The replica directory.
        dir: PathBuf,
    },
    /// An operating-system call failed.
    #[error("I/O error while trying to {op} {}: {source}", .path.display())]
    Io {
        /// What was being attempted, for example "fsync" or "rename snapshot to".
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Data on disk is damaged in a way that is not a torn final write. The replica must not
    /// start from it: restore the directory from a peer or a backup.
    #[error(
        "corrupt data in {} at byte offset {offset}: {reason} \
         (refusing to guess; restore this replica's data from a peer or a backup)",
        .file.display()
    )]
    Corrupt {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset of the start of the damaged record (0 for whole-file problems).
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A record or snapshot is larger than the storage layer accepts.
    #[error("{size_bytes} bytes exceeds the storage limit of {max_bytes} bytes")]
    TooLarge {
        /// Its size (or a lower bound of it).
        size_bytes: u64,
        /// The limit.
        max_bytes: u64,
    },
    /// The write-ahead log saw a failed write or sync, so the contents of its tail are unknown.
    /// Drop it and open it again (which truncates a torn tail) to recover.
    #[error(
        "write-ahead log is unusable after an earlier failure ({reason}); reopen it to recover"
    )]
    Poisoned {
        /// The failure that poisoned the log.
        reason: String,
    },
    /// A value could not be encoded (for example a serde type that bincode cannot represent).
    #[error("cannot encode {what}: {reason}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
}

impl StorageError {
    /// Builds an [`StorageError::Io`].
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> StorageError {
        StorageError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Builds a [`StorageError::Corrupt`].
    pub(crate) fn corrupt(file: &Path, offset: u64, reason: impl Into<String>) -> StorageError {
        StorageError::Corrupt {
            file: file.to_path_buf(),
            offset,
            reason: reason.into(),
        }
    }
}

/// Shorthand for storage results.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
