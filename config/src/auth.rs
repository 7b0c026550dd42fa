//! `[auth]`: bearer tokens and the role each one carries.

use std::{collections::BTreeSet, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// `[auth]`. With no tokens every call is allowed (as on a loopback port);
/// with any, every call but health needs one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// `[[auth.tokens]]`: who may call, and with which role.
    pub tokens: Vec<TokenSettings>,
}

/// One `[[auth.tokens]]` entry. The token itself is never in the file:
/// either its SHA-256 digest or the path of a file holding it (a mounted
/// secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSettings {
    /// Who holds it, for logs and metrics.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The token's SHA-256 digest, 64 hex digits (`roadie-server hash-token`
    /// prints it).
    #[serde(default)]
    pub token_sha256: Option<String>,
    /// A file holding the token (surrounding whitespace ignored).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// What a token may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Get, BatchGet, GetRandom, Stats, Watch, and a Fetch answered from
    /// what is cached.
    Read,
    /// Adds Put, Delete, Invalidate, PublishEvent, and a Fetch that enqueues.
    Write,
    /// Adds the Jobs service.
    Admin,
}

impl Role {
    /// The name used in settings and messages.
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl AuthSettings {
    /// Checks names and that each token says where it is, once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut names = BTreeSet::new();
        for (index, token) in self.tokens.iter().enumerate() {
            let setting = |field: &str| format!("auth.tokens[{index}].{field}");
            if token.name.is_empty()
                || token.name.len() > 64
                || !token
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(ConfigError::new(
                    setting("name"),
                    "1 to 64 of A-Z, a-z, 0-9, '-', '_' and '.'",
                ));
            }
            if !names.insert(token.name.as_str()) {
                return Err(ConfigError::new(
                    setting("name"),
                    format!("{:?} is used by another token", token.name),
                ));
            }
            match (&token.token_sha256, &token.token_file) {
                (Some(digest), None) => {
                    if digest.len() != 64 || !digest.chars().all(|c| c.is_ascii_hexdigit()) {
                        return Err(ConfigError::new(
                            setting("token_sha256"),
                            "must be 64 hex digits (roadie-server hash-token prints them)",
                        ));
                    }
                }
                (None, Some(_)) => {}
                _ => {
                    return Err(ConfigError::new(
                        setting("token_sha256"),
                        "set exactly one of token_sha256 and token_file",
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, digest: Option<&str>, file: Option<&str>) -> TokenSettings {
        TokenSettings {
            name: name.to_owned(),
            role: Role::Read,
            token_sha256: digest.map(str::to_owned),
            token_file: file.map(PathBuf::from),
        }
    }

    #[test]
    fn each_token_names_one_source_and_a_unique_name() {
        let digest = "a".repeat(64);
        let ok = AuthSettings {
            tokens: vec![
                token("ci", Some(&digest), None),
                token("app", None, Some("/run/secrets/app")),
            ],
        };
        assert!(ok.validate().is_ok());
        for (tokens, field) in [
            (vec![token("ci", None, None)], "auth.tokens[0].token_sha256"),
            (
                vec![token("ci", Some(&digest), Some("/x"))],
                "auth.tokens[0].token_sha256",
            ),
            (
                vec![token("ci", Some("abc"), None)],
                "auth.tokens[0].token_sha256",
            ),
            (vec![token("", Some(&digest), None)], "auth.tokens[0].name"),
            (
                vec![
                    token("ci", Some(&digest), None),
                    token("ci", Some(&digest), None),
                ],
                "auth.tokens[1].name",
            ),
        ] {
            let error = AuthSettings { tokens }.validate().expect_err("refused");
            assert_eq!(error.setting, field, "{error}");
        }
    }

    #[test]
    fn roles_include_the_ones_before() {
        assert!(Role::Read < Role::Write && Role::Write < Role::Admin);
    }
}
