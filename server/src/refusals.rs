//! Rate-limited warnings about peer input the core refused (`Replica::refused`): at most one
//! log line per second per cause, so a hostile or buggy peer cannot flood the log.

use paxoskv::{Refusal, RefusedCounts, ReplicaId};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Warnings about one cause are at least this far apart.
const WARN_INTERVAL: Duration = Duration::from_secs(1);

/// What was last reported, per cause.
#[derive(Debug, Default)]
pub struct RefusalWarnings {
    /// Count already reported, and when.
    reported: HashMap<Refusal, (u64, Instant)>,
}

impl RefusalWarnings {
    /// Compares the core's counters with what was reported; warns about causes that grew
    /// if their last warning is old enough. Call it on every tick.
    pub fn check(&mut self, replica: ReplicaId, counts: &RefusedCounts, now: Instant) {
        for (cause, count) in counts.iter() {
            let (seen, at) = self.reported.get(&cause).copied().unwrap_or((0, now));
            // A core rebuilt from disk starts counting from zero again.
            let seen = seen.min(count);
            let due =
                !self.reported.contains_key(&cause) || now.duration_since(at) >= WARN_INTERVAL;
            if count > seen && due {
                log(replica, cause, count - seen, count);
                self.reported.insert(cause, (count, now));
            }
        }
    }
}

/// A late duplicate snapshot is routine (it raced with catching up); the rest is not.
fn log(replica: ReplicaId, cause: Refusal, refused: u64, total: u64) {
    if cause == Refusal::StaleSnapshot {
        tracing::debug!(replica, %cause, refused, total, "refused peer input");
    } else {
        tracing::warn!(replica, %cause, refused, total, "refused peer input");
    }
}

/// A once-per-interval gate for warnings that have no counter in the core (refused
/// connections, forged `from` fields). Shared by every replica of a process.
#[derive(Debug)]
pub struct WarnGate {
    epoch: std::sync::OnceLock<Instant>,
    last_ms: std::sync::atomic::AtomicU64,
}

impl WarnGate {
    /// A gate that opens at once.
    pub const fn new() -> WarnGate {
        WarnGate {
            epoch: std::sync::OnceLock::new(),
            last_ms: std::sync::atomic::AtomicU64::new(u64::MAX),
        }
    }

    /// True at most once per [`WARN_INTERVAL`]; the caller logs only then.
    pub fn due(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now_ms = self.epoch.get_or_init(Instant::now).elapsed().as_millis() as u64;
        let last = self.last_ms.load(Ordering::Relaxed);
        let interval_ms = WARN_INTERVAL.as_millis() as u64;
        let due = last == u64::MAX || now_ms.saturating_sub(last) >= interval_ms;
        due && self
            .last_ms
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

impl Default for WarnGate {
    fn default() -> Self {
        WarnGate::new()
    }
}
