//! The `kubelens` binary as an operator runs it: config errors, `check-config`, serving
//! `/healthz`, readiness with and without a cluster configuration, and SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_kubelens");

fn example_config() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/config.yaml");
    std::fs::read_to_string(path).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A command with a clean environment (no inherited KUBECONFIG/KUBELENS_* settings).
fn kubelens(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("KUBELENS_LOG_FORMAT", "json");
    cmd
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap()
}

#[test]
fn check_config_prints_the_effective_config_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &example_config());
    let out = run(kubelens(dir.path())
        .args(["check-config", "--config"])
        .arg(&config)
        .env("KUBELENS_AUTH_CLIENT_SECRET", "very-secret-value")
        .env("KUBELENS_POSTGRES_URL", "postgres://kubelens:hunter2@db/kubelens"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("realm: example"), "{stdout}");
    assert!(stdout.contains("default_tail_lines: 500"), "{stdout}");
    assert!(stdout.contains("***redacted***"), "{stdout}");
    assert!(!stdout.contains("very-secret-value") && !stdout.contains("hunter2"), "{stdout}");
}

#[test]
fn config_problems_exit_2_with_one_line_per_problem() {
    let dir = tempfile::tempdir().unwrap();
    let text = example_config()
        .replace("realm: example", "realm: \"\"")
        .replace("    exclude: []\n  # The same", "    exclude: ['(bad']\n  # The same");
    let config = write_config(dir.path(), &text);
    let out = run(kubelens(dir.path()).args(["check-config", "--config"]).arg(&config));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("config error:")).collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(lines.iter().any(|l| l.contains("auth.realm: is required")), "{stderr}");
    assert!(lines.iter().any(|l| l.contains("filters.pods.exclude[0]: invalid regex")), "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
}

#[test]
fn unreadable_malformed_and_mistyped_files_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = run(kubelens(dir.path()).args(["check-config", "--config", "/nonexistent/kubelens.yaml"]));
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read"));

    for (text, needle) in [
        ("auth: [unclosed", "config error"),
        ("auth:\n  realm: 5\n  keycloak_url: [1]\n", "auth.keycloak_url"),
        ("logs:\n  max_tail_lines: -1\n", "logs.max_tail_lines"),
        ("bogus: 1\n", "bogus"),
    ] {
        let config = write_config(dir.path(), text);
        let out = run(kubelens(dir.path()).args(["check-config", "--config"]).arg(&config));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {stderr}");
        assert!(stderr.contains(needle), "{text}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn config_path_comes_from_the_environment_too() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &example_config());
    let out = run(kubelens(dir.path()).arg("check-config").env("KUBELENS_CONFIG", &config));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(dir: &Path, extra_env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let text = example_config()
            .replace("listen: 0.0.0.0:8080", &format!("listen: 127.0.0.1:{port}"))
            .replace("shutdown_grace: 20s", "shutdown_grace: 3s")
            // Nothing listens there: OIDC discovery fails fast and is retried in the background.
            .replace("https://sso.example.com", "http://127.0.0.1:9");
        let config = write_config(dir, &text);
        let mut cmd = kubelens(dir);
        cmd.arg("--config").arg(&config).env("KUBELENS_STORAGE_BACKEND", "memory");
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let server = Self { child, port };
        server.wait_for("/healthz", 200);
        server
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let status = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        Some((status, body))
    }

    fn wait_for(&self, path: &str, status: u16) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some((got, body)) = self.get(path)
                && got == status
            {
                return body;
            }
            assert!(Instant::now() < deadline, "{path} never answered {status}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn terminate(mut self) -> (std::process::ExitStatus, Duration, String) {
        let started = Instant::now();
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "kubelens did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            pipe.read_to_string(&mut stderr).unwrap();
        }
        (status, started.elapsed(), stderr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serves_healthz_reports_unready_without_a_cluster_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // HOME points at an empty dir and KUBECONFIG is unset: no cluster configuration at all.
    let server = Server::start(dir.path(), &[]);
    let body = server.wait_for("/readyz", 503);
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["ready"], false);
    assert_eq!(report["checks"]["kubernetes_config"]["ready"], false, "{report}");
    let (status, elapsed, stderr) = server.terminate();
    assert!(status.success(), "exit {status:?}: {stderr}");
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    assert!(stderr.contains("shutdown requested"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn version_flag_prints_the_crate_version() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(kubelens(dir.path()).arg("--version"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("kubelens {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn metrics_carry_the_build_info() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let body = server.wait_for("/metrics", 200);
    let want = format!(
        "kubelens_build_info{{version=\"{}\",rust_version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        env!("CARGO_PKG_RUST_VERSION")
    );
    assert!(body.lines().any(|l| l == want), "{want} missing:\n{body}");
}

#[test]
fn readiness_sees_a_cluster_configuration_from_kubeconfig() {
    let dir = tempfile::tempdir().unwrap();
    // A syntactically valid kubeconfig: the client configuration is obtainable. Whether the
    // API server is reachable is the discovery subsystem's check, not this one.
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:9\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: abc\n",
    )
    .unwrap();
    let server = Server::start(dir.path(), &[("KUBECONFIG", kubeconfig.to_str().unwrap())]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = server.get("/readyz").unwrap();
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        if report["checks"]["kubernetes_config"]["ready"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "kubernetes_config check never saw the kubeconfig: {report}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, _, _) = server.terminate();
    assert!(status.success());
}

#[test]
fn a_tls_key_that_does_not_match_the_certificate_stops_startup_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    support::test_certs(dir.path());
    let (cert, key) = (dir.path().join("one.crt"), dir.path().join("two.key"));
    let text = example_config()
        .replace("listen: 0.0.0.0:8080", &format!("listen: 127.0.0.1:{}", free_port()))
        .replace("https://sso.example.com", "http://127.0.0.1:9")
        .replace("  tls: null", &format!("  tls:\n    cert_file: {}\n    key_file: {}", cert.display(), key.display()));
    let config = write_config(dir.path(), &text);
    let started = Instant::now();
    let out = run(kubelens(dir.path()).arg("--config").arg(&config).env("KUBELENS_STORAGE_BACKEND", "memory"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    assert!(stderr.contains("does not match") && stderr.contains("two.key") && stderr.contains("one.crt"), "{stderr}");
}
