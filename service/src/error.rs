use paxoskv::{InvalidInput, ReplicaId};
use serde::{Deserialize, Serialize};

/// Every error a client can get back from a replica.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum KvError {
    /// This replica does not lead; `leader_addr` is where to go, if known.
    #[error("not the leader (leader: {})", leader_addr.as_deref().unwrap_or("unknown"))]
    NotLeader {
        /// The leader's replica id, if known.
        leader: Option<ReplicaId>,
        /// The leader's address, if known.
        leader_addr: Option<String>,
    },
    /// No answer in time; the command may or may not have been applied (retry with the
    /// same id to find out).
    #[error("timed out after {timeout_ms} ms")]
    Timeout {
        /// How long the replica waited.
        timeout_ms: u64,
    },
    /// Not enough replicas answer to make progress.
    #[error("cluster unavailable: only {answered} of {total} replicas answered")]
    Unavailable {
        /// Replicas that answered.
        answered: u32,
        /// Replicas in the cluster.
        total: u32,
    },
    /// The replica cannot make progress for a local reason (for example, storage failed).
    #[error("replica unavailable: {reason}")]
    ReplicaFailed {
        /// Why.
        reason: String,
    },
    /// Key or value over the configured limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// The request is malformed.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The replica's queues are full; back off and retry.
    #[error("server busy: {0}")]
    Busy(String),
    /// The session is not in the replicas' table (evicted, or never registered): the request
    /// was not applied now, and whether an earlier attempt of it was is unknown. Open a new
    /// session (the client library does) and read before writing again if it matters.
    #[error("session expired: the request was not applied now; an earlier attempt may have been")]
    SessionExpired,
    /// A request of this session older than the last applied one: its result is gone.
    #[error("stale request: sequence {seq} is older than the last applied {last_applied}")]
    StaleRequest {
        /// The refused sequence number.
        seq: u64,
        /// The session's last applied sequence number.
        last_applied: u64,
    },
    /// The connection's identity may not make this call (for example `propose` or
    /// `set_partition` from a client certificate). Added last: bincode numbers variants.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// A watch asked for revisions this replica's bounded history no longer holds.
    /// Resume from `oldest_revision` (events below it are lost to this watch: read the
    /// current state again first) or ask another replica.
    #[error("compacted: the watch history starts at revision {oldest_revision}")]
    Compacted {
        /// The oldest revision still served.
        oldest_revision: u64,
    },
    /// The lease does not exist (never granted, revoked or expired); nothing was done.
    #[error("requested lease not found: {lease}")]
    LeaseNotFound {
        /// The lease id.
        lease: u64,
    },
}

impl From<InvalidInput> for KvError {
    fn from(e: InvalidInput) -> Self {
        match e {
            InvalidInput::EmptyKey => KvError::InvalidRequest(e.to_string()),
            InvalidInput::KeyTooLarge { .. }
            | InvalidInput::ValueTooLarge { .. }
            | InvalidInput::TxnTooLarge { .. } => KvError::TooLarge(e.to_string()),
        }
    }
}

impl KvError {
    /// True when retrying the same request elsewhere or later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            KvError::NotLeader { .. }
                | KvError::Timeout { .. }
                | KvError::Unavailable { .. }
                | KvError::ReplicaFailed { .. }
                | KvError::Busy(_)
        )
    }
}

/// An error and its causes joined by ": ", each said once: a cause whose text the message
/// already contains is skipped (several error types print their source in their message).
/// What the binaries print for a user error, instead of a `Debug` dump with a backtrace.
pub fn error_chain_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    for cause in std::iter::successors(Some(error), |e| e.source()) {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}
