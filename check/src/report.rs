//! Turning evidence into readable [`Violation`]s.

use super::precheck::latest_writer;
use super::search::{Stuck, StuckReason, UNREAD};
use super::{Completion, KeyHistory, KvOp, KvResult, Operation, Step, ValueId, Violation};
use super::{ViolationKind, ABSENT};
use std::fmt;

/// Bytes of a value shown in a report; more would drown the rest.
const MAX_SHOWN_BYTES: usize = 40;

/// A read returned a value that no acknowledged or pending put ever wrote.
pub(super) fn never_written(h: &KeyHistory<'_>, read: usize, v: ValueId) -> Violation {
    let bytes = h.value(v);
    // Failed writes, and compare-and-swaps whose comparison failed (they wrote nothing).
    let refused = h.ops.iter().filter(|p| matches!(p.step, Step::ReadNot(_)));
    let failed = (h.failed.iter().copied())
        .chain(refused.map(|p| p.src))
        .find(|op| match &op.op {
            KvOp::Put { value, .. } => Some(value.as_slice()) == bytes,
            KvOp::Cas {
                value: Some(value), ..
            } => Some(value.as_slice()) == bytes,
            _ => false,
        });
    let shown = show(bytes);
    match failed {
        Some(put) => violation(
            h,
            ViolationKind::FailedWriteObserved,
            format!(
                "{} returned {shown}, which only failed {} #{} ever wrote",
                name(h, read),
                verb(&put.op),
                put.id
            ),
            vec![put, h.ops[read].src],
        ),
        None => violation(
            h,
            ViolationKind::NeverWritten,
            format!(
                "{} returned {shown}, which no put ever wrote",
                name(h, read)
            ),
            vec![h.ops[read].src],
        ),
    }
}

/// A read returned a value first written after the read had completed.
pub(super) fn read_from_future(h: &KeyHistory<'_>, read: usize, writer: usize) -> Violation {
    let (r, w) = (&h.ops[read], &h.ops[writer]);
    violation(
        h,
        ViolationKind::ReadFromFuture,
        format!(
            "{} completed at {} returning {}, but the first put of that value (#{}) was only \
             invoked at {}",
            name(h, read),
            r.src.complete_time,
            show(value_read(h, read)),
            w.src.id,
            w.invoke
        ),
        vec![r.src, w.src],
    )
}

/// `read` returned a value whose every write (all done by `source_done`) precedes the
/// acknowledged write `over`, which completed before `read` was invoked.
pub(super) fn overwritten(
    h: &KeyHistory<'_>,
    read: usize,
    over: usize,
    source_done: i128,
) -> Violation {
    let (r, o) = (&h.ops[read], &h.ops[over]);
    let value = value_read(h, read);
    let source = latest_writer(h, r_value(h, read));
    let why = match (source, value) {
        (None, _) => "the key was never deleted".to_string(),
        (Some(_), None) => format!("every delete had completed by {source_done}"),
        (Some(_), Some(_)) => format!("every put of that value had completed by {source_done}"),
    };
    let mut text = format!(
        "{} (invoked at {}) returned {}, but {} (invoked at {}, acknowledged at {}) had \
         overwritten it: {why}",
        name(h, read),
        r.invoke,
        show(value),
        name(h, over),
        o.invoke,
        o.src.complete_time
    );
    let kind = overwrite_kind(h, over, &mut text);
    let mut ops = vec![r.src, o.src];
    ops.extend(source.map(|s| h.ops[s].src));
    violation(h, kind, text, ops)
}

/// Names the anomaly behind an overwritten read, adding the deciding fact to `text`.
fn overwrite_kind(h: &KeyHistory<'_>, over: usize, text: &mut String) -> ViolationKind {
    let v = match h.ops[over].step.written() {
        Some(ABSENT) | None => return ViolationKind::ResurrectedDelete,
        Some(v) => v,
    };
    let done = h.ops[over].complete;
    let later_read = (0..h.completed)
        .find(|&i| h.ops[i].step.observed() == Some(v) && Some(h.ops[i].invoke) > done);
    match later_read {
        Some(i) => {
            text.push_str(&format!("; {} later did see its value", name(h, i)));
            ViolationKind::StaleRead
        }
        None => {
            text.push_str("; no later read ever saw its value");
            ViolationKind::LostWrite
        }
    }
}

/// The search found no order; reports where it got furthest.
pub(super) fn no_linearization(h: &KeyHistory<'_>, stuck: &Stuck) -> Violation {
    let writer = match stuck.last_writer {
        Some(w) => format!(" (written by #{})", h.ops[w].src.id),
        None if stuck.state == ABSENT => " (initial state)".to_string(),
        None => String::new(),
    };
    let state = match stuck.state {
        UNREAD => "a value no read can observe".to_string(),
        v => show(h.value(v)),
    };
    let blocking = &h.ops[stuck.blocking];
    let problem = match (stuck.reason, stuck.tried, blocking.complete) {
        (StuckReason::NoWriterLeft, tried, _) => format!(
            "{} would leave {}, which returned {}, with no write of that value that can still \
             come before it returned at {}; no other choice fares better",
            tried.map_or("the next move".to_string(), |t| format!(
                "ordering {}",
                name(h, t)
            )),
            name(h, stuck.blocking),
            show(value_read(h, stuck.blocking)),
            blocking.src.complete_time,
        ),
        (StuckReason::DeadlineMissed, _, Some(t)) => format!(
            "{} must take effect before it returned at {t}, but its response does not fit, \
             and none of the {} operations that may still go before it makes it fit",
            name(h, stuck.blocking),
            stuck.candidates.len()
        ),
        (StuckReason::DeadlineMissed, _, None) => format!(
            "timed-out {} must take effect by {} to explain the reads, but none of the {} \
             operations that may still go before it makes it fit",
            name(h, stuck.blocking),
            blocking.deadline.unwrap_or_default(),
            stuck.candidates.len()
        ),
    };
    let text = format!(
        "no order of the operations explains every response (all were tried). Deepest dead \
         end: after {} of {} acknowledged operations the register holds {state}{writer}; then \
         {problem}",
        stuck.linearized, stuck.total,
    );
    let mut ops: Vec<&Operation> = stuck.candidates.iter().map(|&i| h.ops[i].src).collect();
    ops.extend(stuck.last_writer.map(|w| h.ops[w].src));
    ops.extend(stuck.tried.map(|t| h.ops[t].src));
    ops.push(blocking.src);
    violation(h, ViolationKind::NoLinearization, text, ops)
}

fn violation(
    h: &KeyHistory<'_>,
    kind: ViolationKind,
    explanation: String,
    mut ops: Vec<&Operation>,
) -> Violation {
    ops.sort_by_key(|op| (op.invoke_time, op.id));
    ops.dedup_by_key(|op| op.id);
    Violation {
        key: h.key.to_string(),
        kind,
        explanation,
        ops: ops.into_iter().cloned().collect(),
    }
}

/// "get #12 by client 3".
fn name(h: &KeyHistory<'_>, i: usize) -> String {
    let op = h.ops[i].src;
    format!("{} #{} by client {}", verb(&op.op), op.id, op.client)
}

fn verb(op: &KvOp) -> &'static str {
    match op {
        KvOp::Get { .. } => "get",
        KvOp::Put { .. } => "put",
        KvOp::Delete { .. } => "delete",
        KvOp::Cas { .. } => "cas",
    }
}

/// The value a read returned, or a swap expected (its "read" half); a failed swap's
/// expected value otherwise.
fn r_value(h: &KeyHistory<'_>, read: usize) -> ValueId {
    h.ops[read].step.compared().unwrap_or(ABSENT)
}

fn value_read<'a>(h: &KeyHistory<'a>, read: usize) -> Option<&'a [u8]> {
    h.value(r_value(h, read))
}

/// A value as text when it is printable UTF-8, else as hex; long values are cut.
pub(super) fn show(value: Option<&[u8]>) -> String {
    let Some(bytes) = value else {
        return "absent".to_string();
    };
    let cut = &bytes[..bytes.len().min(MAX_SHOWN_BYTES)];
    let mut text = match std::str::from_utf8(cut) {
        Ok(s) if !s.chars().any(char::is_control) => format!("{s:?}"),
        _ => cut
            .iter()
            .fold("0x".to_string(), |acc, b| acc + &format!("{b:02x}")),
    };
    if cut.len() < bytes.len() {
        text.push_str(&format!("... ({} bytes)", bytes.len()));
    }
    text
}

/// Operations one per line, for [`Violation`]'s message.
pub(super) struct OpList<'a>(pub &'a [Operation]);

impl fmt::Display for OpList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for op in self.0 {
            write!(f, "\n    {op}")?;
        }
        Ok(())
    }
}

impl fmt::Display for KvOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvOp::Get { key } => write!(f, "get({key:?})"),
            KvOp::Put { key, value } => write!(f, "put({key:?}, {})", show(Some(value))),
            KvOp::Delete { key } => write!(f, "delete({key:?})"),
            KvOp::Cas {
                key,
                expected,
                value,
            } => write!(
                f,
                "cas({key:?}, {} -> {})",
                show(expected.as_deref()),
                show(value.as_deref())
            ),
        }
    }
}

impl fmt::Display for Completion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Completion::Ok(KvResult::Get(v)) => f.write_str(&show(v.as_deref())),
            Completion::Ok(KvResult::Put) => f.write_str("ok"),
            Completion::Ok(KvResult::Delete { existed: None }) => f.write_str("ok"),
            Completion::Ok(KvResult::Delete {
                existed: Some(existed),
            }) => write!(f, "ok (existed: {existed})"),
            Completion::Ok(KvResult::Cas { succeeded: true }) => f.write_str("swapped"),
            Completion::Ok(KvResult::Cas { succeeded: false }) => {
                f.write_str("not swapped (compare failed)")
            }
            Completion::Failed => f.write_str("failed"),
            Completion::Unknown => f.write_str("unknown (no response)"),
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = match self.completion {
            Completion::Unknown => "?".to_string(),
            _ => self.complete_time.to_string(),
        };
        write!(
            f,
            "#{} client {}: {} [{}, {end}] -> {}",
            self.id, self.client, self.op, self.invoke_time, self.completion
        )
    }
}
