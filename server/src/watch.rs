//! The watch history of one replica and the long-poll that serves it.
//!
//! The driver publishes the change events of every `Ready` here ([`WatchHub::publish`]);
//! `KvRpc::watch` handlers read them without touching the driver. The history is bounded in
//! events and bytes: the oldest whole revisions go first, and a watch from before what is
//! left gets `KvError::Compacted` with the oldest revision still served. Every replica
//! applies the same chosen log, so revision R means the same events everywhere and a client
//! may resume its watch on any replica from the revision after the last one it saw.

use paxoskv::kv::KeyRange;
use paxoskv::watch::{Event, EventBatch};
use paxoskv_service::KvError;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

/// Events the history keeps by default (`--watch-history-events`).
pub const DEFAULT_HISTORY_EVENTS: usize = 100_000;
/// Bytes of events the history keeps by default.
pub const DEFAULT_HISTORY_BYTES: usize = 64 * 1024 * 1024;
/// Most events of one watch reply.
pub const MAX_WATCH_LIMIT: usize = 10_000;
/// Bytes of events after which a reply ends (at a revision boundary; the first revision
/// always goes whole, and a transaction is at most 2 MiB, inside the 4 MiB frame).
pub const MAX_WATCH_REPLY_BYTES: usize = 1024 * 1024;
/// Events one call looks at, matching or not, so a narrow watch over a busy history does
/// not hold the lock for long; the reply then says where to go on.
pub const MAX_SCANNED_EVENTS: usize = 16_384;
/// Longest a long-poll waits for a matching event.
pub const MAX_WATCH_WAIT_MS: u64 = 30_000;
/// Long-polls waiting at once on one replica; more get `Busy`.
pub const MAX_WAITING_WATCHES: usize = 1024;

/// One page of a watch: matching events, and the revision to ask from next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchPage {
    /// Matching events with revision >= the asked one, in revision order.
    pub events: Vec<Event>,
    /// Ask from here next: every revision below it was looked at.
    pub next_revision: u64,
}

/// Where the history stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bounds {
    /// Events at or below this revision are gone.
    compacted_through: u64,
    /// The newest revision published.
    head: u64,
}

#[derive(Debug)]
struct History {
    /// False until the driver's first publish: a replica that just started has not handed
    /// over the history it rebuilt yet, so nothing is known about any revision.
    loaded: bool,
    bounds: Bounds,
    events: VecDeque<Event>,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
}

impl History {
    fn publish(&mut self, batch: EventBatch) {
        self.loaded = true;
        if let Some(reset) = batch.reset_at {
            // The core's history restarts after `reset`: a snapshot was installed or the core
            // dropped events (reset above what we hold), or the replica reloaded its state
            // from disk after a storage failure (reset below: the replay emits the same
            // events again, since they come from the chosen log). Either way nothing at or
            // below `reset` is served, and everything above it arrives in order.
            self.events.clear();
            self.bytes = 0;
            self.bounds = Bounds {
                compacted_through: reset,
                head: reset,
            };
        }
        for event in batch.events {
            if event.revision <= self.bounds.compacted_through || event.revision < self.bounds.head
            {
                // Never served out of order (the core emits none such; a bug must not
                // take the replica down).
                continue;
            }
            self.bounds.head = self.bounds.head.max(event.revision);
            self.bytes += event.size_bytes();
            self.events.push_back(event);
        }
        self.evict();
    }

    /// Drops the oldest whole revisions while over a bound: a watch never starts inside a
    /// transaction.
    fn evict(&mut self) {
        while self.events.len() > self.max_events || self.bytes > self.max_bytes {
            let Some(oldest) = self.events.front().map(|e| e.revision) else {
                break;
            };
            while self.events.front().is_some_and(|e| e.revision == oldest) {
                if let Some(e) = self.events.pop_front() {
                    self.bytes -= e.size_bytes();
                }
            }
            self.bounds.compacted_through = oldest;
        }
    }

    /// Events of `range` from revision `from` (0: after the newest), within `limit` events
    /// and the byte and scan bounds, ending at a revision boundary.
    fn read(&self, range: &KeyRange, from: u64, limit: usize) -> Result<WatchPage, KvError> {
        let from = if from == 0 {
            self.bounds.head + 1
        } else {
            from
        };
        if from <= self.bounds.compacted_through {
            return Err(KvError::Compacted {
                oldest_revision: self.bounds.compacted_through + 1,
            });
        }
        let start = self.events.partition_point(|e| e.revision < from);
        let mut page = WatchPage {
            events: Vec::new(),
            next_revision: from.max(self.bounds.head + 1),
        };
        let mut bytes = 0;
        let mut last_revision = None;
        for (scanned, event) in self.events.range(start..).enumerate() {
            let boundary = last_revision.is_some_and(|r| r != event.revision);
            let full = page.events.len() >= limit
                || bytes >= MAX_WATCH_REPLY_BYTES
                || scanned >= MAX_SCANNED_EVENTS;
            if boundary && full {
                page.next_revision = event.revision;
                break;
            }
            last_revision = Some(event.revision);
            if range.contains(&event.key) {
                bytes += event.size_bytes();
                page.events.push(event.clone());
            }
        }
        Ok(page)
    }
}

/// The history of one replica, shared by its driver (writer) and watch handlers (readers).
#[derive(Debug)]
pub struct WatchHub {
    history: Mutex<History>,
    /// The newest revision published, to wake long-polls.
    head: watch::Sender<u64>,
    waiting: Arc<Semaphore>,
}

impl WatchHub {
    /// An empty history that keeps at most `max_events` events and `max_bytes` bytes.
    pub fn new(max_events: usize, max_bytes: usize) -> WatchHub {
        WatchHub {
            history: Mutex::new(History {
                loaded: false,
                bounds: Bounds {
                    compacted_through: 0,
                    head: 0,
                },
                events: VecDeque::new(),
                bytes: 0,
                max_events: max_events.max(1),
                max_bytes,
            }),
            head: watch::Sender::new(0),
            waiting: Arc::new(Semaphore::new(MAX_WAITING_WATCHES)),
        }
    }

    /// Adds what the core drained; wakes the long-polls. The driver calls it after every
    /// Ready, empty or not: the first call marks the history as loaded.
    pub fn publish(&self, batch: EventBatch) {
        let head = match self.history.lock() {
            Ok(mut h) => {
                h.publish(batch);
                h.bounds.head
            }
            Err(_) => return,
        };
        self.head.send_replace(head);
    }

    /// The oldest revision served and the newest published.
    pub fn range_of_revisions(&self) -> (u64, u64) {
        self.history
            .lock()
            .map(|h| (h.bounds.compacted_through + 1, h.bounds.head))
            .unwrap_or((0, 0))
    }

    fn read(&self, range: &KeyRange, from: u64, limit: usize) -> Result<WatchPage, KvError> {
        match self.history.lock() {
            Ok(h) => h.read(range, from, limit),
            Err(_) => Err(KvError::ReplicaFailed {
                reason: "watch history lock poisoned".into(),
            }),
        }
    }

    /// Events of `range` from revision `from` (0: after the newest), waiting up to `wait`
    /// (capped at [`MAX_WATCH_WAIT_MS`]) for at least one; an empty page when none came.
    pub async fn poll(
        &self,
        range: &KeyRange,
        from: u64,
        limit: usize,
        wait: Duration,
    ) -> Result<WatchPage, KvError> {
        let limit = limit.clamp(1, MAX_WATCH_LIMIT);
        let deadline = Instant::now() + wait.min(Duration::from_millis(MAX_WATCH_WAIT_MS));
        let mut changed = self.head.subscribe();
        changed.borrow_and_update();
        let mut page = self.read(range, from, limit)?;
        if !page.events.is_empty() || wait.is_zero() {
            return Ok(page);
        }
        let _slot = self.waiting.clone().try_acquire_owned().map_err(|_| {
            KvError::Busy(format!(
                "{MAX_WAITING_WATCHES} watches are waiting on this replica"
            ))
        })?;
        loop {
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                // The deadline passed, or the replica is shutting down.
                Ok(Err(_)) | Err(_) => return Ok(page),
            }
            changed.borrow_and_update();
            page = self.read(range, page.next_revision, limit)?;
            if !page.events.is_empty() {
                return Ok(page);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paxoskv::watch::EventKind;
    use paxoskv::KeyMeta;

    fn put(key: &str, revision: u64) -> Event {
        Event {
            kind: EventKind::Put,
            key: key.into(),
            value: format!("v{revision}").into_bytes(),
            revision,
            meta: KeyMeta::default(),
        }
    }

    fn batch(events: Vec<Event>) -> EventBatch {
        EventBatch {
            reset_at: None,
            events,
        }
    }

    fn revisions(page: &WatchPage) -> Vec<(String, u64)> {
        page.events
            .iter()
            .map(|e| (e.key.clone(), e.revision))
            .collect()
    }

    fn all() -> KeyRange {
        KeyRange::Prefix(String::new())
    }

    #[test]
    fn reads_match_the_prefix_from_the_asked_revision() {
        let hub = WatchHub::new(100, 1 << 20);
        hub.publish(batch(vec![
            put("a/1", 1),
            put("b/1", 2),
            put("a/2", 3),
            put("a/3", 3),
        ]));
        let page = hub.read(&KeyRange::Prefix("a/".into()), 2, 10).unwrap();
        assert_eq!(revisions(&page), [("a/2".into(), 3), ("a/3".into(), 3)]);
        assert_eq!(page.next_revision, 4);
        // From 0 means after the newest.
        let page = hub.read(&all(), 0, 10).unwrap();
        assert!(page.events.is_empty());
        assert_eq!(page.next_revision, 4);
        // Ahead of the history: nothing yet, and the same revision to ask again.
        assert_eq!(hub.read(&all(), 9, 10).unwrap().next_revision, 9);
    }

    #[test]
    fn a_limit_ends_the_page_at_a_revision_boundary() {
        let hub = WatchHub::new(100, 1 << 20);
        hub.publish(batch(vec![
            put("a", 1),
            put("b", 2),
            put("c", 2),
            put("d", 3),
        ]));
        let page = hub.read(&all(), 1, 2).unwrap();
        // The limit is reached inside revision 2: the whole revision goes.
        assert_eq!(
            revisions(&page),
            [("a".into(), 1), ("b".into(), 2), ("c".into(), 2)]
        );
        assert_eq!(page.next_revision, 3);
        let page = hub.read(&all(), page.next_revision, 2).unwrap();
        assert_eq!(revisions(&page), [("d".into(), 3)]);
    }

    #[test]
    fn eviction_and_resets_compact_whole_revisions() {
        let hub = WatchHub::new(3, 1 << 20);
        hub.publish(batch(vec![
            put("a", 1),
            put("b", 2),
            put("c", 2),
            put("d", 3),
        ]));
        assert_eq!(hub.range_of_revisions(), (2, 3));
        assert_eq!(
            hub.read(&all(), 1, 10),
            Err(KvError::Compacted { oldest_revision: 2 })
        );
        assert_eq!(hub.read(&all(), 2, 10).unwrap().events.len(), 3);
        // A snapshot jumped this replica from 3 to 10.
        hub.publish(EventBatch {
            reset_at: Some(10),
            events: vec![put("e", 11)],
        });
        assert_eq!(
            hub.read(&all(), 4, 10),
            Err(KvError::Compacted {
                oldest_revision: 11
            })
        );
        assert_eq!(
            revisions(&hub.read(&all(), 11, 10).unwrap()),
            [("e".into(), 11)]
        );
    }

    #[test]
    fn a_reload_from_disk_replays_the_history_from_its_snapshot() {
        let hub = WatchHub::new(100, 1 << 20);
        hub.publish(batch(vec![put("a", 1), put("b", 2), put("c", 3)]));
        // Storage failed and the replica reloaded its state at revision 1 from disk: the
        // replay emits revisions 2 and 3 again, then new ones.
        hub.publish(EventBatch {
            reset_at: Some(1),
            events: vec![put("b", 2), put("c", 3), put("d", 4)],
        });
        assert_eq!(hub.range_of_revisions(), (2, 4));
        let page = hub.read(&all(), 2, 10).unwrap();
        assert_eq!(
            revisions(&page),
            [("b".into(), 2), ("c".into(), 3), ("d".into(), 4)]
        );
        // An event behind the head is never appended out of order.
        hub.publish(batch(vec![put("old", 3), put("e", 5)]));
        let page = hub.read(&all(), 4, 10).unwrap();
        assert_eq!(revisions(&page), [("d".into(), 4), ("e".into(), 5)]);
    }

    #[test]
    fn the_byte_bound_holds() {
        let hub = WatchHub::new(1000, 300);
        for revision in 1..=20 {
            hub.publish(batch(vec![put("k", revision)]));
        }
        let (oldest, head) = hub.range_of_revisions();
        assert_eq!(head, 20);
        let kept = hub.read(&all(), oldest, 1000).unwrap().events;
        let bytes: usize = kept.iter().map(Event::size_bytes).sum();
        assert!(bytes <= 300, "{bytes}");
        assert_eq!(kept.len() as u64, head - oldest + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_poll_wakes_on_a_matching_event_and_skips_others() {
        let hub = Arc::new(WatchHub::new(100, 1 << 20));
        hub.publish(batch(vec![put("a", 1)]));
        let waiter = {
            let hub = hub.clone();
            tokio::spawn(async move {
                hub.poll(
                    &KeyRange::Prefix("x".into()),
                    2,
                    10,
                    Duration::from_secs(10),
                )
                .await
            })
        };
        tokio::task::yield_now().await;
        hub.publish(batch(vec![put("b", 2)]));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "b does not match x");
        hub.publish(batch(vec![put("x1", 3)]));
        let page = waiter.await.unwrap().unwrap();
        assert_eq!(revisions(&page), [("x1".into(), 3)]);
        assert_eq!(page.next_revision, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn before_the_first_publish_nothing_is_claimed_and_a_poll_waits_for_it() {
        let hub = Arc::new(WatchHub::new(100, 1 << 20));
        // A restarted replica whose history starts at its snapshot's revision 10.
        assert_eq!(
            hub.read(&all(), 3, 10).unwrap(),
            WatchPage {
                events: vec![],
                next_revision: 3
            }
        );
        let waiter = {
            let hub = hub.clone();
            tokio::spawn(async move { hub.poll(&all(), 3, 10, Duration::from_secs(5)).await })
        };
        tokio::task::yield_now().await;
        hub.publish(EventBatch {
            reset_at: Some(10),
            events: vec![],
        });
        assert_eq!(
            waiter.await.unwrap(),
            Err(KvError::Compacted {
                oldest_revision: 11
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_poll_without_events_ends_at_its_wait_with_progress() {
        let hub = WatchHub::new(100, 1 << 20);
        hub.publish(batch(vec![put("a", 1), put("b", 2)]));
        let started = Instant::now();
        let page = hub
            .poll(
                &KeyRange::Prefix("x".into()),
                1,
                10,
                Duration::from_millis(500),
            )
            .await
            .unwrap();
        assert!(page.events.is_empty());
        assert_eq!(
            page.next_revision, 3,
            "what was looked at is not asked again"
        );
        assert_eq!(started.elapsed(), Duration::from_millis(500));
    }
}
