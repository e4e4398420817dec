//! The `status` command: one line per replica.

use super::EXIT_ERROR;
use paxoskv_client::{Client, ClientError, ReplicaStatus};
use std::net::SocketAddr;

/// Prints every replica's status; exit status 2 if none answered.
pub(crate) async fn run(client: &Client) -> anyhow::Result<u8> {
    let reachable = print(client).await;
    Ok(if reachable == 0 { EXIT_ERROR } else { 0 })
}

/// Prints one line per replica and a summary; returns how many answered.
pub(crate) async fn print(client: &Client) -> usize {
    let results = client.status_all().await;
    let mut reachable = 0;
    let mut leaders = Vec::new();
    for (index, (addr, result)) in results.iter().enumerate() {
        if let Ok(status) = result {
            reachable += 1;
            if status.role == "leader" {
                leaders.push(status.id);
            }
        }
        println!("{}", format_line(index, *addr, result));
    }
    println!(
        "summary: {reachable} of {} replicas reachable, leader: {}",
        results.len(),
        describe_leaders(&leaders)
    );
    reachable
}

fn describe_leaders(leaders: &[u32]) -> String {
    match leaders {
        [] => "none".to_string(),
        [one] => one.to_string(),
        many => format!("{many:?} (several claim leadership)"),
    }
}

/// One status line. `index` is the replica's position in `--servers`.
pub(crate) fn format_line(
    index: usize,
    addr: SocketAddr,
    result: &Result<ReplicaStatus, ClientError>,
) -> String {
    match result {
        Ok(s) => format!(
            "id={} addr={} role={} leader={} promised={} applied_through={} keys={} digest={:016x} dropped={} passed={} fail_mode={}",
            s.id,
            addr,
            s.role,
            s.leader.map_or_else(|| "none".to_string(), |l| l.to_string()),
            s.promised,
            s.applied_through,
            s.keys,
            s.map_digest,
            s.failures.dropped_messages,
            s.failures.passed_messages,
            s.fail_mode,
        ),
        Err(ClientError::Unreachable { reason, .. }) => format!("id={index} addr={addr} unreachable: {reason}"),
        Err(e) => format!("id={index} addr={addr} unreachable: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_show_every_field() {
        let status = ReplicaStatus {
            id: 1,
            addr: "127.0.0.1:15001".into(),
            role: "leader".into(),
            leader: Some(1),
            applied_through: 42,
            keys: 7,
            map_digest: 0xabc,
            fail_mode: "drop 0.25".into(),
            ..ReplicaStatus::default()
        };
        let addr: SocketAddr = "127.0.0.1:15001".parse().unwrap();
        let line = format_line(1, addr, &Ok(status));
        assert!(
            line.starts_with("id=1 addr=127.0.0.1:15001 role=leader leader=1 "),
            "{line}"
        );
        assert!(
            line.contains("applied_through=42 keys=7 digest=0000000000000abc"),
            "{line}"
        );
        assert!(line.ends_with("fail_mode=drop 0.25"), "{line}");
        let down = ClientError::Unreachable {
            addr,
            reason: "connection refused".into(),
        };
        assert_eq!(
            format_line(3, addr, &Err(down)),
            "id=3 addr=127.0.0.1:15001 unreachable: connection refused"
        );
    }
}
