//! Who may see what, inside the cluster: the namespace allowlist and the pod/app filters.
//!
//! Every endpoint goes through an [`AccessPolicy`] before touching a cache or the API server:
//!
//! 1. [`AccessPolicy::namespace`] turns a client-supplied namespace into an
//!    [`AllowedNamespace`]. Malformed names are [`AccessError::BadName`] (400); well-formed
//!    names outside the allowlist are [`AccessError::NotFound`] (404), exactly like a namespace
//!    that does not exist. Everything in [`crate::cluster`] takes an `&AllowedNamespace`, so
//!    skipping this step does not compile.
//! 2. [`AccessPolicy::pod_name`] / [`AccessPolicy::app_name`] / [`AccessPolicy::container_name`]
//!    validate the other path segments (DNS-1123) before they reach a lookup or a URL.
//! 3. [`AccessPolicy::pod_visible`] / [`AccessPolicy::app_visible`] apply the include/exclude
//!    regexes and the label exclusion. A hidden object answers 404 on direct lookup, like a
//!    missing one, and is absent from lists and change streams. [`crate::cluster::Cluster`]
//!    applies them for you; code that reads pods some other way must call them itself.
//!
//! Nothing here widens a query: `*`, `all` and the empty string are never wildcards (the
//! allowlist holds exact names, checked by config validation).
//!
//! ```
//! use kubelens_core::config::{FiltersConfig, NamespacesConfig};
//! use kubelens_core::policy::{AccessError, AccessPolicy};
//!
//! let namespaces = NamespacesConfig { allowed: vec!["team-a".into()] };
//! let policy = AccessPolicy::new(&namespaces, &FiltersConfig::default()).unwrap();
//! assert!(policy.namespace("team-a").is_ok());
//! assert!(matches!(policy.namespace("team-b"), Err(AccessError::NotFound { .. })));
//! assert!(matches!(policy.namespace("*"), Err(AccessError::BadName { .. })));
//! assert!(matches!(policy.namespace("all"), Err(AccessError::NotFound { .. })));
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use regex::RegexSet;

use crate::api::OwnerApp;
use crate::config::{FiltersConfig, NameFilterConfig, NamespacesConfig};
use crate::names::{is_dns1123_label, is_dns1123_subdomain};

/// Why a name was refused. Messages never echo the client's input (it may hold NUL bytes,
/// look-alike characters or 300 characters of noise).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// The name cannot be a Kubernetes name (400).
    #[error("invalid {what} name: {rule}")]
    BadName {
        /// `namespace`, `pod`, `app` or `container`.
        what: &'static str,
        /// The rule it breaks, for the client.
        rule: &'static str,
    },
    /// Missing, outside the allowlist, or filtered out: indistinguishable on purpose (404).
    #[error("{what} not found")]
    NotFound {
        /// `namespace`, `pod`, `app` or `container`.
        what: &'static str,
    },
}

/// The filters could not be built (only possible when the config skipped validation).
#[derive(Debug, thiserror::Error)]
#[error("{key}: invalid regex: {source}")]
pub struct PolicyConfigError {
    /// Config key of the offending list, e.g. `filters.pods.exclude`.
    pub key: String,
    /// The regex error.
    #[source]
    pub source: regex::Error,
}

/// A namespace that passed [`AccessPolicy::namespace`]: well-formed and allowlisted.
///
/// Only this module creates it, so holding one proves the check ran.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AllowedNamespace(String);

impl AllowedNamespace {
    /// The namespace name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AllowedNamespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for AllowedNamespace {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone)]
struct NameFilter {
    include: Option<RegexSet>,
    exclude: Option<RegexSet>,
}

impl NameFilter {
    fn new(config: &NameFilterConfig, key: &str) -> Result<Self, PolicyConfigError> {
        let build = |patterns: &[String], which: &str| -> Result<Option<RegexSet>, PolicyConfigError> {
            if patterns.is_empty() {
                return Ok(None);
            }
            RegexSet::new(patterns)
                .map(Some)
                .map_err(|source| PolicyConfigError { key: format!("{key}.{which}"), source })
        };
        Ok(Self { include: build(&config.include, "include")?, exclude: build(&config.exclude, "exclude")? })
    }

    fn passes(&self, name: &str) -> bool {
        self.include.as_ref().is_none_or(|set| set.is_match(name))
            && !self.exclude.as_ref().is_some_and(|set| set.is_match(name))
    }
}

/// One `filters.exclude_labels` entry.
#[derive(Debug, Clone)]
enum LabelRule {
    /// Hidden when the label is present, whatever its value (`"*"` in config).
    Present,
    /// Hidden when the label has exactly this value.
    Equals(String),
}

/// The namespace allowlist plus the visibility filters, built once from config.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    allowed: BTreeSet<String>,
    pods: NameFilter,
    apps: NameFilter,
    exclude_labels: Vec<(String, LabelRule)>,
}

/// Rules quoted in [`AccessError::BadName`].
const LABEL_RULE: &str = "expected a DNS-1123 label (lowercase letters, digits and '-', at most 63 characters)";
const SUBDOMAIN_RULE: &str =
    "expected a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', at most 253 characters)";

impl AccessPolicy {
    /// Builds the policy from the (validated) config sections.
    ///
    /// Allowlist entries that are not valid namespace names are dropped here as a second line
    /// of defence; config validation already rejects them with the offending key.
    pub fn new(namespaces: &NamespacesConfig, filters: &FiltersConfig) -> Result<Self, PolicyConfigError> {
        let allowed = namespaces.allowed.iter().filter(|ns| is_dns1123_label(ns)).cloned().collect();
        let exclude_labels = filters
            .exclude_labels
            .iter()
            .map(|(key, value)| {
                let rule = if value == "*" { LabelRule::Present } else { LabelRule::Equals(value.clone()) };
                (key.clone(), rule)
            })
            .collect();
        Ok(Self {
            allowed,
            pods: NameFilter::new(&filters.pods, "filters.pods")?,
            apps: NameFilter::new(&filters.apps, "filters.apps")?,
            exclude_labels,
        })
    }

    /// A policy that allows no namespace: the fail-closed fallback when filters cannot be
    /// built.
    pub fn deny_all() -> Self {
        let none = NameFilter { include: None, exclude: None };
        Self { allowed: BTreeSet::new(), pods: none.clone(), apps: none, exclude_labels: Vec::new() }
    }

    /// Shorthand for [`AccessPolicy::new`] from a whole [`crate::Config`].
    pub fn from_config(config: &crate::Config) -> Result<Self, PolicyConfigError> {
        Self::new(&config.namespaces, &config.filters)
    }

    /// Checks a client-supplied namespace: malformed → `BadName`, not allowlisted → `NotFound`.
    ///
    /// Whether the namespace exists in the cluster is the cache's question
    /// ([`crate::cluster::Cluster::namespace`]).
    pub fn namespace(&self, name: &str) -> Result<AllowedNamespace, AccessError> {
        if !is_dns1123_label(name) {
            return Err(AccessError::BadName { what: "namespace", rule: LABEL_RULE });
        }
        if !self.allowed.contains(name) {
            return Err(AccessError::NotFound { what: "namespace" });
        }
        Ok(AllowedNamespace(name.to_owned()))
    }

    /// The allowlist, sorted. Each entry is already checked.
    pub fn allowed_namespaces(&self) -> impl Iterator<Item = AllowedNamespace> + '_ {
        self.allowed.iter().map(|ns| AllowedNamespace(ns.clone()))
    }

    /// Validates a pod name from a path or query (DNS-1123 subdomain).
    pub fn pod_name<'a>(&self, name: &'a str) -> Result<&'a str, AccessError> {
        subdomain("pod", name)
    }

    /// Validates an app (workload) name (DNS-1123 subdomain).
    pub fn app_name<'a>(&self, name: &'a str) -> Result<&'a str, AccessError> {
        subdomain("app", name)
    }

    /// Validates a container name (DNS-1123 label).
    pub fn container_name<'a>(&self, name: &'a str) -> Result<&'a str, AccessError> {
        if is_dns1123_label(name) {
            Ok(name)
        } else {
            Err(AccessError::BadName { what: "container", rule: LABEL_RULE })
        }
    }

    /// True when `filters.exclude_labels` has any rule: objects whose labels are unknown must
    /// then be treated as hidden.
    pub fn has_label_rules(&self) -> bool {
        !self.exclude_labels.is_empty()
    }

    /// True when `labels` carry an excluded label.
    pub fn labels_hidden(&self, labels: &BTreeMap<String, String>) -> bool {
        self.exclude_labels.iter().any(|(key, rule)| match (rule, labels.get(key)) {
            (LabelRule::Present, Some(_)) => true,
            (LabelRule::Equals(expected), Some(actual)) => expected == actual,
            (_, None) => false,
        })
    }

    /// Whether an app (top-level workload) is visible: its name passes `filters.apps` and its
    /// own labels carry no excluded label.
    pub fn app_visible(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.apps.passes(name) && !self.labels_hidden(labels)
    }

    /// Whether a pod is visible: its name passes `filters.pods`, its labels carry no excluded
    /// label, and the app that owns it (if any) is visible.
    ///
    /// `owner` is the owning app with that workload's labels (`None` for bare pods). Hiding an
    /// app hides its pods too: otherwise its logs would stay reachable pod by pod.
    pub fn pod_visible(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        owner: Option<(&OwnerApp, &BTreeMap<String, String>)>,
    ) -> bool {
        self.pods.passes(name)
            && !self.labels_hidden(labels)
            && owner.is_none_or(|(app, app_labels)| self.app_visible(&app.name, app_labels))
    }

    /// Whether a namespace object is visible (its labels carry no excluded label). The name
    /// itself was checked by [`AccessPolicy::namespace`].
    pub fn namespace_visible(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.labels_hidden(labels)
    }
}

fn subdomain<'a>(what: &'static str, name: &'a str) -> Result<&'a str, AccessError> {
    if is_dns1123_subdomain(name) {
        Ok(name)
    } else {
        Err(AccessError::BadName { what, rule: SUBDOMAIN_RULE })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AppKind;

    fn policy(allowed: &[&str], yaml_filters: &str) -> AccessPolicy {
        let filters: FiltersConfig =
            if yaml_filters.is_empty() { FiltersConfig::default() } else { serde_yaml_ng::from_str(yaml_filters).unwrap() };
        let namespaces = NamespacesConfig { allowed: allowed.iter().map(|s| s.to_string()).collect() };
        AccessPolicy::new(&namespaces, &filters).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn namespace_allowlist_table() {
        let p = policy(&["team-a", "team-b"], "");
        let long = "a".repeat(300);
        let cases: &[(&str, Option<&str>)] = &[
            // (input, Some(expected error kind) or None for allowed)
            ("team-a", None),
            ("team-b", None),
            ("secret-ns", Some("not_found")),
            ("all", Some("not_found")),
            ("default", Some("not_found")),
            ("kube-system", Some("not_found")),
            ("*", Some("bad")),
            ("", Some("bad")),
            ("..", Some("bad")),
            ("%2e%2e", Some("bad")),
            ("team-a%2F..", Some("bad")),
            ("team-a/../secret-ns", Some("bad")),
            ("team-a\0", Some("bad")),
            ("Team-A", Some("bad")),
            ("team\u{2010}a", Some("bad")), // unicode hyphen look-alike
            ("tеam-a", Some("bad")),        // Cyrillic е
            ("team-a ", Some("bad")),
            (&long, Some("bad")),
        ];
        for (input, expected) in cases {
            let got = p.namespace(input);
            match (expected, &got) {
                (None, Ok(ns)) => assert_eq!(ns.as_str(), *input),
                (Some("not_found"), Err(AccessError::NotFound { what: "namespace" })) => {}
                (Some("bad"), Err(AccessError::BadName { what: "namespace", .. })) => {}
                _ => panic!("{input:?}: expected {expected:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn errors_never_echo_input() {
        let p = policy(&["team-a"], "");
        let err = p.namespace("evil<script>").unwrap_err().to_string();
        assert!(!err.contains("evil") && !err.contains("script"), "{err}");
        let err = p.pod_name("x\0y").unwrap_err().to_string();
        assert!(!err.contains('\0'), "{err}");
    }

    #[test]
    fn allowlist_entries_that_are_not_names_never_match() {
        // Config validation rejects these; the policy must not widen anything even if it
        // is built from an unvalidated config.
        let p = policy(&["*", "", "all"], "");
        assert!(p.namespace("team-a").is_err());
        assert_eq!(p.allowed_namespaces().map(|n| n.to_string()).collect::<Vec<_>>(), vec!["all"]);
        assert!(p.namespace("all").is_ok(), "an exact entry named `all` is just a namespace");
    }

    #[test]
    fn pod_and_app_names() {
        let p = policy(&["team-a"], "");
        for ok in ["web-7d9f-x2k4", "db-0", "a.b"] {
            assert!(p.pod_name(ok).is_ok(), "{ok}");
            assert!(p.app_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "..", "a/b", "%2F", "*", "Web", &"a".repeat(300), "pod\u{0430}", "x\0"] {
            assert!(matches!(p.pod_name(bad), Err(AccessError::BadName { what: "pod", .. })), "{bad:?}");
            assert!(matches!(p.app_name(bad), Err(AccessError::BadName { what: "app", .. })), "{bad:?}");
        }
        assert!(p.container_name("app").is_ok());
        assert!(p.container_name("a.b").is_err());
    }

    #[test]
    fn name_filters_table() {
        let p = policy(
            &["team-a"],
            "pods:\n  include: ['^web-', '^db-']\n  exclude: ['-debug$']\napps:\n  exclude: ['^internal-']\n",
        );
        let none = BTreeMap::new();
        let cases = [
            ("web-1", true),
            ("db-0", true),
            ("web-debug", false), // excluded wins over included
            ("agent-x", false),   // not included
            ("xweb-1", false),    // include is a regex: anchored by the pattern, not by us
        ];
        for (name, visible) in cases {
            assert_eq!(p.pod_visible(name, &none, None), visible, "{name}");
        }
        assert!(p.app_visible("web", &none));
        assert!(!p.app_visible("internal-api", &none));
        // A pod whose app is hidden is hidden, even when its own name passes.
        let app = OwnerApp { kind: AppKind::Deployment, name: "internal-api".into() };
        assert!(!p.pod_visible("web-1", &none, Some((&app, &none))));
        let app = OwnerApp { kind: AppKind::Deployment, name: "web".into() };
        assert!(p.pod_visible("web-1", &none, Some((&app, &none))));
    }

    #[test]
    fn empty_filters_show_everything_and_star_is_not_a_regex_wildcard_for_names() {
        let p = policy(&["team-a"], "");
        assert!(p.pod_visible("anything", &BTreeMap::new(), None));
        assert!(p.app_visible("anything", &BTreeMap::new()));
    }

    #[test]
    fn label_exclusion_table() {
        let p = policy(&["team-a"], "exclude_labels:\n  kubelens.io/hide: 'true'\n  internal: '*'\n");
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[], false),
            (&[("kubelens.io/hide", "true")], true),
            (&[("kubelens.io/hide", "false")], false),
            (&[("kubelens.io/hide", "TRUE")], false),
            (&[("internal", "")], true),
            (&[("internal", "yes"), ("app", "web")], true),
            (&[("app", "web")], false),
            (&[("kubelens.io/hide-not", "true")], false),
        ];
        for (pairs, hidden) in cases {
            let l = labels(pairs);
            assert_eq!(p.labels_hidden(&l), *hidden, "{pairs:?}");
            assert_eq!(p.pod_visible("pod", &l, None), !hidden, "{pairs:?}");
            assert_eq!(p.app_visible("app", &l), !hidden, "{pairs:?}");
            assert_eq!(p.namespace_visible(&l), !hidden, "{pairs:?}");
        }
        // The owning workload's labels hide its pods.
        let app = OwnerApp { kind: AppKind::StatefulSet, name: "db".into() };
        let hidden_app = labels(&[("internal", "1")]);
        assert!(!p.pod_visible("db-0", &BTreeMap::new(), Some((&app, &hidden_app))));
    }

    #[test]
    fn invalid_regex_names_its_key() {
        let filters = FiltersConfig {
            apps: NameFilterConfig { include: vec![], exclude: vec!["(".into()] },
            ..FiltersConfig::default()
        };
        let err = AccessPolicy::new(&NamespacesConfig::default(), &filters).unwrap_err();
        assert_eq!(err.key, "filters.apps.exclude");
    }
}
