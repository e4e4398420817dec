//! The simulated wire: every packet carries the step at which it is delivered, so delay and
//! reordering are just different delivery steps. Ties go in send order, which keeps runs
//! deterministic.

use super::Envelope;
use paxoskv::persist::Snapshot;
use paxoskv::{ClientReply, ClientToken};
use paxoskv::{Command, ReplicaId};
use std::collections::BTreeMap;

/// What a simulated client asks a replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientCall {
    /// A put or delete, proposed with [`paxoskv::Replica::propose`].
    Write(Command),
    /// A linearizable read via [`paxoskv::Replica::read`].
    Read(String),
    /// A lease keepalive via [`paxoskv::Replica::lease_keepalive`].
    KeepAlive(paxoskv::LeaseId),
}

/// Anything in flight.
#[derive(Clone, Debug)]
pub enum Packet {
    /// Replica to replica (request or response).
    Peer(Envelope),
    /// Client to replica.
    ToReplica {
        /// Index of the sending client.
        client: usize,
        /// Receiving replica.
        to: ReplicaId,
        /// Identifies this attempt; comes back with the reply.
        token: ClientToken,
        /// The request.
        call: ClientCall,
    },
    /// Replica to client.
    ToClient {
        /// Index of the receiving client.
        client: usize,
        /// Answering replica.
        from: ReplicaId,
        /// The attempt answered.
        token: ClientToken,
        /// The answer.
        reply: ClientReply,
    },
    /// A snapshot shipped to a replica whose peers compacted the log it needs.
    Snapshot {
        /// Sender.
        from: ReplicaId,
        /// Receiver.
        to: ReplicaId,
        /// The sender's durable snapshot.
        snapshot: Snapshot,
    },
}

impl Packet {
    /// Replica that must be up to receive it (None for packets to clients).
    pub fn to_replica(&self) -> Option<ReplicaId> {
        match self {
            Packet::Peer(e) => Some(e.to()),
            Packet::ToReplica { to, .. } | Packet::Snapshot { to, .. } => Some(*to),
            Packet::ToClient { .. } => None,
        }
    }

    /// Replica-to-replica endpoints, the only traffic partitions cut.
    pub fn peer_link(&self) -> Option<(ReplicaId, ReplicaId)> {
        match self {
            Packet::Peer(e) => Some((e.from(), e.to())),
            Packet::Snapshot { from, to, .. } => Some((*from, *to)),
            Packet::ToReplica { .. } | Packet::ToClient { .. } => None,
        }
    }

    /// A small number naming the kind, for traces and the run digest.
    pub fn kind_tag(&self) -> u64 {
        use paxoskv::message::{Request, Response};
        match self {
            Packet::Peer(Envelope::Request { request, .. }) => match request {
                Request::Prepare(_) => 1,
                Request::Accept(_) => 2,
                Request::Learn(_) => 3,
                Request::FetchChosen(_) => 4,
            },
            Packet::Peer(Envelope::Response { response, .. }) => match response {
                Response::Promise(_) => 11,
                Response::Accepted(_) => 12,
                Response::LearnAck(_) => 13,
                Response::Chosen(_) => 14,
                Response::Nack(_) => 15,
            },
            Packet::ToReplica { .. } => 21,
            Packet::ToClient { .. } => 22,
            Packet::Snapshot { .. } => 23,
        }
    }
}

/// Packets keyed by (delivery step, send order).
#[derive(Debug)]
pub struct Wire {
    queue: BTreeMap<(u64, u64), Packet>,
    next_seq: u64,
    max_in_flight: usize,
}

impl Wire {
    /// An empty wire holding at most `max_in_flight` packets.
    pub fn new(max_in_flight: usize) -> Wire {
        Wire {
            queue: BTreeMap::new(),
            next_seq: 0,
            max_in_flight,
        }
    }

    /// Queues `packet` for `deliver_step`; false (dropped) if the wire is full.
    pub fn push(&mut self, deliver_step: u64, packet: Packet) -> bool {
        if self.queue.len() >= self.max_in_flight {
            return false;
        }
        self.next_seq += 1;
        self.queue.insert((deliver_step, self.next_seq), packet);
        true
    }

    /// The next packet due at or before `now_step`.
    pub fn pop_due(&mut self, now_step: u64) -> Option<Packet> {
        let entry = self.queue.first_entry()?;
        if entry.key().0 > now_step {
            return None;
        }
        Some(entry.remove())
    }

    /// Packets in flight.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paxoskv::ClientToken;

    fn call(n: u64) -> Packet {
        Packet::ToReplica {
            client: 0,
            to: 0,
            token: ClientToken(n),
            call: ClientCall::Read(String::new()),
        }
    }

    fn token(p: &Packet) -> u64 {
        match p {
            Packet::ToReplica { token, .. } => token.0,
            _ => unreachable!(),
        }
    }

    #[test]
    fn delivers_by_step_then_send_order_and_bounds_itself() {
        let mut wire = Wire::new(3);
        assert!(wire.push(5, call(1)));
        assert!(wire.push(2, call(2)));
        assert!(wire.push(5, call(3)));
        assert!(!wire.push(1, call(4)), "full wire drops");
        assert!(wire.pop_due(1).is_none());
        let due: Vec<u64> = std::iter::from_fn(|| wire.pop_due(5))
            .map(|p| token(&p))
            .collect();
        assert_eq!(due, vec![2, 1, 3]);
        assert!(wire.is_empty());
    }
}
