//! Pod resource usage from metrics.k8s.io (Metrics Server), with requests/limits beside it.
//!
//! Whether the metrics API exists is detected once and cached (`AVAILABILITY_TTL`), so a
//! cluster without Metrics Server costs one discovery request per minute, not one per call.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};

use super::quantity::{cpu_millicores, memory_bytes};

/// How long a "metrics API present/absent" answer is trusted.
const AVAILABILITY_TTL: Duration = Duration::from_secs(60);

/// Path of the metrics API group version.
const METRICS_API: &str = "/apis/metrics.k8s.io/v1beta1";

/// Why usage could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// metrics.k8s.io is not served (no Metrics Server) or not ready.
    #[error("metrics unavailable: {0}")]
    Unavailable(String),
    /// The API is there but has no sample for this pod yet (new or just finished pod).
    #[error("no metrics sample for this pod yet")]
    NoSample,
    /// Any other failure talking to the API server.
    #[error("metrics request failed: {0}")]
    Request(String),
}

/// Usage of one container.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerUsage {
    /// Container name.
    pub name: String,
    /// CPU in use, millicores.
    pub cpu_millicores: Option<f64>,
    /// Memory in use (working set), bytes.
    pub memory_bytes: Option<u64>,
    /// CPU request, millicores.
    pub cpu_request_millicores: Option<f64>,
    /// CPU limit, millicores.
    pub cpu_limit_millicores: Option<f64>,
    /// Memory request, bytes.
    pub memory_request_bytes: Option<u64>,
    /// Memory limit, bytes.
    pub memory_limit_bytes: Option<u64>,
}

/// Usage of a pod: one sample.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodUsage {
    /// Sample time (RFC3339), as reported by Metrics Server.
    pub timestamp: Option<String>,
    /// Sample window, e.g. `15s`.
    pub window: Option<String>,
    /// Per container.
    pub containers: Vec<ContainerUsage>,
}

#[derive(Deserialize)]
struct RawPodMetrics {
    timestamp: Option<String>,
    window: Option<String>,
    #[serde(default)]
    containers: Vec<RawContainerMetrics>,
}

#[derive(Deserialize)]
struct RawContainerMetrics {
    name: String,
    #[serde(default)]
    usage: BTreeMap<String, String>,
}

/// Reads pod metrics through the API server's aggregation layer.
pub struct PodMetricsReader {
    client: kube::Client,
    availability: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl std::fmt::Debug for PodMetricsReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodMetricsReader").finish_non_exhaustive()
    }
}

impl PodMetricsReader {
    /// A reader using `client` (the backend's rate-limited client).
    pub fn new(client: kube::Client) -> Self {
        Self { client, availability: Mutex::new(None) }
    }

    async fn check_available(&self) -> Result<(), MetricsError> {
        let cached = self
            .availability
            .lock()
            .map(|guard| guard.as_ref().filter(|(at, _)| at.elapsed() < AVAILABILITY_TTL).map(|(_, r)| r.clone()))
            .unwrap_or(None);
        let result = match cached {
            Some(result) => result,
            None => {
                let result = self.probe().await;
                if let Ok(mut guard) = self.availability.lock() {
                    *guard = Some((Instant::now(), result.clone()));
                }
                result
            }
        };
        result.map_err(MetricsError::Unavailable)
    }

    async fn probe(&self) -> Result<(), String> {
        let request = http::Request::get(METRICS_API).body(Vec::new()).map_err(|e| e.to_string())?;
        match self.client.request_text(request).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => {
                Err("the metrics.k8s.io API is not served (is Metrics Server installed?)".to_owned())
            }
            Err(kube::Error::Api(status)) if status.code == 503 => {
                Err("Metrics Server is not ready".to_owned())
            }
            Err(err) => Err(format!("cannot reach the metrics API: {err}")),
        }
    }

    /// Usage of `pod` (which must be in `namespace`), with requests/limits from its spec.
    pub async fn pod_usage(&self, namespace: &str, pod: &Pod) -> Result<PodUsage, MetricsError> {
        self.check_available().await?;
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        // Names were validated (DNS-1123) before reaching here, so they are path-safe.
        let path = format!("{METRICS_API}/namespaces/{namespace}/pods/{name}");
        let request = http::Request::get(path).body(Vec::new()).map_err(|e| MetricsError::Request(e.to_string()))?;
        let raw: RawPodMetrics = match self.client.request(request).await {
            Ok(raw) => raw,
            Err(kube::Error::Api(status)) if status.code == 404 => {
                // Either no sample for this pod yet, or the metrics API went away since the
                // availability answer was cached: ask again to tell them apart.
                if let Ok(mut guard) = self.availability.lock() {
                    *guard = None;
                }
                self.check_available().await?;
                return Err(MetricsError::NoSample);
            }
            Err(kube::Error::Api(status)) if status.code == 503 => {
                if let Ok(mut guard) = self.availability.lock() {
                    *guard = None;
                }
                return Err(MetricsError::Unavailable("Metrics Server is not ready".to_owned()));
            }
            Err(err) => return Err(MetricsError::Request(err.to_string())),
        };
        Ok(merge_usage(raw, pod))
    }
}

fn merge_usage(raw: RawPodMetrics, pod: &Pod) -> PodUsage {
    let specs: BTreeMap<&str, &k8s_openapi::api::core::v1::Container> =
        pod.spec.iter().flat_map(|s| s.containers.iter()).map(|c| (c.name.as_str(), c)).collect();
    let containers = raw
        .containers
        .into_iter()
        .map(|c| {
            let resources = specs.get(c.name.as_str()).and_then(|s| s.resources.as_ref());
            let request = |key: &str| resources.and_then(|r| r.requests.as_ref()).and_then(|m| m.get(key)).map(|q| q.0.as_str());
            let limit = |key: &str| resources.and_then(|r| r.limits.as_ref()).and_then(|m| m.get(key)).map(|q| q.0.as_str());
            ContainerUsage {
                cpu_millicores: c.usage.get("cpu").and_then(|q| cpu_millicores(q)),
                memory_bytes: c.usage.get("memory").and_then(|q| memory_bytes(q)),
                cpu_request_millicores: request("cpu").and_then(cpu_millicores),
                cpu_limit_millicores: limit("cpu").and_then(cpu_millicores),
                memory_request_bytes: request("memory").and_then(memory_bytes),
                memory_limit_bytes: limit("memory").and_then(memory_bytes),
                name: c.name,
            }
        })
        .collect();
    PodUsage { timestamp: raw.timestamp, window: raw.window, containers }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_merged_with_requests_and_limits() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1"},
            "spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "128Mi"}}}]}
        }))
        .unwrap();
        let raw: RawPodMetrics = serde_json::from_value(serde_json::json!({
            "timestamp": "2026-01-30T10:00:00Z", "window": "15s",
            "containers": [{"name": "app", "usage": {"cpu": "12500000n", "memory": "2048Ki"}}, {"name": "sidecar", "usage": {"cpu": "1m"}}]
        }))
        .unwrap();
        let usage = merge_usage(raw, &pod);
        assert_eq!(usage.window.as_deref(), Some("15s"));
        assert_eq!(
            usage.containers[0],
            ContainerUsage {
                name: "app".to_owned(),
                cpu_millicores: Some(12.5),
                memory_bytes: Some(2 * 1024 * 1024),
                cpu_request_millicores: Some(100.0),
                cpu_limit_millicores: Some(1000.0),
                memory_request_bytes: Some(64 * 1024 * 1024),
                memory_limit_bytes: Some(128 * 1024 * 1024),
            }
        );
        assert_eq!(usage.containers[1].memory_bytes, None);
        assert_eq!(usage.containers[1].cpu_request_millicores, None);
    }
}
