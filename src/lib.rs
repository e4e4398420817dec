//! # paxoskv core
//!
//! A sans-IO Multi-Paxos replica: no tokio, no sockets, no clock, no files. The runtime feeds
//! it peer requests and responses, client commands and ticks, then takes a [`Ready`], sends
//! what it holds at once, syncs its batch of records and reports the batch durable with
//! [`Replica::on_persisted`]. Outputs that vouch for records not yet durable stay inside the
//! core until then (see [`durability`]), so the driver and the simulator share one order.
//!
//! Roles live in their own modules: `acceptor` (promise/accept rules), `leader` (phase 2,
//! batching, pipelining, reads), `election` (ticks, pre-vote, phase 1, recovery), `learner`
//! (in-order apply, catch-up, recovery from storage), `kv` (the map and the session table).

#![warn(missing_docs)]

mod acceptor;
pub mod config;
pub mod durability;
mod election;
pub mod kv;
mod leader;
mod learner;
pub mod leases;
pub mod log;
pub mod message;
pub mod persist;
pub mod quorum;
pub mod refuse;
mod replica;
mod types;
pub mod watch;

pub use config::Config;
pub use durability::{BatchNumber, Ready};
pub use persist::{Record, RecoveryError, Snapshot};
pub use refuse::{Refusal, RefusedCounts};
pub use replica::{
    ClientError, ClientReply, ClientToken, CoreStatus, Footprint, LeaseTtl, PeerToken, Replica,
};
pub use types::{
    check_key, check_lease_ttl, check_value, Ballot, Check, CmpOp, Command, CommandId, Compare,
    InvalidInput, KeyMeta, LeaseError, LeaseId, Op, Outcome, ReplicaId, Slot, Txn, TxnOp,
    TxnOutcome, TxnResult, Value, DEFAULT_MAX_VALUE_BYTES, MAX_KEY_BYTES, MAX_LEASES,
    MAX_LEASE_TTL_MS, MAX_TXN_BYTES, MAX_TXN_COMPARES, MAX_TXN_OPS, MAX_TXN_READ_BYTES,
    MIN_LEASE_TTL_MS,
};
