//! `paxoskv-sim`: runs the deterministic simulator over a range of seeds and prints one
//! summary line; on a violation also the seed, the violation and the command that replays
//! exactly that seed, and exits non-zero.
//!
//! ```text
//! paxoskv-sim --seeds 1..2000 --steps 3000 [--replicas 5] [--broken-acceptor]
//! paxoskv-sim --seed 17 --steps 3000 --trace     # replay one seed, print its last events
//! paxoskv-sim --seeds 1..2001 --broken-acceptor --expect-violation   # self-test, exits 0
//! ```

use paxoskv::sim::{quiet_panics, run_seed, run_seeds, BatchReport, SeedReport, SimConfig};
use std::ops::Range;
use std::process::ExitCode;
use std::time::Instant;

const USAGE: &str = "usage: paxoskv-sim [--seeds A..B | --seeds A..=B | --seed N] [--steps N] \
[--replicas N] [--broken-acceptor] [--expect-violation] [--threads N] [--liveness-bound-steps N] \
[--trace]";

/// Parsed command line.
struct Args {
    seeds: Range<u64>,
    cfg: SimConfig,
    threads: usize,
    /// Succeed only if a violation IS found (the self-test with `--broken-acceptor`).
    expect_violation: bool,
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1).collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("paxoskv-sim: {e}\n{USAGE}");
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

fn summary_line(args: &Args, batch: &BatchReport, elapsed_s: f64) -> String {
    let replicas = match args.cfg.replicas {
        Some(n) => n.to_string(),
        None => "5/3 alternating".to_string(),
    };
    format!(
        "paxoskv-sim: {} seeds ({}..{}) x {} steps, replicas {}, broken-acceptor {}, \
         faults [{}], client ops checked {}, slots chosen {}, inconclusive {}, violations {}{}, \
         digest {:016x}, {:.1}s",
        batch.seeds_run,
        args.seeds.start,
        args.seeds.end,
        args.cfg.steps,
        replicas,
        if args.cfg.broken_acceptor {
            "ON"
        } else {
            "off"
        },
        batch.faults,
        batch.ops_checked,
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
    let mut replay = format!(
        "cargo run --release -p paxoskv --bin paxoskv-sim -- --seed {} --steps {}",
        r.seed, cfg.steps
    );
    if let Some(n) = cfg.replicas {
        replay.push_str(&format!(" --replicas {n}"));
    }
    if cfg.broken_acceptor {
        replay.push_str(" --broken-acceptor");
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

fn parse_args(argv: Vec<String>) -> Result<Args, String> {
    let mut seeds = 1..2001;
    let mut cfg = SimConfig::new(3000);
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut expect_violation = false;
    let mut it = argv.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--seeds" => seeds = parse_range(&value()?)?,
            "--seed" => {
                let n = parse_u64("--seed", &value()?)?;
                seeds = n..n + 1;
            }
            "--steps" => cfg.steps = parse_u64("--steps", &value()?)?,
            "--replicas" => cfg.replicas = Some(parse_u64("--replicas", &value()?)? as u32),
            "--threads" => threads = parse_u64("--threads", &value()?)?.max(1) as usize,
            "--liveness-bound-steps" => {
                cfg.liveness_bound_steps = parse_u64("--liveness-bound-steps", &value()?)?
            }
            "--broken-acceptor" => cfg.broken_acceptor = true,
            "--expect-violation" => expect_violation = true,
            "--trace" => cfg.trace = true,
            "-h" | "--help" => return Err("help".to_string()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    cfg.validate()?;
    if seeds.is_empty() {
        return Err(format!("empty seed range {}..{}", seeds.start, seeds.end));
    }
    Ok(Args {
        seeds,
        cfg,
        threads,
        expect_violation,
    })
}

/// `A..B` (B excluded) or `A..=B` (B included).
fn parse_range(text: &str) -> Result<Range<u64>, String> {
    let (start, end) = text
        .split_once("..")
        .ok_or_else(|| format!("--seeds wants A..B, got {text:?}"))?;
    let start = parse_u64("--seeds", start)?;
    let end = match end.strip_prefix('=') {
        Some(inclusive) => parse_u64("--seeds", inclusive)? + 1,
        None => parse_u64("--seeds", end)?,
    };
    Ok(start..end)
}

fn parse_u64(flag: &str, text: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| format!("{flag} wants a number, got {text:?}"))
}
