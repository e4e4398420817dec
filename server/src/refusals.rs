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
