//! The `bench-failover` command: how long writes stop when the leader is killed.
//!
//! One session writes continuously, each write bounded by a short deadline. Once it has
//! acknowledged writes, the leader is found with `status`, a user-supplied shell command kills
//! it, and the tool measures the time from the command's return to the first acknowledged
//! write that was sent after it.

use anyhow::{bail, Context as _};
use clap::Args;
use paxoskv_client::{Client, ClientConfig};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Pause between two status rounds while looking for the leader.
const STATUS_RETRY: Duration = Duration::from_millis(100);

/// Options of `paxoskv bench-failover`.
#[derive(Debug, Args)]
pub(crate) struct FailoverArgs {
    /// Shell command (run with `sh -c`) that kills the leader, e.g. 'kill -9 $(cat /run/{port}.pid)'.
    /// `{port}` and `{pid_port}` become the leader's port, `{id}` its replica id, `{addr}` its
    /// address.
    #[arg(long)]
    pub(crate) kill_cmd: String,
    /// Acknowledged writes before the kill.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) writes_before: u64,
    /// Deadline of one write (its retries included); a write that misses it is abandoned and
    /// the next one is sent. The global --timeout bounds the whole wait after the kill.
    #[arg(long, value_parser = super::parse_duration, default_value = "100ms")]
    pub(crate) write_timeout: Duration,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The shell command with the leader's coordinates filled in.
pub(crate) fn expand_kill_cmd(template: &str, id: u32, addr: SocketAddr) -> String {
    let port = addr.port().to_string();
    template
        .replace("{pid_port}", &port)
        .replace("{port}", &port)
        .replace("{id}", &id.to_string())
        .replace("{addr}", &addr.to_string())
}

/// What the measurement found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct FailoverReport {
    /// From the kill command's return to the first acknowledged write sent after it.
    pub(crate) failover_ms: f64,
    /// From the last write acknowledged before the kill to that first write after it.
    pub(crate) write_gap_ms: f64,
    /// How long the kill command ran.
    pub(crate) kill_cmd_ms: f64,
    pub(crate) old_leader_id: u32,
    pub(crate) old_leader_addr: String,
    /// The replica that answered the first write after the kill (it may have forwarded it).
    pub(crate) acked_by: Option<String>,
    /// The leader that status reports after the measurement, if one is found.
    pub(crate) new_leader_id: Option<u32>,
    pub(crate) new_leader_addr: Option<String>,
    /// Writes that missed their deadline or failed between the kill and the first ack.
    pub(crate) failed_writes: u64,
    pub(crate) writes_before: u64,
    pub(crate) write_timeout_ms: f64,
    /// Whether the old leader still answered `status` after the measurement.
    pub(crate) old_leader_still_answers: bool,
}

impl FailoverReport {
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a report always serializes")
    }

    pub(crate) fn to_text(&self) -> String {
        let mut out = format!(
            "failover: first write acknowledged {:.1} ms after the leader was killed\n",
            self.failover_ms
        );
        let new_leader = match (self.new_leader_id, &self.new_leader_addr) {
            (Some(id), Some(addr)) => format!("replica {id} at {addr}"),
            _ => "not found by status".to_string(),
        };
        out.push_str(&format!(
            "  old leader: replica {} at {}; new leader: {new_leader}; first write after the kill answered by {}\n",
            self.old_leader_id,
            self.old_leader_addr,
            self.acked_by.as_deref().unwrap_or("?")
        ));
        out.push_str(&format!(
            "  writes: {} acknowledged before the kill, {} failed or timed out ({} ms each) before the first ack after it; \
             gap between acknowledged writes {:.1} ms; kill command took {:.1} ms\n",
            self.writes_before,
            self.failed_writes,
            self.write_timeout_ms,
            self.write_gap_ms,
            self.kill_cmd_ms
        ));
        if self.old_leader_still_answers {
            out.push_str(
                "  warning: the old leader still answers status: did the kill command work?\n",
            );
        }
        out
    }
}

/// One write of the writer.
#[derive(Debug)]
struct WriteEvent {
    sent: Instant,
    done: Instant,
    /// `Some(server)` if acknowledged.
    acked_by: Option<Option<SocketAddr>>,
}

/// Runs the measurement and prints the result.
pub(crate) async fn run(client: &Client, args: FailoverArgs) -> anyhow::Result<u8> {
    let overall = client.config().timeout;
    let writer_config = ClientConfig {
        timeout: args.write_timeout,
        attempt_timeout: client.config().attempt_timeout.min(args.write_timeout),
        ..client.config().clone()
    };
    let writer = Client::connect(writer_config)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (events_tx, mut events) = mpsc::unbounded_channel();
    // The writer stops when told, when the receiver is gone, or after a generous bound.
    let writer_bound = Instant::now() + overall * 3 + Duration::from_secs(5);
    let writer_task = tokio::spawn(write_continuously(
        writer,
        stop.clone(),
        events_tx,
        writer_bound,
    ));
    let result = measure(client, &args, &mut events, overall).await;
    stop.store(true, Ordering::Relaxed);
    drop(events);
    let _ = writer_task.await;
    let report = result?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    Ok(0)
}

async fn measure(
    client: &Client,
    args: &FailoverArgs,
    events: &mut mpsc::UnboundedReceiver<WriteEvent>,
    overall: Duration,
) -> anyhow::Result<FailoverReport> {
    // 1. The writer is running: wait for its first acknowledged writes.
    let deadline = Instant::now() + overall;
    let mut acked = 0;
    let mut last_ack: Option<Instant> = None;
    while acked < args.writes_before {
        let event = next_event(events, deadline).await.with_context(|| {
            format!(
                "only {acked} of {} writes acknowledged within {} before the kill",
                args.writes_before,
                humantime::format_duration(overall)
            )
        })?;
        if event.acked_by.is_some() {
            acked += 1;
            last_ack = Some(event.done);
        }
    }

    // 2. The leader, as status reports it.
    let (leader_id, leader_addr) = find_leader(client, Instant::now() + overall).await?;

    // 3. Kill it.
    let command = expand_kill_cmd(&args.kill_cmd, leader_id, leader_addr);
    let kill_started = Instant::now();
    let status = tokio::time::timeout(
        overall,
        tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .kill_on_drop(true)
            .status(),
    )
    .await
    .with_context(|| format!("kill command {command:?} did not finish within {overall:?}"))?
    .with_context(|| format!("cannot run kill command {command:?}"))?;
    let killed = Instant::now();
    if !status.success() {
        bail!("kill command {command:?} failed: {status}");
    }

    // 4. The first acknowledged write sent after the kill.
    let deadline = killed + overall;
    let mut failed_writes = 0;
    let first = loop {
        let event = next_event(events, deadline).await.with_context(|| {
            format!(
                "no write acknowledged within {} after the leader was killed ({failed_writes} failed)",
                humantime::format_duration(overall)
            )
        })?;
        match event.acked_by {
            Some(by) if event.sent >= killed => break (event.done, by),
            Some(_) => last_ack = Some(event.done),
            None if event.sent >= killed => failed_writes += 1,
            None => {}
        }
    };
    let (first_ack, acked_by) = first;

    let new_leader = find_leader(client, Instant::now() + overall).await.ok();
    let still_answers = client
        .status_all()
        .await
        .into_iter()
        .any(|(addr, result)| addr == leader_addr && result.is_ok());
    Ok(FailoverReport {
        failover_ms: millis(first_ack - killed),
        write_gap_ms: millis(first_ack - last_ack.unwrap_or(kill_started)),
        kill_cmd_ms: millis(killed - kill_started),
        old_leader_id: leader_id,
        old_leader_addr: leader_addr.to_string(),
        acked_by: acked_by.map(|a| a.to_string()),
        new_leader_id: new_leader.map(|(id, _)| id),
        new_leader_addr: new_leader.map(|(_, addr)| addr.to_string()),
        failed_writes,
        writes_before: args.writes_before,
        write_timeout_ms: millis(args.write_timeout),
        old_leader_still_answers: still_answers,
    })
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

async fn next_event(
    events: &mut mpsc::UnboundedReceiver<WriteEvent>,
    deadline: Instant,
) -> anyhow::Result<WriteEvent> {
    match tokio::time::timeout_at(deadline, events.recv()).await {
        Ok(Some(event)) => Ok(event),
        Ok(None) => bail!("the writer stopped"),
        Err(_) => bail!("timed out"),
    }
}

/// The one replica that reports role=leader; retried until `deadline`.
async fn find_leader(client: &Client, deadline: Instant) -> anyhow::Result<(u32, SocketAddr)> {
    loop {
        let leaders: Vec<_> = client
            .status_all()
            .await
            .into_iter()
            .filter_map(|(addr, result)| match result {
                Ok(status) if status.role == "leader" => Some((status.id, addr)),
                _ => None,
            })
            .collect();
        if let [one] = leaders[..] {
            return Ok(one);
        }
        if Instant::now() + STATUS_RETRY >= deadline {
            bail!(
                "no single leader found by status (leaders claimed: {:?})",
                leaders
            );
        }
        tokio::time::sleep(STATUS_RETRY).await;
    }
}

/// Writes `failover-key` over and over from one session, reporting every write.
async fn write_continuously(
    mut session: Client,
    stop: Arc<AtomicBool>,
    events: mpsc::UnboundedSender<WriteEvent>,
    bound: Instant,
) {
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) && Instant::now() < bound {
        n += 1;
        let sent = Instant::now();
        let result = session
            .put("bench-failover", n.to_string().into_bytes())
            .await;
        let done = Instant::now();
        let acked_by = result.ok().map(|_| session.last_served_by());
        let failed = acked_by.is_none();
        if events
            .send(WriteEvent {
                sent,
                done,
                acked_by,
            })
            .is_err()
        {
            return;
        }
        if failed {
            // A write that failed fast (connection refused) is retried at once, but not in a
            // tight loop.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        failover: FailoverArgs,
    }

    #[test]
    fn options_parse() {
        let cli = Cli::try_parse_from(["x", "--kill-cmd", "kill {port}"]).unwrap();
        assert_eq!(cli.failover.kill_cmd, "kill {port}");
        assert_eq!(cli.failover.writes_before, 200);
        assert_eq!(cli.failover.write_timeout, Duration::from_millis(100));
        assert!(!cli.failover.json);
        let cli = Cli::try_parse_from([
            "x",
            "--kill-cmd",
            "true",
            "--writes-before",
            "5",
            "--write-timeout",
            "50ms",
            "--json",
        ])
        .unwrap();
        assert_eq!(cli.failover.writes_before, 5);
        assert_eq!(cli.failover.write_timeout, Duration::from_millis(50));
        assert!(cli.failover.json);
        assert!(
            Cli::try_parse_from(["x"]).is_err(),
            "--kill-cmd is required"
        );
        assert!(Cli::try_parse_from(["x", "--kill-cmd", "true", "--writes-before", "0"]).is_err());
    }

    #[test]
    fn kill_cmd_placeholders_are_filled() {
        let addr: SocketAddr = "127.0.0.1:20003".parse().unwrap();
        assert_eq!(
            expand_kill_cmd(
                "kill -9 $(cat /tmp/pids/{pid_port}) # {id} {addr} {port}",
                3,
                addr
            ),
            "kill -9 $(cat /tmp/pids/20003) # 3 127.0.0.1:20003 20003"
        );
        assert_eq!(expand_kill_cmd("true", 0, addr), "true");
    }

    #[test]
    fn report_formats() {
        let report = FailoverReport {
            failover_ms: 312.4,
            write_gap_ms: 315.0,
            kill_cmd_ms: 2.5,
            old_leader_id: 0,
            old_leader_addr: "127.0.0.1:20000".into(),
            acked_by: Some("127.0.0.1:20001".into()),
            new_leader_id: Some(2),
            new_leader_addr: Some("127.0.0.1:20002".into()),
            failed_writes: 4,
            writes_before: 200,
            write_timeout_ms: 100.0,
            old_leader_still_answers: false,
        };
        let text = report.to_text();
        assert!(
            text.starts_with(
                "failover: first write acknowledged 312.4 ms after the leader was killed\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("new leader: replica 2 at 127.0.0.1:20002"),
            "{text}"
        );
        assert!(text.contains("answered by 127.0.0.1:20001"), "{text}");
        assert!(!text.contains("warning"), "{text}");
        let value: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(value["failover_ms"], 312.4);
        assert_eq!(value["old_leader_id"], 0);
        assert_eq!(value["new_leader_addr"], "127.0.0.1:20002");
        assert_eq!(value["failed_writes"], 4);
        assert_eq!(value["old_leader_still_answers"], false);
        assert_eq!(millis(Duration::from_micros(1_234_567)), 1234.6);
    }
}
