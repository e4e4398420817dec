//! The simulated cluster: replica cores, their disks, the wire and the fault injector, all
//! driven one step at a time from one seed.
//!
//! A step is one tick of logical time: faults are injected, crashed replicas whose downtime
//! is over restart from their disks, syncs that are due complete, every live replica ticks,
//! and every packet due at this step is delivered. After each input a replica's `Ready` is
//! performed exactly as the server's driver performs it (the core's `durability` contract):
//! everything in it is sent at once, its batch is synced in the background over a random
//! number of steps while the replica keeps working, and `on_persisted` releases what waited.
//! A process crash keeps what was written (the page cache survives), a machine crash loses
//! what was not synced and may tear the batch in flight, and a failed sync fences the replica
//! until it reloads from disk. The reload starts from what was synced before the failed
//! batch, as the server's WAL cuts its file back to the last synced length: after a failed
//! `fdatasync` the page cache still shows the batch, but nothing says it reached the disk.
//! With `broken_fsync` the replica trusts the page cache instead, and the next machine crash
//! takes those records back (the bug the cut prevents; a self-test for the checker).

use super::checks::Violation;
use super::clients::client_of_token;
use super::digest::{mix_seed, RunDigest};
use super::faults::{roll, FaultCounts, FaultProfile, Links};
use super::wire::{ClientCall, Packet, Wire};
use super::Envelope;
use crate::BROKEN_ACCEPTOR_AVAILABLE;
use paxoskv::message::Response;
use paxoskv::persist::{Record, Snapshot};
use paxoskv::Config;
use paxoskv::{Ballot, BatchNumber, ReplicaId, Slot, Value};
use paxoskv::{ClientReply, ClientToken, PeerToken, Replica};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, VecDeque};

/// Packets in flight, at most; more are dropped (and counted as loss).
const MAX_IN_FLIGHT_PACKETS: usize = 20_000;
/// A replica waiting for a snapshot asks again after this long.
const SNAPSHOT_RETRY_STEPS: u64 = 20;
/// A background snapshot takes `1..=` this many steps to write.
const SNAPSHOT_WRITE_MAX_STEPS: u64 = 30;
/// Trace lines kept (the last ones; the end of a run is where a violation shows).
const MAX_TRACE_LINES: usize = 20_000;
/// A client write waits this many of the receiving core's ticks in a leader's queue at most
/// (as the server's driver converts a client's deadline), so the core's dropping of expired
/// queued commands runs in every simulation.
const PROPOSE_DEADLINE_TICKS: u64 = 40;

/// What one replica has made durable.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    /// Newest durable snapshot.
    pub snapshot: Option<Snapshot>,
    /// Log records written since (replayed after the snapshot on restart).
    pub records: Vec<Record>,
    /// Records from this index on exist only in the page cache: a failed sync left them
    /// there and a replica that trusts the page cache (`broken_fsync`) replayed them. A
    /// machine crash loses them. Always `None` unless `broken_fsync`.
    pub volatile_from: Option<usize>,
}

/// One replica slot of the cluster: the core while it is up, and its disk always.
pub struct Node {
    cfg: Config,
    /// `None` while crashed.
    pub replica: Option<Replica>,
    /// What survives a crash.
    pub disk: Disk,
    /// Grows by one per restart (checks use it to notice restarts).
    pub incarnation: u64,
    /// Log entries up to here exist only in a snapshot.
    pub compacted_through: Slot,
    /// Highest ballot this replica told a peer it promised (in a promise or an accepted
    /// answer). Whatever was said must survive a crash, so its promise may never drop below.
    pub promise_told: Ballot,
    restart_step: Option<u64>,
    paused_until_step: u64,
    /// The next `Ready` with records to persist is cut short by a crash.
    crash_armed: bool,
    /// The batch being synced, if any.
    syncing: Option<SyncJob>,
    /// A snapshot being written in the background, if any.
    background: Option<BackgroundSnapshot>,
    /// Highest own ballot sent under (prepare, accept, learn) by earlier incarnations, and by
    /// this one: a later incarnation must never use one of those again.
    ballot_used_before: Ballot,
    ballot_used_now: Ballot,
    /// Peer requests being answered: token -> requester. A promise or an acceptance may be
    /// held until its batch is durable, so an entry lives until its response leaves.
    peer_tokens: BTreeMap<u64, ReplicaId>,
    snapshot_asked_step: Option<u64>,
}

impl Node {
    fn is_paused(&self, now_step: u64) -> bool {
        now_step < self.paused_until_step
    }
}

/// One Ready turned into packets, plus its batch of records.
struct Batch {
    /// The batch to sync, if the Ready started one.
    persist: Option<SyncJob>,
    /// Everything the Ready holds: it may all leave at once.
    packets: Vec<Packet>,
}

/// A batch of records on its way to the disk.
#[derive(Debug)]
struct SyncJob {
    number: BatchNumber,
    records: Vec<Record>,
    done_step: u64,
}

/// A snapshot file being written while the log goes on in a new segment.
#[derive(Debug)]
struct BackgroundSnapshot {
    snapshot: Snapshot,
    /// Index in the disk's records where the new segment (live state first) begins.
    segment_start: usize,
    done_step: u64,
}

/// How a replica goes down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CrashKind {
    /// `kill -9`: what was written survives in the page cache.
    Process,
    /// Power loss: only what was synced survives; the batch in flight may be torn.
    Machine,
    /// In the middle of performing a Ready: part of the batch written, part of it sent.
    Torn,
    /// A sync failed: the replica fenced itself and reloads from what is on disk.
    SyncFailed,
}

/// A client reply that reached its client this step.
#[derive(Clone, Debug)]
pub struct ClientDelivery {
    /// Client index.
    pub client: usize,
    /// The attempt answered.
    pub token: ClientToken,
    /// Replica that answered.
    pub from: ReplicaId,
    /// The answer.
    pub reply: ClientReply,
}

/// The simulated cluster.
pub struct World {
    nodes: Vec<Node>,
    wire: Wire,
    rng: StdRng,
    seed: u64,
    profile: FaultProfile,
    links: Links,
    faults_on: bool,
    counts: FaultCounts,
    now_step: u64,
    next_peer_token: u64,
    digest: RunDigest,
    client_inbox: Vec<ClientDelivery>,
    trace: Option<VecDeque<String>>,
    /// The value of every (ballot, slot) any replica ever accepted: one ballot proposes one
    /// value per slot, across incarnations too.
    accepted_values: BTreeMap<(Ballot, Slot), Value>,
    /// A violation seen while sending or syncing, reported by the next `step`.
    violation: Option<Violation>,
    /// Failed syncs leave the batch in the page cache and the replica trusts it (self-test).
    broken_fsync: bool,
}

/// Core tunables varied per seed, so pipelining, batching and catch-up paging are exercised
/// at their bounds and not only at the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreTunables {
    /// [`Config::max_inflight_slots`].
    pub max_inflight_slots: usize,
    /// [`Config::max_batch_commands`].
    pub max_batch_commands: usize,
    /// [`Config::fetch_max_entries`].
    pub fetch_max_entries: u32,
    /// [`Config::heartbeat_ticks`].
    pub heartbeat_ticks: u64,
    /// [`Config::election_timeout_min_ticks`]; the maximum is twice this.
    pub election_timeout_min_ticks: u64,
    /// [`Config::max_sessions`]: small tables make clients' sessions expire mid-run.
    pub max_sessions: usize,
}

impl CoreTunables {
    /// The defaults of [`Config::new`].
    pub fn defaults() -> CoreTunables {
        let cfg = Config::new(0, 1);
        CoreTunables {
            max_inflight_slots: cfg.max_inflight_slots,
            max_batch_commands: cfg.max_batch_commands,
            fetch_max_entries: cfg.fetch_max_entries,
            heartbeat_ticks: cfg.heartbeat_ticks,
            election_timeout_min_ticks: cfg.election_timeout_min_ticks,
            max_sessions: cfg.max_sessions,
        }
    }

    /// Defaults half the time, otherwise small random bounds.
    pub fn random(rng: &mut StdRng) -> CoreTunables {
        if rng.gen_bool(0.5) {
            return CoreTunables::defaults();
        }
        CoreTunables {
            max_inflight_slots: rng.gen_range(1..=8),
            max_batch_commands: rng.gen_range(1..=4),
            fetch_max_entries: rng.gen_range(1..=8),
            heartbeat_ticks: rng.gen_range(2..=5),
            election_timeout_min_ticks: rng.gen_range(12..=25),
            max_sessions: rng.gen_range(2..=6),
        }
    }

    fn apply(&self, cfg: &mut Config) {
        cfg.max_inflight_slots = self.max_inflight_slots;
        cfg.max_batch_commands = self.max_batch_commands;
        cfg.fetch_max_entries = self.fetch_max_entries;
        cfg.heartbeat_ticks = self.heartbeat_ticks;
        cfg.election_timeout_min_ticks = self.election_timeout_min_ticks;
        cfg.election_timeout_max_ticks = 2 * self.election_timeout_min_ticks;
        cfg.max_sessions = self.max_sessions;
    }
}

/// Everything a [`World`] is built from.
#[derive(Clone, Debug)]
pub struct WorldOptions {
    /// Cluster size.
    pub replicas: u32,
    /// The run's seed.
    pub seed: u64,
    /// How hostile the fault phase is.
    pub profile: FaultProfile,
    /// Core configuration.
    pub tunables: CoreTunables,
    /// Every acceptor skips the promise check.
    pub broken_acceptor: bool,
    /// Every replica sends before its own promise is durable (the own-promise bug).
    pub broken_durability: bool,
    /// After a failed sync a replica reloads what the page cache shows, not what was synced.
    pub broken_fsync: bool,
    /// Keep a trace of events.
    pub trace: bool,
}

impl World {
    /// A fresh cluster.
    pub fn new(options: WorldOptions) -> World {
        let WorldOptions {
            replicas,
            seed,
            profile,
            tunables,
            broken_acceptor,
            broken_durability,
            broken_fsync,
            trace,
        } = options;
        // Outside `run_seed`'s catch_unwind, so misuse surfaces as a panic, not as a "violation"
        // that a self-test would happily count as caught.
        assert!(
            !(broken_acceptor || broken_durability || broken_fsync) || BROKEN_ACCEPTOR_AVAILABLE,
            "broken_acceptor needs paxoskv-sim built with the `broken-acceptor` feature"
        );
        let nodes = (0..replicas)
            .map(|id| {
                let mut cfg = Config::new(id, replicas);
                tunables.apply(&mut cfg);
                cfg.seed = mix_seed(seed, u64::from(id) << 32);
                #[cfg(feature = "broken-acceptor")]
                {
                    cfg.unsafe_skip_promise_check = broken_acceptor;
                    cfg.unsafe_send_before_durable = broken_durability;
                }
                Node {
                    replica: Some(Replica::new(cfg.clone())),
                    cfg,
                    disk: Disk::default(),
                    incarnation: 0,
                    compacted_through: 0,
                    promise_told: Ballot::ZERO,
                    restart_step: None,
                    paused_until_step: 0,
                    crash_armed: false,
                    syncing: None,
                    background: None,
                    ballot_used_before: Ballot::ZERO,
                    ballot_used_now: Ballot::ZERO,
                    peer_tokens: BTreeMap::new(),
                    snapshot_asked_step: None,
                }
            })
            .collect();
        World {
            nodes,
            wire: Wire::new(MAX_IN_FLIGHT_PACKETS),
            rng: StdRng::seed_from_u64(mix_seed(seed, 1)),
            seed,
            profile,
            links: Links::new(replicas),
            faults_on: true,
            counts: FaultCounts::default(),
            now_step: 0,
            next_peer_token: 0,
            digest: RunDigest::default(),
            client_inbox: Vec::new(),
            trace: trace.then(VecDeque::new),
            accepted_values: BTreeMap::new(),
            violation: None,
            broken_fsync,
        }
    }

    /// The current step.
    pub fn now_step(&self) -> u64 {
        self.now_step
    }

    /// Cluster size.
    pub fn replicas(&self) -> u32 {
        self.nodes.len() as u32
    }

    /// Every replica slot.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Faults injected so far.
    pub fn counts(&self) -> &FaultCounts {
        &self.counts
    }

    /// Digest of everything delivered so far; callers fold in their own events too.
    pub fn digest(&mut self) -> &mut RunDigest {
        &mut self.digest
    }

    /// The trace kept so far (empty unless tracing).
    pub fn take_trace(&mut self) -> Vec<String> {
        self.trace.take().map(Vec::from).unwrap_or_default()
    }

    /// Appends a trace line; the closure only runs when tracing.
    pub fn trace(&mut self, line: impl FnOnce() -> String) {
        let now = self.now_step;
        if let Some(t) = self.trace.as_mut() {
            if t.len() >= MAX_TRACE_LINES {
                t.pop_front();
            }
            t.push_back(format!("{now:>6} {}", line()));
        }
    }

    /// Advances one step: faults, restarts, ticks, deliveries, snapshot shipping.
    pub fn step(&mut self) -> Result<(), Violation> {
        self.now_step += 1;
        self.links.heal_if_due(self.now_step, false);
        if self.faults_on {
            self.inject_faults();
        }
        self.restart_due()?;
        self.complete_due_syncs();
        self.finish_due_snapshots();
        self.tick_all();
        self.deliver_due();
        self.ship_snapshots();
        self.violation.take().map_or(Ok(()), Err)
    }

    /// Ends the fault phase: heals the network, resumes paused replicas and restarts
    /// crashed ones. Slow clocks stay slow; packets still get a small random delay.
    pub fn stop_faults(&mut self) -> Result<(), Violation> {
        self.faults_on = false;
        let skew = std::mem::take(&mut self.profile.tick_skip_per_mille);
        let sync_delay = self.profile.sync_delay_max_steps;
        self.profile = FaultProfile::calm(self.replicas());
        self.profile.tick_skip_per_mille = skew;
        self.profile.sync_delay_max_steps = sync_delay;
        self.links.heal_if_due(self.now_step, true);
        self.trace(|| "faults stop: heal, resume, restart".to_string());
        for id in 0..self.replicas() {
            let node = &mut self.nodes[id as usize];
            node.paused_until_step = 0;
            node.crash_armed = false;
            if node.replica.is_none() {
                self.restart(id)?;
            }
        }
        Ok(())
    }

    /// Sends a client request (subject to loss and delay, never to partitions).
    pub fn send_client_request(
        &mut self,
        client: usize,
        to: ReplicaId,
        token: ClientToken,
        call: ClientCall,
    ) {
        self.send(Packet::ToReplica {
            client,
            to,
            token,
            call,
        });
    }

    /// Takes the client replies delivered this step.
    pub fn take_client_inbox(&mut self) -> Vec<ClientDelivery> {
        std::mem::take(&mut self.client_inbox)
    }

    fn inject_faults(&mut self) {
        let now = self.now_step;
        let can_split = self.replicas() > 1 && !self.links.is_partitioned();
        if can_split && roll(&mut self.rng, self.profile.partition_per_mille) {
            let heal = now + self.partition_steps();
            let leader = self.leader();
            if let Some(leader) = leader.filter(|_| self.rng.gen_bool(0.5)) {
                self.links.isolate_minority(&mut self.rng, leader, heal);
                self.counts.partitions += 1;
            } else if self.rng.gen_bool(0.6) {
                self.links.split(&mut self.rng, heal);
                self.counts.partitions += 1;
            } else {
                self.links.one_way(&mut self.rng, heal);
                self.counts.one_way += 1;
            }
            self.trace(|| format!("partition until {heal}"));
        }
        if roll(&mut self.rng, self.profile.crash_per_mille) {
            if let Some(id) = self.pick_up_node() {
                match self.rng.gen_range(0..3) {
                    0 => self.crash(id, CrashKind::Process),
                    1 => self.crash(id, CrashKind::Machine),
                    _ => self.nodes[id as usize].crash_armed = true,
                }
            }
        }
        if roll(&mut self.rng, self.profile.pause_per_mille) {
            // Half the pauses hit a leader: it wakes up still believing it leads.
            let leader = self.leader().filter(|_| self.rng.gen_bool(0.5));
            if let Some(id) = leader.or_else(|| self.pick_up_node()) {
                let until = now + self.rng.gen_range(1..=self.profile.pause_max_steps);
                self.nodes[id as usize].paused_until_step = until;
                self.counts.pauses += 1;
                self.trace(|| format!("pause r{id} until {until}"));
            }
        }
        if roll(&mut self.rng, self.profile.snapshot_per_mille) {
            if let Some(id) = self.pick_up_node() {
                self.take_snapshot(id);
            }
        }
    }

    /// Half the partitions last about one election timeout: long enough for the majority to
    /// elect a new leader, short enough that the old one still believes it leads when the
    /// partition heals. Those overlaps are where Paxos bugs live.
    fn partition_steps(&mut self) -> u64 {
        if self.rng.gen_bool(0.5) {
            let lo = self.nodes[0].cfg.election_timeout_min_ticks;
            let hi = self.nodes[0].cfg.election_timeout_max_ticks;
            self.rng.gen_range(lo..=hi + lo)
        } else {
            self.rng.gen_range(1..=self.profile.partition_max_steps)
        }
    }

    /// A live, unpaused replica that believes it leads (the highest ballot, if several do).
    fn leader(&self) -> Option<ReplicaId> {
        let now = self.now_step;
        self.nodes
            .iter()
            .filter(|n| !n.is_paused(now))
            .filter_map(|n| n.replica.as_ref())
            .filter(|r| r.is_leader())
            .max_by_key(|r| r.promised())
            .map(|r| r.id())
    }

    /// A random replica that is up and not paused.
    fn pick_up_node(&mut self) -> Option<ReplicaId> {
        let now = self.now_step;
        let up: Vec<ReplicaId> = (0..self.replicas())
            .filter(|&id| {
                let n = &self.nodes[id as usize];
                n.replica.is_some() && !n.is_paused(now)
            })
            .collect();
        if up.is_empty() {
            return None;
        }
        Some(up[self.rng.gen_range(0..up.len())])
    }

    fn crash(&mut self, id: ReplicaId, kind: CrashKind) {
        let down_steps = self.rng.gen_range(1..=self.profile.down_max_steps.max(1));
        if let Some(job) = self.nodes[id as usize].syncing.take() {
            // Records still in the core's memory are gone either way; the batch in flight was
            // written before its sync started, so only a machine crash can lose (or tear) it.
            let kept = match kind {
                CrashKind::Process => job.records.len(),
                _ => self.rng.gen_range(0..=job.records.len()),
            };
            let disk = &mut self.nodes[id as usize].disk;
            disk.records.extend(job.records.into_iter().take(kept));
        }
        if matches!(kind, CrashKind::Machine | CrashKind::Torn) {
            // Power loss: what only the page cache held is gone, and so is everything the log
            // holds after it (replay stops at the hole).
            let disk = &mut self.nodes[id as usize].disk;
            if let Some(from) = disk.volatile_from.take() {
                disk.records.truncate(from);
            }
        }
        let node = &mut self.nodes[id as usize];
        node.background = None; // An unfinished snapshot file is never renamed into place.
        node.replica = None;
        node.peer_tokens.clear();
        node.crash_armed = false;
        node.paused_until_step = 0;
        node.snapshot_asked_step = None;
        node.restart_step = Some(self.now_step + down_steps);
        node.ballot_used_before = node.ballot_used_before.max(node.ballot_used_now);
        match kind {
            CrashKind::Process => self.counts.crashes += 1,
            CrashKind::Machine => self.counts.machine_crashes += 1,
            CrashKind::Torn => self.counts.torn_crashes += 1,
            CrashKind::SyncFailed => self.counts.sync_failures += 1,
        }
        self.trace(|| format!("crash r{id} ({kind:?}) for {down_steps} steps"));
    }

    fn restart_due(&mut self) -> Result<(), Violation> {
        for id in 0..self.replicas() {
            let due = self.nodes[id as usize]
                .restart_step
                .is_some_and(|s| s <= self.now_step);
            if due && self.nodes[id as usize].replica.is_none() {
                self.restart(id)?;
            }
        }
        Ok(())
    }

    /// Rebuilds replica `id` from exactly what its disk holds.
    fn restart(&mut self, id: ReplicaId) -> Result<(), Violation> {
        let node = &mut self.nodes[id as usize];
        node.incarnation += 1;
        let mut cfg = node.cfg.clone();
        // A restarted process draws new election timeouts, like a real one would.
        cfg.seed = mix_seed(self.seed, (u64::from(id) << 32) | node.incarnation);
        let snapshot = node.disk.snapshot.clone();
        let through = snapshot.as_ref().map_or(0, |s| s.through);
        let replica = Replica::recover(cfg, snapshot, node.disk.records.iter().cloned())
            .map_err(|error| Violation::RecoveryFailed { replica: id, error })?;
        node.replica = Some(replica);
        node.compacted_through = through;
        node.restart_step = None;
        self.counts.restarts += 1;
        self.trace(|| format!("restart r{id} from disk (snapshot through {through})"));
        Ok(())
    }

    fn tick_all(&mut self) {
        let now = self.now_step;
        for id in 0..self.replicas() {
            let node = &self.nodes[id as usize];
            if node.replica.is_none() || node.is_paused(now) {
                continue;
            }
            if roll(&mut self.rng, self.profile.tick_skip_per_mille[id as usize]) {
                self.counts.skipped_ticks += 1;
                continue;
            }
            if let Some(r) = self.nodes[id as usize].replica.as_mut() {
                r.tick();
            }
            self.flush(id);
        }
    }

    fn deliver_due(&mut self) {
        while let Some(packet) = self.wire.pop_due(self.now_step) {
            self.deliver(packet);
        }
    }

    fn deliver(&mut self, packet: Packet) {
        let now = self.now_step;
        self.digest.word(now);
        self.digest.word(packet.kind_tag());
        if let Some((from, to)) = packet.peer_link() {
            self.digest.word(u64::from(from) << 8 | u64::from(to));
            if self.links.is_cut(from, to) {
                self.counts.cut += 1;
                return;
            }
        }
        if let Some(to) = packet.to_replica() {
            let node = &self.nodes[to as usize];
            if node.replica.is_none() {
                return; // Sent to a crashed process: lost.
            }
            if node.is_paused(now) {
                let resume = node.paused_until_step;
                self.wire.push(resume, packet);
                return;
            }
        }
        self.trace(|| format!("deliver {packet:?}"));
        match packet {
            Packet::Peer(env) => self.deliver_peer(env),
            Packet::ToReplica {
                to, token, call, ..
            } => self.deliver_client_call(to, token, call),
            Packet::ToClient {
                client,
                from,
                token,
                reply,
            } => self.client_inbox.push(ClientDelivery {
                client,
                token,
                from,
                reply,
            }),
            Packet::Snapshot { to, snapshot, .. } => self.install_snapshot(to, snapshot),
        }
    }

    fn deliver_peer(&mut self, env: Envelope) {
        let to = env.to();
        let node = &mut self.nodes[to as usize];
        let Some(r) = node.replica.as_mut() else {
            return;
        };
        match env {
            Envelope::Request { from, request, .. } => {
                self.next_peer_token += 1;
                node.peer_tokens.insert(self.next_peer_token, from);
                r.handle_request(from, PeerToken(self.next_peer_token), request);
            }
            Envelope::Response { from, response, .. } => r.handle_response(from, response),
        }
        self.flush(to);
    }

    fn deliver_client_call(&mut self, to: ReplicaId, token: ClientToken, call: ClientCall) {
        let Some(r) = self.nodes[to as usize].replica.as_mut() else {
            return;
        };
        match call {
            ClientCall::Write(command) => {
                let deadline_tick = r.now_tick().saturating_add(PROPOSE_DEADLINE_TICKS);
                r.propose_with_deadline(token, command, deadline_tick)
            }
            ClientCall::Read(key) => r.read(token, key),
            ClientCall::KeepAlive(lease) => r.lease_keepalive(token, lease),
        }
        self.flush(to);
    }

    /// Performs replica `id`'s Ready as the driver does, or cuts it with an armed crash:
    /// everything in it leaves now, and its batch starts syncing in the background.
    fn flush(&mut self, id: ReplicaId) {
        let node = &mut self.nodes[id as usize];
        let Some(r) = node.replica.as_mut() else {
            return;
        };
        let ready = r.ready();
        if ready.is_empty() {
            return;
        }
        let batch = self.packets_of(id, ready);
        // An armed crash waits for a batch that changes durable state: that is where a
        // crash between write, sync and send matters.
        if self.nodes[id as usize].crash_armed && batch.persist.is_some() {
            self.torn_flush(id, batch);
            return;
        }
        for packet in batch.packets {
            self.send(packet);
        }
        if let Some(job) = batch.persist {
            self.start_sync(id, job);
        }
    }

    /// Turns a Ready into packets (all of which may leave now) and its batch.
    fn packets_of(&mut self, id: ReplicaId, ready: paxoskv::Ready) -> Batch {
        let tokens = &mut self.nodes[id as usize].peer_tokens;
        let requests = ready.messages.into_iter().map(|out| {
            Packet::Peer(Envelope::Request {
                from: id,
                to: out.to,
                request: out.request,
            })
        });
        let replies = ready
            .client_replies
            .into_iter()
            .map(|(token, reply)| Packet::ToClient {
                client: client_of_token(token),
                from: id,
                token,
                reply,
            });
        let responses: Vec<Packet> = ready
            .responses
            .into_iter()
            .filter_map(|(token, response)| {
                let to = tokens.remove(&token.0)?;
                Some(Packet::Peer(Envelope::Response {
                    from: id,
                    to,
                    response,
                }))
            })
            .collect();
        let packets = requests.chain(replies).chain(responses).collect();
        let delay = self.rng.gen_range(0..=self.profile.sync_delay_max_steps);
        let persist = ready.batch.map(|number| SyncJob {
            number,
            records: ready.persist,
            done_step: self.now_step + delay,
        });
        if let Some(job) = &persist {
            self.note_accepted(&job.records);
        }
        Batch { persist, packets }
    }

    /// A crash in the middle of performing a Ready: a prefix of its packets has left and a
    /// prefix of its batch was written (a torn write loses the rest).
    fn torn_flush(&mut self, id: ReplicaId, mut batch: Batch) {
        let sent = self.rng.gen_range(0..=batch.packets.len());
        batch.packets.truncate(sent);
        for packet in batch.packets {
            self.send(packet);
        }
        if let Some(mut job) = batch.persist {
            let kept = self.rng.gen_range(0..=job.records.len());
            job.records.truncate(kept);
            self.nodes[id as usize].disk.records.extend(job.records);
        }
        self.crash(id, CrashKind::Torn);
    }

    /// Starts syncing a batch; one that takes no time completes at once.
    fn start_sync(&mut self, id: ReplicaId, job: SyncJob) {
        debug_assert!(
            self.nodes[id as usize].syncing.is_none(),
            "one batch in flight at a time"
        );
        let (n, len, due) = (job.number, job.records.len(), job.done_step);
        self.trace(|| format!("sync r{id} batch {n} ({len} records) until {due}"));
        if job.done_step <= self.now_step {
            self.complete_sync(id, job);
        } else {
            self.nodes[id as usize].syncing = Some(job);
        }
    }

    /// Completes every sync that is due on a replica that is not paused.
    fn complete_due_syncs(&mut self) {
        let now = self.now_step;
        for id in 0..self.replicas() {
            let node = &mut self.nodes[id as usize];
            if node.is_paused(now) || node.syncing.as_ref().is_none_or(|j| j.done_step > now) {
                continue;
            }
            if let Some(job) = node.syncing.take() {
                self.complete_sync(id, job);
            }
        }
    }

    /// The batch reached the disk (or the sync failed and the replica fences itself).
    fn complete_sync(&mut self, id: ReplicaId, job: SyncJob) {
        if roll(&mut self.rng, self.profile.sync_fail_per_mille) {
            // After a failed sync any part of the batch may or may not be on disk. The
            // replica acknowledges nothing more, cuts its log back to the last synced length
            // (`Wal::cut_unsynced_tail`) and rebuilds itself from that: the batch is gone.
            // Drawn either way, so both modes see the same random stream.
            let _reached_disk = self.rng.gen_range(0..=job.records.len());
            if self.broken_fsync {
                // The bug: reload what the page cache shows (the whole batch: its write
                // succeeded), as if it were durable.
                let disk = &mut self.nodes[id as usize].disk;
                disk.volatile_from.get_or_insert(disk.records.len());
                disk.records.extend(job.records);
            }
            debug_assert!(
                self.broken_fsync || self.nodes[id as usize].disk.volatile_from.is_none()
            );
            self.crash(id, CrashKind::SyncFailed);
            return;
        }
        let node = &mut self.nodes[id as usize];
        node.disk.records.extend(job.records);
        if let Some(r) = node.replica.as_mut() {
            r.on_persisted(job.number);
        }
        let n = job.number;
        self.trace(|| format!("synced r{id} batch {n}"));
        self.flush(id);
    }

    /// A replica syncs what is in flight before it touches its disk otherwise (the driver's
    /// `with_store` does the same).
    fn finish_sync_now(&mut self, id: ReplicaId) {
        if let Some(job) = self.nodes[id as usize].syncing.take() {
            self.complete_sync(id, job);
        }
    }

    /// Remembers the value of every (ballot, slot) accepted; a second value is a violation.
    fn note_accepted(&mut self, records: &[Record]) {
        for record in records {
            let Record::Accepted {
                slot,
                ballot,
                value,
            } = record
            else {
                continue;
            };
            match self.accepted_values.get(&(*ballot, *slot)) {
                Some(v) if v != value => {
                    self.violation.get_or_insert(Violation::BallotSlotConflict {
                        ballot: *ballot,
                        slot: *slot,
                    });
                }
                Some(_) => {}
                None => {
                    self.accepted_values.insert((*ballot, *slot), value.clone());
                }
            }
        }
    }

    /// Puts a packet on the wire with this phase's loss, duplication and delay.
    fn send(&mut self, packet: Packet) {
        self.note_told(&packet);
        if roll(&mut self.rng, self.profile.loss_per_mille) {
            self.counts.dropped += 1;
            return;
        }
        if roll(&mut self.rng, self.profile.dup_per_mille) {
            self.counts.duplicated += 1;
            let at = self.now_step + self.delay_steps();
            self.push(at, packet.clone());
        }
        let at = self.now_step + self.delay_steps();
        self.push(at, packet);
    }

    /// What a packet tells its receiver about the sender's durable promise: a promise or an
    /// acceptance, or a request under the sender's own ballot. That promise must survive any
    /// crash, and an own ballot must never be used again by a later incarnation.
    fn note_told(&mut self, packet: &Packet) {
        let (from, told, own) = match packet {
            Packet::Peer(Envelope::Response { from, response, .. }) => match response {
                Response::Promise(p) if !p.probe => (*from, p.ballot, false),
                Response::Accepted(a) => (*from, a.ballot, false),
                _ => return,
            },
            Packet::Peer(Envelope::Request { from, request, .. }) => match request.own_ballot() {
                Some(b) if b.replica == *from => (*from, b, true),
                _ => return,
            },
            _ => return,
        };
        let node = &mut self.nodes[from as usize];
        node.promise_told = node.promise_told.max(told);
        if !own {
            return;
        }
        if told <= node.ballot_used_before {
            self.violation.get_or_insert(Violation::BallotReused {
                replica: from,
                ballot: told,
                used_before: node.ballot_used_before,
            });
        }
        node.ballot_used_now = node.ballot_used_now.max(told);
    }

    fn push(&mut self, at_step: u64, packet: Packet) {
        if !self.wire.push(at_step, packet) {
            self.counts.dropped += 1;
        }
    }

    fn delay_steps(&mut self) -> u64 {
        let mut delay = self.rng.gen_range(1..=self.profile.base_delay_max_steps);
        if roll(&mut self.rng, self.profile.spike_per_mille) {
            self.counts.delayed += 1;
            delay += self
                .rng
                .gen_range(1..=self.profile.spike_delay_max_steps.max(1));
        }
        delay
    }

    /// Writes a snapshot of the applied state, rewrites the log behind it and compacts, as a
    /// runtime does: snapshot durable first, then the live records, then drop the log.
    fn take_snapshot(&mut self, id: ReplicaId) {
        if self.nodes[id as usize].syncing.is_some() {
            return; // The driver snapshots only between syncs.
        }
        let node = &mut self.nodes[id as usize];
        let Some(r) = node.replica.as_mut() else {
            return;
        };
        let snapshot = r.snapshot();
        let through = snapshot.through;
        if through <= node.compacted_through || node.background.is_some() {
            return;
        }
        // As the driver does: the log continues in a new segment that starts with the live
        // acceptor state, and the snapshot file is written in the background meanwhile.
        let segment_start = node.disk.records.len();
        node.disk.records.extend(r.live_records(through));
        let done_step = self.now_step + self.rng.gen_range(1..=SNAPSHOT_WRITE_MAX_STEPS);
        self.nodes[id as usize].background = Some(BackgroundSnapshot {
            snapshot,
            segment_start,
            done_step,
        });
        self.trace(|| format!("snapshot r{id} through {through} started"));
    }

    /// A background snapshot file is durable: older segments go, the log is compacted. One
    /// overtaken by an installed (newer) snapshot is discarded, as the store's loader would
    /// ignore it.
    fn finish_due_snapshots(&mut self) {
        let now = self.now_step;
        for id in 0..self.replicas() {
            let node = &mut self.nodes[id as usize];
            if node.is_paused(now) || node.background.as_ref().is_none_or(|b| b.done_step > now) {
                continue;
            }
            let Some(bg) = node.background.take() else {
                continue;
            };
            let through = bg.snapshot.through;
            let disk_through = node.disk.snapshot.as_ref().map_or(0, |s| s.through);
            if through <= disk_through {
                self.trace(|| format!("snapshot r{id} through {through} overtaken; discarded"));
                continue;
            }
            node.disk.records.drain(..bg.segment_start);
            // Volatile records before the new segment were in the deleted old one; the
            // snapshot and the re-logged live state are durable.
            node.disk.volatile_from = node
                .disk
                .volatile_from
                .and_then(|from| from.checked_sub(bg.segment_start));
            node.disk.snapshot = Some(bg.snapshot);
            if let Some(r) = node.replica.as_mut() {
                r.compact(through);
            }
            node.compacted_through = through;
            self.counts.snapshots += 1;
            self.trace(|| format!("snapshot r{id} through {through} durable, log compacted"));
        }
    }

    /// Replicas told by a peer that only a snapshot helps get that peer's durable snapshot.
    fn ship_snapshots(&mut self) {
        let now = self.now_step;
        for id in 0..self.replicas() {
            let node = &self.nodes[id as usize];
            let Some(from) = node.replica.as_ref().and_then(|r| r.snapshot_needed()) else {
                continue;
            };
            if node
                .snapshot_asked_step
                .is_some_and(|s| now < s + SNAPSHOT_RETRY_STEPS)
            {
                continue;
            }
            self.nodes[id as usize].snapshot_asked_step = Some(now);
            let source = &self.nodes[from as usize];
            if source.replica.is_none() {
                continue; // A crashed peer sends nothing; ask again later.
            }
            // The server pushes its current applied state (chosen, so durable on a majority),
            // not the file on its disk.
            let Some(snapshot) = source.replica.as_ref().map(|r| r.snapshot()) else {
                continue;
            };
            self.send(Packet::Snapshot {
                from,
                to: id,
                snapshot,
            });
        }
    }

    /// Makes a shipped snapshot durable, then hands it to the core.
    fn install_snapshot(&mut self, to: ReplicaId, snapshot: Snapshot) {
        self.finish_sync_now(to);
        let node = &mut self.nodes[to as usize];
        let Some(r) = node.replica.as_mut() else {
            return;
        };
        let through = snapshot.through;
        let ahead = through > r.chosen_through();
        if ahead {
            // The driver writes the live state in a new segment, the snapshot durably, and
            // drops the older segments, before the core sees the snapshot.
            node.disk.records = r.live_records(through);
            node.disk.volatile_from = None;
            node.disk.snapshot = Some(snapshot.clone());
        }
        r.install_snapshot(snapshot);
        node.snapshot_asked_step = None;
        if ahead {
            node.compacted_through = through;
            self.counts.installs += 1;
            self.trace(|| format!("install snapshot through {through} on r{to}"));
        }
        self.flush(to);
    }
}
