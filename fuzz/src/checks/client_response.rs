//! Client frames, client side: a `raft_kv::protocol::Response` as a client
//! receives it. Decoding gives a response or a typed `KvError`; a decoded
//! response re-encodes to bytes that decode to the same bytes again.

use crate::protocol::{self, KvError, Response};

/// The check (see the module documentation).
pub fn check(data: &[u8]) {
    let response: Response = match protocol::decode(data) {
        Ok(response) => response,
        Err(error) => {
            assert!(matches!(error, KvError::InvalidRequest(_)), "{error:?}");
            return;
        }
    };
    if let Response::Error(error) = &response {
        let _ = error.to_string();
    }
    let encoded = protocol::encode(&response);
    assert!(!encoded.is_empty(), "a decoded response re-encodes");
    let again: Response = protocol::decode(&encoded).expect("a re-encoded response decodes");
    assert_eq!(protocol::encode(&again), encoded, "encoding is not stable");
}
