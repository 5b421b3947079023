//! The operator's client: the `projector status`, `rebuild`, `append`, `read`, `subscriptions`
//! (and more) commands,
//! talking to a running server over its HTTP API. Human-readable by default; `--json` prints
//! the server's JSON unchanged, for scripts.

mod subscriptions;

use std::io::Write;
use std::time::Duration;

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

/// How often `rebuild` asks for progress.
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the server at {server}: {source}")]
    Unreachable {
        server: String,
        source: reqwest::Error,
    },
    /// The server refused the request; its JSON error, as it said it.
    #[error("{status}: {code}: {message}")]
    Refused {
        status: StatusCode,
        code: String,
        message: String,
    },
    #[error("the server's answer is not what this client expects: {0}")]
    Protocol(String),
    #[error("{0} is not JSON: {1}")]
    Argument(&'static str, serde_json::Error),
    #[error("the rebuild of {name:?} faulted at position {position}: {message}")]
    RebuildFaulted {
        name: String,
        position: u64,
        message: String,
    },
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

/// A server's address and whether to print JSON.
pub struct Remote {
    base: String,
    json: bool,
    http: Client,
}

impl Remote {
    /// `token`, when given, is sent as `Authorization: Bearer` with every request.
    pub fn new(server: &str, json: bool, token: Option<&str>) -> Result<Self, ClientError> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::Protocol("the token is not a valid header".into()))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = Client::builder()
            .default_headers(headers)
            .build()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(Remote {
            base: server.trim_end_matches('/').to_owned(),
            json,
            http,
        })
    }

    /// `projector keys create`: prints the new key and its token (shown this once).
    pub async fn create_key(&self, new: &crate::auth::NewKey) -> Result<(), ClientError> {
        let body = serde_json::json!({
            "account": new.account,
            "scopes": new.scopes,
            "expires_in_days": new.expires_in_days,
            "label": new.label,
        });
        let key = self.call(Method::POST, "/admin/keys", Some(body)).await?;
        print_key(&key, self.json)
    }

    /// `projector keys list`
    pub async fn list_keys(&self, account: Option<&str>) -> Result<(), ClientError> {
        let path = match account {
            Some(account) => format!("/admin/keys?account={}", segment(account)),
            None => "/admin/keys".to_owned(),
        };
        let body = self.call(Method::GET, &path, None).await?;
        if self.json {
            return print_json(&body);
        }
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "{:<18} {:<12} {:<28} {:<10} LABEL",
            "ID", "ACCOUNT", "SCOPES", "STATE"
        )?;
        for key in body["keys"].as_array().into_iter().flatten() {
            let scopes: Vec<&str> = key["scopes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let state = if key["revoked_at"].is_null() {
                "live"
            } else {
                "revoked"
            };
            writeln!(
                out,
                "{:<18} {:<12} {:<28} {:<10} {}",
                key["id"].as_str().unwrap_or_default(),
                key["account"].as_str().unwrap_or_default(),
                scopes.join(","),
                state,
                key["label"].as_str().unwrap_or_default()
            )?;
        }
        Ok(())
    }

    /// `projector keys revoke ID`
    pub async fn revoke_key(&self, id: &str) -> Result<(), ClientError> {
        let key = self
            .call(
                Method::DELETE,
                &format!("/admin/keys/{}", segment(id)),
                None,
            )
            .await?;
        if self.json {
            return print_json(&key);
        }
        writeln!(
            std::io::stdout().lock(),
            "revoked {}",
            key["id"].as_str().unwrap_or(id)
        )?;
        Ok(())
    }

    /// `projector accounts list`
    pub async fn list_accounts(&self) -> Result<(), ClientError> {
        let body = self.call(Method::GET, "/admin/accounts", None).await?;
        if self.json {
            return print_json(&body);
        }
        let mut out = std::io::stdout().lock();
        writeln!(out, "{:<24} {:>6} {:>16}", "NAME", "LIVE", "VIEW BYTES")?;
        for account in body["accounts"].as_array().into_iter().flatten() {
            print_account(&mut out, account)?;
        }
        Ok(())
    }

    /// `projector accounts create NAME`
    pub async fn create_account(
        &self,
        name: &str,
        limits: &crate::account::Limits,
    ) -> Result<(), ClientError> {
        let body = serde_json::json!({ "name": name, "limits": limits });
        let account = self
            .call(Method::POST, "/admin/accounts", Some(body))
            .await?;
        if self.json {
            return print_json(&account);
        }
        print_account(&mut std::io::stdout().lock(), &account)?;
        Ok(())
    }

    /// `projector accounts limits NAME`
    pub async fn set_limits(
        &self,
        name: &str,
        limits: &crate::account::Limits,
    ) -> Result<(), ClientError> {
        let path = format!("/admin/accounts/{name}/limits");
        let account = self
            .call(Method::PUT, &path, Some(serde_json::json!(limits)))
            .await?;
        if self.json {
            return print_json(&account);
        }
        print_account(&mut std::io::stdout().lock(), &account)?;
        Ok(())
    }

    /// `projector status [NAME]`: every projection as a table, or one in detail.
    pub async fn status(&self, name: Option<&str>) -> Result<(), ClientError> {
        let path = match name {
            Some(name) => format!("/projections/{name}"),
            None => "/projections".to_owned(),
        };
        let body = self.call(Method::GET, &path, None).await?;
        if self.json {
            return print_json(&body);
        }
        let all = match name {
            Some(_) => vec![body],
            None => body["projections"].as_array().cloned().unwrap_or_default(),
        };
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "{:<24} {:<10} {:<12} {:>10} {:>10} {:>10}  REBUILD / ERROR",
            "NAME", "STATE", "VERSION", "POSITION", "LAG", "EVENTS/S"
        )?;
        for p in &all {
            writeln!(
                out,
                "{:<24} {:<10} {:<12} {:>10} {:>10} {:>10.0}  {}",
                text(&p["name"]),
                text(&p["state"]),
                short(&p["version"]),
                number(&p["position"]),
                number(&p["lag"]),
                p["events_per_second"].as_f64().unwrap_or(0.0),
                remarks(p),
            )?;
        }
        drop(out);
        if name.is_none() {
            self.print_broker().await?;
        }
        Ok(())
    }

    /// With `--amqp`, a line on the broker: its state and the fanout's lag.
    async fn print_broker(&self) -> Result<(), ClientError> {
        let health = match self.http.get(format!("{}/health", self.base)).send().await {
            Ok(response) => response.json::<Value>().await.unwrap_or(Value::Null),
            Err(_) => return Ok(()),
        };
        let amqp = &health["amqp"];
        if amqp.is_null() {
            return Ok(());
        }
        let mut line = format!("AMQP broker: {}", text(&amqp["state"]));
        if let Some(reason) = amqp["reason"].as_str() {
            line.push_str(&format!(" ({reason})"));
        }
        if !amqp["fanout_position"].is_null() {
            line.push_str(&format!(
                "; fanout published through {} (lag {})",
                number(&amqp["fanout_position"]),
                number(&amqp["fanout_lag"])
            ));
        }
        writeln!(std::io::stdout().lock(), "\n{line}")?;
        Ok(())
    }

    /// `projector rebuild NAME`: starts a blue/green rebuild and, unless `detach`, follows
    /// it with a progress bar until the new version is swapped in.
    pub async fn rebuild(&self, name: &str, detach: bool) -> Result<(), ClientError> {
        let started = self
            .call(Method::POST, &format!("/projections/{name}/rebuild"), None)
            .await?;
        if detach {
            return if self.json {
                print_json(&started)
            } else {
                println!(
                    "rebuilding {name}: {}",
                    short(&started["rebuild"]["version"])
                );
                Ok(())
            };
        }
        let bar = if self.json {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(0).with_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:40}] {pos}/{len} events, {per_sec}, eta {eta}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            )
        };
        bar.set_message(format!("rebuilding {name}"));
        let mut status = started;
        while let Some(rebuild) = status.get("rebuild").filter(|r| r.is_object()) {
            if let Some(fault) = rebuild.get("last_error").filter(|f| f.is_object()) {
                bar.abandon();
                return Err(ClientError::RebuildFaulted {
                    name: name.to_owned(),
                    position: fault["position"].as_u64().unwrap_or(0),
                    message: text(&fault["message"]).to_owned(),
                });
            }
            bar.set_length(rebuild["head"].as_u64().unwrap_or(0));
            bar.set_position(rebuild["position"].as_u64().unwrap_or(0));
            tokio::time::sleep(POLL).await;
            status = self
                .call(Method::GET, &format!("/projections/{name}"), None)
                .await?;
        }
        bar.finish_and_clear();
        if self.json {
            print_json(&status)
        } else {
            println!(
                "{name}: version {} swapped in at position {}",
                short(&status["version"]),
                status["position"]
            );
            Ok(())
        }
    }

    /// `projector append STREAM --type T --data JSON`.
    pub async fn append(
        &self,
        stream: &str,
        event_type: &str,
        data: &str,
        metadata: Option<&str>,
        expected_revision: Option<&str>,
    ) -> Result<(), ClientError> {
        let data: Value =
            serde_json::from_str(data).map_err(|e| ClientError::Argument("--data", e))?;
        let mut event = json!({ "type": event_type, "data": data });
        if let Some(metadata) = metadata {
            event["metadata"] = serde_json::from_str(metadata)
                .map_err(|e| ClientError::Argument("--metadata", e))?;
        }
        let mut path = format!("/streams/{}", segment(stream));
        if let Some(expected) = expected_revision {
            path.push_str(&format!("?expected_revision={}", segment(expected)));
        }
        let body = self.call(Method::POST, &path, Some(json!([event]))).await?;
        if self.json {
            return print_json(&body);
        }
        println!(
            "appended to {stream} at position {} (revision {})",
            body["first_position"], body["first_revision"]
        );
        Ok(())
    }

    /// `projector read STREAM [--from N] [--follow]`: the events one per line; following
    /// goes on with live events until interrupted.
    pub async fn read(
        &self,
        stream: &str,
        from: Option<u64>,
        follow: bool,
    ) -> Result<(), ClientError> {
        let url = if follow {
            // Everything from the start unless told otherwise: a stream counts revisions from
            // 0, `$all` and categories count positions from 1.
            let from = from.unwrap_or(if stream.starts_with('$') { 1 } else { 0 });
            format!("{}/streams/{}/live?from={from}", self.base, segment(stream))
        } else {
            let from = from.map(|f| format!("?from={f}")).unwrap_or_default();
            format!("{}/streams/{}{from}", self.base, segment(stream))
        };
        let response = self
            .http
            .get(&url)
            .header(
                reqwest::header::ACCEPT,
                if follow {
                    "text/event-stream"
                } else {
                    crate::http::NDJSON
                },
            )
            .send()
            .await
            .map_err(|source| self.unreachable(source))?;
        let response = refusal(response).await?;
        let mut body = response.bytes_stream();
        let mut buffer = Vec::new();
        while let Some(chunk) = body.next().await {
            buffer.extend_from_slice(&chunk.map_err(|source| self.unreachable(source))?);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end();
                let event = if follow {
                    // Of an SSE message only its data line holds the event.
                    match line.strip_prefix("data:") {
                        Some(data) => data.trim_start(),
                        None => continue,
                    }
                } else if line.is_empty() {
                    continue;
                } else {
                    line
                };
                self.print_event(event)?;
            }
        }
        Ok(())
    }

    fn print_event(&self, line: &str) -> Result<(), ClientError> {
        let mut out = std::io::stdout().lock();
        if self.json {
            writeln!(out, "{line}")?;
        } else {
            let e: Value =
                serde_json::from_str(line).map_err(|e| ClientError::Protocol(e.to_string()))?;
            writeln!(
                out,
                "{:>8}  {}@{}  {}  {}",
                number(&e["position"]),
                text(&e["stream"]),
                number(&e["revision"]),
                text(&e["type"]),
                e["data"]
            )?;
        }
        out.flush()?;
        Ok(())
    }

    /// `projector deploy FILE`: PUTs the component as projection `name`, then follows its
    /// status until the new version serves (or is refused).
    pub async fn deploy(&self, name: &str, wasm: Vec<u8>) -> Result<(), ClientError> {
        let response = self
            .http
            .put(format!("{}/projections/{name}", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/wasm")
            .body(wasm)
            .send()
            .await
            .map_err(|source| self.unreachable(source))?;
        let accepted: Value = refusal(response)
            .await?
            .json()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let version = accepted["version"].as_str().unwrap_or_default().to_owned();
        // The folder watcher loads it within a moment; report what it made of it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let status = self
                .call(Method::GET, &format!("/projections/{name}"), None)
                .await;
            if let Ok(status) = &status {
                let serving = status["version"].as_str() == Some(version.as_str());
                let rebuilding = status["rebuild"]["version"].as_str() == Some(version.as_str());
                let refused = status["load_error"].as_str();
                if serving || rebuilding || refused.is_some() {
                    if self.json {
                        return print_json(status);
                    }
                    match refused {
                        Some(reason) if !serving && !rebuilding => {
                            println!("{name} not loaded: {reason}")
                        }
                        _ if rebuilding => println!(
                            "deployed {name} {}: rebuilding beside the serving version",
                            &version[..12.min(version.len())]
                        ),
                        _ => println!(
                            "deployed {name} {}: {}",
                            &version[..12.min(version.len())],
                            status["state"].as_str().unwrap_or_default()
                        ),
                    }
                    return Ok(());
                }
            }
            if std::time::Instant::now() > deadline {
                return Err(ClientError::Protocol(format!(
                    "{name} was accepted but not loaded within a minute"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// A request answered with JSON.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        self.send(method, path, body)
            .await?
            .json()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// A request answered with no body (204).
    async fn call_empty(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(), ClientError> {
        self.send(method, path, body).await.map(drop)
    }

    /// Sends a request; its response if it succeeded, else the server's error.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<reqwest::Response, ClientError> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|source| self.unreachable(source))?;
        refusal(response).await
    }

    fn unreachable(&self, source: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            server: self.base.clone(),
            source,
        }
    }
}

/// The response if it succeeded, else the server's JSON error as a [`ClientError`].
async fn refusal(response: reqwest::Response) -> Result<reqwest::Response, ClientError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body: Value = response.json().await.unwrap_or(Value::Null);
    Err(ClientError::Refused {
        status,
        code: text(&body["error"]["code"]).to_owned(),
        message: text(&body["error"]["message"]).to_owned(),
    })
}

fn print_json(value: &Value) -> Result<(), ClientError> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    writeln!(out)?;
    Ok(())
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("-")
}

/// A count as text, so that it takes a column's width (`Value`'s `Display` ignores it).
fn number(value: &Value) -> String {
    value.as_u64().map_or("-".to_owned(), |n| n.to_string())
}

/// A version hash as the table shows it.
fn short(value: &Value) -> &str {
    value.as_str().map_or("-", |v| &v[..v.len().min(12)])
}

/// The table's last column: a rebuild's progress, a fault, or a file that did not load.
fn remarks(p: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(r) = p.get("rebuild").filter(|r| r.is_object()) {
        let eta = r["eta_seconds"]
            .as_f64()
            .map_or("-".to_owned(), |s| format!("{s:.0}s"));
        parts.push(format!(
            "rebuilding {} at {}/{} ({}, eta {eta})",
            short(&r["version"]),
            r["position"],
            r["head"],
            text(&r["state"]),
        ));
    }
    if let Some(f) = p.get("last_error").filter(|f| f.is_object()) {
        parts.push(format!(
            "faulted at {} ({}): {}",
            f["position"],
            text(&f["kind"]),
            text(&f["message"])
        ));
    }
    if let Some(e) = p["load_error"].as_str() {
        parts.push(format!("file not loaded: {e}"));
    }
    parts.join("; ")
}

/// A stream name or parameter as one URL path segment.
fn segment(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A new key as `keys create` prints it: its token first, on a line of its own, for scripts.
pub fn print_key(key: &Value, json: bool) -> Result<(), ClientError> {
    if json {
        return print_json(key);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", key["token"].as_str().unwrap_or_default())?;
    writeln!(
        out,
        "key {} of account {} (the token above is shown this once)",
        key["id"].as_str().unwrap_or_default(),
        key["account"].as_str().unwrap_or_default()
    )?;
    Ok(())
}

fn print_account(out: &mut impl Write, account: &Value) -> std::io::Result<()> {
    let limits = &account["limits"];
    let view_bytes = match limits["view_bytes"].as_u64() {
        Some(n) => n.to_string(),
        None => "unlimited".to_owned(),
    };
    writeln!(
        out,
        "{:<24} {:>6} {:>16}",
        account["name"].as_str().unwrap_or_default(),
        limits["live_subscriptions"],
        view_bytes
    )
}
