//! Token counters per verified identity and model. A counter's name carries its labels the way
//! both hosts read them: `ai_tokens_prompt_tokens;identity=alice;model=gpt-4o` is, in our proxy,
//! `wasm_ai_tokens_prompt_tokens{plugin="…",identity="alice",model="gpt-4o"}`, and in Envoy the
//! same stat, whose labels its `stats_tags` extract (`docs/filters/ai-tokens.md`). A client picks
//! the model it names, so the series are bounded: past `max_series` pairs, usage is counted under
//! `identity=other;model=other`.

use std::collections::HashMap;

/// Longest label value kept; longer values are cut.
const MAX_LABEL_CHARS: usize = 64;
/// The label value of a series that stands for all pairs past the bound.
pub const OVERFLOW: &str = "other";

/// The counters of each (identity, model) seen, at most `max_series` of them plus the overflow.
pub struct UsageSeries<T> {
    max_series: usize,
    series: HashMap<(String, String), T>,
}

impl<T> UsageSeries<T> {
    /// An empty set allowing `max_series` pairs.
    pub fn new(max_series: usize) -> Self {
        Self {
            max_series,
            series: HashMap::new(),
        }
    }

    /// The counters for `identity` and `model` (as raw header and body values), defining them with
    /// `define(name_suffix)` the first time; `name_suffix` is `;identity=…;model=…`.
    pub fn get(&mut self, identity: &str, model: &str, define: impl FnOnce(&str) -> T) -> &T {
        let mut key = (label_value(identity), label_value(model));
        if !self.series.contains_key(&key) && self.series.len() >= self.max_series {
            key = (OVERFLOW.to_owned(), OVERFLOW.to_owned());
        }
        self.series
            .entry(key)
            .or_insert_with_key(|(identity, model)| {
                define(&format!(";identity={identity};model={model}"))
            })
    }
}

/// A value as a label: the characters both hosts keep (letters, digits, `_ - . : @ /`), others
/// replaced by `_`, at most 64 of them; `none` when empty.
fn label_value(raw: &str) -> String {
    let value: String = raw
        .chars()
        .take(MAX_LABEL_CHARS)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-.:@/".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if value.is_empty() {
        "none".into()
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_named_by_sanitised_labels_and_bounded() {
        let mut series = UsageSeries::new(2);
        let mut defined = Vec::new();
        let mut get = |identity: &str, model: &str| {
            *series.get(identity, model, |suffix| {
                defined.push(suffix.to_owned());
                defined.len()
            })
        };
        assert_eq!(get("alice", "gpt-4o"), 1);
        assert_eq!(get("alice", "gpt-4o"), 1, "defined once");
        assert_eq!(get("bob;x=1", "m\"}\n"), 2);
        assert_eq!(get("carol", "m"), 3, "past the bound: the overflow series");
        assert_eq!(get("dave", "n"), 3);
        assert_eq!(get("", &"x".repeat(100)), 3);
        assert_eq!(
            defined,
            [
                ";identity=alice;model=gpt-4o",
                ";identity=bob_x_1;model=m___",
                ";identity=other;model=other"
            ]
        );
        assert_eq!(label_value(""), "none");
        assert_eq!(label_value(&"é".repeat(100)).len(), MAX_LABEL_CHARS);
    }
}
