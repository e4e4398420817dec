//! Finding puts whose value no read can observe.

use super::{Op, Step, ValueId, ABSENT, UNREAD};
use std::collections::HashMap;

/// Replaces the value of every put that no read can observe with [`UNREAD`].
///
/// A read observes a put only if the put is the last write ordered before it. That is
/// impossible for a read of the put's value that is due before the put is invoked, and for
/// one invoked after some acknowledged write `x` completed that was itself invoked after the
/// put completed: `x` comes between them in every order. If no read is left, the value is
/// invisible, and merging it with every other invisible value turns such puts into twins
/// (see `Search::has_twin_due_sooner`), which is what keeps histories that reuse a few values
/// across many concurrent clients tractable. Deletes that report `existed` only see whether
/// a value is present, which this does not change. Compare-and-swaps count as reads of their
/// expected value, whether they took effect, failed their comparison or are optional: each
/// can tell that value from the others. Swaps write too, and their new value is hidden the
/// same way.
pub(super) fn hide_unobservable_writes(ops: &mut [Op]) {
    let horizon = Horizon::new(ops);
    let reads = ReadsByValue::new(ops);
    for o in ops.iter_mut() {
        let hidden = match o.step.written() {
            Some(v) if v != ABSENT && v != UNREAD => {
                !reads.any_observing(v, o.invoke, horizon.after(o.deadline))
            }
            _ => false,
        };
        if hidden {
            o.step = match o.step {
                Step::Swap { expected, .. } => Step::Swap {
                    expected,
                    new: UNREAD,
                },
                _ => Step::Write(UNREAD),
            };
        }
    }
}

/// Writes that certainly take effect (acknowledged), to find the earliest one certainly
/// ordered after a given time.
struct Horizon {
    /// `(invoke, deadline)` sorted by invocation.
    writes: Vec<(u64, u64)>,
    /// `suffix_min[i]`: earliest deadline among `writes[i..]`.
    suffix_min: Vec<u64>,
}

impl Horizon {
    fn new(ops: &[Op]) -> Self {
        let mut writes: Vec<(u64, u64)> = ops
            .iter()
            .filter(|o| !o.optional && o.step.written().is_some())
            .map(|o| (o.invoke, o.deadline))
            .collect();
        writes.sort_unstable();
        let mut suffix_min = vec![u64::MAX; writes.len()];
        let mut min = u64::MAX;
        for (i, &(_, deadline)) in writes.iter().enumerate().rev() {
            min = min.min(deadline);
            suffix_min[i] = min;
        }
        Self { writes, suffix_min }
    }

    /// The earliest deadline of a write invoked after `t`: reads invoked after it are
    /// certainly ordered after that write.
    fn after(&self, t: u64) -> Option<u64> {
        let first = self.writes.partition_point(|&(invoke, _)| invoke <= t);
        self.suffix_min.get(first).copied()
    }
}

/// Reads of each value sorted by invocation, with running maxima of their deadlines.
struct ReadsByValue {
    reads: HashMap<ValueId, (Vec<u64>, Vec<u64>)>,
}

impl ReadsByValue {
    fn new(ops: &[Op]) -> Self {
        let mut reads: HashMap<ValueId, Vec<(u64, u64)>> = HashMap::new();
        for o in ops {
            if let Some(v) = o.step.compared() {
                reads.entry(v).or_default().push((o.invoke, o.deadline));
            }
        }
        let reads = reads
            .into_iter()
            .map(|(v, mut list)| {
                list.sort_unstable();
                let invokes = list.iter().map(|&(i, _)| i).collect();
                let max_deadlines = list
                    .iter()
                    .scan(0, |max, &(_, d)| {
                        *max = d.max(*max);
                        Some(*max)
                    })
                    .collect();
                (v, (invokes, max_deadlines))
            })
            .collect();
        Self { reads }
    }

    /// True if some read of `v` is due no earlier than `from` and invoked no later than
    /// `until` (`None`: no limit).
    fn any_observing(&self, v: ValueId, from: u64, until: Option<u64>) -> bool {
        let Some((invokes, max_deadlines)) = self.reads.get(&v) else {
            return false;
        };
        let count = match until {
            Some(t) => invokes.partition_point(|&i| i <= t),
            None => invokes.len(),
        };
        count > 0 && max_deadlines[count - 1] >= from
    }
}
