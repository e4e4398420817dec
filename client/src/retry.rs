//! Pure pieces of the retry loop: back-off and the per-operation bookkeeping.

use crate::ClientError;
use paxoskv_service::KvError;
use rand::Rng;
use std::collections::BTreeSet;
use std::time::Duration;

/// First back-off delay.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(2);
/// Largest back-off delay (before jitter).
pub(crate) const BACKOFF_MAX: Duration = Duration::from_millis(100);

/// Bounded exponential back-off with jitter: 2 ms doubling to 100 ms, plus up to half again.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff { next: BACKOFF_MIN }
    }

    /// The delay to sleep now; the following one doubles up to the bound.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let jitter_us = rand::thread_rng().gen_range(0..=base.as_micros() as u64 / 2);
        base + Duration::from_micros(jitter_us)
    }
}

/// What one operation saw across its attempts, to explain a give-up.
#[derive(Debug)]
pub(crate) struct Tracker {
    total: usize,
    answered: BTreeSet<usize>,
    server_figures: Option<(u32, u32)>,
    last_error: Option<String>,
    /// Configured servers whose every attempt so far was a refused connection.
    refused: BTreeSet<usize>,
    /// Some attempt ended in anything but a refused connection (so a request may be out).
    other_outcome: bool,
}

impl Tracker {
    pub(crate) fn new(total: usize) -> Tracker {
        Tracker {
            total,
            answered: BTreeSet::new(),
            server_figures: None,
            last_error: None,
            refused: BTreeSet::new(),
            other_outcome: false,
        }
    }

    /// Server `index` answered with an error.
    pub(crate) fn answered_with(&mut self, index: usize, error: &KvError) {
        self.answered.insert(index);
        self.other_outcome = true;
        if let KvError::Unavailable { answered, total } = error {
            self.server_figures = Some((*answered, *total));
        }
        self.last_error = Some(error.to_string());
    }

    /// Server `index` answered, but not with a usable reply (for example, it aborted).
    pub(crate) fn answered_badly(&mut self, index: usize, what: String) {
        self.answered.insert(index);
        self.other_outcome = true;
        self.last_error = Some(what);
    }

    /// Server `index` did not answer.
    pub(crate) fn silent(&mut self, what: String) {
        self.other_outcome = true;
        self.last_error = Some(what);
    }

    /// Server `index` refused the connection: nothing listens there.
    pub(crate) fn refused(&mut self, index: usize, what: String) {
        if index < self.total {
            self.refused.insert(index);
        } else {
            self.other_outcome = true;
        }
        self.last_error = Some(what);
    }

    /// True once every configured server refused the connection and nothing else happened:
    /// no request was ever sent, so giving up is safe and waiting is pointless.
    pub(crate) fn all_refused(&self) -> bool {
        !self.other_outcome && self.refused.len() == self.total
    }

    /// The last error seen, if any.
    pub(crate) fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// The error to return when the deadline passed.
    pub(crate) fn give_up(self) -> ClientError {
        let (answered, total) = self
            .server_figures
            .unwrap_or((self.answered.len() as u32, self.total as u32));
        ClientError::Unavailable {
            answered,
            total,
            last_error: self.last_error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_bound_with_bounded_jitter() {
        let mut b = Backoff::new();
        let first = b.next_delay();
        assert!(first >= BACKOFF_MIN && first <= BACKOFF_MIN * 3 / 2);
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d <= BACKOFF_MAX * 3 / 2, "{d:?}");
        }
        assert!(b.next_delay() >= BACKOFF_MAX);
    }

    #[test]
    fn tracker_counts_distinct_servers() {
        let mut t = Tracker::new(5);
        let e = KvError::Timeout { timeout_ms: 10 };
        t.answered_with(1, &e);
        t.answered_with(1, &e);
        t.answered_with(3, &e);
        t.silent("no answer".into());
        assert_eq!(t.give_up().unavailable_counts(), Some((2, 5)));
    }

    #[test]
    fn all_refused_needs_every_server_and_nothing_else() {
        let mut t = Tracker::new(2);
        t.refused(0, "refused".into());
        assert!(!t.all_refused());
        t.refused(1, "refused".into());
        assert!(t.all_refused());
        let mut t = Tracker::new(2);
        t.refused(0, "refused".into());
        t.silent("no answer".into());
        t.refused(1, "refused".into());
        assert!(!t.all_refused(), "a request may be out after a timeout");
    }

    #[test]
    fn tracker_prefers_server_figures() {
        let mut t = Tracker::new(5);
        t.answered_with(
            0,
            &KvError::Unavailable {
                answered: 2,
                total: 5,
            },
        );
        t.answered_with(1, &KvError::Busy("full".into()));
        assert_eq!(t.give_up().unavailable_counts(), Some((2, 5)));
    }
}
