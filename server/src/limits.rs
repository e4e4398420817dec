//! Connection-level bounds of one replica: how many connections a listener keeps (in all
//! and per source address), the process's file-descriptor limit, the frame limits each
//! service reads with, and rate-limited warnings so a flood cannot flood the log too.

use paxoskv_service::{FrameBudget, FrameLimits, KV_MAX_FRAME_BYTES, REPLICA_MAX_FRAME_BYTES};
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default cap on connections one listener keeps.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default cap on connections from one source address. A local five-replica cluster uses
/// two links per peer, so loopback peers need 8 per listener.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 512;
/// Default cap on requests one connection has in flight.
pub const DEFAULT_MAX_REQUESTS_PER_CONNECTION: usize = 1024;
/// File descriptors kept free of connections: log and snapshot files, peer links, the
/// listener, the runtime's own.
pub const FD_RESERVE_PER_PROCESS: u64 = 64;
/// File descriptors kept free per replica of the process (its files and peer links).
pub const FD_RESERVE_PER_REPLICA: u64 = 32;

/// Everything that bounds one replica's connections.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// Connections one listener keeps; more are closed at once.
    pub max_connections: usize,
    /// Connections one source address keeps; more are closed at once.
    pub max_connections_per_ip: usize,
    /// Requests served at once per connection; more wait in the transport.
    pub max_requests_per_connection: usize,
    /// Frame limits of the replica service.
    pub replica_frames: FrameLimits,
    /// Frame limits of the client service.
    pub kv_frames: FrameLimits,
    /// Bytes of frames being read at once, over every connection of the replica.
    pub frame_budget_bytes: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            max_requests_per_connection: DEFAULT_MAX_REQUESTS_PER_CONNECTION,
            replica_frames: FrameLimits::new(REPLICA_MAX_FRAME_BYTES),
            kv_frames: FrameLimits::new(KV_MAX_FRAME_BYTES),
            frame_budget_bytes: paxoskv_service::frames::DEFAULT_FRAME_BUDGET_BYTES,
        }
    }
}

impl ConnectionLimits {
    /// Sets the same timeouts on both services' frames.
    pub fn set_frame_timeouts(
        &mut self,
        frame_timeout_ms: u64,
        min_frame_rate_bytes_per_s: u64,
        idle_timeout_ms: u64,
    ) {
        for frames in [&mut self.replica_frames, &mut self.kv_frames] {
            frames.frame_timeout_ms = frame_timeout_ms;
            frames.min_frame_rate_bytes_per_s = min_frame_rate_bytes_per_s;
            frames.idle_timeout_ms = idle_timeout_ms;
        }
    }

    /// Checks that the limits make sense together.
    pub fn check(&self) -> Result<(), String> {
        if self.max_connections == 0 || self.max_connections_per_ip == 0 {
            return Err("connection caps must be at least 1".into());
        }
        if self.max_requests_per_connection == 0 {
            return Err("at least one request per connection must be allowed".into());
        }
        let budget = FrameBudget::new(self.frame_budget_bytes);
        self.replica_frames.check(&budget)?;
        self.kv_frames.check(&budget)
    }

    /// Cuts `max_connections` so that `replicas` listeners together stay below the file
    /// descriptor limit `fd_limit`, minus the reserve. Returns the cap that applies.
    pub fn fit_fd_limit(&mut self, fd_limit: u64, replicas: usize) -> usize {
        let replicas = replicas.max(1) as u64;
        let reserve = FD_RESERVE_PER_PROCESS + FD_RESERVE_PER_REPLICA * replicas;
        let per_listener = (fd_limit.saturating_sub(reserve) / replicas).max(1);
        let per_listener = usize::try_from(per_listener).unwrap_or(usize::MAX);
        self.max_connections = self.max_connections.min(per_listener);
        self.max_connections
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        } else {
            tracing::warn!(
                soft = limit.rlim_cur,
                hard = limit.rlim_max,
                error = %std::io::Error::last_os_error(),
                "cannot raise the open-file limit"
            );
        }
    }
    // rlim_t is u64 on Linux but not everywhere.
    #[allow(clippy::unnecessary_cast)]
    let soft = limit.rlim_cur as u64;
    Ok(soft)
}

/// Why a connection was closed at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Refused {
    /// The listener keeps its maximum already.
    #[error("connection cap of {max} reached")]
    ListenerFull {
        /// The cap.
        max: usize,
    },
    /// The source address keeps its maximum already.
    #[error("per-address connection cap of {max} reached")]
    AddressFull {
        /// The cap.
        max: usize,
    },
}

/// Counts one listener's open connections, in all and per source address.
#[derive(Clone, Debug)]
pub struct ConnectionCounter {
    inner: Arc<Mutex<Counts>>,
    max_connections: usize,
    max_per_ip: usize,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct ConnectionGuard {
    counter: ConnectionCounter,
    ip: IpAddr,
}

impl ConnectionCounter {
    /// A counter with these caps.
    pub fn new(max_connections: usize, max_per_ip: usize) -> ConnectionCounter {
        ConnectionCounter {
            inner: Arc::default(),
            max_connections,
            max_per_ip,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Plain counters: a panic elsewhere cannot leave them torn.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection from `ip` if both caps allow it.
    pub fn try_admit(&self, ip: IpAddr) -> Result<ConnectionGuard, Refused> {
        let mut counts = self.lock();
        if counts.total >= self.max_connections {
            return Err(Refused::ListenerFull {
                max: self.max_connections,
            });
        }
        let from_ip = counts.per_ip.entry(ip).or_insert(0);
        if *from_ip >= self.max_per_ip {
            return Err(Refused::AddressFull {
                max: self.max_per_ip,
            });
        }
        *from_ip += 1;
        counts.total += 1;
        Ok(ConnectionGuard {
            counter: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().total
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut counts = self.counter.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

/// Lets an event through at most once per interval per cause, and counts what it held back,
/// so a repeated failure writes one log line per second, not one per occurrence.
#[derive(Debug)]
pub struct LogLimiter<K> {
    interval: Duration,
    /// Per cause: when it was last let through, and occurrences held back since.
    causes: HashMap<K, (Instant, u64)>,
}

impl<K: Eq + Hash> LogLimiter<K> {
    /// A limiter letting each cause through once per `interval`.
    pub fn new(interval: Duration) -> LogLimiter<K> {
        LogLimiter {
            interval,
            causes: HashMap::new(),
        }
    }

    /// Records one occurrence of `cause` at `now`; `Some(held_back)` if it should be logged
    /// (with how many occurrences since the last line were not).
    pub fn allow(&mut self, cause: K, now: Instant) -> Option<u64> {
        match self.causes.get_mut(&cause) {
            Some((last, held_back)) if now.duration_since(*last) < self.interval => {
                *held_back += 1;
                None
            }
            Some((last, held_back)) => {
                let suppressed = *held_back;
                *last = now;
                *held_back = 0;
                Some(suppressed)
            }
            None => {
                self.causes.insert(cause, (now, 0));
                Some(0)
            }
        }
    }
}

/// Pause after a failed accept: short for one-off errors, growing while the process is out
/// of file descriptors or memory (retrying at once would only spin).
#[derive(Debug)]
pub struct AcceptBackoff {
    next_ms: u64,
}

/// First pause after a resource error.
const ACCEPT_BACKOFF_MIN_MS: u64 = 10;
/// Longest pause between accept attempts.
const ACCEPT_BACKOFF_MAX_MS: u64 = 1_000;

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff {
            next_ms: ACCEPT_BACKOFF_MIN_MS,
        }
    }
}

impl AcceptBackoff {
    /// The pause after a failure; doubles up to the maximum.
    pub fn failed(&mut self) -> Duration {
        let pause = Duration::from_millis(self.next_ms);
        self.next_ms = (self.next_ms * 2).min(ACCEPT_BACKOFF_MAX_MS);
        pause
    }

    /// An accept succeeded: the next failure starts short again.
    pub fn succeeded(&mut self) {
        self.next_ms = ACCEPT_BACKOFF_MIN_MS;
    }
}

/// Names an accept error's cause for rate-limited logging.
pub fn accept_error_cause(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EMFILE) => "out of file descriptors (process)",
        Some(libc::ENFILE) => "out of file descriptors (system)",
        Some(libc::ENOBUFS) | Some(libc::ENOMEM) => "out of memory",
        _ => "accept failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    }

    #[test]
    fn the_per_address_cap_holds_and_frees_on_drop() {
        let counter = ConnectionCounter::new(10, 2);
        let a = counter.try_admit(ip(2)).unwrap();
        let _b = counter.try_admit(ip(2)).unwrap();
        assert_eq!(
            counter.try_admit(ip(2)).unwrap_err(),
            Refused::AddressFull { max: 2 }
        );
        let _other = counter
            .try_admit(ip(1))
            .expect("other addresses still get in");
        drop(a);
        let _c = counter.try_admit(ip(2)).expect("a freed place is reused");
        assert_eq!(counter.open(), 3);
    }

    #[test]
    fn the_listener_cap_holds_over_all_addresses() {
        let counter = ConnectionCounter::new(3, 10);
        let guards: Vec<_> = (1..=3).map(|i| counter.try_admit(ip(i)).unwrap()).collect();
        assert_eq!(
            counter.try_admit(ip(9)).unwrap_err(),
            Refused::ListenerFull { max: 3 }
        );
        drop(guards);
        assert_eq!(counter.open(), 0);
        assert!(counter.lock().per_ip.is_empty(), "no entries left behind");
    }

    #[test]
    fn the_log_limiter_lets_one_line_per_interval_per_cause() {
        let mut limiter = LogLimiter::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(limiter.allow("emfile", t0), Some(0));
        for i in 1..100u64 {
            assert_eq!(
                limiter.allow("emfile", t0 + Duration::from_millis(i * 5)),
                None
            );
        }
        assert_eq!(
            limiter.allow("other", t0 + Duration::from_millis(10)),
            Some(0),
            "causes are limited separately"
        );
        assert_eq!(
            limiter.allow("emfile", t0 + Duration::from_millis(1_000)),
            Some(99),
            "the next line says how many were held back"
        );
        assert_eq!(
            limiter.allow("emfile", t0 + Duration::from_millis(1_001)),
            None
        );
    }

    #[test]
    fn the_accept_backoff_grows_and_resets() {
        let mut backoff = AcceptBackoff::default();
        let pauses: Vec<u64> = (0..10)
            .map(|_| backoff.failed().as_millis() as u64)
            .collect();
        assert_eq!(pauses[..4], [10, 20, 40, 80]);
        assert_eq!(*pauses.last().unwrap(), ACCEPT_BACKOFF_MAX_MS);
        backoff.succeeded();
        assert_eq!(backoff.failed(), Duration::from_millis(10));
    }

    #[test]
    fn the_connection_cap_fits_under_the_fd_limit() {
        let mut limits = ConnectionLimits::default();
        assert_eq!(limits.fit_fd_limit(1 << 20, 1), DEFAULT_MAX_CONNECTIONS);
        // 1024 fds, five replicas: 64 + 5 * 32 reserved, the rest split five ways.
        assert_eq!(limits.fit_fd_limit(1024, 5), (1024 - 64 - 160) / 5);
        assert_eq!(limits.fit_fd_limit(10, 5), 1, "never zero");
    }

    #[test]
    fn default_limits_are_consistent() {
        assert!(ConnectionLimits::default().check().is_ok());
        let small_budget = ConnectionLimits {
            frame_budget_bytes: 1024,
            ..ConnectionLimits::default()
        };
        assert!(small_budget.check().is_err());
    }
}
