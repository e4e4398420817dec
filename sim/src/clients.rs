//! Simulated clients: each is one session (`CommandId { client_id, seq }`, one operation
//! outstanding) issuing random puts, deletes, compare-and-swaps and linearizable gets on a
//! small key set, and recording every operation in a linearizability [`History`].
//!
//! A compare-and-swap is a one-compare transaction (`Txn::put_if` / `Txn::delete_if` on the
//! key's value, or on its absence) expecting the value this client last saw for the key, so
//! some succeed and some lose a race; it is recorded as [`KvOp::Cas`].
//!
//! A session opens itself through the log (`Op::Register`) before its first write; when the
//! replicas evicted it (a small session table), a write answered `SessionExpired` stays
//! unknown in the history (it may have been applied before the eviction, never twice) and
//! the client opens a new session.
//!
//! A client sends to the replica it believes leads, follows `NotLeader` hints, and on
//! silence retries the SAME operation (same `CommandId`) at the next replica. Any attempt's
//! answer completes the operation; the history interval runs from the first attempt to it.

use super::checks::Violation;
use super::digest::mix_seed;
use super::wire::ClientCall;
use super::world::{ClientDelivery, World};
use paxoskv::{Check, CmpOp, Compare, LeaseId, Txn, TxnOp, MIN_LEASE_TTL_MS};
use paxoskv::{ClientError, ClientReply, ClientToken};
use paxoskv::{Command, CommandId, Op, Outcome, ReplicaId};
use paxoskv_check::{Completion, History, KvOp, KvResult};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

/// Bits of a [`ClientToken`] that count attempts; the bits above name the client.
const ATTEMPT_BITS: u32 = 40;
/// Wait before retrying after `Busy` or a `NotLeader` without a hint.
const BACKOFF_STEPS: u64 = 5;

/// The client a reply token belongs to.
pub fn client_of_token(token: ClientToken) -> usize {
    (token.0 >> ATTEMPT_BITS) as usize
}

fn attempt_of_token(token: ClientToken) -> u64 {
    token.0 & ((1 << ATTEMPT_BITS) - 1)
}

fn token_for(client: usize, attempt: u64) -> ClientToken {
    debug_assert!(attempt < 1 << ATTEMPT_BITS);
    ClientToken(((client as u64) << ATTEMPT_BITS) | attempt)
}

/// How the simulated clients behave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientsConfig {
    /// Number of concurrent sessions.
    pub clients: usize,
    /// Keys `k0..k{keys}` they work on.
    pub keys: usize,
    /// An attempt unanswered this long is retried at another replica.
    pub timeout_steps: u64,
    /// Longest pause between one operation's answer and the next operation.
    pub think_max_steps: u64,
}

/// The operation a client has outstanding.
#[derive(Debug)]
struct PendingOp {
    /// `None` for a session registration, which the history does not record.
    history_id: Option<u64>,
    call: ClientCall,
    invoke_step: u64,
    /// Attempts numbered below this belong to earlier operations.
    first_attempt: u64,
    /// The newest attempt; only its refusals trigger a retry.
    attempt: u64,
    deadline_step: u64,
    retry_step: Option<u64>,
}

#[derive(Debug)]
struct SimClient {
    client_id: u64,
    /// Sessions opened so far (each gets a fresh client id).
    sessions: u64,
    registered: bool,
    target: ReplicaId,
    next_seq: u64,
    next_attempt: u64,
    op: Option<PendingOp>,
    idle_until_step: u64,
    /// The value this client last saw each key hold (read, or written itself), to aim its
    /// compare-and-swaps at; a key never seen is expected absent.
    seen: BTreeMap<String, Option<Vec<u8>>>,
    /// The lease this client last got and has not seen end.
    lease: Option<LeaseId>,
}

/// All simulated clients and the history they record.
pub struct Clients {
    cfg: ClientsConfig,
    clients: Vec<SimClient>,
    keys: Vec<String>,
    replicas: u32,
    rng: StdRng,
    history: History,
    issuing: bool,
    /// Lease operations are issued only while faults run: every lease then ends (expires
    /// through the log) long before the replicas must have converged.
    leasing: bool,
}

impl Clients {
    /// Clients of a `replicas`-replica cluster, all randomness drawn from `seed`.
    pub fn new(cfg: ClientsConfig, replicas: u32, seed: u64) -> Clients {
        let mut rng = StdRng::seed_from_u64(mix_seed(seed, 2));
        let clients = (0..cfg.clients)
            .map(|i| SimClient {
                client_id: mix_seed(seed, 100 + i as u64),
                sessions: 1,
                registered: false,
                target: rng.gen_range(0..replicas),
                next_seq: 1,
                next_attempt: 1,
                op: None,
                idle_until_step: rng.gen_range(0..=cfg.think_max_steps),
                seen: BTreeMap::new(),
                lease: None,
            })
            .collect();
        Clients {
            keys: (0..cfg.keys).map(|k| format!("k{k}")).collect(),
            cfg,
            clients,
            replicas,
            rng,
            history: History::new(),
            issuing: true,
            leasing: true,
        }
    }

    /// Stops (or resumes) starting new operations; outstanding ones carry on.
    pub fn set_issuing(&mut self, issuing: bool) {
        self.issuing = issuing;
    }

    /// Stops (or resumes) issuing lease operations.
    pub fn set_leasing(&mut self, leasing: bool) {
        self.leasing = leasing;
    }

    /// The history recorded so far.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The history, for adding final audit reads.
    pub fn history_mut(&mut self) -> &mut History {
        &mut self.history
    }

    /// The keys clients work on.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// True while some operation is outstanding.
    pub fn any_pending(&self) -> bool {
        self.clients.iter().any(|c| c.op.is_some())
    }

    /// Handles replies delivered this step, then retries, times out and starts operations.
    pub fn step(&mut self, world: &mut World) -> Result<(), Violation> {
        let now = world.now_step();
        for delivery in world.take_client_inbox() {
            self.on_reply(delivery, now, world)?;
        }
        for index in 0..self.clients.len() {
            self.drive(index, now, world);
        }
        Ok(())
    }

    /// Fails if an operation has waited more than `bound_steps` since `calm_since_step` (the
    /// end of the fault phase) or since its invocation, whichever is later.
    pub fn check_liveness(
        &self,
        now_step: u64,
        calm_since_step: u64,
        bound_steps: u64,
    ) -> Result<(), Violation> {
        for (index, c) in self.clients.iter().enumerate() {
            let Some(op) = &c.op else { continue };
            let since = op.invoke_step.max(calm_since_step);
            let waited_steps = now_step.saturating_sub(since);
            if waited_steps > bound_steps {
                return Err(Violation::Liveness {
                    client: index,
                    op: format!("{:?}", op.call),
                    invoke_step: op.invoke_step,
                    waited_steps,
                });
            }
        }
        Ok(())
    }

    fn drive(&mut self, index: usize, now: u64, world: &mut World) {
        let c = &mut self.clients[index];
        match &mut c.op {
            Some(op) if op.retry_step.is_some_and(|s| now >= s) => self.send_attempt(index, world),
            Some(op) if now >= op.deadline_step => {
                // Silence: the replica may be down or cut off; try the next one.
                c.target = (c.target + 1) % self.replicas;
                self.send_attempt(index, world);
            }
            Some(_) => {}
            None if self.issuing && now >= c.idle_until_step => {
                self.start_op(index, now);
                self.send_attempt(index, world);
            }
            None => {}
        }
    }

    fn start_op(&mut self, index: usize, now: u64) {
        let key = self.keys[self.rng.gen_range(0..self.keys.len())].clone();
        let roll = self.rng.gen_range(0..100);
        let c = &mut self.clients[index];
        if roll >= 45 && !c.registered {
            let id = CommandId {
                client_id: c.client_id,
                seq: 1,
            };
            c.next_seq = 2;
            let call = ClientCall::Write(Command {
                id,
                op: Op::Register,
            });
            c.op = Some(PendingOp::new(None, call, now, c.next_attempt));
            return;
        }
        if self.leasing && (88..90).contains(&roll) {
            // Leases: not in the checked history (their keys are outside it and expire on
            // the leader's clock), but every replica must agree on them (the digest covers
            // the lease table) and their expiries go through the log under every fault.
            let lease_roll = self.rng.gen_range(0..4);
            let ttl_ms = self.rng.gen_range(MIN_LEASE_TTL_MS..=3 * MIN_LEASE_TTL_MS);
            let call = lease_call(c, index, lease_roll, ttl_ms);
            c.op = Some(PendingOp::new(None, call, now, c.next_attempt));
            return;
        }
        let (call, kv_op) = if roll < 45 {
            (ClientCall::Read(key.clone()), KvOp::Get { key })
        } else {
            let id = CommandId {
                client_id: c.client_id,
                seq: c.next_seq,
            };
            c.next_seq += 1;
            // Unique per (client, seq), so a read names the write it saw.
            let value = format!("c{index}.{}", id.seq).into_bytes();
            let (op, kv_op) = if roll < 80 {
                let kv = KvOp::Put {
                    key: key.clone(),
                    value: value.clone(),
                };
                (Op::Put { key, value }, kv)
            } else if roll < 90 {
                let kv = KvOp::Delete { key: key.clone() };
                (Op::Delete { key }, kv)
            } else {
                let expected = c.seen.get(&key).cloned().flatten();
                let value = (roll < 98).then_some(value);
                compare_and_swap(key, expected, value)
            };
            (ClientCall::Write(Command { id, op }), kv_op)
        };
        let history_id = self.history.invoke(c.client_id, kv_op, now);
        c.op = Some(PendingOp::new(Some(history_id), call, now, c.next_attempt));
    }

    fn send_attempt(&mut self, index: usize, world: &mut World) {
        let now = world.now_step();
        let timeout = self.cfg.timeout_steps;
        let c = &mut self.clients[index];
        let Some(op) = c.op.as_mut() else { return };
        let attempt = c.next_attempt;
        c.next_attempt += 1;
        op.attempt = attempt;
        op.deadline_step = now + timeout;
        op.retry_step = None;
        let (to, call) = (c.target, op.call.clone());
        world.trace(|| format!("client {index} attempt {attempt} -> r{to}: {call:?}"));
        world.send_client_request(index, to, token_for(index, attempt), call);
    }

    fn on_reply(
        &mut self,
        d: ClientDelivery,
        now: u64,
        world: &mut World,
    ) -> Result<(), Violation> {
        let attempt = attempt_of_token(d.token);
        let c = &mut self.clients[d.client];
        let Some(op) = c.op.as_mut() else {
            return Ok(()); // A late answer to an operation already completed.
        };
        if attempt < op.first_attempt {
            return Ok(());
        }
        let result = match (&op.call, d.reply) {
            (ClientCall::Write(c), ClientReply::Applied(Outcome::Registered))
                if c.op == Op::Register =>
            {
                KvResult::Put // Not recorded: registrations touch no key.
            }
            (ClientCall::Write(c), ClientReply::Applied(outcome))
                if matches_op(&c.op, &outcome) =>
            {
                write_result(outcome)
            }
            (ClientCall::Read(_), ClientReply::Read(value)) => KvResult::Get(value),
            (ClientCall::KeepAlive(_), ClientReply::LeaseKept { .. }) => KvResult::Put,
            (ClientCall::KeepAlive(_), ClientReply::Failed(ClientError::LeaseNotFound(_))) => {
                c.lease = None; // Expired or revoked meanwhile: the operation is done.
                KvResult::Put
            }
            (ClientCall::Write(w), ClientReply::Applied(outcome)) if is_lease_op(&w.op) => {
                c.lease = match outcome {
                    Outcome::LeaseGranted { id, .. } => Some(id),
                    Outcome::LeaseRevoked { .. } | Outcome::LeaseFailed(_) => None,
                    _ => c.lease,
                };
                KvResult::Put
            }
            (_, ClientReply::Failed(error)) => {
                let newest = attempt == op.attempt;
                return self.on_refusal(d.client, d.from, error, newest, now);
            }
            (call, reply) => {
                return Err(Violation::ClientProtocol {
                    client: d.client,
                    detail: format!("r{} answered {call:?} with {reply:?}", d.from),
                })
            }
        };
        let history_id = op.history_id;
        if let Some((key, value)) = observed(&op.call, &result) {
            c.seen.insert(key, value);
        }
        c.op = None;
        c.target = d.from;
        c.idle_until_step = now + self.rng.gen_range(0..=self.cfg.think_max_steps);
        world.trace(|| format!("client {} completes with {result:?}", d.client));
        let Some(history_id) = history_id else {
            c.registered = true;
            return Ok(());
        };
        let digest = world.digest();
        digest.word(d.client as u64);
        digest.word(history_id);
        self.history
            .complete(history_id, Completion::Ok(result), now);
        Ok(())
    }

    fn on_refusal(
        &mut self,
        index: usize,
        from: ReplicaId,
        error: ClientError,
        newest: bool,
        now: u64,
    ) -> Result<(), Violation> {
        let replicas = self.replicas;
        let c = &mut self.clients[index];
        let Some(op) = c.op.as_mut() else {
            return Ok(());
        };
        match error {
            // The session has one operation outstanding and never gives up on it, so the
            // replicated session table can never be past it.
            ClientError::Stale { last_applied } => Err(Violation::ClientProtocol {
                client: index,
                detail: format!(
                    "r{from} says {:?} is stale (last applied {last_applied})",
                    op.call
                ),
            }),
            ClientError::SessionExpired => {
                // Evicted: this write stays unknown in the history (it was never completed)
                // and the client carries on with a new session.
                c.op = None;
                c.sessions += 1;
                c.client_id = mix_seed(c.client_id, c.sessions);
                c.registered = false;
                c.idle_until_step = now;
                Ok(())
            }
            _ if !newest => Ok(()), // An older attempt's refusal; the newest one is pending.
            ClientError::NotLeader { leader: Some(l) } => {
                c.target = l;
                op.retry_step = Some(now + 1);
                Ok(())
            }
            ClientError::NotLeader { leader: None }
            | ClientError::Busy
            | ClientError::DeadlinePassed
            // These clients send no keepalives; counted like any refusal if one appears.
            | ClientError::LeaseNotFound(_) => {
                c.target = (from + 1) % replicas;
                op.retry_step = Some(now + BACKOFF_STEPS);
                Ok(())
            }
        }
    }
}

impl PendingOp {
    fn new(history_id: Option<u64>, call: ClientCall, now: u64, attempt: u64) -> PendingOp {
        PendingOp {
            history_id,
            call,
            invoke_step: now,
            first_attempt: attempt,
            attempt,
            deadline_step: now,
            retry_step: None,
        }
    }
}

/// A compare-and-swap of `key` from `expected` to `value` (`None`: absent / delete), as the
/// transaction the store runs and the operation the checker sees.
fn compare_and_swap(key: String, expected: Option<Vec<u8>>, value: Option<Vec<u8>>) -> (Op, KvOp) {
    let check = match expected.clone() {
        Some(v) => Check::Value(CmpOp::Eq, v),
        None => Check::Absent,
    };
    let compares = vec![Compare {
        key: key.clone(),
        check,
    }];
    let txn = match value.clone() {
        Some(v) => Txn::put_if(compares, key.clone(), v),
        None => Txn::delete_if(compares, key.clone()),
    };
    let kv = KvOp::Cas {
        key,
        expected,
        value,
    };
    (Op::Txn(txn), kv)
}

/// What a completed operation says the key holds now, if anything.
fn observed(call: &ClientCall, result: &KvResult) -> Option<(String, Option<Vec<u8>>)> {
    match (call, result) {
        (ClientCall::Read(key), KvResult::Get(value)) => Some((key.clone(), value.clone())),
        (ClientCall::Write(c), _) => match (&c.op, result) {
            (Op::Put { key, value }, _) => Some((key.clone(), Some(value.clone()))),
            (Op::Delete { key }, _) => Some((key.clone(), None)),
            (Op::Txn(txn), KvResult::Cas { succeeded: true }) => match txn.success.first()? {
                TxnOp::Put { key, value } => Some((key.clone(), Some(value.clone()))),
                TxnOp::Delete { key } => Some((key.clone(), None)),
                TxnOp::Get { .. } | TxnOp::PutLeased { .. } => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// The next lease operation of client `index` (`roll` in 0..4): a grant when it holds no
/// lease, else a leased put of its own key, a keepalive or a revoke.
fn lease_call(c: &mut SimClient, index: usize, roll: u32, ttl_ms: u64) -> ClientCall {
    let op = match (c.lease, roll) {
        (None, _) => Op::LeaseGrant { ttl_ms },
        (Some(lease), 0) => Op::Txn(Txn {
            compares: Vec::new(),
            success: vec![TxnOp::PutLeased {
                key: format!("lease/{index}"),
                value: format!("c{index}.{}", c.next_seq).into_bytes(),
                lease,
            }],
            failure: Vec::new(),
        }),
        (Some(lease), 1) => return ClientCall::KeepAlive(lease),
        (Some(id), _) => Op::LeaseRevoke { id },
    };
    let id = CommandId {
        client_id: c.client_id,
        seq: c.next_seq,
    };
    c.next_seq += 1;
    ClientCall::Write(Command { id, op })
}

/// A lease command, or a transaction putting with a lease (answered with lease outcomes).
fn is_lease_op(op: &Op) -> bool {
    match op {
        Op::LeaseGrant { .. } | Op::LeaseRevoke { .. } | Op::LeaseExpire { .. } => true,
        Op::Txn(txn) => txn
            .success
            .iter()
            .any(|o| matches!(o, TxnOp::PutLeased { .. })),
        _ => false,
    }
}

/// A put is answered with a put's outcome, a delete with a delete's, a transaction with a
/// transaction's.
fn matches_op(op: &Op, outcome: &Outcome) -> bool {
    matches!(
        (op, outcome),
        (Op::Put { .. }, Outcome::Put { .. })
            | (Op::Delete { .. }, Outcome::Delete { .. })
            | (Op::Txn(_), Outcome::Txn(_))
    )
}

fn write_result(outcome: Outcome) -> KvResult {
    match outcome {
        Outcome::Put { .. } => KvResult::Put,
        Outcome::Delete { existed } => KvResult::Delete {
            existed: Some(existed),
        },
        Outcome::Registered => KvResult::Put, // never recorded; see `on_reply`
        // The only transactions these clients propose are compare-and-swaps.
        Outcome::Txn(t) => KvResult::Cas {
            succeeded: t.succeeded,
        },
        // Never recorded: these clients send no lease commands.
        Outcome::LeaseGranted { .. } | Outcome::LeaseRevoked { .. } | Outcome::LeaseFailed(_) => {
            KvResult::Put
        }
    }
}
