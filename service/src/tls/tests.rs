use super::*;
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca() -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    Ca {
        issuer: Issuer::new(params, key),
        pem,
    }
}

/// (certificate DER, cert PEM, key PEM) for `names`, signed by `ca`.
fn leaf(ca: &Ca, names: &[&str]) -> (CertificateDer<'static>, String, String) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.der().clone(), cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A replica-0 server of a 5-replica cluster trusting `peer_ca` (and `client_ca`).
fn server(dir: &Path, peer_ca: &Ca, client_ca: Option<&Ca>) -> ServerTls {
    let (_, cert, key) = leaf(peer_ca, &[&replica_cert_name(0), "127.0.0.1"]);
    let files = ServerTlsFiles {
        cert: write(dir, "r0.pem", &cert),
        key: write(dir, "r0-key.pem", &key),
        peer_ca: write(dir, "peer-ca.pem", &peer_ca.pem),
        client_ca: client_ca.map(|c| write(dir, "client-ca.pem", &c.pem)),
    };
    ServerTls::load(&files, 5).unwrap()
}

#[test]
fn certificates_are_classified_by_ca_and_name() {
    let dir = tempfile::tempdir().unwrap();
    let peers = ca();
    let clients = ca();
    let stranger = ca();
    let tls = server(dir.path(), &peers, Some(&clients));
    let replica2 = leaf(&peers, &[&replica_cert_name(2), "127.0.0.1"]).0;
    assert_eq!(tls.classify(Some(&[replica2])), PeerIdentity::Replica(2));
    // Outside the cluster of five: proves no replica.
    let replica7 = leaf(&peers, &[&replica_cert_name(7)]).0;
    assert_eq!(tls.classify(Some(&[replica7])), PeerIdentity::Anonymous);
    // Two replica names: ambiguous.
    let both = leaf(&peers, &[&replica_cert_name(1), &replica_cert_name(3)]).0;
    assert_eq!(tls.classify(Some(&[both])), PeerIdentity::Anonymous);
    let client = leaf(&clients, &[CLIENT_CERT_NAME]).0;
    assert_eq!(tls.classify(Some(&[client])), PeerIdentity::Client);
    // A replica name signed by the client CA is only a client.
    let fake = leaf(&clients, &[&replica_cert_name(1)]).0;
    assert_eq!(tls.classify(Some(&[fake])), PeerIdentity::Client);
    let foreign = leaf(&stranger, &[&replica_cert_name(1)]).0;
    assert_eq!(tls.classify(Some(&[foreign])), PeerIdentity::Anonymous);
    assert_eq!(tls.classify(None), PeerIdentity::Anonymous);
}

fn security(tls: Option<ServerTls>, token: Option<&[u8]>) -> ServerSecurity {
    ServerSecurity {
        tls: tls.map(Arc::new),
        token: token.map(Arc::from),
    }
}

#[test]
fn authorisation_rules() {
    use PeerIdentity::*;
    use ServiceTag::{Kv, Replica as R};
    let dir = tempfile::tempdir().unwrap();
    let peers = ca();
    let clients = ca();
    // Plaintext: trusted, but a configured token is enforced for clients.
    let plain = security(None, None);
    assert_eq!(plain.authorize(R, Anonymous, b""), Ok(Caller::Trusted));
    assert_eq!(plain.authorize(Kv, Anonymous, b""), Ok(Caller::Trusted));
    let plain_token = security(None, Some(b"s3cret"));
    assert_eq!(
        plain_token.authorize(Kv, Anonymous, b"s3cret"),
        Ok(Caller::Trusted)
    );
    assert!(plain_token
        .authorize(Kv, Anonymous, b"wrong")
        .unwrap_err()
        .contains("invalid"));
    assert!(plain_token
        .authorize(Kv, Anonymous, b"")
        .unwrap_err()
        .contains("required"));
    // TLS with client certificates.
    let certs = security(Some(server(dir.path(), &peers, Some(&clients))), None);
    assert_eq!(certs.authorize(R, Replica(3), b""), Ok(Caller::Replica(3)));
    assert!(certs.authorize(R, Client, b"").is_err());
    assert!(certs.authorize(R, Anonymous, b"").is_err());
    assert_eq!(certs.authorize(Kv, Replica(1), b""), Ok(Caller::Replica(1)));
    assert_eq!(certs.authorize(Kv, Client, b""), Ok(Caller::Client));
    assert!(certs
        .authorize(Kv, Anonymous, b"")
        .unwrap_err()
        .contains("client certificate"));
    // TLS with a token and no client CA: the token is required.
    let token = security(Some(server(dir.path(), &peers, None)), Some(b"tok"));
    assert_eq!(token.authorize(Kv, Anonymous, b"tok"), Ok(Caller::Client));
    assert!(token.authorize(Kv, Anonymous, b"tok2").is_err());
    assert!(token.authorize(Kv, Anonymous, b"").is_err());
    assert!(token.authorize(R, Anonymous, b"tok").is_err());
    // TLS, no client authentication at all: clients are anonymous but encrypted.
    let open = security(Some(server(dir.path(), &peers, None)), None);
    assert_eq!(open.authorize(Kv, Anonymous, b""), Ok(Caller::Client));
    assert!(open.authorize(R, Anonymous, b"").is_err());
}

#[test]
fn tokens_compare_whole() {
    assert!(tokens_equal(b"abc", b"abc"));
    assert!(!tokens_equal(b"abc", b"abd"));
    assert!(!tokens_equal(b"abc", b"ab"));
    assert!(tokens_equal(b"", b""));
}

#[tokio::test]
async fn preamble_round_trips() {
    let (mut client, mut server) = tokio::io::duplex(64 * 1024);
    write_preamble(&mut client, ServiceTag::Kv, b"token")
        .await
        .unwrap();
    let (tag, token) = read_preamble(&mut server).await.unwrap();
    assert_eq!((tag, token.as_slice()), (ServiceTag::Kv, &b"token"[..]));
    write_verdict(&mut server, Ok(())).await.unwrap();
    assert_eq!(read_verdict(&mut client).await.unwrap(), Ok(()));
    write_preamble(&mut client, ServiceTag::Replica, b"")
        .await
        .unwrap();
    let (tag, token) = read_preamble(&mut server).await.unwrap();
    assert_eq!((tag, token.len()), (ServiceTag::Replica, 0));
    write_verdict(&mut server, Err("no certificate"))
        .await
        .unwrap();
    assert_eq!(
        read_verdict(&mut client).await.unwrap(),
        Err("no certificate".to_string())
    );
}

#[tokio::test]
async fn preamble_bounds_are_enforced() {
    let (mut client, mut server) = tokio::io::duplex(64 * 1024);
    let long = [b'K', 0xff, 0xff];
    client.write_all(&long).await.unwrap();
    let e = read_preamble(&mut server).await.unwrap_err();
    assert!(e.to_string().contains("limit"), "{e}");
    let huge = "é".repeat(MAX_REASON_BYTES);
    write_verdict(&mut server, Err(&huge)).await.unwrap();
    let reason = read_verdict(&mut client).await.unwrap().unwrap_err();
    assert!(reason.len() <= MAX_REASON_BYTES && reason.starts_with('é'));
    let (mut client, mut server) = tokio::io::duplex(64);
    client.write_all(b"X").await.unwrap();
    assert!(read_preamble(&mut server).await.is_err());
}

#[test]
fn token_files_are_trimmed_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "t", "secret\n");
    assert_eq!(load_token(&good).unwrap(), b"secret");
    let empty = write(dir.path(), "e", "\n");
    assert!(load_token(&empty)
        .unwrap_err()
        .to_string()
        .contains("empty"));
    let missing = dir.path().join("missing");
    assert!(load_token(&missing)
        .unwrap_err()
        .to_string()
        .contains("cannot read"));
}
