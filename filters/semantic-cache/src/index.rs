//! The vector service's look-up call: the question's text is embedded and searched among the
//! partition's earlier questions; when none is similar enough the service indexes it under its
//! key, so its answer, once stored, can be found by the next similar question.
//!
//! Request (`POST`, JSON): `partition`, `key`, `text`, `min_similarity`, `limit`, `ttl_seconds`.
//! Answer: `{"matches": [{"key": "<64 hex>", "similarity": 0.97}], "indexed": true}`, best first.

use serde::Deserialize;
use serde_json::json;

/// A similar earlier question.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Match {
    /// Its question key.
    pub key: String,
    /// Cosine similarity of the two questions' embeddings.
    pub similarity: f64,
}

/// The look-up request's body.
pub fn lookup_body(
    partition: &str,
    key: &str,
    text: &str,
    min_similarity: f64,
    limit: u32,
    ttl_seconds: u64,
) -> Vec<u8> {
    json!({
        "partition": partition,
        "key": key,
        "text": text,
        "min_similarity": min_similarity,
        "limit": limit,
        "ttl_seconds": ttl_seconds,
    })
    .to_string()
    .into_bytes()
}

/// The matches in a look-up answer, at most `limit`, each a question key at least `min_similarity`
/// similar (a service that answers otherwise is not believed). `None` for an unreadable answer.
pub fn matches(body: &[u8], limit: u32, min_similarity: f64) -> Option<Vec<Match>> {
    #[derive(Deserialize)]
    struct Lookup {
        matches: Vec<Match>,
    }
    let lookup: Lookup = serde_json::from_slice(body).ok()?;
    Some(
        lookup
            .matches
            .into_iter()
            .filter(|m| is_question_key(&m.key) && m.similarity >= min_similarity)
            .take(limit as usize)
            .collect(),
    )
}

/// Whether `key` has the shape of a question key (64 lowercase hex digits).
fn is_question_key(key: &str) -> bool {
    key.len() == 64 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_matches_above_the_threshold_are_believed() {
        let good = "a".repeat(64);
        let body = format!(
            r#"{{"matches": [{{"key": "{good}", "similarity": 0.95}}, {{"key": "../x", "similarity": 0.99}},
                {{"key": "{good}", "similarity": 0.5}}, {{"key": "{good}", "similarity": 0.93}}], "indexed": false}}"#
        );
        let found = matches(body.as_bytes(), 8, 0.9).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(matches(body.as_bytes(), 1, 0.9).unwrap().len(), 1);
        for garbage in [&b"<html>"[..], b"{}", br#"{"matches": 3}"#] {
            assert_eq!(matches(garbage, 8, 0.9), None);
        }
    }

    #[test]
    fn the_request_names_what_the_service_needs() {
        let body: serde_json::Value =
            serde_json::from_slice(&lookup_body("p", "k", "t", 0.9, 4, 60)).unwrap();
        assert_eq!(body["partition"], "p");
        assert_eq!(body["limit"], 4);
        assert_eq!(body["ttl_seconds"], 60);
    }
}
