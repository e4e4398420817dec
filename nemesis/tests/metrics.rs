//! `--metrics-addr` against real server processes (one replica per process, so one endpoint
//! per replica): the counters move as the load says, exactly one replica reports the leader
//! role, `/healthz` answers, and `/readyz` turns 503 on a replica cut off from the others.

mod support;

use paxoskv_client::{Client, ClientConfig};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{free_addrs, server_bin, Processes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REPLICAS: usize = 5;
const PUTS: u64 = 200;
const GETS: u64 = 100;
/// Longest an HTTP exchange with a local endpoint may take.
const HTTP_TIMEOUT_MS: u64 = 5_000;
/// Largest answer read from an endpoint.
const MAX_HTTP_BYTES: u64 = 4 * 1024 * 1024;

/// One `GET path` over a fresh connection: (status, body).
async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        stream
            .take(MAX_HTTP_BYTES)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        let answer = String::from_utf8(answer).map_err(|e| e.to_string())?;
        let (head, body) = answer.split_once("\r\n\r\n").ok_or("no end of headers")?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line in {head:?}"))?;
        Ok((status, body.to_string()))
    };
    tokio::time::timeout(Duration::from_millis(HTTP_TIMEOUT_MS), exchange)
        .await
        .map_err(|_| format!("GET {path} from {addr} timed out"))?
}

/// Samples of one scrape, by `name{labels}`.
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The value of `name` (without labels beyond `replica`) in one replica's scrape.
fn value(samples: &HashMap<String, f64>, name: &str, id: usize) -> f64 {
    samples
        .get(&format!("{name}{{replica=\"{id}\"}}"))
        .copied()
        .unwrap_or_else(|| panic!("{name} of replica {id} missing"))
}

async fn scrape_all(metrics: &[SocketAddr]) -> Vec<HashMap<String, f64>> {
    let mut all = Vec::new();
    for &m in metrics {
        let (status, body) = http_get(m, "/metrics").await.expect("scrape");
        assert_eq!(status, 200, "{body}");
        all.push(parse(&body));
    }
    all
}

fn leaders(scrapes: &[HashMap<String, f64>]) -> Vec<usize> {
    (0..scrapes.len())
        .filter(|&id| {
            scrapes[id]
                .get(&format!("paxoskv_role{{replica=\"{id}\",role=\"leader\"}}"))
                .copied()
                == Some(1.0)
        })
        .collect()
}

fn sum(scrapes: &[HashMap<String, f64>], name: &str) -> f64 {
    (0..scrapes.len())
        .map(|id| value(&scrapes[id], name, id))
        .sum()
}

/// Starts one in-memory replica per process, each with its own metrics endpoint.
fn start(addrs: &[SocketAddr], metrics: &[SocketAddr]) -> Processes {
    let peers: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let mut procs = Processes(Vec::new());
    for (id, m) in metrics.iter().enumerate() {
        let child = Command::new(server_bin())
            .args(["--replica", &id.to_string(), "--peers", &peers.join(",")])
            .args(["--in-memory", "--enable-fault-control"])
            .args(["--metrics-addr", &m.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start paxoskv-server");
        procs.0.push(child); // pushed first: killed on drop even if it never announces itself
        let started = procs.0.last_mut().expect("just pushed");
        support::wait_announced(started, Duration::from_secs(10));
    }
    procs
}

/// Polls (bounded) until `check` holds for a fresh scrape of every replica; returns it.
async fn wait_for(
    metrics: &[SocketAddr],
    within: Duration,
    what: &str,
    check: impl Fn(&[HashMap<String, f64>]) -> bool,
) -> Vec<HashMap<String, f64>> {
    let deadline = Instant::now() + within;
    loop {
        let scrapes = scrape_all(metrics).await;
        if check(&scrapes) {
            return scrapes;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn readyz(m: SocketAddr) -> (u16, String) {
    http_get(m, "/readyz").await.expect("readyz")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_the_load_and_readyz_follows_the_quorum() {
    let all = free_addrs(2 * REPLICAS);
    let (addrs, metrics) = all.split_at(REPLICAS);
    let _servers = start(addrs, metrics);

    for &m in metrics {
        assert_eq!(http_get(m, "/healthz").await.unwrap().0, 200);
    }
    let before = wait_for(
        metrics,
        Duration::from_secs(10),
        "one leader, all ready",
        |s| {
            leaders(s).len() == 1
                && (0..REPLICAS).all(|id| value(&s[id], "paxoskv_ready", id) == 1.0)
        },
    )
    .await;
    for &m in metrics {
        let (status, body) = readyz(m).await;
        assert_eq!(status, 200, "{body}");
    }

    let mut config = ClientConfig::with_servers(addrs.to_vec());
    config.timeout = Duration::from_secs(10);
    let mut c = Client::connect(config).expect("valid client config");
    // Scrape while the load runs: the endpoint must answer during it, not only after.
    let scraper_metrics = metrics.to_vec();
    let scraper = tokio::spawn(async move {
        let mut scrapes = 0u32;
        for _ in 0..20 {
            scrape_all(&scraper_metrics).await;
            scrapes += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        scrapes
    });
    for i in 0..PUTS {
        c.put(&format!("k{}", i % 17), i.to_le_bytes().to_vec())
            .await
            .expect("put");
    }
    for i in 0..GETS {
        c.get(&format!("k{}", i % 17)).await.expect("get");
    }
    assert_eq!(scraper.await.unwrap(), 20);

    let after = scrape_all(metrics).await;
    let proposals =
        sum(&after, "paxoskv_proposals_total") - sum(&before, "paxoskv_proposals_total");
    let reads = sum(&after, "paxoskv_reads_total") - sum(&before, "paxoskv_reads_total");
    assert!(
        proposals >= PUTS as f64,
        "proposals moved by {proposals}, {PUTS} puts"
    );
    assert!(reads >= GETS as f64, "reads moved by {reads}, {GETS} gets");
    let leader = leaders(&after);
    assert_eq!(
        leader.len(),
        1,
        "exactly one replica reports the leader role"
    );
    let leader = leader[0];
    let applied = |s: &[HashMap<String, f64>]| value(&s[leader], "paxoskv_applied_slot", leader);
    assert!(applied(&after) > applied(&before), "applied slot advanced");
    let commits = value(&after[leader], "paxoskv_commits_total", leader);
    assert!(commits >= applied(&after) - applied(&before));
    let batches = after[leader]
        .get(&format!(
            "paxoskv_batch_records_count{{replica=\"{leader}\"}}"
        ))
        .copied()
        .unwrap_or(0.0);
    assert!(batches > 0.0, "the leader persisted batches");
    for (id, scrape) in after.iter().enumerate() {
        assert_eq!(value(scrape, "paxoskv_leader_id", id), leader as f64);
        assert_eq!(value(scrape, "paxoskv_storage_fenced", id), 0.0);
    }

    // Cut one follower off from everyone, in both directions.
    let cut = (leader + 1) % REPLICAS;
    let others: Vec<u32> = (0..REPLICAS as u32).filter(|&i| i != cut as u32).collect();
    c.set_partition(cut, others.clone()).await.unwrap();
    for &o in &others {
        c.set_partition(o as usize, vec![cut as u32]).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let reason = loop {
        let (status, body) = readyz(metrics[cut]).await;
        if status == 503 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "cut-off replica still ready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(reason.contains(&format!("replica {cut}")), "{reason}");
    let (status, body) = readyz(metrics[leader]).await;
    assert_eq!(status, 200, "the leader keeps its majority: {body}");
    assert_eq!(http_get(metrics[cut], "/healthz").await.unwrap().0, 200);

    // Healed, it is ready again.
    for id in 0..REPLICAS {
        c.set_partition(id, Vec::new()).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = readyz(metrics[cut]).await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "healed replica not ready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
