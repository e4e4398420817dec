//! The five `paxoskv-server` processes: start, kill -9, SIGSTOP/SIGCONT, restart with or
//! without `-f`, and kill them all when dropped (even on panic or error).

use anyhow::{anyhow, bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long a starting replica may take to print `Replica I is running`.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a replica may take to exit after SIGTERM before it gets SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(4);

/// One replica's process and what the nemesis did to it.
#[derive(Default)]
struct Replica {
    child: Option<Child>,
    /// SIGSTOPped and not yet continued.
    stopped: bool,
    /// Running with `-f` (message drops).
    flaky: bool,
}

/// Where the cluster keeps its data: a temp dir removed on drop, or a kept directory.
enum DataDir {
    Temp(TempDir),
    Kept(PathBuf),
}

impl DataDir {
    fn path(&self) -> &Path {
        match self {
            DataDir::Temp(t) => t.path(),
            DataDir::Kept(p) => p,
        }
    }
}

/// A cluster of replica processes on loopback ports.
pub struct Cluster {
    server_bin: PathBuf,
    /// Extra arguments for every server.
    server_args: Vec<String>,
    /// Every replica's address, in id order.
    addrs: Vec<SocketAddr>,
    replicas: Vec<Replica>,
    /// Declared last so the children are killed (in `Drop`) before the directory goes.
    data: DataDir,
}

impl Cluster {
    /// Picks `n` free ports and a fresh data directory; starts nothing yet.
    pub fn new(
        server_bin: PathBuf,
        server_args: Vec<String>,
        n: usize,
        keep_data: bool,
    ) -> Result<Cluster> {
        if !server_bin.is_file() {
            bail!(
                "server binary {} not found (build it with `cargo build --release -p \
                 paxoskv-server --bin paxoskv-server` or pass --server-bin)",
                server_bin.display()
            );
        }
        let temp = tempfile::Builder::new()
            .prefix("paxoskv-nemesis-")
            .tempdir()
            .context("cannot create a temp dir")?;
        let data = if keep_data {
            DataDir::Kept(temp.keep())
        } else {
            DataDir::Temp(temp)
        };
        std::fs::create_dir_all(data.path().join("logs"))?;
        Ok(Cluster {
            server_bin,
            server_args,
            addrs: free_addrs(n)?,
            replicas: (0..n).map(|_| Replica::default()).collect(),
            data,
        })
    }

    /// Number of replicas.
    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    /// Every replica's address, in id order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The data directory (replica data in `replica-I`, server logs in `logs/`).
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.data_dir()
            .join("logs")
            .join(format!("replica-{i}.log"))
    }

    /// Starts replica `i` (with `-f` if `flaky`) on its data dir and waits, bounded, until it
    /// listens. Its stderr is appended to `logs/replica-I.log`.
    pub async fn spawn(&mut self, i: usize, flaky: bool) -> Result<()> {
        if self.is_alive(i) {
            bail!("replica {i} is already running");
        }
        let peers: Vec<String> = self.addrs.iter().map(|a| a.to_string()).collect();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .context("cannot open the replica log")?;
        let mut cmd = Command::new(&self.server_bin);
        cmd.args(["--replica", &i.to_string(), "--peers", &peers.join(",")])
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--enable-fault-control")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,tarpc=off".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        cmd.args(&self.server_args);
        if flaky {
            cmd.arg("-f");
        }
        die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", self.server_bin.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            // Keep draining after the announcement so the server never blocks on stdout.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("is running") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
        let announced = tokio::time::timeout(START_TIMEOUT, rx).await;
        let replica = &mut self.replicas[i];
        replica.child = Some(child);
        replica.stopped = false;
        replica.flaky = flaky;
        match announced {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => {
                let status = self.reap(i);
                Err(anyhow!(
                    "replica {i} exited before listening ({}); log tail:\n{}",
                    status.map_or("unknown status".into(), |s| s.to_string()),
                    self.log_tail(i)
                ))
            }
            Err(_) => {
                self.kill(i);
                Err(anyhow!(
                    "replica {i} did not announce itself within {START_TIMEOUT:?}; log tail:\n{}",
                    self.log_tail(i)
                ))
            }
        }
    }

    /// True if replica `i` has a process (running or stopped).
    pub fn is_alive(&self, i: usize) -> bool {
        self.replicas[i].child.is_some()
    }

    /// True if replica `i` is SIGSTOPped.
    pub fn is_stopped(&self, i: usize) -> bool {
        self.replicas[i].stopped
    }

    /// True if replica `i` runs with `-f`.
    pub fn is_flaky(&self, i: usize) -> bool {
        self.replicas[i].flaky
    }

    /// `kill -9` of replica `i` (works on stopped processes too); no-op if it is not running.
    pub fn kill(&mut self, i: usize) {
        let replica = &mut self.replicas[i];
        if let Some(mut child) = replica.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        replica.stopped = false;
        replica.flaky = false;
    }

    /// SIGTERM, then SIGKILL if the replica has not exited within a grace period.
    pub async fn terminate(&mut self, i: usize) {
        if let Some(child) = &self.replicas[i].child {
            signal(child, libc::SIGCONT);
            signal(child, libc::SIGTERM);
        }
        let deadline = Instant::now() + TERM_GRACE;
        while Instant::now() < deadline {
            match self.replicas[i].child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(None)) => tokio::time::sleep(Duration::from_millis(50)).await,
                _ => break,
            }
        }
        self.kill(i);
    }

    /// SIGSTOP of replica `i`.
    pub fn stop(&mut self, i: usize) {
        let replica = &mut self.replicas[i];
        if let Some(child) = &replica.child {
            signal(child, libc::SIGSTOP);
            replica.stopped = true;
        }
    }

    /// SIGCONT of replica `i`.
    pub fn resume(&mut self, i: usize) {
        let replica = &mut self.replicas[i];
        if let Some(child) = &replica.child {
            signal(child, libc::SIGCONT);
        }
        replica.stopped = false;
    }

    /// Notices replicas that exited without being killed by the nemesis (a server crash)
    /// and forgets their processes.
    pub fn reap_crashed(&mut self) -> Vec<(usize, ExitStatus)> {
        let mut found = Vec::new();
        for i in 0..self.replicas.len() {
            let exited = match self.replicas[i].child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => Some(status),
                _ => None,
            };
            if let Some(status) = exited {
                self.replicas[i] = Replica::default();
                found.push((i, status));
            }
        }
        found
    }

    /// The last lines of replica `i`'s log, for error messages.
    pub fn log_tail(&self, i: usize) -> String {
        tail(&self.log_path(i), 2000)
    }

    /// Collects the exit status of a replica that closed its stdout (killing it if it has
    /// not exited, so this never blocks).
    fn reap(&mut self, i: usize) -> Option<ExitStatus> {
        let mut child = self.replicas[i].child.take()?;
        self.replicas[i] = Replica::default();
        for _ in 0..20 {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.replicas.len() {
            self.kill(i);
        }
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own unreaped child,
    // so the id cannot have been recycled for another process.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Asks the kernel to SIGKILL the child if the nemesis dies without running its destructors
/// (e.g. it is itself killed with SIGKILL), so no server outlives it.
#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe
    // functions (prctl, getppid, getpid, kill).
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // The parent may have died before prctl took effect.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

fn free_addrs(n: usize) -> Result<Vec<SocketAddr>> {
    // Below Linux's ephemeral range (32768..): a released port-0 port can be handed to the
    // next outgoing connection before the replica process binds it.
    let mut rng = rand::thread_rng();
    let mut held: Vec<TcpListener> = Vec::with_capacity(n);
    for _ in 0..2_000 {
        if held.len() == n {
            break;
        }
        let port = rand::Rng::gen_range(&mut rng, 10_000..32_768u16);
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    anyhow::ensure!(held.len() == n, "cannot find {n} free ports");
    held.iter()
        .map(|l| l.local_addr().context("local address"))
        .collect()
}

fn tail(path: &Path, bytes: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(bytes)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}
