//! Change events of the applied map, the raw material of watches.
//!
//! Every write the map applies (a put, a delete that removed a key, each write of a
//! transaction, a lease's deletes) records one [`Event`] at the one place keys are written
//! or removed (`KvState::put_at` / `KvState::remove_key`), so no path can forget one. The
//! runtime drains them with every [`crate::Ready`] (field `events`) and keeps a bounded
//! history of its own. Events are an output, not state: they are not part of the digest,
//! the snapshot, equality or clones. Since they come from the chosen log, every replica
//! produces the same events in the same order.

use crate::types::KeyMeta;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Most events kept between two drains (a long recovery replay or catch-up applies many
/// commands before the runtime sees a `Ready`): older ones are dropped, and the batch says
/// where the history it carries starts.
pub const MAX_PENDING_EVENTS: usize = 10_000;

/// Bound on the bytes of events kept between two drains (see [`MAX_PENDING_EVENTS`]).
pub const MAX_PENDING_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// Bytes an event holds besides its key and value, for byte bounds.
pub const EVENT_OVERHEAD_BYTES: usize = 64;

/// What happened to the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// The key was set (created or replaced).
    Put,
    /// The key was removed.
    Delete,
}

/// One change of one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key.
    pub key: String,
    /// The new value of a put; empty for a delete.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The store revision of the write (the writes of one transaction share it).
    pub revision: u64,
    /// For a put, the key's meta after it; for a delete, the meta it had before.
    pub meta: KeyMeta,
}

impl Event {
    /// Bytes the event holds, roughly (for history and reply bounds).
    pub fn size_bytes(&self) -> usize {
        EVENT_OVERHEAD_BYTES + self.key.len() + self.value.len()
    }
}

/// Events drained from the core: `events` in revision order, after a possible reset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventBatch {
    /// Set when the history before `events` is gone (a snapshot was installed or loaded,
    /// or events were dropped over the pending bound): nothing at or below this revision
    /// can be served any more, and the events continue above it.
    pub reset_at: Option<u64>,
    /// The events, in the order applied (revisions never decrease).
    pub events: Vec<Event>,
}

impl EventBatch {
    /// True when it carries neither a reset nor an event.
    pub fn is_empty(&self) -> bool {
        self.reset_at.is_none() && self.events.is_empty()
    }
}

/// The events recorded since the last drain, bounded. A transient output buffer: a clone
/// is empty and any two compare equal, so `KvState`'s clone (a read view, a snapshot) and
/// equality ignore it.
#[derive(Debug, Default)]
pub(crate) struct PendingEvents {
    reset_at: Option<u64>,
    events: VecDeque<Event>,
    bytes: usize,
}

impl Clone for PendingEvents {
    fn clone(&self) -> Self {
        PendingEvents::default()
    }
}

impl PartialEq for PendingEvents {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for PendingEvents {}

impl PendingEvents {
    /// Records `event`, dropping the oldest whole revisions while over the bounds.
    pub(crate) fn push(&mut self, event: Event) {
        debug_assert!(self
            .events
            .back()
            .is_none_or(|last| last.revision <= event.revision));
        self.bytes += event.size_bytes();
        self.events.push_back(event);
        while self.events.len() > MAX_PENDING_EVENTS || self.bytes > MAX_PENDING_EVENT_BYTES {
            let Some(dropped) = self.events.front().map(|e| e.revision) else {
                break;
            };
            // A revision is dropped whole: a history that starts inside one would serve
            // half a transaction.
            while self.events.front().is_some_and(|e| e.revision == dropped) {
                if let Some(e) = self.events.pop_front() {
                    self.bytes -= e.size_bytes();
                }
            }
            self.reset_at = Some(dropped);
        }
    }

    /// Forgets every event: the history is gone up to and including `revision`.
    pub(crate) fn reset(&mut self, revision: u64) {
        *self = PendingEvents {
            reset_at: Some(revision),
            ..PendingEvents::default()
        };
    }

    /// Takes what was recorded since the last call.
    pub(crate) fn take(&mut self) -> EventBatch {
        let taken = std::mem::take(self);
        EventBatch {
            reset_at: taken.reset_at,
            events: taken.events.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(revision: u64, value_bytes: usize) -> Event {
        Event {
            kind: EventKind::Put,
            key: format!("k{revision}"),
            value: vec![0; value_bytes],
            revision,
            meta: KeyMeta::default(),
        }
    }

    #[test]
    fn pending_events_drop_whole_old_revisions_over_the_count_bound() {
        let mut p = PendingEvents::default();
        // Two events share revision 1 (one transaction).
        p.push(event(1, 0));
        for revision in 1..=MAX_PENDING_EVENTS as u64 {
            p.push(event(revision, 0));
        }
        let batch = p.take();
        assert_eq!(batch.reset_at, Some(1));
        assert_eq!(batch.events.len(), MAX_PENDING_EVENTS - 1);
        assert_eq!(batch.events.first().map(|e| e.revision), Some(2));
        assert!(p.take().is_empty(), "taking empties the buffer");
    }

    #[test]
    fn pending_events_stay_within_the_byte_bound() {
        let mut p = PendingEvents::default();
        let big = MAX_PENDING_EVENT_BYTES / 4;
        for revision in 1..=10 {
            p.push(event(revision, big));
        }
        let batch = p.take();
        let bytes: usize = batch.events.iter().map(Event::size_bytes).sum();
        assert!(bytes <= MAX_PENDING_EVENT_BYTES);
        assert_eq!(batch.events.len(), 3);
        assert_eq!(batch.reset_at, Some(7));
        // A clone is empty; a reset forgets everything.
        p.push(event(11, 0));
        assert!(p.clone().take().is_empty());
        p.reset(20);
        assert_eq!(
            p.take(),
            EventBatch {
                reset_at: Some(20),
                events: vec![]
            }
        );
    }
}
