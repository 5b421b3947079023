//! JavaScript and Python projections on the real server: the same documents as the Rust one,
//! byte for byte; views that stay the same across rebuilds; hostile guests faulted alone;
//! large components compiled without holding up the others; and the SDKs' own native tests.
//!
//! The JS and Python guests are built by the build script when their tools are installed
//! (`npm ci`, `scripts/setup-python`). Where they are not, these tests say so and pass; CI
//! sets `PROJECTOR_REQUIRE_POLYGLOT=1`, which makes a missing guest or tool a failure.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::*;

/// A JavaScript or Python guest built by the build script (`order-summary-js`, ...).
fn polyglot(name: &str) -> Option<Vec<u8>> {
    let path = Path::new(env!("PROJECTOR_GUESTS_DIR")).join(format!("{name}.wasm"));
    match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            required(&format!("{} ({e})", path.display()));
            None
        }
    }
}

/// Notes (or, under CI, fails on) something these tests need that is not installed.
fn required(what: &str) {
    assert!(
        std::env::var_os("PROJECTOR_REQUIRE_POLYGLOT").is_none(),
        "PROJECTOR_REQUIRE_POLYGLOT is set but {what} is missing"
    );
    eprintln!("skipped: {what} is missing (run `npm ci` and scripts/setup-python, then build)");
}

/// Compiling a 12-18 MB component takes seconds, and longer on a busy machine.
const COMPILE_PATIENCE: Duration = Duration::from_secs(240);

async fn caught_up_at(client: &reqwest::Client, server: &Server, name: &str, head: u64) -> Value {
    poll_projection(client, server, name, COMPILE_PATIENCE, |status, s| {
        status == StatusCode::OK && s["state"] == "caught_up" && s["position"] == head
    })
    .await
}

/// Every document of a projection as the bytes it stores (the page carries them verbatim).
async fn raw_view(
    client: &reqwest::Client,
    server: &Server,
    name: &str,
    head: u64,
) -> BTreeMap<String, String> {
    #[derive(serde::Deserialize)]
    struct Document {
        key: String,
        value: Box<serde_json::value::RawValue>,
    }
    #[derive(serde::Deserialize)]
    struct Page {
        documents: Vec<Document>,
        next: Option<String>,
    }
    let mut out = BTreeMap::new();
    let mut url = server.url(&format!(
        "/projections/{name}/view?limit=1000&wait_for={head}&timeout_ms=60000"
    ));
    loop {
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{url}");
        let page: Page = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        for d in page.documents {
            out.insert(d.key, d.value.get().to_owned());
        }
        match page.next {
            Some(next) => url = server.url(&format!("{next}&wait_for={head}")),
            None => return out,
        }
    }
}

/// The shop's events, order by order: ids and customers with `/`, `%` and non-ASCII, removes
/// (some of a whole line), cancellations with reasons that need escaping, shipments, and events
/// the projection must ignore (another type, another category).
fn shop() -> Vec<(String, Value)> {
    let skus = ["tea", "cup", "pot/big", "50%off"];
    let mut requests = Vec::new();
    for i in 0..120u64 {
        let order = match i % 4 {
            0 => format!("{i}"),
            1 => format!("a/{i}"),
            2 => format!("b%{i}"),
            _ => format!("c/%/{i}"),
        };
        let customer = match i % 5 {
            0 => "c/1".to_owned(),
            1 => "c%2".to_owned(),
            // Keys of several UTF-8 bytes per character (and a surrogate pair in JavaScript).
            4 => "ç/🙂".to_owned(),
            n => format!("c{n}"),
        };
        let mut events = vec![
            json!({"type": "OrderPlaced", "data": {"orderId": order, "customerId": customer}}),
        ];
        for (j, sku) in skus.iter().enumerate().take(1 + (i % 4) as usize) {
            events.push(json!({"type": "ItemAdded", "data": {
                "orderId": order, "sku": sku, "quantity": (i + j as u64) % 3 + 1,
                "unitPriceCents": 100 * (j as u64 + 1) + i, "note": "ignored"}}));
        }
        if i % 3 == 0 {
            events.push(json!({"type": "ItemRemoved", "data": {"orderId": order, "sku": "tea", "quantity": 1}}));
        }
        if i % 6 == 1 {
            events.push(json!({"type": "ItemRemoved", "data": {"orderId": order, "sku": "cup", "quantity": 99}}));
        }
        if i % 7 == 0 {
            events.push(json!({"type": "GiftWrapped", "data": {"orderId": order}}));
        }
        if i % 5 == 0 {
            events.push(json!({"type": "OrderCancelled", "data": {"orderId": order,
                "reason": format!("changed mind é \"{i}\"\n\u{1}\t🙂 \\")}}));
        } else if i % 2 == 0 {
            events.push(json!({"type": "OrderShipped", "data": {"orderId": order}}));
        }
        requests.push((format!("order-{i}"), Value::Array(events)));
        if i % 10 == 0 {
            let other =
                json!([{"type": "OrderPlaced", "data": {"orderId": "x", "customerId": "y"}}]);
            requests.push((format!("user-{i}"), other));
        }
    }
    requests
}

/// Appends `requests` one by one; returns the head.
async fn append_all(
    client: &reqwest::Client,
    server: &Server,
    requests: &[(String, Value)],
) -> u64 {
    let mut head = 0;
    for (stream, events) in requests {
        let (status, body) = append(client, server, stream, None, events).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        head = body["last_position"].as_u64().unwrap();
    }
    head
}

#[tokio::test(flavor = "multi_thread")]
async fn order_summary_in_rust_javascript_and_python_writes_the_same_bytes() {
    let (Some(js), Some(py)) = (polyglot("order-summary-js"), polyglot("order-summary-py")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    deploy(
        dir.path(),
        &[
            ("orders-rust", guest("order_summary")),
            ("orders-js", js),
            ("orders-py", py),
        ],
    );
    let server = Server::start(dir.path());
    let client = client();
    let head = append_all(&client, &server, &shop()).await;
    let mut views = Vec::new();
    for name in ["orders-rust", "orders-js", "orders-py"] {
        caught_up_at(&client, &server, name, head).await;
        views.push((name, raw_view(&client, &server, name, head).await));
    }
    let (_, rust) = &views[0];
    assert_eq!(rust.len(), 240, "an order and a customer entry per order");
    assert!(rust.contains_key("order/a%2F1") && rust.contains_key("customer/c%252/b%256"));
    assert!(rust.contains_key("customer/ç%2F🙂/4"), "{:?}", rust.keys());
    assert!(
        rust.values().any(|v| v.contains(r#"\"0\"\n\u0001\t🙂 \\"#)),
        "{rust:?}"
    );
    for (name, view) in &views[1..] {
        for (key, bytes) in rust {
            assert_eq!(view.get(key), Some(bytes), "{name}: document {key}");
        }
        assert_eq!(view.len(), rust.len(), "{name}: no other documents");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn javascript_and_python_views_stay_the_same_across_rebuilds() {
    let (Some(js), Some(py)) = (polyglot("recorder-js"), polyglot("recorder-py")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    deploy(dir.path(), &[("recorder-js", js), ("recorder-py", py)]);
    let server = Server::start(dir.path());
    let client = client();
    let det = |n: u64| {
        (
            format!("det-{}", n % 3),
            json!([{"type": "Seen", "data": {"n": n}}]),
        )
    };
    // Half the log arrives before the guests run (one batch), the rest while they follow it
    // (a batch each); a rebuild then cuts the log differently again.
    let mut head = append_all(&client, &server, &(0..50).map(det).collect::<Vec<_>>()).await;
    for name in ["recorder-js", "recorder-py"] {
        caught_up_at(&client, &server, name, head).await;
    }
    for n in 50..60 {
        head = append_all(&client, &server, &[det(n)]).await;
        for name in ["recorder-js", "recorder-py"] {
            caught_up_at(&client, &server, name, head).await;
        }
    }
    for name in ["recorder-js", "recorder-py"] {
        let first = raw_view(&client, &server, name, head).await;
        assert_eq!(first.len(), 60, "{name}");
        let doc = |n: u64| -> Value { serde_json::from_str(&first[&format!("det/{n}")]).unwrap() };
        assert_ne!(
            doc(1)["random"],
            doc(2)["random"],
            "{name}: randomness is not constant"
        );
        assert_ne!(doc(1)["random"][0], doc(1)["random"][1], "{name}");
        for n in 0..2 {
            let version = caught_up_at(&client, &server, name, head).await["version"].clone();
            let response = client
                .post(server.url(&format!("/projections/{name}/rebuild")))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::ACCEPTED);
            poll_projection(&client, &server, name, COMPILE_PATIENCE, |_, s| {
                s["rebuild"].is_null() && s["state"] == "caught_up" && s["version"] == version
            })
            .await;
            let again = raw_view(&client, &server, name, head).await;
            assert!(
                again == first,
                "{name}: rebuild {n} differs: {first:?} / {again:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_javascript_and_python_guests_fault_alone_at_the_exact_event() {
    let (Some(js), Some(py)) = (polyglot("hostile-js"), polyglot("hostile-py")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    deploy(
        dir.path(),
        &[
            ("stream-stats", guest("stream_stats")),
            ("hostile-js", js),
            ("hostile-py", py),
        ],
    );
    let server = Server::start_with(dir.path(), &["--guest-memory-mib", "64"]);
    let client = client();
    // (event type, the fault kinds it may give, what the reason says in JS and in Python)
    let cases: [(&str, &[&str], [&str; 2]); 4] = [
        ("Loop", &["out_of_fuel"], ["the batch ran out of fuel"; 2]),
        (
            "Bomb",
            &["memory", "trap", "refused", "out_of_fuel"],
            ["", ""],
        ),
        ("Throw", &["refused"], ["TypeError", "KeyError: 'missing'"]),
        ("Refuse", &["refused"], ["asked to refuse this event"; 2]),
    ];
    let mut fine = 0;
    for (event_type, kinds, reasons) in cases {
        let events = json!([
            {"type": "Fine", "data": {}},
            {"type": event_type, "data": {}},
            {"type": "Fine", "data": {}},
        ]);
        let head = append_all(&client, &server, &[("hostile-1".to_owned(), events)]).await;
        fine += 2;
        let bad = head - 1;
        for (name, reason) in ["hostile-js", "hostile-py"].into_iter().zip(reasons) {
            let status = poll_projection(&client, &server, name, COMPILE_PATIENCE, |_, s| {
                s["state"] == "faulted" && s["last_error"]["position"] == bad
            })
            .await;
            let error = &status["last_error"];
            let kind = error["kind"].as_str().unwrap();
            assert!(kinds.contains(&kind), "{name} {event_type}: {status}");
            let message = error["message"].as_str().unwrap();
            assert!(
                message.contains(reason) && !message.is_empty(),
                "{name}: {status}"
            );
            if kind == "refused" {
                assert!(
                    message.contains(&format!("{event_type} event at position {bad}")),
                    "{status}"
                );
            }
            assert_eq!(
                status["position"],
                bad - 1,
                "the event before the bad one is applied"
            );
        }
        // The Rust projection kept up meanwhile.
        caught_up_at(&client, &server, "stream-stats", head).await;
        for name in ["hostile-js", "hostile-py"] {
            // A faulted projection retries by itself after a backoff, and a skip is refused
            // (409) while it is not faulted: on a loaded machine the other one's skip and
            // catch-up can outlast that backoff, so skip when it is faulted at the bad event.
            let deadline = std::time::Instant::now() + COMPILE_PATIENCE;
            loop {
                poll_projection(&client, &server, name, COMPILE_PATIENCE, |_, s| {
                    s["state"] == "faulted" && s["last_error"]["position"] == bad
                })
                .await;
                let response = client
                    .post(server.url(&format!("/projections/{name}/skip")))
                    .send()
                    .await
                    .unwrap();
                if response.status() == StatusCode::OK {
                    break;
                }
                assert_eq!(response.status(), StatusCode::CONFLICT, "{name}");
                assert!(
                    std::time::Instant::now() < deadline,
                    "{name}: never skipped"
                );
            }
            caught_up_at(&client, &server, name, head).await;
            let (_, count) = document(&client, &server, name, "count", head).await;
            assert_eq!(count, json!({"n": fine}), "{name} after {event_type}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_component_compiles_without_holding_up_the_others_and_is_cached() {
    let Some(py) = polyglot("order-summary-py") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    deploy(
        dir.path(),
        &[("stats", guest("stream_stats")), ("orders-py", py)],
    );
    let server = Server::start(dir.path());
    let client = client();
    let head = append_all(&client, &server, &shop()[..5]).await;
    // The small Rust component runs while the 18 MB one still compiles.
    caught_up_at(&client, &server, "stats", head).await;
    let (_, compiling) = get_json(&client, &server.url("/projections/orders-py")).await;
    assert_eq!(compiling["state"], "compiling", "{compiling}");
    assert_eq!(
        compiling["compiling"].as_str().map(str::len),
        Some(64),
        "{compiling}"
    );
    let (_, list) = get_json(&client, &server.url("/projections")).await;
    assert!(
        list["projections"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "orders-py")
    );
    caught_up_at(&client, &server, "orders-py", head).await;
    server.terminate();
    // The compiled form is cached: after a restart it runs at once, nothing compiles.
    let server = Server::start(dir.path());
    let (_, status) = get_json(&client, &server.url("/projections/orders-py")).await;
    assert_ne!(status["state"], "compiling", "{status}");
    assert!(
        status["compiling"].is_null() && status["version"].is_string(),
        "{status}"
    );
}

#[test]
fn the_sdks_native_tests_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if root.join("node_modules/@projector/sdk").exists() {
        let output = std::process::Command::new("node")
            .current_dir(root)
            .args([
                "--test",
                "sdk-js/test/",
                "projections/order-summary-js/test/",
            ])
            .arg("projections/stream-stats-js/test/")
            .arg("scripts/test/")
            .output()
            .expect("running node --test");
        stdout(&output);
    } else {
        required("node_modules (npm ci)");
    }
    let pytest = root.join(".venv/bin/pytest");
    if pytest.exists() {
        for dir in [
            "sdk-py",
            "projections/order-summary-py",
            "projections/stream-stats-py",
        ] {
            let output = std::process::Command::new(&pytest)
                .current_dir(root.join(dir))
                .args(["-q", "-p", "no:cacheprovider"])
                .output()
                .expect("running pytest");
            stdout(&output);
        }
    } else {
        required(".venv/bin/pytest (scripts/setup-python)");
    }
}

/// The `projector` command line, run to its end.
fn projector<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_projector"))
        .args(args)
        .output()
        .expect("running projector")
}

#[test]
fn projector_build_builds_javascript_and_python_projections_from_anywhere() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !root.join("node_modules/.bin/componentize-js").exists()
        || !root.join(".venv/bin/componentize-py").exists()
    {
        return required("componentize-js or componentize-py");
    }
    let dir = tempfile::tempdir().unwrap();
    // A JavaScript projection folder outside the repository, and a lone Python file.
    let js = dir.path().join("counts");
    std::fs::create_dir_all(js.join("src")).unwrap();
    std::fs::copy(
        root.join("projections/stream-stats-js/src/projection.js"),
        js.join("src/projection.js"),
    )
    .unwrap();
    std::fs::write(
        js.join("package.json"),
        r#"{"type": "module", "main": "src/projection.js"}"#,
    )
    .unwrap();
    let py = dir.path().join("tally.py");
    std::fs::copy(
        root.join("projections/stream-stats-py/stream_stats.py"),
        &py,
    )
    .unwrap();
    for (source, expected) in [
        (js.clone(), js.join("target/counts.wasm")),
        (py, dir.path().join("target/tally.wasm")),
    ] {
        let output = projector([OsStr::new("build"), source.as_os_str()]);
        assert_eq!(stdout(&output).trim(), expected.to_str().unwrap());
        let wasm = std::fs::read(&expected).unwrap();
        assert_eq!(
            &wasm[..8],
            b"\0asm\x0d\0\x01\0",
            "a component, not a core module"
        );
    }
    let output = projector([OsStr::new("build"), dir.path().join("target").as_os_str()]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not a projection"));
}

#[test]
fn projector_new_scaffolds_javascript_and_python_projections_whose_tests_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !root.join("node_modules/.bin/componentize-js").exists()
        || !root.join(".venv/bin/pytest").exists()
    {
        return required("componentize-js or the Python tools");
    }
    let dir = tempfile::tempdir().unwrap();
    let new = |name: &str, lang: &str| {
        let args = ["new", name, "--lang", lang, "--dir"].map(OsStr::new);
        projector(args.into_iter().chain([dir.path().as_os_str()]))
    };
    assert!(stdout(&new("counts", "js")).contains("npm install && node --test"));
    stdout(&new("tally", "python"));
    let js = dir.path().join("counts");
    let run = |program: &Path, args: &[&str], cwd: &Path| {
        let output = std::process::Command::new(program)
            .args(args)
            .current_dir(cwd)
            .output()
            .unwrap();
        stdout(&output)
    };
    run(
        Path::new("npm"),
        &["install", "--no-audit", "--no-fund", "--offline"],
        &js,
    );
    assert!(run(Path::new("node"), &["--test", "test/"], &js).contains("# pass 1"));
    let py = dir.path().join("tally");
    assert!(
        run(
            &root.join(".venv/bin/pytest"),
            &["-q", "-p", "no:cacheprovider"],
            &py
        )
        .contains("1 passed")
    );
    // A second scaffold of a name refuses to overwrite it.
    let again = new("tally", "python");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
}
