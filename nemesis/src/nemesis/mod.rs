//! The pieces of `paxoskv-nemesis`: the server processes ([`cluster`]), the recorded client
//! load ([`load`]), the fault injector ([`faults`]) and the verdict ([`verdict`]).

pub mod cluster;
pub mod faults;
pub mod load;
pub mod verdict;

use anyhow::{Context, Result};
use cluster::Cluster;
use faults::{FaultKind, Nemesis};
use load::{OpCounts, Recorder};
use paxoskv_client::{Client, ClientConfig};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use verdict::Report;

/// Replicas in the cluster.
pub const REPLICAS: usize = 5;

/// Bound on the wait for a first leader.
const FIRST_LEADER_TIMEOUT: Duration = Duration::from_secs(15);

/// Bound on the wait for the replicas to agree after healing.
const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the load sessions may take to notice the end of the run.
const LOAD_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Attempts of each final read.
const FINAL_READ_ATTEMPTS: usize = 5;

/// What one run does.
#[derive(Clone, Debug)]
pub struct Settings {
    pub duration: Duration,
    pub clients: usize,
    pub keys: usize,
    pub seed: u64,
    pub server_bin: PathBuf,
    /// Extra arguments for every server.
    pub server_args: Vec<String>,
    pub faults: Vec<FaultKind>,
    pub keep_data: bool,
}

/// Timestamped progress lines on stderr.
#[derive(Clone, Copy, Debug)]
pub struct Events {
    start: Instant,
}

impl Events {
    pub fn new(start: Instant) -> Events {
        Events { start }
    }

    pub fn log(&self, what: String) {
        eprintln!("[{:8.3}s] {what}", self.start.elapsed().as_secs_f64());
    }
}

fn client_config(addrs: &[SocketAddr], timeout_ms: u64, attempt_ms: u64) -> ClientConfig {
    let mut config = ClientConfig::with_servers(addrs.to_vec());
    config.timeout = Duration::from_millis(timeout_ms);
    config.attempt_timeout = Duration::from_millis(attempt_ms);
    config
}

/// Runs the whole experiment; the cluster's processes are gone when this returns (or
/// unwinds), and its directory too unless `keep_data`.
pub async fn run(settings: &Settings) -> Result<Report> {
    let start = Instant::now();
    let events = Events::new(start);
    let mut cluster = Cluster::new(
        settings.server_bin.clone(),
        settings.server_args.clone(),
        REPLICAS,
        settings.keep_data,
    )?;
    events.log(format!(
        "seed {}, data in {}, servers {:?}",
        settings.seed,
        cluster.data_dir().display(),
        cluster.addrs()
    ));
    for i in 0..REPLICAS {
        cluster
            .spawn(i, false)
            .await
            .with_context(|| format!("cannot start replica {i}"))?;
    }
    let addrs = cluster.addrs().to_vec();
    let ctl = Client::connect(client_config(&addrs, 1000, 500))?;
    let load = Client::connect(client_config(&addrs, 1500, 500))?;
    let reader = Client::connect(client_config(&addrs, 5000, 1000))?;
    let mut problems = Vec::new();
    if !wait_for_leader(&ctl).await {
        problems.push(format!(
            "no leader elected within {FIRST_LEADER_TIMEOUT:?} of start"
        ));
    }
    events.log("cluster up; load and faults start".into());

    let recorder = Recorder::new(start);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..settings.clients {
        let seed = settings
            .seed
            .wrapping_add((c as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        tasks.push(tokio::spawn(load::run_client(
            c as u64,
            load.new_session(),
            recorder.clone(),
            settings.keys,
            seed,
            stop.clone(),
        )));
    }

    let mut nemesis = Nemesis::new(
        &mut cluster,
        ctl.new_session(),
        StdRng::seed_from_u64(settings.seed),
        events,
    );
    nemesis
        .run(&settings.faults, start + settings.duration)
        .await;
    stop.store(true, Ordering::Relaxed);
    events.log("faults over; stopping the load".into());
    for task in tasks {
        let abort = task.abort_handle();
        match tokio::time::timeout(LOAD_DRAIN_TIMEOUT, task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.is_panic() => problems.push(format!("a load session panicked: {e}")),
            Ok(Err(_)) => {}
            Err(_) => {
                // Its pending operation stays recorded as unknown.
                abort.abort();
                events.log("a load session did not stop in time; aborted".into());
            }
        }
    }

    events.log("healing everything".into());
    nemesis.heal_all().await;
    let counts = nemesis.counts;
    problems.append(&mut nemesis.problems);
    drop(nemesis);

    let converged = match await_convergence(&ctl, CONVERGENCE_TIMEOUT).await {
        Ok((applied, digest)) => {
            events.log(format!(
                "replicas converged: applied_through={applied} map_digest={digest:#x}"
            ));
            true
        }
        Err(views) => {
            problems.push(format!(
                "replicas did not converge within {CONVERGENCE_TIMEOUT:?}: {views}"
            ));
            false
        }
    };

    let final_client = settings.clients as u64;
    for k in 0..settings.keys {
        let key = load::key(k);
        let mut answered = false;
        for _ in 0..FINAL_READ_ATTEMPTS {
            if load::read(&recorder, final_client, &reader, &key)
                .await
                .is_some()
            {
                answered = true;
                break;
            }
        }
        if !answered {
            problems.push(format!(
                "final read of {key} failed {FINAL_READ_ATTEMPTS} times"
            ));
        }
    }
    problems.extend(
        cluster.reap_crashed().into_iter().map(|(i, status)| {
            format!("replica {i} exited unexpectedly ({status}) after the faults")
        }),
    );
    problems.extend(
        recorder
            .anomalies()
            .into_iter()
            .map(|a| format!("malformed response: {a}")),
    );

    let history = recorder.history();
    events.log(format!("checking {} operations", history.len()));
    let linearizable = verdict::check_history(&history);
    if settings.keep_data {
        let path = cluster.data_dir().join("history.json");
        std::fs::write(&path, serde_json::to_vec(&history)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        events.log(format!(
            "kept {} (history in history.json; replay: paxoskv-nemesis --check-history {})",
            cluster.data_dir().display(),
            path.display()
        ));
    }
    Ok(Report {
        ops: OpCounts::of(&history),
        faults: Some(counts),
        converged: Some(converged),
        linearizable,
        problems,
    })
}

async fn wait_for_leader(ctl: &Client) -> bool {
    let deadline = Instant::now() + FIRST_LEADER_TIMEOUT;
    while Instant::now() < deadline {
        let statuses = ctl.status_all().await;
        if statuses
            .iter()
            .any(|(_, s)| matches!(s, Ok(s) if s.role == "leader"))
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Waits until every replica answers with the same applied_through and map_digest; on
/// timeout returns the last views.
async fn await_convergence(ctl: &Client, timeout: Duration) -> Result<(u64, u64), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let views: Vec<Option<(u64, u64)>> = ctl
            .status_all()
            .await
            .into_iter()
            .map(|(_, s)| s.ok().map(|s| (s.applied_through, s.map_digest)))
            .collect();
        if let Some(Some(first)) = views.first() {
            if views.iter().all(|v| *v == Some(*first)) {
                return Ok(*first);
            }
        }
        if Instant::now() >= deadline {
            let shown: Vec<String> = views
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Some((a, d)) => format!("replica {i}: applied_through={a} digest={d:#x}"),
                    None => format!("replica {i}: no status"),
                })
                .collect();
            return Err(shown.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
