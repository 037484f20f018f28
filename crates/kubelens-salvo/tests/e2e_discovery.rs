//! Discovery against the real testenv: a kube-apiserver with seeded workloads, the backend
//! running as ServiceAccount `kubelens/kubelens` with exactly the RBAC of
//! `deploy/helm/kubelens/templates/rbac.yaml` (as testenv renders it), and viewer tokens from the real Keycloak.
//!
//! Run: `testenv/run -- cargo test -p kubelens-salvo --test e2e_discovery`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod discovery_support;

use std::time::{Duration, Instant};

use discovery_support::{delete_pod, pod_manifest, start, unique};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::ListParams;
use kubelens_testenv::TestEnv;
use serde_json::Value;

const FILTERS: &str = "filters:\n  exclude_labels:\n    kubelens.io/hide: 'true'\n";

fn find<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array().unwrap().iter().find(|o| o["name"] == name).unwrap_or_else(|| panic!("{name} missing in {list}"))
}

#[tokio::test]
async fn allowlist_filters_and_every_kind_of_app() {
    let Some(env) = TestEnv::e2e() else { return };
    let backend = start(env, FILTERS).await;

    // Namespaces: the allowlisted ones that exist; secret-ns and kubelens are not shown.
    let (status, body) = backend.get("/api/v1/namespaces").await;
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body.as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["team-a", "team-b"]);

    // Pods with their apps, containers and restarts; hidden-canary filtered out.
    let (status, pods) = backend.get("/api/v1/namespaces/team-a/pods").await;
    assert_eq!(status, 200, "{pods}");
    for name in ["web-7d9f8b6c5d-x2k4p", "db-0", "agent-q4v9t", "nightly-29000000-h5j2k", "migrate-8xk2d", "debug", "multi", "crashy"] {
        find(&pods, name);
    }
    assert!(pods.as_array().unwrap().iter().all(|p| p["name"] != "hidden-canary"), "{pods}");
    let owner = |name: &str| find(&pods, name)["ownerApp"].clone();
    assert_eq!(owner("web-7d9f8b6c5d-x2k4p"), serde_json::json!({"kind": "Deployment", "name": "web"}));
    assert_eq!(owner("db-0"), serde_json::json!({"kind": "StatefulSet", "name": "db"}));
    assert_eq!(owner("agent-q4v9t"), serde_json::json!({"kind": "DaemonSet", "name": "agent"}));
    assert_eq!(owner("nightly-29000000-h5j2k"), serde_json::json!({"kind": "CronJob", "name": "nightly"}));
    assert_eq!(owner("migrate-8xk2d"), serde_json::json!({"kind": "Job", "name": "migrate"}));
    assert_eq!(owner("debug"), Value::Null);
    let multi = find(&pods, "multi");
    assert_eq!(multi["totalContainers"], 2);
    assert_eq!(multi["initContainers"][0]["name"], "init-config");
    assert_eq!(multi["node"], "kwok-node-0");
    let crashy = find(&pods, "crashy");
    assert_eq!(crashy["restarts"], 3);
    assert_eq!(crashy["containers"][0]["lastTerminationReason"], "Error");
    assert_eq!(find(&pods, "migrate-8xk2d")["phase"], "Succeeded");

    // Apps: one per top-level workload, intermediates folded in.
    let (status, apps) = backend.get("/api/v1/namespaces/team-a/apps").await;
    assert_eq!(status, 200, "{apps}");
    let kinds: Vec<(String, String)> = apps
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["kind"].as_str().unwrap().to_owned(), a["name"].as_str().unwrap().to_owned()))
        .collect();
    for (kind, name) in [("Deployment", "web"), ("StatefulSet", "db"), ("DaemonSet", "agent"), ("CronJob", "nightly"), ("Job", "migrate")] {
        assert!(kinds.contains(&(kind.to_owned(), name.to_owned())), "{kind}/{name} missing in {kinds:?}");
    }
    assert!(!kinds.iter().any(|(k, n)| k == "ReplicaSet" && n == "web-7d9f8b6c5d"), "{kinds:?}");
    assert!(!kinds.iter().any(|(k, n)| k == "Job" && n == "nightly-29000000"), "{kinds:?}");
    let web = find(&apps, "web");
    assert_eq!((web["replicasDesired"].as_i64(), web["replicasReady"].as_i64(), web["pods"].as_i64()), (Some(3), Some(3), Some(3)));
    assert_eq!(find(&apps, "db")["pods"], 2);
    let (status, detail) = backend.get("/api/v1/namespaces/team-a/apps/web?kind=Deployment").await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["pods"].as_array().unwrap().len(), 3);
    let (status, detail) = backend.get("/api/v1/namespaces/team-a/apps/nightly").await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["pods"][0]["name"], "nightly-29000000-h5j2k");
    let (status, detail) = backend.get("/api/v1/namespaces/team-b/apps/api").await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["app"]["pods"], 2);

    // Hidden, missing, outside the allowlist: one and the same 404.
    let hidden = backend.get("/api/v1/namespaces/team-a/pods/hidden-canary").await;
    let missing = backend.get("/api/v1/namespaces/team-a/pods/no-such-pod").await;
    assert_eq!(hidden.0, 404);
    assert_eq!(hidden, missing);
    let outside = backend.get("/api/v1/namespaces/secret-ns/pods/forbidden").await;
    assert_eq!(outside.0, 404);
    assert_eq!(backend.get("/api/v1/namespaces/secret-ns/pods").await, backend.get("/api/v1/namespaces/nope/pods").await);

    // Bad names on the wire, as a client that does not normalise the URL sends them.
    for (target, expected) in [
        ("/api/v1/namespaces/%2e%2e/pods", 400),
        ("/api/v1/namespaces/team-a%2F..%2Fsecret-ns/pods", 400),
        ("/api/v1/namespaces/*/pods", 400),
        ("/api/v1/namespaces/all/pods", 404),
        ("/api/v1/namespaces/team-a/pods/%2e%2e", 400),
        ("/api/v1/namespaces/team-a/pods/debug%00", 400),
        ("/api/v1/namespaces/team-a/pods/d%D0%B5bug", 400),
        ("/api/v1/namespaces/team-a/pods?labelSelector=app%3Dweb", 400),
    ] {
        assert_eq!(backend.raw_status(target).await, expected, "{target}");
    }

    // Once synced, answering costs no API request.
    let before = backend.cluster.api_requests();
    for _ in 0..20 {
        assert_eq!(backend.get("/api/v1/namespaces/team-a/pods").await.0, 200);
        assert_eq!(backend.get("/api/v1/namespaces/team-a/apps").await.0, 200);
    }
    let after = backend.cluster.api_requests();
    // Watches may be renewed in the background (server-side timeout ~5 min): only list/get
    // requests would be caused by the 40 calls above.
    assert!(after.total - after.watches <= before.total - before.watches + 1, "{before:?} → {after:?}");
}

#[tokio::test]
async fn the_service_account_cannot_read_secrets_or_other_namespaces() {
    let Some(env) = TestEnv::e2e() else { return };
    let backend = start(env, FILTERS).await;
    let client = backend.cluster.client();
    for ns in ["team-a", "secret-ns"] {
        let err = Api::<Secret>::namespaced(client.clone(), ns).list(&ListParams::default()).await.unwrap_err();
        assert!(matches!(&err, kube::Error::Api(s) if s.code == 403), "secrets in {ns}: {err:?}");
        let err = Api::<Secret>::namespaced(client.clone(), ns).get("web-secrets").await.unwrap_err();
        assert!(matches!(&err, kube::Error::Api(s) if s.code == 403), "{err:?}");
    }
    let err = Api::<Pod>::namespaced(client.clone(), "secret-ns").list(&ListParams::default()).await.unwrap_err();
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 403), "{err:?}");
    // What the caches need works with the same identity.
    assert!(Api::<Pod>::namespaced(client, "team-a").list(&ListParams::default().limit(1)).await.is_ok());
}

#[tokio::test]
async fn change_stream_reports_created_and_deleted_pods() {
    let Some(env) = TestEnv::e2e() else { return };
    let backend = start(env, FILTERS).await;
    let mut events = backend.watch("team-a").await;
    let hidden = unique("e2e-hidden");
    let visible = unique("e2e-visible");

    env.kubectl_apply(&pod_manifest("team-a", &hidden, &[("kubelens.io/hide", "true")])).unwrap();
    let created = Instant::now();
    env.kubectl_apply(&pod_manifest("team-a", &visible, &[])).unwrap();
    let added = events.wait_for("added", &visible, Duration::from_secs(20)).await.expect("added event");
    let latency = created.elapsed();
    assert_eq!(added["namespace"], "team-a");
    assert!(latency < Duration::from_secs(5), "added after {latency:?}");
    assert!(backend.pod_names("team-a").await.contains(&visible));
    assert!(!backend.pod_names("team-a").await.contains(&hidden));
    assert_eq!(backend.get(&format!("/api/v1/namespaces/team-a/pods/{hidden}")).await.0, 404);

    delete_pod(env, "team-a", &visible);
    delete_pod(env, "team-a", &hidden);
    let deleted = events.wait_for("deleted", &visible, Duration::from_secs(60)).await.expect("deleted event");
    assert_eq!(deleted["name"], visible.as_str());
    let deadline = Instant::now() + Duration::from_secs(10);
    while backend.pod_names("team-a").await.contains(&visible) {
        assert!(Instant::now() < deadline, "deleted pod still listed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The hidden pod never appeared in this stream: drain what is left for a moment.
    while let Some((name, data)) = events.next_event(Duration::from_millis(500)).await {
        assert_ne!(data["name"], hidden.as_str(), "{name}: hidden pod leaked into the stream");
    }

    // A pod that gains the excluded label leaves the viewer's list as a deletion.
    let turncoat = unique("e2e-turncoat");
    env.kubectl_apply(&pod_manifest("team-a", &turncoat, &[])).unwrap();
    events.wait_for("added", &turncoat, Duration::from_secs(20)).await.expect("added");
    env.kubectl(&["-n", "team-a", "label", "pod", &turncoat, "kubelens.io/hide=true"]).unwrap();
    events.wait_for("deleted", &turncoat, Duration::from_secs(20)).await.expect("deleted when hidden");
    delete_pod(env, "team-a", &turncoat);
}

#[tokio::test]
async fn the_change_stream_ends_with_a_final_event_on_shutdown() {
    let Some(env) = TestEnv::e2e() else { return };
    let backend = start(env, FILTERS).await;
    let mut events = backend.watch("team-b").await;
    backend.state.shutdown.cancel();
    let (name, data) = events.next_event(Duration::from_secs(10)).await.expect("final event");
    assert_eq!(name, "status");
    assert_eq!(data["state"], "ended");
}
