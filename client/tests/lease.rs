//! Leases against five real replicas (in-process, on free loopback ports): kept-alive keys
//! stay, abandoned ones go after their TTL and never before it, a leader change expires no
//! kept-alive lease, and the lock recipe (put --if-absent with a lease) hands a lock from
//! a holder killed with kill -9 (its keepalive process) to the next within the TTL.

use paxoskv_client::{Check, Client, ClientConfig, ClientError, Compare, KvError, ReadMode};
use paxoskv_server::LocalCluster;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TTL: Duration = Duration::from_secs(1);

fn client(addrs: &[SocketAddr]) -> Client {
    let mut config = ClientConfig::with_servers(addrs.to_vec());
    config.timeout = Duration::from_secs(10);
    config.attempt_timeout = Duration::from_millis(500);
    Client::connect(config).expect("valid config")
}

/// Waits (bounded) until `key` is gone; returns when that was seen.
async fn gone(c: &Client, key: &str, within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        if c.get(key).await.expect("get").is_none() {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "{key} still there after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends keepalives every TTL/4 for `period`; returns when the last one was answered.
async fn keep_alive(c: &Client, lease: u64, period: Duration) -> Instant {
    let end = Instant::now() + period;
    let mut last = Instant::now();
    while Instant::now() < end {
        assert_eq!(c.lease_keepalive(lease).await.expect("keepalive"), TTL);
        last = Instant::now();
        tokio::time::sleep(TTL / 4).await;
    }
    last
}

/// The replica every running replica names as leader, once they agree (bounded wait).
async fn leader(c: &Client, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let named: Vec<Option<u32>> = c
            .status_all()
            .await
            .into_iter()
            .filter_map(|(_, s)| s.ok().map(|s| s.leader))
            .collect();
        if let Some(Some(l)) = named.first() {
            if named.len() >= 3 && named.iter().all(|n| n == &Some(*l)) {
                return *l as usize;
            }
        }
        assert!(Instant::now() < deadline, "no agreed leader: {named:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_alive_keys_stay_and_abandoned_ones_go_after_the_ttl_not_before() {
    let mut cluster = LocalCluster::start(5, |_| {}).await.expect("start");
    let mut c = client(&cluster.addrs);
    let lease = c.lease_grant(TTL).await.expect("grant").lease;
    c.put_with_lease("a", b"1".to_vec(), lease)
        .await
        .expect("put a");
    c.put_with_lease("b", b"1".to_vec(), lease)
        .await
        .expect("put b");
    c.put("c", b"plain".to_vec()).await.expect("put c");
    // Three TTLs of keepalives, across a leader change in the middle.
    keep_alive(&c, lease, TTL).await;
    let old = leader(&c, Duration::from_secs(10)).await;
    cluster.stop(old).await;
    let last = keep_alive(&c, lease, 2 * TTL).await;
    assert_eq!(
        c.get("a").await.expect("get"),
        Some(b"1".to_vec()),
        "kept alive"
    );
    let new = leader(&c, Duration::from_secs(10)).await;
    assert_ne!(new, old);
    // Abandoned: gone after the TTL (measured from the last keepalive's answer, which the
    // leader saw a little earlier), within the TTL plus slack.
    let seen = gone(&c, "a", 10 * TTL).await;
    let after = seen.duration_since(last);
    assert!(
        after >= TTL - Duration::from_millis(50),
        "expired early: {after:?}"
    );
    assert!(after <= 6 * TTL, "expired late: {after:?}");
    assert_eq!(c.get("b").await.expect("get"), None);
    assert_eq!(c.get("c").await.expect("get"), Some(b"plain".to_vec()));
    assert_eq!(
        c.lease_keepalive(lease).await,
        Err(ClientError::Server(KvError::LeaseNotFound { lease }))
    );
    eprintln!("expired {after:?} after the last keepalive");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_deletes_the_keys_at_once_and_the_lease_is_gone() {
    let cluster = LocalCluster::start(3, |_| {}).await.expect("start");
    let mut c = client(&cluster.addrs);
    let lease = c
        .lease_grant(Duration::from_secs(60))
        .await
        .expect("grant")
        .lease;
    for key in ["x/1", "x/2", "x/3"] {
        c.put_with_lease(key, b"v".to_vec(), lease)
            .await
            .expect("put");
    }
    let before = c
        .get_meta("x/1", ReadMode::Linearizable)
        .await
        .expect("meta");
    assert_eq!(before.lease, Some(lease), "a read names the key's lease");
    let ttl = c.lease_ttl(lease).await.expect("ttl");
    assert_eq!((ttl.ttl_ms, ttl.keys), (60_000, 3));
    assert!(
        ttl.remaining_ms > 0 && ttl.remaining_ms <= 60_000,
        "{ttl:?}"
    );
    let revoked = c.lease_revoke(lease).await.expect("revoke");
    assert_eq!(revoked.deleted_keys, 3);
    assert_eq!(
        revoked.revision,
        before.revision + 1,
        "one revision for all three"
    );
    assert_eq!(c.get("x/2").await.expect("get"), None);
    assert_eq!(
        c.lease_ttl(lease).await.map(|t| t.keys),
        Err(ClientError::Server(KvError::LeaseNotFound { lease }))
    );
    assert_eq!(
        c.put_with_lease("x/4", b"v".to_vec(), lease).await,
        Err(ClientError::Server(KvError::LeaseNotFound { lease }))
    );
    assert_eq!(c.get("x/4").await.expect("get"), None);
    assert_eq!(
        c.lease_revoke(lease).await,
        Err(ClientError::Server(KvError::LeaseNotFound { lease }))
    );
    assert!(matches!(
        c.lease_grant(Duration::from_millis(10)).await,
        Err(ClientError::Config(_))
    ));
    cluster.shutdown().await;
}

/// `paxoskv lease keepalive ID` as its own process: the holder's life.
fn keepalive_process(addrs: &[SocketAddr], lease: u64) -> Child {
    let servers: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    Command::new(env!("CARGO_BIN_EXE_paxoskv"))
        .env("PAXOSKV_SERVERS", servers.join(","))
        .env_remove("RUST_LOG")
        .args(["lease", "keepalive", &lease.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start paxoskv lease keepalive")
}

/// One turn of the lock: who held it, from the acquiring put's answer to the start of its
/// release (or to its kill).
#[derive(Debug)]
struct Hold {
    worker: usize,
    acquired: Instant,
    released: Instant,
    killed: bool,
}

const WORKERS: usize = 3;
const TURNS_EACH: usize = 2;

/// Takes the lock TURNS_EACH times; the `victim` worker's first holder is killed (kill -9
/// of its keepalive process) and never releases.
async fn worker(
    mut c: Client,
    addrs: Vec<SocketAddr>,
    index: usize,
    victim: bool,
    deadline: Instant,
) -> Vec<Hold> {
    let mut holds = Vec::new();
    for turn in 0..TURNS_EACH {
        let lease = c.lease_grant(TTL).await.expect("grant").lease;
        let mut keeper = keepalive_process(&addrs, lease);
        let absent = Compare {
            key: "lock".into(),
            check: Check::Absent,
        };
        let me = format!("worker-{index}-{turn}").into_bytes();
        loop {
            assert!(
                Instant::now() < deadline,
                "worker {index} never got the lock"
            );
            let outcome = c
                .put_if_with_lease(vec![absent.clone()], "lock", me.clone(), lease)
                .await
                .expect("try lock");
            if outcome.succeeded {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let acquired = Instant::now();
        if victim && turn == 0 {
            keeper.kill().expect("kill -9 the holder");
            let released = Instant::now();
            let _ = keeper.wait();
            holds.push(Hold {
                worker: index,
                acquired,
                released,
                killed: true,
            });
            continue;
        }
        // Hold it a while (the keepalive process keeps the lease), then release.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let still_mine = c.get("lock").await.expect("get lock");
        assert_eq!(still_mine, Some(me), "lost the lock while holding it");
        let released = Instant::now();
        c.lease_revoke(lease).await.expect("release");
        let _ = keeper.kill();
        let _ = keeper.wait();
        holds.push(Hold {
            worker: index,
            acquired,
            released,
            killed: false,
        });
    }
    holds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_recipe_never_has_two_holders_and_frees_a_killed_holders_lock_in_its_ttl() {
    lock_recipe(None).await;
}

/// The same while the leader replica is stopped during the turns: the new leader extends
/// every lease before expiring any, so no holder loses the lock it keeps alive, and the
/// killed holder's lock is still freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_recipe_survives_a_leader_stop() {
    lock_recipe(Some(Duration::from_millis(800))).await;
}

/// Runs the workers; with `stop_leader_after`, stops the leader replica that long after the
/// start. Then checks the history of holds.
async fn lock_recipe(stop_leader_after: Option<Duration>) {
    let mut cluster = LocalCluster::start(5, |_| {}).await.expect("start");
    let base = client(&cluster.addrs);
    let deadline = Instant::now() + Duration::from_secs(60);
    let tasks: Vec<_> = (0..WORKERS)
        .map(|i| {
            let session = base.new_session();
            let addrs = cluster.addrs.clone();
            tokio::spawn(worker(session, addrs, i, i == 0, deadline))
        })
        .collect();
    if let Some(after) = stop_leader_after {
        tokio::time::sleep(after).await;
        let old = leader(&base, Duration::from_secs(10)).await;
        cluster.stop(old).await;
        eprintln!("stopped leader {old} {after:?} after the start");
    }
    let mut holds = Vec::new();
    for t in tasks {
        holds.extend(t.await.expect("worker"));
    }
    check_holds(holds);
    cluster.shutdown().await;
}

/// Never two holders at once, and the killed holder's lock freed within its TTL (plus slack).
fn check_holds(mut holds: Vec<Hold>) {
    holds.sort_by_key(|h| h.acquired);
    assert_eq!(holds.len(), WORKERS * TURNS_EACH);
    for pair in holds.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        // Never two holders: the next one got it only after the previous let go.
        assert!(b.acquired >= a.released, "overlap: {a:?} and {b:?}");
        if a.killed {
            // The killed holder's last keepalive went out at most TTL/3 before the kill.
            let freed = b.acquired.duration_since(a.released);
            assert!(
                freed >= TTL * 2 / 3 - Duration::from_millis(50),
                "freed early: {freed:?}"
            );
            assert!(
                freed <= TTL + Duration::from_secs(5),
                "freed late: {freed:?}"
            );
            eprintln!(
                "a killed holder's lock went to worker {} after {freed:?}",
                b.worker
            );
        }
    }
    assert_eq!(holds.iter().filter(|h| h.killed).count(), 1);
}
