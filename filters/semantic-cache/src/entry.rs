//! A cached answer in shared data (`semcache|<question key>`), and how a hit is answered from it.

use crate::answer::Answer;
use filter_common::SharedStore;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Prefix of the filter's shared-data keys.
const KEY_PREFIX: &str = "semcache|";

/// The shared-data key of a question's answer.
pub fn shared_key(question: &str) -> String {
    format!("{KEY_PREFIX}{question}")
}

/// Deletes the answer under shared-data `key` if it has expired at `now`; whether the key no
/// longer needs watching (deleted, gone, or unreadable). The delete is a compare-and-swap, so an
/// answer another worker stored meanwhile stays.
pub fn expire(store: &dyn SharedStore, key: &str, now: u64) -> bool {
    let (value, cas) = store.get(key);
    match value.as_deref().and_then(Entry::decode) {
        Some(entry) if now < entry.expires_at => false,
        Some(_) => store.set(key, b"", cas.unwrap_or(0)),
        None => true,
    }
}

/// A stored answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The partition it was answered in; checked again on every hit, so a key that reached the
    /// filter any other way (a similarity search) cannot serve across partitions.
    pub partition: String,
    /// When it was stored (Unix seconds).
    pub stored_at: u64,
    /// When it stops being served (Unix seconds).
    pub expires_at: u64,
    /// The answer.
    pub answer: Answer,
}

impl Entry {
    /// The stored bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads stored bytes; anything else (a deleted key, a corrupt value) is no entry.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    /// Whether it may answer a request in `partition` at `now`.
    pub fn serves(&self, partition: &str, now: u64) -> bool {
        self.partition == partition && now < self.expires_at
    }

    /// A `chat.completion` body with this answer.
    pub fn json_body(&self, id: &str, now: u64) -> Vec<u8> {
        let answer = &self.answer;
        let mut body = json!({
            "id": id,
            "object": "chat.completion",
            "created": now,
            "model": answer.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": answer.content},
                "finish_reason": answer.finish_reason,
            }],
        });
        if let Some(usage) = self.usage() {
            body["usage"] = usage;
        }
        body.to_string().into_bytes()
    }

    /// The answer replayed as a stream: a role chunk, the text, the finish reason, the usage when
    /// `include_usage` asks (as OpenAI sends it), and `[DONE]`.
    pub fn event_stream(&self, id: &str, now: u64, include_usage: bool) -> Vec<u8> {
        let answer = &self.answer;
        let chunk = |choices: Value| {
            json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": now,
                "model": answer.model,
                "choices": choices,
            })
        };
        let mut events = vec![
            chunk(
                json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
            ),
            chunk(
                json!([{"index": 0, "delta": {"content": answer.content}, "finish_reason": null}]),
            ),
            chunk(json!([{"index": 0, "delta": {}, "finish_reason": answer.finish_reason}])),
        ];
        if let (true, Some(usage)) = (include_usage, self.usage()) {
            let mut last = chunk(json!([]));
            last["usage"] = usage;
            events.push(last);
        }
        let mut stream = Vec::new();
        for event in events {
            stream.extend_from_slice(b"data: ");
            stream.extend_from_slice(event.to_string().as_bytes());
            stream.extend_from_slice(b"\n\n");
        }
        stream.extend_from_slice(b"data: [DONE]\n\n");
        stream
    }

    fn usage(&self) -> Option<Value> {
        let (prompt, completion) = self.answer.usage?;
        Some(json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::StreamAssembly;

    fn entry() -> Entry {
        Entry {
            partition: "p".into(),
            stored_at: 100,
            expires_at: 200,
            answer: Answer {
                model: "m".into(),
                content: "Paris, \"of course\".\n".into(),
                finish_reason: "stop".into(),
                usage: Some((7, 5)),
            },
        }
    }

    #[test]
    fn an_entry_serves_its_own_partition_until_it_expires() {
        let entry = Entry::decode(&entry().encode()).unwrap();
        assert_eq!(entry, self::entry());
        assert!(entry.serves("p", 199));
        assert!(!entry.serves("p", 200));
        assert!(!entry.serves("q", 150));
        assert_eq!(Entry::decode(b"{\"partition\": 1}"), None);
        assert_eq!(Entry::decode(b""), None);
    }

    #[test]
    fn only_an_expired_answer_is_deleted() {
        let store = filter_common::testing::MemoryStore::default();
        store.set("semcache|k", &entry().encode(), 0);
        assert!(!expire(&store, "semcache|k", 199), "still fresh");
        assert!(store.contains("semcache|k"));
        store.fail_next_writes(1);
        assert!(
            !expire(&store, "semcache|k", 200),
            "rewritten meanwhile: kept, and watched"
        );
        assert!(expire(&store, "semcache|k", 200));
        assert!(!store.contains("semcache|k"));
        assert!(expire(&store, "semcache|gone", 200));
    }

    #[test]
    fn a_hit_is_answered_as_json_or_replayed_as_a_stream() {
        let json_answer = Answer::from_json(&entry().json_body("chatcmpl-x", 150)).unwrap();
        assert_eq!(json_answer, entry().answer);
        let stream = entry().event_stream("chatcmpl-x", 150, true);
        let mut assembly = StreamAssembly::default();
        assembly.feed(&stream);
        assert_eq!(assembly.finish().unwrap(), entry().answer);
        let without_usage = entry().event_stream("chatcmpl-x", 150, false);
        assert!(!String::from_utf8(without_usage).unwrap().contains("usage"));
    }
}
