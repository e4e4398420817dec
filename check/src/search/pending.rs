//! Bookkeeping over the operations not done yet, for O(1) pruning decisions.

use super::memo::FxHashSet;
use super::{Op, Step, ValueId, ABSENT, UNREAD};

/// What the pending (not yet done) operations read and write, by value.
pub(super) struct Pending {
    /// Reads of each value, earliest deadline first.
    reads: Vec<Queue>,
    /// Writes of each value (deletes write [`ABSENT`]), earliest invocation first. Writes of
    /// [`UNREAD`] are not tracked: nothing reads them.
    writes: Vec<Queue>,
    /// Where each operation sits: `(is_read, value, position)`, or `None` if untracked.
    slot: Vec<Option<(bool, ValueId, u32)>>,
    /// Pending deletes reporting `existed: false` and `existed: true`.
    checked_deletes: [u32; 2],
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
        for (i, o) in ops.iter().enumerate() {
            match o.step {
                Step::Read(v) => reads[v as usize].items.push((o.deadline, i as u32)),
                Step::Write(UNREAD) => {}
                Step::Write(v) => writes[v as usize].items.push((o.invoke, i as u32)),
                Step::Delete(checked) => {
                    writes[ABSENT as usize].items.push((o.invoke, i as u32));
                    if let Some(existed) = checked {
                        checked_deletes[usize::from(existed)] += 1;
                    }
                }
            }
        }
        let mut slot = vec![None; ops.len()];
        for (is_read, queues) in [(true, &mut reads), (false, &mut writes)] {
            for (v, q) in queues.iter_mut().enumerate() {
                q.items.sort_unstable();
                q.done = vec![false; q.items.len()];
                q.pending = q.items.len() as u32;
                for (pos, &(_, op)) in q.items.iter().enumerate() {
                    slot[op as usize] = Some((is_read, v as ValueId, pos as u32));
                }
            }
        }
        let mut pending = Self {
            reads,
            writes,
            slot,
            checked_deletes,
            doomed: FxHashSet::default(),
        };
        for v in 0..=values {
            pending.refresh(v as ValueId);
        }
        pending
    }

    /// Marks `op` (whose step is `step`) done or pending again.
    pub(super) fn set_done(&mut self, op: u32, step: Step, done: bool) {
        if let Step::Delete(Some(existed)) = step {
            let count = &mut self.checked_deletes[usize::from(existed)];
            *count = if done { *count - 1 } else { *count + 1 };
        }
        let Some((is_read, v, pos)) = self.slot[op as usize] else {
            return;
        };
        let queue = match is_read {
            true => &mut self.reads[v as usize],
            false => &mut self.writes[v as usize],
        };
        queue.set(pos as usize, done);
        self.refresh(v);
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
    /// value, and deletes whose `existed` depends on it.
    pub(super) fn observers(&self, step: Step) -> u32 {
        match step {
            Step::Write(UNREAD) => self.checked_deletes[1],
            Step::Write(v) => self.reads[v as usize].pending + self.checked_deletes[1],
            Step::Delete(_) => self.reads[ABSENT as usize].pending + self.checked_deletes[0],
            Step::Read(_) => u32::MAX,
        }
    }
}
