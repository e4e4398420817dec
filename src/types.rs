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
    /// Compares and then writes, atomically, in one slot (etcd's Txn). Appended last so
    /// older encodings of the other variants keep their numbers.
    Txn(Txn),
    /// Creates a lease of `ttl_ms` (within [`MIN_LEASE_TTL_MS`]..=[`MAX_LEASE_TTL_MS`]); its
    /// id is assigned at apply from a counter in the replicated state, so every replica
    /// agrees. Changes no key and takes no revision.
    LeaseGrant {
        /// Time to live without keepalives.
        ttl_ms: u64,
    },
    /// Removes a lease and deletes every key attached to it, all at one revision.
    LeaseRevoke {
        /// The lease.
        id: LeaseId,
    },
    /// A revoke proposed by the leader because the lease's deadline passed without a
    /// keepalive. Applied like [`Op::LeaseRevoke`] but outside the session table (the
    /// leader has no session; a repeat finds the lease gone, ids are never reused).
    LeaseExpire {
        /// The lease.
        id: LeaseId,
    },
}

impl Op {
    /// The key this operation touches (none for a registration; the first key for a
    /// transaction, which may touch several).
    pub fn key(&self) -> Option<&str> {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => Some(key),
            Op::Register
            | Op::LeaseGrant { .. }
            | Op::LeaseRevoke { .. }
            | Op::LeaseExpire { .. } => None,
            Op::Txn(txn) => txn.keys().next(),
        }
    }

    /// Bytes this operation occupies in a batch (key plus value plus a small header).
    pub fn size_bytes(&self) -> usize {
        const HEADER_BYTES: usize = 32;
        match self {
            Op::Put { key, value } => HEADER_BYTES + key.len() + value.len(),
            Op::Delete { key } => HEADER_BYTES + key.len(),
            Op::Register
            | Op::LeaseGrant { .. }
            | Op::LeaseRevoke { .. }
            | Op::LeaseExpire { .. } => HEADER_BYTES,
            Op::Txn(txn) => HEADER_BYTES + txn.size_bytes(),
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
    /// A transaction was applied (whichever branch its compares chose).
    Txn(TxnOutcome),
    /// A lease was granted.
    LeaseGranted {
        /// Its id.
        id: LeaseId,
        /// Its time to live.
        ttl_ms: u64,
    },
    /// A revoke (or expiry) was applied.
    LeaseRevoked {
        /// The lease existed (false: nothing was done).
        found: bool,
        /// Keys deleted with it, all at one revision.
        deleted_keys: u64,
        /// The store revision after it (grown by one if it deleted anything).
        revision: u64,
    },
    /// A lease command, or a transaction putting with a lease, was refused at apply;
    /// nothing changed.
    LeaseFailed(LeaseError),
}

/// A lease's name: assigned at apply from a counter (1, 2, ...), never reused. 0 is no
/// lease (as in etcd).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LeaseId(pub u64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Shortest lease TTL: a second, well above an election timeout, so a lease can be kept
/// alive across a leader change.
pub const MIN_LEASE_TTL_MS: u64 = 1_000;

/// Longest lease TTL: one day.
pub const MAX_LEASE_TTL_MS: u64 = 24 * 60 * 60 * 1_000;

/// Most leases the replicated state holds at once; a grant beyond is refused.
pub const MAX_LEASES: usize = 100_000;

/// Why a lease command was refused at apply.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error, Serialize, Deserialize)]
pub enum LeaseError {
    /// The lease does not exist (never granted, revoked or expired).
    #[error("requested lease not found: {0}")]
    NotFound(LeaseId),
    /// The lease table is full.
    #[error("too many leases: the store holds at most {max}")]
    TooMany {
        /// The bound.
        max: u64,
    },
    /// A TTL outside the bounds.
    #[error("lease TTL of {ttl_ms} ms is outside {MIN_LEASE_TTL_MS}..={MAX_LEASE_TTL_MS} ms")]
    BadTtl {
        /// The refused TTL.
        ttl_ms: u64,
    },
}

/// Validates a lease TTL against [`MIN_LEASE_TTL_MS`] and [`MAX_LEASE_TTL_MS`].
pub fn check_lease_ttl(ttl_ms: u64) -> Result<(), LeaseError> {
    if (MIN_LEASE_TTL_MS..=MAX_LEASE_TTL_MS).contains(&ttl_ms) {
        Ok(())
    } else {
        Err(LeaseError::BadTtl { ttl_ms })
    }
}

/// Most compares one transaction may carry.
pub const MAX_TXN_COMPARES: usize = 64;

/// Most operations one branch (success or failure) of a transaction may carry.
pub const MAX_TXN_OPS: usize = 128;

/// Bound on the keys and values a transaction carries, all compares and ops together.
/// Half a client frame (4 MiB), so a transaction within it always fits one request.
pub const MAX_TXN_BYTES: usize = 2 * 1024 * 1024;

/// Bound on the bytes of values one transaction's gets return: a get that would pass it
/// returns the key's meta without the value (as a retry does), so a reply fits a frame.
pub const MAX_TXN_READ_BYTES: usize = 2 * 1024 * 1024;

/// What the store remembers of a key besides its value (etcd's meanings).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyMeta {
    /// Store revision of the put that created the key (since it last did not exist).
    pub create_revision: u64,
    /// Store revision of the last put to the key.
    pub mod_revision: u64,
    /// 1 on create, +1 per put; a deleted key is gone, and starts at 1 again.
    pub version: u64,
}

/// How a compare relates the key's current figure to the given one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CmpOp {
    /// Equal.
    Eq,
    /// Not equal.
    Ne,
    /// Current is less than the given one.
    Lt,
    /// Current is greater than the given one.
    Gt,
}

impl CmpOp {
    /// Applies the relation: `current OP given`.
    pub fn holds<T: Ord + ?Sized>(self, current: &T, given: &T) -> bool {
        match self {
            CmpOp::Eq => current == given,
            CmpOp::Ne => current != given,
            CmpOp::Lt => current < given,
            CmpOp::Gt => current > given,
        }
    }
}

/// What a compare looks at. An absent key has version 0, mod revision 0 and no value
/// (so `value == x` is false and `value != x` is true for it).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Check {
    /// The key's version.
    Version(CmpOp, u64),
    /// The key's mod revision.
    ModRevision(CmpOp, u64),
    /// The key's value, in byte order.
    Value(CmpOp, #[serde(with = "serde_bytes")] Vec<u8>),
    /// The key exists.
    Exists,
    /// The key does not exist.
    Absent,
}

/// One condition of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Compare {
    /// The key it looks at.
    pub key: String,
    /// What must hold of it.
    pub check: Check,
}

/// One operation of a transaction branch, applied in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TxnOp {
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
    /// Read `key` as of this point of the transaction.
    Get {
        /// The key.
        key: String,
    },
    /// Set `key` to `value` and attach it to `lease` (detached from any other): when the
    /// lease is revoked or expires the key is deleted. If the lease does not exist the whole
    /// transaction is refused ([`Outcome::LeaseFailed`]). Appended last.
    PutLeased {
        /// The key.
        key: String,
        /// The new value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// The lease.
        lease: LeaseId,
    },
}

impl TxnOp {
    /// The key it touches.
    pub fn key(&self) -> &str {
        match self {
            TxnOp::Put { key, .. }
            | TxnOp::Delete { key }
            | TxnOp::Get { key }
            | TxnOp::PutLeased { key, .. } => key,
        }
    }

    /// True for put and delete.
    pub fn writes(&self) -> bool {
        !matches!(self, TxnOp::Get { .. })
    }
}

/// If every compare holds, apply `success`, else `failure`; atomically, in one slot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Txn {
    /// Conditions, all of which must hold (none: always success).
    pub compares: Vec<Compare>,
    /// Applied when every compare holds.
    pub success: Vec<TxnOp>,
    /// Applied otherwise.
    pub failure: Vec<TxnOp>,
}

impl Txn {
    /// A put applied only if the compares hold (a conditional put).
    pub fn put_if(compares: Vec<Compare>, key: String, value: Vec<u8>) -> Txn {
        Txn {
            compares,
            success: vec![TxnOp::Put { key, value }],
            failure: Vec::new(),
        }
    }

    /// A delete applied only if the compares hold (a conditional delete).
    pub fn delete_if(compares: Vec<Compare>, key: String) -> Txn {
        Txn {
            compares,
            success: vec![TxnOp::Delete { key }],
            failure: Vec::new(),
        }
    }

    /// Every key the transaction names, compares first, with repeats.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        let compared = self.compares.iter().map(|c| c.key.as_str());
        let ops = self.success.iter().chain(&self.failure).map(TxnOp::key);
        compared.chain(ops)
    }

    /// Bytes of keys and values the transaction carries (plus a small header per item).
    pub fn size_bytes(&self) -> usize {
        const ITEM_BYTES: usize = 16;
        let compares: usize = self
            .compares
            .iter()
            .map(|c| {
                let value = match &c.check {
                    Check::Value(_, v) => v.len(),
                    _ => 0,
                };
                ITEM_BYTES + c.key.len() + value
            })
            .sum();
        let ops: usize = self
            .success
            .iter()
            .chain(&self.failure)
            .map(|op| {
                let value = match op {
                    TxnOp::Put { value, .. } | TxnOp::PutLeased { value, .. } => value.len(),
                    _ => 0,
                };
                ITEM_BYTES + op.key().len() + value
            })
            .sum();
        compares + ops
    }

    /// Validates the bounds, every key, and every value against `max_value_bytes`.
    pub fn check(&self, max_value_bytes: usize) -> Result<(), InvalidInput> {
        if self.compares.len() > MAX_TXN_COMPARES {
            return Err(InvalidInput::TxnTooLarge {
                what: "compares".into(),
                count: self.compares.len(),
                max: MAX_TXN_COMPARES,
            });
        }
        for (what, ops) in [
            ("success ops", &self.success),
            ("failure ops", &self.failure),
        ] {
            if ops.len() > MAX_TXN_OPS {
                return Err(InvalidInput::TxnTooLarge {
                    what: what.into(),
                    count: ops.len(),
                    max: MAX_TXN_OPS,
                });
            }
        }
        let size_bytes = self.size_bytes();
        if size_bytes > MAX_TXN_BYTES {
            return Err(InvalidInput::TxnTooLarge {
                what: "bytes".into(),
                count: size_bytes,
                max: MAX_TXN_BYTES,
            });
        }
        for key in self.keys() {
            check_key(key)?;
        }
        for op in self.success.iter().chain(&self.failure) {
            if let TxnOp::Put { value, .. } | TxnOp::PutLeased { value, .. } = op {
                check_value(value, max_value_bytes)?;
            }
        }
        for c in &self.compares {
            if let Check::Value(_, value) = &c.check {
                check_value(value, max_value_bytes)?;
            }
        }
        Ok(())
    }
}

/// What one transaction op did.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TxnResult {
    /// A put; `replaced` tells whether the key existed before.
    Put {
        /// The key existed before.
        replaced: bool,
    },
    /// A delete; `existed` tells whether there was anything to delete.
    Delete {
        /// The key existed before.
        existed: bool,
    },
    /// A read, as of its place in the transaction.
    Get {
        /// The value, if the key exists. Also `None`, with `meta` set, in the answer to a
        /// retry: the session table does not keep values read.
        #[serde(with = "serde_bytes")]
        value: Option<Vec<u8>>,
        /// Its meta, if the key exists.
        meta: Option<KeyMeta>,
    },
}

/// What applying a transaction did.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TxnOutcome {
    /// Every compare held, so the success branch ran.
    pub succeeded: bool,
    /// The store revision after the transaction (grown by one if it wrote anything).
    pub revision: u64,
    /// One result per op of the branch that ran, in order.
    pub results: Vec<TxnResult>,
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
    /// A transaction over one of its bounds.
    #[error("transaction has {count} {what}, over the limit of {max}")]
    TxnTooLarge {
        /// Which bound: compares, success ops, failure ops, bytes.
        what: String,
        /// What it has.
        count: usize,
        /// The limit.
        max: usize,
    },
}
