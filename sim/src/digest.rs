//! A tiny stable hash of everything that happens in a run, so two runs of one seed can be
//! compared bit for bit. Hand-written (FNV-1a over 64-bit words) because `std`'s hasher makes
//! no promise of stability across releases.

use paxoskv::{Command, Op, Value};

/// Running FNV-1a style digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunDigest(u64);

impl Default for RunDigest {
    fn default() -> Self {
        RunDigest(0xcbf2_9ce4_8422_2325)
    }
}

impl RunDigest {
    /// Folds one word in.
    pub fn word(&mut self, w: u64) {
        for b in w.to_le_bytes() {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// Folds a byte string in (length first, so concatenations differ).
    pub fn bytes(&mut self, bytes: &[u8]) {
        self.word(bytes.len() as u64);
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// Folds a slot value in.
    pub fn value(&mut self, value: &Value) {
        self.word(value.commands.len() as u64);
        for c in &value.commands {
            self.command(c);
        }
    }

    fn command(&mut self, c: &Command) {
        self.word(c.id.client_id);
        self.word(c.id.seq);
        match &c.op {
            Op::Put { key, value } => {
                self.word(1);
                self.bytes(key.as_bytes());
                self.bytes(value);
            }
            Op::Delete { key } => {
                self.word(2);
                self.bytes(key.as_bytes());
            }
            Op::Register => self.word(3),
            op @ (Op::LeaseGrant { .. } | Op::LeaseRevoke { .. } | Op::LeaseExpire { .. }) => {
                self.word(5);
                self.bytes(format!("{op:?}").as_bytes());
            }
            Op::Txn(txn) => {
                // Debug output is deterministic and covers every field.
                self.word(4);
                self.bytes(format!("{txn:?}").as_bytes());
            }
        }
    }

    /// The digest so far.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// Derives an independent, reproducible seed for one stream (`salt`) of a run.
pub fn mix_seed(seed: u64, salt: u64) -> u64 {
    // splitmix64 finalizer: nearby seeds give unrelated streams.
    let mut z = seed ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
