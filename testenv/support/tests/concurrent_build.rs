//! Two testenv runs that start at once on one cache must not break each other's set-up.
//! (A CI run and a developer's `testenv/run` once raced here: the second, waiting on the
//! build lock, deleted the first one's half-copied KWOK manifests when the lock came free.)
//!
//! Needs the built binaries of the cache (`testenv/build`); skips without them, unless CI.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn concurrent_builds_on_one_cache_all_succeed() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let versions = std::fs::read_to_string(root.join("testenv/versions.env")).unwrap();
    let k8s = versions.lines().find_map(|l| l.strip_prefix("KUBERNETES_VERSION=")).unwrap().trim_matches('"').to_owned();
    let home = std::env::var("HOME").unwrap();
    let cache = std::env::var("KUBELENS_TESTENV_CACHE").unwrap_or_else(|_| format!("{home}/.cache/kubelens-testenv"));
    let bin = Path::new(&cache).join(&k8s).join("bin");
    if !bin.join("kwok").exists() {
        assert!(std::env::var("CI").is_err(), "CI must have built testenv's binaries ({})", bin.display());
        eprintln!("skipped: no built testenv binaries in {}", bin.display());
        return;
    }
    // A cache with every binary but without KWOK's manifests: each run copies them.
    let scratch = std::env::temp_dir().join(format!("kubelens-race-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    copy_dir(&bin, &scratch.join(&k8s).join("bin"));
    let runs: Vec<_> = (0..4)
        .map(|_| {
            Command::new(root.join("testenv/build"))
                .arg("--no-keycloak")
                .env("KUBELENS_TESTENV_CACHE", &scratch)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let failed: Vec<String> = runs
        .into_iter()
        .map(|run| run.wait_with_output().unwrap())
        .filter(|out| !out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stderr).into_owned())
        .collect();
    let crds = std::fs::read_dir(scratch.join(&k8s).join("share")).unwrap().flatten().find(|e| e.file_name().to_string_lossy().starts_with("kwok-")).map(|e| e.path().join("crds"));
    let crd_count = crds.and_then(|d| std::fs::read_dir(d).ok()).map_or(0, Iterator::count);
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(failed.is_empty(), "{} of 4 concurrent builds failed: {failed:?}", failed.len());
    assert!(crd_count > 0, "KWOK's CRDs were not copied");
}
