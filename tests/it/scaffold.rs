//! `projector new`, `build` and `deploy` end to end: scaffold a projection, test it natively,
//! build it to a component, deploy it to a live server, and query its view.

use std::process::{Command, Output};

use reqwest::StatusCode;
use serde_json::json;

use crate::common::{Server, append, client, document, status_until, stdout};

fn projector(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_projector"))
        .args(args)
        // One build directory for every run of this test: the SDK's dependencies build once.
        .env(
            "CARGO_TARGET_DIR",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("scaffold"),
        )
        .output()
        .expect("running projector")
}

#[tokio::test]
async fn a_new_projection_is_scaffolded_built_deployed_and_queried() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let made = stdout(&projector(&[
        "new",
        "my-summary",
        "--dir",
        work.to_str().unwrap(),
    ]));
    assert!(made.contains("created"), "{made}");
    let crate_dir = work.join("my-summary");
    assert!(crate_dir.join("src/lib.rs").is_file());
    // Its native test passes as scaffolded.
    let tested = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["test", "--quiet"])
        .current_dir(&crate_dir)
        .env(
            "CARGO_TARGET_DIR",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("scaffold"),
        )
        .output()
        .unwrap();
    assert!(
        tested.status.success(),
        "{}",
        String::from_utf8_lossy(&tested.stderr)
    );
    let wasm = stdout(&projector(&["build", crate_dir.to_str().unwrap()]));
    let wasm = wasm.trim();
    assert!(wasm.ends_with("my_summary.wasm"), "{wasm}");
    assert!(std::fs::metadata(wasm).unwrap().len() > 1000);

    let data = dir.path().join("data");
    let server = Server::start(&data);
    let client = client();
    let (status, _) = append(
        &client,
        &server,
        "order-1",
        None,
        &json!([{"type": "OrderPlaced", "data": {}}, {"type": "OrderShipped", "data": {}}]),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let deployed = stdout(&projector(&[
        "deploy",
        wasm,
        "--name",
        "my-summary",
        "--server",
        &server.base,
    ]));
    assert!(deployed.contains("deployed my-summary"), "{deployed}");
    status_until(&client, &server, "my-summary", |s| {
        s["state"] == "caught_up"
    })
    .await;
    let (status, doc) = document(&client, &server, "my-summary", "stream/order-1", 2).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        doc,
        json!({"events": 2, "lastType": "OrderShipped", "lastPosition": 2})
    );
    // The same name twice is refused, and so is a bad name.
    assert!(
        !projector(&["new", "my-summary", "--dir", work.to_str().unwrap()])
            .status
            .success()
    );
    assert!(
        !projector(&["new", "Bad Name", "--dir", work.to_str().unwrap()])
            .status
            .success()
    );
}

#[test]
fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let script = stdout(&projector(&["completions", shell]));
        assert!(
            script.contains("projector") && script.contains("rebuild"),
            "{shell}"
        );
    }
}
