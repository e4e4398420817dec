//! The deterministic simulator, run as tests: healthy clusters survive a sample of seeds of
//! faults, a deliberately broken acceptor is caught, and a seed replays bit for bit.
//!
//! CI runs the full budget in release (`paxoskv-sim --seeds 1..2001 --steps 3000`, and the
//! broken-acceptor self-test over the same seeds); these debug-mode tests run a few seeds so
//! `cargo test` stays quick.

use paxoskv_sim::{run_seed, run_seeds, BatchReport, SimConfig};

/// Steps per run: the CI length, so the seeds here are the CI's first seeds.
const STEPS: u64 = 3000;
/// Healthy seeds run by `cargo test` (~0.1 s each in debug); the sweep is `.ci/run`'s job.
const HEALTHY_SEEDS: u64 = if cfg!(debug_assertions) { 40 } else { 200 };
/// Seeds searched for a violation with the broken acceptor (the first catch comes early).
#[cfg(feature = "broken-acceptor")]
const BROKEN_SEEDS: u64 = 400;

fn describe(batch: &BatchReport) -> String {
    let Some(r) = batch.failures.first() else {
        return "no failures".to_string();
    };
    let f = r.failure.as_ref().expect("failures hold a failure");
    format!(
        "{} failing seeds; seed {} failed at step {}: {}\nreplay: cargo run --release -p \
         paxoskv-sim -- --seed {} --steps {STEPS}",
        batch.failed_seeds, r.seed, f.step, f.violation, r.seed
    )
}

#[test]
fn healthy_cluster_survives_faults() {
    let cfg = SimConfig::new(STEPS);
    let batch = run_seeds(&cfg, 1..1 + HEALTHY_SEEDS, 2);
    assert_eq!(batch.failed_seeds, 0, "{}", describe(&batch));
    assert_eq!(batch.inconclusive_seeds, 0);
    assert_eq!(batch.seeds_run, HEALTHY_SEEDS);
    // The runs must actually exercise something.
    assert!(batch.ops_checked > 100 * HEALTHY_SEEDS, "{batch:?}");
    let f = &batch.faults;
    for (kind, n) in [
        ("loss", f.dropped),
        ("partition", f.partitions),
        ("one-way", f.one_way),
        ("crash", f.crashes),
        ("torn crash", f.torn_crashes),
        ("pause", f.pauses),
        ("snapshot install", f.installs),
        ("duplicate", f.duplicated),
    ] {
        assert!(n > 0, "no {kind} faults injected: {f}");
    }
}

/// The seeds that once found core bugs (see `found_by_the_simulator`), run whole: the healthy
/// sweep above no longer reaches them.
#[test]
fn seeds_that_found_bugs_stay_healthy() {
    let cfg = SimConfig::new(STEPS);
    for seed in [19, 54, 233, 40835] {
        let report = run_seed(&cfg, seed);
        assert!(
            report.failure.is_none(),
            "seed {seed}: {:?}\nreplay: cargo run --release -p paxoskv-sim -- --seed {seed} \
             --steps {STEPS}",
            report.failure
        );
        assert!(
            report.inconclusive.is_none(),
            "seed {seed}: {:?}",
            report.inconclusive
        );
    }
}

/// Needs the core's test-only acceptor: `cargo test -p paxoskv-sim --features broken-acceptor`.
#[cfg(feature = "broken-acceptor")]
#[test]
fn broken_acceptor_is_caught() {
    let mut cfg = SimConfig::new(STEPS);
    cfg.broken_acceptor = true;
    let found = (1..=BROKEN_SEEDS).find_map(|seed| run_seed(&cfg, seed).failure.map(|f| (seed, f)));
    let (seed, failure) = found.unwrap_or_else(|| {
        panic!("an acceptor that ignores its promise went unnoticed for {BROKEN_SEEDS} seeds")
    });
    println!(
        "broken acceptor caught by seed {seed} at step {}: {}",
        failure.step, failure.violation
    );
}

/// A replica that trusts the page cache after a failed fsync (instead of cutting its log back
/// to the synced length) forgets promises at the next machine crash; the checker must see it.
#[cfg(feature = "broken-acceptor")]
#[test]
fn broken_fsync_is_caught() {
    let mut cfg = SimConfig::new(STEPS);
    cfg.broken_fsync = true;
    let found = (1..=BROKEN_SEEDS).find_map(|seed| run_seed(&cfg, seed).failure.map(|f| (seed, f)));
    let (seed, failure) = found.unwrap_or_else(|| {
        panic!(
            "trusting the page cache after a failed fsync went unnoticed for {BROKEN_SEEDS} seeds"
        )
    });
    println!(
        "broken fsync caught by seed {seed} at step {}: {}",
        failure.step, failure.violation
    );
}

#[test]
fn a_seed_replays_bit_for_bit() {
    let cfg = SimConfig::new(STEPS);
    let first = run_seed(&cfg, 42);
    let again = run_seed(&cfg, 42);
    assert!(first.failure.is_none(), "{:?}", first.failure);
    assert_eq!(first.digest, again.digest);
    assert_eq!(first.faults, again.faults);
    assert_eq!(first.ops_checked, again.ops_checked);
    let other = run_seed(&cfg, 43);
    assert_ne!(
        first.digest, other.digest,
        "different seeds, different runs"
    );
}

// Regressions for the core bugs the simulator found, pinned down without it.

mod found_by_the_simulator {
    use paxoskv::message::{Accept, ChosenEntries, Learn, Prepare, Promise, Request, Response};
    use paxoskv::{Ballot, Command, CommandId, Config, Op, PeerToken, Replica, Value};

    fn value(key: &str) -> Value {
        Value {
            commands: vec![Command {
                id: CommandId {
                    client_id: 1,
                    seq: 1,
                },
                op: Op::Delete { key: key.into() },
            }],
        }
    }

    fn promise_of(response: &Response) -> &Promise {
        match response {
            Response::Promise(p) => p,
            other => panic!("expected a promise, got {other:?}"),
        }
    }

    /// Found by seed 54 (69 of the first 2,000 seeds hit it): a pre-vote answer arriving late carries the candidate's
    /// ballot but no accepted entries. Counted as a phase-1 promise it let the candidate
    /// finish phase 1 without the value a majority had accepted, and choose a no-op over it.
    #[test]
    fn a_late_pre_vote_answer_is_not_a_promise() {
        let mut r = Replica::new(Config::new(0, 3));
        let mut probe = None;
        for _ in 0..200 {
            r.tick();
            let ready = r.ready();
            probe = ready.messages.iter().find_map(|m| match &m.request {
                Request::Prepare(p) if p.probe => Some(p.clone()),
                _ => None,
            });
            if probe.is_some() {
                break;
            }
        }
        let probe = probe.expect("an election within 200 ticks");
        let yes = |from_probe: bool, accepted| Promise {
            ballot: probe.ballot,
            accepted,
            chosen_through: 0,
            probe: from_probe,
        };
        r.handle_response(1, Response::Promise(yes(true, vec![])));
        assert!(!r.is_leader(), "the probe round only opens phase 1");
        // Our own promise counts once `Promised(ballot)` is durable.
        let batch = r.ready().batch.expect("the own promise is persisted");
        r.on_persisted(batch);
        // Replica 2's pre-vote answer arrives late, after phase 1 began.
        r.handle_response(2, Response::Promise(yes(true, vec![])));
        assert!(
            !r.is_leader(),
            "a pre-vote answer must not count as a promise"
        );
        let accepted = paxoskv::message::AcceptedEntry {
            slot: 1,
            ballot: Ballot {
                round: 0,
                replica: 2,
            },
            value: value("k"),
        };
        r.handle_response(2, Response::Promise(yes(false, vec![accepted])));
        assert!(r.is_leader());
        let ready = r.ready();
        let reproposed = ready.messages.iter().any(
            |m| matches!(&m.request, Request::Accept(a) if a.slot == 1 && a.value == value("k")),
        );
        assert!(
            reproposed,
            "the accepted value must be re-proposed: {ready:?}"
        );
    }

    /// Found by seeds 19 and 233: a replica that knows a slot is chosen, but not yet every slot
    /// before it, left that slot out of its promise, so a new leader could fill it anew.
    #[test]
    fn a_promise_reports_values_known_chosen_out_of_order() {
        let mut r = Replica::new(Config::new(1, 3));
        let old = Ballot {
            round: 1,
            replica: 0,
        };
        let accept = Accept {
            ballot: old,
            slot: 2,
            value: value("x"),
            commit: 0,
        };
        r.handle_request(0, PeerToken(1), Request::Accept(accept));
        // The leader says slots up to 2 are chosen; slot 1 never arrived here.
        let learn = Learn {
            ballot: old,
            commit: 2,
            round: 1,
        };
        r.handle_request(0, PeerToken(2), Request::Learn(learn));
        assert_eq!(r.chosen_through(), 0);
        assert_eq!(r.chosen_value(2), Some(&value("x")));
        let prepare = Prepare {
            ballot: Ballot {
                round: 2,
                replica: 2,
            },
            first_unchosen: 1,
            probe: false,
        };
        r.handle_request(2, PeerToken(3), Request::Prepare(prepare));
        let batch = r.ready().batch.expect("accepted and promised records");
        r.on_persisted(batch);
        let ready = r.ready();
        let promise = promise_of(&ready.responses.last().expect("an answer").1);
        let reported: Vec<_> = promise
            .accepted
            .iter()
            .map(|e| (e.slot, &e.value))
            .collect();
        assert_eq!(reported, vec![(2, &value("x"))]);
    }

    /// Found by seed 40835 (and 3 more of 50,000): a new leader learned from one peer that
    /// slot 187 was chosen but kept fetching it from another, lagging peer, whose empty
    /// answers reset the fetch to the same peer forever. Reads and writes stalled.
    #[test]
    fn a_learner_stops_asking_a_peer_that_has_nothing_new() {
        let mut r = Replica::new(Config::new(2, 3));
        let leader = Ballot {
            round: 1,
            replica: 0,
        };
        let learn = Learn {
            ballot: leader,
            commit: 5,
            round: 1,
        };
        r.handle_request(0, PeerToken(1), Request::Learn(learn));
        let mut asked = Vec::new();
        for _ in 0..20 {
            let ready = r.ready();
            let Some(to) = ready
                .messages
                .iter()
                .find(|m| matches!(m.request, Request::FetchChosen(_)))
                .map(|m| m.to)
            else {
                r.tick();
                continue;
            };
            asked.push(to);
            if to == 1 {
                return;
            }
            // Replica 0 answers, but knows nothing past our prefix.
            let nothing = ChosenEntries {
                from_slot: 1,
                values: Vec::new(),
                chosen_through: 0,
                snapshot_needed: false,
            };
            r.handle_response(to, Response::Chosen(nothing));
        }
        panic!("only ever asked {asked:?} for slots 1..=5");
    }
}
