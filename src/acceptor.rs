//! Acceptor rules: promise on prepare, accept on accept, acknowledge heartbeats, and serve
//! chosen values to learners that are behind. State changes are persisted via [`Record`]s
//! that the runtime makes durable before the response leaves.

use crate::message::{
    Accept, Accepted, AcceptedEntry, ChosenEntries, FetchChosen, Learn, LearnAck, Nack, Prepare,
    Promise, Response,
};
use crate::persist::Record;
use crate::refuse::{self, Refusal};
use crate::replica::{Replica, Role};
use crate::types::{Ballot, ReplicaId};

impl Replica {
    /// Refuses a prepare, accept or heartbeat whose ballot is out of range or not the
    /// sender's own (a proposer only ever uses its own ballots).
    fn check_sender_ballot(&self, from: ReplicaId, ballot: Ballot) -> Result<(), Refusal> {
        refuse::check_own_ballot(ballot, from, self.max_seen_round, self.cfg.replicas)
    }

    pub(crate) fn on_prepare(&mut self, from: ReplicaId, p: Prepare) -> Result<Response, Refusal> {
        self.check_sender_ballot(from, p.ballot)?;
        if !refuse::slot_ok(p.first_unchosen) {
            return Err(Refusal::SlotOutOfRange);
        }
        // Only now, for an acceptable ballot: a forged round must not raise the next election's.
        self.max_seen_round = self.max_seen_round.max(p.ballot.round);
        if p.probe {
            return Ok(self.on_probe(p));
        }
        if p.ballot < self.promised {
            return Ok(self.nack(p.ballot, None));
        }
        self.raise_promise(p.ballot);
        self.yield_to(p.ballot);
        let after = self
            .log
            .chosen_through()
            .max(p.first_unchosen.saturating_sub(1));
        // Every entry, chosen ones included: a slot this acceptor knows chosen (but not yet
        // contiguously) may be the only copy of that value in the candidate's quorum.
        let accepted = self
            .log
            .entries_above(after)
            .map(|(slot, e)| AcceptedEntry {
                slot,
                ballot: e.ballot,
                value: e.value.clone(),
            })
            .collect();
        Ok(Response::Promise(Promise {
            ballot: p.ballot,
            accepted,
            chosen_through: self.log.chosen_through(),
            probe: false,
        }))
    }

    /// Pre-vote: agree only if this replica would promise and hears no live leader, so a
    /// replica cut off for a moment cannot depose a healthy leader; and only if the candidate
    /// is not behind what this replica compacted. Such a candidate could only learn the
    /// missing slots through a snapshot, and a leader that installs one steps down: elected,
    /// it would leave the cluster leaderless for another election timeout (the simulator
    /// found laggards winning one election after another). Refusing a vote is always safe,
    /// and never blocks every candidate: nobody has compacted past the most advanced live
    /// replica's chosen prefix.
    fn on_probe(&mut self, p: Prepare) -> Response {
        let would_promise = p.ballot > self.promised;
        let can_catch_up = p.first_unchosen > self.log.compacted_through();
        // The leader we follow probing means it stepped down (after installing a snapshot)
        // and stands again at once: no healthy leader is deposed by agreeing.
        let from_our_leader = self.leader_hint == Some(p.ballot.replica) && !self.is_leader();
        if would_promise && can_catch_up && (from_our_leader || !self.hears_leader()) {
            Response::Promise(Promise {
                ballot: p.ballot,
                accepted: Vec::new(),
                chosen_through: self.log.chosen_through(),
                probe: true,
            })
        } else {
            self.nack(p.ballot, None)
        }
    }

    pub(crate) fn on_accept(&mut self, from: ReplicaId, a: Accept) -> Result<Response, Refusal> {
        self.check_sender_ballot(from, a.ballot)?;
        if !refuse::slot_ok(a.slot) || !refuse::position_ok(a.commit) {
            return Err(Refusal::SlotOutOfRange);
        }
        if !refuse::value_ok(&a.value, &self.cfg) {
            // Never stored, so never applied, whatever the ballot.
            return Err(Refusal::OversizedValue);
        }
        if a.ballot < self.promised {
            #[cfg(feature = "broken-acceptor")]
            if self.cfg.unsafe_skip_promise_check {
                self.check_accept_slot(&a)?;
                return Ok(self.accept_below_promise(a));
            }
            // A stale leader's value may well differ from the one chosen since: refuse it
            // the ordinary way.
            return Ok(self.nack(a.ballot, Some(a.slot)));
        }
        self.check_accept_slot(&a)?;
        self.follow(from, a.ballot);
        let open = a.slot > self.log.compacted_through() && !self.log.is_chosen(a.slot);
        // A resent accept we hold already needs no new record: the answer waits for the
        // batch holding the first one (the durability module holds it until then), and the
        // disk and memory do not grow with resends.
        if open && !self.log.holds(a.slot, a.ballot, &a.value) {
            self.log.accept(a.slot, a.ballot, a.value.clone());
            self.persist(Record::Accepted {
                slot: a.slot,
                ballot: a.ballot,
                value: a.value,
            });
        }
        self.learn_commit(a.ballot, a.commit);
        Ok(Response::Accepted(Accepted {
            ballot: a.ballot,
            slot: a.slot,
        }))
    }

    /// Refuses an accept at or above our promise that is too far ahead for our log, or that
    /// contradicts a value this replica knows chosen: no correct leader sends one, and storing
    /// it would break the log's "a chosen value never changes" rule.
    fn check_accept_slot(&self, a: &Accept) -> Result<(), Refusal> {
        let window_end = self
            .log
            .chosen_through()
            .saturating_add(self.cfg.max_open_slots);
        if a.slot > window_end {
            // Keeps the log bounded whatever the slot. An honest leader this far ahead is
            // resent to after we catch up through its heartbeats' commit index.
            return Err(Refusal::SlotBeyondWindow);
        }
        // The same bound in bytes, for a slot not held yet. Slots close to the chosen prefix
        // are always taken, so the log can always advance and free room.
        let near = self
            .log
            .chosen_through()
            .saturating_add(self.cfg.max_inflight_slots as u64);
        let new_slot = self.log.get(a.slot).is_none();
        let over =
            self.log.open_bytes().saturating_add(a.value.size_bytes()) > self.cfg.max_open_bytes;
        if new_slot && a.slot > near && over {
            return Err(Refusal::OpenLogFull);
        }
        let conflicts =
            self.log.is_chosen(a.slot) && self.log.get(a.slot).is_some_and(|e| e.value != a.value);
        if conflicts {
            return Err(Refusal::ChosenConflict);
        }
        Ok(())
    }

    /// TEST ONLY, the deliberately broken acceptor: accepts a value under a ballot below its
    /// promise, which lets an old leader get a value chosen that the new leader never saw.
    /// Skips only what would trip the log's own assertions (a higher ballot already there).
    #[cfg(feature = "broken-acceptor")]
    fn accept_below_promise(&mut self, a: Accept) -> Response {
        let open = a.slot > self.log.compacted_through() && !self.log.is_chosen(a.slot);
        let higher_there = self.log.get(a.slot).is_some_and(|e| e.ballot > a.ballot);
        if !open || higher_there {
            return self.nack(a.ballot, Some(a.slot));
        }
        self.log.accept(a.slot, a.ballot, a.value.clone());
        self.persist(Record::Accepted {
            slot: a.slot,
            ballot: a.ballot,
            value: a.value,
        });
        Response::Accepted(Accepted {
            ballot: a.ballot,
            slot: a.slot,
        })
    }

    pub(crate) fn on_learn(&mut self, from: ReplicaId, l: Learn) -> Result<Response, Refusal> {
        self.check_sender_ballot(from, l.ballot)?;
        if !refuse::position_ok(l.commit) {
            return Err(Refusal::SlotOutOfRange);
        }
        if l.ballot < self.promised {
            return Ok(self.nack(l.ballot, None));
        }
        self.follow(from, l.ballot);
        self.learn_commit(l.ballot, l.commit);
        // `l.round` is only echoed back; the leader checks it against what it sent.
        Ok(Response::LearnAck(LearnAck {
            ballot: l.ballot,
            round: l.round,
            chosen_through: self.log.chosen_through(),
        }))
    }

    pub(crate) fn on_fetch_chosen(&mut self, f: FetchChosen) -> Result<Response, Refusal> {
        if !refuse::slot_ok(f.from_slot) {
            return Err(Refusal::SlotOutOfRange);
        }
        Ok(self.chosen_entries(f))
    }

    /// Chosen values from `f.from_slot` on, bounded by our configuration whatever `f` asks.
    fn chosen_entries(&self, f: FetchChosen) -> Response {
        let chosen_through = self.log.chosen_through();
        if f.from_slot <= self.log.compacted_through() {
            return Response::Chosen(ChosenEntries {
                from_slot: f.from_slot,
                values: Vec::new(),
                chosen_through,
                snapshot_needed: true,
            });
        }
        let mut values = Vec::new();
        let mut bytes = 0usize;
        let max_entries = f.max_entries.min(self.cfg.fetch_max_entries) as usize;
        let mut slot = Some(f.from_slot);
        while values.len() < max_entries && bytes < self.cfg.fetch_max_bytes {
            let Some(value) = slot.and_then(|s| self.chosen_value(s)) else {
                break;
            };
            bytes = bytes.saturating_add(value.size_bytes());
            values.push(value.clone());
            slot = slot.and_then(|s| s.checked_add(1));
        }
        Response::Chosen(ChosenEntries {
            from_slot: f.from_slot,
            values,
            chosen_through,
            snapshot_needed: false,
        })
    }

    /// Accepts `ballot`'s owner as leader: promise it, step aside if we competed, and note the
    /// contact so we do not start an election.
    fn follow(&mut self, from: ReplicaId, ballot: Ballot) {
        self.raise_promise(ballot);
        self.yield_to(ballot);
        if ballot.replica == from {
            self.leader_hint = Some(from);
            self.leader_contact_tick = Some(self.now_tick);
            self.reset_election_timer();
        }
    }

    /// Steps down if `ballot` beats our own leadership or candidacy. A candidate that is only
    /// probing has promised nothing, so any live leader it may follow ends its candidacy.
    pub(crate) fn yield_to(&mut self, ballot: Ballot) {
        let mine = match &self.role {
            Role::Leader(l) => Some(l.ballot),
            Role::Candidate(c) if c.is_probing() => Some(Ballot::ZERO),
            Role::Candidate(c) => Some(c.ballot),
            Role::Follower => None,
        };
        if mine.is_some_and(|b| b < ballot) {
            self.become_follower(Some(ballot.replica));
        }
    }

    /// True if a leader was heard recently enough that an election would be premature.
    pub(crate) fn hears_leader(&self) -> bool {
        if self.is_leader() {
            return true;
        }
        self.leader_contact_tick
            .is_some_and(|t| self.now_tick < t + self.cfg.election_timeout_min_ticks)
    }

    fn nack(&self, ballot: Ballot, slot: Option<u64>) -> Response {
        Response::Nack(Nack {
            ballot,
            promised: self.promised,
            slot,
        })
    }
}
