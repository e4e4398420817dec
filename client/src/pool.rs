//! Lazily dialled connections, one per server, shared by every session of a [`crate::Client`].

use paxoskv_service::{connect_kv, KvRpcClient};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;
use tokio::sync::Mutex;

/// Sentinel for "no leader known".
const NO_LEADER: usize = usize::MAX;

/// A live connection and the generation it was dialled in.
#[derive(Clone)]
pub(crate) struct Conn {
    pub(crate) rpc: KvRpcClient,
    generation: u64,
}

struct Slot {
    addr: SocketAddr,
    conn: Mutex<Option<Conn>>,
}

/// The connection cache and the shared leader guess.
pub(crate) struct Pool {
    slots: Vec<Slot>,
    leader: AtomicUsize,
    next_generation: AtomicU64,
}

impl Pool {
    pub(crate) fn new(servers: &[SocketAddr]) -> Pool {
        let slots = servers
            .iter()
            .map(|&addr| Slot {
                addr,
                conn: Mutex::new(None),
            })
            .collect();
        Pool {
            slots,
            leader: AtomicUsize::new(NO_LEADER),
            next_generation: AtomicU64::new(1),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn addr(&self, index: usize) -> SocketAddr {
        self.slots[index].addr
    }

    pub(crate) fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        self.slots.iter().position(|s| s.addr == addr)
    }

    /// The last known leader's index, if any.
    pub(crate) fn leader(&self) -> Option<usize> {
        match self.leader.load(Ordering::Relaxed) {
            NO_LEADER => None,
            i => Some(i),
        }
    }

    pub(crate) fn set_leader(&self, index: usize) {
        debug_assert!(index < self.slots.len());
        self.leader.store(index, Ordering::Relaxed);
    }

    /// The cached connection to server `index`, dialling it first if needed. Waiting for
    /// another session's dial and dialling both end by `deadline`.
    pub(crate) async fn get(&self, index: usize, deadline: Instant) -> Result<Conn, String> {
        let slot = &self.slots[index];
        let deadline = tokio::time::Instant::from_std(deadline);
        let mut guard = tokio::time::timeout_at(deadline, slot.conn.lock())
            .await
            .map_err(|_| "timed out waiting for another connection attempt".to_string())?;
        if let Some(conn) = guard.as_ref() {
            return Ok(conn.clone());
        }
        let rpc = match tokio::time::timeout_at(deadline, connect_kv(slot.addr)).await {
            Ok(Ok(rpc)) => rpc,
            Ok(Err(e)) => return Err(format!("connect: {e}")),
            Err(_) => return Err("connect timed out".to_string()),
        };
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let conn = Conn { rpc, generation };
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets a broken connection so the next call redials. Does nothing if another session
    /// already replaced it or is dialling right now (the slot is then empty anyway).
    pub(crate) fn drop_conn(&self, index: usize, broken: &Conn) {
        if let Ok(mut guard) = self.slots[index].conn.try_lock() {
            if guard.as_ref().map(|c| c.generation) == Some(broken.generation) {
                *guard = None;
            }
        }
    }
}
