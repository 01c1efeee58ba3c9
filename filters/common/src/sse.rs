//! Server-sent events as they pass through a filter: the `data:` payloads of a stream that arrives
//! in arbitrary chunks.

/// Longest event line kept; longer ones are skipped whole (no filter reads such a line, and keeping
/// it would let an upstream grow a filter's memory without bound).
pub const MAX_EVENT_LINE_BYTES: usize = 64 * 1024;

/// Splits a stream into lines across chunk boundaries and hands on each `data:` payload.
#[derive(Debug, Default)]
pub struct DataLines {
    line: Vec<u8>,
    skipping_long_line: bool,
}

impl DataLines {
    /// Reads the next bytes of the stream, calling `data` with each complete `data:` payload
    /// (trimmed of surrounding whitespace, `\r` included).
    pub fn feed(&mut self, chunk: &[u8], mut data: impl FnMut(&[u8])) {
        for &byte in chunk {
            if byte == b'\n' {
                if !self.skipping_long_line {
                    if let Some(payload) = self.line.strip_prefix(b"data:") {
                        data(payload.trim_ascii());
                    }
                }
                self.line.clear();
                self.skipping_long_line = false;
            } else if self.line.len() < MAX_EVENT_LINE_BYTES {
                self.line.push(byte);
            } else {
                self.skipping_long_line = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(chunks: &[&[u8]]) -> Vec<String> {
        let mut lines = DataLines::default();
        let mut out = Vec::new();
        for chunk in chunks {
            lines.feed(chunk, |d| out.push(String::from_utf8_lossy(d).into_owned()));
        }
        out
    }

    #[test]
    fn payloads_span_chunks_and_other_fields_are_ignored() {
        assert_eq!(
            payloads(&[
                b"data: {\"a\"",
                b": 1}\r\n\nevent: ping\nda",
                b"ta: [DONE]\n"
            ]),
            ["{\"a\": 1}", "[DONE]"]
        );
        assert!(payloads(&[b"data: unterminated"]).is_empty());
    }

    #[test]
    fn an_overlong_line_is_skipped_whole() {
        let long = vec![b'x'; MAX_EVENT_LINE_BYTES * 2];
        assert_eq!(payloads(&[b"data: ", &long, b"\ndata: next\n"]), ["next"]);
    }
}
