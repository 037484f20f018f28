//! Obtaining a Kubernetes client configuration: in-cluster first, kubeconfig as the
//! local-development fallback.

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::config::KubernetesConfig;

/// Where the client configuration came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientConfigSource {
    /// The pod's service account (`KUBERNETES_SERVICE_HOST` + mounted token and CA).
    InCluster,
    /// A kubeconfig file (explicit path, `KUBECONFIG` or `~/.kube/config`).
    Kubeconfig,
}

/// No usable Kubernetes client configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientConfigError {
    /// The explicitly configured kubeconfig could not be used.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The configured path.
        path: String,
        /// Why it failed.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// Neither in-cluster nor a default kubeconfig worked.
    #[error("no Kubernetes configuration: not in a cluster ({in_cluster}) and no kubeconfig ({kubeconfig})")]
    NotFound {
        /// Why in-cluster failed.
        in_cluster: String,
        /// Why the default kubeconfig failed.
        kubeconfig: String,
    },
}

/// Resolves the client configuration and applies timeouts from `settings`.
///
/// An explicit `kubernetes.kubeconfig` wins (the operator asked for it); otherwise the
/// in-cluster service account is tried first and the default kubeconfig second.
pub async fn client_config(
    settings: &KubernetesConfig,
) -> Result<(kube::Config, ClientConfigSource), ClientConfigError> {
    let (mut config, source) = if let Some(path) = &settings.kubeconfig {
        let kubeconfig = Kubeconfig::read_from(path)
            .map_err(|source| ClientConfigError::Kubeconfig { path: path.clone(), source })?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|source| ClientConfigError::Kubeconfig { path: path.clone(), source })?;
        (config, ClientConfigSource::Kubeconfig)
    } else {
        match kube::Config::incluster() {
            Ok(config) => (config, ClientConfigSource::InCluster),
            Err(in_cluster) => match kube::Config::from_kubeconfig(&KubeConfigOptions::default()).await {
                Ok(config) => (config, ClientConfigSource::Kubeconfig),
                Err(kubeconfig) => {
                    return Err(ClientConfigError::NotFound {
                        in_cluster: in_cluster.to_string(),
                        kubeconfig: kubeconfig.to_string(),
                    });
                }
            },
        }
    };
    config.connect_timeout = Some(settings.connect_timeout);
    config.read_timeout = Some(settings.request_timeout);
    Ok((config, source))
}
