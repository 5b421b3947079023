//! API keys and scopes (`--auth keys`): every route against every kind of token, the root
//! key made at first start, revocation, restarts, the CLI, and tokens kept out of the logs.

use std::time::Duration;

use projector::auth::Scope;
use projector::http::{Access, routes};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Server, Sse, client, get_json, root_token};

/// Where a token's secret starts: after `pk_`, the 16 hex digits of the key id, and `_`.
const SECRET_AT: usize = "pk_0123456789abcdef_".len();

/// Creates a key through the admin API and returns its id and token.
async fn key(
    server: &Server,
    admin: &str,
    scopes: &[&str],
    expires_in_days: Option<u64>,
) -> (String, String) {
    let response = client()
        .post(server.url("/admin/keys"))
        .bearer_auth(admin)
        .json(&json!({"account": "root", "scopes": scopes, "expires_in_days": expires_in_days, "label": "test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    (
        body["id"].as_str().unwrap().to_owned(),
        body["token"].as_str().unwrap().to_owned(),
    )
}

async fn revoke(server: &Server, admin: &str, id: &str) {
    let response = client()
        .delete(server.url(&format!("/admin/keys/{id}")))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// A concrete path for a route's template.
fn concrete(template: &str) -> String {
    template
        .replace("{stream}", "order-1")
        .replace("{name}", "stream-stats")
        .replace("{*key}", "stream/order-1")
        .replace("{id}", "0123456789abcdef")
}

#[tokio::test]
async fn every_route_checks_its_key_and_scope() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &["--auth", "keys"]);
    let root = root_token(dir.path());
    let mut tokens = std::collections::HashMap::new();
    for scope in ["read", "append", "deploy", "admin"] {
        tokens.insert(scope, key(&server, &root, &[scope], None).await.1);
    }
    let (_, expired) = key(
        &server,
        &root,
        &["read", "append", "deploy", "admin"],
        Some(0),
    )
    .await;
    let (revoked_id, revoked) =
        key(&server, &root, &["read", "append", "deploy", "admin"], None).await;
    revoke(&server, &root, &revoked_id).await;
    let unknown = format!("pk_0123456789abcdef_{}", "A".repeat(43));
    let client = client();
    let send = |method: &Method, path: &str, token: Option<&str>| {
        let mut request = client.request(method.clone(), server.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.timeout(Duration::from_secs(30)).send()
    };
    let all = routes();
    assert!(all.len() >= 19, "the route table lists every route");
    for route in &all {
        let path = concrete(route.path);
        let method = Method::from_bytes(route.method.as_str().as_bytes()).unwrap();
        let scope = match route.access {
            Access::Public => {
                let response = send(&method, &path, None).await.unwrap();
                assert_eq!(response.status(), StatusCode::OK, "{method} {path}");
                continue;
            }
            Access::Needs(scope) => scope,
        };
        for (case, token) in [
            ("no token", None),
            ("malformed", Some("not-a-key")),
            ("unknown", Some(unknown.as_str())),
            ("revoked", Some(revoked.as_str())),
            ("expired", Some(expired.as_str())),
        ] {
            let response = send(&method, &path, token).await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {case}"
            );
            assert_eq!(
                response.headers()["www-authenticate"],
                "Bearer realm=\"projector\""
            );
            let body: Value = response.json().await.unwrap();
            assert!(body["error"]["code"].is_string(), "{body}");
        }
        let wrong = match scope {
            Scope::Read => "append",
            _ => "read",
        };
        let response = send(&method, &path, Some(&tokens[wrong])).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::FORBIDDEN,
            "{method} {path} with {wrong}"
        );
        let body: Value = response.json().await.unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(scope.as_str()),
            "{body}"
        );
        let right = send(&method, &path, Some(&tokens[scope.as_str()]))
            .await
            .unwrap();
        assert!(
            ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&right.status()),
            "{method} {path} with {}: {}",
            scope.as_str(),
            right.status()
        );
    }
    // EventSource cannot send headers: the live routes take `access_token`, the others not.
    let live = server.url(&format!(
        "/streams/$all/live?access_token={}",
        tokens["read"]
    ));
    assert_eq!(
        client.get(live).send().await.unwrap().status(),
        StatusCode::OK
    );
    let page = server.url(&format!("/streams/$all?access_token={}", tokens["read"]));
    assert_eq!(
        client.get(page).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn the_root_token_file_is_private_and_keys_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &["--auth", "keys"]);
    let root = root_token(dir.path());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("root.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let (_, reader) = key(&server, &root, &["read"], None).await;
    let (gone_id, gone) = key(&server, &root, &["read"], None).await;
    revoke(&server, &root, &gone_id).await;
    server.terminate();
    let server = Server::start_with(dir.path(), &["--auth", "keys"]);
    assert_eq!(root_token(dir.path()), root, "no second root key");
    let client = client();
    let status = |token: String| {
        let request = client.get(server.url("/projections")).bearer_auth(token);
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(status(reader).await, StatusCode::OK);
    assert_eq!(status(gone).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(root).await, StatusCode::OK);
}

#[tokio::test]
async fn a_revoked_keys_live_subscription_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &["--auth", "keys"]);
    let root = root_token(dir.path());
    let (id, token) = key(&server, &root, &["read"], None).await;
    let mut sse = Sse::connect(
        &server.url(&format!("/streams/$all/live?access_token={token}")),
        None,
    )
    .await;
    assert!(sse.next_or_end(Duration::from_millis(300)).await.is_none());
    revoke(&server, &root, &id).await;
    // The stream ends: `next_or_end` sees the end, where a live stream would time out.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while sse.next_or_end(Duration::from_secs(30)).await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the revoked key's subscription stayed open");
}

#[tokio::test]
async fn tokens_never_reach_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let data = dir.path().join("data");
    let server = Server::start_logging(&data, &["--auth", "keys"], &log);
    let root = root_token(&data);
    let (_, token) = key(&server, &root, &["read", "append"], None).await;
    let client = client();
    for t in [&root, &token] {
        let response = client
            .post(server.url("/streams/order-1"))
            .bearer_auth(t)
            .json(&json!([{"type": "T", "data": {}}]))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success() || response.status() == StatusCode::FORBIDDEN);
    }
    // A bad token too: refusals must not echo it.
    let bad = format!("{}x", &token[..token.len() - 1]);
    client
        .get(server.url("/projections"))
        .bearer_auth(&bad)
        .send()
        .await
        .unwrap();
    server.terminate();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("made the root key"), "the log was written");
    for (which, presented) in [("root", &root), ("created", &token), ("bad", &bad)] {
        // `pk_`, 16 hex digits of key id, `_`, then the secret (which may hold `_` too).
        let secret = &presented[SECRET_AT..];
        assert!(secret.len() >= 40, "the {which} token is too short");
        assert!(
            !logged.contains(secret),
            "the {which} token's secret is in the log"
        );
    }
}

#[test]
fn auth_none_on_an_address_others_can_reach_needs_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_projector"))
        .args(["serve", "--listen", "0.0.0.0:0", "--auth", "none", "--data"])
        .arg(dir.path())
        .arg("--projections")
        .arg(dir.path().join("deploy"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--insecure"));
    // The lines a server prints before its address.
    let startup = |args: &[&str]| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_projector"))
            .args(["serve", "--listen", "0.0.0.0:0", "--data"])
            .arg(dir.path())
            .arg("--projections")
            .arg(dir.path().join("deploy"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let lines: Vec<String> = std::io::BufRead::lines(stdout)
            .map_while(Result::ok)
            .take_while(|l| !l.starts_with("listening on"))
            .collect();
        child.kill().unwrap();
        child.wait().unwrap();
        lines
    };
    let insecure = startup(&["--auth", "none", "--insecure"]);
    assert!(insecure.iter().any(|l| l == "auth: none"), "{insecure:?}");
    // Off loopback, keys are the default.
    let default = startup(&[]);
    assert!(default.iter().any(|l| l == "auth: keys"), "{default:?}");
}

#[tokio::test]
async fn the_cli_creates_lists_and_revokes_keys_online_and_offline() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), &["--auth", "keys"]);
    let root = root_token(dir.path());
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_projector"))
            .args(args)
            .env("PROJECTOR_SERVER", &server.base)
            .env("PROJECTOR_TOKEN", &root)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let created: Value = serde_json::from_str(&cli(&[
        "keys",
        "create",
        "--scopes",
        "read,append",
        "--label",
        "cli",
        "--json",
    ]))
    .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let token = created["token"].as_str().unwrap().to_owned();
    let (status, _) = get_json_with(&server, "/projections", &token).await;
    assert_eq!(status, StatusCode::OK);
    let listed: Value = serde_json::from_str(&cli(&["keys", "list", "--json"])).unwrap();
    let keys = listed["keys"].as_array().unwrap();
    assert!(keys.iter().any(|k| k["id"] == id.as_str()));
    assert!(!listed.to_string().contains(&token[SECRET_AT..]));
    cli(&["keys", "revoke", &id]);
    let (status, _) = get_json_with(&server, "/projections", &token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(cli(&["accounts", "list"]).contains("root"));
    // Offline, with the server stopped: a recovery key.
    server.terminate();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_projector"))
        .args(["keys", "create", "--scopes", "admin", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let recovery = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_owned();
    let server = Server::start_with(dir.path(), &["--auth", "keys"]);
    let (status, _) = get_json_with(&server, "/admin/keys", &recovery).await;
    assert_eq!(status, StatusCode::OK);
    // Without auth (the default on loopback) the same routes are open.
    drop(server);
    let server = Server::start(dir.path());
    let (status, _) = get_json(&client(), &server.url("/admin/keys")).await;
    assert_eq!(status, StatusCode::OK);
}

async fn get_json_with(server: &Server, path: &str, token: &str) -> (StatusCode, Value) {
    let response = client()
        .get(server.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}
