//! kill -9 of every server process during a write load: every write acknowledged before the
//! kill is readable after a restart, and the replicas agree.

mod support;

use paxoskv_client::{Client, ClientConfig};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn free_addrs(n: usize) -> Vec<SocketAddr> {
    paxoskv_server::ports::free_loopback_addrs(n).expect("free loopback ports")
}

/// Starts replica `id` as its own process and waits (bounded) until it listens.
fn spawn_replica(id: usize, addrs: &[SocketAddr], data: &Path) -> Child {
    let peers: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let mut child = Command::new(support::server_bin())
        .args(["--replica", &id.to_string(), "--peers", &peers.join(",")])
        .arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start paxoskv-server");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("is running") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("replica announced itself");
    child
}

/// Kills the processes even when an assertion fails, so no server outlives the test.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn client(addrs: &[SocketAddr]) -> Client {
    let mut config = ClientConfig::with_servers(addrs.to_vec());
    config.timeout = Duration::from_secs(10);
    config.attempt_timeout = Duration::from_millis(500);
    Client::connect(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_all_during_writes_loses_no_acknowledged_write() {
    const SESSIONS: usize = 4;
    const LOAD_MS: u64 = 1500;
    let data = tempfile::tempdir().unwrap();
    let addrs = free_addrs(5);
    let mut children = Procs(
        (0..5)
            .map(|i| spawn_replica(i, &addrs, data.path()))
            .collect(),
    );
    let base = client(&addrs);
    let stop_at = Instant::now() + Duration::from_millis(LOAD_MS);
    let mut tasks = Vec::new();
    for s in 0..SESSIONS {
        let mut session = base.new_session();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..1_000_000u64 {
                let key = format!("s{s}-{i}");
                match session.put(&key, key.as_bytes().to_vec()).await {
                    Ok(_) => acked.push(key),
                    Err(_) => break, // the servers are gone
                }
            }
            acked
        }));
    }
    tokio::time::sleep_until(stop_at.into()).await;
    for child in &mut children.0 {
        child.kill().expect("kill -9"); // SIGKILL: no clean shutdown
    }
    for child in &mut children.0 {
        let _ = child.wait();
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert!(acked.len() > 20, "load too small: {}", acked.len());
    let children = Procs(
        (0..5)
            .map(|i| spawn_replica(i, &addrs, data.path()))
            .collect(),
    );
    let reader = client(&addrs);
    for key in &acked {
        let got = reader
            .get(key)
            .await
            .unwrap_or_else(|e| panic!("get {key}: {e}"));
        assert_eq!(
            got.as_deref(),
            Some(key.as_bytes()),
            "acknowledged write {key} lost"
        );
    }
    let agreed = support::replicas_agree(&reader, Duration::from_secs(15)).await;
    drop(children);
    assert!(agreed, "replicas did not converge after restart");
    println!(
        "{} acknowledged writes survived kill -9 of all five replicas",
        acked.len()
    );
}
