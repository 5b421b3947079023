//! Deployment end to end: a real server watching its projections folder, files dropped,
//! replaced, broken and removed, rebuilds and operator controls over HTTP.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::common::{
    Server, append, client, deploy, document, get_json, guest, poll_projection, projection_names,
    status_until,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The same component with a custom section added: a new version (another hash) with the
/// same behaviour.
fn variant(wasm: &[u8], tag: &str) -> Vec<u8> {
    let name = b"projector-test";
    let mut contents = vec![name.len() as u8];
    contents.extend_from_slice(name);
    contents.extend_from_slice(tag.as_bytes());
    assert!(contents.len() < 128, "one-byte LEB128 size");
    let mut out = wasm.to_vec();
    out.push(0);
    out.push(contents.len() as u8);
    out.extend_from_slice(&contents);
    out
}

fn write(server: &Server, name: &str, bytes: &[u8]) {
    // Written aside and renamed in, as a deploy script would; the slow-copy test below
    // writes in place instead.
    let folder = server.data.join("deploy");
    let partial = folder.join(format!(".{name}.partial"));
    std::fs::write(&partial, bytes).unwrap();
    std::fs::rename(partial, folder.join(format!("{name}.wasm"))).unwrap();
}

/// The storages a projection has on disk.
fn storages(data: &Path, name: &str) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(data.join("views").join(name))
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            Some(name.strip_suffix(".redb")?.to_owned())
        })
        .collect();
    found.sort();
    found
}

async fn post(client: &reqwest::Client, server: &Server, path: &str) -> (StatusCode, Value) {
    let response = client.post(server.url(path)).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

async fn head(client: &reqwest::Client, server: &Server) -> u64 {
    get_json(client, &server.url("/health")).await.1["head"]
        .as_u64()
        .unwrap()
}

/// Waits until `name` is a projection (its file was picked up).
async fn appears(client: &reqwest::Client, server: &Server, name: &str) {
    poll_projection(
        client,
        server,
        name,
        Duration::from_secs(30),
        |status, _| status == StatusCode::OK,
    )
    .await;
}

/// Waits until `name` is not a projection any more.
async fn gone(client: &reqwest::Client, server: &Server, name: &str) {
    let body = poll_projection(
        client,
        server,
        name,
        Duration::from_secs(30),
        |status, _| status == StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(body["error"]["code"], "projection_not_found");
}

async fn orders(client: &reqwest::Client, server: &Server, from: u64, count: u64) -> u64 {
    let mut last = 0;
    for n in from..from + count {
        let (status, body) = append(
            client,
            server,
            &format!("order-{n}"),
            None,
            &json!([
                {"type": "OrderPlaced", "data": {"orderId": n.to_string(), "customerId": format!("c-{}", n % 3)}},
                {"type": "ItemAdded", "data": {"orderId": n.to_string(), "sku": "tea", "quantity": 1 + n % 4, "unitPriceCents": 250}},
            ]),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        last = body["last_position"].as_u64().unwrap();
    }
    last
}

/// Every document of a projection's view, in key order.
async fn all_documents(client: &reqwest::Client, server: &Server, name: &str) -> Vec<Value> {
    let mut url = server.url(&format!("/projections/{name}/view?limit=1000"));
    let mut documents = Vec::new();
    loop {
        let (status, page) = get_json(client, &url).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        documents.extend(page["documents"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(next) => url = server.url(next),
            None => return documents,
        }
    }
}

fn empty_folder(dir: &Path) {
    std::fs::create_dir_all(dir.join("deploy")).unwrap();
}

#[tokio::test]
async fn files_are_deployed_replaced_blue_green_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    empty_folder(dir.path());
    let server = Server::start(dir.path());
    let client = client();
    assert!(projection_names(&client, &server).await.is_empty());
    let last = orders(&client, &server, 0, 10).await;

    // Added: runs from position 0.
    write(&server, "stats", &guest("stream_stats"));
    appears(&client, &server, "stats").await;
    let (status, total) = document(&client, &server, "stats", "total", last).await;
    assert_eq!(status, StatusCode::OK, "{total}");
    assert_eq!(total["events"], 20);
    let first = status_until(&client, &server, "stats", |s| s["state"] == "caught_up").await;
    let first_version = first["version"].as_str().unwrap().to_owned();
    assert_eq!(storages(dir.path(), "stats"), [first_version.as_str()]);

    // Replaced with the same bytes: nothing happens.
    write(&server, "stats", &guest("stream_stats"));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let same = status_until(&client, &server, "stats", |_| true).await;
    assert_eq!(same["version"], first["version"]);
    assert_eq!(same["rebuild"], Value::Null);
    assert_eq!(storages(dir.path(), "stats"), [first_version.as_str()]);

    // Replaced with other content: it builds beside the serving version (held here by a
    // pause), which keeps answering, and is swapped in when it reaches the head.
    let (status, paused) = post(&client, &server, "/projections/stats/pause").await;
    assert_eq!(
        (status, paused["state"].as_str()),
        (StatusCode::OK, Some("paused"))
    );
    write(&server, "stats", &guest("category_index"));
    let building = status_until(&client, &server, "stats", |s| s["rebuild"].is_object()).await;
    assert_eq!(building["version"].as_str(), Some(first_version.as_str()));
    assert_ne!(building["rebuild"]["version"], building["version"]);
    assert_eq!(building["rebuild"]["state"], "paused");
    assert_eq!(building["rebuild"]["position"], 0);
    assert_eq!(storages(dir.path(), "stats").len(), 2);
    let (status, total) = get_json(&client, &server.url("/projections/stats/view/total")).await;
    assert_eq!((status, &total["events"]), (StatusCode::OK, &json!(20)));

    post(&client, &server, "/projections/stats/resume").await;
    let swapped = status_until(&client, &server, "stats", |s| s["rebuild"].is_null()).await;
    let second_version = swapped["version"].as_str().unwrap().to_owned();
    assert_ne!(second_version, first_version);
    let (status, _) = get_json(&client, &server.url("/projections/stats/view/total")).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the old version's documents are gone"
    );
    let (_, category) = document(&client, &server, "stats", "category/order", last).await;
    assert_eq!(category["events"], 20);
    assert_eq!(storages(dir.path(), "stats"), [second_version]);

    // It follows the log after the swap.
    let last = orders(&client, &server, 10, 2).await;
    let (_, category) = document(&client, &server, "stats", "category/order", last).await;
    assert_eq!(category["events"], 24);

    // Removed: gone from the API, its storage deleted.
    std::fs::remove_file(dir.path().join("deploy/stats.wasm")).unwrap();
    gone(&client, &server, "stats").await;
    assert!(!dir.path().join("views/stats").exists());
}

#[tokio::test]
async fn bad_files_never_replace_a_running_version() {
    let dir = tempfile::tempdir().unwrap();
    let stats = guest("stream_stats");
    deploy(
        dir.path(),
        &[
            ("stats", stats.clone()),
            ("broken", b"not wasm at all".to_vec()),
        ],
    );
    let server = Server::start(dir.path());
    let client = client();
    let last = orders(&client, &server, 0, 5).await;
    let (_, total) = document(&client, &server, "stats", "total", last).await;
    assert_eq!(total["events"], 10);
    let (_, broken) = get_json(&client, &server.url("/projections/broken")).await;
    assert_eq!(broken["state"], "invalid", "{broken}");
    assert!(
        broken["load_error"]
            .as_str()
            .unwrap()
            .contains("not a valid")
    );
    let version = status_until(&client, &server, "stats", |_| true).await["version"].clone();

    // A truncated file: reported, while the running version runs on.
    write(&server, "stats", &stats[..stats.len() / 2]);
    let status = status_until(&client, &server, "stats", |s| s["load_error"].is_string()).await;
    assert_eq!(status["version"], version);
    let last = orders(&client, &server, 5, 1).await;
    let (_, total) = document(&client, &server, "stats", "total", last).await;
    assert_eq!(total["events"], 12);

    // A slow copy in place, pausing long enough to be seen half-written: the half is
    // reported, and the complete file is deployed once it is written.
    let complete = variant(&stats, "slow copy");
    let mut file = std::fs::File::create(dir.path().join("deploy/stats.wasm")).unwrap();
    for chunk in complete.chunks(complete.len() / 4 + 1) {
        file.write_all(chunk).unwrap();
        file.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(350)).await;
    }
    drop(file);
    let status = status_until(&client, &server, "stats", |s| {
        s["load_error"].is_null() && s["rebuild"].is_null() && s["version"] != version
    })
    .await;
    assert_eq!(status["state"], "caught_up", "{status}");
    let (_, total) = document(&client, &server, "stats", "total", last).await;
    assert_eq!(total["events"], 12, "the new version rebuilt the same view");

    // The broken one is picked up once its file is fixed.
    write(&server, "broken", &stats);
    status_until(&client, &server, "broken", |s| s["state"] == "caught_up").await;
    let (_, total) = document(&client, &server, "broken", "total", last).await;
    assert_eq!(total["events"], 12);
}

#[tokio::test]
async fn a_restart_reconciles_the_folder_with_the_views() {
    let dir = tempfile::tempdir().unwrap();
    let (stats, categories) = (guest("stream_stats"), guest("category_index"));
    deploy(
        dir.path(),
        &[
            ("kept", stats.clone()),
            ("changed", stats.clone()),
            ("dropped", categories.clone()),
        ],
    );
    let server = Server::start(dir.path());
    let client = client();
    let last = orders(&client, &server, 0, 6).await;
    for name in ["kept", "changed", "dropped"] {
        status_until(&client, &server, name, |s| s["position"] == last).await;
    }
    let kept = storages(dir.path(), "kept");
    let changed = storages(dir.path(), "changed");
    server.terminate();

    std::fs::remove_file(dir.path().join("deploy/dropped.wasm")).unwrap();
    std::fs::write(
        dir.path().join("deploy/changed.wasm"),
        variant(&stats, "v2"),
    )
    .unwrap();
    std::fs::write(dir.path().join("deploy/added.wasm"), &categories).unwrap();

    let server = Server::start(dir.path());
    assert_eq!(
        projection_names(&client, &server).await,
        ["added", "changed", "kept"]
    );
    assert!(!dir.path().join("views/dropped").exists());
    assert_eq!(storages(dir.path(), "kept"), kept, "unchanged: resumed");
    let status = status_until(&client, &server, "changed", |s| s["position"] == last).await;
    assert_ne!(storages(dir.path(), "changed"), changed, "changed: rebuilt");
    assert_eq!(
        storages(dir.path(), "changed"),
        [status["version"].as_str().unwrap()]
    );
    for (name, key) in [
        ("kept", "total"),
        ("changed", "total"),
        ("added", "category/order"),
    ] {
        let (status, doc) = document(&client, &server, name, key, last).await;
        assert_eq!(
            (status, &doc["events"]),
            (StatusCode::OK, &json!(12)),
            "{name}"
        );
    }
}

#[tokio::test]
async fn rebuilds_on_request_and_operator_controls() {
    let dir = tempfile::tempdir().unwrap();
    deploy(
        dir.path(),
        &[
            ("stats", guest("stream_stats")),
            ("hostile", guest("hostile")),
        ],
    );
    let server = Server::start(dir.path());
    let client = client();
    let last = orders(&client, &server, 0, 4).await;
    let before = status_until(&client, &server, "stats", |s| s["position"] == last).await;
    let version = before["version"].as_str().unwrap().to_owned();

    // A rebuild of the same file into fresh storage; a second request while it runs is
    // refused. The pause holds the rebuild still for the second request.
    post(&client, &server, "/projections/stats/pause").await;
    let (status, started) = post(&client, &server, "/projections/stats/rebuild").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    assert_eq!(started["rebuild"]["position"], 0);
    assert_eq!(
        started["rebuild"]["version"].as_str(),
        Some(version.as_str())
    );
    let (status, refused) = post(&client, &server, "/projections/stats/rebuild").await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("rebuild_in_progress"))
    );
    post(&client, &server, "/projections/stats/resume").await;
    let after = status_until(&client, &server, "stats", |s| s["rebuild"].is_null()).await;
    assert_eq!(after["version"].as_str(), Some(version.as_str()));
    assert_eq!(storages(dir.path(), "stats"), [format!("{version}-1")]);
    let (_, total) = document(&client, &server, "stats", "total", last).await;
    assert_eq!(total["events"], 8);

    // Pause holds the position; resume catches up.
    post(&client, &server, "/projections/stats/pause").await;
    let last = orders(&client, &server, 4, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let paused = status_until(&client, &server, "stats", |_| true).await;
    assert_eq!(
        (paused["state"].as_str(), paused["position"].as_u64()),
        (Some("paused"), Some(last - 2))
    );
    post(&client, &server, "/projections/stats/resume").await;
    let (_, total) = document(&client, &server, "stats", "total", last).await;
    assert_eq!(total["events"], 10);

    // Retry runs a faulted projection again at once; skip moves it past the event.
    let events = json!([
        {"type": "Fine", "data": {}},
        {"type": "Refuse", "data": {}},
        {"type": "Fine", "data": {}},
    ]);
    let (_, appended) = append(&client, &server, "hostile-1", None, &events).await;
    let refused_at = appended["first_position"].as_u64().unwrap() + 1;
    let faulted = status_until(&client, &server, "hostile", |s| s["state"] == "faulted").await;
    assert_eq!(faulted["last_error"]["position"], refused_at);
    let (status, body) = post(&client, &server, "/projections/stats/skip").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("not_faulted"))
    );
    let (status, _) = post(&client, &server, "/projections/hostile/retry").await;
    assert_eq!(status, StatusCode::OK);
    status_until(&client, &server, "hostile", |s| {
        s["last_error"]["attempts"] == 2
    })
    .await;
    let (status, skipped) = post(&client, &server, "/projections/hostile/skip").await;
    assert_eq!(status, StatusCode::OK, "{skipped}");
    let done = status_until(&client, &server, "hostile", |s| s["state"] == "caught_up").await;
    assert_eq!(done["skipped"][0]["position"], refused_at);
    assert_eq!(done["skipped"][0]["kind"], "refused");
    assert_eq!(done["last_error"], Value::Null);
    let head = head(&client, &server).await;
    let (_, count) = document(&client, &server, "hostile", "count", head).await;
    assert_eq!(count, 2, "the events around the skipped one are applied");

    // The skip is kept in the view: it survives a restart.
    server.terminate();
    let server = Server::start(dir.path());
    let after = status_until(&client, &server, "hostile", |s| s["state"] == "caught_up").await;
    assert_eq!(after["skipped"], done["skipped"]);

    let (status, body) = post(&client, &server, "/projections/nobody/rebuild").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("projection_not_found"))
    );
    let (status, _) = get_json(&client, &server.url("/projections/stats/rebuild")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn any_sequence_of_replaces_and_rebuilds_ends_at_the_fresh_view() {
    let dir = tempfile::tempdir().unwrap();
    let summary = guest("order_summary");
    deploy(dir.path(), &[("orders", summary.clone())]);
    let server = Server::start(dir.path());
    let client = client();
    // A fixed pseudo-random walk over the operations, appending as it goes.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next_order = 0;
    for step in 0..12 {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        next_order += 3;
        orders(&client, &server, next_order - 3, 3).await;
        match (seed >> 33) % 4 {
            0 => write(
                &server,
                "orders",
                &variant(&summary, &format!("step {step}")),
            ),
            1 => write(&server, "orders", &summary),
            2 => {
                let (status, body) = post(&client, &server, "/projections/orders/rebuild").await;
                assert!(
                    status == StatusCode::ACCEPTED || status == StatusCode::CONFLICT,
                    "{status} {body}"
                );
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let last = orders(&client, &server, next_order, 1).await;
    write(&server, "fresh", &summary);
    appears(&client, &server, "fresh").await;
    for name in ["orders", "fresh"] {
        status_until(&client, &server, name, |s| {
            s["position"] == last && s["rebuild"].is_null() && s["load_error"].is_null()
        })
        .await;
    }
    let replaced = all_documents(&client, &server, "orders").await;
    assert_eq!(replaced.len(), 2 * (next_order as usize + 1));
    assert_eq!(replaced, all_documents(&client, &server, "fresh").await);
}

#[tokio::test]
async fn a_put_deploys_through_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    empty_folder(dir.path());
    let server = Server::start(dir.path());
    let client = client();
    let stats = guest("stream_stats");
    let put = |name: &str, body: Vec<u8>| {
        client
            .put(server.url(&format!("/projections/{name}")))
            .body(body)
            .send()
    };
    let response = put("stats", stats.clone()).await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("deploy/stats.wasm")).unwrap(),
        stats
    );
    appears(&client, &server, "stats").await;
    let status = status_until(&client, &server, "stats", |_| true).await;
    assert_eq!(status["version"], accepted["version"]);

    for (name, body, code) in [
        ("Bad Name", stats.clone(), "invalid_name"),
        ("other", b"hello".to_vec(), "invalid_projection"),
    ] {
        let response = put(name, body).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], code);
    }
    assert!(!dir.path().join("deploy/other.wasm").exists());
}
