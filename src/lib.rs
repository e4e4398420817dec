//! # paxoskv core
//!
//! A sans-IO Multi-Paxos replica: no tokio, no sockets, no clock, no files. The runtime feeds
//! it peer requests and responses, client commands and ticks, then takes a [`Ready`] and
//! performs it in order: **persist (fsync) -> send -> reply**.

#![warn(missing_docs)]

pub mod message;
mod types;

pub use types::{
    check_key, check_value, Ballot, Command, CommandId, InvalidInput, Op, Outcome, ReplicaId,
    Slot, Value, DEFAULT_MAX_VALUE_BYTES, MAX_KEY_BYTES,
};
