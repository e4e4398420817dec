//! Client behaviour with no server at all: local validation and giving up in time.

use paxoskv_client::{Client, ClientConfig, ClientError, InvalidInput};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

/// Addresses on 127.0.0.1 that nothing listens on (bound, then released).
fn closed_ports(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<_> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr"))
        .collect()
}

fn config(servers: Vec<SocketAddr>, timeout: Duration) -> ClientConfig {
    ClientConfig {
        servers,
        timeout,
        attempt_timeout: Duration::from_millis(200),
        ..ClientConfig::default()
    }
}

#[tokio::test]
async fn invalid_input_fails_fast_without_a_server() {
    let mut config = config(closed_ports(1), Duration::from_secs(5));
    config.max_value_bytes = 16;
    let mut client = Client::connect(config).unwrap();
    let started = Instant::now();
    let too_long_key = "k".repeat(paxoskv::MAX_KEY_BYTES + 1);
    assert!(matches!(
        client.put("", b"v".to_vec()).await,
        Err(ClientError::InvalidInput(InvalidInput::EmptyKey))
    ));
    assert!(matches!(
        client.put(&too_long_key, b"v".to_vec()).await,
        Err(ClientError::InvalidInput(InvalidInput::KeyTooLarge { .. }))
    ));
    assert!(matches!(
        client.put("k", vec![0; 17]).await,
        Err(ClientError::InvalidInput(
            InvalidInput::ValueTooLarge { .. }
        ))
    ));
    assert!(matches!(
        client.get("").await,
        Err(ClientError::InvalidInput(_))
    ));
    assert!(matches!(
        client.delete(&too_long_key).await,
        Err(ClientError::InvalidInput(_))
    ));
    let error = client.put("", vec![]).await.unwrap_err();
    assert_eq!(error.to_string(), "invalid input: empty key");
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn no_servers_is_a_config_error() {
    let result = Client::connect(ClientConfig::with_servers(vec![]));
    assert!(matches!(result, Err(ClientError::Config(_))));
}

#[tokio::test]
async fn all_servers_down_gives_unavailable_in_time() {
    let timeout = Duration::from_secs(1);
    let mut client = Client::connect(config(closed_ports(5), timeout)).unwrap();
    let started = Instant::now();
    let error = client.put("k", b"v".to_vec()).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed >= timeout, "gave up early: {elapsed:?}");
    assert!(
        elapsed < timeout + Duration::from_millis(500),
        "{elapsed:?}"
    );
    assert_eq!(error.unavailable_counts(), Some((0, 5)), "{error}");
    assert!(
        error
            .to_string()
            .starts_with("cluster unavailable: only 0 of 5 replicas answered"),
        "{error}"
    );
    let error = client.get("k").await.unwrap_err();
    assert_eq!(error.unavailable_counts(), Some((0, 5)), "{error}");
}

#[tokio::test]
async fn status_of_closed_ports_says_unreachable() {
    let servers = closed_ports(3);
    let client = Client::connect(config(servers.clone(), Duration::from_secs(1))).unwrap();
    let started = Instant::now();
    let statuses = client.status_all().await;
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(statuses.len(), 3);
    for ((addr, result), expected) in statuses.iter().zip(&servers) {
        assert_eq!(addr, expected);
        assert!(
            matches!(result, Err(ClientError::Unreachable { .. })),
            "{result:?}"
        );
    }
}

#[tokio::test]
async fn silent_servers_do_not_hang_the_client() {
    // Servers that accept connections and never answer (like a stopped process).
    let mut servers = Vec::new();
    for _ in 0..3 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        servers.push(listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
    }
    let timeout = Duration::from_millis(800);
    let mut client = Client::connect(config(servers, timeout)).unwrap();
    let started = Instant::now();
    let error = client.put("k", b"v".to_vec()).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= timeout && elapsed < timeout + Duration::from_millis(300),
        "{elapsed:?}"
    );
    assert_eq!(error.unavailable_counts(), Some((0, 3)), "{error}");
    let statuses = client.status_all().await;
    assert!(statuses.iter().all(|(_, r)| r.is_err()));
}

/// `paxoskv status | head` closes the pipe before the table is written: the tool must end
/// quietly, not panic ("failed printing to stdout").
#[test]
fn closed_stdout_ends_quietly() {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let servers = closed_ports(1)
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_paxoskv"))
        .args(["--servers", &servers, "status"])
        .stdout(writer)
        .output()
        .expect("run paxoskv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
}
