//! The replicated map and the client session table that makes retries exactly-once.

use crate::types::{Command, CommandId, Op, Outcome, Slot};
use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::Bound;

/// The map itself, in key byte order. A persistent B-tree: cloning it is O(1) (the clone
/// shares every node until one side writes), so a snapshot or a read view costs the driver
/// nothing. Boxed slices, not `String`/`Vec`, save 16 bytes per entry.
type Map = OrdMap<Box<str>, Box<[u8]>>;

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
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvState {
    #[serde(with = "bytes_map")]
    map: Map,
    #[serde(with = "bounded::map")]
    sessions: OrdMap<u64, Session>,
    /// (last_slot, client_id) of every session, for deterministic oldest-first eviction.
    #[serde(with = "bounded::set")]
    session_age: OrdSet<(Slot, u64)>,
    max_sessions: usize,
    digest: u64,
    /// XOR of every session's hash, so replicas that disagree only on the session table
    /// (which decides what a retry does) show different digests too.
    session_digest: u64,
}

/// A summary: printing a million entries helps nobody.
impl fmt::Debug for KvState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvState")
            .field("keys", &self.map.len())
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
        self.map.get(key).map(|v| &**v)
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
        self.digest ^ self.session_digest.rotate_left(17)
    }

    /// Sessions held.
    pub fn sessions_len(&self) -> usize {
        self.sessions.len()
    }

    /// Iterates over all entries in key byte order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.map.iter().map(|(k, v)| (&**k, &**v))
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
            .map(|(k, v)| (&**k, &**v))
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
        if let Some(done) = self.already_applied(command.id) {
            return done;
        }
        let registers = matches!(command.op, Op::Register);
        if !registers && !self.sessions.contains_key(&command.id.client_id) {
            return Applied::Expired;
        }
        let outcome = self.apply_op(&command.op);
        self.remember(slot, command.id, outcome.clone());
        Applied::Fresh(outcome)
    }

    fn apply_op(&mut self, op: &Op) -> Outcome {
        match op {
            Op::Put { key, value } => {
                let old = self
                    .map
                    .insert(key.as_str().into(), value.as_slice().into());
                if let Some(old) = &old {
                    self.digest ^= entry_hash(key, old);
                }
                self.digest ^= entry_hash(key, value);
                Outcome::Put {
                    replaced: old.is_some(),
                }
            }
            Op::Delete { key } => {
                let old = self.map.remove(key.as_str());
                if let Some(old) = &old {
                    self.digest ^= entry_hash(key, old);
                }
                Outcome::Delete {
                    existed: old.is_some(),
                }
            }
            Op::Register => Outcome::Registered,
        }
    }

    /// True if this state (from a peer's snapshot or the disk, so untrusted) is one that
    /// applying commands up to `through` can produce: the session table and its age index
    /// agree and respect the bound, no session is newer than `through`, and the digest
    /// matches the map. Anything else would trip this type's own invariants later.
    pub fn is_consistent(&self, through: Slot) -> bool {
        let sessions_ok = self.max_sessions > 0
            && self.sessions.len() <= self.max_sessions
            && self.session_age.len() == self.sessions.len()
            && self.sessions.iter().all(|(&id, s)| {
                s.last_slot <= through && self.session_age.contains(&(s.last_slot, id))
            });
        let digest = self.map.iter().fold(0, |d, (k, v)| d ^ entry_hash(k, v));
        let session_digest = self
            .sessions
            .iter()
            .fold(0, |d, (&id, s)| d ^ session_hash(id, s));
        sessions_ok && digest == self.digest && session_digest == self.session_digest
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

/// Encodes map values as byte strings rather than sequences of numbers: a snapshot of a
/// million keys loads several times faster.
mod bytes_map {
    use super::Map;
    use serde::de::{MapAccess, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    pub fn serialize<S: Serializer>(map: &Map, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(map.iter().map(|(k, v)| (k, serde_bytes::Bytes::new(v))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Map, D::Error> {
        d.deserialize_map(MapVisitor)
    }

    struct MapVisitor;

    impl<'de> Visitor<'de> for MapVisitor {
        type Value = Map;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of string keys to byte values")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut map = Map::new();
            while let Some((k, v)) = access.next_entry::<String, serde_bytes::ByteBuf>()? {
                map.insert(k.into_boxed_str(), v.into_vec().into_boxed_slice());
            }
            Ok(map)
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

fn session_hash(client_id: u64, session: &Session) -> u64 {
    let mut bytes = [0u8; 24];
    bytes[..8].copy_from_slice(&client_id.to_le_bytes());
    bytes[8..16].copy_from_slice(&session.last_seq.to_le_bytes());
    bytes[16..].copy_from_slice(&session.last_slot.to_le_bytes());
    fnv_bytes(&[&bytes])
}

/// FNV-1a over key and value; XOR of these over all entries is order-independent.
fn entry_hash(key: &str, value: &[u8]) -> u64 {
    fnv_bytes(&[key.as_bytes(), &[0xff], value])
}

/// FNV-1a over the parts in order, finalized so that similar inputs spread over all bits
/// before XOR-ing.
fn fnv_bytes(parts: &[&[u8]]) -> u64 {
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
        assert_eq!(a.digest(), b.digest());
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
            digest: kv.digest,
            session_digest: kv.session_digest,
        };
        let decoded: KvState = bincode::deserialize(&bincode::serialize(&old).unwrap()).unwrap();
        assert_eq!(decoded, kv);
        assert!(decoded.is_consistent(10));
    }
}
