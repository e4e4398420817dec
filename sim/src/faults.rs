//! What can go wrong, how often (a per-seed profile), and the tally of what did.
//!
//! Every decision draws from the world's seeded RNG, so a seed fixes the whole fault
//! schedule. Rates are per mille per step (or per packet for network faults).

use paxoskv::ReplicaId;
use rand::rngs::StdRng;
use rand::Rng;
use std::fmt;

/// How hostile one run is. Drawn from the seed, so some runs are calm and some brutal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultProfile {
    /// Packets dropped, per mille.
    pub loss_per_mille: u32,
    /// Packets delivered twice, per mille.
    pub dup_per_mille: u32,
    /// Every packet takes `1..=base_delay_max_steps` steps.
    pub base_delay_max_steps: u64,
    /// Packets held back much longer (reordering past many others), per mille.
    pub spike_per_mille: u32,
    /// Longest extra delay of a held-back packet.
    pub spike_delay_max_steps: u64,
    /// Chance per step that a partition starts (when none is active), per mille.
    pub partition_per_mille: u32,
    /// Longest partition.
    pub partition_max_steps: u64,
    /// Chance per step that some replica crashes, per mille.
    pub crash_per_mille: u32,
    /// Longest time a crashed replica stays down.
    pub down_max_steps: u64,
    /// Chance per step that some replica pauses (a stop-the-world stall), per mille.
    pub pause_per_mille: u32,
    /// Longest pause.
    pub pause_max_steps: u64,
    /// Chance per step that some replica snapshots and compacts its log, per mille.
    pub snapshot_per_mille: u32,
    /// Per replica: ticks skipped per mille (a slow clock).
    pub tick_skip_per_mille: Vec<u32>,
    /// A batch's sync takes `0..=sync_delay_max_steps` steps; the replica keeps working (and
    /// sending) meanwhile, as the driver's background sync does.
    pub sync_delay_max_steps: u64,
    /// Syncs that fail (the replica fences itself and reloads from disk), per mille.
    pub sync_fail_per_mille: u32,
}

impl FaultProfile {
    /// A profile without faults (and the network of the calm phase).
    pub fn calm(replicas: u32) -> FaultProfile {
        FaultProfile {
            loss_per_mille: 0,
            dup_per_mille: 0,
            base_delay_max_steps: 2,
            spike_per_mille: 0,
            spike_delay_max_steps: 0,
            partition_per_mille: 0,
            partition_max_steps: 0,
            crash_per_mille: 0,
            down_max_steps: 0,
            pause_per_mille: 0,
            pause_max_steps: 0,
            snapshot_per_mille: 0,
            tick_skip_per_mille: vec![0; replicas as usize],
            sync_delay_max_steps: 0,
            sync_fail_per_mille: 0,
        }
    }

    /// A random profile; about one run in ten has no faults at all.
    pub fn random(rng: &mut StdRng, replicas: u32) -> FaultProfile {
        if rng.gen_ratio(1, 10) {
            return FaultProfile::calm(replicas);
        }
        FaultProfile {
            loss_per_mille: rng.gen_range(0..=150),
            dup_per_mille: rng.gen_range(0..=50),
            base_delay_max_steps: rng.gen_range(1..=4),
            spike_per_mille: rng.gen_range(0..=30),
            spike_delay_max_steps: rng.gen_range(5..=60),
            partition_per_mille: rng.gen_range(0..=8),
            partition_max_steps: rng.gen_range(10..=300),
            crash_per_mille: rng.gen_range(0..=10),
            down_max_steps: rng.gen_range(5..=250),
            pause_per_mille: rng.gen_range(0..=4),
            pause_max_steps: rng.gen_range(5..=80),
            snapshot_per_mille: rng.gen_range(0..=20),
            tick_skip_per_mille: (0..replicas).map(|_| rng.gen_range(0..=300)).collect(),
            sync_delay_max_steps: rng.gen_range(0..=4),
            sync_fail_per_mille: rng.gen_range(0..=15),
        }
    }
}

/// Rolls a per-mille chance.
pub fn roll(rng: &mut StdRng, per_mille: u32) -> bool {
    per_mille > 0 && rng.gen_range(0..1000) < per_mille
}

/// Faults injected, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Packets lost at random.
    pub dropped: u64,
    /// Packets lost to a partition.
    pub cut: u64,
    /// Packets delivered twice.
    pub duplicated: u64,
    /// Packets held back long enough to overtake many others.
    pub delayed: u64,
    /// Symmetric partitions started.
    pub partitions: u64,
    /// One-way partitions started.
    pub one_way: u64,
    /// Process crashes between steps (`kill -9`: written but unsynced records survive in the
    /// page cache).
    pub crashes: u64,
    /// Machine crashes (power loss: unsynced records are lost, the batch being synced may be
    /// torn).
    pub machine_crashes: u64,
    /// Syncs that failed (the replica fenced itself and reloaded from disk).
    pub sync_failures: u64,
    /// Crashes in the middle of a Ready batch (part persisted, part sent).
    pub torn_crashes: u64,
    /// Restarts from disk.
    pub restarts: u64,
    /// Stop-the-world pauses.
    pub pauses: u64,
    /// Snapshots taken with the log compacted behind them.
    pub snapshots: u64,
    /// Snapshots installed on a replica that fell behind compaction.
    pub installs: u64,
    /// Ticks skipped by slow clocks.
    pub skipped_ticks: u64,
}

impl FaultCounts {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &FaultCounts) {
        self.dropped += other.dropped;
        self.cut += other.cut;
        self.duplicated += other.duplicated;
        self.delayed += other.delayed;
        self.partitions += other.partitions;
        self.one_way += other.one_way;
        self.crashes += other.crashes;
        self.torn_crashes += other.torn_crashes;
        self.machine_crashes += other.machine_crashes;
        self.sync_failures += other.sync_failures;
        self.restarts += other.restarts;
        self.pauses += other.pauses;
        self.snapshots += other.snapshots;
        self.installs += other.installs;
        self.skipped_ticks += other.skipped_ticks;
    }
}

impl fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "loss={} cut={} dup={} delay={} partition={} one-way={} crash={} torn-crash={} \
             machine-crash={} sync-fail={} restart={} pause={} snapshot={} install={} \
             skipped-tick={}",
            self.dropped,
            self.cut,
            self.duplicated,
            self.delayed,
            self.partitions,
            self.one_way,
            self.crashes,
            self.torn_crashes,
            self.machine_crashes,
            self.sync_failures,
            self.restarts,
            self.pauses,
            self.snapshots,
            self.installs,
            self.skipped_ticks
        )
    }
}

/// Which directed replica-to-replica links are cut. At most one partition at a time.
#[derive(Clone, Debug)]
pub struct Links {
    /// `blocked[from]` has bit `to` set when `from -> to` is cut.
    blocked: Vec<u64>,
    /// When the current partition heals.
    heal_step: Option<u64>,
}

impl Links {
    /// All links up.
    pub fn new(replicas: u32) -> Links {
        Links {
            blocked: vec![0; replicas as usize],
            heal_step: None,
        }
    }

    /// True if `from -> to` is cut.
    pub fn is_cut(&self, from: ReplicaId, to: ReplicaId) -> bool {
        self.blocked[from as usize] & (1 << to) != 0
    }

    /// True while a partition is in force.
    pub fn is_partitioned(&self) -> bool {
        self.heal_step.is_some()
    }

    /// Heals the partition if its time has come (or `force`).
    pub fn heal_if_due(&mut self, now_step: u64, force: bool) {
        if force || self.heal_step.is_some_and(|h| now_step >= h) {
            self.blocked.iter_mut().for_each(|b| *b = 0);
            self.heal_step = None;
        }
    }

    /// Splits the replicas into two random non-empty sides that cannot talk.
    pub fn split(&mut self, rng: &mut StdRng, heal_step: u64) {
        let full = (1u64 << self.blocked.len()) - 1;
        let side_a = rng.gen_range(1..full); // non-empty, not everyone
        self.split_off(side_a, heal_step);
    }

    /// Cuts `victim`, with a random minority of the others, off from the rest: the classic
    /// "partition the leader" nemesis, so an old leader and a new one overlap.
    pub fn isolate_minority(&mut self, rng: &mut StdRng, victim: ReplicaId, heal_step: u64) {
        let n = self.blocked.len() as u32;
        let mut side_a = 1u64 << victim;
        for other in (0..n).filter(|&r| r != victim) {
            if side_a.count_ones() < (n - 1) / 2 && rng.gen_bool(0.5) {
                side_a |= 1 << other;
            }
        }
        self.split_off(side_a, heal_step);
    }

    fn split_off(&mut self, side_a: u64, heal_step: u64) {
        let n = self.blocked.len() as u32;
        let full = (1u64 << n) - 1;
        for from in 0..n {
            let mine = side_a & (1 << from) != 0;
            self.blocked[from as usize] = if mine { full & !side_a } else { side_a };
        }
        self.heal_step = Some(heal_step);
    }

    /// Cuts one direction only: everything into, or out of, one random replica (it can
    /// hear but not be heard, or be heard but not hear).
    pub fn one_way(&mut self, rng: &mut StdRng, heal_step: u64) {
        let n = self.blocked.len() as u32;
        let victim = rng.gen_range(0..n);
        let others = ((1u64 << n) - 1) & !(1 << victim);
        if rng.gen_bool(0.5) {
            self.blocked[victim as usize] = others;
        } else {
            for from in (0..n).filter(|&f| f != victim) {
                self.blocked[from as usize] = 1 << victim;
            }
        }
        self.heal_step = Some(heal_step);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn cut_pairs(links: &Links, n: u32) -> Vec<(u32, u32)> {
        let all = (0..n).flat_map(|a| (0..n).map(move |b| (a, b)));
        all.filter(|&(a, b)| links.is_cut(a, b)).collect()
    }

    #[test]
    fn isolating_a_leader_leaves_a_connected_majority_and_heals() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..50 {
            let mut links = Links::new(5);
            links.isolate_minority(&mut rng, 2, 10);
            let reachable_from_2 = (0..5).filter(|&r| r != 2 && !links.is_cut(2, r)).count();
            assert!(reachable_from_2 <= 1, "the leader's side is a minority");
            let cut = cut_pairs(&links, 5);
            assert!(cut.iter().all(|&(a, b)| links.is_cut(b, a)), "symmetric");
            links.heal_if_due(9, false);
            assert!(links.is_partitioned());
            links.heal_if_due(10, false);
            assert!(cut_pairs(&links, 5).is_empty());
        }
    }

    #[test]
    fn one_way_cuts_one_direction_only() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut links = Links::new(3);
        links.one_way(&mut rng, 5);
        let cut = cut_pairs(&links, 3);
        assert_eq!(cut.len(), 2);
        assert!(cut.iter().all(|&(a, b)| !links.is_cut(b, a)));
    }
}
