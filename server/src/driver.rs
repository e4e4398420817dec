//! The replica driver: one task owns the core and performs its Ready strictly in order —
//! persist (one sync per batch) -> send -> reply. Handlers talk to it through a bounded queue,
//! so a cancelled handler can never half-apply acceptor state.

use crate::peer::PeerLink;
use crate::store::ReplicaStore;
use paxoskv::message::{Outbound, Request, Response};
use paxoskv::{
    ClientReply, ClientToken, Command, CoreStatus, PeerToken, Ready, Replica, ReplicaId,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

/// Inputs handled per batch at most, so ticks and replies are never starved.
const MAX_INPUTS_PER_BATCH: usize = 4096;
/// Queue between handlers and the driver; when full, handlers see `Busy`.
pub const DRIVER_QUEUE_LEN: usize = 65_536;
/// Peer calls in flight at once, per replica; beyond that messages are dropped (Paxos
/// tolerates loss, and the core resends).
const MAX_PEER_CALLS_IN_FLIGHT: usize = 8192;

/// Something for the driver to do.
pub enum DriverInput {
    /// A Paxos request from a peer; the response goes back through `reply`.
    PeerRequest {
        /// Sender.
        from: ReplicaId,
        /// The request.
        request: Request,
        /// Where to answer.
        reply: oneshot::Sender<Response>,
    },
    /// A peer answered one of our requests.
    PeerResponse {
        /// Responder.
        from: ReplicaId,
        /// The response.
        response: Response,
    },
    /// A client write.
    Propose {
        /// The command.
        command: Command,
        /// Where to answer.
        reply: oneshot::Sender<ClientReply>,
    },
    /// A linearizable read.
    Read {
        /// The key.
        key: String,
        /// Where to answer.
        reply: oneshot::Sender<ClientReply>,
    },
    /// A local, possibly stale read.
    StaleRead {
        /// The key.
        key: String,
        /// Where to answer.
        reply: oneshot::Sender<Option<Vec<u8>>>,
    },
    /// Status request.
    Status {
        /// Where to answer.
        reply: oneshot::Sender<CoreStatus>,
    },
}

/// Timing of one driver.
#[derive(Clone, Copy, Debug)]
pub struct DriverTiming {
    /// Length of one core tick.
    pub tick_ms: u64,
    /// Timeout of one peer call.
    pub peer_timeout_ms: u64,
}

/// Shared view of a driver that has stopped acknowledging because storage failed.
pub type FailedFlag = Arc<Mutex<Option<String>>>;

/// The task that owns one replica core.
pub struct Driver {
    core: Replica,
    store: Option<Box<dyn ReplicaStore>>,
    peers: Arc<Vec<Option<Arc<PeerLink>>>>,
    inbox: mpsc::Receiver<DriverInput>,
    self_tx: mpsc::Sender<DriverInput>,
    timing: DriverTiming,
    next_token: u64,
    peer_waiters: HashMap<u64, oneshot::Sender<Response>>,
    client_waiters: HashMap<u64, oneshot::Sender<ClientReply>>,
    peer_calls: Arc<Semaphore>,
    failed: FailedFlag,
}

impl Driver {
    /// A driver for `core`; returns it with the queue handlers use.
    pub fn new(
        core: Replica,
        store: Box<dyn ReplicaStore>,
        peers: Arc<Vec<Option<Arc<PeerLink>>>>,
        timing: DriverTiming,
    ) -> (Driver, mpsc::Sender<DriverInput>, FailedFlag) {
        let (tx, rx) = mpsc::channel(DRIVER_QUEUE_LEN);
        let failed: FailedFlag = Arc::default();
        let driver = Driver {
            core,
            store: Some(store),
            peers,
            inbox: rx,
            self_tx: tx.clone(),
            timing,
            next_token: 0,
            peer_waiters: HashMap::new(),
            client_waiters: HashMap::new(),
            peer_calls: Arc::new(Semaphore::new(MAX_PEER_CALLS_IN_FLIGHT)),
            failed: failed.clone(),
        };
        (driver, tx, failed)
    }

    /// Runs until `shutdown` becomes true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(Duration::from_millis(self.timing.tick_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                input = self.inbox.recv() => {
                    let Some(input) = input else { break };
                    self.handle(input);
                    self.drain_inbox();
                }
                _ = ticker.tick() => self.core.tick(),
            }
            self.perform_ready().await;
        }
        tracing::info!(replica = self.core.id(), "driver stopped");
    }

    fn drain_inbox(&mut self) {
        for _ in 1..MAX_INPUTS_PER_BATCH {
            match self.inbox.try_recv() {
                Ok(input) => self.handle(input),
                Err(_) => break,
            }
        }
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    fn handle(&mut self, input: DriverInput) {
        match input {
            DriverInput::PeerRequest {
                from,
                request,
                reply,
            } => {
                let t = self.token();
                self.peer_waiters.insert(t, reply);
                self.core.handle_request(from, PeerToken(t), request);
            }
            DriverInput::PeerResponse { from, response } => {
                self.core.handle_response(from, response);
            }
            DriverInput::Propose { command, reply } => {
                let t = self.token();
                self.client_waiters.insert(t, reply);
                self.core.propose(ClientToken(t), command);
            }
            DriverInput::Read { key, reply } => {
                let t = self.token();
                self.client_waiters.insert(t, reply);
                self.core.read(ClientToken(t), key);
            }
            DriverInput::StaleRead { key, reply } => {
                let _ = reply.send(self.core.read_local(&key).cloned());
            }
            DriverInput::Status { reply } => {
                let _ = reply.send(self.core.status());
            }
        }
    }

    async fn perform_ready(&mut self) {
        let ready = self.core.ready();
        if ready.is_empty() {
            return;
        }
        if let Err(reason) = self.persist(&ready).await {
            self.refuse(ready, &reason);
            return;
        }
        let Ready {
            messages,
            responses,
            client_replies,
            ..
        } = ready;
        for out in messages {
            self.send(out);
        }
        for (token, response) in responses {
            if let Some(tx) = self.peer_waiters.remove(&token.0) {
                let _ = tx.send(response);
            }
        }
        for (token, reply) in client_replies {
            if let Some(tx) = self.client_waiters.remove(&token.0) {
                let _ = tx.send(reply);
            }
        }
        // Requests the core chose not to answer must not leak their waiters.
        self.peer_waiters.retain(|_, tx| !tx.is_closed());
    }

    /// Makes the batch durable; once storage failed, nothing is acknowledged again.
    async fn persist(&mut self, ready: &Ready) -> Result<(), String> {
        if let Some(reason) = self.failed_reason() {
            return Err(reason);
        }
        if ready.persist.is_empty() {
            return Ok(());
        }
        let Some(mut store) = self.store.take() else {
            return Err("storage is gone".into());
        };
        let records = ready.persist.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let result = store.persist(&records);
            (store, result)
        })
        .await;
        let result = match joined {
            Ok((store, result)) => {
                self.store = Some(store);
                result.map_err(|e| e.to_string())
            }
            Err(e) => Err(format!("storage task failed: {e}")),
        };
        if let Err(reason) = &result {
            tracing::error!(replica = self.core.id(), %reason, "storage failed; replica stops acknowledging");
            if let Ok(mut f) = self.failed.lock() {
                *f = Some(reason.clone());
            }
        }
        result
    }

    fn failed_reason(&self) -> Option<String> {
        self.failed.lock().ok().and_then(|f| f.clone())
    }

    /// Drops peer responses and fails client requests of a batch that could not be persisted.
    fn refuse(&mut self, ready: Ready, reason: &str) {
        for (token, _) in ready.responses {
            self.peer_waiters.remove(&token.0);
        }
        for (token, _) in ready.client_replies {
            self.client_waiters.remove(&token.0);
        }
        tracing::warn!(replica = self.core.id(), reason, "batch not acknowledged");
    }

    fn send(&mut self, out: Outbound) {
        let Some(Some(peer)) = self.peers.get(out.to as usize) else {
            return;
        };
        let Ok(permit) = self.peer_calls.clone().try_acquire_owned() else {
            tracing::debug!(
                to = out.to,
                "too many peer calls in flight; dropping message"
            );
            return;
        };
        trace_message(self.core.id(), &out);
        let peer = peer.clone();
        let tx = self.self_tx.clone();
        let me = self.core.id();
        let timeout = Duration::from_millis(self.timing.peer_timeout_ms);
        tokio::spawn(async move {
            let from = peer.id;
            if let Some(response) = peer.call(me, out.request, timeout).await {
                let _ = tx.send(DriverInput::PeerResponse { from, response }).await;
            }
            drop(permit);
        });
    }
}

fn trace_message(me: ReplicaId, out: &Outbound) {
    match &out.request {
        Request::Prepare(p) if p.probe => {
            tracing::debug!(replica = me, to = out.to, ballot = %p.ballot, "phase 1 probe (pre-vote)")
        }
        Request::Prepare(p) => {
            tracing::debug!(replica = me, to = out.to, ballot = %p.ballot, from_slot = p.first_unchosen, "phase 1a prepare")
        }
        Request::Accept(a) => tracing::debug!(
            replica = me,
            to = out.to,
            ballot = %a.ballot,
            slot = a.slot,
            commands = a.value.commands.len(),
            commit = a.commit,
            "phase 2a accept"
        ),
        Request::Learn(l) => {
            tracing::trace!(replica = me, to = out.to, ballot = %l.ballot, commit = l.commit, round = l.round, "learn")
        }
        Request::FetchChosen(f) => {
            tracing::debug!(
                replica = me,
                to = out.to,
                from_slot = f.from_slot,
                "catch-up fetch"
            )
        }
    }
}
