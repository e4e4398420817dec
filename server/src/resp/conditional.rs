//! Commands that read and write in one step: SET NX/XX/GET, SETNX, MSET, MSETNX, GETSET,
//! GETDEL, INCR/DECR/INCRBY/DECRBY and APPEND, each one transaction of the core (one log
//! slot), so no other write comes between their comparison and their writes.

use super::command::{arity, key_of, kv_error, not_an_integer, parse_int, Backend, KeyTtl};
use super::reply::Reply;
use paxoskv_service::KvError;

/// A comparison a transaction makes before it writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key exists.
    Exists(String),
    /// The key holds exactly this value.
    ValueIs(String, Vec<u8>),
}

/// One operation of a transaction's branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Read the key (its value before this branch's writes to it).
    Get(String),
    /// Set the key.
    Put(String, Vec<u8>),
    /// Remove the key.
    Delete(String),
    /// Set the key and attach it to a lease (SET EX/PX): deleted when the lease expires.
    PutLeased(String, Vec<u8>, u64),
}

/// What a transaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnAnswer {
    /// True if every comparison held and the `then` branch ran.
    pub succeeded: bool,
    /// What each `Get` of the branch that ran read, in order.
    pub gets: Vec<Option<Vec<u8>>>,
}

/// Attempts of one read-modify-write (INCR, APPEND) before it gives up under contention.
pub const MAX_CAS_ATTEMPTS: usize = 256;

/// Time one read-modify-write may spend retrying before it answers `-BUSY`. A client whose
/// writes travel further (through a follower) loses every race to one that talks to the
/// leader, so a count alone starves it while the other keeps writing; a deadline with
/// growing random pauses lets it in once the others pause or finish.
pub const MAX_CAS_WAIT_MS: u64 = 5_000;

/// Longest random pause between two attempts.
const MAX_CAS_BACKOFF_MS: u64 = 32;

/// `SET key value [NX|XX] [GET] [EX s|PX ms]`. EX/PX grant a lease of that TTL (at least
/// 1 s: paxoskv's shortest lease) and attach the key to it; EXAT, PXAT and KEEPTTL are
/// refused.
pub async fn set<B: Backend>(backend: &mut B, args: &[Vec<u8>]) -> Reply {
    let [key, value, options @ ..] = args else {
        return arity("SET");
    };
    let key = match key_of(key) {
        Ok(key) => key,
        Err(reply) => return reply,
    };
    let (mut nx, mut xx, mut get) = (false, false, false);
    let mut ttl_ms = None;
    let mut options = options.iter();
    while let Some(option) = options.next() {
        match option.to_ascii_uppercase().as_slice() {
            b"NX" if !xx => nx = true,
            b"XX" if !nx => xx = true,
            b"GET" => get = true,
            unit @ (b"EX" | b"PX") if ttl_ms.is_none() => {
                let per_unit = if unit == b"EX" { 1000 } else { 1 };
                match options.next().and_then(|n| parse_int(n)) {
                    Some(n) if n > 0 => ttl_ms = Some((n as u64).saturating_mul(per_unit)),
                    Some(_) => return Reply::err("invalid expire time in 'set' command"),
                    None => return not_an_integer(),
                }
            }
            b"EXAT" | b"PXAT" | b"KEEPTTL" => {
                return Reply::err(format!(
                    "SET option '{}' is not supported (EX and PX are); nothing was written",
                    String::from_utf8_lossy(option)
                ))
            }
            _ => return Reply::err("syntax error"),
        }
    }
    let value = value.clone();
    let put = match ttl_ms {
        None if !nx && !xx && !get => {
            return match backend.write(paxoskv::Op::Put { key, value }).await {
                Ok(_) => Reply::ok(),
                Err(e) => kv_error(&e),
            };
        }
        None => Step::Put(key.clone(), value),
        Some(ttl_ms) => match grant(backend, ttl_ms, "set").await {
            Ok(lease) => Step::PutLeased(key.clone(), value, lease),
            Err(reply) => return reply,
        },
    };
    let compares = match (nx, xx) {
        (true, _) => vec![Compare::Absent(key.clone())],
        (_, true) => vec![Compare::Exists(key.clone())],
        _ => vec![],
    };
    let (then, otherwise) = if get {
        (vec![Step::Get(key.clone()), put], vec![Step::Get(key)])
    } else {
        (vec![put], vec![])
    };
    match backend.txn(compares, then, otherwise).await {
        Ok(answer) if get => Reply::from_value(answer.gets.into_iter().next().flatten()),
        Ok(TxnAnswer {
            succeeded: true, ..
        }) => Reply::ok(),
        Ok(_) => Reply::Nil,
        Err(e) => kv_error(&e),
    }
}

/// A new lease of `ttl_ms` for one SET EX/PX (a lease the SET then does not use, because
/// its condition failed, simply expires with no key).
async fn grant<B: Backend>(backend: &mut B, ttl_ms: u64, command: &str) -> Result<u64, Reply> {
    if paxoskv::check_lease_ttl(ttl_ms).is_err() {
        return Err(Reply::err(format!(
            "invalid expire time in '{command}' command: paxoskv keys expire through leases of \
             {} ms ..= {} ms",
            paxoskv::MIN_LEASE_TTL_MS,
            paxoskv::MAX_LEASE_TTL_MS
        )));
    }
    match backend.write(paxoskv::Op::LeaseGrant { ttl_ms }).await {
        Ok(paxoskv::Outcome::LeaseGranted { id, .. }) => Ok(id.0),
        Ok(other) => Err(Reply::err(format!("lease refused: {other:?}"))),
        Err(e) => Err(kv_error(&e)),
    }
}

/// `SETEX key seconds value` and `PSETEX key milliseconds value`: `SET key value EX|PX n`.
pub async fn setex<B: Backend>(backend: &mut B, args: &[Vec<u8>], millis: bool) -> Reply {
    let [key, ttl, value] = args else {
        return arity(if millis { "PSETEX" } else { "SETEX" });
    };
    let unit: &[u8] = if millis { b"PX" } else { b"EX" };
    let args = [key.clone(), value.clone(), unit.to_vec(), ttl.clone()];
    set(backend, &args).await
}

/// `SETNX key value`: 1 if set, 0 if the key existed.
pub async fn setnx<B: Backend>(backend: &mut B, args: &[Vec<u8>]) -> Reply {
    let [key, value] = args else {
        return arity("SETNX");
    };
    let key = match key_of(key) {
        Ok(key) => key,
        Err(reply) => return reply,
    };
    let then = vec![Step::Put(key.clone(), value.clone())];
    match backend.txn(vec![Compare::Absent(key)], then, vec![]).await {
        Ok(answer) => Reply::Int(answer.succeeded.into()),
        Err(e) => kv_error(&e),
    }
}

/// `MSET k v [k v ...]` (all in one slot) and `MSETNX` (only if none of the keys exists).
pub async fn mset<B: Backend>(backend: &mut B, args: &[Vec<u8>], only_new: bool) -> Reply {
    let name = if only_new { "MSETNX" } else { "MSET" };
    if args.is_empty() || !args.len().is_multiple_of(2) {
        return arity(name);
    }
    let mut puts = Vec::with_capacity(args.len() / 2);
    let mut compares = Vec::new();
    for pair in args.chunks_exact(2) {
        let key = match key_of(&pair[0]) {
            Ok(key) => key,
            Err(reply) => return reply,
        };
        if only_new {
            compares.push(Compare::Absent(key.clone()));
        }
        puts.push(Step::Put(key, pair[1].clone()));
    }
    match backend.txn(compares, puts, vec![]).await {
        Ok(answer) if only_new => Reply::Int(answer.succeeded.into()),
        Ok(_) => Reply::ok(),
        Err(e) => kv_error(&e),
    }
}

/// `GETSET key value` (the old value, and the new one set) and `GETDEL key`.
pub async fn get_and<B: Backend>(backend: &mut B, args: &[Vec<u8>], delete: bool) -> Reply {
    let (key, write) = match (args, delete) {
        ([key, value], false) => (key, Some(value)),
        ([key], true) => (key, None),
        _ => return arity(if delete { "GETDEL" } else { "GETSET" }),
    };
    let key = match key_of(key) {
        Ok(key) => key,
        Err(reply) => return reply,
    };
    let step = match write {
        Some(value) => Step::Put(key.clone(), value.clone()),
        None => Step::Delete(key.clone()),
    };
    match backend
        .txn(vec![], vec![Step::Get(key), step], vec![])
        .await
    {
        Ok(answer) => Reply::from_value(answer.gets.into_iter().next().flatten()),
        Err(e) => kv_error(&e),
    }
}

/// `INCR`, `DECR`, `INCRBY`, `DECRBY`: the key's integer plus `sign` times the argument
/// (1 for INCR/DECR), by compare-and-swap on the value read.
pub async fn incr_by<B: Backend>(backend: &mut B, name: &str, args: &[Vec<u8>]) -> Reply {
    let (key, by) = match (name, args) {
        ("INCR", [key]) => (key, 1),
        ("DECR", [key]) => (key, -1),
        ("INCRBY", [key, by]) | ("DECRBY", [key, by]) => match parse_int(by) {
            Some(by) if name == "INCRBY" => (key, by),
            Some(by) => match by.checked_neg() {
                Some(by) => (key, by),
                None => return Reply::err("decrement would overflow"),
            },
            None => return not_an_integer(),
        },
        _ => return arity(name),
    };
    let key = match key_of(key) {
        Ok(key) => key,
        Err(reply) => return reply,
    };
    let result = read_modify_write(backend, key, None, |old| {
        let old = match old {
            None => 0,
            Some(bytes) => parse_int(bytes).ok_or_else(not_an_integer)?,
        };
        let new = old
            .checked_add(by)
            .ok_or_else(|| Reply::err("increment or decrement would overflow"))?;
        Ok((new.to_string().into_bytes(), Reply::Int(new)))
    })
    .await;
    result.unwrap_or_else(|reply| reply)
}

/// `EXPIRE key seconds` and `PEXPIRE key milliseconds`: 1 once the key hangs on a new lease
/// of that TTL, 0 if there is no such key. A key's TTL is its lease's, so this grants one
/// and re-puts the key's current value attached to it (compare-and-swap on the value: a
/// write, which bumps the key's version and is seen by watchers). NX/XX/GT/LT are refused.
pub async fn expire<B: Backend>(backend: &mut B, args: &[Vec<u8>], millis: bool) -> Reply {
    let name = if millis { "PEXPIRE" } else { "EXPIRE" };
    let (key, ttl) = match args {
        [key, ttl] => (key, ttl),
        [_, _, option, ..] => {
            return Reply::err(format!(
                "{name} option '{}' is not supported; nothing was written",
                String::from_utf8_lossy(option)
            ))
        }
        _ => return arity(name),
    };
    let key = match key_of(key) {
        Ok(key) => key,
        Err(reply) => return reply,
    };
    let per_unit = if millis { 1 } else { 1000 };
    let ttl_ms = match parse_int(ttl) {
        Some(n) if n > 0 => (n as u64).saturating_mul(per_unit),
        Some(_) => {
            return Reply::err(format!(
                "invalid expire time in '{}' command",
                name.to_ascii_lowercase()
            ))
        }
        None => return not_an_integer(),
    };
    // Before the grant: a missing key needs no lease.
    if let Err(reply) = existing(backend, &key).await {
        return reply;
    }
    let lease = match grant(backend, ttl_ms, &name.to_ascii_lowercase()).await {
        Ok(lease) => lease,
        Err(reply) => return reply,
    };
    let result = read_modify_write(backend, key, Some(lease), |old| match old {
        Some(value) => Ok((value.clone(), Reply::Int(1))),
        None => Err(Reply::Int(0)), // Deleted meanwhile; the lease expires with no key.
    })
    .await;
    result.unwrap_or_else(|reply| reply)
}

/// `PERSIST key`: 1 if the key's lease was taken off (the value re-put without one), 0 if
/// the key has no lease or does not exist.
pub async fn persist<B: Backend>(backend: &mut B, args: &[Vec<u8>]) -> Reply {
    let [key] = args else {
        return arity("PERSIST");
    };
    let key = match key_of(key) {
        Ok(key) => key,
        Err(reply) => return reply,
    };
    match backend.ttl(key.clone()).await {
        Ok(KeyTtl::Expires { .. }) => {}
        Ok(KeyTtl::Missing | KeyTtl::Persistent) => return Reply::Int(0),
        Err(e) => return kv_error(&e),
    }
    let result = read_modify_write(backend, key, None, |old| match old {
        Some(value) => Ok((value.clone(), Reply::Int(1))),
        None => Err(Reply::Int(0)),
    })
    .await;
    result.unwrap_or_else(|reply| reply)
}

/// Ok if `key` exists; otherwise the reply `0` (or the read's error).
async fn existing<B: Backend>(backend: &mut B, key: &str) -> Result<(), Reply> {
    match backend.get(key.to_string()).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(Reply::Int(0)),
        Err(e) => Err(kv_error(&e)),
    }
}

/// `APPEND key suffix`: the new length.
pub async fn append<B: Backend>(backend: &mut B, args: &[Vec<u8>]) -> Reply {
    let [key, suffix] = args else {
        return arity("APPEND");
    };
    let key = match key_of(key) {
        Ok(key) => key,
        Err(reply) => return reply,
    };
    let result = read_modify_write(backend, key, None, |old| {
        let mut new = old.cloned().unwrap_or_default();
        new.extend_from_slice(suffix);
        let length = Reply::Int(new.len().try_into().unwrap_or(i64::MAX));
        Ok((new, length))
    })
    .await;
    result.unwrap_or_else(|reply| reply)
}

/// Reads `key`, computes its new value with `change` and writes it (attached to `lease`, if
/// given; a plain put detaches the key from any lease) only if the key still holds what was
/// read; on a conflict the failed transaction's own read is the next try's input. `change`
/// returns the new value and the reply, or the reply to give without writing.
async fn read_modify_write<B, F>(
    backend: &mut B,
    key: String,
    lease: Option<u64>,
    change: F,
) -> Result<Reply, Reply>
where
    B: Backend,
    F: Fn(Option<&Vec<u8>>) -> Result<(Vec<u8>, Reply), Reply>,
{
    let mut current = backend.get(key.clone()).await.map_err(|e| kv_error(&e))?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(MAX_CAS_WAIT_MS);
    for attempt in 0..MAX_CAS_ATTEMPTS {
        if attempt > 0 {
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(cas_backoff(attempt)).await;
        }
        let (new, reply) = change(current.as_ref())?;
        let compare = match &current {
            None => Compare::Absent(key.clone()),
            Some(old) => Compare::ValueIs(key.clone(), old.clone()),
        };
        let then = vec![match lease {
            Some(lease) => Step::PutLeased(key.clone(), new, lease),
            None => Step::Put(key.clone(), new),
        }];
        let otherwise = vec![Step::Get(key.clone())];
        let answer = backend
            .txn(vec![compare], then, otherwise)
            .await
            .map_err(|e| kv_error(&e))?;
        if answer.succeeded {
            return Ok(reply);
        }
        current = answer.gets.into_iter().next().flatten();
    }
    Err(kv_error(&KvError::Busy(format!(
        "the key kept changing under compare-and-swap for {MAX_CAS_WAIT_MS} ms; try again"
    ))))
}

/// A random pause before attempt `attempt` (from 1): up to 1, 2, 4 ... 32 ms.
fn cas_backoff(attempt: usize) -> std::time::Duration {
    use rand::Rng;
    let cap_ms = (1u64 << attempt.min(5)).min(MAX_CAS_BACKOFF_MS);
    let micros = rand::thread_rng().gen_range(0..=cap_ms * 1_000);
    std::time::Duration::from_micros(micros)
}
