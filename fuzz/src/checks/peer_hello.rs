//! The peer hello (`raft_transport_quic::wire::PeerHello`): the first frame
//! on a peer connection, before the peer is trusted with anything else.
//! Decoding must give a hello or a typed error; a decoded hello survives
//! encode → decode, and its frame fits `MAX_HELLO_SIZE` when the input did.

use raft_transport_quic::frame;
use raft_transport_quic::wire::{MAX_HELLO_SIZE, PeerHello};

/// The check (see the module documentation).
pub fn check(data: &[u8]) {
    match frame::decode::<PeerHello>(data) {
        Ok(hello) => {
            let encoded = frame::encode(&hello, usize::MAX).expect("a decoded hello re-encodes");
            let payload = &encoded[frame::LENGTH_PREFIX..];
            assert!(payload.len() <= data.len(), "canonical encoding grew");
            if data.len() <= MAX_HELLO_SIZE {
                assert!(frame::encode(&hello, MAX_HELLO_SIZE).is_ok());
            }
            let again: PeerHello = frame::decode(payload).expect("a re-encoded hello decodes");
            assert_eq!(again, hello);
        }
        Err(error) => {
            assert!(error.is_bad_frame(), "unexpected error kind: {error}");
            let _ = error.to_string();
        }
    }
}
