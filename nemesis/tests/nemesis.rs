//! The `paxoskv-nemesis` fault test end to end: a short run against real server processes
//! passes, and the same verdict code fails a history with a stale read.

mod support;

use paxoskv_check::{Completion, History, KvOp, KvResult};
use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const NEMESIS: &str = env!("CARGO_BIN_EXE_paxoskv-nemesis");

/// Runs `cmd` to completion, killing it if it outlives `limit`; returns (status, stdout,
/// stderr).
fn run_bounded(cmd: &mut Command, limit: Duration) -> (ExitStatus, String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start paxoskv-nemesis");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for paxoskv-nemesis") {
            break status;
        }
        if Instant::now() > deadline {
            // SIGKILL; the servers die with it (parent-death signal).
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "paxoskv-nemesis ran longer than {limit:?}; stderr so far:\n{}",
                stderr.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (status, stdout.join().unwrap(), stderr.join().unwrap())
}

#[test]
fn short_fault_run_passes() {
    let started = Instant::now();
    let (status, stdout, stderr) = run_bounded(
        Command::new(NEMESIS)
            .args(["--duration", "15s", "--clients", "3"])
            .arg("--server-bin")
            .arg(support::server_bin()),
        Duration::from_secs(120),
    );
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("nemesis: ops"))
        .unwrap_or_else(|| panic!("no summary line\nstdout:\n{stdout}\nstderr:\n{stderr}"));
    assert!(
        status.success() && summary.ends_with("result=PASS"),
        "nemesis failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(summary.contains("replicas converged=yes, linearizable=yes"));
    println!("{summary} ({:.1} s)", started.elapsed().as_secs_f64());
}

fn put(h: &mut History, client: u64, value: &str, t0: u64, t1: u64) {
    let op = KvOp::Put {
        key: "k0".into(),
        value: value.into(),
    };
    let id = h.invoke(client, op, t0);
    h.complete(id, Completion::Ok(KvResult::Put), t1);
}

fn get(h: &mut History, client: u64, seen: &str, t0: u64, t1: u64) {
    let id = h.invoke(client, KvOp::Get { key: "k0".into() }, t0);
    let value = Some(seen.as_bytes().to_vec());
    h.complete(id, Completion::Ok(KvResult::Get(value)), t1);
}

/// Runs `paxoskv-nemesis --check-history` (the verdict code of a live run) on `history`.
fn replay(history: &History) -> (ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.json");
    std::fs::write(&path, serde_json::to_vec(history).unwrap()).unwrap();
    let (status, stdout, _) = run_bounded(
        Command::new(NEMESIS).arg("--check-history").arg(&path),
        Duration::from_secs(30),
    );
    (status, stdout)
}

#[test]
fn the_pipeline_fails_a_stale_read() {
    let mut h = History::new();
    put(&mut h, 0, "c0-0", 0, 10);
    put(&mut h, 0, "c0-1", 20, 30);
    get(&mut h, 1, "c0-1", 40, 50);
    let (status, stdout) = replay(&h);
    assert!(status.success(), "{stdout}");
    assert!(stdout.contains("linearizable=yes, result=PASS"), "{stdout}");

    get(&mut h, 2, "c0-0", 60, 70); // the value was overwritten before this read began
    let (status, stdout) = replay(&h);
    assert!(!status.success(), "{stdout}");
    assert!(stdout.contains("linearizable=no, result=FAIL"), "{stdout}");
    assert!(stdout.contains("stale read"), "{stdout}");
}
