//! Guarded framing for the server side of a connection: the same wire format as
//! `LengthDelimitedCodec`'s default (a 4-byte big-endian length, then the body), read with
//! bounds that a hostile or stuck peer cannot get around:
//!
//! - the announced length is checked against the maximum before anything is allocated;
//! - a frame's body is read only after its length was taken from a byte budget shared by
//!   every connection of the replica ([`FrameBudget`]); waiting for it is backpressure;
//! - the body buffer grows with what arrived, never to the announced length up front;
//! - a frame must keep pace: it may take `frame_timeout_ms` plus one second per
//!   `min_frame_rate_bytes_per_s` bytes received so far (Apache mod_reqtimeout's MinRate),
//!   or the connection is closed (slowloris);
//! - a connection that starts no frame for `idle_timeout_ms` is closed.
//!
//! Before a request is deserialized its deadline is clamped ([`clamp_request_deadline`]):
//! tarpc 0.38 adds the wire deadline to `Instant::now()` and panics on overflow.
//!
//! Writes go through a plain length-delimited `FramedWrite`; a peer that reads none of its
//! answers for the frame time plus one largest frame at the minimum rate is closed.

use bytes::{Buf, Bytes, BytesMut};
use futures::{Sink, Stream};
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::codec::{FramedWrite, LengthDelimitedCodec};
use tarpc::{ClientMessage, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadHalf, WriteHalf};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Bytes of the length header (`LengthDelimitedCodec`'s default: u32, big endian).
const HEADER_BYTES: usize = 4;
/// Read-ahead buffer of a connection; small frames are cut out of it without copying.
const READ_CHUNK_BYTES: usize = 8 * 1024;
/// A large body starts with a buffer this big and doubles as bytes arrive.
const BODY_FIRST_CHUNK_BYTES: usize = 64 * 1024;
/// Longest deadline a request may carry, in seconds; longer ones are cut to this.
pub const MAX_REQUEST_DEADLINE_SECS: u64 = 3_600;

/// Default for [`FrameLimits::frame_timeout_ms`].
pub const DEFAULT_FRAME_TIMEOUT_MS: u64 = 5_000;
/// Default for [`FrameLimits::min_frame_rate_bytes_per_s`].
pub const DEFAULT_MIN_FRAME_RATE_BYTES_PER_S: u64 = 1024 * 1024;
/// Default for [`FrameLimits::idle_timeout_ms`]; peers send every tick, so they never idle.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 300_000;
/// Default size of a replica's [`FrameBudget`]: room for a few largest replica frames.
pub const DEFAULT_FRAME_BUDGET_BYTES: usize = 256 * 1024 * 1024;

/// How frames are read from one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest frame body accepted.
    pub max_frame_bytes: usize,
    /// Time every frame gets, on top of its share by rate; includes waiting for budget.
    pub frame_timeout_ms: u64,
    /// Slowest rate a frame may arrive at once its `frame_timeout_ms` is used up.
    pub min_frame_rate_bytes_per_s: u64,
    /// A connection that starts no frame for this long is closed.
    pub idle_timeout_ms: u64,
}

impl FrameLimits {
    /// The default timeouts with `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> FrameLimits {
        FrameLimits {
            max_frame_bytes,
            frame_timeout_ms: DEFAULT_FRAME_TIMEOUT_MS,
            min_frame_rate_bytes_per_s: DEFAULT_MIN_FRAME_RATE_BYTES_PER_S,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
        }
    }

    /// Checks the limits against each other and against `budget`.
    pub fn check(&self, budget: &FrameBudget) -> Result<(), String> {
        if self.min_frame_rate_bytes_per_s == 0 {
            return Err("the minimum frame rate must be at least 1 byte/s".into());
        }
        if self.frame_timeout_ms == 0 || self.idle_timeout_ms == 0 {
            return Err("frame and idle timeouts must be at least 1 ms".into());
        }
        if self.max_frame_bytes > budget.total_bytes() {
            return Err(format!(
                "the frame budget of {} bytes cannot hold one largest frame of {} bytes",
                budget.total_bytes(),
                self.max_frame_bytes
            ));
        }
        Ok(())
    }
}

/// Why a connection's frames stopped.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The header announced more than the maximum.
    #[error("frame of {len} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// No frame started within the idle timeout.
    #[error("connection idle for {idle_ms} ms")]
    Idle {
        /// The idle timeout.
        idle_ms: u64,
    },
    /// A frame did not keep pace (or found no budget in its time).
    #[error("frame of {len} bytes too slow: {received} bytes in {elapsed_ms} ms")]
    TooSlow {
        /// Announced length (0 while the header is incomplete).
        len: usize,
        /// Body bytes received.
        received: usize,
        /// Time since the frame started.
        elapsed_ms: u64,
    },
    /// The peer closed the connection inside a frame.
    #[error("connection closed inside a frame")]
    Truncated,
    /// Reading failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<FrameError> for io::Error {
    fn from(e: FrameError) -> io::Error {
        match e {
            FrameError::Io(e) => e,
            FrameError::TooLarge { .. } => io::Error::new(io::ErrorKind::InvalidData, e),
            FrameError::Idle { .. } | FrameError::TooSlow { .. } => {
                io::Error::new(io::ErrorKind::TimedOut, e)
            }
            FrameError::Truncated => io::Error::new(io::ErrorKind::UnexpectedEof, e),
        }
    }
}

/// Bytes of frames being read, shared by all connections of one replica. Waiters are
/// served first-fit in arrival order: a small frame fits into what a large one cannot use,
/// so large frames from a flood never hold up the small ones peers and clients send. A
/// release wakes only the waiters it can grant, never all of them.
#[derive(Clone, Debug)]
pub struct FrameBudget {
    inner: Arc<BudgetState>,
}

#[derive(Debug)]
struct BudgetState {
    total_bytes: usize,
    ledger: Mutex<Ledger>,
}

#[derive(Debug)]
struct Ledger {
    available_bytes: usize,
    /// Frames waiting for bytes, oldest first; a grant is sent as the permit itself.
    waiters: VecDeque<(usize, oneshot::Sender<BudgetPermit>)>,
}

/// Bytes taken from a [`FrameBudget`], given back on drop.
#[derive(Debug)]
pub struct BudgetPermit {
    budget: FrameBudget,
    bytes: usize,
}

impl FrameBudget {
    /// A budget of `total_bytes`.
    pub fn new(total_bytes: usize) -> FrameBudget {
        FrameBudget {
            inner: Arc::new(BudgetState {
                total_bytes,
                ledger: Mutex::new(Ledger {
                    available_bytes: total_bytes,
                    waiters: VecDeque::new(),
                }),
            }),
        }
    }

    /// The whole budget.
    pub fn total_bytes(&self) -> usize {
        self.inner.total_bytes
    }

    /// What is not taken now.
    pub fn available_bytes(&self) -> usize {
        self.lock().available_bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // Plain counters and a queue; a panic elsewhere cannot leave them torn.
        self.inner.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn permit(&self, bytes: usize) -> BudgetPermit {
        BudgetPermit {
            budget: self.clone(),
            bytes,
        }
    }

    /// Takes `bytes` now if they are free.
    pub fn try_acquire(&self, bytes: usize) -> Option<BudgetPermit> {
        let mut ledger = self.lock();
        if ledger.available_bytes < bytes {
            return None;
        }
        ledger.available_bytes -= bytes;
        Some(self.permit(bytes))
    }

    /// Waits until `bytes` are free and takes them. Never completes if `bytes` is over the
    /// whole budget; callers bound the wait (dropping the future leaves the queue).
    pub async fn acquire(&self, bytes: usize) -> BudgetPermit {
        let granted = {
            let mut ledger = self.lock();
            if ledger.available_bytes >= bytes {
                ledger.available_bytes -= bytes;
                return self.permit(bytes);
            }
            let (grant, granted) = oneshot::channel();
            ledger.waiters.push_back((bytes, grant));
            granted
        };
        match granted.await {
            Ok(permit) => permit,
            // The budget is never dropped while a waiter holds a clone of it.
            Err(_) => std::future::pending().await,
        }
    }

    /// Gives `bytes` back and grants waiters that fit now, oldest first.
    fn release(&self, bytes: usize) {
        let mut ledger = self.lock();
        ledger.available_bytes += bytes;
        let mut i = 0;
        while i < ledger.waiters.len() {
            let (wanted, ref grant) = ledger.waiters[i];
            if grant.is_closed() {
                ledger.waiters.remove(i);
            } else if wanted <= ledger.available_bytes {
                let Some((_, grant)) = ledger.waiters.remove(i) else {
                    break;
                };
                ledger.available_bytes -= wanted;
                if let Err(mut unwanted) = grant.send(self.permit(wanted)) {
                    // The waiter left between the check and the send: take the bytes back
                    // here, since the permit's own drop would need this lock.
                    ledger.available_bytes += unwanted.bytes;
                    unwanted.bytes = 0;
                }
            } else {
                i += 1;
            }
        }
    }
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.release(self.bytes);
        }
    }
}

/// When the frame being read must be complete: its fixed time plus its share by rate.
#[derive(Clone, Copy, Debug)]
struct FramePace {
    started: Instant,
    fixed: Duration,
    min_rate_bytes_per_s: u64,
}

impl FramePace {
    fn deadline(&self, received: usize) -> Instant {
        let by_rate_ns =
            received as u128 * 1_000_000_000 / u128::from(self.min_rate_bytes_per_s.max(1));
        let by_rate = Duration::from_nanos(u64::try_from(by_rate_ns).unwrap_or(u64::MAX));
        self.started + self.fixed.saturating_add(by_rate)
    }

    fn too_slow(&self, len: usize, received: usize) -> FrameError {
        FrameError::TooSlow {
            len,
            received,
            elapsed_ms: self.started.elapsed().as_millis() as u64,
        }
    }
}

/// Reads frames from one connection within [`FrameLimits`] and a shared [`FrameBudget`].
pub struct FrameReader<R> {
    reader: R,
    limits: FrameLimits,
    budget: FrameBudget,
    /// Bytes read but not yet part of a returned frame.
    pending: BytesMut,
    /// When the last frame ended (or the reader was made): the idle clock.
    last_frame_end: Instant,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader of `reader`'s frames.
    pub fn new(reader: R, limits: FrameLimits, budget: FrameBudget) -> FrameReader<R> {
        FrameReader {
            reader,
            limits,
            budget,
            pending: BytesMut::new(),
            last_frame_end: Instant::now(),
        }
    }

    /// The next frame's body; `None` when the peer closed cleanly between frames.
    pub async fn next_frame(&mut self) -> Result<Option<BytesMut>, FrameError> {
        let Some(pace) = self.read_header().await? else {
            return Ok(None);
        };
        let len = self.announced_len();
        if len > self.limits.max_frame_bytes || len > self.budget.total_bytes() {
            return Err(FrameError::TooLarge {
                len,
                max: self.limits.max_frame_bytes.min(self.budget.total_bytes()),
            });
        }
        let permit = tokio::time::timeout_at(pace.deadline(0), self.budget.acquire(len))
            .await
            .map_err(|_| pace.too_slow(len, 0))?;
        self.pending.advance(HEADER_BYTES);
        let body = if self.pending.len() >= len {
            self.pending.split_to(len)
        } else {
            self.read_long_body(len, pace).await?
        };
        drop(permit);
        self.last_frame_end = Instant::now();
        if self.pending.is_empty() && self.pending.capacity() > READ_CHUNK_BYTES {
            // Between frames an idle connection holds no large buffer.
            self.pending = BytesMut::new();
        }
        Ok(Some(body))
    }

    fn announced_len(&self) -> usize {
        let mut header = [0u8; HEADER_BYTES];
        header.copy_from_slice(&self.pending[..HEADER_BYTES]);
        u32::from_be_bytes(header) as usize
    }

    /// Waits for a whole header in `pending`; returns the frame's pace, or `None` on a
    /// clean close before the first byte.
    async fn read_header(&mut self) -> Result<Option<FramePace>, FrameError> {
        let fixed = Duration::from_millis(self.limits.frame_timeout_ms);
        let mut pace = (!self.pending.is_empty()).then(|| FramePace {
            started: Instant::now(),
            fixed,
            min_rate_bytes_per_s: self.limits.min_frame_rate_bytes_per_s,
        });
        while self.pending.len() < HEADER_BYTES {
            let deadline = match &pace {
                Some(p) => p.deadline(0),
                None => self.last_frame_end + Duration::from_millis(self.limits.idle_timeout_ms),
            };
            if self.pending.capacity() - self.pending.len() < HEADER_BYTES {
                self.pending.reserve(READ_CHUNK_BYTES);
            }
            let read = tokio::time::timeout_at(deadline, self.reader.read_buf(&mut self.pending))
                .await
                .map_err(|_| match &pace {
                    Some(p) => p.too_slow(0, 0),
                    None => FrameError::Idle {
                        idle_ms: self.limits.idle_timeout_ms,
                    },
                })??;
            match (read, &pace) {
                (0, None) => return Ok(None),
                (0, Some(_)) => return Err(FrameError::Truncated),
                (_, None) => {
                    pace = Some(FramePace {
                        started: Instant::now(),
                        fixed,
                        min_rate_bytes_per_s: self.limits.min_frame_rate_bytes_per_s,
                    })
                }
                _ => {}
            }
        }
        Ok(pace)
    }

    /// Reads a body longer than what is buffered, into a buffer that grows with what
    /// arrives (doubling, capped at `len`), never reading past the frame's end.
    async fn read_long_body(
        &mut self,
        len: usize,
        pace: FramePace,
    ) -> Result<BytesMut, FrameError> {
        let buffered = self.pending.split();
        let mut body: Vec<u8> =
            Vec::with_capacity(len.min(buffered.len().max(BODY_FIRST_CHUNK_BYTES)));
        body.extend_from_slice(&buffered);
        drop(buffered);
        while body.len() < len {
            if body.len() == body.capacity() {
                body.reserve_exact(next_body_capacity(body.capacity(), len) - body.len());
            }
            let remaining = (len - body.len()) as u64;
            let (deadline, received) = (pace.deadline(body.len()), body.len());
            let mut rest_of_frame = (&mut self.reader).take(remaining);
            let read = tokio::time::timeout_at(deadline, rest_of_frame.read_buf(&mut body))
                .await
                .map_err(|_| pace.too_slow(len, received))??;
            if read == 0 {
                return Err(FrameError::Truncated);
            }
        }
        Ok(BytesMut::from(Bytes::from(body)))
    }
}

/// The body buffer's next capacity: double (at least one chunk more), never past `len`.
fn next_body_capacity(capacity: usize, len: usize) -> usize {
    capacity
        .saturating_mul(2)
        .max(capacity + BODY_FIRST_CHUNK_BYTES)
        .min(len)
}

/// Rewrites a `ClientMessage::Request` frame whose deadline is over
/// [`MAX_REQUEST_DEADLINE_SECS`] to carry that maximum; other frames pass unchanged.
///
/// tarpc 0.38 deserializes the deadline as a `Duration` and computes `Instant::now() + d`,
/// which panics for huge values (and its `DelayQueue` panics beyond about two years). The
/// frame is bincode 1 `DefaultOptions`: varint integers, little endian. A request starts
/// with the enum variant index (0 = `Request`), then the context's deadline `secs` (u64),
/// then `nanos`; serde normalises `nanos` with a checked add, so `secs` is all that matters.
/// Frames that do not parse this far are left for the deserializer to refuse.
pub fn clamp_request_deadline(frame: BytesMut) -> BytesMut {
    let Some((variant, variant_len)) = read_varint(&frame) else {
        return frame;
    };
    if variant != 0 {
        return frame;
    }
    let Some((secs, secs_len)) = read_varint(&frame[variant_len..]) else {
        return frame;
    };
    if secs <= u128::from(MAX_REQUEST_DEADLINE_SECS) {
        return frame;
    }
    let mut clamped = BytesMut::with_capacity(frame.len());
    clamped.extend_from_slice(&frame[..variant_len]);
    write_varint(&mut clamped, MAX_REQUEST_DEADLINE_SECS);
    clamped.extend_from_slice(&frame[variant_len + secs_len..]);
    clamped
}

/// bincode 1 varint: < 251 is the byte itself; 251/252/253/254 announce a little-endian
/// u16/u32/u64/u128. Returns (value, bytes used).
fn read_varint(bytes: &[u8]) -> Option<(u128, usize)> {
    let first = *bytes.first()?;
    let width = match first {
        0..=250 => return Some((u128::from(first), 1)),
        251 => 2,
        252 => 4,
        253 => 8,
        254 => 16,
        _ => return None,
    };
    let raw = bytes.get(1..1 + width)?;
    let mut le = [0u8; 16];
    le[..width].copy_from_slice(raw);
    Some((u128::from_le_bytes(le), 1 + width))
}

fn write_varint(out: &mut BytesMut, value: u64) {
    use bytes::BufMut;
    match value {
        0..=250 => out.put_u8(value as u8),
        251..=0xffff => {
            out.put_u8(251);
            out.put_u16_le(value as u16);
        }
        0x1_0000..=0xffff_ffff => {
            out.put_u8(252);
            out.put_u32_le(value as u32);
        }
        _ => {
            out.put_u8(253);
            out.put_u64_le(value);
        }
    }
}

type FrameStream = Pin<Box<dyn Stream<Item = io::Result<BytesMut>> + Send>>;

/// Guarded frames in, plain length-delimited frames out: the byte layer under
/// [`GuardedServerTransport`].
pub struct GuardedFrames<S> {
    frames: FrameStream,
    sink: FramedWrite<WriteHalf<S>, LengthDelimitedCodec>,
    /// How long writing may be stuck before the connection is closed.
    write_stall: Duration,
    /// Running while the sink makes no progress.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> GuardedFrames<S> {
    /// Passes a ready result on (and stops the stall clock); fails a write that has been
    /// pending for `write_stall`: a peer that reads none of its answers is closed instead of
    /// piling them up in memory.
    fn guard_stall(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<()>>,
    ) -> Poll<io::Result<()>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let stall = self.write_stall;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        if std::future::Future::poll(timer.as_mut(), cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("peer read no answer for {} ms", stall.as_millis()),
            )));
        }
        Poll::Pending
    }
}

/// How long writing may make no progress: the fixed frame time plus one largest frame at
/// the minimum rate.
fn write_stall_timeout(limits: &FrameLimits) -> Duration {
    FramePace {
        started: Instant::now(),
        fixed: Duration::from_millis(limits.frame_timeout_ms),
        min_rate_bytes_per_s: limits.min_frame_rate_bytes_per_s,
    }
    .deadline(limits.max_frame_bytes)
        - Instant::now()
}

impl<S> GuardedFrames<S>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    /// Splits `stream`; reads through a [`FrameReader`], clamping request deadlines.
    pub fn new(stream: S, limits: FrameLimits, budget: FrameBudget) -> GuardedFrames<S> {
        let (read, write) = tokio::io::split(stream);
        let reader = FrameReader::new(read, limits, budget);
        let frames = futures::stream::unfold(Some(reader), |reader| async move {
            let mut reader: FrameReader<ReadHalf<S>> = reader?;
            match reader.next_frame().await {
                Ok(Some(frame)) => Some((Ok(clamp_request_deadline(frame)), Some(reader))),
                Ok(None) => None,
                // One error ends the stream; the connection is then closed.
                Err(e) => Some((Err(io::Error::from(e)), None)),
            }
        });
        GuardedFrames {
            frames: Box::pin(frames),
            sink: FramedWrite::new(write, crate::frame_codec(limits.max_frame_bytes)),
            write_stall: write_stall_timeout(&limits),
            stalled: None,
        }
    }
}

impl<S> Stream for GuardedFrames<S> {
    type Item = io::Result<BytesMut>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.frames.as_mut().poll_next(cx)
    }
}

impl<S: AsyncWrite> Sink<Bytes> for GuardedFrames<S> {
    type Error = io::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Sink::<Bytes>::poll_ready(Pin::new(&mut self.sink), cx);
        self.guard_stall(cx, poll)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Bytes) -> io::Result<()> {
        Sink::<Bytes>::start_send(Pin::new(&mut self.sink), item)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Sink::<Bytes>::poll_flush(Pin::new(&mut self.sink), cx);
        self.guard_stall(cx, poll)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Sink::<Bytes>::poll_close(Pin::new(&mut self.sink), cx)
    }
}

/// A tarpc server transport over guarded frames: requests in, responses out.
pub type GuardedServerTransport<S, Req, Resp> = tarpc::tokio_serde::Framed<
    GuardedFrames<S>,
    ClientMessage<Req>,
    Response<Resp>,
    Bincode<ClientMessage<Req>, Response<Resp>>,
>;

/// Wraps the server side of a connection (plain TCP or TLS) into a tarpc transport whose
/// reads are bounded by `limits` and `budget`.
pub fn guarded_server_transport<S, Req, Resp>(
    stream: S,
    limits: FrameLimits,
    budget: FrameBudget,
) -> GuardedServerTransport<S, Req, Resp>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Req: for<'de> serde::Deserialize<'de>,
    Resp: serde::Serialize,
{
    tarpc::tokio_serde::Framed::new(
        GuardedFrames::new(stream, limits, budget),
        Bincode::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncWriteExt, DuplexStream};

    const MIB: usize = 1024 * 1024;

    fn limits(max_frame_bytes: usize) -> FrameLimits {
        FrameLimits {
            max_frame_bytes,
            frame_timeout_ms: 1_000,
            min_frame_rate_bytes_per_s: 1_000,
            idle_timeout_ms: 10_000,
        }
    }

    fn header(len: u32) -> [u8; 4] {
        len.to_be_bytes()
    }

    fn reader(
        limits: FrameLimits,
        budget: &FrameBudget,
    ) -> (DuplexStream, FrameReader<DuplexStream>) {
        let (client, server) = duplex(64 * 1024);
        (client, FrameReader::new(server, limits, budget.clone()))
    }

    #[tokio::test]
    async fn frames_round_trip_in_the_length_delimited_format() {
        let budget = FrameBudget::new(MIB);
        let (mut client, mut frames) = reader(limits(MIB), &budget);
        let big = vec![7u8; 200 * 1024];
        let mut wire = Vec::new();
        for body in [&b"hello"[..], &b""[..], &big[..]] {
            wire.extend_from_slice(&header(body.len() as u32));
            wire.extend_from_slice(body);
        }
        let writer = tokio::spawn(async move {
            client.write_all(&wire).await.unwrap();
            client.shutdown().await.unwrap();
        });
        assert_eq!(&frames.next_frame().await.unwrap().unwrap()[..], b"hello");
        assert!(frames.next_frame().await.unwrap().unwrap().is_empty());
        assert_eq!(frames.next_frame().await.unwrap().unwrap()[..], big[..]);
        assert!(frames.next_frame().await.unwrap().is_none(), "clean close");
        writer.await.unwrap();
        assert_eq!(budget.available_bytes(), MIB, "every permit given back");
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused_before_anything_is_allocated() {
        let budget = FrameBudget::new(4 * MIB);
        let (mut client, mut frames) = reader(limits(MIB), &budget);
        client.write_all(&header(u32::MAX)).await.unwrap();
        let err = frames.next_frame().await.unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { len, max } if len == u32::MAX as usize && max == MIB)
        );
        assert!(
            frames.pending.capacity() <= READ_CHUNK_BYTES,
            "no body buffer"
        );
        assert_eq!(budget.available_bytes(), 4 * MIB, "no budget taken");
    }

    #[tokio::test]
    async fn a_frame_in_progress_holds_its_length_in_the_budget() {
        let budget = FrameBudget::new(64 * MIB);
        let (mut client, mut frames) = reader(limits(60 * MIB), &budget);
        client.write_all(&header(60 * MIB as u32)).await.unwrap();
        client.write_all(&[1u8; 1000]).await.unwrap();
        let reading =
            tokio::spawn(async move { frames.next_frame().await.map(|f| f.map(|f| f.len())) });
        let deadline = Instant::now() + Duration::from_secs(5);
        while budget.available_bytes() != 4 * MIB && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(
            budget.available_bytes(),
            4 * MIB,
            "60 MiB taken while the body arrives"
        );
        drop(client);
        assert!(matches!(reading.await.unwrap(), Err(FrameError::Truncated)));
        assert_eq!(
            budget.available_bytes(),
            64 * MIB,
            "given back when the frame failed"
        );
    }

    #[test]
    fn the_body_buffer_grows_by_doubling_up_to_the_frame_length() {
        let len = 60 * MIB;
        let mut capacity = BODY_FIRST_CHUNK_BYTES;
        let mut steps = 0;
        while capacity < len {
            let next = next_body_capacity(capacity, len);
            assert!(
                next > capacity && next <= len && next <= capacity * 2,
                "{capacity} -> {next}"
            );
            capacity = next;
            steps += 1;
        }
        assert!(steps <= 10, "{steps} reallocations");
        assert_eq!(next_body_capacity(100, 150), 150);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_frame_times_out() {
        let budget = FrameBudget::new(MIB);
        let (mut client, mut frames) = reader(limits(MIB), &budget);
        let started = Instant::now();
        let sender = tokio::spawn(async move {
            client.write_all(&header(100_000)).await.unwrap();
            // 100 bytes/s against a minimum of 1000 bytes/s: behind after the fixed second.
            for _ in 0..1_000 {
                if client.write_all(&[0u8; 100]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let err = frames.next_frame().await.unwrap_err();
        assert!(
            matches!(err, FrameError::TooSlow { len: 100_000, .. }),
            "{err}"
        );
        let took = started.elapsed();
        // 1 s fixed + about 0.1 s per 100 bytes received: a little over a second.
        assert!(took < Duration::from_secs(3), "closed after {took:?}");
        assert_eq!(budget.available_bytes(), MIB, "its budget is given back");
        drop(frames);
        sender.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_at_the_minimum_rate_completes() {
        let budget = FrameBudget::new(MIB);
        let (mut client, mut frames) = reader(limits(MIB), &budget);
        tokio::spawn(async move {
            client.write_all(&header(10_000)).await.unwrap();
            // 2000 bytes/s, twice the minimum: 5 s for the whole frame, well past the fixed 1 s.
            for _ in 0..10 {
                client.write_all(&[3u8; 1_000]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        let frame = frames.next_frame().await.unwrap().unwrap();
        assert_eq!(frame.len(), 10_000);
    }

    #[tokio::test(start_paused = true)]
    async fn an_incomplete_header_times_out() {
        let budget = FrameBudget::new(MIB);
        let (mut client, mut frames) = reader(limits(MIB), &budget);
        client.write_all(&[0u8, 0]).await.unwrap();
        let err = frames.next_frame().await.unwrap_err();
        assert!(matches!(err, FrameError::TooSlow { len: 0, .. }), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed() {
        let budget = FrameBudget::new(MIB);
        let (mut client, mut frames) = reader(limits(MIB), &budget);
        client.write_all(&header(2)).await.unwrap();
        client.write_all(b"ok").await.unwrap();
        assert_eq!(&frames.next_frame().await.unwrap().unwrap()[..], b"ok");
        let since = Instant::now();
        let err = frames.next_frame().await.unwrap_err();
        assert!(matches!(err, FrameError::Idle { idle_ms: 10_000 }), "{err}");
        let idle = since.elapsed();
        assert!(
            idle >= Duration::from_secs(10) && idle < Duration::from_secs(11),
            "{idle:?}"
        );
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_holds_back_a_frame_until_another_ends() {
        let budget = FrameBudget::new(MIB);
        let mut wide = limits(MIB);
        wide.frame_timeout_ms = 60_000;
        let (mut first_client, mut first) = reader(wide, &budget);
        let (mut second_client, mut second) = reader(wide, &budget);
        let big = 700 * 1024;
        first_client.write_all(&header(big as u32)).await.unwrap();
        second_client.write_all(&header(big as u32)).await.unwrap();
        let second_body = vec![2u8; big];
        let first_reads =
            tokio::spawn(async move { first.next_frame().await.map(|f| f.map(|f| f.len())) });
        // Let the first take its budget, then send the whole second frame.
        while budget.available_bytes() == MIB {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let second_writes = tokio::spawn(async move {
            second_client.write_all(&second_body).await.unwrap();
            second_client
        });
        let second_reads =
            tokio::spawn(async move { second.next_frame().await.map(|f| f.map(|f| f.len())) });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            !second_reads.is_finished(),
            "waits: the budget is taken by the first frame"
        );
        assert!(
            budget.available_bytes() < big,
            "the second frame took nothing"
        );
        first_client.write_all(&vec![1u8; big]).await.unwrap();
        assert_eq!(first_reads.await.unwrap().unwrap(), Some(big));
        assert_eq!(second_reads.await.unwrap().unwrap(), Some(big));
        drop(second_writes.await.unwrap());
        assert_eq!(budget.available_bytes(), MIB);
    }

    #[tokio::test(start_paused = true)]
    async fn a_small_frame_passes_a_large_one_waiting_for_budget() {
        let budget = FrameBudget::new(MIB);
        let held = budget.try_acquire(MIB / 2).unwrap();
        let (mut big_client, mut big) = reader(limits(MIB), &budget);
        let (mut small_client, mut small) = reader(limits(MIB), &budget);
        big_client
            .write_all(&header((MIB * 3 / 4) as u32))
            .await
            .unwrap();
        let big_reads =
            tokio::spawn(async move { big.next_frame().await.map(|f| f.map(|f| f.len())) });
        tokio::time::sleep(Duration::from_millis(10)).await;
        small_client.write_all(&header(3)).await.unwrap();
        small_client.write_all(b"abc").await.unwrap();
        assert_eq!(&small.next_frame().await.unwrap().unwrap()[..], b"abc");
        drop(held);
        // The large frame now has its budget but no body: it times out and gives it back.
        assert!(matches!(
            big_reads.await.unwrap(),
            Err(FrameError::TooSlow { .. })
        ));
        assert_eq!(budget.available_bytes(), MIB);
        drop(big_client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_reads_no_answers_is_closed() {
        use futures::SinkExt;
        let (client, server) = duplex(4 * 1024);
        let mut frames = GuardedFrames::new(server, limits(64 * 1024), FrameBudget::new(MIB));
        let started = Instant::now();
        let mut sent = 0;
        let err = loop {
            match frames.send(Bytes::from(vec![0u8; 16 * 1024])).await {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent < 100, "the sink never stalled");
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        // 1 s fixed + 64 KiB at 1000 bytes/s.
        let stall = started.elapsed();
        assert!(stall >= Duration::from_millis(1_000 + 65_536), "{stall:?}");
        drop(client);
    }

    /// A real request frame (bincode 1 DefaultOptions, as on the wire) with its deadline
    /// `secs` replaced by `secs`.
    fn request_frame_with_deadline_secs(secs: u64) -> BytesMut {
        use tarpc::tokio_serde::Serializer;
        let request = ClientMessage::Request(tarpc::Request {
            context: tarpc::context::current(),
            id: 42,
            message: String::from("payload"),
        });
        let mut codec = Bincode::<ClientMessage<String>, ClientMessage<String>>::default();
        let wire = Pin::new(&mut codec).serialize(&request).unwrap();
        let (_, secs_at) = read_varint(&wire[1..]).unwrap();
        let mut frame = BytesMut::new();
        frame.extend_from_slice(&wire[..1]);
        write_varint(&mut frame, secs);
        frame.extend_from_slice(&wire[1 + secs_at..]);
        frame
    }

    fn decode(frame: &BytesMut) -> io::Result<ClientMessage<String>> {
        use tarpc::tokio_serde::Deserializer;
        let mut codec = Bincode::<ClientMessage<String>, ClientMessage<String>>::default();
        Pin::new(&mut codec).deserialize(frame)
    }

    #[test]
    fn a_huge_deadline_is_clamped_before_deserializing() {
        let frame = request_frame_with_deadline_secs(u64::MAX);
        let panicked = std::panic::catch_unwind(|| decode(&frame));
        assert!(panicked.is_err(), "tarpc panics on this frame unclamped");
        let decoded = decode(&clamp_request_deadline(frame)).unwrap();
        let ClientMessage::Request(request) = decoded else {
            panic!("still a request");
        };
        assert_eq!((request.id, request.message.as_str()), (42, "payload"));
        let left = request.context.deadline - std::time::Instant::now();
        // The clamp cuts whole seconds; the nanoseconds field stays below one second.
        assert!(
            left <= Duration::from_secs(MAX_REQUEST_DEADLINE_SECS + 1),
            "{left:?}"
        );
        assert!(
            left > Duration::from_secs(MAX_REQUEST_DEADLINE_SECS - 60),
            "{left:?}"
        );
    }

    #[test]
    fn normal_frames_pass_unchanged() {
        for secs in [0, 10, 250, 251, MAX_REQUEST_DEADLINE_SECS] {
            let frame = request_frame_with_deadline_secs(secs);
            assert_eq!(clamp_request_deadline(frame.clone()), frame, "{secs}");
        }
        for junk in [&[][..], &[1u8, 2, 3][..], &[0u8, 253, 1][..], &[255u8][..]] {
            let frame = BytesMut::from(junk);
            assert_eq!(clamp_request_deadline(frame.clone()), frame);
        }
    }

    #[test]
    fn varints_round_trip() {
        for v in [
            0,
            250,
            251,
            0xffff,
            0x1_0000,
            0xffff_ffff,
            0x1_0000_0000,
            u64::MAX,
        ] {
            let mut out = BytesMut::new();
            write_varint(&mut out, v);
            assert_eq!(read_varint(&out), Some((u128::from(v), out.len())), "{v}");
        }
    }

    #[test]
    fn limits_must_fit_the_budget() {
        let budget = FrameBudget::new(MIB);
        assert!(limits(MIB).check(&budget).is_ok());
        assert!(limits(MIB + 1).check(&budget).is_err());
        let mut zero_rate = limits(MIB);
        zero_rate.min_frame_rate_bytes_per_s = 0;
        assert!(zero_rate.check(&budget).is_err());
    }
}
