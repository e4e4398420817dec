//! The replica driver: one task owns the core and performs the core's durability contract
//! (`paxoskv::durability`): everything a `Ready` holds is sent at once, its batch of records
//! is synced in the background (one sync per batch), and `on_persisted` releases what waited
//! for it. The simulator performs the same contract. Handlers talk to the driver through a
//! bounded queue, so a cancelled handler can never half-apply acceptor state. The driver also takes
//! snapshots (in the background), pushes snapshots to replicas behind the compacted log,
//! installs snapshots it receives, and rebuilds the core from disk after a storage failure.

use crate::budget::{ByteBudget, BytePermit};
use crate::failure::FailureInjector;
use crate::metrics::{Readiness, ReplicaMetrics};
use crate::peer::PeerLink;
use crate::refusals::RefusalWarnings;
use crate::store::{ReplicaStore, SnapshotJob, StoreError};
use paxoskv::kv::KvState;
use paxoskv::message::{Outbound, Request, Response};
use paxoskv::{
    BatchNumber, ClientReply, ClientToken, Command, CoreStatus, PeerToken, Ready, Replica,
    ReplicaId, Slot, Snapshot,
};
use paxoskv_service::{SnapshotChunk, SNAPSHOT_CHUNK_BYTES};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

/// Inputs handled per batch at most, so ticks and replies are never starved.
const MAX_INPUTS_PER_BATCH: usize = 4096;
/// Queue between handlers and the driver; when full, handlers see `Busy`.
pub const DRIVER_QUEUE_LEN: usize = 65_536;
/// Peer calls in flight at once, per replica; beyond that messages are dropped (Paxos
/// tolerates loss, and the core resends).
const MAX_PEER_CALLS_IN_FLIGHT: usize = 8192;
/// After a storage failure, the first try to unfence comes this long after it...
const REOPEN_FIRST_DELAY_MS: u64 = 1000;
/// ...and each failed try doubles the wait, up to this.
const REOPEN_MAX_DELAY_MS: u64 = 30_000;
/// A failure this soon after unfencing keeps the doubled wait (no quick flapping).
const REFENCE_MEMORY_MS: u64 = 60_000;
/// Retry a snapshot postponed for lack of disk space after this long.
const SNAPSHOT_SPACE_RETRY_MS: u64 = 1000;
/// Driver turns, WAL syncs and snapshot steps slower than this are logged (info) with their
/// duration, so latency spikes can be attributed (scripts/bench-scale.sh greps them).
const SLOW_STEP: Duration = Duration::from_millis(20);
/// Deadline of one snapshot chunk.
const SNAPSHOT_CHUNK_TIMEOUT_MS: u64 = 10_000;
/// Snapshot pushes at once: each holds a copy of the map and its encoding, so pushes to
/// several lagging peers go one after the other (the others ask again).
const MAX_CONCURRENT_PUSHES: usize = 1;
/// First wait before retrying a failed snapshot push to a peer; doubles per failure.
const PUSH_BACKOFF_MIN_MS: u64 = 250;
/// Longest wait between snapshot pushes to a peer that keep failing.
const PUSH_BACKOFF_MAX_MS: u64 = 10_000;
/// Requests smaller than this do not count against a peer's send budget, so heartbeats and
/// votes are never crowded out by large accepts.
const SMALL_SEND_BYTES: usize = crate::rpc::SMALL_PEER_MESSAGE_BYTES;

/// Timeout of a peer call carrying a large value (the peer syncs it before answering).
const LARGE_REQUEST_TIMEOUT_MS: u64 = 1000;

/// Exponential backoff of snapshot pushes per peer: a peer that cannot take a snapshot (down,
/// out of space, too slow) asks for one on every message, and without a pause the leader
/// would re-encode and resend its whole map many times a second.
#[derive(Default)]
struct PushBackoff {
    /// Peer -> (earliest next push, current delay in ms); absent after a success.
    failed: HashMap<ReplicaId, (Instant, u64)>,
}

impl PushBackoff {
    fn allows(&self, to: ReplicaId, now: Instant) -> bool {
        self.failed
            .get(&to)
            .is_none_or(|(not_before, _)| now >= *not_before)
    }

    fn record(&mut self, to: ReplicaId, ok: bool, now: Instant) {
        if ok {
            self.failed.remove(&to);
            return;
        }
        let delay_ms = self
            .failed
            .get(&to)
            .map_or(PUSH_BACKOFF_MIN_MS, |(_, last_ms)| {
                last_ms.saturating_mul(2).min(PUSH_BACKOFF_MAX_MS)
            });
        self.failed
            .insert(to, (now + Duration::from_millis(delay_ms), delay_ms));
    }
}

/// Large accepts in flight, by (peer, slot, ballot).
#[derive(Clone, Default)]
struct LargeSends(Arc<Mutex<std::collections::HashSet<(ReplicaId, Slot, paxoskv::Ballot)>>>);

/// One large accept in flight; dropping it lets the next send of it go.
struct Sending {
    set: LargeSends,
    key: (ReplicaId, Slot, paxoskv::Ballot),
}

impl LargeSends {
    /// Claims `request` to `to`, unless the same accept is in flight to it already.
    fn claim(&self, to: ReplicaId, request: &Request) -> Option<Sending> {
        let Request::Accept(a) = request else {
            return Some(Sending {
                set: self.clone(),
                key: (to, 0, paxoskv::Ballot::ZERO),
            });
        };
        let key = (to, a.slot, a.ballot);
        let mut set = self.0.lock().ok()?;
        set.insert(key).then(|| Sending {
            set: self.clone(),
            key,
        })
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        if let Ok(mut set) = self.set.0.lock() {
            set.remove(&self.key);
        }
    }
}

/// Memory bounds of one driver.
#[derive(Clone, Copy, Debug)]
pub struct DriverLimits {
    /// Bytes of requests (accept values) in flight to one peer at most; beyond it large
    /// requests are dropped (Paxos tolerates loss; the core resends).
    pub max_peer_send_bytes: usize,
}

impl Default for DriverLimits {
    fn default() -> Self {
        DriverLimits {
            max_peer_send_bytes: 8 * 1024 * 1024,
        }
    }
}

/// Something for the driver to do.
pub enum DriverInput {
    /// A Paxos request from a peer; the response goes back through `reply`.
    PeerRequest {
        /// Sender.
        from: ReplicaId,
        /// The request.
        request: Request,
        /// Where to answer.
        reply: oneshot::Sender<Response>,
        /// The request's share of the peer budget, returned once the core has it.
        _permit: Option<BytePermit>,
    },
    /// A peer answered one of our requests.
    PeerResponse {
        /// Responder.
        from: ReplicaId,
        /// The response.
        response: Response,
    },
    /// A client write.
    Propose {
        /// The command.
        command: Command,
        /// The client gives up then: a command still queued after it is never proposed.
        deadline: Instant,
        /// Where to answer.
        reply: oneshot::Sender<ClientReply>,
    },
    /// A lease keepalive, or (`keep_alive` false) a question of its time left; answered
    /// by the leader's core.
    LeaseTime {
        /// The lease.
        lease: paxoskv::LeaseId,
        /// Restart its TTL (a keepalive) rather than only report it.
        keep_alive: bool,
        /// Where to answer.
        reply: oneshot::Sender<ClientReply>,
    },
    /// A linearizable read.
    Read {
        /// The key.
        key: String,
        /// Where to answer.
        reply: oneshot::Sender<ClientReply>,
    },
    /// A linearizable read of the whole state (scan, count): answered with a
    /// [`ClientReply::View`], an O(1) clone the caller scans off the driver.
    ReadView {
        /// Where to answer.
        reply: oneshot::Sender<ClientReply>,
    },
    /// The local, possibly stale applied state (an O(1) clone).
    StaleView {
        /// Where to answer.
        reply: oneshot::Sender<Box<KvState>>,
    },
    /// A local, possibly stale read.
    StaleRead {
        /// The key.
        key: String,
        /// Where to answer.
        reply: oneshot::Sender<Option<Vec<u8>>>,
    },
    /// Status request.
    Status {
        /// Where to answer.
        reply: oneshot::Sender<CoreStatus>,
    },
    /// A complete snapshot received from a peer.
    InstallSnapshot {
        /// The sender.
        from: ReplicaId,
        /// The snapshot.
        snapshot: Box<Snapshot>,
        /// Ok once durable and installed.
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// A snapshot push to `to` ended.
    PushDone {
        /// The receiver.
        to: ReplicaId,
        /// Whether every chunk arrived.
        ok: bool,
    },
}

impl DriverInput {
    /// True for inputs that make the core produce records or outputs (everything but status,
    /// stale reads and bookkeeping).
    fn needs_core_progress(&self) -> bool {
        matches!(
            self,
            DriverInput::PeerRequest { .. }
                | DriverInput::PeerResponse { .. }
                | DriverInput::Propose { .. }
                | DriverInput::Read { .. }
                | DriverInput::ReadView { .. }
                | DriverInput::LeaseTime { .. }
        )
    }
}

/// Timing of one driver.
#[derive(Clone, Copy, Debug)]
pub struct DriverTiming {
    /// Length of one core tick.
    pub tick_ms: u64,
    /// Timeout of one peer call.
    pub peer_timeout_ms: u64,
    /// How recently the leader (for a follower) or a majority (for a leader) must have been
    /// heard from for the replica to be ready.
    pub ready_contact: Duration,
}

/// When to snapshot and how much log to keep in memory for peers that are slightly behind.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotPolicy {
    /// Snapshot once the log on disk exceeds this.
    pub log_bytes: u64,
    /// Snapshot after this many applied slots.
    pub every_slots: u64,
    /// Chosen slots kept in memory below the snapshot, for cheap catch-up.
    pub keep_slots: u64,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy {
            log_bytes: 64 * 1024 * 1024,
            every_slots: 50_000,
            keep_slots: 5_000,
        }
    }
}

/// Shared view of a driver that has stopped acknowledging because storage failed.
pub type FailedFlag = Arc<Mutex<Option<String>>>;

type SnapshotTask = (SnapshotJob, JoinHandle<Result<u64, StoreError>>);

type StoreResult = (Box<dyn ReplicaStore>, Result<(), StoreError>);

/// A batch of records being synced in the background.
struct Syncing {
    task: JoinHandle<StoreResult>,
    batch: BatchNumber,
}

/// Resolves when the sync in flight (if any) ends.
async fn sync_done(syncing: &mut Option<Syncing>) -> Result<StoreResult, tokio::task::JoinError> {
    match syncing {
        Some(s) => (&mut s.task).await,
        None => std::future::pending().await,
    }
}

/// The task that owns one replica core.
pub struct Driver {
    core: Replica,
    store: Option<Box<dyn ReplicaStore>>,
    peers: Arc<Vec<Option<Arc<PeerLink>>>>,
    inbox: mpsc::Receiver<DriverInput>,
    self_tx: mpsc::Sender<DriverInput>,
    timing: DriverTiming,
    policy: SnapshotPolicy,
    next_token: u64,
    peer_waiters: HashMap<u64, (ReplicaId, oneshot::Sender<Response>)>,
    client_waiters: HashMap<u64, oneshot::Sender<ClientReply>>,
    peer_calls: Arc<Semaphore>,
    failed: FailedFlag,
    reopen: ReopenBackoff,
    /// A snapshot postponed for lack of space is not tried again before this.
    snapshot_space_retry: Option<Instant>,
    snapshot_slot: Slot,
    snapshot_task: Option<SnapshotTask>,
    /// Size of the last snapshot written: the log must grow at least as large before the
    /// next one, so a large map is not rewritten over and over (amortized, as Redis does
    /// for its append-only file).
    snapshot_bytes: u64,
    pushing: BTreeSet<ReplicaId>,
    /// When a failed push to a peer may be retried.
    push_backoff: PushBackoff,
    failure: Arc<FailureInjector>,
    syncing: Option<Syncing>,
    refusals: RefusalWarnings,
    /// Per peer (by id): bytes of requests in flight to it.
    send_bytes: Vec<ByteBudget>,
    /// Large accepts in flight, so a resend does not duplicate one still on its way.
    large_sends: LargeSends,
    /// Peers the core expects a snapshot from, for the handlers (bit `id`).
    snapshot_sources: Arc<AtomicU64>,
    /// Metric handles and readiness of this replica.
    metrics: Arc<ReplicaMetrics>,
    /// When a request from the leader we know last arrived (followers' readiness).
    leader_contact: Option<Instant>,
    /// Per peer (by id): when it last answered us (a leader's readiness).
    peer_answered: Vec<Option<Instant>>,
    /// When an own snapshot write started (its duration metric).
    snapshot_started: Option<Instant>,
    /// What was last logged, so role and slot changes are logged once.
    logged: Logged,
    /// Where the change events of each Ready go (watches).
    watch: Arc<crate::watch::WatchHub>,
}

/// When a fenced replica next tries to unfence: 1 s after the failure, doubling up to 30 s
/// while the write probe keeps failing. A failure soon after unfencing keeps the longer wait,
/// so a disk that is barely not full cannot make the replica flap.
#[derive(Debug)]
struct ReopenBackoff {
    delay_ms: u64,
    next_try: Instant,
    unfenced_at: Option<Instant>,
}

impl ReopenBackoff {
    fn new() -> ReopenBackoff {
        ReopenBackoff {
            delay_ms: REOPEN_FIRST_DELAY_MS,
            next_try: Instant::now(),
            unfenced_at: None,
        }
    }

    /// The replica just fenced itself.
    fn on_fenced(&mut self, now: Instant) {
        let recent = self
            .unfenced_at
            .is_some_and(|t| now.duration_since(t) < Duration::from_millis(REFENCE_MEMORY_MS));
        if !recent {
            self.delay_ms = REOPEN_FIRST_DELAY_MS;
        }
        self.next_try = now + Duration::from_millis(self.delay_ms);
    }

    fn due(&self, now: Instant) -> bool {
        now >= self.next_try
    }

    /// A try failed: wait twice as long (capped).
    fn on_failed_try(&mut self, now: Instant) {
        self.delay_ms = (self.delay_ms * 2).min(REOPEN_MAX_DELAY_MS);
        self.next_try = now + Duration::from_millis(self.delay_ms);
    }

    /// Unfenced. The delay stays as it was for a while (see `on_fenced`).
    fn on_unfenced(&mut self, now: Instant) {
        self.unfenced_at = Some(now);
        self.delay_ms = (self.delay_ms * 2).min(REOPEN_MAX_DELAY_MS);
    }
}

/// The last role, leader, ballot and applied slot logged (debug phase lines).
#[derive(Default)]
struct Logged {
    role: &'static str,
    leader: Option<ReplicaId>,
    applied: Slot,
}

impl Driver {
    /// A driver for `core`; returns it with the queue handlers use.
    pub fn new(
        core: Replica,
        store: Box<dyn ReplicaStore>,
        peers: Arc<Vec<Option<Arc<PeerLink>>>>,
        timing: DriverTiming,
        policy: SnapshotPolicy,
        limits: DriverLimits,
        failure: Arc<FailureInjector>,
    ) -> (Driver, mpsc::Sender<DriverInput>, FailedFlag) {
        let (tx, rx) = mpsc::channel(DRIVER_QUEUE_LEN);
        let failed: FailedFlag = Arc::default();
        let peers_len = peers.len();
        let snapshot_slot = core.chosen_through();
        let core_id = core.id();
        let driver = Driver {
            core,
            store: Some(store),
            peers,
            inbox: rx,
            self_tx: tx.clone(),
            timing,
            policy,
            next_token: 0,
            peer_waiters: HashMap::new(),
            client_waiters: HashMap::new(),
            peer_calls: Arc::new(Semaphore::new(MAX_PEER_CALLS_IN_FLIGHT)),
            failed: failed.clone(),
            reopen: ReopenBackoff::new(),
            snapshot_space_retry: None,
            snapshot_slot,
            snapshot_task: None,
            snapshot_bytes: 0,
            pushing: BTreeSet::new(),
            push_backoff: PushBackoff::default(),
            refusals: RefusalWarnings::default(),
            failure,
            syncing: None,
            send_bytes: (0..peers_len)
                .map(|_| ByteBudget::new("peer send", limits.max_peer_send_bytes))
                .collect(),
            snapshot_sources: Arc::default(),
            large_sends: LargeSends::default(),
            metrics: ReplicaMetrics::unregistered(core_id, peers_len as u32),
            leader_contact: None,
            peer_answered: vec![None; peers_len],
            snapshot_started: None,
            logged: Logged::default(),
            watch: Arc::new(crate::watch::WatchHub::new(1, 0)),
        };
        (driver, tx, failed)
    }

    /// Publishes into `metrics` (by default into handles registered nowhere).
    pub fn set_metrics(&mut self, metrics: Arc<ReplicaMetrics>) {
        self.metrics = metrics;
    }

    /// Publishes change events into `hub` (by default into a history nobody reads).
    pub fn set_watch_hub(&mut self, hub: Arc<crate::watch::WatchHub>) {
        self.watch = hub;
    }

    /// Peers the core expects a snapshot from (bit `id`), kept current by the driver.
    pub fn snapshot_sources(&self) -> Arc<AtomicU64> {
        self.snapshot_sources.clone()
    }

    fn publish(&mut self) {
        self.snapshot_sources
            .store(self.core.snapshot_sources_mask(), Ordering::Relaxed);
        let status = self.core.status();
        let fenced = self.failed_reason().is_some();
        self.metrics
            .publish_status(&status, self.core.refused(), fenced);
        let stats = self.failure.stats();
        self.metrics
            .publish_injected(stats.dropped_messages, stats.passed_messages);
        self.metrics
            .set_readiness(self.readiness(&status, fenced, Instant::now()));
        self.log_changes(&status);
    }

    /// Ready means: storage works, a leader is known, and we are in touch with a quorum
    /// through it (a follower heard from it recently; a leader heard from a majority).
    fn readiness(&self, status: &CoreStatus, fenced: bool, now: Instant) -> Readiness {
        let recent = |t: &Option<Instant>| {
            t.is_some_and(|t| now.duration_since(t) <= self.timing.ready_contact)
        };
        if fenced {
            return Readiness::Fenced;
        }
        let Some(leader) = status.leader else {
            return Readiness::NoLeader;
        };
        if leader != self.core.id() {
            return if recent(&self.leader_contact) {
                Readiness::Ready
            } else {
                Readiness::LeaderSilent
            };
        }
        let answering = 1 + self.peer_answered.iter().filter(|t| recent(t)).count();
        if answering as u32 >= paxoskv::quorum::majority(self.peers.len() as u32) {
            Readiness::Ready
        } else {
            Readiness::NoQuorum
        }
    }

    /// Debug lines for what the core's status shows changed: role, leader, chosen prefix.
    fn log_changes(&mut self, status: &CoreStatus) {
        let me = status.id;
        if status.role != self.logged.role || status.leader != self.logged.leader {
            let reason = match (status.role, status.leader) {
                ("leader", _) => "won phase 1: a majority promised our ballot",
                ("candidate", _) => "election timeout: no leader heard; running phase 1",
                (_, Some(_)) if self.logged.role == "leader" => {
                    "stepped down: a higher ballot was seen"
                }
                (_, Some(_)) => "heard from a leader",
                (_, None) => "no leader known",
            };
            tracing::debug!(
                replica = me,
                role = status.role,
                leader = ?status.leader,
                ballot = %status.promised,
                reason,
                "became {}",
                status.role
            );
            self.logged.role = status.role;
            self.logged.leader = status.leader;
        }
        if status.chosen_through > self.logged.applied {
            tracing::debug!(
                replica = me,
                ballot = %status.promised,
                from_slot = self.logged.applied + 1,
                slot = status.chosen_through,
                "chosen and applied"
            );
        }
        self.logged.applied = status.chosen_through;
    }

    /// Runs until `shutdown` becomes true. While a batch is being synced the driver keeps
    /// handling inputs and performing Readies (the core holds back what must wait); the next
    /// batch starts once the sync in flight ended.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(Duration::from_millis(self.timing.tick_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Busy time of this turn: input handling (not the wait for it) plus the rest.
            let mut handled = Duration::ZERO;
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                done = sync_done(&mut self.syncing), if self.syncing.is_some() => {
                    self.finish_sync(done);
                }
                input = self.inbox.recv() => {
                    let Some(input) = input else { break };
                    let started = Instant::now();
                    self.handle(input).await;
                    self.drain_inbox().await;
                    handled = started.elapsed();
                }
                _ = ticker.tick() => self.on_tick().await,
            }
            let rest_started = Instant::now();
            self.perform_ready();
            self.publish();
            if self.syncing.is_none() {
                self.maybe_snapshot().await;
            }
            log_slow_turn(self.core.id(), handled, rest_started.elapsed());
        }
        self.wait_for_sync().await;
        if let Some((_, task)) = self.snapshot_task.take() {
            let _ = task.await; // Let a snapshot in progress finish its rename.
        }
        tracing::info!(replica = self.core.id(), "driver stopped");
    }

    async fn drain_inbox(&mut self) {
        for _ in 1..MAX_INPUTS_PER_BATCH {
            match self.inbox.try_recv() {
                Ok(input) => self.handle(input).await,
                Err(_) => break,
            }
        }
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    async fn handle(&mut self, input: DriverInput) {
        if self.failed_reason().is_some() && input.needs_core_progress() {
            // Fenced: the core's batches are not synced, so feeding it would only pile up
            // memory until the reload. Peers resend; clients are told by the RPC layer.
            return;
        }
        match input {
            DriverInput::PeerRequest {
                from,
                request,
                reply,
                _permit,
            } => {
                if reply.is_closed() && !matches!(request, Request::Accept(_)) {
                    // The sender gave up (its call timed out): nobody waits for the answer;
                    // Paxos treats it as lost. Accepts are still taken: their value is
                    // here already, and holding it makes the sender's resend cheap.
                    return;
                }
                let t = self.token();
                self.peer_waiters.insert(t, (from, reply));
                let from_leader_kind = !matches!(request, Request::FetchChosen(_));
                self.core.handle_request(from, PeerToken(t), request);
                if from_leader_kind && self.core.leader() == Some(from) {
                    self.leader_contact = Some(Instant::now());
                }
            }
            DriverInput::PeerResponse { from, response } => {
                if let Some(t) = self.peer_answered.get_mut(from as usize) {
                    *t = Some(Instant::now());
                }
                log_response_in(self.core.id(), from, &response);
                self.core.handle_response(from, response);
            }
            DriverInput::Propose {
                command,
                deadline,
                reply,
            } => {
                if reply.is_closed() {
                    return; // The client's handler is gone: nobody waits for it.
                }
                self.metrics.proposals.inc();
                let t = self.token();
                self.client_waiters.insert(t, reply);
                let deadline_tick = self.deadline_tick(deadline);
                self.core
                    .propose_with_deadline(ClientToken(t), command, deadline_tick);
            }
            DriverInput::Read { key, reply } => {
                self.metrics.reads.inc();
                let t = self.token();
                self.client_waiters.insert(t, reply);
                self.core.read(ClientToken(t), key);
            }
            DriverInput::LeaseTime {
                lease,
                keep_alive,
                reply,
            } => {
                let t = self.token();
                self.client_waiters.insert(t, reply);
                match keep_alive {
                    true => self.core.lease_keepalive(ClientToken(t), lease),
                    false => self.core.lease_time_to_live(ClientToken(t), lease),
                }
            }
            DriverInput::ReadView { reply } => {
                self.metrics.reads.inc();
                let t = self.token();
                self.client_waiters.insert(t, reply);
                self.core.read_view(ClientToken(t));
            }
            DriverInput::StaleView { reply } => {
                self.metrics.reads.inc();
                let _ = reply.send(Box::new(self.core.kv().clone()));
            }
            DriverInput::StaleRead { key, reply } => {
                self.metrics.reads.inc();
                let _ = reply.send(self.core.read_local(&key).map(<[u8]>::to_vec));
            }
            DriverInput::Status { reply } => {
                let _ = reply.send(self.core.status());
            }
            DriverInput::InstallSnapshot {
                from,
                snapshot,
                reply,
            } => {
                let result = self.install_snapshot(from, *snapshot).await;
                let _ = reply.send(result);
            }
            DriverInput::PushDone { to, ok } => {
                self.pushing.remove(&to);
                self.push_backoff.record(to, ok, Instant::now());
            }
        }
    }

    /// The core tick by which `deadline` has passed. Ticks may run late (never early), so
    /// the core drops a command no sooner than the client gave up.
    fn deadline_tick(&self, deadline: Instant) -> u64 {
        let left_ms = deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as u64;
        let ticks = left_ms / self.timing.tick_ms.max(1);
        self.core.now_tick().saturating_add(ticks)
    }

    async fn on_tick(&mut self) {
        self.core.tick();
        let now = Instant::now();
        self.refusals
            .check(self.core.id(), self.core.refused(), now);
        if self.failed_reason().is_some() && self.reopen.due(now) {
            self.try_reopen().await;
        }
    }

    /// Runs `f` on the store in a blocking thread (fsync must not stall the runtime).
    async fn with_store<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut dyn ReplicaStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, String> {
        self.wait_for_sync().await;
        let Some(mut store) = self.store.take() else {
            return Err("storage is gone".into());
        };
        let joined = tokio::task::spawn_blocking(move || {
            let result = f(store.as_mut());
            (store, result)
        })
        .await;
        match joined {
            Ok((store, result)) => {
                self.store = Some(store);
                result.map_err(|e| e.to_string())
            }
            Err(e) => Err(format!("storage task failed: {e}")),
        }
    }

    async fn wait_for_sync(&mut self) {
        if self.syncing.is_some() {
            let done = sync_done(&mut self.syncing).await;
            self.finish_sync(done);
        }
    }

    /// Performs a Ready: everything in it leaves now (the core held back whatever vouches
    /// for records that are not yet durable), and its batch, if any, is synced in the
    /// background. This overlaps the leader's fsync with the followers' and with handling
    /// the next inputs.
    fn perform_ready(&mut self) {
        let ready = self.core.ready();
        if ready.is_empty() {
            return;
        }
        let Ready {
            persist,
            batch,
            messages,
            responses,
            client_replies,
            events,
        } = ready;
        // Events come from chosen slots: true whatever happens to this replica's storage.
        self.watch.publish(events);
        if self.failed_reason().is_some() {
            // Built on state that may not be durable: answer nothing until reloaded.
            return self.refuse(responses, client_replies, "storage failed");
        }
        self.send_all(messages, client_replies);
        self.respond_all(responses);
        let Some(batch) = batch else { return };
        let Some(mut store) = self.store.take() else {
            return self.mark_failed("storage is gone");
        };
        self.metrics.batch_records.observe(persist.len() as f64);
        let fsync_seconds = self.metrics.fsync_seconds.clone();
        let task = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let result = store.persist(&persist);
            let took = started.elapsed();
            fsync_seconds.observe(took.as_secs_f64());
            if took >= SLOW_STEP {
                tracing::info!(
                    records = persist.len(),
                    took_ms = took.as_millis() as u64,
                    "slow WAL persist"
                );
            }
            (store, result)
        });
        self.syncing = Some(Syncing { task, batch });
    }

    fn finish_sync(&mut self, done: Result<StoreResult, tokio::task::JoinError>) {
        let Some(Syncing { batch, .. }) = self.syncing.take() else {
            return;
        };
        let result = match done {
            Ok((store, result)) => {
                self.store = Some(store);
                result.map_err(|e| e.to_string())
            }
            Err(e) => Err(format!("storage task failed: {e}")),
        };
        match result {
            Ok(()) => self.core.on_persisted(batch),
            // The core never hears of this batch again: it is rebuilt from disk on reopen,
            // and until then nothing that waited for the batch leaves.
            Err(reason) => self.mark_failed(&reason),
        }
    }

    fn send_all(
        &mut self,
        messages: Vec<Outbound>,
        client_replies: Vec<(ClientToken, ClientReply)>,
    ) {
        for out in messages {
            self.send(out);
        }
        for (token, reply) in client_replies {
            if let Some(tx) = self.client_waiters.remove(&token.0) {
                let _ = tx.send(reply);
            }
        }
    }

    fn respond_all(&mut self, responses: Vec<(PeerToken, Response)>) {
        let me = self.core.id();
        for (token, response) in responses {
            if let Some((to, _)) = self.peer_waiters.get(&token.0) {
                log_response_out(me, *to, &response);
            }
            self.respond(token, response);
        }
        // Requests the core chose not to answer must not leak their waiters.
        self.peer_waiters.retain(|_, (_, tx)| !tx.is_closed());
    }

    fn respond(&mut self, token: PeerToken, response: Response) {
        let Some((from, tx)) = self.peer_waiters.remove(&token.0) else {
            return;
        };
        if matches!(&response, Response::Chosen(c) if c.snapshot_needed) {
            self.start_push(from);
        }
        let _ = tx.send(response);
    }

    fn mark_failed(&mut self, reason: &str) {
        if self.failed_reason().is_some() {
            // Already fenced: the backoff runs; a second failure changes nothing.
            return tracing::debug!(replica = self.core.id(), %reason, "storage failed again while fenced");
        }
        tracing::error!(
            replica = self.core.id(),
            %reason,
            "storage failed; replica fenced (no promises, accepts or writes until a write probe succeeds)"
        );
        if let Ok(mut f) = self.failed.lock() {
            *f = Some(reason.to_string());
        }
        self.reopen.on_fenced(Instant::now());
    }

    fn failed_reason(&self) -> Option<String> {
        self.failed.lock().ok().and_then(|f| f.clone())
    }

    /// Storage failed earlier: reopen it and rebuild the core from what is durable, so
    /// nothing that lived only in memory is ever acknowledged.
    async fn try_reopen(&mut self) {
        if self
            .snapshot_task
            .as_ref()
            .is_some_and(|(_, t)| !t.is_finished())
        {
            // Its thread renames files and deletes old segments: a reopen listing the
            // directory meanwhile could miss a segment it needs. Try again next tick.
            return;
        }
        // Probe first: reopening alone needs no space, so it would succeed on a full disk
        // and the next batch would fence the replica again at once.
        let recovered = match self
            .with_store(|s| {
                s.probe_space()?;
                s.reopen()
            })
            .await
        {
            Ok(r) => r,
            Err(e) => {
                self.reopen.on_failed_try(Instant::now());
                return tracing::warn!(
                    replica = self.core.id(),
                    error = %e,
                    retry_in_ms = self.reopen.delay_ms,
                    "storage still failing; staying fenced"
                );
            }
        };
        let cfg = self.core.config().clone();
        match Replica::recover(cfg, recovered.snapshot, recovered.records) {
            Ok(core) => {
                self.core = core;
                self.peer_waiters.clear();
                self.client_waiters.clear();
                self.snapshot_slot = self.core.chosen_through();
                if let Ok(mut f) = self.failed.lock() {
                    *f = None;
                }
                self.reopen.on_unfenced(Instant::now());
                tracing::info!(
                    replica = self.core.id(),
                    "storage works again; replica unfenced, state reloaded from disk"
                );
            }
            Err(e) => {
                self.reopen.on_failed_try(Instant::now());
                tracing::error!(replica = self.core.id(), error = %e, "cannot rebuild from disk")
            }
        }
    }

    /// Drops peer responses and fails client requests of a batch that could not be persisted.
    fn refuse(
        &mut self,
        responses: Vec<(PeerToken, Response)>,
        client_replies: Vec<(ClientToken, ClientReply)>,
        reason: &str,
    ) {
        for (token, _) in responses {
            self.peer_waiters.remove(&token.0);
        }
        for (token, _) in client_replies {
            self.client_waiters.remove(&token.0);
        }
        tracing::debug!(replica = self.core.id(), reason, "batch not acknowledged");
    }

    /// Finishes a background snapshot, or starts one when the log has grown enough.
    async fn maybe_snapshot(&mut self) {
        if self
            .snapshot_task
            .as_ref()
            .is_some_and(|(_, t)| t.is_finished())
        {
            self.finish_snapshot().await;
        }
        if self.snapshot_task.is_some() || self.failed_reason().is_some() {
            return;
        }
        let applied = self.core.chosen_through();
        let log_bytes = self.store.as_ref().map_or(0, |s| s.log_bytes());
        let due = log_bytes >= self.policy.log_bytes
            || applied >= self.snapshot_slot + self.policy.every_slots;
        let amortized = log_bytes >= self.snapshot_bytes;
        let due = due && amortized;
        if due && applied > self.snapshot_slot {
            self.start_snapshot().await;
        }
    }

    async fn start_snapshot(&mut self) {
        if !self.snapshot_fits() {
            return;
        }
        let snapshot = self.core.snapshot();
        let live = self.core.live_records(snapshot.through);
        let through = snapshot.through;
        match self.with_store(move |s| s.begin_snapshot(&live)).await {
            Ok(Some(job)) => {
                let writer = job.clone();
                // Low priority: the encoder must not take the CPU from the driver and the
                // WAL syncs (2 cores), or puts stall behind it.
                let task = tokio::task::spawn_blocking(move || {
                    crate::storage::run_at_low_priority(|| writer.write(&snapshot))
                });
                self.snapshot_task = Some((job, task));
                self.snapshot_started = Some(Instant::now());
                tracing::info!(replica = self.core.id(), through, "snapshot started");
            }
            Ok(None) => self.compact(through), // Nothing to write: memory-only replica.
            Err(reason) => self.mark_failed(&reason),
        }
        self.snapshot_slot = through;
    }

    /// False (with a log line, and a retry a second later) when the disk lacks room for a
    /// snapshot as large as the last one plus margin: starting it would fill the disk.
    fn snapshot_fits(&mut self) -> bool {
        let now = Instant::now();
        if self.snapshot_space_retry.is_some_and(|t| now < t) {
            return false;
        }
        let Some(store) = self.store.as_ref() else {
            return true;
        };
        match store.snapshot_space(self.snapshot_bytes) {
            Ok(()) => {
                self.snapshot_space_retry = None;
                true
            }
            Err(why) => {
                if self.snapshot_space_retry.is_none() {
                    tracing::warn!(replica = self.core.id(), %why, "snapshot postponed: not enough disk space");
                }
                self.snapshot_space_retry =
                    Some(now + Duration::from_millis(SNAPSHOT_SPACE_RETRY_MS));
                false
            }
        }
    }

    async fn finish_snapshot(&mut self) {
        let Some((job, task)) = self.snapshot_task.take() else {
            return;
        };
        match task.await {
            Ok(Ok(bytes)) => {
                self.snapshot_bytes = bytes;
                self.metrics.snapshots.inc();
                self.metrics.snapshot_bytes.inc_by(bytes);
                if let Some(started) = self.snapshot_started.take() {
                    self.metrics
                        .snapshot_seconds
                        .observe(started.elapsed().as_secs_f64());
                }
                // Timed: it runs on the driver's turn, so it shows up as put latency.
                let compact_started = Instant::now();
                if let Some(store) = self.store.as_mut() {
                    store.finish_snapshot(&job);
                }
                self.compact(self.snapshot_slot);
                tracing::info!(
                    replica = self.core.id(),
                    through = self.snapshot_slot,
                    compact_ms = compact_started.elapsed().as_millis() as u64,
                    "snapshot durable; log compacted"
                );
            }
            Ok(Err(e)) => {
                tracing::warn!(replica = self.core.id(), error = %e, "snapshot failed; keeping the log")
            }
            Err(e) => tracing::warn!(replica = self.core.id(), error = %e, "snapshot task failed"),
        }
    }

    fn compact(&mut self, through: Slot) {
        self.core
            .compact(through.saturating_sub(self.policy.keep_slots));
    }

    /// Makes a received snapshot durable, then hands it to the core.
    async fn install_snapshot(
        &mut self,
        from: ReplicaId,
        snapshot: Snapshot,
    ) -> Result<(), String> {
        if snapshot.through <= self.core.chosen_through() {
            return Ok(());
        }
        if !self.core.expects_snapshot_from(from) {
            // Checked when the transfer started too; the core may have caught up since.
            return Err(format!(
                "replica {} does not expect a snapshot from replica {from}",
                self.core.id()
            ));
        }
        if let Some(reason) = self.failed_reason() {
            return Err(reason);
        }
        let through = snapshot.through;
        let live = self.core.live_records(through);
        let snapshot = self
            .with_store(move |s| {
                if let Some(job) = s.begin_snapshot(&live)? {
                    job.write(&snapshot)?;
                    s.finish_snapshot(&job);
                }
                Ok(snapshot)
            })
            .await;
        let snapshot = snapshot.inspect_err(|reason| self.mark_failed(reason))?;
        self.core.install_snapshot(snapshot);
        self.snapshot_slot = through;
        self.metrics.snapshots.inc();
        self.metrics.snapshot_installs.inc();
        tracing::info!(
            replica = self.core.id(),
            through,
            "installed snapshot from a peer"
        );
        Ok(())
    }

    /// Sends our current state to `to`, which is behind our compacted log.
    fn start_push(&mut self, to: ReplicaId) {
        let Some(Some(peer)) = self.peers.get(to as usize) else {
            return;
        };
        if !self.push_backoff.allows(to, Instant::now()) {
            return; // The last push to it failed recently: the peer asks again anyway.
        }
        if self.pushing.len() >= MAX_CONCURRENT_PUSHES || !self.pushing.insert(to) {
            return;
        }
        let snapshot = self.core.snapshot();
        self.metrics.snapshot_pushes.inc();
        let (me, peer, tx) = (self.core.id(), peer.clone(), self.self_tx.clone());
        tracing::info!(
            replica = me,
            to,
            through = snapshot.through,
            "pushing snapshot"
        );
        tokio::spawn(async move {
            let result = push_snapshot(me, &peer, snapshot).await;
            if let Err(e) = &result {
                tracing::warn!(replica = me, to, error = %e, "snapshot push failed");
            }
            let ok = result.is_ok();
            let _ = tx.send(DriverInput::PushDone { to, ok }).await;
        });
    }

    fn send(&mut self, out: Outbound) {
        let Some(Some(peer)) = self.peers.get(out.to as usize) else {
            return;
        };
        if self.failure.blocks(out.to) {
            return; // partitioned by fault control
        }
        let Ok(permit) = self.peer_calls.clone().try_acquire_owned() else {
            tracing::debug!(
                to = out.to,
                "too many peer calls in flight; dropping message"
            );
            return;
        };
        let bytes = crate::rpc::request_bytes(&out.request);
        let large = bytes >= SMALL_SEND_BYTES;
        let (bytes_permit, sending) = if large {
            let Some(budget) = self.send_bytes.get(out.to as usize) else {
                return;
            };
            let Some(sending) = self.large_sends.claim(out.to, &out.request) else {
                // The same accept is still on its way to that peer: a resend now would only
                // queue a second copy of its value behind the first.
                return;
            };
            match budget.try_take(bytes) {
                Ok(p) => (Some(p), Some(sending)),
                Err(e) => {
                    tracing::debug!(to = out.to, error = %e, "dropping message");
                    return;
                }
            }
        } else {
            (None, None)
        };
        trace_message(self.core.id(), &out);
        let peer = peer.clone();
        let tx = self.self_tx.clone();
        let me = self.core.id();
        // A large accept waits for the peer's sync of it: give it longer than a heartbeat.
        let timeout_ms = if large {
            self.timing.peer_timeout_ms.max(LARGE_REQUEST_TIMEOUT_MS)
        } else {
            self.timing.peer_timeout_ms
        };
        let timeout = Duration::from_millis(timeout_ms);
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let from = peer.id;
            let started = Instant::now();
            let answer = peer.call(me, out.request, timeout).await;
            metrics.observe_peer_call(from, started.elapsed(), answer.is_some());
            if let Some(response) = answer {
                let _ = tx.send(DriverInput::PeerResponse { from, response }).await;
            }
            drop(sending);
            drop(bytes_permit);
            drop(permit);
        });
    }
}

/// Logs a driver turn that kept the driver busy for at least [`SLOW_STEP`]: `handled` is
/// input handling, `rest` performing the Ready, publishing and snapshot scheduling.
fn log_slow_turn(me: ReplicaId, handled: Duration, rest: Duration) {
    if handled + rest >= SLOW_STEP {
        tracing::info!(
            replica = me,
            handled_ms = handled.as_millis() as u64,
            rest_ms = rest.as_millis() as u64,
            "slow driver turn"
        );
    }
}

async fn push_snapshot(me: ReplicaId, peer: &PeerLink, snapshot: Snapshot) -> Result<(), String> {
    let through = snapshot.through;
    // Encoding a large map takes a core for a while: below the driver's priority (2 cores).
    let bytes = tokio::task::spawn_blocking(move || {
        crate::storage::run_at_low_priority(|| bincode::serialize(&snapshot))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let total_bytes = bytes.len() as u64;
    let timeout = Duration::from_millis(SNAPSHOT_CHUNK_TIMEOUT_MS);
    for (i, data) in bytes.chunks(SNAPSHOT_CHUNK_BYTES).enumerate() {
        let chunk = SnapshotChunk {
            through,
            total_bytes,
            offset: (i * SNAPSHOT_CHUNK_BYTES) as u64,
            data: data.to_vec(),
        };
        peer.install_snapshot(me, chunk, timeout).await?;
    }
    Ok(())
}

fn trace_message(me: ReplicaId, out: &Outbound) {
    match &out.request {
        Request::Prepare(p) if p.probe => {
            tracing::debug!(replica = me, to = out.to, ballot = %p.ballot, "phase 1 probe (pre-vote)")
        }
        Request::Prepare(p) => {
            tracing::debug!(replica = me, to = out.to, ballot = %p.ballot, from_slot = p.first_unchosen, "phase 1a prepare")
        }
        Request::Accept(a) => tracing::debug!(
            replica = me,
            to = out.to,
            ballot = %a.ballot,
            slot = a.slot,
            commands = a.value.commands.len(),
            commit = a.commit,
            "phase 2a accept"
        ),
        Request::Learn(l) => {
            tracing::trace!(replica = me, to = out.to, ballot = %l.ballot, commit = l.commit, round = l.round, "learn")
        }
        Request::FetchChosen(f) => {
            tracing::debug!(
                replica = me,
                to = out.to,
                from_slot = f.from_slot,
                "catch-up fetch"
            )
        }
    }
}

/// Debug line for an answer this replica sends (1b promise, 2b accepted, nack, catch-up).
fn log_response_out(me: ReplicaId, to: ReplicaId, response: &Response) {
    match response {
        Response::Promise(p) if p.probe => {
            tracing::debug!(replica = me, to, ballot = %p.ballot, "phase 1 probe answered (pre-vote granted)")
        }
        Response::Promise(p) => tracing::debug!(
            replica = me,
            to,
            ballot = %p.ballot,
            accepted = p.accepted.len(),
            chosen_through = p.chosen_through,
            "phase 1b promise"
        ),
        Response::Accepted(a) => {
            tracing::debug!(replica = me, to, ballot = %a.ballot, slot = a.slot, "phase 2b accepted")
        }
        Response::Nack(n) => tracing::debug!(
            replica = me,
            to,
            ballot = %n.ballot,
            promised = %n.promised,
            slot = ?n.slot,
            "nack: promised a higher ballot"
        ),
        Response::Chosen(c) => tracing::debug!(
            replica = me,
            to,
            from_slot = c.from_slot,
            values = c.values.len(),
            chosen_through = c.chosen_through,
            snapshot_needed = c.snapshot_needed,
            "catch-up: sending chosen values"
        ),
        Response::LearnAck(a) => {
            tracing::trace!(replica = me, to, ballot = %a.ballot, round = a.round, "learn ack")
        }
    }
}

/// Debug line for an answer this replica receives from `from`.
fn log_response_in(me: ReplicaId, from: ReplicaId, response: &Response) {
    match response {
        Response::Promise(p) => tracing::debug!(
            replica = me,
            from,
            ballot = %p.ballot,
            probe = p.probe,
            accepted = p.accepted.len(),
            "phase 1b promise received"
        ),
        Response::Accepted(a) => tracing::debug!(
            replica = me,
            from,
            ballot = %a.ballot,
            slot = a.slot,
            "phase 2b accepted received"
        ),
        Response::Nack(n) => tracing::debug!(
            replica = me,
            from,
            ballot = %n.ballot,
            promised = %n.promised,
            slot = ?n.slot,
            "nack received"
        ),
        Response::Chosen(c) => tracing::debug!(
            replica = me,
            from,
            from_slot = c.from_slot,
            values = c.values.len(),
            chosen_through = c.chosen_through,
            "catch-up: chosen values received"
        ),
        Response::LearnAck(a) => {
            tracing::trace!(replica = me, from, ballot = %a.ballot, round = a.round, "learn ack received")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopen_backoff_doubles_to_the_cap_and_remembers_a_recent_unfence() {
        let start = Instant::now();
        let mut backoff = ReopenBackoff::new();
        backoff.on_fenced(start);
        assert_eq!(backoff.delay_ms, REOPEN_FIRST_DELAY_MS);
        assert!(!backoff.due(start));
        assert!(backoff.due(start + Duration::from_millis(REOPEN_FIRST_DELAY_MS)));
        let mut delays = Vec::new();
        for _ in 0..7 {
            backoff.on_failed_try(start);
            delays.push(backoff.delay_ms);
        }
        assert_eq!(delays, [2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000]);

        // Fenced again soon after unfencing: the wait does not start over at 1 s.
        let mut backoff = ReopenBackoff::new();
        backoff.on_fenced(start);
        backoff.on_unfenced(start);
        backoff.on_fenced(start + Duration::from_millis(10));
        assert_eq!(backoff.delay_ms, 2 * REOPEN_FIRST_DELAY_MS);
        // Long after: it does.
        backoff.on_unfenced(start);
        backoff.on_fenced(start + Duration::from_millis(REFENCE_MEMORY_MS + 1));
        assert_eq!(backoff.delay_ms, REOPEN_FIRST_DELAY_MS);
    }
}

#[cfg(test)]
mod push_backoff_tests {
    use super::*;

    #[test]
    fn failed_pushes_back_off_exponentially_up_to_the_cap_and_a_success_resets() {
        let mut backoff = PushBackoff::default();
        let start = Instant::now();
        assert!(backoff.allows(2, start));
        backoff.record(2, false, start);
        assert!(!backoff.allows(2, start));
        assert!(backoff.allows(3, start), "other peers are not held back");
        let first = Duration::from_millis(PUSH_BACKOFF_MIN_MS);
        assert!(backoff.allows(2, start + first));

        let mut now = start;
        let mut expected_ms = PUSH_BACKOFF_MIN_MS;
        for _ in 0..10 {
            expected_ms = (expected_ms * 2).min(PUSH_BACKOFF_MAX_MS);
            backoff.record(2, false, now);
            let wait = Duration::from_millis(expected_ms);
            assert!(!backoff.allows(2, now + wait - Duration::from_millis(1)));
            assert!(backoff.allows(2, now + wait));
            now += wait;
        }
        assert_eq!(expected_ms, PUSH_BACKOFF_MAX_MS);

        backoff.record(2, true, now);
        assert!(backoff.allows(2, now));
        backoff.record(2, false, now);
        assert!(
            backoff.allows(2, now + first),
            "a success restarts at the minimum"
        );
    }
}
