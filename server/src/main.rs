//! `paxoskv-server`: five replicas in one process (`paxoskv-server 15000 -f`) or one replica
//! of a multi-process cluster (`--replica I --peers H:P,...`).

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use paxoskv::Replica;
use paxoskv_server::certs::GenCertsArgs;
use paxoskv_server::limits::{self, ConnectionLimits};
use paxoskv_server::node::{open_disk_replica, OpenError};
use paxoskv_server::storage::FaultInjector;
use paxoskv_server::store::{MemoryStore, ReplicaStore, StoreError};
use paxoskv_server::{run_replica, FailMode, ReplicaOptions};
use paxoskv_service::frames;
use paxoskv_service::tls::{ClientTlsFiles, ServerSecurity, ServerTls, ServerTlsFiles};
use paxoskv_service::Dialer;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Replicas started by the one-process mode.
const LOCAL_REPLICAS: u16 = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum FailKind {
    /// Each Paxos message is dropped with probability --fail-rate.
    Drop,
    /// The acceptor goes silent for random intervals.
    Down,
}

#[derive(Debug, Subcommand)]
enum Tool {
    /// Write a CA, a certificate per replica and a client certificate for a TLS cluster.
    ///
    /// Then: `paxoskv-server --tls-dir DIR` and `paxoskv --cacert DIR/ca.pem --cert
    /// DIR/client.pem --key DIR/client-key.pem ...`.
    GenCerts(GenCertsArgs),
}

/// A replicated key-value store kept consistent with Multi-Paxos.
#[derive(Parser, Debug)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    tool: Option<Tool>,
    /// First port; replicas listen on PORT..PORT+4 (one-process mode).
    #[arg(default_value_t = 15000)]
    port: u16,
    /// Make acceptors fail at random (25% of Paxos messages unless --fail-rate says otherwise).
    #[arg(short = 'f', long = "fail")]
    fail: bool,
    /// Failure probability per Paxos message (drop mode) or per second (down mode); implies -f.
    #[arg(long, value_parser = parse_rate)]
    fail_rate: Option<f64>,
    /// How acceptors fail (default drop); giving it implies -f.
    #[arg(long, value_enum)]
    fail_mode: Option<FailKind>,
    /// Shortest silence in down mode.
    #[arg(long, default_value_t = 500)]
    down_min_ms: u64,
    /// Longest silence in down mode.
    #[arg(long, default_value_t = 2000)]
    down_max_ms: u64,
    /// Host to listen on in one-process mode.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Run only this replica (index into --peers).
    #[arg(long, requires = "peers")]
    replica: Option<u32>,
    /// Every replica's address, comma-separated, in id order.
    #[arg(long, value_delimiter = ',', requires = "replica")]
    peers: Vec<String>,
    /// Core tick length.
    #[arg(long, default_value_t = 10)]
    tick_ms: u64,
    /// Largest value accepted.
    #[arg(long, default_value_t = paxoskv::DEFAULT_MAX_VALUE_BYTES)]
    max_value_bytes: usize,
    /// Where replicas keep their log and snapshots; replica I uses DIR/replica-I.
    #[arg(long, default_value = "./paxoskv-data")]
    data_dir: PathBuf,
    /// Keep state only in memory: nothing survives a restart (experiments only).
    #[arg(long)]
    in_memory: bool,
    /// Let clients set partitions through the `set_partition` call (fault tests only).
    #[arg(long)]
    enable_fault_control: bool,
    /// Runtime worker threads (0 = one per core). One thread avoids cross-core wake-ups,
    /// which dominate the cost of a replica on a small machine.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Snapshot (and compact the log) after this many applied slots.
    #[arg(long, default_value_t = 50_000)]
    snapshot_every_slots: u64,
    /// Snapshot once the log exceeds this many bytes.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    snapshot_log_bytes: u64,
    /// This replica's TLS certificate (PEM). In one-process mode `{id}` in the path is
    /// replaced by each replica's id, e.g. `--cert certs/replica-{id}.pem`.
    #[arg(long, value_name = "FILE", requires_all = ["key", "peer_ca"], conflicts_with = "tls_dir")]
    cert: Option<String>,
    /// The certificate's private key (PEM); `{id}` as in --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<String>,
    /// CA whose certificates prove a replica (`replica-I.paxoskv`): replica connections
    /// without one are refused.
    #[arg(long, value_name = "FILE", requires = "cert")]
    peer_ca: Option<PathBuf>,
    /// CA whose certificates authenticate clients (with TLS, clients then need one, or a
    /// token when --auth-token-file is also given).
    #[arg(long, value_name = "FILE")]
    client_ca: Option<PathBuf>,
    /// TLS from a `gen-certs` directory: DIR/replica-I.pem and DIR/replica-I-key.pem, with
    /// DIR/ca.pem as both peer and client CA.
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<PathBuf>,
    /// A bearer token clients must present (checked once per connection); the file holds the
    /// token, trailing whitespace ignored.
    #[arg(long, value_name = "FILE")]
    auth_token_file: Option<PathBuf>,
    /// Allow listening on a non-loopback address without TLS (anyone who reaches the port
    /// can then rewrite the data).
    #[arg(long)]
    insecure: bool,
    /// Address to bind in one-replica-per-process mode (default: this replica's --peers
    /// entry), e.g. 0.0.0.0:15000 behind NAT.
    #[arg(long, value_name = "ADDR", requires = "replica")]
    listen: Option<String>,
    /// Connections one replica keeps; more are closed at once. Cut to fit the open-file
    /// limit (raised to its hard limit at start-up).
    #[arg(long, default_value_t = limits::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Connections one replica keeps from one source address.
    #[arg(long, default_value_t = limits::DEFAULT_MAX_CONNECTIONS_PER_IP)]
    max_connections_per_ip: usize,
    /// Requests one connection may have in flight; more wait unread.
    #[arg(long, default_value_t = limits::DEFAULT_MAX_REQUESTS_PER_CONNECTION)]
    max_requests_per_connection: usize,
    /// Time every frame gets to arrive (and to find room in the frame budget) before the
    /// minimum rate applies; a slower frame closes its connection.
    #[arg(long, default_value_t = frames::DEFAULT_FRAME_TIMEOUT_MS)]
    frame_timeout_ms: u64,
    /// Slowest rate a frame may arrive at, past --frame-timeout-ms.
    #[arg(long, default_value_t = frames::DEFAULT_MIN_FRAME_RATE_BYTES_PER_S)]
    min_frame_rate_bytes_per_s: u64,
    /// A connection that starts no frame for this long is closed.
    #[arg(long, default_value_t = frames::DEFAULT_IDLE_TIMEOUT_MS)]
    idle_timeout_ms: u64,
    /// Bytes of frames being read at once per replica, over all its connections; must hold
    /// one largest replica frame (64 MiB).
    #[arg(long, default_value_t = frames::DEFAULT_FRAME_BUDGET_BYTES)]
    frame_budget_bytes: usize,
    /// Bytes of client commands a replica holds in its handlers at once (key + value +
    /// overhead, twice while a copy is kept for forwarding; forwarded writes count on the
    /// leader too). Beyond it writes are answered `Busy` and the client backs off.
    #[arg(long, default_value_t = paxoskv_server::node::DEFAULT_MAX_INFLIGHT_BYTES)]
    max_inflight_bytes: usize,
    /// Change events each replica keeps for watches; a watch from an older revision gets
    /// `compacted` with the oldest one kept.
    #[arg(long, default_value_t = paxoskv_server::watch::DEFAULT_HISTORY_EVENTS)]
    watch_history_events: usize,
    /// Bytes of change events each replica keeps for watches (keys + values + 64 each).
    #[arg(long, default_value_t = paxoskv_server::watch::DEFAULT_HISTORY_BYTES)]
    watch_history_bytes: usize,
    /// Bytes of large peer requests (accepts of 64 KiB or more) queued for the replica's
    /// core at once; more are dropped unanswered and the leader resends.
    #[arg(long, default_value_t = paxoskv_server::node::DEFAULT_MAX_PEER_INFLIGHT_BYTES)]
    max_peer_inflight_bytes: usize,
    /// Bytes of large requests in flight to one peer at once; more are dropped (resent).
    #[arg(long, default_value_t = paxoskv_server::driver::DriverLimits::default().max_peer_send_bytes)]
    max_peer_send_bytes: usize,
    /// Bytes of commands waiting in the leader's queue; more get `Busy`.
    #[arg(long, default_value_t = paxoskv::Config::new(0, 1).max_pending_bytes)]
    max_pending_bytes: usize,
    /// Bytes of applied log entries kept in memory for peers slightly behind (older ones
    /// are dropped; a peer behind them gets a snapshot).
    #[arg(long, default_value_t = paxoskv::Config::new(0, 1).max_log_tail_bytes)]
    max_log_tail_bytes: usize,
    /// Bytes of log entries above the chosen prefix (the pipeline) in memory.
    #[arg(long, default_value_t = paxoskv::Config::new(0, 1).max_open_bytes)]
    max_open_bytes: usize,
    /// Largest snapshot accepted from a peer (it streams to a temp file in the data
    /// directory; the free disk space is checked too).
    #[arg(long, default_value_t = paxoskv_server::snapshot_in::SnapshotReceiveLimits::default().max_bytes)]
    max_snapshot_bytes: u64,
    /// A snapshot transfer with no chunk for this long is abandoned and its file deleted.
    #[arg(long, default_value_t = 10_000)]
    snapshot_stall_ms: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics, with /healthz and /readyz
    /// (plaintext HTTP). One-process mode serves all five replicas on this one endpoint,
    /// each series labelled `replica="I"`; /readyz?replica=I asks one, bare /readyz needs
    /// all. A non-loopback ADDR needs TLS on the replica ports or --insecure.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<String>,
    /// Per-process mode: the other replicas' --metrics-addr (H:P,...), which the dashboard
    /// at http://METRICS_ADDR/ polls too, so one page shows the whole cluster.
    #[arg(
        long,
        value_name = "H:P,...",
        value_delimiter = ',',
        requires = "metrics_addr"
    )]
    dashboard_peers: Vec<String>,
    /// /readyz says ready only if the leader (for a leader: a majority) was heard from
    /// within this many milliseconds.
    #[arg(long, default_value_t = paxoskv_server::metrics::DEFAULT_READY_CONTACT_MS)]
    ready_contact_ms: u64,
    /// Log format on stderr: text for people, json (one object per line) for log shippers.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Also speak the Redis protocol (RESP2/RESP3) on port P (one-process mode: P..P+4),
    /// plaintext, on the replica's host. With --auth-token-file clients must `AUTH token`.
    #[arg(long, value_name = "P")]
    resp_port: Option<u16>,
    /// Allow the plaintext RESP port on a replica that uses TLS (its RESP clients are then
    /// neither encrypted nor authenticated by certificate).
    #[arg(long, requires = "resp_port")]
    resp_insecure: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&r) {
        Ok(r)
    } else {
        Err(format!("{r} is not a probability between 0 and 1"))
    }
}

impl Args {
    fn fail_mode(&self) -> FailMode {
        if !self.fail && self.fail_rate.is_none() && self.fail_mode.is_none() {
            return FailMode::Off;
        }
        let rate = self.fail_rate.unwrap_or(0.25);
        match self.fail_mode.unwrap_or(FailKind::Drop) {
            FailKind::Drop => FailMode::Drop { rate },
            FailKind::Down => FailMode::Down {
                rate,
                min_ms: self.down_min_ms,
                max_ms: self.down_max_ms,
            },
        }
    }

    /// (every replica's address, the ids this process runs).
    fn layout(&self) -> Result<(Vec<SocketAddr>, Vec<u32>)> {
        if let Some(id) = self.replica {
            let addrs = self
                .peers
                .iter()
                .map(|p| resolve(p))
                .collect::<Result<Vec<_>>>()?;
            if id as usize >= addrs.len() {
                bail!(
                    "--replica {id} is not an index into the {} --peers",
                    addrs.len()
                );
            }
            return Ok((addrs, vec![id]));
        }
        if self.port.checked_add(LOCAL_REPLICAS - 1).is_none() {
            bail!(
                "port {} leaves no room for {LOCAL_REPLICAS} replicas",
                self.port
            );
        }
        let addrs = (0..LOCAL_REPLICAS)
            .map(|i| resolve(&format!("{}:{}", self.host, self.port + i)))
            .collect::<Result<Vec<_>>>()?;
        Ok((addrs, (0..LOCAL_REPLICAS as u32).collect()))
    }

    /// Connection limits from the flags, checked, with the cap cut to fit `fd_limit`
    /// shared by `replicas` replicas of this process.
    fn connection_limits(&self, fd_limit: u64, replicas: usize) -> Result<ConnectionLimits> {
        let mut limits = ConnectionLimits {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            max_requests_per_connection: self.max_requests_per_connection,
            frame_budget_bytes: self.frame_budget_bytes,
            ..ConnectionLimits::default()
        };
        limits.set_frame_timeouts(
            self.frame_timeout_ms,
            self.min_frame_rate_bytes_per_s,
            self.idle_timeout_ms,
        );
        if let Err(e) = limits.check() {
            bail!("bad connection limits: {e}");
        }
        let cap = limits.fit_fd_limit(fd_limit, replicas);
        if cap < self.max_connections {
            tracing::info!(
                requested = self.max_connections,
                cap,
                fd_limit,
                "--max-connections cut to fit the open-file limit"
            );
        }
        Ok(limits)
    }
}

/// The TLS files of replica `id`, if TLS is configured.
fn tls_files(args: &Args, id: u32) -> Option<ServerTlsFiles> {
    let with_id = |template: &str| PathBuf::from(template.replace("{id}", &id.to_string()));
    if let Some(dir) = &args.tls_dir {
        return Some(ServerTlsFiles {
            cert: dir.join(format!("replica-{id}.pem")),
            key: dir.join(format!("replica-{id}-key.pem")),
            peer_ca: dir.join("ca.pem"),
            client_ca: Some(args.client_ca.clone().unwrap_or_else(|| dir.join("ca.pem"))),
        });
    }
    Some(ServerTlsFiles {
        cert: with_id(args.cert.as_deref()?),
        key: with_id(args.key.as_deref()?),
        peer_ca: args.peer_ca.clone()?,
        client_ca: args.client_ca.clone(),
    })
}

/// Loads replica `id`'s certificates and token: its connection policy and its peer dialer.
fn security(args: &Args, id: u32, replicas: u32) -> Result<(ServerSecurity, Dialer)> {
    if args.client_ca.is_some() && args.cert.is_none() && args.tls_dir.is_none() {
        bail!("--client-ca needs TLS: give --cert/--key/--peer-ca or --tls-dir as well");
    }
    let token: Option<Arc<[u8]>> = match &args.auth_token_file {
        Some(path) => Some(Arc::from(paxoskv_service::tls::load_token(path)?)),
        None => None,
    };
    let Some(files) = tls_files(args, id) else {
        // Plaintext: followers forward writes over the client service, which then wants the
        // token too (with TLS the replica certificate is enough).
        let dialer = match &token {
            Some(t) => Dialer::plain().with_token(t.to_vec()),
            None => Dialer::plain(),
        };
        return Ok((ServerSecurity { tls: None, token }, dialer));
    };
    let tls =
        ServerTls::load(&files, replicas).with_context(|| format!("replica {id}: TLS set-up"))?;
    let dialer = Dialer::tls(&ClientTlsFiles {
        ca: files.peer_ca.clone(),
        cert_and_key: Some((files.cert.clone(), files.key.clone())),
    })
    .with_context(|| format!("replica {id}: TLS set-up for dialling peers"))?;
    let security = ServerSecurity {
        tls: Some(Arc::new(tls)),
        token,
    };
    Ok((security, dialer))
}

/// Where replica `id` listens: --listen in per-process mode, else its address in the list.
fn bind_addr(args: &Args, id: u32, addrs: &[SocketAddr]) -> Result<SocketAddr> {
    match &args.listen {
        Some(listen) => resolve(listen),
        None => Ok(addrs[id as usize]),
    }
}

/// Protected mode: plaintext only on loopback unless --insecure says otherwise.
fn check_protected(args: &Args, id: u32, bind: SocketAddr, tls: bool) -> Result<()> {
    if tls || args.insecure || bind.ip().is_loopback() {
        return Ok(());
    }
    bail!(
        "replica {id} would listen on {bind} without TLS: anyone who can reach that address \
         could read and rewrite the data. Use TLS (`paxoskv-server gen-certs --dir DIR --hosts \
         ...`, then --tls-dir DIR), listen on loopback, or give --insecure to accept the risk"
    )
}

/// Binds replica `id`'s RESP port, if asked for, on the host of its replica address
/// `replica_addr`. RESP is plaintext: on a TLS replica it needs --resp-insecure, elsewhere
/// the protected-mode rule of the replica ports.
async fn bind_resp(
    args: &Args,
    id: u32,
    replicas_here: usize,
    replica_addr: SocketAddr,
    security: &ServerSecurity,
) -> Result<Option<TcpListener>> {
    let Some(first) = args.resp_port else {
        return Ok(None);
    };
    if security.tls.is_some() && !args.resp_insecure {
        bail!(
            "replica {id} uses TLS but the RESP port would be plaintext (RESP has no TLS here): \
             give --resp-insecure to accept that, or leave out --resp-port"
        );
    }
    let offset = if replicas_here > 1 { id as u16 } else { 0 };
    let Some(port) = first.checked_add(offset) else {
        bail!("--resp-port {first} leaves no room for replica {id}");
    };
    let addr = SocketAddr::new(replica_addr.ip(), port);
    check_protected(args, id, addr, security.tls.is_some())?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("replica {id} cannot listen for RESP on {addr}"))?;
    Ok(Some(listener))
}

/// Opens replica state: durable under --data-dir, or throwaway with --in-memory.
fn open_state(args: &Args, options: &ReplicaOptions) -> Result<(Replica, Box<dyn ReplicaStore>)> {
    let cfg = options.core_config();
    if args.in_memory {
        return Ok((Replica::new(cfg), Box::new(MemoryStore)));
    }
    let dir = args.data_dir.join(format!("replica-{}", options.id));
    open_disk_replica(&dir, cfg, FaultInjector::new()).map_err(without_repeated_dir)
}

/// Storage errors already name the directory; the `replica directory DIR:` prefix of
/// [`OpenError`] would say it twice.
fn without_repeated_dir(error: OpenError) -> anyhow::Error {
    match error {
        OpenError::Store {
            source: StoreError::Storage(e),
            ..
        } => e.into(),
        other => other.into(),
    }
}

fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("cannot resolve {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to nothing"))
}

/// `RUST_LOG` as given (default `info`); tarpc's own per-request error logs (every dropped
/// or timed-out peer call) stay off unless `RUST_LOG` names tarpc explicitly.
fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    let mut spec = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    if !spec.contains("tarpc") {
        spec.push_str(",tarpc=off");
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(spec))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Tool::GenCerts(gen)) = &args.tool {
        return gen_certs(gen);
    }
    init_tracing(args.log_format);
    // User errors (busy port, locked directory, bad flags) are one line, never a backtrace.
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", paxoskv_service::error_chain_text(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn gen_certs(args: &GenCertsArgs) -> ExitCode {
    match paxoskv_server::certs::generate(args) {
        Ok(files) => {
            for file in files {
                println!("wrote {}", file.display());
            }
            let dir = args.dir.display();
            println!(
                "servers: paxoskv-server --tls-dir {dir} ...\nclients: paxoskv --cacert {dir}/ca.pem \
                 --cert {dir}/client.pem --key {dir}/client-key.pem ..."
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", paxoskv_service::error_chain_text(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if args.threads > 1 {
            builder.worker_threads(args.threads);
        }
        builder.enable_all().build()
    }
    .context("cannot start the async runtime")?;
    let result = runtime.block_on(serve(args));
    // Dropping a runtime waits for every blocking task (a long fsync or snapshot write);
    // a stopping server must not hang on one: what was not synced was not acknowledged.
    runtime.shutdown_timeout(std::time::Duration::from_millis(SHUTDOWN_BLOCKING_WAIT_MS));
    result
}

/// How long exit waits for blocking storage tasks still running.
const SHUTDOWN_BLOCKING_WAIT_MS: u64 = 1000;

/// Replicas bound and opened, not yet running.
type Prepared = Vec<(TcpListener, ReplicaOptions, Replica, Box<dyn ReplicaStore>)>;

/// Binds every port first, then opens every replica's state, and only then starts any: a
/// busy port or a locked directory stops start-up before anything runs or is printed.
async fn prepare(args: &Args, addrs: &[SocketAddr], ids: &[u32]) -> Result<Prepared> {
    let per_replica_files = [&args.cert, &args.key]
        .iter()
        .all(|f| f.as_deref().is_none_or(|f| f.contains("{id}")));
    if ids.len() > 1 && !per_replica_files {
        bail!(
            "one-process mode runs {} replicas, each needing its own certificate: write {{id}} \
             in --cert and --key (e.g. --cert certs/replica-{{id}}.pem), or use --tls-dir",
            ids.len()
        );
    }
    let fd_limit = limits::raise_fd_limit().context("cannot read the open-file limit")?;
    // A RESP port is a second listener per replica, with the same caps.
    let listeners_per_replica = if args.resp_port.is_some() { 2 } else { 1 };
    let connection_limits = args.connection_limits(fd_limit, ids.len() * listeners_per_replica)?;
    let mut listeners = Vec::new();
    let mut resp_listeners = Vec::new();
    let mut securities = Vec::new();
    for &id in ids {
        let (security, dialer) = security(args, id, addrs.len() as u32)?;
        let addr = bind_addr(args, id, addrs)?;
        check_protected(args, id, addr, security.tls.is_some())?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("replica {id} cannot listen on {addr}"))?;
        listeners.push(listener);
        resp_listeners.push(bind_resp(args, id, ids.len(), addr, &security).await?);
        securities.push((security, dialer));
    }
    let created = DirCleanup::new(args, ids);
    let mut prepared = Vec::new();
    for (((&id, listener), (security, dialer)), resp) in ids
        .iter()
        .zip(listeners)
        .zip(securities)
        .zip(resp_listeners)
    {
        let mut options = replica_options(args, id, addrs);
        options.resp = resp.map(|listener| {
            let idle = std::time::Duration::from_millis(args.idle_timeout_ms);
            let mut resp_options =
                paxoskv_server::resp::RespOptions::new(security.token.clone(), idle);
            resp_options.request_timeout = std::time::Duration::from_millis(args.frame_timeout_ms);
            resp_options.min_request_rate_bytes_per_s = args.min_frame_rate_bytes_per_s;
            (listener, resp_options)
        });
        options.validate().map_err(anyhow::Error::msg)?;
        options.security = security;
        options.peer_dialer = dialer;
        options.limits = connection_limits.clone();
        let (core, store) = open_state(args, &options)?;
        prepared.push((listener, options, core, store));
    }
    created.keep();
    Ok(prepared)
}

fn replica_options(args: &Args, id: u32, addrs: &[SocketAddr]) -> ReplicaOptions {
    let mut options = ReplicaOptions::new(id, addrs.to_vec());
    options.fail_mode = args.fail_mode();
    options.tick_ms = args.tick_ms;
    options.max_value_bytes = args.max_value_bytes;
    options.fault_control = args.enable_fault_control;
    options.snapshot_policy.every_slots = args.snapshot_every_slots;
    options.snapshot_policy.log_bytes = args.snapshot_log_bytes;
    options.max_inflight_bytes = args.max_inflight_bytes;
    options.watch_history_events = args.watch_history_events;
    options.watch_history_bytes = args.watch_history_bytes;
    options.max_peer_inflight_bytes = args.max_peer_inflight_bytes;
    options.max_peer_send_bytes = args.max_peer_send_bytes;
    options.max_pending_bytes = args.max_pending_bytes;
    options.max_log_tail_bytes = args.max_log_tail_bytes;
    options.max_open_bytes = args.max_open_bytes;
    options.snapshot_receive.max_bytes = args.max_snapshot_bytes;
    options.snapshot_receive.stall = std::time::Duration::from_millis(args.snapshot_stall_ms);
    options.ready_contact_ms = args.ready_contact_ms;
    options
}

/// Removes the data directories that this start-up created if it fails half-way, so a
/// failed start leaves the disk as it found it. Directories that existed are never touched.
struct DirCleanup {
    created: Vec<PathBuf>,
    armed: bool,
}

impl DirCleanup {
    fn new(args: &Args, ids: &[u32]) -> DirCleanup {
        let mut created = Vec::new();
        if !args.in_memory {
            created.extend(
                ids.iter()
                    .map(|id| args.data_dir.join(format!("replica-{id}")))
                    .filter(|dir| !dir.exists()),
            );
            if !args.data_dir.exists() {
                created.push(args.data_dir.clone());
            }
        }
        DirCleanup {
            created,
            armed: true,
        }
    }

    fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for DirCleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for dir in &self.created {
            remove_created(dir);
        }
    }
}

fn remove_created(dir: &Path) {
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            eprintln!("warning: cannot remove {}: {e}", dir.display());
        }
    }
}

/// Binds `--metrics-addr`, keeping the protected-mode rule of the replica ports: plaintext
/// HTTP off loopback only with TLS on the replicas or --insecure (metrics carry no keys or
/// values, but do tell who leads and how busy it is).
async fn bind_metrics(args: &Args, tls: bool) -> Result<Option<TcpListener>> {
    let Some(addr) = &args.metrics_addr else {
        return Ok(None);
    };
    let addr = resolve(addr)?;
    if !(tls || args.insecure || addr.ip().is_loopback()) {
        bail!(
            "--metrics-addr {addr} is not a loopback address: give --insecure (or TLS on the \
             replica ports) to serve metrics beyond this machine"
        );
    }
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics cannot listen on {addr}"))?;
    Ok(Some(listener))
}

/// `--dashboard-peers`, checked: each must be H:P (the page turns it into a URL).
fn dashboard_config(peers: &[String]) -> Result<paxoskv_server::metrics_http::DashboardConfig> {
    use paxoskv_server::metrics_http::MAX_DASHBOARD_PEERS;
    if peers.len() > MAX_DASHBOARD_PEERS {
        bail!(
            "--dashboard-peers lists {} addresses; the limit is {MAX_DASHBOARD_PEERS}",
            peers.len()
        );
    }
    for peer in peers {
        let port = peer.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
        if !matches!(port, Some(Ok(_))) || peer.contains('/') {
            bail!("--dashboard-peers: '{peer}' is not HOST:PORT");
        }
    }
    Ok(paxoskv_server::metrics_http::DashboardConfig {
        peers: peers.to_vec(),
    })
}

async fn serve(args: Args) -> Result<()> {
    let (addrs, ids) = args.layout()?;
    let fail_mode = args.fail_mode();
    let mut prepared = prepare(&args, &addrs, &ids).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let tls = prepared.iter().all(|p| p.1.security.tls.is_some());
    if let Some(listener) = bind_metrics(&args, tls).await? {
        let metrics = Arc::new(paxoskv_server::metrics::ProcessMetrics::new(
            &ids,
            addrs.len() as u32,
        ));
        for (_, options, _, _) in &mut prepared {
            options.metrics = metrics.replica(options.id);
        }
        let shown = listener
            .local_addr()
            .context("metrics listener has no address")?;
        let dashboard = dashboard_config(&args.dashboard_peers)?;
        tokio::spawn(paxoskv_server::metrics_http::serve(
            listener,
            metrics,
            dashboard,
            stop_rx.clone(),
        ));
        println!("Metrics at http://{shown}/metrics (health: /healthz, /readyz)");
        println!("Dashboard at http://{shown}/");
    }
    let mut replicas = JoinSet::new();
    for (listener, options, core, store) in prepared {
        let (id, port) = (options.id, addrs[options.id as usize].port());
        let tls = if options.security.tls.is_some() {
            " (TLS)"
        } else {
            ""
        };
        let resp = options
            .resp
            .as_ref()
            .and_then(|(l, _)| l.local_addr().ok())
            .map(|a| format!(", RESP (Redis protocol) at port {}", a.port()))
            .unwrap_or_default();
        replicas.spawn(run_replica(listener, options, core, store, stop_rx.clone()));
        println!("Replica {id} is running at port {port}{tls}{resp}");
    }
    if args.in_memory {
        println!("In-memory mode: nothing is persisted; a restarted replica starts empty");
    }
    if fail_mode != FailMode::Off {
        println!("Failure injection: {}", fail_mode.describe());
    }
    wait_for_signal().await?;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let drain = async { while replicas.join_next().await.is_some() {} };
    if tokio::time::timeout(std::time::Duration::from_secs(3), drain)
        .await
        .is_err()
    {
        tracing::warn!("replicas did not stop within 3 s; exiting anyway");
    }
    Ok(())
}

async fn wait_for_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot listen for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_positional_port_and_the_subcommand_coexist() {
        let args = Args::try_parse_from(["paxoskv-server", "15000", "-f"]).unwrap();
        assert_eq!(
            (args.port, args.fail, args.tool.is_none()),
            (15000, true, true)
        );
        let args = Args::try_parse_from(["paxoskv-server", "gen-certs", "--dir", "d"]).unwrap();
        assert!(matches!(args.tool, Some(Tool::GenCerts(_))));
        assert!(Args::try_parse_from(["paxoskv-server", "--tls-dir", "d", "--cert", "c"]).is_err());
        assert!(Args::try_parse_from(["paxoskv-server", "--cert", "c", "--key", "k"]).is_err());
        assert!(Args::try_parse_from(["paxoskv-server", "--listen", "0.0.0.0:1"]).is_err());
    }

    #[test]
    fn dashboard_peers_must_be_host_and_port() {
        assert!(dashboard_config(&["127.0.0.1:9100".into(), "localhost:1".into()]).is_ok());
        assert!(dashboard_config(&["127.0.0.1".into()]).is_err());
        assert!(dashboard_config(&["http://x:1/".into()]).is_err());
        let many = vec!["h:1".to_string(); 65];
        assert!(dashboard_config(&many).is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}
