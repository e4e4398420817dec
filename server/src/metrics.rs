//! Prometheus metrics and health of the replicas of one process.
//!
//! Every replica owns a [`ReplicaMetrics`]: handles (atomics) into one process-wide registry,
//! labelled `replica="I"`, so one-process mode serves all five replicas on one endpoint. The
//! driver updates the state gauges once per loop turn (after a batch of inputs, not per
//! request); handlers bump counters with one relaxed atomic add. Histograms are observed per
//! batch, per fsync and per peer call.

use paxoskv::{CoreStatus, Refusal, RefusedCounts, ReplicaId};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Default of how recently a follower must have heard from its leader (and a leader from a
/// majority) to be ready: a few heartbeats (50 ms) and above the election timeout (≤ 400 ms),
/// so one lost heartbeat does not flap the probe.
pub const DEFAULT_READY_CONTACT_MS: u64 = 1000;

/// Roles exported by `paxoskv_role`, in the core's words.
pub const ROLES: [&str; 3] = ["leader", "candidate", "follower"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabel {
    replica: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    replica: u32,
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    replica: u32,
    peer: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    replica: u32,
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FateLabels {
    replica: u32,
    fate: &'static str,
}

/// Builds a histogram family (prometheus-client wants a constructor per family).
fn histogram_family<L>(start: f64, factor: f64, buckets: u16) -> Family<L, Histogram, HistogramCtor>
where
    L: Clone + std::hash::Hash + Eq,
{
    Family::new_with_constructor(HistogramCtor {
        start,
        factor,
        buckets,
    })
}

/// Exponential histogram buckets of one family.
#[derive(Clone, Copy, Debug)]
pub struct HistogramCtor {
    start: f64,
    factor: f64,
    buckets: u16,
}

impl prometheus_client::metrics::family::MetricConstructor<Histogram> for HistogramCtor {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(self.start, self.factor, self.buckets))
    }
}

type Hist<L> = Family<L, Histogram, HistogramCtor>;

/// The metric families of one process, before replicas take their handles.
struct Families {
    role: Family<RoleLabels, Gauge>,
    ballot_round: Family<ReplicaLabel, Gauge>,
    leader_id: Family<ReplicaLabel, Gauge>,
    applied_slot: Family<ReplicaLabel, Gauge>,
    last_slot: Family<ReplicaLabel, Gauge>,
    apply_lag: Family<ReplicaLabel, Gauge>,
    proposals: Family<ReplicaLabel, Counter>,
    reads: Family<ReplicaLabel, Counter>,
    commits: Family<ReplicaLabel, Counter>,
    batch_records: Hist<ReplicaLabel>,
    fsync_seconds: Hist<ReplicaLabel>,
    peer_rpc_seconds: Hist<PeerLabels>,
    peer_rpc_errors: Family<PeerLabels, Counter>,
    injected: Family<FateLabels, Counter>,
    leader_changes: Family<ReplicaLabel, Counter>,
    storage_fenced: Family<ReplicaLabel, Gauge>,
    snapshots: Family<ReplicaLabel, Counter>,
    snapshot_bytes: Family<ReplicaLabel, Counter>,
    snapshot_seconds: Hist<ReplicaLabel>,
    snapshot_pushes: Family<ReplicaLabel, Counter>,
    snapshot_installs: Family<ReplicaLabel, Counter>,
    connections_open: Family<ReplicaLabel, Gauge>,
    busy: Family<ReplicaLabel, Counter>,
    refused: Family<CauseLabels, Counter>,
    ready: Family<ReplicaLabel, Gauge>,
}

impl Families {
    fn new() -> Families {
        Families {
            role: Family::default(),
            ballot_round: Family::default(),
            leader_id: Family::default(),
            applied_slot: Family::default(),
            last_slot: Family::default(),
            apply_lag: Family::default(),
            proposals: Family::default(),
            reads: Family::default(),
            commits: Family::default(),
            // 1 .. ~4096 records per batch.
            batch_records: histogram_family(1.0, 2.0, 13),
            // 50 µs .. ~1.6 s.
            fsync_seconds: histogram_family(0.000_05, 2.0, 16),
            // 50 µs .. ~1.6 s (peer calls time out at 200 ms, large ones at 1 s).
            peer_rpc_seconds: histogram_family(0.000_05, 2.0, 16),
            peer_rpc_errors: Family::default(),
            injected: Family::default(),
            leader_changes: Family::default(),
            storage_fenced: Family::default(),
            snapshots: Family::default(),
            snapshot_bytes: Family::default(),
            // 1 ms .. ~65 s.
            snapshot_seconds: histogram_family(0.001, 2.0, 17),
            snapshot_pushes: Family::default(),
            snapshot_installs: Family::default(),
            connections_open: Family::default(),
            busy: Family::default(),
            refused: Family::default(),
            ready: Family::default(),
        }
    }

    fn register(&self, r: &mut Registry) {
        let f = self;
        r.register(
            "paxoskv_role",
            "1 for the replica's current role (leader, candidate, follower), else 0",
            f.role.clone(),
        );
        r.register(
            "paxoskv_ballot_round",
            "Round of the highest ballot promised",
            f.ballot_round.clone(),
        );
        r.register(
            "paxoskv_leader_id",
            "Leader as far as this replica knows (-1: none known)",
            f.leader_id.clone(),
        );
        r.register(
            "paxoskv_applied_slot",
            "Contiguous chosen and applied prefix of the log",
            f.applied_slot.clone(),
        );
        r.register(
            "paxoskv_last_slot",
            "Highest log slot holding any entry (accepted or chosen)",
            f.last_slot.clone(),
        );
        r.register(
            "paxoskv_apply_lag_slots",
            "Slots with an entry above the applied prefix (last_slot - applied_slot)",
            f.apply_lag.clone(),
        );
        r.register(
            "paxoskv_proposals",
            "Client writes handed to the core",
            f.proposals.clone(),
        );
        r.register(
            "paxoskv_reads",
            "Client reads handled (linearizable and stale)",
            f.reads.clone(),
        );
        r.register(
            "paxoskv_commits",
            "Slots chosen and applied",
            f.commits.clone(),
        );
        r.register(
            "paxoskv_batch_records",
            "Records per persisted batch (one fsync each)",
            f.batch_records.clone(),
        );
        r.register(
            "paxoskv_fsync_seconds",
            "Time to persist and sync one batch",
            f.fsync_seconds.clone(),
        );
        r.register(
            "paxoskv_peer_rpc_seconds",
            "Latency of answered Paxos calls to a peer",
            f.peer_rpc_seconds.clone(),
        );
        r.register(
            "paxoskv_peer_rpc_errors",
            "Paxos calls to a peer that got no answer (timeout, broken link)",
            f.peer_rpc_errors.clone(),
        );
        r.register(
            "paxoskv_injected_messages",
            "Incoming Paxos messages by injected fate (-f): dropped or passed",
            f.injected.clone(),
        );
        r.register(
            "paxoskv_leader_changes",
            "Times the known leader changed",
            f.leader_changes.clone(),
        );
        r.register(
            "paxoskv_storage_fenced",
            "1 while storage failed and the replica acknowledges nothing",
            f.storage_fenced.clone(),
        );
        r.register(
            "paxoskv_snapshots",
            "Snapshots made durable (own and installed)",
            f.snapshots.clone(),
        );
        r.register(
            "paxoskv_snapshot_bytes",
            "Bytes of snapshots written",
            f.snapshot_bytes.clone(),
        );
        r.register(
            "paxoskv_snapshot_seconds",
            "Time to write one own snapshot",
            f.snapshot_seconds.clone(),
        );
        r.register(
            "paxoskv_snapshot_pushes",
            "Snapshots pushed to lagging peers",
            f.snapshot_pushes.clone(),
        );
        r.register(
            "paxoskv_snapshot_installs",
            "Snapshots installed from a peer",
            f.snapshot_installs.clone(),
        );
        r.register(
            "paxoskv_connections_open",
            "Connections open to this replica (clients and peers)",
            f.connections_open.clone(),
        );
        r.register(
            "paxoskv_busy",
            "Client requests answered Busy (queue or byte budget full)",
            f.busy.clone(),
        );
        r.register(
            "paxoskv_refused_inputs",
            "Peer inputs the core refused, by cause",
            f.refused.clone(),
        );
        r.register(
            "paxoskv_ready",
            "1 while /readyz would answer 200 for this replica",
            f.ready.clone(),
        );
    }
}

/// Why a replica is not ready, as `/readyz` tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Readiness {
    /// Part of a quorum with a known leader.
    Ready = 0,
    /// The driver has not judged yet.
    Starting = 1,
    /// Storage failed: the replica acknowledges nothing until it reloads.
    Fenced = 2,
    /// No leader known.
    NoLeader = 3,
    /// A follower that has not heard from its leader recently.
    LeaderSilent = 4,
    /// A leader that has not heard from a majority recently.
    NoQuorum = 5,
}

impl Readiness {
    fn from_u8(v: u8) -> Readiness {
        match v {
            0 => Readiness::Ready,
            2 => Readiness::Fenced,
            3 => Readiness::NoLeader,
            4 => Readiness::LeaderSilent,
            5 => Readiness::NoQuorum,
            _ => Readiness::Starting,
        }
    }

    /// One line for `/readyz`.
    pub fn describe(self) -> &'static str {
        match self {
            Readiness::Ready => "ready",
            Readiness::Starting => "starting",
            Readiness::Fenced => "storage failed (fenced)",
            Readiness::NoLeader => "no leader known",
            Readiness::LeaderSilent => "no recent contact with the leader",
            Readiness::NoQuorum => "leader without a recent majority",
        }
    }
}

/// One replica's metric handles and readiness.
pub struct ReplicaMetrics {
    /// This replica.
    pub id: ReplicaId,
    role: [Gauge; 3],
    ballot_round: Gauge,
    leader_id: Gauge,
    applied_slot: Gauge,
    last_slot: Gauge,
    apply_lag: Gauge,
    /// Client writes handed to the core.
    pub proposals: Counter,
    /// Client reads handled.
    pub reads: Counter,
    commits: Counter,
    /// Records per persisted batch.
    pub batch_records: Histogram,
    /// Persist + sync time per batch.
    pub fsync_seconds: Histogram,
    peer_rpc_seconds: Vec<Option<Histogram>>,
    peer_rpc_errors: Vec<Option<Counter>>,
    injected_dropped: Counter,
    injected_passed: Counter,
    leader_changes: Counter,
    storage_fenced: Gauge,
    /// Snapshots made durable.
    pub snapshots: Counter,
    /// Bytes of snapshots written.
    pub snapshot_bytes: Counter,
    /// Time to write one own snapshot.
    pub snapshot_seconds: Histogram,
    /// Snapshots pushed to peers.
    pub snapshot_pushes: Counter,
    /// Snapshots installed from peers.
    pub snapshot_installs: Counter,
    /// Connections open.
    pub connections_open: Gauge,
    /// Busy answers.
    pub busy: Counter,
    refused: Vec<Counter>,
    ready_gauge: Gauge,
    readiness: AtomicU8,
    /// What the driver last published, to turn cumulative core counts into counter steps.
    seen: Mutexless,
    /// `fsync_seconds` alone, so the dashboard can read its buckets (prometheus-client has
    /// no public bucket getter; its text encoding is the supported way out).
    fsync_view: Registry,
}

/// Last values copied from cumulative sources; touched only by the driver task (atomics so
/// the struct stays `Sync` without a lock).
#[derive(Default)]
struct Mutexless {
    applied: AtomicU64,
    leader: AtomicI64,
    dropped: AtomicU64,
    passed: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
}

impl ReplicaMetrics {
    fn new(f: &Families, id: ReplicaId, replicas: u32) -> ReplicaMetrics {
        let one = ReplicaLabel { replica: id };
        let peer = |p: u32| PeerLabels {
            replica: id,
            peer: p,
        };
        let role = ROLES.map(|role| child(&f.role, &RoleLabels { replica: id, role }));
        let mut m = ReplicaMetrics {
            id,
            role,
            ballot_round: child(&f.ballot_round, &one),
            leader_id: child(&f.leader_id, &one),
            applied_slot: child(&f.applied_slot, &one),
            last_slot: child(&f.last_slot, &one),
            apply_lag: child(&f.apply_lag, &one),
            proposals: child(&f.proposals, &one),
            reads: child(&f.reads, &one),
            commits: child(&f.commits, &one),
            batch_records: child(&f.batch_records, &one),
            fsync_seconds: child(&f.fsync_seconds, &one),
            peer_rpc_seconds: (0..replicas)
                .map(|p| (p != id).then(|| child(&f.peer_rpc_seconds, &peer(p))))
                .collect(),
            peer_rpc_errors: (0..replicas)
                .map(|p| (p != id).then(|| child(&f.peer_rpc_errors, &peer(p))))
                .collect(),
            injected_dropped: child(
                &f.injected,
                &FateLabels {
                    replica: id,
                    fate: "dropped",
                },
            ),
            injected_passed: child(
                &f.injected,
                &FateLabels {
                    replica: id,
                    fate: "passed",
                },
            ),
            leader_changes: child(&f.leader_changes, &one),
            storage_fenced: child(&f.storage_fenced, &one),
            snapshots: child(&f.snapshots, &one),
            snapshot_bytes: child(&f.snapshot_bytes, &one),
            snapshot_seconds: child(&f.snapshot_seconds, &one),
            snapshot_pushes: child(&f.snapshot_pushes, &one),
            snapshot_installs: child(&f.snapshot_installs, &one),
            connections_open: child(&f.connections_open, &one),
            busy: child(&f.busy, &one),
            refused: Refusal::ALL
                .iter()
                .map(|c| {
                    let cause = format!("{c:?}");
                    child(&f.refused, &CauseLabels { replica: id, cause })
                })
                .collect(),
            ready_gauge: child(&f.ready, &one),
            readiness: AtomicU8::new(Readiness::Starting as u8),
            seen: Mutexless::default(),
            fsync_view: Registry::default(),
        };
        m.leader_id.set(-1);
        m.seen.leader.store(-1, Ordering::Relaxed);
        let fsync = m.fsync_seconds.clone();
        m.fsync_view.register("fsync_seconds", "", fsync);
        m
    }

    /// Handles registered nowhere (a replica started without `--metrics-addr`, tests).
    pub fn unregistered(id: ReplicaId, replicas: u32) -> Arc<ReplicaMetrics> {
        Arc::new(ReplicaMetrics::new(&Families::new(), id, replicas))
    }

    /// Copies the core's state; called by the driver once per loop turn.
    pub fn publish_status(&self, status: &CoreStatus, refused: &RefusedCounts, fenced: bool) {
        for (gauge, role) in self.role.iter().zip(ROLES) {
            gauge.set(i64::from(status.role == role));
        }
        self.ballot_round.set(clamp_i64(status.promised.round));
        let leader = status.leader.map_or(-1, i64::from);
        self.leader_id.set(leader);
        let old_leader = self.seen.leader.swap(leader, Ordering::Relaxed);
        if old_leader != leader && leader >= 0 {
            self.leader_changes.inc();
        }
        self.applied_slot.set(clamp_i64(status.chosen_through));
        self.last_slot.set(clamp_i64(status.last_slot));
        self.apply_lag.set(clamp_i64(
            status.last_slot.saturating_sub(status.chosen_through),
        ));
        let old_applied = self
            .seen
            .applied
            .swap(status.chosen_through, Ordering::Relaxed);
        // A core rebuilt from disk may restart lower: count only forward steps.
        self.commits
            .inc_by(status.chosen_through.saturating_sub(old_applied));
        self.storage_fenced.set(i64::from(fenced));
        for (i, (_, count)) in refused.iter().enumerate() {
            let old = self.seen.refused[i].swap(count, Ordering::Relaxed);
            // A rebuilt core counts from zero again.
            let step = if count >= old { count - old } else { count };
            self.refused[i].inc_by(step);
        }
    }

    /// Copies the failure injector's cumulative counts.
    pub fn publish_injected(&self, dropped: u64, passed: u64) {
        let old = self.seen.dropped.swap(dropped, Ordering::Relaxed);
        self.injected_dropped.inc_by(dropped.saturating_sub(old));
        let old = self.seen.passed.swap(passed, Ordering::Relaxed);
        self.injected_passed.inc_by(passed.saturating_sub(old));
    }

    /// Records one peer call: its latency when answered, an error when not.
    pub fn observe_peer_call(&self, peer: ReplicaId, elapsed: Duration, answered: bool) {
        if answered {
            if let Some(Some(h)) = self.peer_rpc_seconds.get(peer as usize) {
                h.observe(elapsed.as_secs_f64());
            }
        } else if let Some(Some(c)) = self.peer_rpc_errors.get(peer as usize) {
            c.inc();
        }
    }

    /// Sets the readiness the driver judged.
    pub fn set_readiness(&self, readiness: Readiness) {
        self.readiness.store(readiness as u8, Ordering::Relaxed);
        self.ready_gauge
            .set(i64::from(readiness == Readiness::Ready));
    }

    /// The readiness last judged.
    pub fn readiness(&self) -> Readiness {
        Readiness::from_u8(self.readiness.load(Ordering::Relaxed))
    }
}

/// One labelled child of a family. The family's read guard must end here: two guards alive
/// in one expression deadlock when the second child has to be inserted.
fn child<L, M, C>(family: &Family<L, M, C>, labels: &L) -> M
where
    L: Clone + std::hash::Hash + Eq,
    M: Clone,
    C: prometheus_client::metrics::family::MetricConstructor<M>,
{
    family.get_or_create(labels).clone()
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The metrics of every replica of this process, registered in one registry.
pub struct ProcessMetrics {
    registry: Registry,
    replicas: Vec<Arc<ReplicaMetrics>>,
    cluster_size: u32,
}

impl ProcessMetrics {
    /// Metrics for replicas `ids` of a cluster of `replicas`.
    pub fn new(ids: &[ReplicaId], replicas: u32) -> ProcessMetrics {
        let replicas_total = replicas;
        let families = Families::new();
        let mut registry = Registry::default();
        families.register(&mut registry);
        let replicas = ids
            .iter()
            .map(|&id| Arc::new(ReplicaMetrics::new(&families, id, replicas)))
            .collect();
        ProcessMetrics {
            registry,
            replicas,
            cluster_size: replicas_total,
        }
    }

    /// Replica `id`'s handles.
    pub fn replica(&self, id: ReplicaId) -> Option<Arc<ReplicaMetrics>> {
        self.replicas.iter().find(|m| m.id == id).cloned()
    }

    /// Prometheus text format (OpenMetrics text, which Prometheus reads).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// `/readyz`: `Ok(line)` when ready. With `only` one replica is asked; without, every
    /// replica of this process must be ready.
    pub fn ready(&self, only: Option<ReplicaId>) -> Result<String, String> {
        let asked: Vec<_> = match only {
            Some(id) => match self.replica(id) {
                Some(m) => vec![m],
                None => return Err(format!("replica {id} does not run in this process")),
            },
            None => self.replicas.clone(),
        };
        let not_ready: Vec<String> = asked
            .iter()
            .filter(|m| m.readiness() != Readiness::Ready)
            .map(|m| format!("replica {}: {}", m.id, m.readiness().describe()))
            .collect();
        if not_ready.is_empty() {
            Ok("ready".into())
        } else {
            Err(not_ready.join("; "))
        }
    }
}

/// One replica's state as the dashboard's `/api/status` shows it: the same values as the
/// Prometheus series, read from the same handles.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ReplicaSnapshot {
    /// The replica.
    pub id: ReplicaId,
    /// leader, candidate or follower.
    pub role: &'static str,
    /// Round of the highest ballot promised.
    pub ballot_round: i64,
    /// The leader as this replica knows it; -1 when none.
    pub leader_id: i64,
    /// Contiguous chosen-and-applied prefix.
    pub applied_slot: i64,
    /// Highest slot with any entry.
    pub last_slot: i64,
    /// `last_slot - applied_slot`.
    pub apply_lag_slots: i64,
    /// Client writes handed to the core (cumulative).
    pub proposals: u64,
    /// Reads handled (cumulative).
    pub reads: u64,
    /// Slots chosen and applied (cumulative).
    pub commits: u64,
    /// Incoming Paxos messages dropped by `-f` (cumulative).
    pub injected_dropped: u64,
    /// Incoming Paxos messages `-f` let pass (cumulative).
    pub injected_passed: u64,
    /// Times the known leader changed.
    pub leader_changes: u64,
    /// Storage failed: the replica acknowledges nothing.
    pub fenced: bool,
    /// `/readyz` in words.
    pub readiness: &'static str,
    /// Busy answers (cumulative).
    pub busy: u64,
    /// Connections open.
    pub connections_open: i64,
    /// p99 of every fsync since start, in ms (upper bucket bound); `None` before the first.
    pub fsync_p99_ms: Option<f64>,
    /// Cumulative fsync histogram: `(upper bound in seconds, count at or below)`, the last
    /// bound being `+Inf` (as `f64::MAX`, since JSON has no infinity).
    pub fsync_buckets: Vec<(f64, u64)>,
}

impl ReplicaMetrics {
    /// The dashboard's view of this replica now.
    pub fn snapshot(&self) -> ReplicaSnapshot {
        let role = ROLES
            .iter()
            .zip(&self.role)
            .find(|(_, g)| g.get() == 1)
            .map_or("follower", |(r, _)| *r);
        let fsync_buckets = self.fsync_buckets();
        ReplicaSnapshot {
            id: self.id,
            role,
            ballot_round: self.ballot_round.get(),
            leader_id: self.leader_id.get(),
            applied_slot: self.applied_slot.get(),
            last_slot: self.last_slot.get(),
            apply_lag_slots: self.apply_lag.get(),
            proposals: self.proposals.get(),
            reads: self.reads.get(),
            commits: self.commits.get(),
            injected_dropped: self.injected_dropped.get(),
            injected_passed: self.injected_passed.get(),
            leader_changes: self.leader_changes.get(),
            fenced: self.storage_fenced.get() != 0,
            readiness: self.readiness().describe(),
            busy: self.busy.get(),
            connections_open: self.connections_open.get(),
            fsync_p99_ms: quantile_bound(&fsync_buckets, 0.99).map(|s| s * 1000.0),
            fsync_buckets,
        }
    }

    /// The cumulative buckets of `fsync_seconds`, read from its text encoding.
    fn fsync_buckets(&self) -> Vec<(f64, u64)> {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode_registry(&mut text, &self.fsync_view).is_err()
        {
            return Vec::new();
        }
        text.lines().filter_map(parse_bucket_line).collect()
    }
}

/// `fsync_seconds_bucket{le="0.0001"} 7` -> `(0.0001, 7)`; `+Inf` becomes `f64::MAX`.
fn parse_bucket_line(line: &str) -> Option<(f64, u64)> {
    let rest = line.split_once("_bucket{le=\"")?.1;
    let (bound, rest) = rest.split_once('"')?;
    let count = rest.trim_start_matches('}').split_whitespace().next()?;
    let bound = if bound == "+Inf" {
        f64::MAX
    } else {
        bound.parse().ok()?
    };
    Some((bound, count.parse().ok()?))
}

/// Upper bound of the bucket holding quantile `q` of cumulative `buckets`; `None` if empty.
pub fn quantile_bound(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil() as u64;
    buckets
        .iter()
        .find(|(_, count)| *count >= rank)
        .map(|(bound, _)| *bound)
}

impl ProcessMetrics {
    /// Replicas in the whole cluster (this process runs some or all of them).
    pub fn cluster_size(&self) -> u32 {
        self.cluster_size
    }

    /// The dashboard's view of every replica of this process.
    pub fn snapshots(&self) -> Vec<ReplicaSnapshot> {
        self.replicas.iter().map(|m| m.snapshot()).collect()
    }
}

#[cfg(test)]
mod snapshot_tests {
    use super::*;

    #[test]
    fn a_snapshot_reads_the_values_the_series_carry() {
        let process = ProcessMetrics::new(&[0, 1], 5);
        let m = process.replica(1).expect("replica 1 runs here");
        m.proposals.inc_by(3);
        m.reads.inc();
        m.fsync_seconds.observe(0.000_3);
        m.fsync_seconds.observe(0.02);
        m.publish_injected(4, 9);
        m.set_readiness(Readiness::Fenced);
        let s = m.snapshot();
        assert_eq!((s.id, s.role, s.leader_id), (1, "follower", -1));
        assert_eq!((s.proposals, s.reads), (3, 1));
        assert_eq!((s.injected_dropped, s.injected_passed), (4, 9));
        assert_eq!(s.readiness, "storage failed (fenced)");
        assert_eq!(s.fsync_buckets.last(), Some(&(f64::MAX, 2)));
        // 50 µs * 2^9 = 25.6 ms is the first bound at or above 20 ms.
        let p99 = s.fsync_p99_ms.expect("two fsyncs observed");
        assert!((p99 - 25.6).abs() < 1e-6, "{p99}");
        assert_eq!(process.snapshots().len(), 2);
        assert_eq!(process.cluster_size(), 5);
    }

    #[test]
    fn quantiles_come_from_cumulative_buckets() {
        assert_eq!(quantile_bound(&[], 0.99), None);
        assert_eq!(quantile_bound(&[(1.0, 0), (f64::MAX, 0)], 0.5), None);
        let b = [(1.0, 50), (2.0, 99), (4.0, 100), (f64::MAX, 100)];
        assert_eq!(quantile_bound(&b, 0.5), Some(1.0));
        assert_eq!(quantile_bound(&b, 0.99), Some(2.0));
        assert_eq!(quantile_bound(&b, 1.0), Some(4.0));
    }

    #[test]
    fn bucket_lines_parse_and_others_do_not() {
        assert_eq!(
            parse_bucket_line("fsync_seconds_bucket{le=\"0.0001\"} 7"),
            Some((0.0001, 7))
        );
        assert_eq!(
            parse_bucket_line("fsync_seconds_bucket{le=\"+Inf\"} 9"),
            Some((f64::MAX, 9))
        );
        assert_eq!(parse_bucket_line("fsync_seconds_count 9"), None);
    }
}
