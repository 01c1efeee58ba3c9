//! The one shape of a refused configuration, the proxy's file and a filter's plugin
//! configuration alike: the field it is about and what is wrong, shown as `field: message`.

use std::fmt;

/// Why a configuration was refused: the field (`routes[1].cluster`, `jwt.providers[0].issuer`)
/// and the problem. An error about the document as a whole names the document instead
/// (`(file)`, `plugin configuration`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the offending field, or the document's name.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl ConfigError {
    /// An error from reading a YAML document with field paths (`serde_path_to_error`): `path`
    /// where reading stopped (`.` for the document, then named `document`) and the parser's
    /// `message`. A field's error loses the parser's trailing `at line N column M`, since the
    /// field path says where, and the path the message may repeat. An error about the document
    /// as a whole (its syntax) keeps its position: there is no field to name.
    pub fn from_yaml(path: &str, message: &str, document: &str) -> Self {
        if path == "." {
            return Self::new(document, message);
        }
        let message = without_position(message);
        let message = match message.split_once(": ") {
            Some((head, rest)) if path.starts_with(head) => rest,
            _ => message,
        };
        Self::new(path, message)
    }
}

/// `message` without one trailing ` at line N column M`; a message that names more than one
/// position (a syntax error with its context) is kept whole.
fn without_position(message: &str) -> &str {
    if message.matches(" at line ").count() != 1 {
        return message;
    }
    match message.rsplit_once(" at line ") {
        Some((head, position))
            if position
                .split(" column ")
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) =>
        {
            head
        }
        _ => message,
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::ConfigError;

    #[test]
    fn a_field_error_names_the_field_once_and_no_position() {
        let error = ConfigError::from_yaml(
            "runtimes.python.sha256",
            "runtimes.python.sha256: not a hex SHA-256 at line 4 column 13",
            "(file)",
        );
        assert_eq!(
            error.to_string(),
            "runtimes.python.sha256: not a hex SHA-256"
        );
    }

    #[test]
    fn a_syntax_error_keeps_its_positions() {
        let message = "did not find expected key at line 5 column 3, while parsing a block \
                       mapping at line 2 column 1";
        let error = ConfigError::from_yaml(".", message, "(file)");
        assert_eq!(error.to_string(), format!("(file): {message}"));
        let inside = ConfigError::from_yaml("routes[0]", message, "(file)");
        assert_eq!(inside.message, message);
    }
}
