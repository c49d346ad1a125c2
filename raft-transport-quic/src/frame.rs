//! The wire framing every stream uses: a 4-byte big-endian length, then that
//! many bytes of [postcard](https://docs.rs/postcard). Peers exchange
//! postcard-encoded [`raft_core::Message`]s (and one hello each); clients
//! exchange frames whose payload is whatever bytes the application chose.
//!
//! A frame longer than the configured maximum is refused *before* anything is
//! allocated for it, so a hostile length prefix cannot exhaust memory. A
//! stream that ends in the middle of a frame, a payload postcard cannot
//! decode, or trailing bytes after the value, are errors: the caller closes
//! that stream and logs; nothing panics.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The default maximum frame size: 16 MiB. It must exceed raft-core's
/// snapshot chunk size (1 MiB by default) and its AppendEntries byte budget,
/// with room for the message header.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16 << 20;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX: usize = 4;

/// Why a frame could not be read, decoded or encoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than the maximum frame size.
    #[error(
        "frame of {len} bytes exceeds the maximum of {max} bytes; if the sender is legitimate, \
         raise max_frame_size on both ends"
    )]
    TooLarge {
        /// The announced (or, when encoding, the actual) payload length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error(
        "stream ended after {received} of {expected} bytes of a frame; the sender crashed or \
         sent a truncated frame"
    )]
    Truncated {
        /// Bytes of the frame (prefix included) that arrived.
        received: usize,
        /// Bytes the frame should have had.
        expected: usize,
    },
    /// The payload is not a valid postcard encoding of the expected type.
    #[error(
        "frame payload could not be decoded ({0}); the sender speaks another protocol version \
         or sent garbage"
    )]
    Malformed(postcard::Error),
    /// The payload decoded but bytes were left over.
    #[error(
        "frame payload has {0} bytes after the value; the sender speaks another protocol version"
    )]
    TrailingBytes(usize),
    /// A value could not be encoded.
    #[error("could not encode a frame: {0}")]
    Encode(postcard::Error),
    /// Reading from the stream failed (connection lost, stream reset, ...).
    #[error("reading a frame failed: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// Whether the error is the peer's fault (a bad frame) rather than a lost
    /// connection or a local problem: bad frames are logged as warnings and
    /// close the stream with an error code.
    pub fn is_bad_frame(&self) -> bool {
        matches!(
            self,
            FrameError::TooLarge { .. }
                | FrameError::Truncated { .. }
                | FrameError::Malformed(_)
                | FrameError::TrailingBytes(_)
        )
    }
}

/// Encodes `value` as one frame (length prefix included), refusing payloads
/// larger than `max_frame_size`.
pub fn encode<T: Serialize + ?Sized>(
    value: &T,
    max_frame_size: usize,
) -> Result<Bytes, FrameError> {
    let mut buf = BytesMut::new();
    encode_into(value, max_frame_size, &mut buf)?;
    Ok(buf.freeze())
}

/// Appends one frame holding `value` to `buf`. On error `buf` is unchanged.
pub fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    max_frame_size: usize,
    buf: &mut BytesMut,
) -> Result<(), FrameError> {
    let start = buf.len();
    buf.put_u32(0);
    if let Err(error) = postcard::to_io(value, (&mut *buf).writer()) {
        buf.truncate(start);
        return Err(FrameError::Encode(error));
    }
    let len = buf.len() - start - LENGTH_PREFIX;
    if len > max_frame_size || u32::try_from(len).is_err() {
        buf.truncate(start);
        return Err(FrameError::TooLarge {
            len,
            max: max_frame_size,
        });
    }
    // `len` fits in a u32 (checked above).
    buf[start..start + LENGTH_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Wraps raw `payload` bytes in one frame (for client payloads, which the
/// application encodes itself).
pub fn encode_raw(payload: &[u8], max_frame_size: usize) -> Result<Bytes, FrameError> {
    let len = payload.len();
    if len > max_frame_size || u32::try_from(len).is_err() {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame_size,
        });
    }
    let mut buf = BytesMut::with_capacity(LENGTH_PREFIX + len);
    buf.put_u32(len as u32);
    buf.put_slice(payload);
    Ok(buf.freeze())
}

/// Decodes one frame's payload (without the prefix) as a `T`. The whole
/// payload must be consumed.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let (value, rest) = postcard::take_from_bytes(payload).map_err(FrameError::Malformed)?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

/// Reads the next frame's payload from `reader`. Returns `Ok(None)` when the
/// stream ends cleanly between frames.
///
/// Memory grows with the bytes that actually arrive, never with the
/// announced length alone.
pub async fn read<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_frame_size: usize,
) -> Result<Option<Bytes>, FrameError> {
    match read_len(reader, max_frame_size).await? {
        Some(len) => read_payload(reader, len).await.map(Some),
        None => Ok(None),
    }
}

/// Reads the next frame's length prefix, refusing lengths above
/// `max_frame_size`. `Ok(None)` when the stream ends cleanly before it.
pub(crate) async fn read_len<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_frame_size: usize,
) -> Result<Option<usize>, FrameError> {
    let mut prefix = [0u8; LENGTH_PREFIX];
    let mut have = 0;
    while have < LENGTH_PREFIX {
        let n = reader.read(&mut prefix[have..]).await?;
        if n == 0 {
            if have == 0 {
                return Ok(None);
            }
            return Err(FrameError::Truncated {
                received: have,
                expected: LENGTH_PREFIX,
            });
        }
        have += n;
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max_frame_size {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame_size,
        });
    }
    Ok(Some(len))
}

/// Reads a frame's payload of `len` bytes (its prefix already read).
pub(crate) async fn read_payload<R: AsyncRead + Unpin>(
    reader: &mut R,
    len: usize,
) -> Result<Bytes, FrameError> {
    // Start small and let the buffer grow as bytes arrive.
    let mut payload = Vec::with_capacity(len.min(64 * 1024));
    let received = reader.take(len as u64).read_to_end(&mut payload).await?;
    if received < len {
        return Err(FrameError::Truncated {
            received: LENGTH_PREFIX + received,
            expected: LENGTH_PREFIX + len,
        });
    }
    Ok(Bytes::from(payload))
}

/// Reads and decodes the next frame. `Ok(None)` at a clean end of stream.
pub async fn read_value<T: DeserializeOwned, R: AsyncRead + Unpin>(
    reader: &mut R,
    max_frame_size: usize,
) -> Result<Option<T>, FrameError> {
    match read(reader, max_frame_size).await? {
        Some(payload) => decode(&payload).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_core::{Message, MessageBody};

    fn heartbeat(round: u64) -> Message {
        Message {
            from: 1,
            to: 2,
            term: 3,
            body: MessageBody::Heartbeat(raft_core::Heartbeat { commit: 7, round }),
        }
    }

    #[tokio::test]
    async fn round_trips_messages_back_to_back() {
        let mut buf = BytesMut::new();
        for round in 0..3 {
            encode_into(&heartbeat(round), 1024, &mut buf).unwrap();
        }
        let mut reader = &buf[..];
        for round in 0..3 {
            let got: Message = read_value(&mut reader, 1024).await.unwrap().unwrap();
            assert_eq!(got, heartbeat(round));
        }
        assert!(read(&mut reader, 1024).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn refuses_oversized_prefix_without_reading_payload() {
        let mut bytes = (1u32 << 30).to_be_bytes().to_vec();
        bytes.extend_from_slice(b"tiny");
        let err = read(&mut &bytes[..], 1024).await.unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { len, max: 1024 } if len == 1 << 30),
            "{err}"
        );
        assert!(err.is_bad_frame());
    }

    #[test]
    fn refuses_to_encode_oversized_values() {
        let mut buf = BytesMut::from(&b"keep"[..]);
        let big = vec![0u8; 2048];
        let err = encode_into(&big, 1024, &mut buf).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { max: 1024, .. }));
        assert_eq!(
            &buf[..],
            b"keep",
            "a failed encode leaves the buffer as it was"
        );
        assert!(encode_raw(&big, 1024).is_err());
    }

    #[tokio::test]
    async fn truncated_frames_are_errors() {
        let frame = encode(&heartbeat(1), 1024).unwrap();
        for cut in 1..frame.len() {
            let err = read(&mut &frame[..cut], 1024).await.unwrap_err();
            assert!(
                matches!(err, FrameError::Truncated { .. }),
                "cut at {cut}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn garbage_and_trailing_bytes_are_errors() {
        let garbage = encode_raw(&[0xff; 16], 1024).unwrap();
        let err = read_value::<Message, _>(&mut &garbage[..], 1024)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)), "{err}");

        let mut payload = postcard::to_allocvec(&heartbeat(1)).unwrap();
        payload.push(0);
        let trailing = encode_raw(&payload, 1024).unwrap();
        let err = read_value::<Message, _>(&mut &trailing[..], 1024)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::TrailingBytes(1)), "{err}");
    }

    /// Hostile input never panics: random bytes, random lengths, random
    /// corruption of valid frames (a small seeded property test).
    #[tokio::test]
    async fn random_input_never_panics() {
        use rand::rngs::SmallRng;
        use rand::{RngExt, SeedableRng};
        let mut rng = SmallRng::seed_from_u64(7);
        let valid = encode(&heartbeat(9), 4096).unwrap();
        for _ in 0..2000 {
            let mut bytes: Vec<u8> = if rng.random_bool(0.5) {
                (0..rng.random_range(0..64)).map(|_| rng.random()).collect()
            } else {
                let mut v = valid.to_vec();
                let i = rng.random_range(0..v.len());
                v[i] = rng.random();
                v.truncate(rng.random_range(0..=v.len()));
                v
            };
            if rng.random_bool(0.1) {
                bytes.extend_from_slice(&valid);
            }
            let mut reader = &bytes[..];
            // Any outcome but a panic is fine; stop at the first error.
            while let Ok(Some(payload)) = read(&mut reader, 4096).await {
                let _ = decode::<Message>(&payload);
            }
        }
    }
}
