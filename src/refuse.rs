//! Peer input is untrusted: a buggy or hostile process may send anything. Every message is
//! checked against these limits before it can reach an assertion about the replica's own
//! state; a message that fails is ignored (or Nacked where the protocol has a refusal) and
//! counted here by cause, so operators can see it.
//!
//! Limits on numbers from the wire:
//! - Rounds above [`MAX_ROUND`] (`u64::MAX / 2`) are refused, so `round + 1` on any accepted
//!   round never wraps. A replica would need 2^63 elections to get there honestly.
//! - A round more than [`MAX_ROUND_JUMP`] (2^32) above the highest round this replica has
//!   seen is refused too. Without that, one forged round just below `MAX_ROUND` would make
//!   every later election produce a refused ballot and end liveness forever; with it a
//!   forger needs ~2^31 accepted messages to get there. Honest rounds grow by one per
//!   election attempt (about 3 per second for an isolated replica probing), so an honest
//!   peer is 2^32 rounds ahead only after centuries.
//! - Slots above [`MAX_SLOT`] (`u64::MAX / 2`) are refused, so slot arithmetic (`+ 1`, `+`
//!   a window) on accepted slots never overflows. Slot 0 is never used and is refused where
//!   a real slot is expected.

use crate::config::Config;
use crate::types::{check_key, check_value, Ballot, Op, ReplicaId, Slot, Value};

/// Highest round accepted from any input.
pub const MAX_ROUND: u64 = u64::MAX / 2;
/// Highest jump above the highest round seen so far that an input may carry.
pub const MAX_ROUND_JUMP: u64 = 1 << 32;
/// Highest slot (or commit index, or chosen prefix) accepted from any input.
pub const MAX_SLOT: Slot = u64::MAX / 2;

/// Why an input was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Refusal {
    /// From a replica id outside the cluster, or from ourselves.
    #[error("sender is not a peer")]
    NotAPeer,
    /// A ballot whose round is above [`MAX_ROUND`], jumps too far, or whose owner is not a
    /// member.
    #[error("ballot out of range")]
    BallotOutOfRange,
    /// A prepare, accept or heartbeat under a ballot the sender does not own.
    #[error("ballot not owned by its sender")]
    BallotNotSender,
    /// Slot 0 where a real slot is expected, or a slot, commit index or chosen prefix above
    /// [`MAX_SLOT`].
    #[error("slot out of range")]
    SlotOutOfRange,
    /// An accept more than `max_open_slots` above our chosen prefix.
    #[error("accept too far ahead of the chosen prefix")]
    SlotBeyondWindow,
    /// An accept with a different value for a slot this replica knows chosen.
    #[error("accept contradicts a chosen value")]
    ChosenConflict,
    /// A promise with too many entries, entries outside what was asked, or an entry accepted
    /// under a ballot above the promise.
    #[error("malformed promise")]
    MalformedPromise,
    /// Chosen values that do not start where we asked, are too many, or claim an impossible
    /// chosen prefix.
    #[error("malformed chosen entries")]
    MalformedChosen,
    /// A heartbeat ack for a confirmation round this leader never sent.
    #[error("ack for a round never sent")]
    UnsentRound,
    /// A snapshot whose position is out of range or whose session table is inconsistent.
    #[error("malformed snapshot")]
    MalformedSnapshot,
    /// A snapshot that is not ahead of our chosen prefix (a late duplicate, or forged).
    #[error("snapshot not ahead of us")]
    StaleSnapshot,
    /// An accept or chosen entry whose value breaks the key/value/batch limits a correct
    /// leader keeps (`Config::max_value_bytes`, `MAX_KEY_BYTES`, `max_batch_bytes`,
    /// `max_batch_commands`).
    #[error("value over the key/value/batch limits")]
    OversizedValue,
    /// An accept for a new slot that would put the entries above the chosen prefix over
    /// `Config::max_open_bytes`.
    #[error("accept would overfill the open log")]
    OpenLogFull,
}

impl Refusal {
    /// Every cause, in a fixed order.
    pub const ALL: [Refusal; 13] = [
        Refusal::NotAPeer,
        Refusal::BallotOutOfRange,
        Refusal::BallotNotSender,
        Refusal::SlotOutOfRange,
        Refusal::SlotBeyondWindow,
        Refusal::ChosenConflict,
        Refusal::MalformedPromise,
        Refusal::MalformedChosen,
        Refusal::UnsentRound,
        Refusal::MalformedSnapshot,
        Refusal::StaleSnapshot,
        Refusal::OversizedValue,
        Refusal::OpenLogFull,
    ];

    fn index(self) -> usize {
        Refusal::ALL
            .iter()
            .position(|&c| c == self)
            .expect("every cause is in ALL")
    }
}

/// Refused inputs since start, by cause.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RefusedCounts {
    counts: [u64; Refusal::ALL.len()],
}

impl RefusedCounts {
    /// Inputs refused for `cause`.
    pub fn get(&self, cause: Refusal) -> u64 {
        self.counts[cause.index()]
    }

    /// Inputs refused for any cause.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Every cause with its count.
    pub fn iter(&self) -> impl Iterator<Item = (Refusal, u64)> + '_ {
        Refusal::ALL.iter().map(|&c| (c, self.get(c)))
    }

    pub(crate) fn count(&mut self, cause: Refusal) {
        let n = &mut self.counts[cause.index()];
        *n = n.saturating_add(1);
    }
}

/// A round acceptable from input, given the highest round seen so far.
pub(crate) fn round_ok(round: u64, max_seen: u64) -> bool {
    round <= MAX_ROUND && round <= max_seen.saturating_add(MAX_ROUND_JUMP)
}

/// A ballot acceptable from input: sane round, owned by a member.
pub(crate) fn ballot_ok(ballot: Ballot, max_seen: u64, replicas: u32) -> bool {
    round_ok(ballot.round, max_seen) && ballot.replica < replicas
}

/// A position (commit index, chosen prefix) acceptable from input; 0 is fine here.
pub(crate) fn position_ok(slot: Slot) -> bool {
    slot <= MAX_SLOT
}

/// A real slot acceptable from input.
pub(crate) fn slot_ok(slot: Slot) -> bool {
    (1..=MAX_SLOT).contains(&slot)
}

/// Checks a ballot and its owner against the sender.
pub(crate) fn check_own_ballot(
    ballot: Ballot,
    from: ReplicaId,
    max_seen: u64,
    replicas: u32,
) -> Result<(), Refusal> {
    if !ballot_ok(ballot, max_seen, replicas) {
        return Err(Refusal::BallotOutOfRange);
    }
    if ballot.replica != from {
        return Err(Refusal::BallotNotSender);
    }
    Ok(())
}

/// A slot's value as a correct leader builds it: every key and value within the limits, and
/// the batch within `max_batch_commands` and `max_batch_bytes` (a single command may exceed
/// the batch bytes: the leader gives a large command a slot of its own).
pub(crate) fn value_ok(value: &Value, cfg: &Config) -> bool {
    let commands_ok = value.commands.iter().all(|c| match &c.op {
        Op::Put { key, value } => {
            check_key(key).is_ok() && check_value(value, cfg.max_value_bytes).is_ok()
        }
        Op::Delete { key } => check_key(key).is_ok(),
        Op::Register | Op::LeaseRevoke { .. } | Op::LeaseExpire { .. } => true,
        Op::LeaseGrant { ttl_ms } => crate::types::check_lease_ttl(*ttl_ms).is_ok(),
        Op::Txn(txn) => txn.check(cfg.max_value_bytes).is_ok(),
    });
    let batch_ok = value.commands.len() <= cfg.max_batch_commands
        && (value.commands.len() <= 1 || value.size_bytes() <= cfg.max_batch_bytes);
    commands_ok && batch_ok
}
