//! Memory floods against real server processes (issue 10):
//! - 64 clients putting 1 MiB values into five replicas: writes get `Busy` (and are retried),
//!   every replica's peak RSS stays bounded, a small client keeps being served, SIGTERM stops
//!   every replica within seconds, and the cluster works normally afterwards;
//! - `install_snapshot` chunks announcing 16 GiB from a process the replica never asked:
//!   refused, RSS stays low, no temp file is left.
//!
//! The servers are release builds whatever the test profile (see `release_server_bin`).

mod support;

use paxoskv_client::{Client, ClientConfig, ClientError};
use paxoskv_service::{connect_replica, SnapshotChunk, SNAPSHOT_CHUNK_BYTES};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{
    free_addrs, proc_status_bytes, release_server_bin, spawn_replica_with, terminate_all, Processes,
};

const MIB: u64 = 1024 * 1024;
const FLOOD_CLIENTS: usize = 64;
const FLOOD_VALUE_BYTES: usize = 1024 * 1024;
/// Keys the flood overwrites, so the map itself stays at 16 MiB.
const FLOOD_KEYS: usize = 16;
const FLOOD_MS: u64 = 20_000;
/// Every replica's peak RSS (VmHWM) must stay below this. Measured peaks are in the report
/// printed by the test (and in the README's Security section).
/// Measured with `modest_limits` on a 2-core VM shared with other builds: 48-64 MiB with
/// this test in a debug build (its clients push less), 125-192 MiB with it in release.
/// With the default flags (`PAXOSKV_FLOOD_DEFAULT_LIMITS=1`, release): 274-570 MiB.
const MAX_REPLICA_HWM_BYTES: u64 = 512 * MIB;
/// SIGTERM must stop every replica within this.
const STOP_WITHIN: Duration = Duration::from_secs(5);

/// Memory flags well below the defaults, so the bounds are reached within the flood's
/// seconds on a small machine (the defaults are the same mechanism with larger numbers).
/// `PAXOSKV_FLOOD_DEFAULT_LIMITS=1` runs the flood with the default flags instead, to
/// measure them (the same 512 MiB bound is asserted, which the defaults may exceed).
fn modest_limits() -> Vec<String> {
    if std::env::var_os("PAXOSKV_FLOOD_DEFAULT_LIMITS").is_some() {
        return Vec::new();
    }
    [
        // One 1 MiB write in a replica's handlers at a time (it counts twice: see rpc.rs):
        // the test's own clients are unoptimised in a debug build and push little.
        ("--max-inflight-bytes", 3 * MIB),
        ("--max-peer-inflight-bytes", 16 * MIB),
        ("--max-peer-send-bytes", 8 * MIB),
        ("--max-pending-bytes", 4 * MIB),
        ("--max-log-tail-bytes", 8 * MIB),
        ("--max-open-bytes", 16 * MIB),
    ]
    .iter()
    .flat_map(|(flag, bytes)| [flag.to_string(), bytes.to_string()])
    .collect()
}

/// The two floods each want the machine to themselves.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn client_config(addrs: &[SocketAddr]) -> ClientConfig {
    let mut config = ClientConfig::with_servers(addrs.to_vec());
    config.timeout = Duration::from_secs(5);
    config.attempt_timeout = Duration::from_secs(1);
    config
}

fn start_cluster(bin: &Path, addrs: &[SocketAddr], data: &Path, extra: &[String]) -> Processes {
    Processes(
        (0..addrs.len())
            .map(|i| spawn_replica_with(bin, i, addrs, data, extra))
            .collect(),
    )
}

/// Waits (bounded) until the cluster takes a write.
async fn wait_until_writable(client: &mut Client) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.put("warm-up", b"1".to_vec()).await {
            Ok(_) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!("cluster not writable yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cluster never became writable: {e}"),
        }
    }
}

/// Samples every replica's RSS until `stop`; returns the largest VmRSS seen per replica.
fn sample_rss(pids: Vec<u32>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let mut peak = vec![0u64; pids.len()];
        // Bounded: the flood ends, or at most ten minutes of samples.
        for _ in 0..(600 * 4) {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            for (i, &pid) in pids.iter().enumerate() {
                if let Some(rss) = proc_status_bytes(pid, "VmRSS") {
                    peak[i] = peak[i].max(rss);
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        peak
    })
}

#[derive(Default)]
struct FloodCounts {
    ok: AtomicU64,
    failed: AtomicU64,
    busy_final: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_clients_of_one_mib_puts_get_busy_and_memory_stays_bounded() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let data = tempfile::tempdir().unwrap();
    let addrs = free_addrs(5);
    let mut servers = start_cluster(release_server_bin(), &addrs, data.path(), &modest_limits());
    let pids: Vec<u32> = servers.0.iter().map(|c| c.id()).collect();
    let mut probe = Client::connect(client_config(&addrs)).unwrap();
    wait_until_writable(&mut probe).await;
    // The probe dials again on its own runtime (connections belong to the runtime that
    // made them).
    let probe = Client::connect(client_config(&addrs)).unwrap();

    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = sample_rss(pids.clone(), stop_sampling.clone());
    let counts = Arc::new(FloodCounts::default());
    let flood_until = Instant::now() + Duration::from_millis(FLOOD_MS);
    let mut flooders = Vec::new();
    for c in 0..FLOOD_CLIENTS {
        // One client (own connections) each, as 64 separate programs would be.
        let mut client = Client::connect(client_config(&addrs)).unwrap();
        let counts = counts.clone();
        flooders.push(tokio::spawn(async move {
            let value = vec![c as u8; FLOOD_VALUE_BYTES];
            while Instant::now() < flood_until {
                let key = format!("flood-{}", c % FLOOD_KEYS);
                match client.put(&key, value.clone()).await {
                    Ok(_) => counts.ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        let busy = matches!(&e, ClientError::Unavailable { last_error: Some(l), .. } if l.contains("busy"));
                        if busy {
                            counts.busy_final.fetch_add(1, Ordering::Relaxed);
                        }
                        counts.failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            client.busy_answers()
        }));
    }

    // Meanwhile a small client on a thread and runtime of its own (the flood's clients
    // must not starve it inside this process): a put and a linearizable get every 100 ms.
    let probe_thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("probe runtime");
        runtime.block_on(probe_until(probe, flood_until))
    });
    let (probe_ok, probe_failed, longest_gap) = probe_thread.join().unwrap();

    let mut busy_answers = 0;
    for f in flooders {
        busy_answers += f.await.unwrap();
    }
    stop_sampling.store(true, Ordering::Relaxed);
    let peak_rss = sampler.join().unwrap();
    let hwm: Vec<u64> = pids
        .iter()
        .map(|&pid| proc_status_bytes(pid, "VmHWM").unwrap_or(0))
        .collect();
    let data_bytes = dir_bytes(data.path());
    let ok = counts.ok.load(Ordering::Relaxed);
    let failed = counts.failed.load(Ordering::Relaxed);
    println!(
        "flood: {ok} puts of 1 MiB acknowledged, {failed} gave up ({} of them last saw Busy), {busy_answers} Busy answers backed off and retried",
        counts.busy_final.load(Ordering::Relaxed)
    );
    println!(
        "peak VmRSS MiB {:?}; VmHWM MiB {:?}; data dir {} MiB",
        peak_rss.iter().map(|b| b / MIB).collect::<Vec<_>>(),
        hwm.iter().map(|b| b / MIB).collect::<Vec<_>>(),
        data_bytes / MIB
    );
    println!(
        "probe: {probe_ok} put+get pairs ok, {probe_failed} failed, longest gap between successes {longest_gap:?}"
    );

    assert!(ok > 0, "the flood made no progress at all");
    assert!(busy_answers > 0, "64 clients of 1 MiB puts never saw Busy");
    for (id, &peak) in hwm.iter().enumerate() {
        assert!(
            peak < MAX_REPLICA_HWM_BYTES,
            "replica {id} peaked at {} MiB (bound {} MiB)",
            peak / MIB,
            MAX_REPLICA_HWM_BYTES / MIB
        );
    }
    assert!(
        probe_ok >= 3 && probe_failed <= probe_ok,
        "the small client was starved: {probe_ok} ok, {probe_failed} failed"
    );
    assert!(
        longest_gap < Duration::from_secs(15),
        "the small client went {longest_gap:?} without a success"
    );

    // Afterwards: the ordinary sequence works, then SIGTERM stops everyone promptly.
    let mut after = Client::connect(client_config(&addrs)).unwrap();
    normal_sequence(&mut after).await;
    let took = terminate_all(&mut servers, STOP_WITHIN).unwrap_or_else(|e| panic!("{e}"));
    println!("SIGTERM: all five stopped within {took:?}");

    // And a restarted cluster still has the data.
    let _servers = start_cluster(release_server_bin(), &addrs, data.path(), &modest_limits());
    let mut again = Client::connect(client_config(&addrs)).unwrap();
    wait_until_writable(&mut again).await;
    assert_eq!(again.get("after-flood").await.unwrap(), Some(b"2".to_vec()));
    normal_sequence(&mut again).await;
}

/// Small puts and reads until `until`: (successes, failures, longest time without success).
async fn probe_until(mut probe: Client, until: Instant) -> (u64, u64, Duration) {
    let mut probe_ok = 0u64;
    let mut probe_failed = 0u64;
    let mut longest_gap = Duration::ZERO;
    let mut last_ok = Instant::now();
    let mut i = 0u64;
    while Instant::now() < until {
        i += 1;
        let key = format!("probe-{}", i % 8);
        let value = format!("v{i}").into_bytes();
        let done = match probe.put(&key, value.clone()).await {
            Ok(_) => probe.get(&key).await.map(|got| got == Some(value)),
            Err(e) => Err(e),
        };
        match done {
            Ok(true) => {
                probe_ok += 1;
                longest_gap = longest_gap.max(last_ok.elapsed());
                last_ok = Instant::now();
            }
            Ok(false) => panic!("probe read back something else for {key}"),
            Err(e) => {
                probe_failed += 1;
                eprintln!("probe operation failed during the flood: {e}");
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (probe_ok, probe_failed, longest_gap.max(last_ok.elapsed()))
}

/// The demo's put/get/delete sequence, checked.
async fn normal_sequence(client: &mut Client) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = async {
            client.put("after-flood", b"1".to_vec()).await?;
            client.put("after-flood", b"2".to_vec()).await?;
            client.put("gone", b"x".to_vec()).await?;
            client.delete("gone").await?;
            Ok::<_, ClientError>((client.get("after-flood").await?, client.get("gone").await?))
        }
        .await;
        match result {
            Ok((a, gone)) => {
                assert_eq!(a, Some(b"2".to_vec()));
                assert_eq!(gone, None);
                return;
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("normal sequence attempt {attempt} failed: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the normal sequence fails after the flood: {e}"),
        }
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn temp_snapshot_files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if entry.path().is_dir() {
            found.extend(temp_snapshot_files(&entry.path()));
        } else if name.starts_with("incoming-snap-") {
            found.push(entry.path().display().to_string());
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_chunks_announcing_16_gib_from_an_unasked_sender_are_refused() {
    let _alone = ONE_AT_A_TIME.lock().await;
    const CHUNKS: u64 = 64;
    const TOTAL_BYTES: u64 = 16 << 30;
    const MAX_RSS_BYTES: u64 = 128 * MIB;
    let data = tempfile::tempdir().unwrap();
    let addrs = free_addrs(3);
    // No load here: the test profile's server will do.
    let _servers = start_cluster(support::server_bin(), &addrs, data.path(), &[]);
    let target = _servers.0[0].id();
    let mut client = Client::connect(client_config(&addrs)).unwrap();
    wait_until_writable(&mut client).await;
    let before = proc_status_bytes(target, "VmHWM").unwrap_or(0);

    // Plaintext loopback: the sender simply claims to be replica 1.
    let raw = connect_replica(addrs[0], &paxoskv_service::Dialer::plain())
        .await
        .expect("raw replica connection");
    let mut refused = Vec::new();
    for i in 0..CHUNKS {
        let chunk = SnapshotChunk {
            through: 1_000_000,
            total_bytes: TOTAL_BYTES,
            offset: i * SNAPSHOT_CHUNK_BYTES as u64,
            data: vec![0xab; SNAPSHOT_CHUNK_BYTES],
        };
        let mut ctx = tarpc::context::current();
        ctx.deadline = Instant::now() + Duration::from_secs(10);
        match raw.install_snapshot(ctx, 1, chunk).await {
            Ok(Ok(next)) => panic!("chunk {i} was taken (next offset {next})"),
            Ok(Err(reason)) => refused.push(reason),
            Err(e) => panic!("chunk {i}: transport error {e}"),
        }
    }
    drop(raw);
    println!("first refusal: {}", refused[0]);
    assert!(
        refused[0].contains("did not ask"),
        "refused for another reason: {}",
        refused[0]
    );
    let after = proc_status_bytes(target, "VmHWM").unwrap_or(0);
    println!(
        "target VmHWM {} MiB before, {} MiB after 64 chunks of 1 MiB announcing 16 GiB",
        before / MIB,
        after / MIB
    );
    assert!(
        after < MAX_RSS_BYTES,
        "replica 0 peaked at {} MiB",
        after / MIB
    );
    let left = temp_snapshot_files(data.path());
    assert!(left.is_empty(), "temp files left: {left:?}");
    // The replica still works.
    client.put("still", b"fine".to_vec()).await.unwrap();
    assert_eq!(client.get("still").await.unwrap(), Some(b"fine".to_vec()));
}
