//! The replicated lease table: which leases exist, their TTLs, and which keys each one
//! carries. Part of [`crate::kv::KvState`], so it is in snapshots and in the digest.
//!
//! Only what every replica agrees on lives here. When a lease expires is decided by the
//! leader alone, in ticks ([`LeaseClock`]), and reaches the replicas as a logged
//! [`crate::Op::LeaseExpire`].

use crate::types::{check_lease_ttl, LeaseError, LeaseId, MAX_LEASES};
use imbl::{OrdMap, OrdSet};
use std::collections::{BTreeMap, BTreeSet};

/// One lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Time to live without a keepalive.
    pub ttl_ms: u64,
    keys: OrdSet<Box<str>>,
}

impl Lease {
    /// Keys attached to it, in byte order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| &**k)
    }

    /// Number of keys attached.
    pub fn keys_len(&self) -> usize {
        self.keys.len()
    }
}

/// Every lease and the key-to-lease index. Persistent structures: `clone()` is O(1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseTable {
    leases: OrdMap<LeaseId, Lease>,
    key_lease: OrdMap<Box<str>, LeaseId>,
    /// The last id granted; ids are never reused, so a late expiry cannot hit a new lease.
    last_id: u64,
    /// XOR of every lease's and every attachment's hash.
    digest: u64,
}

/// The snapshot form of one lease: id, TTL, keys.
pub(crate) type EncodedLease = (u64, u64, Vec<String>);

impl LeaseTable {
    /// Leases held.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// True when no lease exists.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// The lease `id`.
    pub fn get(&self, id: LeaseId) -> Option<&Lease> {
        self.leases.get(&id)
    }

    /// The lease `key` is attached to.
    pub fn lease_of(&self, key: &str) -> Option<LeaseId> {
        self.key_lease.get(key).copied()
    }

    /// Every lease in id order.
    pub fn iter(&self) -> impl Iterator<Item = (LeaseId, &Lease)> {
        self.leases.iter().map(|(id, l)| (*id, l))
    }

    /// Order-independent digest; 0 for a table that never granted a lease, so states
    /// without leases keep the digest they had before leases existed.
    pub fn digest(&self) -> u64 {
        if self.last_id == 0 && self.digest == 0 {
            return 0;
        }
        self.digest ^ crate::kv::fnv_bytes(&[b"lease-last", &self.last_id.to_le_bytes()])
    }

    /// Creates a lease with the next id.
    pub(crate) fn grant(&mut self, ttl_ms: u64) -> Result<LeaseId, LeaseError> {
        check_lease_ttl(ttl_ms)?;
        if self.leases.len() >= MAX_LEASES {
            return Err(LeaseError::TooMany {
                max: MAX_LEASES as u64,
            });
        }
        let next = self
            .last_id
            .checked_add(1)
            .expect("lease ids stay below u64::MAX: one per applied command");
        let id = LeaseId(next);
        self.last_id = next;
        self.digest ^= lease_hash(id, ttl_ms);
        let lease = Lease {
            ttl_ms,
            keys: OrdSet::new(),
        };
        assert!(
            self.leases.insert(id, lease).is_none(),
            "ids are never reused"
        );
        Ok(id)
    }

    /// Removes lease `id` and returns its keys (the caller deletes them); `None` if absent.
    pub(crate) fn take(&mut self, id: LeaseId) -> Option<Vec<Box<str>>> {
        let lease = self.leases.remove(&id)?;
        self.digest ^= lease_hash(id, lease.ttl_ms);
        let keys: Vec<Box<str>> = lease.keys.into_iter().collect();
        for key in &keys {
            let removed = self.key_lease.remove(&**key);
            assert_eq!(removed, Some(id), "the index agrees with the lease's keys");
            self.digest ^= attach_hash(key, id);
        }
        Some(keys)
    }

    /// Attaches `key` to the existing lease `id`, detaching it from any other.
    pub(crate) fn attach(&mut self, key: &str, id: LeaseId) {
        if self.lease_of(key) == Some(id) {
            return;
        }
        self.detach(key);
        let lease = self
            .leases
            .get_mut(&id)
            .expect("attach to an existing lease");
        lease.keys.insert(key.into());
        self.key_lease.insert(key.into(), id);
        self.digest ^= attach_hash(key, id);
    }

    /// Detaches `key` from its lease, if it has one.
    pub(crate) fn detach(&mut self, key: &str) {
        let Some(id) = self.key_lease.remove(key) else {
            return;
        };
        let lease = self
            .leases
            .get_mut(&id)
            .expect("an attached key's lease exists");
        let removed = lease.keys.remove(key);
        assert!(removed.is_some(), "the index agrees with the lease's keys");
        self.digest ^= attach_hash(key, id);
    }

    /// True if the table is one applying commands can produce: within the bounds, ids
    /// up to the last granted, every attached key present in the map (`key_exists`), and
    /// the stored digest matching the contents.
    pub(crate) fn is_consistent(&self, key_exists: impl Fn(&str) -> bool) -> bool {
        let bounds_ok = self.leases.len() <= MAX_LEASES
            && self.leases.iter().all(|(id, l)| {
                id.0 >= 1 && id.0 <= self.last_id && check_lease_ttl(l.ttl_ms).is_ok()
            });
        let attached: usize = self.leases.values().map(Lease::keys_len).sum();
        let index_ok = attached == self.key_lease.len()
            && self.key_lease.iter().all(|(k, id)| {
                key_exists(k) && self.leases.get(id).is_some_and(|l| l.keys.contains(k))
            });
        bounds_ok && index_ok && self.computed_digest() == self.digest
    }

    fn computed_digest(&self) -> u64 {
        let leases = self
            .leases
            .iter()
            .fold(0, |d, (id, l)| d ^ lease_hash(*id, l.ttl_ms));
        self.key_lease
            .iter()
            .fold(leases, |d, (k, id)| d ^ attach_hash(k, *id))
    }

    /// The snapshot form: last id, leases with their keys, stored digest.
    pub(crate) fn encode(&self) -> (u64, Vec<EncodedLease>, u64) {
        let leases = self
            .leases
            .iter()
            .map(|(id, l)| (id.0, l.ttl_ms, l.keys().map(str::to_owned).collect()))
            .collect();
        (self.last_id, leases, self.digest)
    }

    /// Rebuilds a table from its snapshot form (untrusted): a repeated lease or key, or an
    /// id above the last one, is an error; the digest and the keys' presence are checked
    /// later by [`LeaseTable::is_consistent`].
    pub(crate) fn decode(
        last_id: u64,
        leases: Vec<EncodedLease>,
        digest: u64,
    ) -> Result<LeaseTable, String> {
        if leases.len() > MAX_LEASES {
            return Err(format!(
                "{} leases, over the limit of {MAX_LEASES}",
                leases.len()
            ));
        }
        if last_id > u64::MAX / 2 {
            return Err(format!(
                "last lease id {last_id} is more grants than a store can have made"
            ));
        }
        let mut table = LeaseTable {
            last_id,
            digest,
            ..LeaseTable::default()
        };
        for (id, ttl_ms, keys) in leases {
            if id == 0 || id > last_id {
                return Err(format!("lease id {id} outside 1..={last_id}"));
            }
            let mut lease = Lease {
                ttl_ms,
                keys: OrdSet::new(),
            };
            for key in keys {
                let key: Box<str> = key.into_boxed_str();
                if table.key_lease.insert(key.clone(), LeaseId(id)).is_some() {
                    return Err(format!("key {key:?} attached to two leases"));
                }
                lease.keys.insert(key);
            }
            if table.leases.insert(LeaseId(id), lease).is_some() {
                return Err(format!("lease {id} appears twice"));
            }
        }
        Ok(table)
    }
}

fn lease_hash(id: LeaseId, ttl_ms: u64) -> u64 {
    crate::kv::fnv_bytes(&[b"lease", &id.0.to_le_bytes(), &ttl_ms.to_le_bytes()])
}

fn attach_hash(key: &str, id: LeaseId) -> u64 {
    crate::kv::fnv_bytes(&[b"attach", key.as_bytes(), &[0xfd], &id.0.to_le_bytes()])
}

/// The leader's own clock for the leases: a deadline in ticks per lease. Never replicated:
/// a new leader rebuilds it, extending every lease by an election timeout first, so a
/// leader change never expires a lease that was kept alive.
#[derive(Debug, Default)]
pub(crate) struct LeaseClock {
    deadline_tick: BTreeMap<LeaseId, u64>,
    /// The same deadlines ordered by time, for the expiry check of each tick.
    order: BTreeSet<(u64, LeaseId)>,
}

impl LeaseClock {
    /// Sets (or moves) the deadline of `id`.
    pub(crate) fn set(&mut self, id: LeaseId, deadline_tick: u64) {
        if let Some(old) = self.deadline_tick.insert(id, deadline_tick) {
            self.order.remove(&(old, id));
        }
        self.order.insert((deadline_tick, id));
        debug_assert_eq!(self.order.len(), self.deadline_tick.len());
    }

    /// The tick at which `id` expires, if this clock times it.
    pub(crate) fn deadline(&self, id: LeaseId) -> Option<u64> {
        self.deadline_tick.get(&id).copied()
    }

    /// Forgets `id` (revoked or expired).
    pub(crate) fn remove(&mut self, id: LeaseId) {
        if let Some(old) = self.deadline_tick.remove(&id) {
            self.order.remove(&(old, id));
        }
    }

    /// Up to `max` leases whose deadline is at or before `now_tick`, earliest first.
    pub(crate) fn due(&self, now_tick: u64, max: usize) -> Vec<LeaseId> {
        self.order
            .iter()
            .take_while(|(t, _)| *t <= now_tick)
            .take(max)
            .map(|(_, id)| *id)
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.deadline_tick.len()
    }
}

/// Ticks covering `ttl_ms` at `tick_ms` per tick, rounded up (a lease never ends early).
pub(crate) fn ttl_ticks(ttl_ms: u64, tick_ms: u64) -> u64 {
    ttl_ms.div_ceil(tick_ms.max(1))
}

use crate::replica::{ClientError, ClientReply, ClientToken, LeaseTtl, Replica, Role};
use crate::types::{Command, CommandId, Op, Outcome};

/// The client id of the leader's own commands (lease expiries). No client session has it:
/// random client ids are never 0 and the runtime refuses 0 from clients.
pub const SYSTEM_CLIENT_ID: u64 = 0;

impl Replica {
    /// Keeps lease `id` alive for its whole TTL from now. Only the leader keeps lease time:
    /// the reply is [`ClientReply::LeaseKept`], or `NotLeader`, or `LeaseNotFound`.
    pub fn lease_keepalive(&mut self, token: ClientToken, id: LeaseId) {
        let Some(lease) = self.leader_lease(token, id) else {
            return;
        };
        let deadline = self.now_tick + ttl_ticks(lease.ttl_ms, self.cfg.tick_ms);
        self.lease_clock.set(id, deadline);
        let ttl_ms = lease.ttl_ms;
        self.reply(token, ClientReply::LeaseKept { ttl_ms });
    }

    /// How long lease `id` lives unless kept alive, on the leader's clock (the only one
    /// that keeps lease time): [`ClientReply::LeaseTtl`], or `NotLeader`, or `LeaseNotFound`.
    /// Right after an election that includes the extra time the new leader gave every lease.
    pub fn lease_time_to_live(&mut self, token: ClientToken, id: LeaseId) {
        let Some(lease) = self.leader_lease(token, id) else {
            return;
        };
        let remaining_ms = match self.lease_clock.deadline(id) {
            Some(deadline) => deadline
                .saturating_sub(self.now_tick)
                .saturating_mul(self.cfg.tick_ms),
            None => lease.ttl_ms, // Granted in a slot not applied under this leadership yet.
        };
        let reply = ClientReply::LeaseTtl(LeaseTtl {
            ttl_ms: lease.ttl_ms,
            remaining_ms,
            keys: lease.keys_len() as u64,
        });
        self.reply(token, reply);
    }

    /// The lease, if this replica leads and it exists; otherwise answers `token` and `None`.
    fn leader_lease(&mut self, token: ClientToken, id: LeaseId) -> Option<Lease> {
        if !matches!(self.role, Role::Leader(_)) {
            let leader = self.leader();
            self.reply(
                token,
                ClientReply::Failed(ClientError::NotLeader { leader }),
            );
            return None;
        }
        let lease = self.kv.leases().get(id).cloned();
        if lease.is_none() {
            self.reply(token, ClientReply::Failed(ClientError::LeaseNotFound(id)));
        }
        lease
    }

    /// A new leader does not know how long ago each lease was last kept alive: it gives
    /// every lease its whole TTL plus an election timeout (the time a leader change may
    /// have taken) before expiring any, as etcd does.
    pub(crate) fn lease_clock_on_elected(&mut self) {
        let extra = self.cfg.election_timeout_max_ticks;
        let now = self.now_tick;
        let tick_ms = self.cfg.tick_ms;
        let mut clock = LeaseClock::default();
        for (id, lease) in self.kv.leases().iter() {
            clock.set(id, now + ttl_ticks(lease.ttl_ms, tick_ms) + extra);
        }
        self.lease_clock = clock;
    }

    /// Forgets lease time (this replica no longer leads).
    pub(crate) fn lease_clock_on_stepped_down(&mut self) {
        self.lease_clock = LeaseClock::default();
    }

    /// Keeps the clock in step with what was applied: a new lease starts its TTL now, a
    /// revoked or expired one is forgotten.
    pub(crate) fn lease_clock_on_applied(&mut self, op: &Op, outcome: &Outcome) {
        if !matches!(self.role, Role::Leader(_)) {
            return;
        }
        match (op, outcome) {
            (Op::LeaseGrant { .. }, Outcome::LeaseGranted { id, ttl_ms }) => {
                let deadline = self.now_tick + ttl_ticks(*ttl_ms, self.cfg.tick_ms);
                self.lease_clock.set(*id, deadline);
            }
            (Op::LeaseRevoke { id } | Op::LeaseExpire { id }, _) => self.lease_clock.remove(*id),
            _ => {}
        }
    }

    /// Proposes the expiry of leases whose time is up (a bounded number per tick). An
    /// expiry that cannot be queued is tried again next tick.
    pub(crate) fn lease_tick(&mut self) {
        let now = self.now_tick;
        let due = self
            .lease_clock
            .due(now, self.cfg.max_lease_expiries_per_tick);
        let limits = crate::leader::QueueLimits {
            max_commands: self.cfg.max_pending_commands,
            max_bytes: self.cfg.max_pending_bytes,
        };
        for id in due {
            self.lease_clock.remove(id);
            if self.kv.leases().get(id).is_none() {
                continue;
            }
            let command = Command {
                id: CommandId {
                    client_id: SYSTEM_CLIENT_ID,
                    seq: id.0,
                },
                op: Op::LeaseExpire { id },
            };
            let Role::Leader(l) = &mut self.role else {
                return;
            };
            if l.enqueue_own(command, limits).is_err() {
                self.lease_clock.set(id, now + 1);
            }
        }
    }

    /// Leases the leader's clock tracks (0 on a follower).
    pub fn leases_timed(&self) -> usize {
        self.lease_clock.len()
    }
}
