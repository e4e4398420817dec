//! Small named values shared by every role: ballots, slots, commands and their results.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Index of a replica in the cluster configuration (0-based).
pub type ReplicaId = u32;

/// Position in the replicated log. Slot 0 is never used; the first real slot is 1.
pub type Slot = u64;

/// Longest key accepted anywhere in the system.
pub const MAX_KEY_BYTES: usize = 1024;

/// Default bound on a value; the server may configure a smaller or larger one.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;

/// A proposal number. Totally ordered by `(round, replica)`, so two proposers can never
/// use the same ballot.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Ballot {
    /// Grows with every new leadership attempt.
    pub round: u64,
    /// The proposer that owns this ballot.
    pub replica: ReplicaId,
}

impl Ballot {
    /// The ballot no proposer ever uses; every acceptor starts promised to it.
    pub const ZERO: Ballot = Ballot {
        round: 0,
        replica: 0,
    };

    /// A ballot of `replica` that is higher than `seen`. Never wraps: a replica only ever
    /// sees rounds up to [`crate::refuse::MAX_ROUND`] (higher ones are refused input), so a
    /// round here at `u64::MAX` means the replica's own state is broken.
    pub fn next_after(seen: Ballot, replica: ReplicaId) -> Ballot {
        let round = seen
            .round
            .checked_add(1)
            .expect("rounds stay below u64::MAX");
        Ballot { round, replica }
    }
}

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.round, self.replica)
    }
}

/// Identifies one client request across retries: a retry reuses the same id, so the
/// replicated state applies it at most once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CommandId {
    /// Random per client session.
    pub client_id: u64,
    /// Grows by one per request of that session; a session has one request outstanding.
    pub seq: u64,
}

/// A change to the key-value map.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: String,
        /// The new value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: String,
    },
    /// Opens the session `CommandId::client_id` (with a sequence number below the session's
    /// first write; the client library uses 1). Sessions are
    /// registered through the log so every replica agrees which exist: a write from a
    /// session the table no longer holds is refused as expired instead of being applied a
    /// second time (Ongaro's thesis §6.3). Touches no key.
    Register,
}

impl Op {
    /// The key this operation touches (none for a registration).
    pub fn key(&self) -> Option<&str> {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => Some(key),
            Op::Register => None,
        }
    }

    /// Bytes this operation occupies in a batch (key plus value plus a small header).
    pub fn size_bytes(&self) -> usize {
        const HEADER_BYTES: usize = 32;
        match self {
            Op::Put { key, value } => HEADER_BYTES + key.len() + value.len(),
            Op::Delete { key } => HEADER_BYTES + key.len(),
            Op::Register => HEADER_BYTES,
        }
    }
}

/// A client command: what to do and who asked.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Command {
    /// Request identity used for exactly-once application.
    pub id: CommandId,
    /// The change.
    pub op: Op,
}

/// What a slot holds: a batch of commands. An empty batch is a no-op, used to fill holes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Value {
    /// Commands applied in this order when the slot is chosen.
    pub commands: Vec<Command>,
}

impl Value {
    /// The no-op value used to fill holes in the log.
    pub fn noop() -> Value {
        Value::default()
    }

    /// True for a hole-filling no-op.
    pub fn is_noop(&self) -> bool {
        self.commands.is_empty()
    }

    /// Approximate encoded size, used for batch bounds.
    pub fn size_bytes(&self) -> usize {
        self.commands.iter().map(|c| c.op.size_bytes()).sum()
    }
}

/// The result of applying one command to the map.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// A put was applied; `replaced` tells whether the key existed before.
    Put {
        /// The key existed before this put.
        replaced: bool,
    },
    /// A delete was applied; `existed` tells whether there was anything to delete.
    Delete {
        /// The key existed before this delete.
        existed: bool,
    },
    /// A session was opened.
    Registered,
}

/// Validates a key: not empty, at most [`MAX_KEY_BYTES`].
pub fn check_key(key: &str) -> Result<(), InvalidInput> {
    if key.is_empty() {
        return Err(InvalidInput::EmptyKey);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(InvalidInput::KeyTooLarge {
            size_bytes: key.len(),
            max_bytes: MAX_KEY_BYTES,
        });
    }
    Ok(())
}

/// Validates a value against a configured limit.
pub fn check_value(value: &[u8], max_value_bytes: usize) -> Result<(), InvalidInput> {
    if value.len() > max_value_bytes {
        return Err(InvalidInput::ValueTooLarge {
            size_bytes: value.len(),
            max_bytes: max_value_bytes,
        });
    }
    Ok(())
}

/// Why a request was refused before it reached consensus.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum InvalidInput {
    /// Keys must not be empty.
    #[error("empty key")]
    EmptyKey,
    /// Key over the limit.
    #[error("key of {size_bytes} bytes is over the limit of {max_bytes} bytes")]
    KeyTooLarge {
        /// Size of the refused key.
        size_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// Value over the limit.
    #[error("value of {size_bytes} bytes is over the limit of {max_bytes} bytes")]
    ValueTooLarge {
        /// Size of the refused value.
        size_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
}
