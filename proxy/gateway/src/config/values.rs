//! Value types shared by the configuration's sections. Each parses and checks itself while the
//! file is read, so its errors name the field they are about, and code that holds one needs no
//! check of its own.

use super::ConfigError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// Reads a value from its text form with [`FromStr`], so the error names the field.
fn from_text<'de, D: Deserializer<'de>, T: FromStr<Err = String>>(d: D) -> Result<T, D::Error> {
    String::deserialize(d)?
        .parse()
        .map_err(serde::de::Error::custom)
}

/// A socket address written `ip:port` or `localhost:port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Address(pub SocketAddr);

impl FromStr for Address {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let normalised = match text.strip_prefix("localhost:") {
            Some(port) => format!("127.0.0.1:{port}"),
            None => text.to_string(),
        };
        normalised
            .parse()
            .map(Self)
            .map_err(|_| format!("{text:?} is not an address of the form ip:port"))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_text(d)
    }
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An upstream endpoint: an address, or a DNS name and port resolved when the configuration
/// loads (at start and on each reload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointAddress {
    /// `ip:port` (or `localhost:port`).
    Address(SocketAddr),
    /// `name:port`.
    Name {
        /// The DNS name, lower case, without a trailing dot.
        name: String,
        /// The port.
        port: u16,
    },
}

impl FromStr for EndpointAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(Address(address)) = text.parse() {
            return Ok(Self::Address(address));
        }
        let invalid = || format!("{text:?} is neither ip:port nor a DNS name and port (name:port)");
        let (name, port) = text.rsplit_once(':').ok_or_else(invalid)?;
        let port: u16 = port.parse().map_err(|_| invalid())?;
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if port == 0 || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(invalid());
        }
        Ok(Self::Name {
            name: name.to_ascii_lowercase(),
            port,
        })
    }
}

impl<'de> Deserialize<'de> for EndpointAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_text(d)
    }
}

/// An HTTP header name, lower case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HeaderName(String);

impl HeaderName {
    /// The name, lower case.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for HeaderName {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        http::HeaderName::from_bytes(text.as_bytes())
            .map(|name| Self(name.as_str().to_owned()))
            .map_err(|_| format!("{text:?} is not a valid header name"))
    }
}

impl<'de> Deserialize<'de> for HeaderName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_text(d)
    }
}

/// A URL path: starts with `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlPath(String);

impl UrlPath {
    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for UrlPath {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.starts_with('/') {
            Ok(Self(text.to_owned()))
        } else {
            Err("must start with /".into())
        }
    }
}

impl<'de> Deserialize<'de> for UrlPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_text(d)
    }
}

/// A count of at least one (threads, connections, thresholds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct AtLeastOne<T>(T);

impl<T: Copy> AtLeastOne<T> {
    /// The count.
    pub fn get(self) -> T {
        self.0
    }
}

impl<T: From<u8> + PartialOrd> AtLeastOne<T> {
    /// `count`, or the field's error when it is 0.
    pub fn new(count: T) -> Result<Self, String> {
        if count >= T::from(1) {
            Ok(Self(count))
        } else {
            Err("must be at least 1".into())
        }
    }
}

impl<'de, T: Deserialize<'de> + From<u8> + PartialOrd> Deserialize<'de> for AtLeastOne<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(T::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A duration longer than zero, written like every duration (`250ms`, `5s`, `2m`, `1h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NonZeroDuration(Duration);

impl NonZeroDuration {
    /// `duration`, or the field's error when it is zero.
    pub fn new(duration: Duration) -> Result<Self, String> {
        if duration.is_zero() {
            Err("must be positive".into())
        } else {
            Ok(Self(duration))
        }
    }

    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl Serialize for NonZeroDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        duration::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for NonZeroDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(duration::deserialize(d)?).map_err(serde::de::Error::custom)
    }
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

/// A duration as written in the file: whole milliseconds.
fn duration_text(duration: &Duration) -> String {
    format!("{}ms", duration.as_millis())
}

/// `#[serde(with = "duration")]`: a [`Duration`] in the file's syntax.
pub(super) mod duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::duration_text(duration))
    }
}

/// `#[serde(with = "optional_duration")]`: an optional [`Duration`] in the file's syntax.
pub(super) mod optional_duration {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| super::parse_duration(&text).map_err(serde::de::Error::custom))
            .transpose()
    }

    pub fn serialize<S: Serializer>(duration: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        duration.as_ref().map(super::duration_text).serialize(s)
    }
}
