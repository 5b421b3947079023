//! A view's change feed: a client that reads a prefix page, then follows the feed from the
//! page's position, keeps exactly the view's documents across appends, a blue/green rebuild
//! (a `reset`) and a reconnect with `Last-Event-ID`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Server, Sse, append, client, get_json, status_until};

const PREFIX: &str = "stream/acct-";

/// A copy of the view's documents under the prefix, kept current from the feed.
struct Mirror {
    docs: BTreeMap<String, Value>,
    /// The position the documents stand at: changes at or below it are already in.
    position: u64,
    /// The id of the last change message (for `Last-Event-ID`).
    last_id: u64,
    resets: usize,
}

async fn page(c: &reqwest::Client, s: &Server) -> (BTreeMap<String, Value>, u64) {
    let (code, body) = get_json(
        c,
        &s.url(&format!(
            "/projections/stream-stats/view?prefix={PREFIX}&limit=1000"
        )),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let docs = body["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["key"].as_str().unwrap().to_owned(), d["value"].clone()))
        .collect();
    (docs, body["position"].as_u64().unwrap())
}

impl Mirror {
    async fn read(c: &reqwest::Client, s: &Server) -> Mirror {
        let (docs, position) = page(c, s).await;
        Mirror {
            docs,
            position,
            last_id: position,
            resets: 0,
        }
    }

    /// Applies what the feed sends until it is quiet for `quiet`.
    async fn follow(&mut self, c: &reqwest::Client, s: &Server, sse: &mut Sse, quiet: Duration) {
        while let Some(event) = sse.next(quiet).await {
            match event.kind.as_str() {
                "reset" => {
                    self.resets += 1;
                    let (docs, position) = page(c, s).await;
                    self.docs = docs;
                    self.position = position;
                }
                "message" => {
                    let key = event.data["key"].as_str().unwrap().to_owned();
                    assert!(key.starts_with(PREFIX), "{key} is outside the prefix");
                    assert_eq!(event.data["position"].as_u64(), Some(event.id));
                    self.last_id = event.id;
                    if event.id <= self.position {
                        continue;
                    }
                    match &event.data["value"] {
                        Value::Null => self.docs.remove(&key),
                        value => self.docs.insert(key, value.clone()),
                    };
                }
                other => panic!("unexpected event {other}"),
            }
        }
    }
}

async fn append_to(c: &reqwest::Client, s: &Server, streams: &[&str]) {
    for stream in streams {
        let (code, body) = append(c, s, stream, None, &json!([{"type": "T", "data": {}}])).await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
    }
}

async fn caught_up(c: &reqwest::Client, s: &Server) {
    status_until(c, s, "stream-stats", |st| {
        st["lag"] == 0 && st["rebuild"].is_null()
    })
    .await;
}

#[tokio::test]
async fn a_page_and_its_feed_stay_equal_to_the_view() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let c = client();
    append_to(&c, &s, &["acct-1", "acct-2", "other-1", "acct-1"]).await;
    caught_up(&c, &s).await;
    let mut mirror = Mirror::read(&c, &s).await;
    assert_eq!(mirror.docs.len(), 2);
    let url = s.url(&format!(
        "/projections/stream-stats/changes?prefix={PREFIX}&from={}",
        mirror.position
    ));
    let mut sse = Sse::connect(&url, None).await;

    append_to(&c, &s, &["acct-3", "acct-1", "other-2", "acct-2"]).await;
    mirror
        .follow(&c, &s, &mut sse, Duration::from_millis(700))
        .await;
    caught_up(&c, &s).await;
    assert_eq!(mirror.docs, page(&c, &s).await.0);
    assert_eq!(mirror.docs["stream/acct-1"]["events"], 3);

    // A blue/green rebuild: the swap sends `reset`; the client reads again and follows on.
    let r = c
        .post(s.url("/projections/stream-stats/rebuild"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let deadline = Instant::now() + Duration::from_secs(60);
    while mirror.resets == 0 {
        assert!(Instant::now() < deadline, "no reset after the rebuild");
        mirror
            .follow(&c, &s, &mut sse, Duration::from_millis(200))
            .await;
    }
    append_to(&c, &s, &["acct-4", "acct-3"]).await;
    mirror
        .follow(&c, &s, &mut sse, Duration::from_millis(700))
        .await;
    caught_up(&c, &s).await;
    assert_eq!(mirror.docs, page(&c, &s).await.0);

    // A reconnect: what was committed while away comes with Last-Event-ID.
    drop(sse);
    append_to(&c, &s, &["acct-5", "acct-1", "other-3"]).await;
    caught_up(&c, &s).await;
    let resume = mirror.last_id;
    let mut sse = Sse::connect(
        &s.url(&format!(
            "/projections/stream-stats/changes?prefix={PREFIX}"
        )),
        Some(resume),
    )
    .await;
    mirror
        .follow(&c, &s, &mut sse, Duration::from_millis(700))
        .await;
    assert_eq!(mirror.docs, page(&c, &s).await.0);
    assert_eq!(mirror.docs.len(), 5);
    assert_eq!(mirror.docs["stream/acct-1"]["events"], 4);

    // A resume from before the feed starts (older than this version) is told to start over.
    let mut old = Sse::connect(&s.url("/projections/stream-stats/changes?from=1"), None).await;
    let first = old.next(Duration::from_secs(5)).await.expect("a reset");
    assert_eq!(first.kind, "reset");
    let (code, _) = get_json(&c, &s.url("/projections/nope/changes")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}
