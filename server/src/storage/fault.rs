//! Disk-failure injection for tests and for the server's failure-injection switches.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

/// A handle that makes the next WAL append or sync fail as if the disk were full.
///
/// Clones share state, so a test (or the server's failure-injection command) keeps one clone
/// and hands another to [`super::WalOptions`]. Each armed fault fires once.
#[derive(Clone, Debug, Default)]
pub struct FaultInjector {
    plan: Arc<Mutex<FaultPlan>>,
}

#[derive(Debug, Default)]
struct FaultPlan {
    /// Fail the next append after writing this many bytes of its batch (0 = write nothing).
    append_after_bytes: Option<usize>,
    /// Fail the next sync.
    sync: bool,
}

impl FaultInjector {
    /// A handle with nothing armed.
    pub fn new() -> FaultInjector {
        FaultInjector::default()
    }

    /// The next append writes nothing and fails.
    pub fn fail_next_append(&self) {
        self.plan().append_after_bytes = Some(0);
    }

    /// The next append writes the first `bytes` bytes of its batch, then fails: a short
    /// write such as `ENOSPC` part-way through, leaving a torn record on disk.
    pub fn fail_next_append_after(&self, bytes: usize) {
        self.plan().append_after_bytes = Some(bytes);
    }

    /// The next sync (fdatasync) fails.
    pub fn fail_next_sync(&self) {
        self.plan().sync = true;
    }

    /// Disarms everything.
    pub fn clear(&self) {
        *self.plan() = FaultPlan::default();
    }

    /// Takes the armed append fault, if any.
    pub(crate) fn take_append_fault(&self) -> Option<usize> {
        self.plan().append_after_bytes.take()
    }

    /// Takes the armed sync fault, if any.
    pub(crate) fn take_sync_fault(&self) -> bool {
        std::mem::take(&mut self.plan().sync)
    }

    fn plan(&self) -> MutexGuard<'_, FaultPlan> {
        // The plan is two plain fields; a panic while holding the lock cannot leave it
        // inconsistent, so a poisoned mutex is still usable.
        self.plan
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The error an injected fault produces.
pub(crate) fn injected_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::StorageFull,
        "injected fault: no space left on device",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_fire_once_and_are_shared_between_clones() {
        let faults = FaultInjector::new();
        let handle = faults.clone();
        assert_eq!(handle.take_append_fault(), None);
        assert!(!handle.take_sync_fault());
        faults.fail_next_append_after(7);
        faults.fail_next_sync();
        assert_eq!(handle.take_append_fault(), Some(7));
        assert_eq!(handle.take_append_fault(), None);
        assert!(handle.take_sync_fault());
        assert!(!handle.take_sync_fault());
        faults.fail_next_append();
        faults.clear();
        assert_eq!(handle.take_append_fault(), None);
    }
}
