//! Leader election driven by ticks: a follower that hears no leader for a randomized timeout
//! probes (pre-vote), then runs phase 1 once for all slots from its first unchosen one.

use crate::message::{Nack, Prepare, Promise, Request};
use crate::quorum::Quorum;
use crate::refuse::{self, Refusal};
use crate::replica::{Replica, Role};
use crate::types::{Ballot, ReplicaId, Slot, Value};
use rand::Rng;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Asking whether peers would promise (no state changes anywhere).
    Probe,
    /// Real phase 1.
    Prepare,
}

/// A replica trying to become leader.
#[derive(Debug)]
pub(crate) struct Candidate {
    pub(crate) ballot: Ballot,
    phase: Phase,
    acks: Quorum,
    promises: Vec<(ReplicaId, Promise)>,
    sent_tick: u64,
    /// The first unchosen slot asked for when phase 1 started; later resends ask for the
    /// same or more, so an honest promise reports no entry below it.
    asked_from: Slot,
}

impl Candidate {
    pub(crate) fn is_probing(&self) -> bool {
        self.phase == Phase::Probe
    }

    pub(crate) fn promises_len(&self) -> usize {
        self.promises.len()
    }
}

impl Replica {
    pub(crate) fn reset_election_timer(&mut self) {
        let lo = self.cfg.election_timeout_min_ticks;
        let hi = self.cfg.election_timeout_max_ticks.max(lo + 1);
        self.election_deadline_tick = self.now_tick + self.rng.gen_range(lo..hi);
    }

    pub(crate) fn follower_tick(&mut self) {
        if self.now_tick >= self.election_deadline_tick {
            self.start_election();
        }
    }

    pub(crate) fn candidate_tick(&mut self) {
        if self.now_tick >= self.election_deadline_tick {
            self.start_election();
            return;
        }
        let Role::Candidate(c) = &mut self.role else {
            return;
        };
        if self.now_tick >= c.sent_tick + self.cfg.resend_ticks {
            c.sent_tick = self.now_tick;
            let (ballot, probe, acks) = (c.ballot, c.phase == Phase::Probe, c.acks);
            let prepare = self.prepare_message(ballot, probe);
            let missing: Vec<ReplicaId> = self.cfg.peers().filter(|&p| !acks.contains(p)).collect();
            for to in missing {
                self.send(to, Request::Prepare(prepare.clone()));
            }
        }
    }

    fn prepare_message(&self, ballot: Ballot, probe: bool) -> Prepare {
        Prepare {
            ballot,
            first_unchosen: self.log.chosen_through() + 1,
            probe,
        }
    }

    pub(crate) fn start_election(&mut self) {
        if let Role::Leader(_) = self.role {
            return;
        }
        let round = self.promised.round.max(self.max_seen_round);
        let ballot = Ballot::next_after(
            Ballot {
                round,
                replica: self.cfg.id,
            },
            self.cfg.id,
        );
        self.max_seen_round = ballot.round;
        self.role = Role::Candidate(Candidate {
            ballot,
            phase: Phase::Probe,
            acks: Quorum::of(self.cfg.id),
            promises: Vec::new(),
            sent_tick: self.now_tick,
            asked_from: self.log.chosen_through() + 1,
        });
        self.reset_election_timer();
        self.broadcast(Request::Prepare(self.prepare_message(ballot, true)));
        self.maybe_finish_phase();
    }

    fn start_prepare(&mut self) {
        let Role::Candidate(c) = &self.role else {
            return;
        };
        let ballot = c.ballot;
        if ballot <= self.promised {
            // Someone promised higher meanwhile; this candidacy is stale.
            self.become_follower(None);
            return;
        }
        self.raise_promise(ballot);
        let now = self.now_tick;
        let asked_from = self.log.chosen_through() + 1;
        if let Role::Candidate(c) = &mut self.role {
            c.phase = Phase::Prepare;
            c.acks = Quorum::default();
            c.promises = Vec::new();
            c.sent_tick = now;
            c.asked_from = asked_from;
        }
        // Our own promise counts once `Promised(ballot)` is durable (`on_persisted`), and the
        // prepares are held until then too: a crash before the sync must not leave a ballot
        // in use that the restarted replica could pick again.
        self.durability.unbatched_own_promise = Some(ballot);
        self.broadcast(Request::Prepare(self.prepare_message(ballot, false)));
        #[cfg(feature = "broken-acceptor")]
        if self.cfg.unsafe_send_before_durable {
            self.durability.unbatched_own_promise = None;
            self.count_own_promise(ballot);
        }
    }

    /// The batch holding `Promised(ballot)` is durable: count our own promise.
    pub(crate) fn count_own_promise(&mut self, ballot: Ballot) {
        let me = self.cfg.id;
        let own = self.own_promise(ballot);
        let Role::Candidate(c) = &mut self.role else {
            return;
        };
        if c.ballot != ballot || c.phase != Phase::Prepare || !c.acks.insert(me) {
            return;
        }
        c.promises.push((me, own));
        self.maybe_finish_phase();
    }

    fn own_promise(&self, ballot: Ballot) -> Promise {
        let accepted = self
            .log
            .entries_above(self.log.chosen_through())
            .map(|(slot, e)| crate::message::AcceptedEntry {
                slot,
                ballot: e.ballot,
                value: e.value.clone(),
            })
            .collect();
        Promise {
            ballot,
            accepted,
            chosen_through: self.log.chosen_through(),
            probe: false,
        }
    }

    pub(crate) fn on_promise(&mut self, from: ReplicaId, p: Promise) -> Result<(), Refusal> {
        let window = self.cfg.max_open_slots;
        let Role::Candidate(c) = &mut self.role else {
            return Ok(());
        };
        if p.ballot == c.ballot {
            check_promise(&p, c.asked_from, window)?;
        }
        // A late or duplicated pre-vote answer carries the same ballot as a real promise but
        // reports no accepted entries; counting it in phase 1 could lose a chosen value.
        let phase_matches = p.probe == (c.phase == Phase::Probe);
        if p.ballot != c.ballot || !phase_matches || !c.acks.insert(from) {
            return Ok(());
        }
        if c.phase == Phase::Prepare {
            c.promises.push((from, p));
        }
        self.maybe_finish_phase();
        Ok(())
    }

    fn maybe_finish_phase(&mut self) {
        let Role::Candidate(c) = &self.role else {
            return;
        };
        if !c.acks.is_majority(self.cfg.replicas) {
            return;
        }
        match c.phase {
            Phase::Probe => self.start_prepare(),
            Phase::Prepare => self.finish_prepare(),
        }
    }

    /// Phase 1 succeeded: for every slot a majority may have chosen, re-propose the value
    /// with the highest ballot; slots some promiser knows chosen are fetched, not re-proposed.
    fn finish_prepare(&mut self) {
        let Role::Candidate(c) = std::mem::replace(&mut self.role, Role::Follower) else {
            return;
        };
        let (source, max_chosen) = c
            .promises
            .iter()
            .map(|(from, p)| (*from, p.chosen_through))
            .max_by_key(|(_, through)| *through)
            .unwrap_or((self.cfg.id, 0));
        let mine = self.log.chosen_through();
        if max_chosen > mine {
            self.want_chosen_through(max_chosen, Some(source));
        }
        let start = max_chosen.max(mine) + 1;
        if start - mine > self.cfg.max_open_slots {
            // Too far behind our quorum to lead within a log window (which keeps the log
            // bounded): catch up by fetching, and let a later election try again.
            self.become_follower(None);
            return;
        }
        let mut best: BTreeMap<Slot, (Ballot, Value)> = BTreeMap::new();
        for e in c.promises.into_iter().flat_map(|(_, p)| p.accepted) {
            if e.slot < start {
                continue;
            }
            let slot_best = best.entry(e.slot).or_insert((e.ballot, e.value.clone()));
            if e.ballot > slot_best.0 {
                *slot_best = (e.ballot, e.value);
            }
        }
        let end = best.keys().next_back().copied().unwrap_or(start - 1);
        if end - (start - 1) > 2 * self.cfg.max_open_slots {
            // Every slot up to `end` gets a proposal, so the range must stay bounded. Peers'
            // promises cannot stretch it this far (`check_promise`); only our own log can,
            // read back from a corrupted disk. Leave leading to a replica with a sane log.
            self.become_follower(None);
            return;
        }
        let recovered = best.into_iter().map(|(s, (_, v))| (s, v)).collect();
        self.become_leader(c.ballot, start, end, recovered);
    }

    pub(crate) fn on_nack(&mut self, n: Nack) -> Result<(), Refusal> {
        if !refuse::ballot_ok(n.promised, self.max_seen_round, self.cfg.replicas) {
            return Err(Refusal::BallotOutOfRange);
        }
        self.max_seen_round = self.max_seen_round.max(n.promised.round);
        let mine = match &self.role {
            Role::Leader(l) => l.ballot,
            Role::Candidate(c) => c.ballot,
            Role::Follower => return Ok(()),
        };
        if n.ballot == mine && n.promised > mine {
            self.become_follower(None);
        }
        Ok(())
    }
}

/// Refuses a promise for our ballot that no honest acceptor sends: its chosen prefix out of
/// range, more entries than its log can hold, an entry below what we asked for or at or
/// below its own chosen prefix, more than two windows ahead of that prefix (which bounds the
/// recovery range `finish_prepare` walks), or accepted under a ballot above the promise.
fn check_promise(p: &Promise, asked_from: Slot, window: u64) -> Result<(), Refusal> {
    if !refuse::position_ok(p.chosen_through) {
        return Err(Refusal::SlotOutOfRange);
    }
    // A replica's entries lie within two windows of its chosen prefix: accepts one window
    // ahead, plus a recovery range that starts at most one window ahead (`finish_prepare`).
    let span = window.saturating_mul(2);
    if p.accepted.len() as u64 > span {
        return Err(Refusal::MalformedPromise);
    }
    let lowest = asked_from.max(p.chosen_through.saturating_add(1));
    let highest = p.chosen_through.saturating_add(span);
    let bad_entry = p
        .accepted
        .iter()
        .any(|e| e.slot < lowest || e.slot > highest || e.ballot > p.ballot);
    if bad_entry {
        return Err(Refusal::MalformedPromise);
    }
    Ok(())
}
