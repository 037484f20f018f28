//! Test support for the KubeLens testenv (a real kube-apiserver + etcd + KWOK
//! (+ metrics-server) + Keycloak on loopback, started by `testenv/up` or `testenv/run`).
//!
//! ```no_run
//! # async fn demo() {
//! use kubelens_testenv::TestEnv;
//! let Some(env) = TestEnv::e2e() else { return }; // KUBELENS_SKIP_E2E=1
//! let token = env.password_token(&env.cli_client_id, "viewer").await;
//! let pods = env.kubectl(&["-n", "team-a", "get", "pods", "-o", "name"]).unwrap();
//! # let _ = (token, pods);
//! # }
//! ```
//!
//! The env file is found at `$KUBELENS_TESTENV_ENV`, else `$TESTENV_DIR/env`, else
//! `<workspace>/target/testenv/env`. See `testenv/README.md` for the seeded objects.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;

/// The message tests fail with when the testenv is not running.
pub const NOT_RUNNING: &str = "testenv not running: run testenv/run -- cargo test (or testenv/up, then \
     cargo test); set KUBELENS_SKIP_E2E=1 to skip e2e tests";

/// Test users seeded in the Keycloak realm `kubelens` (username = password minus `-pw`).
pub const USERS: [&str; 4] = ["nogroup", "viewer", "admin", "evil"];

/// A running testenv, as described by its env file.
#[derive(Clone)]
pub struct TestEnv {
    /// Directory of this testenv (`TESTENV_DIR`).
    pub dir: PathBuf,
    /// Admin kubeconfig (`TESTENV_KUBECONFIG`).
    pub kubeconfig: PathBuf,
    /// kubectl binary (`TESTENV_KUBECTL`, default `kubectl`).
    pub kubectl: PathBuf,
    /// `https://127.0.0.1:PORT` (`TESTENV_APISERVER_URL`).
    pub apiserver_url: String,
    /// Host and port of the apiserver (for in-cluster mode: `KUBERNETES_SERVICE_HOST`/`PORT`).
    pub apiserver_host: String,
    /// See [`TestEnv::apiserver_host`].
    pub apiserver_port: u16,
    /// PEM CA of the apiserver (`TESTENV_APISERVER_CA`).
    pub apiserver_ca: PathBuf,
    /// `system:masters` bearer token (`TESTENV_ADMIN_TOKEN`).
    pub admin_token: String,
    /// Token of ServiceAccount `kubelens/kubelens`, bound by the RBAC rendered from `deploy/helm/kubelens`.
    pub sa_token: String,
    /// `kubelens`.
    pub sa_namespace: String,
    /// `kubelens`.
    pub sa_name: String,
    /// Directory laid out like `/var/run/secrets/kubernetes.io/serviceaccount` (token, ca.crt, namespace).
    pub sa_dir: PathBuf,
    /// Namespaces the RBAC grants (`team-a`, `team-b`).
    pub allowed_namespaces: Vec<String>,
    /// KWOK node the seeded pods run on.
    pub node_name: String,
    /// Root of the CRI log files KWOK serves (`<ns>/<pod>/<container>.log`).
    pub log_dir: PathBuf,
    /// The loggen binary.
    pub loggen: PathBuf,
    /// Whether metrics-server runs (metrics.k8s.io available).
    pub metrics: bool,
    /// `http://127.0.0.1:PORT`, `None` with `--no-keycloak`.
    pub keycloak_url: Option<String>,
    /// `kubelens`.
    pub realm: String,
    /// `{keycloak_url}/realms/{realm}`, the `iss` of every token.
    pub issuer_url: Option<String>,
    /// Confidential client of the backend (the audience the web client's tokens carry).
    pub backend_client_id: String,
    /// Its secret.
    pub backend_client_secret: String,
    /// Public direct-grant client, default token shape (no `kubelens` audience).
    pub cli_client_id: String,
    /// Public direct-grant client with an Audience mapper adding `kubelens`.
    pub web_client_id: String,
    /// Test users: username → password.
    pub users: BTreeMap<String, String>,
    /// Keycloak admin (master realm), for admin REST API calls (e.g. key rotation).
    pub keycloak_admin_user: Option<String>,
    /// Its password.
    pub keycloak_admin_password: Option<String>,
    /// Every key of the env file, raw.
    pub vars: BTreeMap<String, String>,
}

impl fmt::Debug for TestEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Tokens and passwords stay out of test output.
        f.debug_struct("TestEnv")
            .field("dir", &self.dir)
            .field("apiserver_url", &self.apiserver_url)
            .field("keycloak_url", &self.keycloak_url)
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

/// Token endpoint answer.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenResponse {
    /// The access token (JWT).
    pub access_token: String,
    /// ID token, when `scope=openid`.
    #[serde(default)]
    pub id_token: Option<String>,
    /// Refresh token.
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// Lifetime in seconds.
    #[serde(default)]
    pub expires_in: u64,
}

static ENV: OnceLock<Option<TestEnv>> = OnceLock::new();

impl TestEnv {
    /// Where the env file is looked for.
    pub fn env_file_path() -> PathBuf {
        if let Some(p) = std::env::var_os("KUBELENS_TESTENV_ENV").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        if let Some(d) = std::env::var_os("TESTENV_DIR").filter(|p| !p.is_empty()) {
            return PathBuf::from(d).join("env");
        }
        workspace_root().join("target").join("testenv").join("env")
    }

    /// The running testenv, or `None` when there is no env file (loaded once per process).
    ///
    /// # Panics
    /// When an env file exists but cannot be parsed (a broken testenv is a failure, not a skip).
    pub fn get() -> Option<&'static TestEnv> {
        ENV.get_or_init(|| {
            let path = Self::env_file_path();
            if !path.exists() {
                return None;
            }
            match Self::load(&path) {
                Ok(env) => Some(env),
                #[allow(clippy::panic)]
                Err(e) => panic!("testenv env file {} is unusable: {e:#}", path.display()),
            }
        })
        .as_ref()
    }

    /// The running testenv.
    ///
    /// # Panics
    /// With [`NOT_RUNNING`] when there is none.
    #[allow(clippy::panic)]
    pub fn require() -> &'static TestEnv {
        match Self::get() {
            Some(env) => env,
            None => panic!(
                "{NOT_RUNNING} (no env file at {})",
                Self::env_file_path().display()
            ),
        }
    }

    /// `true` when `KUBELENS_SKIP_E2E=1` (or `true`).
    pub fn skip_e2e() -> bool {
        matches!(
            std::env::var("KUBELENS_SKIP_E2E").as_deref(),
            Ok("1") | Ok("true")
        )
    }

    /// For e2e tests: `None` (skip) only when `KUBELENS_SKIP_E2E=1`; otherwise the running
    /// testenv, and a panic (test failure) when there is none.
    pub fn e2e() -> Option<&'static TestEnv> {
        if Self::skip_e2e() {
            eprintln!("KUBELENS_SKIP_E2E=1: skipping e2e test");
            return None;
        }
        Some(Self::require())
    }

    /// Parse an env file (`KEY=VALUE` lines, `#` comments).
    pub fn load(path: &Path) -> anyhow::Result<TestEnv> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text)
    }

    /// Parse env file text.
    pub fn parse(text: &str) -> anyhow::Result<TestEnv> {
        let mut vars = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| anyhow!("not KEY=VALUE: {line}"))?;
            vars.insert(k.trim().to_owned(), v.trim().to_owned());
        }
        let req = |k: &str| -> anyhow::Result<String> {
            vars.get(k)
                .cloned()
                .ok_or_else(|| anyhow!("env file lacks {k}"))
        };
        let opt = |k: &str| vars.get(k).filter(|v| !v.is_empty()).cloned();
        let mut users = BTreeMap::new();
        for (k, v) in &vars {
            if let Some(name) = k
                .strip_prefix("TESTENV_USER_")
                .and_then(|r| r.strip_suffix("_PASSWORD"))
            {
                users.insert(name.to_ascii_lowercase(), v.clone());
            }
        }
        let keycloak_url = opt("TESTENV_KEYCLOAK_URL");
        let realm = opt("TESTENV_REALM").unwrap_or_else(|| "kubelens".into());
        Ok(TestEnv {
            dir: req("TESTENV_DIR")?.into(),
            kubeconfig: req("TESTENV_KUBECONFIG")?.into(),
            kubectl: opt("TESTENV_KUBECTL")
                .unwrap_or_else(|| "kubectl".into())
                .into(),
            apiserver_url: req("TESTENV_APISERVER_URL")?,
            apiserver_host: opt("TESTENV_APISERVER_HOST").unwrap_or_else(|| "127.0.0.1".into()),
            apiserver_port: opt("TESTENV_APISERVER_PORT")
                .map(|p| p.parse())
                .transpose()?
                .unwrap_or(0),
            apiserver_ca: req("TESTENV_APISERVER_CA")?.into(),
            admin_token: req("TESTENV_ADMIN_TOKEN")?,
            sa_token: req("TESTENV_SA_TOKEN")?,
            sa_namespace: opt("TESTENV_SA_NAMESPACE").unwrap_or_else(|| "kubelens".into()),
            sa_name: opt("TESTENV_SA_NAME").unwrap_or_else(|| "kubelens".into()),
            sa_dir: opt("TESTENV_SA_DIR").unwrap_or_default().into(),
            allowed_namespaces: opt("TESTENV_ALLOWED_NAMESPACES")
                .map(|s| s.split(',').map(str::to_owned).collect())
                .unwrap_or_default(),
            node_name: opt("TESTENV_NODE_NAME").unwrap_or_else(|| "kwok-node-0".into()),
            log_dir: req("TESTENV_LOG_DIR")?.into(),
            loggen: opt("TESTENV_LOGGEN")
                .unwrap_or_else(|| "loggen".into())
                .into(),
            metrics: opt("TESTENV_METRICS").as_deref() == Some("1"),
            issuer_url: keycloak_url.as_ref().map(|u| format!("{u}/realms/{realm}")),
            keycloak_url,
            realm,
            backend_client_id: opt("TESTENV_BACKEND_CLIENT_ID")
                .unwrap_or_else(|| "kubelens".into()),
            backend_client_secret: opt("TESTENV_BACKEND_CLIENT_SECRET").unwrap_or_default(),
            cli_client_id: opt("TESTENV_CLI_CLIENT_ID").unwrap_or_else(|| "kubelens-cli".into()),
            web_client_id: opt("TESTENV_WEB_CLIENT_ID").unwrap_or_else(|| "kubelens-web".into()),
            users,
            keycloak_admin_user: opt("TESTENV_KEYCLOAK_ADMIN_USER"),
            keycloak_admin_password: opt("TESTENV_KEYCLOAK_ADMIN_PASSWORD"),
            vars,
        })
    }

    /// A raw env file value.
    pub fn var(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    /// Password of a test user.
    pub fn password(&self, user: &str) -> Option<&str> {
        self.users.get(user).map(String::as_str)
    }

    // ---- Keycloak ------------------------------------------------------------------------

    /// `{keycloak}/realms/{realm}/protocol/openid-connect/token`.
    pub fn token_endpoint(&self) -> anyhow::Result<String> {
        let kc = self
            .keycloak_url
            .as_deref()
            .context("testenv runs without Keycloak (--no-keycloak)")?;
        Ok(format!(
            "{kc}/realms/{}/protocol/openid-connect/token",
            self.realm
        ))
    }

    /// Password grant for a test user through `client_id` (a public direct-grant client:
    /// [`TestEnv::cli_client_id`] or [`TestEnv::web_client_id`]).
    pub async fn try_password_token(
        &self,
        client_id: &str,
        user: &str,
    ) -> anyhow::Result<TokenResponse> {
        let password = self
            .password(user)
            .ok_or_else(|| anyhow!("unknown test user {user:?}"))?;
        let form = [
            ("grant_type", "password"),
            ("client_id", client_id),
            ("username", user),
            ("password", password),
            ("scope", "openid"),
        ];
        let resp = post_form(&self.token_endpoint()?, &form).await?;
        let status = resp.status();
        let body = resp.text().await?;
        if !status.is_success() {
            bail!("password grant for {user} via {client_id}: HTTP {status}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// Access token (JWT) of a test user through `client_id`.
    ///
    /// # Panics
    /// When the grant fails (tests may panic).
    #[allow(clippy::panic)]
    pub async fn password_token(&self, client_id: &str, user: &str) -> String {
        match self.try_password_token(client_id, user).await {
            Ok(t) => t.access_token,
            Err(e) => panic!("{e:#}"),
        }
    }

    /// Access token of the Keycloak admin (master realm), for the admin REST API.
    pub async fn keycloak_admin_token(&self) -> anyhow::Result<String> {
        let kc = self
            .keycloak_url
            .as_deref()
            .context("testenv runs without Keycloak")?;
        let user = self
            .keycloak_admin_user
            .as_deref()
            .context("no Keycloak admin user")?;
        let pass = self
            .keycloak_admin_password
            .as_deref()
            .context("no Keycloak admin password")?;
        let form = [
            ("grant_type", "password"),
            ("client_id", "admin-cli"),
            ("username", user),
            ("password", pass),
        ];
        let resp = post_form(
            &format!("{kc}/realms/master/protocol/openid-connect/token"),
            &form,
        )
        .await?
        .error_for_status()?;
        Ok(resp.json::<TokenResponse>().await?.access_token)
    }

    // ---- Kubernetes -----------------------------------------------------------------------

    /// A `kubectl` command using the admin kubeconfig.
    pub fn kubectl_cmd(&self) -> Command {
        let mut c = Command::new(&self.kubectl);
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        c
    }

    /// A `kubectl` command authenticated as the backend's ServiceAccount (RBAC of
    /// `deploy/helm/kubelens/templates/rbac.yaml`).
    pub fn kubectl_sa_cmd(&self) -> Command {
        let mut c = Command::new(&self.kubectl);
        c.arg("--server")
            .arg(&self.apiserver_url)
            .arg("--certificate-authority")
            .arg(&self.apiserver_ca)
            .arg("--token")
            .arg(&self.sa_token)
            .arg("--kubeconfig")
            .arg("/dev/null");
        c
    }

    /// Run kubectl (admin) and return stdout; stderr is in the error.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        run_cmd(self.kubectl_cmd().args(args))
    }

    /// Run kubectl as the backend's ServiceAccount and return stdout.
    pub fn kubectl_sa(&self, args: &[&str]) -> anyhow::Result<String> {
        run_cmd(self.kubectl_sa_cmd().args(args))
    }

    /// Apply a manifest (YAML or JSON) with the admin kubeconfig.
    pub fn kubectl_apply(&self, manifest: &str) -> anyhow::Result<String> {
        let mut child = self
            .kubectl_cmd()
            .args(["apply", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("spawning kubectl")?;
        child
            .stdin
            .take()
            .context("kubectl stdin")?
            .write_all(manifest.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl apply failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// An HTTP client that trusts the apiserver's CA.
    pub fn apiserver_client(&self) -> anyhow::Result<reqwest::Client> {
        let pem = fs::read(&self.apiserver_ca)?;
        let cert = reqwest::Certificate::from_pem(&pem)?;
        Ok(reqwest::Client::builder().tls_certs_only([cert]).build()?)
    }

    /// Environment for running the backend in in-cluster mode against this testenv:
    /// `KUBERNETES_SERVICE_HOST`/`PORT` (token and CA are in [`TestEnv::sa_dir`]).
    pub fn in_cluster_env(&self) -> Vec<(String, String)> {
        vec![
            (
                "KUBERNETES_SERVICE_HOST".into(),
                self.apiserver_host.clone(),
            ),
            (
                "KUBERNETES_SERVICE_PORT".into(),
                self.apiserver_port.to_string(),
            ),
        ]
    }

    // ---- Logs -------------------------------------------------------------------------------

    /// The CRI log file KWOK serves for a container of a seeded pod.
    pub fn log_path(&self, namespace: &str, pod: &str, container: &str) -> PathBuf {
        self.log_dir
            .join(namespace)
            .join(pod)
            .join(format!("{container}.log"))
    }

    /// The file KWOK serves for `previous=true`.
    pub fn previous_log_path(&self, namespace: &str, pod: &str, container: &str) -> PathBuf {
        self.log_dir
            .join(namespace)
            .join(pod)
            .join(format!("{container}.previous.log"))
    }

    /// Map a (test-created) pod's containers to log files: creates or updates the KWOK
    /// `Logs` object named after the pod. Returns the log paths, in `containers` order.
    pub fn ensure_pod_logs(
        &self,
        namespace: &str,
        pod: &str,
        containers: &[&str],
    ) -> anyhow::Result<Vec<PathBuf>> {
        let mut entries = Vec::new();
        let mut paths = Vec::new();
        for c in containers {
            let p = self.log_path(namespace, pod, c);
            if let Some(dir) = p.parent() {
                fs::create_dir_all(dir)?;
            }
            fs::OpenOptions::new().create(true).append(true).open(&p)?;
            entries.push(serde_json::json!({
                "containers": [c],
                "logsFile": p,
                "previousLogsFile": self.previous_log_path(namespace, pod, c),
                "follow": true,
            }));
            paths.push(p);
        }
        let obj = serde_json::json!({
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Logs",
            "metadata": {"name": pod, "namespace": namespace},
            "spec": {"logs": entries},
        });
        self.kubectl_apply(&obj.to_string())?;
        Ok(paths)
    }

    /// Wait until KWOK serves `pod`'s own log file for `container` rather than the seeded
    /// "no KWOK Logs object" fallback. KWOK learns of `Logs` objects through a watch, so a
    /// pod can be Running before its `Logs` object is seen (notably right after an apiserver
    /// restart, while KWOK's watches back off). Call it once the pod exists.
    pub fn wait_logs_mapped(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        timeout: std::time::Duration,
    ) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let out = self.kubectl(&["-n", namespace, "logs", pod, "-c", container, "--tail=1"]);
            match out {
                Ok(text) if !text.contains(UNMAPPED_LOG_MARKER) => return Ok(()),
                Ok(_) | Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                Ok(_) => bail!("KWOK still serves the unmapped log for {namespace}/{pod} after {timeout:?}"),
                Err(e) => return Err(e.context(format!("kubectl logs {namespace}/{pod}"))),
            }
        }
    }

    /// Wait until KWOK's `Logs` watch is current: creates a probe pod with its own `Logs`
    /// object, waits until its log is served, then deletes both. Use after disrupting the
    /// apiserver, so later tests do not race KWOK's watch back-off.
    pub fn wait_kwok_logs_current(&self, timeout: std::time::Duration) -> anyhow::Result<()> {
        let namespace = "team-a";
        let pod = format!("testenv-logs-probe-{}", std::process::id());
        self.ensure_pod_logs(namespace, &pod, &["app"])?;
        let manifest = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "namespace": namespace, "labels": {"testenv": "probe"}},
            "spec": {
                "nodeName": self.node_name,
                "containers": [{"name": "app", "image": "registry.invalid/probe:1"}],
                "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
            }
        });
        self.kubectl_apply(&manifest.to_string())?;
        let waited = self.wait_logs_mapped(namespace, &pod, "app", timeout);
        let _ = self.kubectl(&["-n", namespace, "delete", "pod", &pod, "--grace-period=0", "--force", "--wait=false"]);
        let _ = self.kubectl(&["-n", namespace, "delete", "logs.kwok.x-k8s.io", &pod, "--wait=false"]);
        waited
    }

    /// A `loggen` command (see `testenv/README.md`: `--file --count --rate --size --src
    /// --start-seq --rotate-every --restart`).
    pub fn loggen_cmd(&self) -> Command {
        Command::new(&self.loggen)
    }
}

/// Text of the line KWOK serves for pods without a `Logs` object (seeded by `testenv/lib/seed.py`).
pub const UNMAPPED_LOG_MARKER: &str = "this pod has no KWOK Logs object";

/// One CRI log line: `<RFC3339Nano UTC> <stream> F <text>\n`.
pub fn cri_line(ts: DateTime<Utc>, stream: &str, text: &str) -> String {
    format!(
        "{} {stream} F {text}\n",
        ts.to_rfc3339_opts(SecondsFormat::Nanos, true)
    )
}

/// Append lines to a CRI log file (stdout, timestamped now, one write per call).
pub fn append_cri_lines<S: AsRef<str>>(path: &Path, lines: &[S]) -> std::io::Result<()> {
    append_cri_lines_at(path, Utc::now(), "stdout", lines)
}

/// Append lines to a CRI log file with a given timestamp and stream.
pub fn append_cri_lines_at<S: AsRef<str>>(
    path: &Path,
    ts: DateTime<Utc>,
    stream: &str,
    lines: &[S],
) -> std::io::Result<()> {
    let mut buf = String::new();
    for l in lines {
        buf.push_str(&cri_line(ts, stream, l.as_ref()));
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(buf.as_bytes())
}

/// Decode (without verifying) the claims of a JWT.
pub fn jwt_claims(token: &str) -> anyhow::Result<serde_json::Value> {
    let payload = token.split('.').nth(1).context("not a JWT")?;
    let bytes =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('='))?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// The `aud` claim as a list (absent → empty; string → one element).
pub fn jwt_audiences(claims: &serde_json::Value) -> Vec<String> {
    match claims.get("aud") {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// The `groups` claim as a list (absent → empty).
pub fn jwt_groups(claims: &serde_json::Value) -> Vec<String> {
    claims
        .get("groups")
        .and_then(|g| g.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?)
}

/// `application/x-www-form-urlencoded` encoding of `pairs`.
pub fn form_urlencode(pairs: &[(&str, &str)]) -> String {
    fn enc(s: &str, out: &mut String) {
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    out.push(b as char)
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
    }
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        enc(k, &mut out);
        out.push('=');
        enc(v, &mut out);
    }
    out
}

/// POST a form (the workspace's reqwest has no `form` feature).
pub async fn post_form(url: &str, pairs: &[(&str, &str)]) -> anyhow::Result<reqwest::Response> {
    Ok(http_client()?
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_urlencode(pairs))
        .send()
        .await?)
}

fn run_cmd(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The workspace root (this crate lives at `<root>/testenv/support`).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| here.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_env_file() -> anyhow::Result<()> {
        let env = TestEnv::parse(
            "# c\nTESTENV_DIR=/t\nTESTENV_KUBECONFIG=/t/kubeconfig\nTESTENV_APISERVER_URL=https://127.0.0.1:1\n\
             TESTENV_APISERVER_CA=/t/ca\nTESTENV_ADMIN_TOKEN=a\nTESTENV_SA_TOKEN=s\nTESTENV_LOG_DIR=/t/logs\n\
             TESTENV_KEYCLOAK_URL=\nTESTENV_USER_VIEWER_PASSWORD=viewer-pw\nTESTENV_METRICS=1\n",
        )?;
        assert_eq!(env.keycloak_url, None);
        assert_eq!(env.issuer_url, None);
        assert_eq!(env.password("viewer"), Some("viewer-pw"));
        assert!(env.metrics);
        assert_eq!(
            env.log_path("ns", "p", "c"),
            PathBuf::from("/t/logs/ns/p/c.log")
        );
        Ok(())
    }

    #[test]
    fn cri_line_format() {
        let ts =
            DateTime::parse_from_rfc3339("2026-01-30T10:00:00.5Z").map(|t| t.with_timezone(&Utc));
        let line = ts.map(|t| cri_line(t, "stdout", "hi")).unwrap_or_default();
        assert_eq!(line, "2026-01-30T10:00:00.500000000Z stdout F hi\n");
    }

    #[test]
    fn decodes_jwt_claims() -> anyhow::Result<()> {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"aud":"x","groups":["/g"]}"#);
        let claims = jwt_claims(&format!("h.{payload}.s"))?;
        assert_eq!(jwt_audiences(&claims), vec!["x"]);
        assert_eq!(jwt_groups(&claims), vec!["/g"]);
        Ok(())
    }
}
