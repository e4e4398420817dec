//! The replicated map and the client session table that makes retries exactly-once.

use crate::leases::LeaseTable;
use crate::types::{
    Check, Command, CommandId, Compare, KeyMeta, Op, Outcome, Slot, Txn, TxnOp, TxnOutcome,
    TxnResult, MAX_TXN_READ_BYTES,
};
use crate::types::{LeaseError, LeaseId};
use crate::watch::{Event, EventBatch, EventKind, PendingEvents};
use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::Bound;

/// The map itself, in key byte order. A persistent B-tree: cloning it is O(1) (the clone
/// shares every node until one side writes), so a snapshot or a read view costs the driver
/// nothing. Boxed slices, not `String`/`Vec`, save 16 bytes per entry.
type Map = OrdMap<Box<str>, Entry>;

/// One key's value and its revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    value: Box<[u8]>,
    meta: KeyMeta,
}

/// Marks the snapshot encoding with revisions: where the older encoding starts with the
/// map's length, this one starts with a length no map can have, then a format number.
const FORMAT_MARK: u64 = u64::MAX;

/// The encoding with per-key meta and the store revision, digest with the FNV entry hash.
const FORMAT_REVISIONS: u64 = 2;

/// The same encoding, digest with the xxh3 entry hash ([`entry_hash`]).
const FORMAT_XXH3: u64 = 3;
/// Format 3 followed by the lease table. Written only when the state has ever had a lease,
/// so a cluster that uses none keeps snapshots an older release reads.
const FORMAT_LEASES: u64 = 4;
/// Largest revision a loaded state may claim: far beyond any real store, and far enough
/// from `u64::MAX` that the next writes' `+ 1` cannot overflow.
const MAX_REVISION: u64 = u64::MAX / 2;

/// Most entries one scan returns.
pub const MAX_SCAN_LIMIT: usize = 10_000;

/// Bound on the keys and values one scan returns (one entry is always returned, however
/// large, so a scan always makes progress).
pub const MAX_SCAN_REPLY_BYTES: usize = 1024 * 1024;

/// Which keys a scan or count covers, in byte order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyRange {
    /// Every key that starts with these bytes (the empty prefix is every key).
    Prefix(String),
    /// Keys from `start` (included) up to `end` (excluded; `None` for no upper bound).
    Between {
        /// First key included.
        start: String,
        /// First key no longer included.
        end: Option<String>,
    },
}

impl KeyRange {
    /// True if `key` lies in the range.
    pub fn contains(&self, key: &str) -> bool {
        match self {
            KeyRange::Prefix(p) => key.starts_with(p.as_str()),
            KeyRange::Between { start, end } => {
                key >= start.as_str() && end.as_ref().is_none_or(|e| key < e.as_str())
            }
        }
    }

    fn start(&self) -> &str {
        match self {
            KeyRange::Prefix(p) => p,
            KeyRange::Between { start, .. } => start,
        }
    }
}

/// One page of a scan, in key order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanPage {
    /// The entries, in key byte order.
    pub entries: Vec<(String, Vec<u8>)>,
    /// Set when the range holds more keys than this page: continue after this key.
    pub next_after: Option<String>,
}

/// Per-client memory of the last applied request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Highest sequence number applied for this client.
    pub last_seq: u64,
    /// What applying it returned, replayed to a retry.
    pub outcome: Outcome,
    /// Slot it was applied in; the oldest sessions are evicted first.
    pub last_slot: Slot,
}

/// What applying one command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// First application.
    Fresh(Outcome),
    /// A retry of the last applied request: the first outcome, not applied again.
    Duplicate(Outcome),
    /// Older than the last applied request of its session; ignored.
    Stale {
        /// The session's last applied sequence number.
        last_applied: u64,
    },
    /// A write from a session the table does not hold (never registered, or evicted): not
    /// applied, because it may be the retry of a write applied before the eviction.
    Expired,
}

impl Applied {
    /// The outcome to report to the client, if there is one.
    pub fn outcome(&self) -> Option<&Outcome> {
        match self {
            Applied::Fresh(o) | Applied::Duplicate(o) => Some(o),
            Applied::Stale { .. } | Applied::Expired => None,
        }
    }
}

/// The state machine: a map plus the session table. Deterministic, so every replica that
/// applies the same commands in the same order holds the same state.
/// Every part is a persistent structure, so `clone()` is O(1).
/// (De)serialised by hand (module `encoding`): the older encoding, without revisions,
/// still decodes.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KvState {
    map: Map,
    /// Grows by one with every applied command that changes the map (etcd's revision).
    revision: u64,
    sessions: OrdMap<u64, Session>,
    /// (last_slot, client_id) of every session, for deterministic oldest-first eviction.
    session_age: OrdSet<(Slot, u64)>,
    max_sessions: usize,
    digest: u64,
    /// XOR of every session's hash, so replicas that disagree only on the session table
    /// (which decides what a retry does) show different digests too.
    session_digest: u64,
    /// Change events since the runtime last drained them (for watches). Not state: not in
    /// the digest, the encoding, equality or clones.
    events: PendingEvents,
    /// The leases and the keys attached to them (replicated; when one expires is the
    /// leader's business, see [`crate::leases::LeaseClock`]).
    leases: LeaseTable,
}

/// A summary: printing a million entries helps nobody.
impl fmt::Debug for KvState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvState")
            .field("keys", &self.map.len())
            .field("revision", &self.revision)
            .field("sessions", &self.sessions.len())
            .field("max_sessions", &self.max_sessions)
            .field("digest", &format_args!("{:016x}", self.digest()))
            .finish()
    }
}

impl KvState {
    /// An empty map keeping at most `max_sessions` client sessions.
    pub fn new(max_sessions: usize) -> KvState {
        assert!(max_sessions > 0);
        KvState {
            max_sessions,
            ..KvState::default()
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.map.get(key).map(|e| &*e.value)
    }

    /// The value of `key` with its revisions.
    pub fn get_meta(&self, key: &str) -> Option<(&[u8], KeyMeta)> {
        self.map.get(key).map(|e| (&*e.value, e.meta))
    }

    /// The store revision: how many applied commands changed the map.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when the map is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Order-independent digest of the map and the session table, kept up to date
    /// incrementally.
    pub fn digest(&self) -> u64 {
        let revision = fnv_bytes(&[&self.revision.to_le_bytes()]);
        // 0 without leases: a state that never had one keeps its digest.
        let leases = self.leases.digest().rotate_left(31);
        self.digest ^ self.session_digest.rotate_left(17) ^ revision ^ leases
    }

    /// Sessions held.
    pub fn sessions_len(&self) -> usize {
        self.sessions.len()
    }

    /// Iterates over all entries in key byte order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.map.iter().map(|(k, e)| (&**k, &*e.value))
    }

    /// The entries of `range` after the key `after` (a previous page's `next_after`), in
    /// key byte order: at most `limit` (capped at [`MAX_SCAN_LIMIT`]) and at most
    /// [`MAX_SCAN_REPLY_BYTES`] of keys and values, but at least one entry if there is one.
    pub fn scan(&self, range: &KeyRange, after: Option<&str>, limit: usize) -> ScanPage {
        let limit = limit.clamp(1, MAX_SCAN_LIMIT);
        let mut page = ScanPage::default();
        let mut bytes = 0usize;
        for (key, value) in self.range_iter(range, after) {
            let size = key.len() + value.len();
            let full = page.entries.len() >= limit
                || (!page.entries.is_empty() && bytes + size > MAX_SCAN_REPLY_BYTES);
            if full {
                page.next_after = page.entries.last().map(|(k, _)| k.clone());
                break;
            }
            bytes += size;
            page.entries.push((key.to_owned(), value.to_vec()));
        }
        debug_assert!(page.entries.len() <= limit && page.entries.is_sorted());
        page
    }

    /// Number of keys in `range`. Proportional to that number: callers run it off the
    /// driver, on a clone.
    pub fn count(&self, range: &KeyRange) -> u64 {
        self.range_iter(range, None).count() as u64
    }

    fn range_iter<'a>(
        &'a self,
        range: &'a KeyRange,
        after: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        let lower = match after {
            Some(a) if a >= range.start() => Bound::Excluded(a),
            _ => Bound::Included(range.start()),
        };
        self.map
            .range::<_, str>((lower, Bound::Unbounded))
            .map(|(k, e)| (&**k, &*e.value))
            .take_while(move |(k, _)| range.contains(k))
    }

    /// What the session table remembers of `client_id`.
    pub fn session(&self, client_id: u64) -> Option<&Session> {
        self.sessions.get(&client_id)
    }

    /// Answer for a request that was already applied, without proposing it again.
    pub fn already_applied(&self, id: CommandId) -> Option<Applied> {
        let session = self.sessions.get(&id.client_id)?;
        if id.seq == session.last_seq {
            Some(Applied::Duplicate(session.outcome.clone()))
        } else if id.seq < session.last_seq {
            Some(Applied::Stale {
                last_applied: session.last_seq,
            })
        } else {
            None
        }
    }

    /// Applies `command`, chosen in `slot`, at most once per `CommandId`.
    pub fn apply(&mut self, slot: Slot, command: &Command) -> Applied {
        if let Op::LeaseExpire { id } = command.op {
            // The leader's own command: no session (a repeat finds the lease gone).
            return Applied::Fresh(self.revoke(id));
        }
        if let Some(done) = self.already_applied(command.id) {
            return done;
        }
        let registers = matches!(command.op, Op::Register);
        if !registers && !self.sessions.contains_key(&command.id.client_id) {
            return Applied::Expired;
        }
        let outcome = self.apply_op(&command.op);
        self.remember(slot, command.id, kept_for_retry(&outcome));
        Applied::Fresh(outcome)
    }

    fn apply_op(&mut self, op: &Op) -> Outcome {
        let before = self.revision;
        let outcome = match op {
            Op::Put { key, value } => {
                let revision = before + 1;
                let replaced = self.put_at(key, value, revision);
                self.leases.detach(key);
                self.revision = revision;
                Outcome::Put { replaced }
            }
            Op::Delete { key } => {
                let existed = self.remove_key(key);
                if existed {
                    self.revision = before + 1;
                }
                Outcome::Delete { existed }
            }
            Op::Register => Outcome::Registered,
            Op::Txn(txn) => match self.missing_lease(txn) {
                Some(id) => Outcome::LeaseFailed(LeaseError::NotFound(id)),
                None => Outcome::Txn(self.apply_txn(txn)),
            },
            Op::LeaseGrant { ttl_ms } => match self.leases.grant(*ttl_ms) {
                Ok(id) => Outcome::LeaseGranted {
                    id,
                    ttl_ms: *ttl_ms,
                },
                Err(e) => Outcome::LeaseFailed(e),
            },
            Op::LeaseRevoke { id } | Op::LeaseExpire { id } => self.revoke(*id),
        };
        assert!(
            self.revision == before || self.revision == before + 1,
            "one command moves the revision by at most one"
        );
        outcome
    }

    /// Every compare is evaluated against the map before any op runs; then one branch
    /// runs, its writes sharing one new revision (taken only if something changed).
    fn apply_txn(&mut self, txn: &Txn) -> TxnOutcome {
        let succeeded = txn.compares.iter().all(|c| self.holds(c));
        let branch = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let revision = self.revision + 1;
        let mut changed = false;
        let mut read_bytes = 0usize;
        let mut results = Vec::with_capacity(branch.len());
        for op in branch {
            let result = match op {
                TxnOp::Put { key, value } => {
                    changed = true;
                    let replaced = self.put_at(key, value, revision);
                    self.leases.detach(key);
                    TxnResult::Put { replaced }
                }
                TxnOp::PutLeased { key, value, lease } => {
                    changed = true;
                    let replaced = self.put_at(key, value, revision);
                    self.leases.attach(key, *lease);
                    TxnResult::Put { replaced }
                }
                TxnOp::Delete { key } => {
                    let existed = self.remove_key(key);
                    changed |= existed;
                    TxnResult::Delete { existed }
                }
                TxnOp::Get { key } => {
                    let found = self.map.get(key.as_str());
                    let size = found.map_or(0, |e| e.value.len());
                    let fits = read_bytes + size <= MAX_TXN_READ_BYTES;
                    read_bytes += if fits { size } else { 0 };
                    TxnResult::Get {
                        value: found.filter(|_| fits).map(|e| e.value.to_vec()),
                        meta: found.map(|e| e.meta),
                    }
                }
            };
            results.push(result);
        }
        if changed {
            self.revision = revision;
        }
        TxnOutcome {
            succeeded,
            revision: self.revision,
            results,
        }
    }

    /// Whether `compare` holds now. An absent key has version 0 and mod revision 0, and
    /// no value (a value compare is false for it).
    pub fn holds(&self, compare: &Compare) -> bool {
        let entry = self.map.get(compare.key.as_str());
        let meta = entry.map(|e| e.meta).unwrap_or_default();
        match &compare.check {
            Check::Version(op, n) => op.holds(&meta.version, n),
            Check::ModRevision(op, n) => op.holds(&meta.mod_revision, n),
            Check::Value(op, v) => entry.is_some_and(|e| op.holds(&*e.value, v.as_slice())),
            Check::Exists => entry.is_some(),
            Check::Absent => entry.is_none(),
        }
    }

    /// The first lease a put of the branch `txn` would run names that does not exist: the
    /// whole transaction is then refused (decided before any op runs, so nothing changes).
    fn missing_lease(&self, txn: &Txn) -> Option<LeaseId> {
        let succeeded = txn.compares.iter().all(|c| self.holds(c));
        let branch = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        branch.iter().find_map(|op| match op {
            TxnOp::PutLeased { lease, .. } if self.leases.get(*lease).is_none() => Some(*lease),
            _ => None,
        })
    }

    /// Removes lease `id` and deletes its keys, all at one new revision (none if it had
    /// no key).
    fn revoke(&mut self, id: LeaseId) -> Outcome {
        let Some(keys) = self.leases.take(id) else {
            return Outcome::LeaseRevoked {
                found: false,
                deleted_keys: 0,
                revision: self.revision,
            };
        };
        let mut deleted_keys = 0;
        for key in &keys {
            deleted_keys += u64::from(self.remove_key(key));
        }
        if deleted_keys > 0 {
            self.revision += 1;
        }
        Outcome::LeaseRevoked {
            found: true,
            deleted_keys,
            revision: self.revision,
        }
    }

    /// The lease table.
    pub fn leases(&self) -> &LeaseTable {
        &self.leases
    }

    /// The change events recorded since the last call, for the runtime's watch history.
    pub fn take_events(&mut self) -> EventBatch {
        self.events.take()
    }

    /// Forgets the recorded events: a history served from here on starts after the
    /// current revision (this state was loaded from a snapshot, not built by applying).
    pub fn reset_events(&mut self) {
        self.events.reset(self.revision);
    }

    /// Sets `key` at `revision` (the one the current command takes; several puts of one
    /// transaction share it); true if the key existed before. Records the put's event.
    fn put_at(&mut self, key: &str, value: &[u8], revision: u64) -> bool {
        assert!(revision > self.revision, "a write takes a new revision");
        let old = self.map.get(key).map(|e| e.meta);
        if let Some(old_entry) = self.map.get(key) {
            self.digest ^= entry_hash(key, old_entry);
        }
        let meta = match old {
            Some(m) => KeyMeta {
                create_revision: m.create_revision,
                mod_revision: revision,
                version: m
                    .version
                    .checked_add(1)
                    .expect("a version never reaches u64::MAX"),
            },
            None => KeyMeta {
                create_revision: revision,
                mod_revision: revision,
                version: 1,
            },
        };
        debug_assert!(old.is_none_or(|m| meta.version == m.version + 1));
        let entry = Entry {
            value: value.into(),
            meta,
        };
        self.digest ^= entry_hash(key, &entry);
        self.map.insert(key.into(), entry);
        self.events.push(Event {
            kind: EventKind::Put,
            key: key.to_owned(),
            value: value.to_vec(),
            revision,
            meta,
        });
        old.is_some()
    }

    /// Removes `key`; true if it existed. The caller must then take the revision after the
    /// current one (`self.revision + 1`, shared by every write of the command), which the
    /// delete's event carries.
    fn remove_key(&mut self, key: &str) -> bool {
        self.leases.detach(key);
        let old = self.map.remove(key);
        if let Some(old) = &old {
            self.digest ^= entry_hash(key, old);
            let revision = self
                .revision
                .checked_add(1)
                .expect("a revision never reaches u64::MAX");
            self.events.push(Event {
                kind: EventKind::Delete,
                key: key.to_owned(),
                value: Vec::new(),
                revision,
                meta: old.meta,
            });
        }
        old.is_some()
    }

    /// True if this state (from a peer's snapshot or the disk, so untrusted) is one that
    /// applying commands up to `through` can produce: [`Self::sessions_consistent`], every
    /// key's revisions are ordered and not newer than the store's, and the digest matches
    /// the entries. Decoding already checks the entries (see the `encoding` module), so
    /// recovery needs only the session part; this full pass is for tests and the simulator.
    pub fn is_consistent(&self, through: Slot) -> bool {
        let revision = self.revision;
        let meta_ok = self.map.values().all(|e| meta_ok(e.meta, revision));
        let digest = self.map.iter().fold(0, |d, (k, e)| d ^ entry_hash(k, e));
        self.sessions_consistent(through)
            && meta_ok
            && digest == self.digest
            && self.leases_consistent()
    }

    /// The lease table is one applying commands can produce, and every attached key exists.
    /// Proportional to the leases and their keys.
    pub fn leases_consistent(&self) -> bool {
        self.leases.is_consistent(|k| self.map.contains_key(k))
    }

    /// The part of [`Self::is_consistent`] that decoding cannot check alone: the session
    /// table and its age index agree and respect the bound, no session is newer than
    /// `through`, and the session digest matches. Proportional to the sessions, not the map.
    pub fn sessions_consistent(&self, through: Slot) -> bool {
        let sessions_ok = self.max_sessions > 0
            && self.sessions.len() <= self.max_sessions
            && self.session_age.len() == self.sessions.len()
            && self.sessions.iter().all(|(&id, s)| {
                s.last_slot <= through && self.session_age.contains(&(s.last_slot, id))
            });
        let session_digest = self
            .sessions
            .iter()
            .fold(0, |d, (&id, s)| d ^ session_hash(id, s));
        sessions_ok && session_digest == self.session_digest
    }

    fn remember(&mut self, slot: Slot, id: CommandId, outcome: Outcome) {
        let session = Session {
            last_seq: id.seq,
            outcome,
            last_slot: slot,
        };
        self.session_digest ^= session_hash(id.client_id, &session);
        if let Some(old) = self.sessions.insert(id.client_id, session) {
            self.session_age.remove(&(old.last_slot, id.client_id));
            self.session_digest ^= session_hash(id.client_id, &old);
        }
        self.session_age.insert((slot, id.client_id));
        while self.sessions.len() > self.max_sessions {
            let Some((_, client_id)) = self.session_age.remove_min() else {
                break;
            };
            if let Some(old) = self.sessions.remove(&client_id) {
                self.session_digest ^= session_hash(client_id, &old);
            }
        }
        debug_assert_eq!(self.sessions.len(), self.session_age.len());
    }
}

/// The snapshot encoding of [`KvState`], a tuple. The current one: [`FORMAT_MARK`],
/// [`FORMAT_XXH3`], the revision, the entries (a sequence of key, value bytes,
/// create_revision, mod_revision, version), then the session tail (sessions, session age,
/// max_sessions, digest, session_digest). [`FORMAT_REVISIONS`] is the same with the FNV
/// entry hash in the digest. The oldest (before revisions): the map (key to value bytes),
/// then the same tail; it loads with every key at version 1 and revisions 0.
///
/// Decoding checks the entries in the pass that reads them: each key's revisions fit the
/// store's, and the digest of the entries is the one stored (an older format's digest is
/// checked with its own hash, then recomputed). Nothing is preallocated from a length the
/// input claims: entries are inserted one by one.
mod encoding {
    use super::{
        bounded, entry_hash, fnv_entry_hash, meta_ok, old_entry_hash, Entry, KvState, Map, Session,
        FORMAT_LEASES, FORMAT_MARK, FORMAT_REVISIONS, FORMAT_XXH3, MAX_REVISION,
    };
    use crate::leases::{EncodedLease, LeaseTable};
    use crate::types::{KeyMeta, Slot};
    use imbl::{OrdMap, OrdSet};
    use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, SeqAccess, Visitor};
    use serde::ser::{Serialize, SerializeTuple, Serializer};
    use std::fmt;

    const FIELDS: usize = 9;

    struct EntriesOut<'a>(&'a Map);

    impl Serialize for EntriesOut<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(self.0.iter().map(|(k, e)| {
                let m = e.meta;
                let value = serde_bytes::Bytes::new(&e.value);
                (k, value, m.create_revision, m.mod_revision, m.version)
            }))
        }
    }

    /// Which entry hash a snapshot's digest was made with.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum EntryHash {
        Fnv,
        Xxh3,
    }

    /// The entries, and the digest of them in the snapshot's hash.
    struct EntriesIn {
        map: Map,
        digest: u64,
    }

    /// Reads the entries of a store at `revision`.
    struct EntriesSeed {
        hash: EntryHash,
        revision: u64,
    }

    impl<'de> DeserializeSeed<'de> for EntriesSeed {
        type Value = EntriesIn;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<EntriesIn, D::Error> {
            d.deserialize_seq(self)
        }
    }

    type EncodedEntry = (String, serde_bytes::ByteBuf, u64, u64, u64);

    impl<'de> Visitor<'de> for EntriesSeed {
        type Value = EntriesIn;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a sequence of entries with revisions")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
            let mut map = Map::new();
            let mut digest = 0;
            while let Some((k, v, create_revision, mod_revision, version)) =
                a.next_element::<EncodedEntry>()?
            {
                let meta = KeyMeta {
                    create_revision,
                    mod_revision,
                    version,
                };
                if !meta_ok(meta, self.revision) {
                    return Err(de::Error::custom(format!(
                        "a key has revisions {meta:?} that a store at revision {} cannot hold",
                        self.revision
                    )));
                }
                let entry = Entry {
                    value: v.into_vec().into_boxed_slice(),
                    meta,
                };
                digest ^= match self.hash {
                    EntryHash::Fnv => fnv_entry_hash(&k, &entry),
                    EntryHash::Xxh3 => entry_hash(&k, &entry),
                };
                map.insert(k.into_boxed_str(), entry);
            }
            Ok(EntriesIn { map, digest })
        }
    }

    struct SessionsOut<'a>(&'a OrdMap<u64, Session>);

    impl Serialize for SessionsOut<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            bounded::map::serialize(self.0, s)
        }
    }

    struct SessionsIn(OrdMap<u64, Session>);

    impl<'de> Deserialize<'de> for SessionsIn {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            bounded::map::deserialize(d).map(SessionsIn)
        }
    }

    struct AgeOut<'a>(&'a OrdSet<(Slot, u64)>);

    impl Serialize for AgeOut<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            bounded::set::serialize(self.0, s)
        }
    }

    struct AgeIn(OrdSet<(Slot, u64)>);

    impl<'de> Deserialize<'de> for AgeIn {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            bounded::set::deserialize(d).map(AgeIn)
        }
    }

    impl Serialize for KvState {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let with_leases = self.leases != LeaseTable::default();
            let mut t = s.serialize_tuple(FIELDS + usize::from(with_leases))?;
            t.serialize_element(&FORMAT_MARK)?;
            t.serialize_element(if with_leases {
                &FORMAT_LEASES
            } else {
                &FORMAT_XXH3
            })?;
            t.serialize_element(&self.revision)?;
            t.serialize_element(&EntriesOut(&self.map))?;
            t.serialize_element(&SessionsOut(&self.sessions))?;
            t.serialize_element(&AgeOut(&self.session_age))?;
            t.serialize_element(&self.max_sessions)?;
            t.serialize_element(&self.digest)?;
            t.serialize_element(&self.session_digest)?;
            if with_leases {
                t.serialize_element(&self.leases.encode())?;
            }
            t.end()
        }
    }

    impl<'de> Deserialize<'de> for KvState {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            // The older encoding has as many elements as its map has entries, plus five.
            d.deserialize_tuple(usize::MAX, KvVisitor)
        }
    }

    struct KvVisitor;

    fn next<'de, T: Deserialize<'de>, A: SeqAccess<'de>>(a: &mut A) -> Result<T, A::Error> {
        a.next_element()?
            .ok_or_else(|| de::Error::custom("key-value state ends early"))
    }

    impl<'de> Visitor<'de> for KvVisitor {
        type Value = KvState;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a key-value state")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<KvState, A::Error> {
            let first: u64 = next(&mut a)?;
            let mut kv = KvState::default();
            let mut with_leases = false;
            let (entries_digest, hash) = if first == FORMAT_MARK {
                let format: u64 = next(&mut a)?;
                let hash = match format {
                    FORMAT_REVISIONS => EntryHash::Fnv,
                    FORMAT_XXH3 | FORMAT_LEASES => EntryHash::Xxh3,
                    _ => {
                        return Err(de::Error::custom(format!(
                            "unknown key-value state format {format}"
                        )))
                    }
                };
                kv.revision = next(&mut a)?;
                if kv.revision > MAX_REVISION {
                    return Err(de::Error::custom(format!(
                        "revision {} is more writes than a store can have made",
                        kv.revision
                    )));
                }
                let seed = EntriesSeed {
                    hash,
                    revision: kv.revision,
                };
                let entries = a
                    .next_element_seed(seed)?
                    .ok_or_else(|| de::Error::custom("key-value state ends early"))?;
                kv.map = entries.map;
                with_leases = format == FORMAT_LEASES;
                (entries.digest, hash)
            } else {
                // `first` is the older map's length, untrusted: each entry is read before
                // it is counted, so a lie ends in an error at the end of the input.
                let mut digest = 0;
                for _ in 0..first {
                    let (k, v): (String, serde_bytes::ByteBuf) = next(&mut a)?;
                    digest ^= old_entry_hash(&k, &v);
                    let entry = Entry {
                        value: v.into_vec().into_boxed_slice(),
                        meta: KeyMeta {
                            create_revision: 0,
                            mod_revision: 0,
                            version: 1,
                        },
                    };
                    kv.map.insert(k.into_boxed_str(), entry);
                }
                (digest, EntryHash::Fnv)
            };
            kv.sessions = next::<SessionsIn, _>(&mut a)?.0;
            kv.session_age = next::<AgeIn, _>(&mut a)?.0;
            kv.max_sessions = next(&mut a)?;
            kv.digest = next(&mut a)?;
            kv.session_digest = next(&mut a)?;
            if with_leases {
                let (last_id, leases, digest): (u64, Vec<EncodedLease>, u64) = next(&mut a)?;
                kv.leases =
                    LeaseTable::decode(last_id, leases, digest).map_err(de::Error::custom)?;
            }
            if entries_digest != kv.digest {
                return Err(de::Error::custom(
                    "the entries do not match the key-value state's digest",
                ));
            }
            if hash != EntryHash::Xxh3 {
                kv.digest = kv.map.iter().fold(0, |d, (k, e)| d ^ entry_hash(k, e));
            }
            Ok(kv)
        }
    }
}

/// (De)serialises the session table like the standard collections did (a map, a sequence),
/// building it entry by entry: imbl's own visitors preallocate whatever length an untrusted
/// prefix claims.
mod bounded {
    use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
    use std::fmt;
    use std::marker::PhantomData;

    pub mod map {
        use super::*;
        use imbl::OrdMap;
        use serde::{Serialize, Serializer};

        pub fn serialize<K, V, S>(map: &OrdMap<K, V>, s: S) -> Result<S::Ok, S::Error>
        where
            K: Serialize + Ord,
            V: Serialize,
            S: Serializer,
        {
            s.collect_map(map.iter())
        }

        pub fn deserialize<'de, K, V, D>(d: D) -> Result<OrdMap<K, V>, D::Error>
        where
            K: Deserialize<'de> + Ord + Clone,
            V: Deserialize<'de> + Clone,
            D: Deserializer<'de>,
        {
            d.deserialize_map(MapVisitor(PhantomData))
        }

        struct MapVisitor<K, V>(PhantomData<(K, V)>);

        impl<'de, K, V> Visitor<'de> for MapVisitor<K, V>
        where
            K: Deserialize<'de> + Ord + Clone,
            V: Deserialize<'de> + Clone,
        {
            type Value = OrdMap<K, V>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut map = OrdMap::new();
                while let Some((k, v)) = a.next_entry()? {
                    map.insert(k, v);
                }
                Ok(map)
            }
        }
    }

    pub mod set {
        use super::*;
        use imbl::OrdSet;
        use serde::{Serialize, Serializer};

        pub fn serialize<T, S>(set: &OrdSet<T>, s: S) -> Result<S::Ok, S::Error>
        where
            T: Serialize + Ord,
            S: Serializer,
        {
            s.collect_seq(set.iter())
        }

        pub fn deserialize<'de, T, D>(d: D) -> Result<OrdSet<T>, D::Error>
        where
            T: Deserialize<'de> + Ord + Clone,
            D: Deserializer<'de>,
        {
            d.deserialize_seq(SetVisitor(PhantomData))
        }

        struct SetVisitor<T>(PhantomData<T>);

        impl<'de, T> Visitor<'de> for SetVisitor<T>
        where
            T: Deserialize<'de> + Ord + Clone,
        {
            type Value = OrdSet<T>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a sequence")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut set = OrdSet::new();
                while let Some(x) = a.next_element()? {
                    set.insert(x);
                }
                Ok(set)
            }
        }
    }
}

/// What the session table keeps of an outcome to answer a retry: everything but the values
/// a transaction read (their meta stays). Values would make every session up to a
/// transaction's size, and the table holds up to `max_sessions` of them.
fn kept_for_retry(outcome: &Outcome) -> Outcome {
    let Outcome::Txn(txn) = outcome else {
        return outcome.clone();
    };
    let results = txn
        .results
        .iter()
        .map(|r| match r {
            TxnResult::Get { meta, .. } => TxnResult::Get {
                value: None,
                meta: *meta,
            },
            other => other.clone(),
        })
        .collect();
    Outcome::Txn(TxnOutcome {
        results,
        ..txn.clone()
    })
}

fn session_hash(client_id: u64, session: &Session) -> u64 {
    let mut bytes = [0u8; 24];
    bytes[..8].copy_from_slice(&client_id.to_le_bytes());
    bytes[8..16].copy_from_slice(&session.last_seq.to_le_bytes());
    bytes[16..].copy_from_slice(&session.last_slot.to_le_bytes());
    fnv_bytes(&[&bytes])
}

/// Revisions a stored key can have under a store at `revision`.
fn meta_ok(m: KeyMeta, revision: u64) -> bool {
    m.version >= 1 && m.create_revision <= m.mod_revision && m.mod_revision <= revision
}

/// xxh3 over key, value and meta; XOR of these over all entries is order-independent.
/// The key's length goes first, so no key/value split of the same bytes collides.
fn entry_hash(key: &str, entry: &Entry) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&meta_bytes(entry.meta));
    h.update(&(key.len() as u64).to_le_bytes());
    h.update(key.as_bytes());
    h.update(&entry.value);
    h.digest()
}

/// The entry hash of format 2 (FNV-1a), to check such a snapshot's digest before it is
/// recomputed with [`entry_hash`].
fn fnv_entry_hash(key: &str, entry: &Entry) -> u64 {
    let meta = meta_bytes(entry.meta);
    fnv_bytes(&[key.as_bytes(), &[0xff], &entry.value, &[0xfe], &meta])
}

fn meta_bytes(m: KeyMeta) -> [u8; 24] {
    let mut meta = [0u8; 24];
    meta[..8].copy_from_slice(&m.create_revision.to_le_bytes());
    meta[8..16].copy_from_slice(&m.mod_revision.to_le_bytes());
    meta[16..].copy_from_slice(&m.version.to_le_bytes());
    meta
}

/// The entry hash of the encoding without revisions (key and value only), to check an old
/// snapshot's digest before it is recomputed.
fn old_entry_hash(key: &str, value: &[u8]) -> u64 {
    fnv_bytes(&[key.as_bytes(), &[0xff], value])
}

/// FNV-1a over the parts in order, finalized so that similar inputs spread over all bits
/// before XOR-ing.
pub(crate) fn fnv_bytes(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(client_id: u64, seq: u64, key: &str, value: &str) -> Command {
        Command {
            id: CommandId { client_id, seq },
            op: Op::Put {
                key: key.into(),
                value: value.as_bytes().to_vec(),
            },
        }
    }

    fn delete(client_id: u64, seq: u64, key: &str) -> Command {
        Command {
            id: CommandId { client_id, seq },
            op: Op::Delete { key: key.into() },
        }
    }

    fn register(client_id: u64) -> Command {
        Command {
            id: CommandId { client_id, seq: 1 },
            op: Op::Register,
        }
    }

    #[test]
    fn duplicate_command_id_is_not_applied_twice() {
        let mut kv = KvState::new(10);
        kv.apply(1, &register(7));
        kv.apply(1, &register(8));
        assert_eq!(
            kv.apply(1, &put(7, 2, "k", "a")),
            Applied::Fresh(Outcome::Put { replaced: false })
        );
        // Another client overwrites; then client 7 retries its first put.
        kv.apply(2, &put(8, 2, "k", "b"));
        let retry = kv.apply(3, &put(7, 2, "k", "a"));
        assert_eq!(retry, Applied::Duplicate(Outcome::Put { replaced: false }));
        assert_eq!(kv.get("k"), Some(&b"b"[..]), "retry must not re-apply");
        assert_eq!(
            kv.apply(4, &put(7, 1, "k", "z")),
            Applied::Stale { last_applied: 2 }
        );
    }

    #[test]
    fn digest_is_order_independent_and_covers_sessions() {
        let mut a = KvState::new(10);
        let mut b = KvState::new(10);
        a.apply(1, &register(1));
        a.apply(2, &put(1, 2, "x", "1"));
        a.apply(3, &put(1, 3, "y", "2"));
        b.apply(1, &register(1));
        b.apply(2, &put(1, 2, "y", "2"));
        b.apply(3, &put(1, 3, "x", "1"));
        // Same keys and values, but each key carries another mod revision.
        assert_ne!(a.digest(), b.digest());
        let mut same = KvState::new(10);
        for slot in 1..=3 {
            let cmd = [register(1), put(1, 2, "x", "1"), put(1, 3, "y", "2")];
            same.apply(slot, &cmd[slot as usize - 1]);
        }
        assert_eq!(a.digest(), same.digest());
        assert_eq!(a, same);
        // Same map, different session table: a retry would behave differently.
        let mut c = a.clone();
        c.apply(4, &register(2));
        assert_eq!(c.len(), a.len());
        assert_ne!(c.digest(), a.digest());
        let del = Command {
            id: CommandId {
                client_id: 1,
                seq: 4,
            },
            op: Op::Delete { key: "y".into() },
        };
        a.apply(4, &del);
        assert_ne!(a.digest(), b.digest());
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn sessions_are_bounded_oldest_first() {
        let mut kv = KvState::new(2);
        for client in 1..=3 {
            kv.apply(client, &register(client));
        }
        assert!(kv.session(1).is_none());
        assert!(kv.session(2).is_some() && kv.session(3).is_some());
    }

    /// The hole this closes: a write applied, its session evicted, then the write retried.
    /// Without registration the retry looked like a new session and applied again.
    #[test]
    fn a_retry_from_an_evicted_session_is_expired_not_applied_again() {
        let mut kv = KvState::new(1);
        kv.apply(1, &register(7));
        assert!(matches!(
            kv.apply(2, &put(7, 2, "k", "a")),
            Applied::Fresh(_)
        ));
        kv.apply(3, &register(8)); // evicts 7
        kv.apply(4, &put(8, 2, "k", "b"));
        assert_eq!(kv.apply(5, &put(7, 2, "k", "a")), Applied::Expired);
        assert_eq!(
            kv.get("k"),
            Some(&b"b"[..]),
            "the retry must not apply again"
        );
        // A write from a session that never registered is refused the same way.
        assert_eq!(kv.apply(6, &put(9, 2, "k", "c")), Applied::Expired);
        // Registering again is harmless: it touches no key.
        kv.apply(7, &register(7));
        assert_eq!(kv.get("k"), Some(&b"b"[..]));
    }

    fn filled(keys: &[&str], value_bytes: usize) -> KvState {
        let mut kv = KvState::new(10);
        kv.apply(1, &register(1));
        for (i, k) in keys.iter().enumerate() {
            let seq = i as u64 + 2;
            let cmd = Command {
                id: CommandId { client_id: 1, seq },
                op: Op::Put {
                    key: (*k).into(),
                    value: vec![b'v'; value_bytes],
                },
            };
            kv.apply(seq, &cmd);
        }
        kv
    }

    fn keys_of(page: &ScanPage) -> Vec<&str> {
        page.entries.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn scan_is_in_byte_order_and_stays_inside_the_prefix() {
        // Inserted out of order; "b\u{e9}" sorts after "bz" in bytes (0xc3 > 'z').
        let kv = filled(&["bz", "a", "b\u{e9}", "b", "ba", "c", "b/1"], 1);
        let page = kv.scan(&KeyRange::Prefix("b".into()), None, 100);
        assert_eq!(keys_of(&page), ["b", "b/1", "ba", "bz", "b\u{e9}"]);
        assert_eq!(page.next_after, None);
        assert_eq!(kv.count(&KeyRange::Prefix("b".into())), 5);
        assert_eq!(kv.count(&KeyRange::Prefix(String::new())), 7);
        assert_eq!(kv.count(&KeyRange::Prefix("d".into())), 0);
        let between = KeyRange::Between {
            start: "b/".into(),
            end: Some("bz".into()),
        };
        assert_eq!(keys_of(&kv.scan(&between, None, 100)), ["b/1", "ba"]);
        let open = KeyRange::Between {
            start: "bz".into(),
            end: None,
        };
        assert_eq!(keys_of(&kv.scan(&open, None, 100)), ["bz", "b\u{e9}", "c"]);
    }

    #[test]
    fn scan_pages_follow_the_continuation_without_gaps_or_repeats() {
        let names: Vec<String> = (0..25).map(|i| format!("k{i:03}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let kv = filled(&refs, 3);
        let range = KeyRange::Prefix("k".into());
        let (mut seen, mut after) = (Vec::new(), None::<String>);
        for _ in 0..10 {
            let page = kv.scan(&range, after.as_deref(), 7);
            assert!(page.entries.len() <= 7);
            seen.extend(page.entries.iter().map(|(k, _)| k.clone()));
            after = page.next_after;
            if after.is_none() {
                break;
            }
        }
        assert_eq!(seen, names);
        // A continuation key that no longer exists (deleted meanwhile) still works.
        let page = kv.scan(&range, Some("k0105"), 2);
        assert_eq!(keys_of(&page), ["k011", "k012"]);
        assert_eq!(page.next_after.as_deref(), Some("k012"));
        // A continuation before the range's start does not widen it.
        assert_eq!(keys_of(&kv.scan(&range, Some("a"), 1)), ["k000"]);
    }

    #[test]
    fn scan_is_bounded_in_reply_bytes_and_entries_but_always_progresses() {
        let value_bytes = 300 * 1024;
        let kv = filled(&["a", "b", "c", "d", "e"], value_bytes);
        let range = KeyRange::Prefix(String::new());
        let page = kv.scan(&range, None, MAX_SCAN_LIMIT);
        let bytes: usize = page.entries.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert_eq!(keys_of(&page), ["a", "b", "c"]);
        assert!(bytes <= MAX_SCAN_REPLY_BYTES);
        assert_eq!(page.next_after.as_deref(), Some("c"));
        // An entry larger than the bound alone still comes back, one per page.
        let huge = filled(&["x", "y"], MAX_SCAN_REPLY_BYTES + 1);
        let page = huge.scan(&range, None, 10);
        assert_eq!(keys_of(&page), ["x"]);
        assert_eq!(page.next_after.as_deref(), Some("x"));
        // Limits are clamped: 0 means one entry, huge means MAX_SCAN_LIMIT.
        assert_eq!(kv.scan(&range, None, 0).entries.len(), 1);
        let many: Vec<String> = (0..MAX_SCAN_LIMIT + 5).map(|i| format!("{i:06}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let page = filled(&refs, 0).scan(&range, None, usize::MAX);
        assert_eq!(page.entries.len(), MAX_SCAN_LIMIT);
        assert!(page.next_after.is_some());
    }

    #[test]
    fn a_clone_is_a_frozen_view_and_round_trips_through_serde() {
        let mut kv = filled(&["a", "b"], 2);
        let frozen = kv.clone();
        kv.apply(10, &put(1, 10, "c", "x"));
        assert_eq!(frozen.len(), 2);
        assert_eq!(kv.len(), 3);
        assert!(frozen.is_consistent(9) && kv.is_consistent(10));
        let bytes = bincode::serialize(&kv).unwrap();
        assert_eq!(bincode::deserialize::<KvState>(&bytes).unwrap(), kv);
    }

    /// The format-2 encoding (revisions, FNV digest) of `kv`, as the previous release wrote it;
    /// `lie` changes one key's mod_revision or the digest.
    fn format_2(kv: &KvState, mod_revision_lie: u64, digest_lie: u64) -> Vec<u8> {
        type Entry2 = (String, serde_bytes::ByteBuf, u64, u64, u64);
        let entries: Vec<Entry2> = kv
            .map
            .iter()
            .map(|(k, e)| {
                let m = e.meta;
                let value = serde_bytes::ByteBuf::from(e.value.to_vec());
                let mod_revision = m.mod_revision + mod_revision_lie;
                (
                    k.to_string(),
                    value,
                    m.create_revision,
                    mod_revision,
                    m.version,
                )
            })
            .collect();
        let digest = kv.map.iter().fold(0, |d, (k, e)| d ^ fnv_entry_hash(k, e)) ^ digest_lie;
        let sessions: std::collections::BTreeMap<u64, Session> =
            kv.sessions.iter().map(|(k, v)| (*k, v.clone())).collect();
        let age: std::collections::BTreeSet<(Slot, u64)> = kv.session_age.iter().copied().collect();
        let head = (FORMAT_MARK, FORMAT_REVISIONS, kv.revision, entries);
        let tail = (sessions, age, kv.max_sessions, digest, kv.session_digest);
        bincode::serialize(&(head, tail)).unwrap()
    }

    #[test]
    fn format_2_with_the_fnv_digest_still_loads_and_lies_do_not() {
        let mut kv = filled(&["b", "a", "c"], 4);
        kv.apply(9, &delete(1, 9, "b"));
        let decoded: KvState = bincode::deserialize(&format_2(&kv, 0, 0)).unwrap();
        assert_eq!(decoded, kv);
        assert_eq!(decoded.digest(), kv.digest());
        assert!(decoded.is_consistent(9));
        let wrong_digest = bincode::deserialize::<KvState>(&format_2(&kv, 0, 1));
        assert!(wrong_digest.unwrap_err().to_string().contains("digest"));
        // A mod_revision beyond the store's revision (the digest made to match) is refused.
        let future = bincode::deserialize::<KvState>(&format_2(&kv, 100, 0));
        assert!(future.unwrap_err().to_string().contains("revisions"));
        // And the current format refuses a flipped digest too.
        let mut bytes = bincode::serialize(&kv).unwrap();
        let digest_at = bytes.len() - 16;
        bytes[digest_at] ^= 1;
        let err = bincode::deserialize::<KvState>(&bytes).unwrap_err();
        assert!(err.to_string().contains("digest"), "{err}");
    }

    /// Snapshot files written before the ordered map (std `HashMap`/`BTreeSet`) still load.
    #[test]
    fn the_encoding_of_the_hash_map_version_still_decodes() {
        #[derive(Serialize)]
        struct Old {
            map: std::collections::HashMap<String, serde_bytes::ByteBuf>,
            sessions: std::collections::HashMap<u64, Session>,
            session_age: std::collections::BTreeSet<(Slot, u64)>,
            max_sessions: usize,
            digest: u64,
            session_digest: u64,
        }
        let kv = filled(&["b", "a", "c"], 4);
        let old = Old {
            map: kv
                .entries()
                .map(|(k, v)| (k.to_owned(), serde_bytes::ByteBuf::from(v.to_vec())))
                .collect(),
            sessions: kv.sessions.iter().map(|(k, v)| (*k, v.clone())).collect(),
            session_age: kv.session_age.iter().copied().collect(),
            max_sessions: kv.max_sessions,
            digest: kv.entries().fold(0, |d, (k, v)| d ^ old_entry_hash(k, v)),
            session_digest: kv.session_digest,
        };
        let encoded = bincode::serialize(&old).unwrap();
        let decoded: KvState = bincode::deserialize(&encoded).unwrap();
        assert!(decoded.entries().eq(kv.entries()));
        assert_eq!(decoded.sessions, kv.sessions);
        assert_eq!(decoded.revision(), 0);
        assert_eq!(
            decoded.get_meta("a").map(|(_, m)| m),
            Some(KeyMeta {
                create_revision: 0,
                mod_revision: 0,
                version: 1
            })
        );
        assert!(decoded.is_consistent(10));
        // A digest that does not match the older hash does not decode.
        let mut lying = old;
        lying.digest ^= 1;
        let err = bincode::deserialize::<KvState>(&bincode::serialize(&lying).unwrap());
        assert!(err.unwrap_err().to_string().contains("digest"));
        // A map length the input does not hold ends in an error, not an allocation.
        let mut truncated = encoded.clone();
        truncated[..8].copy_from_slice(&(u64::MAX - 1).to_le_bytes());
        assert!(bincode::deserialize::<KvState>(&truncated).is_err());
    }
}

#[cfg(test)]
mod txn_tests {
    use super::*;
    use crate::types::{CmpOp, MAX_TXN_COMPARES, MAX_TXN_OPS};

    /// Command `seq` of client 1 (the other test modules use these too).
    pub(super) fn cmd(seq: u64, op: Op) -> Command {
        Command {
            id: CommandId { client_id: 1, seq },
            op,
        }
    }

    /// A state with client 1's session open (slot 1).
    pub(super) fn state() -> KvState {
        let mut kv = KvState::new(10);
        kv.apply(1, &cmd(1, Op::Register));
        kv
    }

    pub(super) fn put_op(key: &str, value: &str) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    fn txn_outcome(applied: Applied) -> TxnOutcome {
        match applied {
            Applied::Fresh(Outcome::Txn(t)) | Applied::Duplicate(Outcome::Txn(t)) => t,
            other => panic!("not a transaction outcome: {other:?}"),
        }
    }

    fn meta(kv: &KvState, key: &str) -> Option<KeyMeta> {
        kv.get_meta(key).map(|(_, m)| m)
    }

    #[test]
    fn revisions_and_versions_follow_etcd() {
        let mut kv = state();
        assert_eq!(kv.revision(), 0, "a registration changes no key");
        kv.apply(2, &cmd(2, put_op("a", "1")));
        kv.apply(3, &cmd(3, put_op("b", "1")));
        kv.apply(4, &cmd(4, put_op("a", "2")));
        assert_eq!(kv.revision(), 3);
        let a = KeyMeta {
            create_revision: 1,
            mod_revision: 3,
            version: 2,
        };
        assert_eq!(meta(&kv, "a"), Some(a));
        // Deleting nothing takes no revision; deleting takes one and forgets the key.
        kv.apply(5, &cmd(5, Op::Delete { key: "zz".into() }));
        assert_eq!(kv.revision(), 3);
        kv.apply(6, &cmd(6, Op::Delete { key: "a".into() }));
        assert_eq!((kv.revision(), meta(&kv, "a")), (4, None));
        // Created again: version 1, new create revision.
        kv.apply(7, &cmd(7, put_op("a", "3")));
        let again = KeyMeta {
            create_revision: 5,
            mod_revision: 5,
            version: 1,
        };
        assert_eq!(meta(&kv, "a"), Some(again));
        assert!(kv.is_consistent(7));
        let bytes = bincode::serialize(&kv).unwrap();
        let decoded: KvState = bincode::deserialize(&bytes).unwrap();
        assert_eq!(decoded, kv);
        assert!(decoded.is_consistent(7));
    }

    #[test]
    fn a_txn_runs_the_branch_its_compares_choose_in_one_revision() {
        let mut kv = state();
        kv.apply(2, &cmd(2, put_op("k1", "x")));
        let txn = Txn {
            compares: vec![
                Compare {
                    key: "k1".into(),
                    check: Check::Version(CmpOp::Eq, 1),
                },
                Compare {
                    key: "k1".into(),
                    check: Check::Value(CmpOp::Eq, b"x".to_vec()),
                },
                Compare {
                    key: "k3".into(),
                    check: Check::Absent,
                },
            ],
            success: vec![
                TxnOp::Put {
                    key: "k1".into(),
                    value: b"v".to_vec(),
                },
                TxnOp::Put {
                    key: "k2".into(),
                    value: b"w".to_vec(),
                },
                TxnOp::Get { key: "k1".into() },
            ],
            failure: vec![TxnOp::Get { key: "k1".into() }],
        };
        let done = txn_outcome(kv.apply(3, &cmd(3, Op::Txn(txn.clone()))));
        assert!(done.succeeded);
        assert_eq!(done.revision, 2, "all writes of one txn share one revision");
        assert_eq!(meta(&kv, "k2").map(|m| m.mod_revision), Some(2));
        let read = &done.results[2];
        let expected_meta = KeyMeta {
            create_revision: 1,
            mod_revision: 2,
            version: 2,
        };
        assert_eq!(
            read,
            &TxnResult::Get {
                value: Some(b"v".to_vec()),
                meta: Some(expected_meta)
            }
        );
        // Same txn again (new id): version is 2 now, so the failure branch reads only.
        let again = txn_outcome(kv.apply(4, &cmd(4, Op::Txn(txn))));
        assert!(!again.succeeded);
        assert_eq!(again.revision, 2, "a read-only branch takes no revision");
        assert_eq!(again.results.len(), 1);
        assert!(kv.is_consistent(4));
    }

    #[test]
    fn a_retried_txn_is_answered_not_applied_again() {
        let mut kv = state();
        let cas = Op::Txn(Txn::put_if(
            vec![Compare {
                key: "n".into(),
                check: Check::Absent,
            }],
            "n".into(),
            b"1".to_vec(),
        ));
        let first = txn_outcome(kv.apply(2, &cmd(2, cas.clone())));
        assert!(first.succeeded);
        let retry = kv.apply(3, &cmd(2, cas));
        assert_eq!(retry, Applied::Duplicate(Outcome::Txn(first)));
        assert_eq!(kv.revision(), 1);
        assert_eq!(meta(&kv, "n").map(|m| m.version), Some(1));
        // A retry of a reading txn gets the meta back but not the value (not kept).
        let read = Op::Txn(Txn {
            success: vec![TxnOp::Get { key: "n".into() }],
            ..Txn::default()
        });
        let fresh = txn_outcome(kv.apply(4, &cmd(3, read.clone())));
        let n_meta = meta(&kv, "n");
        let got = TxnResult::Get {
            value: Some(b"1".to_vec()),
            meta: n_meta,
        };
        assert_eq!(fresh.results, [got]);
        let again = txn_outcome(kv.apply(5, &cmd(3, read)));
        let kept = TxnResult::Get {
            value: None,
            meta: n_meta,
        };
        assert_eq!(again.results, [kept]);
        // Reads past the reply bound return meta alone.
        kv.apply(
            6,
            &cmd(4, put_op("big", &"x".repeat(MAX_TXN_READ_BYTES / 2 + 1))),
        );
        let two = Op::Txn(Txn {
            success: vec![TxnOp::Get { key: "big".into() }; 2],
            ..Txn::default()
        });
        let both = txn_outcome(kv.apply(7, &cmd(5, two)));
        let values: Vec<bool> = both
            .results
            .iter()
            .map(|r| {
                matches!(
                    r,
                    TxnResult::Get {
                        value: Some(_),
                        meta: Some(_)
                    }
                )
            })
            .collect();
        assert_eq!(values, [true, false]);
    }

    #[test]
    fn compares_on_absent_keys_and_orderings() {
        let mut kv = state();
        kv.apply(2, &cmd(2, put_op("k", "b")));
        let holds = |key: &str, check: Check| {
            kv.holds(&Compare {
                key: key.into(),
                check,
            })
        };
        assert!(holds("none", Check::Version(CmpOp::Eq, 0)));
        assert!(holds("none", Check::ModRevision(CmpOp::Lt, 1)));
        assert!(!holds("none", Check::Value(CmpOp::Ne, b"x".to_vec())));
        assert!(holds("k", Check::Value(CmpOp::Gt, b"a".to_vec())));
        assert!(holds("k", Check::Value(CmpOp::Lt, b"c".to_vec())));
        assert!(holds("k", Check::Version(CmpOp::Gt, 0)));
        assert!(holds("k", Check::ModRevision(CmpOp::Eq, 1)));
        assert!(holds("k", Check::Exists) && !holds("k", Check::Absent));
    }

    #[test]
    fn txn_bounds_are_checked() {
        let compare = Compare {
            key: "k".into(),
            check: Check::Exists,
        };
        let get = TxnOp::Get { key: "k".into() };
        let many_compares = Txn {
            compares: vec![compare; MAX_TXN_COMPARES + 1],
            ..Txn::default()
        };
        assert!(matches!(
            many_compares.check(1024),
            Err(crate::types::InvalidInput::TxnTooLarge { .. })
        ));
        let many_ops = Txn {
            failure: vec![get; MAX_TXN_OPS + 1],
            ..Txn::default()
        };
        assert!(many_ops.check(1024).is_err());
        let big_value = Txn::put_if(vec![], "k".into(), vec![0; 2048]);
        assert!(big_value.check(1024).is_err());
        let empty_key = Txn::delete_if(vec![], String::new());
        assert!(empty_key.check(1024).is_err());
        let many_bytes = Txn {
            success: (0..100)
                .map(|i| TxnOp::Put {
                    key: format!("k{i}"),
                    value: vec![0; 60 * 1024],
                })
                .collect(),
            ..Txn::default()
        };
        assert!(
            many_bytes.check(1024 * 1024).is_err(),
            "6 MB over the 2 MiB bound"
        );
        assert!(Txn::put_if(vec![], "k".into(), b"v".to_vec())
            .check(1024)
            .is_ok());
    }
}

#[cfg(test)]
mod event_tests {
    use super::txn_tests::{cmd, put_op};
    use super::*;
    use crate::types::CmpOp;

    /// (kind, key, value, revision) of each event, for short assertions.
    fn summary(batch: &EventBatch) -> Vec<(EventKind, &str, &[u8], u64)> {
        batch
            .events
            .iter()
            .map(|e| (e.kind, e.key.as_str(), e.value.as_slice(), e.revision))
            .collect()
    }

    #[test]
    fn every_applied_write_records_one_event_in_revision_order() {
        use EventKind::{Delete, Put};
        let mut kv = KvState::new(10);
        kv.apply(1, &cmd(1, Op::Register));
        kv.apply(2, &cmd(2, put_op("a", "1")));
        kv.apply(3, &cmd(3, put_op("a", "2")));
        kv.apply(4, &cmd(4, Op::Delete { key: "nope".into() }));
        kv.apply(5, &cmd(5, Op::Delete { key: "a".into() }));
        let txn = Txn {
            compares: vec![Compare {
                key: "a".into(),
                check: Check::Absent,
            }],
            success: vec![
                TxnOp::Put {
                    key: "b".into(),
                    value: b"x".to_vec(),
                },
                TxnOp::Get { key: "b".into() },
                TxnOp::Put {
                    key: "c".into(),
                    value: b"y".to_vec(),
                },
                TxnOp::Delete { key: "b".into() },
                TxnOp::Delete { key: "zz".into() },
            ],
            failure: vec![],
        };
        kv.apply(6, &cmd(6, Op::Txn(txn.clone())));
        // A retry is answered from the session table: no second set of events.
        kv.apply(7, &cmd(6, Op::Txn(txn)));
        let batch = kv.take_events();
        assert_eq!(batch.reset_at, None);
        assert_eq!(
            summary(&batch),
            [
                (Put, "a", &b"1"[..], 1),
                (Put, "a", b"2", 2),
                (Delete, "a", b"", 3),
                (Put, "b", b"x", 4),
                (Put, "c", b"y", 4),
                (Delete, "b", b"", 4),
            ]
        );
        let metas: Vec<KeyMeta> = batch.events.iter().map(|e| e.meta).collect();
        let meta = |create_revision, mod_revision, version| KeyMeta {
            create_revision,
            mod_revision,
            version,
        };
        // A put carries the meta after it, a delete the meta the key had.
        assert_eq!(
            metas,
            [
                meta(1, 1, 1),
                meta(1, 2, 2),
                meta(1, 2, 2),
                meta(4, 4, 1),
                meta(4, 4, 1),
                meta(4, 4, 1)
            ]
        );
        assert_eq!(kv.revision(), 4);
        assert!(kv.take_events().is_empty(), "drained");
    }

    #[test]
    fn reads_and_failed_conditions_record_nothing() {
        let mut kv = KvState::new(10);
        kv.apply(1, &cmd(1, Op::Register));
        let failed = Txn::put_if(
            vec![Compare {
                key: "k".into(),
                check: Check::Version(CmpOp::Eq, 7),
            }],
            "k".into(),
            b"v".to_vec(),
        );
        kv.apply(2, &cmd(2, Op::Txn(failed)));
        let read = Txn {
            success: vec![TxnOp::Get { key: "k".into() }],
            ..Txn::default()
        };
        kv.apply(3, &cmd(3, Op::Txn(read)));
        // An unregistered session's write is refused: no event either.
        let stranger = Command {
            id: CommandId {
                client_id: 99,
                seq: 1,
            },
            op: put_op("k", "v"),
        };
        assert_eq!(kv.apply(4, &stranger), Applied::Expired);
        assert!(kv.take_events().is_empty());
        assert_eq!(kv.revision(), 0);
    }

    #[test]
    fn events_are_not_state() {
        let mut kv = KvState::new(10);
        kv.apply(1, &cmd(1, Op::Register));
        kv.apply(2, &cmd(2, put_op("a", "1")));
        let mut drained = kv.clone();
        // A clone (a read view, a snapshot) carries no events; equality and the digest
        // ignore them; the encoding does not hold them.
        assert!(drained.take_events().is_empty());
        assert_eq!(drained, kv);
        assert_eq!(drained.digest(), kv.digest());
        let bytes = bincode::serialize(&kv).unwrap();
        let mut decoded: KvState = bincode::deserialize(&bytes).unwrap();
        assert!(decoded.take_events().is_empty());
        assert_eq!(bytes, bincode::serialize(&drained).unwrap());
        // A loaded state's history starts after its revision.
        decoded.reset_events();
        assert_eq!(decoded.take_events().reset_at, Some(1));
        assert_eq!(kv.take_events().events.len(), 1);
    }
}

#[cfg(test)]
mod lease_tests {
    use super::txn_tests::{cmd, state};
    use super::*;

    fn outcome(applied: Applied) -> Outcome {
        match applied {
            Applied::Fresh(o) | Applied::Duplicate(o) => o,
            other => panic!("not applied: {other:?}"),
        }
    }

    fn grant(kv: &mut KvState, seq: u64, ttl_ms: u64) -> LeaseId {
        match outcome(kv.apply(seq, &cmd(seq, Op::LeaseGrant { ttl_ms }))) {
            Outcome::LeaseGranted { id, .. } => id,
            other => panic!("{other:?}"),
        }
    }

    fn put_leased(key: &str, lease: LeaseId) -> Op {
        Op::Txn(Txn {
            compares: vec![],
            success: vec![TxnOp::PutLeased {
                key: key.into(),
                value: b"v".to_vec(),
                lease,
            }],
            failure: vec![],
        })
    }

    fn round_trip(kv: &KvState) -> KvState {
        let bytes = bincode::serialize(kv).unwrap();
        bincode::deserialize(&bytes).unwrap()
    }

    #[test]
    fn a_revoke_deletes_the_leased_keys_at_one_revision_and_only_them() {
        let mut kv = state();
        let digest_before = kv.digest();
        let lease = grant(&mut kv, 2, 5_000);
        assert_eq!(lease, LeaseId(1));
        assert_eq!(kv.revision(), 0, "a grant changes no key");
        assert_ne!(
            kv.digest(),
            digest_before,
            "the lease table is in the digest"
        );
        kv.apply(3, &cmd(3, put_leased("a", lease)));
        kv.apply(4, &cmd(4, put_leased("b", lease)));
        kv.apply(5, &cmd(5, put_leased("c", lease)));
        // A plain put takes c off the lease: it survives the revoke.
        let plain = Op::Put {
            key: "c".into(),
            value: b"mine".to_vec(),
        };
        kv.apply(6, &cmd(6, plain));
        assert_eq!(kv.leases().lease_of("c"), None);
        assert!(kv.is_consistent(6));
        // A snapshot keeps the leases (format 4) and loads back equal.
        let loaded = round_trip(&kv);
        assert_eq!(loaded, kv);
        assert_eq!(loaded.digest(), kv.digest());
        assert!(loaded.is_consistent(6));
        kv.take_events();
        let revoked = outcome(kv.apply(7, &cmd(7, Op::LeaseRevoke { id: lease })));
        assert_eq!(
            revoked,
            Outcome::LeaseRevoked {
                found: true,
                deleted_keys: 2,
                revision: 5
            }
        );
        assert_eq!((kv.get("a"), kv.get("b")), (None, None));
        assert_eq!(kv.get("c"), Some(&b"mine"[..]));
        let events = kv.take_events().events;
        let deletes: Vec<(&str, u64)> = events
            .iter()
            .map(|e| {
                assert_eq!(e.kind, crate::watch::EventKind::Delete);
                (e.key.as_str(), e.revision)
            })
            .collect();
        assert_eq!(deletes, [("a", 5), ("b", 5)]);
        // Gone for good: a second revoke, an expiry and a leased put find nothing.
        let again = outcome(kv.apply(8, &cmd(8, Op::LeaseRevoke { id: lease })));
        assert!(matches!(again, Outcome::LeaseRevoked { found: false, .. }));
        let expire = Command {
            id: CommandId {
                client_id: crate::leases::SYSTEM_CLIENT_ID,
                seq: 1,
            },
            op: Op::LeaseExpire { id: lease },
        };
        assert!(matches!(
            outcome(kv.apply(9, &expire)),
            Outcome::LeaseRevoked { found: false, .. }
        ));
        assert_eq!(
            outcome(kv.apply(10, &cmd(9, put_leased("d", lease)))),
            Outcome::LeaseFailed(LeaseError::NotFound(lease))
        );
        assert_eq!(kv.get("d"), None, "a refused transaction writes nothing");
        assert_eq!(kv.revision(), 5);
        assert!(kv.is_consistent(10));
    }

    #[test]
    fn an_expiry_needs_no_session_and_ids_are_never_reused() {
        let mut kv = state();
        let first = grant(&mut kv, 2, 1_000);
        kv.apply(3, &cmd(3, put_leased("k", first)));
        let expire = Command {
            id: CommandId {
                client_id: crate::leases::SYSTEM_CLIENT_ID,
                seq: first.0,
            },
            op: Op::LeaseExpire { id: first },
        };
        let sessions = kv.sessions_len();
        assert!(matches!(
            outcome(kv.apply(4, &expire)),
            Outcome::LeaseRevoked {
                found: true,
                deleted_keys: 1,
                ..
            }
        ));
        assert_eq!(
            kv.sessions_len(),
            sessions,
            "no session for the leader's command"
        );
        assert_eq!(kv.get("k"), None);
        assert_eq!(grant(&mut kv, 5, 1_000), LeaseId(2));
        // A retried grant is answered from the session table: same id, no second lease.
        let retried = outcome(kv.apply(6, &cmd(5, Op::LeaseGrant { ttl_ms: 1_000 })));
        assert!(matches!(
            retried,
            Outcome::LeaseGranted { id: LeaseId(2), .. }
        ));
        assert_eq!(kv.leases().len(), 1);
        // A TTL out of bounds is refused at apply too (a replica never trusts the log).
        assert!(matches!(
            outcome(kv.apply(7, &cmd(6, Op::LeaseGrant { ttl_ms: 10 }))),
            Outcome::LeaseFailed(LeaseError::BadTtl { ttl_ms: 10 })
        ));
    }

    #[test]
    fn states_without_leases_keep_the_older_snapshot_format_and_digest() {
        let mut kv = state();
        kv.apply(
            2,
            &cmd(
                2,
                Op::Put {
                    key: "a".into(),
                    value: b"1".to_vec(),
                },
            ),
        );
        let bytes = bincode::serialize(&kv).unwrap();
        let format: (u64, u64) = bincode::deserialize(&bytes).unwrap();
        assert_eq!(format, (FORMAT_MARK, FORMAT_XXH3));
        let mut leased = kv.clone();
        grant(&mut leased, 3, 1_000);
        let bytes = bincode::serialize(&leased).unwrap();
        let format: (u64, u64) = bincode::deserialize(&bytes).unwrap();
        assert_eq!(format, (FORMAT_MARK, FORMAT_LEASES));
        // A lease table whose digest was tampered with is refused on load.
        let mut tampered: KvState = bincode::deserialize(&bytes).unwrap();
        tampered.leases = LeaseTable::decode(1, vec![(1, 2_000, vec![])], 0).unwrap();
        assert!(!tampered.leases_consistent());
    }
}
