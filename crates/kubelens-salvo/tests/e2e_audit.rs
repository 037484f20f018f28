//! The audit trail (issue 20) end to end: the real binary on testenv with real Keycloak tokens;
//! every access decision that matters is one JSON line with target `kubelens::audit` on stderr,
//! in the schema of `docs/audit.md`, and never a token, a ticket or log content. With
//! `audit.store: true` the same events are in the store, and `GET /api/v1/audit` pages
//! through them for the admin group only.
//!
//! Run: `testenv/run -- cargo test -p kubelens-salvo --test e2e_audit`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use kubelens_testenv::TestEnv;
use serde_json::Value;
use support::Kubelens;

/// The audit events in the server's log so far.
fn audit_events(server: &Kubelens) -> Vec<Value> {
    server
        .log()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["target"] == "kubelens::audit")
        .collect()
}

/// Waits (bounded) until an event satisfies `want`, and returns it.
fn wait_event(server: &Kubelens, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(event) = audit_events(server).into_iter().find(&want) {
            return event;
        }
        assert!(Instant::now() < deadline, "no {what} event in:\n{:#?}", audit_events(server));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The fields every event of kind `audit` has (the stable schema), beyond `timestamp`,
/// `level`, `message` and `target`.
fn schema(audit: &str) -> &'static [&'static str] {
    match audit {
        "logs_opened" => &["audit", "user", "subject", "namespace", "resource", "name", "mode", "query"],
        "logs_closed" => &["audit", "user", "subject", "namespace", "resource", "name", "mode", "query", "lines", "bytes", "duration_ms"],
        "logs_refused" => &["audit", "user", "subject", "namespace", "resource", "name", "mode", "query", "status"],
        "details_viewed" => &["audit", "user", "subject", "namespace", "name", "masked"],
        "session_changed" => &["audit", "user", "subject", "change"],
        "denied" => &["audit", "reason", "path"],
        other => panic!("unknown audit event `{other}`"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_access_decision_is_one_audit_event_without_secrets() {
    let Some(env) = TestEnv::e2e() else { return };
    let server = Kubelens::start(env, "audit:\n  store: true\n");
    let base = server.url.clone();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let viewer = env.password_token(&env.cli_client_id, "viewer").await;
    let admin = env.password_token(&env.cli_client_id, "admin").await;
    let nogroup = env.password_token(&env.cli_client_id, "nogroup").await;
    let logs = format!("{base}/api/v1/namespaces/team-a/pods/debug/logs");

    // An SSE stream opened with a one-time ticket (the ticket must not be recorded).
    let ticket: Value = http.post(format!("{base}/api/v1/stream-tickets")).bearer_auth(&viewer).send().await.unwrap().json().await.unwrap();
    let ticket = ticket["ticket"].as_str().unwrap().to_owned();
    let mut stream = http.get(format!("{logs}?tailLines=3&ticket={ticket}")).header("accept", "text/event-stream").send().await.unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    let mut text = String::new();
    while text.matches("event: log\n").count() < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(30), stream.chunk()).await.unwrap().unwrap().expect("three lines");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(stream);
    // A read, a download, a search, a refused read.
    let get = |url: String, token: String| {
        let http = http.clone();
        async move {
            let res = http.get(url).bearer_auth(token).send().await.unwrap();
            let status = res.status().as_u16();
            (status, res.bytes().await.unwrap().len())
        }
    };
    assert_eq!(get(format!("{logs}?follow=false&tailLines=2&grep=seed"), viewer.clone()).await.0, 200);
    let (status, download_bytes) = get(format!("{logs}?follow=false&download=true"), viewer.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(get(format!("{logs}/search?q=seed"), viewer.clone()).await.0, 200);
    assert_eq!(get(format!("{base}/api/v1/namespaces/team-a/pods/no-such-pod/logs?follow=false"), viewer.clone()).await.0, 404);
    // Details, masked for a viewer and not for an admin; a session saved and deleted.
    let details = format!("{base}/api/v1/namespaces/team-a/pods/debug/details");
    assert_eq!(get(details.clone(), viewer.clone()).await.0, 200);
    assert_eq!(get(details, admin.clone()).await.0, 200);
    let put = http.put(format!("{base}/api/v1/session")).bearer_auth(&viewer).header("content-type", "application/json").body("{}").send().await.unwrap();
    assert_eq!(put.status().as_u16(), 200);
    assert_eq!(http.delete(format!("{base}/api/v1/session")).bearer_auth(&viewer).send().await.unwrap().status().as_u16(), 204);
    // A valid token outside the allowed groups.
    assert_eq!(get(format!("{base}/api/v1/namespaces"), nogroup.clone()).await.0, 403);

    let is = |e: &Value, audit: &str, mode: &str| e["audit"] == audit && e["mode"] == mode && e["name"] == "debug";
    for mode in ["stream", "read", "download", "search"] {
        let opened = wait_event(&server, &format!("logs_opened/{mode}"), |e| is(e, "logs_opened", mode));
        let closed = wait_event(&server, &format!("logs_closed/{mode}"), |e| is(e, "logs_closed", mode));
        for event in [&opened, &closed] {
            assert_eq!(event["user"], "viewer", "{event}");
            assert_eq!(event["namespace"], "team-a", "{event}");
            assert_eq!(event["resource"], "pod", "{event}");
        }
        assert!(closed["bytes"].as_u64().unwrap() > 0, "{closed}");
        assert!(closed["duration_ms"].as_u64().is_some(), "{closed}");
        if mode == "stream" {
            assert!(closed["lines"].as_u64().unwrap() >= 3, "the three lines read: {closed}");
            assert_eq!(closed["query"], "tailLines=3", "the ticket is not recorded: {closed}");
        }
        if mode == "read" {
            assert_eq!(closed["query"], "follow=false&tailLines=2&grep=seed", "{closed}");
        }
        if mode == "download" {
            assert_eq!(closed["bytes"].as_u64().unwrap(), download_bytes as u64, "bytes are what the client got: {closed}");
        }
    }
    let refused = wait_event(&server, "logs_refused", |e| e["audit"] == "logs_refused");
    assert_eq!((refused["name"].as_str(), refused["status"].as_u64()), (Some("no-such-pod"), Some(404)), "{refused}");
    let masked = |user: &str| wait_event(&server, "details_viewed", |e| e["audit"] == "details_viewed" && e["user"] == user)["masked"].clone();
    assert_eq!(masked("viewer"), true);
    assert_eq!(masked("admin"), false);
    for change in ["saved", "deleted"] {
        wait_event(&server, "session_changed", |e| e["audit"] == "session_changed" && e["change"] == change && e["user"] == "viewer");
    }
    let denied = wait_event(&server, "denied", |e| e["audit"] == "denied");
    assert_eq!((denied["reason"].as_str(), denied["path"].as_str()), (Some("not_in_allowed_group"), Some("/api/v1/namespaces")), "{denied}");

    // The stable schema: each kind has its fields, always.
    let events = audit_events(&server);
    for event in &events {
        let audit = event["audit"].as_str().unwrap_or_else(|| panic!("no `audit` field: {event}"));
        for field in schema(audit) {
            assert!(!event[*field].is_null(), "{audit} lacks `{field}`: {event}");
        }
    }
    // Never a credential, never log content: not in the audit events, not anywhere in the log.
    let log = server.log();
    for secret in [&viewer, &admin, &nogroup, &ticket] {
        assert!(!log.contains(secret.as_str()), "a credential reached the log");
    }
    for event in &events {
        assert!(!event.to_string().contains("seed line"), "log content in an audit event: {event}");
    }

    stored_events_match_the_log_and_page_for_admins_only(&server, &http, &admin, &viewer, &events).await;
}

/// The event as the process log has it, without the log's own fields.
fn without_log_fields(event: &Value) -> Value {
    let mut event = event.clone();
    for field in ["timestamp", "level", "message", "target", "id", "time_ms"] {
        event.as_object_mut().unwrap().remove(field);
    }
    event
}

async fn stored_events_match_the_log_and_page_for_admins_only(
    server: &Kubelens,
    http: &reqwest::Client,
    admin: &str,
    viewer: &str,
    logged: &[Value],
) {
    let audit = format!("{}/api/v1/audit", server.url);
    let page = |query: String, token: String| {
        let (http, audit) = (http.clone(), audit.clone());
        async move {
            let res = http.get(format!("{audit}{query}")).bearer_auth(token).send().await.unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // Not for a viewer: 403, whatever the query.
    let (status, body) = page("?limit=5".into(), viewer.to_owned()).await;
    assert_eq!(status, 403, "{body}");
    // The writer is asynchronous: wait (bounded) until every logged event is stored, then walk
    // all pages of two events each, newest first.
    let deadline = Instant::now() + Duration::from_secs(20);
    let stored = loop {
        let mut all = Vec::new();
        let mut before = String::new();
        loop {
            let (status, body) = page(format!("?limit=2{before}"), admin.to_owned()).await;
            assert_eq!(status, 200, "{body}");
            let events = body["events"].as_array().unwrap();
            assert!(events.len() <= 2, "{body}");
            all.extend(events.iter().cloned());
            match body["next"].as_str() {
                Some(next) => before = format!("&before={next}"),
                None => break,
            }
        }
        if all.len() >= logged.len() || Instant::now() > deadline {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let times: Vec<i64> = stored.iter().map(|e| e["time_ms"].as_i64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first: {times:?}");
    let mut ids: Vec<&str> = stored.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), stored.len(), "no event twice across pages");
    // Every event the log has is stored with the same fields (the store may have more: the
    // 403 above is no audit event, but events logged after `logged` was read are).
    let stored_plain: Vec<Value> = stored.iter().map(without_log_fields).collect();
    for event in logged {
        let plain = without_log_fields(event);
        assert!(stored_plain.contains(&plain), "logged but not stored: {plain}\nstored: {stored_plain:#?}");
    }
    // Filters.
    let (status, body) = page("?event=details_viewed&user=admin".into(), admin.to_owned()).await;
    assert_eq!(status, 200, "{body}");
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{body}");
    assert_eq!((events[0]["audit"].as_str(), events[0]["masked"].as_bool()), (Some("details_viewed"), Some(false)));
    let (_, body) = page("?namespace=team-a&event=logs_closed".into(), admin.to_owned()).await;
    assert_eq!(body["events"].as_array().unwrap().len(), 4, "stream, read, download, search: {body}");
    let (_, body) = page("?since=2999-01-01T00:00:00Z".into(), admin.to_owned()).await;
    assert_eq!(body["events"], serde_json::json!([]), "{body}");
    // Bad input is a 400 with a reason.
    for bad in ["?limit=0", "?limit=1001", "?limit=x", "?event=nope", "?since=yesterday", "?before=not-a-cursor"] {
        let (status, body) = page(bad.into(), admin.to_owned()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{bad}: {body}");
    }
}
