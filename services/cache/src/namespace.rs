//! Namespaces: every caller's keys and tags live under its own, and no call crosses them.

use std::sync::Arc;

use boardroom_runtime::auth::CallerIdentity;

use crate::error::CacheServiceError;

/// Longest namespace.
const MAX_NAMESPACE_BYTES: usize = 64;

/// A validated namespace. Its characters (`[A-Za-z0-9_.-]`) exclude the `:` that ends it in
/// a stored key, so `a` + `b:c` and `a:b` + `c` can never meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// `<namespace>:`, the prefix of its keys and tags in the shared cache.
    prefix: Arc<str>,
}

fn valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAMESPACE_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl Namespace {
    /// The namespace of a call: the caller's identity when authenticated (`requested` must
    /// then be empty or the same), else `requested`, which must be a valid name.
    pub fn resolve(
        caller: Option<&CallerIdentity>,
        requested: &str,
    ) -> Result<Self, CacheServiceError> {
        let name = match caller {
            Some(caller) if requested.is_empty() || requested == caller.name() => caller.name(),
            Some(caller) => {
                return Err(CacheServiceError::PermissionDenied(format!(
                    "caller `{}` may only use its own namespace, not `{requested}`",
                    caller.name()
                )));
            }
            None if requested.is_empty() => {
                return Err(CacheServiceError::invalid(
                    "namespace",
                    "required (no caller identity to take it from)",
                ));
            }
            None => requested,
        };
        if !valid(name) {
            return Err(match caller {
                Some(_) => CacheServiceError::PermissionDenied(format!(
                    "caller `{name}` is not usable as a namespace ([A-Za-z0-9_.-], at most {MAX_NAMESPACE_BYTES} bytes)"
                )),
                None => CacheServiceError::invalid(
                    "namespace",
                    format!("must be 1 to {MAX_NAMESPACE_BYTES} of [A-Za-z0-9_.-]"),
                ),
            });
        }
        Ok(Self {
            prefix: format!("{name}:").into(),
        })
    }

    /// The key in the shared cache.
    pub fn key(&self, key: &str) -> String {
        let mut full = String::with_capacity(self.prefix.len() + key.len());
        full.push_str(&self.prefix);
        full.push_str(key);
        full
    }

    /// A key or tag of this namespace, as its caller knows it; `None` for another's.
    pub fn strip<'a>(&self, full: &'a str) -> Option<&'a str> {
        full.strip_prefix(&*self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(name: &str) -> CallerIdentity {
        CallerIdentity(name.into())
    }

    #[test]
    fn an_authenticated_caller_gets_its_own_namespace_and_no_other() {
        let ns = Namespace::resolve(Some(&caller("conversation")), "").expect("own");
        assert_eq!(ns.key("k"), "conversation:k");
        assert!(Namespace::resolve(Some(&caller("conversation")), "conversation").is_ok());
        assert!(matches!(
            Namespace::resolve(Some(&caller("conversation")), "session"),
            Err(CacheServiceError::PermissionDenied(_))
        ));
    }

    #[test]
    fn without_identity_the_field_is_required_and_checked() {
        for bad in ["", "a:b", "with space", &"x".repeat(65)] {
            assert!(
                matches!(
                    Namespace::resolve(None, bad),
                    Err(CacheServiceError::InvalidArgument(_))
                ),
                "{bad:?}"
            );
        }
        let ns = Namespace::resolve(None, "team-a.v1").expect("valid");
        assert_eq!(ns.strip("team-a.v1:key"), Some("key"));
        assert_eq!(ns.strip("team-b:key"), None);
        assert_eq!(ns.strip("team-a.v1x:key"), None);
    }
}
