//! Deterministic simulation of replica cores.
//!
//! Two tools live here. [`Net`] is a simple in-memory network that a test drives by hand:
//! messages sit in one queue and the test decides what is delivered, dropped, duplicated or
//! delayed. The seeded simulator ([`run_seed`], [`run_seeds`]) drives whole clusters with
//! simulated clients through random faults (loss, duplication, reordering, delay,
//! partitions, pauses, crashes mid-batch, restarts from disk, snapshots), checks safety after
//! every step, liveness after the faults stop, and linearizability of the client history.
//! Each replica has a "disk": the records it persisted, so a crash keeps exactly what the
//! Ready contract made durable. One seed always replays the same run.

#![warn(missing_docs)]

pub mod checks;
pub mod clients;
pub mod digest;
pub mod faults;
pub mod run;
pub mod wire;
pub mod world;

pub use checks::Violation;
pub use faults::{FaultCounts, FaultProfile};
pub use run::{quiet_panics, run_seed, run_seeds, BatchReport, Failure, SeedReport, SimConfig};

/// Whether this build has the core's test-only broken acceptor (the `broken-acceptor`
/// feature), which [`SimConfig::broken_acceptor`] needs.
pub const BROKEN_ACCEPTOR_AVAILABLE: bool = cfg!(feature = "broken-acceptor");

use paxoskv::message::{Request, Response};
use paxoskv::persist::Record;
use paxoskv::{BatchNumber, Config, ReplicaId, Slot, Snapshot};
use paxoskv::{ClientReply, ClientToken, PeerToken, Replica};
use std::collections::HashMap;

pub mod script;

/// A snapshot being written in the background (see [`Net::begin_snapshot`]).
#[derive(Clone, Debug)]
pub struct BackgroundSnapshot {
    /// The applied state when the snapshot started.
    pub snapshot: Snapshot,
    /// The new log segment: the live records at the start, then every record made durable
    /// since, so switching to it loses nothing written while the snapshot was in progress.
    pub segment: Vec<Record>,
}

/// What [`Net::finish_snapshot`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotOutcome {
    /// The snapshot and its segment replaced the disk's; the log was compacted.
    Written {
        /// Last slot in the snapshot.
        through: Slot,
    },
    /// The disk already held a snapshot at least as new (one installed meanwhile): writing
    /// the older one would roll the replica's durable state back, so it was discarded.
    Superseded {
        /// Last slot of the discarded snapshot.
        through: Slot,
        /// Last slot of the snapshot on disk.
        disk_through: Slot,
    },
    /// Nothing was in progress.
    Idle,
}

/// A message on the simulated wire.
#[derive(Clone, Debug)]
pub enum Envelope {
    /// A request from `from` to `to`.
    Request {
        /// Sender.
        from: ReplicaId,
        /// Receiver.
        to: ReplicaId,
        /// Payload.
        request: Request,
    },
    /// A response to a request that `to` sent to `from`.
    Response {
        /// Responder.
        from: ReplicaId,
        /// Original requester.
        to: ReplicaId,
        /// Payload.
        response: Response,
    },
}

impl Envelope {
    /// Receiver.
    pub fn to(&self) -> ReplicaId {
        match self {
            Envelope::Request { to, .. } | Envelope::Response { to, .. } => *to,
        }
    }

    /// Sender.
    pub fn from(&self) -> ReplicaId {
        match self {
            Envelope::Request { from, .. } | Envelope::Response { from, .. } => *from,
        }
    }
}

/// Replicas, their disks and the wire.
pub struct Net {
    /// `None` while crashed.
    pub replicas: Vec<Option<Replica>>,
    /// What each replica made durable.
    pub disks: Vec<Vec<Record>>,
    /// Messages in flight, in send order.
    pub wire: Vec<Envelope>,
    /// Client replies per replica, in order.
    pub replies: Vec<(ReplicaId, ClientToken, ClientReply)>,
    /// Per replica, a batch handed out by [`Net::flush_slow`] and not yet synced (a slow
    /// disk). A crash loses it.
    pub pending: Vec<Option<(BatchNumber, Vec<Record>)>>,
    /// Per replica, the newest durable snapshot; `disks` holds the records written after it.
    pub disk_snapshots: Vec<Option<Snapshot>>,
    /// Per replica, a snapshot being written in the background. A crash loses it.
    pub background: Vec<Option<BackgroundSnapshot>>,
    configs: Vec<Config>,
    next_token: u64,
    peer_tokens: HashMap<u64, ReplicaId>,
}

impl Net {
    /// `n` fresh replicas built from `config_for(id)`.
    pub fn new(n: u32, config_for: impl Fn(ReplicaId) -> Config) -> Net {
        let configs: Vec<Config> = (0..n).map(config_for).collect();
        Net {
            replicas: configs
                .iter()
                .map(|c| Some(Replica::new(c.clone())))
                .collect(),
            disks: vec![Vec::new(); n as usize],
            wire: Vec::new(),
            replies: Vec::new(),
            pending: vec![None; n as usize],
            disk_snapshots: vec![None; n as usize],
            background: vec![None; n as usize],
            configs,
            next_token: 0,
            peer_tokens: HashMap::new(),
        }
    }

    /// Restarts every replica from a slot-0 snapshot in which `clients` already hold open
    /// sessions, as a cluster bootstrapped with them would be: hand-written scenarios can
    /// then write without spending slots on registrations.
    pub fn bootstrap_sessions(&mut self, clients: impl IntoIterator<Item = u64> + Clone) {
        for (id, cfg) in self.configs.iter().enumerate() {
            let mut kv = paxoskv::kv::KvState::new(cfg.max_sessions);
            for client_id in clients.clone() {
                let register = paxoskv::Command {
                    id: paxoskv::CommandId { client_id, seq: 0 },
                    op: paxoskv::Op::Register,
                };
                kv.apply(0, &register);
            }
            let snapshot = Snapshot { through: 0, kv };
            let replica = Replica::recover(cfg.clone(), Some(snapshot.clone()), Vec::new());
            self.replicas[id] = replica.ok();
            self.disk_snapshots[id] = Some(snapshot);
        }
    }

    /// The live replica `id`.
    pub fn replica(&mut self, id: ReplicaId) -> Option<&mut Replica> {
        self.replicas[id as usize].as_mut()
    }

    /// Delivers one envelope (dropped if the receiver is down).
    pub fn deliver(&mut self, env: Envelope) {
        let to = env.to();
        self.deliver_unflushed(env);
        self.flush(to);
    }

    /// Hands one envelope to its receiver (dropped if it is down) without performing the
    /// receiver's Ready: the caller decides when and how (e.g. [`Net::flush_slow`]).
    pub fn deliver_unflushed(&mut self, env: Envelope) {
        let to = env.to();
        self.next_token += 1;
        let token = self.next_token;
        let Some(r) = self.replicas[to as usize].as_mut() else {
            return;
        };
        match env {
            Envelope::Request { from, request, .. } => {
                self.peer_tokens.insert(token, from);
                r.handle_request(from, PeerToken(token), request);
            }
            Envelope::Response { from, response, .. } => r.handle_response(from, response),
        }
    }

    /// Performs replica `id`'s Ready with a slow disk: sends what it holds and keeps a new
    /// batch in [`Net::pending`] until [`Net::sync_pending`]. The core cuts no new batch while
    /// one is in flight, so at most one is pending.
    pub fn flush_slow(&mut self, id: ReplicaId) {
        if let Some(batch) = self.flush_unsynced(id) {
            debug_assert!(self.pending[id as usize].is_none(), "one batch in flight");
            self.pending[id as usize] = Some(batch);
        }
    }

    /// Makes replica `id`'s pending batch durable and reports it; what that releases is
    /// performed with the slow disk again. False if nothing was pending.
    pub fn sync_pending(&mut self, id: ReplicaId) -> bool {
        let Some((number, records)) = self.pending[id as usize].take() else {
            return false;
        };
        self.make_durable(id, records);
        if let Some(r) = self.replicas[id as usize].as_mut() {
            r.on_persisted(number);
        }
        self.flush_slow(id);
        true
    }

    fn make_durable(&mut self, id: ReplicaId, records: Vec<Record>) {
        if let Some(bg) = self.background[id as usize].as_mut() {
            bg.segment.extend(records.iter().cloned());
        }
        self.disks[id as usize].extend(records);
    }

    /// Starts a background snapshot of replica `id` as a runtime does: capture the applied
    /// state and the live records now, keep appending durable records to both segments, and
    /// switch over in [`Net::finish_snapshot`]. False if the replica is down or one is running.
    pub fn begin_snapshot(&mut self, id: ReplicaId) -> bool {
        if self.background[id as usize].is_some() {
            return false;
        }
        let Some(r) = self.replicas[id as usize].as_ref() else {
            return false;
        };
        let snapshot = r.snapshot();
        let segment = r.live_records(snapshot.through);
        self.background[id as usize] = Some(BackgroundSnapshot { snapshot, segment });
        true
    }

    /// The background snapshot of replica `id` is written: make it the disk's snapshot and
    /// compact, unless the disk meanwhile got a snapshot at least as new.
    pub fn finish_snapshot(&mut self, id: ReplicaId) -> SnapshotOutcome {
        let Some(bg) = self.background[id as usize].take() else {
            return SnapshotOutcome::Idle;
        };
        let through = bg.snapshot.through;
        let disk_through = self.disk_snapshots[id as usize]
            .as_ref()
            .map_or(0, |s| s.through);
        if disk_through >= through && self.disk_snapshots[id as usize].is_some() {
            return SnapshotOutcome::Superseded {
                through,
                disk_through,
            };
        }
        self.disk_snapshots[id as usize] = Some(bg.snapshot);
        self.disks[id as usize] = bg.segment;
        if let Some(r) = self.replicas[id as usize].as_mut() {
            r.compact(through);
        }
        SnapshotOutcome::Written { through }
    }

    /// Ships replica `from`'s durable snapshot to `to`, which makes it durable and then hands
    /// it to its core (the core requires that order). The old records stay: replay skips what
    /// the snapshot covers, and they hold the promise and accepted entries above it. Returns
    /// the snapshot's last slot, or `None` if `from` has no snapshot or `to` is down.
    pub fn install_snapshot(&mut self, to: ReplicaId, from: ReplicaId) -> Option<Slot> {
        let snapshot = self.disk_snapshots[from as usize].clone()?;
        let r = self.replicas[to as usize].as_mut()?;
        let through = snapshot.through;
        let newer = self.disk_snapshots[to as usize]
            .as_ref()
            .is_none_or(|s| s.through < through);
        if newer && through > r.chosen_through() {
            self.disk_snapshots[to as usize] = Some(snapshot.clone());
        }
        r.install_snapshot(snapshot);
        Some(through)
    }

    /// Performs replica `id`'s Ready per the durability contract with an instant disk: send
    /// what it holds, persist its batch, report the batch durable, and repeat for what that
    /// released. Tests that need a slow disk use [`Net::flush_unsynced`] and [`Net::sync`].
    pub fn flush(&mut self, id: ReplicaId) {
        while let Some(batch) = self.flush_unsynced(id) {
            self.sync(id, batch);
        }
    }

    /// Performs replica `id`'s Ready but leaves its batch (returned) unsynced: its records are
    /// not yet on the disk, and what waits for them stays held.
    pub fn flush_unsynced(&mut self, id: ReplicaId) -> Option<(BatchNumber, Vec<Record>)> {
        let r = self.replicas[id as usize].as_mut()?;
        let ready = r.ready();
        for out in ready.messages {
            self.wire.push(Envelope::Request {
                from: id,
                to: out.to,
                request: out.request,
            });
        }
        for (token, response) in ready.responses {
            if let Some(to) = self.peer_tokens.remove(&token.0) {
                self.wire.push(Envelope::Response {
                    from: id,
                    to,
                    response,
                });
            }
        }
        for (token, reply) in ready.client_replies {
            self.replies.push((id, token, reply));
        }
        ready.batch.map(|n| (n, ready.persist))
    }

    /// The batch returned by [`Net::flush_unsynced`] reached replica `id`'s disk; what that
    /// releases is then flushed with an instant disk.
    pub fn sync(&mut self, id: ReplicaId, (number, records): (BatchNumber, Vec<Record>)) {
        self.make_durable(id, records);
        if let Some(r) = self.replicas[id as usize].as_mut() {
            r.on_persisted(number);
        }
        self.flush(id);
    }

    /// Ticks every live replica once.
    pub fn tick_all(&mut self) {
        for id in 0..self.replicas.len() as ReplicaId {
            if let Some(r) = self.replicas[id as usize].as_mut() {
                r.tick();
                self.flush(id);
            }
        }
    }

    /// Delivers everything on the wire, including what delivery produces, up to `max` messages.
    pub fn deliver_all(&mut self, max: usize) -> usize {
        let mut n = 0;
        while n < max && !self.wire.is_empty() {
            let env = self.wire.remove(0);
            self.deliver(env);
            n += 1;
        }
        n
    }

    /// Crashes replica `id`: memory is lost, the disk stays; a pending (unsynced) batch and
    /// an unfinished background snapshot are lost with the memory.
    pub fn crash(&mut self, id: ReplicaId) {
        self.replicas[id as usize] = None;
        self.pending[id as usize] = None;
        self.background[id as usize] = None;
    }

    /// Restarts replica `id` from its disk: its snapshot, if any, then the records after it.
    pub fn restart(&mut self, id: ReplicaId) -> Result<(), paxoskv::RecoveryError> {
        let cfg = self.configs[id as usize].clone();
        let snapshot = self.disk_snapshots[id as usize].clone();
        let records = self.disks[id as usize].clone();
        self.replicas[id as usize] = Some(Replica::recover(cfg, snapshot, records)?);
        Ok(())
    }

    /// The current leader with the highest ballot, if any replica leads.
    pub fn leader(&self) -> Option<ReplicaId> {
        self.replicas
            .iter()
            .flatten()
            .filter(|r| r.is_leader())
            .max_by_key(|r| r.promised())
            .map(|r| r.id())
    }

    /// Ticks and delivers until some replica leads, within `max_ticks`.
    pub fn elect(&mut self, max_ticks: u32) -> Option<ReplicaId> {
        for _ in 0..max_ticks {
            self.tick_all();
            self.deliver_all(100_000);
            if let Some(l) = self.leader() {
                return Some(l);
            }
        }
        None
    }

    /// Takes the replies for `token` given so far.
    pub fn take_reply(&mut self, token: ClientToken) -> Option<ClientReply> {
        let i = self.replies.iter().position(|(_, t, _)| *t == token)?;
        Some(self.replies.remove(i).2)
    }
}
