//! Failure injection (`-f`): an acceptor that "crashes" for one message neither acts nor
//! answers, so the proposer hits its own timeout and carries on with the others.

use paxoskv_service::FailureStats;
use rand::Rng;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How acceptors fail.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FailMode {
    /// Never.
    Off,
    /// Each prepare/accept/learn is dropped with probability `rate`.
    Drop {
        /// Probability per message.
        rate: f64,
    },
    /// Each second, with probability `rate`, the acceptor goes silent for a random interval.
    Down {
        /// Probability per second of going down.
        rate: f64,
        /// Shortest silence.
        min_ms: u64,
        /// Longest silence.
        max_ms: u64,
    },
}

impl FailMode {
    /// Human-readable description for `status`.
    pub fn describe(&self) -> String {
        match self {
            FailMode::Off => "off".into(),
            FailMode::Drop { rate } => format!("drop {rate}"),
            FailMode::Down {
                rate,
                min_ms,
                max_ms,
            } => format!("down {rate} ({min_ms}-{max_ms} ms)"),
        }
    }
}

/// Shared failure state of one replica.
#[derive(Debug)]
pub struct FailureInjector {
    mode: FailMode,
    down: AtomicBool,
    dropped: AtomicU64,
    passed: AtomicU64,
    /// Partitions may be set through the client API (test clusters only).
    control_enabled: AtomicBool,
    /// Bit i set: drop all traffic to and from replica i.
    blocked_peers: AtomicU64,
}

impl FailureInjector {
    /// An injector in `mode`.
    pub fn new(mode: FailMode) -> Arc<FailureInjector> {
        Arc::new(FailureInjector {
            mode,
            down: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            passed: AtomicU64::new(0),
            control_enabled: AtomicBool::new(false),
            blocked_peers: AtomicU64::new(0),
        })
    }

    /// Allows [`FailureInjector::set_partition`] (off unless the server was started with
    /// `--enable-fault-control`).
    pub fn enable_control(&self) {
        self.control_enabled.store(true, Ordering::Relaxed);
    }

    /// Cuts this replica off from `peers` (both directions); an empty list heals.
    pub fn set_partition(&self, peers: &[u32]) -> Result<(), String> {
        if !self.control_enabled.load(Ordering::Relaxed) {
            return Err(
                "fault control is disabled (start the server with --enable-fault-control)".into(),
            );
        }
        let mut mask = 0u64;
        for &p in peers {
            if p >= 64 {
                return Err(format!("no replica {p}"));
            }
            mask |= 1 << p;
        }
        self.blocked_peers.store(mask, Ordering::Relaxed);
        Ok(())
    }

    /// True while traffic with `peer` is cut.
    pub fn blocks(&self, peer: u32) -> bool {
        peer < 64 && self.blocked_peers.load(Ordering::Relaxed) & (1 << peer) != 0
    }

    /// Decides the fate of one incoming Paxos message: true means drop it silently.
    pub fn should_drop(&self) -> bool {
        let drop = match self.mode {
            FailMode::Off => false,
            FailMode::Drop { rate } => rand::thread_rng().gen_bool(rate),
            FailMode::Down { .. } => self.down.load(Ordering::Relaxed),
        };
        let counter = if drop { &self.dropped } else { &self.passed };
        counter.fetch_add(1, Ordering::Relaxed);
        drop
    }

    /// Counters for `status`.
    pub fn stats(&self) -> FailureStats {
        FailureStats {
            dropped_messages: self.dropped.load(Ordering::Relaxed),
            passed_messages: self.passed.load(Ordering::Relaxed),
        }
    }

    /// The configured mode.
    pub fn mode(&self) -> FailMode {
        self.mode
    }

    /// Runs the "down" schedule until `shutdown` fires (returns at once in other modes).
    pub async fn run_down_schedule(
        self: Arc<Self>,
        replica: u32,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let FailMode::Down {
            rate,
            min_ms,
            max_ms,
        } = self.mode
        else {
            return;
        };
        loop {
            let (goes_down, silence_ms) = {
                let mut rng = rand::thread_rng();
                (
                    rng.gen_bool(rate),
                    rng.gen_range(min_ms..=max_ms.max(min_ms)),
                )
            };
            let wait = if goes_down {
                tracing::info!(
                    replica,
                    silence_ms,
                    "failure injection: acceptor goes silent"
                );
                self.down.store(true, Ordering::Relaxed);
                Duration::from_millis(silence_ms)
            } else {
                Duration::from_secs(1)
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            if goes_down {
                self.down.store(false, Ordering::Relaxed);
                tracing::info!(replica, "failure injection: acceptor is back");
            }
        }
    }
}
