//! Who may call the HTTP API: bearer tokens, each held under an operator's name.
//!
//! The orchestrator reads a tokens file (`name token` per line, 0600) and creates one with a
//! single random `admin` token when none exists; the CLI sends one token, read from its own file
//! or the environment. Tokens are compared in constant time and never printed.

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Bytes of randomness in a generated token (hex-encoded: 64 characters).
const TOKEN_BYTES: usize = 32;
/// The shortest token accepted: a guessable one is no protection.
pub const MIN_TOKEN_CHARS: usize = 32;
/// The operator name a generated tokens file gives its one token.
pub const DEFAULT_OPERATOR: &str = "admin";

/// Why a token or tokens file cannot be used.
#[derive(Debug, Error)]
pub enum AuthError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Others than the owner may read the file: its tokens must be taken as leaked.
    #[error(
        "{path} has mode {mode:o}: a tokens file must be readable by its owner only (chmod 600)"
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A line or token is not what the format allows.
    #[error("{what}: {why}")]
    Invalid {
        /// Where (file and line, or "token").
        what: String,
        /// What is wrong.
        why: String,
    },
}

/// A bearer token. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(…)")
    }
}

impl ApiToken {
    /// A new random token from the kernel's CSPRNG.
    pub fn generate() -> Result<Self, AuthError> {
        let mut bytes = [0u8; TOKEN_BYTES];
        let io = |source| AuthError::Io {
            path: "/dev/urandom".into(),
            source,
        };
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(io)?;
        Ok(Self(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// A token given by the user: at least [`MIN_TOKEN_CHARS`] of `[A-Za-z0-9._~+/=-]` (what an
    /// HTTP bearer credential may hold).
    pub fn parse(s: &str) -> Result<Self, AuthError> {
        let invalid = |why: String| AuthError::Invalid {
            what: "token".into(),
            why,
        };
        if s.len() < MIN_TOKEN_CHARS {
            return Err(invalid(format!(
                "{} characters; at least {MIN_TOKEN_CHARS} are needed",
                s.len()
            )));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "._~+/=-".contains(*c)))
        {
            return Err(invalid(format!(
                "character {c:?} is not allowed in a token"
            )));
        }
        Ok(Self(s.to_string()))
    }

    /// The token, for an `Authorization: Bearer` header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Equal to `presented`, in time that depends only on the lengths.
    fn matches(&self, presented: &[u8]) -> bool {
        let mine = self.0.as_bytes();
        mine.len() == presented.len()
            && mine
                .iter()
                .zip(presented)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// The token of a client's token file: the last field of its first line that is not blank
    /// or a comment, so a line of the orchestrator's tokens file (`name token`) works as well as
    /// a bare token.
    pub fn read_file(path: &Path) -> Result<Self, AuthError> {
        let text = read_private(path)?;
        let line = significant_lines(&text)
            .next()
            .ok_or_else(|| AuthError::Invalid {
                what: path.display().to_string(),
                why: "no token in the file".into(),
            })?;
        let token = line.1.split_whitespace().last().unwrap_or_default();
        Self::parse(token).map_err(|e| AuthError::Invalid {
            what: format!("{}:{}", path.display(), line.0),
            why: e.to_string(),
        })
    }
}

/// The tokens the orchestrator accepts, each under the operator name the audit log shows.
#[derive(Debug, Clone)]
pub struct ApiTokens {
    entries: Vec<(String, ApiToken)>,
}

impl ApiTokens {
    /// One token held by `operator` (tests, and a generated file).
    pub fn single(operator: &str, token: ApiToken) -> Self {
        Self {
            entries: vec![(operator.to_string(), token)],
        }
    }

    /// Parses a tokens file's text: `name token` per line; blank lines and `#` comments are
    /// skipped. Names are unique words; there must be at least one token.
    pub fn parse(text: &str, origin: &str) -> Result<Self, AuthError> {
        let mut entries: Vec<(String, ApiToken)> = Vec::new();
        for (n, line) in significant_lines(text) {
            let invalid = |why: String| AuthError::Invalid {
                what: format!("{origin}:{n}"),
                why,
            };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, token] = fields[..] else {
                return Err(invalid("expected `name token`".into()));
            };
            if entries.iter().any(|(other, _)| other == name) {
                return Err(invalid(format!("operator {name:?} appears twice")));
            }
            let token = ApiToken::parse(token).map_err(|e| invalid(e.to_string()))?;
            entries.push((name.to_string(), token));
        }
        if entries.is_empty() {
            return Err(AuthError::Invalid {
                what: origin.into(),
                why: "no tokens: nobody could call the API".into(),
            });
        }
        Ok(Self { entries })
    }

    /// Reads the tokens file at `path` (which only its owner may read).
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        Self::parse(&read_private(path)?, &path.display().to_string())
    }

    /// [`ApiTokens::load`], or when there is no file a new one (0600) holding one random token
    /// for [`DEFAULT_OPERATOR`]: an orchestrator is never reachable without a token.
    pub fn load_or_create(path: &Path) -> Result<Self, AuthError> {
        if path.exists() {
            return Self::load(path);
        }
        let token = ApiToken::generate()?;
        let io = |source| AuthError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        writeln!(
            file,
            "# MOSE HTTP API tokens: `operator token` per line (mose --token-file reads one)\n\
             {DEFAULT_OPERATOR} {}",
            token.expose()
        )
        .map_err(io)?;
        Ok(Self::single(DEFAULT_OPERATOR, token))
    }

    /// The operator holding `presented`, if any token matches it.
    pub fn operator_of(&self, presented: &str) -> Option<&str> {
        // Every entry is compared, so the time does not tell which one matched.
        self.entries.iter().fold(None, |found, (name, token)| {
            match token.matches(presented.as_bytes()) {
                true => Some(name.as_str()),
                false => found,
            }
        })
    }
}

/// The numbered lines of `text` that are neither blank nor comments.
fn significant_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

/// A secret file's text, refused when group or others may read it.
fn read_private(path: &Path) -> Result<String, AuthError> {
    let io = |source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(AuthError::Exposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    std::fs::read_to_string(path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: &str = "0123456789abcdef0123456789abcdef";
    const T2: &str = "fedcba9876543210fedcba9876543210";

    #[test]
    fn tokens_files_name_their_operators() {
        let tokens = ApiTokens::parse(&format!("# c\n\nalice {T1}\n bob {T2} \n"), "f").unwrap();
        assert_eq!(tokens.operator_of(T1), Some("alice"));
        assert_eq!(tokens.operator_of(T2), Some("bob"));
        assert_eq!(tokens.operator_of(&T1[1..]), None);
        assert_eq!(tokens.operator_of(""), None);
    }

    #[test]
    fn bad_tokens_files_are_clear_errors() {
        for (text, says) in [
            ("", "no tokens"),
            ("alice\n", "expected `name token`"),
            ("alice short\n", "at least 32"),
            (&format!("alice {T1}\nalice {T2}\n"), "appears twice"),
            (&format!("alice {T1}!\n"), "not allowed"),
        ] {
            let e = ApiTokens::parse(text, "tokens").unwrap_err().to_string();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_generated_file_is_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-tokens");
        let made = ApiTokens::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let token = ApiToken::read_file(&path).unwrap();
        assert_eq!(made.operator_of(token.expose()), Some(DEFAULT_OPERATOR));
        let again = ApiTokens::load_or_create(&path).unwrap();
        assert_eq!(again.operator_of(token.expose()), Some(DEFAULT_OPERATOR));
        assert!(!format!("{token:?}").contains(token.expose()));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            ApiTokens::load(&path),
            Err(AuthError::Exposed { mode: 0o644, .. })
        ));
    }
}
