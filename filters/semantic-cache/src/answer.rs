//! An upstream's answer as the cache keeps it: the assistant's text, why it ended, and its usage,
//! read from a JSON answer or assembled from a stream's events. Only a complete, single-choice text
//! answer is kept; an error, a tool call or a stream that ends early is not.

use filter_common::sse::DataLines;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A complete answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The `model` the upstream reported.
    pub model: String,
    /// The assistant's text.
    pub content: String,
    /// `finish_reason` (`stop`, `length`, ...).
    pub finish_reason: String,
    /// `usage.prompt_tokens` and `usage.completion_tokens`, when reported.
    pub usage: Option<(u64, u64)>,
}

impl Answer {
    /// Tokens a hit saves: what the original answer used.
    pub fn tokens(&self) -> u64 {
        self.usage
            .map_or(0, |(prompt, completion)| prompt + completion)
    }

    /// Reads a JSON answer (`chat.completion`).
    pub fn from_json(body: &[u8]) -> Option<Self> {
        let answer: Value = serde_json::from_slice(body).ok()?;
        let [choice] = answer.get("choices")?.as_array()?.as_slice() else {
            return None;
        };
        let message = choice.get("message")?;
        if message
            .get("tool_calls")
            .is_some_and(|calls| !calls.is_null())
        {
            return None;
        }
        Some(Self {
            model: text_field(&answer, "model"),
            content: message.get("content")?.as_str()?.to_owned(),
            finish_reason: choice.get("finish_reason")?.as_str()?.to_owned(),
            usage: usage(&answer),
        })
    }
}

fn text_field(value: &Value, field: &str) -> String {
    value
        .get(field)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

fn usage(value: &Value) -> Option<(u64, u64)> {
    let usage = value.get("usage")?;
    Some((
        usage.get("prompt_tokens")?.as_u64()?,
        usage.get("completion_tokens")?.as_u64()?,
    ))
}

/// Assembles a streamed answer (`chat.completion.chunk` events) as it passes.
#[derive(Debug, Default)]
pub struct StreamAssembly {
    lines: DataLines,
    answer: Answer,
    finished: bool,
    done: bool,
    unusable: bool,
}

impl StreamAssembly {
    /// Reads the next bytes of the stream.
    pub fn feed(&mut self, chunk: &[u8]) {
        let Self {
            lines,
            answer,
            finished,
            done,
            unusable,
        } = self;
        lines.feed(chunk, |data| {
            if *done || *unusable {
                // Anything after `[DONE]` is not part of the answer either.
                *unusable |= *done;
                return;
            }
            if data == b"[DONE]" {
                *done = true;
                return;
            }
            let Ok(event) = serde_json::from_slice::<Value>(data) else {
                *unusable = true;
                return;
            };
            if event.get("error").is_some() {
                *unusable = true;
                return;
            }
            if answer.model.is_empty() {
                answer.model = text_field(&event, "model");
            }
            if let Some(reported) = usage(&event) {
                answer.usage = Some(reported);
            }
            let Some(choices) = event.get("choices").and_then(Value::as_array) else {
                return;
            };
            for choice in choices {
                let delta = choice.get("delta");
                let tool_call = delta
                    .and_then(|d| d.get("tool_calls"))
                    .is_some_and(|c| !c.is_null());
                if choice.get("index").and_then(Value::as_u64).unwrap_or(0) != 0 || tool_call {
                    *unusable = true;
                    return;
                }
                if let Some(text) = delta.and_then(|d| d.get("content")).and_then(Value::as_str) {
                    answer.content.push_str(text);
                }
                if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                    answer.finish_reason = reason.to_owned();
                    *finished = true;
                }
            }
        });
    }

    /// The answer, if the stream carried a whole one and ended with `[DONE]`.
    pub fn finish(self) -> Option<Answer> {
        (self.finished && self.done && !self.unusable).then_some(self.answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        "data: {\"model\": \"m\", \"choices\": [{\"index\": 0, \"delta\": {\"role\": \"assistant\", \"content\": \"\"}}]}\n\n",
        "data: {\"choices\": [{\"index\": 0, \"delta\": {\"content\": \"Hello wor\"}}]}\n\n",
        "data: {\"choices\": [{\"index\": 0, \"delta\": {\"content\": \"ld\"}, \"finish_reason\": \"stop\"}]}\n\n",
        "data: {\"choices\": [], \"usage\": {\"prompt_tokens\": 9, \"completion_tokens\": 3}}\n\n",
        "data: [DONE]\n\n"
    );

    fn assemble(stream: &str, split: usize) -> Option<Answer> {
        let mut assembly = StreamAssembly::default();
        for chunk in stream.as_bytes().chunks(split) {
            assembly.feed(chunk);
        }
        assembly.finish()
    }

    #[test]
    fn a_whole_stream_is_assembled_across_chunk_boundaries() {
        for split in [1, 5, 64, STREAM.len()] {
            let answer = assemble(STREAM, split).expect("complete");
            assert_eq!(answer.content, "Hello world");
            assert_eq!(
                (answer.model.as_str(), answer.finish_reason.as_str()),
                ("m", "stop")
            );
            assert_eq!(answer.tokens(), 12);
        }
    }

    #[test]
    fn partial_broken_and_unusual_streams_are_not_kept() {
        let cut = &STREAM[..STREAM.find("data: [DONE]").unwrap()];
        assert_eq!(assemble(cut, 7), None, "no [DONE]");
        let unfinished = STREAM.replace(", \"finish_reason\": \"stop\"", "");
        assert_eq!(assemble(&unfinished, 7), None, "no finish_reason");
        let error = STREAM.replace(
            "data: [DONE]",
            "data: {\"error\": {\"message\": \"over budget\"}}\n\ndata: [DONE]",
        );
        assert_eq!(assemble(&error, 7), None, "an error event");
        let garbage = STREAM.replace("data: [DONE]", "data: {not json\n\ndata: [DONE]");
        assert_eq!(assemble(&garbage, 7), None);
        let second_choice = STREAM.replace(
            "\"index\": 0, \"delta\": {\"content\": \"ld\"",
            "\"index\": 1, \"delta\": {\"content\": \"ld\"",
        );
        assert_eq!(assemble(&second_choice, 7), None);
        let after_done = format!("{STREAM}data: {{\"choices\": []}}\n\n");
        assert_eq!(assemble(&after_done, 7), None);
    }

    #[test]
    fn a_json_answer_is_kept_only_when_it_is_one_text_choice() {
        let answer = Answer::from_json(
            br#"{"model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 2, "completion_tokens": 1}}"#,
        )
        .unwrap();
        assert_eq!(answer.content, "hi");
        assert_eq!(answer.usage, Some((2, 1)));
        for body in [
            &br#"{"choices": []}"#[..],
            br#"{"choices": [{"message": {"content": null, "tool_calls": [{}]}, "finish_reason": "tool_calls"}]}"#,
            br#"{"choices": [{"message": {"content": "a"}, "finish_reason": "stop"}, {"message": {"content": "b"}, "finish_reason": "stop"}]}"#,
            br#"{"error": {"message": "down"}}"#,
            b"garbage",
        ] {
            assert_eq!(Answer::from_json(body), None);
        }
    }
}
