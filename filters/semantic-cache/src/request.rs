//! What a chat completions request is to the cache: its question (the trailing messages), and the
//! partition it may be answered in.

use crate::config::{PartitionBy, SemanticCacheConfig};
use filter_common::{is_malformed, HeaderSnapshot};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Fields that do not change an answer's content, left out of the parameters digest (`n` is
/// bypassed above 1; `stream` only changes how the answer is framed, and a hit is framed to suit).
const FRAMING_FIELDS: [&str; 5] = ["messages", "stream", "stream_options", "user", "n"];

/// A request the cache can answer.
#[derive(Debug, Clone)]
pub struct ChatQuery {
    /// `stream: true`: a hit is replayed as server-sent events.
    pub stream: bool,
    /// `stream_options.include_usage: true`: a replayed stream ends with a usage chunk.
    pub include_usage: bool,
    /// The `model` named (empty when none is).
    pub model: String,
    /// The trailing messages, role and text, oldest first; the last is the user's.
    pub turns: Vec<(String, String)>,
    /// Digest of every system and developer message, in order.
    system_digest: String,
    /// Digest of the generation parameters (temperature, max tokens, tools, ...).
    parameters_digest: String,
}

/// Why a request bypasses the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bypass {
    /// The client asked for a fresh answer (`cache-control: no-cache` or `no-store`).
    ClientOptOut,
    /// No verified tenant or identity to partition by.
    NoVerifiedCaller,
    /// The body is larger than `max_request_body_bytes`.
    BodyTooLarge,
    /// Not a JSON object with a list of messages.
    NotAChatRequest,
    /// The last message is not the user's (a tool result, an assistant prefill).
    NotAUserTurn,
    /// A message whose content is not text (an image, a tool call).
    NotText,
    /// `n` above 1 asks for several answers.
    SeveralChoices,
}

impl Bypass {
    /// For logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Bypass::ClientOptOut => "client opt-out",
            Bypass::NoVerifiedCaller => "no verified caller",
            Bypass::BodyTooLarge => "body too large",
            Bypass::NotAChatRequest => "not a chat request",
            Bypass::NotAUserTurn => "last message is not the user's",
            Bypass::NotText => "non-text content",
            Bypass::SeveralChoices => "n above 1",
        }
    }
}

impl ChatQuery {
    /// Reads a request body, keeping its last `context_messages` non-system messages.
    pub fn parse(body: &[u8], context_messages: usize) -> Result<Self, Bypass> {
        let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(body) else {
            return Err(Bypass::NotAChatRequest);
        };
        let Some(messages) = body.get("messages").and_then(Value::as_array) else {
            return Err(Bypass::NotAChatRequest);
        };
        if body.get("n").is_some_and(|n| n.as_u64() != Some(1)) {
            return Err(Bypass::SeveralChoices);
        }
        let mut system = Vec::new();
        let mut turns = Vec::new();
        for message in messages {
            let role = message.get("role").and_then(Value::as_str).unwrap_or("");
            if message.get("tool_calls").is_some() {
                return Err(Bypass::NotText);
            }
            let text = message_text(message.get("content")).ok_or(Bypass::NotText)?;
            if matches!(role, "system" | "developer") {
                system.push((role.to_owned(), text));
            } else {
                turns.push((role.to_owned(), text));
            }
        }
        if turns.last().map(|(role, _)| role.as_str()) != Some("user") {
            return Err(Bypass::NotAUserTurn);
        }
        let tail = turns.split_off(turns.len().saturating_sub(context_messages));
        let parameters: Map<String, Value> = body
            .iter()
            .filter(|(field, _)| !FRAMING_FIELDS.contains(&field.as_str()))
            .map(|(field, value)| (field.clone(), value.clone()))
            .collect();
        Ok(Self {
            stream: body.get("stream").and_then(Value::as_bool) == Some(true),
            include_usage: body
                .get("stream_options")
                .and_then(|o| o.get("include_usage"))
                .and_then(Value::as_bool)
                == Some(true),
            model: body
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            turns: tail,
            system_digest: digest(&Value::from(
                system
                    .into_iter()
                    .map(|(r, t)| Value::from(vec![r, t]))
                    .collect::<Vec<_>>(),
            )),
            // serde_json's maps are sorted: equal parameters make equal digests whatever their order.
            parameters_digest: digest(&Value::Object(parameters)),
        })
    }

    /// The text embedded for a similarity search: the question's messages, one per line.
    pub fn text(&self) -> String {
        let texts: Vec<&str> = self.turns.iter().map(|(_, text)| text.as_str()).collect();
        texts.join("\n")
    }

    /// The keys this question is cached under for `caller` (`tenant:<t>` or `identity:<i>`, as
    /// verified) on `route` and `path`, in `namespace`.
    pub fn keys(&self, namespace: &str, caller: &str, route: &str, path: &str) -> CacheKeys {
        let partition = digest(&serde_json::json!([
            "v1",
            namespace,
            caller,
            route,
            path,
            self.model,
            self.system_digest,
            self.parameters_digest,
        ]));
        let turns: Vec<Value> = self
            .turns
            .iter()
            .map(|(role, text)| Value::from(vec![role.as_str(), text.as_str()]))
            .collect();
        let question = digest(&serde_json::json!([partition, turns]));
        CacheKeys {
            partition,
            question,
        }
    }
}

/// Where a question's answer is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKeys {
    /// Digest of everything the answer may be shared across: who, where, which model, which
    /// system prompt and parameters. Part of the question key and the similarity search's filter.
    pub partition: String,
    /// Digest of the partition and the question's messages: the answer's key.
    pub question: String,
}

/// Text of a message's content: a string, or a list of text parts. `None` for anything else.
fn message_text(content: Option<&Value>) -> Option<String> {
    match content? {
        Value::String(text) => Some(text.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for part in parts {
                if part.get("type").and_then(Value::as_str) != Some("text") {
                    return None;
                }
                text.push_str(part.get("text")?.as_str()?);
            }
            Some(text)
        }
        _ => None,
    }
}

/// Lowercase hex SHA-256 of a value's JSON (which keeps its parts apart whatever they contain).
fn digest(value: &Value) -> String {
    hex::encode(Sha256::digest(value.to_string().as_bytes()))
}

/// Who the request acts for, as the auth filter verified it: `tenant:<t>` or `identity:<i>`.
pub fn verified_caller(config: &SemanticCacheConfig, headers: &HeaderSnapshot) -> Option<String> {
    let verified = |name: &str| {
        headers
            .header(name)
            .filter(|v| !v.is_empty() && !is_malformed(v))
    };
    match config.partition_by {
        // A caller without a tenant is its own partition, never a tenant of the same name.
        PartitionBy::Tenant => verified(&config.tenant_header)
            .map(|tenant| format!("tenant:{tenant}"))
            .or_else(|| verified(&config.identity_header).map(|i| format!("identity:{i}"))),
        PartitionBy::Identity => {
            verified(&config.identity_header).map(|identity| format!("identity:{identity}"))
        }
    }
}

/// The request's `cache-control: no-cache` and `no-store`.
pub fn client_opt_out(headers: &HeaderSnapshot) -> (bool, bool) {
    let value = headers.header("cache-control").unwrap_or_default();
    let directives = value.split(',').map(|d| d.trim().to_ascii_lowercase());
    directives.fold((false, false), |(no_cache, no_store), d| {
        (no_cache || d == "no-cache", no_store || d == "no-store")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(body: &str) -> ChatQuery {
        ChatQuery::parse(body.as_bytes(), 3).unwrap()
    }

    fn keys(body: &str) -> CacheKeys {
        query(body).keys("", "tenant:acme", "chat", "/v1/chat/completions")
    }

    #[test]
    fn the_question_is_the_trailing_turns() {
        let q = query(
            r#"{"model": "m", "stream": true, "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"},
                {"role": "user", "content": [{"type": "text", "text": "e"}, {"type": "text", "text": "f"}]}
            ]}"#,
        );
        assert!(q.stream);
        assert_eq!(q.text(), "c\nd\nef");
        assert_eq!(q.turns[0].0, "user");
    }

    #[test]
    fn the_partition_separates_callers_routes_models_system_prompts_and_parameters() {
        let base =
            r#"{"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "q"}]}"#;
        let k = keys(base);
        let q = query(base);
        for (namespace, caller, route) in [
            ("", "tenant:other", "chat"),
            ("", "identity:acme", "chat"),
            ("", "tenant:acme", "rag"),
            ("ns", "tenant:acme", "chat"),
        ] {
            let other = q.keys(namespace, caller, route, "/v1/chat/completions");
            assert_ne!(
                k.partition, other.partition,
                "{namespace:?} {caller} {route}"
            );
        }
        for other in [
            r#"{"model": "n", "temperature": 0, "messages": [{"role": "user", "content": "q"}]}"#,
            r#"{"model": "m", "temperature": 1, "messages": [{"role": "user", "content": "q"}]}"#,
            r#"{"model": "m", "temperature": 0, "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}"#,
        ] {
            assert_ne!(k.partition, keys(other).partition, "{other}");
        }
        // Framing and field order do not matter.
        let same = keys(
            r#"{"messages": [{"role": "user", "content": "q"}], "stream": true, "n": 1, "user": "u", "temperature": 0, "model": "m"}"#,
        );
        assert_eq!(k, same);
    }

    #[test]
    fn a_follow_up_is_keyed_by_its_conversation() {
        let first = keys(
            r#"{"messages": [{"role": "user", "content": "revenue in 2020?"}, {"role": "assistant", "content": "5M"}, {"role": "user", "content": "and in 2021?"}]}"#,
        );
        let second = keys(
            r#"{"messages": [{"role": "user", "content": "staff in 2020?"}, {"role": "assistant", "content": "300"}, {"role": "user", "content": "and in 2021?"}]}"#,
        );
        assert_eq!(first.partition, second.partition);
        assert_ne!(first.question, second.question);
    }

    #[test]
    fn the_caller_is_the_verified_tenant_else_its_own_identity() {
        let config = SemanticCacheConfig::from_json(b"{}").unwrap();
        let headers = |pairs: &[(&str, &str)]| {
            HeaderSnapshot::new(
                pairs
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                    .collect(),
            )
        };
        let both = headers(&[("x-gateway-tenant", "acme"), ("x-gateway-identity", "bob")]);
        assert_eq!(verified_caller(&config, &both).unwrap(), "tenant:acme");
        // An identity named like a tenant is not that tenant.
        let alone = headers(&[("x-gateway-identity", "acme")]);
        assert_eq!(verified_caller(&config, &alone).unwrap(), "identity:acme");
        assert_eq!(verified_caller(&config, &headers(&[])), None);
        let empty = headers(&[("x-gateway-tenant", ""), ("x-gateway-identity", "")]);
        assert_eq!(verified_caller(&config, &empty), None);
        let per_identity =
            SemanticCacheConfig::from_json(br#"{"partition_by": "identity"}"#).unwrap();
        assert_eq!(
            verified_caller(&per_identity, &both).unwrap(),
            "identity:bob"
        );
    }

    #[test]
    fn clients_opt_out_with_cache_control() {
        let with = |value: &str| {
            client_opt_out(&HeaderSnapshot::new(vec![(
                "cache-control".into(),
                value.as_bytes().to_vec(),
            )]))
        };
        assert_eq!(with("No-Cache"), (true, false));
        assert_eq!(with("max-age=0, no-store"), (false, true));
        assert_eq!(with("max-age=60"), (false, false));
    }

    #[test]
    fn what_the_cache_cannot_answer_bypasses_it() {
        for (body, reason) in [
            ("not json", Bypass::NotAChatRequest),
            ("[]", Bypass::NotAChatRequest),
            (r#"{"messages": 3}"#, Bypass::NotAChatRequest),
            (r#"{"messages": []}"#, Bypass::NotAUserTurn),
            (
                r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}"#,
                Bypass::NotAUserTurn,
            ),
            (
                r#"{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}"#,
                Bypass::NotText,
            ),
            (
                r#"{"messages": [{"role": "user", "content": null}]}"#,
                Bypass::NotText,
            ),
            (
                r#"{"n": 2, "messages": [{"role": "user", "content": "q"}]}"#,
                Bypass::SeveralChoices,
            ),
        ] {
            assert_eq!(
                ChatQuery::parse(body.as_bytes(), 3).unwrap_err(),
                reason,
                "{body}"
            );
        }
    }
}
