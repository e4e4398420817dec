//! tarpc handlers. They only validate, inject failures and talk to the driver; every state
//! change happens inside the driver task.

use crate::budget::ByteBudget;
use crate::driver::{DriverInput, FailedFlag};
use crate::failure::FailureInjector;
use crate::peer::PeerLink;
use crate::refusals::WarnGate;
use crate::snapshot_in::{ChunkOutcome, SnapshotReceiver};
use paxoskv::message::{Accept, FetchChosen, Learn, Prepare, Request, Response};
use paxoskv::{
    check_key, check_value, ClientError, ClientReply, Command, CommandId, Op, Outcome, ReplicaId,
    Txn,
};
use paxoskv_service::tls::ServerSecurity;
use paxoskv_service::{
    Caller, CountReply, GetMetaReply, GetReply, KeyRange, KvError, KvRpc, LeaseGrantReply,
    LeaseKeepAliveReply, LeaseRevokeReply, LeaseTtlReply, ReadMode, ReplicaRpc, ReplicaStatus,
    ScanReply, SnapshotChunk, TxnReply, WatchReply, WriteReply,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tarpc::context::Context;
use tokio::sync::{mpsc, oneshot};

/// What both services of one replica share.
pub struct Shared {
    /// This replica.
    pub id: ReplicaId,
    /// Every replica's address, by id.
    pub addrs: Vec<SocketAddr>,
    /// Links to the others (None at our own index).
    pub peers: Arc<Vec<Option<Arc<PeerLink>>>>,
    /// Queue into the driver.
    pub driver: mpsc::Sender<DriverInput>,
    /// Set when storage failed.
    pub failed: FailedFlag,
    /// Failure injection.
    pub failure: Arc<FailureInjector>,
    /// Largest value accepted.
    pub max_value_bytes: usize,
    /// Longest a client request waits inside the server.
    pub request_timeout: Duration,
    /// TLS and token policy of new connections.
    pub security: ServerSecurity,
    /// Bytes of frames being read, over all of this replica's connections.
    pub frame_budget: paxoskv_service::FrameBudget,
    /// Connection caps and frame limits.
    pub limits: crate::limits::ConnectionLimits,
    /// Receives snapshots pushed by peers, through a temp file.
    pub snapshot_receiver: SnapshotReceiver,
    /// Peers the core expects a snapshot from (bit `id`), published by the driver.
    pub snapshot_sources: Arc<AtomicU64>,
    /// Bytes of client commands in flight in this replica's handlers (forwarded ones
    /// included): over it, writes get `Busy`.
    pub client_bytes: ByteBudget,
    /// Bytes of peer requests between the handlers and the driver: over it, large ones are
    /// dropped unanswered (Paxos resends).
    pub peer_in_bytes: ByteBudget,
    /// Metric handles of this replica.
    pub metrics: Arc<crate::metrics::ReplicaMetrics>,
    /// Recent change events, for watches (published by the driver).
    pub watch: Arc<crate::watch::WatchHub>,
}

/// How long before the caller's deadline a long-poll answers (with what it has).
const WATCH_MARGIN: Duration = Duration::from_millis(200);

/// Bytes a client command holds besides its key and value (ids, framing, bookkeeping);
/// charged to the in-flight budget with it.
const COMMAND_OVERHEAD_BYTES: usize = 256;
/// Peer requests smaller than this do not count against the peer budget: heartbeats, votes
/// and small accepts must never be crowded out by large ones (they hold little memory).
pub const SMALL_PEER_MESSAGE_BYTES: usize = 64 * 1024;

/// Bytes a peer request holds in memory, roughly (its values; the rest is small).
pub fn request_bytes(request: &Request) -> usize {
    match request {
        Request::Accept(a) => a.value.size_bytes(),
        Request::Prepare(_) | Request::Learn(_) | Request::FetchChosen(_) => 0,
    }
}

impl Shared {
    fn addr_of(&self, id: Option<ReplicaId>) -> Option<String> {
        id.and_then(|i| self.addrs.get(i as usize))
            .map(|a| a.to_string())
    }

    fn failed_reason(&self) -> Option<String> {
        self.failed.lock().ok().and_then(|f| f.clone())
    }

    /// Replicas (this one included) heard from within the last second.
    fn answering(&self) -> u32 {
        let window = Duration::from_secs(1);
        1 + self
            .peers
            .iter()
            .flatten()
            .filter(|p| p.answered_within(window))
            .count() as u32
    }

    fn unavailable_or_timeout(&self, timeout: Duration) -> KvError {
        let total = self.addrs.len() as u32;
        let answered = self.answering();
        if answered < paxoskv::quorum::majority(total) {
            KvError::Unavailable { answered, total }
        } else {
            KvError::Timeout {
                timeout_ms: timeout.as_millis() as u64,
            }
        }
    }

    /// Counts a `Busy` answer on its way to the client.
    fn count_busy(&self, error: KvError) -> KvError {
        if matches!(error, KvError::Busy(_)) {
            self.metrics.busy.inc();
        }
        error
    }

    /// How long a request may wait: the caller's deadline, capped by ours.
    fn budget(&self, ctx: &Context) -> Duration {
        let caller = ctx.deadline.saturating_duration_since(Instant::now());
        caller.min(self.request_timeout)
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> DriverInput,
        budget: Duration,
    ) -> Result<T, KvError> {
        if let Some(reason) = self.failed_reason() {
            return Err(KvError::ReplicaFailed { reason });
        }
        self.ask_even_fenced(make, budget).await
    }

    /// [`Shared::ask`] for stale reads: a replica fenced by a storage failure still holds
    /// its applied state in memory (nothing is applied while fenced), so it may serve it.
    async fn ask_even_fenced<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> DriverInput,
        budget: Duration,
    ) -> Result<T, KvError> {
        let (tx, rx) = oneshot::channel();
        if self.driver.try_send(make(tx)).is_err() {
            self.metrics.busy.inc();
            return Err(KvError::Busy("replica request queue is full".into()));
        }
        match tokio::time::timeout(budget, rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(KvError::ReplicaFailed {
                reason: self
                    .failed_reason()
                    .unwrap_or_else(|| "request dropped by the replica".into()),
            }),
            Err(_) => Err(self.unavailable_or_timeout(budget)),
        }
    }
}

/// Warnings about requests whose `from` is not the certificate's replica.
static FORGED_FROM_WARNINGS: WarnGate = WarnGate::new();

/// The replica-to-replica service of one replica, for one connection: the second field is
/// the peer its certificate proved (`None` on plaintext, where `from` is believed).
#[derive(Clone)]
pub struct ReplicaServer(pub Arc<Shared>, pub Option<ReplicaId>);

impl ReplicaServer {
    /// False (and a rate-limited warning) when `from` is not the authenticated peer.
    fn sender_is_authentic(&self, from: ReplicaId) -> bool {
        match self.1 {
            Some(proven) if proven != from => {
                if FORGED_FROM_WARNINGS.due() {
                    tracing::warn!(
                        replica = self.0.id,
                        certificate = proven,
                        claimed = from,
                        "refused a request whose `from` is not the certificate's replica"
                    );
                }
                false
            }
            _ => true,
        }
    }

    async fn deliver(self, from: ReplicaId, request: Request, injectable: bool) -> Response {
        if !self.sender_is_authentic(from) {
            // Not answered, like a message lost on the way: a forged sender learns nothing
            // and the core never sees the forged id. The caller's deadline ends the call.
            return std::future::pending().await;
        }
        if self.0.failure.blocks(from) {
            return std::future::pending().await; // partitioned: as if never received
        }
        if injectable && self.0.failure.should_drop() {
            // A simulated crash for this message: neither act nor answer. The caller's
            // deadline makes tarpc drop this future.
            return std::future::pending().await;
        }
        let bytes = request_bytes(&request);
        let permit = if bytes >= SMALL_PEER_MESSAGE_BYTES {
            match self.0.peer_in_bytes.try_take(bytes) {
                Ok(p) => Some(p),
                Err(e) => {
                    // As if lost: the sender resends once the driver caught up.
                    tracing::debug!(replica = self.0.id, from, error = %e, "peer request dropped");
                    return std::future::pending().await;
                }
            }
        } else {
            None
        };
        let (tx, rx) = oneshot::channel();
        let input = DriverInput::PeerRequest {
            from,
            request,
            reply: tx,
            _permit: permit,
        };
        if self.0.driver.send(input).await.is_err() {
            return std::future::pending().await;
        }
        match rx.await {
            Ok(response) => response,
            Err(_) => std::future::pending().await, // not answered: let the caller time out
        }
    }
}

impl ReplicaRpc for ReplicaServer {
    async fn prepare(self, _: Context, from: ReplicaId, request: Prepare) -> Response {
        self.deliver(from, Request::Prepare(request), true).await
    }

    async fn accept(self, _: Context, from: ReplicaId, request: Accept) -> Response {
        self.deliver(from, Request::Accept(request), true).await
    }

    async fn learn(self, _: Context, from: ReplicaId, request: Learn) -> Response {
        self.deliver(from, Request::Learn(request), true).await
    }

    async fn fetch_chosen(self, _: Context, from: ReplicaId, request: FetchChosen) -> Response {
        self.deliver(from, Request::FetchChosen(request), false)
            .await
    }

    async fn install_snapshot(
        self,
        _: Context,
        from: ReplicaId,
        chunk: SnapshotChunk,
    ) -> Result<u64, String> {
        if !self.sender_is_authentic(from) {
            return Err(format!(
                "refused: `from` {from} is not the replica this connection's certificate names"
            ));
        }
        if self.0.failure.blocks(from) {
            return std::future::pending().await;
        }
        let expected =
            from < 64 && self.0.snapshot_sources.load(Ordering::Relaxed) & (1 << from) != 0;
        let total_bytes = chunk.total_bytes;
        let snapshot = match self
            .0
            .snapshot_receiver
            .receive(from, expected, chunk)
            .await?
        {
            ChunkOutcome::More { next_offset } => return Ok(next_offset),
            ChunkOutcome::Complete(snapshot) => snapshot,
        };
        let (tx, rx) = oneshot::channel();
        let input = DriverInput::InstallSnapshot {
            from,
            snapshot,
            reply: tx,
        };
        self.0.driver.send(input).await.map_err(|e| e.to_string())?;
        rx.await.map_err(|e| e.to_string())??;
        Ok(total_bytes)
    }
}

/// The client-facing service of one replica, for one connection: the second field is who
/// the connection proved to be.
#[derive(Clone)]
pub struct KvServer(pub Arc<Shared>, pub Caller);

impl KvServer {
    /// Forwarded writes and fault control are for replicas (or a trusted plaintext set-up).
    fn require_replica(&self, call: &str) -> Result<(), KvError> {
        match self.1 {
            Caller::Trusted | Caller::Replica(_) => Ok(()),
            Caller::Client => Err(KvError::Unauthorized(format!(
                "{call} needs a replica certificate; clients use put/delete"
            ))),
        }
    }

    fn validate(&self, command: &Command) -> Result<(), KvError> {
        if command.id.client_id == paxoskv::leases::SYSTEM_CLIENT_ID {
            return Err(KvError::InvalidRequest(
                "client id 0 is reserved for the leader's own commands".into(),
            ));
        }
        let op = &command.op;
        match op {
            Op::Txn(txn) => return Ok(txn.check(self.0.max_value_bytes)?),
            Op::LeaseGrant { ttl_ms } => {
                return paxoskv::check_lease_ttl(*ttl_ms)
                    .map_err(|e| KvError::InvalidRequest(e.to_string()))
            }
            Op::LeaseExpire { .. } => {
                return Err(KvError::InvalidRequest(
                    "only the leader proposes lease expiries".into(),
                ))
            }
            _ => {}
        }
        if let Some(key) = op.key() {
            check_key(key)?;
        }
        if let Op::Put { value, .. } = op {
            check_value(value, self.0.max_value_bytes)?;
        }
        Ok(())
    }

    pub(crate) async fn write(
        &self,
        ctx: &Context,
        command: Command,
        forwarded: bool,
    ) -> Result<WriteReply, KvError> {
        self.validate(&command)?;
        // Held until this handler ends (RAII): the command's bytes, twice when a copy is
        // kept for forwarding it to the leader.
        let copies = if forwarded { 1 } else { 2 };
        let bytes = (command.op.size_bytes() + COMMAND_OVERHEAD_BYTES) * copies;
        let _permit = self.0.client_bytes.try_take(bytes).map_err(|e| {
            self.0.metrics.busy.inc();
            KvError::Busy(format!("replica {}: {e}; retry later", self.0.id))
        })?;
        let budget = self.0.budget(ctx);
        let started = Instant::now();
        let deadline = started + budget;
        let seq = command.id.seq;
        // A forwarded write is never forwarded again: no copy needed.
        let kept = (!forwarded).then(|| command.clone());
        let reply = self
            .0
            .ask(
                |reply| DriverInput::Propose {
                    command,
                    deadline,
                    reply,
                },
                budget,
            )
            .await?;
        let leader = match reply {
            ClientReply::Applied(outcome) => {
                return Ok(WriteReply {
                    outcome,
                    leader_addr: self.0.addr_of(Some(self.0.id)),
                })
            }
            ClientReply::Failed(ClientError::NotLeader { leader }) => leader,
            ClientReply::Failed(ClientError::DeadlinePassed) => {
                return Err(KvError::Timeout {
                    timeout_ms: budget.as_millis() as u64,
                })
            }
            other => return Err(self.0.count_busy(map_failure(other, seq))),
        };
        match (leader.filter(|&l| l != self.0.id), kept) {
            (Some(l), Some(command)) => {
                self.forward(l, command, budget.saturating_sub(started.elapsed()))
                    .await
            }
            _ => Err(KvError::NotLeader {
                leader,
                leader_addr: self.0.addr_of(leader),
            }),
        }
    }

    async fn forward(
        &self,
        leader: ReplicaId,
        command: Command,
        budget: Duration,
    ) -> Result<WriteReply, KvError> {
        let Some(Some(peer)) = self.0.peers.get(leader as usize) else {
            return Err(KvError::NotLeader {
                leader: None,
                leader_addr: None,
            });
        };
        tracing::debug!(
            replica = self.0.id,
            leader,
            "forwarding write to the leader"
        );
        peer.forward_propose(command, budget).await
    }
}

impl KvServer {
    /// A linearizable read through the same path as `KvRpc::get`, forwarded once to the
    /// leader when this replica is a follower that knows it: for front ends whose clients
    /// cannot follow a `NotLeader` hint (RESP).
    pub async fn get_via_leader(&self, key: String, budget: Duration) -> Result<GetReply, KvError> {
        let (ctx, started) = read_context(budget);
        let local = self.clone().get(ctx, key.clone(), ReadMode::Linearizable);
        self.or_on_leader(local.await, started, budget, |peer, left| async move {
            peer.forward_get(key, left).await
        })
        .await
    }

    /// A linearizable scan through the same path as `KvRpc::scan`, forwarded once to the
    /// leader when this replica is a follower that knows it (for RESP, as `get_via_leader`).
    pub async fn scan_via_leader(
        &self,
        range: KeyRange,
        after: Option<String>,
        limit: u32,
        budget: Duration,
    ) -> Result<ScanReply, KvError> {
        let (ctx, started) = read_context(budget);
        let local = self.clone().scan(
            ctx,
            range.clone(),
            after.clone(),
            limit,
            ReadMode::Linearizable,
        );
        self.or_on_leader(local.await, started, budget, |peer, left| async move {
            peer.forward_scan(range, after, limit, left).await
        })
        .await
    }

    /// A linearizable read with revisions and lease (`KvRpc::get_meta`), forwarded once to
    /// the leader when this replica is a follower that knows it.
    pub async fn get_meta_via_leader(
        &self,
        key: String,
        budget: Duration,
    ) -> Result<GetMetaReply, KvError> {
        let (ctx, started) = read_context(budget);
        let local = self
            .clone()
            .get_meta(ctx, key.clone(), ReadMode::Linearizable);
        self.or_on_leader(local.await, started, budget, |peer, left| async move {
            peer.forward_get_meta(key, left).await
        })
        .await
    }

    /// A lease's time (`KvRpc::lease_ttl`), asked of the leader.
    pub async fn lease_ttl_via_leader(
        &self,
        lease: u64,
        budget: Duration,
    ) -> Result<LeaseTtlReply, KvError> {
        let (ctx, started) = read_context(budget);
        let local = self.clone().lease_ttl(ctx, lease);
        self.or_on_leader(local.await, started, budget, |peer, left| async move {
            peer.forward_lease_ttl(lease, left).await
        })
        .await
    }

    /// A linearizable count through the same path as `KvRpc::count`, forwarded once to
    /// the leader when this replica is a follower that knows it.
    pub async fn count_via_leader(
        &self,
        range: KeyRange,
        budget: Duration,
    ) -> Result<CountReply, KvError> {
        let (ctx, started) = read_context(budget);
        let local = self
            .clone()
            .count(ctx, range.clone(), ReadMode::Linearizable);
        self.or_on_leader(local.await, started, budget, |peer, left| async move {
            peer.forward_count(range, left).await
        })
        .await
    }

    /// `local` unless it says another replica leads: then `forward` asks that leader once,
    /// with what is left of `budget`.
    async fn or_on_leader<T, F, Fut>(
        &self,
        local: Result<T, KvError>,
        started: Instant,
        budget: Duration,
        forward: F,
    ) -> Result<T, KvError>
    where
        F: FnOnce(Arc<PeerLink>, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<T, KvError>>,
    {
        match local {
            Err(KvError::NotLeader {
                leader: Some(l), ..
            }) if l != self.0.id => match self.0.peers.get(l as usize) {
                Some(Some(peer)) => {
                    forward(peer.clone(), budget.saturating_sub(started.elapsed())).await
                }
                _ => Err(KvError::NotLeader {
                    leader: None,
                    leader_addr: None,
                }),
            },
            other => other,
        }
    }
}

/// The context of a read that must end within `budget` from now.
fn read_context(budget: Duration) -> (tarpc::context::Context, Instant) {
    let started = Instant::now();
    let mut ctx = tarpc::context::current();
    ctx.deadline = started + budget;
    (ctx, started)
}

fn map_failure(reply: ClientReply, seq: u64) -> KvError {
    match reply {
        ClientReply::Failed(ClientError::Busy) => KvError::Busy("leader queue is full".into()),
        ClientReply::Failed(ClientError::Stale { last_applied }) => {
            KvError::StaleRequest { seq, last_applied }
        }
        ClientReply::Failed(ClientError::NotLeader { leader }) => KvError::NotLeader {
            leader,
            leader_addr: None,
        },
        ClientReply::Failed(ClientError::SessionExpired) => KvError::SessionExpired,
        ClientReply::Failed(ClientError::DeadlinePassed) => KvError::Timeout { timeout_ms: 0 },
        other => KvError::InvalidRequest(format!("unexpected reply {other:?}")),
    }
}

/// A lease command's outcome that is not the expected success.
fn lease_failure(outcome: Outcome, id: CommandId) -> KvError {
    match outcome {
        Outcome::LeaseFailed(paxoskv::LeaseError::NotFound(lease)) => {
            KvError::LeaseNotFound { lease: lease.0 }
        }
        Outcome::LeaseFailed(e @ paxoskv::LeaseError::TooMany { .. }) => {
            KvError::Busy(e.to_string())
        }
        Outcome::LeaseFailed(e) => KvError::InvalidRequest(e.to_string()),
        // Only a retry under an id its session used for another command lands here.
        other => KvError::InvalidRequest(format!(
            "command {}/{} was not a lease command: {other:?}",
            id.client_id, id.seq
        )),
    }
}

/// A view of the applied state for a scan or a count, with where it came from.
struct ReadView {
    kv: Box<paxoskv::kv::KvState>,
    stale: bool,
    leader_addr: Option<String>,
}

impl KvServer {
    /// The applied state, read the way `get` reads one key: linearizable through the
    /// leader's confirmation round, or this replica's own state when `mode` is stale. The
    /// view is an O(1) clone; scanning it happens here, not in the driver.
    async fn read_view(&self, ctx: &Context, mode: ReadMode) -> Result<ReadView, KvError> {
        let budget = self.0.budget(ctx);
        if mode == ReadMode::Stale {
            let kv = self
                .0
                .ask_even_fenced(|reply| DriverInput::StaleView { reply }, budget)
                .await?;
            return Ok(ReadView {
                kv,
                stale: true,
                leader_addr: None,
            });
        }
        match self
            .0
            .ask(|reply| DriverInput::ReadView { reply }, budget)
            .await?
        {
            ClientReply::View(kv) => Ok(ReadView {
                kv,
                stale: false,
                leader_addr: self.0.addr_of(Some(self.0.id)),
            }),
            other => Err(self.read_failure(other)),
        }
    }

    /// A linearizable read that did not succeed, as the client sees it.
    /// Asks the leader's core to keep `lease` alive or to report its time.
    async fn lease_time(
        &self,
        ctx: &Context,
        lease: u64,
        keep_alive: bool,
    ) -> Result<ClientReply, KvError> {
        let budget = self.0.budget(ctx);
        let id = paxoskv::LeaseId(lease);
        let ask = |reply| DriverInput::LeaseTime {
            lease: id,
            keep_alive,
            reply,
        };
        match self.0.ask(ask, budget).await? {
            ClientReply::Failed(ClientError::LeaseNotFound(_)) => {
                Err(KvError::LeaseNotFound { lease })
            }
            other => Ok(other),
        }
    }

    fn read_failure(&self, reply: ClientReply) -> KvError {
        match reply {
            ClientReply::Failed(ClientError::NotLeader { leader }) => KvError::NotLeader {
                leader,
                leader_addr: self.0.addr_of(leader),
            },
            other => self.0.count_busy(map_failure(other, 0)),
        }
    }
}

/// Refuses a scan or count range with a bad bound (an empty prefix is every key).
fn check_range(range: &KeyRange) -> Result<(), KvError> {
    let bounds = match range {
        KeyRange::Prefix(p) => vec![p],
        KeyRange::Between { start, end } => std::iter::once(start).chain(end).collect(),
    };
    for key in bounds.into_iter().filter(|k| !k.is_empty()) {
        check_key(key)?;
    }
    Ok(())
}

impl KvRpc for KvServer {
    async fn scan(
        self,
        ctx: Context,
        range: KeyRange,
        after: Option<String>,
        limit: u32,
        mode: ReadMode,
    ) -> Result<ScanReply, KvError> {
        check_range(&range)?;
        if let Some(after) = &after {
            check_key(after)?;
        }
        let view = self.read_view(&ctx, mode).await?;
        // Bounded by MAX_SCAN_LIMIT entries and about MAX_SCAN_REPLY_BYTES: no need to
        // leave the runtime thread.
        let page = view.kv.scan(&range, after.as_deref(), limit as usize);
        Ok(ScanReply {
            page,
            served_by: self.0.id,
            stale: view.stale,
            leader_addr: view.leader_addr,
        })
    }

    async fn count(
        self,
        ctx: Context,
        range: KeyRange,
        mode: ReadMode,
    ) -> Result<CountReply, KvError> {
        check_range(&range)?;
        let view = self.read_view(&ctx, mode).await?;
        let kv = view.kv;
        // Proportional to the range: on a blocking thread, with the view dropped there too.
        let keys = tokio::task::spawn_blocking(move || kv.count(&range))
            .await
            .map_err(|e| KvError::ReplicaFailed {
                reason: format!("count task failed: {e}"),
            })?;
        Ok(CountReply {
            keys,
            served_by: self.0.id,
            stale: view.stale,
            leader_addr: view.leader_addr,
        })
    }

    async fn get(self, ctx: Context, key: String, mode: ReadMode) -> Result<GetReply, KvError> {
        check_key(&key)?;
        let budget = self.0.budget(&ctx);
        let leader_addr = |id| self.0.addr_of(id);
        if mode == ReadMode::Stale {
            let value = self
                .0
                .ask_even_fenced(|reply| DriverInput::StaleRead { key, reply }, budget)
                .await?;
            return Ok(GetReply {
                value,
                served_by: self.0.id,
                stale: true,
                leader_addr: None,
            });
        }
        match self
            .0
            .ask(|reply| DriverInput::Read { key, reply }, budget)
            .await?
        {
            ClientReply::Read(value) => Ok(GetReply {
                value,
                served_by: self.0.id,
                stale: false,
                leader_addr: leader_addr(Some(self.0.id)),
            }),
            other => Err(self.read_failure(other)),
        }
    }

    async fn put(
        self,
        ctx: Context,
        id: CommandId,
        key: String,
        value: Vec<u8>,
    ) -> Result<WriteReply, KvError> {
        let command = Command {
            id,
            op: Op::Put { key, value },
        };
        self.write(&ctx, command, false).await
    }

    async fn register_session(self, ctx: Context, id: CommandId) -> Result<WriteReply, KvError> {
        let command = Command {
            id,
            op: Op::Register,
        };
        self.write(&ctx, command, false).await
    }

    async fn delete(self, ctx: Context, id: CommandId, key: String) -> Result<WriteReply, KvError> {
        let command = Command {
            id,
            op: Op::Delete { key },
        };
        self.write(&ctx, command, false).await
    }

    async fn propose(
        self,
        ctx: Context,
        command: Command,
        forwarded: bool,
    ) -> Result<WriteReply, KvError> {
        self.require_replica("propose")?;
        self.write(&ctx, command, forwarded).await
    }

    async fn txn(self, ctx: Context, id: CommandId, txn: Txn) -> Result<TxnReply, KvError> {
        let command = Command {
            id,
            op: Op::Txn(txn),
        };
        let reply = self.write(&ctx, command, false).await?;
        match reply.outcome {
            Outcome::Txn(outcome) => Ok(TxnReply {
                outcome,
                leader_addr: reply.leader_addr,
            }),
            Outcome::LeaseFailed(paxoskv::LeaseError::NotFound(lease)) => {
                Err(KvError::LeaseNotFound { lease: lease.0 })
            }
            // Only a retry under an id its session used for another command lands here.
            other => Err(KvError::InvalidRequest(format!(
                "command {}/{} was not a transaction: {other:?}",
                id.client_id, id.seq
            ))),
        }
    }

    async fn get_meta(
        self,
        ctx: Context,
        key: String,
        mode: ReadMode,
    ) -> Result<GetMetaReply, KvError> {
        check_key(&key)?;
        let view = self.read_view(&ctx, mode).await?;
        let found = view.kv.get_meta(&key);
        Ok(GetMetaReply {
            value: found.map(|(v, _)| v.to_vec()),
            meta: found.map(|(_, m)| m),
            lease: view.kv.leases().lease_of(&key).map(|l| l.0),
            revision: view.kv.revision(),
            served_by: self.0.id,
            stale: view.stale,
            leader_addr: view.leader_addr,
        })
    }

    async fn watch(
        self,
        ctx: Context,
        range: KeyRange,
        from_revision: u64,
        limit: u32,
        wait_ms: u32,
    ) -> Result<WatchReply, KvError> {
        check_range(&range)?;
        // Answer a little before the caller's deadline, so an empty page reaches it.
        let caller = ctx.deadline.saturating_duration_since(Instant::now());
        let wait = Duration::from_millis(wait_ms.into()).min(caller.saturating_sub(WATCH_MARGIN));
        let page = self
            .0
            .watch
            .poll(&range, from_revision, limit as usize, wait)
            .await?;
        Ok(WatchReply {
            events: page.events,
            next_revision: page.next_revision,
            served_by: self.0.id,
        })
    }

    async fn lease_grant(
        self,
        ctx: Context,
        id: CommandId,
        ttl_ms: u64,
    ) -> Result<LeaseGrantReply, KvError> {
        let command = Command {
            id,
            op: Op::LeaseGrant { ttl_ms },
        };
        let reply = self.write(&ctx, command, false).await?;
        match reply.outcome {
            Outcome::LeaseGranted { id: lease, ttl_ms } => Ok(LeaseGrantReply {
                lease: lease.0,
                ttl_ms,
                leader_addr: reply.leader_addr,
            }),
            other => Err(lease_failure(other, id)),
        }
    }

    async fn lease_revoke(
        self,
        ctx: Context,
        id: CommandId,
        lease: u64,
    ) -> Result<LeaseRevokeReply, KvError> {
        let command = Command {
            id,
            op: Op::LeaseRevoke {
                id: paxoskv::LeaseId(lease),
            },
        };
        let reply = self.write(&ctx, command, false).await?;
        match reply.outcome {
            Outcome::LeaseRevoked {
                found: true,
                deleted_keys,
                revision,
            } => Ok(LeaseRevokeReply {
                deleted_keys,
                revision,
                leader_addr: reply.leader_addr,
            }),
            Outcome::LeaseRevoked { found: false, .. } => Err(KvError::LeaseNotFound { lease }),
            other => Err(lease_failure(other, id)),
        }
    }

    async fn lease_keepalive(
        self,
        ctx: Context,
        lease: u64,
    ) -> Result<LeaseKeepAliveReply, KvError> {
        match self.lease_time(&ctx, lease, true).await? {
            ClientReply::LeaseKept { ttl_ms } => Ok(LeaseKeepAliveReply {
                ttl_ms,
                leader_addr: self.0.addr_of(Some(self.0.id)),
            }),
            other => Err(self.read_failure(other)),
        }
    }

    async fn lease_ttl(self, ctx: Context, lease: u64) -> Result<LeaseTtlReply, KvError> {
        match self.lease_time(&ctx, lease, false).await? {
            ClientReply::LeaseTtl(t) => Ok(LeaseTtlReply {
                ttl_ms: t.ttl_ms,
                remaining_ms: t.remaining_ms,
                keys: t.keys,
                leader_addr: self.0.addr_of(Some(self.0.id)),
            }),
            other => Err(self.read_failure(other)),
        }
    }

    async fn set_partition(self, _: Context, blocked: Vec<ReplicaId>) -> Result<(), KvError> {
        self.require_replica("set_partition")?;
        tracing::info!(
            replica = self.0.id,
            ?blocked,
            "fault control: partition set"
        );
        self.0
            .failure
            .set_partition(&blocked)
            .map_err(KvError::InvalidRequest)
    }

    async fn status(self, _: Context) -> ReplicaStatus {
        let budget = Duration::from_secs(1);
        let core = self
            .0
            .ask(|reply| DriverInput::Status { reply }, budget)
            .await;
        let mut status = ReplicaStatus {
            id: self.0.id,
            addr: self.0.addr_of(Some(self.0.id)).unwrap_or_default(),
            failures: self.0.failure.stats(),
            fail_mode: self.0.failure.mode().describe(),
            ..ReplicaStatus::default()
        };
        match core {
            Ok(c) => {
                status.role = c.role.to_string();
                status.leader = c.leader;
                status.leader_addr = self.0.addr_of(c.leader);
                status.promised = c.promised.to_string();
                status.applied_through = c.chosen_through;
                status.keys = c.keys;
                status.map_digest = c.map_digest;
            }
            Err(e) => status.role = format!("unavailable: {e}"),
        }
        status
    }
}
