//! WAL record framing: `len: u32 LE | crc32c(payload): u32 LE | payload`, and the rule that
//! tells a torn final write from corruption.
//!
//! # Torn tail or corruption?
//!
//! Records are only ever appended, and a batch is written with one `write_all` after the
//! previous batch was synced. A crash (or a failed write) part-way through therefore leaves the
//! segment as: complete valid records, then a *prefix* of the frames being written, possibly
//! followed by zeros or garbage where the file system extended the file but the data never
//! landed. It cannot leave a complete, valid record *after* a damaged one.
//!
//! So when the record at offset `o` is invalid (short header, zero or oversized length,
//! length running past the end of the file, or checksum mismatch):
//!
//! * in a segment that is **not the last** one it is corruption: segments are synced before
//!   the next one is created, so they never have torn tails;
//! * in the **last** segment it is a torn tail if and only if **no valid frame starts anywhere
//!   after `o`** (a valid frame = non-zero length <= [`MAX_RECORD_BYTES`], fits in the file,
//!   payload decodes as a record, checksum matches). The tail from `o` on is then truncated
//!   away. If some valid frame does
//!   start after `o`, the damage is in the middle of the log and it is corruption.
//!
//! This covers the cases that a simpler "declared end beyond EOF means torn" rule gets wrong:
//! a bit flip in the length field of an early record can make it claim to run past the end of
//! the file, yet the records behind it are intact, and that must not be silently cut off.
//! A zero-filled tail has no valid frame (a zero length is never valid, because empty payloads
//! are refused on append), so it is torn. A bit flip inside the final record is
//! indistinguishable from a torn write of it, and is treated as torn.
//!
//! A frame whose checksum is valid but whose payload does not decode is always corruption (it
//! was written completely; it means a format mismatch, not a crash).
//!
//! The search for a later valid frame checks every byte offset; the decoding and checksum work
//! it may do is bounded by [`SCAN_BUDGET_BYTES`] (plus one record), past which the damage is
//! reported as corruption (never guessed to be torn). It only runs when a record is invalid.

use super::error::{Result, StorageError};
use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;

/// Bytes of a frame header: length then checksum, both `u32` little endian.
pub const FRAME_HEADER_BYTES: usize = 8;

/// Largest accepted record payload, in bytes. A larger append is refused with
/// [`StorageError::TooLarge`]; a larger length read from disk is treated as damage.
pub const MAX_RECORD_BYTES: usize = 64 << 20;

/// Upper bound on the decoding and checksum work spent proving that a damaged final record is a torn
/// write. Beyond it the damage is reported as corruption.
pub const SCAN_BUDGET_BYTES: u64 = 256 << 20;

/// The bincode 1.3 configuration of WAL payloads.
fn codec() -> impl Options {
    bincode::DefaultOptions::new()
        .with_little_endian()
        .with_varint_encoding()
        .reject_trailing_bytes()
        .with_limit(MAX_RECORD_BYTES as u64)
}

/// Appends one frame per record to `buf`. On error `buf` may hold partial frames; the caller
/// discards it.
pub(crate) fn encode_frames<R: Serialize>(records: &[R], buf: &mut Vec<u8>) -> Result<()> {
    for record in records {
        let start = buf.len();
        buf.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
        // No limit while encoding (a limit makes bincode size the value in a second pass);
        // the record is already in memory, so the encoded copy is bounded by its size.
        bincode::DefaultOptions::new()
            .with_little_endian()
            .with_varint_encoding()
            .serialize_into(&mut *buf, record)
            .map_err(|e| StorageError::Encode {
                what: "WAL record",
                reason: e.to_string(),
            })?;
        let payload = &buf[start + FRAME_HEADER_BYTES..];
        if payload.len() > MAX_RECORD_BYTES {
            return Err(StorageError::TooLarge {
                size_bytes: payload.len() as u64,
                max_bytes: MAX_RECORD_BYTES as u64,
            });
        }
        if payload.is_empty() {
            return Err(StorageError::Encode {
                what: "WAL record",
                reason: "the record encodes to zero bytes; WAL records must not be empty".into(),
            });
        }
        let len = u32::try_from(payload.len()).expect("bounded by MAX_RECORD_BYTES");
        let crc = crc32c::crc32c(payload);
        buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }
    Ok(())
}

/// What replaying one segment found.
#[derive(Debug)]
pub(crate) struct ParsedSegment<R> {
    /// The records, in order.
    pub records: Vec<R>,
    /// Length of the valid prefix (== file length unless torn).
    pub valid_len: u64,
    /// Why the tail from `valid_len` on is torn, if it is.
    pub torn_reason: Option<String>,
}

/// Result of checking the frame at one offset.
enum Frame {
    /// Checksum-valid frame; payload is `bytes[start..end]`.
    Valid { start: usize, end: usize },
    /// Not a valid frame, with the reason.
    Invalid(String),
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

/// Checks the frame starting at `off` (`off < bytes.len()`).
fn check_frame(bytes: &[u8], off: usize) -> Frame {
    let remaining = bytes.len() - off;
    if remaining < FRAME_HEADER_BYTES {
        return Frame::Invalid(format!(
            "incomplete record header ({remaining} of {FRAME_HEADER_BYTES} bytes)"
        ));
    }
    let len = read_u32(bytes, off) as usize;
    let crc = read_u32(bytes, off + 4);
    if len == 0 {
        return Frame::Invalid("record length is zero".into());
    }
    if len > MAX_RECORD_BYTES {
        return Frame::Invalid(format!(
            "record length {len} exceeds the limit of {MAX_RECORD_BYTES} bytes"
        ));
    }
    let start = off + FRAME_HEADER_BYTES;
    if len > bytes.len() - start {
        return Frame::Invalid(format!(
            "record of {len} bytes runs past the end of the file ({} bytes left)",
            bytes.len() - start
        ));
    }
    let end = start + len;
    let actual = crc32c::crc32c(&bytes[start..end]);
    if actual != crc {
        return Frame::Invalid(format!(
            "checksum mismatch (stored {crc:#010x}, computed {actual:#010x})"
        ));
    }
    Frame::Valid { start, end }
}

/// Outcome of looking for a valid frame after a damaged one.
enum Scan {
    Found(usize),
    None,
    BudgetExceeded,
}

/// Looks for any offset after `damaged` where a valid frame starts: plausible length, payload
/// decodes as `R`, checksum matches. Decoding is tried before the checksum because it rejects
/// almost every false candidate after a few bytes, whereas a checksum always costs the whole
/// claimed length. Bytes decoded plus bytes checksummed are charged to [`SCAN_BUDGET_BYTES`].
fn find_valid_frame_after<R: DeserializeOwned>(bytes: &[u8], damaged: usize) -> Scan {
    let mut spent = 0u64;
    let last_start = match bytes.len().checked_sub(FRAME_HEADER_BYTES + 1) {
        Some(last) => last,
        None => return Scan::None,
    };
    for candidate in damaged + 1..=last_start {
        if spent > SCAN_BUDGET_BYTES {
            return Scan::BudgetExceeded;
        }
        let len = read_u32(bytes, candidate) as usize;
        let start = candidate + FRAME_HEADER_BYTES;
        if len == 0 || len > MAX_RECORD_BYTES || len > bytes.len() - start {
            continue;
        }
        let mut reader = CountingReader {
            rest: &bytes[start..start + len],
            consumed: 0,
        };
        let decoded = codec().deserialize_from::<_, R>(&mut reader);
        spent += reader.consumed as u64;
        if decoded.is_err() || reader.consumed != len {
            continue;
        }
        spent += len as u64;
        if crc32c::crc32c(&bytes[start..start + len]) == read_u32(bytes, candidate + 4) {
            return Scan::Found(candidate);
        }
    }
    Scan::None
}

/// Reads a slice and counts the bytes handed out.
struct CountingReader<'a> {
    rest: &'a [u8],
    consumed: usize,
}

impl std::io::Read for CountingReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.rest.read(out)?;
        self.consumed += n;
        Ok(n)
    }
}

/// Decodes every record of one segment's bytes, applying the torn-tail rule (module docs).
pub(crate) fn parse_segment<R: DeserializeOwned>(
    bytes: &[u8],
    path: &Path,
    is_last: bool,
) -> Result<ParsedSegment<R>> {
    let mut records = Vec::new();
    let mut off = 0usize;
    while off < bytes.len() {
        match check_frame(bytes, off) {
            Frame::Valid { start, end } => {
                let record = codec().deserialize::<R>(&bytes[start..end]).map_err(|e| {
                    StorageError::corrupt(
                        path,
                        off as u64,
                        format!("record has a valid checksum but does not decode ({e}); was it written by an incompatible version?"),
                    )
                })?;
                records.push(record);
                off = end;
            }
            Frame::Invalid(reason) => {
                if !is_last {
                    return Err(StorageError::corrupt(
                        path,
                        off as u64,
                        format!("{reason}, in a segment that is not the last one"),
                    ));
                }
                return match find_valid_frame_after::<R>(bytes, off) {
                    Scan::None => Ok(ParsedSegment {
                        records,
                        valid_len: off as u64,
                        torn_reason: Some(reason),
                    }),
                    Scan::Found(next) => Err(StorageError::corrupt(
                        path,
                        off as u64,
                        format!("{reason}, but a valid record follows at offset {next}, so this is not a torn final write"),
                    )),
                    Scan::BudgetExceeded => Err(StorageError::corrupt(
                        path,
                        off as u64,
                        format!("{reason}; could not prove within the scan budget that the rest of the file is a torn final write"),
                    )),
                };
            }
        }
    }
    Ok(ParsedSegment {
        records,
        valid_len: off as u64,
        torn_reason: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn frames(records: &[String]) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_frames(records, &mut buf).expect("encode");
        buf
    }

    fn sample() -> Vec<String> {
        (0..6).map(|i| format!("record number {i}")).collect()
    }

    #[test]
    fn round_trip_and_offsets() {
        let records = sample();
        let bytes = frames(&records);
        let parsed = parse_segment::<String>(&bytes, &PathBuf::from("x"), true).expect("parse");
        assert_eq!(parsed.records, records);
        assert_eq!(parsed.valid_len, bytes.len() as u64);
        assert!(parsed.torn_reason.is_none());
    }

    #[test]
    fn empty_and_oversized_records_are_refused() {
        let mut buf = Vec::new();
        let err = encode_frames(&[()], &mut buf).unwrap_err();
        assert!(matches!(err, StorageError::Encode { .. }), "{err:?}");
        let big = vec![7u8; MAX_RECORD_BYTES + 1];
        let mut buf = Vec::new();
        let err = encode_frames(&[big], &mut buf).unwrap_err();
        assert!(matches!(err, StorageError::TooLarge { .. }), "{err:?}");
    }

    #[test]
    fn valid_checksum_but_undecodable_is_corrupt_even_at_the_end() {
        let mut bytes = frames(&sample());
        // A frame holding a lone 0xff byte: checksum fine, not a valid varint-prefixed String.
        let payload = [0xffu8];
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let err = parse_segment::<String>(&bytes, &PathBuf::from("x"), true).unwrap_err();
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
    }

    #[test]
    fn huge_length_in_the_middle_is_corrupt_not_torn() {
        let records = sample();
        let mut bytes = frames(&records);
        // First record claims to run far past the end of the file.
        bytes[2] = 0x10;
        match parse_segment::<String>(&bytes, &PathBuf::from("seg"), true) {
            Err(StorageError::Corrupt { offset, .. }) => assert_eq!(offset, 0),
            other => panic!("expected Corrupt at 0, got {other:?}"),
        }
    }
}
