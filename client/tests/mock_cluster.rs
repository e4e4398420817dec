//! The retry loop against an in-test cluster of fake replicas speaking the real wire protocol.

use futures::StreamExt;
use paxoskv::{Command, CommandId, Outcome};
use paxoskv_client::{Client, ClientConfig, ClientError, KvError};
use paxoskv_service::tls::{read_preamble, write_verdict};
use paxoskv_service::{
    bincode_transport, CountReply, GetReply, KeyRange, KvRpc, ReadMode, ReplicaStatus, ScanReply,
    ServiceTag, WatchReply, WriteReply, KV_MAX_FRAME_BYTES,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tarpc::context::Context;
use tarpc::server::{BaseChannel, Channel};
use tokio::net::TcpListener;

/// What every fake replica shares: the "replicated" map and the knobs of the test.
#[derive(Default)]
struct State {
    addrs: Vec<SocketAddr>,
    leader: usize,
    map: HashMap<String, Vec<u8>>,
    sessions: HashMap<u64, (u64, Outcome)>,
    /// Every write request the leader saw, retries included.
    seen: Vec<CommandId>,
    /// Apply the next writes but answer `Timeout`, as if the reply was lost.
    lose_replies: u32,
    /// Answer every request with this error.
    always: Option<KvError>,
    /// A broken store: acknowledge deletes without doing them.
    ignore_deletes: bool,
    /// Per replica (by index): the oldest revision its watch history holds (absent: 1).
    watch_oldest: HashMap<usize, u64>,
    /// Replicas whose watch never answers (as if partitioned).
    watch_silent: Vec<usize>,
}

#[derive(Clone)]
struct Fake {
    index: usize,
    state: Arc<Mutex<State>>,
}

impl Fake {
    fn check_leader(&self, state: &State) -> Result<(), KvError> {
        if let Some(error) = &state.always {
            return Err(error.clone());
        }
        if self.index != state.leader {
            return Err(KvError::NotLeader {
                leader: Some(state.leader as u32),
                leader_addr: Some(state.addrs[state.leader].to_string()),
            });
        }
        Ok(())
    }

    fn write(
        &self,
        id: CommandId,
        key: String,
        value: Option<Vec<u8>>,
    ) -> Result<WriteReply, KvError> {
        let mut state = self.state.lock().unwrap();
        self.check_leader(&state)?;
        state.seen.push(id);
        let outcome = match state.sessions.get(&id.client_id) {
            Some((seq, outcome)) if *seq == id.seq => outcome.clone(),
            _ => {
                let outcome = match value {
                    Some(value) => Outcome::Put {
                        replaced: state.map.insert(key, value).is_some(),
                    },
                    None if state.ignore_deletes => Outcome::Delete { existed: true },
                    None => Outcome::Delete {
                        existed: state.map.remove(&key).is_some(),
                    },
                };
                state
                    .sessions
                    .insert(id.client_id, (id.seq, outcome.clone()));
                outcome
            }
        };
        if state.lose_replies > 0 {
            state.lose_replies -= 1;
            return Err(KvError::Timeout { timeout_ms: 1 });
        }
        Ok(WriteReply {
            outcome,
            leader_addr: Some(state.addrs[state.leader].to_string()),
        })
    }
}

impl KvRpc for Fake {
    async fn get(self, _: Context, key: String, _mode: ReadMode) -> Result<GetReply, KvError> {
        let state = self.state.lock().unwrap();
        self.check_leader(&state)?;
        Ok(GetReply {
            value: state.map.get(&key).cloned(),
            served_by: self.index as u32,
            stale: false,
            leader_addr: Some(state.addrs[state.leader].to_string()),
        })
    }

    async fn put(
        self,
        _: Context,
        id: CommandId,
        key: String,
        value: Vec<u8>,
    ) -> Result<WriteReply, KvError> {
        if key == "invalid" {
            return Err(KvError::InvalidRequest("refused by the fake".into()));
        }
        self.write(id, key, Some(value))
    }

    async fn delete(self, _: Context, id: CommandId, key: String) -> Result<WriteReply, KvError> {
        self.write(id, key, None)
    }

    async fn register_session(self, _: Context, _: CommandId) -> Result<WriteReply, KvError> {
        let state = self.state.lock().unwrap();
        self.check_leader(&state)?;
        Ok(WriteReply {
            outcome: Outcome::Registered,
            leader_addr: Some(state.addrs[state.leader].to_string()),
        })
    }

    async fn propose(self, _: Context, _: Command, _: bool) -> Result<WriteReply, KvError> {
        Err(KvError::InvalidRequest("not in the fake".into()))
    }

    async fn scan(
        self,
        _: Context,
        _: KeyRange,
        _: Option<String>,
        _: u32,
        _: ReadMode,
    ) -> Result<ScanReply, KvError> {
        Err(KvError::InvalidRequest("not in the fake".into()))
    }

    async fn count(self, _: Context, _: KeyRange, _: ReadMode) -> Result<CountReply, KvError> {
        Err(KvError::InvalidRequest("not in the fake".into()))
    }

    async fn txn(
        self,
        _: Context,
        _: CommandId,
        _: paxoskv::Txn,
    ) -> Result<paxoskv_service::TxnReply, KvError> {
        Err(KvError::InvalidRequest("not in the fake".into()))
    }

    async fn get_meta(
        self,
        _: Context,
        _: String,
        _: ReadMode,
    ) -> Result<paxoskv_service::GetMetaReply, KvError> {
        Err(KvError::InvalidRequest("not in the fake".into()))
    }

    /// Revision R is a put of `kR` = `vR`, for R in 1..=10, on every replica that holds it.
    async fn watch(
        self,
        _: Context,
        _: KeyRange,
        from: u64,
        limit: u32,
        _: u32,
    ) -> Result<WatchReply, KvError> {
        let (oldest, silent) = {
            let state = self.state.lock().unwrap();
            let oldest = state.watch_oldest.get(&self.index).copied().unwrap_or(1);
            (oldest, state.watch_silent.contains(&self.index))
        };
        if silent {
            std::future::pending::<()>().await;
        }
        if from < oldest {
            return Err(KvError::Compacted {
                oldest_revision: oldest,
            });
        }
        let events: Vec<_> = (from..=10)
            .take(limit as usize)
            .map(|revision| paxoskv_service::Event {
                kind: paxoskv_service::EventKind::Put,
                key: format!("k{revision}"),
                value: format!("v{revision}").into_bytes(),
                revision,
                meta: paxoskv::KeyMeta::default(),
            })
            .collect();
        Ok(WatchReply {
            next_revision: events.last().map_or(from, |e| e.revision + 1),
            events,
            served_by: self.index as u32,
        })
    }

    async fn lease_grant(
        self,
        _: Context,
        _: CommandId,
        _: u64,
    ) -> Result<paxoskv_service::LeaseGrantReply, KvError> {
        Err(KvError::InvalidRequest("not in the fake".into()))
    }

    async fn lease_revoke(
        self,
        _: Context,
        _: CommandId,
        _: u64,
    ) -> Result<paxoskv_service::LeaseRevokeReply, KvError> {
        Err(KvError::InvalidRequest("not in the fake".into()))
    }

    async fn lease_keepalive(
        self,
        _: Context,
        _: u64,
    ) -> Result<paxoskv_service::LeaseKeepAliveReply, KvError> {
        Err(KvError::InvalidRequest("not in the fake".into()))
    }

    async fn lease_ttl(
        self,
        _: Context,
        _: u64,
    ) -> Result<paxoskv_service::LeaseTtlReply, KvError> {
        Err(KvError::InvalidRequest("not in the fake".into()))
    }

    async fn set_partition(self, _: Context, _: Vec<u32>) -> Result<(), KvError> {
        Err(KvError::InvalidRequest(
            "the fake has no fault control".into(),
        ))
    }

    async fn status(self, _: Context) -> ReplicaStatus {
        let state = self.state.lock().unwrap();
        ReplicaStatus {
            id: self.index as u32,
            addr: state.addrs[self.index].to_string(),
            role: if self.index == state.leader {
                "leader"
            } else {
                "follower"
            }
            .into(),
            leader: Some(state.leader as u32),
            ..ReplicaStatus::default()
        }
    }
}

async fn serve(listener: TcpListener, fake: Fake) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let fake = fake.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            // The preamble: tag byte and (empty) token, answered "accepted".
            match read_preamble(&mut stream).await {
                Ok((ServiceTag::Kv, _token)) => {}
                _ => return,
            }
            if write_verdict(&mut stream, Ok(())).await.is_err() {
                return;
            }
            let transport = bincode_transport(stream, KV_MAX_FRAME_BYTES);
            BaseChannel::with_defaults(transport)
                .execute(fake.serve())
                .for_each(|response| async move {
                    tokio::spawn(response);
                })
                .await;
        });
    }
}

/// Starts `live` fake replicas and adds `dead` closed addresses after them.
async fn cluster(live: usize, dead: usize, leader: usize) -> (Arc<Mutex<State>>, Vec<SocketAddr>) {
    let state = Arc::new(Mutex::new(State {
        leader,
        ..State::default()
    }));
    let mut addrs = Vec::new();
    for index in 0..live {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(listener.local_addr().unwrap());
        tokio::spawn(serve(
            listener,
            Fake {
                index,
                state: state.clone(),
            },
        ));
    }
    let closed: Vec<_> = (0..dead)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    addrs.extend(closed.iter().map(|l| l.local_addr().unwrap()));
    drop(closed);
    state.lock().unwrap().addrs = addrs.clone();
    (state, addrs)
}

fn client(addrs: Vec<SocketAddr>, timeout: Duration) -> Client {
    Client::connect(ClientConfig {
        servers: addrs,
        timeout,
        attempt_timeout: Duration::from_millis(200),
        ..ClientConfig::default()
    })
    .unwrap()
}

#[tokio::test]
async fn follows_the_leader_hint() {
    let (_state, addrs) = cluster(5, 0, 3).await;
    let mut client = client(addrs.clone(), Duration::from_secs(2));
    assert_eq!(
        client.put("k", b"v".to_vec()).await,
        Ok(Outcome::Put { replaced: false })
    );
    assert_eq!(client.leader(), Some(addrs[3]));
    assert_eq!(client.last_served_by(), Some(addrs[3]));
    assert_eq!(client.get("k").await, Ok(Some(b"v".to_vec())));
    assert_eq!(
        client.delete("k").await,
        Ok(Outcome::Delete { existed: true })
    );
    assert_eq!(
        client.delete("k").await,
        Ok(Outcome::Delete { existed: false })
    );
    assert_eq!(client.get("k").await, Ok(None));
}

#[tokio::test]
async fn a_retried_write_reuses_its_command_id() {
    let (state, addrs) = cluster(3, 0, 0).await;
    state.lock().unwrap().lose_replies = 2;
    let mut client = client(addrs, Duration::from_secs(2));
    // Applied on the first attempt; the retries must get the first result back.
    assert_eq!(
        client.put("k", b"v".to_vec()).await,
        Ok(Outcome::Put { replaced: false })
    );
    assert_eq!(
        client.put("k", b"w".to_vec()).await,
        Ok(Outcome::Put { replaced: true })
    );
    let state = state.lock().unwrap();
    let seen = &state.seen;
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen[..3].iter().all(|id| *id == seen[0]), "{seen:?}");
    assert_eq!(seen[3].seq, seen[0].seq + 1);
    assert_eq!(seen[3].client_id, client.client_id());
}

#[tokio::test]
async fn sessions_have_their_own_ids_and_share_connections() {
    let (state, addrs) = cluster(3, 0, 1).await;
    let mut first = client(addrs.clone(), Duration::from_secs(2));
    let mut second = first.new_session();
    assert_ne!(first.client_id(), second.client_id());
    first.put("a", b"1".to_vec()).await.unwrap();
    assert_eq!(second.leader(), Some(addrs[1]), "leader guess is shared");
    second.put("b", b"2".to_vec()).await.unwrap();
    let seen = state.lock().unwrap().seen.clone();
    assert_eq!(seen.len(), 2);
    assert_ne!(seen[0].client_id, seen[1].client_id);
}

#[tokio::test]
async fn non_retryable_errors_return_at_once() {
    let (_state, addrs) = cluster(3, 0, 0).await;
    let mut client = client(addrs, Duration::from_secs(5));
    let started = Instant::now();
    let error = client.put("invalid", b"v".to_vec()).await.unwrap_err();
    assert!(
        matches!(error, ClientError::Server(KvError::InvalidRequest(_))),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn server_unavailable_figures_are_preferred() {
    let (state, addrs) = cluster(3, 2, 0).await;
    state.lock().unwrap().always = Some(KvError::Unavailable {
        answered: 2,
        total: 5,
    });
    let mut client = client(addrs, Duration::from_millis(500));
    let started = Instant::now();
    let error = client.put("k", b"v".to_vec()).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(error.unavailable_counts(), Some((2, 5)), "{error}");
}

#[tokio::test]
async fn answered_counts_distinct_replicas() {
    let (state, addrs) = cluster(2, 3, 0).await;
    state.lock().unwrap().always = Some(KvError::Timeout { timeout_ms: 1 });
    let client = client(addrs, Duration::from_millis(600));
    let error = client.get("k").await.unwrap_err();
    assert_eq!(error.unavailable_counts(), Some((2, 5)), "{error}");
    assert!(
        error.to_string().contains("only 2 of 5 replicas answered"),
        "{error}"
    );
}

#[tokio::test]
async fn status_all_marks_dead_replicas() {
    let (_state, addrs) = cluster(2, 1, 1).await;
    let client = client(addrs.clone(), Duration::from_secs(1));
    let statuses = client.status_all().await;
    assert_eq!(
        statuses[0].1.as_ref().map(|s| s.role.clone()),
        Ok("follower".to_string())
    );
    assert_eq!(statuses[1].1.as_ref().map(|s| s.id), Ok(1));
    assert!(matches!(
        statuses[2].1,
        Err(ClientError::Unreachable { .. })
    ));
    assert_eq!(client.leader(), Some(addrs[1]));
}

/// Runs the `paxoskv` binary against `addrs` with `stdin`, bounded in time.
async fn run_cli(addrs: &[SocketAddr], args: &[&str], stdin: &str) -> (i32, String, String) {
    use tokio::io::AsyncWriteExt;
    let servers: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_paxoskv"))
        .args([
            "--servers",
            &servers.join(","),
            "--timeout",
            "1s",
            "--attempt-timeout",
            "200ms",
        ])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("the CLI finished in time")
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (
        output.status.code().unwrap_or(-1),
        text(output.stdout),
        text(output.stderr),
    )
}

#[tokio::test]
async fn cli_demo_passes_against_a_correct_store() {
    let (_state, addrs) = cluster(3, 0, 2).await;
    let (code, out, err) = run_cli(&addrs, &["demo"], "").await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Received operation -> PUT key3 value3 overwritten"),
        "{out}"
    );
    assert!(out.contains("Response from server -> (not found)"), "{out}");
    assert!(
        out.contains("demo: 19 operations, all answers correct"),
        "{out}"
    );
    // Again: leftovers of the first run must not count as wrong answers.
    let (code, out, err) = run_cli(&addrs, &["demo"], "").await;
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test]
async fn cli_demo_catches_a_broken_store() {
    let (state, addrs) = cluster(3, 0, 0).await;
    state.lock().unwrap().ignore_deletes = true;
    let (code, out, err) = run_cli(&addrs, &["demo"], "").await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("MISMATCH"), "{out}");
    assert!(!out.contains("all answers correct"), "{out}");
}

#[tokio::test]
async fn cli_get_put_delete_exit_codes() {
    let (_state, addrs) = cluster(3, 0, 0).await;
    let (code, out, _) = run_cli(&addrs, &["put", "k", "hello world"], "").await;
    assert_eq!((code, out.as_str()), (0, "OK\n"));
    // Raw bytes, no newline: stdout is not a terminal here.
    let (code, out, _) = run_cli(&addrs, &["get", "k"], "").await;
    assert_eq!((code, out.as_str()), (0, "hello world"));
    let (code, out, _) = run_cli(&addrs, &["delete", "k"], "").await;
    assert_eq!((code, out.as_str()), (0, "OK\n"));
    let (code, out, _) = run_cli(&addrs, &["delete", "k"], "").await;
    assert_eq!((code, out.as_str()), (0, "OK (key did not exist)\n"));
    let (code, out, err) = run_cli(&addrs, &["get", "k"], "").await;
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (1, "", "not found: k\n")
    );
    let (code, out, _) = run_cli(&addrs, &["prepopulate", "--count", "3"], "").await;
    assert_eq!(code, 0);
    assert!(out.starts_with("prepopulated 3 keys"), "{out}");
    let (code, out, _) = run_cli(&addrs, &["status", "-w", "simple"], "").await;
    assert_eq!(code, 0);
    assert!(out.contains("role=leader"), "{out}");
    let (code, _, err) = run_cli(&addrs, &["frobnicate"], "").await;
    assert_ne!(code, 0, "{err}");
}

#[tokio::test]
async fn cli_reports_an_unavailable_cluster() {
    let (_state, addrs) = cluster(0, 2, 0).await;
    let started = Instant::now();
    let (code, out, err) = run_cli(&addrs, &["put", "k", "v"], "").await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.starts_with("error: cannot connect to any replica"),
        "{err}"
    );
    assert!(err.contains("is the server running?"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let (code, out, err) = run_cli(&addrs, &["status"], "").await;
    assert_eq!(code, 2);
    assert!(out.contains("unreachable"), "{out}");
    assert!(err.contains("no majority: only 0 of 2"), "{err}");
}

#[tokio::test]
async fn cli_repl_reads_commands_until_eof() {
    let (_state, addrs) = cluster(3, 0, 1).await;
    let input =
        "PUT greeting hello big world\nget greeting\nFROB x\n\ndelete greeting\nGET greeting\n";
    let (code, out, err) = run_cli(&addrs, &["repl"], input).await;
    // Piped: no prompt, answers on stdout, errors on stderr, exit 2 for the bad line.
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(out, "OK\nhello big world\nOK\n");
    assert!(
        err.contains("error: line 3: cannot parse \"FROB x\"; usage: PUT"),
        "{err}"
    );
    assert!(err.contains("(not found)"), "{err}");
    assert!(err.contains("1 of 6 lines failed"), "{err}");
    let (code, out, _) = run_cli(&addrs, &["repl"], "exit\nPUT never reached\n").await;
    assert_eq!(code, 0);
    assert!(!out.contains("OK"), "{out}");
}

#[tokio::test]
async fn a_watch_moves_past_silent_and_compacted_replicas_without_a_gap() {
    let (state, addrs) = cluster(4, 1, 0).await;
    {
        let mut state = state.lock().unwrap();
        state.watch_silent = vec![0];
        state.watch_oldest.insert(1, 6);
    }
    let client = client(addrs.clone(), Duration::from_secs(3));
    let range = KeyRange::Prefix("k".into());
    let wait = Duration::from_millis(100);
    // 0 does not answer, 1 no longer holds revision 3: 2 serves, from exactly 3.
    let reply = client.watch_once(&range, 3, 4, wait).await.unwrap();
    assert_eq!(reply.served_by, 2);
    let revisions: Vec<u64> = reply.events.iter().map(|e| e.revision).collect();
    assert_eq!(revisions, [3, 4, 5, 6]);
    assert_eq!(reply.next_revision, 7);
    // The next poll sticks to the replica that served.
    let reply = client.watch_once(&range, 7, 10, wait).await.unwrap();
    assert_eq!((reply.served_by, reply.events.len()), (2, 4));
    // When every replica that answers has compacted past it, the watch says so.
    {
        let mut state = state.lock().unwrap();
        for index in 0..4 {
            state.watch_oldest.insert(index, 9);
        }
        state.watch_silent.clear();
    }
    assert_eq!(
        client.watch_once(&range, 4, 10, wait).await,
        Err(ClientError::Server(KvError::Compacted {
            oldest_revision: 9
        }))
    );
}
