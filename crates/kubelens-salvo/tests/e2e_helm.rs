//! `deploy/helm/kubelens` end to end. Without a cluster: `helm lint` and `helm template` of
//! every documented values combination (`ci/*-values.yaml`), each rendered config accepted
//! by `kubelens check-config`, and typos in values refused by `values.schema.json`. Against
//! testenv's real kube-apiserver: every combination applied for real (`kubectl apply`), a
//! pod of each Deployment admitted under Pod Security `restricted`, and the ServiceAccount's
//! effective permissions (`kubectl auth can-i --list`) equal to the documented list. Finally
//! kubelens runs with the chart's ServiceAccount and ConfigMap and serves every endpoint; a
//! non-allowlisted namespace is refused by our policy AND by RBAC.
//!
//! helm is found as `$KUBELENS_HELM`, `$TESTENV_HELM`, testenv's cache, or on PATH; without
//! it these tests fail (run scripts/ci-prereqs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kubelens_testenv::TestEnv;
use serde::Deserialize;
use serde_json::Value;
use support::{Kubelens, helm, kubeconfig_with_token};

/// Every documented values combination: `deploy/helm/kubelens/ci/<name>-values.yaml`.
const COMBINATIONS: [&str; 5] = ["sqlite", "postgres", "redis", "exposed", "sidecar"];

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn chart() -> PathBuf {
    repo_root().join("deploy/helm/kubelens")
}

fn values_file(combination: &str) -> PathBuf {
    chart().join(format!("ci/{combination}-values.yaml"))
}

/// `helm template RELEASE chart -n NS -f ci/COMBINATION-values.yaml ARGS...`: stdout, or stderr.
fn template(release: &str, namespace: &str, combination: Option<&str>, args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new(helm());
    cmd.args(["template", release]).arg(chart()).args(["--namespace", namespace]);
    if let Some(combination) = combination {
        cmd.arg("-f").arg(values_file(combination));
    }
    let out = cmd.args(args).output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn documents(rendered: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(rendered)
        .map(|doc| serde_json::to_value(serde_yaml_ng::Value::deserialize(doc).unwrap()).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter().map(|d| d["kind"].as_str().unwrap().to_owned()).collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind} rendered"))
}

fn config_of(docs: &[Value]) -> String {
    find(docs, "ConfigMap")["data"]["config.yaml"].as_str().unwrap().to_owned()
}

#[test]
fn every_documented_values_combination_lints_renders_and_yields_a_valid_config() {
    // The list above is the documented one: a new ci/ file must be added to it (and tested).
    let mut on_disk: Vec<String> = std::fs::read_dir(chart().join("ci"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = COMBINATIONS.iter().map(|c| format!("{c}-values.yaml")).collect();
    listed.sort();
    assert_eq!(on_disk, listed);

    let always: BTreeSet<String> =
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget"]
            .into_iter()
            .map(String::from)
            .collect();
    for combination in COMBINATIONS {
        let out = Command::new(helm()).args(["lint", "--strict"]).arg(chart()).arg("-f").arg(values_file(combination)).output().unwrap();
        assert!(out.status.success(), "helm lint {combination}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));

        let docs = documents(&template("kubelens", "kubelens", Some(combination), &[]).unwrap());
        let extra: &[&str] = match combination {
            "sqlite" => &["PersistentVolumeClaim"],
            "exposed" => &["PersistentVolumeClaim", "Ingress", "ServiceMonitor", "PrometheusRule", "NetworkPolicy"],
            _ => &[],
        };
        let want: BTreeSet<String> = always.iter().cloned().chain(extra.iter().map(|k| (*k).to_owned())).collect();
        assert_eq!(kinds(&docs), want, "{combination}");

        // One Role + RoleBinding per allowlisted namespace, nothing namespaced elsewhere.
        let roles: BTreeSet<&str> = docs.iter().filter(|d| d["kind"] == "Role").map(|d| d["metadata"]["namespace"].as_str().unwrap()).collect();
        assert_eq!(roles, BTreeSet::from(["team-a", "team-b"]), "{combination}");

        // Pod security "restricted" on every container.
        let deployment = find(&docs, "Deployment");
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
        for container in pod["containers"].as_array().unwrap() {
            let sc = &container["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{combination}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{combination}");
            assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]), "{combination}");
        }
        let kubelens = pod["containers"].as_array().unwrap().iter().find(|c| c["name"] == "kubelens").unwrap();
        let env_names: Vec<&str> = kubelens["env"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();

        // The rendered config is one kubelens accepts.
        let config = config_of(&docs);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, &config).unwrap();
        let check = Command::new(env!("CARGO_BIN_EXE_kubelens"))
            .arg("--config")
            .arg(&path)
            .arg("check-config")
            .env_clear()
            .env("KUBELENS_POSTGRES_URL", "postgres://kubelens@db/kubelens")
            .env("KUBELENS_REDIS_URL", "redis://redis:6379")
            .output()
            .unwrap();
        assert!(check.status.success(), "{combination}: {}\n{config}", String::from_utf8_lossy(&check.stderr));

        match combination {
            "sqlite" | "exposed" => {
                assert_eq!(deployment["spec"]["replicas"], 1);
                assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
                assert!(pod["volumes"].as_array().unwrap().iter().any(|v| v["persistentVolumeClaim"]["claimName"] == "kubelens-data"));
                assert!(config.contains("listen: 0.0.0.0:8080") && config.contains("metrics_listen: 0.0.0.0:9090"), "{config}");
            }
            "postgres" | "redis" => {
                let (var, secret) = if combination == "postgres" { ("KUBELENS_POSTGRES_URL", "kubelens-postgres") } else { ("KUBELENS_REDIS_URL", "kubelens-redis") };
                assert!(env_names.contains(&var), "{env_names:?}");
                let reference = kubelens["env"].as_array().unwrap().iter().find(|e| e["name"] == var).unwrap();
                assert_eq!(reference["valueFrom"]["secretKeyRef"], serde_json::json!({"name": secret, "key": "url"}));
                assert_eq!(deployment["spec"]["replicas"], 3);
                assert_eq!(deployment["spec"]["strategy"]["type"], "RollingUpdate");
                assert!(config.contains(&format!("backend: {combination}")), "{config}");
                assert!(!config.lines().any(|l| l.trim_start().starts_with("url:")), "no connection string in the ConfigMap: {config}");
            }
            "sidecar" => {
                let names: Vec<&str> = pod["containers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
                assert_eq!(names, ["web", "kubelens"]);
                assert!(config.contains("listen: 127.0.0.1:8080"), "the API listener is pod-local: {config}");
                let service = find(&docs, "Service");
                assert_eq!(service["spec"]["ports"][0]["targetPort"], "frontend");
                assert!(kubelens["ports"].as_array().unwrap().iter().all(|p| p["name"] != "http"));
                assert_eq!(kubelens["readinessProbe"]["httpGet"]["port"], "metrics");
            }
            _ => {}
        }
        if combination == "exposed" {
            let annotations = &find(&docs, "Ingress")["metadata"]["annotations"];
            assert_eq!(annotations["nginx.ingress.kubernetes.io/proxy-buffering"], "off");
            assert_eq!(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"], "3600");
            // TLS on the API port: the Secret mounted, server.tls set, the ingress speaks HTTPS.
            assert_eq!(annotations["nginx.ingress.kubernetes.io/backend-protocol"], "HTTPS");
            let config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&config_of(&docs)).unwrap();
            assert_eq!(config["server"]["tls"]["cert_file"].as_str(), Some("/etc/kubelens-tls/tls.crt"));
            let volumes = find(&docs, "Deployment")["spec"]["template"]["spec"]["volumes"].as_array().unwrap().clone();
            assert!(volumes.iter().any(|v| v["secret"]["secretName"] == "kubelens-server-tls"), "{volumes:?}");
            let rules = find(&docs, "PrometheusRule")["spec"]["groups"][0]["rules"].as_array().unwrap().len();
            assert_eq!(rules, 9, "the alerts of docs/operations.md");
            let policy = &find(&docs, "NetworkPolicy")["spec"]["ingress"];
            assert_eq!(policy[1]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], "monitoring");
        }
    }
}

/// Dotted key paths of a YAML/JSON tree's objects (leaves and maps of free keys stop).
fn key_paths(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let Some(map) = value.as_object() {
        for (key, child) in map {
            let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
            out.insert(path.clone());
            if path != "filters.exclude_labels" {
                key_paths(child, &path, out);
            }
        }
    }
}

fn schema_paths(schema: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let Some(props) = schema["properties"].as_object() {
        for (key, child) in props {
            let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
            out.insert(path.clone());
            schema_paths(child, &path, out);
        }
    }
}

#[test]
fn the_schema_of_config_mirrors_every_key_of_examples_config_yaml() {
    let example: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(repo_root().join("examples/config.yaml")).unwrap()).unwrap();
    let mut example_keys = BTreeSet::new();
    key_paths(&serde_json::to_value(example).unwrap(), "", &mut example_keys);
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(chart().join("values.schema.json")).unwrap()).unwrap();
    let mut schema_keys = BTreeSet::new();
    schema_paths(&schema["properties"]["config"], "", &mut schema_keys);
    // The chart owns the listen addresses and TLS (from `secrets.serverTls`); secrets come
    // from Secrets, never values.
    let owned =
        ["server.listen", "server.metrics_listen", "server.tls", "auth.client_secret", "storage.postgres.url", "storage.redis.url"];
    let expected: BTreeSet<String> = example_keys.iter().filter(|k| !owned.contains(&k.as_str())).cloned().collect();
    assert_eq!(schema_keys, expected, "values.schema.json `config` must list exactly the keys of examples/config.yaml");
}

#[test]
fn typos_and_impossible_combinations_fail_rendering() {
    let cases: [(&[&str], &str); 8] = [
        (&["--set", "config.auth.realmm=x"], "realmm"),
        // The chart owns server.tls (from secrets.serverTls).
        (&["--set", "config.server.tls.cert_file=/x"], "tls"),
        (&["--set", "secrets.serverTls.name=t", "--set", "sidecar.enabled=true", "--set", "sidecar.frontend.image=f"], "secrets.serverTls"),
        (&["--set", "replicas=2"], "replicas"),
        (&["--set", "config.storage.backend=mysql"], "backend"),
        (&["--set", "config.storage.postgres.url=postgres://u:p@db/x"], "url"),
        (&["--set", "ingress.enabeld=true"], "enabeld"),
        (&["--set", "replicaCount=2"], "single-writer"),
    ];
    for (args, needle) in cases {
        let err = template("kubelens", "kubelens", None, args).expect_err(&format!("{args:?} must fail"));
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert!(template("kubelens", "kubelens", None, &["--set", "sidecar.enabled=true"]).unwrap_err().contains("sidecar.frontend.image"));
}

/// `kubectl auth can-i --list` as a user in a namespace: a set of (resource, verb).
fn can_i_list(env: &TestEnv, user: &str, namespace: &str) -> BTreeSet<(String, String)> {
    let out = env.kubectl(&["auth", "can-i", "--list", "--as", user, "-n", namespace]).unwrap();
    let mut pairs = BTreeSet::new();
    for line in out.lines().skip(1) {
        let resource = if line.starts_with(char::is_whitespace) {
            format!("non-resource {}", line.split_whitespace().next().unwrap_or_default())
        } else {
            line.split_whitespace().next().unwrap().to_owned()
        };
        let verbs = line.rsplit_once('[').map(|(_, v)| v.trim_end().trim_end_matches(']')).unwrap_or_default();
        for verb in verbs.split_whitespace() {
            pairs.insert((resource.clone(), verb.to_owned()));
        }
    }
    pairs
}

fn permissions(list: &[(&str, &[&str])]) -> BTreeSet<(String, String)> {
    list.iter().flat_map(|(r, verbs)| verbs.iter().map(|v| ((*r).to_owned(), (*v).to_owned()))).collect()
}

/// Applies the manifests; returns kubectl's stderr (warnings).
fn apply(env: &TestEnv, manifest: &str) -> String {
    let mut child = env
        .kubectl_cmd()
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(manifest.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "kubectl apply failed: {stderr}");
    stderr
}

/// A namespace that enforces Pod Security `restricted`.
fn restricted_namespace(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    pod-security.kubernetes.io/enforce: restricted\n    pod-security.kubernetes.io/warn: restricted\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: default\n  namespace: {name}\n"
    )
}

#[test]
fn every_combination_applies_for_real_and_its_service_account_has_exactly_the_documented_permissions() {
    let Some(env) = TestEnv::e2e() else { return };
    apply(env, &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/monitoring-crds.yaml")).unwrap());
    env.kubectl(&["wait", "--for=condition=Established", "--timeout=60s", "crd/servicemonitors.monitoring.coreos.com", "crd/prometheusrules.monitoring.coreos.com"]).unwrap();

    let everywhere = permissions(&[("namespaces", &["get", "list", "watch"])]);
    let read = &["get", "list", "watch"][..];
    let mut allowlisted = permissions(&[
        ("pods", read),
        ("pods/log", read),
        ("events", read),
        ("events.events.k8s.io", read),
        ("deployments.apps", read),
        ("replicasets.apps", read),
        ("statefulsets.apps", read),
        ("daemonsets.apps", read),
        ("jobs.batch", read),
        ("cronjobs.batch", read),
        ("pods.metrics.k8s.io", &["get", "list"]),
    ]);
    allowlisted.extend(everywhere.iter().cloned());

    for combination in COMBINATIONS {
        let namespace = format!("helm-{combination}");
        let release = format!("kubelens-{combination}");
        apply(env, &restricted_namespace(&namespace));
        let rendered = template(&release, &namespace, Some(combination), &[]).unwrap();
        let warnings = apply(env, &rendered);
        assert!(!warnings.contains("PodSecurity"), "{combination}: {warnings}");
        for doc in documents(&rendered) {
            let kind = doc["kind"].as_str().unwrap().to_lowercase();
            let name = doc["metadata"]["name"].as_str().unwrap();
            let ns = doc["metadata"]["namespace"].as_str();
            let mut args = vec!["get", kind.as_str(), name, "-o", "name"];
            if let Some(ns) = ns {
                args.extend(["-n", ns]);
            }
            env.kubectl(&args).unwrap_or_else(|e| panic!("{combination}: {kind}/{name} not stored: {e}"));
        }

        // No controller-manager in testenv: create the Deployment's pod ourselves, on the
        // KWOK node, so Pod Security admission (enforce: restricted) judges the real spec.
        let docs = documents(&rendered);
        let mut pod_spec = find(&docs, "Deployment")["spec"]["template"]["spec"].clone();
        pod_spec["nodeName"] = env.node_name.clone().into();
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{release}-pod"), "namespace": namespace},
            "spec": pod_spec,
        });
        let warnings = apply(env, &pod.to_string());
        assert!(!warnings.contains("PodSecurity"), "{combination}: {warnings}");

        // Effective permissions: what the ServiceAccount may do beyond what every
        // ServiceAccount may (discovery, self reviews) — measured, not assumed.
        let sa = format!("system:serviceaccount:{namespace}:{release}");
        let nobody = format!("system:serviceaccount:{namespace}:default");
        for (ns, want) in [("team-a", &allowlisted), ("team-b", &allowlisted), ("secret-ns", &everywhere), (namespace.as_str(), &everywhere), ("kube-system", &everywhere)] {
            let baseline = can_i_list(env, &nobody, ns);
            let granted: BTreeSet<_> = can_i_list(env, &sa, ns).difference(&baseline).cloned().collect();
            assert_eq!(&granted, want, "{combination}: permissions of {sa} in {ns}");
        }
        for (verb, resource) in [("get", "secrets"), ("list", "secrets"), ("create", "pods/exec"), ("get", "configmaps"), ("delete", "pods")] {
            let out = env.kubectl_cmd().args(["auth", "can-i", verb, resource, "--all-namespaces", "--as", &sa]).output().unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no", "{combination}: {verb} {resource}");
        }
    }
}

/// Renders the sqlite combination as release `kubelens-serve` in its own namespace, applies it,
/// and returns the config.yaml of the ConfigMap stored in the API server.
fn apply_chart(env: &TestEnv) -> String {
    apply(env, &restricted_namespace("helm-serve"));
    apply(env, &template("kubelens-serve", "helm-serve", Some("sqlite"), &[]).unwrap());
    let configmap: Value =
        serde_json::from_str(&env.kubectl(&["-n", "helm-serve", "get", "configmap", "kubelens-serve-config", "-o", "json"]).unwrap()).unwrap();
    configmap["data"]["config.yaml"].as_str().unwrap().to_owned()
}

async fn call(client: &reqwest::Client, method: reqwest::Method, url: &str, token: Option<&str>) -> (u16, String) {
    let mut request = client.request(method, url).timeout(Duration::from_secs(20));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let res = request.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.text().await.unwrap_or_default())
}

#[tokio::test]
async fn the_chart_applies_and_kubelens_serves_every_endpoint_with_its_service_account() {
    let Some(env) = TestEnv::e2e() else { return };
    let config_text = apply_chart(env);

    // The ServiceAccount the chart creates, with a fresh token: exactly the chart's RBAC.
    let token = env.kubectl(&["-n", "helm-serve", "create", "token", "kubelens-serve", "--duration=1h"]).unwrap();
    let token = token.trim();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig_with_token(env, dir.path(), token);

    // The generated config, with only addresses and the Keycloak realm swapped for testenv.
    let mut config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&config_text).unwrap();
    let port = free_port();
    let metrics_port = free_port();
    config["server"]["listen"] = format!("127.0.0.1:{port}").into();
    config["server"]["metrics_listen"] = format!("127.0.0.1:{metrics_port}").into();
    config["auth"]["keycloak_url"] = env.keycloak_url.clone().unwrap().into();
    config["auth"]["realm"] = env.realm.clone().into();
    config["auth"]["client_id"] = env.backend_client_id.clone().into();
    config["auth"]["trusted_clients"] = serde_yaml_ng::to_value(vec![env.cli_client_id.clone()]).unwrap();
    config["storage"]["sqlite"]["path"] = dir.path().join("kubelens.db").to_str().unwrap().into();
    config["kubernetes"] = serde_yaml_ng::to_value(serde_json::json!({"kubeconfig": kubeconfig})).unwrap();
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    let server = Kubelens::start_with_config(dir, &config_path, port);

    let viewer = env.password_token(&env.cli_client_id, "viewer").await;
    let client = reqwest::Client::new();
    let base = server.url.clone();
    use reqwest::Method;
    let get = Method::GET;

    // Every endpoint of the contract, as a viewer.
    let checks: Vec<(Method, String, u16)> = vec![
        (get.clone(), "/healthz".into(), 200),
        (get.clone(), "/readyz".into(), 200),
        (get.clone(), "/api/v1/openapi.json".into(), 200),
        (get.clone(), "/api/v1/me".into(), 200),
        (Method::POST, "/api/v1/stream-tickets".into(), 201),
        (get.clone(), "/api/v1/session".into(), 200),
        (Method::DELETE, "/api/v1/session".into(), 204),
        (get.clone(), "/api/v1/namespaces".into(), 200),
        (get.clone(), "/api/v1/namespaces/team-a/pods".into(), 200),
        (get.clone(), "/api/v1/namespaces/team-a/pods/debug".into(), 200),
        (get.clone(), "/api/v1/namespaces/team-a/pods/debug/details".into(), 200),
        (get.clone(), "/api/v1/namespaces/team-a/pods/debug/logs?follow=false&tailLines=5".into(), 200),
        (get.clone(), "/api/v1/namespaces/team-a/apps".into(), 200),
        (get.clone(), "/api/v1/namespaces/team-a/apps/web".into(), 200),
        (get.clone(), "/api/v1/namespaces/team-a/apps/web/logs?follow=false&tailLines=5".into(), 200),
        (get.clone(), "/api/v1/namespaces/team-b/apps/api".into(), 200),
    ];
    for (method, path, expected) in checks {
        let (status, body) = call(&client, method.clone(), &format!("{base}{path}"), Some(&viewer)).await;
        assert_eq!(status, expected, "{method} {path}: {body}\n{}", server.log());
    }
    let (status, body) = call(&client, get.clone(), &format!("{base}/api/v1/namespaces/team-a/pods/debug/logs?follow=false&tailLines=5"), Some(&viewer)).await;
    assert_eq!(status, 200);
    assert!(body.contains("seed line"), "{body}");
    let metrics_status = call(&client, get.clone(), &format!("{base}/api/v1/namespaces/team-a/pods/debug/metrics"), Some(&viewer)).await.0;
    assert!(matches!(metrics_status, 200 | 404 | 503), "metrics answered {metrics_status}");

    // The pod change stream answers as SSE.
    let res = client
        .get(format!("{base}/api/v1/namespaces/team-a/pods/watch"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    drop(res);

    // Prometheus metrics on the separate, unauthenticated listener, scraped while a log
    // stream is open: the stream, its upstream and its lines are counted.
    let mut stream = client
        .get(format!("{base}/api/v1/namespaces/team-a/pods/debug/logs?tailLines=3"))
        .bearer_auth(&viewer)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut received = String::new();
    while received.matches("event: log").count() < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(20), stream.chunk()).await.unwrap().unwrap().unwrap();
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    let (status, metrics) = call(&client, get.clone(), &format!("http://127.0.0.1:{metrics_port}/metrics"), None).await;
    assert_eq!(status, 200);
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert!(metrics.contains("kubelens_http_requests_total"), "{metrics}");
    assert!(value("kubelens_sse_streams_open") >= 1.0, "{metrics}");
    assert!(value("kubelens_upstream_log_streams_open") >= 1.0, "{metrics}");
    assert!(value("kubelens_upstream_log_streams_opened_total") >= 3.0, "two one-shot reads and the stream: {metrics}");
    assert!(value("kubelens_log_lines_sent_total") >= 3.0, "{metrics}");
    assert!(value("kubelens_log_lines_received_total") >= 3.0, "{metrics}");
    drop(stream);

    // A namespace outside the allowlist: 404 from our policy ...
    let (status, _) = call(&client, get.clone(), &format!("{base}/api/v1/namespaces/secret-ns/pods"), Some(&viewer)).await;
    assert_eq!(status, 404);
    // ... and RBAC would refuse it too: the same ServiceAccount token cannot list there, nor
    // read secrets anywhere.
    let apiserver = env.apiserver_client().unwrap();
    for path in ["/api/v1/namespaces/secret-ns/pods", "/api/v1/namespaces/team-a/secrets", "/api/v1/namespaces/team-a/pods"] {
        let res = apiserver.get(format!("{}{path}", env.apiserver_url)).bearer_auth(token).send().await.unwrap();
        let expected = if path == "/api/v1/namespaces/team-a/pods" { 200 } else { 403 };
        assert_eq!(res.status().as_u16(), expected, "RBAC for {path}");
    }
}
