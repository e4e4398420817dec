//! Client library of the paxoskv replicated key-value store.
//!
//! A [`Client`] is one session: it finds the leader, follows `NotLeader` hints, retries with
//! the same request id (so a retried write applies once), and gives up with
//! [`ClientError::Unavailable`] when its deadline passes. It never panics on network data.
//!
//! ```no_run
//! # async fn demo() -> Result<(), paxoskv_client::ClientError> {
//! use paxoskv_client::{Client, ClientConfig};
//! let mut client = Client::connect(ClientConfig::default())?;
//! client.put("color", b"blue".to_vec()).await?;
//! assert_eq!(client.get("color").await?, Some(b"blue".to_vec()));
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod client;
mod config;
mod error;
mod pool;
mod retry;

pub use client::Client;
pub use config::{
    default_servers, ClientConfig, ClientSecurity, DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_BASE_PORT,
    DEFAULT_REPLICA_COUNT, DEFAULT_TIMEOUT,
};
pub use error::{format_addrs, ClientError};
pub use paxoskv::{
    Check, CmpOp, Compare, InvalidInput, KeyMeta, LeaseId, Outcome, Txn, TxnOp, TxnOutcome,
    TxnResult,
};
pub use paxoskv_service::{
    Event, EventKind, GetMetaReply, GetReply, KeyRange, KvError, ReadMode, ReplicaStatus, ScanPage,
    TxnReply, WatchReply,
};
