//! One replica: acceptor, proposer and learner behind a single sans-IO interface.
//!
//! The runtime calls [`Replica::handle_request`], [`Replica::handle_response`],
//! [`Replica::propose`], [`Replica::read`] and [`Replica::tick`], then takes
//! [`Replica::ready`] and reports synced batches with [`Replica::on_persisted`]; the
//! `durability` module says what may leave when.

use crate::config::Config;
use crate::durability::{Durability, Outbox};
use crate::election::Candidate;
use crate::kv::KvState;
use crate::leader::{Leader, ReadQuery};
use crate::log::Log;
use crate::message::{Outbound, Request, Response};
use crate::persist::Record;
use crate::refuse::{Refusal, RefusedCounts};
use crate::types::{Ballot, Command, Outcome, ReplicaId, Slot};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// Identifies a peer request awaiting its response (assigned by the runtime).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerToken(pub u64);

/// Identifies a client request awaiting its reply (assigned by the runtime).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientToken(pub u64);

/// Why the core could not serve a client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// Not the leader; `leader` is the best guess.
    NotLeader {
        /// Known leader, if any.
        leader: Option<ReplicaId>,
    },
    /// Queues are full.
    Busy,
    /// The request is older than the last applied one of its session.
    Stale {
        /// The session's last applied sequence number.
        last_applied: u64,
    },
    /// The session is not (or no longer) in the table: the request was not applied now, and
    /// whether an earlier attempt was is unknown. Open a new session.
    SessionExpired,
    /// The command waited in the leader's queue past its deadline and was dropped without
    /// being proposed: it was not applied.
    DeadlinePassed,
    /// A keepalive named a lease that does not exist (never granted, revoked or expired).
    LeaseNotFound(crate::types::LeaseId),
}

/// The answer to a client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientReply {
    /// The command was chosen and applied (or had been already: a retry).
    Applied(Outcome),
    /// A linearizable read's result.
    Read(Option<Vec<u8>>),
    /// A linearizable view of the applied state (an O(1) clone), for scans and counts: it
    /// includes every write acknowledged before the read arrived.
    View(Box<KvState>),
    /// Refused.
    Failed(ClientError),
    /// A keepalive was taken: the lease lives `ttl_ms` from now (on the leader's clock).
    LeaseKept {
        /// The lease's TTL.
        ttl_ms: u64,
    },
    /// A lease's time, as the leader's clock has it.
    LeaseTtl(LeaseTtl),
}

/// Answer to [`Replica::lease_time_to_live`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTtl {
    /// The TTL it was granted (each keepalive restarts it).
    pub ttl_ms: u64,
    /// Time left before the leader proposes its expiry, unless kept alive.
    pub remaining_ms: u64,
    /// Keys attached to it.
    pub keys: u64,
}

/// The replica's current role.
#[derive(Debug)]
pub(crate) enum Role {
    Follower,
    Candidate(Candidate),
    Leader(Box<Leader>),
}

/// A snapshot of the replica's state for status displays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreStatus {
    /// This replica.
    pub id: ReplicaId,
    /// "leader", "candidate" or "follower".
    pub role: &'static str,
    /// Known leader.
    pub leader: Option<ReplicaId>,
    /// Highest promise.
    pub promised: Ballot,
    /// Contiguous chosen and applied prefix.
    pub chosen_through: Slot,
    /// Highest slot with any entry.
    pub last_slot: Slot,
    /// Keys in the map.
    pub keys: u64,
    /// Digest of the map.
    pub map_digest: u64,
    /// Commands waiting for a slot (leader only).
    pub pending_commands: usize,
}

/// A Multi-Paxos replica core.
pub struct Replica {
    pub(crate) cfg: Config,
    pub(crate) rng: StdRng,
    pub(crate) now_tick: u64,
    pub(crate) promised: Ballot,
    pub(crate) max_seen_round: u64,
    pub(crate) log: Log,
    pub(crate) kv: KvState,
    pub(crate) role: Role,
    pub(crate) leader_hint: Option<ReplicaId>,
    /// Tick of the last message from a leader we follow.
    pub(crate) leader_contact_tick: Option<u64>,
    pub(crate) election_deadline_tick: u64,
    pub(crate) fetch: crate::learner::FetchState,
    /// Outputs and records since the last `ready()`.
    pub(crate) out: Outbox,
    /// What is durable, what is being synced, and what waits for it.
    pub(crate) durability: Durability,
    /// Chosen progress not yet written.
    pub(crate) unsynced_chosen: Option<Slot>,
    /// Inputs refused as malformed or out of range, by cause.
    pub(crate) refused: RefusedCounts,
    /// While leading: when each lease expires, in ticks. Empty otherwise.
    pub(crate) lease_clock: crate::leases::LeaseClock,
}

/// What the replica holds in memory that grows with input, for bounds checks in tests and
/// status displays. Every number is bounded by the configuration (see the field docs), except
/// `held_outputs` and `unbatched_records`, which the runtime bounds by syncing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Log entries above the chosen prefix: at most `2 * max_open_slots` (a leader's
    /// recovery range plus its window).
    pub open_entries: usize,
    /// A leader's slots proposed and not yet chosen: at most `2 * max_open_slots`.
    pub inflight_slots: usize,
    /// A leader's queued commands: at most `max_pending_commands`.
    pub pending_commands: usize,
    /// Their bytes: at most `max_pending_bytes` plus one command.
    pub pending_bytes: usize,
    /// Bytes of the log entries above the chosen prefix: at most `max_open_bytes` plus
    /// what `max_inflight_slots` near the prefix hold.
    pub open_bytes: usize,
    /// Bytes of applied entries kept for catch-up: at most `max_log_tail_bytes`.
    pub applied_bytes: usize,
    /// A leader's waiting reads: at most `max_pending_reads`.
    pub pending_reads: usize,
    /// A candidate's collected promises: at most `replicas`.
    pub promises: usize,
    /// Outputs held until a batch is durable.
    pub held_outputs: usize,
    /// Records not yet handed out in a batch.
    pub unbatched_records: usize,
}

impl Replica {
    /// A fresh replica with empty state.
    pub fn new(cfg: Config) -> Replica {
        let mut kv = KvState::new(cfg.max_sessions);
        // The first Ready tells the watch history where it starts (here: nothing applied).
        kv.reset_events();
        Replica::with_state(cfg, Ballot::ZERO, Log::default(), kv)
    }

    pub(crate) fn with_state(cfg: Config, promised: Ballot, log: Log, kv: KvState) -> Replica {
        let rng = StdRng::seed_from_u64(cfg.seed);
        let mut r = Replica {
            cfg,
            rng,
            now_tick: 0,
            promised,
            max_seen_round: promised.round,
            log,
            kv,
            role: Role::Follower,
            leader_hint: None,
            leader_contact_tick: None,
            election_deadline_tick: 0,
            fetch: Default::default(),
            out: Outbox::default(),
            durability: Durability::recovered(promised),
            unsynced_chosen: None,
            refused: RefusedCounts::default(),
            lease_clock: Default::default(),
        };
        r.reset_election_timer();
        r
    }

    /// This replica's id.
    pub fn id(&self) -> ReplicaId {
        self.cfg.id
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// True while this replica leads.
    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader(_))
    }

    /// The leader as far as this replica knows.
    pub fn leader(&self) -> Option<ReplicaId> {
        if self.is_leader() {
            Some(self.cfg.id)
        } else {
            self.leader_hint
        }
    }

    /// Highest ballot promised.
    pub fn promised(&self) -> Ballot {
        self.promised
    }

    /// The applied map (for stale reads, snapshots and checks).
    pub fn kv(&self) -> &KvState {
        &self.kv
    }

    /// Contiguous chosen and applied prefix.
    pub fn chosen_through(&self) -> Slot {
        self.log.chosen_through()
    }

    /// The chosen value of `slot`, if known and not compacted.
    pub fn chosen_value(&self, slot: Slot) -> Option<&crate::Value> {
        self.log
            .get(slot)
            .filter(|e| e.chosen || slot <= self.log.chosen_through())
            .map(|e| &e.value)
    }

    /// A stale read of the local applied state.
    pub fn read_local(&self, key: &str) -> Option<&[u8]> {
        self.kv.get(key)
    }

    /// Status for displays.
    pub fn status(&self) -> CoreStatus {
        let (role, pending_commands) = match &self.role {
            Role::Follower => ("follower", 0),
            Role::Candidate(_) => ("candidate", 0),
            Role::Leader(l) => ("leader", l.pending_len()),
        };
        CoreStatus {
            id: self.cfg.id,
            role,
            leader: self.leader(),
            promised: self.promised,
            chosen_through: self.log.chosen_through(),
            last_slot: self.log.last_slot(),
            keys: self.kv.len() as u64,
            map_digest: self.kv.digest(),
            pending_commands,
        }
    }

    /// Inputs refused so far, by cause (see [`crate::refuse`]).
    pub fn refused(&self) -> &RefusedCounts {
        &self.refused
    }

    /// What the replica holds that grows with input.
    pub fn footprint(&self) -> Footprint {
        let mut f = Footprint {
            open_entries: self.log.open_entries(),
            open_bytes: self.log.open_bytes(),
            applied_bytes: self.log.applied_bytes(),
            held_outputs: self.durability.held_len(),
            unbatched_records: self.durability.unbatched_len() + self.out.persist.len(),
            ..Footprint::default()
        };
        match &self.role {
            Role::Leader(l) => {
                f.inflight_slots = l.inflight_len();
                f.pending_commands = l.pending_len();
                f.pending_bytes = l.pending_bytes();
                f.pending_reads = l.reads_len();
            }
            Role::Candidate(c) => f.promises = c.promises_len(),
            Role::Follower => {}
        }
        f
    }

    /// Counts a refused input.
    pub(crate) fn refuse(&mut self, cause: Refusal) {
        self.refused.count(cause);
    }

    /// Handles a request from a peer; the response appears in [`Ready::responses`] (none if
    /// the request is ignored, for example because it is malformed: see [`Replica::refused`]).
    pub fn handle_request(&mut self, from: ReplicaId, token: PeerToken, request: Request) {
        if from >= self.cfg.replicas || from == self.cfg.id {
            // Not a member: ignore rather than corrupt quorum counts.
            self.refuse(Refusal::NotAPeer);
            return;
        }
        let response = match request {
            Request::Prepare(p) => self.on_prepare(from, p),
            Request::Accept(a) => self.on_accept(from, a),
            Request::Learn(l) => self.on_learn(from, l),
            Request::FetchChosen(f) => self.on_fetch_chosen(f),
        };
        match response {
            Ok(response) => self.out.responses.push((token, response)),
            Err(cause) => self.refuse(cause),
        }
    }

    /// Handles a peer's answer to a request this replica sent.
    pub fn handle_response(&mut self, from: ReplicaId, response: Response) {
        if from >= self.cfg.replicas || from == self.cfg.id {
            self.refuse(Refusal::NotAPeer);
            return;
        }
        let handled = match response {
            Response::Promise(p) => self.on_promise(from, p),
            Response::Accepted(a) => {
                self.on_accepted(from, a);
                Ok(())
            }
            Response::LearnAck(a) => self.on_learn_ack(from, a),
            Response::Chosen(c) => self.on_chosen(from, c),
            Response::Nack(n) => self.on_nack(n),
        };
        if let Err(cause) = handled {
            self.refuse(cause);
        }
    }

    /// Submits a client command; the reply appears in [`Ready::client_replies`].
    pub fn propose(&mut self, token: ClientToken, command: Command) {
        self.propose_with_deadline(token, command, u64::MAX);
    }

    /// Logical time: ticks since this core was built (the runtime converts its clock's
    /// deadlines into ticks with it).
    pub fn now_tick(&self) -> u64 {
        self.now_tick
    }

    /// Like [`Replica::propose`], for a client that waits only until tick `deadline_tick`:
    /// if the command is still queued (not proposed) after it, it is dropped and the client
    /// gets [`ClientError::DeadlinePassed`], so a backlog of abandoned commands is never
    /// proposed.
    pub fn propose_with_deadline(
        &mut self,
        token: ClientToken,
        command: Command,
        deadline_tick: u64,
    ) {
        if let Some(done) = self.kv.already_applied(command.id) {
            let reply = match done.outcome() {
                Some(o) => ClientReply::Applied(o.clone()),
                None => ClientReply::Failed(ClientError::Stale {
                    last_applied: self
                        .kv
                        .session(command.id.client_id)
                        .map_or(0, |s| s.last_seq),
                }),
            };
            self.out.client_replies.push((token, reply));
            return;
        }
        let leader = self.leader();
        let limits = crate::leader::QueueLimits {
            max_commands: self.cfg.max_pending_commands,
            max_bytes: self.cfg.max_pending_bytes,
        };
        let Role::Leader(l) = &mut self.role else {
            self.reply(
                token,
                ClientReply::Failed(ClientError::NotLeader { leader }),
            );
            return;
        };
        if let Err(e) = l.enqueue(token, command, deadline_tick, limits) {
            self.reply(token, ClientReply::Failed(e));
        }
    }

    /// Submits a linearizable read; the reply appears in [`Ready::client_replies`].
    pub fn read(&mut self, token: ClientToken, key: String) {
        self.read_query(token, ReadQuery::Key(key));
    }

    /// Submits a linearizable read of the whole state: the reply is a
    /// [`ClientReply::View`], through the same confirmation round as [`Replica::read`].
    pub fn read_view(&mut self, token: ClientToken) {
        self.read_query(token, ReadQuery::View);
    }

    fn read_query(&mut self, token: ClientToken, query: ReadQuery) {
        let leader = self.leader();
        let read_index = self.log.chosen_through();
        let max_pending = self.cfg.max_pending_reads;
        let Role::Leader(l) = &mut self.role else {
            self.reply(
                token,
                ClientReply::Failed(ClientError::NotLeader { leader }),
            );
            return;
        };
        if let Err(e) = l.enqueue_read(token, query, read_index, max_pending) {
            self.reply(token, ClientReply::Failed(e));
        }
        self.complete_reads();
    }

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.now_tick += 1;
        if self.now_tick.is_multiple_of(self.cfg.heartbeat_ticks) {
            self.attach_chosen_record(true);
        }
        match self.role {
            Role::Leader(_) => {
                self.leader_tick();
                self.lease_tick();
            }
            Role::Candidate(_) => self.candidate_tick(),
            Role::Follower => self.follower_tick(),
        }
        self.fetch_tick();
    }

    pub(crate) fn reply(&mut self, token: ClientToken, reply: ClientReply) {
        self.out.client_replies.push((token, reply));
    }

    pub(crate) fn send(&mut self, to: ReplicaId, request: Request) {
        debug_assert_ne!(to, self.cfg.id);
        self.out.messages.push(Outbound { to, request });
    }

    pub(crate) fn broadcast(&mut self, request: Request) {
        let peers: Vec<ReplicaId> = self.cfg.peers().collect();
        for to in peers {
            self.send(to, request.clone());
        }
    }

    pub(crate) fn persist(&mut self, record: Record) {
        self.out.persist.push(record);
    }

    /// Raises the promise; ballots only grow.
    pub(crate) fn raise_promise(&mut self, ballot: Ballot) {
        assert!(ballot >= self.promised, "promises only grow");
        if ballot > self.promised {
            self.promised = ballot;
            self.max_seen_round = self.max_seen_round.max(ballot.round);
            self.persist(Record::Promised(ballot));
        }
    }
}
