//! Cheap, sound proofs of non-linearizability. They run before the search because each one
//! pins the anomaly on specific operations, which makes a far better report than "the search
//! found no order", and because they take `O(n log n)` however tangled the history is.
//!
//! A compare-and-swap that took effect counts here both as a write of its new value and as a
//! read of its expected one (it observed that value at its linearization point, so whatever
//! rules out a read of it rules out the swap too). A failed compare-and-swap only says the
//! register held *some other* value; no proof here uses it, the search does.

use super::report;
use super::{KeyHistory, ValueId, Violation, ABSENT};

/// A proof that `h` is not linearizable, if one of the cheap patterns applies.
pub(super) fn find_proof(h: &KeyHistory<'_>) -> Option<Violation> {
    unsourced_reads(h).or_else(|| overwritten_reads(h))
}

/// Reads of a value that no write could have produced by the time the read returned: never
/// written at all (or only by failed puts), or first written after the read completed.
fn unsourced_reads(h: &KeyHistory<'_>) -> Option<Violation> {
    let mut first_writer: Vec<Option<usize>> = vec![None; h.values.len() + 1];
    for (i, p) in h.ops.iter().enumerate() {
        if let Some(v) = p.step.written() {
            let slot = &mut first_writer[v as usize];
            if slot.is_none_or(|w| h.ops[w].invoke > p.invoke) {
                *slot = Some(i);
            }
        }
    }
    for (read, p) in h.ops[..h.completed].iter().enumerate() {
        let Some(v) = p.step.observed() else { continue };
        if v == ABSENT {
            continue; // The initial state is a source of absence.
        }
        match first_writer[v as usize] {
            None => return Some(report::never_written(h, read, v)),
            Some(w) if Some(h.ops[w].invoke) > p.complete => {
                return Some(report::read_from_future(h, read, w));
            }
            Some(_) => {}
        }
    }
    None
}

/// Time with room for "before everything" (the initial state) and "never completes"
/// (unknown operations).
type Time = i128;
const BEFORE_ALL: Time = -1;
const NEVER: Time = Time::MAX;

fn completion(t: Option<u64>) -> Time {
    t.map_or(NEVER, Time::from)
}

/// Reads of a value `r` such that some acknowledged write `w` of another value was invoked
/// after every write of `r` completed, and itself completed before the read was invoked. Every
/// order then puts the writes of `r` before `w` before the read, so the read cannot see `r`.
fn overwritten_reads(h: &KeyHistory<'_>) -> Option<Violation> {
    let last_source = last_sources(h);
    // Acknowledged writes in invocation order, with the earliest-completing one of each suffix.
    let writes: Vec<usize> = (0..h.completed)
        .filter(|&i| h.ops[i].step.written().is_some())
        .collect();
    let mut suffix_first_done = vec![0; writes.len()];
    for k in (0..writes.len()).rev() {
        let later = suffix_first_done.get(k + 1).copied();
        suffix_first_done[k] = match later {
            Some(l) if h.ops[l].complete <= h.ops[writes[k]].complete => l,
            _ => writes[k],
        };
    }
    for (read, p) in h.ops[..h.completed].iter().enumerate() {
        let Some(r) = p.step.observed() else { continue };
        let source_done = last_source[r as usize];
        let k = writes.partition_point(|&w| Time::from(h.ops[w].invoke) <= source_done);
        let Some(&w) = suffix_first_done.get(k) else {
            continue;
        };
        if h.ops[w].complete < Some(p.invoke) {
            return Some(report::overwritten(h, read, w, source_done));
        }
    }
    None
}

/// For each value, the latest time some write of it may have taken effect.
fn last_sources(h: &KeyHistory<'_>) -> Vec<Time> {
    let mut last: Vec<Time> = vec![BEFORE_ALL; h.values.len() + 1];
    for p in &h.ops {
        if let Some(v) = p.step.written() {
            let slot: &mut Time = &mut last[v as usize];
            *slot = (*slot).max(completion(p.complete));
        }
    }
    last
}

/// Latest-completing write of `v`, if any (`None` for absence means the initial state).
pub(super) fn latest_writer(h: &KeyHistory<'_>, v: ValueId) -> Option<usize> {
    (0..h.ops.len())
        .filter(|&i| h.ops[i].step.written() == Some(v))
        .max_by_key(|&i| completion(h.ops[i].complete))
}
