//! Stored records: what raft-storage-rocks reads back from RocksDB, through
//! its record codec (`codec.rs`: a CRC-32 then a postcard body). Whatever
//! the disk holds, decoding gives a value or an error message, never a
//! panic; a value re-seals to a record that unseals to the same value.
//!
//! Input: one control byte, then the record. The control byte picks the
//! record type (each record the store reads) and whether to seal the rest
//! with a correct checksum first, so the fuzzer also reaches the decoders
//! behind the checksum.

use raft_core::{Entry, HardState, LogId};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{index_key, key_index, seal, seal_into, unseal, unseal_entry_position};
use crate::snapshot::SnapshotRecord;

/// The store's identity record (private to `store.rs`; postcard encodes
/// fields in order, so a struct with the same field types reads the same
/// bytes).
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Identity {
    format: u32,
    node_id: u64,
    cluster_id: String,
}

/// The check (see the module documentation).
pub fn check(data: &[u8]) {
    let Some((&control, record)) = data.split_first() else {
        return;
    };
    let sealed = if control & 0x80 != 0 {
        let mut sealed = crc32fast::hash(record).to_le_bytes().to_vec();
        sealed.extend_from_slice(record);
        sealed
    } else {
        record.to_vec()
    };
    match control & 0x07 {
        0 => check_entry(&sealed),
        1 => round_trip::<HardState>(&sealed),
        2 => round_trip::<LogId>(&sealed),
        3 => round_trip::<SnapshotRecord>(&sealed),
        4 => round_trip::<Identity>(&sealed),
        5 => check_key(record),
        _ => {
            check_entry(&sealed);
            check_key(record);
        }
    }
}

/// A log entry: the full decode and the header-only decode agree.
fn check_entry(sealed: &[u8]) {
    let position = unseal_entry_position(sealed);
    match unseal::<Entry>(sealed) {
        Ok(entry) => {
            assert_eq!(
                position,
                Ok((entry.term, entry.index)),
                "the header decode disagrees with the full decode"
            );
            let _ = entry.budget_size();
            round_trip_value(&entry);
        }
        Err(error) => assert!(!error.is_empty()),
    }
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(sealed: &[u8]) {
    match unseal::<T>(sealed) {
        Ok(value) => round_trip_value(&value),
        Err(error) => assert!(!error.is_empty()),
    }
}

fn round_trip_value<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) {
    let resealed = seal(value).expect("a decoded record re-encodes");
    let mut appended = b"prefix".to_vec();
    seal_into(value, &mut appended).expect("a decoded record re-encodes");
    assert_eq!(&appended[6..], &resealed[..], "seal_into and seal differ");
    let again: T = unseal(&resealed).expect("a re-sealed record unseals");
    assert_eq!(&again, value, "unseal → seal → unseal changed the record");
}

/// An entry key: eight big-endian bytes, nothing else.
fn check_key(key: &[u8]) {
    match key_index(key) {
        Ok(index) => {
            assert_eq!(key.len(), 8);
            assert_eq!(&index_key(index)[..], key);
        }
        Err(error) => {
            assert_ne!(key.len(), 8);
            assert!(!error.is_empty());
        }
    }
}
