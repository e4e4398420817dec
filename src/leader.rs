//! Proposer in its leader role: phase 2 per slot with batching and a bounded pipeline,
//! heartbeats, and ReadIndex-style linearizable reads sharing one confirmation round.

use crate::message::{Accept, Accepted, Learn, LearnAck, Request};
use crate::persist::Record;
use crate::quorum::{majority, Quorum};
use crate::refuse::Refusal;
use crate::replica::{ClientError, ClientReply, ClientToken, Replica, Role};
use crate::types::{Ballot, Command, CommandId, ReplicaId, Slot, Value};
use std::collections::{BTreeMap, VecDeque};

/// A slot proposed under the leader's ballot and not yet chosen.
#[derive(Debug)]
pub(crate) struct Inflight {
    value: Value,
    acks: Quorum,
    sent_tick: u64,
    /// Resends so far: each one waits twice as long as the last (up to a bound), so a
    /// slow follower is not buried under copies of large values.
    resends: u32,
}

/// Resends of one large slot back off up to `resend_ticks << MAX_RESEND_SHIFT`.
const MAX_RESEND_SHIFT: u32 = 3;
/// Slots at least this large back off their resends; smaller ones are cheap to resend and
/// keep the plain period (quick recovery from lost messages).
const RESEND_BACKOFF_MIN_BYTES: usize = 64 * 1024;

/// The clients waiting for one command, and until when the command is worth proposing.
#[derive(Debug)]
struct Waiting {
    tokens: Vec<ClientToken>,
    /// A command still queued at this tick is dropped instead of proposed: every client
    /// waiting for it has given up. `u64::MAX` for no deadline.
    deadline_tick: u64,
}

/// What a linearizable read asks for.
#[derive(Debug)]
pub(crate) enum ReadQuery {
    /// One key's value.
    Key(String),
    /// The whole applied state (for scans and counts).
    View,
}

#[derive(Debug)]
struct PendingRead {
    token: ClientToken,
    query: ReadQuery,
    /// The read is answered from state that includes every slot up to here.
    read_index: Slot,
    /// A confirmation round at least this new must succeed first.
    round: u64,
}

/// State that exists only while this replica leads.
#[derive(Debug)]
pub(crate) struct Leader {
    pub(crate) ballot: Ballot,
    next_slot: Slot,
    /// Slots up to here were recovered from the previous leaders.
    recovery_end: Slot,
    inflight: BTreeMap<Slot, Inflight>,
    queue: VecDeque<Command>,
    /// `Op::size_bytes` of everything in `queue`.
    queue_bytes: usize,
    /// Ordered so that failing them all on a step-down emits replies in a deterministic order.
    waiters: BTreeMap<CommandId, Waiting>,
    reads: VecDeque<PendingRead>,
    /// Last confirmation round sent.
    round: u64,
    round_sent_tick: u64,
    /// Highest round each peer acknowledged, and when we last heard from it.
    peer_round: Vec<u64>,
    peer_contact_tick: Vec<u64>,
    elected_tick: u64,
}

impl Leader {
    pub(crate) fn new(ballot: Ballot, replicas: u32, next_slot: Slot, now_tick: u64) -> Leader {
        Leader {
            ballot,
            next_slot,
            recovery_end: next_slot - 1,
            inflight: BTreeMap::new(),
            queue: VecDeque::new(),
            queue_bytes: 0,
            waiters: BTreeMap::new(),
            reads: VecDeque::new(),
            round: 0,
            round_sent_tick: now_tick,
            peer_round: vec![0; replicas as usize],
            peer_contact_tick: vec![now_tick; replicas as usize],
            elected_tick: now_tick,
        }
    }

    pub(crate) fn pending_len(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    pub(crate) fn reads_len(&self) -> usize {
        self.reads.len()
    }

    pub(crate) fn pending_bytes(&self) -> usize {
        self.queue_bytes
    }

    pub(crate) fn enqueue(
        &mut self,
        token: ClientToken,
        command: Command,
        deadline_tick: u64,
        limits: QueueLimits,
    ) -> Result<(), ClientError> {
        if let Some(w) = self.waiters.get_mut(&command.id) {
            // A retry of a command already queued or in flight: answer both when it applies,
            // and keep it queued as long as the more patient of them waits.
            w.tokens.push(token);
            w.deadline_tick = w.deadline_tick.max(deadline_tick);
            return Ok(());
        }
        let size = command.op.size_bytes();
        let over_bytes =
            !self.queue.is_empty() && self.queue_bytes.saturating_add(size) > limits.max_bytes;
        if self.queue.len() >= limits.max_commands || over_bytes {
            return Err(ClientError::Busy);
        }
        self.waiters.insert(
            command.id,
            Waiting {
                tokens: vec![token],
                deadline_tick,
            },
        );
        self.queue_bytes += size;
        self.queue.push_back(command);
        Ok(())
    }

    /// Queues a command of the leader's own (no client waits for it).
    pub(crate) fn enqueue_own(
        &mut self,
        command: Command,
        limits: QueueLimits,
    ) -> Result<(), ClientError> {
        if self.waiters.contains_key(&command.id) {
            return Ok(());
        }
        let size = command.op.size_bytes();
        if self.queue.len() >= limits.max_commands
            || self.queue_bytes.saturating_add(size) > limits.max_bytes
        {
            return Err(ClientError::Busy);
        }
        let waiting = Waiting {
            tokens: Vec::new(),
            deadline_tick: u64::MAX,
        };
        self.waiters.insert(command.id, waiting);
        self.queue_bytes += size;
        self.queue.push_back(command);
        Ok(())
    }

    fn expired(&self, id: &CommandId, now_tick: u64) -> bool {
        self.waiters
            .get(id)
            .is_some_and(|w| w.deadline_tick < now_tick)
    }

    /// Removes queued commands whose deadline passed; returns the clients to tell.
    fn drop_expired(&mut self, now_tick: u64) -> Vec<ClientToken> {
        let waiters = &self.waiters;
        let mut gone = Vec::new();
        self.queue.retain(|c| {
            let expired = waiters
                .get(&c.id)
                .is_some_and(|w| w.deadline_tick < now_tick);
            if expired {
                gone.push((c.id, c.op.size_bytes()));
            }
            !expired
        });
        let mut tokens = Vec::new();
        for (id, size) in gone {
            self.queue_bytes -= size;
            tokens.extend(self.waiters.remove(&id).into_iter().flat_map(|w| w.tokens));
        }
        tokens
    }

    pub(crate) fn enqueue_read(
        &mut self,
        token: ClientToken,
        query: ReadQuery,
        chosen_through: Slot,
        max_pending: usize,
    ) -> Result<(), ClientError> {
        if self.reads.len() >= max_pending {
            return Err(ClientError::Busy);
        }
        self.reads.push_back(PendingRead {
            token,
            query,
            read_index: chosen_through.max(self.recovery_end),
            round: self.round + 1,
        });
        Ok(())
    }

    /// Takes the next batch off the queue, bounded in bytes and commands. Commands whose
    /// deadline passed are dropped on the way; their clients are added to `expired`.
    fn next_batch(
        &mut self,
        max_bytes: usize,
        max_commands: usize,
        now_tick: u64,
        expired: &mut Vec<ClientToken>,
    ) -> Value {
        let mut commands = Vec::new();
        let mut bytes = 0;
        while let Some(c) = self.queue.front() {
            let size = c.op.size_bytes();
            if self.expired(&c.id, now_tick) {
                let id = c.id;
                self.queue.pop_front();
                self.queue_bytes -= size;
                expired.extend(self.waiters.remove(&id).into_iter().flat_map(|w| w.tokens));
                continue;
            }
            let full = commands.len() >= max_commands || bytes + size > max_bytes;
            if full && !commands.is_empty() {
                break;
            }
            bytes += size;
            self.queue_bytes -= size;
            commands.extend(self.queue.pop_front());
        }
        Value { commands }
    }

    /// The newest round a majority (this leader included) has acknowledged.
    fn confirmed_round(&self, me: ReplicaId) -> u64 {
        let mut rounds: Vec<u64> = self
            .peer_round
            .iter()
            .enumerate()
            .map(|(id, r)| {
                if id as ReplicaId == me {
                    self.round
                } else {
                    *r
                }
            })
            .collect();
        rounds.sort_unstable_by(|a, b| b.cmp(a));
        rounds[majority(rounds.len() as u32) as usize - 1]
    }

    fn drain_waiters(&mut self) -> Vec<ClientToken> {
        let mut tokens: Vec<ClientToken> = std::mem::take(&mut self.waiters)
            .into_values()
            .flat_map(|w| w.tokens)
            .collect();
        tokens.extend(self.reads.drain(..).map(|r| r.token));
        self.queue.clear();
        self.queue_bytes = 0;
        tokens
    }
}

/// Bounds of a leader's queue.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueueLimits {
    pub(crate) max_commands: usize,
    pub(crate) max_bytes: usize,
}

impl Replica {
    fn leader_mut(&mut self) -> Option<&mut Leader> {
        match &mut self.role {
            Role::Leader(l) => Some(l),
            _ => None,
        }
    }

    /// Starts leading with `ballot`: re-proposes the recovered value of every slot in
    /// `start..=end` (a no-op where there is none) and opens the pipeline after them.
    pub(crate) fn become_leader(
        &mut self,
        ballot: Ballot,
        start: Slot,
        end: Slot,
        mut recovered: BTreeMap<Slot, Value>,
    ) {
        self.role = Role::Leader(Box::new(Leader::new(
            ballot,
            self.cfg.replicas,
            end + 1,
            self.now_tick,
        )));
        self.leader_hint = Some(self.cfg.id);
        self.lease_clock_on_elected();
        for slot in start..=end {
            if self.log.is_chosen(slot) {
                continue; // Known chosen here already; nothing to recover.
            }
            let value = recovered.remove(&slot).unwrap_or_else(Value::noop);
            self.propose_slot(slot, value);
        }
        self.send_learn_round();
    }

    /// Fails every waiting client and returns to following.
    pub(crate) fn become_follower(&mut self, leader: Option<ReplicaId>) {
        let old = std::mem::replace(&mut self.role, Role::Follower);
        self.leader_hint = leader.filter(|&l| l != self.cfg.id);
        self.lease_clock_on_stepped_down();
        if let Role::Leader(mut l) = old {
            let hint = self.leader_hint;
            for token in l.drain_waiters() {
                self.reply(
                    token,
                    ClientReply::Failed(ClientError::NotLeader { leader: hint }),
                );
            }
        }
        self.reset_election_timer();
    }

    fn propose_slot(&mut self, slot: Slot, value: Value) {
        let commit = self.log.chosen_through();
        let now = self.now_tick;
        let Some(l) = self.leader_mut() else { return };
        let ballot = l.ballot;
        l.inflight.insert(
            slot,
            Inflight {
                value: value.clone(),
                acks: Quorum::default(),
                sent_tick: now,
                resends: 0,
            },
        );
        l.next_slot = l.next_slot.max(slot + 1);
        self.log.accept(slot, ballot, value.clone());
        self.persist(Record::Accepted {
            slot,
            ballot,
            value: value.clone(),
        });
        self.broadcast(Request::Accept(Accept {
            ballot,
            slot,
            value,
            commit,
        }));
        // Our own vote counts only once the record is durable (`on_persisted`).
        self.durability.unbatched_self_acks.push((ballot, slot));
    }

    /// A batch is durable: count this replica's own acceptances in it.
    pub(crate) fn count_self_acks(&mut self, acks: Vec<(Ballot, Slot)>) {
        for (ballot, slot) in acks {
            let current = matches!(&self.role, Role::Leader(l) if l.ballot == ballot);
            if current {
                self.record_accepted(self.cfg.id, slot);
            }
        }
    }

    /// Packs queued commands into new slots while the pipeline has room, and starts a
    /// confirmation round for reads that wait for one.
    pub(crate) fn flush_proposals(&mut self) {
        let (max_inflight, max_bytes, max_cmds) = (
            self.cfg.max_inflight_slots,
            self.cfg.max_batch_bytes,
            self.cfg.max_batch_commands,
        );
        // Followers refuse accepts beyond this (`Config::max_open_slots`); so does the leader.
        let window_end = self.log.chosen_through() + self.cfg.max_open_slots;
        let max_open_bytes = self.cfg.max_open_bytes;
        let now = self.now_tick;
        let mut expired = Vec::new();
        loop {
            let open_bytes = self.log.open_bytes();
            let Some(l) = self.leader_mut() else { break };
            // In bytes too. Half the followers' bound: a follower's open log also holds slots
            // it does not know chosen yet, so it may hold more than ours. One slot always
            // fits into an empty pipeline.
            let bytes_full = !l.inflight.is_empty() && open_bytes >= max_open_bytes / 2;
            let full = l.inflight.len() >= max_inflight || l.next_slot > window_end || bytes_full;
            if l.queue.is_empty() || full {
                break;
            }
            let slot = l.next_slot;
            let batch = l.next_batch(max_bytes, max_cmds, now, &mut expired);
            if batch.commands.is_empty() {
                continue; // Everything left had expired.
            }
            self.propose_slot(slot, batch);
        }
        self.fail_expired(expired);
        self.flush_reads();
    }

    fn fail_expired(&mut self, tokens: Vec<ClientToken>) {
        for token in tokens {
            self.reply(token, ClientReply::Failed(ClientError::DeadlinePassed));
        }
    }

    /// Starts one confirmation round for all reads that arrived since the last one.
    pub(crate) fn flush_reads(&mut self) {
        let Some(l) = self.leader_mut() else { return };
        if l.reads.back().is_some_and(|r| r.round > l.round) {
            self.send_learn_round();
        }
    }

    fn send_learn_round(&mut self) {
        let commit = self.log.chosen_through();
        let now = self.now_tick;
        let Some(l) = self.leader_mut() else { return };
        l.round += 1;
        l.round_sent_tick = now;
        let learn = Learn {
            ballot: l.ballot,
            commit,
            round: l.round,
        };
        self.broadcast(Request::Learn(learn));
        self.complete_reads();
    }

    pub(crate) fn on_accepted(&mut self, from: ReplicaId, a: Accepted) {
        let now = self.now_tick;
        let Some(l) = self.leader_mut() else { return };
        if a.ballot != l.ballot {
            return;
        }
        l.peer_contact_tick[from as usize] = now;
        self.record_accepted(from, a.slot);
    }

    fn record_accepted(&mut self, from: ReplicaId, slot: Slot) {
        let replicas = self.cfg.replicas;
        let Some(l) = self.leader_mut() else { return };
        let ballot = l.ballot;
        let Some(inflight) = l.inflight.get_mut(&slot) else {
            return;
        };
        inflight.acks.insert(from);
        if !inflight.acks.is_majority(replicas) {
            return;
        }
        l.inflight.remove(&slot);
        let marked = self.log.mark_chosen_if_ballot(slot, ballot);
        assert!(marked, "leader's own entry must carry its ballot");
        self.advance_and_apply();
    }

    pub(crate) fn on_learn_ack(&mut self, from: ReplicaId, ack: LearnAck) -> Result<(), Refusal> {
        let now = self.now_tick;
        let Some(l) = self.leader_mut() else {
            return Ok(());
        };
        if ack.ballot != l.ballot {
            return Ok(());
        }
        if ack.round > l.round {
            // Never sent: counting it would confirm reads no majority confirmed.
            return Err(Refusal::UnsentRound);
        }
        let r = &mut l.peer_round[from as usize];
        *r = (*r).max(ack.round);
        l.peer_contact_tick[from as usize] = now;
        self.complete_reads();
        Ok(())
    }

    /// Answers reads whose confirmation round succeeded and whose read index is applied.
    pub(crate) fn complete_reads(&mut self) {
        let me = self.cfg.id;
        let chosen = self.log.chosen_through();
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        let confirmed = l.confirmed_round(me);
        let mut done = Vec::new();
        while let Some(r) = l.reads.front() {
            if r.round > confirmed || r.read_index > chosen {
                break;
            }
            done.extend(l.reads.pop_front());
        }
        for r in done {
            let reply = match r.query {
                ReadQuery::Key(key) => ClientReply::Read(self.kv.get(&key).map(<[u8]>::to_vec)),
                // O(1): the map is a persistent structure; the runtime scans the view.
                ReadQuery::View => ClientReply::View(Box::new(self.kv.clone())),
            };
            self.reply(r.token, reply);
        }
    }

    /// Answers the clients waiting for `command`, which was just applied.
    pub(crate) fn notify_applied(&mut self, id: CommandId, reply: ClientReply) {
        let Some(l) = self.leader_mut() else { return };
        let Some(waiting) = l.waiters.remove(&id) else {
            return;
        };
        for token in waiting.tokens {
            self.reply(token, reply.clone());
        }
    }

    pub(crate) fn leader_tick(&mut self) {
        let now = self.now_tick;
        let hb = self.cfg.heartbeat_ticks;
        let resend = self.cfg.resend_ticks;
        let Some(l) = self.leader_mut() else { return };
        let heartbeat_due = now >= l.round_sent_tick + hb;
        let read_stuck = !l.reads.is_empty() && now >= l.round_sent_tick + resend;
        // Commands stuck behind a full pipeline must not outlive their clients' patience.
        let expired = if now.is_multiple_of(hb) {
            l.drop_expired(now)
        } else {
            Vec::new()
        };
        self.fail_expired(expired);
        if heartbeat_due || read_stuck {
            self.send_learn_round();
        }
        self.resend_accepts();
        self.check_quorum();
    }

    /// Sends unanswered accepts again to the peers that have not acknowledged them.
    fn resend_accepts(&mut self) {
        let now = self.now_tick;
        let resend = self.cfg.resend_ticks;
        let commit = self.log.chosen_through();
        let peers: Vec<ReplicaId> = self.cfg.peers().collect();
        let Some(l) = self.leader_mut() else { return };
        let ballot = l.ballot;
        let mut out = Vec::new();
        for (&slot, inf) in l.inflight.iter_mut() {
            let shift = if inf.value.size_bytes() >= RESEND_BACKOFF_MIN_BYTES {
                inf.resends.min(MAX_RESEND_SHIFT)
            } else {
                0
            };
            let wait = resend << shift;
            if now < inf.sent_tick + wait {
                continue;
            }
            inf.sent_tick = now;
            inf.resends = inf.resends.saturating_add(1);
            for &to in peers.iter().filter(|&&p| !inf.acks.contains(p)) {
                let accept = Accept {
                    ballot,
                    slot,
                    value: inf.value.clone(),
                    commit,
                };
                out.push((to, Request::Accept(accept)));
            }
        }
        for (to, req) in out {
            self.send(to, req);
        }
    }

    /// A leader that has not heard from a majority for a full election timeout steps down,
    /// so clients stop waiting on it and a connected majority can elect someone else.
    fn check_quorum(&mut self) {
        let now = self.now_tick;
        let window = self.cfg.election_timeout_max_ticks;
        let me = self.cfg.id;
        let replicas = self.cfg.replicas;
        let Some(l) = self.leader_mut() else { return };
        if now < l.elected_tick + window {
            return;
        }
        let live = l
            .peer_contact_tick
            .iter()
            .enumerate()
            .filter(|(id, t)| *id as ReplicaId == me || now < **t + window)
            .count() as u32;
        if live < majority(replicas) {
            self.become_follower(None);
        }
    }
}
