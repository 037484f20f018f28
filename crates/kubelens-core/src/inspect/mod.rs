//! The pod inspector: a typed, masked view of one pod for the UI's inspector panel, and its
//! resource usage from metrics.k8s.io.
//!
//! [`pod_details`] turns a Kubernetes `Pod` (plus its recent events) into [`PodDetails`],
//! applying the masking policy of [`masking`] for callers without the admin group. Masking
//! happens here, on the server, before anything is serialized.

mod events;
pub mod masking;
mod metrics;
pub mod quantity;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStatus, EnvFromSource, EnvVar, Event, Pod, Probe, Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::Serialize;

pub use events::{EVENTS_CACHE_MAX_EVENTS, EVENTS_CACHE_TTL, PodEventsReader};
pub use masking::MASKED;
pub use metrics::{ContainerUsage, MetricsError, PodMetricsReader, PodUsage};

/// Who is looking: decides masking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Viewer {
    /// Member of the admin group: sees everything unmasked.
    pub is_admin: bool,
}

/// The inspector view of one pod.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodDetails {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// UID.
    pub uid: String,
    /// Labels (never masked: selectors need them).
    pub labels: BTreeMap<String, String>,
    /// Annotations; for non-admins sensitive keys masked whole, secret shapes in the others.
    pub annotations: BTreeMap<String, String>,
    /// Keys of annotations whose value was masked.
    pub masked_annotations: Vec<String>,
    /// Node the pod runs on.
    pub node: Option<String>,
    /// Pod IPs.
    pub pod_ips: Vec<String>,
    /// Host IP.
    pub host_ip: Option<String>,
    /// QoS class (Guaranteed, Burstable, BestEffort).
    pub qos_class: Option<String>,
    /// Phase.
    pub phase: Option<String>,
    /// Status reason/message (e.g. Evicted).
    pub reason: Option<String>,
    /// Status message.
    pub message: Option<String>,
    /// Service account.
    pub service_account: Option<String>,
    /// Priority class.
    pub priority_class: Option<String>,
    /// Restart policy.
    pub restart_policy: Option<String>,
    /// Creation time (RFC3339).
    pub created_at: Option<String>,
    /// Deletion requested at (RFC3339), when terminating.
    pub deletion_timestamp: Option<String>,
    /// Owner references (kind/name).
    pub owners: Vec<OwnerRef>,
    /// Init, regular and ephemeral containers, in that order.
    pub containers: Vec<ContainerDetails>,
    /// Volumes; secret sources masked for non-admins.
    pub volumes: Vec<VolumeDetails>,
    /// Pod conditions.
    pub conditions: Vec<ConditionDetails>,
    /// Recent events about this pod, newest first.
    pub events: Vec<EventDetails>,
    /// True when anything in this view was masked.
    pub masked: bool,
}

/// An owner reference.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerRef {
    /// Kind (ReplicaSet, Job, …).
    pub kind: String,
    /// Name.
    pub name: String,
    /// Whether it is the controller.
    pub controller: bool,
}

/// Which list a container comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ContainerKind {
    /// `spec.initContainers`.
    Init,
    /// `spec.containers`.
    Regular,
    /// `spec.ephemeralContainers` (debug containers).
    Ephemeral,
}

/// One container with its spec and status.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerDetails {
    /// Name.
    pub name: String,
    /// Init, regular or ephemeral.
    pub kind: ContainerKind,
    /// Image.
    pub image: Option<String>,
    /// Image ID reported by the runtime.
    pub image_id: Option<String>,
    /// Command (credential-looking parts masked for non-admins).
    pub command: Vec<String>,
    /// Args (credential-looking parts masked for non-admins).
    pub args: Vec<String>,
    /// Ports as `name:port/protocol`.
    pub ports: Vec<PortDetails>,
    /// Resource requests (`cpu`, `memory`, …) as Kubernetes quantities.
    pub requests: BTreeMap<String, String>,
    /// Resource limits.
    pub limits: BTreeMap<String, String>,
    /// Probes by kind (`liveness`, `readiness`, `startup`).
    pub probes: BTreeMap<String, ProbeDetails>,
    /// Environment variables.
    pub env: Vec<EnvDetails>,
    /// `envFrom` sources (references only).
    pub env_from: Vec<EnvFromDetails>,
    /// Volume mounts.
    pub volume_mounts: Vec<MountDetails>,
    /// Current state (`waiting`, `running`, `terminated`) with reason.
    pub state: Option<StateDetails>,
    /// Previous instance's termination, when it restarted.
    pub last_termination: Option<StateDetails>,
    /// Ready.
    pub ready: bool,
    /// Restart count.
    pub restart_count: i32,
}

/// A container port.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortDetails {
    /// Port name.
    pub name: Option<String>,
    /// Container port.
    pub container_port: i32,
    /// TCP/UDP/SCTP.
    pub protocol: Option<String>,
}

/// A probe, summarized.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeDetails {
    /// `httpGet`, `tcpSocket`, `exec`, `grpc`.
    pub handler: String,
    /// Path/port or command, human-readable (exec commands masked like args).
    pub target: String,
    /// Initial delay.
    pub initial_delay_seconds: Option<i32>,
    /// Period.
    pub period_seconds: Option<i32>,
    /// Timeout.
    pub timeout_seconds: Option<i32>,
    /// Failures before the probe fails.
    pub failure_threshold: Option<i32>,
}

/// One environment variable.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvDetails {
    /// Name.
    pub name: String,
    /// Literal value; [`MASKED`] for non-admins.
    pub value: Option<String>,
    /// Where the value comes from when not literal (reference, never resolved).
    pub value_from: Option<EnvSource>,
    /// True when `value` was masked.
    pub masked: bool,
}

/// A reference an env var's value comes from.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum EnvSource {
    /// `secretKeyRef`: never resolved.
    Secret {
        /// Secret name.
        name: String,
        /// Key.
        key: String,
    },
    /// `configMapKeyRef`.
    ConfigMap {
        /// ConfigMap name.
        name: String,
        /// Key.
        key: String,
    },
    /// `fieldRef`.
    Field {
        /// Field path.
        path: String,
    },
    /// `resourceFieldRef`.
    Resource {
        /// Resource name.
        resource: String,
    },
}

/// An `envFrom` source.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvFromDetails {
    /// `secret` or `configMap`.
    pub kind: String,
    /// Referenced object's name.
    pub name: String,
    /// Prefix added to keys.
    pub prefix: Option<String>,
}

/// A volume mount.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MountDetails {
    /// Volume name.
    pub name: String,
    /// Mount path.
    pub mount_path: String,
    /// Read-only.
    pub read_only: bool,
    /// Sub-path.
    pub sub_path: Option<String>,
}

/// A container state.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateDetails {
    /// `waiting`, `running` or `terminated`.
    pub state: String,
    /// Reason (CrashLoopBackOff, Completed, OOMKilled, …).
    pub reason: Option<String>,
    /// Message.
    pub message: Option<String>,
    /// Exit code (terminated).
    pub exit_code: Option<i32>,
    /// Started at (RFC3339).
    pub started_at: Option<String>,
    /// Finished at (RFC3339).
    pub finished_at: Option<String>,
}

/// A volume and its source.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeDetails {
    /// Volume name.
    pub name: String,
    /// Source kind (`secret`, `configMap`, `emptyDir`, `persistentVolumeClaim`, `projected`, …).
    pub kind: String,
    /// Source detail (object name, claim name, medium); [`MASKED`] for secret sources of
    /// non-admins.
    pub source: Option<String>,
    /// True when `source` was masked.
    pub masked: bool,
}

/// A pod condition.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionDetails {
    /// Type (Ready, PodScheduled, …).
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`/`False`/`Unknown`.
    pub status: String,
    /// Reason.
    pub reason: Option<String>,
    /// Message.
    pub message: Option<String>,
    /// Last transition (RFC3339).
    pub last_transition_time: Option<String>,
}

/// A Kubernetes event about the pod.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventDetails {
    /// Normal / Warning.
    #[serde(rename = "type")]
    pub type_: Option<String>,
    /// Reason (Scheduled, Pulled, BackOff, …).
    pub reason: Option<String>,
    /// Message.
    pub message: Option<String>,
    /// How many times it happened.
    pub count: Option<i32>,
    /// Last seen (RFC3339).
    pub last_seen: Option<String>,
    /// Reporting component.
    pub source: Option<String>,
}

/// How many events the inspector shows at most (newest first).
pub const MAX_EVENTS: usize = 50;

/// Builds the inspector view of `pod`, masking for non-admin viewers.
///
/// `sensitive_annotations` are extra annotation keys to mask whole (config), on top of
/// [`masking::ALWAYS_SENSITIVE_ANNOTATIONS`] and keys whose name looks secret; every other
/// annotation value, command/args, probe paths and messages have their secret shapes masked.
pub fn pod_details(pod: &Pod, events: &[Event], viewer: Viewer, sensitive_annotations: &[String]) -> PodDetails {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let mut masked = false;

    let mut annotations = BTreeMap::new();
    let mut masked_annotations = Vec::new();
    for (key, value) in meta.annotations.iter().flatten() {
        let (shown, was_masked) =
            if viewer.is_admin { (value.clone(), false) } else { masking::mask_annotation(key, value, sensitive_annotations) };
        if was_masked {
            masked_annotations.push(key.clone());
            masked = true;
        }
        annotations.insert(key.clone(), shown);
    }

    let statuses = |list: Option<&Vec<ContainerStatus>>| -> BTreeMap<String, ContainerStatus> {
        list.into_iter().flatten().map(|s| (s.name.clone(), s.clone())).collect()
    };
    let init_statuses = statuses(status.and_then(|s| s.init_container_statuses.as_ref()));
    let regular_statuses = statuses(status.and_then(|s| s.container_statuses.as_ref()));
    let ephemeral_statuses = statuses(status.and_then(|s| s.ephemeral_container_statuses.as_ref()));

    let mut containers = Vec::new();
    for c in spec.and_then(|s| s.init_containers.as_ref()).into_iter().flatten() {
        containers.push(container_details(c, ContainerKind::Init, init_statuses.get(&c.name), viewer, &mut masked));
    }
    for c in spec.map(|s| &s.containers).into_iter().flatten() {
        containers.push(container_details(c, ContainerKind::Regular, regular_statuses.get(&c.name), viewer, &mut masked));
    }
    for e in spec.and_then(|s| s.ephemeral_containers.as_ref()).into_iter().flatten() {
        // Ephemeral containers share the Container shape minus a few fields.
        let as_container = Container {
            name: e.name.clone(),
            image: e.image.clone(),
            command: e.command.clone(),
            args: e.args.clone(),
            env: e.env.clone(),
            env_from: e.env_from.clone(),
            volume_mounts: e.volume_mounts.clone(),
            ..Container::default()
        };
        containers.push(container_details(
            &as_container,
            ContainerKind::Ephemeral,
            ephemeral_statuses.get(&e.name),
            viewer,
            &mut masked,
        ));
    }

    let volumes = spec
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .map(|v| volume_details(v, viewer, &mut masked))
        .collect();

    let conditions = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .map(|c| ConditionDetails {
            type_: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: mask_message(c.message.as_deref(), viewer, &mut masked),
            last_transition_time: c.last_transition_time.as_ref().map(|t| t.0.to_string()),
        })
        .collect();

    let mut sorted_events: Vec<&Event> = events.iter().collect();
    sorted_events.sort_by_key(|e| std::cmp::Reverse(event_time(e)));
    let events = sorted_events
        .into_iter()
        .take(MAX_EVENTS)
        .map(|e| EventDetails {
            type_: e.type_.clone(),
            reason: e.reason.clone(),
            message: mask_message(e.message.as_deref(), viewer, &mut masked),
            count: e.count,
            last_seen: event_time(e),
            source: e
                .reporting_component
                .clone()
                .filter(|c| !c.is_empty())
                .or_else(|| e.source.as_ref().and_then(|s| s.component.clone())),
        })
        .collect();

    let message = mask_message(status.and_then(|s| s.message.as_deref()), viewer, &mut masked);
    PodDetails {
        name: meta.name.clone().unwrap_or_default(),
        namespace: meta.namespace.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        labels: meta.labels.clone().unwrap_or_default(),
        annotations,
        masked_annotations,
        node: spec.and_then(|s| s.node_name.clone()),
        pod_ips: status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|ips| ips.iter().map(|ip| ip.ip.clone()).collect())
            .or_else(|| status.and_then(|s| s.pod_ip.clone()).map(|ip| vec![ip]))
            .unwrap_or_default(),
        host_ip: status.and_then(|s| s.host_ip.clone()),
        qos_class: status.and_then(|s| s.qos_class.clone()),
        phase: status.and_then(|s| s.phase.clone()),
        reason: status.and_then(|s| s.reason.clone()),
        message,
        service_account: spec.and_then(|s| s.service_account_name.clone()),
        priority_class: spec.and_then(|s| s.priority_class_name.clone()),
        restart_policy: spec.and_then(|s| s.restart_policy.clone()),
        created_at: meta.creation_timestamp.as_ref().map(|t| t.0.to_string()),
        deletion_timestamp: meta.deletion_timestamp.as_ref().map(|t| t.0.to_string()),
        owners: meta
            .owner_references
            .iter()
            .flatten()
            .map(|o| OwnerRef { kind: o.kind.clone(), name: o.name.clone(), controller: o.controller.unwrap_or(false) })
            .collect(),
        containers,
        volumes,
        conditions,
        events,
        masked,
    }
}

/// A status, condition, termination or event message as a non-admin may see it (secret
/// shapes masked: apps write anything into their termination message).
fn mask_message(message: Option<&str>, viewer: Viewer, masked: &mut bool) -> Option<String> {
    let message = message?;
    if viewer.is_admin {
        return Some(message.to_owned());
    }
    let (out, changed) = masking::mask_inline_secrets(message);
    *masked |= changed;
    Some(out)
}

fn event_time(e: &Event) -> Option<String> {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .or_else(|| e.event_time.as_ref().map(|t| t.0.to_string()))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0.to_string()))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()))
}

fn quantities(map: Option<&BTreeMap<String, Quantity>>) -> BTreeMap<String, String> {
    map.into_iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect()
}

fn container_details(
    c: &Container,
    kind: ContainerKind,
    status: Option<&ContainerStatus>,
    viewer: Viewer,
    masked: &mut bool,
) -> ContainerDetails {
    let command = c.command.clone().unwrap_or_default();
    let args = c.args.clone().unwrap_or_default();
    let (command, args) = if viewer.is_admin {
        (command, args)
    } else {
        // One vector: a flag at the end of `command` may take its value from `args`.
        let (command, args, changed) = masking::mask_container_command(&command, &args);
        *masked |= changed;
        (command, args)
    };

    let mut probes = BTreeMap::new();
    for (name, probe) in [("liveness", &c.liveness_probe), ("readiness", &c.readiness_probe), ("startup", &c.startup_probe)] {
        if let Some(probe) = probe {
            probes.insert(name.to_owned(), probe_details(probe, viewer, masked));
        }
    }

    let env = c.env.iter().flatten().map(|e| env_details(e, viewer, masked)).collect();
    let env_from = c.env_from.iter().flatten().filter_map(env_from_details).collect();
    let resources = c.resources.as_ref();

    ContainerDetails {
        name: c.name.clone(),
        kind,
        image: c.image.clone(),
        image_id: status.map(|s| s.image_id.clone()).filter(|s| !s.is_empty()),
        command,
        args,
        ports: c
            .ports
            .iter()
            .flatten()
            .map(|p| PortDetails { name: p.name.clone(), container_port: p.container_port, protocol: p.protocol.clone() })
            .collect(),
        requests: quantities(resources.and_then(|r| r.requests.as_ref())),
        limits: quantities(resources.and_then(|r| r.limits.as_ref())),
        probes,
        env,
        env_from,
        volume_mounts: c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| MountDetails {
                name: m.name.clone(),
                mount_path: m.mount_path.clone(),
                read_only: m.read_only.unwrap_or(false),
                sub_path: m.sub_path.clone(),
            })
            .collect(),
        state: status.and_then(|s| s.state.as_ref()).and_then(|s| state_details(s, viewer, masked)),
        last_termination: status.and_then(|s| s.last_state.as_ref()).and_then(|s| state_details(s, viewer, masked)),
        ready: status.is_some_and(|s| s.ready),
        restart_count: status.map_or(0, |s| s.restart_count),
    }
}

fn probe_details(probe: &Probe, viewer: Viewer, masked: &mut bool) -> ProbeDetails {
    let (handler, target) = if let Some(http) = &probe.http_get {
        let port = match &http.port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => p.to_string(),
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s.clone(),
        };
        let path = http.path.as_deref().unwrap_or("/");
        let path = if viewer.is_admin {
            path.to_owned()
        } else {
            // Query parameters such as `?apikey=…`, `token=`, `sig=`.
            let (out, changed) = masking::mask_inline_secrets(path);
            *masked |= changed;
            out
        };
        ("httpGet", format!("{}:{port}{path}", http.scheme.as_deref().unwrap_or("HTTP")))
    } else if let Some(tcp) = &probe.tcp_socket {
        let port = match &tcp.port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => p.to_string(),
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s.clone(),
        };
        ("tcpSocket", port)
    } else if let Some(exec) = &probe.exec {
        let command = exec.command.clone().unwrap_or_default();
        let command = if viewer.is_admin {
            command
        } else {
            let (out, changed) = masking::mask_command_args(&command);
            *masked |= changed;
            out
        };
        ("exec", command.join(" "))
    } else if let Some(grpc) = &probe.grpc {
        ("grpc", grpc.port.to_string())
    } else {
        ("unknown", String::new())
    };
    ProbeDetails {
        handler: handler.to_owned(),
        target,
        initial_delay_seconds: probe.initial_delay_seconds,
        period_seconds: probe.period_seconds,
        timeout_seconds: probe.timeout_seconds,
        failure_threshold: probe.failure_threshold,
    }
}

fn env_details(e: &EnvVar, viewer: Viewer, masked: &mut bool) -> EnvDetails {
    let value_from = e.value_from.as_ref().and_then(|from| {
        if let Some(s) = &from.secret_key_ref {
            Some(EnvSource::Secret { name: s.name.clone(), key: s.key.clone() })
        } else if let Some(c) = &from.config_map_key_ref {
            Some(EnvSource::ConfigMap { name: c.name.clone(), key: c.key.clone() })
        } else if let Some(f) = &from.field_ref {
            Some(EnvSource::Field { path: f.field_path.clone() })
        } else {
            from.resource_field_ref.as_ref().map(|r| EnvSource::Resource { resource: r.resource.clone() })
        }
    });
    let (value, was_masked) = match &e.value {
        Some(_) if !viewer.is_admin => (Some(MASKED.to_owned()), true),
        other => (other.clone(), false),
    };
    *masked |= was_masked;
    EnvDetails { name: e.name.clone(), value, value_from, masked: was_masked }
}

fn env_from_details(e: &EnvFromSource) -> Option<EnvFromDetails> {
    let (kind, name) = if let Some(s) = &e.secret_ref {
        ("secret", s.name.clone())
    } else if let Some(c) = &e.config_map_ref {
        ("configMap", c.name.clone())
    } else {
        return None;
    };
    Some(EnvFromDetails { kind: kind.to_owned(), name, prefix: e.prefix.clone() })
}

fn volume_details(v: &Volume, viewer: Viewer, masked: &mut bool) -> VolumeDetails {
    let secret_masked = |name: String, masked: &mut bool| -> (Option<String>, bool) {
        if viewer.is_admin {
            (Some(name), false)
        } else {
            *masked = true;
            (Some(MASKED.to_owned()), true)
        }
    };
    let (kind, source, was_masked) = if let Some(s) = &v.secret {
        let (source, m) = secret_masked(s.secret_name.clone().unwrap_or_default(), masked);
        ("secret", source, m)
    } else if let Some(p) = &v.projected {
        let sources = p.sources.as_deref().unwrap_or_default();
        let has_secret = sources.iter().any(|s| s.secret.is_some());
        let described: Vec<String> = sources
            .iter()
            .map(|s| {
                if let Some(secret) = &s.secret {
                    format!("secret:{}", secret.name)
                } else if let Some(cm) = &s.config_map {
                    format!("configMap:{}", cm.name)
                } else if s.service_account_token.is_some() {
                    "serviceAccountToken".to_owned()
                } else if s.downward_api.is_some() {
                    "downwardAPI".to_owned()
                } else {
                    "other".to_owned()
                }
            })
            .collect();
        if has_secret && !viewer.is_admin {
            *masked = true;
            ("projected", Some(MASKED.to_owned()), true)
        } else {
            ("projected", Some(described.join(", ")), false)
        }
    } else if let Some(c) = &v.config_map {
        ("configMap", Some(c.name.clone()), false)
    } else if let Some(p) = &v.persistent_volume_claim {
        ("persistentVolumeClaim", Some(p.claim_name.clone()), false)
    } else if let Some(e) = &v.empty_dir {
        ("emptyDir", e.medium.clone().filter(|m| !m.is_empty()), false)
    } else if let Some(h) = &v.host_path {
        ("hostPath", Some(h.path.clone()), false)
    } else if v.downward_api.is_some() {
        ("downwardAPI", None, false)
    } else {
        ("other", None, false)
    };
    VolumeDetails { name: v.name.clone(), kind: kind.to_owned(), source, masked: was_masked }
}

fn state_details(state: &ContainerState, viewer: Viewer, masked: &mut bool) -> Option<StateDetails> {
    if let Some(w) = &state.waiting {
        return Some(StateDetails {
            state: "waiting".to_owned(),
            reason: w.reason.clone(),
            message: mask_message(w.message.as_deref(), viewer, masked),
            exit_code: None,
            started_at: None,
            finished_at: None,
        });
    }
    if let Some(r) = &state.running {
        return Some(StateDetails {
            state: "running".to_owned(),
            reason: None,
            message: None,
            exit_code: None,
            started_at: r.started_at.as_ref().map(|t| t.0.to_string()),
            finished_at: None,
        });
    }
    state.terminated.as_ref().map(|t| StateDetails {
        state: "terminated".to_owned(),
        reason: t.reason.clone(),
        message: mask_message(t.message.as_deref(), viewer, masked),
        exit_code: Some(t.exit_code),
        started_at: t.started_at.as_ref().map(|t| t.0.to_string()),
        finished_at: t.finished_at.as_ref().map(|t| t.0.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web-1", "namespace": "team-a", "uid": "u1",
                "labels": {"app": "web"},
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"kind\":\"Pod\",\"spec\":{\"env\":[{\"value\":\"hunter2\"}]}}",
                    "team.example.com/api-token": "tok-123",
                    "prometheus.io/scrape": "true"
                },
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc", "uid": "r1", "controller": true}]
            },
            "spec": {
                "nodeName": "node-1",
                "initContainers": [{"name": "migrate", "image": "migrate:1", "args": ["--db-password", "hunter2"]}],
                "containers": [{
                    "name": "app", "image": "web:1",
                    "command": ["/app"], "args": ["--url=postgres://app:hunter2@db/app", "--port=8080"],
                    "env": [
                        {"name": "LOG_LEVEL", "value": "debug"},
                        {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
                    ],
                    "envFrom": [{"secretRef": {"name": "app-secrets"}}, {"configMapRef": {"name": "app-config"}, "prefix": "CFG_"}],
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 5},
                    "livenessProbe": {"exec": {"command": ["check", "--token=abc"]}},
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                    "volumeMounts": [{"name": "certs", "mountPath": "/certs", "readOnly": true}]
                }],
                "ephemeralContainers": [{"name": "debugger", "image": "busybox", "env": [{"name": "X", "value": "y"}]}],
                "volumes": [
                    {"name": "certs", "secret": {"secretName": "tls-certs"}},
                    {"name": "mixed", "projected": {"sources": [{"secret": {"name": "s1"}}, {"configMap": {"name": "c1"}}]}},
                    {"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}},
                    {"name": "cfg", "configMap": {"name": "app-config"}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": "data-0"}},
                    {"name": "tmp", "emptyDir": {}}
                ]
            },
            "status": {
                "phase": "Running", "qosClass": "Burstable", "podIP": "10.0.0.5", "hostIP": "192.0.2.1",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{
                    "name": "app", "ready": true, "restartCount": 2, "image": "web:1", "imageID": "sha256:abc",
                    "state": {"running": {"startedAt": "2026-01-30T10:00:00Z"}},
                    "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
                }]
            }
        }))
        .unwrap()
    }

    fn details(is_admin: bool) -> PodDetails {
        pod_details(&pod(), &[], Viewer { is_admin }, &["team.example.com/api-token".to_owned()])
    }

    fn container<'a>(d: &'a PodDetails, name: &str) -> &'a ContainerDetails {
        d.containers.iter().find(|c| c.name == name).unwrap()
    }

    #[test]
    fn non_admin_masking_table() {
        let d = details(false);
        assert!(d.masked);
        // Annotations: manifest and configured key masked, others kept.
        assert_eq!(d.annotations["kubectl.kubernetes.io/last-applied-configuration"], MASKED);
        assert_eq!(d.annotations["team.example.com/api-token"], MASKED);
        assert_eq!(d.annotations["prometheus.io/scrape"], "true");
        assert_eq!(d.masked_annotations.len(), 2);
        // Env: literal masked (with the flag), references shown unresolved.
        let app = container(&d, "app");
        let env: BTreeMap<_, _> = app.env.iter().map(|e| (e.name.as_str(), e)).collect();
        assert_eq!(env["LOG_LEVEL"].value.as_deref(), Some(MASKED));
        assert!(env["LOG_LEVEL"].masked);
        assert!(matches!(&env["DB_PASSWORD"].value_from, Some(EnvSource::Secret { name, key }) if name == "db" && key == "password"));
        assert_eq!(env["DB_PASSWORD"].value, None);
        assert!(matches!(&env["MODE"].value_from, Some(EnvSource::ConfigMap { .. })));
        assert!(matches!(&env["POD_IP"].value_from, Some(EnvSource::Field { path }) if path == "status.podIP"));
        assert_eq!(app.env_from[0].kind, "secret");
        assert_eq!(app.env_from[0].name, "app-secrets");
        assert_eq!(app.env_from[1].prefix.as_deref(), Some("CFG_"));
        // Args and exec probes: credential parts masked.
        assert_eq!(app.args, vec![format!("--url=postgres://app:{MASKED}@db/app"), "--port=8080".to_owned()]);
        assert_eq!(app.probes["liveness"].target, format!("check --token={MASKED}"));
        assert_eq!(container(&d, "migrate").args, vec!["--db-password".to_owned(), MASKED.to_owned()]);
        assert_eq!(container(&d, "debugger").env[0].value.as_deref(), Some(MASKED));
        // Volumes: secret sources masked, others shown.
        let vols: BTreeMap<_, _> = d.volumes.iter().map(|v| (v.name.as_str(), v)).collect();
        assert_eq!(vols["certs"].source.as_deref(), Some(MASKED));
        assert!(vols["certs"].masked);
        assert_eq!(vols["mixed"].source.as_deref(), Some(MASKED));
        assert_eq!(vols["token"].source.as_deref(), Some("serviceAccountToken"));
        assert_eq!(vols["cfg"].source.as_deref(), Some("app-config"));
        assert_eq!(vols["data"].source.as_deref(), Some("data-0"));
        // Nothing of the secrets leaks anywhere in the serialized form.
        let json = serde_json::to_string(&d).unwrap();
        for secret in ["hunter2", "tok-123", "tls-certs", "\"s1\"", "--token=abc"] {
            assert!(!json.contains(secret), "{secret} leaked: {json}");
        }
    }

    #[test]
    fn non_admins_get_probe_paths_annotations_and_messages_masked() {
        let mut pod = pod();
        let annotations = pod.metadata.annotations.get_or_insert_default();
        annotations.insert("example.com/db-password".to_owned(), "plain-pw-1".to_owned());
        annotations.insert("example.com/dsn".to_owned(), "postgres://app:dsn-pw-2@db/app".to_owned());
        let spec = pod.spec.as_mut().unwrap();
        let app = &mut spec.containers[0];
        app.readiness_probe.as_mut().unwrap().http_get.as_mut().unwrap().path = Some("/ready?apikey=probe-key-3&v=1".to_owned());
        app.command = Some(vec!["sh".to_owned(), "-c".to_owned(), "DB_PASSWORD='quoted-pw-4' app".to_owned()]);
        // The flag ends `command`, its value starts `args`.
        let migrate = &mut spec.init_containers.as_mut().unwrap()[0];
        migrate.command = Some(vec!["migrate".to_owned(), "--pass".to_owned()]);
        migrate.args = Some(vec!["pass-value-5".to_owned()]);
        let status = pod.status.as_mut().unwrap();
        status.message = Some("token=status-tok-6".to_owned());
        status.conditions.as_mut().unwrap()[0].message = Some("auth with Bearer condition-tok-7".to_owned());
        let app_status = &mut status.container_statuses.as_mut().unwrap()[0];
        app_status.last_state.as_mut().unwrap().terminated.as_mut().unwrap().message =
            Some("connect failed: mysql://root:term-pw-8@db".to_owned());
        let event: Event = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "e", "namespace": "team-a"},
            "involvedObject": {"kind": "Pod", "name": "web-1"},
            "message": "probe failed: GET /x?sig=event-sig-9"
        }))
        .unwrap();
        let secrets = ["plain-pw-1", "dsn-pw-2", "probe-key-3", "quoted-pw-4", "pass-value-5", "status-tok-6", "condition-tok-7", "term-pw-8", "event-sig-9"];

        let d = pod_details(&pod, std::slice::from_ref(&event), Viewer { is_admin: false }, &[]);
        let json = serde_json::to_string(&d).unwrap();
        for secret in secrets {
            assert!(!json.contains(secret), "{secret} leaked: {json}");
        }
        assert_eq!(container(&d, "app").probes["readiness"].target, format!("HTTP:8080/ready?apikey={MASKED}&v=1"));
        assert_eq!(d.annotations["example.com/dsn"], format!("postgres://app:{MASKED}@db/app"));
        assert!(d.masked_annotations.contains(&"example.com/dsn".to_owned()));
        assert_eq!(d.annotations["prometheus.io/scrape"], "true");
        assert_eq!(d.events[0].message.as_deref(), Some(format!("probe failed: GET /x?sig={MASKED}").as_str()));

        // Admins see every one of them.
        let json = serde_json::to_string(&pod_details(&pod, &[event], Viewer { is_admin: true }, &[])).unwrap();
        for secret in secrets {
            assert!(json.contains(secret), "{secret} missing for an admin");
        }
    }

    #[test]
    fn admin_sees_everything() {
        let d = details(true);
        assert!(!d.masked);
        assert!(d.masked_annotations.is_empty());
        let app = container(&d, "app");
        assert_eq!(app.env[0].value.as_deref(), Some("debug"));
        assert_eq!(app.args[0], "--url=postgres://app:hunter2@db/app");
        assert_eq!(app.probes["liveness"].target, "check --token=abc");
        let vols: BTreeMap<_, _> = d.volumes.iter().map(|v| (v.name.as_str(), v)).collect();
        assert_eq!(vols["certs"].source.as_deref(), Some("tls-certs"));
        assert_eq!(vols["mixed"].source.as_deref(), Some("secret:s1, configMap:c1"));
        assert_eq!(d.annotations["team.example.com/api-token"], "tok-123");
    }

    #[test]
    fn status_and_structure() {
        let d = details(false);
        assert_eq!(d.containers.iter().map(|c| c.kind).collect::<Vec<_>>(), vec![ContainerKind::Init, ContainerKind::Regular, ContainerKind::Ephemeral]);
        let app = container(&d, "app");
        assert_eq!(app.restart_count, 2);
        assert!(app.ready);
        assert_eq!(app.state.as_ref().unwrap().state, "running");
        let last = app.last_termination.as_ref().unwrap();
        assert_eq!((last.reason.as_deref(), last.exit_code), (Some("OOMKilled"), Some(137)));
        assert_eq!(app.requests["cpu"], "100m");
        assert_eq!(app.limits["memory"], "256Mi");
        assert_eq!(app.probes["readiness"].target, "HTTP:8080/ready");
        assert_eq!(app.image_id.as_deref(), Some("sha256:abc"));
        assert_eq!(d.qos_class.as_deref(), Some("Burstable"));
        assert_eq!(d.pod_ips, vec!["10.0.0.5"]);
        assert_eq!(d.owners[0].kind, "ReplicaSet");
        assert_eq!(d.node.as_deref(), Some("node-1"));
    }

    #[test]
    fn events_newest_first_and_capped() {
        let events: Vec<Event> = (0..60)
            .map(|i| {
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("e{i}"), "namespace": "team-a"},
                    "involvedObject": {"kind": "Pod", "name": "web-1"},
                    "reason": format!("R{i}"),
                    "lastTimestamp": format!("2026-01-30T10:{:02}:00Z", i),
                    "type": "Normal"
                }))
                .unwrap()
            })
            .collect();
        let d = pod_details(&pod(), &events, Viewer { is_admin: false }, &[]);
        assert_eq!(d.events.len(), MAX_EVENTS);
        assert_eq!(d.events[0].reason.as_deref(), Some("R59"));
    }
}
