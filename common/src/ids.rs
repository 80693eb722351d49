//! Identifier newtypes, so a job id can never be passed where a customer is expected.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

macro_rules! id_type {
    ($name:ident, $what:literal) => {
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Ids appear in etcd keys, object paths and slot names, so they are
            /// restricted to lowercase letters, digits, `-` and `_`.
            pub fn parse(raw: &str) -> Result<Self> {
                let valid_char =
                    |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
                if raw.is_empty() || raw.len() > 48 || !raw.chars().all(valid_char) {
                    return Err(Error::Spec(format!(
                        concat!(
                            $what,
                            " {:?} is not valid: use 1 to 48 characters from a-z, 0-9, '-' and '_'"
                        ),
                        raw
                    )));
                }
                Ok(Self(raw.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(raw: String) -> Result<Self> {
                Self::parse(&raw)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

id_type!(JobId, "job id");
id_type!(CustomerId, "customer");

/// A partition is numbered within its job; numbers are dense from 0.
pub type PartitionNo = u32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_reject_characters_unsafe_in_keys_and_paths() {
        assert!(JobId::parse("acme-onboarding_2").is_ok());
        for bad in ["", "Acme", "a/b", "a b", "a..b", &"x".repeat(49)] {
            assert!(JobId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
