//! The Redis protocol front end (RESP2, and RESP3 after `HELLO 3`) of one replica.
//!
//! Commands run through the same handlers as the tarpc client service ([`KvServer`]):
//! linearizable reads, writes with an exactly-once `CommandId` session per connection, and
//! forwarding to the leader from a follower. A connection's requests run one after another,
//! in order (Redis's guarantee to a pipelining client); its replies are written in batches.

pub mod command;
pub mod conditional;
pub mod framing;
pub mod glob;
pub mod reply;

use crate::limits::{ConnectionCounter, LogLimiter};
use crate::rpc::{KvServer, Shared};
use command::{Backend, Connection, KeyTtl};
use conditional::{Compare, Step, TxnAnswer};
use framing::{next_request, RequestLimits};
use paxoskv::kv::{KeyRange, ScanPage};
use paxoskv::{Command, CommandId, Op, Outcome};
use paxoskv_service::{Caller, KvError, KvRpc, ReplicaStatus, WriteReply};
use reply::Reply;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How the RESP port of one replica behaves.
#[derive(Clone, Debug)]
pub struct RespOptions {
    /// The token `AUTH` must present (the replica's `--auth-token-file`); `None`: open.
    pub token: Option<Arc<[u8]>>,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Requests answered before the replies are written out even if more are buffered.
    pub max_pipelined_requests: usize,
    /// Time a started request gets to arrive in full, on top of its share by rate.
    pub request_timeout: Duration,
    /// Slowest rate a started request may arrive at once `request_timeout` is used up.
    pub min_request_rate_bytes_per_s: u64,
}

/// Default of [`RespOptions::max_pipelined_requests`].
pub const DEFAULT_MAX_PIPELINED_REQUESTS: usize = 1024;
/// Bytes read from a socket at once.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Replies buffered before they are written even if more requests wait.
const MAX_BUFFERED_REPLY_BYTES: usize = 256 * 1024;
/// First pause before retrying a write or read that can succeed later (no leader yet).
const FIRST_RETRY_DELAY_MS: u64 = 10;
/// Longest pause between retries.
const MAX_RETRY_DELAY_MS: u64 = 200;

impl RespOptions {
    /// Options with the replica's token and idle timeout.
    pub fn new(token: Option<Arc<[u8]>>, idle_timeout: Duration) -> RespOptions {
        RespOptions {
            token,
            idle_timeout,
            max_pipelined_requests: DEFAULT_MAX_PIPELINED_REQUESTS,
            request_timeout: Duration::from_millis(
                paxoskv_service::frames::DEFAULT_FRAME_TIMEOUT_MS,
            ),
            min_request_rate_bytes_per_s:
                paxoskv_service::frames::DEFAULT_MIN_FRAME_RATE_BYTES_PER_S,
        }
    }

    /// How long a started request of `buffered_bytes` may take to arrive in full: a client
    /// that trickles a request in cannot hold its buffer for the whole idle timeout.
    fn partial_request_allowance(&self, buffered_bytes: usize) -> Duration {
        let rate = self.min_request_rate_bytes_per_s.max(1);
        self.request_timeout + Duration::from_millis(buffered_bytes as u64 * 1000 / rate)
    }
}

/// Serves RESP on `listener` until `shutdown` becomes true.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    options: RespOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let counter = ConnectionCounter::new(
        shared.limits.max_connections,
        shared.limits.max_connections_per_ip,
    );
    let mut warnings = LogLimiter::new(Duration::from_secs(1));
    let next_id = AtomicU64::new(1);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, from)) => match counter.try_admit(from.ip()) {
                    Ok(guard) => {
                        let id = next_id.fetch_add(1, Ordering::Relaxed);
                        let conn = serve_connection(stream, shared.clone(), options.clone(), id);
                        let mut stop = shutdown.clone();
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = conn => {}
                                _ = stop.changed() => {}
                            }
                            drop(guard);
                        });
                    }
                    Err(refused) => {
                        if let Some(held_back) = warnings.allow("refused", Instant::now()) {
                            tracing::warn!(replica = shared.id, %from, %refused, held_back, "RESP connection refused");
                        }
                    }
                },
                Err(e) => {
                    if let Some(held_back) = warnings.allow("accept", Instant::now()) {
                        tracing::warn!(replica = shared.id, error = %e, held_back, "RESP accept failed");
                    }
                    // Out of descriptors, retrying at once only spins.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum ConnectionEnd {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("idle for {0:?}")]
    Idle(Duration),
    #[error("a request did not arrive in full within {0:?}")]
    SlowRequest(Duration),
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>, options: RespOptions, id: u64) {
    let _ = stream.set_nodelay(true);
    let limits = RequestLimits::for_max_value(shared.max_value_bytes);
    let replica = shared.id;
    let mut backend = KvSession::new(shared);
    let mut conn = Connection::new(id, options.token.clone());
    if let Err(e) = run_connection(stream, &mut backend, &mut conn, &limits, &options).await {
        tracing::debug!(replica, connection = id, error = %e, "RESP connection closed");
    }
}

async fn run_connection<B: Backend>(
    mut stream: TcpStream,
    backend: &mut B,
    conn: &mut Connection,
    limits: &RequestLimits,
    options: &RespOptions,
) -> Result<(), ConnectionEnd> {
    let mut input: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut output: Vec<u8> = Vec::new();
    // When the incomplete request at the end of the buffer started arriving.
    let mut partial_since: Option<Instant> = None;
    loop {
        let mut answered = 0;
        // Requests are split off by offset and the buffer compacted once per read, not
        // once per request.
        let mut offset = 0;
        loop {
            match next_request(&input[offset..], limits) {
                Ok(Some((args, used))) => {
                    offset += used;
                    if args.is_empty() {
                        continue;
                    }
                    conn.execute(backend, args)
                        .await
                        .encode_into(conn.protocol, &mut output);
                    answered += 1;
                    if conn.closing {
                        stream.write_all(&output).await?;
                        return Ok(());
                    }
                    if answered >= options.max_pipelined_requests
                        || output.len() >= MAX_BUFFERED_REPLY_BYTES
                    {
                        write_out(&mut stream, &mut output, options.idle_timeout).await?;
                        answered = 0;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    Reply::err(format!("Protocol error: {e}"))
                        .encode_into(conn.protocol, &mut output);
                    write_out(&mut stream, &mut output, options.idle_timeout).await?;
                    return Ok(());
                }
            }
        }
        write_out(&mut stream, &mut output, options.idle_timeout).await?;
        input.drain(..offset);
        if offset > 0 || input.is_empty() {
            partial_since = None;
        }
        let wait = match partial_since {
            None if input.is_empty() => options.idle_timeout,
            None => {
                partial_since = Some(Instant::now());
                options.partial_request_allowance(input.len())
            }
            Some(since) => options
                .partial_request_allowance(input.len())
                .saturating_sub(since.elapsed()),
        };
        let wait = wait.min(options.idle_timeout);
        // `next_request` refuses a request over the limits before its bytes arrive, so the
        // buffer never holds more than one request's bound plus one read.
        let start = input.len();
        input.resize(start + READ_CHUNK_BYTES, 0);
        let read = tokio::time::timeout(wait, stream.read(&mut input[start..])).await;
        let n = match read {
            Ok(n) => n?,
            Err(_) if partial_since.is_some() => return Err(ConnectionEnd::SlowRequest(wait)),
            Err(_) => return Err(ConnectionEnd::Idle(options.idle_timeout)),
        };
        input.truncate(start + n);
        if n == 0 {
            return Ok(());
        }
    }
}

async fn write_out(
    stream: &mut TcpStream,
    output: &mut Vec<u8>,
    timeout: Duration,
) -> Result<(), ConnectionEnd> {
    if output.is_empty() {
        return Ok(());
    }
    match tokio::time::timeout(timeout, stream.write_all(output)).await {
        Ok(written) => written?,
        // A client that stops reading its replies holds them here no longer than this.
        Err(_) => return Err(ConnectionEnd::Idle(timeout)),
    }
    output.clear();
    Ok(())
}

/// One connection's view of the store: the replica's client service, with this
/// connection's write session.
pub struct KvSession {
    server: KvServer,
    client_id: u64,
    /// Last sequence number used; 0 until the session is registered.
    seq: u64,
}

impl KvSession {
    /// A session on `shared`'s client service, opened on its first write.
    pub fn new(shared: Arc<Shared>) -> KvSession {
        KvSession {
            // RESP clients are clients: never allowed the replica-only calls.
            server: KvServer(shared, Caller::Client),
            client_id: rand::random(),
            seq: 0,
        }
    }

    fn context(&self, deadline: Instant) -> tarpc::context::Context {
        let mut ctx = tarpc::context::current();
        ctx.deadline = deadline;
        ctx
    }

    /// Runs `attempt` until it succeeds, fails for good, or the request timeout passes;
    /// retryable failures (no leader yet, busy, timeout) wait a little and try again.
    /// Writes retry under the same `CommandId`, so they apply at most once.
    async fn with_retries<T, F, Fut>(&self, attempt: F) -> Result<T, KvError>
    where
        F: FnMut(KvServer, tarpc::context::Context) -> Fut,
        Fut: std::future::Future<Output = Result<T, KvError>>,
    {
        self.counting_retries(attempt).await.0
    }

    /// [`Self::with_retries`], also telling how many attempts were sent.
    async fn counting_retries<T, F, Fut>(&self, mut attempt: F) -> (Result<T, KvError>, u32)
    where
        F: FnMut(KvServer, tarpc::context::Context) -> Fut,
        Fut: std::future::Future<Output = Result<T, KvError>>,
    {
        let deadline = Instant::now() + self.server.0.request_timeout;
        let mut delay = Duration::from_millis(FIRST_RETRY_DELAY_MS);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let result = attempt(self.server.clone(), self.context(deadline)).await;
            match result {
                Err(e) if e.is_retryable() && Instant::now() + delay < deadline => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(MAX_RETRY_DELAY_MS));
                }
                other => return (other, attempts),
            }
        }
    }

    async fn register(&mut self) -> Result<(), KvError> {
        let id = CommandId {
            client_id: self.client_id,
            seq: 1,
        };
        self.with_retries(|server, ctx| server.register_session(ctx, id))
            .await?;
        self.seq = 1;
        Ok(())
    }

    /// One write under a new `CommandId`, and how many attempts of it were sent.
    async fn write_once(&mut self, op: Op) -> (Result<Outcome, KvError>, u32) {
        if self.seq == 0 {
            if let Err(e) = self.register().await {
                return (Err(e), 0);
            }
        }
        self.seq += 1;
        let id = CommandId {
            client_id: self.client_id,
            seq: self.seq,
        };
        let (reply, attempts) = self
            .counting_retries(|server, ctx| {
                let op = op.clone();
                async move {
                    match op {
                        Op::Put { key, value } => server.put(ctx, id, key, value).await,
                        Op::Delete { key } => server.delete(ctx, id, key).await,
                        Op::Register => server.register_session(ctx, id).await,
                        Op::Txn(txn) => server.txn(ctx, id, txn).await.map(|r| WriteReply {
                            outcome: Outcome::Txn(r.outcome),
                            leader_addr: r.leader_addr,
                        }),
                        op @ (Op::LeaseGrant { .. }
                        | Op::LeaseRevoke { .. }
                        | Op::LeaseExpire { .. }) => {
                            server.write(&ctx, Command { id, op }, false).await
                        }
                    }
                }
            })
            .await;
        if matches!(reply, Err(KvError::SessionExpired)) {
            // Evicted from the session table: the next write opens a new session.
            self.client_id = rand::random();
            self.seq = 0;
        }
        (reply.map(|r| r.outcome), attempts)
    }
}

impl Backend for KvSession {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, KvError> {
        let budget = self.server.0.request_timeout;
        self.with_retries(|server, ctx| {
            let key = key.clone();
            let left = ctx.deadline.saturating_duration_since(Instant::now());
            async move { server.get_via_leader(key, left.min(budget)).await }
        })
        .await
        .map(|reply| reply.value)
    }

    async fn write(&mut self, op: Op) -> Result<Outcome, KvError> {
        match self.write_once(op.clone()).await {
            // Refused at its only attempt: the session was evicted and this write was not
            // applied, so a new session may send it. After earlier attempts of the same id
            // the outcome is unknown, and the error goes to the client.
            (Err(KvError::SessionExpired), 1) => self.write_once(op).await.0,
            (other, _) => other,
        }
    }

    async fn status(&mut self) -> ReplicaStatus {
        self.server.clone().status(tarpc::context::current()).await
    }

    async fn scan(
        &mut self,
        range: KeyRange,
        after: Option<String>,
        limit: u32,
    ) -> Result<ScanPage, KvError> {
        let budget = self.server.0.request_timeout;
        self.with_retries(|server, ctx| {
            let (range, after) = (range.clone(), after.clone());
            let left = ctx.deadline.saturating_duration_since(Instant::now());
            async move {
                server
                    .scan_via_leader(range, after, limit, left.min(budget))
                    .await
            }
        })
        .await
        .map(|reply| reply.page)
    }

    async fn txn(
        &mut self,
        compares: Vec<Compare>,
        then: Vec<Step>,
        otherwise: Vec<Step>,
    ) -> Result<TxnAnswer, KvError> {
        let txn = paxoskv::Txn {
            compares: compares.into_iter().map(core_compare).collect(),
            success: then.into_iter().map(core_op).collect(),
            failure: otherwise.into_iter().map(core_op).collect(),
        };
        match self.write(Op::Txn(txn)).await? {
            Outcome::Txn(outcome) => Ok(TxnAnswer {
                succeeded: outcome.succeeded,
                gets: outcome
                    .results
                    .into_iter()
                    .filter_map(|r| match r {
                        paxoskv::TxnResult::Get { value, .. } => Some(value),
                        _ => None,
                    })
                    .collect(),
            }),
            other => Err(KvError::InvalidRequest(format!(
                "a transaction answered {other:?}"
            ))),
        }
    }

    async fn ttl(&mut self, key: String) -> Result<KeyTtl, KvError> {
        let budget = self.server.0.request_timeout;
        let meta = self
            .with_retries(|server, ctx| {
                let key = key.clone();
                let left = ctx.deadline.saturating_duration_since(Instant::now());
                async move { server.get_meta_via_leader(key, left.min(budget)).await }
            })
            .await?;
        let lease = match (meta.value, meta.lease) {
            (None, _) => return Ok(KeyTtl::Missing),
            (Some(_), None) => return Ok(KeyTtl::Persistent),
            (Some(_), Some(lease)) => lease,
        };
        let time = self
            .with_retries(|server, ctx| {
                let left = ctx.deadline.saturating_duration_since(Instant::now());
                async move { server.lease_ttl_via_leader(lease, left.min(budget)).await }
            })
            .await;
        match time {
            Ok(t) => Ok(KeyTtl::Expires {
                remaining_ms: t.remaining_ms,
            }),
            // Expired (or revoked) since the read: its keys are gone with it.
            Err(KvError::LeaseNotFound { .. }) => Ok(KeyTtl::Missing),
            Err(e) => Err(e),
        }
    }

    async fn count(&mut self, range: KeyRange) -> Result<u64, KvError> {
        let budget = self.server.0.request_timeout;
        self.with_retries(|server, ctx| {
            let range = range.clone();
            let left = ctx.deadline.saturating_duration_since(Instant::now());
            async move { server.count_via_leader(range, left.min(budget)).await }
        })
        .await
        .map(|reply| reply.keys)
    }
}

/// A RESP comparison as the core's transaction compare.
fn core_compare(compare: Compare) -> paxoskv::Compare {
    let (key, check) = match compare {
        Compare::Absent(key) => (key, paxoskv::Check::Absent),
        Compare::Exists(key) => (key, paxoskv::Check::Exists),
        Compare::ValueIs(key, value) => (key, paxoskv::Check::Value(paxoskv::CmpOp::Eq, value)),
    };
    paxoskv::Compare { key, check }
}

/// A RESP transaction step as the core's transaction op.
fn core_op(step: Step) -> paxoskv::TxnOp {
    match step {
        Step::Get(key) => paxoskv::TxnOp::Get { key },
        Step::Put(key, value) => paxoskv::TxnOp::Put { key, value },
        Step::Delete(key) => paxoskv::TxnOp::Delete { key },
        Step::PutLeased(key, value, lease) => paxoskv::TxnOp::PutLeased {
            key,
            value,
            lease: paxoskv::LeaseId(lease),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::command::memory::Memory;
    use super::*;

    /// Runs one connection over loopback against an in-memory store; returns what the
    /// client received until the server closed (or `idle` passed).
    async fn exchange(request: &[u8], idle: Duration) -> Vec<u8> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            // Bulk strings up to the key limit (1024 bytes), as with any small value limit.
            let limits = RequestLimits::for_max_value(16);
            let options = RespOptions::new(None, idle);
            let mut conn = Connection::new(1, None);
            let _ =
                run_connection(stream, &mut Memory::default(), &mut conn, &limits, &options).await;
        });
        let mut client = TcpStream::connect(addr).await.expect("connect");
        client.write_all(request).await.expect("send");
        let mut received = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut received));
        read.await
            .expect("the server closes in time")
            .expect("read");
        server.await.expect("server task");
        received
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order() {
        let mut request = Vec::new();
        for i in 0..300 {
            request.extend_from_slice(
                format!(
                    "*3\r\n$3\r\nSET\r\n$2\r\nk{}\r\n$1\r\n{}\r\n",
                    i % 10,
                    i % 10
                )
                .as_bytes(),
            );
            request
                .extend_from_slice(format!("*2\r\n$3\r\nGET\r\n$2\r\nk{}\r\n", i % 10).as_bytes());
        }
        request.extend_from_slice(b"PING\r\nQUIT\r\n");
        let received = exchange(&request, Duration::from_secs(10)).await;
        let mut expected = String::new();
        for i in 0..300 {
            expected.push_str(&format!("+OK\r\n$1\r\n{}\r\n", i % 10));
        }
        expected.push_str("+PONG\r\n+OK\r\n");
        assert_eq!(String::from_utf8_lossy(&received), expected);
    }

    #[tokio::test]
    async fn an_oversize_bulk_is_refused_and_the_connection_closed() {
        let received = exchange(
            b"PING\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2000\r\n",
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(
            String::from_utf8_lossy(&received),
            "+PONG\r\n-ERR Protocol error: invalid bulk length\r\n"
        );
    }

    #[tokio::test]
    async fn a_trickled_request_is_cut_off() {
        // Idle timeout far away: only the started request's own allowance can end it.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let mut options = RespOptions::new(None, Duration::from_secs(60));
            options.request_timeout = Duration::from_millis(200);
            let limits = RequestLimits::for_max_value(16);
            let mut conn = Connection::new(1, None);
            run_connection(stream, &mut Memory::default(), &mut conn, &limits, &options).await
        });
        let mut client = TcpStream::connect(addr).await.expect("connect");
        client.write_all(b"*1\r\n$4\r\nPI").await.expect("send");
        let ended = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("cut off in time")
            .expect("server task");
        assert!(
            matches!(ended, Err(ConnectionEnd::SlowRequest(_))),
            "{ended:?}"
        );
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed() {
        let received = exchange(b"PING\r\n", Duration::from_millis(200)).await;
        assert_eq!(String::from_utf8_lossy(&received), "+PONG\r\n");
    }
}
