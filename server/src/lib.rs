//! paxoskv-server: the runtime around the sans-IO core — tarpc services, the driver task,
//! peer links that redial, storage and failure injection.

#![warn(missing_docs)]

pub mod budget;
pub mod certs;
pub mod driver;
pub mod failure;
pub mod limits;
pub mod local;
pub mod metrics;
pub mod metrics_http;
pub mod node;
pub mod peer;
pub mod ports;
pub mod refusals;
pub mod resp;
pub mod rpc;
pub mod snapshot_in;
pub mod storage;
pub mod store;
pub mod watch;

pub use failure::FailMode;
pub use local::LocalCluster;
pub use node::{run_replica, ReplicaOptions};
