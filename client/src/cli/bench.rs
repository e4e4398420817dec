//! The `bench` command: concurrent sessions, latency histograms, throughput.

use clap::Args;
use hdrhistogram::Histogram;
use paxoskv_client::Client;
use rand::Rng;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of `paxoskv bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Total operations.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    ops: u64,
    /// Concurrent sessions (each has one request in flight).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    concurrency: u64,
    /// Bytes per written value.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Fraction of operations that are (linearizable) GETs.
    #[arg(long, default_value_t = 0.5, value_parser = parse_fraction)]
    read_fraction: f64,
    /// Number of distinct keys (bench-0 .. bench-N-1).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
}

fn parse_fraction(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err("must be between 0 and 1".to_string())
    }
}

/// Latencies in microseconds and error count of one worker.
struct Tally {
    reads_us: Histogram<u64>,
    writes_us: Histogram<u64>,
    errors: u64,
}

impl Tally {
    fn new() -> anyhow::Result<Tally> {
        Ok(Tally {
            reads_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            writes_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            errors: 0,
        })
    }

    fn merge(&mut self, other: &Tally) -> anyhow::Result<()> {
        self.reads_us.add(&other.reads_us)?;
        self.writes_us.add(&other.writes_us)?;
        self.errors += other.errors;
        Ok(())
    }
}

/// Runs the benchmark and prints a report; exit status 2 if any operation failed.
pub(crate) async fn run(client: &Client, args: BenchArgs) -> anyhow::Result<u8> {
    let args = Arc::new(args);
    let remaining = Arc::new(AtomicU64::new(args.ops));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            tokio::spawn(worker(
                client.new_session(),
                args.clone(),
                remaining.clone(),
            ))
        })
        .collect();
    let mut total = Tally::new()?;
    for worker in workers {
        total.merge(&worker.await??)?;
    }
    report(&args, &total, started.elapsed());
    Ok(if total.errors == 0 {
        0
    } else {
        super::EXIT_ERROR
    })
}

async fn worker(
    mut session: Client,
    args: Arc<BenchArgs>,
    remaining: Arc<AtomicU64>,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::new()?;
    let value = vec![b'x'; args.value_size];
    while take_one(&remaining) {
        let (key, is_read) = {
            let mut rng = rand::thread_rng();
            (
                format!("bench-{}", rng.gen_range(0..args.keys)),
                rng.gen_bool(args.read_fraction),
            )
        };
        let started = Instant::now();
        let ok = if is_read {
            session.get(&key).await.is_ok()
        } else {
            session.put(&key, value.clone()).await.is_ok()
        };
        let micros = (started.elapsed().as_micros() as u64).max(1);
        match (ok, is_read) {
            (false, _) => tally.errors += 1,
            (true, true) => tally.reads_us.saturating_record(micros),
            (true, false) => tally.writes_us.saturating_record(micros),
        }
    }
    Ok(tally)
}

fn take_one(remaining: &AtomicU64) -> bool {
    remaining
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

fn report(args: &BenchArgs, tally: &Tally, elapsed: Duration) {
    let done = tally.reads_us.len() + tally.writes_us.len();
    println!(
        "bench: {done} ok, {} errors in {:.3} s with {} sessions: {:.0} ops/s",
        tally.errors,
        elapsed.as_secs_f64(),
        args.concurrency,
        done as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    for (name, h) in [("get", &tally.reads_us), ("put", &tally.writes_us)] {
        if h.is_empty() {
            continue;
        }
        println!(
            "  {name}: n={} p50={} us p90={} us p99={} us max={} us",
            h.len(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.max()
        );
    }
}
