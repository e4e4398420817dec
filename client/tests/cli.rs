//! The `paxoskv` binary as a user runs it: against no server, and against five real replicas
//! (in-process, on free loopback ports).

use paxoskv_client::{Client, ClientConfig};
use paxoskv_server::LocalCluster;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Five real replicas on a runtime of their own, so tests drive the CLI synchronously.
struct Cluster {
    runtime: tokio::runtime::Runtime,
    cluster: Option<LocalCluster>,
    addrs: Vec<SocketAddr>,
}

impl Cluster {
    fn start() -> Cluster {
        Cluster::start_with(|_| {})
    }

    fn start_with(
        configure: impl Fn(&mut paxoskv_server::ReplicaOptions) + Send + Sync + 'static,
    ) -> Cluster {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let cluster = runtime
            .block_on(LocalCluster::start(5, configure))
            .expect("bind loopback listeners");
        let addrs = cluster.addrs.clone();
        Cluster {
            runtime,
            cluster: Some(cluster),
            addrs,
        }
    }

    fn servers(&self) -> String {
        join(&self.addrs)
    }

    /// The replica every reachable replica names as leader, once they agree (bounded wait).
    fn leader(&self) -> usize {
        let mut config = ClientConfig::with_servers(self.addrs.clone());
        config.attempt_timeout = Duration::from_millis(300);
        let client = Client::connect(config).expect("config");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let statuses = self.runtime.block_on(client.status_all());
            let named: Vec<Option<u32>> = statuses
                .iter()
                .map(|(_, s)| s.as_ref().ok().and_then(|s| s.leader))
                .collect();
            if let Some(Some(leader)) = named.first() {
                if named.iter().all(|n| n == &Some(*leader)) {
                    return *leader as usize;
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader: {named:?}");
            self.runtime
                .block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
        }
    }

    fn stop(&mut self, id: usize) {
        let cluster = self.cluster.as_mut().expect("running");
        self.runtime.block_on(cluster.stop(id));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(cluster) = self.cluster.take() {
            self.runtime.block_on(cluster.shutdown());
        }
    }
}

fn join(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Addresses nothing listens on (bound, then released).
fn closed_ports(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<_> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("addr"))
        .collect()
}

struct Run {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Run {
    fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Runs `paxoskv ARGS` with `stdin`; the CLI's own --timeout bounds it.
fn paxoskv(servers: &str, args: &[&str], stdin: &[u8]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_paxoskv"))
        .env("PAXOSKV_SERVERS", servers)
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "1")
        .env("HOME", std::env::temp_dir())
        .args(["--timeout", "5s"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start paxoskv");
    let mut input = child.stdin.take().expect("stdin");
    // The CLI may stop reading early (an oversized value): a broken pipe is its answer.
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let output: Output = child.wait_with_output().expect("paxoskv finished");
    writer.join().expect("stdin writer");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[test]
fn no_server_fails_fast_with_a_hint() {
    let addrs = closed_ports(5);
    let started = Instant::now();
    for args in [vec!["get", "k"], vec!["put", "k", "v"], vec!["delete", "k"]] {
        let run = paxoskv(&join(&addrs), &args, b"");
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(
            run.stderr.contains("is the server running? tried"),
            "{}",
            run.stderr
        );
        assert!(run.stderr.contains(&addrs[0].to_string()), "{}", run.stderr);
        assert!(!run.stderr.contains("backtrace"), "{}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    }
    // Three commands, each far below the 5 s deadline they would otherwise wait out.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn status_without_a_majority_exits_non_zero() {
    let run = paxoskv(&join(&closed_ports(5)), &["status"], b"");
    assert_eq!(run.code, 2);
    assert!(run.out().starts_with("ID  ADDRESS"), "{}", run.out());
    assert!(
        run.stderr
            .contains("no majority: only 0 of 5 replicas reachable"),
        "{}",
        run.stderr
    );
}

#[test]
fn user_errors_are_said_once() {
    let run = paxoskv(&join(&closed_ports(1)), &["put", "", "v"], b"");
    assert_eq!(run.code, 2);
    assert_eq!(run.stderr, "error: invalid input: empty key\n");
    let run = paxoskv(&join(&closed_ports(1)), &["--hex", "get", "ff"], b"");
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("not UTF-8"), "{}", run.stderr);
}

#[test]
fn help_and_completions_need_no_server() {
    let run = paxoskv("127.0.0.1:1", &["--help"], b"");
    assert_eq!(run.code, 0);
    let help = run.out();
    assert!(help.contains("replicated"), "{help}");
    assert!(help.contains("--endpoints"), "{help}");
    assert!(help.contains("PAXOSKV_SERVERS"), "{help}");
    let run = paxoskv("127.0.0.1:1", &["completions", "bash"], b"");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.out().contains("complete -F"), "{}", run.out());
}

#[test]
fn get_put_delete_against_a_real_cluster() {
    let cluster = Cluster::start();
    let servers = cluster.servers();
    let run = paxoskv(&servers, &["put", "color", "blue"], b"");
    assert_eq!(
        (run.code, run.out().as_str()),
        (0, "OK\n"),
        "{}",
        run.stderr
    );
    let run = paxoskv(&servers, &["get", "color"], b"");
    assert_eq!((run.code, run.stdout.as_slice()), (0, &b"blue"[..]));
    // A value that merely looks like the old marker is printed as the value it is.
    paxoskv(&servers, &["put", "odd", "(not found)"], b"");
    let run = paxoskv(&servers, &["get", "odd"], b"");
    assert_eq!((run.code, run.out().as_str()), (0, "(not found)"));
    let run = paxoskv(&servers, &["delete", "odd"], b"");
    assert_eq!(run.out(), "OK\n");
    let run = paxoskv(&servers, &["get", "odd"], b"");
    assert_eq!((run.code, run.out().as_str()), (1, ""));
    assert_eq!(run.stderr, "not found: odd\n");
    let run = paxoskv(&servers, &["-w", "json", "get", "color"], b"");
    let json: serde_json::Value = serde_json::from_slice(&run.stdout).expect("json");
    assert_eq!(json["value"], "blue");
    assert_eq!(json["found"], true);
    let run = paxoskv(&servers, &["put", "color", "red", "-w", "json"], b"");
    let json: serde_json::Value = serde_json::from_slice(&run.stdout).expect("json");
    assert_eq!(json["replaced"], true);
    let run = paxoskv(&servers, &["delete", "color", "-w", "table"], b"");
    assert_eq!(run.out(), "KEY    OUTCOME\ncolor  deleted\n");
}

#[test]
fn values_from_stdin_files_and_binary_encodings() {
    let cluster = Cluster::start();
    let servers = cluster.servers();
    // Larger than a shell allows as one argument, with bytes that are not UTF-8.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let run = paxoskv(&servers, &["put", "big", "-"], &big);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = paxoskv(&servers, &["get", "big"], b"");
    assert!(
        run.stdout == big,
        "stdin value must come back byte for byte"
    );
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), b"from a file\n").expect("write");
    let path = file.path().to_str().expect("utf-8 temp path");
    let run = paxoskv(&servers, &["put", "f", "--file", path], b"");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = paxoskv(&servers, &["get", "f"], b"");
    assert_eq!(run.stdout, b"from a file\n");
    let run = paxoskv(&servers, &["--hex", "put", "6b6579", "00ff0a"], b"");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = paxoskv(&servers, &["--base64", "get", "a2V5"], b"");
    assert_eq!(run.out(), "AP8K\n");
    let run = paxoskv(&servers, &["get", "key"], b"");
    assert_eq!(run.stdout, [0x00, 0xff, 0x0a]);
    let run = paxoskv(&servers, &["put", "toobig", "-"], &vec![b'x'; 2 << 20]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("over the limit"), "{}", run.stderr);
}

#[test]
fn reads_work_through_a_single_follower() {
    let cluster = Cluster::start();
    let leader = cluster.leader();
    let follower = cluster.addrs[(leader + 1) % 5].to_string();
    let run = paxoskv(&follower, &["put", "k", "through a follower"], b"");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let started = Instant::now();
    let run = paxoskv(&follower, &["get", "k"], b"");
    assert_eq!(
        (run.code, run.out().as_str()),
        (0, "through a follower"),
        "{}",
        run.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let run = paxoskv(&follower, &["status", "-w", "simple"], b"");
    let summary = run.out();
    assert!(
        summary.contains(&format!("leader: {leader}")),
        "the replica's own report names the leader: {summary}"
    );
}

#[test]
fn status_table_and_lost_majority() {
    let mut cluster = Cluster::start();
    let servers = cluster.servers();
    cluster.leader();
    let run = paxoskv(&servers, &["status"], b"");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = run.out();
    let header = out.lines().next().unwrap_or_default();
    for column in [
        "ID", "ADDRESS", "ROLE", "LEADER", "BALLOT", "APPLIED", "LAG", "DIGEST", "FAILURES",
    ] {
        assert!(header.contains(column), "{header}");
    }
    assert!(out.matches("follower").count() >= 4, "{out}");
    let run = paxoskv(&servers, &["status", "-w", "json"], b"");
    let json: serde_json::Value = serde_json::from_slice(&run.stdout).expect("json");
    assert_eq!(json["reachable"], 5);
    assert_eq!(json["majority"], true);
    for id in 0..3 {
        cluster.stop(id);
    }
    let run = paxoskv(&servers, &["status"], b"");
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .contains("no majority: only 2 of 5 replicas reachable; writes and linearizable"),
        "{}",
        run.stderr
    );
}

#[test]
fn piped_repl_script() {
    let cluster = Cluster::start();
    let script = b"PUT \"my key\" \"v w  \"\nGET \"my key\"\nFROB\nGET nothing\nDEL \"my key\"\n";
    let run = paxoskv(&cluster.servers(), &[], script);
    assert_eq!(run.code, 2, "one bad line: {}", run.stderr);
    assert_eq!(run.out(), "OK\nv w  \nOK\n");
    assert!(!run.out().contains("paxoskv>"), "no prompt on a pipe");
    assert!(run.stderr.contains("error: line 3"), "{}", run.stderr);
    assert!(run.stderr.contains("(not found)"), "{}", run.stderr);
    let run = paxoskv(&cluster.servers(), &["repl"], b"PUT a b\nGET a\n");
    assert_eq!(
        (run.code, run.out().as_str()),
        (0, "OK\nb\n"),
        "{}",
        run.stderr
    );
}

#[test]
fn prepopulate_is_silent_without_a_terminal() {
    let cluster = Cluster::start();
    let run = paxoskv(&cluster.servers(), &["prepopulate", "--count", "20"], b"");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.out().starts_with("prepopulated 20 keys"),
        "{}",
        run.out()
    );
    assert_eq!(run.stderr, "", "no progress bar on a pipe");
    let run = paxoskv(&cluster.servers(), &["get", "key20"], b"");
    assert_eq!(run.stdout, b"value20");
}

/// Conditional writes and `txn` as a user runs them: a held condition prints OK and exits 0,
/// a failed one prints why and exits 3 (not an error), and `get -w json` shows the revisions.
#[test]
fn conditional_writes_and_txn_exit_3_when_the_condition_fails() {
    let cluster = Cluster::start();
    let s = cluster.servers();
    let created = paxoskv(&s, &["put", "n", "1", "--if-absent"], b"");
    assert_eq!(
        (created.code, created.out()),
        (0, "OK (revision 1)\n".into())
    );
    let again = paxoskv(&s, &["put", "n", "1", "--if-absent"], b"");
    assert_eq!(again.code, 3, "{}", again.stderr);
    assert_eq!(again.out(), "condition failed: n not written\n");
    assert_eq!(
        paxoskv(&s, &["put", "n", "2", "--if-version", "1"], b"").code,
        0
    );
    assert_eq!(
        paxoskv(&s, &["put", "n", "3", "--if-version", "1"], b"").code,
        3
    );
    assert_eq!(
        paxoskv(&s, &["put", "n", "3", "--if-value", "2"], b"").code,
        0
    );
    let meta = paxoskv(&s, &["-w", "json", "get", "n"], b"");
    assert_eq!(meta.code, 0, "{}", meta.stderr);
    let json: serde_json::Value = serde_json::from_slice(&meta.stdout).expect("json");
    assert_eq!(json["value"], "3");
    assert_eq!(json["version"], 3);
    assert_eq!(json["create_revision"], 1);
    assert_eq!(json["mod_revision"], 3);
    let shown = paxoskv(&s, &["get", "n", "--show-meta"], b"");
    assert_eq!(
        shown.out(),
        "3\ncreate_revision=1 mod_revision=3 version=3\n"
    );
    assert_eq!(
        paxoskv(&s, &["delete", "n", "--if-version", "2"], b"").code,
        3
    );

    // The README's example, as written.
    let text = b"if version(k1) == 3\nif value(k2) == \"x\"\nif absent(k3)\n\
                 then put k1 \"v\"\nthen delete k2\nelse get k1\n";
    let failed = paxoskv(&s, &["txn"], text);
    assert_eq!(failed.code, 3, "{}", failed.stderr);
    assert_eq!(failed.out(), "FAILED (revision 3)\nget k1: not found\n");
    let ok = paxoskv(
        &s,
        &["txn"],
        b"if absent(k1)\nthen put k1 \"v\"\nthen get k1\n",
    );
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert_eq!(
        ok.out(),
        "SUCCEEDED (revision 4)\nput k1: created\n\
         get k1: v (create_revision=4 mod_revision=4 version=1)\n"
    );
    let bad = paxoskv(&s, &["txn"], b"if version(k1) ~ 3\n");
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("line 1"), "{}", bad.stderr);
}

/// Starts `paxoskv ARGS` in the background with its stdout piped.
fn spawn_paxoskv(servers: &str, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_paxoskv"))
        .env("PAXOSKV_SERVERS", servers)
        .env_remove("RUST_LOG")
        .args(["--timeout", "5s"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start paxoskv")
}

#[test]
fn watch_prints_every_change_of_a_prefix_in_order_across_replica_stops() {
    let mut cluster = Cluster::start();
    let s = cluster.servers();
    // --idle-exit bounds the watch if an event never comes; --max-events ends it on time.
    let watcher = spawn_paxoskv(
        &s,
        &[
            "watch",
            "w/",
            "--from-revision",
            "1",
            "--max-events",
            "5",
            "--idle-exit",
            "30s",
            "--poll",
            "2s",
        ],
    );
    let ok = |args: &[&str], stdin: &[u8]| {
        let run = paxoskv(&s, args, stdin);
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
    };
    ok(&["put", "w/1", "x"], b""); // revision 1
    ok(&["put", "other", "y"], b""); // 2: not under w/
    ok(&["delete", "w/1"], b""); // 3
    ok(&["delete", "w/1"], b""); // nothing deleted: no revision, no event
    ok(&["txn"], b"then put w/2 \"2\"\nthen put w/3 \"3\"\n"); // 4, both writes
                                                               // The replica serving the watch (the first in the list: a new client knows no leader)
                                                               // and the leader go away mid-watch; three of five still make a majority.
    let leader = cluster.leader();
    cluster.stop(0);
    if leader != 0 {
        cluster.stop(leader);
    }
    ok(&["put", "w/4", "4"], b""); // 5, through a new leader
    let out = watcher.wait_with_output().expect("watch finished");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1 PUT w/1 x\n3 DELETE w/1\n4 PUT w/2 2\n4 PUT w/3 3\n5 PUT w/4 4\n"
    );
}

#[test]
fn a_watch_from_before_the_history_is_refused_with_the_oldest_revision() {
    let cluster = Cluster::start_with(|o| o.watch_history_events = 2);
    let s = cluster.servers();
    for i in 1..=5 {
        let run = paxoskv(&s, &["put", &format!("k{i}"), "v"], b"");
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    // Every replica keeps revisions 4 and 5 only (once it applied them).
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let run = paxoskv(
            &s,
            &["watch", "", "--from-revision", "1", "--idle-exit", "1s"],
            b"",
        );
        if run.stderr.contains("oldest: 4") || Instant::now() > deadline {
            break run;
        }
    };
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("--from-revision 4"),
        "{}",
        refused.stderr
    );
    let json = paxoskv(
        &s,
        &[
            "-w",
            "json",
            "watch",
            "",
            "--from-revision",
            "4",
            "--max-events",
            "2",
        ],
        b"",
    );
    assert_eq!(json.code, 0, "{}", json.stderr);
    let lines: Vec<serde_json::Value> = json
        .out()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["key"], "k4");
    assert_eq!(lines[0]["kind"], "put");
    assert_eq!(lines[1]["revision"], 5);
    assert_eq!(lines[1]["version"], 1);
}
