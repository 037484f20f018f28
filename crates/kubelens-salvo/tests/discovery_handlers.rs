#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Discovery handlers over an in-memory cluster: status codes for bad names and hidden
//! objects, strict query parameters, app kinds, and the SSE change stream.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kubelens_core::Config;
use kubelens_core::auth::testing::TestIssuer;
use kubelens_core::cluster::testing::{FakeCluster, FakeObjects};
use kubelens_core::readiness::Readiness;
use kubelens_salvo::AppState;
use salvo::http::StatusCode;
use salvo::test::{ResponseExt, TestClient};
use serde_json::Value;

const CONFIG: &str = "
auth:
  keycloak_url: http://127.0.0.1:1
  realm: kubelens
  client_id: kubelens
  allowed_groups: [k8s-logs-access]
namespaces:
  allowed: [team-a, team-b]
filters:
  exclude_labels:
    kubelens.io/hide: 'true'
logs:
  keepalive_interval: 1s
";

fn meta(ns: &str, name: &str, owner: Option<(&str, &str, &str)>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(ns.into()),
        uid: Some(format!("uid-{name}")),
        resource_version: Some("1".into()),
        owner_references: owner.map(|(api_version, kind, owner)| {
            vec![OwnerReference {
                api_version: api_version.into(),
                kind: kind.into(),
                name: owner.into(),
                uid: format!("uid-{owner}"),
                controller: Some(true),
                block_owner_deletion: None,
            }]
        }),
        ..ObjectMeta::default()
    }
}

fn pod(ns: &str, name: &str, owner: Option<(&str, &str, &str)>, labels: &[(&str, &str)]) -> Pod {
    let mut metadata = meta(ns, name, owner);
    metadata.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>());
    Pod {
        metadata,
        spec: Some(PodSpec { containers: vec![Container { name: "app".into(), ..Container::default() }], ..PodSpec::default() }),
        status: None,
    }
}

fn objects() -> FakeObjects {
    let namespace = |name: &str| Namespace {
        metadata: ObjectMeta { name: Some(name.into()), ..ObjectMeta::default() },
        ..Namespace::default()
    };
    FakeObjects {
        namespaces: ["team-a", "team-b", "secret-ns"].into_iter().map(namespace).collect(),
        deployments: vec![Deployment { metadata: meta("team-a", "web", None), ..Default::default() }],
        replica_sets: vec![ReplicaSet {
            metadata: meta("team-a", "web-7d9f", Some(("apps/v1", "Deployment", "web"))),
            ..Default::default()
        }],
        stateful_sets: vec![
            StatefulSet { metadata: meta("team-a", "db", None), ..Default::default() },
            // Same name as the Deployment: `?kind=` decides.
            StatefulSet { metadata: meta("team-a", "web", None), ..Default::default() },
        ],
        pods: vec![
            pod("team-a", "web-7d9f-a", Some(("apps/v1", "ReplicaSet", "web-7d9f")), &[]),
            pod("team-a", "db-0", Some(("apps/v1", "StatefulSet", "db")), &[]),
            pod("team-a", "debug", None, &[]),
            pod("team-a", "hidden-canary", None, &[("kubelens.io/hide", "true")]),
            pod("secret-ns", "vault-0", None, &[]),
        ],
        ..FakeObjects::default()
    }
}

fn config(issuer: &TestIssuer) -> Config {
    let (mut config, _) = Config::load(CONFIG, |_| None).unwrap();
    config.auth = issuer.config();
    config
}

/// The viewer's token, minted once per process by the shared test issuer.
fn issuer() -> &'static TestIssuer {
    static ISSUER: std::sync::OnceLock<TestIssuer> = std::sync::OnceLock::new();
    ISSUER.get_or_init(TestIssuer::new)
}

fn setup() -> (salvo::Service, FakeCluster, AppState) {
    let issuer = issuer();
    let state = AppState::new(config(issuer), Readiness::new()).with_auth(issuer.authenticator());
    let fake = FakeCluster::new(&state.policy, objects());
    let state = state.with_cluster(fake.cluster());
    (kubelens_salvo::service(state.clone()), fake, state)
}

async fn get(service: &salvo::Service, path: &str) -> (StatusCode, Value) {
    let mut res =
        TestClient::get(format!("http://127.0.0.1{path}")).bearer_auth(issuer().viewer_token()).send(service).await;
    let status = res.status_code.unwrap_or(StatusCode::OK);
    let body = res.take_string().await.unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

#[tokio::test]
async fn lists_come_from_the_cache_and_respect_the_policy() {
    let (service, _fake, _) = setup();
    let (status, body) = get(&service, "/api/v1/namespaces").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = body.as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["team-a", "team-b"]);

    let (status, body) = get(&service, "/api/v1/namespaces/team-a/pods").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = body.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["db-0", "debug", "web-7d9f-a"]);
    assert_eq!(body[2]["ownerApp"], serde_json::json!({"kind": "Deployment", "name": "web"}));

    let (status, body) = get(&service, "/api/v1/namespaces/team-a/pods/web-7d9f-a").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["namespace"], "team-a");
    assert_eq!(body["totalContainers"], 1);

    let (status, body) = get(&service, "/api/v1/namespaces/team-a/apps").await;
    assert_eq!(status, StatusCode::OK);
    let apps: Vec<(String, String)> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["kind"].as_str().unwrap().to_owned(), a["name"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        apps,
        [("StatefulSet".into(), "db".into()), ("Deployment".into(), "web".into()), ("StatefulSet".into(), "web".into())]
    );
}

#[tokio::test]
async fn hidden_and_missing_are_the_same_404() {
    let (service, _fake, _) = setup();
    let hidden = get(&service, "/api/v1/namespaces/team-a/pods/hidden-canary").await;
    let missing = get(&service, "/api/v1/namespaces/team-a/pods/no-such-pod").await;
    assert_eq!(hidden.0, StatusCode::NOT_FOUND);
    assert_eq!(hidden, missing);
    let outside = get(&service, "/api/v1/namespaces/secret-ns/pods").await;
    let nonexistent = get(&service, "/api/v1/namespaces/nope/pods").await;
    assert_eq!(outside.0, StatusCode::NOT_FOUND);
    assert_eq!(outside, nonexistent);
    assert_eq!(outside.1["error"]["code"], "not_found");
    // Not even a pod name that exists there.
    assert_eq!(get(&service, "/api/v1/namespaces/secret-ns/pods/vault-0").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_names_never_widen_a_query() {
    let (service, _fake, _) = setup();
    let long = "a".repeat(300);
    let cases: Vec<(String, StatusCode)> = vec![
        ("/api/v1/namespaces/*/pods".into(), StatusCode::BAD_REQUEST),
        ("/api/v1/namespaces/%2A/pods".into(), StatusCode::BAD_REQUEST),
        ("/api/v1/namespaces/all/pods".into(), StatusCode::NOT_FOUND),
        ("/api/v1/namespaces/ALL/pods".into(), StatusCode::BAD_REQUEST),
        // The URL parser resolves a literal `..` before routing: /api/v1/pods, no such route.
        ("/api/v1/namespaces/../pods".into(), StatusCode::NOT_FOUND),
        // `%2e%2e` is a dot segment to the URL parser too (WHATWG). The raw-wire form is
        // covered by the e2e test, which writes the request line itself.
        ("/api/v1/namespaces/%2e%2e/pods".into(), StatusCode::NOT_FOUND),
        ("/api/v1/namespaces/team-a%2F..%2Fsecret-ns/pods".into(), StatusCode::BAD_REQUEST),
        ("/api/v1/namespaces/team-a%00/pods".into(), StatusCode::BAD_REQUEST),
        ("/api/v1/namespaces/t%D0%B5am-a/pods".into(), StatusCode::BAD_REQUEST),
        ("/api/v1/namespaces/team%E2%80%90a/pods".into(), StatusCode::BAD_REQUEST),
        (format!("/api/v1/namespaces/{long}/pods"), StatusCode::BAD_REQUEST),
        ("/api/v1/namespaces/team-a/pods/..".into(), StatusCode::NOT_FOUND),
        ("/api/v1/namespaces/team-a/pods/%2e%2e".into(), StatusCode::NOT_FOUND),
        ("/api/v1/namespaces/team-a/pods/a..b".into(), StatusCode::BAD_REQUEST),
        ("/api/v1/namespaces/team-a/pods/debug%2F..%2F..".into(), StatusCode::BAD_REQUEST),
        ("/api/v1/namespaces/team-a/pods/debug%00".into(), StatusCode::BAD_REQUEST),
        ("/api/v1/namespaces/team-a/pods/d%D0%B5bug".into(), StatusCode::BAD_REQUEST),
        (format!("/api/v1/namespaces/team-a/pods/{long}"), StatusCode::BAD_REQUEST),
        ("/api/v1/namespaces/team-a/apps/*".into(), StatusCode::BAD_REQUEST),
        ("/api/v1/namespaces/team-a/apps/WEB".into(), StatusCode::BAD_REQUEST),
    ];
    for (path, expected) in cases {
        let (status, body) = get(&service, &path).await;
        assert_eq!(status, expected, "{path}: {body}");
        assert!(body["error"]["code"].is_string(), "{path}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(!message.contains("secret-ns") && !message.contains('\0'), "{path}: {message}");
    }
}

#[tokio::test]
async fn query_parameters_are_strict() {
    let (service, _fake, _) = setup();
    for path in [
        "/api/v1/namespaces?all=true",
        "/api/v1/namespaces/team-a/pods?labelSelector=x",
        "/api/v1/namespaces/team-a/pods?namespace=secret-ns",
        "/api/v1/namespaces/team-a/pods/debug?x=1",
        "/api/v1/namespaces/team-a/apps?kind=Deployment",
        "/api/v1/namespaces/team-a/apps/web?kind=Deployment&kind=StatefulSet",
        "/api/v1/namespaces/team-a/pods/watch?since=1",
    ] {
        let (status, body) = get(&service, path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
    }
}

#[tokio::test]
async fn app_kinds_disambiguate() {
    let (service, _fake, _) = setup();
    let (status, body) = get(&service, "/api/v1/namespaces/team-a/apps/web").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "ambiguous_app");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("Deployment") && message.contains("StatefulSet"), "{message}");

    let (status, body) = get(&service, "/api/v1/namespaces/team-a/apps/web?kind=Deployment").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["app"]["kind"], "Deployment");
    assert_eq!(body["app"]["podNames"], serde_json::json!(["web-7d9f-a"]));
    assert_eq!(body["pods"][0]["name"], "web-7d9f-a");

    let (status, body) = get(&service, "/api/v1/namespaces/team-a/apps/web?kind=statefulsets").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["app"]["kind"], "StatefulSet");
    assert_eq!(body["pods"], serde_json::json!([]));

    assert_eq!(get(&service, "/api/v1/namespaces/team-a/apps/db").await.0, StatusCode::OK);
    assert_eq!(get(&service, "/api/v1/namespaces/team-a/apps/web?kind=Pod").await.0, StatusCode::BAD_REQUEST);
    assert_eq!(get(&service, "/api/v1/namespaces/team-a/apps/db?kind=Deployment").await.0, StatusCode::NOT_FOUND);
    assert_eq!(get(&service, "/api/v1/namespaces/team-a/apps/web-7d9f").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn every_discovery_route_needs_a_token() {
    let (service, _fake, _) = setup();
    for path in [
        "/api/v1/namespaces",
        "/api/v1/namespaces/team-a/pods",
        "/api/v1/namespaces/team-a/pods/debug",
        "/api/v1/namespaces/team-a/pods/watch",
        "/api/v1/namespaces/team-a/apps",
        "/api/v1/namespaces/team-a/apps/db",
    ] {
        let res = TestClient::get(format!("http://127.0.0.1{path}")).send(&service).await;
        assert_eq!(res.status_code, Some(StatusCode::UNAUTHORIZED), "{path}");
        let res = TestClient::get(format!("http://127.0.0.1{path}"))
            .bearer_auth(issuer().nogroup_token())
            .send(&service)
            .await;
        assert_eq!(res.status_code, Some(StatusCode::FORBIDDEN), "{path}");
    }
    // A forged ticket is not a credential.
    let res = TestClient::get("http://127.0.0.1/api/v1/namespaces/team-a/pods/watch?ticket=forged").send(&service).await;
    assert_eq!(res.status_code, Some(StatusCode::UNAUTHORIZED));
}

#[tokio::test]
async fn without_a_cluster_discovery_is_unavailable() {
    let service =
        kubelens_salvo::service(AppState::new(config(issuer()), Readiness::new()).with_auth(issuer().authenticator()));
    let (status, body) = get(&service, "/api/v1/namespaces/team-a/pods").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "kubernetes_unavailable");
}

#[tokio::test]
async fn change_stream_sends_events_keepalives_and_a_final_event() {
    let (service, mut fake, state) = setup();
    let shutdown = state.shutdown.clone();
    // Browsers cannot send headers on EventSource: a one-time ticket authenticates the stream.
    let mut ticket = TestClient::post("http://127.0.0.1/api/v1/stream-tickets")
        .bearer_auth(issuer().viewer_token())
        .send(&service)
        .await;
    let ticket: Value = ticket.take_json().await.unwrap();
    let ticket = ticket["ticket"].as_str().unwrap().to_owned();
    let url = format!("http://127.0.0.1/api/v1/namespaces/team-a/pods/watch?ticket={ticket}");
    let mut res = TestClient::get(url).send(&service).await;
    assert_eq!(res.status_code.unwrap_or(StatusCode::OK), StatusCode::OK);
    assert_eq!(
        res.headers().get("content-type").and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    // The handler has subscribed by the time it answered (the response is its return value):
    // change things only now — no guess of how long subscribing takes — then shut down.
    let driver = tokio::spawn(async move {
        fake.apply_pod(pod("team-a", "new-pod", None, &[]));
        fake.apply_pod(pod("team-a", "sneaky", None, &[("kubelens.io/hide", "true")]));
        fake.apply_pod(pod("team-b", "other-ns", None, &[]));
        fake.delete_pod(pod("team-a", "debug", None, &[]));
        // Long enough for at least one keepalive (keepalive_interval: 1s), with room for load.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        shutdown.cancel();
    });
    let body = tokio::time::timeout(Duration::from_secs(10), res.take_string()).await.unwrap().unwrap();
    driver.await.unwrap();
    assert!(body.contains("retry:2000\n"), "{body}");
    let events: Vec<(String, Value)> = body
        .split("\n\n")
        .filter_map(|block| {
            let name = block.lines().find_map(|l| l.strip_prefix("event: "))?.to_owned();
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((name, serde_json::from_str(data).unwrap()))
        })
        .collect();
    let summary: Vec<(&str, &str)> =
        events.iter().map(|(n, d)| (n.as_str(), d["name"].as_str().unwrap_or(d["state"].as_str().unwrap_or("")))).collect();
    assert_eq!(summary, [("added", "new-pod"), ("deleted", "debug"), ("status", "ended")], "{body}");
    assert!(body.contains(":keepalive\n"), "{body}");
    assert!(!body.contains("sneaky") && !body.contains("other-ns"), "{body}");
}

#[tokio::test]
async fn change_stream_ends_at_token_expiry_plus_grace() {
    let issuer = issuer();
    let mut config = config(issuer);
    config.auth.stream_token_grace = Duration::from_secs(1);
    let state = AppState::new(config, Readiness::new()).with_auth(issuer.authenticator());
    let fake = FakeCluster::new(&state.policy, objects());
    let service = kubelens_salvo::service(state.with_cluster(fake.cluster()));
    let mut claims = issuer.claims("viewer", &["/k8s-logs-access"]);
    claims["exp"] = Value::from(kubelens_core::auth::testing::now() + 2);
    let started = std::time::Instant::now();
    let mut res = TestClient::get("http://127.0.0.1/api/v1/namespaces/team-a/pods/watch")
        .bearer_auth(issuer.token(&claims))
        .send(&service)
        .await;
    assert_eq!(res.status_code.unwrap_or(StatusCode::OK), StatusCode::OK);
    // Nothing changes and nobody shuts down: only the token deadline (exp + 1 s) ends it.
    let body = tokio::time::timeout(Duration::from_secs(15), res.take_string()).await.unwrap().unwrap();
    let elapsed = started.elapsed();
    assert!(body.contains(r#""reason":"token_expired""#), "{body}");
    assert!(elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(10), "{elapsed:?}");
}

#[tokio::test]
async fn pod_details_list_events_once_per_ttl_however_many_requests() {
    let (service, fake, _) = setup();
    let events_lists = || fake.api_requests().iter().filter(|p| p.ends_with("/events")).count();
    for _ in 0..20 {
        let (status, body) = get(&service, "/api/v1/namespaces/team-a/pods/debug/details").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["events"], serde_json::json!([]));
    }
    assert_eq!(events_lists(), 1, "20 inspector requests within the TTL cost one events list: {:?}", fake.api_requests());
    // Another pod is another entry.
    let (status, _) = get(&service, "/api/v1/namespaces/team-a/pods/db-0/details").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(events_lists(), 2);
}

#[tokio::test]
async fn pod_watches_count_against_the_per_user_stream_cap() {
    let issuer = issuer();
    let mut config = config(issuer);
    config.logs.max_streams_per_user = 1;
    let state = AppState::new(config, Readiness::new()).with_auth(issuer.authenticator());
    let fake = FakeCluster::new(&state.policy, objects());
    let state = state.with_cluster(fake.cluster());
    let service = kubelens_salvo::service(state.clone());
    let url = "http://127.0.0.1/api/v1/namespaces/team-a/pods/watch";
    let first = TestClient::get(url).bearer_auth(issuer.viewer_token()).send(&service).await;
    assert_eq!(first.status_code.unwrap_or(StatusCode::OK), StatusCode::OK);
    let mut second = TestClient::get(url).bearer_auth(issuer.viewer_token()).send(&service).await;
    assert_eq!(second.status_code, Some(StatusCode::TOO_MANY_REQUESTS));
    let body: Value = serde_json::from_str(&second.take_string().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "too_many_streams");
    // Closing the first watch gives the slot back.
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while state.admission.viewer_streams("viewer") > 0 {
        assert!(std::time::Instant::now() < deadline, "the watch's slot was not released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = TestClient::get(url).bearer_auth(issuer.viewer_token()).send(&service).await;
    assert_eq!(again.status_code.unwrap_or(StatusCode::OK), StatusCode::OK);
}
