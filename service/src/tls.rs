//! Connection security: TLS (rustls, ring provider), the identity a certificate proves, and
//! the app-level preamble every connection starts with, on TLS and plaintext alike.
//!
//! Preamble (after the TLS handshake, if any): the client writes the service tag byte, then a
//! u16-BE length and that many bearer-token bytes (0 = no token). The server answers one
//! status byte: [`VERDICT_OK`], or [`VERDICT_REFUSED`] followed by a u16-BE length and a UTF-8
//! reason, after which it closes the connection.

use crate::transport::ServiceTag;
use paxoskv::ReplicaId;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest bearer token accepted in a preamble.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Longest refusal reason sent or read back.
pub const MAX_REASON_BYTES: usize = 1024;
/// The preamble answer: accepted.
pub const VERDICT_OK: u8 = 0;
/// The preamble answer: refused (a reason follows).
pub const VERDICT_REFUSED: u8 = 1;
/// The DNS name a client certificate from `gen-certs` carries.
pub const CLIENT_CERT_NAME: &str = "client.paxoskv";

/// The DNS name that identifies replica `id` in its certificate.
pub fn replica_cert_name(id: ReplicaId) -> String {
    format!("replica-{id}.paxoskv")
}

/// A certificate, key, CA or token file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file holds no usable PEM item of the expected kind.
    #[error("{}: {what}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the combination (for example a key that does not match the certificate).
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

/// Why a connection was refused for security reasons. Retrying does not help: the client's
/// CA, certificate or token has to change. Carried inside an [`io::Error`] by the dial
/// functions; [`security_error`] finds it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecurityError {
    /// The TLS handshake failed (certificate not trusted, wrong name, ...).
    #[error("TLS handshake with {addr} failed: {reason}")]
    Handshake {
        /// The server dialled.
        addr: SocketAddr,
        /// rustls' description.
        reason: String,
    },
    /// A plaintext dial reached a TLS server.
    #[error("{addr} speaks TLS: connect with --cacert (and a client certificate or token if it asks for one)")]
    TlsExpected {
        /// The server dialled.
        addr: SocketAddr,
    },
    /// The server refused the connection in the preamble.
    #[error("unauthenticated: {reason}")]
    Refused {
        /// The server's reason.
        reason: String,
    },
}

/// The [`SecurityError`] inside a dial error, if that is what it is.
pub fn security_error(error: &io::Error) -> Option<&SecurityError> {
    error.get_ref()?.downcast_ref::<SecurityError>()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|source| TlsConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let bytes = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsConfigError::Pem {
            path: path.to_path_buf(),
            what: format!("bad PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsConfigError::Pem {
            path: path.to_path_buf(),
            what: "no CERTIFICATE in the file".into(),
        });
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    let bytes = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsConfigError::Pem {
        path: path.to_path_buf(),
        what: format!("no usable PRIVATE KEY: {e}"),
    })
}

/// The trust anchors of a CA file.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    add_roots(&mut roots, path)?;
    Ok(roots)
}

fn add_roots(roots: &mut RootCertStore, path: &Path) -> Result<(), TlsConfigError> {
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsConfigError::Pem {
            path: path.to_path_buf(),
            what: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(())
}

/// A bearer token file: its bytes without trailing whitespace; must not be empty.
pub fn load_token(path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    let bytes = read_file(path)?;
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    let token = bytes[..end].to_vec();
    let problem = if token.is_empty() {
        Some("the token file is empty".to_string())
    } else if token.len() > MAX_TOKEN_BYTES {
        Some(format!("the token is over {MAX_TOKEN_BYTES} bytes"))
    } else {
        None
    };
    match problem {
        Some(what) => Err(TlsConfigError::Pem {
            path: path.to_path_buf(),
            what,
        }),
        None => Ok(token),
    }
}

/// Compares in time that depends only on the lengths, not on where the bytes differ.
pub fn tokens_equal(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who the other end of a connection proved to be with its certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerIdentity {
    /// A certificate from the peer CA, valid for `replica-I.paxoskv`.
    Replica(ReplicaId),
    /// A certificate from the client CA.
    Client,
    /// No certificate, or one that proves neither.
    Anonymous,
}

/// Who a connection is allowed to act as, once the preamble is accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Plaintext on a trusted machine: everything is allowed and `from` is believed.
    Trusted,
    /// Replica `id`, proven by its certificate.
    Replica(ReplicaId),
    /// A client (certificate, token, or anonymous when no client authentication is set up).
    Client,
}

/// Files of a replica's TLS set-up.
#[derive(Clone, Debug)]
pub struct ServerTlsFiles {
    /// This replica's certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA that signs replica certificates.
    pub peer_ca: PathBuf,
    /// The CA that signs client certificates, if clients authenticate with certificates.
    pub client_ca: Option<PathBuf>,
}

/// A replica's TLS acceptor and the verifiers that classify a connection.
pub struct ServerTls {
    acceptor: tokio_rustls::TlsAcceptor,
    peer_verifier: Arc<dyn ClientCertVerifier>,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    replicas: u32,
}

fn verifier(
    roots: RootCertStore,
    optional: bool,
) -> Result<Arc<dyn ClientCertVerifier>, TlsConfigError> {
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    let builder = if optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder
        .build()
        .map_err(|e| TlsConfigError::Rustls(e.to_string()))
}

impl ServerTls {
    /// Loads the files of a replica in a cluster of `replicas`.
    pub fn load(files: &ServerTlsFiles, replicas: u32) -> Result<ServerTls, TlsConfigError> {
        let chain = load_certs(&files.cert)?;
        let key = load_key(&files.key)?;
        let mut accepted = load_roots(&files.peer_ca)?;
        let peer_verifier = verifier(load_roots(&files.peer_ca)?, false)?;
        let client_verifier = match &files.client_ca {
            Some(path) => {
                add_roots(&mut accepted, path)?;
                Some(verifier(load_roots(path)?, false)?)
            }
            None => None,
        };
        // Unauthenticated TLS is allowed so that the preamble can say "unauthenticated" with
        // a reason instead of a bare handshake alert; a certificate from an unknown CA is
        // still refused in the handshake.
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsConfigError::Rustls(e.to_string()))?
            .with_client_cert_verifier(verifier(accepted, true)?)
            .with_single_cert(chain, key)
            .map_err(|e| TlsConfigError::Rustls(format!("{}: {e}", files.key.display())))?;
        Ok(ServerTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            peer_verifier,
            client_verifier,
            replicas,
        })
    }

    /// True when clients must prove themselves with a certificate from the client CA (or a
    /// token, when one is configured).
    pub fn clients_need_certificates(&self) -> bool {
        self.client_verifier.is_some()
    }

    /// Runs the TLS handshake and classifies the certificate the other end presented.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> io::Result<(tokio_rustls::server::TlsStream<TcpStream>, PeerIdentity)> {
        let tls = self.acceptor.accept(stream).await?;
        let identity = self.classify(tls.get_ref().1.peer_certificates());
        Ok((tls, identity))
    }

    /// What a presented chain (end entity first) proves.
    pub fn classify(&self, chain: Option<&[CertificateDer<'_>]>) -> PeerIdentity {
        let Some((end_entity, intermediates)) = chain.and_then(|c| c.split_first()) else {
            return PeerIdentity::Anonymous;
        };
        let now = UnixTime::now();
        let from_peer_ca = self
            .peer_verifier
            .verify_client_cert(end_entity, intermediates, now)
            .is_ok();
        if from_peer_ca {
            if let Some(id) = replica_named_by(end_entity, self.replicas) {
                return PeerIdentity::Replica(id);
            }
        }
        let from_client_ca = self
            .client_verifier
            .as_ref()
            .is_some_and(|v| v.verify_client_cert(end_entity, intermediates, now).is_ok());
        if from_client_ca {
            PeerIdentity::Client
        } else {
            PeerIdentity::Anonymous
        }
    }
}

/// The one replica id below `replicas` the certificate is valid for; `None` if none or if it
/// names several (ambiguous, so it proves nothing).
fn replica_named_by(end_entity: &CertificateDer<'_>, replicas: u32) -> Option<ReplicaId> {
    let cert = webpki::EndEntityCert::try_from(end_entity).ok()?;
    let mut found = None;
    for id in 0..replicas {
        let Ok(name) = ServerName::try_from(replica_cert_name(id)) else {
            continue;
        };
        if cert.verify_is_valid_for_subject_name(&name).is_ok() {
            if found.is_some() {
                return None;
            }
            found = Some(id);
        }
    }
    found
}

/// A replica's whole connection policy: TLS (or not) and the bearer token (or not).
#[derive(Clone, Default)]
pub struct ServerSecurity {
    /// TLS set-up; `None` = plaintext.
    pub tls: Option<Arc<ServerTls>>,
    /// The bearer token clients may present on 'K' connections.
    pub token: Option<Arc<[u8]>>,
}

impl ServerSecurity {
    /// Decides what a connection may do, from its service tag, its certificate and the token
    /// it presented; `Err` holds the reason sent back.
    pub fn authorize(
        &self,
        tag: ServiceTag,
        identity: PeerIdentity,
        presented_token: &[u8],
    ) -> Result<Caller, String> {
        let token_ok = |t: &[u8]| tokens_equal(t, presented_token);
        let Some(tls) = &self.tls else {
            // Plaintext: a trusted machine (loopback unless --insecure). A configured token is
            // still enforced for clients.
            return match (tag, &self.token) {
                (ServiceTag::Kv, Some(t)) if !token_ok(t) => Err(token_refusal(presented_token)),
                _ => Ok(Caller::Trusted),
            };
        };
        match (tag, identity) {
            (_, PeerIdentity::Replica(id)) => Ok(Caller::Replica(id)),
            (ServiceTag::Replica, _) => {
                Err("replica connections need a peer certificate (signed by the peer CA, named replica-I.paxoskv)".into())
            }
            (ServiceTag::Kv, PeerIdentity::Client) => Ok(Caller::Client),
            (ServiceTag::Kv, PeerIdentity::Anonymous) => match &self.token {
                Some(t) if token_ok(t) => Ok(Caller::Client),
                Some(_) if tls.clients_need_certificates() => Err(format!(
                    "{} and no client certificate signed by the client CA",
                    token_refusal(presented_token)
                )),
                Some(_) => Err(token_refusal(presented_token)),
                None if tls.clients_need_certificates() => {
                    Err("a client certificate signed by the client CA is required".into())
                }
                // Neither client certificates nor tokens configured: TLS only encrypts.
                None => Ok(Caller::Client),
            },
        }
    }
}

fn token_refusal(presented: &[u8]) -> String {
    if presented.is_empty() {
        "a bearer token is required (give --token-file)".into()
    } else {
        "invalid bearer token".into()
    }
}

/// Reads a client's preamble: the service tag and the token (empty = none).
pub async fn read_preamble<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> io::Result<(ServiceTag, Vec<u8>)> {
    let tag = crate::transport::read_service_tag(stream).await?;
    let len = usize::from(stream.read_u16().await?);
    if len > MAX_TOKEN_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("token of {len} bytes is over the {MAX_TOKEN_BYTES}-byte limit"),
        ));
    }
    let mut token = vec![0; len];
    stream.read_exact(&mut token).await?;
    Ok((tag, token))
}

/// Answers a preamble: accepted, or refused with a reason (cut to [`MAX_REASON_BYTES`]).
pub async fn write_verdict<S: AsyncWrite + Unpin>(
    stream: &mut S,
    verdict: Result<(), &str>,
) -> io::Result<()> {
    match verdict {
        Ok(()) => stream.write_u8(VERDICT_OK).await?,
        Err(reason) => {
            let mut end = reason.len().min(MAX_REASON_BYTES);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            let mut out = vec![VERDICT_REFUSED];
            out.extend_from_slice(&(end as u16).to_be_bytes());
            out.extend_from_slice(&reason.as_bytes()[..end]);
            stream.write_all(&out).await?;
        }
    }
    stream.flush().await
}

/// Writes a client's preamble.
pub async fn write_preamble<S: AsyncWrite + Unpin>(
    stream: &mut S,
    tag: ServiceTag,
    token: &[u8],
) -> io::Result<()> {
    let len = u16::try_from(token.len())
        .ok()
        .filter(|&l| usize::from(l) <= MAX_TOKEN_BYTES)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "token too long"))?;
    let mut out = vec![tag.byte()];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(token);
    stream.write_all(&out).await?;
    stream.flush().await
}

/// Reads the server's answer to the preamble: `Ok(Err(reason))` when refused.
pub async fn read_verdict<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Result<(), String>> {
    match stream.read_u8().await? {
        VERDICT_OK => Ok(Ok(())),
        VERDICT_REFUSED => {
            let len = usize::from(stream.read_u16().await?).min(MAX_REASON_BYTES);
            let mut reason = vec![0; len];
            stream.read_exact(&mut reason).await?;
            Ok(Err(String::from_utf8_lossy(&reason).into_owned()))
        }
        TLS_ALERT_RECORD | TLS_HANDSHAKE_RECORD => {
            Err(io::Error::new(io::ErrorKind::InvalidData, TlsAnswer))
        }
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown preamble answer {other:#x}"),
        )),
    }
}

/// First bytes of TLS records: what a TLS server sends to a plaintext preamble.
const TLS_ALERT_RECORD: u8 = 0x15;
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The preamble was answered with a TLS record.
#[derive(Debug, thiserror::Error)]
#[error("the server answered with TLS")]
struct TlsAnswer;

/// Files of a client's TLS set-up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// The CA that signs the replicas' certificates.
    pub ca: PathBuf,
    /// A client certificate chain and its key, if the servers ask for one.
    pub cert_and_key: Option<(PathBuf, PathBuf)>,
}

/// How to open connections: plaintext or TLS, with or without a bearer token.
#[derive(Clone, Default)]
pub struct Dialer {
    tls: Option<tokio_rustls::TlsConnector>,
    server_name: Option<ServerName<'static>>,
    token: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("tls", &self.tls.is_some())
            .field("server_name", &self.server_name)
            .field("token", &self.token.is_some())
            .finish()
    }
}

/// A connected stream, plain or TLS.
pub enum Dialed {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Dialer {
    /// Plaintext, no token (a trusted machine).
    pub fn plain() -> Dialer {
        Dialer::default()
    }

    /// TLS trusting `files.ca`, presenting the client certificate if given.
    pub fn tls(files: &ClientTlsFiles) -> Result<Dialer, TlsConfigError> {
        let roots = Arc::new(load_roots(&files.ca)?);
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsConfigError::Rustls(e.to_string()))?
            .with_root_certificates(roots);
        let config = match &files.cert_and_key {
            Some((cert, key)) => builder
                .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
                .map_err(|e| TlsConfigError::Rustls(format!("{}: {e}", key.display())))?,
            None => builder.with_no_client_auth(),
        };
        Ok(Dialer {
            tls: Some(tokio_rustls::TlsConnector::from(Arc::new(config))),
            server_name: None,
            token: None,
        })
    }

    /// The same, presenting `token` in every preamble.
    pub fn with_token(mut self, token: Vec<u8>) -> Dialer {
        self.token = Some(token.into());
        self
    }

    /// The same, but the server must prove `name` (for example `replica-2.paxoskv`) instead
    /// of the address dialled.
    pub fn expecting_server_name(&self, name: &str) -> Result<Dialer, TlsConfigError> {
        let name = ServerName::try_from(name.to_string())
            .map_err(|e| TlsConfigError::Rustls(format!("bad server name {name:?}: {e}")))?;
        Ok(Dialer {
            server_name: Some(name),
            ..self.clone()
        })
    }

    /// True when connections are encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Connects, runs the TLS handshake (if any) and the preamble for `tag`.
    pub async fn open(&self, addr: SocketAddr, tag: ServiceTag) -> io::Result<Dialed> {
        let stream = TcpStream::connect(addr).await?;
        // Small requests stall ~40 ms behind Nagle + delayed ACK without this.
        stream.set_nodelay(true)?;
        let token = self.token.as_deref().unwrap_or(&[]);
        let Some(connector) = &self.tls else {
            let mut stream = stream;
            preamble(&mut stream, addr, tag, token).await?;
            return Ok(Dialed::Plain(stream));
        };
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let mut tls = connector
            .connect(name, stream)
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    format!("{addr} closed the connection during the TLS handshake (a plaintext server?)"),
                ),
                _ => tls_failure(addr, e),
            })?;
        preamble(&mut tls, addr, tag, token).await?;
        Ok(Dialed::Tls(Box::new(tls)))
    }
}

/// Writes the preamble and reads the verdict; a TLS alert on the way (the server refused our
/// certificate after the TLS 1.3 handshake finished on our side) is a handshake failure.
async fn preamble<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    addr: SocketAddr,
    tag: ServiceTag,
    token: &[u8],
) -> io::Result<()> {
    let exchange = async {
        write_preamble(stream, tag, token).await?;
        read_verdict(stream).await
    };
    match exchange.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(reason)) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            SecurityError::Refused { reason },
        )),
        Err(e) if e.get_ref().is_some_and(|i| i.is::<TlsAnswer>()) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            SecurityError::TlsExpected { addr },
        )),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!(
                "{addr} closed the connection before answering (a TLS server dialled without \
                 --cacert, or a plaintext one with it?)"
            ),
        )),
        Err(e) => Err(tls_failure(addr, e)),
    }
}

/// A rustls error becomes a [`SecurityError::Handshake`]; other I/O errors stay as they are.
fn tls_failure(addr: SocketAddr, e: io::Error) -> io::Error {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(tls) => io::Error::new(
            io::ErrorKind::PermissionDenied,
            SecurityError::Handshake {
                addr,
                reason: tls.to_string(),
            },
        ),
        None => e,
    }
}

#[cfg(test)]
mod tests;
