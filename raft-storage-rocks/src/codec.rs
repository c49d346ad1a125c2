//! How records look on disk: big-endian index keys, and values sealed with a
//! CRC-32 of their postcard encoding so that a flipped bit is reported, never
//! decoded into a wrong value.
//!
//! A sealed value is `crc32(body)` (4 bytes, little-endian) followed by
//! `body`, the postcard encoding of the value. RocksDB checks its own block
//! and WAL checksums too; ours also covers bytes RocksDB hands back intact
//! but that something else (a bug, a tool) wrote wrongly.

use raft_core::{Index, Term};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The key of the log entry at `index`: big-endian, so RocksDB's byte order
/// is log order and range deletes cover index ranges.
pub(crate) fn index_key(index: Index) -> [u8; 8] {
    index.to_be_bytes()
}

/// The index an entry key names.
pub(crate) fn key_index(key: &[u8]) -> Result<Index, String> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| format!("log key of {} bytes (expected 8)", key.len()))?;
    Ok(Index::from_be_bytes(bytes))
}

/// Encodes `value` and prefixes the checksum, appending to `out`.
pub(crate) fn seal_into<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), String> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let body_start = out.len();
    let encoded = postcard::to_extend(value, std::mem::take(out))
        .map_err(|e| format!("encoding failed: {e}"))?;
    *out = encoded;
    let crc = crc32fast::hash(&out[body_start..]);
    out[start..body_start].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Encodes `value` with its checksum.
pub(crate) fn seal<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    seal_into(value, &mut out)?;
    Ok(out)
}

/// Checks the checksum and returns the body.
fn body(sealed: &[u8]) -> Result<&[u8], String> {
    if sealed.len() < 4 {
        return Err(format!(
            "record of {} bytes is too short to hold its checksum",
            sealed.len()
        ));
    }
    let (crc, body) = sealed.split_at(4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(format!(
            "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    Ok(body)
}

/// Checks the checksum and decodes the whole value; trailing bytes are an
/// error.
pub(crate) fn unseal<T: DeserializeOwned>(sealed: &[u8]) -> Result<T, String> {
    let body = body(sealed)?;
    let (value, rest) =
        postcard::take_from_bytes(body).map_err(|e| format!("undecodable record: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} stray bytes after the record", rest.len()));
    }
    Ok(value)
}

/// Checks the checksum of a sealed [`raft_core::Entry`] and decodes only its
/// term and index (postcard encodes struct fields in order, and `Entry`
/// starts with `term, index`), sparing the payload for term lookups.
pub(crate) fn unseal_entry_position(sealed: &[u8]) -> Result<(Term, Index), String> {
    let body = body(sealed)?;
    let (position, _payload) = postcard::take_from_bytes::<(Term, Index)>(body)
        .map_err(|e| format!("undecodable entry header: {e}"))?;
    Ok(position)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use raft_core::{Entry, EntryPayload};

    #[test]
    fn sealed_entry_round_trips_and_exposes_its_position() {
        let entry = Entry {
            term: 7,
            index: 300,
            payload: EntryPayload::Command(Bytes::from_static(b"hello")),
        };
        let sealed = seal(&entry).unwrap();
        assert_eq!(unseal::<Entry>(&sealed).unwrap(), entry);
        assert_eq!(unseal_entry_position(&sealed).unwrap(), (7, 300));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let entry = Entry {
            term: 2,
            index: 9,
            payload: EntryPayload::Command(Bytes::from_static(b"value")),
        };
        let sealed = seal(&entry).unwrap();
        for byte in 0..sealed.len() {
            for bit in 0..8 {
                let mut bad = sealed.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    unseal::<Entry>(&bad).is_err(),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
                assert!(unseal_entry_position(&bad).is_err());
            }
        }
        assert!(unseal::<Entry>(&sealed[..3]).is_err());
        assert!(unseal::<Entry>(&sealed[..sealed.len() - 1]).is_err());
    }

    #[test]
    fn keys_sort_in_log_order() {
        assert!(index_key(255) < index_key(256));
        assert_eq!(key_index(&index_key(u64::MAX - 1)).unwrap(), u64::MAX - 1);
        assert!(key_index(b"short").is_err());
    }
}
