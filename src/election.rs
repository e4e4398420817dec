//! Leader election driven by ticks: a follower that hears no leader for a randomized timeout
//! probes (pre-vote), then runs phase 1 once for all slots from its first unchosen one.

use crate::message::{Nack, Prepare, Promise, Request};
use crate::quorum::Quorum;
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
}

impl Candidate {
    pub(crate) fn is_probing(&self) -> bool {
        self.phase == Phase::Probe
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

    fn start_election(&mut self) {
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
        if let Role::Candidate(c) = &mut self.role {
            c.phase = Phase::Prepare;
            c.acks = Quorum::default();
            c.promises = Vec::new();
            c.sent_tick = now;
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

    pub(crate) fn on_promise(&mut self, from: ReplicaId, p: Promise) {
        let Role::Candidate(c) = &mut self.role else {
            return;
        };
        // A late or duplicated pre-vote answer carries the same ballot as a real promise but
        // reports no accepted entries; counting it in phase 1 could lose a chosen value.
        let phase_matches = p.probe == (c.phase == Phase::Probe);
        if p.ballot != c.ballot || !phase_matches || !c.acks.insert(from) {
            return;
        }
        if c.phase == Phase::Prepare {
            c.promises.push((from, p));
        }
        self.maybe_finish_phase();
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
        let recovered = best.into_iter().map(|(s, (_, v))| (s, v)).collect();
        self.become_leader(c.ballot, start, end, recovered);
    }

    pub(crate) fn on_nack(&mut self, n: Nack) {
        self.max_seen_round = self.max_seen_round.max(n.promised.round);
        let mine = match &self.role {
            Role::Leader(l) => l.ballot,
            Role::Candidate(c) => c.ballot,
            Role::Follower => return,
        };
        if n.ballot == mine && n.promised > mine {
            self.become_follower(None);
        }
    }
}
