//! Lazily dialled connections, one per server, shared by every session of a [`crate::Client`].

use paxoskv_service::{connect_kv, Dialer, KvRpcClient};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;
use tokio::sync::Mutex;

/// Sentinel for "no leader known".
const NO_LEADER: usize = usize::MAX;

/// Leader addresses learned from hints that are not in the configured list. Bounded so that a
/// misbehaving replica naming ever new addresses cannot grow the pool without end.
const MAX_LEARNED: usize = 8;

/// A live connection and the generation it was dialled in.
#[derive(Clone)]
pub(crate) struct Conn {
    pub(crate) rpc: KvRpcClient,
    generation: u64,
}

/// Why dialling failed.
pub(crate) struct DialError {
    /// The host answered that nothing listens there (no server running).
    pub(crate) refused: bool,
    /// TLS or the preamble refused us: a configuration problem, not worth retrying.
    pub(crate) security: bool,
    pub(crate) text: String,
}

struct Slot {
    addr: SocketAddr,
    conn: Mutex<Option<Conn>>,
}

/// The connection cache and the shared leader guess.
///
/// The first `configured` slots are the `--servers` list in order; later ones are leaders
/// named by hints, so a client given one follower can still reach the leader.
pub(crate) struct Pool {
    slots: RwLock<Vec<Arc<Slot>>>,
    configured: usize,
    leader: AtomicUsize,
    next_generation: AtomicU64,
    dialer: Dialer,
}

impl Pool {
    pub(crate) fn new(servers: &[SocketAddr], dialer: Dialer) -> Pool {
        let slots = servers.iter().map(|&addr| new_slot(addr)).collect();
        Pool {
            slots: RwLock::new(slots),
            configured: servers.len(),
            leader: AtomicUsize::new(NO_LEADER),
            next_generation: AtomicU64::new(1),
            dialer,
        }
    }

    /// Servers known: the configured ones plus learned leaders.
    pub(crate) fn len(&self) -> usize {
        self.read_slots().len()
    }

    /// Servers in the configured list.
    pub(crate) fn configured_len(&self) -> usize {
        self.configured
    }

    pub(crate) fn addr(&self, index: usize) -> SocketAddr {
        self.slot(index).addr
    }

    /// The configured addresses, in order.
    pub(crate) fn configured_addrs(&self) -> Vec<SocketAddr> {
        self.read_slots()[..self.configured]
            .iter()
            .map(|s| s.addr)
            .collect()
    }

    /// The index of `addr`, adding it as a learned server if it is new and there is room.
    pub(crate) fn index_of_or_learn(&self, addr: SocketAddr) -> Option<usize> {
        if let Some(i) = self.index_of(addr) {
            return Some(i);
        }
        let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = slots.iter().position(|s| s.addr == addr) {
            return Some(i);
        }
        if slots.len() >= self.configured + MAX_LEARNED {
            return None;
        }
        slots.push(new_slot(addr));
        Some(slots.len() - 1)
    }

    fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        self.read_slots().iter().position(|s| s.addr == addr)
    }

    /// The last known leader's index, if any.
    pub(crate) fn leader(&self) -> Option<usize> {
        match self.leader.load(Ordering::Relaxed) {
            NO_LEADER => None,
            i => Some(i),
        }
    }

    pub(crate) fn set_leader(&self, index: usize) {
        debug_assert!(index < self.len());
        self.leader.store(index, Ordering::Relaxed);
    }

    /// The cached connection to server `index`, dialling it first if needed. Waiting for
    /// another session's dial and dialling both end by `deadline`.
    pub(crate) async fn get(&self, index: usize, deadline: Instant) -> Result<Conn, DialError> {
        let slot = self.slot(index);
        let deadline = tokio::time::Instant::from_std(deadline);
        let mut guard = tokio::time::timeout_at(deadline, slot.conn.lock())
            .await
            .map_err(|_| DialError::other("timed out waiting for another connection attempt"))?;
        if let Some(conn) = guard.as_ref() {
            return Ok(conn.clone());
        }
        let rpc = match tokio::time::timeout_at(deadline, connect_kv(slot.addr, &self.dialer)).await
        {
            Ok(Ok(rpc)) => rpc,
            Ok(Err(e)) => return Err(DialError::from_io(&e)),
            Err(_) => return Err(DialError::other("connect timed out")),
        };
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let conn = Conn { rpc, generation };
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets a broken connection so the next call redials. Does nothing if another session
    /// already replaced it or is dialling right now (the slot is then empty anyway).
    pub(crate) fn drop_conn(&self, index: usize, broken: &Conn) {
        let slot = self.slot(index);
        if let Ok(mut guard) = slot.conn.try_lock() {
            if guard.as_ref().map(|c| c.generation) == Some(broken.generation) {
                *guard = None;
            }
        };
    }

    fn slot(&self, index: usize) -> Arc<Slot> {
        self.read_slots()[index].clone()
    }

    fn read_slots(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Slot>>> {
        // The lock only guards pushes of whole slots: a poisoned one is still consistent.
        self.slots.read().unwrap_or_else(PoisonError::into_inner)
    }
}

fn new_slot(addr: SocketAddr) -> Arc<Slot> {
    Arc::new(Slot {
        addr,
        conn: Mutex::new(None),
    })
}

impl DialError {
    fn other(text: &str) -> DialError {
        DialError {
            refused: false,
            security: false,
            text: text.to_string(),
        }
    }

    fn from_io(e: &io::Error) -> DialError {
        match paxoskv_service::tls::security_error(e) {
            // Already says what failed ("TLS handshake with ... failed: ...").
            Some(security) => DialError {
                refused: false,
                security: true,
                text: security.to_string(),
            },
            None => DialError {
                refused: e.kind() == io::ErrorKind::ConnectionRefused,
                security: false,
                text: format!("connect: {e}"),
            },
        }
    }
}
