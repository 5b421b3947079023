//! The operator's surface: Prometheus metrics scraped during a rebuild, request ids, and
//! machine-readable logs.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Server, append, clear_failpoint, client, failpoint, status_until};

/// One scrape: each series (name and labels, as written) with its value.
async fn scrape(client: &reqwest::Client, server: &Server) -> BTreeMap<String, f64> {
    let response = client.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

fn value(scrape: &BTreeMap<String, f64>, series: &str) -> f64 {
    *scrape
        .get(series)
        .unwrap_or_else(|| panic!("no {series} in {:#?}", scrape.keys().collect::<Vec<_>>()))
}

fn has_name(scrape: &BTreeMap<String, f64>, name: &str) -> bool {
    scrape
        .keys()
        .any(|s| s == name || s.starts_with(&format!("{name}{{")))
}

#[tokio::test]
async fn metrics_are_scraped_during_a_rebuild_and_the_counters_move() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    for n in 0..20 {
        let events: Vec<Value> = (0..10)
            .map(|i| json!({"type": "Deposited", "data": {"amount": i}}))
            .collect();
        let (status, _) = append(
            &client,
            &server,
            &format!("account-{n}"),
            None,
            &json!(events),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (status, _) = append(
        &client,
        &server,
        "account-0",
        Some("0"),
        &json!([{"type": "Deposited", "data": {}}]),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    status_until(&client, &server, "stream-stats", |s| {
        s["state"] == "caught_up" && s["position"] == 200
    })
    .await;

    let before = scrape(&client, &server).await;
    let serving = r#"account="root",projection="stream-stats",role="serving""#;
    assert_eq!(
        value(&before, r#"projector_log_head_position{account="root"}"#),
        200.0
    );
    assert_eq!(
        value(&before, r#"projector_appends_total{outcome="written"}"#),
        20.0
    );
    assert_eq!(
        value(&before, r#"projector_appends_total{outcome="conflict"}"#),
        1.0
    );
    assert_eq!(
        value(
            &before,
            r#"projector_append_events_total{outcome="written"}"#
        ),
        200.0
    );
    assert_eq!(
        value(
            &before,
            r#"projector_append_duration_seconds_count{outcome="written"}"#
        ),
        20.0
    );
    assert!(value(&before, "projector_group_commit_events_sum") >= 200.0);
    assert_eq!(
        value(
            &before,
            r#"projector_http_requests_total{route="/streams/{stream}",method="POST",status="201"}"#
        ),
        20.0
    );
    assert!(has_name(
        &before,
        "projector_http_request_duration_seconds_bucket"
    ));
    assert_eq!(value(&before, "projector_live_subscriptions"), 0.0);
    assert_eq!(
        value(
            &before,
            &format!("projector_projection_position{{{serving}}}")
        ),
        200.0
    );
    assert_eq!(
        value(
            &before,
            &format!("projector_projection_lag_events{{{serving}}}")
        ),
        0.0
    );
    assert_eq!(
        value(
            &before,
            &format!("projector_projection_events_total{{{serving}}}")
        ),
        200.0
    );
    assert!(
        value(
            &before,
            &format!("projector_projection_fuel_consumed_total{{{serving}}}")
        ) > 0.0
    );
    assert!(
        value(
            &before,
            &format!("projector_projection_batch_duration_seconds_count{{{serving}}}")
        ) >= 1.0
    );
    assert_eq!(
        value(
            &before,
            &format!(r#"projector_projection_state{{{serving},state="caught_up"}}"#)
        ),
        1.0
    );
    assert_eq!(
        value(
            &before,
            &format!(r#"projector_projection_state{{{serving},state="faulted"}}"#)
        ),
        0.0
    );

    // A rebuild held at its start (every turn returns at once): the building version shows.
    failpoint(&client, &server, "turn", "return").await;
    let response = client
        .post(server.url("/projections/stream-stats/rebuild"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let during = scrape(&client, &server).await;
    let building = r#"account="root",projection="stream-stats",role="building""#;
    assert_eq!(
        value(
            &during,
            &format!("projector_projection_position{{{building}}}")
        ),
        0.0
    );
    assert_eq!(
        value(
            &during,
            &format!("projector_projection_lag_events{{{building}}}")
        ),
        200.0
    );
    assert_eq!(
        value(
            &during,
            &format!(r#"projector_projection_state{{{building},state="running"}}"#)
        ),
        1.0
    );
    assert_eq!(
        value(
            &during,
            r#"projector_rebuild_progress_ratio{account="root",projection="stream-stats"}"#
        ),
        0.0
    );
    // Let it run to the swap: the building series go, the counters moved.
    clear_failpoint(&client, &server, "turn").await;
    status_until(&client, &server, "stream-stats", |s| s["rebuild"].is_null()).await;
    // A gauge goes at the first scrape that finds it unset since the one before.
    let gone = |scrape: &BTreeMap<String, f64>| {
        !scrape.keys().any(|s| {
            s.contains(r#"role="building""#) && s.starts_with("projector_projection_position")
        }) && !has_name(scrape, "projector_rebuild_progress_ratio")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        let after = scrape(&client, &server).await;
        if gone(&after) {
            break after;
        }
        assert!(std::time::Instant::now() < deadline, "{after:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        value(
            &after,
            &format!("projector_projection_events_total{{{building}}}")
        ),
        200.0,
        "the rebuild applied every event"
    );
    assert!(
        value(
            &after,
            r#"projector_http_requests_total{route="/metrics",method="GET",status="200"}"#
        ) >= 2.0
    );
}

#[tokio::test]
async fn requests_carry_an_id_and_logs_can_be_json() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let server = Server::start_logging(dir.path(), &["--log-format", "json"], &log);
    let client = client();
    let mine = client
        .get(server.url("/health"))
        .header("x-request-id", "deploy-42.a_b")
        .send()
        .await
        .unwrap();
    assert_eq!(mine.headers()["x-request-id"], "deploy-42.a_b");
    // An id that could forge a log line is replaced; a request without one gets one.
    for sent in [Some("bad id\nforged"), Some(&*"x".repeat(65)), None] {
        let mut request = client.get(server.url("/streams/nothing-here"));
        if let Some(id) = sent {
            request = request.header("x-request-id", id.replace('\n', " "));
        }
        let response = request.send().await.unwrap();
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    }
    server.terminate();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.iter().any(|l| l["message"] == "log opened"));
    // The request's span (route and id) is on its lines.
    assert!(
        lines
            .iter()
            .any(|l| l["span"]["request_id"] == "deploy-42.a_b" && l["span"]["route"] == "/health"),
        "{text}"
    );
}
