//! A whole cluster inside one process on free loopback ports, for tests and tools. Each
//! replica still has its own listener, driver and state and talks to the others over TCP.

use crate::node::{run_replica, ReplicaOptions};
use crate::store::{MemoryStore, ReplicaStore};
use paxoskv::Replica;
use std::io;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Replicas running as tasks of this process.
pub struct LocalCluster {
    /// Every replica's address, by id.
    pub addrs: Vec<SocketAddr>,
    running: Vec<Option<Running>>,
}

impl LocalCluster {
    /// Starts `n` in-memory replicas on `127.0.0.1:0`; `configure` adjusts each one's options.
    pub async fn start(
        n: u32,
        configure: impl Fn(&mut ReplicaOptions),
    ) -> io::Result<LocalCluster> {
        let stores = (0..n).map(|_| Box::new(MemoryStore::default()) as Box<dyn ReplicaStore>);
        Self::start_with_stores(stores.collect(), configure).await
    }

    /// Starts one replica per store, in id order.
    pub async fn start_with_stores(
        stores: Vec<Box<dyn ReplicaStore>>,
        configure: impl Fn(&mut ReplicaOptions),
    ) -> io::Result<LocalCluster> {
        let mut listeners = Vec::new();
        for _ in 0..stores.len() {
            listeners.push(TcpListener::bind("127.0.0.1:0").await?);
        }
        let addrs = listeners
            .iter()
            .map(|l| l.local_addr())
            .collect::<io::Result<Vec<_>>>()?;
        let mut running = Vec::new();
        for (id, (listener, store)) in listeners.into_iter().zip(stores).enumerate() {
            let mut options = ReplicaOptions::new(id as u32, addrs.clone());
            configure(&mut options);
            let core = Replica::new(options.core_config());
            let (stop, stop_rx) = watch::channel(false);
            let task = tokio::spawn(run_replica(listener, options, core, store, stop_rx));
            running.push(Some(Running { stop, task }));
        }
        Ok(LocalCluster { addrs, running })
    }

    /// Stops replica `id` (its listener closes and its state is gone).
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
