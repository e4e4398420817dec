//! Builds a single-replica data directory holding N keys, fast (no network), for restart
//! measurements: `cargo run --release -p paxoskv-server --example fill_replica -- DIR 1000000 100`
//! then start `paxoskv-server --replica 0 --peers 127.0.0.1:PORT --data-dir DIR/..` on it.

use paxoskv::{ClientToken, Command, CommandId, Config, Op, Replica};
use paxoskv_server::store::{DiskStore, ReplicaStore};
use std::time::Instant;

const COMMANDS_PER_ROUND: u64 = 4096;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).ok_or("usage: DIR KEYS VALUE_BYTES")?);
    let keys: u64 = args.get(2).map_or(Ok(1_000_000), |s| s.parse())?;
    let value_bytes: usize = args.get(3).map_or(Ok(100), |s| s.parse())?;
    let started = Instant::now();
    let (mut store, recovered) = DiskStore::open(&dir)?;
    let mut core = Replica::recover(Config::new(0, 1), recovered.snapshot, recovered.records)?;
    while !core.is_leader() {
        core.tick();
        step(&mut core, &mut store)?;
    }
    // Writes of an unregistered session are refused as expired (`Op::Register`).
    let register = CommandId {
        client_id: 1,
        seq: 1,
    };
    core.propose(
        ClientToken(0),
        Command {
            id: register,
            op: Op::Register,
        },
    );
    step(&mut core, &mut store)?;
    step(&mut core, &mut store)?;
    let mut seq = 0;
    while seq < keys {
        for _ in 0..COMMANDS_PER_ROUND.min(keys - seq) {
            seq += 1;
            let op = Op::Put {
                key: format!("key-{seq:012}"),
                value: vec![b'v'; value_bytes],
            };
            let id = CommandId {
                client_id: 1,
                seq: seq + 1,
            };
            core.propose(ClientToken(seq), Command { id, op });
        }
        // Twice: the second call hands out what counting our own durable acceptance chose.
        step(&mut core, &mut store)?;
        step(&mut core, &mut store)?;
    }
    let cloning = Instant::now();
    let snapshot = core.snapshot();
    let clone_us = cloning.elapsed().as_micros();
    if let Some(job) = store.begin_snapshot(&core.live_records(snapshot.through))? {
        job.write(&snapshot)?;
        store.finish_snapshot(&job);
    }
    println!(
        "{} keys of {value_bytes} bytes through slot {} in {:.1} s (taking the snapshot: {clone_us} us)",
        core.kv().len(),
        snapshot.through,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One turn of the durability contract (`src/durability.rs`): sync the batch, report it.
fn step(core: &mut Replica, store: &mut DiskStore) -> Result<(), Box<dyn std::error::Error>> {
    let ready = core.ready();
    store.persist(&ready.persist)?;
    if let Some(batch) = ready.batch {
        core.on_persisted(batch);
    }
    Ok(())
}
