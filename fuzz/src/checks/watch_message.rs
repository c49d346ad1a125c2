//! Client frames of a watch stream: `raft_kv::protocol::WatchMessage`.
//! Decoding gives a message or a typed `KvError`; a decoded message
//! survives encode → decode unchanged.

use crate::protocol::{self, KvError, WatchMessage};

/// The check (see the module documentation).
pub fn check(data: &[u8]) {
    let message: WatchMessage = match protocol::decode(data) {
        Ok(message) => message,
        Err(error) => {
            assert!(matches!(error, KvError::InvalidRequest(_)), "{error:?}");
            return;
        }
    };
    if let WatchMessage::Error(error) = &message {
        let _ = error.to_string();
    }
    let encoded = protocol::encode(&message);
    let again: WatchMessage = protocol::decode(&encoded).expect("a re-encoded message decodes");
    assert_eq!(
        again, message,
        "decode → encode → decode changed the message"
    );
}
