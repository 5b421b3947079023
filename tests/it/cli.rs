//! The operator commands against a real server: `projector status`, `rebuild`, `append` and
//! `read`, as a user runs them.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use crate::common::{Server, client, deploy, document, guest, stdout};
use serde_json::Value;

fn projector(server: &Server, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_projector"))
        .args(args)
        .args(["--server", &server.base])
        .output()
        .expect("running projector")
}

#[tokio::test]
async fn operator_commands_drive_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    deploy(dir.path(), &[("stats", guest("stream_stats"))]);
    let server = Server::start(dir.path());

    let out = stdout(&projector(
        &server,
        &[
            "append",
            "order-1",
            "--type",
            "OrderPlaced",
            "--data",
            r#"{"orderId":"1"}"#,
        ],
    ));
    assert_eq!(out.trim(), "appended to order-1 at position 1 (revision 0)");
    let out = stdout(&projector(
        &server,
        &[
            "append",
            "order-1",
            "--type",
            "OrderShipped",
            "--data",
            "{}",
            "--expected-revision",
            "0",
            "--json",
        ],
    ));
    let appended: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(appended["last_position"], 2);

    // A refused append: the server's error, and a failing exit status.
    let refused = projector(
        &server,
        &[
            "append",
            "order-1",
            "--type",
            "X",
            "--data",
            "{}",
            "--expected-revision",
            "no_stream",
        ],
    );
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("409") && message.contains("wrong_expected_revision"),
        "{message}"
    );
    let bad = projector(
        &server,
        &["append", "order-1", "--type", "X", "--data", "{nope"],
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--data is not JSON"));

    let out = stdout(&projector(&server, &["read", "order-1"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].contains("order-1@0") && lines[0].contains("OrderPlaced"),
        "{out}"
    );
    let out = stdout(&projector(
        &server,
        &["read", "$all", "--from", "2", "--json"],
    ));
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "OrderShipped");

    // Following prints what is there, then what is appended.
    let mut follower = Command::new(env!("CARGO_BIN_EXE_projector"))
        .args([
            "read",
            "$all",
            "--follow",
            "--json",
            "--server",
            &server.base,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    let position = |line: String| serde_json::from_str::<Value>(&line).unwrap()["position"].clone();
    assert_eq!(position(lines.next().unwrap().unwrap()), 1);
    assert_eq!(position(lines.next().unwrap().unwrap()), 2);
    stdout(&projector(
        &server,
        &["append", "user-7", "--type", "Registered", "--data", "{}"],
    ));
    assert_eq!(position(lines.next().unwrap().unwrap()), 3);
    follower.kill().unwrap();
    follower.wait().unwrap();

    let client = client();
    let (_, total) = document(&client, &server, "stats", "total", 3).await;
    assert_eq!(total["events"], 3);
    let out = stdout(&projector(&server, &["status"]));
    let row = out.lines().find(|l| l.starts_with("stats")).expect(&out);
    assert!(row.contains("caught_up"), "{out}");

    // A rebuild followed to its swap.
    let before: Value =
        serde_json::from_str(&stdout(&projector(&server, &["status", "stats", "--json"]))).unwrap();
    let done: Value = serde_json::from_str(&stdout(&projector(
        &server,
        &["rebuild", "stats", "--json"],
    )))
    .unwrap();
    assert_eq!(done["rebuild"], Value::Null);
    assert_eq!(done["version"], before["version"]);
    assert_eq!(done["position"], 3);
    let (_, total) = document(&client, &server, "stats", "total", 3).await;
    assert_eq!(total["events"], 3);

    let missing = projector(&server, &["rebuild", "nobody"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("projection_not_found"));

    let help = Command::new(env!("CARGO_BIN_EXE_projector"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for command in ["serve", "status", "rebuild", "append", "read"] {
        assert!(help.contains(command), "{help}");
    }
}
