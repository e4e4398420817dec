//! Safety checks run after every step, and the convergence check run at the end.
//!
//! The checker keeps a global view across all replicas and all time: the value chosen in
//! every slot and the map digest after applying every prefix. A replica that ever disagrees
//! with that view, or whose promise goes back (restarts included), is a violation.

use super::digest::RunDigest;
use super::world::World;
use paxoskv::persist::RecoveryError;
use paxoskv::{Ballot, ReplicaId, Slot, Value};
use std::collections::BTreeMap;
use std::fmt;

/// Something the simulator proved wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Two different values chosen for one slot.
    ConflictingChosen {
        /// The slot.
        slot: Slot,
        /// Replica that chose the first value seen, and the value.
        first: (ReplicaId, Value),
        /// Replica that chose a different value, and the value.
        second: (ReplicaId, Value),
    },
    /// A replica's chosen prefix covers a slot it holds no value for (and has not compacted).
    MissingChosenValue {
        /// The replica.
        replica: ReplicaId,
        /// The slot.
        slot: Slot,
    },
    /// A replica's contiguous chosen prefix shrank without a restart.
    ChosenWentBack {
        /// The replica.
        replica: ReplicaId,
        /// Before.
        before: Slot,
        /// After.
        after: Slot,
    },
    /// Two replicas hold different maps after applying the same prefix.
    DivergentState {
        /// Length of the prefix.
        slot: Slot,
        /// First replica and its map digest.
        first: (ReplicaId, u64),
        /// Second replica and its map digest.
        second: (ReplicaId, u64),
    },
    /// A replica's promised ballot decreased (possibly across a crash and restart).
    PromiseWentBack {
        /// The replica.
        replica: ReplicaId,
        /// Highest promise seen before.
        before: Ballot,
        /// The promise now.
        after: Ballot,
    },
    /// Two different values accepted under one ballot for one slot (a ballot was reused, or
    /// a leader proposed twice).
    BallotSlotConflict {
        /// The ballot.
        ballot: Ballot,
        /// The slot.
        slot: Slot,
    },
    /// A restarted replica sent under a ballot at or below one an earlier incarnation used.
    BallotReused {
        /// The replica.
        replica: ReplicaId,
        /// The ballot sent now.
        ballot: Ballot,
        /// The highest ballot earlier incarnations used.
        used_before: Ballot,
    },
    /// A replica could not be rebuilt from what it persisted.
    RecoveryFailed {
        /// The replica.
        replica: ReplicaId,
        /// Why.
        error: RecoveryError,
    },
    /// A replica answered a client in a way the protocol never should.
    ClientProtocol {
        /// The client index.
        client: usize,
        /// What happened.
        detail: String,
    },
    /// The recorded client history has no linearization.
    NotLinearizable {
        /// The checker's report.
        report: String,
    },
    /// After faults stopped, an operation did not complete in time.
    Liveness {
        /// The client index.
        client: usize,
        /// The operation.
        op: String,
        /// When it was invoked.
        invoke_step: u64,
        /// Steps waited since faults stopped (or since invocation, if later).
        waited_steps: u64,
    },
    /// After faults stopped and clients went quiet, replicas did not converge.
    NoConvergence {
        /// What differs.
        detail: String,
    },
    /// A replica core (or the simulator) panicked.
    Panic {
        /// The panic message.
        message: String,
    },
}

impl Violation {
    /// A short name of the kind, for tallies.
    pub fn kind(&self) -> &'static str {
        match self {
            Violation::ConflictingChosen { .. } => "two-chosen",
            Violation::MissingChosenValue { .. } => "missing-value",
            Violation::ChosenWentBack { .. } => "chosen-went-back",
            Violation::DivergentState { .. } => "divergent-state",
            Violation::PromiseWentBack { .. } => "promise-went-back",
            Violation::BallotSlotConflict { .. } => "ballot-slot-conflict",
            Violation::BallotReused { .. } => "ballot-reused",
            Violation::RecoveryFailed { .. } => "recovery-failed",
            Violation::ClientProtocol { .. } => "client-protocol",
            Violation::NotLinearizable { .. } => "not-linearizable",
            Violation::Liveness { .. } => "liveness",
            Violation::NoConvergence { .. } => "no-convergence",
            Violation::Panic { .. } => "panic",
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::ConflictingChosen {
                slot,
                first,
                second,
            } => write!(
                f,
                "two values chosen for slot {slot}: r{} has {:?}, r{} has {:?}",
                first.0, first.1, second.0, second.1
            ),
            Violation::MissingChosenValue { replica, slot } => {
                write!(f, "r{replica} counts slot {slot} chosen but holds no value")
            }
            Violation::ChosenWentBack {
                replica,
                before,
                after,
            } => write!(f, "r{replica} chosen prefix went back {before} -> {after}"),
            Violation::DivergentState {
                slot,
                first,
                second,
            } => write!(
                f,
                "applied prefixes disagree at slot {slot}: r{} digest {:x}, r{} digest {:x}",
                first.0, first.1, second.0, second.1
            ),
            Violation::PromiseWentBack {
                replica,
                before,
                after,
            } => write!(f, "r{replica} promise went back {before} -> {after}"),
            Violation::BallotSlotConflict { ballot, slot } => {
                write!(
                    f,
                    "two values accepted under ballot {ballot} in slot {slot}"
                )
            }
            Violation::BallotReused {
                replica,
                ballot,
                used_before,
            } => write!(
                f,
                "r{replica} sent under ballot {ballot} after a restart, but an earlier \
                 incarnation already used {used_before}"
            ),
            Violation::RecoveryFailed { replica, error } => {
                write!(f, "r{replica} could not recover from its disk: {error}")
            }
            Violation::ClientProtocol { client, detail } => {
                write!(f, "client {client}: {detail}")
            }
            Violation::NotLinearizable { report } => write!(f, "{report}"),
            Violation::Liveness {
                client,
                op,
                invoke_step,
                waited_steps,
            } => write!(
                f,
                "liveness: client {client} op {op} invoked at step {invoke_step} still \
                 pending after {waited_steps} steps without faults"
            ),
            Violation::NoConvergence { detail } => {
                write!(f, "replicas did not converge: {detail}")
            }
            Violation::Panic { message } => write!(f, "panic: {message}"),
        }
    }
}

/// What the checker last saw of one replica.
#[derive(Clone, Debug, Default)]
struct ReplicaView {
    incarnation: u64,
    checked_through: Slot,
    promise_floor: Ballot,
}

/// The global view the per-step checks compare every replica against.
#[derive(Debug, Default)]
pub struct SafetyChecker {
    chosen: BTreeMap<Slot, (ReplicaId, Value)>,
    applied_digest: BTreeMap<Slot, (ReplicaId, u64)>,
    views: Vec<ReplicaView>,
    /// Folds in every newly chosen slot value, for the run digest.
    digest: RunDigest,
}

impl SafetyChecker {
    /// A checker for `replicas` replicas that have seen nothing yet.
    pub fn new(replicas: u32) -> SafetyChecker {
        SafetyChecker {
            views: vec![ReplicaView::default(); replicas as usize],
            ..SafetyChecker::default()
        }
    }

    /// Slots known chosen anywhere.
    pub fn chosen_slots(&self) -> usize {
        self.chosen.len()
    }

    /// Digest of every chosen value, in the order they were first seen.
    pub fn digest(&self) -> u64 {
        self.digest.finish()
    }

    /// Checks every live replica against the global view.
    pub fn check(&mut self, world: &World) -> Result<(), Violation> {
        for (id, node) in world.nodes().iter().enumerate() {
            let Some(r) = node.replica.as_ref() else {
                continue;
            };
            let id = id as ReplicaId;
            let view = &mut self.views[id as usize];
            if view.incarnation != node.incarnation {
                // Restarted: recheck everything it rebuilt from its disk.
                view.incarnation = node.incarnation;
                view.checked_through = node.compacted_through;
                // A promise that was never told (nor used under an own ballot) may be lost
                // with the unsynced batch; one that was told must have survived.
                view.promise_floor = node.promise_told;
            }
            view.promise_floor = view.promise_floor.max(node.promise_told);
            check_promise(id, view, r.promised())?;
            let through = r.chosen_through();
            if through < view.checked_through {
                return Err(Violation::ChosenWentBack {
                    replica: id,
                    before: view.checked_through,
                    after: through,
                });
            }
            if through == view.checked_through {
                continue;
            }
            let first = view.checked_through.max(node.compacted_through) + 1;
            view.checked_through = through;
            for slot in first..=through {
                let Some(value) = r.chosen_value(slot) else {
                    return Err(Violation::MissingChosenValue { replica: id, slot });
                };
                self.check_chosen(id, slot, value)?;
            }
            self.check_applied(id, through, r.kv().digest())?;
        }
        Ok(())
    }

    fn check_chosen(&mut self, id: ReplicaId, slot: Slot, value: &Value) -> Result<(), Violation> {
        match self.chosen.get(&slot) {
            Some((_, v)) if v == value => Ok(()),
            Some((first, v)) => Err(Violation::ConflictingChosen {
                slot,
                first: (*first, v.clone()),
                second: (id, value.clone()),
            }),
            None => {
                self.digest.word(slot);
                self.digest.value(value);
                self.chosen.insert(slot, (id, value.clone()));
                Ok(())
            }
        }
    }

    fn check_applied(&mut self, id: ReplicaId, through: Slot, kv: u64) -> Result<(), Violation> {
        match self.applied_digest.get(&through) {
            Some((_, d)) if *d == kv => Ok(()),
            Some((first, d)) => Err(Violation::DivergentState {
                slot: through,
                first: (*first, *d),
                second: (id, kv),
            }),
            None => {
                self.applied_digest.insert(through, (id, kv));
                Ok(())
            }
        }
    }
}

fn check_promise(id: ReplicaId, view: &mut ReplicaView, promised: Ballot) -> Result<(), Violation> {
    if promised < view.promise_floor {
        return Err(Violation::PromiseWentBack {
            replica: id,
            before: view.promise_floor,
            after: promised,
        });
    }
    view.promise_floor = promised;
    Ok(())
}

/// Every replica is up and holds the same chosen prefix and map.
pub fn check_converged(world: &World) -> Result<(), Violation> {
    let mut seen: Option<(ReplicaId, Slot, u64)> = None;
    for (id, node) in world.nodes().iter().enumerate() {
        let Some(r) = node.replica.as_ref() else {
            return Err(Violation::NoConvergence {
                detail: format!("r{id} is down"),
            });
        };
        let mine = (id as ReplicaId, r.chosen_through(), r.kv().digest());
        match seen {
            None => seen = Some(mine),
            Some(first) if (first.1, first.2) == (mine.1, mine.2) => {}
            Some(first) => {
                return Err(Violation::NoConvergence {
                    detail: format!(
                        "r{} chosen through {} digest {:x}; r{} chosen through {} digest {:x}",
                        first.0, first.1, first.2, mine.0, mine.1, mine.2
                    ),
                })
            }
        }
    }
    Ok(())
}
