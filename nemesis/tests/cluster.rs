//! Real replicas on free loopback ports, driven through the client library.

mod support;

use paxoskv_client::{Client, ClientConfig, ClientError, KvError};
use paxoskv_server::{FailMode, LocalCluster};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const FAIL_25: FailMode = FailMode::Drop { rate: 0.25 };

async fn cluster(fail_mode: FailMode) -> LocalCluster {
    LocalCluster::start(5, move |o| o.fail_mode = fail_mode)
        .await
        .expect("bind loopback listeners")
}

fn client(cluster: &LocalCluster, timeout: Duration) -> Client {
    let mut config = ClientConfig::with_servers(cluster.addrs.clone());
    config.timeout = timeout;
    config.attempt_timeout = Duration::from_millis(500);
    Client::connect(config).expect("valid client config")
}

/// Polls every replica's status until all report the same applied slot and map digest.
async fn wait_converged(client: &Client, live: usize, within: Duration) -> Vec<(u64, u64)> {
    let deadline = Instant::now() + within;
    loop {
        let views: Vec<(u64, u64)> = client
            .status_all()
            .await
            .into_iter()
            .filter_map(|(_, s)| s.ok())
            .map(|s| (s.applied_through, s.map_digest))
            .collect();
        let same = views.windows(2).all(|w| w[0] == w[1]);
        if (views.len() == live && same) || Instant::now() > deadline {
            return views;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_sequence_with_failures() {
    let cluster = cluster(FAIL_25).await;
    let mut c = client(&cluster, Duration::from_secs(10));
    support::demo_sequence(&mut c).await;
    let views = wait_converged(&c, 5, Duration::from_secs(10)).await;
    assert!(views.windows(2).all(|w| w[0] == w[1]), "{views:?}");
    let dropped: u64 = c
        .status_all()
        .await
        .into_iter()
        .filter_map(|(_, s)| s.ok())
        .map(|s| s.failures.dropped_messages)
        .sum();
    assert!(dropped > 0, "-f must have injected failures");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_five_stopped_writes_still_succeed() {
    let mut cluster = cluster(FailMode::Off).await;
    let mut c = client(&cluster, Duration::from_secs(10));
    c.put("before", b"1".to_vec()).await.unwrap();
    // Stop the leader and one more: a new leader must take over.
    let leader = c.leader().expect("a leader answered");
    let leader_id = cluster.addrs.iter().position(|a| *a == leader).unwrap();
    cluster.stop(leader_id).await;
    cluster.stop((leader_id + 1) % 5).await;
    for i in 0..20 {
        c.put(&format!("after{i}"), b"2".to_vec()).await.unwrap();
    }
    assert_eq!(c.get("before").await.unwrap(), Some(b"1".to_vec()));
    assert_eq!(c.get("after19").await.unwrap(), Some(b"2".to_vec()));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_of_five_stopped_is_a_clear_unavailable_error() {
    let mut cluster = cluster(FailMode::Off).await;
    let mut c = client(&cluster, Duration::from_secs(2));
    c.put("k", b"v".to_vec()).await.unwrap();
    for id in 0..3 {
        cluster.stop(id).await;
    }
    let started = Instant::now();
    let err = c.put("k", b"w".to_vec()).await.unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "gave up after {took:?}");
    let (answered, total) = err
        .unavailable_counts()
        .unwrap_or_else(|| panic!("expected unavailable, got {err}"));
    assert!(answered <= 2 && total == 5, "{err}");
    assert!(err.to_string().contains("of 5 replicas answered"), "{err}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_value_is_refused_and_connection_keeps_working() {
    let cluster = cluster(FailMode::Off).await;
    let mut c = client(&cluster, Duration::from_secs(10));
    c.put("small", b"ok".to_vec()).await.unwrap();
    let big = vec![7u8; paxoskv::DEFAULT_MAX_VALUE_BYTES + 1];
    let err = c.put("big", big).await.unwrap_err();
    assert!(err.to_string().contains("over the limit"), "{err}");
    // The server refuses it too, when a client skips its own check.
    let conn = paxoskv_service::connect_kv(cluster.addrs[0], &paxoskv_service::Dialer::plain())
        .await
        .unwrap();
    let id = paxoskv::CommandId {
        client_id: 99,
        seq: 1,
    };
    let mut ctx = tarpc::context::current();
    ctx.deadline = Instant::now() + Duration::from_secs(5);
    let big = vec![7u8; paxoskv::DEFAULT_MAX_VALUE_BYTES + 1];
    let refused = conn.put(ctx, id, "big".into(), big).await.unwrap();
    assert!(matches!(refused, Err(KvError::TooLarge(_))), "{refused:?}");
    let mut ctx = tarpc::context::current();
    ctx.deadline = Instant::now() + Duration::from_secs(5);
    let ok = conn
        .put(ctx, id, "fine".into(), b"v".to_vec())
        .await
        .unwrap();
    // The connection still works; the write is refused only because session 99 was never
    // opened through the log (or this replica does not lead).
    assert!(
        matches!(
            ok,
            Err(KvError::SessionExpired) | Err(KvError::NotLeader { .. })
        ),
        "{ok:?}"
    );
    let err = c.put("", b"v".to_vec()).await.unwrap_err();
    assert!(matches!(err, ClientError::InvalidInput(_)), "{err}");
    assert_eq!(c.get("small").await.unwrap(), Some(b"ok".to_vec()));
    cluster.shutdown().await;
}

/// One acknowledged put, with the real-time interval it took.
struct AckedPut {
    value: Vec<u8>,
    invoked: Instant,
    completed: Instant,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_with_failures_converge_and_keep_acked_writes() {
    const CLIENTS: usize = 8;
    const WRITES: usize = 200;
    const KEYS: usize = 10;
    let cluster = cluster(FAIL_25).await;
    let base = client(&cluster, Duration::from_secs(20));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let mut session = base.new_session();
        tasks.push(tokio::spawn(async move {
            let mut acked: Vec<(String, AckedPut)> = Vec::new();
            let mut unknown: Vec<(String, Vec<u8>)> = Vec::new();
            for i in 0..WRITES {
                let key = format!("k{}", (c * 7 + i) % KEYS);
                let value = format!("c{c}-w{i}").into_bytes();
                let invoked = Instant::now();
                match session.put(&key, value.clone()).await {
                    Ok(_) => acked.push((
                        key,
                        AckedPut {
                            value,
                            invoked,
                            completed: Instant::now(),
                        },
                    )),
                    Err(_) => unknown.push((key, value)),
                }
            }
            (acked, unknown)
        }));
    }
    let mut acked: HashMap<String, Vec<AckedPut>> = HashMap::new();
    let mut unknown: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    for t in tasks {
        let (a, u) = t.await.unwrap();
        for (k, p) in a {
            acked.entry(k).or_default().push(p);
        }
        for (k, v) in u {
            unknown.entry(k).or_default().push(v);
        }
    }
    let total_acked: usize = acked.values().map(Vec::len).sum();
    assert!(
        total_acked >= CLIENTS * WRITES * 9 / 10,
        "only {total_acked} acked"
    );
    for (key, puts) in &acked {
        let last_start = puts.iter().map(|p| p.invoked).max().unwrap();
        let allowed: Vec<&Vec<u8>> = puts
            .iter()
            .filter(|p| p.completed >= last_start) // not superseded in real time
            .map(|p| &p.value)
            .chain(unknown.get(key).into_iter().flatten())
            .collect();
        let got = base.get(key).await.unwrap().expect("key was written");
        assert!(
            allowed.contains(&&got),
            "{key}: final value {:?} is not the last acknowledged write",
            String::from_utf8_lossy(&got)
        );
    }
    let views = wait_converged(&base, 5, Duration::from_secs(15)).await;
    assert_eq!(views.len(), 5);
    assert!(
        views.windows(2).all(|w| w[0] == w[1]),
        "replicas differ: {views:?}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_leader_is_replaced_and_catches_up_after_heal() {
    let cluster = LocalCluster::start(5, |o| o.fault_control = true)
        .await
        .unwrap();
    let mut c = client(&cluster, Duration::from_secs(10));
    c.put("k", b"1".to_vec()).await.unwrap();
    let old = c.leader().unwrap();
    let old_id = cluster.addrs.iter().position(|a| *a == old).unwrap();
    let others: Vec<u32> = (0..5).filter(|&i| i != old_id as u32).collect();
    c.set_partition(old_id, others.clone()).await.unwrap();
    for &o in &others {
        c.set_partition(o as usize, vec![old_id as u32])
            .await
            .unwrap();
    }
    c.put("k", b"2".to_vec()).await.unwrap();
    assert_ne!(
        c.leader(),
        Some(old),
        "a new leader serves the majority side"
    );
    for id in 0..5 {
        c.set_partition(id, Vec::new()).await.unwrap();
    }
    c.put("k", b"3".to_vec()).await.unwrap();
    let views = wait_converged(&c, 5, Duration::from_secs(10)).await;
    assert!(views.windows(2).all(|w| w[0] == w[1]), "{views:?}");
    assert_eq!(c.get("k").await.unwrap(), Some(b"3".to_vec()));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_control_is_refused_unless_enabled() {
    let cluster = cluster(FailMode::Off).await;
    let c = client(&cluster, Duration::from_secs(5));
    let err = c.set_partition(0, vec![1]).await.unwrap_err();
    assert!(
        err.to_string().contains("fault control is disabled"),
        "{err}"
    );
    cluster.shutdown().await;
}
