//! Range reads against real server processes: `scan` pages in key byte order with
//! continuations, bounded in reply bytes, and `count`, linearizable by default and stale on
//! request.

mod support;

use paxoskv_client::{Client, ClientConfig, KeyRange, ReadMode};
use std::time::{Duration, Instant};

fn client(addrs: &[std::net::SocketAddr]) -> Client {
    let mut config = ClientConfig::with_servers(addrs.to_vec());
    config.timeout = Duration::from_secs(10);
    Client::connect(config).expect("valid client config")
}

fn prefix(p: &str) -> KeyRange {
    KeyRange::Prefix(p.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_and_count_read_ranges_in_byte_order_through_the_leader() {
    let addrs = support::free_addrs(3);
    let _servers = support::start_cluster(&addrs, &[]);
    let mut c = client(&addrs);
    // Written out of order, with neighbours on both sides of the prefix.
    for i in (0..30).rev() {
        c.put(&format!("user/{i:03}"), format!("v{i}").into_bytes())
            .await
            .expect("put");
    }
    for key in ["user", "user0", "usea", "zzz"] {
        c.put(key, b"x".to_vec()).await.expect("put");
    }
    let want: Vec<String> = (0..30).map(|i| format!("user/{i:03}")).collect();

    let (entries, more) = c
        .scan(&prefix("user/"), 100, ReadMode::Linearizable)
        .await
        .expect("scan");
    let keys: Vec<&String> = entries.iter().map(|(k, _)| k).collect();
    assert_eq!(keys, want.iter().collect::<Vec<_>>());
    assert!(!more);
    assert_eq!(entries[7].1, b"v7");

    // Pages of 8, following the continuation: every key once, in order.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let page = c
            .scan_page(
                &prefix("user/"),
                after.as_deref(),
                8,
                ReadMode::Linearizable,
            )
            .await
            .expect("scan page");
        assert!(page.entries.len() <= 8);
        seen.extend(page.entries.into_iter().map(|(k, _)| k));
        after = page.next_after;
        if after.is_none() {
            break;
        }
    }
    assert_eq!(seen, want);

    // The limit stops early and says there is more.
    let (entries, more) = c
        .scan(&prefix("user/"), 5, ReadMode::Linearizable)
        .await
        .expect("scan");
    assert_eq!(entries.len(), 5);
    assert!(more);

    assert_eq!(
        c.count(&prefix("user/"), ReadMode::Linearizable).await,
        Ok(30)
    );
    assert_eq!(c.count(&prefix(""), ReadMode::Linearizable).await, Ok(34));
    assert_eq!(
        c.count(&prefix("nothing"), ReadMode::Linearizable).await,
        Ok(0)
    );
    let between = KeyRange::Between {
        start: "user/010".into(),
        end: Some("user/020".into()),
    };
    assert_eq!(c.count(&between, ReadMode::Linearizable).await, Ok(10));

    // Linearizable: a write acknowledged just before is in the very next scan and count.
    c.put("user/030", b"new".to_vec()).await.expect("put");
    assert_eq!(
        c.count(&prefix("user/"), ReadMode::Linearizable).await,
        Ok(31)
    );
    c.delete("user/000").await.expect("delete");
    let (entries, _) = c
        .scan(&prefix("user/"), 1, ReadMode::Linearizable)
        .await
        .expect("scan");
    assert_eq!(entries[0].0, "user/001");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_scans_are_served_by_any_replica_and_large_values_come_in_several_pages() {
    let addrs = support::free_addrs(3);
    let _servers = support::start_cluster(&addrs, &[]);
    let mut c = client(&addrs);
    // Three values of 600 KiB: two never fit one 1 MiB reply.
    for key in ["big/a", "big/b", "big/c"] {
        c.put(key, vec![b'z'; 600 * 1024]).await.expect("put");
    }
    let page = c
        .scan_page(&prefix("big/"), None, 100, ReadMode::Linearizable)
        .await
        .expect("scan page");
    assert_eq!(page.entries.len(), 1, "one 600 KiB entry per 1 MiB page");
    assert_eq!(page.next_after.as_deref(), Some("big/a"));
    let (entries, more) = c
        .scan(&prefix("big/"), 100, ReadMode::Linearizable)
        .await
        .expect("scan");
    assert_eq!(entries.len(), 3);
    assert!(!more && entries.iter().all(|(_, v)| v.len() == 600 * 1024));

    // Every replica, asked alone for its own state, catches up to the three keys.
    for addr in &addrs {
        let solo = client(&[*addr]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let keys = solo
                .count(&prefix("big/"), ReadMode::Stale)
                .await
                .expect("count");
            if keys == 3 {
                break;
            }
            assert!(Instant::now() < deadline, "{addr} never saw the 3 keys");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let page = solo
            .scan_page(&prefix("big/"), Some("big/a"), 100, ReadMode::Stale)
            .await
            .expect("stale scan");
        assert_eq!(page.entries[0].0, "big/b");
        assert_eq!(solo.last_served_by(), Some(*addr));
    }

    // Bad ranges are refused with a clear error, not served.
    let too_long = KeyRange::Prefix("k".repeat(2000));
    let err = c
        .count(&too_long, ReadMode::Linearizable)
        .await
        .expect_err("oversized prefix");
    assert!(err.to_string().contains("over the limit"), "{err}");
}
