//! The durability contract: which outputs may leave before which batch of records is on disk.
//!
//! Both the server's driver and the simulator run exactly this code, so the simulator
//! executes the send/sync order production executes. The runtime's loop is:
//!
//! 1. feed inputs ([`Replica::handle_request`], [`Replica::tick`], ...);
//! 2. call [`Replica::ready`] and send everything in it at once: messages, peer responses and
//!    client replies in a `Ready` vouch only for state that is already durable;
//! 3. if the Ready carries a batch ([`Ready::batch`]), write and sync its records (in the
//!    background if it likes), then call [`Replica::on_persisted`] with that number.
//!
//! At most one batch is in flight: records produced meanwhile wait for the next one (group
//! commit). Outputs that vouch for records not yet durable are held inside the core and come
//! out of the first `ready()` after `on_persisted` covers them:
//! - promises and acceptances ([`Response::needs_sync`]) wait for the batch holding the
//!   records they answer for (DESIGN.md: an answer that was not made durable is a lie);
//! - a request under this replica's own ballot `b` (prepare, accept, learn) vouches for its
//!   own promise of `b`, so it waits until `Promised(b)` is durable. That also persists the
//!   round before a ballot is ever used, so a restarted replica never reuses one.
//!
//! Requests whose ballot is already durably promised (a leader's accepts and heartbeats),
//! catch-up fetches, refusals, heartbeat acks and client replies leave before the sync: the
//! leader's fsync overlaps the followers' (Raft §10.2.1). A leader counts its own acceptance,
//! and a candidate its own promise, only in `on_persisted`, so no client reply ever depends
//! on an unsynced record.

use crate::message::{Outbound, Request, Response};
use crate::persist::Record;
use crate::replica::{ClientReply, ClientToken, PeerToken, Replica};
use crate::types::{Ballot, Slot};

/// Number of a batch of records, in the order they must reach the disk.
pub type BatchNumber = u64;

/// Work for the runtime: everything in it may be performed at once.
#[derive(Debug, Default)]
pub struct Ready {
    /// Records to append and sync as one batch, in order. Empty unless `batch` is set.
    pub persist: Vec<Record>,
    /// Set when `persist` holds a new batch: report it durable with [`Replica::on_persisted`].
    pub batch: Option<BatchNumber>,
    /// Requests to send to peers now.
    pub messages: Vec<Outbound>,
    /// Answers to peer requests, to send now.
    pub responses: Vec<(PeerToken, Response)>,
    /// Answers to clients, to send now.
    pub client_replies: Vec<(ClientToken, ClientReply)>,
    /// Change events of the writes applied since the last `ready()`, for watches. They
    /// come from chosen slots, so they may be published at once.
    pub events: crate::watch::EventBatch,
}

impl Ready {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.persist.is_empty()
            && self.batch.is_none()
            && self.messages.is_empty()
            && self.responses.is_empty()
            && self.client_replies.is_empty()
            && self.events.is_empty()
    }
}

/// Outputs and records accumulated since the last `ready()`.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pub(crate) persist: Vec<Record>,
    pub(crate) messages: Vec<Outbound>,
    pub(crate) responses: Vec<(PeerToken, Response)>,
    pub(crate) client_replies: Vec<(ClientToken, ClientReply)>,
}

/// An output held until batch `after` is durable.
#[derive(Debug)]
enum Held {
    Message(Outbound),
    Response(PeerToken, Response),
}

/// A batch handed to the runtime and not yet reported durable.
#[derive(Debug)]
struct InFlight {
    number: BatchNumber,
    /// The promise once this batch is on disk.
    promise: Ballot,
    /// The leader's own acceptances in this batch: they count once it is durable.
    self_acks: Vec<(Ballot, Slot)>,
    /// A candidacy whose own promise is in this batch.
    own_promise: Option<Ballot>,
}

/// The pipeline's state inside a replica.
#[derive(Debug, Default)]
pub(crate) struct Durability {
    /// Records produced but not yet handed out in a batch.
    unbatched: Vec<Record>,
    in_flight: Option<InFlight>,
    next_number: BatchNumber,
    /// Outputs waiting for a batch, oldest first (their batch numbers never decrease).
    held: Vec<(BatchNumber, Held)>,
    /// The highest promise known to be on disk.
    pub(crate) durable_promise: Ballot,
    /// Own acceptances produced since the last batch was cut.
    pub(crate) unbatched_self_acks: Vec<(Ballot, Slot)>,
    /// A candidacy's own promise produced since the last batch was cut.
    pub(crate) unbatched_own_promise: Option<Ballot>,
}

impl Durability {
    /// A pipeline for a replica whose disk holds `promise`.
    pub(crate) fn recovered(promise: Ballot) -> Durability {
        Durability {
            durable_promise: promise,
            ..Durability::default()
        }
    }

    /// The batch that an output produced now depends on, if any record is not yet durable.
    fn newest_undurable(&self) -> Option<BatchNumber> {
        if !self.unbatched.is_empty() {
            // These records go into the batch after the one in flight (or the next one).
            Some(self.next_number + u64::from(self.in_flight.is_some()))
        } else {
            self.in_flight.as_ref().map(|b| b.number)
        }
    }

    fn cut_batch(&mut self, promise: Ballot) -> Option<(BatchNumber, Vec<Record>)> {
        if self.in_flight.is_some() || self.unbatched.is_empty() {
            return None;
        }
        let number = self.next_number;
        self.next_number += 1;
        self.in_flight = Some(InFlight {
            number,
            promise,
            self_acks: std::mem::take(&mut self.unbatched_self_acks),
            own_promise: self.unbatched_own_promise.take(),
        });
        Some((number, std::mem::take(&mut self.unbatched)))
    }

    /// Outputs waiting for a batch (a count, not bytes), for status and the bound checks of
    /// the hostile-input tests.
    pub(crate) fn held_len(&self) -> usize {
        self.held.len()
    }

    pub(crate) fn unbatched_len(&self) -> usize {
        self.unbatched.len()
    }

    pub(crate) fn in_flight(&self) -> Option<BatchNumber> {
        self.in_flight.as_ref().map(|b| b.number)
    }
}

/// True if sending `request` vouches for a promise that is not yet durable.
fn vouches_undurable(request: &Request, durable_promise: Ballot) -> bool {
    request
        .own_ballot()
        .is_some_and(|ballot| ballot > durable_promise)
}

impl Replica {
    /// Takes the work accumulated since the last call; see the module documentation for the
    /// contract. May be called at any time, also while a batch is being synced.
    pub fn ready(&mut self) -> Ready {
        self.flush_proposals();
        self.attach_chosen_record(false);
        let out = std::mem::take(&mut self.out);
        self.durability.unbatched.extend(out.persist);
        let wait_for = self.durability.newest_undurable();
        let durable_promise = self.durable_promise_claimable();
        let mut ready = Ready {
            client_replies: out.client_replies,
            events: self.kv.take_events(),
            ..Ready::default()
        };
        for message in out.messages {
            match wait_for {
                Some(n) if vouches_undurable(&message.request, durable_promise) => {
                    self.durability.held.push((n, Held::Message(message)))
                }
                _ => ready.messages.push(message),
            }
        }
        for (token, response) in out.responses {
            match wait_for {
                Some(n) if response.needs_sync() => self
                    .durability
                    .held
                    .push((n, Held::Response(token, response))),
                _ => ready.responses.push((token, response)),
            }
        }
        if let Some((number, records)) = self.durability.cut_batch(self.promised) {
            ready.batch = Some(number);
            ready.persist = records;
        }
        ready
    }

    /// The runtime made batch `number` durable. Its held outputs, and whatever counting the
    /// replica's own votes produces, come out of the next [`Replica::ready`]. A number that is
    /// not the batch in flight is ignored (a runtime bug, but not worth a panic).
    pub fn on_persisted(&mut self, number: BatchNumber) {
        let d = &mut self.durability;
        let Some(batch) = d.in_flight.take_if(|b| b.number == number) else {
            return;
        };
        debug_assert!(batch.promise >= d.durable_promise, "promises only grow");
        d.durable_promise = d.durable_promise.max(batch.promise);
        let split = d.held.partition_point(|(after, _)| *after <= number);
        for (_, held) in d.held.drain(..split).collect::<Vec<_>>() {
            match held {
                Held::Message(m) => self.out.messages.push(m),
                Held::Response(t, r) => self.out.responses.push((t, r)),
            }
        }
        if let Some(ballot) = batch.own_promise {
            self.count_own_promise(ballot);
        }
        self.count_self_acks(batch.self_acks);
    }

    /// The promise that requests may claim without waiting for a sync.
    fn durable_promise_claimable(&self) -> Ballot {
        #[cfg(feature = "broken-acceptor")]
        if self.cfg.unsafe_send_before_durable {
            return Ballot {
                round: u64::MAX,
                replica: u32::MAX,
            };
        }
        self.durability.durable_promise
    }

    /// Batch in flight, if any (the runtime's own bookkeeping must agree).
    pub fn batch_in_flight(&self) -> Option<BatchNumber> {
        self.durability.in_flight()
    }

    /// Outputs held until a batch is durable.
    pub fn held_outputs(&self) -> usize {
        self.durability.held_len()
    }
}
