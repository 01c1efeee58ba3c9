//! Guest stdout and stderr kept in memory up to a cap. A write past the cap keeps what fits, marks
//! the stream truncated and traps the guest, so an output flood ends at once with `output_limit`
//! instead of running on until its deadline.

use bytes::{Bytes, BytesMut};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// The error a guest traps with when it writes past its output cap.
#[derive(Debug, thiserror::Error)]
#[error("output limit of {0} bytes exceeded")]
pub struct OutputLimitExceeded(pub u64);

/// A capped in-memory output stream; clones share the buffer.
#[derive(Clone)]
pub struct CappedOutput {
    state: Arc<Mutex<Captured>>,
}

struct Captured {
    cap: usize,
    bytes: BytesMut,
    truncated: bool,
}

/// The largest write the guest is told it may make; the cap is enforced in `write`.
const WRITE_BUDGET: usize = 64 << 10;

impl CappedOutput {
    /// An empty stream that keeps at most `cap` bytes.
    pub fn new(cap: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(Captured {
                cap: usize::try_from(cap).unwrap_or(usize::MAX),
                bytes: BytesMut::new(),
                truncated: false,
            })),
        }
    }

    /// Empties the stream and gives it a new cap (a session's next execution writes here).
    pub fn restart(&self, cap: u64) {
        let mut state = self.state.lock().expect("output lock");
        state.cap = usize::try_from(cap).unwrap_or(usize::MAX);
        state.bytes = BytesMut::new();
        state.truncated = false;
    }

    /// The cap, for the error a guest traps with.
    fn exceeded(&self) -> OutputLimitExceeded {
        OutputLimitExceeded(self.state.lock().expect("output lock").cap as u64)
    }

    /// What was kept, and whether more was written than kept.
    pub fn finish(&self) -> (Bytes, bool) {
        let state = self.state.lock().expect("output lock");
        (state.bytes.clone().freeze(), state.truncated)
    }

    /// Keeps what fits; `false` when something did not.
    fn append(&self, data: &[u8]) -> bool {
        let mut state = self.state.lock().expect("output lock");
        let room = state.cap - state.bytes.len();
        let kept = data.len().min(room);
        state.bytes.extend_from_slice(&data[..kept]);
        if kept < data.len() {
            state.truncated = true;
        }
        kept == data.len()
    }
}

impl IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CappedOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        if self.append(&bytes) {
            Ok(())
        } else {
            Err(StreamError::Trap(self.exceeded().into()))
        }
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(WRITE_BUDGET)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for CappedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.append(buf) {
            Poll::Ready(Ok(buf.len()))
        } else {
            Poll::Ready(Err(io::Error::other(self.exceeded())))
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_up_to_the_cap_then_traps_and_reports_truncation() {
        let mut output = CappedOutput::new(5);
        assert!(output.write(Bytes::from_static(b"abc")).is_ok());
        assert!(matches!(
            output.write(Bytes::from_static(b"defg")),
            Err(StreamError::Trap(_))
        ));
        assert_eq!(output.finish(), (Bytes::from_static(b"abcde"), true));
        output.restart(2);
        assert!(output.write(Bytes::from_static(b"xy")).is_ok());
        assert_eq!(output.finish(), (Bytes::from_static(b"xy"), false));
    }
}
