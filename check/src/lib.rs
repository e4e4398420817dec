//! Linearizability checker for key-value histories (Wing & Gong / Lowe / Porcupine style).
//!
//! A test harness records every client operation with the time it was invoked and the time
//! its response arrived (any monotone integer clock: microseconds, simulator steps, ...) into
//! a [`History`], then asks [`check`] whether some total order of the operations explains every
//! response while respecting real time: if `a` completed before `b` was invoked, `a` must come
//! first. Two operations whose intervals touch (`a.complete_time == b.invoke_time`) count as
//! concurrent, so a coarse clock never produces a false alarm.
//!
//! A key-value map is a product of independent registers, so each key is checked on its own
//! (P-compositionality): the histories stay small and a report names the key that broke.
//! Per key the model is a register of `Option<Vec<u8>>`, initially absent.
//!
//! Besides gets, puts and deletes there is a compare-and-swap on one key ([`KvOp::Cas`]): if
//! the register holds `expected` it is set to the new value (or cleared), atomically, and the
//! answer says whether that happened. It touches one key, so the per-key split stays exact.
//! In the model a CAS that succeeded reads its expected value and writes its new one in one
//! step; one that failed is a read that observed some value *other than* the expected one
//! (so it constrains the order just as a read does); an unknown one either did the swap,
//! or changed nothing. The cheap proofs below treat a succeeded CAS as a write of its new
//! value and a read of its expected one; failed comparisons are left to the search.
//!
//! Outcomes of an operation:
//! * [`Completion::Ok`]: took effect exactly once, somewhere inside `[invoke, complete]`;
//! * [`Completion::Failed`]: definitely did not take effect, so it is dropped;
//! * [`Completion::Unknown`]: timed out; it may take effect at any time after its invocation,
//!   or never. Operations recorded but never completed count as unknown.
//!
//! The check runs cheap proofs first (a read of a value nobody wrote, a read of a value whose
//! every write was overwritten before the read began, ...) because they produce precise
//! reports, then a bounded just-in-time linearization search with memoization that decides
//! everything else. When the search exceeds [`CheckConfig::max_states`] the answer is
//! [`CheckResult::Inconclusive`] rather than a guess.
//!
//! Deciding linearizability is NP-complete in general, so the search prunes hard (see the
//! `search` module): with unique put values, 10,000 operations on one key from 30 concurrent
//! clients check in well under a second. The hard case is many concurrent clients writing a
//! handful of repeated values to one key, where a read says little about which put it saw;
//! such histories may come out inconclusive, so give every put a unique value when you can.

#![warn(missing_docs)]

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

mod precheck;
mod report;
mod search;
#[cfg(test)]
mod tests;

/// A client request against the key-value store.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvOp {
    /// Read the current value of `key`.
    Get {
        /// The key read.
        key: String,
    },
    /// Set `key` to `value`.
    Put {
        /// The key written.
        key: String,
        /// The value written.
        value: Vec<u8>,
    },
    /// Remove `key`.
    Delete {
        /// The key removed.
        key: String,
    },
    /// Compare-and-swap: if `key` currently holds `expected` (`None`: the key is absent),
    /// set it to `value` (`None`: delete it), atomically; otherwise change nothing. The
    /// result says which ([`KvResult::Cas`]).
    Cas {
        /// The key compared and written.
        key: String,
        /// The value the key must hold for the swap to happen; `None` means absent.
        expected: Option<Vec<u8>>,
        /// The value written when it does; `None` deletes the key.
        value: Option<Vec<u8>>,
    },
}

impl KvOp {
    /// The key this operation touches.
    pub fn key(&self) -> &str {
        match self {
            KvOp::Get { key }
            | KvOp::Put { key, .. }
            | KvOp::Delete { key }
            | KvOp::Cas { key, .. } => key,
        }
    }
}

/// The response of a successful operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvResult {
    /// A get's answer: the value, or `None` when the key was absent.
    Get(Option<Vec<u8>>),
    /// A put was applied.
    Put,
    /// A delete was applied.
    Delete {
        /// Whether the key existed before the delete, if the server said; `None` is not
        /// checked.
        existed: Option<bool>,
    },
    /// A compare-and-swap's answer: whether the key held the expected value (and so was
    /// written). A failed comparison is still an acknowledged operation: it observed a
    /// value other than the expected one.
    Cas {
        /// The comparison held and the write was applied.
        succeeded: bool,
    },
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Completion {
    /// Acknowledged with this result; took effect exactly once between invoke and complete.
    Ok(KvResult),
    /// Definitely did not take effect (e.g. rejected before reaching consensus).
    Failed,
    /// No answer (timeout, crash): may take effect at any time after invocation, or never.
    /// Its completion time is treated as +infinity.
    Unknown,
}

/// One recorded client operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Operation {
    /// Identifier, unique within the history; reports refer to operations by it.
    pub id: u64,
    /// The client (session) that issued the operation; only used in reports.
    pub client: u64,
    /// What was requested.
    pub op: KvOp,
    /// When the request was sent.
    pub invoke_time: u64,
    /// When the response arrived; ignored for [`Completion::Unknown`].
    pub complete_time: u64,
    /// How it ended.
    pub completion: Completion,
}

/// A recorded set of operations, in any order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    ops: Vec<Operation>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// A history made of already-built operations (e.g. loaded from a file). Their ids
    /// should be unique so reports are unambiguous.
    pub fn from_ops(ops: Vec<Operation>) -> Self {
        Self { ops }
    }

    /// Records that `client` sent `op` at `time`; returns the id to complete it with. Until
    /// completed, the operation counts as [`Completion::Unknown`].
    pub fn invoke(&mut self, client: u64, op: KvOp, time: u64) -> u64 {
        let id = self.ops.len() as u64;
        self.ops.push(Operation {
            id,
            client,
            op,
            invoke_time: time,
            complete_time: time,
            completion: Completion::Unknown,
        });
        id
    }

    /// Records the response of operation `id` at `time`.
    ///
    /// # Panics
    /// If no operation has this id (a bug in the recording harness).
    #[track_caller]
    pub fn complete(&mut self, id: u64, completion: Completion, time: u64) {
        let op = self.op_mut(id);
        op.completion = completion;
        op.complete_time = time;
    }

    /// Records that operation `id` timed out: it may or may not have taken effect.
    ///
    /// # Panics
    /// If no operation has this id (a bug in the recording harness).
    #[track_caller]
    pub fn unknown(&mut self, id: u64) {
        self.op_mut(id).completion = Completion::Unknown;
    }

    /// All operations, in recording order.
    pub fn ops(&self) -> &[Operation] {
        &self.ops
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    #[track_caller]
    fn op_mut(&mut self, id: u64) -> &mut Operation {
        // Recorded ids are indices; `from_ops` histories may use any ids, so fall back to a scan.
        let index = match self.ops.get(id as usize) {
            Some(op) if op.id == id => Some(id as usize),
            _ => self.ops.iter().position(|op| op.id == id),
        };
        match index {
            Some(i) => &mut self.ops[i],
            None => panic!("history has no operation with id {id}"),
        }
    }
}

/// Limits of the search.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckConfig {
    /// Distinct search states (set of ordered operations plus register value) explored per
    /// key before giving up with [`CheckResult::Inconclusive`]. Each costs a few dozen bytes.
    pub max_states: usize,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            max_states: 1_000_000,
        }
    }
}

/// The verdict on a history.
#[must_use]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckResult {
    /// Every key has a linearization.
    Ok {
        /// Distinct keys in the history.
        keys_checked: usize,
        /// Operations in the history (failed and unknown ones included).
        ops_checked: usize,
    },
    /// Some key has no linearization; the first such key in key order is reported.
    Err(Violation),
    /// No violation was found, but this key could not be decided (search limit reached or
    /// malformed input).
    Inconclusive {
        /// The undecided key.
        key: String,
        /// Why it could not be decided.
        reason: String,
    },
}

impl CheckResult {
    /// True for [`CheckResult::Ok`].
    pub fn is_ok(&self) -> bool {
        matches!(self, CheckResult::Ok { .. })
    }

    /// The violation, if one was found.
    pub fn violation(&self) -> Option<&Violation> {
        match self {
            CheckResult::Err(v) => Some(v),
            _ => None,
        }
    }
}

/// Best guess at what went wrong, when the evidence makes it clear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ViolationKind {
    /// A read returned a value no put of this key ever wrote.
    NeverWritten,
    /// A read returned a value written only by a put that was reported as failed.
    FailedWriteObserved,
    /// A read returned a value whose every put was invoked after the read completed.
    ReadFromFuture,
    /// A read returned a value that had been overwritten before the read began; a later read
    /// did observe the overwriting value.
    StaleRead,
    /// An acknowledged put was overwritten by an older value: a later read returned the older
    /// value (or absence) and no later read ever observed the put.
    LostWrite,
    /// A read returned a value that an acknowledged delete had removed before the read began.
    ResurrectedDelete,
    /// No total order explains the responses; nothing more specific is clear.
    NoLinearization,
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ViolationKind::NeverWritten => "read of a value never written",
            ViolationKind::FailedWriteObserved => "failed write observed",
            ViolationKind::ReadFromFuture => "read from the future",
            ViolationKind::StaleRead => "stale read",
            ViolationKind::LostWrite => "lost write",
            ViolationKind::ResurrectedDelete => "resurrected delete",
            ViolationKind::NoLinearization => "no linearization",
        })
    }
}

/// Proof (or, for [`ViolationKind::NoLinearization`], the search's best evidence) that one
/// key's history is not linearizable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("linearizability violation on key {key:?}: {kind}\n  {explanation}\n  operations involved:{}", report::OpList(.ops))]
pub struct Violation {
    /// The key whose history has no linearization.
    pub key: String,
    /// What kind of anomaly this looks like.
    pub kind: ViolationKind,
    /// Human-readable reasoning.
    pub explanation: String,
    /// The operations the explanation refers to, in invocation order.
    pub ops: Vec<Operation>,
}

/// Checks `history` with the default [`CheckConfig`].
pub fn check(history: &History) -> CheckResult {
    check_with(history, &CheckConfig::default())
}

/// Checks `history`, key by key in key order. A violation on any key wins over an
/// inconclusive key, since it is a definite answer.
pub fn check_with(history: &History, config: &CheckConfig) -> CheckResult {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in &history.ops {
        by_key.entry(op.op.key()).or_default().push(op);
    }
    let mut undecided = None;
    for (key, ops) in &by_key {
        match check_one_key(key, ops, config, Prechecks::On) {
            CheckResult::Ok { .. } => {}
            CheckResult::Err(v) => return CheckResult::Err(v),
            inconclusive => {
                undecided.get_or_insert(inconclusive);
            }
        }
    }
    undecided.unwrap_or(CheckResult::Ok {
        keys_checked: by_key.len(),
        ops_checked: history.ops.len(),
    })
}

/// Whether to run the cheap proofs before the search; tests turn them off to exercise the
/// search on its own.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Prechecks {
    On,
    #[cfg_attr(not(test), allow(dead_code))]
    Off,
}

fn check_one_key(
    key: &str,
    ops: &[&Operation],
    config: &CheckConfig,
    prechecks: Prechecks,
) -> CheckResult {
    let inconclusive = |reason: String| CheckResult::Inconclusive {
        key: key.to_string(),
        reason,
    };
    let h = match KeyHistory::build(key, ops) {
        Ok(h) => h,
        Err(reason) => return inconclusive(reason),
    };
    if prechecks == Prechecks::On {
        if let Some(v) = precheck::find_proof(&h) {
            return CheckResult::Err(v);
        }
    }
    match search::run(&h, config.max_states) {
        search::Outcome::Linearizable => CheckResult::Ok {
            keys_checked: 1,
            ops_checked: ops.len(),
        },
        search::Outcome::Stuck(stuck) => CheckResult::Err(report::no_linearization(&h, &stuck)),
        search::Outcome::Exhausted { states } => inconclusive(format!(
            "search gave up after {states} states (max_states = {}) over {} operations",
            config.max_states,
            h.ops.len()
        )),
    }
}

/// Register value id: 0 is "absent", `n > 0` is `KeyHistory::values[n - 1]`.
type ValueId = u32;
const ABSENT: ValueId = 0;

/// What an operation does to the register, with values interned to small integers so
/// model steps and memo keys are cheap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Must observe this value; leaves the register unchanged.
    Read(ValueId),
    /// Sets the register to this value.
    Write(ValueId),
    /// Clears the register; if `Some`, whether it must have held a value.
    Delete(Option<bool>),
    /// A compare-and-swap whose comparison failed: must observe any value but this one;
    /// leaves the register unchanged.
    ReadNot(ValueId),
    /// A compare-and-swap that took effect: must observe `expected`, then sets `new`
    /// ([`ABSENT`] for a delete), atomically.
    Swap {
        /// The value it must observe.
        expected: ValueId,
        /// The value it leaves.
        new: ValueId,
    },
}

impl Step {
    /// The register after this step from `state`, or `None` if the response contradicts it.
    fn apply(self, state: ValueId) -> Option<ValueId> {
        match self {
            Step::Read(v) => (v == state).then_some(state),
            Step::Write(v) => Some(v),
            Step::Delete(None) => Some(ABSENT),
            Step::Delete(Some(existed)) => (existed == (state != ABSENT)).then_some(ABSENT),
            Step::ReadNot(v) => (v != state).then_some(state),
            Step::Swap { expected, new } => (expected == state).then_some(new),
        }
    }

    /// The value this step leaves in the register, if it changes it.
    fn written(self) -> Option<ValueId> {
        match self {
            Step::Read(_) | Step::ReadNot(_) => None,
            Step::Write(v) | Step::Swap { new: v, .. } => Some(v),
            Step::Delete(_) => Some(ABSENT),
        }
    }

    /// The value the register must hold for this step to fit: a read's value, or the
    /// expected value of a compare-and-swap that took effect.
    fn observed(self) -> Option<ValueId> {
        match self {
            Step::Read(v) | Step::Swap { expected: v, .. } => Some(v),
            _ => None,
        }
    }

    /// The value whose presence in the register decides whether this step fits: what
    /// [`Step::observed`] gives, and a failed compare-and-swap's expected value.
    fn compared(self) -> Option<ValueId> {
        match self {
            Step::ReadNot(v) => Some(v),
            step => step.observed(),
        }
    }
}

/// One operation reduced to what the register model needs.
#[derive(Clone, Copy, Debug)]
struct Prepared<'a> {
    src: &'a Operation,
    step: Step,
    invoke: u64,
    /// When it was acknowledged; `None` for unknown operations (they may take effect
    /// arbitrarily late).
    complete: Option<u64>,
    /// The search's view: the latest point it must be ordered by, or `None` if it can be left
    /// out of the search altogether (see [`plan_unknowns`]).
    deadline: Option<u64>,
    /// May be left out of the order (unknown operations only).
    optional: bool,
}

/// The operations of one key that matter, ready for checking.
struct KeyHistory<'a> {
    key: &'a str,
    /// Acknowledged operations sorted by `(invoke, complete)`, then unknown writes by
    /// `invoke`.
    ops: Vec<Prepared<'a>>,
    /// How many of `ops` are acknowledged (they come first).
    completed: usize,
    /// Interned values, see [`ValueId`].
    values: Vec<&'a [u8]>,
    /// Failed operations, kept only to explain reads of values that were never applied.
    failed: Vec<&'a Operation>,
}

impl<'a> KeyHistory<'a> {
    fn build(key: &'a str, ops: &[&'a Operation]) -> Result<Self, String> {
        let mut interner = Interner::default();
        let mut known = Vec::new();
        let mut unknown = Vec::new();
        let mut failed = Vec::new();
        for &op in ops {
            match &op.completion {
                Completion::Failed => failed.push(op),
                Completion::Unknown => unknown.extend(prepare_unknown(op, &mut interner)),
                Completion::Ok(result) => known.push(prepare_ok(op, result, &mut interner)?),
            }
        }
        known.sort_by_key(|p| (p.invoke, p.complete, p.src.id));
        unknown.sort_by_key(|p| (p.invoke, p.src.id));
        let completed = known.len();
        known.extend(unknown);
        plan_unknowns(&mut known, completed, interner.values.len());
        Ok(Self {
            key,
            ops: known,
            completed,
            values: interner.values,
            failed,
        })
    }

    /// Bytes of an interned value; `None` for absent.
    fn value(&self, v: ValueId) -> Option<&'a [u8]> {
        (v != ABSENT).then(|| self.values[v as usize - 1])
    }
}

#[derive(Default)]
struct Interner<'a> {
    ids: HashMap<&'a [u8], ValueId>,
    values: Vec<&'a [u8]>,
}

impl<'a> Interner<'a> {
    fn intern(&mut self, value: &'a [u8]) -> ValueId {
        *self.ids.entry(value).or_insert_with(|| {
            self.values.push(value);
            self.values.len() as ValueId
        })
    }

    /// Like [`Interner::intern`], with `None` standing for [`ABSENT`].
    fn intern_option(&mut self, value: &'a Option<Vec<u8>>) -> ValueId {
        value.as_deref().map_or(ABSENT, |v| self.intern(v))
    }
}

fn prepare_ok<'a>(
    op: &'a Operation,
    result: &'a KvResult,
    interner: &mut Interner<'a>,
) -> Result<Prepared<'a>, String> {
    if op.complete_time < op.invoke_time {
        return Err(format!(
            "malformed history: operation #{} completes at {} before its invocation at {}",
            op.id, op.complete_time, op.invoke_time
        ));
    }
    let step = match (&op.op, result) {
        (KvOp::Get { .. }, KvResult::Get(None)) => Step::Read(ABSENT),
        (KvOp::Get { .. }, KvResult::Get(Some(v))) => Step::Read(interner.intern(v)),
        (KvOp::Put { value, .. }, KvResult::Put) => Step::Write(interner.intern(value)),
        (KvOp::Delete { .. }, KvResult::Delete { existed }) => Step::Delete(*existed),
        (KvOp::Cas { expected, .. }, KvResult::Cas { succeeded: false }) => {
            Step::ReadNot(interner.intern_option(expected))
        }
        (
            KvOp::Cas {
                expected, value, ..
            },
            KvResult::Cas { succeeded: true },
        ) => Step::Swap {
            expected: interner.intern_option(expected),
            new: interner.intern_option(value),
        },
        (_, result) => {
            return Err(format!(
                "malformed history: operation #{} ({:?}) has mismatched result {result:?}",
                op.id, op.op
            ))
        }
    };
    Ok(Prepared {
        src: op,
        step,
        invoke: op.invoke_time,
        complete: Some(op.complete_time),
        deadline: Some(op.complete_time),
        optional: false,
    })
}

/// Unknown gets constrain nothing (there is no answer to check), so they are dropped here.
/// An unknown compare-and-swap either took effect (it observed its expected value and wrote)
/// or it did not (its comparison failed, or it never ran): both leave the register as if it
/// were an optional swap, so that is what it becomes.
fn prepare_unknown<'a>(op: &'a Operation, interner: &mut Interner<'a>) -> Option<Prepared<'a>> {
    let step = match &op.op {
        KvOp::Get { .. } => return None,
        KvOp::Put { value, .. } => Step::Write(interner.intern(value)),
        KvOp::Delete { .. } => Step::Delete(None),
        KvOp::Cas {
            expected, value, ..
        } => Step::Swap {
            expected: interner.intern_option(expected),
            new: interner.intern_option(value),
        },
    };
    Some(Prepared {
        src: op,
        step,
        invoke: op.invoke_time,
        complete: None,
        deadline: None,
        optional: true,
    })
}

/// Gives each unknown write a deadline, because an operation pending forever would double the
/// search space for the rest of the history.
///
/// Why this is exact: call the operations that can tell an unknown write `u` of value `w`
/// happened its *observers*: acknowledged reads of `w` and swaps expecting `w`, failed
/// compare-and-swaps expecting any other value (without `u` the register might hold it),
/// and deletes reporting `existed: true` (after a put) or `existed: false` (after a delete).
/// If `u` is ordered where no observer follows before the next write, removing `u` changes
/// nothing any response depends on. So if any order works, one works where every unknown
/// write that takes part is followed by one of its observers, i.e. ordered before the last
/// observer completes. After that, `u` can be dropped. An unknown swap expecting `w` is an
/// observer too, but one that may itself be dropped, so then `u` only gets the end of the
/// history as its deadline (whatever is ordered after the last acknowledged operation can
/// be removed). An unknown write whose value has no other writer and is observed is not
/// even optional: it must come before the first observation of its value completes.
fn plan_unknowns(ops: &mut [Prepared<'_>], completed: usize, values: usize) {
    let seen = Observations::collect(ops, values);
    for p in &mut ops[completed..] {
        let Some(w) = p.step.written() else { continue };
        let (span, by_delete) = match w {
            ABSENT => (seen.reads[ABSENT as usize], seen.checked_deletes[0]),
            v => (seen.reads[v as usize], seen.checked_deletes[1]),
        };
        let sole_source = w != ABSENT && seen.writers[w as usize] == 1;
        match span {
            Some((first, _)) if sole_source && first >= p.invoke => {
                p.deadline = Some(first);
                p.optional = false;
            }
            _ => {
                let last = span
                    .map(|s| s.1)
                    .max(by_delete)
                    .max(seen.last_read_not_except(w))
                    .max(seen.chained[w as usize].then_some(seen.end));
                p.deadline = last.filter(|&t| t >= p.invoke);
            }
        }
    }
}

/// When acknowledged operations observe the register, by value.
struct Observations {
    /// First and last completion of the reads of each value.
    reads: Vec<Option<(u64, u64)>>,
    /// Writes (acknowledged or unknown) of each value.
    writers: Vec<usize>,
    /// Last completion of the deletes reporting `existed: false` and `existed: true`.
    checked_deletes: [Option<u64>; 2],
    /// The value whose failed compare-and-swaps complete last, that last completion, and
    /// the last completion of those expecting any other value.
    read_nots: (ValueId, Option<u64>, Option<u64>),
    /// Values some unknown swap expects.
    chained: Vec<bool>,
    /// Last completion of any acknowledged operation.
    end: u64,
}

impl Observations {
    fn collect(ops: &[Prepared<'_>], values: usize) -> Self {
        let mut read_nots: Vec<Option<u64>> = vec![None; values + 1];
        let mut seen = Self {
            reads: vec![None; values + 1],
            writers: vec![0; values + 1],
            checked_deletes: [None; 2],
            read_nots: (ABSENT, None, None),
            chained: vec![false; values + 1],
            end: 0,
        };
        for p in ops {
            match (p.step.observed(), p.complete) {
                (Some(v), Some(done)) => {
                    let span = seen.reads[v as usize].get_or_insert((done, done));
                    *span = (span.0.min(done), span.1.max(done));
                }
                (Some(v), None) => seen.chained[v as usize] = true,
                (None, _) => {}
            }
            match (p.step, p.complete) {
                (Step::Delete(Some(existed)), done) => {
                    let last = &mut seen.checked_deletes[usize::from(existed)];
                    *last = (*last).max(done);
                }
                (Step::ReadNot(v), done) => {
                    let last = &mut read_nots[v as usize];
                    *last = (*last).max(done);
                }
                _ => {}
            }
            if let Some(v) = p.step.written() {
                seen.writers[v as usize] += 1;
            }
            seen.end = seen.end.max(p.complete.unwrap_or(0));
        }
        for (v, &done) in read_nots.iter().enumerate() {
            let (best, last, others) = &mut seen.read_nots;
            if done > *last {
                (*best, *last, *others) = (v as ValueId, done, (*last).max(*others));
            } else {
                *others = (*others).max(done);
            }
        }
        seen
    }

    /// Last completion of the failed compare-and-swaps expecting anything but `v`.
    fn last_read_not_except(&self, v: ValueId) -> Option<u64> {
        let (best, last, others) = self.read_nots;
        if best == v {
            others
        } else {
            last
        }
    }
}
