//! The simulator's state machine: a handful of registers written with unique
//! values, plus a digest of everything applied, so that divergent histories
//! are caught and reads can be judged.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use bytes::{BufMut, Bytes, BytesMut};

use crate::types::{Entry, EntryPayload, Index, LogId};

/// A command: set register `key` to `value`. Values are unique per
/// simulation, so every write can be told apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetCommand {
    /// The register.
    pub key: u8,
    /// The value, unique within a simulation.
    pub value: u64,
}

impl SetCommand {
    /// Encodes the command, padded to `size` bytes (at least 9).
    pub fn encode(&self, size: usize) -> Bytes {
        let mut buf = BytesMut::with_capacity(size.max(9));
        buf.put_u8(self.key);
        buf.put_u64_le(self.value);
        buf.resize(size.max(9), 0);
        buf.freeze()
    }

    /// Decodes a command; `None` if the bytes are not one.
    pub fn decode(data: &[u8]) -> Option<Self> {
        if data.len() < 9 {
            return None;
        }
        let value = u64::from_le_bytes(data[1..9].try_into().ok()?);
        Some(Self {
            key: data[0],
            value,
        })
    }
}

/// A digest of one entry: its position and contents.
pub fn entry_digest(entry: &Entry) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    entry.term.hash(&mut h);
    entry.index.hash(&mut h);
    match &entry.payload {
        EntryPayload::Noop => 0u8.hash(&mut h),
        EntryPayload::Command(data) => {
            1u8.hash(&mut h);
            data.hash(&mut h);
        }
        EntryPayload::Membership(m) => {
            2u8.hash(&mut h);
            m.voters().hash(&mut h);
            m.learners().hash(&mut h);
        }
    }
    h.finish()
}

/// Registers plus a running digest of the applied log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegisterMachine {
    registers: BTreeMap<u8, u64>,
    applied: LogId,
    digest: u64,
}

impl RegisterMachine {
    /// Applies one committed entry.
    pub fn apply(&mut self, entry: &Entry) {
        if let EntryPayload::Command(data) = &entry.payload {
            if let Some(cmd) = SetCommand::decode(data) {
                self.registers.insert(cmd.key, cmd.value);
            }
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.digest.hash(&mut h);
        entry_digest(entry).hash(&mut h);
        self.digest = h.finish();
        self.applied = entry.log_id();
    }

    /// The last entry applied.
    pub fn applied(&self) -> LogId {
        self.applied
    }

    /// The digest of everything applied so far.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// The value of a register.
    pub fn get(&self, key: u8) -> Option<u64> {
        self.registers.get(&key).copied()
    }

    /// Serialises the state, padded with `padding` bytes so that snapshots
    /// span several chunks.
    pub fn snapshot(&self, padding: usize) -> Bytes {
        let mut buf = BytesMut::new();
        buf.put_u64_le(self.applied.term);
        buf.put_u64_le(self.applied.index);
        buf.put_u64_le(self.digest);
        buf.put_u32_le(self.registers.len() as u32);
        for (k, v) in &self.registers {
            buf.put_u8(*k);
            buf.put_u64_le(*v);
        }
        buf.put_bytes(0xAB, padding);
        buf.freeze()
    }

    /// Restores from [`RegisterMachine::snapshot`] data.
    pub fn restore(data: &[u8]) -> Option<Self> {
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?))
        };
        let term = u64_at(0)?;
        let index = u64_at(8)?;
        let digest = u64_at(16)?;
        let count = u32::from_le_bytes(data.get(24..28)?.try_into().ok()?) as usize;
        let mut registers = BTreeMap::new();
        for i in 0..count {
            let at = 28 + i * 9;
            registers.insert(*data.get(at)?, u64_at(at + 1)?);
        }
        Some(Self {
            registers,
            applied: LogId::new(term, index),
            digest,
        })
    }

    /// The applied index.
    pub fn applied_index(&self) -> Index {
        self.applied.index
    }
}
