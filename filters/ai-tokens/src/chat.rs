//! What the filter reads from OpenAI-style chat traffic: a request's estimated cost (and the
//! `stream_options.include_usage` a streamed one may lack), and an answer's `usage`, from its JSON
//! or from the server-sent events of a stream.

use filter_common::sse::DataLines;
use serde_json::{Map, Value};

/// Characters per token when text is estimated instead of counted (OpenAI's rule of thumb for
/// English). Estimates only reserve; the reported usage settles.
const CHARS_PER_TOKEN: u64 = 4;
/// Tokens a chat format adds per message (role and separators), as OpenAI counts them.
const TOKENS_PER_MESSAGE: u64 = 4;

/// A chat completions request as the budget sees it.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The `model` named, if any.
    pub model: Option<String>,
    /// `stream: true`.
    pub stream: bool,
    /// The prompt's size in estimated tokens.
    pub prompt_tokens: u64,
    /// `max_completion_tokens`, else `max_tokens`, when the client set one.
    pub max_tokens: Option<u64>,
    body: Map<String, Value>,
}

/// Why a body is not a chat request the filter can price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// Not a JSON object.
    NotJsonObject,
}

impl ChatRequest {
    /// Reads a request body.
    pub fn parse(body: &[u8]) -> Result<Self, RequestError> {
        let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(body) else {
            return Err(RequestError::NotJsonObject);
        };
        let model = body.get("model").and_then(Value::as_str).map(str::to_owned);
        let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
        let max_tokens = ["max_completion_tokens", "max_tokens"]
            .iter()
            .find_map(|field| body.get(*field).and_then(Value::as_u64));
        let prompt_tokens = prompt_tokens(&body);
        Ok(Self {
            model,
            stream,
            prompt_tokens,
            max_tokens,
            body,
        })
    }

    /// What to reserve: the prompt and the most the answer may use.
    pub fn estimate(&self, default_max_tokens: u64) -> u64 {
        self.prompt_tokens
            .saturating_add(self.max_tokens.unwrap_or(default_max_tokens))
    }

    /// The body to send instead, if it must change: a request without a limit gets
    /// `max_completion_tokens` set to what was reserved for its answer (so the answer cannot
    /// outgrow its reservation), and a streamed one that does not ask for its usage gets
    /// `stream_options.include_usage: true` (so its last chunk reports what to settle).
    pub fn rewritten_body(&self, default_max_tokens: u64) -> Option<Vec<u8>> {
        let asks_usage = self
            .body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            == Some(true);
        let add_usage = self.stream && !asks_usage;
        let add_limit = self.max_tokens.is_none();
        if !add_usage && !add_limit {
            return None;
        }
        let mut body = self.body.clone();
        if add_limit {
            body.insert("max_completion_tokens".into(), default_max_tokens.into());
        }
        if add_usage {
            let options = body
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Map::new()));
            if !options.is_object() {
                *options = Value::Object(Map::new());
            }
            options
                .as_object_mut()
                .expect("made an object above")
                .insert("include_usage".into(), Value::Bool(true));
        }
        serde_json::to_vec(&Value::Object(body)).ok()
    }
}

/// The estimated tokens of every message's text (and a legacy `prompt`).
fn prompt_tokens(body: &Map<String, Value>) -> u64 {
    let mut chars = 0u64;
    let mut messages = 0u64;
    if let Some(list) = body.get("messages").and_then(Value::as_array) {
        for message in list {
            messages += 1;
            chars += text_chars(message.get("content"));
        }
    }
    chars += text_chars(body.get("prompt"));
    chars.div_ceil(CHARS_PER_TOKEN) + messages * TOKENS_PER_MESSAGE
}

/// Characters of a content value: a string, or a list of parts whose `text` counts.
fn text_chars(content: Option<&Value>) -> u64 {
    match content {
        Some(Value::String(text)) => text.chars().count() as u64,
        Some(Value::Array(parts)) => parts.iter().map(|part| text_chars(part.get("text"))).sum(),
        _ => 0,
    }
}

/// Tokens an answer reports it used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// `usage.prompt_tokens`.
    pub prompt_tokens: u64,
    /// `usage.completion_tokens`.
    pub completion_tokens: u64,
}

impl Usage {
    /// Both together: what is charged.
    pub fn total(self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }

    fn of(value: &Value) -> Option<Self> {
        let usage = value.get("usage")?;
        Some(Self {
            prompt_tokens: usage.get("prompt_tokens")?.as_u64()?,
            completion_tokens: usage.get("completion_tokens")?.as_u64()?,
        })
    }

    /// The `usage` of a JSON answer.
    pub fn of_answer(body: &[u8]) -> Option<Self> {
        Self::of(&serde_json::from_slice::<Value>(body).ok()?)
    }
}

/// Reads a streamed answer's server-sent events as they pass: the `usage` of its last chunk and,
/// in case none comes, how much text it carried.
#[derive(Debug, Default)]
pub struct StreamScan {
    lines: DataLines,
    usage: Option<Usage>,
    content_chars: u64,
}

impl StreamScan {
    /// Reads the next bytes of the stream (events may span chunks).
    pub fn feed(&mut self, chunk: &[u8]) {
        let Self {
            lines,
            usage,
            content_chars,
        } = self;
        lines.feed(chunk, |data| {
            let Ok(event) = serde_json::from_slice::<Value>(data) else {
                return; // `[DONE]`, or not JSON: nothing to count
            };
            if let Some(reported) = Usage::of(&event) {
                *usage = Some(reported);
            }
            if let Some(choices) = event.get("choices").and_then(Value::as_array) {
                for choice in choices {
                    let content = choice.get("delta").and_then(|d| d.get("content"));
                    *content_chars += text_chars(content);
                }
            }
        });
    }

    /// The usage the stream reported, if it did.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// The answer's estimated tokens from the text streamed so far.
    pub fn completion_estimate(&self) -> u64 {
        self.content_chars.div_ceil(CHARS_PER_TOKEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_priced_from_its_messages_and_limit() {
        let body = br#"{"model": "m", "max_tokens": 100, "messages": [
            {"role": "system", "content": "12345678"},
            {"role": "user", "content": [{"type": "text", "text": "1234"}, {"type": "image_url"}]}
        ]}"#;
        let request = ChatRequest::parse(body).unwrap();
        assert_eq!(request.model.as_deref(), Some("m"));
        assert_eq!(request.prompt_tokens, 3 + 2 * TOKENS_PER_MESSAGE);
        assert_eq!(request.estimate(4096), 11 + 100);
        let unlimited = ChatRequest::parse(br#"{"messages": []}"#).unwrap();
        assert_eq!(unlimited.estimate(4096), 4096);
        let both = ChatRequest::parse(br#"{"max_tokens": 9, "max_completion_tokens": 5}"#).unwrap();
        assert_eq!(both.max_tokens, Some(5), "the newer field wins");
    }

    #[test]
    fn hostile_bodies_are_not_requests() {
        for body in [&b"not json"[..], b"[1, 2]", b"\"text\"", b"", &[0xff, 0xfe]] {
            assert_eq!(
                ChatRequest::parse(body).unwrap_err(),
                RequestError::NotJsonObject
            );
        }
        // Wrong types are read as absent, not trusted.
        let odd =
            ChatRequest::parse(br#"{"max_tokens": -5, "stream": "yes", "messages": 7}"#).unwrap();
        assert_eq!(
            (odd.max_tokens, odd.stream, odd.prompt_tokens),
            (None, false, 0)
        );
    }

    #[test]
    fn a_request_is_made_to_cap_its_answer_and_report_its_usage() {
        let rewrite = |body: &[u8]| -> Option<Value> {
            let request = ChatRequest::parse(body).unwrap();
            Some(serde_json::from_slice(&request.rewritten_body(256)?).unwrap())
        };
        let body = rewrite(br#"{"stream": true, "messages": []}"#).unwrap();
        assert_eq!(body["stream_options"]["include_usage"], Value::Bool(true));
        assert_eq!(
            body["max_completion_tokens"], 256,
            "capped at what was reserved"
        );
        assert_eq!(body["stream"], Value::Bool(true));
        let odd = rewrite(br#"{"stream": true, "stream_options": 3, "max_tokens": 9}"#).unwrap();
        assert_eq!(odd["stream_options"]["include_usage"], Value::Bool(true));
        assert_eq!(
            (odd["max_tokens"].as_u64(), odd.get("max_completion_tokens")),
            (Some(9), None)
        );
        assert_eq!(
            rewrite(br#"{"messages": []}"#).unwrap()["max_completion_tokens"],
            256
        );
        for unchanged in [
            &br#"{"stream": false, "max_tokens": 5}"#[..],
            br#"{"stream": true, "max_completion_tokens": 5, "stream_options": {"include_usage": true}}"#,
        ] {
            assert!(rewrite(unchanged).is_none());
        }
    }

    #[test]
    fn usage_is_read_from_an_answer() {
        let usage = Usage::of_answer(
            br#"{"usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}}"#,
        );
        assert_eq!(usage.unwrap().total(), 12);
        for body in [
            &b"{}"[..],
            br#"{"usage": {"prompt_tokens": -1, "completion_tokens": 2}}"#,
            b"garbage",
        ] {
            assert_eq!(Usage::of_answer(body), None);
        }
    }

    #[test]
    fn a_stream_reports_usage_across_chunk_boundaries() {
        let stream = concat!(
            "data: {\"choices\": [{\"delta\": {\"role\": \"assistant\", \"content\": \"\"}}]}\n\n",
            "data: {\"choices\": [{\"delta\": {\"content\": \"Hello wor\"}}]}\n\n",
            "data: {\"choices\": [{\"delta\": {\"content\": \"ld\"}, \"finish_reason\": \"stop\"}]}\n\n",
            "data: {\"choices\": [], \"usage\": {\"prompt_tokens\": 9, \"completion_tokens\": 3}}\n\n",
            "data: [DONE]\n\n"
        );
        for split in [1, 7, 50, stream.len()] {
            let mut scan = StreamScan::default();
            for chunk in stream.as_bytes().chunks(split) {
                scan.feed(chunk);
            }
            assert_eq!(scan.usage().map(Usage::total), Some(12), "split {split}");
            assert_eq!(scan.completion_estimate(), 3, "11 characters");
        }
    }

    #[test]
    fn a_stream_without_usage_is_estimated_and_long_lines_are_skipped() {
        let mut scan = StreamScan::default();
        scan.feed(b"data: {\"choices\": [{\"delta\": {\"content\": \"12345678\"}}]}\r\n");
        scan.feed(&vec![b'x'; filter_common::sse::MAX_EVENT_LINE_BYTES * 2]);
        scan.feed(b"\ndata: not json\nevent: ping\ndata: [DONE]\n");
        assert_eq!(scan.usage(), None);
        assert_eq!(scan.completion_estimate(), 2);
    }
}
