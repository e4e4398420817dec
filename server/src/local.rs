//! A whole cluster inside one process on free loopback ports, for tests and tools. Each
//! replica still has its own listener, driver, state and (optionally) data directory, and
//! talks to the others over TCP.

use crate::node::{open_disk_replica, run_replica, OpenError, ReplicaOptions};
use crate::storage::FaultInjector;
use crate::store::{MemoryStore, ReplicaStore};
use paxoskv::Replica;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

type Configure = Box<dyn Fn(&mut ReplicaOptions) + Send + Sync>;

/// Replicas running as tasks of this process.
pub struct LocalCluster {
    /// Every replica's address, by id.
    pub addrs: Vec<SocketAddr>,
    running: Vec<Option<Running>>,
    /// Listeners bound at start and not yet handed to a replica (no gap for another socket to
    /// take the port).
    reserved: Vec<Option<std::net::TcpListener>>,
    /// Replica directories (durable clusters only).
    dirs: Option<Vec<PathBuf>>,
    faults: Vec<FaultInjector>,
    configure: Configure,
}

impl LocalCluster {
    /// Starts `n` in-memory replicas on free loopback ports; `configure` adjusts each one's options.
    pub async fn start(
        n: u32,
        configure: impl Fn(&mut ReplicaOptions) + Send + Sync + 'static,
    ) -> io::Result<LocalCluster> {
        let mut c = Self::bind(n, None, Box::new(configure)).await?;
        for id in 0..n as usize {
            let listener = c.take_listener(id).await?;
            c.launch_memory(id, listener);
        }
        Ok(c)
    }

    /// Starts `n` durable replicas keeping their state in `base/replica-I`.
    pub async fn start_durable(
        n: u32,
        base: PathBuf,
        configure: impl Fn(&mut ReplicaOptions) + Send + Sync + 'static,
    ) -> Result<LocalCluster, OpenError> {
        let dirs = (0..n).map(|i| base.join(format!("replica-{i}"))).collect();
        let mut c = Self::bind(n, Some(dirs), Box::new(configure))
            .await
            .map_err(|e| io_open_error(&base, e))?;
        for id in 0..n as usize {
            c.restart(id).await?;
        }
        Ok(c)
    }

    async fn bind(
        n: u32,
        dirs: Option<Vec<PathBuf>>,
        configure: Configure,
    ) -> io::Result<LocalCluster> {
        let reserved = crate::ports::reserve_loopback(n as usize)?;
        let addrs = reserved
            .iter()
            .map(std::net::TcpListener::local_addr)
            .collect::<io::Result<_>>()?;
        Ok(LocalCluster {
            addrs,
            running: (0..n).map(|_| None).collect(),
            reserved: reserved.into_iter().map(Some).collect(),
            dirs,
            faults: (0..n).map(|_| FaultInjector::new()).collect(),
            configure,
        })
    }

    /// The reserved listener on first start; a restart rebinds the old address, which lies
    /// outside the ephemeral range so no outgoing connection took it meanwhile.
    async fn take_listener(&mut self, id: usize) -> io::Result<TcpListener> {
        match self.reserved[id].take() {
            Some(l) => {
                l.set_nonblocking(true)?;
                TcpListener::from_std(l)
            }
            None => TcpListener::bind(self.addrs[id]).await,
        }
    }

    fn options(&self, id: usize) -> ReplicaOptions {
        let mut options = ReplicaOptions::new(id as u32, self.addrs.clone());
        (self.configure)(&mut options);
        options
    }

    fn launch_memory(&mut self, id: usize, listener: TcpListener) {
        let options = self.options(id);
        let core = Replica::new(options.core_config());
        self.launch(id, listener, options, core, Box::new(MemoryStore));
    }

    fn launch(
        &mut self,
        id: usize,
        listener: TcpListener,
        options: ReplicaOptions,
        core: Replica,
        store: Box<dyn ReplicaStore>,
    ) {
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run_replica(listener, options, core, store, stop_rx));
        self.running[id] = Some(Running { stop, task });
    }

    /// (Re)starts a stopped durable replica from its directory, on its old address.
    pub async fn restart(&mut self, id: usize) -> Result<(), OpenError> {
        let Some(dir) = self.dirs.as_ref().map(|d| d[id].clone()) else {
            return Err(io_open_error(
                &PathBuf::new(),
                io::Error::other("in-memory replicas cannot restart"),
            ));
        };
        self.stop(id).await;
        let options = self.options(id);
        let faults = self.faults[id].clone();
        let cfg = options.core_config();
        let (core, store) = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || open_disk_replica(&dir, cfg, faults)
        })
        .await
        .map_err(|e| io_open_error(&dir, io::Error::other(e.to_string())))??;
        let listener = self
            .take_listener(id)
            .await
            .map_err(|e| io_open_error(&dir, e))?;
        self.launch(id, listener, options, core, store);
        Ok(())
    }

    /// Storage fault switches of replica `id` (durable clusters).
    pub fn faults(&self, id: usize) -> &FaultInjector {
        &self.faults[id]
    }

    /// Stops replica `id` (its listener closes; a durable replica keeps its directory).
    pub async fn stop(&mut self, id: usize) {
        if let Some(r) = self.running.get_mut(id).and_then(Option::take) {
            let _ = r.stop.send(true);
            let _ = r.task.await;
        }
    }

    /// Stops every replica.
    pub async fn shutdown(mut self) {
        for id in 0..self.running.len() {
            self.stop(id).await;
        }
    }
}

fn io_open_error(dir: &std::path::Path, e: io::Error) -> OpenError {
    OpenError::Store {
        dir: dir.to_path_buf(),
        source: crate::store::StoreError::Other(e.to_string()),
    }
}
