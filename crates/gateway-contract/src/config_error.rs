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

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for ConfigError {}
