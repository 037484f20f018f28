//! Runs the real `kubelens` binary against the running testenv, the way an operator would:
//! the ServiceAccount's token (bound only by `deploy/`'s RBAC) in a kubeconfig, the testenv
//! Keycloak as issuer, a config file written for the test.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kubelens_testenv::TestEnv;

/// A running `kubelens` process; killed on drop.
pub struct Kubelens {
    child: Child,
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// Working directory (config, kubeconfig, sqlite file).
    pub dir: tempfile::TempDir,
    stderr_path: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A kubeconfig that authenticates as the backend's ServiceAccount.
pub fn sa_kubeconfig(env: &TestEnv, dir: &Path) -> PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: testenv\n  cluster:\n    server: {}\n    certificate-authority: {}\ncontexts:\n- name: sa\n  context:\n    cluster: testenv\n    user: kubelens\ncurrent-context: sa\nusers:\n- name: kubelens\n  user:\n    token: {}\n",
        env.apiserver_url,
        env.apiserver_ca.display(),
        env.sa_token
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A kubeconfig for the testenv API server that authenticates with `token`.
pub fn kubeconfig_with_token(env: &TestEnv, dir: &Path, token: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: {token}\n",
            env.apiserver_url,
            env.apiserver_ca.display()
        ),
    )
    .unwrap();
    path
}

/// The helm binary; panics (never skips) when there is none.
pub fn helm() -> PathBuf {
    for var in ["KUBELENS_HELM", "TESTENV_HELM"] {
        if let Some(path) = std::env::var_os(var).map(PathBuf::from)
            && path.is_file()
        {
            return path;
        }
    }
    let versions = std::fs::read_to_string(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("testenv/versions.env")).unwrap();
    let k8s = versions.lines().find_map(|l| l.strip_prefix("KUBERNETES_VERSION=")).unwrap();
    let cache = std::env::var_os("KUBELENS_TESTENV_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/kubelens-testenv"));
    let cached = cache.join(k8s).join("bin/helm");
    if cached.is_file() {
        return cached;
    }
    let on_path = Command::new("helm").arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if on_path.is_ok_and(|s| s.success()) {
        return PathBuf::from("helm");
    }
    panic!("helm not found ($KUBELENS_HELM, $TESTENV_HELM, {}, PATH): run scripts/ci-prereqs", cached.display());
}

/// A kube client configuration authenticating as the backend's ServiceAccount (for tests
/// that run the router in-process instead of the binary).
pub async fn sa_kube_config(env: &TestEnv) -> kube::Config {
    let dir = tempfile::tempdir().unwrap();
    let path = sa_kubeconfig(env, dir.path());
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap()
}

/// The config the e2e tests run with; `extra` is appended verbatim (top-level sections).
pub fn e2e_config(env: &TestEnv, port: u16, kubeconfig: &Path, extra: &str) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:{port}\n  shutdown_grace: 3s\nauth:\n  keycloak_url: {kc}\n  realm: {realm}\n  client_id: {client}\n  trusted_clients: [{cli}, {web}]\n  allowed_groups: [k8s-logs-access]\n  admin_group: k8s-admin-access\nkubernetes:\n  kubeconfig: {kubeconfig}\nnamespaces:\n  allowed: [team-a, team-b]\nfilters:\n  exclude_labels:\n    kubelens.io/hide: \"true\"\nstorage:\n  backend: memory\n{extra}",
        kc = env.keycloak_url.as_deref().expect("testenv must run with Keycloak"),
        realm = env.realm,
        client = env.backend_client_id,
        cli = env.cli_client_id,
        web = env.web_client_id,
        kubeconfig = kubeconfig.display(),
    )
}

impl Kubelens {
    /// Starts kubelens with [`e2e_config`] and waits until `/readyz` is 200.
    pub fn start(env: &TestEnv, extra_config: &str) -> Self {
        Self::start_with_server(env, "", extra_config)
    }

    /// Like [`Kubelens::start`], with `server_extra` (lines indented by two spaces) added to
    /// the `server:` section.
    pub fn start_with_server(env: &TestEnv, server_extra: &str, extra_config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = sa_kubeconfig(env, dir.path());
        let port = free_port();
        let config = dir.path().join("config.yaml");
        let text = e2e_config(env, port, &kubeconfig, extra_config)
            .replacen("  shutdown_grace: 3s\n", &format!("  shutdown_grace: 3s\n{server_extra}"), 1);
        std::fs::write(&config, text).unwrap();
        Self::start_with_config(dir, &config, port)
    }

    /// Starts kubelens with a prepared config file listening on `port`.
    pub fn start_with_config(dir: tempfile::TempDir, config: &Path, port: u16) -> Self {
        Self::start_with_config_env(dir, config, port, &[])
    }

    /// Like [`Kubelens::start_with_config`], with extra environment variables for the process
    /// (e.g. `KUBELENS_LOG` to raise one module's log level).
    pub fn start_with_config_env(dir: tempfile::TempDir, config: &Path, port: u16, envs: &[(&str, &str)]) -> Self {
        let stderr_path = dir.path().join("kubelens.log");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kubelens"))
            .arg("--config")
            .arg(config)
            .current_dir(dir.path())
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("KUBELENS_LOG_FORMAT", "json")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let server = Self { child, url: format!("http://127.0.0.1:{port}"), dir, stderr_path };
        // Generous: in the full parallel suite on 2 cores the first OIDC discovery and cache sync
        // took over 60 s once (e2e_helm).
        server.wait_ready(Duration::from_secs(180));
        server
    }

    fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if get_status(&self.url, "/readyz") == Some(200) {
                return;
            }
            if Instant::now() > deadline {
                panic!("kubelens not ready after {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The process id (to send it signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (bounded) for the process to exit; `None` if it is still running after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.stderr_path) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Kubelens {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Status code of a plain blocking `GET` (readiness polling from sync code; no client
/// library needed).
pub fn get_status(base: &str, path: &str) -> Option<u16> {
    use std::io::Write;
    let host = base.strip_prefix("http://")?;
    let mut stream = std::net::TcpStream::connect(host).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").ok()?;
    let mut head = [0u8; 32];
    let n = stream.read(&mut head).ok()?;
    std::str::from_utf8(&head[..n]).ok()?.split_whitespace().nth(1)?.parse().ok()
}

/// The discovery cache of `policy`'s namespaces, as the backend's ServiceAccount sees them,
/// synced (for tests that run the router in-process: the log service needs it).
pub async fn sa_cluster(env: &TestEnv, policy: &kubelens_core::policy::AccessPolicy) -> kubelens_core::cluster::Cluster {
    let client = kube::Client::try_from(sa_kube_config(env).await).unwrap();
    let cluster = kubelens_core::cluster::Cluster::with_client(
        client,
        kubelens_core::cluster::ApiRequestStats::default(),
        policy,
        &kubelens_core::Readiness::new(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cluster.is_synced() {
        assert!(Instant::now() < deadline, "discovery caches not synced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster
}

/// A throwaway CA (`ca.crt`) and two server certificates for 127.0.0.1 and localhost signed
/// by it (`one.crt`/`one.key`, `two.crt`/`two.key`, P-256, PKCS#8), made with the openssl CLI
/// in `dir`. Returns the CA certificate (PEM) for the clients to trust.
pub fn test_certs(dir: &Path) -> Vec<u8> {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("the openssl CLI");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    openssl(&[&["req", "-x509"][..], &ec, &["-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=kubelens-test-ca"]].concat());
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    for name in ["one", "two"] {
        let (key, csr, crt, subj) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("/CN={name}"));
        openssl(&[&["req"][..], &ec, &["-keyout", &key, "-out", &csr, "-subj", &subj]].concat());
        openssl(&[
            "x509", "-req", "-in", &csr, "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2", "-out", &crt,
            "-extfile", "server.ext",
        ]);
    }
    std::fs::read(dir.join("ca.crt")).unwrap()
}

/// `seq=<n> src=<label>` of a loggen line (the e2e tests' numbered lines).
pub fn seq_of(line: &str) -> (u64, String) {
    let mut seq = None;
    let mut src = None;
    for word in line.split(' ') {
        if let Some(v) = word.strip_prefix("seq=") {
            seq = v.parse().ok();
        } else if let Some(v) = word.strip_prefix("src=") {
            src = Some(v.to_owned());
        }
    }
    (seq.unwrap_or_else(|| panic!("no seq in {line:?}")), src.unwrap_or_default())
}
