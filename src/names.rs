//! Validated names. Every string that becomes a key, a directory name or a log entry
//! passes through here first, so a bad one is refused at the edge with the field named
//! and nothing is written.
//!
//! Versions and ids become directory and file names on agents (`releases/<version>`),
//! so the allowed characters exclude `/`, whitespace and a leading `.`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::limits::{MAX_NAME_LEN, MAX_VERSION_LEN};

/// A request field that failed validation: which field, and why. It becomes an
/// INVALID_ARGUMENT status whose message starts with the field path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// Path of the field in the request, e.g. `components[2].version`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FieldError {
    /// A validation failure of `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<FieldError> for tonic::Status {
    fn from(e: FieldError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

fn check(field: &str, value: &str, max: usize, extra: &[char]) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(FieldError::new(
            field,
            format!("is {} bytes long, the limit is {max}", value.len()),
        ));
    }
    if value.starts_with('.') {
        return Err(FieldError::new(
            field,
            format!("{value:?} must not start with '.'"),
        ));
    }
    let bad = value.chars().find(|c| {
        !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_' || *c == '.' || extra.contains(c))
    });
    match bad {
        Some(c) => Err(FieldError::new(
            field,
            format!(
                "{value:?} contains {c:?}; allowed are letters, digits, '-', '_', '.'{}",
                extra.iter().map(|c| format!(", '{c}'")).collect::<String>()
            ),
        )),
        None => Ok(()),
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $max:expr, $extra:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates `value`, reporting failures against `field`.
            pub fn parse(field: &str, value: &str) -> Result<Self, FieldError> {
                check(field, value, $max, $extra)?;
                Ok(Self(value.to_string()))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// A project name: unique within an environment, used in keys and hook variables.
    ProjectName,
    MAX_NAME_LEN,
    &[]
);
name_type!(
    /// A version name. Versions are names, not numbers: Lockstep orders them by when they
    /// were live, never by comparing strings.
    Version,
    MAX_VERSION_LEN,
    &['+']
);
name_type!(
    /// A transaction id: the release id for releases, chosen by the client or the
    /// coordinator, and the idempotency key of every protocol message.
    TxId,
    MAX_NAME_LEN,
    &[]
);
impl TxId {
    /// An id the coordinator derives from others (`revert-<id>`, `rollback-to-<n>`,
    /// `promote-<from>-<cp>-to-<to>`, `<hint>-<n>`): `text` itself when it is a valid
    /// id, otherwise cut to fit and ended with `-` and 8 hex digits of a hash of the
    /// whole text, so a derived id always fits the limit and two different texts stay
    /// two different ids. The hash (FNV-1a 32) is fixed here, never a std hasher, so
    /// the same text gives the same id after an upgrade (retries stay idempotent).
    pub fn derived(text: &str) -> Self {
        if check("id", text, MAX_NAME_LEN, &[]).is_ok() {
            return Self(text.to_string());
        }
        let hash = text.bytes().fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        let keep: String = text
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .take(MAX_NAME_LEN - 9)
            .collect();
        let keep = keep.trim_start_matches('.');
        Self(format!("{keep}-{hash:08x}"))
    }
}

name_type!(
    /// An environment (dev, hardening, production...). Empty in a request means
    /// [`crate::DEFAULT_ENVIRONMENT`].
    Environment,
    MAX_NAME_LEN,
    &[]
);

impl Environment {
    /// Parses an environment, mapping "" to the default one.
    pub fn parse_or_default(field: &str, value: &str) -> Result<Self, FieldError> {
        if value.is_empty() {
            Ok(Self(crate::DEFAULT_ENVIRONMENT.to_string()))
        } else {
            Self::parse(field, value)
        }
    }
}

impl Default for Environment {
    fn default() -> Self {
        Self(crate::DEFAULT_ENVIRONMENT.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_with_a_slash_is_refused_with_the_field_named() {
        let err = Version::parse("components[1].version", "../etc").expect_err("must be refused");
        assert_eq!(err.field, "components[1].version");
        assert!(err.reason.contains("'.'"), "{err}");
        let err = Version::parse("v", "a/b").expect_err("must be refused");
        assert!(err.reason.contains("'/'"), "{err}");
    }

    #[test]
    fn empty_and_oversized_names_are_refused() {
        assert_eq!(
            ProjectName::parse("name", "")
                .expect_err("must be refused")
                .reason,
            "must not be empty"
        );
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert!(
            ProjectName::parse("name", &long)
                .expect_err("must be refused")
                .reason
                .contains("limit")
        );
    }

    #[test]
    fn ordinary_names_pass() {
        assert_eq!(
            Version::parse("v", "T4A+build.7").unwrap().as_str(),
            "T4A+build.7"
        );
        assert_eq!(
            Environment::parse_or_default("e", "").unwrap().as_str(),
            "default"
        );
    }

    #[test]
    fn derived_ids_always_fit_and_stay_distinct() {
        let long = "r".repeat(MAX_NAME_LEN);
        let revert = TxId::derived(&format!("revert-{long}"));
        let again = TxId::derived(&format!("revert-{long}-2"));
        for id in [&revert, &again] {
            assert!(id.as_str().len() <= MAX_NAME_LEN, "{id}");
            TxId::parse("id", id.as_str()).expect("a derived id is a valid id");
        }
        assert_ne!(revert, again);
        assert_eq!(revert, TxId::derived(&format!("revert-{long}")), "stable");
        assert_eq!(TxId::derived("revert-T4").as_str(), "revert-T4");
    }
}
