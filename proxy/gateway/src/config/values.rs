//! Value syntaxes shared by the configuration's sections: addresses, durations, `${NAME}`.

use super::ConfigError;
use std::net::SocketAddr;
use std::time::Duration;

/// Parses `host:port` where host is an IP address or `localhost`.
pub fn parse_address(text: &str, field: &str) -> Result<SocketAddr, ConfigError> {
    let normalised = match text.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}"),
        None => text.to_string(),
    };
    normalised.parse().map_err(|_| {
        ConfigError::new(
            field,
            format!("{text:?} is not an address of the form ip:port"),
        )
    })
}

/// Replaces `${NAME}` with `lookup(NAME)`; an unset variable is an error naming it.
pub(super) fn expand_env(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| {
            ConfigError::new(
                "(file)",
                "unterminated ${ in an environment variable reference",
            )
        })?;
        let name = &after[..end];
        let value = lookup(name).ok_or_else(|| {
            ConfigError::new(
                "(file)",
                format!("environment variable {name} is referenced but not set"),
            )
        })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A YAML/JSON value as filter configuration bytes: strings as is, anything else as JSON.
pub fn value_bytes(value: Option<&serde_json::Value>) -> Vec<u8> {
    match value {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(text)) => text.clone().into_bytes(),
        Some(other) => other.to_string().into_bytes(),
    }
}

/// Durations written as `250ms`, `5s`, `2m` or `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit (use ms, s, m or h)"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 500ms or 30s"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        "h" => Ok(Duration::from_secs(number * 3600)),
        _ => Err(format!("{text:?} has an unknown unit (use ms, s, m or h)")),
    }
}

pub(super) mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

pub(super) mod optional_duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| super::parse_duration(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}
