//! Bookkeeping over the operations not done yet, for O(1) pruning decisions.

use super::memo::FxHashSet;
use super::{Op, Step, ValueId, ABSENT, UNREAD};

/// What the pending (not yet done) operations read and write, by value.
pub(super) struct Pending {
    /// Reads of each value, earliest deadline first. Swaps that must take effect count as
    /// reads of their expected value (and as writes of their new one).
    reads: Vec<Queue>,
    /// Writes of each value (deletes write [`ABSENT`]), earliest invocation first. Writes of
    /// [`UNREAD`] are not tracked: nothing reads them.
    writes: Vec<Queue>,
    /// Where each operation sits: up to two `(is_read, value, position)`.
    slot: Vec<[Option<(bool, ValueId, u32)>; 2]>,
    /// Pending deletes reporting `existed: false` and `existed: true`.
    checked_deletes: [u32; 2],
    /// Pending failed compare-and-swaps, by expected value, and in all.
    read_nots: Vec<u32>,
    read_nots_total: u32,
    /// Pending optional swaps, by expected value.
    optional_swaps: Vec<u32>,
    /// Values whose earliest-due pending read is due before any pending write of the value
    /// can even start: unless the register holds such a value, that read is lost.
    doomed: FxHashSet<ValueId>,
}

/// Operations keyed by a time, with the first pending one tracked incrementally (operations
/// are done and undone in stack order, so a cursor that only moves back on undo suffices).
#[derive(Clone, Default)]
struct Queue {
    items: Vec<(u64, u32)>,
    done: Vec<bool>,
    first: usize,
    pending: u32,
}

impl Queue {
    /// Time key of the first pending item.
    fn head(&self) -> Option<u64> {
        self.items.get(self.first).map(|&(t, _)| t)
    }

    fn set(&mut self, pos: usize, done: bool) {
        self.done[pos] = done;
        if done {
            self.pending -= 1;
            while self.first < self.items.len() && self.done[self.first] {
                self.first += 1;
            }
        } else {
            self.pending += 1;
            self.first = self.first.min(pos);
        }
    }
}

impl Pending {
    /// Everything in `ops` pending; `values` interned values exist.
    pub(super) fn new(ops: &[Op], values: usize) -> Self {
        let mut reads = vec![Queue::default(); values + 1];
        let mut writes = vec![Queue::default(); values + 1];
        let mut checked_deletes = [0; 2];
        let mut read_nots = vec![0; values + 1];
        let mut optional_swaps = vec![0; values + 1];
        for (i, o) in ops.iter().enumerate() {
            let i = i as u32;
            match o.step {
                Step::Read(v) => reads[v as usize].items.push((o.deadline, i)),
                Step::ReadNot(v) => read_nots[v as usize] += 1,
                Step::Swap { expected, .. } if o.optional => optional_swaps[expected as usize] += 1,
                Step::Swap { expected, .. } => reads[expected as usize].items.push((o.deadline, i)),
                Step::Write(_) => {}
                Step::Delete(checked) => {
                    if let Some(existed) = checked {
                        checked_deletes[usize::from(existed)] += 1;
                    }
                }
            }
            match o.step.written() {
                Some(UNREAD) | None => {}
                Some(v) => writes[v as usize].items.push((o.invoke, i)),
            }
        }
        let mut slot = vec![[None; 2]; ops.len()];
        for (is_read, queues) in [(true, &mut reads), (false, &mut writes)] {
            for (v, q) in queues.iter_mut().enumerate() {
                q.items.sort_unstable();
                q.done = vec![false; q.items.len()];
                q.pending = q.items.len() as u32;
                for (pos, &(_, op)) in q.items.iter().enumerate() {
                    let free = usize::from(slot[op as usize][0].is_some());
                    slot[op as usize][free] = Some((is_read, v as ValueId, pos as u32));
                }
            }
        }
        let mut pending = Self {
            reads,
            writes,
            slot,
            checked_deletes,
            read_nots_total: read_nots.iter().sum(),
            read_nots,
            optional_swaps,
            doomed: FxHashSet::default(),
        };
        for v in 0..=values {
            pending.refresh(v as ValueId);
        }
        pending
    }

    /// Marks `op` (which is `o`) done or pending again.
    pub(super) fn set_done(&mut self, op: u32, o: &Op, done: bool) {
        let count = match o.step {
            Step::Delete(Some(existed)) => Some(&mut self.checked_deletes[usize::from(existed)]),
            Step::ReadNot(v) => {
                let total = &mut self.read_nots_total;
                *total = if done { *total - 1 } else { *total + 1 };
                Some(&mut self.read_nots[v as usize])
            }
            Step::Swap { expected, .. } if o.optional => {
                Some(&mut self.optional_swaps[expected as usize])
            }
            _ => None,
        };
        if let Some(count) = count {
            *count = if done { *count - 1 } else { *count + 1 };
        }
        for (is_read, v, pos) in self.slot[op as usize].into_iter().flatten() {
            let queue = match is_read {
                true => &mut self.reads[v as usize],
                false => &mut self.writes[v as usize],
            };
            queue.set(pos as usize, done);
            self.refresh(v);
        }
    }

    fn refresh(&mut self, v: ValueId) {
        let (reads, writes) = (&self.reads[v as usize], &self.writes[v as usize]);
        let doomed = match (reads.head(), writes.head()) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(due), Some(start)) => due < start,
        };
        if doomed {
            self.doomed.insert(v);
        } else {
            self.doomed.remove(&v);
        }
    }

    /// A pending read that can no longer be explained once the register holds `state`: it
    /// is due before any pending write of its value can start.
    pub(super) fn lost_read(&self, state: ValueId) -> Option<u32> {
        let v = self.doomed.iter().copied().find(|&v| v != state)?;
        let q = &self.reads[v as usize];
        Some(q.items[q.first].1)
    }

    /// Pending operations that could tell whether the write `step` happened: reads of its
    /// value and swaps expecting it (optional ones too: they may be what observes it),
    /// failed compare-and-swaps expecting any other value, and deletes whose `existed`
    /// depends on it (see `plan_unknowns`).
    pub(super) fn observers(&self, step: Step) -> u32 {
        let Some(w) = step.written() else {
            return u32::MAX;
        };
        let presence = match w {
            ABSENT => self.checked_deletes[0],
            _ => self.checked_deletes[1],
        };
        if w == UNREAD {
            // Its real value is unknown here: every failed compare-and-swap may tell.
            return presence + self.read_nots_total;
        }
        let w = w as usize;
        let read_nots = self.read_nots_total - self.read_nots[w];
        self.reads[w].pending + presence + read_nots + self.optional_swaps[w]
    }
}
