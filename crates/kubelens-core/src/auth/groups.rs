//! Group policy: which token groups grant access, and which make the caller an admin.
//!
//! Keycloak's Group Membership mapper emits full paths (`/k8s-logs-access`, nested groups as
//! `/parent/child`) when "full group path" is on, and plain names otherwise. A configured
//! plain name therefore matches the top-level full path and the plain name, and nothing else:
//! not a nested group of the same name (`/other/k8s-logs-access`, which anyone allowed to
//! create subgroups could add), not a longer name (`/k8s-logs-access-evil`), not a case
//! variant. A configured full path (`/a/b`) matches exactly that path.

/// One configured group, pre-computed for cheap matching.
#[derive(Debug, Clone, PartialEq, Eq)]
enum GroupPattern {
    /// Configured with a leading `/`: exact match only.
    FullPath(String),
    /// Configured without a leading `/`: the plain name or its top-level full path.
    Name { plain: String, top_level_path: String },
}

impl GroupPattern {
    fn new(configured: &str) -> Self {
        let configured = configured.trim();
        if configured.starts_with('/') {
            Self::FullPath(configured.to_owned())
        } else {
            Self::Name { plain: configured.to_owned(), top_level_path: format!("/{configured}") }
        }
    }

    fn matches(&self, group: &str) -> bool {
        match self {
            Self::FullPath(path) => group == path,
            Self::Name { plain, top_level_path } => group == plain || group == top_level_path,
        }
    }
}

/// Decides access from the groups in a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPolicy {
    allowed: Vec<GroupPattern>,
    admin: Option<GroupPattern>,
}

impl GroupPolicy {
    /// Builds the policy from configured group names. An empty `admin` disables the admin role.
    pub fn new<S: AsRef<str>>(allowed: &[S], admin: &str) -> Self {
        let admin = (!admin.trim().is_empty()).then(|| GroupPattern::new(admin));
        Self { allowed: allowed.iter().map(|g| GroupPattern::new(g.as_ref())).collect(), admin }
    }

    /// True when any of `groups` is an allowed group.
    pub fn is_allowed<S: AsRef<str>>(&self, groups: &[S]) -> bool {
        groups.iter().any(|g| self.allowed.iter().any(|p| p.matches(g.as_ref())))
    }

    /// True when any of `groups` is the admin group.
    pub fn is_admin<S: AsRef<str>>(&self, groups: &[S]) -> bool {
        self.admin.as_ref().is_some_and(|p| groups.iter().any(|g| p.matches(g.as_ref())))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_match_top_level_paths_and_plain_names_only() {
        let policy = GroupPolicy::new(&["k8s-logs-access"], "k8s-admin-access");
        for ok in ["k8s-logs-access", "/k8s-logs-access"] {
            assert!(policy.is_allowed(&[ok]), "{ok}");
        }
        for bad in [
            "/other/k8s-logs-access",
            "other/k8s-logs-access",
            "/k8s-logs-access-evil",
            "k8s-logs-access-evil",
            "/K8S-LOGS-ACCESS",
            "K8s-Logs-Access",
            "//k8s-logs-access",
            "/k8s-logs-access/",
            " k8s-logs-access",
            "",
            "/",
        ] {
            assert!(!policy.is_allowed(&[bad]), "{bad:?} must not match");
        }
        assert!(!policy.is_allowed::<&str>(&[]));
        assert!(policy.is_allowed(&["/k8s-logs-access-evil", "/k8s-logs-access"]));
    }

    #[test]
    fn full_paths_match_exactly() {
        let policy = GroupPolicy::new(&["/teams/logs"], "");
        assert!(policy.is_allowed(&["/teams/logs"]));
        for bad in ["teams/logs", "logs", "/logs", "/teams/logs/x", "/x/teams/logs", "/Teams/logs"] {
            assert!(!policy.is_allowed(&[bad]), "{bad}");
        }
        assert!(!policy.is_admin(&["/teams/logs", ""]));
    }

    #[test]
    fn admin_uses_the_same_matching() {
        let policy = GroupPolicy::new(&["k8s-logs-access"], "k8s-admin-access");
        assert!(policy.is_admin(&["/k8s-admin-access"]));
        assert!(policy.is_admin(&["k8s-admin-access"]));
        assert!(!policy.is_admin(&["/x/k8s-admin-access", "/k8s-admin-access-2", "/K8S-ADMIN-ACCESS"]));
    }
}
