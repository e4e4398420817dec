//! TLS, authentication and authorisation against real `paxoskv-server` processes on free
//! loopback ports, with certificates from `paxoskv-server gen-certs` in a temp directory.

mod support;

use paxoskv::message::{Accept, FetchChosen, Learn, Prepare, Response};
use paxoskv::{Ballot, Command, CommandId, Op, Value};
use paxoskv_client::{Client, ClientConfig, ClientError, ClientSecurity, KvError};
use paxoskv_service::tls::{security_error, ClientTlsFiles, SecurityError};
use paxoskv_service::{connect_kv, connect_replica, Dialer, ReplicaStatus, SnapshotChunk};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tarpc::client::RpcError;

const REPLICAS: usize = 5;
/// A round no real leader of a short test reaches.
const FORGED_ROUND: u64 = 1 << 40;

fn client_config(addrs: &[SocketAddr], security: ClientSecurity) -> ClientConfig {
    let mut config = ClientConfig::with_servers(addrs.to_vec());
    config.timeout = Duration::from_secs(10);
    config.attempt_timeout = Duration::from_millis(1000);
    config.security = security;
    config
}

fn client_certs(dir: &Path) -> ClientSecurity {
    ClientSecurity {
        cacert: Some(dir.join("ca.pem")),
        cert: Some(dir.join("client.pem")),
        key: Some(dir.join("client-key.pem")),
        token_file: None,
    }
}

fn dialer(ca_dir: &Path, cert: Option<(&Path, &str)>) -> Dialer {
    let files = ClientTlsFiles {
        ca: ca_dir.join("ca.pem"),
        cert_and_key: cert.map(|(dir, name)| {
            (
                dir.join(format!("{name}.pem")),
                dir.join(format!("{name}-key.pem")),
            )
        }),
    };
    Dialer::tls(&files).expect("load TLS files")
}

fn ctx_ms(ms: u64) -> tarpc::context::Context {
    let mut ctx = tarpc::context::current();
    ctx.deadline = Instant::now() + Duration::from_millis(ms);
    ctx
}

/// The security error a dial ended with (panics if it succeeded or failed otherwise).
fn refused<T>(result: std::io::Result<T>) -> SecurityError {
    match result {
        Ok(_) => panic!("the connection was accepted"),
        Err(e) => security_error(&e)
            .unwrap_or_else(|| panic!("not a security error: {e}"))
            .clone(),
    }
}

fn security_text(result: Result<impl std::fmt::Debug, ClientError>) -> String {
    match result {
        Err(ClientError::Security { reason }) => reason,
        other => panic!("expected a security error, got {other:?}"),
    }
}

/// Every replica's status once all agree on the applied slot and digest (bounded wait).
async fn converged(client: &Client) -> Vec<ReplicaStatus> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let all: Vec<ReplicaStatus> = client
            .status_all()
            .await
            .into_iter()
            .filter_map(|(_, s)| s.ok())
            .collect();
        let same = all.windows(2).all(|w| {
            (w[0].applied_through, w[0].map_digest) == (w[1].applied_through, w[1].map_digest)
        });
        if all.len() == REPLICAS && same {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not converge: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn forged_put() -> Command {
    Command {
        id: CommandId {
            client_id: 0xf0f0,
            seq: 1,
        },
        op: Op::Put {
            key: "forged".into(),
            value: b"by an intruder".to_vec(),
        },
    }
}

/// Nothing forged reached any replica's state.
fn assert_untouched(before: &[ReplicaStatus], after: &[ReplicaStatus]) {
    for (b, a) in before.iter().zip(after) {
        assert_eq!(
            (a.applied_through, a.map_digest),
            (b.applied_through, b.map_digest),
            "replica {} state changed",
            a.id
        );
        let round: u64 = a
            .promised
            .split('.')
            .next()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        assert!(
            round < FORGED_ROUND,
            "replica {} promised a forged ballot {}",
            a.id,
            a.promised
        );
    }
}

struct Certs {
    _dir: tempfile::TempDir,
    good: PathBuf,
    other: PathBuf,
    token: PathBuf,
}

fn certs() -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    let other = dir.path().join("other");
    support::gen_certs(&good, REPLICAS);
    support::gen_certs(&other, REPLICAS);
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    Certs {
        _dir: dir,
        good,
        other,
        token,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cluster_authenticates_peers_and_clients() {
    let certs = certs();
    let good = certs.good.as_path();
    let addrs = support::free_addrs(REPLICAS);
    let _procs = support::start_cluster(
        &addrs,
        &[
            "--tls-dir".into(),
            good.display().to_string(),
            "--auth-token-file".into(),
            certs.token.display().to_string(),
        ],
    );

    // The demo sequence over TLS with client certificates (replicas talk over TLS too).
    let mut c = Client::connect(client_config(&addrs, client_certs(good))).unwrap();
    support::demo_sequence(&mut c).await;
    let before = converged(&c).await;

    // No peer certificate: no replica connection, whatever else is presented.
    let target = addrs[0];
    let no_cert = refused(connect_replica(target, &dialer(good, None)).await);
    assert!(
        no_cert.to_string().starts_with("unauthenticated: "),
        "{no_cert}"
    );
    assert!(
        no_cert.to_string().contains("peer certificate"),
        "{no_cert}"
    );
    let with_token = dialer(good, None).with_token(b"s3cret-token".to_vec());
    assert!(matches!(
        refused(connect_replica(target, &with_token).await),
        SecurityError::Refused { .. }
    ));
    let client_cert = dialer(good, Some((good, "client")));
    assert!(matches!(
        refused(connect_replica(target, &client_cert).await),
        SecurityError::Refused { .. }
    ));
    assert_eq!(
        refused(connect_replica(target, &Dialer::plain()).await),
        SecurityError::TlsExpected { addr: target }
    );

    // A client certificate may not forward writes or set partitions.
    let kv = connect_kv(target, &client_cert).await.unwrap();
    let propose = kv.propose(ctx_ms(2000), forged_put(), true).await.unwrap();
    assert!(
        matches!(propose, Err(KvError::Unauthorized(_))),
        "{propose:?}"
    );
    let partition = kv.set_partition(ctx_ms(2000), vec![1]).await.unwrap();
    assert!(
        matches!(partition, Err(KvError::Unauthorized(_))),
        "{partition:?}"
    );

    // Replica 2's certificate may not speak as replica 3.
    let as_2 = dialer(good, Some((good, "replica-2")))
        .expecting_server_name("replica-0.paxoskv")
        .unwrap();
    let peer = connect_replica(target, &as_2).await.unwrap();
    let honest = peer
        .fetch_chosen(
            ctx_ms(2000),
            2,
            FetchChosen {
                from_slot: 1,
                max_entries: 1,
            },
        )
        .await
        .unwrap();
    assert!(matches!(honest, Response::Chosen(_)), "{honest:?}");
    let ballot_of_3 = Ballot {
        round: FORGED_ROUND,
        replica: 3,
    };
    let prepare = Prepare {
        ballot: ballot_of_3,
        first_unchosen: 1,
        probe: false,
    };
    let next = before[0].applied_through + 1;
    let accept = Accept {
        ballot: ballot_of_3,
        slot: next,
        value: Value {
            commands: vec![forged_put()],
        },
        commit: next,
    };
    let learn = Learn {
        ballot: ballot_of_3,
        commit: next,
        round: u64::MAX,
    };
    // Not answered: the caller times out, as if the message was lost.
    let answers = [
        peer.prepare(ctx_ms(500), 3, prepare).await,
        peer.accept(ctx_ms(500), 3, accept).await,
        peer.learn(ctx_ms(500), 3, learn).await,
    ];
    for answer in answers {
        assert!(
            matches!(answer, Err(RpcError::DeadlineExceeded)),
            "{answer:?}"
        );
    }
    let chunk = SnapshotChunk {
        through: FORGED_ROUND,
        total_bytes: 8,
        offset: 0,
        data: vec![0; 8],
    };
    let snapshot = peer.install_snapshot(ctx_ms(2000), 3, chunk).await.unwrap();
    assert!(
        snapshot.as_ref().is_err_and(|e| e.contains("refused")),
        "{snapshot:?}"
    );
    // Nor pose as replica 1 when answering: the dialler checks the server's name.
    let wrong_name = dialer(good, Some((good, "replica-2")))
        .expecting_server_name("replica-1.paxoskv")
        .unwrap();
    let e = refused(connect_replica(target, &wrong_name).await);
    assert!(e.to_string().contains("not valid for name"), "{e}");

    // A CA from another gen-certs run is refused on both sides.
    let other = certs.other.as_path();
    let untrusting = Client::connect(client_config(&addrs, client_certs(other))).unwrap();
    let text = security_text(untrusting.get("key9").await);
    assert!(
        text.contains("TLS handshake with 127.0.0.1:") && text.contains("UnknownIssuer"),
        "{text}"
    );
    let mut foreign_cert = client_certs(other);
    foreign_cert.cacert = Some(good.join("ca.pem"));
    let foreign = Client::connect(client_config(&addrs, foreign_cert)).unwrap();
    let started = Instant::now();
    let text = security_text(foreign.get("key9").await);
    assert!(
        text.contains("TLS handshake") && text.contains("UnknownCA"),
        "{text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "not retried until the deadline"
    );
    let foreign_peer = dialer(good, Some((other, "replica-2")));
    assert!(matches!(
        refused(connect_replica(target, &foreign_peer).await),
        SecurityError::Handshake { .. }
    ));

    let after = converged(&c).await;
    assert_untouched(&before, &after);
    assert_eq!(c.get("forged").await.unwrap(), None);

    // Token instead of a client certificate; a wrong or missing token is refused.
    let token_only = |token: Option<PathBuf>| ClientSecurity {
        cacert: Some(good.join("ca.pem")),
        token_file: token,
        ..ClientSecurity::default()
    };
    let tokened =
        Client::connect(client_config(&addrs, token_only(Some(certs.token.clone())))).unwrap();
    assert_eq!(tokened.get("key9").await.unwrap(), Some(b"value9".to_vec()));
    let wrong = certs._dir.path().join("wrong-token");
    std::fs::write(&wrong, "guess").unwrap();
    let guessing = Client::connect(client_config(&addrs, token_only(Some(wrong)))).unwrap();
    let text = security_text(guessing.get("key9").await);
    assert!(
        text.starts_with("unauthenticated: invalid bearer token"),
        "{text}"
    );
    let bare = Client::connect(client_config(&addrs, token_only(None))).unwrap();
    let text = security_text(bare.get("key9").await);
    assert!(
        text.starts_with("unauthenticated: a bearer token is required"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_token_and_protected_mode() {
    let certs = certs();
    let addrs = support::free_addrs(3);
    let _procs = support::start_cluster(
        &addrs,
        &[
            "--auth-token-file".into(),
            certs.token.display().to_string(),
        ],
    );
    let with = |token: Option<PathBuf>| {
        let security = ClientSecurity {
            token_file: token,
            ..ClientSecurity::default()
        };
        Client::connect(client_config(&addrs, security)).unwrap()
    };
    let mut c = with(Some(certs.token.clone()));
    c.put("k", b"v".to_vec()).await.unwrap();
    assert_eq!(c.get("k").await.unwrap(), Some(b"v".to_vec()));
    // A write sent to a follower is forwarded over the client service: the replicas present
    // the token to each other too.
    let leader = c
        .status_all()
        .await
        .into_iter()
        .find_map(|(_, s)| s.ok().and_then(|s| s.leader))
        .expect("a leader after a write") as usize;
    let follower = addrs[(leader + 1) % addrs.len()];
    let security = ClientSecurity {
        token_file: Some(certs.token.clone()),
        ..ClientSecurity::default()
    };
    let mut via_follower = Client::connect(client_config(&[follower], security)).unwrap();
    via_follower.put("k2", b"forwarded".to_vec()).await.unwrap();
    assert_eq!(c.get("k2").await.unwrap(), Some(b"forwarded".to_vec()));
    let text = security_text(with(None).get("k").await);
    assert!(
        text.starts_with("unauthenticated: a bearer token is required"),
        "{text}"
    );

    // Plaintext on a non-loopback address needs --insecure.
    let port = support::free_addrs(1)[0].port();
    let out = std::process::Command::new(support::server_bin())
        .args([
            "--replica",
            "0",
            "--peers",
            &format!("0.0.0.0:{port}"),
            "--in-memory",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("without TLS") && stderr.contains("--insecure"),
        "{stderr}"
    );
}
