//! Argument parsing and the commands of the `paxoskv` tool.

mod bench;
mod codec;
mod demo;
mod failover;
mod lease;
mod output;
mod plot;
mod repl;
mod status;
mod txn;
mod watch;

use anyhow::Context as _;
use clap::{CommandFactory, Parser, Subcommand};
use codec::Encoding;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use output::Format;
use paxoskv_client::{Client, ClientConfig, ClientSecurity, KeyRange, ReadMode};
use std::ffi::OsString;
use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

pub(crate) use output::describe_outcome;

/// Exit status of a GET that found nothing.
pub const EXIT_NOT_FOUND: u8 = 1;
/// Exit status of any error.
pub const EXIT_ERROR: u8 = 2;
/// Exit status of a conditional write or transaction whose condition did not hold.
pub const EXIT_CONDITION_FAILED: u8 = 3;

const LONG_ABOUT: &str = "\
Command-line client of paxoskv, a key-value store replicated on five servers with Multi-Paxos.

Every write is agreed by a majority of the replicas; reads are linearizable unless --stale is
given. Any replica can be contacted: the client follows the leader's address on its own.
With no command, paxoskv opens an interactive shell (the repl).";

const EXAMPLES: &str = "\
Examples:
  paxoskv put color blue                 store a value given as an argument
  paxoskv put photo --file cat.jpg       store a file's bytes
  echo -n 'multi word' | paxoskv put k - store standard input
  paxoskv get color                      print the value's bytes (exit 1 if not found)
  paxoskv --hex put 6b6579 00ff          binary key and value in hex
  paxoskv -w json get color              {\"key\":\"color\",\"found\":true,...}
  paxoskv scan user/ --limit 50          key=value lines of the keys starting with user/
  paxoskv count user/                    how many keys start with user/
  paxoskv watch user/                    print every change of keys starting with user/
  paxoskv lease grant 10s                print a new lease's id (say 1)
  paxoskv put lock me --if-absent --lease 1   a lock that is released when lease 1 ends
  paxoskv lease keepalive 1              keep it alive (every TTL/3) until interrupted
  paxoskv lease ttl 1                    its TTL, time left on the leader's clock, keys
  paxoskv status                         one row per replica; exit 2 without a majority
  paxoskv get color --show-meta          value, then create_revision, mod_revision, version
  paxoskv put n 2 --if-version 1         write only if n is at version 1 (else exit 3)
  paxoskv put lock me --if-absent        write only if lock does not exist
  printf 'if absent(a)\nthen put a 1\n' | paxoskv txn
  PAXOSKV_SERVERS=h1:15000,h2:15000 paxoskv get k
  paxoskv --cacert certs/ca.pem --cert certs/client.pem --key certs/client-key.pem get k

Exit status: 0 success, 1 key not found, 2 any error, 3 a condition (--if-*, txn) failed.";

/// Command-line client of the paxoskv replicated key-value store.
#[derive(Debug, Parser)]
#[command(name = "paxoskv", version, about, long_about = LONG_ABOUT, after_help = EXAMPLES)]
pub struct Args {
    /// Replica addresses, comma separated, in replica-id order. One reachable replica is
    /// enough for get, put and delete; status judges the majority against this list.
    #[arg(
        long,
        visible_alias = "endpoints",
        global = true,
        env = "PAXOSKV_SERVERS",
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
    /// KEY and VALUE arguments are hex; get prints values in hex.
    #[arg(long, global = true, conflicts_with = "base64")]
    hex: bool,
    /// KEY and VALUE arguments are base64; get prints values in base64.
    #[arg(long, global = true)]
    base64: bool,
    /// Output of get, put, delete and status: simple (bare answer; default, status: table),
    /// table (columns with a header) or json.
    #[arg(short = 'w', long = "write-out", global = true, value_enum)]
    write_out: Option<Format>,
    /// Use TLS, verifying the servers' certificates with this CA (PEM).
    #[arg(long, global = true, value_name = "FILE", env = "PAXOSKV_CACERT")]
    cacert: Option<PathBuf>,
    /// Client certificate (PEM) for servers that require one; needs --key and --cacert.
    #[arg(long, global = true, value_name = "FILE", env = "PAXOSKV_CERT")]
    cert: Option<PathBuf>,
    /// Private key of --cert (PEM).
    // Its own id: the subcommands' KEY argument is called `key` too.
    #[arg(
        long = "key",
        id = "tls_key",
        global = true,
        value_name = "FILE",
        env = "PAXOSKV_KEY"
    )]
    tls_key: Option<PathBuf>,
    /// File holding a bearer token for servers started with --auth-token-file.
    #[arg(long, global = true, value_name = "FILE", env = "PAXOSKV_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Set KEY to VALUE (an argument, "-" for stdin, or --file); prints OK.
    Put {
        /// The key (UTF-8, at most 1024 bytes).
        key: String,
        /// The value (at most 1 MiB); "-" reads it from standard input.
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        value: Option<OsString>,
        /// Read the value from this file, byte for byte.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// Write only if KEY's version is N (0: absent); else print why and exit 3.
        #[arg(long, value_name = "N")]
        if_version: Option<u64>,
        /// Write only if KEY does not exist; else exit 3.
        #[arg(long)]
        if_absent: bool,
        /// Write only if KEY's value is V; else exit 3.
        #[arg(long, value_name = "V")]
        if_value: Option<String>,
        /// Attach KEY to this lease (`paxoskv lease grant`): it is deleted when the lease ends.
        #[arg(long, value_name = "ID")]
        lease: Option<u64>,
    },
    /// Print KEY's value as raw bytes; "not found" goes to stderr with exit status 1.
    Get {
        /// The key.
        key: String,
        /// Read the contacted replica's local state (may be stale).
        #[arg(long)]
        stale: bool,
        /// Also print create_revision, mod_revision and version (-w json always does).
        #[arg(long)]
        show_meta: bool,
    },
    /// Print the keys starting with PREFIX in byte order as key=value lines (-w json: one
    /// object), following continuations up to --limit; "more" on stderr if the range holds more.
    Scan {
        /// The prefix ("" for every key).
        prefix: String,
        /// Most entries to print.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Read the contacted replica's local state (may be stale).
        #[arg(long)]
        stale: bool,
    },
    /// Print how many keys start with PREFIX ("" for every key).
    Count {
        /// The prefix.
        prefix: String,
        /// Count in the contacted replica's local state (may be stale).
        #[arg(long)]
        stale: bool,
    },
    /// Remove KEY; prints OK or "OK (key did not exist)".
    Delete {
        /// The key.
        key: String,
        /// Delete only if KEY's version is N; else print why and exit 3.
        #[arg(long, value_name = "N")]
        if_version: Option<u64>,
    },
    /// Run a transaction read from stdin (if/then/else lines, see README "Data model");
    /// exit 3 when its compares did not hold (the else ops ran).
    Txn,
    /// Write key1..keyN = value1..valueN (a progress bar on a terminal).
    Prepopulate {
        /// How many keys.
        #[arg(long, default_value_t = 10)]
        count: u32,
        /// Sessions writing at once (each writes every Nth key).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
        concurrency: u32,
        /// Values of exactly this many bytes instead of "valueI".
        #[arg(long)]
        value_bytes: Option<usize>,
    },
    /// Run a scripted sequence of operations and check every answer.
    Demo {
        /// Keys to prepopulate first.
        #[arg(long, default_value_t = 10)]
        count: u32,
    },
    /// Interactive shell: PUT/GET/DELETE/STATUS/EXIT, with history; reads a script from a pipe.
    Repl,
    /// One row per replica: id, address, role, leader, ballot, applied slot, lag, digest,
    /// failures; exit status 2 when no majority is reachable.
    Status,
    /// Leases: grant, revoke, keepalive (see README "Leases").
    #[command(subcommand)]
    Lease(lease::LeaseCommand),
    /// Print every change (put, delete) of the keys starting with PREFIX, in revision order
    /// ("REV PUT KEY VALUE", "REV DELETE KEY"), following leader changes and reconnects.
    Watch(watch::WatchArgs),
    /// Closed-loop load for a fixed time: throughput and latency percentiles per operation kind.
    Bench(bench::BenchArgs),
    /// Kill the leader with a shell command while writing; time until writes succeed again.
    BenchFailover(failover::FailoverArgs),
    /// Print a shell completion script, e.g. `paxoskv completions bash > /etc/bash_completion.d/paxoskv`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Runs the parsed command; returns the exit status.
pub async fn run(args: Args) -> anyhow::Result<u8> {
    let encoding = Encoding::from_flags(args.hex, args.base64);
    let command = args.command.unwrap_or(Command::Repl);
    let format = args.write_out.unwrap_or_default();
    if let Command::Completions { shell } = command {
        print_completions(shell)?;
        return Ok(0);
    }
    let config = ClientConfig {
        servers: args.servers,
        timeout: args.timeout,
        attempt_timeout: args.attempt_timeout,
        // A person at a prompt wants "no server" at once, not after the whole deadline.
        fail_fast_when_refused: true,
        security: ClientSecurity {
            cacert: args.cacert,
            cert: args.cert,
            key: args.tls_key,
            token_file: args.token_file,
        },
        ..ClientConfig::default()
    };
    let mut client = Client::connect(config)?;
    match command {
        Command::Put {
            key,
            value,
            file,
            if_version,
            if_absent,
            if_value,
            lease,
        } => {
            let key = encoding.decode_key(&key)?;
            let value = put_value(&client, encoding, value, file)?;
            let compares = txn::conditions(&key, if_version, if_absent, if_value);
            if let Some(lease) = lease {
                let put = paxoskv_client::TxnOp::PutLeased {
                    key: key.clone(),
                    value,
                    lease: paxoskv_client::LeaseId(lease),
                };
                let txn = paxoskv_client::Txn {
                    compares,
                    success: vec![put],
                    failure: Vec::new(),
                };
                txn::cmd_conditional(&mut client, txn, &key, format).await
            } else if compares.is_empty() {
                cmd_put(&mut client, &key, value, format).await
            } else {
                let put = paxoskv_client::Txn::put_if(compares, key.clone(), value);
                txn::cmd_conditional(&mut client, put, &key, format).await
            }
        }
        Command::Get {
            key,
            stale,
            show_meta,
        } => {
            let key = encoding.decode_key(&key)?;
            if show_meta || format == Format::Json {
                txn::cmd_get_meta(&client, &key, read_mode(stale), format, encoding).await
            } else {
                cmd_get(&client, &key, stale, format, encoding).await
            }
        }
        Command::Txn => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("cannot read the transaction from stdin")?;
            let parsed = txn::parse_txn(&text).context("bad transaction")?;
            txn::cmd_txn(&mut client, parsed, format).await
        }
        Command::Scan {
            prefix,
            limit,
            stale,
        } => {
            let range = KeyRange::Prefix(encoding.decode_key_or_empty(&prefix)?);
            let (entries, more) = client.scan(&range, limit, read_mode(stale)).await?;
            output::print_scan(format, encoding, &entries, more)
                .context("cannot write to stdout")?;
            if more && format != Format::Json {
                eprintln!("more keys after the first {limit} (raise --limit)");
            }
            Ok(0)
        }
        Command::Count { prefix, stale } => {
            let range = KeyRange::Prefix(encoding.decode_key_or_empty(&prefix)?);
            let keys = client.count(&range, read_mode(stale)).await?;
            match format {
                Format::Json => {
                    println!("{}", serde_json::json!({"prefix": prefix, "count": keys}))
                }
                Format::Simple | Format::Table => println!("{keys}"),
            }
            Ok(0)
        }
        Command::Delete { key, if_version } => {
            let key = encoding.decode_key(&key)?;
            match if_version {
                None => cmd_delete(&mut client, &key, format).await,
                Some(n) => {
                    let compares = txn::conditions(&key, Some(n), false, None);
                    let delete = paxoskv_client::Txn::delete_if(compares, key.clone());
                    txn::cmd_conditional(&mut client, delete, &key, format).await
                }
            }
        }
        Command::Prepopulate {
            count,
            concurrency,
            value_bytes,
        } => cmd_prepopulate(&client, count, concurrency, value_bytes).await,
        Command::Demo { count } => demo::run(&mut client, count).await,
        Command::Repl => repl::run(&mut client).await,
        Command::Status => status::run(&client, args.write_out.unwrap_or(Format::Table)).await,
        Command::Lease(lease_command) => lease::run(&mut client, lease_command, format).await,
        Command::Watch(watch_args) => watch::run(&client, watch_args, format, encoding).await,
        Command::Bench(bench_args) => bench::run(&client, bench_args).await,
        Command::BenchFailover(failover_args) => failover::run(&client, failover_args).await,
        Command::Completions { .. } => unreachable!("handled before connecting"),
    }
}

/// Prints the completion script. Generated into memory first: clap_complete panics on a
/// write error, and `paxoskv completions bash | head` closes the pipe early.
fn print_completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Args::command(), "paxoskv", &mut script);
    match std::io::Write::write_all(&mut std::io::stdout().lock(), &script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write the completion script")
        }
        _ => Ok(()),
    }
}

/// The value of a put: from --file, from stdin for "-", else the (decoded) argument.
fn put_value(
    client: &Client,
    encoding: Encoding,
    value: Option<OsString>,
    file: Option<PathBuf>,
) -> anyhow::Result<Vec<u8>> {
    let limit = client.config().max_value_bytes;
    if let Some(path) = file {
        return codec::read_file(&path, limit);
    }
    let value = value.context("give a VALUE, \"-\" for stdin, or --file")?;
    if value == "-" {
        return codec::read_stdin(limit);
    }
    encoding
        .decode(value.as_encoded_bytes())
        .context("the VALUE argument")
}

async fn cmd_put(
    client: &mut Client,
    key: &str,
    value: Vec<u8>,
    format: Format,
) -> anyhow::Result<u8> {
    let outcome = client.put(key, value).await?;
    output::print_outcome(format, key, &outcome);
    Ok(0)
}

async fn cmd_get(
    client: &Client,
    key: &str,
    stale: bool,
    format: Format,
    encoding: Encoding,
) -> anyhow::Result<u8> {
    match client.get_with(key, read_mode(stale)).await? {
        Some(value) => {
            output::print_value(format, encoding, key, &value).context("cannot write to stdout")?;
            Ok(0)
        }
        None => {
            output::print_not_found(format, key);
            Ok(EXIT_NOT_FOUND)
        }
    }
}

fn read_mode(stale: bool) -> ReadMode {
    if stale {
        ReadMode::Stale
    } else {
        ReadMode::Linearizable
    }
}

async fn cmd_delete(client: &mut Client, key: &str, format: Format) -> anyhow::Result<u8> {
    let outcome = client.delete(key).await?;
    output::print_outcome(format, key, &outcome);
    Ok(0)
}

async fn cmd_prepopulate(
    client: &Client,
    count: u32,
    concurrency: u32,
    value_bytes: Option<usize>,
) -> anyhow::Result<u8> {
    let started = std::time::Instant::now();
    let progress = progress_bar(u64::from(count));
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let (mut session, progress) = (client.new_session(), progress.clone());
            tokio::spawn(async move {
                // Worker w writes keys w+1, w+1+C, ...: every key once, in parallel.
                for i in (worker + 1..=count).step_by(concurrency as usize) {
                    put_numbered(&mut session, i, value_bytes).await?;
                    progress.inc(1);
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker.await.context("prepopulate worker")??;
    }
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "prepopulated {count} keys (key1..key{count}) in {} ms ({:.0} keys/s)",
        (seconds * 1000.0) as u64,
        f64::from(count) / seconds.max(1e-9)
    );
    Ok(0)
}

/// PUT keyI = valueI (or `value_bytes` bytes).
async fn put_numbered(
    client: &mut Client,
    i: u32,
    value_bytes: Option<usize>,
) -> anyhow::Result<()> {
    let key = format!("key{i}");
    let value = match value_bytes {
        Some(n) => vec![b'v'; n],
        None => format!("value{i}").into_bytes(),
    };
    client
        .put(&key, value)
        .await
        .with_context(|| format!("prepopulate: PUT {key}"))?;
    Ok(())
}

/// Writes key1..keyN = value1..valueN, with a progress bar when stderr is a terminal.
pub(crate) async fn prepopulate(client: &mut Client, count: u32) -> anyhow::Result<()> {
    let progress = progress_bar(u64::from(count));
    for i in 1..=count {
        put_numbered(client, i, None).await?;
        progress.inc(1);
    }
    progress.finish_and_clear();
    Ok(())
}

fn progress_bar(len: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} keys, {per_sec}, eta {eta}")
    {
        bar.set_style(style);
    }
    bar
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
        let alias =
            Args::try_parse_from(["paxoskv", "--endpoints", "127.0.0.1:7", "status"]).unwrap();
        assert_eq!(alias.servers[0].port(), 7);
    }

    #[test]
    fn no_command_means_the_repl() {
        let args = Args::try_parse_from(["paxoskv"]).unwrap();
        assert!(args.command.is_none());
    }

    #[test]
    fn put_needs_a_value_or_a_file_but_not_both() {
        assert!(Args::try_parse_from(["paxoskv", "put", "k"]).is_err());
        assert!(Args::try_parse_from(["paxoskv", "put", "k", "--file", "f"]).is_ok());
        assert!(Args::try_parse_from(["paxoskv", "put", "k", "v", "--file", "f"]).is_err());
        assert!(Args::try_parse_from(["paxoskv", "--hex", "--base64", "get", "k"]).is_err());
    }

    #[test]
    fn every_argument_has_help() {
        fn check(command: &clap::Command, path: &str) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                assert!(arg.get_help().is_some(), "{path} {id} has no help");
            }
            for sub in command.get_subcommands() {
                assert!(
                    sub.get_about().is_some(),
                    "{path} {} has no about",
                    sub.get_name()
                );
                check(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        check(&Args::command(), "paxoskv");
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
