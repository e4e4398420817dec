//! Five replica cores wired by an in-memory network that the test drives by hand.

use paxoskv::message::{Accept, Prepare, Request, Response};
use paxoskv::{
    Ballot, ClientReply, ClientToken, Command, CommandId, Config, Op, Outcome, PeerToken, Replica,
    Value,
};
use paxoskv_sim::{Envelope, Net};

fn net(n: u32) -> Net {
    Net::new(n, |id| Config::new(id, n))
}

fn put(client_id: u64, seq: u64, key: &str, value: &str) -> Command {
    Command {
        id: CommandId { client_id, seq },
        op: Op::Put {
            key: key.into(),
            value: value.as_bytes().to_vec(),
        },
    }
}

/// Opens the clients' sessions through the log (sequence number 0, below their first write).
fn open_sessions(net: &mut Net, leader: u32, clients: &[u64]) {
    for &client_id in clients {
        let register = Command {
            id: CommandId { client_id, seq: 0 },
            op: Op::Register,
        };
        let token = ClientToken(1_000_000 + client_id);
        net.replica(leader).unwrap().propose(token, register);
        net.flush(leader);
        net.deliver_all(10_000);
        assert_eq!(
            net.take_reply(token),
            Some(ClientReply::Applied(Outcome::Registered))
        );
    }
}

fn run(net: &mut Net, ticks: u32) {
    for _ in 0..ticks {
        net.tick_all();
        net.deliver_all(100_000);
    }
}

fn value_at(net: &mut Net, id: u32, key: &str) -> Option<Vec<u8>> {
    net.replica(id)
        .and_then(|r| r.read_local(key).map(<[u8]>::to_vec))
}

#[test]
fn elects_one_leader_and_replicates_in_order() {
    let mut net = net(5);
    let leader = net.elect(200).expect("a leader within 200 ticks");
    open_sessions(&mut net, leader, &[9]);
    let r = net.replica(leader).unwrap();
    r.propose(ClientToken(1), put(9, 1, "a", "1"));
    r.propose(ClientToken(2), put(9, 2, "a", "2"));
    net.flush(leader);
    net.deliver_all(10_000);
    assert_eq!(
        net.take_reply(ClientToken(1)),
        Some(ClientReply::Applied(Outcome::Put { replaced: false }))
    );
    assert_eq!(
        net.take_reply(ClientToken(2)),
        Some(ClientReply::Applied(Outcome::Put { replaced: true }))
    );
    run(&mut net, 10); // heartbeats carry the commit index to followers
    let digests: Vec<u64> = (0..5)
        .map(|i| net.replica(i).unwrap().kv().digest())
        .collect();
    assert!(digests.iter().all(|d| *d == digests[0]), "{digests:?}");
    for i in 0..5 {
        assert_eq!(value_at(&mut net, i, "a"), Some(b"2".to_vec()));
    }
    let leaders = (0..5)
        .filter(|&i| net.replica(i).unwrap().is_leader())
        .count();
    assert_eq!(leaders, 1);
}

#[test]
fn acceptor_refuses_lower_ballots_and_promises_only_grow() {
    let mut r = Replica::new(Config::new(0, 3));
    let high = Ballot {
        round: 5,
        replica: 1,
    };
    let low = Ballot {
        round: 4,
        replica: 2,
    };
    let prepare = |ballot| {
        Request::Prepare(Prepare {
            ballot,
            first_unchosen: 1,
            probe: false,
        })
    };
    r.handle_request(1, PeerToken(1), prepare(high));
    r.handle_request(2, PeerToken(2), prepare(low));
    let accept = Request::Accept(Accept {
        ballot: low,
        slot: 1,
        value: Value::noop(),
        commit: 0,
    });
    r.handle_request(2, PeerToken(3), accept);
    let ready = r.ready();
    // Refusals vouch for nothing and leave at once; the promise waits for its record.
    assert_eq!(ready.responses.len(), 2, "{:?}", ready.responses);
    assert!(matches!(ready.responses[0].1, Response::Nack(n) if n.promised == high));
    assert!(matches!(ready.responses[1].1, Response::Nack(_)));
    assert_eq!(r.promised(), high);
    assert_eq!(ready.persist, vec![paxoskv::Record::Promised(high)]);
    let batch = ready.batch.expect("the promise starts a batch");
    assert!(
        r.ready().responses.is_empty(),
        "nothing leaves before the sync"
    );
    r.on_persisted(batch);
    let ready = r.ready();
    assert!(matches!(
        ready.responses[..],
        [(PeerToken(1), Response::Promise(_))]
    ));
    // A promise reports what was accepted, so a new leader can recover it.
    let accept = Request::Accept(Accept {
        ballot: high,
        slot: 1,
        value: Value {
            commands: vec![put(1, 1, "k", "v")],
        },
        commit: 0,
    });
    r.handle_request(1, PeerToken(4), accept);
    let higher = Ballot {
        round: 6,
        replica: 2,
    };
    r.handle_request(2, PeerToken(5), prepare(higher));
    let ready = r.ready();
    r.on_persisted(ready.batch.expect("accepted and promised records"));
    let ready = r.ready();
    let Response::Promise(p) = &ready.responses[1].1 else {
        panic!("expected promise, got {:?}", ready.responses[1].1)
    };
    assert_eq!(p.accepted.len(), 1);
    assert_eq!(p.accepted[0].ballot, high);
}

/// The old leader gets a value accepted by one follower only, then dies. The new leader must
/// find it in a promise and re-propose it, and fill the hole before it with a no-op.
#[test]
fn new_leader_recovers_minority_value_and_fills_holes() {
    let mut net = net(5);
    let old = net.elect(200).unwrap();
    open_sessions(&mut net, old, &[1, 2]);
    let r = net.replica(old).unwrap();
    r.propose(ClientToken(1), put(1, 1, "x", "first"));
    net.flush(old);
    net.deliver_all(10_000);
    assert!(net.take_reply(ClientToken(1)).is_some());
    // The next slot reaches nobody; the one after it exactly one follower.
    let r = net.replica(old).unwrap();
    r.propose(ClientToken(2), put(1, 2, "x", "lost"));
    net.flush(old);
    net.wire.clear();
    let r = net.replica(old).unwrap();
    r.propose(ClientToken(3), put(2, 1, "y", "minority"));
    net.flush(old);
    let follower = (old + 1) % 5;
    let accepts: Vec<Envelope> = net.wire.drain(..).filter(|e| e.to() == follower).collect();
    assert_eq!(accepts.len(), 1);
    for e in accepts {
        net.deliver(e);
    }
    net.wire.clear(); // the old leader never hears back
    net.crash(old);
    let new = net.elect(400).expect("new leader");
    assert_ne!(new, old);
    run(&mut net, 20);
    let r = net.replica(new).unwrap();
    assert_eq!(r.read_local("y"), Some(&b"minority"[..]));
    assert_eq!(r.read_local("x"), Some(&b"first"[..]));
    // Slots 1 and 2 opened the sessions; "first" is slot 3, "lost" 4, "minority" 5.
    assert!(r.chosen_through() >= 5);
    let lost = r.chosen_value(4).cloned();
    // The "lost" slot reached nobody, so the new leader fills it with a no-op.
    assert_eq!(lost, Some(Value::noop()));
}

/// A leader change while a value is in flight: the value is either chosen everywhere or
/// nowhere, and a client retry with the same id is applied once.
#[test]
fn leader_change_with_value_in_flight_applies_retry_once() {
    let mut net = net(5);
    let old = net.elect(200).unwrap();
    open_sessions(&mut net, old, &[5]);
    let cmd = put(5, 1, "k", "v1");
    net.replica(old)
        .unwrap()
        .propose(ClientToken(1), cmd.clone());
    net.flush(old);
    // Deliver the accepts to two followers only: with the leader that is a majority of
    // acceptances on disk, but the leader never learns it.
    let mut delivered = 0;
    for e in std::mem::take(&mut net.wire) {
        if matches!(e, Envelope::Request { .. }) && delivered < 2 {
            delivered += 1;
            net.deliver(e);
        }
    }
    net.wire.clear();
    net.crash(old);
    let new = net.elect(400).unwrap();
    // The client retries the same command at the new leader.
    net.replica(new)
        .unwrap()
        .propose(ClientToken(2), cmd.clone());
    net.flush(new);
    run(&mut net, 20);
    assert_eq!(
        net.take_reply(ClientToken(2)),
        Some(ClientReply::Applied(Outcome::Put { replaced: false }))
    );
    net.restart(old).unwrap();
    run(&mut net, 60);
    for i in 0..5 {
        let r = net.replica(i).unwrap();
        assert_eq!(r.read_local("k"), Some(&b"v1"[..]), "replica {i}");
        assert_eq!(r.kv().session(5).map(|s| s.last_seq), Some(1));
    }
}

#[test]
fn linearizable_read_waits_for_majority_confirmation() {
    let mut net = net(3);
    let leader = net.elect(200).unwrap();
    open_sessions(&mut net, leader, &[1]);
    net.replica(leader)
        .unwrap()
        .propose(ClientToken(1), put(1, 1, "r", "x"));
    net.flush(leader);
    net.deliver_all(1000);
    net.replica(leader)
        .unwrap()
        .read(ClientToken(2), "r".into());
    net.flush(leader);
    assert!(
        net.take_reply(ClientToken(2)).is_none(),
        "needs a round first"
    );
    net.deliver_all(1000);
    assert_eq!(
        net.take_reply(ClientToken(2)),
        Some(ClientReply::Read(Some(b"x".to_vec())))
    );
    // Cut the leader off: reads must not be answered.
    net.replica(leader)
        .unwrap()
        .read(ClientToken(3), "r".into());
    net.flush(leader);
    net.wire.clear();
    assert!(net.take_reply(ClientToken(3)).is_none());
}

#[test]
fn restarted_replica_recovers_from_disk_and_catches_up() {
    let mut net = net(5);
    let leader = net.elect(200).unwrap();
    open_sessions(&mut net, leader, &[1]);
    for seq in 1..=20 {
        net.replica(leader)
            .unwrap()
            .propose(ClientToken(seq), put(1, seq, &format!("k{seq}"), "v"));
        net.flush(leader);
        net.deliver_all(10_000);
    }
    let lagger = (leader + 1) % 5;
    net.crash(lagger);
    for seq in 21..=40 {
        net.replica(leader)
            .unwrap()
            .propose(ClientToken(seq), put(1, seq, &format!("k{seq}"), "v"));
        net.flush(leader);
        net.deliver_all(10_000);
    }
    net.restart(lagger).unwrap();
    run(&mut net, 30);
    let want = net.replica(leader).unwrap().kv().digest();
    let r = net.replica(lagger).unwrap();
    assert_eq!(r.kv().len(), 40);
    assert_eq!(r.kv().digest(), want);
}
