//! Fault injection, one fault at a time with quiet gaps: kill -9 (and restart), SIGSTOP (and
//! SIGCONT), partitions through `set_partition` (and heal), and a stretch with `-f`.

use super::cluster::Cluster;
use super::Events;
use paxoskv_client::Client;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use std::fmt;
use std::time::{Duration, Instant};

/// Safety bound on the faults of one run.
const MAX_FAULTS: usize = 100_000;

/// Attempts to deliver one `set_partition` while healing.
const HEAL_ATTEMPTS: usize = 5;

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum FaultKind {
    /// `kill -9` one replica (sometimes two), restart it on the same data after 0.5-2 s.
    Kill,
    /// SIGSTOP one replica (sometimes a majority), SIGCONT after 0.5-2 s.
    Stop,
    /// Isolate the leader, split 2|3, or cut links on one side only; heal after 1-3 s.
    Partition,
    /// Restart one replica with `-f` (25% message drops) for 3-6 s, then without.
    Drop,
}

/// Faults injected, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub kill: usize,
    pub stop: usize,
    pub partition: usize,
    pub drop: usize,
}

impl fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kill={} stop={} partition={} drop={}",
            self.kill, self.stop, self.partition, self.drop
        )
    }
}

/// The fault injector, driving the cluster's processes and partitions.
pub struct Nemesis<'a> {
    cluster: &'a mut Cluster,
    /// For status and set_partition; short timeouts.
    ctl: Client,
    rng: StdRng,
    events: Events,
    /// Faults injected so far.
    pub counts: FaultCounts,
    /// Things that went wrong that should not (server crashes, failed restarts, ...).
    pub problems: Vec<String>,
}

impl<'a> Nemesis<'a> {
    pub fn new(cluster: &'a mut Cluster, ctl: Client, rng: StdRng, events: Events) -> Self {
        Nemesis {
            cluster,
            ctl,
            rng,
            events,
            counts: FaultCounts::default(),
            problems: Vec::new(),
        }
    }

    /// Injects faults of `kinds` until `end`; every fault is undone before the next starts.
    pub async fn run(&mut self, kinds: &[FaultKind], end: Instant) {
        if kinds.is_empty() {
            tokio::time::sleep_until(end.into()).await;
            return;
        }
        for _ in 0..MAX_FAULTS {
            let gap = Duration::from_millis(self.rng.gen_range(1000..=3000));
            tokio::time::sleep_until((Instant::now() + gap).min(end).into()).await;
            self.restart_crashed().await;
            if Instant::now() >= end {
                break;
            }
            let kind = *kinds.choose(&mut self.rng).expect("kinds is not empty");
            match kind {
                FaultKind::Kill => self.kill(end).await,
                FaultKind::Stop => self.stop(end).await,
                FaultKind::Partition => self.partition(end).await,
                FaultKind::Drop => self.drop_messages(end).await,
            }
            self.restart_crashed().await;
        }
    }

    /// Undoes everything: SIGCONT, restart dead or `-f` replicas normally, heal partitions.
    pub async fn heal_all(&mut self) {
        self.restart_crashed().await;
        for i in 0..self.cluster.len() {
            if self.cluster.is_stopped(i) {
                self.events.log(format!("heal: SIGCONT replica {i}"));
                self.cluster.resume(i);
            }
            if self.cluster.is_flaky(i) {
                self.events
                    .log(format!("heal: restart replica {i} without -f"));
                self.cluster.terminate(i).await;
            }
            if !self.cluster.is_alive(i) {
                self.restart(i, false).await;
            }
        }
        for i in 0..self.cluster.len() {
            if !self.set_partition_retrying(i, Vec::new()).await {
                self.problems
                    .push(format!("could not heal the partition of replica {i}"));
            }
        }
    }

    /// The replica reporting itself leader, if any answers so.
    async fn leader(&self) -> Option<usize> {
        self.ctl
            .status_all()
            .await
            .iter()
            .position(|(_, s)| matches!(s, Ok(s) if s.role == "leader"))
    }

    /// The leader half of the time (if known), otherwise a random replica.
    fn pick(&mut self, leader: Option<usize>) -> usize {
        let random = self.rng.gen_range(0..self.cluster.len());
        match leader {
            Some(l) if self.rng.gen_bool(0.5) => l,
            _ => random,
        }
    }

    fn other_than(&mut self, taken: &[usize]) -> usize {
        let free: Vec<usize> = (0..self.cluster.len())
            .filter(|i| !taken.contains(i))
            .collect();
        *free.choose(&mut self.rng).expect("five replicas")
    }

    /// A random duration in `lo..=hi` ms, cut short near the end of the run (but at least
    /// `lo`, so every fault is real).
    fn hold(&mut self, lo: u64, hi: u64, end: Instant) -> Duration {
        let wanted = Duration::from_millis(self.rng.gen_range(lo..=hi));
        let left = end.saturating_duration_since(Instant::now());
        wanted.min(left).max(Duration::from_millis(lo))
    }

    fn describe(i: usize, leader: Option<usize>) -> String {
        if leader == Some(i) {
            format!("replica {i} (leader)")
        } else {
            format!("replica {i}")
        }
    }

    async fn kill(&mut self, end: Instant) {
        let leader = self.leader().await;
        let mut victims = vec![self.pick(leader)];
        if self.rng.gen_bool(0.15) {
            let second = self.other_than(&victims);
            victims.push(second);
        }
        let hold = self.hold(500, 2000, end);
        for &v in &victims {
            self.events
                .log(format!("kill -9 {}", Self::describe(v, leader)));
            self.cluster.kill(v);
        }
        self.counts.kill += 1;
        tokio::time::sleep(hold).await;
        for &v in &victims {
            self.events.log(format!("restart replica {v}"));
            self.restart(v, false).await;
        }
    }

    /// Usually one replica; sometimes a majority, so the cluster stops answering for a while
    /// and writes end unknown (they must then apply at most once, possibly later).
    async fn stop(&mut self, end: Instant) {
        let leader = self.leader().await;
        let mut victims = vec![self.pick(leader)];
        if self.rng.gen_bool(0.15) {
            while victims.len() <= self.cluster.len() / 2 {
                let next = self.other_than(&victims);
                victims.push(next);
            }
        }
        let hold = self.hold(500, 2000, end);
        for &v in &victims {
            self.events
                .log(format!("SIGSTOP {}", Self::describe(v, leader)));
            self.cluster.stop(v);
        }
        self.counts.stop += 1;
        tokio::time::sleep(hold).await;
        for &v in &victims {
            self.events.log(format!("SIGCONT replica {v}"));
            self.cluster.resume(v);
        }
    }

    async fn partition(&mut self, end: Instant) {
        let n = self.cluster.len();
        let found = self.leader().await;
        let leader = found.unwrap_or_else(|| self.rng.gen_range(0..n));
        let everyone: Vec<usize> = (0..n).collect();
        let others: Vec<usize> = everyone.iter().copied().filter(|&i| i != leader).collect();
        // (replica, the peers it drops traffic with)
        let mut plan: Vec<(usize, Vec<usize>)> = Vec::new();
        let what = match self.rng.gen_range(0..4) {
            0 => {
                plan.push((leader, others.clone()));
                plan.extend(others.iter().map(|&o| (o, vec![leader])));
                format!("isolate {}", Self::describe(leader, found))
            }
            1 => {
                let mut shuffled = everyone.clone();
                shuffled.shuffle(&mut self.rng);
                let (minority, majority) = shuffled.split_at(2);
                plan.extend(minority.iter().map(|&m| (m, majority.to_vec())));
                plan.extend(majority.iter().map(|&m| (m, minority.to_vec())));
                format!("split {minority:?} | {majority:?} (leader {found:?})")
            }
            2 => {
                let follower = *others.choose(&mut self.rng).expect("four followers");
                plan.push((follower, vec![leader]));
                format!(
                    "one-sided cut: replica {follower} drops traffic with {}",
                    Self::describe(leader, found)
                )
            }
            _ => {
                let cut: Vec<usize> = others.choose_multiple(&mut self.rng, 2).copied().collect();
                plan.push((leader, cut.clone()));
                format!(
                    "one-sided cut: {} drops traffic with {cut:?}",
                    Self::describe(leader, found)
                )
            }
        };
        let hold = self.hold(1000, 3000, end);
        self.events.log(format!("partition: {what}"));
        for (i, blocked) in plan {
            let blocked = blocked.iter().map(|&b| b as u32).collect();
            if let Err(e) = self.ctl.set_partition(i, blocked).await {
                self.events
                    .log(format!("set_partition on replica {i} failed: {e}"));
            }
        }
        self.counts.partition += 1;
        tokio::time::sleep(hold).await;
        self.events.log("partition healed".to_string());
        for i in 0..n {
            // Whatever is left is healed by heal_all at the end.
            self.set_partition_retrying(i, Vec::new()).await;
        }
    }

    async fn drop_messages(&mut self, end: Instant) {
        let leader = self.leader().await;
        let victim = self.pick(leader);
        let hold = self.hold(3000, 6000, end);
        self.events.log(format!(
            "restart {} with -f (message drops)",
            Self::describe(victim, leader)
        ));
        self.cluster.kill(victim);
        self.restart(victim, true).await;
        self.counts.drop += 1;
        tokio::time::sleep(hold).await;
        self.events
            .log(format!("restart replica {victim} without -f (SIGTERM)"));
        self.cluster.terminate(victim).await;
        self.restart(victim, false).await;
    }

    async fn restart(&mut self, i: usize, flaky: bool) {
        if let Err(e) = self.cluster.spawn(i, flaky).await {
            let what = format!("restart of replica {i} failed: {e:#}");
            self.events.log(what.clone());
            self.problems.push(what);
        }
    }

    /// A replica that exited on its own crashed: that is a bug; note it and bring it back.
    async fn restart_crashed(&mut self) {
        for (i, status) in self.cluster.reap_crashed() {
            let what = format!(
                "replica {i} exited unexpectedly ({status}); log tail:\n{}",
                self.cluster.log_tail(i)
            );
            self.events.log(what.clone());
            self.problems.push(what);
            self.restart(i, false).await;
        }
    }

    async fn set_partition_retrying(&self, i: usize, blocked: Vec<u32>) -> bool {
        for attempt in 0..HEAL_ATTEMPTS {
            match self.ctl.set_partition(i, blocked.clone()).await {
                Ok(()) => return true,
                Err(e) if attempt + 1 == HEAL_ATTEMPTS => {
                    self.events
                        .log(format!("set_partition on replica {i} failed: {e}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
        false
    }
}
