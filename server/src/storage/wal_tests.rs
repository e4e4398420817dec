//! Tests of the WAL: round trips, rotation, torn tails, corruption and injected faults.

use super::*;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Rec {
    Promise(u64),
    Accept { slot: u64, value: Vec<u8> },
}

fn rec(i: u64) -> Rec {
    match i % 3 {
        0 => Rec::Promise(i),
        _ => Rec::Accept {
            slot: i,
            value: vec![i as u8; (i % 7 + 3) as usize],
        },
    }
}

fn recs(range: std::ops::Range<u64>) -> Vec<Rec> {
    range.map(rec).collect()
}

fn open(dir: &Path) -> Result<(Wal<Rec>, Vec<Rec>), StorageError> {
    Wal::open(dir, WalOptions::default())
}

fn open_from(dir: &Path, from_segment: u64) -> Result<(Wal<Rec>, Vec<Rec>), StorageError> {
    Wal::open(
        dir,
        WalOptions {
            from_segment,
            ..WalOptions::default()
        },
    )
}

/// Writes `records` one append+sync each into a fresh segment 0; returns the file bytes and
/// the start offset of every record.
fn build_log(records: &[Rec]) -> (Vec<u8>, Vec<u64>) {
    let tmp = TempDir::new().expect("tempdir");
    let (mut wal, replayed) = open(tmp.path()).expect("open");
    assert!(replayed.is_empty());
    let mut starts = Vec::new();
    for record in records {
        starts.push(wal.size_bytes());
        wal.append_and_sync(std::slice::from_ref(record))
            .expect("append");
    }
    let bytes = fs::read(segment_path(tmp.path(), 0)).expect("read");
    assert_eq!(bytes.len() as u64, wal.size_bytes());
    (bytes, starts)
}

/// A fresh directory holding `bytes` as segment 0.
fn dir_with_segment(bytes: &[u8]) -> (TempDir, PathBuf) {
    let tmp = TempDir::new().expect("tempdir");
    let path = segment_path(tmp.path(), 0);
    fs::write(&path, bytes).expect("write");
    (tmp, path)
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).expect("stat").len()
}

#[test]
fn append_sync_reopen_round_trip_across_segments() {
    let tmp = TempDir::new().expect("tempdir");
    let dir = tmp.path();
    let mut expected = Vec::new();
    {
        let (mut wal, replayed) = open(dir).expect("open");
        assert!(replayed.is_empty());
        assert_eq!(wal.segment_index(), 0);
        assert_eq!(wal.size_bytes(), 0);
        wal.append(&recs(0..5)).expect("append");
        wal.append(&recs(5..8)).expect("append");
        wal.sync().expect("sync");
        expected.extend(recs(0..8));
        for segment in 1..=3u64 {
            // Re-log a "live state" record at the start of every new segment.
            let first = vec![Rec::Promise(1000 + segment)];
            assert_eq!(wal.rotate(&first).expect("rotate"), segment);
            assert_eq!(wal.segment_index(), segment);
            expected.extend(first);
            let batch = recs(segment * 10..segment * 10 + 4);
            wal.append_and_sync(&batch).expect("append");
            expected.extend(batch);
        }
        let on_disk: u64 = (0..=3).map(|i| file_len(&segment_path(dir, i))).sum();
        assert_eq!(wal.size_bytes(), on_disk);
    }
    let (mut wal, replayed) = open(dir).expect("reopen");
    assert_eq!(replayed, expected);
    assert_eq!(wal.segment_index(), 3);
    // Appending after reopen goes to the newest segment.
    wal.append_and_sync(&[rec(99)]).expect("append");
    expected.push(rec(99));
    drop(wal);
    let (mut wal, replayed) = open(dir).expect("reopen");
    assert_eq!(replayed, expected);

    // Compaction: drop segments below 2; replay from 2 sees only those records.
    let size_before = wal.size_bytes();
    let removed: u64 = (0..2).map(|i| file_len(&segment_path(dir, i))).sum();
    wal.remove_segments_below(2).expect("remove");
    assert!(!segment_path(dir, 0).exists());
    assert!(!segment_path(dir, 1).exists());
    assert!(segment_path(dir, 2).exists());
    assert_eq!(wal.size_bytes(), size_before - removed);
    drop(wal);
    let (wal, replayed) = open_from(dir, 2).expect("reopen from 2");
    let tail_start = expected
        .iter()
        .position(|r| *r == Rec::Promise(1002))
        .expect("segment 2 start");
    assert_eq!(replayed, expected[tail_start..].to_vec());
    assert_eq!(wal.size_bytes(), size_before - removed);
    drop(wal);

    // Replaying from 0 now would silently skip records: it must be refused.
    match open(dir) {
        Err(StorageError::Corrupt { file, .. }) => assert_eq!(file, segment_path(dir, 0)),
        other => panic!("expected Corrupt for the missing segment 0, got {other:?}"),
    }
}

#[test]
fn open_from_a_later_segment_ignores_older_files_and_creates_missing_start() {
    let tmp = TempDir::new().expect("tempdir");
    let dir = tmp.path();
    let (mut wal, _) = open(dir).expect("open");
    wal.append_and_sync(&recs(0..3)).expect("append");
    drop(wal);
    // A snapshot said "start at segment 1", written before the rotation happened.
    let (mut wal, replayed) = open_from(dir, 1).expect("open from 1");
    assert!(replayed.is_empty());
    assert_eq!(wal.segment_index(), 1);
    assert!(segment_path(dir, 1).exists());
    wal.append_and_sync(&recs(3..4)).expect("append");
    wal.remove_segments_below(1).expect("remove");
    assert!(!segment_path(dir, 0).exists());
    drop(wal);
    let (_, replayed) = open_from(dir, 1).expect("reopen");
    assert_eq!(replayed, recs(3..4));
}

#[test]
fn missing_middle_segment_is_corruption() {
    let tmp = TempDir::new().expect("tempdir");
    let dir = tmp.path();
    let (mut wal, _) = open(dir).expect("open");
    wal.append_and_sync(&recs(0..2)).expect("append");
    wal.rotate(&recs(2..3)).expect("rotate");
    wal.rotate(&recs(3..4)).expect("rotate");
    drop(wal);
    fs::remove_file(segment_path(dir, 1)).expect("remove");
    match open(dir) {
        Err(StorageError::Corrupt { file, reason, .. }) => {
            assert_eq!(file, segment_path(dir, 1));
            assert!(reason.contains("missing"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn torn_tail_at_every_offset_of_the_last_record_is_truncated() {
    let records = recs(0..6);
    let (bytes, starts) = build_log(&records);
    let last_start = *starts.last().expect("records") as usize;
    assert!(bytes.len() - last_start > FRAME_HEADER_BYTES + 2);
    for cut in last_start..bytes.len() {
        let (tmp, path) = dir_with_segment(&bytes[..cut]);
        let (mut wal, replayed) = open(tmp.path()).unwrap_or_else(|e| panic!("cut {cut}: {e}"));
        assert_eq!(replayed, records[..5].to_vec(), "cut at {cut}");
        assert_eq!(
            file_len(&path),
            last_start as u64,
            "cut at {cut}: file truncated"
        );
        assert_eq!(wal.size_bytes(), last_start as u64);
        wal.append_and_sync(&[rec(42)])
            .expect("append after truncation");
        drop(wal);
        let (_, replayed) = open(tmp.path()).expect("reopen");
        let mut expected = records[..5].to_vec();
        expected.push(rec(42));
        assert_eq!(
            replayed, expected,
            "cut at {cut}: append after recovery survives"
        );
    }
}

#[test]
fn torn_tail_in_the_last_of_several_segments() {
    let tmp = TempDir::new().expect("tempdir");
    let dir = tmp.path();
    let (mut wal, _) = open(dir).expect("open");
    wal.append_and_sync(&recs(0..3)).expect("append");
    wal.rotate(&recs(3..4)).expect("rotate");
    let before = wal.size_bytes();
    wal.append_and_sync(&recs(4..6)).expect("append");
    drop(wal);
    let path = segment_path(dir, 1);
    let len = file_len(&path);
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    file.set_len(len - 3).expect("cut");
    drop(file);
    let (wal, replayed) = open(dir).expect("reopen");
    assert_eq!(replayed, recs(0..5));
    assert!(wal.size_bytes() > before && wal.size_bytes() < before + len);
}

/// Which record (by index) contains byte `pos`.
fn record_at(starts: &[u64], pos: usize) -> usize {
    starts
        .iter()
        .rposition(|s| *s as usize <= pos)
        .expect("pos in log")
}

#[test]
fn flipped_byte_anywhere_is_corruption_or_exactly_a_torn_last_record() {
    let records = recs(0..6);
    let (bytes, starts) = build_log(&records);
    let last = records.len() - 1;
    let mut torn = 0;
    let mut corrupt = 0;
    for pos in 0..bytes.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut damaged = bytes.clone();
            damaged[pos] ^= mask;
            let (tmp, path) = dir_with_segment(&damaged);
            let record = record_at(&starts, pos);
            match open(tmp.path()) {
                Err(StorageError::Corrupt { file, offset, .. }) => {
                    corrupt += 1;
                    assert_eq!(file, path, "pos {pos} mask {mask:#x}");
                    assert_eq!(offset, starts[record], "pos {pos} mask {mask:#x}");
                    assert_eq!(fs::read(&path).expect("read"), damaged, "never modified");
                }
                Ok((_, replayed)) => {
                    torn += 1;
                    assert_eq!(
                        record, last,
                        "pos {pos} mask {mask:#x}: only the last record may be dropped"
                    );
                    assert_eq!(
                        replayed,
                        records[..last].to_vec(),
                        "pos {pos} mask {mask:#x}"
                    );
                    assert_eq!(file_len(&path), starts[last]);
                }
                Err(e) => panic!("pos {pos} mask {mask:#x}: unexpected {e}"),
            }
        }
    }
    let last_len = bytes.len() - starts[last] as usize;
    assert_eq!(
        torn,
        3 * last_len,
        "every flip in the last record reads as torn"
    );
    assert_eq!(corrupt, 3 * starts[last] as usize);
}

#[test]
fn flipped_byte_in_a_sealed_segment_is_always_corruption() {
    let tmp = TempDir::new().expect("tempdir");
    let dir = tmp.path();
    let (mut wal, _) = open(dir).expect("open");
    let mut starts = Vec::new();
    for i in 0..4 {
        starts.push(wal.size_bytes());
        wal.append_and_sync(&[rec(i)]).expect("append");
    }
    wal.rotate(&recs(4..5)).expect("rotate");
    wal.append_and_sync(&recs(5..7)).expect("append");
    drop(wal);
    let seg0 = segment_path(dir, 0);
    let seg1 = segment_path(dir, 1);
    let bytes0 = fs::read(&seg0).expect("read");
    let bytes1 = fs::read(&seg1).expect("read");
    for pos in 0..bytes0.len() {
        let copy = TempDir::new().expect("tempdir");
        let mut damaged = bytes0.clone();
        damaged[pos] ^= 0x40;
        fs::write(segment_path(copy.path(), 0), &damaged).expect("write");
        fs::write(segment_path(copy.path(), 1), &bytes1).expect("write");
        match open(copy.path()) {
            Err(StorageError::Corrupt { file, offset, .. }) => {
                assert_eq!(file, segment_path(copy.path(), 0));
                assert_eq!(offset, starts[record_at(&starts, pos)], "pos {pos}");
            }
            other => panic!("pos {pos}: expected Corrupt, got {other:?}"),
        }
    }
    // A truncated sealed segment is corruption too, never a torn tail.
    let copy = TempDir::new().expect("tempdir");
    fs::write(segment_path(copy.path(), 0), &bytes0[..bytes0.len() - 1]).expect("write");
    fs::write(segment_path(copy.path(), 1), &bytes1).expect("write");
    assert!(matches!(
        open(copy.path()),
        Err(StorageError::Corrupt { .. })
    ));
}

#[test]
fn corrupt_error_message_names_file_and_offset() {
    let records = recs(0..4);
    let (mut bytes, starts) = build_log(&records);
    bytes[starts[1] as usize + FRAME_HEADER_BYTES] ^= 0x10;
    let (tmp, path) = dir_with_segment(&bytes);
    let message = open(tmp.path()).unwrap_err().to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(
        message.contains(&format!("offset {}", starts[1])),
        "{message}"
    );
    assert!(message.contains("checksum mismatch"), "{message}");
}

#[test]
fn zero_filled_tail_is_torn() {
    let records = recs(0..5);
    let (bytes, starts) = build_log(&records);
    // Complete log followed by pre-allocated zeros.
    let mut padded = bytes.clone();
    padded.extend(std::iter::repeat_n(0u8, 4096));
    let (tmp, path) = dir_with_segment(&padded);
    let (_, replayed) = open(tmp.path()).expect("open");
    assert_eq!(replayed, records);
    assert_eq!(file_len(&path), bytes.len() as u64);

    // Part of the last record, then zeros where the rest never landed.
    let last = *starts.last().expect("records") as usize;
    for keep in [last, last + 3, last + FRAME_HEADER_BYTES + 1] {
        let mut partial = bytes[..keep].to_vec();
        partial.extend(std::iter::repeat_n(0u8, 512));
        let (tmp, path) = dir_with_segment(&partial);
        let (_, replayed) = open(tmp.path()).expect("open");
        assert_eq!(replayed, records[..4].to_vec(), "keep {keep}");
        assert_eq!(file_len(&path), last as u64);
    }

    // Zeros followed by a valid record are not a tail: corruption.
    let mut gap = bytes[..last].to_vec();
    gap.extend(std::iter::repeat_n(0u8, 64));
    gap.extend_from_slice(&bytes[last..]);
    let (tmp, _) = dir_with_segment(&gap);
    match open(tmp.path()) {
        Err(StorageError::Corrupt { offset, .. }) => assert_eq!(offset, last as u64),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn oversized_and_empty_records_are_refused_without_poisoning() {
    let tmp = TempDir::new().expect("tempdir");
    let (mut wal, _) = open(tmp.path()).expect("open");
    let huge = Rec::Accept {
        slot: 1,
        value: vec![0u8; MAX_RECORD_BYTES + 1],
    };
    match wal.append(&[rec(1), huge]) {
        Err(StorageError::TooLarge { max_bytes, .. }) => {
            assert_eq!(max_bytes, MAX_RECORD_BYTES as u64)
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(
        wal.size_bytes(),
        0,
        "nothing of the failed batch was written"
    );
    assert!(wal.poisoned().is_none());
    wal.append_and_sync(&[rec(2)]).expect("still usable");
    drop(wal);
    let (_, replayed) = open(tmp.path()).expect("reopen");
    assert_eq!(replayed, vec![rec(2)]);

    let unit_dir = TempDir::new().expect("tempdir");
    let (mut units, _) = Wal::<()>::open(unit_dir.path(), WalOptions::default()).expect("open");
    assert!(matches!(
        units.append(&[()]),
        Err(StorageError::Encode { .. })
    ));
}

#[test]
fn injected_sync_failure_poisons_until_reopen() {
    let tmp = TempDir::new().expect("tempdir");
    let faults = FaultInjector::new();
    let options = WalOptions {
        from_segment: 0,
        faults: faults.clone(),
    };
    let (mut wal, _) = Wal::<Rec>::open(tmp.path(), options.clone()).expect("open");
    wal.append_and_sync(&recs(0..4)).expect("append");
    faults.fail_next_sync();
    wal.append(&recs(4..6))
        .expect("append before the failing sync");
    match wal.sync() {
        Err(StorageError::Io { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::StorageFull)
        }
        other => panic!("expected Io, got {other:?}"),
    }
    assert!(wal.poisoned().is_some());
    assert!(matches!(
        wal.append(&recs(6..7)),
        Err(StorageError::Poisoned { .. })
    ));
    assert!(matches!(wal.sync(), Err(StorageError::Poisoned { .. })));
    assert!(matches!(
        wal.rotate(&[]),
        Err(StorageError::Poisoned { .. })
    ));
    // Obsolete segments can still be removed: a full disk needs that space back.
    wal.remove_segments_below(0)
        .expect("remove on a poisoned log");
    let synced_len = wal.synced_len();
    wal.cut_unsynced_tail().expect("cut");
    let on_disk = fs::metadata(wal.segment_path()).expect("stat").len();
    assert_eq!(on_disk, synced_len, "the unsynced batch is cut off");
    drop(wal);

    let (mut wal, replayed) = Wal::<Rec>::open(tmp.path(), options.clone()).expect("recover");
    // Exactly what was synced: the page cache still holds records 4..6, but a failed sync
    // says nothing about whether they reached the disk, so they must not come back.
    assert_eq!(replayed, recs(0..4));
    wal.append_and_sync(&recs(10..11))
        .expect("usable after recovery");
    drop(wal);
    let (_, replayed) = Wal::<Rec>::open(tmp.path(), options).expect("reopen");
    let mut expected = recs(0..4);
    expected.extend(recs(10..11));
    assert_eq!(replayed, expected);
}

#[test]
fn cut_after_a_failed_rotation_removes_the_half_made_segment() {
    let tmp = TempDir::new().expect("tempdir");
    let faults = FaultInjector::new();
    let options = WalOptions {
        from_segment: 0,
        faults: faults.clone(),
    };
    let (mut wal, _) = Wal::<Rec>::open(tmp.path(), options.clone()).expect("open");
    wal.append_and_sync(&recs(0..3)).expect("append");
    wal.append(&recs(3..5)).expect("append unsynced");
    // The rotation's own sync of the old segment fails: nothing is known durable past 0..3.
    faults.fail_next_sync();
    assert!(wal.rotate(&recs(7..8)).is_err());
    // Pretend a half-made next segment was left behind by the failure.
    fs::write(segment_path(tmp.path(), 1), b"half").expect("write leftover");
    wal.cut_unsynced_tail().expect("cut");
    assert!(!segment_path(tmp.path(), 1).exists(), "leftover removed");
    drop(wal);
    let (_, replayed) = Wal::<Rec>::open(tmp.path(), options).expect("recover");
    assert_eq!(replayed, recs(0..3));
}

#[test]
fn cut_on_a_healthy_log_does_nothing() {
    let tmp = TempDir::new().expect("tempdir");
    let nested = tmp.path().join("a").join("replica-0");
    let (mut wal, _) = open(&nested).expect("open creates nested directories");
    wal.append(&recs(0..2)).expect("append");
    wal.cut_unsynced_tail().expect("no-op");
    wal.sync().expect("sync");
    drop(wal);
    let (_, replayed) = open(&nested).expect("reopen");
    assert_eq!(replayed, recs(0..2));
}

#[test]
fn injected_short_write_leaves_a_torn_tail_that_recovery_truncates() {
    let first = recs(0..3);
    let batch = recs(3..6);
    let mut frame_ends = Vec::new();
    let mut encoded = Vec::new();
    for record in &batch {
        super::frame::encode_frames(std::slice::from_ref(record), &mut encoded).expect("encode");
        frame_ends.push(encoded.len());
    }
    let cuts = [
        0,
        1,
        7,
        8,
        9,
        frame_ends[0],
        frame_ends[0] + 1,
        frame_ends[1] + 5,
        frame_ends[2] - 1,
    ];
    for after in cuts {
        let tmp = TempDir::new().expect("tempdir");
        let faults = FaultInjector::new();
        let options = WalOptions {
            from_segment: 0,
            faults: faults.clone(),
        };
        let (mut wal, _) = Wal::<Rec>::open(tmp.path(), options.clone()).expect("open");
        wal.append_and_sync(&first).expect("append");
        faults.fail_next_append_after(after);
        assert!(matches!(wal.append(&batch), Err(StorageError::Io { .. })));
        assert!(matches!(
            wal.append(&batch),
            Err(StorageError::Poisoned { .. })
        ));
        drop(wal);
        let (mut wal, replayed) = Wal::<Rec>::open(tmp.path(), options).expect("recover");
        let complete = frame_ends.iter().filter(|end| **end <= after).count();
        let mut expected = first.clone();
        expected.extend(batch[..complete].iter().cloned());
        assert_eq!(replayed, expected, "short write of {after} bytes");
        wal.append_and_sync(&recs(20..21))
            .expect("append after recovery");
        drop(wal);
        let (_, replayed) = Wal::<Rec>::open(tmp.path(), WalOptions::default()).expect("reopen");
        expected.push(rec(20));
        assert_eq!(replayed, expected);
    }
}

#[test]
fn non_wal_files_are_ignored() {
    let tmp = TempDir::new().expect("tempdir");
    fs::write(tmp.path().join("wal-1.log"), b"junk").expect("write");
    fs::write(tmp.path().join("notes.txt"), b"junk").expect("write");
    let (mut wal, replayed) = open(tmp.path()).expect("open");
    assert!(replayed.is_empty());
    wal.append_and_sync(&recs(0..2)).expect("append");
    drop(wal);
    assert_eq!(open(tmp.path()).expect("reopen").1, recs(0..2));
}

#[test]
fn torn_record_full_of_plausible_lengths_is_still_torn_and_cheap() {
    // A 1 MiB value whose every 4 bytes read as a length of 65536: thousands of offsets in the
    // torn tail look like frame headers that fit in the file.
    let value: Vec<u8> = [0u8, 0, 1, 0].repeat(256 * 1024);
    let records = vec![
        rec(1),
        Rec::Accept {
            slot: 2,
            value: value.clone(),
        },
    ];
    let mut bytes = Vec::new();
    super::frame::encode_frames(&records, &mut bytes).expect("encode");
    let cut = bytes.len() - 1000;
    let started = std::time::Instant::now();
    let parsed = super::frame::parse_segment::<Rec>(&bytes[..cut], Path::new("seg"), true)
        .expect("torn, not corrupt");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert_eq!(parsed.records, vec![rec(1)]);
    assert!(parsed.torn_reason.is_some());
}

#[test]
fn a_complete_frame_inside_a_torn_value_is_reported_as_corruption() {
    // Known conservative case: a value that itself contains a valid WAL frame. If the record
    // holding it is torn after that frame, the tail cannot be proven torn, so recovery refuses
    // rather than guess.
    let mut inner = Vec::new();
    super::frame::encode_frames(&[rec(7)], &mut inner).expect("encode");
    let mut value = vec![0xaau8; 32];
    value.extend_from_slice(&inner);
    value.extend(vec![0xbbu8; 64]);
    let mut bytes = Vec::new();
    super::frame::encode_frames(&[rec(1), Rec::Accept { slot: 2, value }], &mut bytes)
        .expect("encode");
    let cut = bytes.len() - 10;
    let err = super::frame::parse_segment::<Rec>(&bytes[..cut], Path::new("seg"), true)
        .expect_err("conservative");
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
}
