//! The session type and its retry loop.

use crate::pool::{Conn, Pool};
use crate::retry::{Backoff, Tracker};
use crate::{ClientConfig, ClientError};
use paxoskv::{check_key, check_value, CommandId, Compare, Outcome, Txn, TxnOp, TxnOutcome};
use paxoskv_service::{
    CountReply, GetMetaReply, GetReply, KeyRange, KvError, KvRpcClient, LeaseGrantReply,
    LeaseKeepAliveReply, LeaseRevokeReply, LeaseTtlReply, ReadMode, ReplicaStatus, ScanPage,
    ScanReply, TxnReply, WatchReply, WriteReply, MAX_SCAN_LIMIT,
};
use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tarpc::client::RpcError;
use tarpc::context::{self, Context};

/// Extra wait past an RPC deadline before the local timer gives up on it.
const DEADLINE_SLACK: Duration = Duration::from_millis(20);

/// Sentinel for "no operation answered yet".
const NOBODY: usize = usize::MAX;

/// Replies that may name the leader.
trait LeaderHint {
    fn leader_addr(&self) -> Option<&str>;
}

/// Every reply type names the leader the same way.
macro_rules! leader_hint {
    ($($reply:ty),*) => {$(
        impl LeaderHint for $reply {
            fn leader_addr(&self) -> Option<&str> {
                self.leader_addr.as_deref()
            }
        }
    )*};
}

leader_hint!(
    LeaseGrantReply,
    LeaseRevokeReply,
    LeaseKeepAliveReply,
    LeaseTtlReply,
    WriteReply,
    GetReply,
    ScanReply,
    CountReply,
    TxnReply,
    GetMetaReply
);

/// How one attempt failed.
enum AttemptError {
    /// The replica answered with an error.
    Kv(KvError),
    /// The replica answered but aborted the request.
    Aborted(String),
    /// Nothing listens at the address (connection refused).
    Refused(String),
    /// TLS or the preamble refused us (certificate, CA or token): retrying cannot help.
    Security(String),
    /// Dial or connection failure; the connection was dropped.
    Transport(String),
    /// No answer before the attempt deadline.
    NoAnswer(String),
}

/// Where to go after a failed attempt.
enum Next {
    /// Follow a leader hint to another server (no back-off needed).
    Redirect(usize),
    /// Back off, then try this server.
    Retry(usize),
}

/// One client session of a paxoskv cluster.
///
/// A session has at most one request outstanding: the replicas' exactly-once table keeps only
/// the last sequence number per client, so writes take `&mut self`. Make more sessions that
/// share the connections with [`Client::new_session`].
///
/// Connections are dialled lazily on the tokio runtime that first uses them; use a `Client` on
/// one runtime.
pub struct Client {
    config: Arc<ClientConfig>,
    pool: Arc<Pool>,
    client_id: u64,
    seq: u64,
    served_by: AtomicUsize,
    /// `Busy` answers seen by this session and those sharing its connections.
    busy_answers: Arc<AtomicU64>,
}

impl Client {
    /// A session of the cluster in `config`. Connects lazily: no network traffic here.
    pub fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        config.validate().map_err(ClientError::Config)?;
        let dialer = config.security.dialer().map_err(ClientError::Config)?;
        let pool = Arc::new(Pool::new(&config.servers, dialer));
        Ok(Client::with_pool(Arc::new(config), pool, Arc::default()))
    }

    fn with_pool(
        config: Arc<ClientConfig>,
        pool: Arc<Pool>,
        busy_answers: Arc<AtomicU64>,
    ) -> Client {
        Client {
            config,
            pool,
            client_id: random_client_id(),
            seq: 0,
            served_by: AtomicUsize::new(NOBODY),
            busy_answers,
        }
    }

    /// Another session (new client id) sharing this one's connections and leader guess.
    pub fn new_session(&self) -> Client {
        Client::with_pool(
            self.config.clone(),
            self.pool.clone(),
            self.busy_answers.clone(),
        )
    }

    /// `Busy` answers replicas gave this session and every session made from it with
    /// [`Client::new_session`] (each was backed off from and retried within the deadline).
    pub fn busy_answers(&self) -> u64 {
        self.busy_answers.load(Ordering::Relaxed)
    }

    /// This session's random client id.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The last known leader, if any replica has named one or a write succeeded.
    pub fn leader(&self) -> Option<SocketAddr> {
        self.pool.leader().map(|i| self.pool.addr(i))
    }

    /// The server that answered this session's last successful operation.
    pub fn last_served_by(&self) -> Option<SocketAddr> {
        match self.served_by.load(Ordering::Relaxed) {
            NOBODY => None,
            i => Some(self.pool.addr(i)),
        }
    }

    /// Sets `key` to `value`, exactly once even across retries.
    ///
    /// An [`ClientError::Unavailable`] leaves it unknown whether the write was applied.
    pub async fn put(&mut self, key: &str, value: Vec<u8>) -> Result<Outcome, ClientError> {
        check_key(key)?;
        check_value(&value, self.config.max_value_bytes)?;
        let id = self.next_write_id().await?;
        let reply = self
            .run(|rpc, ctx| {
                let (key, value) = (key.to_string(), value.clone());
                async move { rpc.put(ctx, id, key, value).await }
            })
            .await;
        Ok(self.end_session_if_expired(reply)?.outcome)
    }

    /// Removes `key`, exactly once even across retries.
    pub async fn delete(&mut self, key: &str) -> Result<Outcome, ClientError> {
        check_key(key)?;
        let id = self.next_write_id().await?;
        let reply = self
            .run(|rpc, ctx| {
                let key = key.to_string();
                async move { rpc.delete(ctx, id, key).await }
            })
            .await;
        Ok(self.end_session_if_expired(reply)?.outcome)
    }

    /// Applies `txn` atomically, exactly once even across retries. A failed compare is
    /// not an error: `succeeded` is false and the failure ops ran.
    pub async fn txn(&mut self, txn: Txn) -> Result<TxnOutcome, ClientError> {
        txn.check(self.config.max_value_bytes)?;
        let id = self.next_write_id().await?;
        let reply = self
            .run(|rpc, ctx| {
                let txn = txn.clone();
                async move { rpc.txn(ctx, id, txn).await }
            })
            .await;
        Ok(self.end_session_if_expired(reply)?.outcome)
    }

    /// Sets `key` to `value` only if every compare holds (a one-op transaction).
    pub async fn put_if(
        &mut self,
        compares: Vec<Compare>,
        key: &str,
        value: Vec<u8>,
    ) -> Result<TxnOutcome, ClientError> {
        self.txn(Txn::put_if(compares, key.to_string(), value))
            .await
    }

    /// Removes `key` only if every compare holds.
    pub async fn delete_if(
        &mut self,
        compares: Vec<Compare>,
        key: &str,
    ) -> Result<TxnOutcome, ClientError> {
        self.txn(Txn::delete_if(compares, key.to_string())).await
    }

    /// Creates a lease that lives `ttl` (1 s ..= 1 day, rounded down to milliseconds)
    /// unless kept alive; returns its id. Exactly once even across retries.
    pub async fn lease_grant(&mut self, ttl: Duration) -> Result<LeaseGrantReply, ClientError> {
        let ttl_ms = ttl.as_millis().min(u128::from(u64::MAX)) as u64;
        paxoskv::check_lease_ttl(ttl_ms)
            .map_err(|e| ClientError::Config(format!("lease TTL: {e}")))?;
        let id = self.next_write_id().await?;
        let reply = self
            .run(|rpc, ctx| async move { rpc.lease_grant(ctx, id, ttl_ms).await })
            .await;
        self.end_session_if_expired(reply)
    }

    /// Removes lease `lease` and deletes every key attached to it, at one revision.
    pub async fn lease_revoke(&mut self, lease: u64) -> Result<LeaseRevokeReply, ClientError> {
        let id = self.next_write_id().await?;
        let reply = self
            .run(|rpc, ctx| async move { rpc.lease_revoke(ctx, id, lease).await })
            .await;
        self.end_session_if_expired(reply)
    }

    /// Restarts the lease's TTL on the leader; returns the TTL. Keep a lease alive by
    /// calling this well within its TTL (the CLI does every third of it).
    pub async fn lease_keepalive(&self, lease: u64) -> Result<Duration, ClientError> {
        let reply = self
            .run(|rpc, ctx| async move { rpc.lease_keepalive(ctx, lease).await })
            .await?;
        Ok(Duration::from_millis(reply.ttl_ms))
    }

    /// The lease's TTL and its time left on the leader's clock.
    pub async fn lease_ttl(&self, lease: u64) -> Result<LeaseTtlReply, ClientError> {
        self.run(|rpc, ctx| async move { rpc.lease_ttl(ctx, lease).await })
            .await
    }

    /// Sets `key` to `value` attached to `lease` (deleted when the lease ends), exactly once.
    /// A missing lease is `KvError::LeaseNotFound` and writes nothing.
    pub async fn put_with_lease(
        &mut self,
        key: &str,
        value: Vec<u8>,
        lease: u64,
    ) -> Result<TxnOutcome, ClientError> {
        self.put_if_with_lease(Vec::new(), key, value, lease).await
    }

    /// [`Client::put_if`] attaching the key to `lease`: the lock recipe (`--if-absent`
    /// with a lease) in one call.
    pub async fn put_if_with_lease(
        &mut self,
        compares: Vec<Compare>,
        key: &str,
        value: Vec<u8>,
        lease: u64,
    ) -> Result<TxnOutcome, ClientError> {
        let put = TxnOp::PutLeased {
            key: key.to_string(),
            value,
            lease: paxoskv::LeaseId(lease),
        };
        self.txn(Txn {
            compares,
            success: vec![put],
            failure: Vec::new(),
        })
        .await
    }

    /// Reads `key` with its revisions and the store revision.
    pub async fn get_meta(&self, key: &str, mode: ReadMode) -> Result<GetMetaReply, ClientError> {
        check_key(key)?;
        self.run(|rpc, ctx| {
            let key = key.to_string();
            async move { rpc.get_meta(ctx, key, mode).await }
        })
        .await
    }

    /// Linearizable read of `key`; `None` if it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ClientError> {
        self.get_with(key, ReadMode::Linearizable).await
    }

    /// Reads `key` with the given consistency.
    pub async fn get_with(
        &self,
        key: &str,
        mode: ReadMode,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        Ok(self.get_reply(key, mode).await?.value)
    }

    /// Reads `key` and returns the whole reply (who served it, whether it is stale).
    pub async fn get_reply(&self, key: &str, mode: ReadMode) -> Result<GetReply, ClientError> {
        check_key(key)?;
        self.run(|rpc, ctx| {
            let key = key.to_string();
            async move { rpc.get(ctx, key, mode).await }
        })
        .await
    }

    /// One page of the keys of `range` after `after` (a previous page's
    /// [`ScanPage::next_after`]), in key byte order: at most `limit` entries (capped at
    /// [`MAX_SCAN_LIMIT`]) and about 1 MiB of keys and values.
    pub async fn scan_page(
        &self,
        range: &KeyRange,
        after: Option<&str>,
        limit: usize,
        mode: ReadMode,
    ) -> Result<ScanPage, ClientError> {
        let limit = limit.clamp(1, MAX_SCAN_LIMIT) as u32;
        let reply = self
            .run(|rpc, ctx| {
                let (range, after) = (range.clone(), after.map(str::to_owned));
                async move { rpc.scan(ctx, range, after, limit, mode).await }
            })
            .await?;
        Ok(reply.page)
    }

    /// Up to `limit` entries of `range` in key byte order, following continuations page by
    /// page (each page is read on its own: with concurrent writes the result is not one
    /// atomic view). Returns the entries and whether the range holds more.
    pub async fn scan(
        &self,
        range: &KeyRange,
        limit: usize,
        mode: ReadMode,
    ) -> Result<(Vec<(String, Vec<u8>)>, bool), ClientError> {
        let mut entries = Vec::new();
        let mut after: Option<String> = None;
        while entries.len() < limit {
            let page = self
                .scan_page(range, after.as_deref(), limit - entries.len(), mode)
                .await?;
            entries.extend(page.entries);
            match page.next_after {
                Some(next) => after = Some(next),
                None => return Ok((entries, false)),
            }
        }
        Ok((entries, true))
    }

    /// Number of keys in `range`.
    pub async fn count(&self, range: &KeyRange, mode: ReadMode) -> Result<u64, ClientError> {
        let reply = self
            .run(|rpc, ctx| {
                let range = range.clone();
                async move { rpc.count(ctx, range, mode).await }
            })
            .await?;
        Ok(reply.keys)
    }

    /// Asks every server for its status, concurrently, each bounded by the attempt timeout.
    /// Results are in the configured server order.
    pub async fn status_all(&self) -> Vec<(SocketAddr, Result<ReplicaStatus, ClientError>)> {
        let configured = self.pool.configured_len();
        let calls = (0..configured).map(|i| self.status_of(i));
        let results = futures::future::join_all(calls).await;
        for (i, result) in results.iter().enumerate() {
            if matches!(result, Ok(s) if s.role == "leader") {
                self.pool.set_leader(i);
            }
        }
        self.pool
            .configured_addrs()
            .into_iter()
            .zip(results)
            .collect()
    }

    /// Fault injection for tests: makes server `index` drop all traffic with the replicas in
    /// `blocked` (empty heals). Servers refuse unless started with `--enable-fault-control`.
    pub async fn set_partition(&self, index: usize, blocked: Vec<u32>) -> Result<(), ClientError> {
        let budget = self.config.attempt_timeout.min(self.config.timeout);
        let result = self
            .attempt(index, budget, &mut |rpc: KvRpcClient, ctx| {
                let blocked = blocked.clone();
                async move { rpc.set_partition(ctx, blocked).await }
            })
            .await;
        result.map_err(|e| match e {
            AttemptError::Kv(e) => ClientError::Server(e),
            AttemptError::Aborted(reason)
            | AttemptError::Refused(reason)
            | AttemptError::Security(reason)
            | AttemptError::Transport(reason)
            | AttemptError::NoAnswer(reason) => ClientError::Unreachable {
                addr: self.pool.addr(index),
                reason,
            },
        })
    }

    async fn status_of(&self, index: usize) -> Result<ReplicaStatus, ClientError> {
        let budget = self.config.attempt_timeout.min(self.config.timeout);
        let result = self
            .attempt(index, budget, &mut |rpc: KvRpcClient, ctx| async move {
                rpc.status(ctx).await.map(Ok)
            })
            .await;
        result.map_err(|e| {
            let reason = match e {
                AttemptError::Kv(e) => e.to_string(),
                AttemptError::Aborted(s)
                | AttemptError::Refused(s)
                | AttemptError::Security(s)
                | AttemptError::Transport(s)
                | AttemptError::NoAnswer(s) => s,
            };
            ClientError::Unreachable {
                addr: self.pool.addr(index),
                reason,
            }
        })
    }

    /// The id of this session's next write, opening the session through the log first if
    /// it is new (the replicas refuse writes of sessions they do not hold).
    async fn next_write_id(&mut self) -> Result<CommandId, ClientError> {
        if self.seq == 0 {
            let id = CommandId {
                client_id: self.client_id,
                seq: 1,
            };
            self.run(|rpc, ctx| async move { rpc.register_session(ctx, id).await })
                .await?;
            self.seq = 1;
        }
        self.seq += 1;
        Ok(CommandId {
            client_id: self.client_id,
            seq: self.seq,
        })
    }

    /// After `SessionExpired` the next write opens a new session under a new client id.
    fn end_session_if_expired<T>(
        &mut self,
        reply: Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        if matches!(&reply, Err(ClientError::Server(KvError::SessionExpired))) {
            self.client_id = random_client_id();
            self.seq = 0;
        }
        reply
    }

    /// One long-poll of a watch: the events of `range` from `from_revision` (0: after the
    /// newest the serving replica applied), at most `limit`, waiting up to `wait` for the
    /// first. Any replica serves a watch (revision R is the same write everywhere): this
    /// asks the one that served last, then the others in turn while they fail or say
    /// `Compacted`, within the operation deadline. An empty reply is no news within `wait`.
    pub async fn watch_once(
        &self,
        range: &KeyRange,
        from_revision: u64,
        limit: u32,
        wait: Duration,
    ) -> Result<WatchReply, ClientError> {
        let deadline = Instant::now() + wait + self.config.timeout;
        let mut tracker = Tracker::new(self.pool.configured_len());
        let mut backoff = Backoff::new();
        let first = match self.served_by.load(Ordering::Relaxed) {
            NOBODY => self.pool.leader().unwrap_or(0),
            i => i,
        };
        let mut compacted: Option<(usize, KvError)> = None;
        let mut target = first % self.pool.len();
        loop {
            if let Some((at, error)) = &compacted {
                if *at == target {
                    // Every replica said compacted: the history is gone everywhere.
                    return Err(ClientError::Server(error.clone()));
                }
            }
            let Some(remaining) = remaining_until(deadline) else {
                return Err(tracker.give_up());
            };
            let budget = (wait + self.config.attempt_timeout).min(remaining);
            let wait_ms = wait.as_millis().min(u32::MAX as u128) as u32;
            let error = match self
                .attempt(target, budget, &mut |rpc: KvRpcClient, ctx| {
                    let range = range.clone();
                    async move { rpc.watch(ctx, range, from_revision, limit, wait_ms).await }
                })
                .await
            {
                Ok(reply) => {
                    self.served_by.store(target, Ordering::Relaxed);
                    return Ok(reply);
                }
                Err(error) => error,
            };
            let asked = target;
            target = (target + 1) % self.pool.len();
            if let AttemptError::Kv(kv @ KvError::Compacted { .. }) = &error {
                compacted.get_or_insert((asked, kv.clone()));
                continue;
            }
            // Only the verdict matters: a watch is not led, every replica is a candidate.
            self.after_failure(asked, error, &mut tracker)?;
            sleep_before(deadline, backoff.next_delay()).await;
        }
    }

    /// Sends `call` to the leader (or a guess), following hints and retrying until it
    /// succeeds, fails for good, or the operation deadline passes.
    async fn run<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        T: LeaderHint,
        F: FnMut(KvRpcClient, Context) -> Fut,
        Fut: Future<Output = Result<Result<T, KvError>, RpcError>>,
    {
        let deadline = Instant::now() + self.config.timeout;
        let mut tracker = Tracker::new(self.pool.configured_len());
        let mut backoff = Backoff::new();
        let mut target = self.pool.leader().unwrap_or(0);
        let mut free_hops = 0;
        loop {
            let Some(remaining) = remaining_until(deadline) else {
                return Err(tracker.give_up());
            };
            let budget = self.config.attempt_timeout.min(remaining);
            let error = match self.attempt(target, budget, &mut call).await {
                Ok(reply) => return Ok(self.succeeded(target, reply)),
                Err(error) => error,
            };
            match self.after_failure(target, error, &mut tracker)? {
                Next::Redirect(next) if free_hops < self.pool.len() => {
                    free_hops += 1;
                    target = next;
                }
                Next::Redirect(next) | Next::Retry(next) => {
                    free_hops = 0;
                    target = next;
                    sleep_before(deadline, backoff.next_delay()).await;
                }
            }
        }
    }

    /// One RPC to server `index`, all of it (dial included) bounded by `budget`.
    async fn attempt<T, F, Fut>(
        &self,
        index: usize,
        budget: Duration,
        call: &mut F,
    ) -> Result<T, AttemptError>
    where
        F: FnMut(KvRpcClient, Context) -> Fut,
        Fut: Future<Output = Result<Result<T, KvError>, RpcError>>,
    {
        let deadline = Instant::now() + budget;
        let conn = self.pool.get(index, deadline).await.map_err(|e| {
            if e.security {
                AttemptError::Security(e.text)
            } else if e.refused {
                AttemptError::Refused(e.text)
            } else {
                AttemptError::Transport(e.text)
            }
        })?;
        let Some(remaining) = remaining_until(deadline) else {
            return Err(AttemptError::NoAnswer(
                "deadline passed while connecting".into(),
            ));
        };
        let mut ctx = context::current();
        ctx.deadline = deadline;
        let answer =
            tokio::time::timeout(remaining + DEADLINE_SLACK, call(conn.rpc.clone(), ctx)).await;
        match answer {
            Ok(Ok(Ok(reply))) => Ok(reply),
            Ok(Ok(Err(kv))) => Err(AttemptError::Kv(kv)),
            Ok(Err(rpc)) => Err(self.rpc_failed(index, &conn, rpc, budget)),
            Err(_) => Err(no_answer(budget)),
        }
    }

    fn rpc_failed(
        &self,
        index: usize,
        conn: &Conn,
        error: RpcError,
        budget: Duration,
    ) -> AttemptError {
        match error {
            RpcError::DeadlineExceeded => no_answer(budget),
            RpcError::Server(e) => {
                AttemptError::Aborted(format!("server aborted the request: {e}"))
            }
            other => {
                self.pool.drop_conn(index, conn);
                AttemptError::Transport(error_chain(&other))
            }
        }
    }

    /// Decides where to go after a failed attempt, or ends the operation.
    fn after_failure(
        &self,
        index: usize,
        error: AttemptError,
        tracker: &mut Tracker,
    ) -> Result<Next, ClientError> {
        let next = (index + 1) % self.pool.len();
        let kv = match error {
            AttemptError::Kv(kv) => kv,
            AttemptError::Aborted(what) => {
                tracker.answered_badly(index, what);
                return Ok(Next::Retry(next));
            }
            AttemptError::Refused(what) => {
                tracker.refused(index, format!("{}: {what}", self.pool.addr(index)));
                if self.config.fail_fast_when_refused && tracker.all_refused() {
                    return Err(self.no_server(tracker));
                }
                return Ok(Next::Retry(next));
            }
            // Fail fast: a certificate, CA or token problem does not heal within a deadline.
            AttemptError::Security(reason) => return Err(ClientError::Security { reason }),
            AttemptError::Transport(what) | AttemptError::NoAnswer(what) => {
                tracker.silent(format!("{}: {what}", self.pool.addr(index)));
                return Ok(Next::Retry(next));
            }
        };
        tracker.answered_with(index, &kv);
        match &kv {
            KvError::NotLeader { leader_addr, .. } => {
                Ok(self.follow_hint(index, leader_addr.as_deref()))
            }
            KvError::Busy(_) => {
                // Overloaded, not gone: back off and ask the same replica again (another
                // one would forward to the same leader and hold a copy meanwhile).
                self.busy_answers.fetch_add(1, Ordering::Relaxed);
                Ok(Next::Retry(index))
            }
            e if e.is_retryable() => Ok(Next::Retry(next)),
            _ => Err(ClientError::Server(kv)),
        }
    }

    fn no_server(&self, tracker: &Tracker) -> ClientError {
        let reason = tracker
            .last_error()
            .and_then(|e| e.rsplit(": ").next())
            .unwrap_or("connection refused")
            .to_string();
        ClientError::NoServer {
            tried: self.pool.configured_addrs(),
            reason,
        }
    }

    /// Goes to the replica a `NotLeader` names. A leader outside the configured list is
    /// added to the pool: a client given only a follower's address can still read, as
    /// writes can (the follower forwards those itself).
    fn follow_hint(&self, index: usize, hint: Option<&str>) -> Next {
        match self.resolve(hint) {
            Some(leader) if leader != index => {
                self.pool.set_leader(leader);
                Next::Redirect(leader)
            }
            _ => Next::Retry((index + 1) % self.pool.len()),
        }
    }

    fn resolve(&self, hint: Option<&str>) -> Option<usize> {
        let addr: SocketAddr = hint?.parse().ok()?;
        self.pool.index_of_or_learn(addr)
    }

    fn succeeded<T: LeaderHint>(&self, index: usize, reply: T) -> T {
        self.served_by.store(index, Ordering::Relaxed);
        let leader = self.resolve(reply.leader_addr()).unwrap_or(index);
        self.pool.set_leader(leader);
        reply
    }
}

fn random_client_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

fn remaining_until(deadline: Instant) -> Option<Duration> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    (!remaining.is_zero()).then_some(remaining)
}

async fn sleep_before(deadline: Instant, delay: Duration) {
    let remaining = deadline.saturating_duration_since(Instant::now());
    tokio::time::sleep(delay.min(remaining)).await;
}

fn no_answer(budget: Duration) -> AttemptError {
    AttemptError::NoAnswer(format!(
        "no answer within {}",
        humantime::format_duration(budget)
    ))
}

/// An error and its sources, joined by ": ".
fn error_chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
