//! The `status` command: one row per replica and a summary that says whether the cluster can
//! make progress.

use super::output::{table, Format};
use super::EXIT_ERROR;
use paxoskv_client::{Client, ClientError, ReplicaStatus};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;

type Report = (SocketAddr, Result<ReplicaStatus, ClientError>);

/// What the replicas' answers add up to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) reachable: usize,
    pub(crate) total: usize,
    /// Leaders named by the reachable replicas' own reports, with who named each.
    pub(crate) leaders: BTreeMap<u32, Vec<u32>>,
}

impl Summary {
    fn of(reports: &[Report]) -> Summary {
        let mut leaders: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        let mut reachable = 0;
        for status in reports.iter().filter_map(|(_, r)| r.as_ref().ok()) {
            reachable += 1;
            if let Some(leader) = status.leader {
                leaders.entry(leader).or_default().push(status.id);
            }
        }
        Summary {
            reachable,
            total: reports.len(),
            leaders,
        }
    }

    pub(crate) fn has_majority(&self) -> bool {
        self.reachable * 2 > self.total
    }

    fn leader_text(&self) -> String {
        match self.leaders.len() {
            0 => "none known".to_string(),
            1 => self.leaders.keys().map(u32::to_string).collect(),
            _ => {
                self.leaders
                    .iter()
                    .map(|(leader, by)| format!("{leader} (according to {by:?})"))
                    .collect::<Vec<_>>()
                    .join(", ")
                    + " (views differ; an election may be under way)"
            }
        }
    }

    fn line(&self) -> String {
        format!(
            "summary: {} of {} replicas reachable, leader: {}",
            self.reachable,
            self.total,
            self.leader_text()
        )
    }

    /// The line for stderr when the cluster cannot make progress.
    fn no_majority_line(&self) -> String {
        format!(
            "error: no majority: only {} of {} replicas reachable; writes and linearizable \
             reads cannot succeed until at least {} are up",
            self.reachable,
            self.total,
            self.total / 2 + 1
        )
    }
}

/// Prints every replica's status; exit status 2 without a reachable majority.
pub(crate) async fn run(client: &Client, format: Format) -> anyhow::Result<u8> {
    let summary = print(client, format).await;
    if summary.has_majority() {
        Ok(0)
    } else {
        eprintln!("{}", summary.no_majority_line());
        Ok(EXIT_ERROR)
    }
}

/// Prints the replicas' reports in `format`; returns the summary.
pub(crate) async fn print(client: &Client, format: Format) -> Summary {
    let reports = client.status_all().await;
    let summary = Summary::of(&reports);
    match format {
        Format::Table => print!("{}", render_table(&reports, &summary)),
        Format::Simple => {
            for (index, (addr, result)) in reports.iter().enumerate() {
                println!("{}", format_line(index, *addr, result));
            }
            println!("{}", summary.line());
        }
        Format::Json => println!("{}", render_json(&reports, &summary)),
    }
    summary
}

fn highest_applied(reports: &[Report]) -> u64 {
    reports
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .map(|s| s.applied_through)
        .max()
        .unwrap_or(0)
}

fn render_table(reports: &[Report], summary: &Summary) -> String {
    const HEADER: [&str; 9] = [
        "ID", "ADDRESS", "ROLE", "LEADER", "BALLOT", "APPLIED", "LAG", "DIGEST", "FAILURES",
    ];
    let top = highest_applied(reports);
    let mut rows = Vec::new();
    let mut notes = String::new();
    for (index, (addr, result)) in reports.iter().enumerate() {
        match result {
            Ok(s) => rows.push(vec![
                s.id.to_string(),
                addr.to_string(),
                s.role.clone(),
                s.leader.map_or_else(|| "-".to_string(), |l| l.to_string()),
                s.promised.clone(),
                s.applied_through.to_string(),
                top.saturating_sub(s.applied_through).to_string(),
                format!("{:016x}", s.map_digest),
                describe_failures(s),
            ]),
            Err(e) => {
                let mut row = vec![index.to_string(), addr.to_string(), "unreachable".into()];
                row.resize(HEADER.len(), "-".into());
                rows.push(row);
                notes.push_str(&format!("{addr}: {}\n", unreachable_reason(e)));
            }
        }
    }
    format!("{}{notes}{}\n", table(&HEADER, &rows), summary.line())
}

fn render_json(reports: &[Report], summary: &Summary) -> serde_json::Value {
    let top = highest_applied(reports);
    let replicas: Vec<serde_json::Value> = reports
        .iter()
        .enumerate()
        .map(|(index, (addr, result))| match result {
            Ok(s) => {
                let mut value = serde_json::to_value(s).unwrap_or_default();
                value["lag"] = json!(top.saturating_sub(s.applied_through));
                value
            }
            Err(e) => {
                json!({"id": index, "addr": addr.to_string(), "error": unreachable_reason(e)})
            }
        })
        .collect();
    let leader = match summary.leaders.keys().collect::<Vec<_>>()[..] {
        [one] => json!(one),
        _ => serde_json::Value::Null,
    };
    json!({
        "replicas": replicas,
        "reachable": summary.reachable,
        "total": summary.total,
        "majority": summary.has_majority(),
        "leader": leader,
    })
}

fn describe_failures(s: &ReplicaStatus) -> String {
    let total = s.failures.dropped_messages + s.failures.passed_messages;
    if s.fail_mode == "off" && s.failures.dropped_messages == 0 {
        return "off".to_string();
    }
    format!(
        "{} of {total} dropped ({})",
        s.failures.dropped_messages, s.fail_mode
    )
}

fn unreachable_reason(e: &ClientError) -> String {
    match e {
        ClientError::Unreachable { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// One `key=value` status line (`-w simple`). `index` is the replica's position in `--servers`.
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
        Err(e) => format!("id={index} addr={addr} unreachable: {}", unreachable_reason(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: u32, role: &str, leader: Option<u32>, applied: u64) -> ReplicaStatus {
        ReplicaStatus {
            id,
            addr: format!("127.0.0.1:{}", 15000 + id),
            role: role.into(),
            leader,
            promised: "3.1".into(),
            applied_through: applied,
            keys: 7,
            map_digest: 0xabc,
            fail_mode: "off".into(),
            ..ReplicaStatus::default()
        }
    }

    fn addr(id: u32) -> SocketAddr {
        format!("127.0.0.1:{}", 15000 + id).parse().unwrap()
    }

    fn down(id: u32) -> Report {
        let reason = "connect: Connection refused (os error 111)".to_string();
        (
            addr(id),
            Err(ClientError::Unreachable {
                addr: addr(id),
                reason,
            }),
        )
    }

    #[test]
    fn lines_show_every_field() {
        let line = format_line(1, addr(1), &Ok(status(1, "leader", Some(1), 42)));
        assert!(
            line.starts_with("id=1 addr=127.0.0.1:15001 role=leader leader=1 "),
            "{line}"
        );
        assert!(
            line.contains("applied_through=42 keys=7 digest=0000000000000abc"),
            "{line}"
        );
        let (a, e) = down(3);
        assert_eq!(
            format_line(3, a, &e),
            "id=3 addr=127.0.0.1:15003 unreachable: connect: Connection refused (os error 111)"
        );
    }

    #[test]
    fn the_leader_comes_from_the_replicas_reports() {
        // A follower alone still knows who leads: the summary must say so.
        let reports = vec![(addr(1), Ok(status(1, "follower", Some(3), 10)))];
        let summary = Summary::of(&reports);
        assert!(summary.line().ends_with("leader: 3"), "{}", summary.line());
    }

    #[test]
    fn table_has_lag_and_unreachable_rows() {
        let reports = vec![
            (addr(0), Ok(status(0, "leader", Some(0), 12))),
            (addr(1), Ok(status(1, "follower", Some(0), 9))),
            down(2),
        ];
        let summary = Summary::of(&reports);
        let text = render_table(&reports, &summary);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ID  ADDRESS"), "{text}");
        assert!(
            lines[0].contains("LAG") && lines[0].contains("FAILURES"),
            "{text}"
        );
        assert!(
            lines[2].contains("follower") && lines[2].contains("  3  "),
            "{text}"
        );
        assert!(lines[3].contains("unreachable"), "{text}");
        assert!(
            text.contains("127.0.0.1:15002: connect: Connection refused"),
            "{text}"
        );
        assert!(summary.has_majority());
    }

    #[test]
    fn two_of_five_is_no_majority() {
        let mut reports: Vec<Report> = (0..2)
            .map(|i| (addr(i), Ok(status(i, "follower", None, 1))))
            .collect();
        reports.extend((2..5).map(down));
        let summary = Summary::of(&reports);
        assert!(!summary.has_majority());
        assert!(summary.no_majority_line().contains("only 2 of 5"));
        assert!(summary.no_majority_line().contains("at least 3"));
    }
}
