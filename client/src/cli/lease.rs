//! `paxoskv lease grant|revoke|ttl|keepalive`: leases, the expiring half of the lock recipe.

use super::output::Format;
use clap::Subcommand;
use paxoskv_client::Client;
use serde_json::json;
use std::time::Duration;

/// `paxoskv lease ...`
#[derive(Debug, Subcommand)]
pub(crate) enum LeaseCommand {
    /// Create a lease of TTL (e.g. 10s; 1s ..= 1 day) and print its id. Keys put with
    /// `--lease ID` are deleted when it is revoked or no keepalive came for TTL.
    Grant {
        /// Time to live without a keepalive.
        #[arg(value_parser = super::parse_duration)]
        ttl: Duration,
    },
    /// Remove lease ID and delete its keys (at one revision); prints how many.
    Revoke {
        /// The lease id.
        id: u64,
    },
    /// Print lease ID's TTL, its time left on the leader's clock and how many keys it has.
    Ttl {
        /// The lease id.
        id: u64,
    },
    /// Keep lease ID alive: a keepalive every third of its TTL until interrupted (or once).
    Keepalive {
        /// The lease id.
        id: u64,
        /// Send one keepalive and exit.
        #[arg(long)]
        once: bool,
    },
}

/// Runs one lease command.
pub(crate) async fn run(
    client: &mut Client,
    command: LeaseCommand,
    format: Format,
) -> anyhow::Result<u8> {
    match command {
        LeaseCommand::Grant { ttl } => {
            let reply = client.lease_grant(ttl).await?;
            match format {
                Format::Json => {
                    println!("{}", json!({"lease": reply.lease, "ttl_ms": reply.ttl_ms}))
                }
                Format::Simple | Format::Table => println!("{}", reply.lease),
            }
        }
        LeaseCommand::Revoke { id } => {
            let reply = client.lease_revoke(id).await?;
            match format {
                Format::Json => println!(
                    "{}",
                    json!({"lease": id, "deleted_keys": reply.deleted_keys, "revision": reply.revision})
                ),
                Format::Simple | Format::Table => println!(
                    "OK (lease {id} revoked, {} keys deleted, revision {})",
                    reply.deleted_keys, reply.revision
                ),
            }
        }
        LeaseCommand::Ttl { id } => {
            let reply = client.lease_ttl(id).await?;
            let remaining = Duration::from_millis(reply.remaining_ms);
            match format {
                Format::Json => println!(
                    "{}",
                    json!({"lease": id, "ttl_ms": reply.ttl_ms, "remaining_ms": reply.remaining_ms, "keys": reply.keys})
                ),
                Format::Simple | Format::Table => println!(
                    "lease {id}: TTL {}, {} left, {} {}",
                    humantime::format_duration(Duration::from_millis(reply.ttl_ms)),
                    humantime::format_duration(remaining),
                    reply.keys,
                    if reply.keys == 1 { "key" } else { "keys" }
                ),
            }
        }
        LeaseCommand::Keepalive { id, once } => loop {
            let ttl = client.lease_keepalive(id).await?;
            match format {
                Format::Json => println!("{}", json!({"lease": id, "ttl_ms": ttl.as_millis()})),
                Format::Simple | Format::Table => {
                    println!(
                        "lease {id} kept alive for {}",
                        humantime::format_duration(ttl)
                    )
                }
            }
            if once {
                break;
            }
            tokio::time::sleep(ttl / 3).await;
        },
    }
    Ok(0)
}
