//! One replica's whole runtime: listener, both services, driver, peer links and failure
//! injection. `run_replica` takes an already bound listener, so tests can bind port 0.

use crate::budget::ByteBudget;
use crate::driver::{Driver, DriverLimits, DriverTiming, SnapshotPolicy};
use crate::failure::{FailMode, FailureInjector};
use crate::limits::{
    accept_error_cause, AcceptBackoff, ConnectionCounter, ConnectionLimits, LogLimiter, Refused,
};
use crate::metrics::ReplicaMetrics;
use crate::peer::PeerLink;
use crate::refusals::WarnGate;
use crate::rpc::{KvServer, ReplicaServer, Shared};
use crate::snapshot_in::{SnapshotReceiveLimits, SnapshotReceiver};
use crate::store::ReplicaStore;
use futures::StreamExt;
use paxoskv::{Config, Replica, ReplicaId};
use paxoskv_service::tls::{
    read_preamble, replica_cert_name, write_verdict, PeerIdentity, ServerSecurity,
};
use paxoskv_service::{
    guarded_server_transport, Caller, Dialer, FrameBudget, KvRpc, ReplicaRpc, ServiceTag,
};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tarpc::server::{BaseChannel, Channel};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Warnings about refused connections or failed accepts, per cause, are this far apart.
const CONNECTION_WARN_INTERVAL: Duration = Duration::from_secs(1);
/// A new connection must finish its TLS handshake (if any) and preamble within this time.
const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;

/// Everything one replica needs to run.
pub struct ReplicaOptions {
    /// This replica's id.
    pub id: ReplicaId,
    /// Every replica's address (including ours), by id.
    pub addrs: Vec<SocketAddr>,
    /// Failure injection.
    pub fail_mode: FailMode,
    /// Core tick length.
    pub tick_ms: u64,
    /// Timeout of one peer call.
    pub peer_timeout_ms: u64,
    /// Longest a client request waits in the server.
    pub request_timeout_ms: u64,
    /// Largest value accepted.
    pub max_value_bytes: usize,
    /// When to snapshot.
    pub snapshot_policy: SnapshotPolicy,
    /// Allow partitions to be set through the client API (tests only).
    pub fault_control: bool,
    /// TLS and token policy of incoming connections (default: plaintext, no token).
    pub security: ServerSecurity,
    /// How this replica dials its peers (default: plaintext). With TLS it presents this
    /// replica's certificate and expects `replica-J.paxoskv` from peer J.
    pub peer_dialer: Dialer,
    /// Connection caps, frame limits and the frame budget.
    pub limits: ConnectionLimits,
    /// Bytes of client commands in this replica's handlers at once (forwarded ones
    /// included); more get `Busy`.
    pub max_inflight_bytes: usize,
    /// Bytes of large peer requests between the handlers and the driver at once; more are
    /// dropped unanswered (the sender resends).
    pub max_peer_inflight_bytes: usize,
    /// Bytes of large requests in flight to one peer at once; more are dropped.
    pub max_peer_send_bytes: usize,
    /// Bytes of commands in the leader's queue (`Config::max_pending_bytes`).
    pub max_pending_bytes: usize,
    /// Bytes of applied log entries kept in memory (`Config::max_log_tail_bytes`).
    pub max_log_tail_bytes: usize,
    /// Bytes of log entries above the chosen prefix (`Config::max_open_bytes`).
    pub max_open_bytes: usize,
    /// Bounds of receiving a snapshot.
    pub snapshot_receive: SnapshotReceiveLimits,
    /// Metric handles (registered in the process's `--metrics-addr` registry; `None`: kept
    /// but exported nowhere).
    pub metrics: Option<Arc<ReplicaMetrics>>,
    /// How recently the leader (or, for a leader, a majority) must have been heard from
    /// for `/readyz` to say ready.
    pub ready_contact_ms: u64,
    /// A bound listener for the Redis protocol front end, and how it behaves (`None`: no
    /// RESP port).
    pub resp: Option<(TcpListener, crate::resp::RespOptions)>,
    /// Change events the watch history keeps (the oldest whole revisions go first).
    pub watch_history_events: usize,
    /// Bytes of change events the watch history keeps.
    pub watch_history_bytes: usize,
}

/// Default of [`ReplicaOptions::max_inflight_bytes`].
pub const DEFAULT_MAX_INFLIGHT_BYTES: usize = 32 * 1024 * 1024;
/// Default of [`ReplicaOptions::max_peer_inflight_bytes`].
pub const DEFAULT_MAX_PEER_INFLIGHT_BYTES: usize = 32 * 1024 * 1024;

impl ReplicaOptions {
    /// Defaults for replica `id` of `addrs`.
    pub fn new(id: ReplicaId, addrs: Vec<SocketAddr>) -> ReplicaOptions {
        let defaults = Config::new(0, 1);
        ReplicaOptions {
            id,
            addrs,
            fail_mode: FailMode::Off,
            tick_ms: 10,
            peer_timeout_ms: 200,
            request_timeout_ms: 3_000,
            max_value_bytes: paxoskv::DEFAULT_MAX_VALUE_BYTES,
            snapshot_policy: SnapshotPolicy::default(),
            fault_control: false,
            security: ServerSecurity::default(),
            peer_dialer: Dialer::plain(),
            limits: ConnectionLimits::default(),
            max_inflight_bytes: DEFAULT_MAX_INFLIGHT_BYTES,
            max_peer_inflight_bytes: DEFAULT_MAX_PEER_INFLIGHT_BYTES,
            max_peer_send_bytes: DriverLimits::default().max_peer_send_bytes,
            max_pending_bytes: defaults.max_pending_bytes,
            max_log_tail_bytes: defaults.max_log_tail_bytes,
            max_open_bytes: defaults.max_open_bytes,
            snapshot_receive: SnapshotReceiveLimits::default(),
            metrics: None,
            ready_contact_ms: crate::metrics::DEFAULT_READY_CONTACT_MS,
            resp: None,
            watch_history_events: crate::watch::DEFAULT_HISTORY_EVENTS,
            watch_history_bytes: crate::watch::DEFAULT_HISTORY_BYTES,
        }
    }

    /// The core configuration for these options.
    pub fn core_config(&self) -> Config {
        let mut cfg = Config::new(self.id, self.addrs.len() as u32);
        cfg.seed = rand::random();
        cfg.max_value_bytes = self.max_value_bytes;
        cfg.max_pending_bytes = self.max_pending_bytes;
        cfg.max_log_tail_bytes = self.max_log_tail_bytes;
        cfg.max_open_bytes = self.max_open_bytes;
        cfg.tick_ms = self.tick_ms;
        cfg
    }

    /// Bytes the largest write holds in a handler's budget.
    pub fn largest_write_bytes(&self) -> usize {
        // Key, value and overhead, twice (a copy kept for forwarding): see `rpc.rs`.
        2 * (self.max_value_bytes + paxoskv::MAX_KEY_BYTES + 32 + 256)
    }

    /// Checks that the bounds fit together, e.g. that the largest value fits the budgets.
    pub fn validate(&self) -> Result<(), String> {
        let largest = self.largest_write_bytes();
        if self.max_inflight_bytes < largest {
            return Err(format!(
                "--max-inflight-bytes {} cannot hold one write of the largest value ({} bytes needed for --max-value-bytes {})",
                self.max_inflight_bytes, largest, self.max_value_bytes
            ));
        }
        let one_slot = self.max_value_bytes + paxoskv::MAX_KEY_BYTES + 32;
        for (flag, bytes) in [
            ("--max-peer-inflight-bytes", self.max_peer_inflight_bytes),
            ("--max-peer-send-bytes", self.max_peer_send_bytes),
            ("--max-open-bytes", self.max_open_bytes),
        ] {
            if bytes < one_slot {
                return Err(format!(
                    "{flag} {bytes} cannot hold one accept of the largest value ({one_slot} bytes)"
                ));
            }
        }
        Ok(())
    }
}

/// Runs one replica on `listener` until `shutdown` becomes true.
pub async fn run_replica(
    listener: TcpListener,
    mut options: ReplicaOptions,
    core: Replica,
    store: Box<dyn ReplicaStore>,
    shutdown: watch::Receiver<bool>,
) {
    let id = options.id;
    let resp = options.resp.take();
    let peers: Arc<Vec<Option<Arc<PeerLink>>>> = Arc::new(
        options
            .addrs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                (i as ReplicaId != id)
                    .then(|| Arc::new(PeerLink::new(i as ReplicaId, *a, peer_dialer(&options, i))))
            })
            .collect(),
    );
    let timing = DriverTiming {
        tick_ms: options.tick_ms,
        peer_timeout_ms: options.peer_timeout_ms,
        ready_contact: Duration::from_millis(options.ready_contact_ms),
    };
    let metrics = options
        .metrics
        .clone()
        .unwrap_or_else(|| ReplicaMetrics::unregistered(id, options.addrs.len() as u32));
    tracing::info!(replica = id, storage = %store.describe(), "starting replica");
    let receiver = SnapshotReceiver::new(id, store.scratch_dir(), options.snapshot_receive.clone());
    let snapshot_receiver = match receiver {
        Ok(r) => r,
        Err(e) => {
            return tracing::error!(replica = id, error = %e, "cannot prepare the snapshot temp directory; replica not started")
        }
    };
    let limits = DriverLimits {
        max_peer_send_bytes: options.max_peer_send_bytes,
    };
    let failure = FailureInjector::new(options.fail_mode);
    if options.fault_control {
        failure.enable_control();
        tracing::warn!(
            replica = id,
            "fault control enabled: clients may partition this replica"
        );
    }
    let (mut driver, tx, failed) = Driver::new(
        core,
        store,
        peers.clone(),
        timing,
        options.snapshot_policy,
        limits,
        failure.clone(),
    );
    driver.set_metrics(metrics.clone());
    let watch = Arc::new(crate::watch::WatchHub::new(
        options.watch_history_events,
        options.watch_history_bytes,
    ));
    driver.set_watch_hub(watch.clone());
    let snapshot_sources = driver.snapshot_sources();
    let shared = Arc::new(Shared {
        id,
        addrs: options.addrs.clone(),
        peers,
        driver: tx,
        failed,
        failure: failure.clone(),
        max_value_bytes: options.max_value_bytes,
        request_timeout: Duration::from_millis(options.request_timeout_ms),
        security: options.security.clone(),
        frame_budget: FrameBudget::new(options.limits.frame_budget_bytes),
        limits: options.limits.clone(),
        snapshot_receiver,
        snapshot_sources,
        client_bytes: ByteBudget::new("client in-flight", options.max_inflight_bytes),
        peer_in_bytes: ByteBudget::new("peer in-flight", options.max_peer_inflight_bytes),
        metrics,
        watch,
    });
    let driver_task = tokio::spawn(driver.run(shutdown.clone()));
    tokio::spawn(failure.run_down_schedule(id, shutdown.clone()));
    if let Some((listener, resp_options)) = resp {
        tokio::spawn(crate::resp::serve(
            listener,
            shared.clone(),
            resp_options,
            shutdown.clone(),
        ));
    }
    accept_loop(listener, shared, shutdown).await;
    let _ = driver_task.await;
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let counter = ConnectionCounter::new(
        shared.limits.max_connections,
        shared.limits.max_connections_per_ip,
    );
    let mut warnings = LogLimiter::new(CONNECTION_WARN_INTERVAL);
    let mut backoff = AcceptBackoff::default();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, from)) => {
                    backoff.succeeded();
                    match counter.try_admit(from.ip()) {
                        Ok(guard) => {
                            let conn = serve_connection(stream, shared.clone());
                            let stop = shutdown.clone();
                            let open = shared.metrics.connections_open.clone();
                            open.inc();
                            tokio::spawn(async move {
                                until_shutdown(conn, stop).await;
                                drop(guard);
                                open.dec();
                            });
                        }
                        // Dropping the stream closes it at once: a refused connection
                        // costs no task, no buffer and no file descriptor past here.
                        Err(refused) => warn_refused(&mut warnings, shared.id, refused, from),
                    }
                }
                Err(e) => {
                    let cause = accept_error_cause(&e);
                    if let Some(held_back) = warnings.allow(cause, std::time::Instant::now()) {
                        tracing::warn!(replica = shared.id, error = %e, cause, held_back, "accept failed");
                    }
                    // Out of descriptors, retrying at once only spins; wait for some to close.
                    tokio::select! {
                        _ = shutdown.changed() => break,
                        _ = tokio::time::sleep(backoff.failed()) => {}
                    }
                }
            },
        }
    }
}

fn warn_refused(
    warnings: &mut LogLimiter<&'static str>,
    replica: ReplicaId,
    refused: Refused,
    from: SocketAddr,
) {
    let cause = match refused {
        Refused::ListenerFull { .. } => "listener full",
        Refused::AddressFull { .. } => "address full",
    };
    if let Some(held_back) = warnings.allow(cause, std::time::Instant::now()) {
        tracing::warn!(replica, %from, %refused, held_back, "connection refused");
    }
}

async fn until_shutdown(work: impl Future<Output = ()>, mut shutdown: watch::Receiver<bool>) {
    tokio::select! {
        _ = work => {}
        _ = shutdown.changed() => {}
    }
}

/// The dialer for peer `i`: over TLS the peer must prove `replica-i.paxoskv`, so one replica
/// cannot pose as another to us either.
fn peer_dialer(options: &ReplicaOptions, i: usize) -> Dialer {
    if !options.peer_dialer.is_tls() {
        return options.peer_dialer.clone();
    }
    let name = replica_cert_name(i as ReplicaId);
    match options.peer_dialer.expecting_server_name(&name) {
        Ok(dialer) => dialer,
        Err(e) => {
            // Cannot happen for names of this form; dialling will then fail visibly.
            tracing::error!(peer = i, error = %e, "bad peer certificate name");
            options.peer_dialer.clone()
        }
    }
}

/// Warnings about refused connections.
static REFUSED_CONNECTION_WARNINGS: WarnGate = WarnGate::new();

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    if stream.set_nodelay(true).is_err() {
        return;
    }
    let peer_addr = stream.peer_addr().ok();
    let handshake = Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
    let security = shared.security.clone();
    match &security.tls {
        None => {
            let mut stream = stream;
            let admitted = tokio::time::timeout(
                handshake,
                admit(&mut stream, &security, PeerIdentity::Anonymous, peer_addr),
            )
            .await;
            if let Some((tag, caller)) = flatten_admission(admitted) {
                serve_stream(stream, tag, caller, shared).await
            }
        }
        Some(tls) => {
            let accepted = tokio::time::timeout(handshake, async {
                let (mut stream, identity) = tls.accept(stream).await?;
                let admitted = admit(&mut stream, &security, identity, peer_addr).await?;
                Ok::<_, std::io::Error>(admitted.map(|a| (stream, a)))
            })
            .await;
            if let Some((stream, (tag, caller))) = flatten_admission(accepted) {
                serve_stream(stream, tag, caller, shared).await
            }
        }
    }
}

fn flatten_admission<T>(
    outcome: Result<std::io::Result<Option<T>>, tokio::time::error::Elapsed>,
) -> Option<T> {
    match outcome {
        Ok(Ok(admitted)) => admitted,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "connection handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("connection did not finish its handshake in time");
            None
        }
    }
}

/// Reads the preamble, decides, answers. `None` when refused (the answer says why).
async fn admit<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    security: &ServerSecurity,
    identity: PeerIdentity,
    peer_addr: Option<std::net::SocketAddr>,
) -> std::io::Result<Option<(ServiceTag, Caller)>> {
    let (tag, token) = read_preamble(stream).await?;
    match security.authorize(tag, identity, &token) {
        Ok(caller) => {
            write_verdict(stream, Ok(())).await?;
            Ok(Some((tag, caller)))
        }
        Err(reason) => {
            if REFUSED_CONNECTION_WARNINGS.due() {
                tracing::warn!(peer = ?peer_addr, ?tag, ?identity, %reason, "refused a connection");
            }
            write_verdict(stream, Err(&reason)).await?;
            Ok(None)
        }
    }
}

async fn serve_stream<S>(stream: S, tag: ServiceTag, caller: Caller, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let budget = shared.frame_budget.clone();
    let max_requests = shared.limits.max_requests_per_connection;
    match tag {
        ServiceTag::Replica => {
            let peer = match caller {
                Caller::Replica(id) => Some(id),
                _ => None,
            };
            let limits = shared.limits.replica_frames;
            let transport = guarded_server_transport(stream, limits, budget);
            BaseChannel::with_defaults(transport)
                .max_concurrent_requests(max_requests)
                .execute(ReplicaServer(shared, peer).serve())
                .for_each(|fut| async move {
                    tokio::spawn(fut);
                })
                .await
        }
        ServiceTag::Kv => {
            let limits = shared.limits.kv_frames;
            let transport = guarded_server_transport(stream, limits, budget);
            BaseChannel::with_defaults(transport)
                .max_concurrent_requests(max_requests)
                .execute(KvServer(shared, caller).serve())
                .for_each(|fut| async move {
                    tokio::spawn(fut);
                })
                .await
        }
    }
}

/// Why a replica could not be opened from its directory.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The directory could not be locked or read.
    #[error("replica directory {dir}: {source}")]
    Store {
        /// The directory.
        dir: std::path::PathBuf,
        /// What went wrong.
        source: crate::store::StoreError,
    },
    /// The records do not form a valid replica state.
    #[error("replica directory {dir}: {source}")]
    Recovery {
        /// The directory.
        dir: std::path::PathBuf,
        /// What went wrong.
        source: paxoskv::RecoveryError,
    },
}

/// Locks `dir`, loads its snapshot and log, and rebuilds the core from them.
pub fn open_disk_replica(
    dir: &std::path::Path,
    cfg: Config,
    faults: crate::storage::FaultInjector,
) -> Result<(Replica, Box<dyn ReplicaStore>), OpenError> {
    let started = std::time::Instant::now();
    let (store, recovered) =
        crate::store::DiskStore::open_with_faults(dir, faults).map_err(|source| {
            OpenError::Store {
                dir: dir.to_path_buf(),
                source,
            }
        })?;
    let records = recovered.records.len();
    let core = Replica::recover(cfg, recovered.snapshot, recovered.records).map_err(|source| {
        OpenError::Recovery {
            dir: dir.to_path_buf(),
            source,
        }
    })?;
    tracing::info!(
        replica = core.id(),
        dir = %dir.display(),
        records,
        applied_through = core.chosen_through(),
        keys = core.kv().len(),
        took_ms = started.elapsed().as_millis() as u64,
        "recovered from disk"
    );
    Ok((core, Box::new(store)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_bounds_that_cannot_hold_the_largest_write_are_refused() {
        let addrs = vec!["127.0.0.1:1".parse().expect("addr")];
        let mut options = ReplicaOptions::new(0, addrs);
        assert_eq!(options.validate(), Ok(()));
        options.max_inflight_bytes = options.largest_write_bytes() - 1;
        let e = options.validate().expect_err("too small");
        assert!(e.contains("--max-inflight-bytes"), "{e}");
        options.max_inflight_bytes = DEFAULT_MAX_INFLIGHT_BYTES;
        options.max_peer_send_bytes = 1000;
        let e = options.validate().expect_err("too small");
        assert!(e.contains("--max-peer-send-bytes"), "{e}");
        let cfg = ReplicaOptions::new(0, vec!["127.0.0.1:1".parse().expect("addr")]).core_config();
        assert_eq!(cfg.max_value_bytes, paxoskv::DEFAULT_MAX_VALUE_BYTES);
    }
}
