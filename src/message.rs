//! Messages exchanged between replicas. Requests travel as tarpc calls; each request has
//! exactly one response kind, and a silent acceptor simply produces no response.

use crate::types::{Ballot, ReplicaId, Slot, Value};
use serde::{Deserialize, Serialize};

/// Phase 1a: ask acceptors to promise `ballot` for every slot from `first_unchosen` on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepare {
    /// The candidate's ballot.
    pub ballot: Ballot,
    /// The first slot the candidate does not know to be chosen.
    pub first_unchosen: Slot,
    /// A probe (pre-vote) asks "would you promise?" without changing any state, so a
    /// replica that merely lost contact cannot depose a healthy leader.
    pub probe: bool,
}

/// An accepted-but-not-known-chosen value reported in a promise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptedEntry {
    /// Where.
    pub slot: Slot,
    /// Under which ballot it was accepted.
    pub ballot: Ballot,
    /// What.
    pub value: Value,
}

/// Phase 1b.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promise {
    /// The ballot promised.
    pub ballot: Ballot,
    /// Every accepted entry above `chosen_through` and at or above the candidate's
    /// `first_unchosen`.
    pub accepted: Vec<AcceptedEntry>,
    /// Every slot up to this one is chosen and known to the promiser.
    pub chosen_through: Slot,
    /// Answers a probe (pre-vote): promises nothing and reports no entries, so it must never
    /// count toward phase 1 even though it carries the same ballot.
    pub probe: bool,
}

/// Phase 2a for one slot, plus the leader's commit progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accept {
    /// The leader's ballot.
    pub ballot: Ballot,
    /// Where.
    pub slot: Slot,
    /// What.
    pub value: Value,
    /// The leader knows every slot up to here is chosen.
    pub commit: Slot,
}

/// Phase 2b.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// The ballot accepted.
    pub ballot: Ballot,
    /// The slot accepted.
    pub slot: Slot,
}

/// Leader heartbeat and commit announcement; a majority of acks for a round confirms the
/// leader still leads (ReadIndex).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Learn {
    /// The leader's ballot.
    pub ballot: Ballot,
    /// Every slot up to here is chosen.
    pub commit: Slot,
    /// Confirmation round number, grows per leader.
    pub round: u64,
}

/// Answer to [`Learn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnAck {
    /// The ballot acknowledged (the leader's).
    pub ballot: Ballot,
    /// The round acknowledged.
    pub round: u64,
    /// The follower's contiguous chosen prefix.
    pub chosen_through: Slot,
}

/// A learner that is behind asks a peer for chosen values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchChosen {
    /// First slot wanted.
    pub from_slot: Slot,
    /// Upper bound on the number of entries in the answer.
    pub max_entries: u32,
}

/// Chosen values, contiguous from the requested slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChosenEntries {
    /// First slot in `values`.
    pub from_slot: Slot,
    /// Values of consecutive slots starting at `from_slot`.
    pub values: Vec<Value>,
    /// The responder's contiguous chosen prefix.
    pub chosen_through: Slot,
    /// The responder has compacted `from_slot` away; a snapshot is needed.
    pub snapshot_needed: bool,
}

/// Refusal: the acceptor has promised a higher ballot (or, for probes, still hears a leader).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nack {
    /// The ballot the refused request carried.
    pub ballot: Ballot,
    /// The acceptor's promise.
    pub promised: Ballot,
    /// The slot of a refused accept, if it was one.
    pub slot: Option<Slot>,
}

/// A request from one replica to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Phase 1a.
    Prepare(Prepare),
    /// Phase 2a.
    Accept(Accept),
    /// Heartbeat / commit.
    Learn(Learn),
    /// Catch-up.
    FetchChosen(FetchChosen),
}

impl Request {
    /// The sender's own ballot this request vouches for: sending it claims a durable promise
    /// of that ballot. Probes and catch-up fetches claim nothing.
    pub fn own_ballot(&self) -> Option<Ballot> {
        match self {
            Request::Prepare(p) if !p.probe => Some(p.ballot),
            Request::Accept(a) => Some(a.ballot),
            Request::Learn(l) => Some(l.ballot),
            Request::Prepare(_) | Request::FetchChosen(_) => None,
        }
    }
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Phase 1b.
    Promise(Promise),
    /// Phase 2b.
    Accepted(Accepted),
    /// Heartbeat ack.
    LearnAck(LearnAck),
    /// Catch-up data.
    Chosen(ChosenEntries),
    /// Refusal.
    Nack(Nack),
}

impl Response {
    /// True if the answer vouches for state this replica must have made durable first: a
    /// promise or an acceptance. Heartbeat acks, refusals and chosen values do not (chosen
    /// values are durable on a majority already), so they may leave before the sync.
    pub fn needs_sync(&self) -> bool {
        match self {
            Response::Promise(p) => !p.probe,
            Response::Accepted(_) => true,
            Response::LearnAck(_) | Response::Chosen(_) | Response::Nack(_) => false,
        }
    }
}

/// A request the core wants delivered to a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outbound {
    /// Destination replica.
    pub to: ReplicaId,
    /// The request; the driver steps the response back in with [`crate::Replica::step_response`].
    pub request: Request,
}
