//! The client load: concurrent sessions doing random puts, gets, deletes and
//! compare-and-swaps on a small key set, every operation recorded with its invoke and
//! complete times in a [`History`].

use paxoskv_check::{Completion, History, KvOp, KvResult};
use paxoskv_client::{Check, Client, ClientError, CmpOp, Compare, KvError, Outcome};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Belt and braces over the client's own deadline: an operation still pending after this is
/// abandoned and stays unknown.
const OP_GUARD: Duration = Duration::from_secs(5);

/// Safety bound on the operations of one session.
const MAX_OPS_PER_CLIENT: u64 = 10_000_000;

/// Records operations with monotonic microsecond timestamps since the run started.
pub struct Recorder {
    start: Instant,
    history: Mutex<History>,
    /// Responses of a shape the protocol does not allow (e.g. a delete answered as a put).
    anomalies: Mutex<Vec<String>>,
}

impl Recorder {
    pub fn new(start: Instant) -> Arc<Recorder> {
        Arc::new(Recorder {
            start,
            history: Mutex::new(History::new()),
            anomalies: Mutex::new(Vec::new()),
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Records the invocation, timestamped before the request can leave.
    pub fn invoke(&self, client: u64, op: KvOp) -> u64 {
        let time = self.now();
        lock(&self.history).invoke(client, op, time)
    }

    /// Records the response, timestamped after it arrived.
    pub fn complete(&self, id: u64, completion: Completion) {
        let time = self.now();
        lock(&self.history).complete(id, completion, time);
    }

    pub fn anomaly(&self, what: String) {
        lock(&self.anomalies).push(what);
    }

    pub fn anomalies(&self) -> Vec<String> {
        lock(&self.anomalies).clone()
    }

    /// A copy of everything recorded so far.
    pub fn history(&self) -> History {
        lock(&self.history).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Key `i` of the key set.
pub fn key(i: usize) -> String {
    format!("k{i}")
}

/// How a failed write is recorded: only a refusal that certainly happened before anything
/// was proposed is `Failed`; anything else may have been applied.
pub fn write_failure(e: &ClientError) -> Completion {
    match e {
        ClientError::InvalidInput(_)
        | ClientError::Config(_)
        | ClientError::Server(KvError::TooLarge(_) | KvError::InvalidRequest(_)) => {
            Completion::Failed
        }
        _ => Completion::Unknown,
    }
}

/// One session's load: random operations until `stop` is set. Values are unique per operation
/// (`c{client}-{n}`) so every read names the write it saw. A compare-and-swap expects the
/// value this session last saw the key hold (absent if never), so some win and some lose.
pub async fn run_client(
    client: u64,
    mut session: Client,
    recorder: Arc<Recorder>,
    keys: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seen: HashMap<String, Option<Vec<u8>>> = HashMap::new();
    for n in 0..MAX_OPS_PER_CLIENT {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let key = key(rng.gen_range(0..keys));
        match rng.gen_range(0..10) {
            0..=3 => {
                let value = value_of(client, n);
                let op = KvOp::Put {
                    key: key.clone(),
                    value: value.clone(),
                };
                let id = recorder.invoke(client, op);
                let completion =
                    match tokio::time::timeout(OP_GUARD, session.put(&key, value)).await {
                        Ok(Ok(Outcome::Put { .. })) => {
                            seen.insert(key.clone(), Some(value_of(client, n)));
                            Completion::Ok(KvResult::Put)
                        }
                        Ok(Ok(other)) => {
                            recorder.anomaly(format!("put of {key} answered with {other:?}"));
                            Completion::Unknown
                        }
                        Ok(Err(e)) => write_failure(&e),
                        Err(_) => Completion::Unknown,
                    };
                recorder.complete(id, completion);
            }
            4 => {
                let id = recorder.invoke(client, KvOp::Delete { key: key.clone() });
                let completion = match tokio::time::timeout(OP_GUARD, session.delete(&key)).await {
                    Ok(Ok(Outcome::Delete { existed })) => {
                        seen.insert(key.clone(), None);
                        Completion::Ok(KvResult::Delete {
                            existed: Some(existed),
                        })
                    }
                    Ok(Ok(other)) => {
                        recorder.anomaly(format!("delete of {key} answered with {other:?}"));
                        Completion::Unknown
                    }
                    Ok(Err(e)) => write_failure(&e),
                    Err(_) => Completion::Unknown,
                };
                recorder.complete(id, completion);
            }
            5 => {
                let expected = seen.get(&key).cloned().flatten();
                let value = rng.gen_bool(0.8).then(|| value_of(client, n));
                let swapped = compare_and_swap(
                    &recorder,
                    client,
                    &mut session,
                    &key,
                    expected,
                    value.clone(),
                )
                .await;
                if swapped == Some(true) {
                    seen.insert(key, value);
                }
            }
            _ => {
                if let Some(value) = read(&recorder, client, &session, &key).await {
                    seen.insert(key, value);
                }
            }
        }
        let think = rng.gen_range(0..3);
        if think > 0 {
            tokio::time::sleep(Duration::from_millis(think)).await;
        }
    }
}

fn value_of(client: u64, n: u64) -> Vec<u8> {
    format!("c{client}-{n}").into_bytes()
}

/// A recorded compare-and-swap of `key` from `expected` to `value` (`None`: absent / delete),
/// as a one-compare transaction; `Some(swapped)` if it was answered.
pub async fn compare_and_swap(
    recorder: &Recorder,
    client: u64,
    session: &mut Client,
    key: &str,
    expected: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
) -> Option<bool> {
    let check = match expected.clone() {
        Some(v) => Check::Value(CmpOp::Eq, v),
        None => Check::Absent,
    };
    let compares = vec![Compare {
        key: key.to_string(),
        check,
    }];
    let op = KvOp::Cas {
        key: key.to_string(),
        expected,
        value: value.clone(),
    };
    let id = recorder.invoke(client, op);
    let answer = match value {
        Some(v) => tokio::time::timeout(OP_GUARD, session.put_if(compares, key, v)).await,
        None => tokio::time::timeout(OP_GUARD, session.delete_if(compares, key)).await,
    };
    let (completion, swapped) = match answer {
        Ok(Ok(outcome)) => (
            Completion::Ok(KvResult::Cas {
                succeeded: outcome.succeeded,
            }),
            Some(outcome.succeeded),
        ),
        Ok(Err(e)) => (write_failure(&e), None),
        Err(_) => (Completion::Unknown, None),
    };
    recorder.complete(id, completion);
    swapped
}

/// A recorded linearizable read; `Some(value)` if it was answered. A read that fails took
/// no effect, so it is recorded as `Failed` (which the checker ignores).
pub async fn read(
    recorder: &Recorder,
    client: u64,
    session: &Client,
    key: &str,
) -> Option<Option<Vec<u8>>> {
    let id = recorder.invoke(
        client,
        KvOp::Get {
            key: key.to_string(),
        },
    );
    match tokio::time::timeout(OP_GUARD, session.get(key)).await {
        Ok(Ok(value)) => {
            recorder.complete(id, Completion::Ok(KvResult::Get(value.clone())));
            Some(value)
        }
        _ => {
            recorder.complete(id, Completion::Failed);
            None
        }
    }
}

/// Operation counts by completion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounts {
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
}

impl OpCounts {
    pub fn of(history: &History) -> OpCounts {
        let mut counts = OpCounts::default();
        for op in history.ops() {
            match op.completion {
                Completion::Ok(_) => counts.ok += 1,
                Completion::Failed => counts.failed += 1,
                Completion::Unknown => counts.unknown += 1,
            }
        }
        counts
    }
}
