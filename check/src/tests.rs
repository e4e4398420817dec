use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

// ---- fixtures -----------------------------------------------------------------------------

fn get(key: &str) -> KvOp {
    KvOp::Get {
        key: key.to_string(),
    }
}

fn put(key: &str, value: &str) -> KvOp {
    KvOp::Put {
        key: key.to_string(),
        value: value.as_bytes().to_vec(),
    }
}

fn del(key: &str) -> KvOp {
    KvOp::Delete {
        key: key.to_string(),
    }
}

fn cas(key: &str, expected: Option<&str>, value: Option<&str>) -> KvOp {
    KvOp::Cas {
        key: key.to_string(),
        expected: expected.map(|v| v.as_bytes().to_vec()),
        value: value.map(|v| v.as_bytes().to_vec()),
    }
}

fn cas_ok(succeeded: bool) -> Completion {
    Completion::Ok(KvResult::Cas { succeeded })
}

fn saw(value: Option<&str>) -> Completion {
    Completion::Ok(KvResult::Get(value.map(|v| v.as_bytes().to_vec())))
}

fn put_ok() -> Completion {
    Completion::Ok(KvResult::Put)
}

fn del_ok(existed: Option<bool>) -> Completion {
    Completion::Ok(KvResult::Delete { existed })
}

/// Records one operation with the given interval and outcome.
fn rec(h: &mut History, client: u64, op: KvOp, invoke: u64, complete: u64, end: Completion) {
    let id = h.invoke(client, op, invoke);
    match end {
        Completion::Unknown => h.unknown(id),
        end => h.complete(id, end, complete),
    }
}

/// Runs the full check and the search alone on a single-key history; both must agree.
fn verdict(h: &History) -> CheckResult {
    let full = check(h);
    let ops: Vec<&Operation> = h.ops().iter().collect();
    let key = ops.first().map_or("", |op| op.op.key());
    let search_only = check_one_key(key, &ops, &CheckConfig::default(), Prechecks::Off);
    assert_eq!(
        full.is_ok(),
        search_only.is_ok(),
        "{full:?}\nvs\n{search_only:?}"
    );
    full
}

fn expect_violation(h: &History, key: &str, kind: ViolationKind) -> Violation {
    let v = match verdict(h) {
        CheckResult::Err(v) => v,
        other => panic!("expected {kind:?} on {key:?}, got {other:?}"),
    };
    assert_eq!((v.key.as_str(), v.kind), (key, kind), "{v}");
    assert!(v.to_string().contains(&format!("{key:?}")), "{v}");
    v
}

fn expect_ok(h: &History) {
    let result = verdict(h);
    assert!(result.is_ok(), "expected linearizable, got {result:?}");
}

// ---- hand-written histories ---------------------------------------------------------------

#[test]
fn sequential_valid_history_passes() {
    let mut h = History::new();
    rec(&mut h, 1, get("k"), 0, 1, saw(None));
    rec(&mut h, 1, put("k", "a"), 2, 3, put_ok());
    rec(&mut h, 2, get("k"), 4, 5, saw(Some("a")));
    rec(&mut h, 1, put("k", "b"), 6, 7, put_ok());
    rec(&mut h, 2, get("k"), 8, 9, saw(Some("b")));
    rec(&mut h, 2, del("k"), 10, 11, del_ok(Some(true)));
    rec(&mut h, 1, get("k"), 12, 13, saw(None));
    rec(&mut h, 1, del("k"), 14, 15, del_ok(Some(false)));
    assert_eq!(
        verdict(&h),
        CheckResult::Ok {
            keys_checked: 1,
            ops_checked: 8
        }
    );
}

#[test]
fn concurrent_get_may_see_either_value() {
    for seen in ["a", "b"] {
        let mut h = History::new();
        rec(&mut h, 1, put("k", "a"), 0, 1, put_ok());
        rec(&mut h, 1, put("k", "b"), 10, 20, put_ok());
        rec(&mut h, 2, get("k"), 12, 18, saw(Some(seen)));
        expect_ok(&h);
    }
}

#[test]
fn touching_intervals_count_as_concurrent() {
    let mut h = History::new();
    rec(&mut h, 1, put("k", "a"), 0, 5, put_ok());
    rec(&mut h, 2, get("k"), 5, 6, saw(None));
    expect_ok(&h);
}

#[test]
fn stale_read_is_reported() {
    let mut h = History::new();
    rec(&mut h, 1, put("k", "a"), 0, 1, put_ok());
    rec(&mut h, 1, put("k", "b"), 2, 3, put_ok());
    rec(&mut h, 2, get("k"), 4, 5, saw(Some("a")));
    rec(&mut h, 3, get("k"), 6, 7, saw(Some("b")));
    let v = expect_violation(&h, "k", ViolationKind::StaleRead);
    let ids: Vec<u64> = v.ops.iter().map(|op| op.id).collect();
    assert_eq!(ids, [0, 1, 2], "{v}");
}

#[test]
fn lost_write_is_reported() {
    let mut h = History::new();
    rec(&mut h, 1, put("k", "a"), 0, 1, put_ok());
    rec(&mut h, 1, put("k", "b"), 2, 3, put_ok());
    rec(&mut h, 2, get("k"), 4, 5, saw(Some("a")));
    expect_violation(&h, "k", ViolationKind::LostWrite);

    let mut h = History::new();
    rec(&mut h, 1, put("k", "b"), 0, 1, put_ok());
    rec(&mut h, 2, get("k"), 4, 5, saw(None));
    expect_violation(&h, "k", ViolationKind::LostWrite);
}

#[test]
fn resurrected_delete_is_reported() {
    let mut h = History::new();
    rec(&mut h, 1, put("k", "a"), 0, 1, put_ok());
    rec(&mut h, 1, del("k"), 2, 3, del_ok(None));
    rec(&mut h, 2, get("k"), 4, 5, saw(Some("a")));
    expect_violation(&h, "k", ViolationKind::ResurrectedDelete);
}

#[test]
fn unknown_put_that_later_appears_is_accepted() {
    let mut h = History::new();
    rec(&mut h, 1, put("k", "a"), 0, 1, put_ok());
    rec(&mut h, 1, put("k", "b"), 2, 0, Completion::Unknown);
    rec(&mut h, 2, get("k"), 3, 4, saw(Some("a")));
    rec(&mut h, 2, get("k"), 100, 101, saw(Some("b")));
    rec(&mut h, 3, get("k"), 102, 103, saw(Some("b")));
    expect_ok(&h);
}

#[test]
fn unknown_put_that_never_appears_is_accepted() {
    let mut h = History::new();
    rec(&mut h, 1, put("k", "a"), 0, 1, put_ok());
    rec(&mut h, 1, put("k", "b"), 2, 0, Completion::Unknown);
    rec(&mut h, 2, get("k"), 100, 101, saw(Some("a")));
    expect_ok(&h);
}

#[test]
fn never_completed_operations_count_as_unknown() {
    let mut h = History::new();
    h.invoke(1, put("k", "b"), 2); // no response ever recorded
    rec(&mut h, 2, get("k"), 100, 101, saw(Some("b")));
    expect_ok(&h);
}

#[test]
fn unknown_put_cannot_take_effect_twice() {
    // "b" appears, then the older "a" comes back although nothing rewrote it.
    let mut h = History::new();
    rec(&mut h, 1, put("k", "a"), 0, 1, put_ok());
    rec(&mut h, 1, put("k", "b"), 2, 0, Completion::Unknown);
    rec(&mut h, 2, get("k"), 3, 4, saw(Some("b")));
    rec(&mut h, 2, get("k"), 5, 6, saw(Some("a")));
    expect_violation(&h, "k", ViolationKind::NoLinearization);
}

#[test]
fn unknown_delete_may_or_may_not_take_effect() {
    for (seen, linearizable) in [(Some("a"), true), (None, true)] {
        let mut h = History::new();
        rec(&mut h, 1, put("k", "a"), 0, 1, put_ok());
        rec(&mut h, 1, del("k"), 2, 0, Completion::Unknown);
        rec(&mut h, 2, get("k"), 10, 11, saw(seen));
        assert_eq!(verdict(&h).is_ok(), linearizable);
    }
    // Once the delete is seen, the value cannot come back without a new put.
    let mut h = History::new();
    rec(&mut h, 1, put("k", "a"), 0, 1, put_ok());
    rec(&mut h, 1, del("k"), 2, 0, Completion::Unknown);
    rec(&mut h, 2, get("k"), 10, 11, saw(None));
    rec(&mut h, 2, get("k"), 12, 13, saw(Some("a")));
    expect_violation(&h, "k", ViolationKind::NoLinearization);
}

#[test]
fn a_violation_wins_over_an_undecided_key() {
    let mut h = History::new();
    rec(&mut h, 1, put("a", "x"), 5, 4, put_ok()); // malformed: key "a" is undecided
    rec(&mut h, 1, put("b", "x"), 0, 1, Completion::Failed);
    rec(&mut h, 2, get("b"), 2, 3, saw(Some("x")));
    assert_eq!(check(&h).violation().map(|v| v.key.as_str()), Some("b"));
}

#[test]
fn failed_put_observed_is_reported() {
    let mut h = History::new();
    rec(&mut h, 1, put("k", "a"), 0, 1, Completion::Failed);
    rec(&mut h, 2, get("k"), 2, 3, saw(Some("a")));
    let v = expect_violation(&h, "k", ViolationKind::FailedWriteObserved);
    assert_eq!(v.ops.len(), 2, "{v}");
}

#[test]
fn read_of_value_never_written_is_reported() {
    let mut h = History::new();
    rec(&mut h, 1, put("k", "a"), 0, 1, put_ok());
    rec(&mut h, 2, get("k"), 2, 3, saw(Some("zzz")));
    expect_violation(&h, "k", ViolationKind::NeverWritten);
}

#[test]
fn read_from_the_future_is_reported() {
    let mut h = History::new();
    rec(&mut h, 2, get("k"), 0, 1, saw(Some("a")));
    rec(&mut h, 1, put("k", "a"), 2, 3, put_ok());
    expect_violation(&h, "k", ViolationKind::ReadFromFuture);
}

#[test]
fn flip_flop_between_concurrent_puts_needs_the_search() {
    // No single overwrite proves it; only trying both orders of the puts does.
    let mut h = History::new();
    rec(&mut h, 1, put("k", "1"), 0, 10, put_ok());
    rec(&mut h, 2, put("k", "2"), 0, 10, put_ok());
    rec(&mut h, 3, get("k"), 11, 12, saw(Some("1")));
    rec(&mut h, 3, get("k"), 13, 14, saw(Some("2")));
    rec(&mut h, 3, get("k"), 15, 16, saw(Some("1")));
    let v = expect_violation(&h, "k", ViolationKind::NoLinearization);
    assert!(v.explanation.contains("returned \"1\""), "{v}");
    eprintln!("{v}");
}

#[test]
fn delete_existence_is_checked() {
    let mut h = History::new();
    rec(&mut h, 1, put("k", "a"), 0, 1, put_ok());
    rec(&mut h, 1, del("k"), 2, 3, del_ok(Some(false)));
    expect_violation(&h, "k", ViolationKind::NoLinearization);
}

#[test]
fn only_the_bad_key_is_named() {
    let mut h = History::new();
    for k in 0..50 {
        let key = format!("k{k}");
        let t = k * 10;
        rec(&mut h, 1, put(&key, "a"), t, t + 1, put_ok());
        rec(&mut h, 2, put(&key, "b"), t + 2, t + 3, put_ok());
        let seen = if k == 17 { "a" } else { "b" };
        rec(&mut h, 3, get(&key), t + 4, t + 5, saw(Some(seen)));
    }
    match check(&h) {
        CheckResult::Err(v) => assert_eq!(v.key, "k17", "{v}"),
        other => panic!("expected a violation on k17, got {other:?}"),
    }
    let ok_only: Vec<Operation> = h
        .ops()
        .iter()
        .filter(|op| op.op.key() != "k17")
        .cloned()
        .collect();
    assert_eq!(
        check(&History::from_ops(ok_only)),
        CheckResult::Ok {
            keys_checked: 49,
            ops_checked: 147
        }
    );
}

#[test]
fn malformed_history_is_inconclusive() {
    let mut h = History::new();
    rec(&mut h, 1, put("k", "a"), 5, 4, put_ok());
    assert!(matches!(check(&h), CheckResult::Inconclusive { key, .. } if key == "k"));
    let mut h = History::new();
    rec(&mut h, 1, get("k"), 0, 1, put_ok());
    assert!(matches!(check(&h), CheckResult::Inconclusive { .. }));
}

#[test]
fn state_budget_makes_the_result_inconclusive() {
    let h = random_history(&mut StdRng::seed_from_u64(7), &Shape::default());
    let tiny = CheckConfig { max_states: 3 };
    match check_with(&h, &tiny) {
        CheckResult::Inconclusive { reason, .. } => assert!(reason.contains("gave up"), "{reason}"),
        other => panic!("expected inconclusive, got {other:?}"),
    }
}

#[test]
fn violation_report_is_readable() {
    let mut h = History::new();
    rec(&mut h, 7, put("user:1", "alice"), 0, 1, put_ok());
    rec(&mut h, 7, del("user:1"), 2, 3, del_ok(None));
    rec(&mut h, 9, get("user:1"), 4, 5, saw(Some("alice")));
    let text = check(&h).violation().expect("violation").to_string();
    for needle in [
        "\"user:1\"",
        "resurrected delete",
        "#1 client 7: delete(\"user:1\") [2, 3] -> ok",
        "#2 client 9: get(\"user:1\") [4, 5] -> \"alice\"",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

// ---- randomized histories -----------------------------------------------------------------

/// Parameters of a simulated workload.
struct Shape {
    clients: u64,
    ops_per_client: usize,
    keys: usize,
    /// `None`: every put writes a fresh value; `Some(n)`: values repeat among `n`.
    value_space: Option<u32>,
    /// Percent of operations that fail / time out.
    failed_pct: u32,
    unknown_pct: u32,
    /// Deletes report `existed`.
    checked_deletes: bool,
    max_duration: u64,
    /// Percent of operations turned into compare-and-swaps (no randomness drawn when 0).
    cas_pct: u32,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            clients: 8,
            ops_per_client: 60,
            keys: 3,
            value_space: None,
            failed_pct: 3,
            unknown_pct: 3,
            checked_deletes: true,
            max_duration: 30,
            cas_pct: 0,
        }
    }
}

/// One simulated operation before recording.
struct Sim {
    client: u64,
    op: KvOp,
    invoke: u64,
    complete: u64,
    /// When it takes effect, if it does.
    effect: Option<u64>,
    fate: Completion,
}

/// A linearizable history by construction: each operation takes effect on a real map at a
/// random point inside its interval (any point after invocation for timeouts).
fn random_history(rng: &mut StdRng, shape: &Shape) -> History {
    let mut sims = Vec::new();
    for client in 0..shape.clients {
        let mut t = rng.gen_range(0..5);
        for i in 0..shape.ops_per_client {
            let sim = random_op(rng, shape, client, i, t);
            t = sim.complete + rng.gen_range(0..3);
            sims.push(sim);
        }
    }
    apply_in_effect_order(&mut sims, shape.checked_deletes);
    let mut h = History::new();
    for s in sims {
        let id = h.invoke(s.client, s.op, s.invoke);
        match s.fate {
            Completion::Unknown => h.unknown(id),
            fate => h.complete(id, fate, s.complete),
        }
    }
    h
}

fn random_op(rng: &mut StdRng, shape: &Shape, client: u64, i: usize, t: u64) -> Sim {
    let key = format!("k{}", rng.gen_range(0..shape.keys));
    let op = match rng.gen_range(0..10) {
        0..=4 => KvOp::Get { key },
        5..=8 => {
            let value = match shape.value_space {
                None => format!("c{client}-{i}"),
                Some(n) => format!("v{}", rng.gen_range(0..n)),
            };
            KvOp::Put {
                key,
                value: value.into_bytes(),
            }
        }
        _ => KvOp::Delete { key },
    };
    let op = match shape.cas_pct > 0 && rng.gen_range(0..100) < shape.cas_pct {
        true => random_cas(rng, shape, op.key(), client, i),
        false => op,
    };
    let complete = t + rng.gen_range(1..=shape.max_duration);
    let roll = rng.gen_range(0..100);
    let (fate, effect) = if roll < shape.failed_pct {
        (Completion::Failed, None)
    } else if roll < shape.failed_pct + shape.unknown_pct {
        let late = complete + rng.gen_range(0..3 * shape.max_duration);
        (
            Completion::Unknown,
            rng.gen_bool(0.5).then(|| rng.gen_range(t..=late)),
        )
    } else {
        (put_ok(), Some(rng.gen_range(t..=complete)))
    };
    Sim {
        client,
        op,
        invoke: t,
        complete,
        effect,
        fate,
    }
}

/// A compare-and-swap expecting a value likely to be there now and then.
fn random_cas(rng: &mut StdRng, shape: &Shape, key: &str, client: u64, i: usize) -> KvOp {
    let value = |rng: &mut StdRng, fresh: bool| match shape.value_space {
        _ if rng.gen_range(0..5) == 0 => None,
        None if fresh => Some(format!("c{client}-{i}")),
        None => {
            let other = rng.gen_range(0..shape.clients);
            Some(format!(
                "c{other}-{}",
                i.saturating_sub(rng.gen_range(0..3))
            ))
        }
        Some(n) => Some(format!("v{}", rng.gen_range(0..n))),
    };
    KvOp::Cas {
        key: key.to_string(),
        expected: value(rng, false).map(String::into_bytes),
        value: value(rng, true).map(String::into_bytes),
    }
}

/// Applies the effective operations to a map in effect order, filling in the responses.
fn apply_in_effect_order(sims: &mut [Sim], checked_deletes: bool) {
    let mut order: Vec<usize> = (0..sims.len())
        .filter(|&i| sims[i].effect.is_some())
        .collect();
    order.sort_by_key(|&i| sims[i].effect);
    let mut map: HashMap<String, Vec<u8>> = HashMap::new();
    for i in order {
        let s = &mut sims[i];
        let result = match &s.op {
            KvOp::Get { key } => KvResult::Get(map.get(key).cloned()),
            KvOp::Put { key, value } => {
                map.insert(key.clone(), value.clone());
                KvResult::Put
            }
            KvOp::Delete { key } => {
                let existed = map.remove(key).is_some();
                KvResult::Delete {
                    existed: checked_deletes.then_some(existed),
                }
            }
            KvOp::Cas {
                key,
                expected,
                value,
            } => {
                let succeeded = map.get(key) == expected.as_ref();
                if succeeded {
                    match value {
                        Some(v) => map.insert(key.clone(), v.clone()),
                        None => map.remove(key),
                    };
                }
                KvResult::Cas { succeeded }
            }
        };
        if matches!(s.fate, Completion::Ok(_)) {
            s.fate = Completion::Ok(result);
        }
    }
}

/// Replaces the answer of one acknowledged get (chosen by `pick`) with `value`.
fn corrupt_read(h: &History, pick: usize, value: Option<Vec<u8>>) -> (History, String) {
    let mut ops = h.ops().to_vec();
    let reads: Vec<usize> = (0..ops.len())
        .filter(|&i| matches!(ops[i].completion, Completion::Ok(KvResult::Get(_))))
        .collect();
    let victim = reads[pick % reads.len()];
    ops[victim].completion = Completion::Ok(KvResult::Get(value));
    let key = ops[victim].op.key().to_string();
    (History::from_ops(ops), key)
}

/// Checks one key with the cheap proofs disabled, to exercise the search on its own.
fn search_only(h: &History, key: &str) -> CheckResult {
    let ops: Vec<&Operation> = h.ops().iter().filter(|op| op.op.key() == key).collect();
    check_one_key(key, &ops, &CheckConfig::default(), Prechecks::Off)
}

#[test]
fn random_linearizable_histories_pass_and_corrupted_ones_fail() {
    let shapes = [
        Shape::default(),
        Shape {
            value_space: Some(3),
            ..Shape::default()
        },
        Shape {
            unknown_pct: 15,
            checked_deletes: false,
            value_space: Some(4),
            ..Shape::default()
        },
    ];
    for (n, shape) in shapes.iter().enumerate() {
        for seed in 0..10 {
            let mut rng = StdRng::seed_from_u64(seed * 31 + n as u64);
            let h = random_history(&mut rng, shape);
            let result = check(&h);
            assert!(result.is_ok(), "shape {n} seed {seed}: {result:?}");

            let pick = rng.gen_range(0..usize::MAX);
            let (bad, key) = corrupt_read(&h, pick, Some(b"never-written".to_vec()));
            let v = check(&bad)
                .violation()
                .cloned()
                .expect("corruption must be caught");
            assert_eq!(
                (v.key.as_str(), v.kind),
                (key.as_str(), ViolationKind::NeverWritten)
            );
            let by_search = search_only(&bad, &key);
            assert!(
                by_search.violation().is_some(),
                "search missed it: {by_search:?}"
            );
        }
    }
}

#[test]
fn proofs_and_search_agree_on_randomly_stale_reads() {
    // Swap a read's answer for another value of the key: sometimes still linearizable,
    // sometimes not. Whenever a cheap proof fires, the search must agree.
    let shape = Shape {
        clients: 5,
        ops_per_client: 30,
        keys: 1,
        value_space: Some(5),
        ..Shape::default()
    };
    let (mut caught, mut proved) = (0, 0);
    for seed in 0..200 {
        let mut rng = StdRng::seed_from_u64(seed);
        let h = random_history(&mut rng, &shape);
        let value = rng
            .gen_bool(0.8)
            .then(|| format!("v{}", rng.gen_range(0..5)).into_bytes());
        let (bad, key) = corrupt_read(&h, rng.gen_range(0..usize::MAX), value);
        let full = check(&bad);
        let search = search_only(&bad, &key);
        assert_eq!(full.is_ok(), search.is_ok(), "{full:?}\nvs\n{search:?}");
        caught += usize::from(!full.is_ok());
        proved += usize::from(
            full.violation()
                .is_some_and(|v| v.kind != ViolationKind::NoLinearization),
        );
    }
    assert!(
        caught > 20 && proved > 10,
        "caught {caught}, proved {proved}"
    );
}

// ---- brute force oracle -------------------------------------------------------------------

/// Linearizability of a tiny single-key history straight from the definition: try every
/// order that respects real time, with unknown operations optionally left out.
fn brute_force(ops: &[Operation]) -> bool {
    let live: Vec<&Operation> = ops
        .iter()
        .filter(|op| op.completion != Completion::Failed)
        .collect();
    explore(&live, (1u32 << live.len()) - 1, None)
}

fn explore(ops: &[&Operation], left: u32, state: Option<Vec<u8>>) -> bool {
    let acked = |i: usize| matches!(ops[i].completion, Completion::Ok(_));
    let pending = |i: usize| left >> i & 1 == 1;
    if !(0..ops.len()).any(|i| pending(i) && acked(i)) {
        return true;
    }
    (0..ops.len()).filter(|&i| pending(i)).any(|i| {
        let blocked = (0..ops.len())
            .any(|j| pending(j) && acked(j) && ops[j].complete_time < ops[i].invoke_time);
        match (blocked, model_step(ops[i], &state)) {
            (false, Some(next)) => explore(ops, left & !(1 << i), next),
            _ => false,
        }
    })
}

/// The register after `op` from `state`, or `None` if the response contradicts it.
fn model_step(op: &Operation, state: &Option<Vec<u8>>) -> Option<Option<Vec<u8>>> {
    match (&op.op, &op.completion) {
        (KvOp::Get { .. }, Completion::Ok(KvResult::Get(v))) => (v == state).then(|| state.clone()),
        (KvOp::Get { .. }, _) => Some(state.clone()),
        (KvOp::Put { value, .. }, _) => Some(Some(value.clone())),
        (KvOp::Delete { .. }, Completion::Ok(KvResult::Delete { existed: Some(e) })) => {
            (*e == state.is_some()).then_some(None)
        }
        (KvOp::Delete { .. }, _) => Some(None),
        (
            KvOp::Cas {
                expected, value, ..
            },
            Completion::Ok(KvResult::Cas { succeeded }),
        ) => match (state == expected, *succeeded) {
            (true, true) => Some(value.clone()),
            (false, false) => Some(state.clone()),
            _ => None,
        },
        // Unknown: swapped if it could, else changed nothing (leaving it out is also tried).
        (
            KvOp::Cas {
                expected, value, ..
            },
            _,
        ) => Some(if state == expected {
            value.clone()
        } else {
            state.clone()
        }),
    }
}

/// A tiny history with arbitrary (mostly wrong) responses; with `cas`, a third of the
/// operations are compare-and-swaps.
fn tiny_random_history(rng: &mut StdRng, with_cas: bool) -> History {
    let mut h = History::new();
    let value = |rng: &mut StdRng| ["a", "b"][rng.gen_range(0..2)];
    for _ in 0..rng.gen_range(1..=7) {
        let invoke = rng.gen_range(0..12);
        let complete = invoke + rng.gen_range(0..6);
        let kind = match with_cas {
            true => rng.gen_range(0..8),
            false => rng.gen_range(0..5),
        };
        let (op, ok) = match kind {
            0 | 1 => {
                let seen = rng.gen_bool(0.7).then(|| value(rng));
                (get("k"), saw(seen))
            }
            2 | 3 => (put("k", value(rng)), put_ok()),
            4 => {
                let existed = [None, Some(true), Some(false)][rng.gen_range(0..3)];
                (del("k"), del_ok(existed))
            }
            _ => {
                let expected = rng.gen_bool(0.7).then(|| value(rng));
                let new = rng.gen_bool(0.7).then(|| value(rng));
                (cas("k", expected, new), cas_ok(rng.gen_bool(0.5)))
            }
        };
        let end = match rng.gen_range(0..10) {
            0 => Completion::Failed,
            1 | 2 => Completion::Unknown,
            _ => ok,
        };
        rec(&mut h, rng.gen_range(0..3), op, invoke, complete, end);
    }
    h
}

#[test]
fn agrees_with_brute_force_on_tiny_histories() {
    let mut rng = StdRng::seed_from_u64(42);
    let mut linearizable = 0;
    for _ in 0..4000 {
        let h = tiny_random_history(&mut rng, false);
        let expected = brute_force(h.ops());
        assert_eq!(verdict(&h).is_ok(), expected, "history: {:#?}", h.ops());
        linearizable += usize::from(expected);
    }
    assert!(
        (500..3500).contains(&linearizable),
        "{linearizable} linearizable"
    );
}

// ---- scale --------------------------------------------------------------------------------

fn timed_check(h: &History) -> CheckResult {
    let start = Instant::now();
    let result = check(h);
    eprintln!("{} ops: {:?} -> {result:?}", h.len(), start.elapsed());
    result
}

#[test]
fn large_history_over_ten_keys() {
    let shape = Shape {
        clients: 20,
        ops_per_client: 500,
        keys: 10,
        ..Shape::default()
    };
    let h = random_history(&mut StdRng::seed_from_u64(1), &shape);
    assert!(timed_check(&h).is_ok());
    let (bad, key) = corrupt_read(&h, 4321, Some(b"never-written".to_vec()));
    assert_eq!(
        check(&bad).violation().map(|v| v.key.as_str()),
        Some(key.as_str())
    );
}

#[test]
fn ten_thousand_ops_on_one_key() {
    // Unique values, as a test harness would write them.
    let shape = Shape {
        clients: 30,
        ops_per_client: 340,
        keys: 1,
        ..Shape::default()
    };
    let h = random_history(&mut StdRng::seed_from_u64(2), &shape);
    assert!(timed_check(&h).is_ok());
    let (bad, _) = corrupt_read(&h, 777, Some(b"never-written".to_vec()));
    assert!(search_only(&bad, "k0").violation().is_some());
}

#[test]
fn ten_thousand_ops_on_one_key_with_reused_values() {
    // Five values shared by twenty clients: a read says little about which put it saw.
    let shape = Shape {
        clients: 20,
        ops_per_client: 500,
        keys: 1,
        value_space: Some(5),
        ..Shape::default()
    };
    let h = random_history(&mut StdRng::seed_from_u64(3), &shape);
    assert!(timed_check(&h).is_ok());
}

/// The hardest regime: many clients per key reusing a few values. Valid histories must never
/// be reported as violations; some may come out inconclusive. Run with
/// `cargo test --release -p paxoskv --lib stress_reused_values -- --ignored --nocapture`.
#[test]
#[ignore]
fn stress_reused_values() {
    for (clients, values) in [(20, 10), (30, 5), (30, 10)] {
        let (mut ok, mut undecided) = (0, 0);
        let start = Instant::now();
        for seed in 0..5 {
            let shape = Shape {
                clients,
                ops_per_client: 10_000 / clients as usize,
                keys: 1,
                value_space: Some(values),
                ..Shape::default()
            };
            let h = random_history(&mut StdRng::seed_from_u64(seed), &shape);
            match check(&h) {
                CheckResult::Ok { .. } => ok += 1,
                CheckResult::Inconclusive { .. } => undecided += 1,
                CheckResult::Err(v) => panic!("false alarm: {v}"),
            }
        }
        eprintln!(
            "{clients} clients, {values} values: {ok} ok, {undecided} inconclusive in {:?}",
            start.elapsed()
        );
    }
}

// ---- compare-and-swap ---------------------------------------------------------------------

#[test]
fn cas_sequential_history_passes() {
    let mut h = History::new();
    rec(&mut h, 1, put("k", "a"), 0, 1, put_ok());
    rec(
        &mut h,
        2,
        cas("k", Some("a"), Some("b")),
        2,
        3,
        cas_ok(true),
    );
    rec(
        &mut h,
        1,
        cas("k", Some("a"), Some("c")),
        4,
        5,
        cas_ok(false),
    );
    rec(&mut h, 3, get("k"), 6, 7, saw(Some("b")));
    rec(&mut h, 2, cas("k", Some("b"), None), 8, 9, cas_ok(true));
    rec(&mut h, 3, get("k"), 10, 11, saw(None));
    rec(&mut h, 1, cas("k", None, Some("d")), 12, 13, cas_ok(true));
    rec(&mut h, 2, cas("k", None, Some("e")), 14, 15, cas_ok(false));
    rec(&mut h, 3, get("k"), 16, 17, saw(Some("d")));
    expect_ok(&h);
}

#[test]
fn concurrent_cas_histories_pass() {
    // One of two racing swaps from the same value wins; the loser saw the winner's value.
    let mut h = History::new();
    rec(&mut h, 1, put("k", "a"), 0, 1, put_ok());
    rec(
        &mut h,
        2,
        cas("k", Some("a"), Some("b")),
        2,
        10,
        cas_ok(true),
    );
    rec(
        &mut h,
        3,
        cas("k", Some("a"), Some("c")),
        3,
        9,
        cas_ok(false),
    );
    rec(&mut h, 4, get("k"), 11, 12, saw(Some("b")));
    expect_ok(&h);

    // A chain of concurrent swaps has to run in the one order their values allow, which is
    // the reverse of their invocations.
    let mut h = History::new();
    rec(
        &mut h,
        1,
        cas("k", Some("b"), Some("c")),
        0,
        10,
        cas_ok(true),
    );
    rec(
        &mut h,
        2,
        cas("k", Some("a"), Some("b")),
        1,
        10,
        cas_ok(true),
    );
    rec(&mut h, 3, cas("k", None, Some("a")), 2, 10, cas_ok(true));
    rec(&mut h, 4, get("k"), 11, 12, saw(Some("c")));
    expect_ok(&h);
}

#[test]
fn two_concurrent_cas_from_the_same_value_cannot_both_succeed() {
    // The lost update compare-and-swap exists to prevent.
    let mut h = History::new();
    rec(&mut h, 1, put("k", "a"), 0, 1, put_ok());
    rec(
        &mut h,
        2,
        cas("k", Some("a"), Some("b")),
        2,
        10,
        cas_ok(true),
    );
    rec(
        &mut h,
        3,
        cas("k", Some("a"), Some("c")),
        3,
        9,
        cas_ok(true),
    );
    let v = expect_violation(&h, "k", ViolationKind::NoLinearization);
    assert!(v.to_string().contains("cas("), "{v}");

    // Even when one of them is a delete and nobody reads afterwards.
    let mut h = History::new();
    rec(&mut h, 2, cas("k", None, Some("b")), 2, 10, cas_ok(true));
    rec(&mut h, 3, cas("k", None, None), 3, 9, cas_ok(true));
    rec(&mut h, 3, cas("k", None, Some("c")), 3, 9, cas_ok(true));
    expect_violation(&h, "k", ViolationKind::NoLinearization);
}

#[test]
fn cas_cannot_succeed_on_a_value_overwritten_before_it_began() {
    let mut h = History::new();
    rec(&mut h, 1, put("k", "a"), 0, 1, put_ok());
    rec(&mut h, 2, put("k", "b"), 2, 3, put_ok());
    rec(
        &mut h,
        3,
        cas("k", Some("a"), Some("c")),
        4,
        5,
        cas_ok(true),
    );
    let v = expect_violation(&h, "k", ViolationKind::LostWrite);
    assert!(v.explanation.contains("cas #2"), "{v}");

    // The search alone reaches the same verdict.
    assert!(search_only(&h, "k").violation().is_some());

    // Likewise when a later read did see the overwriting put.
    rec(&mut h, 1, get("k"), 6, 7, saw(Some("b")));
    expect_violation(&h, "k", ViolationKind::StaleRead);
}

#[test]
fn failed_cas_constrains_the_order() {
    // Nothing changed "a" between the put and the swap, so its comparison cannot fail.
    let mut h = History::new();
    rec(&mut h, 1, put("k", "a"), 0, 1, put_ok());
    rec(
        &mut h,
        2,
        cas("k", Some("a"), Some("b")),
        2,
        3,
        cas_ok(false),
    );
    expect_violation(&h, "k", ViolationKind::NoLinearization);

    // The failed swap saw the key present, so the concurrent put came before it; a read
    // after the swap can no longer see the key absent. Without the swap it could.
    let mut h = History::new();
    rec(&mut h, 1, put("k", "a"), 0, 10, put_ok());
    rec(&mut h, 3, get("k"), 3, 4, saw(None));
    expect_ok(&h);
    let mut h = History::new();
    rec(&mut h, 1, put("k", "a"), 0, 10, put_ok());
    rec(&mut h, 2, cas("k", None, Some("b")), 1, 2, cas_ok(false));
    rec(&mut h, 3, get("k"), 3, 4, saw(None));
    expect_violation(&h, "k", ViolationKind::NoLinearization);
}

#[test]
fn unknown_cas_may_or_may_not_take_effect() {
    let base = || {
        let mut h = History::new();
        rec(&mut h, 1, put("k", "a"), 0, 1, put_ok());
        rec(
            &mut h,
            2,
            cas("k", Some("a"), Some("b")),
            2,
            0,
            Completion::Unknown,
        );
        h
    };
    // Applied.
    let mut h = base();
    rec(&mut h, 3, get("k"), 10, 11, saw(Some("b")));
    expect_ok(&h);
    // Not applied.
    let mut h = base();
    rec(&mut h, 3, get("k"), 10, 11, saw(Some("a")));
    rec(
        &mut h,
        3,
        cas("k", Some("a"), Some("c")),
        12,
        13,
        cas_ok(true),
    );
    expect_ok(&h);
    // Applied late, after a read of the old value.
    let mut h = base();
    rec(&mut h, 3, get("k"), 10, 11, saw(Some("a")));
    rec(&mut h, 3, get("k"), 12, 13, saw(Some("b")));
    expect_ok(&h);
    // But not undone: "a" has no writer left once "b" was seen.
    let mut h = base();
    rec(&mut h, 3, get("k"), 10, 11, saw(Some("b")));
    rec(&mut h, 3, get("k"), 12, 13, saw(Some("a")));
    expect_violation(&h, "k", ViolationKind::NoLinearization);
    // Nor applied when the value it expects was never there.
    let mut h = History::new();
    rec(&mut h, 1, put("k", "a"), 0, 1, put_ok());
    rec(
        &mut h,
        2,
        cas("k", Some("x"), Some("b")),
        2,
        0,
        Completion::Unknown,
    );
    rec(&mut h, 3, get("k"), 10, 11, saw(Some("b")));
    expect_violation(&h, "k", ViolationKind::NoLinearization);
    // A failed compare-and-swap is dropped like a failed put.
    let mut h = History::new();
    rec(&mut h, 1, put("k", "a"), 0, 1, put_ok());
    rec(
        &mut h,
        2,
        cas("k", Some("a"), Some("b")),
        2,
        3,
        Completion::Failed,
    );
    rec(&mut h, 3, get("k"), 10, 11, saw(Some("b")));
    expect_violation(&h, "k", ViolationKind::FailedWriteObserved);
}

#[test]
fn chained_unknown_cas_are_explored() {
    // Two timed-out swaps that only make sense together, the second taking effect first in
    // invocation order but last in effect order.
    let mut h = History::new();
    rec(&mut h, 1, put("k", "a"), 0, 1, put_ok());
    rec(
        &mut h,
        2,
        cas("k", Some("b"), Some("c")),
        2,
        0,
        Completion::Unknown,
    );
    rec(
        &mut h,
        3,
        cas("k", Some("a"), Some("b")),
        3,
        0,
        Completion::Unknown,
    );
    rec(&mut h, 4, get("k"), 20, 21, saw(Some("c")));
    expect_ok(&h);
    // A failed comparison much later still needs the key away from "a".
    let mut h = History::new();
    rec(&mut h, 1, put("k", "a"), 0, 1, put_ok());
    rec(&mut h, 2, put("k", "z"), 2, 0, Completion::Unknown);
    rec(&mut h, 4, get("k"), 3, 4, saw(Some("a")));
    rec(&mut h, 4, cas("k", Some("a"), None), 30, 31, cas_ok(false));
    expect_ok(&h);
    let mut h = History::new();
    rec(&mut h, 1, put("k", "a"), 0, 1, put_ok());
    rec(&mut h, 4, get("k"), 3, 4, saw(Some("a")));
    rec(&mut h, 4, cas("k", Some("a"), None), 30, 31, cas_ok(false));
    expect_violation(&h, "k", ViolationKind::NoLinearization);
}

#[test]
fn agrees_with_brute_force_on_tiny_histories_with_cas() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut linearizable = 0;
    for _ in 0..6000 {
        let h = tiny_random_history(&mut rng, true);
        let expected = brute_force(h.ops());
        assert_eq!(verdict(&h).is_ok(), expected, "history: {:#?}", h.ops());
        linearizable += usize::from(expected);
    }
    assert!(
        (500..5500).contains(&linearizable),
        "{linearizable} linearizable"
    );
}

/// Flips the answer of one acknowledged compare-and-swap (chosen by `pick`), if any.
fn flip_cas(h: &History, pick: usize) -> Option<(History, String)> {
    let mut ops = h.ops().to_vec();
    let swaps: Vec<usize> = (0..ops.len())
        .filter(|&i| matches!(ops[i].completion, Completion::Ok(KvResult::Cas { .. })))
        .collect();
    let victim = *swaps.get(pick % swaps.len().max(1))?;
    if let Completion::Ok(KvResult::Cas { succeeded }) = &mut ops[victim].completion {
        *succeeded = !*succeeded;
    }
    let key = ops[victim].op.key().to_string();
    Some((History::from_ops(ops), key))
}

#[test]
fn random_histories_with_cas_pass_and_flipped_ones_agree() {
    let shapes = [
        Shape {
            cas_pct: 20,
            ..Shape::default()
        },
        Shape {
            cas_pct: 30,
            value_space: Some(3),
            ..Shape::default()
        },
        Shape {
            cas_pct: 20,
            unknown_pct: 15,
            checked_deletes: false,
            value_space: Some(4),
            ..Shape::default()
        },
    ];
    let (mut flipped, mut caught) = (0, 0);
    for (n, shape) in shapes.iter().enumerate() {
        for seed in 0..10 {
            let mut rng = StdRng::seed_from_u64(seed * 17 + n as u64);
            let h = random_history(&mut rng, shape);
            let result = check(&h);
            assert!(result.is_ok(), "shape {n} seed {seed}: {result:?}");
            for key in ["k0", "k1", "k2"] {
                let by_search = search_only(&h, key);
                assert!(by_search.is_ok(), "shape {n} seed {seed}: {by_search:?}");
            }
            let Some((bad, key)) = flip_cas(&h, rng.gen_range(0..usize::MAX)) else {
                continue;
            };
            let full = check(&bad);
            let search = search_only(&bad, &key);
            assert_eq!(full.is_ok(), search.is_ok(), "{full:?}\nvs\n{search:?}");
            assert!(
                !matches!(full, CheckResult::Inconclusive { .. }),
                "shape {n} seed {seed}: {full:?}"
            );
            flipped += 1;
            caught += usize::from(!full.is_ok());
        }
    }
    assert!(
        flipped >= 25 && caught >= 8,
        "flipped {flipped}, caught {caught}"
    );
}

#[test]
fn ten_thousand_ops_on_one_key_with_cas() {
    let shape = Shape {
        clients: 30,
        ops_per_client: 340,
        keys: 1,
        cas_pct: 10,
        ..Shape::default()
    };
    let h = random_history(&mut StdRng::seed_from_u64(4), &shape);
    assert!(timed_check(&h).is_ok());
    let (bad, _) = corrupt_read(&h, 777, Some(b"never-written".to_vec()));
    assert!(search_only(&bad, "k0").violation().is_some());
}

#[test]
fn timeouts_and_failed_cas_stay_tractable() {
    // Failed compare-and-swaps late in the history keep every timed-out write relevant
    // (without it the register might hold the expected value); valid histories must still
    // be accepted quickly, and a flipped swap answer decided the same by search and proofs.
    let shape = Shape {
        clients: 6,
        ops_per_client: 100,
        keys: 1,
        cas_pct: 15,
        unknown_pct: 6,
        ..Shape::default()
    };
    let mut decided = 0;
    for seed in 0..5 {
        let h = random_history(&mut StdRng::seed_from_u64(100 + seed), &shape);
        let start = Instant::now();
        let result = search_only(&h, "k0");
        assert!(result.is_ok(), "seed {seed}: {result:?}");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "seed {seed}: {:?}",
            start.elapsed()
        );
        let Some((bad, _)) = flip_cas(&h, seed as usize * 7) else {
            continue;
        };
        let result = search_only(&bad, "k0");
        assert_eq!(
            result.is_ok(),
            check(&bad).is_ok(),
            "seed {seed}: {result:?}"
        );
        decided += usize::from(!matches!(result, CheckResult::Inconclusive { .. }));
    }
    assert!(decided >= 3, "{decided} of 5 decided");
}
