//! Timing of a large snapshot: 1,000,000 keys with 100-byte values (about 100 MB).
//!
//! Run with `cargo test --release -p paxoskv-server --test storage_snapshot_bench -- --ignored --nocapture`.

use paxoskv_server::storage::{load_latest_snapshot, snapshot_path, write_snapshot};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

const KEYS: u32 = 1_000_000;
const VALUE_BYTES: usize = 100;

/// Writes then loads `map` as a snapshot; returns (file bytes, write time, load time).
fn measure<V>(map: &HashMap<String, V>) -> (u64, Duration, Duration)
where
    V: Serialize + DeserializeOwned + PartialEq,
{
    let tmp = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    write_snapshot(tmp.path(), 1_000_000, map, 7).expect("write");
    let write_time = started.elapsed();
    let bytes = std::fs::metadata(snapshot_path(tmp.path(), 1_000_000))
        .expect("stat")
        .len();
    let started = Instant::now();
    let (loaded, meta) = load_latest_snapshot::<HashMap<String, V>>(tmp.path())
        .expect("load")
        .expect("some");
    let load_time = started.elapsed();
    assert_eq!(meta.slot, 1_000_000);
    assert_eq!(meta.wal_segment_start, 7);
    assert!(loaded == *map);
    (bytes, write_time, load_time)
}

#[test]
#[ignore = "timing measurement; run in release with --ignored --nocapture"]
fn snapshot_of_a_million_100_byte_values() {
    // Values as plain `Vec<u8>`, the way the core's map holds them: serde encodes them as a
    // sequence of u8, one call per byte.
    let map: HashMap<String, Vec<u8>> = (0..KEYS)
        .map(|i| (format!("key-{i:08}"), vec![(i % 251) as u8; VALUE_BYTES]))
        .collect();
    let (bytes, write_time, load_time) = measure(&map);
    println!(
        "Vec<u8> values: {KEYS} keys, {:.1} MB: write+fsync {write_time:?}, load+verify {load_time:?}",
        bytes as f64 / 1e6
    );
    drop(map);

    // The same data with values serialized as byte strings (what `serde_bytes` does).
    let map: HashMap<String, Bytes> = (0..KEYS)
        .map(|i| {
            (
                format!("key-{i:08}"),
                Bytes(vec![(i % 251) as u8; VALUE_BYTES]),
            )
        })
        .collect();
    let (bytes, write_time, load_time) = measure(&map);
    println!(
        "byte-string values: {KEYS} keys, {:.1} MB: write+fsync {write_time:?}, load+verify {load_time:?}",
        bytes as f64 / 1e6
    );
}

/// A `Vec<u8>` that serializes as one byte string instead of a sequence of u8.
#[derive(Debug, PartialEq)]
struct Bytes(Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        deserializer.deserialize_byte_buf(Visitor)
    }
}
