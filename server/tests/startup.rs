//! `paxoskv-server` start-up as a user meets it: a busy port, a bad flag, `--fail-mode down`.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const SERVER: &str = env!("CARGO_BIN_EXE_paxoskv-server");

/// Five consecutive free ports, with the listeners that hold them.
fn five_ports() -> (u16, Vec<TcpListener>) {
    paxoskv_server::ports::reserve_port_block(5).expect("five consecutive free ports")
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_busy_port_starts_nothing_and_leaves_no_directory() {
    let (base, mut held) = five_ports();
    // Keep only the third port busy, as when another program holds it.
    let busy = held.remove(2);
    drop(held);
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let output = Command::new(SERVER)
        .arg(base.to_string())
        .arg("--data-dir")
        .arg(&data)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run the server");
    drop(busy);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(!stdout.contains("is running"), "{stdout}");
    let want = format!("error: replica 2 cannot listen on 127.0.0.1:{}", base + 2);
    assert!(stderr.contains(&want), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
    assert!(
        !data.exists(),
        "a failed start must not leave {}",
        data.display()
    );
}

#[test]
fn a_bad_replica_index_is_one_line() {
    let output = Command::new(SERVER)
        .args(["--replica", "7", "--peers", "127.0.0.1:1", "--in-memory"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run the server");
    assert!(!output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "error: --replica 7 is not an index into the 1 --peers\n"
    );
}

#[test]
fn fail_mode_down_implies_failure_injection() {
    let (base, held) = five_ports();
    drop(held);
    let child = Command::new(SERVER)
        .args([&base.to_string(), "--in-memory", "--fail-mode", "down"])
        .env("RUST_LOG", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the server");
    let mut child = Killed(child);
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
        let done = line.starts_with("Failure injection");
        lines.push(line);
        if done {
            break;
        }
    }
    let running = lines.iter().filter(|l| l.contains("is running")).count();
    assert_eq!(running, 5, "{lines:?}");
    let last = lines.last().map(String::as_str).unwrap_or_default();
    assert!(
        last.starts_with("Failure injection: down 0.25"),
        "{lines:?}"
    );
}
