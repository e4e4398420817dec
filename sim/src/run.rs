//! One seeded run from start to verdict, and many seeds in parallel.
//!
//! A run has three phases. Faults: everything in the seed's [`FaultProfile`] happens.
//! Calm: faults stop (partitions heal, crashed replicas restart, loss stops) and clients keep
//! working; every operation must complete within [`SimConfig::liveness_bound_steps`].
//! Quiet: clients start nothing new; the replicas must converge. Then the whole client
//! history, plus a read of every key from the converged state, must be linearizable.

use super::checks::{check_converged, SafetyChecker, Violation};
use super::clients::{Clients, ClientsConfig};
use super::digest::mix_seed;
use super::faults::{FaultCounts, FaultProfile};
use super::world::{CoreTunables, World, WorldOptions};
use paxoskv_check::{CheckResult, Completion, KvOp, KvResult};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The client id under which the final audit reads are recorded.
const AUDITOR_CLIENT: u64 = u64::MAX;
/// Failing seeds kept in full in a batch report.
const MAX_FAILURES_KEPT: usize = 10;

/// What to simulate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// Steps (ticks) per run.
    pub steps: u64,
    /// Cluster size; `None` alternates 5 (even seeds) and 3 (odd seeds).
    pub replicas: Option<u32>,
    /// Every acceptor skips the promise check (the self-test: violations must be found).
    /// Needs the `broken-acceptor` feature ([`crate::BROKEN_ACCEPTOR_AVAILABLE`]).
    pub broken_acceptor: bool,
    /// Replicas run with the own-promise bug put back (same feature).
    pub broken_durability: bool,
    /// After a failed sync replicas reload what the page cache shows (same feature).
    pub broken_fsync: bool,
    /// After faults stop, every operation must complete within this many steps.
    pub liveness_bound_steps: u64,
    /// Steps the replicas get to converge after the last operation could complete.
    pub converge_steps: u64,
    /// Keep a trace of the run's last events (slow; for replaying one seed).
    pub trace: bool,
}

impl SimConfig {
    /// Defaults for `steps` steps per run.
    pub fn new(steps: u64) -> SimConfig {
        SimConfig {
            steps,
            replicas: None,
            broken_acceptor: false,
            broken_durability: false,
            broken_fsync: false,
            liveness_bound_steps: 150,
            converge_steps: 100,
            trace: false,
        }
    }

    /// Cluster size used for `seed`.
    pub fn replicas_for(&self, seed: u64) -> u32 {
        self.replicas.unwrap_or(if seed & 1 == 0 { 5 } else { 3 })
    }

    /// Fewest steps that leave room for all three phases.
    pub fn min_steps(&self) -> u64 {
        self.liveness_bound_steps + self.converge_steps + 100
    }

    /// Step at which clients stop starting operations.
    pub fn quiet_step(&self) -> u64 {
        self.steps - self.liveness_bound_steps - self.converge_steps
    }

    /// Step at which faults stop.
    pub fn calm_step(&self) -> u64 {
        self.quiet_step() * 3 / 4
    }

    /// Checks that the phases fit.
    pub fn validate(&self) -> Result<(), String> {
        let broken = self.broken_acceptor || self.broken_durability || self.broken_fsync;
        if broken && !crate::BROKEN_ACCEPTOR_AVAILABLE {
            return Err(
                "--broken-acceptor needs the test-only acceptor, which this build lacks: \
                        build with `--features broken-acceptor`, e.g. `cargo run --release -p \
                        paxoskv-sim --features broken-acceptor -- --broken-acceptor ...`"
                    .to_string(),
            );
        }
        if self.steps < self.min_steps() {
            return Err(format!(
                "--steps {} is too few: at least {} are needed (faults, then {} steps to \
                 complete operations, then {} to converge)",
                self.steps,
                self.min_steps(),
                self.liveness_bound_steps,
                self.converge_steps
            ));
        }
        if let Some(n) = self.replicas {
            if !(1..=paxoskv::quorum::MAX_REPLICAS).contains(&n) {
                return Err(format!("--replicas {n} is out of range"));
            }
        }
        Ok(())
    }
}

/// Where and how a run failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Step at which the violation was found.
    pub step: u64,
    /// What was wrong.
    pub violation: Violation,
}

/// The result of one seed.
#[derive(Clone, Debug)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// Cluster size.
    pub replicas: u32,
    /// Digest of everything that happened; equal digests mean identical runs.
    pub digest: u64,
    /// Faults injected.
    pub faults: FaultCounts,
    /// Client operations in the checked history.
    pub ops_checked: u64,
    /// Compare-and-swaps among them, and how many of those were acknowledged as swapped.
    pub cas_checked: u64,
    /// See `cas_checked`.
    pub cas_swapped: u64,
    /// Slots chosen.
    pub chosen_slots: u64,
    /// The violation, if any.
    pub failure: Option<Failure>,
    /// The linearizability search gave up on a key (neither pass nor fail).
    pub inconclusive: Option<String>,
    /// The last events, when tracing.
    pub trace: Vec<String>,
}

/// Runs one seed.
pub fn run_seed(cfg: &SimConfig, seed: u64) -> SeedReport {
    let mut sim = Simulation::new(cfg, seed);
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| sim.run()));
    let failure = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(violation)) => Some(violation),
        Err(payload) => Some(Violation::Panic {
            message: panic_message(payload),
        }),
    };
    sim.report(seed, failure)
}

/// Aggregate of many seeds.
#[derive(Clone, Debug, Default)]
pub struct BatchReport {
    /// Seeds run.
    pub seeds_run: u64,
    /// Faults injected over all seeds.
    pub faults: FaultCounts,
    /// Client operations checked over all seeds.
    pub ops_checked: u64,
    /// Compare-and-swaps checked over all seeds, and how many of those swapped.
    pub cas_checked: u64,
    /// See `cas_checked`.
    pub cas_swapped: u64,
    /// Slots chosen over all seeds.
    pub chosen_slots: u64,
    /// Seeds that found a violation.
    pub failed_seeds: u64,
    /// Failing seeds by kind of violation.
    pub violations_by_kind: BTreeMap<&'static str, u64>,
    /// Seeds whose history the checker could not decide.
    pub inconclusive_seeds: u64,
    /// The lowest failing seeds, in full.
    pub failures: Vec<SeedReport>,
    /// Digest over every seed's digest, in seed order.
    pub digest: u64,
}

/// Runs `seeds` on `threads` threads; the report does not depend on the thread count.
pub fn run_seeds(cfg: &SimConfig, seeds: Range<u64>, threads: usize) -> BatchReport {
    let next = AtomicU64::new(seeds.start);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= seeds.end {
                    break;
                }
                let report = run_seed(cfg, seed);
                results
                    .lock()
                    .expect("no panics hold this lock")
                    .push(report);
            });
        }
    });
    let mut reports = results.into_inner().expect("no panics hold this lock");
    reports.sort_by_key(|r| r.seed);
    summarize(reports)
}

fn summarize(reports: Vec<SeedReport>) -> BatchReport {
    let mut batch = BatchReport::default();
    let mut digest = super::digest::RunDigest::default();
    for r in reports {
        batch.seeds_run += 1;
        batch.faults.add(&r.faults);
        batch.ops_checked += r.ops_checked;
        batch.cas_checked += r.cas_checked;
        batch.cas_swapped += r.cas_swapped;
        batch.chosen_slots += r.chosen_slots;
        batch.inconclusive_seeds += u64::from(r.inconclusive.is_some());
        digest.word(r.digest);
        if let Some(f) = &r.failure {
            batch.failed_seeds += 1;
            *batch
                .violations_by_kind
                .entry(f.violation.kind())
                .or_default() += 1;
            if batch.failures.len() < MAX_FAILURES_KEPT {
                batch.failures.push(r);
            }
        }
    }
    batch.digest = digest.finish();
    batch
}

/// One run in progress.
struct Simulation<'c> {
    cfg: &'c SimConfig,
    world: World,
    clients: Clients,
    checker: SafetyChecker,
    inconclusive: Option<String>,
}

impl<'c> Simulation<'c> {
    fn new(cfg: &'c SimConfig, seed: u64) -> Simulation<'c> {
        let replicas = cfg.replicas_for(seed);
        let mut rng = StdRng::seed_from_u64(mix_seed(seed, 3));
        let profile = FaultProfile::random(&mut rng, replicas);
        let clients_cfg = ClientsConfig {
            clients: rng.gen_range(2..=5),
            keys: rng.gen_range(1..=4),
            timeout_steps: 40,
            think_max_steps: 10,
        };
        let world = World::new(WorldOptions {
            replicas,
            seed,
            profile,
            tunables: CoreTunables::random(&mut rng),
            broken_acceptor: cfg.broken_acceptor,
            broken_durability: cfg.broken_durability,
            broken_fsync: cfg.broken_fsync,
            trace: cfg.trace,
        });
        Simulation {
            cfg,
            world,
            clients: Clients::new(clients_cfg, replicas, seed),
            checker: SafetyChecker::new(replicas),
            inconclusive: None,
        }
    }

    fn run(&mut self) -> Result<(), Violation> {
        let (calm, quiet) = (self.cfg.calm_step(), self.cfg.quiet_step());
        for step in 1..=self.cfg.steps {
            self.world.step()?;
            if step == calm {
                self.world.stop_faults()?;
                self.clients.set_leasing(false);
            }
            if step == quiet {
                self.clients.set_issuing(false);
            }
            self.clients.step(&mut self.world)?;
            self.checker.check(&self.world)?;
            if step >= calm {
                let bound = self.cfg.liveness_bound_steps;
                self.clients.check_liveness(step, calm, bound)?;
            }
        }
        check_converged(&self.world)?;
        self.audit_final_state();
        self.check_history()
    }

    /// Records a read of every key from the converged state at the last step, so a write
    /// that was acknowledged but later lost shows up even if no client read it again.
    fn audit_final_state(&mut self) {
        let now = self.world.now_step();
        let Some(r) = self.world.nodes()[0].replica.as_ref() else {
            return;
        };
        let finals: Vec<(String, Option<Vec<u8>>)> = self
            .clients
            .keys()
            .iter()
            .map(|k| (k.clone(), r.read_local(k).map(<[u8]>::to_vec)))
            .collect();
        let history = self.clients.history_mut();
        for (key, value) in finals {
            let id = history.invoke(AUDITOR_CLIENT, KvOp::Get { key }, now);
            history.complete(id, Completion::Ok(KvResult::Get(value)), now);
        }
    }

    fn check_history(&mut self) -> Result<(), Violation> {
        match paxoskv_check::check(self.clients.history()) {
            CheckResult::Ok { .. } => Ok(()),
            CheckResult::Err(v) => Err(Violation::NotLinearizable {
                report: v.to_string(),
            }),
            CheckResult::Inconclusive { key, reason } => {
                self.inconclusive = Some(format!("key {key:?}: {reason}"));
                Ok(())
            }
        }
    }

    fn report(mut self, seed: u64, violation: Option<Violation>) -> SeedReport {
        let step = self.world.now_step();
        let mut digest = *self.world.digest();
        digest.word(self.checker.digest());
        for node in self.world.nodes() {
            if let Some(r) = &node.replica {
                digest.word(r.chosen_through());
                digest.word(r.kv().digest());
            }
        }
        let ops = self.clients.history().ops();
        let cas = ops.iter().filter(|o| matches!(o.op, KvOp::Cas { .. }));
        let cas_checked = cas.clone().count() as u64;
        let swapped = Completion::Ok(KvResult::Cas { succeeded: true });
        let cas_swapped = cas.filter(|o| o.completion == swapped).count() as u64;
        SeedReport {
            seed,
            replicas: self.world.replicas(),
            digest: digest.finish(),
            faults: self.world.counts().clone(),
            ops_checked: self.clients.history().len() as u64,
            cas_checked,
            cas_swapped,
            chosen_slots: self.checker.chosen_slots() as u64,
            failure: violation.map(|violation| Failure { step, violation }),
            inconclusive: self.inconclusive.take(),
            trace: self.world.take_trace(),
        }
    }
}

thread_local! {
    /// Where the last panic on this thread happened, recorded by [`quiet_panics`]' hook.
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Replaces the panic hook with one that prints nothing and remembers the location, so a
/// batch in which replicas panic (the broken acceptor trips assertions) reports each panic
/// once, inside its seed's failure, instead of flooding stderr.
pub fn quiet_panics() {
    panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()));
        PANIC_LOCATION.with(|p| *p.borrow_mut() = location);
    }));
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic)".to_string());
    match PANIC_LOCATION.with(|p| p.borrow_mut().take()) {
        Some(location) => format!("{text} at {location}"),
        None => text,
    }
}
