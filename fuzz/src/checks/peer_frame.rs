//! Peer frames: a stream of length-prefixed postcard frames, read with
//! `raft_transport_quic::frame::read` and decoded as `raft_core::Message`
//! (snapshot chunks included: `MessageBody::Snapshot`).
//!
//! Input: one control byte (how many bytes each read returns, which frame
//! size limit applies), then the stream. Every outcome must be a frame or a
//! typed bad-frame error; a decoded message must survive encode → read →
//! decode unchanged.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};

use raft_core::Message;
use raft_transport_quic::frame;
use tokio::io::{AsyncRead, ReadBuf};

/// Runs a future that never waits (it reads from memory).
fn now<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a read from memory waited"),
    }
}

/// A stream in memory that hands out at most `step` bytes per read, as a
/// network stream might.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.step.min(self.data.len()).min(buf.remaining());
        let (head, rest) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

/// The check (see the module documentation).
pub fn check(data: &[u8]) {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let step = match control & 0x3f {
        0 => usize::MAX,
        n => n as usize,
    };
    let max = if control & 0x80 != 0 {
        64
    } else {
        frame::DEFAULT_MAX_FRAME_SIZE
    };
    let mut reader = Trickle { data: stream, step };
    loop {
        match now(frame::read(&mut reader, max)) {
            Ok(None) => {
                assert!(
                    reader.data.is_empty(),
                    "clean end of stream with bytes left"
                );
                break;
            }
            Ok(Some(payload)) => {
                assert!(payload.len() <= max, "a frame above the limit was accepted");
                check_payload(&payload, max);
            }
            Err(error) => {
                // Memory never fails: every error is the sender's fault.
                assert!(error.is_bad_frame(), "unexpected error kind: {error}");
                let _ = error.to_string();
                break;
            }
        }
    }
}

fn check_payload(payload: &[u8], max: usize) {
    // Raw framing round trip (client frames use it).
    let framed = frame::encode_raw(payload, max).expect("a frame that was read can be written");
    let reread = now(frame::read(&mut &framed[..], max))
        .expect("a framed payload reads back")
        .expect("a framed payload is not an end of stream");
    assert_eq!(&reread[..], payload);

    match frame::decode::<Message>(payload) {
        Ok(message) => {
            let kind = message.kind();
            let _ = (kind.is_replication(), kind.is_snapshot());
            // Postcard's canonical encoding is never longer than an accepted
            // one, so the message fits the limit it arrived under.
            let encoded = frame::encode(&message, max).expect("a decoded message re-encodes");
            let again: Message = now(frame::read_value(&mut &encoded[..], max))
                .expect("a re-encoded message decodes")
                .expect("a re-encoded message is a frame");
            assert_eq!(
                again, message,
                "decode → encode → decode changed the message"
            );
        }
        Err(error) => {
            assert!(error.is_bad_frame(), "unexpected error kind: {error}");
            let _ = error.to_string();
        }
    }
}
