//! Links to the other replicas. tarpc connections do not reconnect by themselves, so each
//! link redials (with back-off) after the connection breaks, e.g. when a peer restarts.

use paxoskv::message::{Request, Response};
use paxoskv::{Command, ReplicaId};
use paxoskv_service::{
    connect_kv, connect_replica, CountReply, Dialer, GetMetaReply, GetReply, KeyRange, KvError,
    KvRpcClient, LeaseTtlReply, ReadMode, ReplicaRpcClient, ScanReply, SnapshotChunk, WriteReply,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tarpc::client::RpcError;
use tarpc::context;
use tokio::sync::Mutex;

/// Wait at least this long before dialling a peer that just refused a connection.
const REDIAL_BACKOFF_MS: u64 = 100;
/// Give up on a connect attempt after this long.
const CONNECT_TIMEOUT_MS: u64 = 300;

/// Warnings about peers refusing our certificate (or us theirs).
static PEER_DIAL_WARNINGS: crate::refusals::WarnGate = crate::refusals::WarnGate::new();

/// A cached connection and when we may try to dial again.
struct Slot<C> {
    client: Option<C>,
    next_dial: Instant,
}

impl<C> Default for Slot<C> {
    fn default() -> Self {
        Slot {
            client: None,
            next_dial: Instant::now(),
        }
    }
}

/// One peer: a replica-protocol connection and, for forwarding, a client-protocol one.
pub struct PeerLink {
    /// The peer's id.
    pub id: ReplicaId,
    /// The peer's address.
    pub addr: SocketAddr,
    dialer: Dialer,
    replica: Mutex<Slot<ReplicaRpcClient>>,
    kv: Mutex<Slot<KvRpcClient>>,
    epoch: Instant,
    last_answer_ms: AtomicU64,
}

/// The cached connection, or a new one if the back-off allows dialling now.
async fn cached_or_dial<C: Clone>(
    slot: &Mutex<Slot<C>>,
    dial: impl std::future::Future<Output = std::io::Result<C>>,
) -> Option<C> {
    let mut slot = slot.lock().await;
    if slot.client.is_none() && Instant::now() >= slot.next_dial {
        match tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), dial).await {
            Ok(Ok(c)) => slot.client = Some(c),
            _ => slot.next_dial = Instant::now() + Duration::from_millis(REDIAL_BACKOFF_MS),
        }
    }
    slot.client.clone()
}

fn context_with_timeout(timeout: Duration) -> context::Context {
    // A fresh context: never inherit a client's (possibly 10 s) deadline for fan-out calls.
    let mut ctx = context::current();
    ctx.deadline = Instant::now() + timeout;
    ctx
}

fn is_connection_error(e: &RpcError) -> bool {
    !matches!(e, RpcError::DeadlineExceeded | RpcError::Server(_))
}

impl PeerLink {
    /// A link that dials lazily with `dialer` (plaintext, or TLS presenting our replica
    /// certificate and expecting the peer's).
    pub fn new(id: ReplicaId, addr: SocketAddr, dialer: Dialer) -> PeerLink {
        PeerLink {
            id,
            addr,
            dialer,
            replica: Mutex::new(Slot::default()),
            kv: Mutex::new(Slot::default()),
            epoch: Instant::now(),
            last_answer_ms: AtomicU64::new(u64::MAX),
        }
    }

    /// True if the peer answered anything within `window`.
    pub fn answered_within(&self, window: Duration) -> bool {
        let last = self.last_answer_ms.load(Ordering::Relaxed);
        last != u64::MAX
            && self.epoch.elapsed().as_millis() as u64 <= last + window.as_millis() as u64
    }

    fn note_answer(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_answer_ms.store(now, Ordering::Relaxed);
    }

    async fn replica_client(&self) -> Option<ReplicaRpcClient> {
        cached_or_dial(
            &self.replica,
            self.dial(connect_replica(self.addr, &self.dialer)),
        )
        .await
    }

    async fn kv_client(&self) -> Option<KvRpcClient> {
        cached_or_dial(&self.kv, self.dial(connect_kv(self.addr, &self.dialer))).await
    }

    /// A dial whose security failure (bad certificate, refused preamble) is logged: it does
    /// not heal by redialling, so the operator must see it. Rate-limited.
    async fn dial<C>(
        &self,
        dial: impl std::future::Future<Output = std::io::Result<C>>,
    ) -> std::io::Result<C> {
        let result = dial.await;
        if let Err(e) = &result {
            if paxoskv_service::tls::security_error(e).is_some() && PEER_DIAL_WARNINGS.due() {
                tracing::warn!(peer = self.id, addr = %self.addr, error = %e, "cannot dial peer");
            }
        }
        result
    }

    /// Sends one Paxos request; `None` if the peer did not answer in time.
    pub async fn call(
        &self,
        from: ReplicaId,
        request: Request,
        timeout: Duration,
    ) -> Option<Response> {
        let client = self.replica_client().await?;
        let ctx = context_with_timeout(timeout);
        let result = match request {
            Request::Prepare(p) => client.prepare(ctx, from, p).await,
            Request::Accept(a) => client.accept(ctx, from, a).await,
            Request::Learn(l) => client.learn(ctx, from, l).await,
            Request::FetchChosen(f) => client.fetch_chosen(ctx, from, f).await,
        };
        match result {
            Ok(response) => {
                self.note_answer();
                Some(response)
            }
            Err(e) => {
                if is_connection_error(&e) {
                    tracing::debug!(peer = self.id, error = %e, "peer link broke; will redial");
                    self.replica.lock().await.client = None;
                }
                None
            }
        }
    }

    /// Sends one snapshot chunk; returns the offset the peer expects next.
    pub async fn install_snapshot(
        &self,
        from: ReplicaId,
        chunk: SnapshotChunk,
        timeout: Duration,
    ) -> Result<u64, String> {
        let client = self
            .replica_client()
            .await
            .ok_or_else(|| format!("cannot connect to replica {}", self.id))?;
        match client
            .install_snapshot(context_with_timeout(timeout), from, chunk)
            .await
        {
            Ok(answer) => answer,
            Err(e) => {
                if is_connection_error(&e) {
                    self.replica.lock().await.client = None;
                }
                Err(e.to_string())
            }
        }
    }

    /// Forwards a client's linearizable read to this peer (the leader), for front ends
    /// whose clients cannot follow a `NotLeader` hint themselves (RESP).
    pub async fn forward_get(&self, key: String, timeout: Duration) -> Result<GetReply, KvError> {
        self.call_kv(timeout, |client, ctx| async move {
            client.get(ctx, key, ReadMode::Linearizable).await
        })
        .await
    }

    /// Forwards a front end's linearizable read with revisions to this peer (the leader).
    pub async fn forward_get_meta(
        &self,
        key: String,
        timeout: Duration,
    ) -> Result<GetMetaReply, KvError> {
        self.call_kv(timeout, |client, ctx| async move {
            client.get_meta(ctx, key, ReadMode::Linearizable).await
        })
        .await
    }

    /// Forwards a front end's question of a lease's time to this peer (the leader).
    pub async fn forward_lease_ttl(
        &self,
        lease: u64,
        timeout: Duration,
    ) -> Result<LeaseTtlReply, KvError> {
        self.call_kv(timeout, |client, ctx| async move {
            client.lease_ttl(ctx, lease).await
        })
        .await
    }

    /// Forwards a front end's linearizable scan to this peer (the leader).
    pub async fn forward_scan(
        &self,
        range: KeyRange,
        after: Option<String>,
        limit: u32,
        timeout: Duration,
    ) -> Result<ScanReply, KvError> {
        self.call_kv(timeout, |client, ctx| async move {
            client
                .scan(ctx, range, after, limit, ReadMode::Linearizable)
                .await
        })
        .await
    }

    /// Forwards a front end's linearizable count to this peer (the leader).
    pub async fn forward_count(
        &self,
        range: KeyRange,
        timeout: Duration,
    ) -> Result<CountReply, KvError> {
        self.call_kv(timeout, |client, ctx| async move {
            client.count(ctx, range, ReadMode::Linearizable).await
        })
        .await
    }

    /// Forwards a client's write to this peer (the leader).
    pub async fn forward_propose(
        &self,
        command: Command,
        timeout: Duration,
    ) -> Result<WriteReply, KvError> {
        self.call_kv(timeout, |client, ctx| async move {
            client.propose(ctx, command, true).await
        })
        .await
    }

    /// One call on this peer's client service; no answer in time (or no connection) is a
    /// `Timeout`, and a broken link is dropped so the next call redials.
    async fn call_kv<T, F, Fut>(&self, timeout: Duration, call: F) -> Result<T, KvError>
    where
        F: FnOnce(KvRpcClient, context::Context) -> Fut,
        Fut: std::future::Future<Output = Result<Result<T, KvError>, RpcError>>,
    {
        let timeout_ms = timeout.as_millis() as u64;
        let Some(client) = self.kv_client().await else {
            return Err(KvError::Timeout { timeout_ms });
        };
        match call(client, context_with_timeout(timeout)).await {
            Ok(reply) => reply,
            Err(e) => {
                if is_connection_error(&e) {
                    self.kv.lock().await.client = None;
                }
                Err(KvError::Timeout { timeout_ms })
            }
        }
    }
}
