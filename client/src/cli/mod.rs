//! Argument parsing and the commands of the `paxoskv` tool.

mod bench;
mod demo;
mod failover;
mod repl;
mod status;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use paxoskv_client::{Client, ClientConfig, Outcome, ReadMode};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// Exit status of a GET that found nothing.
pub const EXIT_NOT_FOUND: u8 = 1;
/// Exit status of any error.
pub const EXIT_ERROR: u8 = 2;

/// Command-line client of the paxoskv replicated key-value store.
#[derive(Debug, Parser)]
#[command(name = "paxoskv", version, about)]
pub struct Args {
    /// Replica addresses, comma separated, in replica-id order.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        value_parser = parse_server,
        default_value = "127.0.0.1:15000,127.0.0.1:15001,127.0.0.1:15002,127.0.0.1:15003,127.0.0.1:15004"
    )]
    servers: Vec<SocketAddr>,
    /// Overall deadline of one operation, retries included (e.g. 5s, 500ms).
    #[arg(long, global = true, value_parser = parse_duration, default_value = "5s")]
    timeout: Duration,
    /// Deadline of one RPC attempt, capped by what remains of --timeout.
    #[arg(long, global = true, value_parser = parse_duration, default_value = "1s")]
    attempt_timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Set KEY to VALUE; prints OK.
    Put { key: String, value: String },
    /// Print KEY's value, or "(not found)" with exit status 1.
    Get {
        key: String,
        /// Read the contacted replica's local state (may be stale).
        #[arg(long)]
        stale: bool,
    },
    /// Remove KEY; prints OK or "OK (key did not exist)".
    Delete { key: String },
    /// Write key1..keyN = value1..valueN.
    Prepopulate {
        /// How many keys.
        #[arg(long, default_value_t = 10)]
        count: u32,
    },
    /// Run a scripted sequence of operations and check every answer.
    Demo {
        /// Keys to prepopulate first.
        #[arg(long, default_value_t = 10)]
        count: u32,
    },
    /// Read PUT/GET/DELETE/EXIT commands from stdin.
    Repl,
    /// One line per replica: role, leader, applied slot, keys, digest, failures.
    Status,
    /// Closed-loop load for a fixed time: throughput and latency percentiles per operation kind.
    Bench(bench::BenchArgs),
    /// Kill the leader with a shell command while writing; time until writes succeed again.
    BenchFailover(failover::FailoverArgs),
}

/// Runs the parsed command; returns the exit status.
pub async fn run(args: Args) -> anyhow::Result<u8> {
    let config = ClientConfig {
        servers: args.servers,
        timeout: args.timeout,
        attempt_timeout: args.attempt_timeout,
        ..ClientConfig::default()
    };
    let mut client = Client::connect(config)?;
    match args.command {
        Command::Put { key, value } => cmd_put(&mut client, &key, value).await,
        Command::Get { key, stale } => cmd_get(&client, &key, stale).await,
        Command::Delete { key } => cmd_delete(&mut client, &key).await,
        Command::Prepopulate { count } => cmd_prepopulate(&mut client, count).await,
        Command::Demo { count } => demo::run(&mut client, count).await,
        Command::Repl => repl::run(&mut client).await,
        Command::Status => status::run(&client).await,
        Command::Bench(bench_args) => bench::run(&client, bench_args).await,
        Command::BenchFailover(failover_args) => failover::run(&client, failover_args).await,
    }
}

async fn cmd_put(client: &mut Client, key: &str, value: String) -> anyhow::Result<u8> {
    client.put(key, value.into_bytes()).await?;
    println!("OK");
    Ok(0)
}

async fn cmd_get(client: &Client, key: &str, stale: bool) -> anyhow::Result<u8> {
    let mode = if stale {
        ReadMode::Stale
    } else {
        ReadMode::Linearizable
    };
    match client.get_with(key, mode).await? {
        Some(value) => {
            println!("{}", String::from_utf8_lossy(&value));
            Ok(0)
        }
        None => {
            println!("(not found)");
            Ok(EXIT_NOT_FOUND)
        }
    }
}

async fn cmd_delete(client: &mut Client, key: &str) -> anyhow::Result<u8> {
    let outcome = client.delete(key).await?;
    println!("{}", describe_outcome(&outcome));
    Ok(0)
}

async fn cmd_prepopulate(client: &mut Client, count: u32) -> anyhow::Result<u8> {
    let started = std::time::Instant::now();
    prepopulate(client, count).await?;
    println!(
        "prepopulated {count} keys (key1..key{count}) in {} ms",
        started.elapsed().as_millis()
    );
    Ok(0)
}

/// Writes key1..keyN = value1..valueN.
pub(crate) async fn prepopulate(client: &mut Client, count: u32) -> anyhow::Result<()> {
    for i in 1..=count {
        let key = format!("key{i}");
        client
            .put(&key, format!("value{i}").into_bytes())
            .await
            .with_context(|| format!("prepopulate: PUT {key}"))?;
    }
    Ok(())
}

/// The line printed for a write's outcome.
pub(crate) fn describe_outcome(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Delete { existed: false } => "OK (key did not exist)",
        _ => "OK",
    }
}

/// Parses a duration such as `5s`, `500ms` or `1m 30s`; must be positive.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration =
        humantime::parse_duration(text.trim()).map_err(|e| format!("{e} (examples: 5s, 500ms)"))?;
    if duration.is_zero() {
        return Err("duration must be positive".to_string());
    }
    Ok(duration)
}

/// Parses `host:port` (names are resolved, the first address wins).
fn parse_server(text: &str) -> Result<SocketAddr, String> {
    let mut addrs = text
        .trim()
        .to_socket_addrs()
        .map_err(|e| format!("bad server address {text:?}: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("server address {text:?} resolves to nothing"))
}

/// Local wall-clock time as HH:MM:SS.mmm.
pub(crate) fn timestamp() -> String {
    chrono::Local::now().format("%H:%M:%S%.3f").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration(" 1m 30s "), Ok(Duration::from_secs(90)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn servers_parse_as_a_list() {
        let args =
            Args::try_parse_from(["paxoskv", "--servers", "127.0.0.1:1,127.0.0.1:2", "status"])
                .unwrap();
        assert_eq!(args.servers.len(), 2);
        assert_eq!(args.servers[1].port(), 2);
        let defaults = Args::try_parse_from(["paxoskv", "status"]).unwrap();
        assert_eq!(defaults.servers, paxoskv_client::default_servers());
        assert!(Args::try_parse_from(["paxoskv", "--servers", "nonsense", "status"]).is_err());
        assert!(Args::try_parse_from(["paxoskv", "--bogus", "status"]).is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn timestamp_has_millis() {
        let ts = timestamp();
        assert_eq!(ts.len(), "12:00:01.123".len(), "{ts}");
        assert_eq!(&ts[8..9], ".");
    }
}
