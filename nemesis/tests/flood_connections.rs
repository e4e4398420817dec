//! Connection floods against real `paxoskv-server` processes on loopback: slow 60 MiB
//! frames, 10,000 idle connections from one address, a request deadline of `u64::MAX`
//! seconds. Each asserts the replicas' memory (VmHWM, the peak RSS) and open descriptors
//! stay under stated bounds and that ordinary clients keep being served, and prints what it
//! measured.

mod support;

use paxoskv_client::{Client, ClientConfig};
use paxoskv_service::{connect_kv, KvRpcRequest, KvRpcResponse};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_serde::{Deserializer, Serializer};
use tarpc::{ClientMessage, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const MIB: u64 = 1024 * 1024;

/// The floods run one at a time: each measures one cluster's memory and descriptors, and
/// together they would only compete for the CPU.
static ONE_FLOOD_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// The frame a slowloris announces: just under the replica service's 64 MiB maximum.
const HUGE_FRAME_BYTES: u32 = 60 * 1024 * 1024;

/// Five replica processes; killed on drop, also when an assertion fails.
struct Cluster {
    procs: Vec<Child>,
    addrs: Vec<SocketAddr>,
    logs: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.procs {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_addrs(n: usize) -> Vec<SocketAddr> {
    paxoskv_server::ports::free_loopback_addrs(n).expect("free loopback ports")
}

impl Cluster {
    /// Starts five in-memory replicas with `extra` flags; waits (bounded) until they listen.
    fn start(extra: &[&str]) -> Cluster {
        Cluster::start_with_fd_limit(extra, None)
    }

    /// Like [`Cluster::start`]; replica 0 runs with both open-file limits at `fd_limit`
    /// (as under `ulimit -n`), if given.
    fn start_with_fd_limit(extra: &[&str], fd_limit: Option<u64>) -> Cluster {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let addrs = free_addrs(5);
        let peers: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        let mut procs = Vec::new();
        let mut logs = Vec::new();
        for id in 0..addrs.len() {
            let log = dir.path().join(format!("replica-{id}.log"));
            let mut command = Command::new(support::server_bin());
            command
                .args(["--replica", &id.to_string(), "--peers", &peers.join(",")])
                .arg("--in-memory")
                .args(extra)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log).unwrap());
            if let (0, Some(limit)) = (id, fd_limit) {
                let limit = libc::rlimit {
                    rlim_cur: limit as libc::rlim_t,
                    rlim_max: limit as libc::rlim_t,
                };
                // SAFETY: only setrlimit (async-signal-safe) runs between fork and exec.
                unsafe {
                    command.pre_exec(move || {
                        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                            Ok(())
                        } else {
                            Err(std::io::Error::last_os_error())
                        }
                    });
                }
            }
            let mut child = command.spawn().expect("start paxoskv-server");
            let stdout = child.stdout.take().unwrap();
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stdout)
                    .lines()
                    .map_while(Result::ok)
                {
                    if line.contains("is running") {
                        let _ = tx.send(());
                    }
                }
            });
            procs.push(child);
            logs.push(log);
            rx.recv_timeout(Duration::from_secs(20))
                .expect("replica announced itself");
        }
        Cluster {
            procs,
            addrs,
            logs,
            _dir: dir,
        }
    }

    fn pid(&self, id: usize) -> u32 {
        self.procs[id].id()
    }

    fn client(&self) -> Client {
        let mut config = ClientConfig::with_servers(self.addrs.clone());
        config.timeout = Duration::from_secs(10);
        config.attempt_timeout = Duration::from_millis(500);
        Client::connect(config).unwrap()
    }

    /// Peak and current RSS of every replica, MiB.
    fn memory_mib(&self) -> Vec<(u64, u64)> {
        (0..self.procs.len())
            .map(|id| {
                let pid = self.pid(id);
                let kib = |f| support::proc_status_kib(pid, f).expect("replica alive");
                (kib("VmHWM") / 1024, kib("VmRSS") / 1024)
            })
            .collect()
    }

    fn log_lines_with(&self, id: usize, text: &str) -> usize {
        std::fs::read_to_string(&self.logs[id])
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(text))
            .count()
    }

    fn assert_no_panic(&self) {
        for (id, log) in self.logs.iter().enumerate() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            assert!(!text.contains("panicked"), "replica {id} panicked:\n{text}");
        }
    }
}

/// Puts and reads back `count` keys; every one must succeed.
async fn put_get_round(client: &mut Client, prefix: &str, count: usize) {
    for i in 0..count {
        let key = format!("{prefix}-{i}");
        client
            .put(&key, key.as_bytes().to_vec())
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
        let got = client
            .get(&key)
            .await
            .unwrap_or_else(|e| panic!("get {key}: {e}"));
        assert_eq!(got.as_deref(), Some(key.as_bytes()), "{key}");
    }
}

/// How one slowloris round ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The server closed the connection, after this long.
    ClosedByServer(Duration),
    /// It was still open when the round's time was up.
    StillOpen,
}

/// Connects to the replica service, announces a huge frame and trickles its body at
/// `bytes_per_s` until the server closes the connection or `within` passes.
async fn slowloris(addr: SocketAddr, bytes_per_s: usize, within: Duration) -> Ended {
    const CHUNK_BYTES: usize = 4 * 1024;
    let started = Instant::now();
    let Ok(stream) = TcpStream::connect(addr).await else {
        return Ended::ClosedByServer(started.elapsed());
    };
    let (mut read, mut write) = stream.into_split();
    let trickle = async {
        // The preamble (tag, no token), then the frame header.
        let mut hello = vec![b'R', 0, 0];
        hello.extend_from_slice(&HUGE_FRAME_BYTES.to_be_bytes());
        write.write_all(&hello).await?;
        let pause = Duration::from_secs_f64(CHUNK_BYTES as f64 / bytes_per_s as f64);
        let chunk = vec![0xffu8; CHUNK_BYTES];
        for _ in 0..(HUGE_FRAME_BYTES as usize / CHUNK_BYTES) {
            write.write_all(&chunk).await?;
            tokio::time::sleep(pause).await;
        }
        std::io::Result::Ok(())
    };
    let closed = async {
        // The server answers the preamble, never a frame it has not read: EOF is the close.
        read_until_closed(&mut read).await;
    };
    tokio::select! {
        _ = tokio::time::timeout(within, closed) => {}
        // A failed write means the server closed (reset) the connection.
        _ = trickle => {}
    }
    if started.elapsed() >= within {
        Ended::StillOpen
    } else {
        Ended::ClosedByServer(started.elapsed())
    }
}

/// The replica preamble (tag, no token), a 60 MiB header and a 60 MiB body of junk (0xff is
/// no valid variant).
fn huge_junk_frame() -> Arc<Vec<u8>> {
    let mut frame = vec![0xffu8; 7 + HUGE_FRAME_BYTES as usize];
    frame[..3].copy_from_slice(&[b'R', 0, 0]);
    frame[3..7].copy_from_slice(&HUGE_FRAME_BYTES.to_be_bytes());
    Arc::new(frame)
}

/// Sends a whole huge frame at full speed: it is read only within the frame budget, then
/// refused as junk (or cut off while waiting for budget); either way the server closes.
async fn fast_frame(addr: SocketAddr, frame: Arc<Vec<u8>>, within: Duration) -> bool {
    let send = async {
        let mut stream = TcpStream::connect(addr).await?;
        // A write error is the server closing the connection; wait for the close anyway.
        let _ = stream.write_all(&frame).await;
        read_until_closed(&mut stream).await;
        std::io::Result::Ok(())
    };
    matches!(tokio::time::timeout(within, send).await, Ok(Ok(())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_huge_frames_are_cut_off_and_memory_stays_bounded() {
    let _serial = ONE_FLOOD_AT_A_TIME.lock().await;
    const SLOW_PER_REPLICA: usize = 200;
    const FAST_FRAMES: usize = 8;
    const FLOOD_MS: u64 = 6_000;
    const FRAME_TIMEOUT_MS: u64 = 1_000;
    const BUDGET_BYTES: u64 = 128 * MIB;
    /// Peak RSS allowed per replica: the frame budget plus 64 MiB for everything else
    /// (measured: 103 MiB after the fast frames, 19 MiB under the slow flood alone).
    const MAX_PEAK_RSS_MIB: u64 = BUDGET_BYTES / MIB + 64;
    support::raise_open_file_limit();
    let cluster = Cluster::start(&[
        "--frame-timeout-ms",
        &FRAME_TIMEOUT_MS.to_string(),
        "--frame-budget-bytes",
        &BUDGET_BYTES.to_string(),
    ]);
    let mut client = cluster.client();
    put_get_round(&mut client, "before", 5).await;
    let before = cluster.memory_mib();

    // Whole 60 MiB frames at full speed against one replica: read two at a time (budget),
    // the rest cut off while they wait.
    let junk = huge_junk_frame();
    let fast: Vec<_> = (0..FAST_FRAMES)
        .map(|_| {
            let frame = junk.clone();
            tokio::spawn(fast_frame(cluster.addrs[0], frame, Duration::from_secs(30)))
        })
        .collect();
    put_get_round(&mut client, "fast", 5).await;
    let mut fast_done = 0;
    for f in fast {
        fast_done += usize::from(f.await.unwrap());
    }
    drop(junk);
    let after_fast = cluster.memory_mib();

    // 200 slow frames per replica, at 1/16 of the 1 MiB/s minimum, reconnecting after
    // each close until the flood ends; meanwhile a client keeps writing and reading.
    let flood_ends = Instant::now() + Duration::from_millis(FLOOD_MS);
    // Generous: the machine may be loaded; the point is that every one is closed.
    let round_bound = Duration::from_millis(FRAME_TIMEOUT_MS * 20);
    let mut attackers = Vec::new();
    for &addr in &cluster.addrs {
        for _ in 0..SLOW_PER_REPLICA {
            attackers.push(tokio::spawn(async move {
                let mut closes = Vec::new();
                while Instant::now() < flood_ends && closes.len() < 100 {
                    closes.push(slowloris(addr, 64 * 1024, round_bound).await);
                }
                closes
            }));
        }
    }
    let mut served_during = 0;
    let mut slowest_during = Duration::ZERO;
    while Instant::now() < flood_ends && served_during < 1_000 {
        let one = Instant::now();
        put_get_round(&mut client, &format!("during{served_during}"), 1).await;
        slowest_during = slowest_during.max(one.elapsed());
        served_during += 1;
    }
    let mut rounds = 0;
    let mut longest = Duration::ZERO;
    for attacker in attackers {
        for ended in attacker.await.unwrap() {
            match ended {
                Ended::ClosedByServer(after) => longest = longest.max(after),
                Ended::StillOpen => panic!("a slow frame was still open after {round_bound:?}"),
            }
            rounds += 1;
        }
    }
    put_get_round(&mut client, "after", 20).await;
    let after = cluster.memory_mib();
    cluster.assert_no_panic();
    println!(
        "slow 60 MiB frames: {rounds} connections over {} replicas, all closed by the server \
         (longest {longest:?}); {fast_done}/{FAST_FRAMES} fast 60 MiB frames ended; \
         {served_during} put+get served during the flood (slowest {slowest_during:?})",
        cluster.addrs.len()
    );
    for (id, ((_, rss_before), (peak, rss_after))) in before.iter().zip(&after).enumerate() {
        let (peak_fast, _) = after_fast[id];
        println!(
            "replica {id}: RSS {rss_before} MiB before, peak {peak_fast} MiB after the fast \
             frames, peak {peak} MiB after the slow flood, {rss_after} MiB at the end"
        );
        assert!(
            *peak < MAX_PEAK_RSS_MIB,
            "replica {id} peaked at {peak} MiB (bound {MAX_PEAK_RSS_MIB})"
        );
    }
    assert!(
        served_during > 0,
        "no client request was served during the flood"
    );
    assert!(
        rounds >= cluster.addrs.len() * SLOW_PER_REPLICA,
        "{rounds} rounds"
    );
    assert_eq!(
        fast_done, FAST_FRAMES,
        "every fast frame was read or cut off"
    );
}

/// Connects from `source` (any 127/8 address) and names the client service.
async fn idle_connection(source: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let mut stream = socket.connect(to).await?;
    stream.write_all(&[b'K', 0, 0]).await?; // the preamble: tag, no token
    Ok(stream)
}

/// Reads (and drops) whatever the server sends, such as the preamble's verdict, until it
/// closes the connection.
async fn read_until_closed<R: AsyncRead + Unpin>(read: &mut R) {
    let mut buf = [0u8; 64];
    while let Ok(n) = read.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// Waits until the server closes `stream`; returns how long that took from `since`.
async fn closed_after(mut stream: TcpStream, since: Instant, within: Duration) -> Option<Duration> {
    tokio::time::timeout(within, read_until_closed(&mut stream))
        .await
        .ok()
        .map(|_| since.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_from_one_address_are_capped_and_time_out() {
    let _serial = ONE_FLOOD_AT_A_TIME.lock().await;
    const IDLE: usize = 10_000;
    const PER_IP: usize = 512;
    const IDLE_TIMEOUT_MS: u64 = 6_000;
    /// Measured: 28 MiB with 512 connections kept and 9,488 refused.
    const MAX_PEAK_RSS_MIB: u64 = 100;
    let limit = support::raise_open_file_limit();
    assert!(
        limit > IDLE as u64 + 1_000,
        "the test needs {IDLE} sockets; open-file limit is {limit}"
    );
    let cluster = Cluster::start(&[
        "--max-connections-per-ip",
        &PER_IP.to_string(),
        "--idle-timeout-ms",
        &IDLE_TIMEOUT_MS.to_string(),
    ]);
    let mut client = cluster.client();
    put_get_round(&mut client, "before", 5).await;
    let pid = cluster.pid(0);
    let fds_before = support::open_fds(pid).unwrap();
    let target = cluster.addrs[0];
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

    // At most 200 connects at a time, so the listen backlog never overflows. Each
    // connection then waits for the server to close it; the replica's descriptors are
    // sampled as the connections pile up.
    let watch = Duration::from_millis(IDLE_TIMEOUT_MS * 5);
    let connecting = Arc::new(tokio::sync::Semaphore::new(200));
    let started = Instant::now();
    let mut fds_held = 0;
    let mut conns = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let permit = connecting.clone().acquire_owned().await.unwrap();
        conns.push(tokio::spawn(async move {
            let stream = idle_connection(source, target).await;
            drop(permit);
            Ok::<_, std::io::Error>(closed_after(stream?, Instant::now(), watch).await)
        }));
        if i % 200 == 0 {
            fds_held = fds_held.max(support::open_fds(pid).unwrap());
        }
    }
    let _all_started = connecting.acquire_many(200).await.unwrap();
    let connected_in = started.elapsed();
    fds_held = fds_held.max(support::open_fds(pid).unwrap());
    // A client from 127.0.0.1 is served by the flooded replica itself and by the cluster.
    let direct = connect_kv(target, &paxoskv_service::Dialer::plain())
        .await
        .expect("dial the flooded replica");
    let status = direct
        .status(tarpc::context::current())
        .await
        .expect("the flooded replica answers a new client");
    assert_eq!(status.id, 0);
    put_get_round(&mut client, "during", 5).await;

    let mut refused_at_once = 0;
    let mut idled_out = 0;
    for c in conns {
        match c.await.unwrap() {
            // Refused ones are closed right after the connect, admitted ones only when
            // the idle timeout fires.
            Ok(Some(after)) if after < Duration::from_millis(IDLE_TIMEOUT_MS / 2) => {
                refused_at_once += 1
            }
            Ok(Some(_)) => idled_out += 1,
            Ok(None) => panic!("an idle connection was still open after {watch:?}"),
            Err(e) => panic!("connect: {e}"),
        }
    }
    let closed_in = started.elapsed();
    // Every idle connection is gone: the descriptor count returns to its baseline.
    let deadline = Instant::now() + Duration::from_secs(10);
    let fds_after = loop {
        let fds = support::open_fds(pid).unwrap();
        if fds <= fds_before + 4 || Instant::now() > deadline {
            break fds;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    put_get_round(&mut client, "after", 5).await;
    let (peak, rss) = cluster.memory_mib()[0];
    let refusal_lines = cluster.log_lines_with(0, "connection refused");
    cluster.assert_no_panic();
    println!(
        "{IDLE} idle connections from {source} in {connected_in:?}: replica 0 held at most \
         {fds_held} fds (baseline {fds_before}, {fds_after} after), {refused_at_once} closed at once, \
         {idled_out} by the idle timeout; peak RSS {peak} MiB, {rss} MiB after; \
         {refusal_lines} refusal log lines in {closed_in:?}"
    );
    assert!(
        fds_held <= fds_before + PER_IP + 16,
        "{fds_held} fds held (cap {PER_IP} over a baseline of {fds_before})"
    );
    // A place freed by the idle timeout is taken again by a later connect, so at most
    // one cap's worth is admitted per idle period of the connect phase.
    let periods = 1 + connected_in.as_millis() as usize / IDLE_TIMEOUT_MS as usize;
    assert!(
        idled_out <= PER_IP * periods && refused_at_once + idled_out == IDLE,
        "{idled_out} admitted, {refused_at_once} refused in {periods} idle periods"
    );
    assert!(
        idled_out > 0,
        "the admitted ones closed by the idle timeout"
    );
    assert!(
        fds_after <= fds_before + 4,
        "{fds_after} fds after the timeout"
    );
    assert!(peak < MAX_PEAK_RSS_MIB, "peak RSS {peak} MiB");
    let log_bound = closed_in.as_secs() as usize + 2;
    assert!(
        refusal_lines <= log_bound,
        "{refusal_lines} refusal warnings in {closed_in:?}: more than one a second"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_low_fd_limit_new_clients_are_still_served() {
    let _serial = ONE_FLOOD_AT_A_TIME.lock().await;
    const FD_LIMIT: u64 = 256;
    /// What the server must cut its cap to: the limit minus 64 + 32 reserved descriptors.
    const EXPECTED_CAP: usize = 160;
    const FLOOD: usize = 1_000;
    support::raise_open_file_limit();
    let cluster = Cluster::start_with_fd_limit(&[], Some(FD_LIMIT));
    let mut client = cluster.client();
    put_get_round(&mut client, "before", 3).await;
    let pid = cluster.pid(0);
    let target = cluster.addrs[0];
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
    let started = Instant::now();
    let mut held = Vec::new();
    let mut fds_max = 0;
    for _ in 0..FLOOD / 100 {
        let wave: Vec<_> = (0..100)
            .map(|_| tokio::spawn(idle_connection(source, target)))
            .collect();
        for c in wave {
            held.push(c.await.unwrap().expect("connect"));
        }
        fds_max = fds_max.max(support::open_fds(pid).unwrap());
    }
    // With the cap full, a new client is refused at once (no hang), and once the flood is
    // gone, served: never a timeout behind a full descriptor table.
    let direct = tokio::time::timeout(Duration::from_secs(10), async {
        let kv = connect_kv(target, &paxoskv_service::Dialer::plain()).await?;
        kv.status(tarpc::context::current())
            .await
            .map_err(std::io::Error::other)
    })
    .await
    .expect("a refused client learns it at once");
    assert!(direct.is_err(), "the cap is full: {direct:?}");
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let attempt = async {
            let kv = connect_kv(target, &paxoskv_service::Dialer::plain()).await?;
            kv.status(tarpc::context::current())
                .await
                .map_err(std::io::Error::other)
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(status)) => break status,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("replica 0 never served a client again: {other:?}"),
        }
    };
    assert_eq!(status.id, 0);
    put_get_round(&mut client, "after", 3).await;
    let elapsed = started.elapsed();
    let accept_failures = cluster.log_lines_with(0, "accept failed");
    let refusal_lines = cluster.log_lines_with(0, "connection refused");
    let (peak, _) = cluster.memory_mib()[0];
    cluster.assert_no_panic();
    println!(
        "ulimit -n {FD_LIMIT}: {FLOOD} connections from {source}; replica 0 held at most \
         {fds_max} fds, {accept_failures} accept failures and {refusal_lines} refusal lines \
         logged in {elapsed:?}; peak RSS {peak} MiB"
    );
    assert!(fds_max as u64 <= FD_LIMIT, "{fds_max} fds");
    assert!(
        fds_max <= EXPECTED_CAP + 32,
        "{fds_max} fds: the cap was not cut to the limit"
    );
    assert_eq!(
        accept_failures, 0,
        "the cap keeps accept() away from EMFILE"
    );
    assert!(
        refusal_lines <= elapsed.as_secs() as usize + 2,
        "{refusal_lines} lines"
    );
}

type Request = ClientMessage<KvRpcRequest>;

fn encode(request: &Request) -> Vec<u8> {
    let mut codec = Bincode::<Request, Request>::default();
    let body = Pin::new(&mut codec).serialize(request).unwrap();
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// A `status` request frame whose deadline says `u64::MAX` seconds. bincode 1 varint: the
/// variant index (0, one byte), then the deadline's seconds; 253 announces a u64.
fn status_frame_with_deadline_secs_max(id: u64) -> Vec<u8> {
    let request = ClientMessage::Request(tarpc::Request {
        context: tarpc::context::current(),
        id,
        message: KvRpcRequest::Status {},
    });
    let frame = encode(&request);
    let body = &frame[4..];
    assert_eq!(body[0], 0, "variant Request");
    let secs_len = match body[1] {
        0..=250 => 1,
        251 => 3,
        252 => 5,
        253 => 9,
        other => panic!("unexpected varint marker {other}"),
    };
    let mut patched = vec![0u8];
    patched.push(253);
    patched.extend_from_slice(&u64::MAX.to_le_bytes());
    patched.extend_from_slice(&body[1 + secs_len..]);
    let mut out = (patched.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&patched);
    out
}

async fn read_response(stream: &mut TcpStream) -> Response<KvRpcResponse> {
    let len = stream.read_u32().await.expect("a response header") as usize;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.expect("a response body");
    let mut codec = Bincode::<Response<KvRpcResponse>, Request>::default();
    Pin::new(&mut codec)
        .deserialize(&body[..].into())
        .expect("a well-formed response")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_deadline_of_u64_max_seconds_is_clamped() {
    let _serial = ONE_FLOOD_AT_A_TIME.lock().await;
    let cluster = Cluster::start(&[]);
    let mut client = cluster.client();
    put_get_round(&mut client, "before", 3).await;
    let within = Duration::from_secs(10);
    let mut raw = TcpStream::connect(cluster.addrs[1]).await.unwrap();
    raw.write_all(&[b'K', 0, 0]).await.unwrap(); // the preamble: tag, no token
    assert_eq!(raw.read_u8().await.unwrap(), 0, "preamble accepted");
    raw.write_all(&status_frame_with_deadline_secs_max(1))
        .await
        .unwrap();
    let answer = tokio::time::timeout(within, read_response(&mut raw))
        .await
        .expect("an answer within 10 s, not a hang");
    assert_eq!(answer.request_id, 1);
    match answer.message {
        Ok(KvRpcResponse::Status(status)) => assert_eq!(status.id, 1),
        other => panic!("expected a status, got {other:?}"),
    }
    // The same connection keeps working, with a huge deadline and with a normal one.
    raw.write_all(&status_frame_with_deadline_secs_max(2))
        .await
        .unwrap();
    let normal = ClientMessage::Request(tarpc::Request {
        context: tarpc::context::current(),
        id: 3,
        message: KvRpcRequest::Status {},
    });
    raw.write_all(&encode(&normal)).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let answer = tokio::time::timeout(within, read_response(&mut raw))
            .await
            .expect("answers keep coming");
        assert!(answer.message.is_ok(), "{:?}", answer.message);
        ids.push(answer.request_id);
    }
    ids.sort_unstable();
    assert_eq!(ids, [2, 3]);
    put_get_round(&mut client, "after", 3).await;
    cluster.assert_no_panic();
    let (peak, rss) = cluster.memory_mib()[1];
    println!("u64::MAX deadline: answered on the same connection; replica 1 RSS {rss} MiB (peak {peak} MiB)");
}
