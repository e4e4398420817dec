//! The `paxoskv` binary against a TLS cluster (five in-process replicas on free loopback
//! ports, certificates from `gen-certs`): the flags work, and a wrong CA, a missing client
//! certificate or a plaintext dial end at once with an error that names the problem.

use paxoskv_server::certs::{generate, GenCertsArgs};
use paxoskv_server::LocalCluster;
use paxoskv_service::tls::{ClientTlsFiles, ServerSecurity, ServerTls, ServerTlsFiles};
use paxoskv_service::Dialer;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

const REPLICAS: u32 = 5;

fn gen(dir: &Path) {
    generate(&GenCertsArgs {
        dir: dir.to_path_buf(),
        hosts: vec!["127.0.0.1".into()],
        replicas: REPLICAS,
        client_name: "client.paxoskv".into(),
    })
    .expect("gen-certs");
}

/// Replica `id`'s TLS policy and peer dialer from a gen-certs directory.
fn replica_security(dir: &Path, id: u32) -> (ServerSecurity, Dialer) {
    let files = ServerTlsFiles {
        cert: dir.join(format!("replica-{id}.pem")),
        key: dir.join(format!("replica-{id}-key.pem")),
        peer_ca: dir.join("ca.pem"),
        client_ca: Some(dir.join("ca.pem")),
    };
    let tls = ServerTls::load(&files, REPLICAS).expect("server TLS files");
    let dialer = Dialer::tls(&ClientTlsFiles {
        ca: files.peer_ca.clone(),
        cert_and_key: Some((files.cert.clone(), files.key.clone())),
    })
    .expect("peer TLS files");
    let security = ServerSecurity {
        tls: Some(Arc::new(tls)),
        token: None,
    };
    (security, dialer)
}

fn paxoskv(servers: &str, tls: &[String], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_paxoskv"))
        .args(["--servers", servers, "--timeout", "10s"])
        .args(tls)
        .args(args)
        .output()
        .expect("run paxoskv")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn cert_flags(dir: &Path, ca_dir: &Path) -> Vec<String> {
    let path = |p: PathBuf| p.display().to_string();
    vec![
        "--cacert".into(),
        path(ca_dir.join("ca.pem")),
        "--cert".into(),
        path(dir.join("client.pem")),
        "--key".into(),
        path(dir.join("client-key.pem")),
    ]
}

#[test]
fn paxoskv_over_tls_and_its_certificate_errors() {
    let certs = tempfile::tempdir().unwrap();
    let good = certs.path().join("good");
    let other = certs.path().join("other");
    gen(&good);
    gen(&other);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = good.clone();
    let cluster = runtime
        .block_on(LocalCluster::start(REPLICAS, move |o| {
            let (security, dialer) = replica_security(&dir, o.id);
            o.security = security;
            o.peer_dialer = dialer;
        }))
        .expect("bind loopback listeners");
    let servers = cluster
        .addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");

    let tls = cert_flags(&good, &good);
    let put = paxoskv(&servers, &tls, &["put", "color", "blue"]);
    assert!(put.status.success(), "{}", text(&put));
    let get = paxoskv(&servers, &tls, &["get", "color"]);
    assert_eq!(text(&get), "blue", "{}", text(&get));

    let cases = [
        // The other run's CA does not know the replicas' issuer.
        (
            cert_flags(&other, &other),
            "invalid peer certificate: UnknownIssuer",
        ),
        // The replicas do not know the other run's client certificate.
        (cert_flags(&other, &good), "received fatal alert"),
        (
            vec!["--cacert".into(), good.join("ca.pem").display().to_string()],
            "unauthenticated: a client certificate signed by the client CA is required",
        ),
        (vec![], "speaks TLS: connect with --cacert"),
    ];
    for (flags, want) in cases {
        let started = Instant::now();
        let out = paxoskv(&servers, &flags, &["get", "color"]);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "{said}");
        assert!(
            said.starts_with("error: ") && said.contains(want),
            "{flags:?}: {said}"
        );
        assert!(!said.contains("panicked"), "{said}");
        // Fail fast: not retried until the 10 s deadline.
        assert!(started.elapsed() < Duration::from_secs(5), "{said}");
    }
    runtime.block_on(cluster.shutdown());
}
