#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `around=<id>` on archived (deleted) pods: the real handlers over an in-memory cluster and
//! the in-memory archive (the archive path needs no Kubernetes). The live-pod and app paths
//! are tested against testenv in `e2e_logs.rs` (section "around").

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kubelens_core::Config;
use kubelens_core::auth::testing::TestIssuer;
use kubelens_core::cluster::testing::{FakeCluster, FakeObjects};
use kubelens_core::readiness::Readiness;
use kubelens_core::retention::{ArchiveRecorder, LogOpener, RecorderConfig};
use kubelens_core::storage::memory::MemoryStore;
use kubelens_core::storage::{ArchivedLine, LogArchive, PodMeta, SourceKey, StoreLimits};
use kubelens_salvo::AppState;
use kubelens_salvo::archive::Retention;
use kubelens_salvo::logs::LogService;
use salvo::http::StatusCode;
use salvo::test::{ResponseExt, TestClient};
use serde_json::Value;

const SEC: i64 = 1_000_000_000;
const T0: i64 = 1_769_767_200 * SEC;
const LOGS: &str = "/api/v1/namespaces/team-a/pods/gone/logs";

fn issuer() -> &'static TestIssuer {
    static ISSUER: std::sync::OnceLock<TestIssuer> = std::sync::OnceLock::new();
    ISSUER.get_or_init(TestIssuer::new)
}

/// The archived log of pod `gone`: 100 lines 5 s apart (500 s: longer than the 60 s window),
/// then 10 lines sharing one timestamp mid-second, then 50 lines 100 ms apart. Plain, JSON
/// and logfmt lines alternate.
fn stamps() -> Vec<i64> {
    let mut out: Vec<i64> = (0..100).map(|i| T0 + i * 5 * SEC).collect();
    out.extend(std::iter::repeat_n(T0 + 600 * SEC + 123_456_789, 10));
    out.extend((0..50).map(|i| T0 + 601 * SEC + i * SEC / 10));
    out
}

fn text(i: usize) -> String {
    match i % 3 {
        0 => format!("plain line {i}"),
        1 => format!(r#"{{"level":"info","msg":"json line","n":{i}}}"#),
        _ => format!("level=warn msg=\"logfmt line\" n={i}"),
    }
}

async fn service() -> salvo::Service {
    let archive: Arc<dyn LogArchive> = Arc::new(MemoryStore::new(StoreLimits::default()));
    let key = SourceKey { namespace: "team-a".into(), pod: "gone".into(), pod_uid: "uid-gone".into(), container: "app".into(), instance: 0 };
    let lines: Vec<ArchivedLine> = stamps()
        .into_iter()
        .enumerate()
        .map(|(i, ts)| ArchivedLine { position: i as u64, timestamp_ns: ts, line: text(i).into_bytes(), truncated: false })
        .collect();
    archive.append(&key, &PodMeta::default(), &lines).await.unwrap();
    let yaml = "auth:\n  keycloak_url: http://127.0.0.1:1\n  realm: kubelens\n  client_id: kubelens\n  allowed_groups: [k8s-logs-access]\n\
                namespaces:\n  allowed: [team-a]\nlogs:\n  keepalive_interval: 1s\n";
    let (mut config, _) = Config::load(yaml, |_| None).unwrap();
    config.auth = issuer().config();
    let mut state = AppState::new(config, Readiness::new()).with_auth(issuer().authenticator());
    let objects = FakeObjects {
        namespaces: vec![Namespace { metadata: ObjectMeta { name: Some("team-a".into()), ..ObjectMeta::default() }, ..Namespace::default() }],
        ..FakeObjects::default()
    };
    let fake = FakeCluster::new(&state.policy, objects);
    let logs = LogService::new(&state.config, fake.cluster(), Arc::clone(&state.policy));
    state.logs = Some(Arc::new(logs));
    let opener: LogOpener = Arc::new(|_, _| futures::stream::empty().boxed());
    let recorder = ArchiveRecorder::new(archive, opener, RecorderConfig::from_logs(&state.config.logs), state.metrics.clone());
    state.retention = Some(Retention::new(recorder));
    let state = state.with_cluster(fake.cluster());
    kubelens_salvo::service(state)
}

async fn get(service: &salvo::Service, query: &str, accept: &str) -> (StatusCode, String) {
    let request = TestClient::get(format!("http://127.0.0.1{LOGS}?{query}")).bearer_auth(issuer().viewer_token()).add_header("accept", accept, true);
    let mut res = tokio::time::timeout(Duration::from_secs(10), request.send(service)).await.expect("response");
    let status = res.status_code.unwrap_or(StatusCode::OK);
    let body = tokio::time::timeout(Duration::from_secs(10), res.take_string()).await.expect("body").unwrap();
    (status, body)
}

async fn json(service: &salvo::Service, query: &str) -> (StatusCode, Value) {
    let (status, body) = get(service, query, "application/json").await;
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{query}: {e}: {body}")))
}

/// (id, line) of every line in a document.
fn pairs(doc: &Value) -> Vec<(String, String)> {
    doc["lines"].as_array().unwrap().iter().map(|l| (l["id"].as_str().unwrap().to_owned(), l["line"].as_str().unwrap().to_owned())).collect()
}

#[tokio::test]
async fn archived_pods_open_exactly_at_a_line() {
    let service = service().await;
    let (status, all) = json(&service, "follow=false&tailLines=10000").await;
    assert_eq!(status, StatusCode::OK);
    let all = pairs(&all);
    assert_eq!(all.len(), 160);
    // Every kind of target: the log's first line, lines whose 60 s window starts after the
    // log does (a re-read from the beginning), every line of the same-timestamp group, the
    // busy tail, the last line.
    for (i, before, after) in [(0, 5, 5), (3, 10, 2), (50, 30, 4), (100, 3, 3), (104, 7, 20), (109, 0, 0), (130, 50, 50), (159, 2, 9)] {
        let id = &all[i].0;
        let (status, doc) = json(&service, &format!("around={}&before={before}&after={after}", urlencode(id))).await;
        assert_eq!(status, StatusCode::OK, "{i}: {doc}");
        assert_eq!(doc["around"], id.as_str());
        assert!(doc.get("beforeComplete").is_none(), "{doc}");
        let from = i.saturating_sub(before);
        let to = (i + 1 + after).min(all.len());
        assert_eq!(pairs(&doc), all[from..to].to_vec(), "around line {i} ({id}), {before} before, {after} after");
        assert_eq!(doc["more"], i + 1 + after < all.len(), "{i}");
    }
    // SSE: the archive's status, the lines with their ids, then `ended`.
    let id = &all[104].0;
    let (status, body) = get(&service, &format!("around={}&before=2&after=2", urlencode(id)), "text/event-stream").await;
    assert_eq!(status, StatusCode::OK);
    let events: Vec<&str> = body.split("\n\n").filter(|b| b.contains("event: ")).collect();
    assert!(events[0].contains("event: status") && events[0].contains("\"archived\""), "{body}");
    assert!(events[1].contains("event: around") && events[1].contains(&format!(r#"{{"around":"{id}","before":2,"beforeComplete":true}}"#)), "{body}");
    let ids: Vec<&str> = events.iter().filter(|b| b.contains("event: log")).filter_map(|b| b.lines().find_map(|l| l.strip_prefix("id: "))).collect();
    assert_eq!(ids, all[102..107].iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>());
    assert!(events.last().unwrap().contains("\"ended\""), "{body}");
}

#[tokio::test]
async fn archived_around_errors_are_clear() {
    let service = service().await;
    let first = "2026-01-30T10:00:00.000000000Z~0";
    let cases = [
        // Before the first archived line: no longer there.
        ("around=2026-01-30T09:00:00.000000000Z~0".to_owned(), StatusCode::GONE, "line_rotated"),
        // Covered time, no such line (between two lines; an index past the group).
        ("around=2026-01-30T10:00:01.000000000Z~0".to_owned(), StatusCode::NOT_FOUND, "line_not_found"),
        ("around=2026-01-30T10:10:00.123456789Z~10".to_owned(), StatusCode::NOT_FOUND, "line_not_found"),
        ("around=garbage".to_owned(), StatusCode::BAD_REQUEST, "bad_event_id"),
        ("around=2026-01-30T10:00:00Z".to_owned(), StatusCode::BAD_REQUEST, "bad_event_id"),
        (format!("around={first}&before=1001"), StatusCode::BAD_REQUEST, "bad_around"),
        (format!("around={first}&after=-1"), StatusCode::BAD_REQUEST, "bad_around"),
        (format!("around={first}&after=%2B5"), StatusCode::BAD_REQUEST, "bad_around"),
        (format!("around={first}&before=x"), StatusCode::BAD_REQUEST, "bad_around"),
        (format!("around={first}&since=2026-01-30T10:00:00Z"), StatusCode::BAD_REQUEST, "bad_around"),
        (format!("around={first}&tailLines=5"), StatusCode::BAD_REQUEST, "bad_around"),
        (format!("around={first}&grep=x"), StatusCode::BAD_REQUEST, "bad_around"),
        (format!("around={first}&field.level=info"), StatusCode::BAD_REQUEST, "bad_around"),
        (format!("around={first}&follow=true&after=3"), StatusCode::BAD_REQUEST, "bad_around"),
        ("before=3".to_owned(), StatusCode::BAD_REQUEST, "bad_around"),
    ];
    for (query, want, code) in cases {
        let (status, doc) = json(&service, &query).await;
        assert_eq!((status, doc["error"]["code"].as_str()), (want, Some(code)), "{query}: {doc}");
    }
}

/// An `EventSource` reconnects an `around` stream with the same URL and `Last-Event-ID`: the
/// resume id wins, and the read goes on exactly after it (to the end of the log, finitely).
#[tokio::test]
async fn a_resume_id_wins_over_around() {
    let service = service().await;
    let (_, all) = json(&service, "follow=false&tailLines=10000").await;
    let all = pairs(&all);
    let query = format!("around={}&before=2&after=2&lastEventId={}", urlencode(&all[10].0), urlencode(&all[120].0));
    let (status, doc) = json(&service, &query).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert!(doc.get("around").is_none(), "{doc}");
    assert_eq!(pairs(&doc), all[121..].to_vec());
}

fn urlencode(id: &str) -> String {
    id.replace(':', "%3A").replace('~', "%7E")
}
