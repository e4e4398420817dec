//! Memory bounds of the core (issue 10): key/value limits on the accept path, the leader's
//! queue in bytes, deadlines of queued commands, and the applied log tail in bytes.

use paxoskv::message::{Accept, Request};
use paxoskv::{
    check_key, check_value, Ballot, ClientError, ClientReply, ClientToken, Command, CommandId,
    Config, Op, PeerToken, Refusal, Replica, Slot, Value,
};
use proptest::prelude::*;

const MAX_VALUE_BYTES: usize = 64;
const MAX_BATCH_BYTES: usize = 256;
const MAX_BATCH_COMMANDS: usize = 3;

fn limits_config(id: u32, replicas: u32) -> Config {
    let mut cfg = Config::new(id, replicas);
    cfg.max_value_bytes = MAX_VALUE_BYTES;
    cfg.max_batch_bytes = MAX_BATCH_BYTES;
    cfg.max_batch_commands = MAX_BATCH_COMMANDS;
    cfg
}

fn put(client_id: u64, seq: u64, key: String, value: Vec<u8>) -> Command {
    Command {
        id: CommandId { client_id, seq },
        op: Op::Put { key, value },
    }
}

fn accept(slot: Slot, value: Value, commit: Slot) -> Request {
    Request::Accept(Accept {
        ballot: Ballot {
            round: 1,
            replica: 1,
        },
        slot,
        value,
        commit,
    })
}

/// Runs the pipeline once with an instant disk.
fn sync(r: &mut Replica) -> paxoskv::Ready {
    let ready = r.ready();
    if let Some(b) = ready.batch {
        r.on_persisted(b);
    }
    ready
}

/// What a correct leader could have built, computed independently of the core.
fn within_limits(value: &Value) -> bool {
    let each = value.commands.iter().all(|c| match &c.op {
        Op::Put { key, value } => {
            check_key(key).is_ok() && check_value(value, MAX_VALUE_BYTES).is_ok()
        }
        Op::Delete { key } => check_key(key).is_ok(),
        Op::Register | Op::LeaseRevoke { .. } | Op::LeaseExpire { .. } => true,
        Op::LeaseGrant { ttl_ms } => paxoskv::check_lease_ttl(*ttl_ms).is_ok(),
        Op::Txn(txn) => txn.check(MAX_VALUE_BYTES).is_ok(),
    });
    let n = value.commands.len();
    each && n <= MAX_BATCH_COMMANDS && (n <= 1 || value.size_bytes() <= MAX_BATCH_BYTES)
}

fn key_len() -> impl Strategy<Value = usize> {
    prop_oneof![Just(0usize), 1..8usize, 1020..1030usize]
}

fn value_len() -> impl Strategy<Value = usize> {
    prop_oneof![0..8usize, 60..70usize, Just(1 << 16)]
}

fn batch() -> impl Strategy<Value = Value> {
    prop::collection::vec((key_len(), value_len()), 0..5).prop_map(|sizes| Value {
        commands: sizes
            .into_iter()
            .enumerate()
            .map(|(i, (k, v))| put(7, i as u64 + 2, "k".repeat(k), vec![1; v]))
            .collect(),
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// An accept (chosen at once by its commit index) is stored and applied exactly when its
    /// value is within the limits; otherwise it is refused, counted, and never applied.
    #[test]
    fn accepts_over_the_key_value_or_batch_limits_are_refused_and_never_applied(value in batch()) {
        let mut r = Replica::new(limits_config(0, 3));
        let ok = within_limits(&value);
        r.handle_request(1, PeerToken(1), accept(1, value.clone(), 1));
        let ready = sync(&mut r);
        if ok {
            prop_assert_eq!(r.refused().total(), 0);
            prop_assert_eq!(r.chosen_through(), 1);
            prop_assert_eq!(r.chosen_value(1), Some(&value));
        } else {
            prop_assert_eq!(r.refused().get(Refusal::OversizedValue), 1);
            prop_assert_eq!(r.chosen_through(), 0);
            prop_assert!(r.chosen_value(1).is_none());
            prop_assert_eq!(r.kv().len(), 0);
            prop_assert!(ready.responses.is_empty(), "a refused accept is not answered");
            prop_assert!(ready.persist.is_empty(), "nothing of it is written");
        }
    }
}

/// A replica of one that leads at once.
fn single_leader(cfg: Config) -> Replica {
    let mut r = Replica::new(cfg);
    for _ in 0..100 {
        r.tick();
        sync(&mut r);
        if r.is_leader() {
            return r;
        }
    }
    panic!("a single replica elects itself");
}

fn register(r: &mut Replica, client_id: u64) {
    let command = Command {
        id: CommandId { client_id, seq: 1 },
        op: Op::Register,
    };
    r.propose(ClientToken(u64::MAX - client_id), command);
    for _ in 0..3 {
        sync(r);
    }
    assert!(r.kv().session(client_id).is_some());
}

#[test]
fn the_leaders_queue_is_bounded_in_bytes() {
    let mut cfg = Config::new(0, 1);
    cfg.max_pending_bytes = 4096;
    cfg.max_inflight_slots = 1;
    let mut r = single_leader(cfg);
    register(&mut r, 9);
    // Keep the pipeline full: with one replica a slot is chosen once its batch is synced, so
    // propose without taking a Ready in between (`ready()` would flush proposals).
    let mut busy = 0;
    for seq in 2..40u64 {
        r.propose(ClientToken(seq), put(9, seq, "k".into(), vec![0; 1000]));
    }
    let ready = r.ready();
    for (_, reply) in &ready.client_replies {
        if *reply == ClientReply::Failed(ClientError::Busy) {
            busy += 1;
        }
    }
    let queued_bytes = r.footprint().pending_bytes;
    assert!(busy > 0, "a queue over its bytes answers Busy");
    assert!(queued_bytes <= 4096 + 1100, "{queued_bytes}");
}

#[test]
fn a_queued_command_past_its_deadline_is_dropped_not_proposed() {
    let mut cfg = Config::new(0, 1);
    cfg.max_inflight_slots = 1;
    cfg.max_batch_commands = 1;
    let mut r = single_leader(cfg);
    register(&mut r, 5);
    let now = r.now_tick();
    // Slot for the first; the second waits behind it with a deadline that passes.
    r.propose_with_deadline(ClientToken(2), put(5, 2, "a".into(), vec![1]), u64::MAX);
    r.propose_with_deadline(ClientToken(3), put(5, 3, "b".into(), vec![2]), now);
    let first = r.ready(); // proposes seq 2 only; its batch is in flight
    assert!(first.client_replies.is_empty());
    for _ in 0..10 {
        r.tick(); // time passes while the pipeline is full (the batch is not yet durable)
    }
    let mut replies = r.ready().client_replies;
    if let Some(b) = first.batch {
        r.on_persisted(b);
    }
    for _ in 0..5 {
        replies.extend(sync(&mut r).client_replies);
    }
    assert!(
        replies.contains(&(
            ClientToken(3),
            ClientReply::Failed(ClientError::DeadlinePassed)
        )),
        "{replies:?}"
    );
    assert!(replies
        .iter()
        .any(|(t, rep)| *t == ClientToken(2) && matches!(rep, ClientReply::Applied(_))));
    assert_eq!(
        r.kv().get("b"),
        None,
        "the expired command was never applied"
    );
    assert_eq!(r.kv().get("a"), Some(&[1u8][..]));
}

#[test]
fn the_applied_log_tail_is_bounded_in_bytes() {
    let mut cfg = Config::new(0, 1);
    cfg.max_log_tail_bytes = 10_000;
    let mut r = single_leader(cfg);
    register(&mut r, 3);
    for seq in 2..200u64 {
        r.propose(
            ClientToken(seq),
            put(3, seq, format!("k{}", seq % 7), vec![7; 500]),
        );
        sync(&mut r);
        sync(&mut r);
        let f = r.footprint();
        assert!(f.applied_bytes <= 10_000, "{f:?}");
    }
    assert_eq!(r.kv().get("k1"), Some(&[7u8; 500][..]));
    assert!(r.chosen_through() > 150);
}
