//! The `paxoskv-server` binary for tests that start real server processes.
//!
//! It belongs to another package, so Cargo neither builds it for these tests nor sets
//! `CARGO_BIN_EXE_paxoskv-server`; a dev-dependency on `paxoskv-server` only builds its library.
//! So the tests build it themselves, with the Cargo that runs them, into the same target
//! directory and profile as the test executable: next to `paxoskv-nemesis`, where the nemesis
//! looks by default.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Path of an up-to-date `paxoskv-server` in the test executable's own profile, built on
/// first use (once per test process).
pub fn server_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let profile_dir = test_profile_dir();
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a profile directory name")
            .to_string();
        build_server(&profile)
    })
}

/// Path of an up-to-date release `paxoskv-server` in the same target directory, built on
/// first use. For load tests: a debug server spends its time in unoptimised hashing and
/// copying of large values and would measure nothing but that.
#[allow(dead_code)]
pub fn release_server_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_server("release"))
}

/// `<target-dir>/<profile>`: the test executable lives in its `deps/`.
fn test_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable in <target>/<profile>/deps")
        .to_path_buf()
}

/// Builds `paxoskv-server` with the Cargo that runs the tests, into their target directory.
fn build_server(profile: &str) -> PathBuf {
    let profile_dir = test_profile_dir();
    let target_dir = profile_dir.parent().expect("a target directory");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "paxoskv-server",
        "--bin",
        "paxoskv-server",
    ])
    .arg("--target-dir")
    .arg(target_dir)
    .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let status = cmd.status().expect("run cargo to build paxoskv-server");
    assert!(status.success(), "building paxoskv-server failed: {status}");
    let bin = target_dir
        .join(profile)
        .join(format!("paxoskv-server{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.is_file(), "{} missing after the build", bin.display());
    bin
}

/// The demo's checked sequence through the client library: ten puts, an overwrite, five
/// deletes, and reads that see each of them.
#[allow(dead_code)]
pub async fn demo_sequence(c: &mut paxoskv_client::Client) {
    use paxoskv_client::Outcome;
    for i in 1..=10 {
        let key = format!("key{i}");
        c.put(&key, format!("value{i}").into_bytes()).await.unwrap();
    }
    assert_eq!(c.get("key3").await.unwrap(), Some(b"value3".to_vec()));
    assert_eq!(
        c.put("key3", b"new".to_vec()).await.unwrap(),
        Outcome::Put { replaced: true }
    );
    assert_eq!(c.get("key3").await.unwrap(), Some(b"new".to_vec()));
    for i in 1..=5 {
        let outcome = c.delete(&format!("key{i}")).await.unwrap();
        assert_eq!(outcome, Outcome::Delete { existed: true });
    }
    assert_eq!(c.get("key1").await.unwrap(), None);
    assert_eq!(
        c.delete("key1").await.unwrap(),
        Outcome::Delete { existed: false }
    );
    assert_eq!(c.get("key9").await.unwrap(), Some(b"value9".to_vec()));
}

// ---- Real clusters of server processes (TLS tests). Not every test file uses all of it.

/// `n` loopback addresses that were free a moment ago.
#[allow(dead_code)]
pub fn free_addrs(n: usize) -> Vec<std::net::SocketAddr> {
    paxoskv_server::ports::free_loopback_addrs(n).expect("free loopback ports")
}

/// Runs `paxoskv-server gen-certs --dir DIR --replicas N` (hosts: 127.0.0.1).
#[allow(dead_code)]
pub fn gen_certs(dir: &Path, replicas: usize) {
    let out = Command::new(server_bin())
        .arg("gen-certs")
        .arg("--dir")
        .arg(dir)
        .args(["--replicas", &replicas.to_string()])
        .output()
        .expect("run paxoskv-server gen-certs");
    assert!(
        out.status.success(),
        "gen-certs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Server processes, killed when dropped (also when an assertion fails).
#[allow(dead_code)]
pub struct Processes(pub Vec<std::process::Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts one in-memory process per address (`--replica I --peers ...`) with `extra`
/// arguments (`{id}` replaced by the replica id); waits, bounded, until each announces itself.
#[allow(dead_code)]
pub fn start_cluster(addrs: &[std::net::SocketAddr], extra: &[String]) -> Processes {
    let peers: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let mut procs = Processes(Vec::new());
    for id in 0..addrs.len() {
        let args: Vec<String> = extra
            .iter()
            .map(|a| a.replace("{id}", &id.to_string()))
            .collect();
        let child = Command::new(server_bin())
            .args(["--replica", &id.to_string(), "--peers", &peers.join(",")])
            .arg("--in-memory")
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start paxoskv-server");
        procs.0.push(child); // pushed first: killed on drop even if it never announces itself
        let started = procs.0.last_mut().expect("just pushed");
        wait_announced(started, Duration::from_secs(10));
    }
    procs
}

/// A figure from `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`), if the process lives.
#[allow(dead_code)]
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// File descriptors a process has open now (entries of `/proc/PID/fd`).
#[allow(dead_code)]
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Raises this process's soft open-file limit to the hard one; returns the soft limit.
#[allow(dead_code)]
pub fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    // rlim_t is u64 on Linux but not everywhere.
    #[allow(clippy::unnecessary_cast)]
    let soft = limit.rlim_cur as u64;
    soft
}

// ---- Real-process helpers for the flood tests (issue 10) ----

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Starts replica `id` of `addrs` as its own process with `extra` flags, and waits (at most
/// 20 s) until it says it runs.
#[allow(dead_code)]
pub fn spawn_replica_with(
    bin: &Path,
    id: usize,
    addrs: &[SocketAddr],
    data: &Path,
    extra: &[String],
) -> Child {
    let peers: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let mut child = Command::new(bin)
        .args(["--replica", &id.to_string(), "--peers", &peers.join(",")])
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("PAXOSKV_TEST_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(test_log(id))
        .spawn()
        .expect("start paxoskv-server");
    wait_announced(&mut child, Duration::from_secs(20));
    child
}

/// Where a server's stderr goes: `$PAXOSKV_TEST_LOG_DIR/replica-I.log` when that is set
/// (to debug a failing test), nowhere otherwise.
fn test_log(id: usize) -> Stdio {
    let Some(dir) = std::env::var_os("PAXOSKV_TEST_LOG_DIR") else {
        return Stdio::null();
    };
    let path = Path::new(&dir).join(format!("replica-{id}.log"));
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        Ok(file) => Stdio::from(file),
        Err(_) => Stdio::null(),
    }
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), in bytes.
#[allow(dead_code)]
pub fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    Some(proc_status_kib(pid, field)? * 1024)
}

/// Sends SIGTERM to every server and waits for each to exit, bounded by `within`; returns
/// how long the slowest took, or which did not stop.
#[allow(dead_code)]
pub fn terminate_all(servers: &mut Processes, within: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    for child in &servers.0 {
        // SAFETY: kill(2) with a pid we spawned and still own (not yet waited for).
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    let mut slowest = Duration::ZERO;
    for child in &mut servers.0 {
        loop {
            match child.try_wait() {
                Ok(Some(_)) => {
                    slowest = slowest.max(started.elapsed());
                    break;
                }
                Ok(None) if started.elapsed() < within => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    return Err(format!("pid {} still running after {within:?}", child.id()))
                }
                Err(e) => return Err(format!("wait for pid {}: {e}", child.id())),
            }
        }
    }
    Ok(slowest)
}

/// Waits (at most `within`) until a server started with piped stdout prints that it runs.
#[allow(dead_code)]
pub fn wait_announced(child: &mut Child, within: Duration) {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("is running") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(within).expect("replica announced itself");
}

/// Polls every replica's status until all answer with the same applied prefix and map digest,
/// or `within` passes; true if they agreed.
#[allow(dead_code)]
pub async fn replicas_agree(reader: &paxoskv_client::Client, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        let views: Vec<_> = reader
            .status_all()
            .await
            .into_iter()
            .map(|(_, s)| s.ok().map(|s| (s.applied_through, s.map_digest)))
            .collect();
        if views.iter().all(|v| v.is_some() && *v == views[0]) {
            return true;
        }
        if std::time::Instant::now() > deadline {
            eprintln!("replicas disagree (applied_through, map_digest): {views:?}");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
