//! Errors of parsing and validating a table.

use std::fmt;

/// Why a table was rejected.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The text is not well-formed TOML/JSON, or has a key of the wrong type or an unknown key.
    #[error("invalid {format}: {message}")]
    Syntax {
        format: &'static str,
        message: String,
    },
    /// The table parsed but some values are out of bounds; every one is listed.
    #[error("{}", list(.0))]
    Invalid(Vec<InvalidField>),
}

fn list(errs: &[InvalidField]) -> String {
    let mut s = format!("{} invalid field(s): ", errs.len());
    for (i, e) in errs.iter().enumerate() {
        if i > 0 {
            s.push_str("; ");
        }
        s.push_str(&e.to_string());
    }
    s
}

impl TableError {
    /// Every problem, one per line, for logs and `/config`.
    pub fn lines(&self) -> Vec<String> {
        match self {
            TableError::Syntax { .. } => vec![self.to_string()],
            TableError::Invalid(v) => v.iter().map(|e| e.to_string()).collect(),
        }
    }
}

/// One bad value: where it is and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidField {
    /// Dotted path, e.g. `services.b.retries.attempts`.
    pub path: String,
    pub reason: String,
}

impl InvalidField {
    pub fn new(path: &str, reason: impl Into<String>) -> Self {
        InvalidField {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for InvalidField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}
