//! The verdict: the linearizability check of the recorded history plus everything else that
//! must hold, and the one-line summary.

use super::faults::FaultCounts;
use super::load::OpCounts;
use paxoskv_check::{check, CheckResult, History};

/// What the checker said about the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Linearizability {
    Yes,
    /// A violation, with the checker's report.
    No(String),
    /// The checker could not decide (search limit or malformed history).
    Undecided(String),
}

impl Linearizability {
    fn word(&self) -> &'static str {
        match self {
            Linearizability::Yes => "yes",
            Linearizability::No(_) => "no",
            Linearizability::Undecided(_) => "undecided",
        }
    }
}

/// Checks a recorded history (the one function both the live run and `--check-history` use).
pub fn check_history(history: &History) -> Linearizability {
    match check(history) {
        CheckResult::Ok { .. } => Linearizability::Yes,
        CheckResult::Err(violation) => Linearizability::No(violation.to_string()),
        CheckResult::Inconclusive { key, reason } => {
            Linearizability::Undecided(format!("key {key:?} could not be decided: {reason}"))
        }
    }
}

/// The outcome of a run (or of a replayed history, which has no faults or replicas).
#[derive(Clone, Debug)]
pub struct Report {
    pub ops: OpCounts,
    pub faults: Option<FaultCounts>,
    /// Whether the replicas ended with the same applied_through and map_digest.
    pub converged: Option<bool>,
    pub linearizable: Linearizability,
    /// Other failures: server crashes, failed restarts, final reads that never succeeded...
    pub problems: Vec<String>,
}

impl Report {
    /// PASS: linearizable, converged, and nothing else went wrong.
    pub fn passed(&self) -> bool {
        self.linearizable == Linearizability::Yes
            && self.converged != Some(false)
            && self.problems.is_empty()
    }

    /// `nemesis: ops ok=.. failed=.. unknown=.., faults kill=.. ..., replicas converged=yes,
    /// linearizable=yes, result=PASS`
    pub fn summary_line(&self) -> String {
        let mut line = format!(
            "nemesis: ops ok={} failed={} unknown={}",
            self.ops.ok, self.ops.failed, self.ops.unknown
        );
        if let Some(faults) = &self.faults {
            line.push_str(&format!(", faults {faults}"));
        }
        if let Some(converged) = self.converged {
            let word = if converged { "yes" } else { "no" };
            line.push_str(&format!(", replicas converged={word}"));
        }
        line.push_str(&format!(
            ", linearizable={}, result={}",
            self.linearizable.word(),
            if self.passed() { "PASS" } else { "FAIL" }
        ));
        line
    }

    /// Why the run failed, one entry per reason (empty on PASS).
    pub fn reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        match &self.linearizable {
            Linearizability::Yes => {}
            Linearizability::No(text) | Linearizability::Undecided(text) => {
                reasons.push(text.clone())
            }
        }
        reasons.extend(self.problems.iter().cloned());
        reasons
    }
}
