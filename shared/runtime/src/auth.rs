//! Caller authentication: one bearer token per calling service, compared in constant time.

use std::path::Path;
use std::sync::Arc;

use subtle::ConstantTimeEq;

use crate::config::{AuthConfig, Secret};

/// The authenticated caller of a request, found in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerIdentity(pub Arc<str>);

impl CallerIdentity {
    /// The caller's name (the key of its token).
    pub fn name(&self) -> &str {
        &self.0
    }
}

/// Checks bearer tokens against the configured callers.
#[derive(Clone)]
pub struct Authenticator {
    callers: Arc<[(CallerIdentity, Secret)]>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.callers.iter().map(|(c, _)| c.name()).collect();
        f.debug_struct("Authenticator")
            .field("callers", &names)
            .finish()
    }
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No `authorization: Bearer …` header.
    #[error("missing bearer token")]
    Missing,
    /// A token that no caller owns.
    #[error("invalid bearer token")]
    Invalid,
}

impl Authenticator {
    /// Builds from config; `None` when authentication is off. Tokens from `tokens_dir` (one file
    /// per caller) are added to those in `tokens`.
    pub fn from_config(config: &AuthConfig) -> anyhow::Result<Option<Self>> {
        if !config.enabled {
            return Ok(None);
        }
        let mut callers: Vec<(CallerIdentity, Secret)> = config
            .tokens
            .iter()
            .map(|(name, token)| (CallerIdentity(name.as_str().into()), token.clone()))
            .collect();
        if let Some(dir) = &config.tokens_dir {
            callers.extend(read_tokens_dir(dir)?);
        }
        callers.retain(|(_, token)| !token.is_empty());
        anyhow::ensure!(
            !callers.is_empty(),
            "auth is enabled but no caller has a token"
        );
        Ok(Some(Self {
            callers: callers.into(),
        }))
    }

    /// Finds the caller owning the token in an `authorization` header value. Every configured
    /// token is compared, so the time taken does not depend on which one matched.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<CallerIdentity, AuthError> {
        let header = authorization.ok_or(AuthError::Missing)?;
        let token = strip_bearer(header).ok_or(AuthError::Missing)?;
        let mut found: Option<&CallerIdentity> = None;
        for (caller, secret) in self.callers.iter() {
            if bool::from(secret.expose().as_bytes().ct_eq(token)) {
                found = Some(caller);
            }
        }
        found.cloned().ok_or(AuthError::Invalid)
    }
}

fn strip_bearer(header: &[u8]) -> Option<&[u8]> {
    let prefix = b"bearer ";
    if header.len() > prefix.len() && header[..prefix.len()].eq_ignore_ascii_case(prefix) {
        Some(header[prefix.len()..].trim_ascii())
    } else {
        None
    }
}

fn read_tokens_dir(dir: &Path) -> anyhow::Result<Vec<(CallerIdentity, Secret)>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("reading auth.tokens_dir {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Kubernetes Secret volumes hold `..data` links and dot-folders beside the keys.
        if name.starts_with('.') || !entry.path().is_file() {
            continue;
        }
        let token = std::fs::read_to_string(entry.path())?;
        out.push((CallerIdentity(name.into()), Secret::new(token.trim())));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator() -> Authenticator {
        let mut config = AuthConfig {
            enabled: true,
            ..AuthConfig::default()
        };
        config
            .tokens
            .insert("conversation".into(), Secret::new("tok-conv"));
        config
            .tokens
            .insert("gateway".into(), Secret::new("tok-gw"));
        Authenticator::from_config(&config)
            .expect("valid")
            .expect("enabled")
    }

    #[test]
    fn known_token_names_its_caller() {
        let caller = authenticator()
            .authenticate(Some(b"Bearer tok-gw"))
            .expect("known token");
        assert_eq!(caller.name(), "gateway");
    }

    #[test]
    fn missing_and_wrong_tokens_are_refused() {
        let auth = authenticator();
        assert_eq!(auth.authenticate(None), Err(AuthError::Missing));
        assert_eq!(
            auth.authenticate(Some(b"Basic abc")),
            Err(AuthError::Missing)
        );
        assert_eq!(
            auth.authenticate(Some(b"Bearer tok-gw2")),
            Err(AuthError::Invalid)
        );
        assert_eq!(auth.authenticate(Some(b"Bearer ")), Err(AuthError::Missing));
    }

    #[test]
    fn disabled_auth_builds_nothing() {
        assert!(
            Authenticator::from_config(&AuthConfig::default())
                .expect("valid")
                .is_none()
        );
    }

    #[test]
    fn tokens_dir_is_read_like_a_mounted_secret() {
        let dir = std::env::temp_dir().join(format!("boardroom-auth-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("..data")).expect("mkdir");
        std::fs::write(dir.join("session"), "tok-session\n").expect("write");
        let config = AuthConfig {
            enabled: true,
            tokens_dir: Some(dir.clone()),
            ..AuthConfig::default()
        };
        let auth = Authenticator::from_config(&config)
            .expect("valid")
            .expect("enabled");
        assert_eq!(
            auth.authenticate(Some(b"Bearer tok-session"))
                .expect("ok")
                .name(),
            "session"
        );
        std::fs::remove_dir_all(dir).ok();
    }
}
