//! Learner: marks slots chosen, applies them strictly in order, fetches chosen values it is
//! missing from a peer, and rebuilds itself from persisted records and snapshots.

use crate::config::Config;
use crate::kv::{Applied, KvState};
use crate::log::Log;
use crate::message::{ChosenEntries, FetchChosen, Request};
use crate::persist::{Record, RecoveryError, Snapshot};
use crate::refuse::{self, Refusal, MAX_ROUND};
use crate::replica::{ClientError, ClientReply, Replica};
use crate::types::{Ballot, ReplicaId, Slot};
use rand::Rng;

/// Catch-up progress.
#[derive(Debug, Default)]
pub(crate) struct FetchState {
    /// Some peer knows every slot up to here is chosen.
    wanted_through: Slot,
    /// Peer to ask first.
    source: Option<ReplicaId>,
    /// When the outstanding fetch was sent.
    sent_tick: Option<u64>,
    /// The last answer brought nothing new: ask a random peer next, not the same one.
    ask_elsewhere: bool,
    /// A peer said it compacted past our position: only a snapshot helps.
    snapshot_from: Option<ReplicaId>,
    /// Every peer that said so since the last snapshot installed: they push one (the
    /// runtime pushes a snapshot only in answer to such a fetch), and only theirs is taken.
    snapshot_sources: crate::quorum::Quorum,
}

impl Replica {
    /// A leader with `ballot` says every slot up to `commit` is chosen.
    pub(crate) fn learn_commit(&mut self, ballot: Ballot, commit: Slot) {
        let from = self.log.chosen_through() + 1;
        if commit < from {
            return;
        }
        // Bounded by the entries we hold, not by the distance to `commit`.
        let slots: Vec<Slot> = self
            .log
            .entries_above(from - 1)
            .map(|(s, _)| s)
            .take_while(|&s| s <= commit)
            .collect();
        for slot in slots {
            self.log.mark_chosen_if_ballot(slot, ballot);
        }
        self.advance_and_apply();
        if self.log.chosen_through() < commit {
            self.want_chosen_through(commit, Some(ballot.replica));
        }
    }

    pub(crate) fn want_chosen_through(&mut self, through: Slot, source: Option<ReplicaId>) {
        if through > self.fetch.wanted_through {
            self.fetch.wanted_through = through;
            self.fetch.source = source.filter(|&s| s != self.cfg.id);
        }
        self.maybe_fetch();
    }

    fn maybe_fetch(&mut self) {
        if self.fetch.wanted_through <= self.log.chosen_through() {
            return;
        }
        let waiting = self
            .fetch
            .sent_tick
            .is_some_and(|t| self.now_tick < t + 2 * self.cfg.resend_ticks);
        if waiting || self.cfg.replicas == 1 {
            return;
        }
        let first_try = self.fetch.sent_tick.is_none() && !self.fetch.ask_elsewhere;
        let to = match self.fetch.source.or(self.leader_hint) {
            Some(p) if p != self.cfg.id && first_try => p,
            _ => self.random_peer(),
        };
        self.fetch.ask_elsewhere = false;
        self.fetch.sent_tick = Some(self.now_tick);
        let request = FetchChosen {
            from_slot: self.log.chosen_through() + 1,
            max_entries: self.cfg.fetch_max_entries,
        };
        self.send(to, Request::FetchChosen(request));
    }

    fn random_peer(&mut self) -> ReplicaId {
        let n = self.cfg.replicas;
        let offset = self.rng.gen_range(1..n);
        (self.cfg.id + offset) % n
    }

    pub(crate) fn fetch_tick(&mut self) {
        self.maybe_fetch();
    }

    pub(crate) fn on_chosen(&mut self, from: ReplicaId, c: ChosenEntries) -> Result<(), Refusal> {
        self.check_chosen(&c)?;
        self.fetch.sent_tick = None;
        if c.snapshot_needed {
            self.fetch.snapshot_from = Some(from);
            self.fetch.snapshot_sources.insert(from);
            return Ok(());
        }
        if c.values.is_empty() {
            // That peer knows no more than we do. Asking it again forever would starve a
            // learner whose preferred source lags (found by simulator seed 40835).
            self.fetch.source = None;
            self.fetch.ask_elsewhere = true;
        }
        for (i, value) in c.values.into_iter().enumerate() {
            let slot = c.from_slot + i as Slot;
            if self.log.is_chosen(slot) {
                continue;
            }
            self.log.learn_chosen(slot, value.clone());
            self.persist(Record::Learned { slot, value });
        }
        self.advance_and_apply();
        if c.chosen_through > self.fetch.wanted_through {
            self.fetch.wanted_through = c.chosen_through;
        }
        self.maybe_fetch();
        Ok(())
    }

    /// Refuses chosen values we cannot have asked for: more than a fetch returns, or not
    /// starting at or below our next unchosen slot (which would leave holes in the log that
    /// nothing bounds), or an impossible chosen prefix.
    fn check_chosen(&self, c: &ChosenEntries) -> Result<(), Refusal> {
        if !refuse::position_ok(c.chosen_through) {
            return Err(Refusal::SlotOutOfRange);
        }
        if c.values.is_empty() {
            return Ok(());
        }
        let next = self.log.chosen_through() + 1;
        let too_many = c.values.len() as u64 > u64::from(self.cfg.fetch_max_entries);
        if too_many || c.from_slot == 0 || c.from_slot > next {
            return Err(Refusal::MalformedChosen);
        }
        if !c.values.iter().all(|v| refuse::value_ok(v, &self.cfg)) {
            return Err(Refusal::OversizedValue);
        }
        Ok(())
    }

    /// Applies every newly contiguous chosen slot in order and answers waiting clients.
    pub(crate) fn advance_and_apply(&mut self) {
        let newly = self.log.advance();
        let Some(&(through, _)) = newly.last() else {
            return;
        };
        // The applied tail is kept for catch-up only, bounded in bytes.
        self.log.trim_applied(self.cfg.max_log_tail_bytes);
        for (slot, value) in newly {
            for command in &value.commands {
                let applied = self.kv.apply(slot, command);
                if let Applied::Fresh(outcome) = &applied {
                    self.lease_clock_on_applied(&command.op, outcome);
                }
                let reply = match applied {
                    Applied::Fresh(o) | Applied::Duplicate(o) => ClientReply::Applied(o),
                    Applied::Stale { last_applied } => {
                        ClientReply::Failed(ClientError::Stale { last_applied })
                    }
                    Applied::Expired => ClientReply::Failed(ClientError::SessionExpired),
                };
                self.notify_applied(command.id, reply);
            }
        }
        // Chosen progress only speeds up recovery (peers can re-teach it), so it rides along
        // with the next batch that syncs anyway instead of costing a sync of its own.
        self.unsynced_chosen = Some(through);
        self.complete_reads();
    }

    /// Adds the pending chosen-progress record if this Ready syncs anyway or `force` is set.
    pub(crate) fn attach_chosen_record(&mut self, force: bool) {
        if self.out.persist.is_empty() && !force {
            return;
        }
        if let Some(through) = self.unsynced_chosen.take() {
            self.persist(Record::Chosen { through });
        }
    }

    /// The peer to fetch a snapshot from, when the log we need has been compacted away.
    pub fn snapshot_needed(&self) -> Option<ReplicaId> {
        self.fetch.snapshot_from
    }

    /// True if `peer` told this replica it compacted past what we need, since the last
    /// snapshot we installed: a snapshot is expected from it. The runtime refuses snapshot
    /// transfers from anyone else (a snapshot replaces the whole state, so it is taken only
    /// when asked for).
    pub fn expects_snapshot_from(&self, peer: ReplicaId) -> bool {
        self.fetch.snapshot_sources.contains(peer)
    }

    /// [`Replica::expects_snapshot_from`] for every peer, as a bitmask (bit `id`).
    pub fn snapshot_sources_mask(&self) -> u64 {
        self.fetch.snapshot_sources.bits()
    }

    /// The applied state as a snapshot at the chosen prefix.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            through: self.log.chosen_through(),
            kv: self.kv.clone(),
        }
    }

    /// Records that, replayed after `snapshot`, rebuild the acceptor state it does not hold:
    /// the promise and every entry above it. Written first in a new log segment so older
    /// segments can be deleted.
    pub fn live_records(&self, snapshot_through: Slot) -> Vec<Record> {
        let mut out = vec![Record::Promised(self.promised)];
        for (slot, e) in self.log.entries_above(snapshot_through) {
            out.push(if e.chosen && e.ballot == Ballot::ZERO {
                Record::Learned {
                    slot,
                    value: e.value.clone(),
                }
            } else {
                Record::Accepted {
                    slot,
                    ballot: e.ballot,
                    value: e.value.clone(),
                }
            });
        }
        out.push(Record::Chosen {
            through: self.log.chosen_through(),
        });
        out
    }

    /// Drops log entries up to `through` (which a durable snapshot covers).
    pub fn compact(&mut self, through: Slot) {
        self.log.compact(through.min(self.log.chosen_through()));
    }

    /// Replaces the applied state with a peer's snapshot that is ahead of us. The runtime
    /// must have made the snapshot durable first.
    /// A snapshot that is not ahead of us, or is malformed (position out of range, session
    /// table inconsistent with itself or with the position), is ignored and counted in
    /// [`Replica::refused`].
    pub fn install_snapshot(&mut self, snapshot: Snapshot) {
        self.fetch.snapshot_from = None;
        if snapshot.through <= self.log.chosen_through() {
            self.refuse(Refusal::StaleSnapshot);
            return;
        }
        if !snapshot_ok(&snapshot) {
            self.refuse(Refusal::MalformedSnapshot);
            return;
        }
        let was_leader = self.is_leader();
        if was_leader {
            // Our pipeline's next slots may now lie inside the snapshot: step down, and
            // (below) stand again at once from the new position rather than leave the
            // cluster leaderless for an election timeout.
            self.become_follower(None);
        }
        self.kv = snapshot.kv;
        self.kv.reset_events();
        self.log.reset_to_snapshot(snapshot.through);
        self.fetch.snapshot_sources = Default::default();
        self.advance_and_apply();
        self.maybe_fetch();
        if was_leader {
            self.start_election();
        }
    }

    /// Rebuilds a replica from its newest snapshot and the log records written after it.
    pub fn recover(
        cfg: Config,
        snapshot: Option<Snapshot>,
        records: impl IntoIterator<Item = Record>,
    ) -> Result<Replica, RecoveryError> {
        let (through, kv) = match snapshot {
            Some(s) if !snapshot_ok(&s) => return Err(RecoveryError::InvalidSnapshot),
            Some(s) => (s.through, s.kv),
            None => (0, KvState::new(cfg.max_sessions)),
        };
        // The events replayed below continue the history from the snapshot's revision.
        let mut kv = kv;
        kv.reset_events();
        let mut log = Log::starting_after(through);
        let mut promised = Ballot::ZERO;
        let mut chosen_through = through;
        for record in records {
            replay(&mut log, &mut promised, &mut chosen_through, record)?;
        }
        for slot in log.compacted_through() + 1..=chosen_through {
            if log.get(slot).is_none() {
                return Err(RecoveryError::MissingChosenValue { slot });
            }
            log.learn_chosen_existing(slot);
        }
        let mut replica = Replica::with_state(cfg, promised, log, kv);
        replica.advance_and_apply();
        replica.out = Default::default(); // Nothing new to persist or send yet.
        replica.unsynced_chosen = None;
        Ok(replica)
    }
}

fn replay(
    log: &mut Log,
    promised: &mut Ballot,
    chosen_through: &mut Slot,
    record: Record,
) -> Result<(), RecoveryError> {
    check_record(&record)?;
    match record {
        Record::Promised(b) => *promised = (*promised).max(b),
        Record::Accepted {
            slot,
            ballot,
            value,
        } => {
            *promised = (*promised).max(ballot);
            if slot <= log.compacted_through() {
                return Ok(());
            }
            if let Some(e) = log.get(slot) {
                if e.chosen && e.value != value {
                    return Err(RecoveryError::ConflictingChosen { slot });
                }
                if e.ballot > ballot {
                    return Ok(());
                }
            }
            log.accept(slot, ballot, value);
        }
        Record::Learned { slot, value } => {
            if let Some(e) = log.get(slot) {
                if e.chosen && e.value != value {
                    return Err(RecoveryError::ConflictingChosen { slot });
                }
            }
            log.learn_chosen(slot, value);
        }
        Record::Chosen { through } => *chosen_through = (*chosen_through).max(through),
    }
    Ok(())
}

/// A snapshot whose position is in range and whose session table is consistent. Its map
/// was checked against its digest when it was decoded (in the pass that read it), so this
/// costs the driver time proportional to the sessions, not to the keys.
fn snapshot_ok(s: &Snapshot) -> bool {
    refuse::position_ok(s.through)
        && s.kv.sessions_consistent(s.through)
        && s.kv.leases_consistent()
}

/// Refuses a record no replica writes: a round or a slot beyond the input limits (so replay
/// and the rebuilt replica never overflow), or slot 0.
fn check_record(record: &Record) -> Result<(), RecoveryError> {
    let ok = match record {
        Record::Promised(b) => b.round <= MAX_ROUND,
        Record::Accepted { slot, ballot, .. } => {
            ballot.round <= MAX_ROUND && refuse::slot_ok(*slot)
        }
        Record::Learned { slot, .. } => refuse::slot_ok(*slot),
        Record::Chosen { through } => refuse::position_ok(*through),
    };
    if ok {
        Ok(())
    } else {
        Err(RecoveryError::OutOfRange)
    }
}
