//! `paxoskv watch`: follows the changes of a prefix, one line per event, across leader
//! changes and reconnects (every long-poll resumes from the revision after the last one seen).

use super::codec::Encoding;
use super::output::Format;
use super::EXIT_ERROR;
use anyhow::Context as _;
use clap::Args;
use paxoskv_client::{Client, ClientError, Event, EventKind, KeyRange, KvError};
use serde_json::json;
use std::io::Write;
use std::time::Duration;

/// Events asked for in one long-poll.
const EVENTS_PER_POLL: u32 = 1000;
/// Pause before asking again after the cluster could not be reached.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Options of `paxoskv watch`.
#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// The prefix ("" for every key).
    prefix: String,
    /// First revision to print (default: the changes after the serving replica's newest).
    #[arg(long, value_name = "R")]
    from_revision: Option<u64>,
    /// Exit after printing this many events (default: follow until interrupted).
    #[arg(long, value_name = "N")]
    max_events: Option<u64>,
    /// Exit when no event came for this long (default: never).
    #[arg(long, value_parser = super::parse_duration, value_name = "DURATION")]
    idle_exit: Option<Duration>,
    /// How long one long-poll waits on the server for news.
    #[arg(long, value_parser = super::parse_duration, default_value = "10s")]
    poll: Duration,
}

/// Prints events until `--max-events`, `--idle-exit` or a fatal error; exit 2 on a
/// compacted history.
pub(crate) async fn run(
    client: &Client,
    args: WatchArgs,
    format: Format,
    encoding: Encoding,
) -> anyhow::Result<u8> {
    let range = KeyRange::Prefix(encoding.decode_key_or_empty(&args.prefix)?);
    let mut next = args.from_revision.unwrap_or(0);
    let mut printed = 0u64;
    let mut idle = Duration::ZERO;
    let poll = args.idle_exit.map_or(args.poll, |i| i.min(args.poll));
    loop {
        if args.max_events.is_some_and(|m| printed >= m) {
            return Ok(0);
        }
        if args.idle_exit.is_some_and(|i| idle >= i) {
            return Ok(0);
        }
        let started = std::time::Instant::now();
        match client.watch_once(&range, next, EVENTS_PER_POLL, poll).await {
            Ok(reply) => {
                idle = if reply.events.is_empty() {
                    idle + started.elapsed()
                } else {
                    Duration::ZERO
                };
                let left = args.max_events.map_or(u64::MAX, |m| m - printed);
                for event in reply
                    .events
                    .iter()
                    .take(left.min(usize::MAX as u64) as usize)
                {
                    print_event(format, encoding, event).context("cannot write to stdout")?;
                    printed += 1;
                }
                next = reply.next_revision;
            }
            Err(ClientError::Server(KvError::Compacted { oldest_revision })) => {
                eprintln!(
                    "watch: revision {next} is no longer in any replica's history (oldest: \
                     {oldest_revision}); read the current state, then watch with \
                     --from-revision {oldest_revision}"
                );
                return Ok(EXIT_ERROR);
            }
            Err(e) if retryable(&e) => {
                eprintln!("watch: {e}; retrying from revision {next}");
                tokio::time::sleep(RETRY_PAUSE).await;
                idle += started.elapsed();
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Errors a watch rides out: the cluster may come back.
fn retryable(error: &ClientError) -> bool {
    match error {
        ClientError::Unavailable { .. } | ClientError::NoServer { .. } => true,
        ClientError::Server(kv) => kv.is_retryable(),
        _ => false,
    }
}

/// `REV PUT KEY VALUE` / `REV DELETE KEY`, or one JSON object per line.
fn print_event(format: Format, encoding: Encoding, event: &Event) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => {
            let (value, name) = encoding.encode_text(&event.value);
            let kind = match event.kind {
                EventKind::Put => "put",
                EventKind::Delete => "delete",
            };
            let line = json!({
                "revision": event.revision,
                "kind": kind,
                "key": event.key,
                "value": (event.kind == EventKind::Put).then_some(value),
                "encoding": name,
                "create_revision": event.meta.create_revision,
                "mod_revision": event.meta.mod_revision,
                "version": event.meta.version,
            });
            writeln!(out, "{line}")?;
        }
        Format::Simple | Format::Table => match event.kind {
            EventKind::Put => writeln!(
                out,
                "{} PUT {} {}",
                event.revision,
                event.key,
                encoding.encode_text(&event.value).0
            )?,
            EventKind::Delete => writeln!(out, "{} DELETE {}", event.revision, event.key)?,
        },
    }
    out.flush()
}
