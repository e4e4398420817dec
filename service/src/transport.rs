//! Framing shared by clients and servers: a preamble (tag byte and token, see [`crate::tls`]),
//! then length-delimited bincode.

use crate::tls::{Dialed, Dialer};
use crate::{KvRpcClient, ReplicaRpcClient};
use std::io;
use std::net::SocketAddr;
use tarpc::serde_transport::Transport;
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

/// Largest frame on a client connection: a 1 MiB value plus headroom.
pub const KV_MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// Largest frame on a replica link: a promise can carry a full pipeline of batches.
pub const REPLICA_MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// The first byte of every connection names the service it speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceTag {
    /// [`crate::ReplicaRpc`].
    Replica,
    /// [`crate::KvRpc`].
    Kv,
}

impl ServiceTag {
    pub(crate) fn byte(self) -> u8 {
        match self {
            ServiceTag::Replica => b'R',
            ServiceTag::Kv => b'K',
        }
    }
}

/// Reads the tag byte a new connection starts with.
pub async fn read_service_tag<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<ServiceTag> {
    match stream.read_u8().await? {
        b'R' => Ok(ServiceTag::Replica),
        b'K' => Ok(ServiceTag::Kv),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown service tag byte {other:#x}"),
        )),
    }
}

/// The length-delimited codec with an explicit frame bound.
pub fn frame_codec(max_frame_bytes: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(max_frame_bytes)
        .new_codec()
}

/// Wraps a connected stream (plain TCP or TLS) into a bincode tarpc transport.
pub fn bincode_transport<S, Item, SinkItem>(
    stream: S,
    max_frame_bytes: usize,
) -> Transport<S, Item, SinkItem, Bincode<Item, SinkItem>>
where
    S: AsyncRead + AsyncWrite,
    Item: for<'de> serde::Deserialize<'de>,
    SinkItem: serde::Serialize,
{
    let framed = Framed::new(stream, frame_codec(max_frame_bytes));
    tarpc::serde_transport::new(framed, Bincode::default())
}

fn kv_client<S>(stream: S) -> KvRpcClient
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let transport = bincode_transport(stream, KV_MAX_FRAME_BYTES);
    KvRpcClient::new(tarpc::client::Config::default(), transport).spawn()
}

fn replica_client<S>(stream: S) -> ReplicaRpcClient
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let transport = bincode_transport(stream, REPLICA_MAX_FRAME_BYTES);
    ReplicaRpcClient::new(tarpc::client::Config::default(), transport).spawn()
}

/// Opens a client connection to a replica (TLS and token as `dialer` says).
pub async fn connect_kv(addr: SocketAddr, dialer: &Dialer) -> io::Result<KvRpcClient> {
    Ok(match dialer.open(addr, ServiceTag::Kv).await? {
        Dialed::Plain(stream) => kv_client(stream),
        Dialed::Tls(stream) => kv_client(*stream),
    })
}

/// Opens a replica-to-replica connection (TLS as `dialer` says).
pub async fn connect_replica(addr: SocketAddr, dialer: &Dialer) -> io::Result<ReplicaRpcClient> {
    Ok(match dialer.open(addr, ServiceTag::Replica).await? {
        Dialed::Plain(stream) => replica_client(stream),
        Dialed::Tls(stream) => replica_client(*stream),
    })
}
