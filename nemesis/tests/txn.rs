//! Compare-and-swap against real server processes: sessions increment one counter
//! concurrently, each increment a put conditioned on the version it read; the final value
//! equals the number of increments that reported success, so none was lost or applied twice.

mod support;

use paxoskv_client::{Check, Client, ClientConfig, CmpOp, Compare, ReadMode};
use std::time::{Duration, Instant};

const SESSIONS: usize = 4;
const INCREMENTS_EACH: u64 = 15;

fn client(addrs: &[std::net::SocketAddr]) -> Client {
    let mut config = ClientConfig::with_servers(addrs.to_vec());
    config.timeout = Duration::from_secs(10);
    Client::connect(config).expect("valid client config")
}

/// Adds one to the counter with version-conditioned puts, retrying on conflict; returns
/// how many attempts lost a race.
async fn increment(c: &mut Client, deadline: Instant) -> u64 {
    let mut conflicts = 0;
    loop {
        assert!(Instant::now() < deadline, "increment never won a race");
        let read = c
            .get_meta("counter", ReadMode::Linearizable)
            .await
            .expect("get");
        let (n, version) = match (read.value, read.meta) {
            (Some(v), Some(m)) => {
                let text = String::from_utf8(v).expect("utf-8 counter");
                (text.parse::<u64>().expect("numeric counter"), m.version)
            }
            _ => (0, 0),
        };
        let expect_version = Compare {
            key: "counter".into(),
            check: Check::Version(CmpOp::Eq, version),
        };
        let next = (n + 1).to_string().into_bytes();
        let done = c
            .put_if(vec![expect_version], "counter", next)
            .await
            .expect("cas");
        if done.succeeded {
            return conflicts;
        }
        conflicts += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cas_increments_are_neither_lost_nor_doubled() {
    let addrs = support::free_addrs(3);
    let _servers = support::start_cluster(&addrs, &[]);
    let base = client(&addrs);
    let deadline = Instant::now() + Duration::from_secs(120);
    let workers: Vec<_> = (0..SESSIONS)
        .map(|_| {
            let mut session = base.new_session();
            tokio::spawn(async move {
                let mut conflicts = 0;
                for _ in 0..INCREMENTS_EACH {
                    conflicts += increment(&mut session, deadline).await;
                }
                conflicts
            })
        })
        .collect();
    let mut conflicts = 0;
    for w in workers {
        conflicts += w.await.expect("worker");
    }
    let successes = SESSIONS as u64 * INCREMENTS_EACH;
    let read = base
        .get_meta("counter", ReadMode::Linearizable)
        .await
        .expect("get");
    let value = read.value.expect("counter exists");
    assert_eq!(value, successes.to_string().into_bytes());
    let meta = read.meta.expect("meta");
    assert_eq!(meta.version, successes, "one version per successful CAS");
    // Failed compares write nothing: the store revision moved once per success.
    assert_eq!(read.revision, successes);
    assert_eq!(meta.mod_revision, successes);
    eprintln!("{successes} increments, {conflicts} lost races retried");
}
