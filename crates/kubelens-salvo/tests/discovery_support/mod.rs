//! Shared by the discovery e2e tests: a real backend (the kubelens router served on
//! 127.0.0.1) whose Kubernetes client authenticates as the testenv ServiceAccount bound only
//! by the Helm chart's RBAC (`deploy/helm/kubelens/templates/rbac.yaml`), and whose auth hoop validates real Keycloak tokens.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kubelens_core::auth::Authenticator;
use kubelens_core::cluster::Cluster;
use kubelens_core::policy::AccessPolicy;
use kubelens_core::{Config, Readiness};
use kubelens_salvo::AppState;
use kubelens_testenv::TestEnv;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// A running backend.
pub struct Backend {
    pub base: String,
    pub addr: SocketAddr,
    pub token: String,
    pub cluster: Cluster,
    pub state: AppState,
    pub http: reqwest::Client,
    stop: CancellationToken,
    _key_refresh: kubelens_core::auth::KeyRefreshTask,
    _dir: tempfile::TempDir,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A kubeconfig that reads the ServiceAccount token from its file (`tokenFile`): the same
/// reload path kube-rs uses in-cluster for `/var/run/secrets/kubernetes.io/serviceaccount/token`.
pub fn sa_kubeconfig(env: &TestEnv, dir: &std::path::Path) -> PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: testenv\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
         users:\n- name: kubelens\n  user:\n    tokenFile: {}\ncontexts:\n- name: kubelens\n  context:\n    cluster: testenv\n    user: kubelens\n\
         current-context: kubelens\n",
        env.apiserver_url,
        env.sa_dir.join("ca.crt").display(),
        env.sa_dir.join("token").display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts the backend with `extra` YAML appended to the config (filters, etc.) and waits
/// until `/readyz` is 200 (caches synced, OIDC keys loaded).
pub async fn start(env: &TestEnv, extra: &str) -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = sa_kubeconfig(env, dir.path());
    let text = format!(
        "auth:\n  keycloak_url: {}\n  realm: {}\n  client_id: {}\n  allowed_groups: [k8s-logs-access]\n  admin_group: k8s-admin-access\n\
         namespaces:\n  allowed: [team-a, team-b]\nkubernetes:\n  kubeconfig: {}\n  qps: 50\n  burst: 100\n\
         logs:\n  keepalive_interval: 2s\nstorage:\n  backend: memory\n{extra}",
        env.keycloak_url.as_deref().expect("testenv with Keycloak"),
        env.realm,
        env.backend_client_id,
        kubeconfig.display(),
    );
    let (config, _) = Config::load(&text, |_| None).unwrap();
    let readiness = Readiness::new();
    let auth = Authenticator::new(&config.auth).unwrap();
    let key_refresh = auth.spawn_key_refresh(readiness.register("oidc", "loading"));
    let policy = AccessPolicy::from_config(&config).unwrap();
    let (cluster, _source) = Cluster::start(&config.kubernetes, &policy, &readiness).await.unwrap();
    let state = AppState::new(config, readiness).with_auth(auth).with_cluster(cluster.clone());
    let stop = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let serve_state = state.clone();
    let stop_signal = stop.clone();
    tokio::spawn(async move {
        kubelens_salvo::server::serve(
            serve_state,
            "127.0.0.1:0".parse().unwrap(),
            async move { stop_signal.cancelled().await },
            move |addr| {
                let _ = tx.send(addr);
            },
        )
        .await
        .unwrap();
    });
    let addr = tokio::time::timeout(Duration::from_secs(10), rx).await.unwrap().unwrap();
    let base = format!("http://{addr}");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let res = http.get(format!("{base}/readyz")).send().await.unwrap();
        if res.status() == 200 {
            break;
        }
        let body = res.text().await.unwrap_or_default();
        assert!(Instant::now() < deadline, "backend not ready in 90 s: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let token = env.password_token(&env.web_client_id, "viewer").await;
    Backend { base, addr, token, cluster, state, http, stop, _key_refresh: key_refresh, _dir: dir }
}

impl Backend {
    /// GET with the viewer's bearer token: status and JSON body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let res = self.http.get(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Names of the visible pods of `ns`.
    pub async fn pod_names(&self, ns: &str) -> Vec<String> {
        let (status, body) = self.get(&format!("/api/v1/namespaces/{ns}/pods")).await;
        assert_eq!(status, 200, "{body}");
        body.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_owned()).collect()
    }

    /// Sends `request_line` verbatim (no client-side URL normalisation) and returns the status.
    pub async fn raw_status(&self, target: &str) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            self.token
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&buf);
        text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    /// Opens the pod change stream of `ns`.
    pub async fn watch(&self, ns: &str) -> SseReader {
        let res = self
            .http
            .get(format!("{}/api/v1/namespaces/{ns}/pods/watch", self.base))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(600))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        SseReader { res, buf: String::new() }
    }
}

/// Minimal SSE reader over a reqwest response.
pub struct SseReader {
    res: reqwest::Response,
    buf: String,
}

impl SseReader {
    /// The next named event `(name, data)`, or `None` on timeout / end of stream.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<(String, Value)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let name = block.lines().find_map(|l| l.strip_prefix("event:")).map(|s| s.trim().to_owned());
                let data = block.lines().find_map(|l| l.strip_prefix("data:")).map(|s| s.trim().to_owned());
                if let (Some(name), Some(data)) = (name, data) {
                    return Some((name, serde_json::from_str(&data).unwrap_or(Value::Null)));
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.res.chunk()).await.ok()?.ok()??;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Waits for an event named `name` about pod `pod`, skipping others.
    pub async fn wait_for(&mut self, name: &str, pod: &str, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let (event, data) = self.next_event(left).await?;
            if event == name && data["name"] == pod {
                return Some(data);
            }
        }
        None
    }
}

/// A pod manifest for the KWOK node (no scheduler in testenv).
pub fn pod_manifest(ns: &str, name: &str, labels: &[(&str, &str)]) -> String {
    let labels: String = labels.iter().map(|(k, v)| format!("    {k}: \"{v}\"\n")).collect();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    e2e: discovery\n{labels}\
         spec:\n  nodeName: kwok-node-0\n  containers:\n  - name: app\n    image: registry.invalid/kubelens/demo:1.0\n"
    )
}

/// A name unique to this process and call.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Deletes a pod without waiting (KWOK finalises the deletion).
pub fn delete_pod(env: &TestEnv, ns: &str, name: &str) {
    let _ = env.kubectl(&["-n", ns, "delete", "pod", name, "--grace-period=0", "--force", "--wait=false"]);
}
