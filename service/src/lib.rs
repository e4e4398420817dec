//! The paxoskv wire interface: two tarpc services sharing one TCP port per replica.
//!
//! - [`ReplicaRpc`]: replica to replica (`prepare`, `accept`, `learn`, `fetch_chosen`).
//! - [`KvRpc`]: client to replica (`get`, `scan`, `count`, `put`, `delete`, `propose`,
//!   `status`).
//!
//! A connection (TLS or plaintext) starts with a preamble: one tag byte that names the service
//! ([`ServiceTag`]) and an optional bearer token, answered by the server ([`tls`]); then it
//! carries length-delimited bincode frames with an explicit maximum length.

#![warn(missing_docs)]

mod error;
pub mod frames;
pub mod tls;
mod transport;

pub use error::{error_chain_text, KvError};
pub use frames::{guarded_server_transport, FrameBudget, FrameLimits};
pub use tls::{Caller, Dialer, SecurityError};
pub use transport::{
    bincode_transport, connect_kv, connect_replica, frame_codec, read_service_tag, ServiceTag,
    KV_MAX_FRAME_BYTES, REPLICA_MAX_FRAME_BYTES,
};

pub use paxoskv::kv::{KeyRange, ScanPage, MAX_SCAN_LIMIT, MAX_SCAN_REPLY_BYTES};
use paxoskv::message::{Accept, FetchChosen, Learn, Prepare, Response};
pub use paxoskv::watch::{Event, EventKind};
use paxoskv::{Command, CommandId, KeyMeta, Outcome, ReplicaId, Slot, Txn, TxnOutcome};
use serde::{Deserialize, Serialize};

/// How a GET is served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadMode {
    /// The leader confirms leadership with a majority and answers at or after the commit
    /// index seen when the read arrived.
    #[default]
    Linearizable,
    /// The contacted replica answers from its own applied state; may be stale.
    Stale,
}

/// Answer to a GET.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetReply {
    /// The value, or `None` if the key does not exist.
    pub value: Option<Vec<u8>>,
    /// Replica that answered.
    pub served_by: ReplicaId,
    /// True when the answer came from local state without a leadership check.
    pub stale: bool,
    /// Where the leader is, so the client can go there directly next time.
    pub leader_addr: Option<String>,
}

/// Answer to a SCAN: one page of entries in key byte order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanReply {
    /// The entries, and where the next page starts if there is one.
    pub page: ScanPage,
    /// Replica that answered.
    pub served_by: ReplicaId,
    /// True when the answer came from local state without a leadership check.
    pub stale: bool,
    /// Where the leader is, so the client can go there directly next time.
    pub leader_addr: Option<String>,
}

/// Answer to a COUNT.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountReply {
    /// Keys in the range.
    pub keys: u64,
    /// Replica that answered.
    pub served_by: ReplicaId,
    /// True when the answer came from local state without a leadership check.
    pub stale: bool,
    /// Where the leader is, so the client can go there directly next time.
    pub leader_addr: Option<String>,
}

/// Answer to a PUT, DELETE or PROPOSE.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteReply {
    /// What applying the command did.
    pub outcome: Outcome,
    /// Where the leader is, so the client can go there directly next time.
    pub leader_addr: Option<String>,
}

/// Reply to `txn`: which branch ran, the store revision after it, one result per op.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnReply {
    /// What applying the transaction did (the first application's, for a retry).
    pub outcome: TxnOutcome,
    /// The replica that answered (the leader), for the client to go straight to it.
    pub leader_addr: Option<String>,
}

/// Reply to `get_meta`: a key's value with its revisions, and the store revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetMetaReply {
    /// The value; `None` if the key does not exist.
    pub value: Option<Vec<u8>>,
    /// The key's revisions; `None` if it does not exist.
    pub meta: Option<KeyMeta>,
    /// The lease the key is attached to, if any (it is deleted when the lease ends).
    pub lease: Option<u64>,
    /// The store revision the read saw.
    pub revision: u64,
    /// The replica that answered.
    pub served_by: ReplicaId,
    /// True when served from this replica's own state (may be behind).
    pub stale: bool,
    /// The leader's address, if known.
    pub leader_addr: Option<String>,
}

/// Reply to `watch`: the matching events from the asked revision, in revision order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchReply {
    /// The events (the writes of one transaction share a revision and come together).
    pub events: Vec<Event>,
    /// Ask from this revision next: every revision below it was looked at. Empty
    /// `events` with a larger `next_revision` is progress through non-matching writes.
    pub next_revision: u64,
    /// The replica that answered.
    pub served_by: ReplicaId,
}

/// Reply to `lease_grant`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrantReply {
    /// The new lease's id (never reused).
    pub lease: u64,
    /// Its TTL.
    pub ttl_ms: u64,
    /// The leader's address.
    pub leader_addr: Option<String>,
}

/// Reply to `lease_revoke`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRevokeReply {
    /// The keys deleted with the lease (all at one revision).
    pub deleted_keys: u64,
    /// The store revision after the revoke.
    pub revision: u64,
    /// The leader's address.
    pub leader_addr: Option<String>,
}

/// Reply to `lease_keepalive`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseKeepAliveReply {
    /// The lease lives this long from now unless kept alive again.
    pub ttl_ms: u64,
    /// The leader's address.
    pub leader_addr: Option<String>,
}

/// Reply to `lease_ttl`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTtlReply {
    /// The TTL it was granted (each keepalive restarts it).
    pub ttl_ms: u64,
    /// Time left on the leader's clock before it expires, unless kept alive.
    pub remaining_ms: u64,
    /// Keys attached to it.
    pub keys: u64,
    /// The leader's address.
    pub leader_addr: Option<String>,
}

/// Counters of injected failures (`-f`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureStats {
    /// Messages dropped by failure injection (acceptor neither acted nor answered).
    pub dropped_messages: u64,
    /// Messages that passed through.
    pub passed_messages: u64,
}

/// What one replica reports about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// This replica's index.
    pub id: ReplicaId,
    /// This replica's address.
    pub addr: String,
    /// "leader", "candidate" or "follower".
    pub role: String,
    /// The known leader, if any.
    pub leader: Option<ReplicaId>,
    /// The leader's address, if known.
    pub leader_addr: Option<String>,
    /// Highest ballot promised, as "round.replica".
    pub promised: String,
    /// Contiguous prefix of the log known chosen and applied.
    pub applied_through: Slot,
    /// Number of keys in the map.
    pub keys: u64,
    /// Order-independent digest of the map, to compare replicas.
    pub map_digest: u64,
    /// Failure injection counters.
    pub failures: FailureStats,
    /// Failure injection description ("off", "drop 0.25", "down 0.25").
    pub fail_mode: String,
}

/// One piece of a snapshot pushed to a replica that fell behind the sender's compacted log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// Last slot the snapshot includes.
    pub through: Slot,
    /// Size of the whole encoded snapshot.
    pub total_bytes: u64,
    /// Where `data` starts.
    pub offset: u64,
    /// The bytes.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// Largest chunk of a snapshot in one message (well inside the frame limit).
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// Replica-to-replica protocol. Every method is idempotent: retries and duplicates are safe.
/// An acceptor that fails (injected or real) does not answer; the caller times out.
#[tarpc::service]
pub trait ReplicaRpc {
    /// Phase 1a -> `Promise` or `Nack`.
    async fn prepare(from: ReplicaId, request: Prepare) -> Response;
    /// Phase 2a -> `Accepted` or `Nack`.
    async fn accept(from: ReplicaId, request: Accept) -> Response;
    /// Heartbeat and commit announcement -> `LearnAck` or `Nack`.
    async fn learn(from: ReplicaId, request: Learn) -> Response;
    /// Catch-up: chosen values from a slot on -> `Chosen`.
    async fn fetch_chosen(from: ReplicaId, request: FetchChosen) -> Response;
    /// Catch-up past a compacted log: receives one chunk of a snapshot; answers the offset
    /// expected next, or why the chunk was refused.
    async fn install_snapshot(from: ReplicaId, chunk: SnapshotChunk) -> Result<u64, String>;
}

/// Client-facing protocol. Any replica may be contacted; writes to a follower are forwarded to
/// the leader, and replies name the leader so the client can go there next time.
#[tarpc::service]
pub trait KvRpc {
    /// Read a key.
    async fn get(key: String, mode: ReadMode) -> Result<GetReply, KvError>;
    /// Open the session `id.client_id` (with `id.seq == 1`) through the log; writes of a
    /// session the replicas do not hold fail with `SessionExpired`.
    async fn register_session(id: CommandId) -> Result<WriteReply, KvError>;
    /// Set a key. `id` makes retries exactly-once.
    async fn put(id: CommandId, key: String, value: Vec<u8>) -> Result<WriteReply, KvError>;
    /// Remove a key. `id` makes retries exactly-once.
    async fn delete(id: CommandId, key: String) -> Result<WriteReply, KvError>;
    /// Submit a command for consensus. Followers use it to forward writes to the leader;
    /// `forwarded` stops a second hop.
    async fn propose(command: Command, forwarded: bool) -> Result<WriteReply, KvError>;
    /// This replica's view of itself and the cluster.
    async fn status() -> ReplicaStatus;
    /// Fault injection for tests: drop all traffic between this replica and `blocked`
    /// (empty heals). Refused unless the server runs with `--enable-fault-control`.
    async fn set_partition(blocked: Vec<ReplicaId>) -> Result<(), KvError>;
    // New methods go last: tarpc numbers them in order on the wire, so appending keeps
    // older clients and replicas (a follower forwarding `propose`) understood.
    /// Read the keys of `range` after `after` (the previous page's `next_after`), in byte
    /// order: at most `limit` entries (capped at [`MAX_SCAN_LIMIT`]) and about
    /// [`MAX_SCAN_REPLY_BYTES`] of keys and values. `mode` as for `get`.
    async fn scan(
        range: KeyRange,
        after: Option<String>,
        limit: u32,
        mode: ReadMode,
    ) -> Result<ScanReply, KvError>;
    /// Count the keys of `range`. `mode` as for `get`.
    async fn count(range: KeyRange, mode: ReadMode) -> Result<CountReply, KvError>;
    /// Compares, then the success or failure ops, atomically in one slot; exactly once per
    /// `id` like `put`. A failed compare is not an error (`outcome.succeeded` is false).
    async fn txn(id: CommandId, txn: Txn) -> Result<TxnReply, KvError>;
    /// `get` with the key's revisions and the store revision.
    async fn get_meta(key: String, mode: ReadMode) -> Result<GetMetaReply, KvError>;
    /// Long-poll of the changes of `range`: the events with revision >= `from_revision`
    /// (0: after the newest this replica applied), at most `limit`, waiting up to
    /// `wait_ms` for the first. Served from this replica's bounded history (any replica
    /// gives the same events for a revision); `Compacted` when it starts after
    /// `from_revision`.
    async fn watch(
        range: KeyRange,
        from_revision: u64,
        limit: u32,
        wait_ms: u32,
    ) -> Result<WatchReply, KvError>;
    /// Create a lease of `ttl_ms` (1 s ..= 1 day) through the log; exactly once per `id`.
    /// Keys put with it (a transaction's `PutLeased`) are deleted when it is revoked or
    /// expires: when the leader heard no keepalive for its TTL.
    async fn lease_grant(id: CommandId, ttl_ms: u64) -> Result<LeaseGrantReply, KvError>;
    /// Remove a lease and delete its keys at one revision; exactly once per `id`.
    async fn lease_revoke(id: CommandId, lease: u64) -> Result<LeaseRevokeReply, KvError>;
    /// Restart the lease's TTL on the leader's clock (followers answer `NotLeader`).
    async fn lease_keepalive(lease: u64) -> Result<LeaseKeepAliveReply, KvError>;
    /// The lease's TTL and time left on the leader's clock (followers answer `NotLeader`).
    async fn lease_ttl(lease: u64) -> Result<LeaseTtlReply, KvError>;
}
