//! # paxoskv core
//!
//! A sans-IO Multi-Paxos replica: no tokio, no sockets, no clock, no files. The runtime feeds
//! it peer requests and responses, client commands and ticks, then takes a [`Ready`] and
//! performs it in order: **persist (fsync) -> send -> reply**.
//!
//! Roles live in their own modules: `acceptor` (promise/accept rules), `leader` (phase 2,
//! batching, pipelining, reads), `election` (ticks, pre-vote, phase 1, recovery), `learner`
//! (in-order apply, catch-up, recovery from storage), `kv` (the map and the session table).

#![warn(missing_docs)]

mod acceptor;
pub mod config;
mod election;
pub mod kv;
mod leader;
mod learner;
pub mod log;
pub mod message;
pub mod persist;
pub mod quorum;
mod replica;
mod types;

pub use config::Config;
pub use persist::{Record, RecoveryError, Snapshot};
pub use replica::{
    ClientError, ClientReply, ClientToken, CoreStatus, PeerToken, Ready, Replica, UnsyncedSafe,
};
pub use types::{
    check_key, check_value, Ballot, Command, CommandId, InvalidInput, Op, Outcome, ReplicaId, Slot,
    Value, DEFAULT_MAX_VALUE_BYTES, MAX_KEY_BYTES,
};
