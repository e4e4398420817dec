//! Durable replicas: restart, catch-up by log and by snapshot, failing storage.

use paxoskv_client::{Client, ClientConfig};
use paxoskv_server::LocalCluster;
use std::time::{Duration, Instant};

fn client(cluster: &LocalCluster, timeout: Duration) -> Client {
    let mut config = ClientConfig::with_servers(cluster.addrs.clone());
    config.timeout = timeout;
    config.attempt_timeout = Duration::from_millis(500);
    Client::connect(config).expect("valid client config")
}

/// Small snapshot thresholds so a short test compacts several times.
async fn durable_cluster(dir: &std::path::Path) -> LocalCluster {
    LocalCluster::start_durable(5, dir.to_path_buf(), |o| {
        o.snapshot_policy.every_slots = 50;
        o.snapshot_policy.keep_slots = 10;
    })
    .await
    .expect("open replica directories")
}

async fn statuses(c: &Client) -> Vec<(u64, u64)> {
    c.status_all()
        .await
        .into_iter()
        .map(|(_, s)| {
            s.map(|s| (s.applied_through, s.map_digest))
                .unwrap_or((0, 0))
        })
        .collect()
}

/// Waits until every replica reports the same applied slot and digest.
async fn wait_converged(c: &Client, within: Duration) -> Vec<(u64, u64)> {
    let deadline = Instant::now() + within;
    loop {
        let views = statuses(c).await;
        if views.windows(2).all(|w| w[0] == w[1]) || Instant::now() > deadline {
            return views;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn write_keys(c: &mut Client, prefix: &str, n: usize) {
    for i in 0..n {
        let key = format!("{prefix}{}", i % 40);
        c.put(&key, format!("{prefix}-{i}").into_bytes())
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_replica_recovers_locally_and_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = durable_cluster(dir.path()).await;
    let mut c = client(&cluster, Duration::from_secs(10));
    write_keys(&mut c, "a", 300).await;
    let views = wait_converged(&c, Duration::from_secs(10)).await;
    let down = (0..5)
        .find(|&i| Some(cluster.addrs[i]) != c.leader())
        .unwrap();
    cluster.stop(down).await;
    write_keys(&mut c, "b", 40).await;
    cluster
        .restart(down)
        .await
        .expect("restart from its directory");
    let after = wait_converged(&c, Duration::from_secs(15)).await;
    assert!(after.windows(2).all(|w| w[0] == w[1]), "{after:?}");
    assert!(after[0].0 > views[0].0);
    let snaps = std::fs::read_dir(dir.path().join(format!("replica-{down}")))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".snap"))
        })
        .count();
    assert_eq!(snaps, 1, "the replica snapshotted before going down");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_behind_compacted_log_catches_up_by_snapshot() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = durable_cluster(dir.path()).await;
    let mut c = client(&cluster, Duration::from_secs(10));
    write_keys(&mut c, "x", 20).await;
    let leader = c.leader().unwrap();
    let down = (0..5).find(|&i| cluster.addrs[i] != leader).unwrap();
    cluster.stop(down).await;
    // Enough slots that the others snapshot and compact far past the stopped replica.
    write_keys(&mut c, "y", 400).await;
    cluster.restart(down).await.expect("restart");
    let views = wait_converged(&c, Duration::from_secs(20)).await;
    assert!(views.windows(2).all(|w| w[0] == w[1]), "{views:?}");
    cluster.stop(down).await;
    // It must hold the state on its own disk now: restart and compare without help.
    for id in (0..5).filter(|&i| i != down) {
        cluster.stop(id).await;
    }
    cluster.restart(down).await.expect("restart alone");
    // The client's old connection to this address broke; status redials on the next call.
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        let alone = c.status_all().await;
        match &alone[down].1 {
            Ok(s) => break s.clone(),
            Err(e) if Instant::now() > deadline => panic!("restarted replica unreachable: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert_eq!((status.applied_through, status.map_digest), views[0]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_storage_never_acknowledges_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = durable_cluster(dir.path()).await;
    let mut c = client(&cluster, Duration::from_secs(10));
    write_keys(&mut c, "p", 10).await;
    // Every replica's next sync fails. A failed replica reopens its log only after a second,
    // so within 300 ms nobody can persist, and nothing may be acknowledged.
    for id in 0..5 {
        cluster.faults(id).fail_next_sync();
    }
    let mut short = client(&cluster, Duration::from_millis(300));
    let refused = short.put("during", b"failure".to_vec()).await;
    assert!(refused.is_err(), "acknowledged without persistence");
    let reported = c
        .status_all()
        .await
        .into_iter()
        .filter_map(|(_, s)| s.ok())
        .any(|s| s.role.contains("unavailable"));
    assert!(
        reported,
        "the failed leader must report that it is unavailable"
    );
    // The replicas reopen their logs, rebuild from disk and go on.
    let mut c2 = client(&cluster, Duration::from_secs(20));
    c2.put("after", b"ok".to_vec()).await.expect("recovered");
    // Everything acknowledged is on disk: restart the whole cluster and read it back.
    for id in 0..5 {
        cluster.stop(id).await;
    }
    for id in 0..5 {
        cluster.restart(id).await.expect("restart");
    }
    let c3 = client(&cluster, Duration::from_secs(20));
    assert_eq!(c3.get("after").await.unwrap(), Some(b"ok".to_vec()));
    assert_eq!(c3.get("p3").await.unwrap(), Some(b"p-3".to_vec()));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_server_on_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = durable_cluster(dir.path()).await;
    let cfg = paxoskv::Config::new(0, 5);
    let faults = paxoskv_server::storage::FaultInjector::new();
    let second =
        paxoskv_server::node::open_disk_replica(&dir.path().join("replica-0"), cfg, faults);
    let err = second.err().expect("the directory is locked");
    assert!(err.to_string().contains("replica-0"), "{err}");
    cluster.shutdown().await;
}
