//! `paxoskv-nemesis`: a Jepsen-style fault test of real `paxoskv-server` processes.
//!
//! It starts a five-replica cluster on loopback ports, runs concurrent client sessions doing
//! random puts, gets and deletes while it kills (`kill -9`), pauses (SIGSTOP), partitions
//! (`set_partition`) and degrades (`-f`) replicas one at a time, then heals everything, waits
//! for the replicas to agree, reads every key, and checks the recorded history for
//! linearizability. It prints one summary line ending in `result=PASS` or `result=FAIL` and
//! exits non-zero on FAIL.
//!
//! ```text
//! paxoskv-nemesis --duration 60s --clients 4 --keys 8 --seed 7 --faults kill,stop,partition,drop
//! paxoskv-nemesis --check-history history.json     # re-check a history kept by --keep-data
//! ```

mod nemesis;

use anyhow::{Context, Result};
use clap::Parser;
use nemesis::faults::FaultKind;
use nemesis::load::OpCounts;
use nemesis::verdict::{check_history, Report};
use nemesis::Settings;
use paxoskv_check::History;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Fault-injection test of a real paxoskv cluster with a linearizability check.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// How long to inject faults (the run takes ~10-40 s longer: startup, heal, checks).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrent client sessions.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    clients: u64,
    /// Size of the key set (k0, k1, ...).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1000))]
    keys: u64,
    /// Seed of the fault schedule and the clients' choices (random if absent; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// The paxoskv-server binary (default: the one next to this executable).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Extra argument for every server (repeatable), e.g.
    /// `--server-arg=--snapshot-every-slots=500` to exercise snapshots under faults.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    server_arg: Vec<String>,
    /// Faults to inject, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "kill,stop,partition,drop"
    )]
    faults: Vec<FaultKind>,
    /// Keep the data directory (replica data, server logs, history.json) after the run.
    #[arg(long)]
    keep_data: bool,
    /// Do not run a cluster: check a recorded history (JSON, as kept by --keep-data).
    #[arg(long, value_name = "FILE")]
    check_history: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let report = match &args.check_history {
        Some(path) => replay(path),
        None => live(&args),
    };
    match report {
        Ok(report) => {
            println!("{}", report.summary_line());
            for reason in report.reasons() {
                println!("{reason}");
            }
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            println!("nemesis: error, result=FAIL");
            println!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn live(args: &Args) -> Result<Report> {
    let server_bin = match &args.server_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("cannot find this executable")?
            .with_file_name("paxoskv-server"),
    };
    let settings = Settings {
        duration: args.duration,
        clients: args.clients as usize,
        keys: args.keys as usize,
        seed: args.seed.unwrap_or_else(rand::random),
        server_bin,
        server_args: args.server_arg.clone(),
        faults: args.faults.clone(),
        keep_data: args.keep_data,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(async {
        // Dropping the run on Ctrl-C drops its cluster, which kills the servers.
        tokio::select! {
            report = nemesis::run(&settings) => report,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    report
}

/// Re-checks a recorded history with the same verdict code as a live run.
fn replay(path: &Path) -> Result<Report> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let history: History = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a history", path.display()))?;
    Ok(Report {
        ops: OpCounts::of(&history),
        faults: None,
        converged: None,
        linearizable: check_history(&history),
        problems: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nemesis::faults::FaultCounts;
    use nemesis::verdict::Linearizability;
    use paxoskv_check::{Completion, KvOp, KvResult};

    fn put(h: &mut History, client: u64, key: &str, value: &str, t0: u64, t1: u64) {
        let op = KvOp::Put {
            key: key.into(),
            value: value.into(),
        };
        let id = h.invoke(client, op, t0);
        h.complete(id, Completion::Ok(KvResult::Put), t1);
    }

    fn get(h: &mut History, client: u64, key: &str, seen: Option<&str>, t0: u64, t1: u64) {
        let id = h.invoke(client, KvOp::Get { key: key.into() }, t0);
        let value = seen.map(|s| s.as_bytes().to_vec());
        h.complete(id, Completion::Ok(KvResult::Get(value)), t1);
    }

    fn report(history: &History) -> Report {
        Report {
            ops: OpCounts::of(history),
            faults: Some(FaultCounts::default()),
            converged: Some(true),
            linearizable: check_history(history),
            problems: Vec::new(),
        }
    }

    #[test]
    fn a_stale_read_fails_the_run() {
        let mut h = History::new();
        put(&mut h, 0, "k0", "c0-0", 0, 10);
        put(&mut h, 0, "k0", "c0-1", 20, 30);
        get(&mut h, 1, "k0", Some("c0-1"), 40, 50);
        get(&mut h, 2, "k0", Some("c0-0"), 60, 70); // overwritten before it began
        let r = report(&h);
        assert!(matches!(r.linearizable, Linearizability::No(ref t) if t.contains("stale read")));
        assert!(!r.passed());
        let line = r.summary_line();
        assert!(line.ends_with("linearizable=no, result=FAIL"), "{line}");
    }

    #[test]
    fn unknown_writes_may_land_late_but_acknowledged_ones_may_not_vanish() {
        let mut h = History::new();
        put(&mut h, 0, "k0", "c0-0", 0, 10);
        let late = h.invoke(
            1,
            KvOp::Put {
                key: "k0".into(),
                value: "c1-0".into(),
            },
            5,
        );
        h.unknown(late);
        get(&mut h, 2, "k0", Some("c1-0"), 100, 110); // the unknown put landed late: fine
        assert_eq!(report(&h).linearizable, Linearizability::Yes);

        let mut lost = History::new();
        put(&mut lost, 0, "k0", "c0-0", 0, 10);
        get(&mut lost, 2, "k0", None, 20, 30); // acknowledged put gone
        assert!(matches!(report(&lost).linearizable, Linearizability::No(_)));
    }

    #[test]
    fn summary_line_has_the_agreed_shape() {
        let mut h = History::new();
        put(&mut h, 0, "k0", "c0-0", 0, 10);
        get(&mut h, 1, "k0", Some("c0-0"), 20, 30);
        let mut r = report(&h);
        r.faults = Some(FaultCounts {
            kill: 1,
            stop: 2,
            partition: 3,
            drop: 4,
        });
        assert_eq!(
            r.summary_line(),
            "nemesis: ops ok=2 failed=0 unknown=0, faults kill=1 stop=2 partition=3 drop=4, \
             replicas converged=yes, linearizable=yes, result=PASS"
        );
        r.converged = Some(false);
        assert!(r
            .summary_line()
            .ends_with("converged=no, linearizable=yes, result=FAIL"));
    }
}
