//! Per-user authorization by the cluster's own RBAC (`auth.kubernetes_authorization.mode:
//! subject_access_review`).
//!
//! The allowlist and the group policy decide what KubeLens may show at all. In this mode the
//! API server also decides, per user: before a namespace's pods, a pod or its logs are
//! served, a `SubjectAccessReview` asks whether *this user* (username and groups from the
//! token, with the API server's OIDC prefixes) may `list pods`, `get pods` or `get pods/log`
//! there. Only the answer is per user: the log upstream stays one request per pod, opened
//! with the backend's ServiceAccount, however many users watch it. Impersonation would
//! instead need one upstream per user (and `impersonate` rights), which is why it is not used.
//!
//! Answers (allowed and denied) are cached for `cache_ttl`, bounded by `cache_max_bytes`
//! (each entry weighed by its key's size); concurrent lookups of one key send one review.
//! A review that fails (API server unreachable, the ServiceAccount lacks
//! `create subjectaccessreviews`) is not cached and fails closed: [`AuthzError`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::{Api, PostParams};

use crate::auth::Principal;
use crate::config::{KubernetesAuthorizationConfig, KubernetesUsernameClaim};

/// What a request needs in its namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// `list pods`: the namespace's pods, apps, archived pods, the pod change stream.
    ListPods,
    /// `get pods`: one pod, its details and usage.
    GetPods,
    /// `get pods/log`: logs (pod, app, search, download), live or archived.
    GetPodLogs,
}

impl Permission {
    /// `(verb, resource, subresource)` as RBAC names them.
    pub fn attributes(self) -> (&'static str, &'static str, Option<&'static str>) {
        match self {
            Permission::ListPods => ("list", "pods", None),
            Permission::GetPods => ("get", "pods", None),
            Permission::GetPodLogs => ("get", "pods", Some("log")),
        }
    }
}

/// A review could not be answered; the request fails closed (503).
#[derive(Debug, thiserror::Error)]
#[error("the Kubernetes authorization check failed: {0}")]
pub struct AuthzError(String);

/// One cached question: who asks for what where.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ReviewKey {
    user: String,
    groups: Vec<String>,
    namespace: String,
    permission: Permission,
}

impl ReviewKey {
    /// Bytes this entry holds (its strings plus a fixed overhead for moka's bookkeeping).
    fn weight(&self) -> u32 {
        const ENTRY_OVERHEAD: usize = 160;
        let bytes = ENTRY_OVERHEAD
            + self.user.len()
            + self.namespace.len()
            + self.groups.iter().map(|g| g.len() + std::mem::size_of::<String>()).sum::<usize>();
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// Asks the API server whether a user may do something, with a bounded answer cache.
#[derive(Clone)]
pub struct KubernetesAuthorizer {
    inner: Arc<Inner>,
}

struct Inner {
    reviews: Api<SubjectAccessReview>,
    cache: moka::future::Cache<ReviewKey, bool>,
    username_claim: KubernetesUsernameClaim,
    username_prefix: String,
    groups_prefix: String,
    sent: AtomicU64,
}

impl std::fmt::Debug for KubernetesAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesAuthorizer").field("cached", &self.inner.cache.entry_count()).finish_non_exhaustive()
    }
}

impl KubernetesAuthorizer {
    /// An authorizer sending reviews through `client` (the process's rate-limited client).
    pub fn new(client: kube::Client, config: &KubernetesAuthorizationConfig) -> Self {
        let cache = moka::future::Cache::builder()
            .time_to_live(config.cache_ttl)
            .weigher(|key: &ReviewKey, _: &bool| key.weight())
            .max_capacity(config.cache_max_bytes)
            .build();
        Self {
            inner: Arc::new(Inner {
                reviews: Api::all(client),
                cache,
                username_claim: config.username_claim,
                username_prefix: config.username_prefix.clone(),
                groups_prefix: config.groups_prefix.clone(),
                sent: AtomicU64::new(0),
            }),
        }
    }

    /// Whether `principal` may do `permission` in `namespace` (cached; see the module docs).
    pub async fn allows(&self, principal: &Principal, namespace: &str, permission: Permission) -> Result<bool, AuthzError> {
        let key = self.key(principal, namespace, permission);
        let inner = Arc::clone(&self.inner);
        let review = review_of(&key);
        self.inner
            .cache
            .try_get_with(key, async move {
                inner.sent.fetch_add(1, Ordering::Relaxed);
                let answer = inner.reviews.create(&PostParams::default(), &review).await.map_err(|err| AuthzError(err.to_string()))?;
                Ok::<bool, AuthzError>(answer.status.is_some_and(|s| s.allowed && s.denied != Some(true)))
            })
            .await
            .map_err(|err: Arc<AuthzError>| AuthzError(err.0.clone()))
    }

    /// Reviews sent to the API server so far (cache misses).
    pub fn reviews_sent(&self) -> u64 {
        self.inner.sent.load(Ordering::Relaxed)
    }

    fn key(&self, principal: &Principal, namespace: &str, permission: Permission) -> ReviewKey {
        let inner = &self.inner;
        let name = match inner.username_claim {
            KubernetesUsernameClaim::PreferredUsername => &principal.username,
            KubernetesUsernameClaim::Sub => &principal.subject,
        };
        ReviewKey {
            user: format!("{}{name}", inner.username_prefix),
            groups: principal.groups.iter().map(|g| format!("{}{g}", inner.groups_prefix)).collect(),
            namespace: namespace.to_owned(),
            permission,
        }
    }
}

/// The review the API server is sent for `key`.
fn review_of(key: &ReviewKey) -> SubjectAccessReview {
    let (verb, resource, subresource) = key.permission.attributes();
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(key.user.clone()),
            groups: Some(key.groups.clone()),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(key.namespace.clone()),
                verb: Some(verb.to_owned()),
                group: Some(String::new()),
                resource: Some(resource.to_owned()),
                subresource: subresource.map(str::to_owned),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn principal() -> Principal {
        Principal {
            subject: "0b5c-sub".into(),
            username: "viewer".into(),
            groups: vec!["/k8s-logs-access".into()],
            is_admin: false,
            expires_at: 0,
        }
    }

    fn authorizer(config: &KubernetesAuthorizationConfig) -> KubernetesAuthorizer {
        // Never contacted: these tests only build keys and reviews.
        let client = kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
        KubernetesAuthorizer::new(client, config)
    }

    #[tokio::test]
    async fn the_review_names_the_prefixed_user_groups_and_the_rbac_attributes() {
        let config = KubernetesAuthorizationConfig { username_prefix: "oidc:".into(), groups_prefix: "oidc:".into(), ..Default::default() };
        let key = authorizer(&config).key(&principal(), "team-a", Permission::GetPodLogs);
        let review = review_of(&key);
        assert_eq!(review.spec.user.as_deref(), Some("oidc:viewer"));
        assert_eq!(review.spec.groups, Some(vec!["oidc:/k8s-logs-access".to_owned()]));
        let attrs = review.spec.resource_attributes.unwrap();
        assert_eq!(attrs.namespace.as_deref(), Some("team-a"));
        assert_eq!(attrs.verb.as_deref(), Some("get"));
        assert_eq!(attrs.resource.as_deref(), Some("pods"));
        assert_eq!(attrs.subresource.as_deref(), Some("log"));
        assert_eq!(attrs.group.as_deref(), Some(""));
    }

    #[tokio::test]
    async fn the_username_comes_from_the_configured_claim() {
        let config = KubernetesAuthorizationConfig { username_claim: KubernetesUsernameClaim::Sub, ..Default::default() };
        let key = authorizer(&config).key(&principal(), "team-a", Permission::ListPods);
        assert_eq!(key.user, "0b5c-sub");
        assert_eq!(review_of(&key).spec.resource_attributes.unwrap_or_default().subresource, None);
    }

    #[tokio::test]
    async fn an_unreachable_api_server_fails_closed_and_is_not_cached() {
        let authorizer = authorizer(&KubernetesAuthorizationConfig::default());
        for sent in 1..=2 {
            assert!(authorizer.allows(&principal(), "team-a", Permission::ListPods).await.is_err());
            assert_eq!(authorizer.reviews_sent(), sent, "a failed review is asked again");
        }
    }

    #[test]
    fn an_entry_weighs_what_its_strings_hold() {
        let small = ReviewKey { user: "u".into(), groups: vec![], namespace: "n".into(), permission: Permission::ListPods };
        let big = ReviewKey { groups: vec!["g".repeat(1000)], ..small.clone() };
        assert!(big.weight() >= small.weight() + 1000);
    }
}
