//! Peer input is untrusted (issue 9): whatever peers send, in whatever order, interleaved
//! with the runtime's own calls, the core never panics and its memory stays within bounds
//! derived from its configuration. Likewise for whatever records the disk returns.
//!
//! Default case counts keep this to a few seconds in debug; set PROPTEST_CASES for more.

use paxoskv::kv::KvState;
use paxoskv::message::{
    Accept, Accepted, AcceptedEntry, ChosenEntries, FetchChosen, Learn, LearnAck, Nack, Prepare,
    Promise, Request, Response,
};
use paxoskv::{
    Ballot, ClientToken, Command, CommandId, Config, Footprint, Op, PeerToken, Record, Refusal,
    Replica, ReplicaId, Slot, Snapshot, Value,
};
use proptest::prelude::*;

/// Cases per property unless PROPTEST_CASES says otherwise.
fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        // Failures print their minimal input; nothing is written next to the sources.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A small configuration, so windows, pipelines and queues fill up within a short sequence.
fn small_config(id: ReplicaId, replicas: u32) -> Config {
    let mut cfg = Config::new(id, replicas);
    cfg.heartbeat_ticks = 2;
    cfg.election_timeout_min_ticks = 2;
    cfg.election_timeout_max_ticks = 5;
    cfg.resend_ticks = 1;
    cfg.max_inflight_slots = 3;
    cfg.max_open_slots = 6;
    cfg.max_batch_commands = 2;
    cfg.max_pending_commands = 8;
    cfg.max_pending_reads = 8;
    cfg.fetch_max_entries = 4;
    cfg.max_sessions = 4;
    cfg
}

/// Numbers that matter: the extremes, the limits around half of u64, and small ones that
/// collide with the replica's own slots and rounds.
fn num() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 0..10u64,
        1 => Just(u64::MAX),
        1 => Just(u64::MAX - 1),
        1 => Just(u64::MAX / 2),
        1 => Just(u64::MAX / 2 + 1),
        1 => Just(1u64 << 32),
        1 => any::<u64>(),
    ]
}

fn replica_id() -> impl Strategy<Value = ReplicaId> {
    prop_oneof![8 => 0..6u32, 1 => Just(u32::MAX), 1 => any::<u32>()]
}

fn ballot() -> impl Strategy<Value = Ballot> {
    (num(), replica_id()).prop_map(|(round, replica)| Ballot { round, replica })
}

fn command() -> impl Strategy<Value = Command> {
    let key = prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just(String::new())
    ];
    (0..3u64, 0..4u64, key, any::<bool>()).prop_map(|(client_id, seq, key, put)| Command {
        id: CommandId { client_id, seq },
        op: if put {
            Op::Put {
                key,
                value: vec![seq as u8],
            }
        } else {
            Op::Delete { key }
        },
    })
}

fn value() -> impl Strategy<Value = Value> {
    prop::collection::vec(command(), 0..3).prop_map(|commands| Value { commands })
}

fn entry() -> impl Strategy<Value = AcceptedEntry> {
    (num(), ballot(), value()).prop_map(|(slot, ballot, value)| AcceptedEntry {
        slot,
        ballot,
        value,
    })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (ballot(), num(), any::<bool>()).prop_map(|(ballot, first_unchosen, probe)| {
            Request::Prepare(Prepare {
                ballot,
                first_unchosen,
                probe,
            })
        }),
        (ballot(), num(), value(), num()).prop_map(|(ballot, slot, value, commit)| {
            Request::Accept(Accept {
                ballot,
                slot,
                value,
                commit,
            })
        }),
        (ballot(), num(), num()).prop_map(|(ballot, commit, round)| Request::Learn(Learn {
            ballot,
            commit,
            round
        })),
        (num(), any::<u32>()).prop_map(|(from_slot, max_entries)| {
            Request::FetchChosen(FetchChosen {
                from_slot,
                max_entries,
            })
        }),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (
            ballot(),
            prop::collection::vec(entry(), 0..6),
            num(),
            any::<bool>()
        )
            .prop_map(|(ballot, accepted, chosen_through, probe)| {
                Response::Promise(Promise {
                    ballot,
                    accepted,
                    chosen_through,
                    probe,
                })
            }),
        (ballot(), num()).prop_map(|(ballot, slot)| Response::Accepted(Accepted { ballot, slot })),
        (ballot(), num(), num()).prop_map(|(ballot, round, chosen_through)| {
            Response::LearnAck(LearnAck {
                ballot,
                round,
                chosen_through,
            })
        }),
        (
            num(),
            prop::collection::vec(value(), 0..6),
            num(),
            any::<bool>()
        )
            .prop_map(|(from_slot, values, chosen_through, snapshot_needed)| {
                Response::Chosen(ChosenEntries {
                    from_slot,
                    values,
                    chosen_through,
                    snapshot_needed,
                })
            }),
        (ballot(), ballot(), prop::option::of(num())).prop_map(|(ballot, promised, slot)| {
            Response::Nack(Nack {
                ballot,
                promised,
                slot,
            })
        }),
    ]
}

/// A snapshot built through the public API: consistent ones, and ones whose session table
/// is newer than their position or whose session bound is zero.
fn snapshot() -> impl Strategy<Value = Snapshot> {
    (
        num(),
        prop::collection::vec((num(), command()), 0..5),
        0..4usize,
    )
        .prop_map(|(through, applied, max_sessions)| {
            let mut kv = if max_sessions == 0 {
                KvState::default()
            } else {
                KvState::new(max_sessions)
            };
            for (slot, c) in &applied {
                kv.apply(*slot, c);
            }
            Snapshot { through, kv }
        })
}

/// One input from the runtime, a peer, or a peer that answers what the replica just sent
/// (so leadership and pipelining are reached, not only refusals).
#[derive(Clone, Debug)]
enum Input {
    Request(ReplicaId, Request),
    Response(ReplicaId, Response),
    /// A promise for the ballot of the replica's last prepare.
    EchoPromise {
        from: ReplicaId,
        accepted: Vec<AcceptedEntry>,
        chosen_through: Slot,
        probe: bool,
    },
    /// An acceptance of the replica's last accept.
    EchoAccepted(ReplicaId),
    /// A heartbeat ack for the replica's last heartbeat, `ahead` rounds later.
    EchoLearnAck(ReplicaId, u64),
    Tick(u8),
    Propose(Command),
    Read(String),
    Ready,
    /// Reports the batch in flight durable.
    Persist,
    PersistBogus(u64),
    InstallSnapshot(Snapshot),
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        6 => (replica_id(), request()).prop_map(|(f, r)| Input::Request(f, r)),
        4 => (replica_id(), response()).prop_map(|(f, r)| Input::Response(f, r)),
        4 => (0..6u32, prop::collection::vec(entry(), 0..4), num(), any::<bool>()).prop_map(
            |(from, accepted, chosen_through, probe)| Input::EchoPromise {
                from,
                accepted,
                chosen_through,
                probe
            }
        ),
        3 => (0..6u32).prop_map(Input::EchoAccepted),
        2 => (0..6u32, prop_oneof![Just(0u64), Just(1), Just(u64::MAX)])
            .prop_map(|(f, a)| Input::EchoLearnAck(f, a)),
        4 => (1..6u8).prop_map(Input::Tick),
        3 => command().prop_map(Input::Propose),
        1 => prop_oneof![Just("a".to_string()), Just(String::new())].prop_map(Input::Read),
        4 => Just(Input::Ready),
        4 => Just(Input::Persist),
        1 => num().prop_map(Input::PersistBogus),
        1 => snapshot().prop_map(Input::InstallSnapshot),
    ]
}

/// Drives one replica and remembers what it last sent, for the echo inputs.
struct Harness {
    r: Replica,
    batch: Option<u64>,
    last_prepare: Option<Ballot>,
    last_accept: Option<(Ballot, Slot)>,
    last_learn: Option<(Ballot, u64)>,
    token: u64,
    /// Inputs since the last batch became durable (held outputs wait for one).
    since_durable: usize,
}

impl Harness {
    fn new(cfg: Config) -> Harness {
        Harness {
            r: Replica::new(cfg),
            batch: None,
            last_prepare: None,
            last_accept: None,
            last_learn: None,
            token: 0,
            since_durable: 0,
        }
    }

    fn next_token(&mut self) -> u64 {
        self.token += 1;
        self.token
    }

    fn ready(&mut self) {
        let ready = self.r.ready();
        if ready.batch.is_some() {
            self.batch = ready.batch;
        }
        for m in ready.messages {
            match m.request {
                Request::Prepare(p) => self.last_prepare = Some(p.ballot),
                Request::Accept(a) => self.last_accept = Some((a.ballot, a.slot)),
                Request::Learn(l) => self.last_learn = Some((l.ballot, l.round)),
                Request::FetchChosen(_) => {}
            }
        }
    }

    fn step(&mut self, input: Input) {
        self.since_durable += 1;
        match input {
            Input::Request(from, req) => {
                let t = self.next_token();
                self.r.handle_request(from, PeerToken(t), req);
            }
            Input::Response(from, resp) => self.r.handle_response(from, resp),
            Input::EchoPromise {
                from,
                accepted,
                chosen_through,
                probe,
            } => {
                if let Some(ballot) = self.last_prepare {
                    let p = Promise {
                        ballot,
                        accepted,
                        chosen_through,
                        probe,
                    };
                    self.r.handle_response(from, Response::Promise(p));
                }
            }
            Input::EchoAccepted(from) => {
                if let Some((ballot, slot)) = self.last_accept {
                    let a = Accepted { ballot, slot };
                    self.r.handle_response(from, Response::Accepted(a));
                }
            }
            Input::EchoLearnAck(from, ahead) => {
                if let Some((ballot, round)) = self.last_learn {
                    let ack = LearnAck {
                        ballot,
                        round: round.saturating_add(ahead),
                        chosen_through: 0,
                    };
                    self.r.handle_response(from, Response::LearnAck(ack));
                }
            }
            Input::Tick(n) => (0..n).for_each(|_| self.r.tick()),
            Input::Propose(c) => {
                let t = self.next_token();
                self.r.propose(ClientToken(t), c);
            }
            Input::Read(key) => {
                let t = self.next_token();
                self.r.read(ClientToken(t), key);
            }
            Input::Ready => self.ready(),
            Input::Persist => {
                if let Some(b) = self.batch.take() {
                    self.r.on_persisted(b);
                    self.since_durable = 0;
                }
            }
            Input::PersistBogus(n) => self.r.on_persisted(n),
            Input::InstallSnapshot(s) => self.r.install_snapshot(s),
        }
    }

    /// The bounds the configuration promises, whatever the input.
    fn check_bounds(&self) {
        let cfg = self.r.config();
        let f: Footprint = self.r.footprint();
        let window = cfg.max_open_slots as usize;
        assert!(f.open_entries <= 2 * window, "{f:?}");
        assert!(f.inflight_slots <= window + cfg.max_inflight_slots, "{f:?}");
        assert!(f.pending_commands <= cfg.max_pending_commands, "{f:?}");
        assert!(f.applied_bytes <= cfg.max_log_tail_bytes, "{f:?}");
        let one_command = cfg.max_value_bytes + paxoskv::MAX_KEY_BYTES + 64;
        assert!(
            f.pending_bytes <= cfg.max_pending_bytes + one_command,
            "{f:?}"
        );
        assert!(f.pending_reads <= cfg.max_pending_reads, "{f:?}");
        assert!(f.promises <= cfg.replicas as usize, "{f:?}");
        // Held outputs wait for the runtime's sync: at most what the inputs since the last
        // durable batch produced, each input producing at most a response plus one broadcast
        // of a window of accepts (a leader's recovery) plus a prepare and a heartbeat.
        let peers = cfg.replicas as usize;
        let per_input = 1 + peers * (window + cfg.max_inflight_slots + 2);
        let held_bound = (self.since_durable + 1) * per_input;
        assert!(f.held_outputs <= held_bound, "{f:?} > {held_bound}");
        assert_eq!(self.r.held_outputs(), f.held_outputs);
    }
}

proptest! {
    #![proptest_config(cases(96))]

    #[test]
    fn arbitrary_peer_input_never_panics_and_stays_bounded(
        replicas in prop_oneof![Just(1u32), Just(3u32), Just(5u32)],
        id_seed in 0..5u32,
        inputs in prop::collection::vec(input(), 0..160),
    ) {
        let mut h = Harness::new(small_config(id_seed % replicas, replicas));
        for input in inputs {
            h.step(input);
            h.check_bounds();
        }
        h.ready();
        h.check_bounds();
    }

    #[test]
    fn arbitrary_records_recover_or_fail_without_panic(
        replicas in prop_oneof![Just(1u32), Just(3u32), Just(5u32)],
        snap in prop::option::of(snapshot()),
        records in prop::collection::vec(record(), 0..40),
    ) {
        let cfg = small_config(0, replicas);
        if let Ok(mut r) = Replica::recover(cfg, snap, records) {
            // The rebuilt replica must also run: elect itself, take proposals, sync.
            for i in 0..40 {
                r.tick();
                r.propose(ClientToken(i), Command {
                    id: CommandId { client_id: 9, seq: i },
                    op: Op::Delete { key: "a".into() },
                });
                if let Some(b) = r.ready().batch {
                    r.on_persisted(b);
                }
            }
        }
    }
}

fn record() -> impl Strategy<Value = Record> {
    prop_oneof![
        ballot().prop_map(Record::Promised),
        (num(), ballot(), value()).prop_map(|(slot, ballot, value)| Record::Accepted {
            slot,
            ballot,
            value
        }),
        num().prop_map(|through| Record::Chosen { through }),
        (num(), value()).prop_map(|(slot, value)| Record::Learned { slot, value }),
    ]
}

// ---- The cases issue 9 names, one by one ----

fn accept(ballot: Ballot, slot: Slot, value: Value, commit: Slot) -> Request {
    Request::Accept(Accept {
        ballot,
        slot,
        value,
        commit,
    })
}

fn put_value(v: u8) -> Value {
    Value {
        commands: vec![Command {
            id: CommandId {
                client_id: 1,
                seq: u64::from(v),
            },
            op: Op::Put {
                key: "k".into(),
                value: vec![v],
            },
        }],
    }
}

/// Runs the replica's pipeline once, syncing whatever it asks for.
fn sync(r: &mut Replica) -> paxoskv::Ready {
    let ready = r.ready();
    if let Some(b) = ready.batch {
        r.on_persisted(b);
    }
    ready
}

#[test]
fn a_forged_top_round_is_refused_and_does_not_raise_the_next_election() {
    let mut r = Replica::new(small_config(0, 3));
    for round in [u64::MAX, u64::MAX / 2 + 1, 1 << 40] {
        let b = Ballot { round, replica: 1 };
        let prepare = Prepare {
            ballot: b,
            first_unchosen: 1,
            probe: false,
        };
        r.handle_request(1, PeerToken(1), Request::Prepare(prepare));
        r.handle_response(
            1,
            Response::Nack(Nack {
                ballot: b,
                promised: b,
                slot: None,
            }),
        );
    }
    assert_eq!(r.refused().get(Refusal::BallotOutOfRange), 6);
    assert_eq!(r.promised(), Ballot::ZERO);
    let mut rounds = Vec::new();
    for _ in 0..20 {
        r.tick();
        for m in sync(&mut r).messages {
            if let Request::Prepare(p) = m.request {
                rounds.push(p.ballot.round);
            }
        }
    }
    assert!(
        !rounds.is_empty() && rounds.iter().all(|&x| x < 10),
        "{rounds:?}"
    );
}

#[test]
fn accepts_below_compaction_conflicting_or_far_ahead_are_refused() {
    let mut r = Replica::new(small_config(0, 3));
    let b = Ballot {
        round: 1,
        replica: 1,
    };
    // Slots 1 and 2 chosen (commit 2), then compacted through 1.
    r.handle_request(1, PeerToken(1), accept(b, 1, put_value(1), 0));
    r.handle_request(1, PeerToken(2), accept(b, 2, put_value(2), 2));
    sync(&mut r);
    assert_eq!(r.chosen_through(), 2);
    r.compact(1);
    r.handle_request(1, PeerToken(3), accept(b, 1, put_value(9), 2)); // compacted: answered
    r.handle_request(1, PeerToken(4), accept(b, 2, put_value(9), 2)); // chosen, other value
    r.handle_request(1, PeerToken(5), accept(b, 0, put_value(9), 2)); // slot 0
    r.handle_request(1, PeerToken(6), accept(b, u64::MAX, put_value(9), u64::MAX));
    r.handle_request(1, PeerToken(7), accept(b, 2 + 7, put_value(9), 2)); // beyond window
    let refused = r.refused();
    assert_eq!(refused.get(Refusal::ChosenConflict), 1);
    assert_eq!(refused.get(Refusal::SlotOutOfRange), 2);
    assert_eq!(refused.get(Refusal::SlotBeyondWindow), 1);
    assert_eq!(r.chosen_value(2), Some(&put_value(2)));
    let answered = sync(&mut r).responses.len();
    assert_eq!(
        answered, 3,
        "two accepts before, the compacted slot's retry"
    );
}

#[test]
fn huge_fetches_and_chosen_entries_are_bounded_or_refused() {
    let mut r = Replica::new(small_config(0, 3));
    let fetch = |from_slot| {
        Request::FetchChosen(FetchChosen {
            from_slot,
            max_entries: u32::MAX,
        })
    };
    r.handle_request(1, PeerToken(1), fetch(u64::MAX));
    r.handle_request(1, PeerToken(2), fetch(0));
    let chosen = |from_slot, n, chosen_through| {
        Response::Chosen(ChosenEntries {
            from_slot,
            values: vec![put_value(1); n],
            chosen_through,
            snapshot_needed: false,
        })
    };
    r.handle_response(1, chosen(1, 2, u64::MAX)); // an impossible chosen prefix
    r.handle_response(1, chosen(5, 2, 6)); // starts past our next slot: a hole
    r.handle_response(1, chosen(1, 1000, 1000)); // more than we ever ask for
    r.handle_response(1, chosen(0, 1, 1)); // slot 0
    assert_eq!(r.refused().get(Refusal::SlotOutOfRange), 3);
    assert_eq!(r.refused().get(Refusal::MalformedChosen), 3);
    assert_eq!(r.footprint().open_entries, 0);
}

#[test]
fn a_malformed_or_stale_snapshot_is_refused() {
    let mut r = Replica::new(small_config(0, 3));
    let mut newer = KvState::new(4);
    let register = Command {
        id: CommandId {
            client_id: 1,
            seq: 0,
        },
        op: Op::Register,
    };
    newer.apply(49, &register);
    newer.apply(50, &put_value(1).commands[0]);
    for (through, kv) in [
        (10, newer.clone()),      // a session newer than the snapshot
        (10, KvState::default()), // no session bound
        (u64::MAX, KvState::new(4)),
        (0, KvState::new(4)), // not ahead of us
    ] {
        r.install_snapshot(Snapshot { through, kv });
    }
    assert_eq!(r.refused().get(Refusal::MalformedSnapshot), 3);
    assert_eq!(r.refused().get(Refusal::StaleSnapshot), 1);
    assert_eq!(r.chosen_through(), 0);
    r.install_snapshot(Snapshot {
        through: 60,
        kv: newer,
    });
    assert_eq!(r.chosen_through(), 60);
}

/// Ticks `r` (syncing as it goes) until it sends a prepare; returns its ballot.
fn next_prepare(r: &mut Replica, probe: bool) -> Ballot {
    for _ in 0..50 {
        for m in sync(r).messages {
            if let Request::Prepare(p) = m.request {
                if p.probe == probe {
                    return p.ballot;
                }
            }
        }
        r.tick();
    }
    panic!("no prepare (probe {probe}) within 50 ticks");
}

#[test]
fn oversized_or_out_of_range_promises_are_refused() {
    let mut r = Replica::new(small_config(0, 3));
    let probe = next_prepare(&mut r, true);
    let promise = |ballot, accepted: Vec<AcceptedEntry>, chosen_through, probe| {
        Response::Promise(Promise {
            ballot,
            accepted,
            chosen_through,
            probe,
        })
    };
    r.handle_response(1, promise(probe, vec![], 0, true));
    let ballot = next_prepare(&mut r, false);
    let entry = |slot, ballot| AcceptedEntry {
        slot,
        ballot,
        value: put_value(1),
    };
    let thousands = (1..=5000).map(|s| entry(s, Ballot::ZERO)).collect();
    r.handle_response(1, promise(ballot, thousands, 0, false));
    r.handle_response(1, promise(ballot, vec![entry(0, Ballot::ZERO)], 0, false));
    r.handle_response(1, promise(ballot, vec![entry(3, Ballot::ZERO)], 5, false));
    r.handle_response(
        1,
        promise(ballot, vec![entry(u64::MAX, Ballot::ZERO)], 0, false),
    );
    let above = Ballot {
        round: ballot.round + 1,
        replica: 2,
    };
    r.handle_response(1, promise(ballot, vec![entry(1, above)], 0, false));
    r.handle_response(1, promise(ballot, vec![], u64::MAX, false));
    assert_eq!(r.refused().get(Refusal::MalformedPromise), 5);
    assert_eq!(r.refused().get(Refusal::SlotOutOfRange), 1);
    assert!(!r.is_leader());
    // A well-formed promise still elects it, and the recovered value is re-proposed.
    r.handle_response(1, promise(ballot, vec![entry(2, Ballot::ZERO)], 0, false));
    assert!(r.is_leader());
    assert_eq!(
        r.footprint().inflight_slots,
        2,
        "a no-op for slot 1 and slot 2's value"
    );
}
