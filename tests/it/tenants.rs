//! Accounts as tenants: two accounts using the same stream, category and projection names at
//! once each see exactly their own (`$all`, categories, live, views, status, the CLI), another
//! account's things are not found, per-account limits answer 429, accounts survive a restart,
//! and a data directory from before accounts is served unchanged.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Server, Sse, client, guest, root_token, status_until, stdout};

/// A request with `token`, answered as (status, JSON body).
async fn call(
    server: &Server,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = client()
        .request(method, server.url(path))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}")),
    )
}

async fn get(server: &Server, token: &str, path: &str) -> (StatusCode, Value) {
    call(server, token, reqwest::Method::GET, path, None).await
}

async fn create_account(server: &Server, root: &str, name: &str, limits: Value) {
    let (status, body) = call(
        server,
        root,
        reqwest::Method::POST,
        "/admin/accounts",
        Some(json!({"name": name, "limits": limits})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["name"], name);
}

/// A key of `account` with read, append and deploy.
async fn account_key(server: &Server, root: &str, account: &str) -> String {
    let (status, body) = call(
        server,
        root,
        reqwest::Method::POST,
        "/admin/keys",
        Some(json!({"account": account, "scopes": ["read", "append", "deploy"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

async fn append(server: &Server, token: &str, stream: &str, events: Value) -> Value {
    let path = format!("/streams/{stream}");
    let (status, body) = call(server, token, reqwest::Method::POST, &path, Some(events)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

async fn deploy(server: &Server, token: &str, name: &str, wasm: Vec<u8>) {
    let response = client()
        .put(server.url(&format!("/projections/{name}")))
        .bearer_auth(token)
        .body(wasm)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
}

/// Polls a projection's status with `token` until `done` holds (60 s at most).
async fn wait_status(server: &Server, token: &str, name: &str, done: impl Fn(&Value) -> bool) {
    let path = format!("/projections/{name}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get(server, token, &path).await;
        if status == StatusCode::OK && done(&body) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every event of `$all` (one page is enough here).
async fn all_events(server: &Server, token: &str) -> Vec<Value> {
    let (status, page) = get(server, token, "/streams/$all?limit=1000").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["events"].as_array().unwrap().clone()
}

/// What each account writes: the same names, different counts and a marker naming it.
fn orders(account: &str, stream: u64, count: u64) -> Value {
    let events: Vec<Value> = (0..count)
        .map(|i| json!({"type": "OrderPlaced", "data": {"tenant": account, "orderId": format!("{stream}-{i}"), "customerId": "c1"}}))
        .collect();
    Value::Array(events)
}

#[tokio::test]
async fn two_accounts_with_the_same_names_each_see_only_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &["--auth", "keys"]);
    let root = root_token(dir.path());
    create_account(&server, &root, "acme", json!({})).await;
    create_account(&server, &root, "globex", json!({})).await;
    let acme = account_key(&server, &root, "acme").await;
    let globex = account_key(&server, &root, "globex").await;
    deploy(&server, &acme, "stats", guest("stream_stats")).await;
    deploy(&server, &globex, "stats", guest("stream_stats")).await;
    // PUT wrote into each account's own folder.
    assert!(dir.path().join("deploy/acme/stats.wasm").is_file());
    assert!(dir.path().join("deploy/globex/stats.wasm").is_file());
    assert!(!dir.path().join("deploy/stats.wasm").exists());
    for token in [&acme, &globex] {
        wait_status(&server, token, "stats", |s| s["state"] == "caught_up").await;
    }
    let live = |token: &str| server.url(&format!("/streams/$all/live?access_token={token}"));
    let mut acme_live = Sse::connect(&live(&acme), None).await;
    let mut globex_live = Sse::connect(&live(&globex), None).await;

    // Both append to order-1, order-2 and cart-1 at once, 20 rounds.
    let (a, g) = (acme.clone(), globex.clone());
    let writer = |token: String, account: &'static str, per: u64| {
        let server = &server;
        async move {
            for round in 0..20 {
                for stream in ["order-1", "order-2", "cart-1"] {
                    append(server, &token, stream, orders(account, round, per)).await;
                }
            }
        }
    };
    tokio::join!(writer(a, "acme", 1), writer(g, "globex", 2));
    let (acme_count, globex_count) = (60u64, 120u64);

    for (token, account, count) in [
        (&acme, "acme", acme_count),
        (&globex, "globex", globex_count),
    ] {
        // `$all`: positions 1..=count, gap-free, only the account's events.
        let events = all_events(&server, token).await;
        let positions: Vec<u64> = events
            .iter()
            .map(|e| e["position"].as_u64().unwrap())
            .collect();
        assert_eq!(positions, (1..=count).collect::<Vec<_>>(), "{account}");
        assert!(events.iter().all(|e| e["data"]["tenant"] == account));
        // A stream: its own revisions 0.. only.
        let (_, page) = get(&server, token, "/streams/order-1?limit=1000").await;
        let stream = page["events"].as_array().unwrap();
        assert_eq!(stream.len() as u64, count / 3);
        assert!(stream.iter().all(|e| e["data"]["tenant"] == account));
        // A category: the account's order streams only.
        let (_, page) = get(&server, token, "/streams/$ce-order?limit=1000").await;
        let category = page["events"].as_array().unwrap();
        assert_eq!(category.len() as u64, 2 * count / 3);
        assert!(category.iter().all(|e| e["data"]["tenant"] == account));
        // The view: counted from the account's own events.
        let path = format!("/projections/stats/view/stream/order-1?wait_for={count}");
        let (status, doc) = get(&server, token, &path).await;
        assert_eq!(status, StatusCode::OK, "{doc}");
        assert_eq!(doc["events"], count / 3, "{account}: {doc}");
        // Status: its own projection, at its own head.
        let (_, list) = get(&server, token, "/projections").await;
        let names: Vec<&str> = list["projections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["stats"], "{account}");
        assert_eq!(list["projections"][0]["head"], count);
    }
    // Live: each subscriber got exactly its account's events, in order.
    for (sse, account, count) in [
        (&mut acme_live, "acme", acme_count),
        (&mut globex_live, "globex", globex_count),
    ] {
        let mut seen = Vec::new();
        while (seen.len() as u64) < count {
            let event = sse
                .next(Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("{account}: {} of {count} live events", seen.len()));
            assert_eq!(event.data["data"]["tenant"], account);
            seen.push(event.id);
        }
        assert_eq!(seen, (1..=count).collect::<Vec<_>>());
        assert!(sse.next(Duration::from_millis(300)).await.is_none());
    }
    // Another account's things are not found, not forbidden; the default account's too.
    let (status, _) = get(&server, &acme, "/projections/order-summary").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    append(&server, &globex, "only-globex", orders("globex", 0, 1)).await;
    let (status, _) = get(&server, &acme, "/streams/only-globex").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = get(&server, &root, "/streams/order-1").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (_, list) = get(&server, &root, "/projections").await;
    assert!(
        list["projections"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["name"] != "stats"),
        "{list}"
    );

    // Accounts, keys, events and views survive a restart.
    server.terminate();
    let server = Server::start_with(dir.path(), &["--auth", "keys"]);
    for (token, count) in [(&acme, acme_count), (&globex, globex_count + 1)] {
        assert_eq!(all_events(&server, token).await.len() as u64, count);
        wait_status(&server, token, "stats", |s| {
            s["state"] == "caught_up" && s["position"] == count
        })
        .await;
    }
    let (_, accounts) = get(&server, &root, "/admin/accounts").await;
    let names: Vec<&str> = accounts["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme", "globex", "root"]);
}

#[tokio::test]
async fn account_limits_answer_429_and_raising_them_lets_work_resume() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &["--auth", "keys"]);
    let root = root_token(dir.path());
    create_account(&server, &root, "small", json!({"live_subscriptions": 2})).await;
    let small = account_key(&server, &root, "small").await;

    // Live subscriptions: two open, the third refused with 429 and Retry-After.
    let live = server.url(&format!("/streams/$all/live?access_token={small}"));
    let first = Sse::connect(&live, None).await;
    let _second = Sse::connect(&live, None).await;
    let refused = client().get(&live).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_live_subscriptions");
    // Another account's subscriptions are not counted against it.
    let root_live = server.url(&format!("/streams/$all/live?access_token={root}"));
    let _root_live = Sse::connect(&root_live, None).await;
    // Closing one frees its place.
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while client().get(&live).send().await.unwrap().status() != StatusCode::OK {
        assert!(
            std::time::Instant::now() < deadline,
            "the closed place was not freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // View storage: a projection runs until the account's views reach the limit, then
    // stops with a `quota` fault; deploys are refused meanwhile.
    deploy(&server, &small, "stats", guest("stream_stats")).await;
    append(&server, &small, "order-1", orders("small", 0, 3)).await;
    wait_status(&server, &small, "stats", |s| s["position"] == 3).await;
    let (status, body) = call(
        &server,
        &root,
        reqwest::Method::PUT,
        "/admin/accounts/small/limits",
        Some(json!({"view_bytes": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["limits"]["view_bytes"], 1);
    append(&server, &small, "order-2", orders("small", 1, 3)).await;
    wait_status(&server, &small, "stats", |s| {
        s["last_error"]["kind"] == "quota" && s["position"] == 3
    })
    .await;
    let response = client()
        .put(server.url("/projections/more"))
        .bearer_auth(&small)
        .body(guest("stream_stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "view_storage_limit");
    // The limit lifted, the projection resumes by itself.
    let (status, _) = call(
        &server,
        &root,
        reqwest::Method::PUT,
        "/admin/accounts/small/limits",
        Some(json!({"live_subscriptions": 2})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    wait_status(&server, &small, "stats", |s| {
        s["state"] == "caught_up" && s["position"] == 6
    })
    .await;
    // Bad limits and names are clear errors.
    let (status, body) = call(
        &server,
        &root,
        reqwest::Method::POST,
        "/admin/accounts",
        Some(json!({"name": "Bad/Name"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_account_name");
    let (status, body) = call(
        &server,
        &root,
        reqwest::Method::POST,
        "/admin/accounts",
        Some(json!({"name": "small"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // Only root's keys administer: an account's key cannot make accounts or keys.
    let (status, _) = call(
        &server,
        &small,
        reqwest::Method::POST,
        "/admin/accounts",
        Some(json!({"name": "mine"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_data_directory_from_before_accounts_is_served_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data-before-accounts.tar.gz");
    let untar = Command::new("tar")
        .arg("xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(untar.success());
    let server = Server::start(dir.path());
    let client = client();
    let (_, page) = crate::common::get_json(&client, &server.url("/streams/$all")).await;
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 10);
    assert_eq!(events[9]["stream"], "account-1");
    assert_eq!(events[9]["position"], 10);
    // The views are served as they were: same versions, caught up, no rebuild.
    for (name, version) in [
        ("stream-stats", "ad340a6b1cd6"),
        ("order-summary", "78e4611e85a5"),
        ("category-index", "973c205ff56a"),
    ] {
        let status = status_until(&client, &server, name, |s| s["state"] == "caught_up").await;
        assert!(
            status["version"].as_str().unwrap().starts_with(version),
            "{status}"
        );
        assert!(status["rebuild"].is_null(), "{status}");
        assert_eq!(status["position"], 10);
    }
    let (status, order) =
        crate::common::document(&client, &server, "order-summary", "order/o2", 10).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(order["status"], "shipped");
    assert_eq!(order["totalCents"], 300);
    // The log goes on where it was.
    let (status, body) = crate::common::append(
        &client,
        &server,
        "order-1",
        Some("2"),
        &json!([{"type": "OrderCancelled", "data": {"orderId": "o1", "reason": "test"}}]),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["first_position"], 11);
    assert_eq!(body["first_revision"], 3);
    let (status, doc) =
        crate::common::document(&client, &server, "stream-stats", "stream/order-1", 11).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["events"], 4);
}

fn projector(server: &Server, token: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_projector"))
        .args(args)
        .args(["--server", &server.base])
        .env("PROJECTOR_TOKEN", token)
        .output()
        .expect("running projector")
}

#[tokio::test]
async fn the_cli_makes_accounts_and_each_sees_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &["--auth", "keys"]);
    let root = root_token(dir.path());
    let made: Value = serde_json::from_str(&stdout(&projector(
        &server,
        &root,
        &[
            "accounts",
            "create",
            "shop",
            "--live-subscriptions",
            "8",
            "--json",
        ],
    )))
    .unwrap();
    assert_eq!(made["limits"]["live_subscriptions"], 8);
    let listed = stdout(&projector(&server, &root, &["accounts", "list"]));
    assert!(listed.lines().any(|l| l.starts_with("shop ")), "{listed}");
    let key: Value = serde_json::from_str(&stdout(&projector(
        &server,
        &root,
        &[
            "keys",
            "create",
            "--account",
            "shop",
            "--scopes",
            "read,append",
            "--json",
        ],
    )))
    .unwrap();
    let shop = key["token"].as_str().unwrap();
    for (token, data) in [
        (shop, r#"{"by":"shop"}"#),
        (root.as_str(), r#"{"by":"root"}"#),
    ] {
        stdout(&projector(
            &server,
            token,
            &["append", "order-1", "--type", "T", "--data", data],
        ));
    }
    let shop_read = stdout(&projector(&server, shop, &["read", "order-1", "--json"]));
    assert!(
        shop_read.contains("\"shop\"") && !shop_read.contains("\"root\""),
        "{shop_read}"
    );
    let root_read = stdout(&projector(&server, &root, &["read", "order-1", "--json"]));
    assert!(
        root_read.contains("\"root\"") && !root_read.contains("\"shop\""),
        "{root_read}"
    );
    // The shop account has no projections; root has the examples.
    let shop_status = stdout(&projector(&server, shop, &["status", "--json"]));
    let shop_status: Value = serde_json::from_str(&shop_status).unwrap();
    assert_eq!(shop_status["projections"], json!([]));
    let refused = projector(&server, shop, &["accounts", "list"]);
    assert!(!refused.status.success());
}
