//! Just-in-time linearization search (Wing & Gong, Lowe; the variant Porcupine uses).
//!
//! Call and return events of one key sit in a doubly linked list ordered by time. Scanning
//! from the head, every call met before the first return belongs to an operation that may be
//! ordered next (nothing still pending had to finish before it started). Ordering one lifts
//! both its events out of the list and restarts the scan; meeting a return means that
//! operation can no longer be ordered anywhere, so the search backtracks. A configuration is
//! determined by the set of done operations and the register value, so explored
//! configurations are memoized and never explored twice.
//!
//! On top of that, four reductions keep concurrent histories tractable; each only skips
//! moves that another explored move makes redundant:
//! * a read (or failed compare-and-swap) the current value satisfies is ordered at once,
//!   with no alternatives;
//! * of several candidates doing the same thing, only the one due first is tried;
//! * an optional (timed-out) write is only ordered where some candidate needs it right then
//!   (see `Search::needed_now`), otherwise it waits or is left out;
//! * a configuration where a pending read needs a value the register does not hold and no
//!   pending write can produce before the read's deadline is abandoned at once.
//!
//! The search is iterative (explicit stack) so long histories cannot overflow the call stack.

mod list;
mod memo;
mod pending;
mod visibility;

use super::{KeyHistory, Step, ValueId, ABSENT};
use list::EventList;
use memo::{Bitset, Memo};
use pending::Pending;

/// Result of searching one key.
pub(super) enum Outcome {
    /// A linearization exists.
    Linearizable,
    /// No linearization exists; evidence from the deepest point the search reached.
    Stuck(Stuck),
    /// The state budget ran out first.
    Exhausted {
        /// States memoized when the search stopped.
        states: usize,
    },
}

/// Where the search got furthest before failing: the material for a report. Operations are
/// indices into `KeyHistory::ops`.
pub(super) struct Stuck {
    /// Acknowledged operations ordered at that point.
    pub linearized: usize,
    /// Acknowledged operations in the search.
    pub total: usize,
    /// The operation that could not be explained from there.
    pub blocking: usize,
    /// Why `blocking` could not be explained.
    pub reason: StuckReason,
    /// The move that would have left `blocking` unexplainable, if that is how it ended.
    pub tried: Option<usize>,
    /// Register value at that point ([`UNREAD`] stands for any value no read can observe).
    pub state: ValueId,
    /// The operation that wrote `state` in that partial order, if any.
    pub last_writer: Option<usize>,
    /// Operations that were candidates at that point (each was tried and led nowhere).
    pub candidates: Vec<usize>,
}

/// Why the search could not go on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum StuckReason {
    /// The operation's deadline passed and its response fits no reachable value.
    DeadlineMissed,
    /// A read's value can no longer be produced in time: every write of it that could start
    /// before the read's deadline is ordered and overwritten, or ruled out.
    NoWriterLeft,
}

/// Stands for every value that no read can observe (see `visibility`): nothing can tell
/// those values apart, so merging them lets the memo and the twin rule do more.
pub(super) const UNREAD: ValueId = ValueId::MAX;

/// Candidates listed in a report; more would bury the interesting ones.
const MAX_REPORTED_CANDIDATES: usize = 8;

pub(super) fn run(h: &KeyHistory<'_>, max_states: usize) -> Outcome {
    let search = Search::new(h);
    if search.ops.is_empty() {
        return Outcome::Linearizable;
    }
    search.run(max_states)
}

/// What the search knows about one operation.
#[derive(Clone, Copy)]
struct Op {
    /// Index into `KeyHistory::ops`.
    id: usize,
    step: Step,
    optional: bool,
    invoke: u64,
    deadline: u64,
}

/// How an operation was dealt with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Choice {
    /// A read matching the current value, ordered without considering alternatives: moving a
    /// read that could go now to the front of any order that works keeps it working (reads
    /// change nothing, and no pending operation had to finish before it was invoked).
    Eager,
    /// Ordered here, one candidate among several.
    Applied,
    /// An optional operation ruled out (equivalently, ordered where it has no effect), with
    /// no alternatives left: either nothing pending can observe it any more, or its deadline
    /// has come and ordering it was already tried.
    Dropped,
}

/// One choice on the explicit stack.
struct Frame {
    op: u32,
    prev_state: ValueId,
    new_state: ValueId,
    choice: Choice,
    /// The pass it was chosen in, to resume the scan after undoing it.
    pass: Pass,
}

/// Where the scan over candidates stands.
#[derive(Clone, Copy)]
struct Cursor {
    node: u32,
    pass: Pass,
}

/// The order candidates are tried in: it does not change what is explored, only how soon a
/// linearization is found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Acknowledged candidates, in invocation order.
    Acknowledged,
    /// Optional candidates, only once the acknowledged ones are exhausted, so timed-out
    /// operations are brought in where something needs them rather than wherever they
    /// happen to come first.
    Optional,
}

struct Search {
    /// The operations taking part, sorted by `(invoke, deadline)`.
    ops: Vec<Op>,
    list: EventList,
    pending: Pending,
    /// Operations already ordered (or, if optional, already ruled out).
    done: Bitset,
    /// The same for optional operations alone, indexed by `optional_index`.
    optional_done: Bitset,
    optional_index: Vec<u32>,
    /// Acknowledged operations: how many, and how many are done. The search succeeds when
    /// all are: optional operations left over are simply ruled out.
    acknowledged: usize,
    acknowledged_done: usize,
    /// Lowest acknowledged operation not done yet.
    first_open: usize,
    /// `reach[i]`: last operation invoked no later than `i`'s deadline. Nothing beyond
    /// `reach[first_open]` can be done yet (it would have to precede `first_open`), which
    /// keeps memo keys short.
    reach: Vec<u32>,
    memo: Memo,
    stack: Vec<Frame>,
    state: ValueId,
    deepest: Option<Stuck>,
}

impl Search {
    fn new(h: &KeyHistory<'_>) -> Self {
        let ops = search_ops(h);
        let mut optional_index = vec![u32::MAX; ops.len()];
        let mut optional = 0;
        for (i, o) in ops.iter().enumerate() {
            if o.optional {
                optional_index[i] = optional;
                optional += 1;
            }
        }
        let mut search = Self {
            pending: Pending::new(&ops, h.values.len()),
            list: EventList::new(ops.iter().map(|o| (o.invoke, o.deadline))),
            done: Bitset::new(ops.len()),
            optional_done: Bitset::new(optional as usize),
            optional_index,
            acknowledged: ops.len() - optional as usize,
            acknowledged_done: 0,
            first_open: 0,
            reach: reach(&ops),
            ops,
            memo: Memo::default(),
            stack: Vec::new(),
            state: ABSENT,
            deepest: None,
        };
        search.advance_first_open();
        search
    }

    fn run(mut self, max_states: usize) -> Outcome {
        if self.acknowledged == 0 {
            return Outcome::Linearizable;
        }
        let mut cursor = self.rescan();
        let mut fresh = true;
        loop {
            let mut chosen = None;
            let mut dead = false;
            if std::mem::take(&mut fresh) {
                if let Some((op, choice)) = self.free_move() {
                    // It loses nothing (see `Choice`), so it is the only move worth trying.
                    chosen = self.attempt(op, choice, Pass::Acknowledged);
                    dead = chosen.is_none();
                }
            }
            if chosen.is_none() && !dead {
                (chosen, dead) = self.scan_step(&mut cursor);
            }
            if dead {
                match self.backtrack() {
                    Some(resume) => cursor = resume,
                    None => return Outcome::Stuck(self.evidence()),
                }
            }
            if let Some(frame) = chosen {
                if self.acknowledged_done == self.acknowledged {
                    return Outcome::Linearizable;
                }
                if self.memo.len() >= max_states {
                    return Outcome::Exhausted {
                        states: self.memo.len(),
                    };
                }
                self.state = frame.new_state;
                self.list.lift(frame.op);
                self.stack.push(frame);
                cursor = self.rescan();
                fresh = true;
            }
        }
    }

    fn rescan(&self) -> Cursor {
        Cursor {
            node: self.list.first(),
            pass: Pass::Acknowledged,
        }
    }

    /// Looks at one event: tries a candidate, or handles the first pending deadline once
    /// every candidate has been tried. Returns the move made and whether the configuration
    /// turned out dead.
    fn scan_step(&mut self, cursor: &mut Cursor) -> (Option<Frame>, bool) {
        let node = cursor.node;
        let op = self.list.op(node);
        if self.list.is_call(node) {
            let mut chosen = None;
            let optional = self.ops[op as usize].optional;
            if optional == (cursor.pass == Pass::Optional)
                && !self.has_twin_due_sooner(op)
                && (!optional || self.needed_now(op))
            {
                chosen = self.attempt(op, Choice::Applied, cursor.pass);
            }
            if chosen.is_none() {
                cursor.node = self.list.next(node);
            }
            return (chosen, false);
        }
        if cursor.pass == Pass::Acknowledged {
            *cursor = Cursor {
                node: self.list.first(),
                pass: Pass::Optional,
            };
            return (None, false);
        }
        if self.ops[op as usize].optional {
            // Its deadline: ordering it was tried, so rule it out and carry on.
            let chosen = self.attempt(op, Choice::Dropped, cursor.pass);
            let dead = chosen.is_none();
            return (chosen, dead);
        }
        // An acknowledged operation cannot be ordered any later, and every candidate before
        // it led nowhere.
        self.note_dead_end(op, StuckReason::DeadlineMissed, None);
        (None, true)
    }

    /// Undoes choices until one that had alternatives; returns where to resume the scan, or
    /// `None` when the whole search space is exhausted.
    fn backtrack(&mut self) -> Option<Cursor> {
        loop {
            let frame = self.stack.pop()?;
            self.list.unlift(frame.op);
            self.unmark(frame.op);
            self.state = frame.prev_state;
            if frame.choice == Choice::Applied {
                return Some(Cursor {
                    node: self.list.after_call(frame.op),
                    pass: frame.pass,
                });
            }
            // A forced move: its configuration fails iff the one before it does.
        }
    }

    /// A candidate read that the current value satisfies, or an optional candidate nothing
    /// pending can observe any more, if there is one.
    fn free_move(&self) -> Option<(u32, Choice)> {
        self.list.candidates().find_map(|op| {
            let o = &self.ops[op as usize];
            let fits_unchanged = match o.step {
                Step::Read(v) => v == self.state,
                Step::ReadNot(v) => v != self.state,
                _ => false,
            };
            if fits_unchanged {
                Some((op, Choice::Eager))
            } else if o.optional && self.pending.observers(o.step) == 0 {
                Some((op, Choice::Dropped))
            } else {
                None
            }
        })
    }

    /// True if another candidate does exactly what `op` does but is due sooner, so ordering
    /// it instead loses nothing. Take any order that works and starts with `op`: put the twin
    /// first instead (it is a candidate now) and `op` where the twin stood (`op` is due no
    /// sooner), or, if the twin was left out, leave `op` out instead (`op` is optional too).
    /// An acknowledged operation never defers to an optional twin: the twin may never be
    /// ordered (see `needed_now`), and a swap done twice in a row is not a swap done once.
    /// For histories that reuse values this cuts the search from every order of the twins
    /// to one.
    fn has_twin_due_sooner(&self, op: u32) -> bool {
        let me = &self.ops[op as usize];
        self.list.candidates().any(|other| {
            let o = &self.ops[other as usize];
            o.step == me.step
                && (o.deadline, other) < (me.deadline, op)
                && (me.optional || !o.optional)
        })
    }

    /// Whether some other candidate needs the optional write `op` right now: a read of its
    /// value, a swap expecting it, a failed compare-and-swap expecting the current value, or
    /// a delete whose `existed` it would make right. If none does, ordering `op` now is never
    /// necessary: take any order that works and has `op` next, and move `op` later, to just
    /// before the first operation that does depend on it (everything in between is content
    /// with the current value, as nothing needs `op`); that operation is then a candidate
    /// (`op`'s deadline is no sooner than its completion, see `plan_unknowns`), so the move
    /// is tried there. If nothing ever depends on it, it is left out.
    fn needed_now(&self, op: u32) -> bool {
        let Some(w) = self.ops[op as usize].step.written() else {
            return true;
        };
        if w == self.state {
            return false; // Changes nothing.
        }
        let present = w != ABSENT;
        self.list.candidates().any(|other| {
            other != op
                && match self.ops[other as usize].step {
                    Step::Read(v) | Step::Swap { expected: v, .. } => v == w,
                    Step::ReadNot(v) => v == self.state,
                    Step::Delete(Some(existed)) => existed == present,
                    Step::Write(_) | Step::Delete(None) => false,
                }
        })
    }

    /// Orders `op` next (or rules it out, for `Dropped`) when its response fits the current
    /// value and the resulting configuration is alive and unexplored.
    fn attempt(&mut self, op: u32, choice: Choice, pass: Pass) -> Option<Frame> {
        let o = self.ops[op as usize];
        let new_state = match choice {
            Choice::Dropped => self.state,
            Choice::Applied | Choice::Eager => o.step.apply(self.state)?,
        };
        self.mark(op);
        if self.acknowledged_done == self.acknowledged || self.alive_and_new(op, new_state) {
            return Some(Frame {
                op,
                prev_state: self.state,
                new_state,
                choice,
                pass,
            });
        }
        self.unmark(op);
        None
    }

    fn alive_and_new(&mut self, op: u32, new_state: ValueId) -> bool {
        if let Some(read) = self.pending.lost_read(new_state) {
            self.note_dead_end(read, StuckReason::NoWriterLeft, Some(op));
            return false;
        }
        let end = self.reach[self.first_open] as usize;
        let optional = self.optional_done.words();
        self.memo
            .insert(&self.done, self.first_open, end, new_state, optional)
    }

    fn mark(&mut self, op: u32) {
        let i = op as usize;
        self.pending.set_done(op, &self.ops[i], true);
        self.done.set(i);
        if self.ops[i].optional {
            self.optional_done.set(self.optional_index[i] as usize);
        } else {
            self.acknowledged_done += 1;
            self.advance_first_open();
        }
    }

    fn unmark(&mut self, op: u32) {
        let i = op as usize;
        self.pending.set_done(op, &self.ops[i], false);
        self.done.clear(i);
        if self.ops[i].optional {
            self.optional_done.clear(self.optional_index[i] as usize);
        } else {
            self.acknowledged_done -= 1;
            self.first_open = self.first_open.min(i);
        }
    }

    fn advance_first_open(&mut self) {
        while self.first_open < self.ops.len()
            && (self.ops[self.first_open].optional || self.done.get(self.first_open))
        {
            self.first_open += 1;
        }
    }

    /// Keeps the deepest dead end as the report's evidence: it is where the history stops
    /// making sense under the most favourable order found. A `tentative` operation is marked
    /// done but not part of the configuration being reported.
    fn note_dead_end(&mut self, blocking: u32, reason: StuckReason, tentative: Option<u32>) {
        let tried = tentative.map(|t| &self.ops[t as usize]);
        let linearized = self.acknowledged_done - usize::from(tried.is_some_and(|t| !t.optional));
        if self
            .deepest
            .as_ref()
            .is_some_and(|d| d.linearized >= linearized)
        {
            return;
        }
        let last_writer = self
            .stack
            .iter()
            .rev()
            .map(|f| &self.ops[f.op as usize])
            .find(|o| o.step.written().is_some())
            .map(|o| o.id);
        let candidates = self.list.candidates().take(MAX_REPORTED_CANDIDATES);
        self.deepest = Some(Stuck {
            linearized,
            total: self.acknowledged,
            blocking: self.ops[blocking as usize].id,
            reason,
            tried: tried.map(|t| t.id),
            state: self.state,
            last_writer,
            candidates: candidates.map(|c| self.ops[c as usize].id).collect(),
        });
    }

    /// The deepest dead end noted. Every failed branch ends at a noted dead end (memo hits
    /// repeat branches that did), so the fallback only guards against a broken invariant.
    fn evidence(&mut self) -> Stuck {
        self.deepest.take().unwrap_or_else(|| Stuck {
            linearized: 0,
            total: self.acknowledged,
            blocking: self.ops[0].id,
            reason: StuckReason::DeadlineMissed,
            tried: None,
            state: ABSENT,
            last_writer: None,
            candidates: Vec::new(),
        })
    }
}

/// The operations that take part in the search, sorted by `(invoke, deadline)`.
fn search_ops(h: &KeyHistory<'_>) -> Vec<Op> {
    let mut ops: Vec<Op> = (0..h.ops.len())
        .filter_map(|id| {
            let p = &h.ops[id];
            Some(Op {
                id,
                step: p.step,
                optional: p.optional,
                invoke: p.invoke,
                deadline: p.deadline?,
            })
        })
        .collect();
    ops.sort_by_key(|o| (o.invoke, o.deadline, o.id));
    visibility::hide_unobservable_writes(&mut ops);
    ops
}

/// For each operation, the last operation invoked no later than its deadline (operations are
/// sorted by invocation).
fn reach(ops: &[Op]) -> Vec<u32> {
    ops.iter()
        .map(|o| (ops.partition_point(|q| q.invoke <= o.deadline) - 1) as u32)
        .collect()
}
