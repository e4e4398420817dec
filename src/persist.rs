//! What a replica writes to stable storage, and how it is rebuilt from it.

use crate::kv::KvState;
use crate::types::{Ballot, Slot, Value};
use serde::{Deserialize, Serialize};

/// One write-ahead-log record. Replaying them in order rebuilds the acceptor and learner
/// state; replay is idempotent, so records re-logged after a snapshot may repeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// The acceptor promised this ballot.
    Promised(Ballot),
    /// The acceptor accepted `value` in `slot` under `ballot` (implies a promise of it).
    Accepted {
        /// Slot.
        slot: Slot,
        /// Ballot.
        ballot: Ballot,
        /// Value.
        value: Value,
    },
    /// Every slot up to `through` is chosen; its value is the last one recorded for it.
    Chosen {
        /// Contiguous chosen prefix.
        through: Slot,
    },
    /// A chosen value learned from a peer.
    Learned {
        /// Slot.
        slot: Slot,
        /// Value.
        value: Value,
    },
}

/// The applied state up to a slot, so the log below it can be dropped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Last slot included.
    pub through: Slot,
    /// The map and the session table after applying every slot up to `through`.
    pub kv: KvState,
}

/// Why persisted state could not be turned back into a replica.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecoveryError {
    /// A `Chosen` record covers a slot for which no value was recorded.
    #[error("log says slot {slot} is chosen but holds no value for it")]
    MissingChosenValue {
        /// The slot.
        slot: Slot,
    },
    /// A record carries a round or slot beyond the input limits (`crate::refuse`), or slot 0.
    #[error("record with a round or slot out of range")]
    OutOfRange,
    /// The snapshot's position is out of range or its session table is inconsistent.
    #[error("snapshot is malformed")]
    InvalidSnapshot,
    /// Two different values recorded as chosen for one slot.
    #[error("two different chosen values recorded for slot {slot}")]
    ConflictingChosen {
        /// The slot.
        slot: Slot,
    },
}
