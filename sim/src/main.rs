//! `paxoskv-sim`: runs the deterministic simulator over a range of seeds and prints one
//! summary line; on a violation also the seed, the violation and the command that replays
//! exactly that seed, and exits non-zero.
//!
//! ```text
//! paxoskv-sim --seeds 1..2000 --steps 3000 [--replicas 5]
//! paxoskv-sim --seed 17 --steps 3000 --trace     # replay one seed, print its last events
//! # self-test, exits 0; needs `cargo run -p paxoskv-sim --features broken-acceptor`:
//! paxoskv-sim --seeds 1..2001 --broken-acceptor --expect-violation
//! ```

use clap::Parser;
use paxoskv_sim::{quiet_panics, run_seed, run_seeds, BatchReport, SeedReport, SimConfig};
use std::ops::Range;
use std::process::ExitCode;
use std::time::Instant;

/// Deterministic simulation of paxoskv cores under faults, checked for safety, liveness and
/// linearizability. Exits 0 when the outcome is the expected one, 1 when not, 2 on bad usage.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// Seeds to run: `A..B` (B excluded) or `A..=B` (B included).
    #[arg(long, value_name = "A..B", default_value = "1..2001", value_parser = parse_range)]
    seeds: Range<u64>,
    /// Run this one seed only (same as `--seeds N..=N`); overrides --seeds.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Steps (ticks) per run.
    #[arg(long, value_name = "N", default_value_t = 3000)]
    steps: u64,
    /// Cluster size (default: 5 for even seeds, 3 for odd seeds).
    #[arg(long, value_name = "N")]
    replicas: Option<u32>,
    /// Every acceptor skips the promise check, so violations must be found (the self-test).
    /// Needs a build with `--features broken-acceptor`.
    #[arg(long)]
    broken_acceptor: bool,
    /// Replicas send under their own ballot before its promise is durable and count their
    /// own promise at once (the own-promise bug), so violations must be found. Needs a build
    /// with `--features broken-acceptor`.
    #[arg(long)]
    broken_durability: bool,
    /// After a failed sync, replicas trust the page cache (reload the unsynced batch as if it
    /// were durable) instead of cutting the log back, so violations must be found. Needs a
    /// build with `--features broken-acceptor`.
    #[arg(long)]
    broken_fsync: bool,
    /// Succeed only if a violation IS found (the self-test with --broken-acceptor).
    #[arg(long)]
    expect_violation: bool,
    /// Seeds run in parallel (default: the number of CPUs).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// After faults stop, every operation must complete within this many steps.
    #[arg(long, value_name = "N")]
    liveness_bound_steps: Option<u64>,
    /// Replay one seed (use --seed N) with tracing on and print its last events.
    #[arg(long)]
    trace: bool,
}

/// Parsed and validated command line.
struct Args {
    seeds: Range<u64>,
    cfg: SimConfig,
    threads: usize,
    /// Succeed only if a violation IS found (the self-test with `--broken-acceptor`).
    expect_violation: bool,
}

fn main() -> ExitCode {
    let args = match Args::from_cli(Cli::parse()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("paxoskv-sim: {e}");
            return ExitCode::from(2);
        }
    };
    quiet_panics();
    if args.cfg.trace {
        return trace_one(&args);
    }
    let started = Instant::now();
    let batch = run_seeds(&args.cfg, args.seeds.clone(), args.threads);
    let elapsed_s = started.elapsed().as_secs_f64();
    println!("{}", summary_line(&args, &batch, elapsed_s));
    if batch.failed_seeds > 0 {
        print_failures(&args.cfg, &batch);
    }
    let found = batch.failed_seeds > 0;
    if found == args.expect_violation {
        ExitCode::SUCCESS
    } else {
        if args.expect_violation {
            println!("expected a violation, found none");
        }
        ExitCode::FAILURE
    }
}

/// Replays a single seed with tracing on and prints its last events.
fn trace_one(args: &Args) -> ExitCode {
    if args.seeds.end - args.seeds.start != 1 {
        eprintln!("paxoskv-sim: --trace replays one seed; use --seed N");
        return ExitCode::from(2);
    }
    let report = run_seed(&args.cfg, args.seeds.start);
    for line in &report.trace {
        println!("{line}");
    }
    println!(
        "seed {} replicas {} digest {:016x} ops {} faults: {}",
        report.seed, report.replicas, report.digest, report.ops_checked, report.faults
    );
    match &report.failure {
        None => ExitCode::SUCCESS,
        Some(f) => {
            println!("VIOLATION at step {}: {}", f.step, f.violation);
            ExitCode::FAILURE
        }
    }
}

fn on_off(on: bool) -> &'static str {
    if on {
        "ON"
    } else {
        "off"
    }
}

fn summary_line(args: &Args, batch: &BatchReport, elapsed_s: f64) -> String {
    let replicas = match args.cfg.replicas {
        Some(n) => n.to_string(),
        None => "5/3 alternating".to_string(),
    };
    format!(
        "paxoskv-sim: {} seeds ({}..{}) x {} steps, replicas {}, broken-acceptor {}, \
         broken-durability {}, broken-fsync {}, faults [{}], client ops checked {} (compare-and-swaps {}, {} swapped), slots chosen {}, inconclusive {}, violations {}{}, \
         digest {:016x}, {:.1}s",
        batch.seeds_run,
        args.seeds.start,
        args.seeds.end,
        args.cfg.steps,
        replicas,
        on_off(args.cfg.broken_acceptor),
        on_off(args.cfg.broken_durability),
        on_off(args.cfg.broken_fsync),
        batch.faults,
        batch.ops_checked,
        batch.cas_checked,
        batch.cas_swapped,
        batch.chosen_slots,
        batch.inconclusive_seeds,
        batch.failed_seeds,
        by_kind(batch),
        batch.digest,
        elapsed_s
    )
}

/// ` [kind=count ...]` when there are violations.
fn by_kind(batch: &BatchReport) -> String {
    if batch.violations_by_kind.is_empty() {
        return String::new();
    }
    let kinds: Vec<String> = batch
        .violations_by_kind
        .iter()
        .map(|(kind, n)| format!("{kind}={n}"))
        .collect();
    format!(" [{}]", kinds.join(" "))
}

fn print_failures(cfg: &SimConfig, batch: &BatchReport) {
    println!(
        "{} failing seeds; the first {}:",
        batch.failed_seeds,
        batch.failures.len()
    );
    for r in &batch.failures {
        if let Some(f) = &r.failure {
            let text = f.violation.to_string();
            let first_line: String = text
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(160)
                .collect();
            println!("  seed {} step {}: {first_line}", r.seed, f.step);
        }
    }
    if let Some(first) = batch.failures.first() {
        print_failure(cfg, first);
    }
}

fn print_failure(cfg: &SimConfig, r: &SeedReport) {
    let Some(f) = &r.failure else { return };
    println!(
        "FAILED seed {} ({} replicas) at step {}: {}",
        r.seed, r.replicas, f.step, f.violation
    );
    let features = if cfg.broken_acceptor || cfg.broken_durability || cfg.broken_fsync {
        " --features broken-acceptor"
    } else {
        ""
    };
    let mut replay = format!(
        "cargo run --release -p paxoskv-sim{features} -- --seed {} --steps {}",
        r.seed, cfg.steps
    );
    if let Some(n) = cfg.replicas {
        replay.push_str(&format!(" --replicas {n}"));
    }
    if cfg.broken_acceptor {
        replay.push_str(" --broken-acceptor");
    }
    if cfg.broken_durability {
        replay.push_str(" --broken-durability");
    }
    if cfg.broken_fsync {
        replay.push_str(" --broken-fsync");
    }
    if cfg.liveness_bound_steps != SimConfig::new(cfg.steps).liveness_bound_steps {
        replay.push_str(&format!(
            " --liveness-bound-steps {}",
            cfg.liveness_bound_steps
        ));
    }
    println!("replay: {replay}");
    println!("trace:  {replay} --trace");
}

impl Args {
    fn from_cli(cli: Cli) -> Result<Args, String> {
        let seeds = match cli.seed {
            Some(n) => n..n.checked_add(1).ok_or("--seed is too large")?,
            None => cli.seeds,
        };
        let mut cfg = SimConfig::new(cli.steps);
        cfg.replicas = cli.replicas;
        cfg.broken_acceptor = cli.broken_acceptor;
        cfg.broken_durability = cli.broken_durability;
        cfg.broken_fsync = cli.broken_fsync;
        cfg.trace = cli.trace;
        if let Some(n) = cli.liveness_bound_steps {
            cfg.liveness_bound_steps = n;
        }
        cfg.validate()?;
        if seeds.is_empty() {
            return Err(format!("empty seed range {}..{}", seeds.start, seeds.end));
        }
        let threads = cli
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1);
        Ok(Args {
            seeds,
            cfg,
            threads,
            expect_violation: cli.expect_violation,
        })
    }
}

/// `A..B` (B excluded) or `A..=B` (B included).
fn parse_range(text: &str) -> Result<Range<u64>, String> {
    let (start, end) = text
        .split_once("..")
        .ok_or_else(|| format!("--seeds wants A..B, got {text:?}"))?;
    let start = parse_u64("--seeds", start)?;
    let end = match end.strip_prefix('=') {
        Some(inclusive) => parse_u64("--seeds", inclusive)?
            .checked_add(1)
            .ok_or_else(|| format!("--seeds {text:?} is too large"))?,
        None => parse_u64("--seeds", end)?,
    };
    Ok(start..end)
}

fn parse_u64(flag: &str, text: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| format!("{flag} wants a number, got {text:?}"))
}
