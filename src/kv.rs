//! The replicated map and the client session table that makes retries exactly-once.

use crate::types::{Command, CommandId, Op, Outcome, Slot};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};

/// The map itself: boxed slices, not `String`/`Vec`, save 16 bytes per entry.
type Map = HashMap<Box<str>, Box<[u8]>>;

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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvState {
    #[serde(with = "bytes_map")]
    map: Map,
    sessions: HashMap<u64, Session>,
    /// (last_slot, client_id) of every session, for deterministic oldest-first eviction.
    session_age: BTreeSet<(Slot, u64)>,
    max_sessions: usize,
    digest: u64,
    /// XOR of every session's hash, so replicas that disagree only on the session table
    /// (which decides what a retry does) show different digests too.
    session_digest: u64,
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

    /// Iterates over all entries (unordered).
    pub fn entries(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.map.iter().map(|(k, v)| (&**k, &**v))
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
            let Some((_, client_id)) = self.session_age.pop_first() else {
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
    use std::collections::HashMap;
    use std::fmt;

    /// Entries preallocated at most, whatever the (untrusted) length prefix says.
    const MAX_PREALLOCATED_ENTRIES: usize = 1 << 22;

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
            let hint = access
                .size_hint()
                .unwrap_or(0)
                .min(MAX_PREALLOCATED_ENTRIES);
            let mut map = HashMap::with_capacity(hint);
            while let Some((k, v)) = access.next_entry::<String, serde_bytes::ByteBuf>()? {
                map.insert(k.into_boxed_str(), v.into_vec().into_boxed_slice());
            }
            Ok(map)
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
}
