//! Watches against real replicas (in-process, durable, on free loopback ports): a restarted
//! replica serves the history it rebuilt from its snapshot and log, from the snapshot's
//! revision on, and keeps following new writes.

use paxoskv_client::{Client, ClientConfig, ClientError, Event, EventKind, KeyRange, KvError};
use paxoskv_server::LocalCluster;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const WRITES: u64 = 12;

fn client(addrs: &[SocketAddr]) -> Client {
    let mut config = ClientConfig::with_servers(addrs.to_vec());
    config.timeout = Duration::from_secs(10);
    config.attempt_timeout = Duration::from_millis(500);
    Client::connect(config).expect("valid config")
}

/// Events from `from` on until revision `through` is in (bounded by `within`).
async fn collect(
    watcher: &Client,
    from: u64,
    through: u64,
    within: Duration,
) -> Result<Vec<Event>, ClientError> {
    let deadline = Instant::now() + within;
    let mut next = from;
    let mut events = Vec::new();
    while next <= through {
        assert!(Instant::now() < deadline, "no event after {next} in time");
        let all = KeyRange::Prefix(String::new());
        let reply = watcher
            .watch_once(&all, next, 100, Duration::from_millis(500))
            .await?;
        assert!(reply.next_revision >= next, "a watch never goes back");
        events.extend(reply.events);
        next = reply.next_revision;
    }
    Ok(events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_serves_its_rebuilt_history_from_the_snapshot_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cluster = LocalCluster::start_durable(3, dir.path().to_path_buf(), |o| {
        o.snapshot_policy.every_slots = 5;
    })
    .await
    .expect("start");
    let mut writer = client(&cluster.addrs);
    for i in 1..=WRITES {
        writer
            .put(&format!("k{i}"), format!("v{i}").into_bytes())
            .await
            .expect("put");
    }
    cluster.restart(1).await.expect("restart replica 1");
    // Only replica 1: what it serves is what it rebuilt.
    let watcher = client(&cluster.addrs[1..2]);
    let oldest = match watcher
        .watch_once(
            &KeyRange::Prefix(String::new()),
            1,
            10,
            Duration::from_secs(2),
        )
        .await
    {
        Err(ClientError::Server(KvError::Compacted { oldest_revision })) => oldest_revision,
        // A snapshot is written in the background: the restart may have come first.
        Ok(reply) => reply.events.first().map_or(1, |e| e.revision),
        other => panic!("{other:?}"),
    };
    eprintln!("replica 1 serves revisions from {oldest} after its restart");
    assert!((1..=WRITES).contains(&oldest), "oldest {oldest}");
    // A write after the restart: the long-poll delivers it too.
    writer.put("after", b"x".to_vec()).await.expect("put");
    let events = match collect(&watcher, oldest, WRITES + 1, Duration::from_secs(20)).await {
        Ok(events) => events,
        Err(e) => panic!("watch from {oldest}: {e}"),
    };
    let got: Vec<(u64, &str, &[u8])> = events
        .iter()
        .map(|e| {
            assert_eq!(e.kind, EventKind::Put);
            (e.revision, e.key.as_str(), e.value.as_slice())
        })
        .collect();
    let mut want: Vec<(u64, String, Vec<u8>)> = (oldest..=WRITES)
        .map(|r| (r, format!("k{r}"), format!("v{r}").into_bytes()))
        .collect();
    want.push((WRITES + 1, "after".into(), b"x".to_vec()));
    let want: Vec<(u64, &str, &[u8])> = want
        .iter()
        .map(|(r, k, v)| (*r, k.as_str(), v.as_slice()))
        .collect();
    assert_eq!(got, want);
    cluster.shutdown().await;
}
