//! The `bench` command: a closed-loop load of concurrent sessions for a fixed time, with
//! latency histograms per operation kind.
//!
//! Every client is its own session ([`Client::new_session`]) with one request outstanding.
//! Latencies are recorded only for operations that start after the warm-up and end before
//! the deadline; throughput is those operations divided by the measured duration.

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use paxoskv_client::{Client, ClientError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Highest latency the histograms hold (longer ones are clamped): one hour in microseconds.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Pause after a failed operation, so that an error that comes back at once does not spin.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Most sessions that write the key space before a `get` or `mixed` run.
const PREFILL_SESSIONS: u32 = 64;

/// Attempts per key while prefilling.
const PREFILL_TRIES: u32 = 3;

/// What the sessions send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Workload {
    /// Only PUTs.
    Put,
    /// Only linearizable GETs (of prefilled keys).
    Get,
    /// Half GETs, half PUTs, at random (keys prefilled).
    Mixed,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::Mixed => "mixed",
        }
    }

    fn needs_prefill(self) -> bool {
        self != Workload::Put
    }
}

/// Options of `paxoskv bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Concurrent sessions, each with one request outstanding (closed loop).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub(crate) clients: u32,
    /// Measured time, after the warm-up (e.g. 10s, 1m).
    #[arg(long, value_parser = super::parse_duration, default_value = "10s")]
    pub(crate) duration: Duration,
    /// Load before the measured time that is not recorded (0s for none).
    #[arg(long, value_parser = parse_warmup, default_value = "2s")]
    pub(crate) warmup: Duration,
    /// Operations: put, get (linearizable) or mixed (50/50 get/put).
    #[arg(long, value_enum, default_value_t = Workload::Put)]
    pub(crate) workload: Workload,
    /// Distinct keys (bench-key-000000, bench-key-000001, ...), picked uniformly at random.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub(crate) keys: u64,
    /// Bytes per written value.
    #[arg(long, default_value_t = 100)]
    pub(crate) value_size: usize,
    /// Print one JSON object (latencies in microseconds) instead of the text report.
    #[arg(long)]
    pub(crate) json: bool,
    /// Also write the latency histogram and the throughput over time as an SVG picture.
    #[arg(long, value_name = "FILE.svg")]
    pub(crate) plot: Option<std::path::PathBuf>,
}

/// Like [`super::parse_duration`], but `0s` (no warm-up) is allowed.
fn parse_warmup(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| format!("{e} (examples: 2s, 500ms, 0s)"))
}

/// The name of key `index`: `bench-key-000123` (16 bytes below a million keys).
pub(crate) fn key_name(index: u64) -> String {
    format!("bench-key-{index:06}")
}

/// Kind of one operation; indexes [`Tally`]'s arrays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Get = 0,
    Put = 1,
}

const KINDS: [(Kind, &str); 2] = [(Kind::Get, "get"), (Kind::Put, "put")];

/// Latencies (microseconds) and errors of the measured operations, per kind.
pub(crate) struct Tally {
    latency_us: [Histogram<u64>; 2],
    errors: [u64; 2],
    last_error: Option<String>,
}

impl Tally {
    pub(crate) fn new() -> Tally {
        let histogram = || {
            Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("constant histogram bounds are valid")
        };
        Tally {
            latency_us: [histogram(), histogram()],
            errors: [0, 0],
            last_error: None,
        }
    }

    fn record(&mut self, kind: Kind, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us[kind as usize].saturating_record(micros.max(1));
    }

    fn record_error(&mut self, kind: Kind, error: &ClientError) {
        self.errors[kind as usize] += 1;
        self.last_error = Some(error.to_string());
    }

    fn merge(&mut self, other: &Tally) {
        for kind in 0..2 {
            // Same bounds on both sides: adding cannot fail.
            let _ = self.latency_us[kind].add(&other.latency_us[kind]);
            self.errors[kind] += other.errors[kind];
        }
        if other.last_error.is_some() {
            self.last_error.clone_from(&other.last_error);
        }
    }

    fn ops(&self) -> u64 {
        self.latency_us.iter().map(Histogram::len).sum()
    }

    fn errors(&self) -> u64 {
        self.errors.iter().sum()
    }
}

/// Latency figures of one operation kind, in microseconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct KindSummary {
    pub(crate) ops: u64,
    pub(crate) ops_per_s: f64,
    pub(crate) errors: u64,
    pub(crate) mean: f64,
    pub(crate) p50: u64,
    pub(crate) p90: u64,
    pub(crate) p99: u64,
    pub(crate) p999: u64,
    pub(crate) max: u64,
}

impl KindSummary {
    fn of(histogram: &Histogram<u64>, errors: u64, duration: Duration) -> KindSummary {
        let empty = histogram.is_empty();
        let at = |q: f64| {
            if empty {
                0
            } else {
                histogram.value_at_quantile(q)
            }
        };
        KindSummary {
            ops: histogram.len(),
            ops_per_s: round1(histogram.len() as f64 / duration.as_secs_f64()),
            errors,
            mean: if empty { 0.0 } else { round1(histogram.mean()) },
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: if empty { 0 } else { histogram.max() },
        }
    }
}

/// The result of one run; printed as text or as one JSON object.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Report {
    pub(crate) workload: Workload,
    pub(crate) clients: u32,
    pub(crate) duration_s: f64,
    pub(crate) warmup_s: f64,
    pub(crate) keys: u64,
    pub(crate) value_size: usize,
    /// Measured operations that succeeded.
    pub(crate) ops: u64,
    pub(crate) ops_per_s: f64,
    /// Measured operations that failed.
    pub(crate) errors: u64,
    /// Per kind ("get", "put", and "all" for both together), microseconds.
    pub(crate) latency_us: BTreeMap<String, KindSummary>,
    /// The last error seen, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_error: Option<String>,
}

impl Report {
    fn new(args: &BenchArgs, tally: &Tally) -> Report {
        let mut latency_us = BTreeMap::new();
        let mut all = Histogram::<u64>::new_from(&tally.latency_us[0]);
        for (kind, name) in KINDS {
            let histogram = &tally.latency_us[kind as usize];
            let _ = all.add(histogram);
            if !histogram.is_empty() || tally.errors[kind as usize] > 0 {
                let summary =
                    KindSummary::of(histogram, tally.errors[kind as usize], args.duration);
                latency_us.insert(name.to_string(), summary);
            }
        }
        latency_us.insert(
            "all".to_string(),
            KindSummary::of(&all, tally.errors(), args.duration),
        );
        Report {
            workload: args.workload,
            clients: args.clients,
            duration_s: round3(args.duration.as_secs_f64()),
            warmup_s: round3(args.warmup.as_secs_f64()),
            keys: args.keys,
            value_size: args.value_size,
            ops: tally.ops(),
            ops_per_s: round1(tally.ops() as f64 / args.duration.as_secs_f64()),
            errors: tally.errors(),
            latency_us,
            last_error: tally.last_error.clone(),
        }
    }

    /// One line of JSON.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a report always serializes")
    }

    /// The human-readable report.
    pub(crate) fn to_text(&self) -> String {
        let mut out = format!(
            "bench: workload {}, {} clients, {} s measured after {} s warm-up, {} keys, {}-byte values\n",
            self.workload.name(),
            self.clients,
            self.duration_s,
            self.warmup_s,
            self.keys,
            self.value_size
        );
        out.push_str(&format!(
            "throughput: {:.1} ops/s ({} ops, {} errors)\n",
            self.ops_per_s, self.ops, self.errors
        ));
        out.push_str(&format!(
            "{:<5} {:>9} {:>10} {:>7} {:>10} {:>10} {:>10} {:>10}\n",
            "kind", "ops", "ops/s", "errors", "p50", "p99", "p99.9", "max"
        ));
        for (name, s) in &self.latency_us {
            if name == "all" && self.latency_us.len() == 2 {
                continue; // one kind only: "all" repeats it
            }
            out.push_str(&format!(
                "{:<5} {:>9} {:>10.1} {:>7} {:>10} {:>10} {:>10} {:>10}\n",
                name,
                s.ops,
                s.ops_per_s,
                s.errors,
                format_us(s.p50),
                format_us(s.p99),
                format_us(s.p999),
                format_us(s.max)
            ));
        }
        if self.ops == 0 && self.errors == 0 {
            out.push_str(
                "no operation completed within the measured time (is the cluster up? see --timeout)\n",
            );
        }
        if let Some(error) = &self.last_error {
            out.push_str(&format!("last error: {error}\n"));
        }
        out
    }
}

/// A latency for people: `850 us`, `1.23 ms`, `2.50 s`.
pub(crate) fn format_us(micros: u64) -> String {
    if micros < 1_000 {
        format!("{micros} us")
    } else if micros < 10_000_000 {
        format!("{:.2} ms", micros as f64 / 1_000.0)
    } else {
        format!("{:.2} s", micros as f64 / 1_000_000.0)
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// When the run starts recording and when it ends.
struct Plan {
    workload: Workload,
    keys: u64,
    value: Vec<u8>,
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

/// Counters of every operation (warm-up included), for the live display.
#[derive(Default)]
struct Live {
    ok: AtomicU64,
    errors: AtomicU64,
}

/// Runs the benchmark and prints the report. Exit status 2 if no operation succeeded.
pub(crate) async fn run(client: &Client, args: BenchArgs) -> anyhow::Result<u8> {
    let max_value = client.config().max_value_bytes;
    if args.value_size > max_value {
        anyhow::bail!(
            "--value-size {} exceeds the largest value the client sends ({max_value} bytes)",
            args.value_size
        );
    }
    let interactive = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
    let value = vec![b'x'; args.value_size];
    if args.workload.needs_prefill() {
        let started = Instant::now();
        if interactive {
            eprintln!("prefilling {} keys ...", args.keys);
        }
        prefill(
            client,
            args.keys,
            &value,
            args.clients.min(PREFILL_SESSIONS),
        )
        .await?;
        if interactive {
            eprintln!(
                "prefilled {} keys in {:.1} s",
                args.keys,
                started.elapsed().as_secs_f64()
            );
        }
    }

    let start = Instant::now();
    let plan = Arc::new(Plan {
        workload: args.workload,
        keys: args.keys,
        value,
        start,
        measure_from: start + args.warmup,
        end: start + args.warmup + args.duration,
    });
    let live = Arc::new(Live::default());
    let workers: Vec<_> = (0..args.clients)
        .map(|i| {
            let seed = rand::random::<u64>() ^ u64::from(i);
            tokio::spawn(worker(
                client.new_session(),
                plan.clone(),
                live.clone(),
                seed,
            ))
        })
        .collect();
    let display = interactive.then(|| tokio::spawn(show_progress(plan.clone(), live.clone())));
    let sampler = args.plot.is_some().then(|| {
        let (live, warmup) = (live.clone(), args.warmup);
        tokio::spawn(async move {
            let completed =
                || live.ok.load(Ordering::Relaxed) + live.errors.load(Ordering::Relaxed);
            super::plot::sample(start, start + warmup + args.duration, warmup, completed).await
        })
    });

    let mut total = Tally::new();
    for worker in workers {
        total.merge(&worker.await?);
    }
    if let Some(display) = display {
        display.await?;
    }
    let report = Report::new(&args, &total);
    if let (Some(path), Some(sampler)) = (&args.plot, sampler) {
        let series: Vec<_> = KINDS
            .iter()
            .map(|&(kind, name)| super::plot::LatencySeries {
                name,
                histogram: &total.latency_us[kind as usize],
            })
            .collect();
        let title = format!(
            "paxoskv bench: {}, {} clients",
            args.workload.name(),
            args.clients
        );
        super::plot::write(path, &title, &series, &sampler.await?)?;
        eprintln!("plot written to {}", path.display());
    }
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    Ok(if report.ops == 0 {
        super::EXIT_ERROR
    } else {
        0
    })
}

/// One closed-loop session until the plan's end.
async fn worker(mut session: Client, plan: Arc<Plan>, live: Arc<Live>, seed: u64) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tally = Tally::new();
    let end = plan.end;
    while Instant::now() < end {
        let key = key_name(rng.gen_range(0..plan.keys));
        let kind = match plan.workload {
            Workload::Put => Kind::Put,
            Workload::Get => Kind::Get,
            Workload::Mixed if rng.gen_bool(0.5) => Kind::Get,
            Workload::Mixed => Kind::Put,
        };
        let started = Instant::now();
        let operation = async {
            match kind {
                Kind::Get => session.get(&key).await.map(drop),
                Kind::Put => session.put(&key, plan.value.clone()).await.map(drop),
            }
        };
        // An operation still running at the end is abandoned and not counted.
        let result = tokio::select! {
            result = operation => result,
            _ = tokio::time::sleep_until(end) => break,
        };
        let measured = started >= plan.measure_from;
        match result {
            Ok(()) => {
                live.ok.fetch_add(1, Ordering::Relaxed);
                if measured {
                    tally.record(kind, started.elapsed());
                }
            }
            Err(error) => {
                live.errors.fetch_add(1, Ordering::Relaxed);
                if measured {
                    tally.record_error(kind, &error);
                }
                tokio::time::sleep_until((Instant::now() + ERROR_PAUSE).min(end)).await;
            }
        }
    }
    tally
}

/// Writes every key once, with up to `sessions` sessions in parallel.
async fn prefill(client: &Client, keys: u64, value: &[u8], sessions: u32) -> anyhow::Result<()> {
    let sessions = u64::from(sessions.max(1));
    let tasks: Vec<_> = (0..sessions)
        .map(|first| {
            let mut session = client.new_session();
            let value = value.to_vec();
            tokio::spawn(async move {
                let mut index = first;
                while index < keys {
                    let key = key_name(index);
                    let mut tries = 0;
                    loop {
                        tries += 1;
                        match session.put(&key, value.clone()).await {
                            Ok(_) => break,
                            Err(e) if tries >= PREFILL_TRIES => {
                                anyhow::bail!("prefill: PUT {key} failed {tries} times: {e}")
                            }
                            Err(_) => {}
                        }
                    }
                    index += sessions;
                }
                Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// The live display on a terminal: phase, elapsed time, operations and current rate.
async fn show_progress(plan: Arc<Plan>, live: Arc<Live>) {
    let start = plan.start;
    let total_ms = (plan.end - start).as_millis() as u64;
    let bar = ProgressBar::new(total_ms.max(1));
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    let (mut last_ok, mut last_at) = (0, Instant::now());
    loop {
        ticker.tick().await;
        let now = Instant::now();
        if now >= plan.end {
            break;
        }
        let ok = live.ok.load(Ordering::Relaxed);
        let errors = live.errors.load(Ordering::Relaxed);
        let rate = (ok - last_ok) as f64 / (now - last_at).as_secs_f64().max(1e-3);
        (last_ok, last_at) = (ok, now);
        let phase = if now < plan.measure_from {
            "warm-up"
        } else {
            "measuring"
        };
        bar.set_position((now - start).as_millis() as u64);
        bar.set_message(format!(
            "{phase}: {ok} ok, {errors} errors, {rate:.0} ops/s"
        ));
    }
    bar.finish_and_clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        let mut argv = vec!["bench"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|cli| cli.bench)
    }

    #[test]
    fn defaults_match_the_standard_workload() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.clients, 64);
        assert_eq!(args.duration, Duration::from_secs(10));
        assert_eq!(args.warmup, Duration::from_secs(2));
        assert_eq!(args.workload, Workload::Put);
        assert_eq!(args.keys, 1000);
        assert_eq!(args.value_size, 100);
        assert!(!args.json);
    }

    #[test]
    fn options_parse() {
        let args = parse(&[
            "--clients",
            "1",
            "--duration",
            "1m",
            "--warmup",
            "0s",
            "--workload",
            "mixed",
            "--keys",
            "50",
            "--value-size",
            "4096",
            "--json",
        ])
        .unwrap();
        assert_eq!(args.clients, 1);
        assert_eq!(args.duration, Duration::from_secs(60));
        assert_eq!(args.warmup, Duration::ZERO);
        assert_eq!(args.workload, Workload::Mixed);
        assert_eq!(args.keys, 50);
        assert_eq!(args.value_size, 4096);
        assert!(args.json);
        assert_eq!(
            parse(&["--workload", "get"]).unwrap().workload,
            Workload::Get
        );
    }

    #[test]
    fn bad_options_are_refused() {
        assert!(parse(&["--clients", "0"]).is_err());
        assert!(parse(&["--duration", "0s"]).is_err());
        assert!(parse(&["--duration", "10"]).is_err());
        assert!(parse(&["--warmup", "soon"]).is_err());
        assert!(parse(&["--workload", "delete"]).is_err());
        assert!(parse(&["--keys", "0"]).is_err());
        assert!(parse(&["--ops", "10"]).is_err());
    }

    #[test]
    fn keys_are_sixteen_bytes() {
        assert_eq!(key_name(123), "bench-key-000123");
        assert_eq!(key_name(0).len(), 16);
        assert_eq!(key_name(999_999).len(), 16);
    }

    #[test]
    fn latencies_format_with_units() {
        assert_eq!(format_us(850), "850 us");
        assert_eq!(format_us(1_234), "1.23 ms");
        assert_eq!(format_us(9_999_999), "10000.00 ms");
        assert_eq!(format_us(12_500_000), "12.50 s");
    }

    fn sample_tally() -> Tally {
        let mut tally = Tally::new();
        for ms in 1..=1000u64 {
            tally.record(Kind::Put, Duration::from_micros(ms * 10));
        }
        for _ in 0..500 {
            tally.record(Kind::Get, Duration::from_micros(100));
        }
        tally.record_error(
            Kind::Put,
            &ClientError::Unavailable {
                answered: 1,
                total: 5,
                last_error: None,
            },
        );
        tally
    }

    #[test]
    fn tallies_merge_and_give_percentiles() {
        let mut total = Tally::new();
        total.merge(&sample_tally());
        total.merge(&sample_tally());
        assert_eq!(total.ops(), 3000);
        assert_eq!(total.errors(), 2);
        let args = parse(&["--workload", "mixed", "--duration", "2s"]).unwrap();
        let report = Report::new(&args, &total);
        assert_eq!(report.ops, 3000);
        assert_eq!(report.ops_per_s, 1500.0);
        assert_eq!(report.errors, 2);
        let put = &report.latency_us["put"];
        assert_eq!(put.ops, 2000);
        assert_eq!(put.errors, 2);
        // hdrhistogram keeps 3 significant digits and reports a bucket's highest value.
        let near = |got: u64, want: u64| got >= want && got <= want + want / 500;
        assert!(near(put.p50, 5_000), "{put:?}");
        assert!(near(put.p90, 9_000), "{put:?}");
        assert!(near(put.p99, 9_900), "{put:?}");
        assert!(near(put.p999, 9_990), "{put:?}");
        assert!(near(put.max, 10_000), "{put:?}");
        assert!(near(put.mean as u64, 5_000), "{put:?}");
        let get = &report.latency_us["get"];
        assert_eq!((get.ops, get.p50, get.max), (1000, 100, 100));
        let all = &report.latency_us["all"];
        assert_eq!(all.ops, 3000);
        assert!(near(all.p50, 2_500), "{all:?}"); // 1000 gets at 100 us, then puts
        assert!(report
            .last_error
            .as_deref()
            .unwrap()
            .contains("unavailable"));
    }

    #[test]
    fn report_serializes_to_one_json_object() {
        let mut tally = Tally::new();
        tally.record(Kind::Put, Duration::from_micros(1500));
        tally.record(Kind::Put, Duration::from_micros(2500));
        let args = parse(&["--clients", "8", "--duration", "2s", "--warmup", "1s"]).unwrap();
        let json = Report::new(&args, &tally).to_json();
        assert!(!json.contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["workload"], "put");
        assert_eq!(value["clients"], 8);
        assert_eq!(value["duration_s"], 2.0);
        assert_eq!(value["warmup_s"], 1.0);
        assert_eq!(value["ops"], 2);
        assert_eq!(value["ops_per_s"], 1.0);
        assert_eq!(value["errors"], 0);
        assert_eq!(value["latency_us"]["put"]["p50"], 1500);
        assert_eq!(value["latency_us"]["put"]["p999"], 2501); // 2500's bucket ends at 2501
        assert_eq!(value["latency_us"]["put"]["max"], 2501);
        assert_eq!(value["latency_us"]["all"]["ops"], 2);
        assert!(value["latency_us"].get("get").is_none());
        assert!(value.get("last_error").is_none());
    }

    #[test]
    fn text_report_lists_each_kind() {
        let args = parse(&["--workload", "mixed"]).unwrap();
        let text = Report::new(&args, &sample_tally()).to_text();
        assert!(text.contains("workload mixed, 64 clients"), "{text}");
        assert!(
            text.contains("throughput: 150.0 ops/s (1500 ops, 1 errors)"),
            "{text}"
        );
        let kinds: Vec<_> = text
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|w| ["get", "put", "all"].contains(w))
            .collect();
        assert_eq!(kinds, ["all", "get", "put"]);
        assert!(text.contains("last error: cluster unavailable"), "{text}");

        let mut only_puts = Tally::new();
        only_puts.record(Kind::Put, Duration::from_millis(2));
        let text = Report::new(&parse(&[]).unwrap(), &only_puts).to_text();
        assert!(!text.contains("\nall "), "{text}");
        assert!(text.contains("2.00 ms"), "{text}");
    }
}
