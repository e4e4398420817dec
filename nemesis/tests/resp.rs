//! The Redis protocol front end against real server processes: the `redis` crate and the
//! real `redis-cli` as clients, and the paxoskv client on the same data.

mod support;

use paxoskv_client::{Client, ClientConfig};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{free_addrs, server_bin, spawn_replica_with, Processes};

/// Largest value the test clusters accept, so an oversize bulk is cheap to send.
const MAX_VALUE_BYTES: usize = 4096;

/// A cluster of `n` durable processes, each with a RESP port; returns them, the replica
/// addresses and the RESP addresses.
fn resp_cluster(
    dir: &Path,
    n: usize,
    extra: &[String],
) -> (Processes, Vec<SocketAddr>, Vec<SocketAddr>) {
    let free = free_addrs(2 * n);
    let (addrs, resp) = (free[..n].to_vec(), free[n..].to_vec());
    let mut procs = Processes(Vec::new());
    for (id, resp_addr) in resp.iter().enumerate() {
        let mut args = vec![
            "--resp-port".to_string(),
            resp_addr.port().to_string(),
            "--max-value-bytes".to_string(),
            MAX_VALUE_BYTES.to_string(),
        ];
        args.extend(extra.iter().cloned());
        let data = dir.join(format!("replica-{id}"));
        procs
            .0
            .push(spawn_replica_with(server_bin(), id, &addrs, &data, &args));
    }
    (procs, addrs, resp)
}

fn connect(addr: SocketAddr, query: &str) -> redis::Connection {
    let client = redis::Client::open(format!("redis://{addr}/{query}")).expect("redis URL");
    let con = client
        .get_connection_with_timeout(Duration::from_secs(10))
        .expect("connect to the RESP port");
    con.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("read timeout");
    con
}

fn info_field(con: &mut redis::Connection, field: &str) -> Option<String> {
    let info: String = redis::cmd("INFO").query(con).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
}

/// Polls INFO on every RESP port (bounded) until one says it leads; returns its index.
fn wait_leader(resp: &[SocketAddr], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        for (i, addr) in resp.iter().enumerate() {
            let mut con = connect(*addr, "");
            if info_field(&mut con, "paxoskv_role").as_deref() == Some("leader") {
                return i;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no replica became leader within {within:?}");
}

fn paxoskv_client(addrs: &[SocketAddr]) -> Client {
    let mut config = ClientConfig::with_servers(addrs.to_vec());
    config.timeout = Duration::from_secs(10);
    Client::connect(config).expect("valid client config")
}

fn server_error(result: redis::RedisResult<redis::Value>) -> String {
    match result {
        Ok(v) => panic!("expected an error reply, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn redis_clients_read_and_write_through_leader_and_followers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_procs, addrs, resp) = resp_cluster(dir.path(), 3, &[]);
    let leader = wait_leader(&resp, Duration::from_secs(20));
    let follower = (leader + 1) % resp.len();
    let mut on_leader = connect(resp[leader], "");
    // A follower forwards writes and linearizable reads to the leader.
    let mut on_follower = connect(resp[follower], "");

    let () = redis::cmd("SET")
        .arg("a")
        .arg("1")
        .query(&mut on_follower)
        .expect("SET via follower");
    let got: Option<String> = redis::cmd("GET")
        .arg("a")
        .query(&mut on_leader)
        .expect("GET");
    assert_eq!(got.as_deref(), Some("1"));
    let () = redis::cmd("SET")
        .arg("b")
        .arg("2")
        .query(&mut on_leader)
        .expect("SET via leader");
    let got: Option<String> = redis::cmd("GET")
        .arg("b")
        .query(&mut on_follower)
        .expect("GET via follower");
    assert_eq!(
        got.as_deref(),
        Some("2"),
        "a follower's read sees the leader's write"
    );
    let n: i64 = redis::cmd("EXISTS")
        .arg("a")
        .arg("nope")
        .arg("b")
        .query(&mut on_follower)
        .expect("EXISTS");
    assert_eq!(n, 2);
    let values: Vec<Option<String>> = redis::cmd("MGET")
        .arg("a")
        .arg("nope")
        .arg("b")
        .query(&mut on_follower)
        .expect("MGET");
    assert_eq!(values, vec![Some("1".into()), None, Some("2".into())]);
    let deleted: i64 = redis::cmd("DEL")
        .arg("a")
        .arg("nope")
        .query(&mut on_follower)
        .expect("DEL");
    assert_eq!(deleted, 1, "DEL counts only keys that existed");
    let got: Option<String> = redis::cmd("GET")
        .arg("a")
        .query(&mut on_leader)
        .expect("GET");
    assert_eq!(got, None);

    // The same data through the paxoskv client, both ways.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut client = paxoskv_client(&addrs);
    let from_resp = runtime.block_on(client.get("b")).expect("paxoskv get");
    assert_eq!(from_resp, Some(b"2".to_vec()));
    runtime
        .block_on(client.put("from-cli", vec![0, 159, 146, 150]))
        .expect("paxoskv put");
    let binary: Vec<u8> = redis::cmd("GET")
        .arg("from-cli")
        .query(&mut on_follower)
        .expect("GET binary");
    assert_eq!(binary, vec![0, 159, 146, 150]);

    // Pipelining: 200 requests in one batch, answered in order.
    let mut pipe = redis::pipe();
    for i in 0..100 {
        pipe.cmd("SET").arg(format!("p{i}")).arg(i).ignore();
        pipe.cmd("GET").arg(format!("p{i}"));
    }
    let values: Vec<i64> = pipe.query(&mut on_follower).expect("pipeline");
    assert_eq!(values, (0..100).collect::<Vec<i64>>());
    let last = runtime.block_on(client.get("p99")).expect("paxoskv get");
    assert_eq!(last, Some(b"99".to_vec()));

    // RESP3 after HELLO 3 (the crate sends it for protocol=resp3).
    let mut resp3 = connect(resp[follower], "?protocol=resp3");
    let got: Option<String> = redis::cmd("GET")
        .arg("b")
        .query(&mut resp3)
        .expect("GET over RESP3");
    assert_eq!(got.as_deref(), Some("2"));
    let missing: redis::Value = redis::cmd("GET")
        .arg("nope")
        .query(&mut resp3)
        .expect("GET nil");
    assert_eq!(missing, redis::Value::Nil);

    // Errors: unknown commands, options not supported yet, and an oversize bulk string,
    // which ends the connection as Redis does.
    let e = server_error(redis::cmd("FLY").arg("high").query(&mut on_leader));
    assert!(
        e.contains("unknown command 'FLY', with args beginning with: 'high'"),
        "{e}"
    );
    let e = server_error(
        redis::cmd("SET")
            .arg("k")
            .arg("v")
            .arg("KEEPTTL")
            .query(&mut on_leader),
    );
    assert!(e.contains("not supported"), "{e}");
    let got: Option<String> = redis::cmd("GET")
        .arg("k")
        .query(&mut on_leader)
        .expect("GET");
    assert_eq!(got, None, "a refused SET KEEPTTL wrote nothing");
    let e = server_error(
        redis::cmd("SET")
            .arg("big")
            .arg(vec![b'x'; MAX_VALUE_BYTES + 1])
            .query(&mut on_leader),
    );
    assert!(e.contains("Protocol error: invalid bulk length"), "{e}");
    assert!(
        redis::cmd("PING").query::<String>(&mut on_leader).is_err(),
        "the connection is closed after a protocol error"
    );
    let mut fresh = connect(resp[leader], "");
    let () = redis::cmd("SET")
        .arg("big")
        .arg(vec![b'x'; MAX_VALUE_BYTES])
        .query(&mut fresh)
        .expect("a value of exactly the limit is accepted");
    let n: i64 = redis::cmd("EXISTS")
        .arg("big")
        .query(&mut fresh)
        .expect("EXISTS");
    assert_eq!(n, 1);
}

#[test]
fn keys_scan_and_dbsize_read_the_ordered_map_linearizably() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_procs, _addrs, resp) = resp_cluster(dir.path(), 3, &[]);
    let leader = wait_leader(&resp, Duration::from_secs(20));
    let follower = (leader + 1) % resp.len();
    // Through a follower: scans and counts are forwarded to the leader like GET.
    let mut con = connect(resp[follower], "");
    let mut pipe = redis::pipe();
    for i in 0..25 {
        pipe.cmd("SET").arg(format!("user:{i:02}")).arg(i).ignore();
    }
    pipe.cmd("SET").arg("other").arg("x").ignore();
    let () = pipe.query(&mut con).expect("SETs");
    // A write through the leader is seen at once by the follower's DBSIZE and KEYS.
    let mut on_leader = connect(resp[leader], "");
    let () = redis::cmd("SET")
        .arg("user:99")
        .arg("last")
        .query(&mut on_leader)
        .expect("SET");
    let size: i64 = redis::cmd("DBSIZE").query(&mut con).expect("DBSIZE");
    assert_eq!(size, 27);

    let mut users: Vec<String> = redis::cmd("KEYS")
        .arg("user:*")
        .query(&mut con)
        .expect("KEYS");
    users.sort();
    let mut wanted: Vec<String> = (0..25).map(|i| format!("user:{i:02}")).collect();
    wanted.push("user:99".into());
    assert_eq!(users, wanted);
    let exact: Vec<String> = redis::cmd("KEYS")
        .arg("other")
        .query(&mut con)
        .expect("KEYS");
    assert_eq!(exact, ["other"]);
    let tens: Vec<String> = redis::cmd("KEYS")
        .arg("user:1?")
        .query(&mut con)
        .expect("KEYS ?");
    assert_eq!(tens.len(), 10);

    // SCAN by hand: the cursor is an integer; "0" starts and ends.
    let (mut cursor, mut seen, mut pages) = (0u64, Vec::<String>::new(), 0);
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("user:*")
            .arg("COUNT")
            .arg(4)
            .query(&mut con)
            .expect("SCAN");
        seen.extend(keys);
        pages += 1;
        cursor = next;
        if cursor == 0 {
            break;
        }
        assert!(pages < 100, "SCAN does not end");
    }
    assert_eq!(seen, wanted, "every key once, in byte order");
    assert_eq!(pages, 7, "26 keys at COUNT 4");
    // The crate's own iterator (it parses cursors as integers).
    let mut iterated: Vec<String> = redis::Commands::scan(&mut con)
        .expect("SCAN iterator")
        .collect::<Result<_, _>>()
        .expect("SCAN pages");
    iterated.sort();
    assert_eq!(iterated.len(), 27);
    assert!(iterated.contains(&"other".to_string()));

    let e = server_error(redis::cmd("SCAN").arg(987654).query(&mut con));
    assert!(e.contains("invalid cursor"), "{e}");
    let e = server_error(
        redis::cmd("SCAN")
            .arg(0)
            .arg("COUNT")
            .arg("x")
            .query(&mut con),
    );
    assert!(e.contains("value is not an integer or out of range"), "{e}");
    let e = server_error(redis::cmd("DBSIZE").arg("x").query(&mut con));
    assert!(e.contains("wrong number of arguments for 'dbsize'"), "{e}");
}

fn get(con: &mut redis::Connection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(con).expect("GET")
}

#[test]
fn conditional_writes_and_counters_are_one_transaction_each() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_procs, _addrs, resp) = resp_cluster(dir.path(), 3, &[]);
    let leader = wait_leader(&resp, Duration::from_secs(20));
    let follower = (leader + 1) % resp.len();
    let mut con = connect(resp[follower], "");
    let set = |con: &mut redis::Connection, args: &[&str]| -> redis::Value {
        redis::cmd("SET").arg(args).query(con).expect("SET")
    };
    assert_eq!(set(&mut con, &["k", "1", "XX"]), redis::Value::Nil);
    assert_eq!(
        get(&mut con, "k"),
        None,
        "SET XX of a missing key writes nothing"
    );
    assert_eq!(set(&mut con, &["k", "1", "NX"]), redis::Value::Okay);
    assert_eq!(set(&mut con, &["k", "2", "NX"]), redis::Value::Nil);
    assert_eq!(get(&mut con, "k").as_deref(), Some("1"));
    assert_eq!(set(&mut con, &["k", "3", "XX"]), redis::Value::Okay);
    let old: Option<String> = redis::cmd("SET")
        .arg(&["k", "4", "GET"])
        .query(&mut con)
        .expect("SET GET");
    assert_eq!(old.as_deref(), Some("3"));
    let n: i64 = redis::cmd("SETNX")
        .arg(&["k", "x"])
        .query(&mut con)
        .expect("SETNX");
    assert_eq!(n, 0);
    assert_eq!(get(&mut con, "k").as_deref(), Some("4"));

    let () = redis::cmd("MSET")
        .arg(&["m1", "a", "m2", "b"])
        .query(&mut con)
        .expect("MSET");
    let both: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&["m1", "m2"])
        .query(&mut con)
        .expect("MGET");
    assert_eq!(both, [Some("a".to_string()), Some("b".to_string())]);
    let n: i64 = redis::cmd("MSETNX")
        .arg(&["m2", "z", "m3", "c"])
        .query(&mut con)
        .expect("MSETNX");
    assert_eq!(n, 0);
    assert_eq!(get(&mut con, "m3"), None, "MSETNX is all or nothing");
    let old: Option<String> = redis::cmd("GETSET")
        .arg(&["m1", "A"])
        .query(&mut con)
        .expect("GETSET");
    assert_eq!(old.as_deref(), Some("a"));
    assert_eq!(get(&mut con, "m1").as_deref(), Some("A"));
    let old: Option<String> = redis::cmd("GETDEL")
        .arg("m1")
        .query(&mut con)
        .expect("GETDEL");
    assert_eq!(old.as_deref(), Some("A"));
    assert_eq!(get(&mut con, "m1"), None);

    let n: i64 = redis::cmd("INCRBY")
        .arg(&["n", "41"])
        .query(&mut con)
        .expect("INCRBY");
    assert_eq!(n, 41);
    let n: i64 = redis::cmd("INCR").arg("n").query(&mut con).expect("INCR");
    assert_eq!(n, 42);
    let n: i64 = redis::cmd("DECRBY")
        .arg(&["n", "50"])
        .query(&mut con)
        .expect("DECRBY");
    assert_eq!(n, -8);
    let e = server_error(redis::cmd("INCR").arg("m2").query(&mut con));
    assert!(e.contains("value is not an integer or out of range"), "{e}");
    assert_eq!(
        get(&mut con, "m2").as_deref(),
        Some("b"),
        "a failed INCR writes nothing"
    );
    let n: i64 = redis::cmd("APPEND")
        .arg(&["m2", "cd"])
        .query(&mut con)
        .expect("APPEND");
    assert_eq!(n, 3);
    assert_eq!(get(&mut con, "m2").as_deref(), Some("bcd"));

    // Concurrent INCRs from every replica's port: compare-and-swap loses none.
    let per_client = 25;
    let threads: Vec<_> = resp
        .iter()
        .map(|addr| {
            let addr = *addr;
            std::thread::spawn(move || {
                let mut con = connect(addr, "");
                for _ in 0..per_client {
                    let _: i64 = redis::cmd("INCR")
                        .arg("shared")
                        .query(&mut con)
                        .expect("INCR");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("INCR thread");
    }
    let total: i64 = redis::cmd("GET")
        .arg("shared")
        .query(&mut con)
        .expect("GET");
    assert_eq!(total, per_client * resp.len() as i64);
}

#[test]
fn with_a_token_every_command_needs_auth_first() {
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret\n").expect("write token");
    let extra = vec![
        "--auth-token-file".to_string(),
        token_file.display().to_string(),
    ];
    let (_procs, _addrs, resp) = resp_cluster(dir.path(), 1, &extra);
    let client = redis::Client::open(format!("redis://{}/", resp[0])).expect("URL");
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(10))
        .expect("connect");
    let e = server_error(redis::cmd("SET").arg("k").arg("v").query(&mut con));
    assert!(e.contains("NOAUTH"), "{e}");
    let e = server_error(redis::cmd("AUTH").arg("wrong").query(&mut con));
    assert!(e.contains("WRONGPASS"), "{e}");
    let () = redis::cmd("AUTH")
        .arg("s3cret")
        .query(&mut con)
        .expect("AUTH");
    let () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query(&mut con)
        .expect("SET after AUTH");
    // The crate authenticates from the URL's password.
    let client = redis::Client::open(format!("redis://:s3cret@{}/", resp[0])).expect("URL");
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(10))
        .expect("connect with a password");
    let got: Option<String> = redis::cmd("GET").arg("k").query(&mut con).expect("GET");
    assert_eq!(got.as_deref(), Some("v"));
}

#[test]
fn a_tls_replica_refuses_a_plaintext_resp_port_unless_told() {
    let dir = tempfile::tempdir().expect("temp dir");
    support::gen_certs(&dir.path().join("certs"), 1);
    let addrs = free_addrs(2);
    let out = Command::new(server_bin())
        .args([
            "--replica",
            "0",
            "--peers",
            &addrs[0].to_string(),
            "--in-memory",
        ])
        .arg("--tls-dir")
        .arg(dir.path().join("certs"))
        .args(["--resp-port", &addrs[1].port().to_string()])
        .output()
        .expect("run paxoskv-server");
    assert!(!out.status.success(), "started with a plaintext RESP port");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--resp-insecure"), "{stderr}");
}

/// The real redis-cli (Debian package redis-tools); skipped when it is not installed,
/// unless PAXOSKV_REQUIRE_REDIS_TOOLS=1.
#[test]
fn redis_cli_works_against_paxoskv() {
    let available = Command::new("redis-cli").arg("--version").output().is_ok();
    if !available {
        assert!(
            std::env::var("PAXOSKV_REQUIRE_REDIS_TOOLS").as_deref() != Ok("1"),
            "redis-cli is required (PAXOSKV_REQUIRE_REDIS_TOOLS=1) but not installed"
        );
        println!("skipped: redis-cli not installed (apt-get install redis-tools)");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (_procs, _addrs, resp) = resp_cluster(dir.path(), 3, &[]);
    let leader = wait_leader(&resp, Duration::from_secs(20));
    let follower = (leader + 1) % resp.len();
    let cli = |port: u16, args: &[&str]| -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let port = resp[follower].port();
    assert_eq!(cli(port, &["PING"]), "PONG");
    assert_eq!(cli(port, &["SET", "cli-key", "hello world"]), "OK");
    assert_eq!(cli(resp[leader].port(), &["GET", "cli-key"]), "hello world");
    assert_eq!(cli(port, &["EXISTS", "cli-key"]), "1");
    assert_eq!(cli(port, &["DEL", "cli-key"]), "1");
    assert_eq!(cli(port, &["GET", "cli-key"]), "");
    assert!(cli(port, &["INFO"]).contains("# Replication"));
    let hello = cli(port, &["-3", "HELLO", "3"]);
    assert!(hello.contains("paxoskv"), "{hello}");
    assert_eq!(cli(port, &["SET", "scan:a", "1"]), "OK");
    assert_eq!(cli(port, &["SET", "scan:b", "2"]), "OK");
    assert_eq!(cli(port, &["KEYS", "scan:*"]), "scan:a\nscan:b");
    assert_eq!(
        cli(port, &["--scan", "--pattern", "scan:*"]),
        "scan:a\nscan:b"
    );
    assert!(cli(port, &["DBSIZE"]).parse::<u64>().is_ok_and(|n| n >= 2));
    assert_eq!(cli(port, &["SET", "scan:a", "9", "NX"]), "");
    assert_eq!(cli(port, &["INCRBY", "scan:a", "41"]), "42");
    assert_eq!(cli(port, &["MSET", "m:x", "1", "m:y", "2"]), "OK");
    assert_eq!(cli(port, &["GETSET", "m:x", "3"]), "1");
    let unknown = cli(port, &["NOSUCH", "x"]);
    assert!(unknown.contains("unknown command 'NOSUCH'"), "{unknown}");
    // Interactive start-up (COMMAND DOCS, then a command from stdin) works too.
    let mut child = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run redis-cli");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"SET piped 1\nGET piped\n").expect("write");
    }
    let out = child.wait_with_output().expect("redis-cli exits");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("OK") && text.contains('1'), "{text}");
}

#[test]
fn set_ex_and_setex_keys_expire_through_leases() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_procs, _addrs, resp) = resp_cluster(dir.path(), 3, &[]);
    let leader = wait_leader(&resp, Duration::from_secs(20));
    // Through a follower: the lease grant and the put are forwarded like any write.
    let mut con = connect(resp[(leader + 1) % resp.len()], "");
    let started = Instant::now();
    let ok = |con: &mut redis::Connection, cmd: &str, args: &[&str]| {
        let v: redis::Value = redis::cmd(cmd).arg(args).query(con).expect(cmd);
        assert_eq!(v, redis::Value::Okay, "{cmd} {args:?}");
    };
    ok(&mut con, "SET", &["short", "1", "PX", "1000"]);
    ok(&mut con, "SETEX", &["long", "60", "2"]);
    ok(&mut con, "SET", &["plain", "3"]);
    assert_eq!(get(&mut con, "short").as_deref(), Some("1"));
    let refused = server_error(
        redis::cmd("SET")
            .arg(&["x", "1", "PX", "10"])
            .query(&mut con),
    );
    assert!(refused.contains("invalid expire time"), "{refused}");
    assert_eq!(get(&mut con, "x"), None);
    // The 1 s key goes (bounded wait), the others stay.
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(&mut con, "short").is_some() {
        assert!(Instant::now() < deadline, "SET PX 1000 never expired");
        std::thread::sleep(Duration::from_millis(50));
    }
    let lived = started.elapsed();
    assert!(
        lived >= Duration::from_millis(950),
        "expired early: {lived:?}"
    );
    assert_eq!(get(&mut con, "long").as_deref(), Some("2"));
    assert_eq!(get(&mut con, "plain").as_deref(), Some("3"));
    // TTL through a follower: the key's lease, timed on the leader's clock.
    let int = |con: &mut redis::Connection, words: &[&str]| -> i64 {
        redis::cmd(words[0])
            .arg(&words[1..])
            .query(con)
            .expect(words[0])
    };
    let long_s = int(&mut con, &["TTL", "long"]);
    assert!((50..=60).contains(&long_s), "TTL long = {long_s}");
    let long_ms = int(&mut con, &["PTTL", "long"]);
    assert!(
        (50_000..=60_000).contains(&long_ms),
        "PTTL long = {long_ms}"
    );
    assert_eq!(int(&mut con, &["TTL", "plain"]), -1);
    assert_eq!(
        int(&mut con, &["TTL", "short"]),
        -2,
        "expired with its lease"
    );
    // EXPIRE puts the value again on a new lease; PERSIST takes it off again.
    assert_eq!(int(&mut con, &["EXPIRE", "plain", "30"]), 1);
    let plain_s = int(&mut con, &["TTL", "plain"]);
    assert!((20..=30).contains(&plain_s), "TTL plain = {plain_s}");
    assert_eq!(get(&mut con, "plain").as_deref(), Some("3"));
    assert_eq!(int(&mut con, &["PERSIST", "plain"]), 1);
    assert_eq!(int(&mut con, &["TTL", "plain"]), -1);
    assert_eq!(int(&mut con, &["EXPIRE", "short", "30"]), 0, "no such key");
    eprintln!("SET PX 1000 was gone {lived:?} after it was sent");
}
