//! The replicated log as one replica knows it: accepted values, which of them are known
//! chosen, and the contiguous chosen prefix that has been applied.

use crate::types::{Ballot, Slot, Value};
use std::collections::BTreeMap;

/// One slot's accepted value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Ballot under which the value was accepted (ZERO for values learned from a peer).
    pub ballot: Ballot,
    /// The value.
    pub value: Value,
    /// Known chosen; a chosen value never changes.
    pub chosen: bool,
}

/// Accepted entries above the compaction point, plus progress counters.
#[derive(Clone, Debug, Default)]
pub struct Log {
    entries: BTreeMap<Slot, Entry>,
    /// Every slot up to here is chosen and applied.
    chosen_through: Slot,
    /// Entries up to here were dropped after a snapshot.
    compacted_through: Slot,
    /// `Value::size_bytes` of every entry held.
    held_bytes: usize,
    /// `Value::size_bytes` of the entries at or below `chosen_through` (the applied tail).
    applied_bytes: usize,
}

impl Log {
    /// A log whose first `through` slots live in a snapshot.
    pub fn starting_after(through: Slot) -> Log {
        Log {
            entries: BTreeMap::new(),
            chosen_through: through,
            compacted_through: through,
            held_bytes: 0,
            applied_bytes: 0,
        }
    }

    /// Bytes of the applied entries still held (kept for peers that are slightly behind).
    pub fn applied_bytes(&self) -> usize {
        self.applied_bytes
    }

    /// Bytes of the entries above the chosen prefix.
    pub fn open_bytes(&self) -> usize {
        self.held_bytes - self.applied_bytes
    }

    /// Replaces the value of a held entry, keeping the byte counts right.
    fn count_replaced(&mut self, slot: Slot, old: usize, new: usize) {
        self.held_bytes = self.held_bytes - old + new;
        if slot <= self.chosen_through {
            self.applied_bytes = self.applied_bytes - old + new;
        }
    }

    /// Contiguous chosen (and applied) prefix.
    pub fn chosen_through(&self) -> Slot {
        self.chosen_through
    }

    /// Slots up to here are only in the snapshot.
    pub fn compacted_through(&self) -> Slot {
        self.compacted_through
    }

    /// Highest slot with any entry, or the chosen prefix if there is none above it.
    pub fn last_slot(&self) -> Slot {
        self.entries
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(self.chosen_through)
    }

    /// Entries above the chosen prefix (bounded by `Config::max_open_slots` for input).
    pub fn open_entries(&self) -> usize {
        self.entries_above(self.chosen_through).count()
    }

    /// The entry at `slot`.
    pub fn get(&self, slot: Slot) -> Option<&Entry> {
        self.entries.get(&slot)
    }

    /// True if `slot` is known chosen (compacted slots are chosen).
    pub fn is_chosen(&self, slot: Slot) -> bool {
        slot <= self.chosen_through || self.entries.get(&slot).is_some_and(|e| e.chosen)
    }

    /// Records an acceptance. Accepting again a chosen slot must carry the chosen value.
    pub fn accept(&mut self, slot: Slot, ballot: Ballot, value: Value) {
        assert!(
            slot > self.compacted_through,
            "accept below compaction point"
        );
        match self.entries.get_mut(&slot) {
            Some(e) if e.chosen => {
                assert_eq!(e.value, value, "a chosen value never changes (slot {slot})");
                e.ballot = e.ballot.max(ballot);
            }
            Some(e) => {
                assert!(
                    ballot >= e.ballot,
                    "accepted ballots only grow (slot {slot})"
                );
                let (old, new) = (e.value.size_bytes(), value.size_bytes());
                e.ballot = ballot;
                e.value = value;
                self.count_replaced(slot, old, new);
            }
            None => {
                self.held_bytes += value.size_bytes();
                self.entries.insert(
                    slot,
                    Entry {
                        ballot,
                        value,
                        chosen: false,
                    },
                );
            }
        }
    }

    /// True if `slot` already holds `value` accepted under `ballot` (a resent accept: nothing
    /// new to record).
    pub fn holds(&self, slot: Slot, ballot: Ballot, value: &Value) -> bool {
        self.entries
            .get(&slot)
            .is_some_and(|e| e.ballot == ballot && e.value == *value)
    }

    /// Marks `slot` chosen if the local entry was accepted under `ballot` (a leader proposes
    /// one value per slot per ballot, so that entry holds the chosen value).
    pub fn mark_chosen_if_ballot(&mut self, slot: Slot, ballot: Ballot) -> bool {
        match self.entries.get_mut(&slot) {
            Some(e) if e.chosen => true,
            Some(e) if e.ballot == ballot => {
                e.chosen = true;
                true
            }
            _ => slot <= self.chosen_through,
        }
    }

    /// Stores a value known chosen (from a peer or from a majority of acceptances).
    pub fn learn_chosen(&mut self, slot: Slot, value: Value) {
        if slot <= self.compacted_through {
            return;
        }
        match self.entries.get_mut(&slot) {
            Some(e) if e.chosen => {
                assert_eq!(e.value, value, "a chosen value never changes (slot {slot})");
            }
            Some(e) => {
                let (old, new) = (e.value.size_bytes(), value.size_bytes());
                e.value = value;
                e.chosen = true;
                self.count_replaced(slot, old, new);
            }
            None => {
                self.held_bytes += value.size_bytes();
                self.entries.insert(
                    slot,
                    Entry {
                        ballot: Ballot::ZERO,
                        value,
                        chosen: true,
                    },
                );
            }
        }
    }

    /// Marks an existing entry chosen (during recovery, from a `Chosen` record).
    pub fn learn_chosen_existing(&mut self, slot: Slot) {
        if let Some(e) = self.entries.get_mut(&slot) {
            e.chosen = true;
        }
    }

    /// Advances the chosen prefix over consecutive chosen slots; returns the newly chosen
    /// slots in order, for applying.
    pub fn advance(&mut self) -> Vec<(Slot, Value)> {
        let mut out = Vec::new();
        while let Some(e) = (self.chosen_through.checked_add(1)).and_then(|s| self.entries.get(&s))
        {
            if !e.chosen {
                break;
            }
            self.chosen_through += 1;
            self.applied_bytes += e.value.size_bytes();
            out.push((self.chosen_through, e.value.clone()));
        }
        out
    }

    /// All entries above `after` (used to re-log live state after a snapshot).
    pub fn entries_above(&self, after: Slot) -> impl Iterator<Item = (Slot, &Entry)> {
        use std::ops::Bound::{Excluded, Unbounded};
        self.entries
            .range((Excluded(after), Unbounded))
            .map(|(s, e)| (*s, e))
    }

    /// Drops entries at or below `through`, which must be applied.
    pub fn compact(&mut self, through: Slot) {
        assert!(through <= self.chosen_through, "compacting unapplied slots");
        if through <= self.compacted_through {
            return;
        }
        self.drop_through(through);
        self.compacted_through = through;
    }

    fn drop_through(&mut self, through: Slot) {
        self.entries = match through.checked_add(1) {
            Some(first_kept) => self.entries.split_off(&first_kept),
            None => BTreeMap::new(),
        };
        self.recount_bytes();
    }

    fn recount_bytes(&mut self) {
        let chosen_through = self.chosen_through;
        let (mut held, mut applied) = (0, 0);
        for (&slot, e) in &self.entries {
            let size = e.value.size_bytes();
            held += size;
            if slot <= chosen_through {
                applied += size;
            }
        }
        self.held_bytes = held;
        self.applied_bytes = applied;
    }

    /// Drops the oldest applied entries until those kept take at most `max_bytes`; returns
    /// the new compaction point. Applied values live in the map (and on disk until the next
    /// snapshot), so the log keeps them only for peers that are slightly behind; a peer
    /// behind what is kept gets a snapshot instead.
    pub fn trim_applied(&mut self, max_bytes: usize) -> Slot {
        while self.applied_bytes > max_bytes {
            let Some(entry) = self.entries.first_entry() else {
                break;
            };
            let slot = *entry.key();
            if slot > self.chosen_through {
                break;
            }
            let size = entry.remove().value.size_bytes();
            self.held_bytes -= size;
            self.applied_bytes -= size;
            self.compacted_through = self.compacted_through.max(slot);
        }
        self.compacted_through
    }

    /// Replaces everything with a snapshot's position.
    pub fn reset_to_snapshot(&mut self, through: Slot) {
        self.chosen_through = through;
        self.compacted_through = through;
        self.drop_through(through);
    }
}
