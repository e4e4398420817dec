//! Tunables of one replica, all in ticks, counts and bytes.

use crate::types::ReplicaId;

/// Configuration of one replica core.
#[derive(Clone, Debug)]
pub struct Config {
    /// This replica's id, `0..replicas`.
    pub id: ReplicaId,
    /// Cluster size (odd numbers make sense; at most 64).
    pub replicas: u32,
    /// Leader heartbeat period.
    pub heartbeat_ticks: u64,
    /// A follower that hears no leader for a random time in this range starts an election.
    pub election_timeout_min_ticks: u64,
    /// Upper end of the election timeout range.
    pub election_timeout_max_ticks: u64,
    /// Unanswered requests are sent again after this many ticks.
    pub resend_ticks: u64,
    /// Slots proposed but not yet chosen, at most.
    pub max_inflight_slots: usize,
    /// Bytes packed into one slot, at most (a single larger command gets a slot alone).
    pub max_batch_bytes: usize,
    /// Commands packed into one slot, at most.
    pub max_batch_commands: usize,
    /// Commands waiting for a slot, at most; more get `Busy`.
    pub max_pending_commands: usize,
    /// Bytes of commands waiting for a slot (`Op::size_bytes`), at most; more get `Busy`.
    /// One command is always accepted into an empty queue, so this never starves a command
    /// that is itself larger.
    pub max_pending_bytes: usize,
    /// Linearizable reads waiting for confirmation, at most; more get `Busy`.
    pub max_pending_reads: usize,
    /// Chosen values per catch-up answer, at most.
    pub fetch_max_entries: u32,
    /// Bytes of chosen values per catch-up answer, at most.
    pub fetch_max_bytes: usize,
    /// Client sessions remembered for exactly-once, at most.
    pub max_sessions: usize,
    /// Bytes of chosen and applied log entries kept in memory for peers that are slightly
    /// behind, at most: older ones are dropped (a peer behind them gets a snapshot). The
    /// runtime's own compaction after a durable snapshot may drop more, never less.
    pub max_log_tail_bytes: usize,
    /// Bytes of log entries above the chosen prefix (accepted, not yet applied), at most: a
    /// leader opens no new slot beyond it, and an acceptor refuses an accept for a new slot
    /// beyond it unless the slot is within `max_inflight_slots` of its chosen prefix (so
    /// progress is always possible). Bounds the pipeline in bytes as `max_open_slots` does
    /// in slots.
    pub max_open_bytes: usize,
    /// Largest value a put may carry, checked on the accept path too (an accept or chosen
    /// entry carrying more, a bad key, or a batch over `max_batch_bytes` /
    /// `max_batch_commands` is refused and never applied).
    pub max_value_bytes: usize,
    /// Slots above the chosen prefix a replica accepts into its log, at most: an accept
    /// further ahead is refused (the follower catches up by fetching first), a leader stops
    /// opening new slots further ahead, and a promise reporting entries further ahead of its
    /// sender's chosen prefix is refused. Bounds the log and a leader's recovery range
    /// whatever peers send. Must be at least `max_inflight_slots`.
    pub max_open_slots: u64,
    /// Seed of the randomized election timeouts.
    pub seed: u64,
    /// Milliseconds one tick stands for (the runtime's tick period): converts lease TTLs
    /// into ticks of the leader's lease clock.
    pub tick_ms: u64,
    /// Lease expiries a leader proposes per tick, at most (a mass expiry spreads out).
    pub max_lease_expiries_per_tick: usize,
    /// TEST ONLY: accept `accept`s below the promise (a deliberately broken acceptor), so the
    /// simulator can prove it catches the classic Paxos bug. Never set it anywhere else; it
    /// exists only with the `broken-acceptor` cargo feature.
    #[cfg(feature = "broken-acceptor")]
    #[doc(hidden)]
    pub unsafe_skip_promise_check: bool,
    /// TEST ONLY: the own-promise bug of issue 9 put back: requests under the replica's own
    /// ballot leave before `Promised(b)` is durable, and a candidate counts its own promise
    /// at once. The simulator must catch it. Exists only with the `broken-acceptor` feature.
    #[cfg(feature = "broken-acceptor")]
    #[doc(hidden)]
    pub unsafe_send_before_durable: bool,
}

impl Config {
    /// Defaults tuned for a 10 ms tick.
    pub fn new(id: ReplicaId, replicas: u32) -> Config {
        assert!((1..=crate::quorum::MAX_REPLICAS).contains(&replicas));
        assert!(
            id < replicas,
            "replica id {id} not below cluster size {replicas}"
        );
        Config {
            id,
            replicas,
            heartbeat_ticks: 5,
            election_timeout_min_ticks: 20,
            election_timeout_max_ticks: 40,
            resend_ticks: 3,
            max_inflight_slots: 16,
            max_batch_bytes: 256 * 1024,
            max_batch_commands: 4096,
            max_pending_commands: 50_000,
            // Measured with 64 clients of 1 MiB puts (nemesis/tests/flood_puts.rs): larger
            // queues only add latency and memory once the disk is the bottleneck.
            max_pending_bytes: 8 * 1024 * 1024,
            max_log_tail_bytes: 16 * 1024 * 1024,
            max_open_bytes: 32 * 1024 * 1024,
            max_value_bytes: crate::types::DEFAULT_MAX_VALUE_BYTES,
            max_pending_reads: 50_000,
            fetch_max_entries: 512,
            fetch_max_bytes: 8 * 1024 * 1024,
            max_sessions: 100_000,
            max_open_slots: 1024,
            seed: u64::from(id) + 1,
            tick_ms: 10,
            max_lease_expiries_per_tick: 64,
            #[cfg(feature = "broken-acceptor")]
            unsafe_skip_promise_check: false,
            #[cfg(feature = "broken-acceptor")]
            unsafe_send_before_durable: false,
        }
    }

    /// Ids of every other replica.
    pub fn peers(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        (0..self.replicas).filter(move |&r| r != self.id)
    }
}
