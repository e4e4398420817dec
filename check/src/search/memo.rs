//! Remembering explored configurations compactly.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

/// A fixed-size set of small integers.
pub(super) struct Bitset {
    words: Vec<u64>,
}

impl Bitset {
    pub(super) fn new(bits: usize) -> Self {
        Self {
            words: vec![0; bits.div_ceil(64)],
        }
    }

    pub(super) fn get(&self, i: usize) -> bool {
        self.words[i / 64] >> (i % 64) & 1 == 1
    }

    pub(super) fn set(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
    }

    pub(super) fn clear(&mut self, i: usize) {
        self.words[i / 64] &= !(1 << (i % 64));
    }

    pub(super) fn words(&self) -> &[u64] {
        &self.words
    }

    /// Appends bits `start .. start + len` to `out`, packed 64 per word.
    fn extract(&self, start: usize, len: usize, out: &mut Vec<u64>) {
        let mut offset = 0;
        while offset < len {
            let bit = start + offset;
            let (w, shift) = (bit / 64, bit % 64);
            let mut word = self.words[w] >> shift;
            if shift != 0 && w + 1 < self.words.len() {
                word |= self.words[w + 1] << (64 - shift);
            }
            let take = (len - offset).min(64);
            if take < 64 {
                word &= (1 << take) - 1;
            }
            out.push(word);
            offset += 64;
        }
    }

    /// True if no bit at or after `start` is set.
    fn none_from(&self, start: usize) -> bool {
        let (w, shift) = (start / 64, start % 64);
        match self.words.get(w) {
            None => true,
            Some(first) => first >> shift == 0 && self.words[w + 1..].iter().all(|&x| x == 0),
        }
    }
}

/// Configurations already explored. A configuration is the set of done operations plus the
/// register value. The set is stored as `(first_open, bits up to end, extra)`, which is exact
/// when every operation below `first_open` not covered by `extra` is done and nothing beyond
/// `end` is; `extra` holds the operations exempt from that (the optional ones).
#[derive(Default)]
pub(super) struct Memo {
    seen: FxHashSet<Box<[u64]>>,
    scratch: Vec<u64>,
}

impl Memo {
    /// Records a configuration; false if it was already recorded.
    pub(super) fn insert(
        &mut self,
        done: &Bitset,
        first_open: usize,
        end: usize,
        state: u32,
        extra: &[u64],
    ) -> bool {
        debug_assert!(done.none_from(end + 1), "done past reach");
        self.scratch.clear();
        self.scratch
            .push((first_open as u64) << 32 | u64::from(state));
        done.extract(first_open + 1, end - first_open, &mut self.scratch);
        self.scratch.extend_from_slice(extra);
        if self.seen.contains(self.scratch.as_slice()) {
            return false;
        }
        self.seen.insert(self.scratch.clone().into_boxed_slice());
        true
    }

    /// Configurations recorded.
    pub(super) fn len(&self) -> usize {
        self.seen.len()
    }
}

/// A hash set using [`FxHasher`].
pub(super) type FxHashSet<T> = HashSet<T, BuildHasherDefault<FxHasher>>;

/// The multiply-rotate hash rustc uses (FxHash): keys here are short integer sequences an
/// adversary does not choose, so SipHash's DoS resistance would only cost time.
#[derive(Default)]
pub(super) struct FxHasher {
    hash: u64,
}

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        for &b in chunks.remainder() {
            self.add(u64::from(b));
        }
    }

    fn write_u32(&mut self, word: u32) {
        self.add(u64::from(word));
    }

    fn write_u64(&mut self, word: u64) {
        self.add(word);
    }

    fn write_usize(&mut self, word: usize) {
        self.add(word as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}
