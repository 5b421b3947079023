//! Durability under SIGKILL: every append that got a 2xx survives a crash, exactly once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{Server, client, get_ndjson};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

/// One append request as a client sent it: stream and the events' ids.
#[derive(Clone, Debug)]
struct Sent {
    stream: String,
    ids: Vec<Uuid>,
}

/// Where the server said a request landed.
#[derive(Debug)]
struct Acked {
    first_position: u64,
    first_revision: u64,
}

#[tokio::test]
async fn acknowledged_appends_survive_sigkill_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let acked: Arc<Mutex<Vec<(Sent, Acked)>>> = Arc::default();
    let unanswered: Arc<Mutex<Vec<Sent>>> = Arc::default();

    let writers: Vec<_> = (0..16)
        .map(|w| {
            let (client, url) = (client(), server.url("/streams/"));
            let (acked, unanswered) = (acked.clone(), unanswered.clone());
            tokio::spawn(async move {
                for n in 0u64.. {
                    let sent = Sent {
                        stream: format!("order-{}", (w * 7 + n) % 10),
                        ids: (0..1 + n % 3).map(|_| Uuid::new_v4()).collect(),
                    };
                    let events: Vec<Value> = sent
                        .ids
                        .iter()
                        .map(|id| json!({"type": "ItemAdded", "id": id, "data": {"writer": w, "n": n}}))
                        .collect();
                    let response = client.post(format!("{url}{}", sent.stream)).json(&events).send().await;
                    match response {
                        Ok(r) if r.status() == StatusCode::CREATED => {
                            let body: Value = r.json().await.unwrap();
                            let ack = Acked {
                                first_position: body["first_position"].as_u64().unwrap(),
                                first_revision: body["first_revision"].as_u64().unwrap(),
                            };
                            acked.lock().unwrap().push((sent, ack));
                        }
                        Ok(r) => panic!("unexpected status {}", r.status()),
                        // The server died with this request in flight: it may or may not be stored.
                        Err(_) => {
                            unanswered.lock().unwrap().push(sent);
                            return;
                        }
                    }
                }
            })
        })
        .collect();

    // Let load build up, then kill the server mid-stream.
    while acked.lock().unwrap().len() < 1500 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();
    for w in writers {
        w.await.unwrap();
    }

    let server = Server::start(dir.path());
    let client = client();
    let log = get_ndjson(&client, &server.url("/streams/$all")).await;
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(acked.len() >= 1500);

    // Gap-free positions, every id once, dense revisions per stream.
    let mut by_id: HashMap<Uuid, &Value> = HashMap::new();
    let mut revisions: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (i, e) in log.iter().enumerate() {
        assert_eq!(e["position"], i as u64 + 1);
        let id: Uuid = e["id"].as_str().unwrap().parse().unwrap();
        assert!(by_id.insert(id, e).is_none(), "event {id} stored twice");
        revisions
            .entry(e["stream"].as_str().unwrap())
            .or_default()
            .push(e["revision"].as_u64().unwrap());
    }
    for (stream, revs) in &revisions {
        assert_eq!(
            revs,
            &(0..revs.len() as u64).collect::<Vec<_>>(),
            "{stream}"
        );
    }
    // The stream and category indexes, rebuilt from the events on restart, agree with the log.
    for stream in revisions.keys() {
        let read = get_ndjson(&client, &server.url(&format!("/streams/{stream}"))).await;
        let expected: Vec<&Value> = log.iter().filter(|e| e["stream"] == *stream).collect();
        assert_eq!(read.iter().collect::<Vec<_>>(), expected, "{stream}");
    }
    let category = get_ndjson(&client, &server.url("/streams/$ce-order")).await;
    assert_eq!(category, log, "every stream is in category order");

    // Every acknowledged event is there, where the acknowledgement said.
    for (sent, ack) in &acked {
        for (i, id) in sent.ids.iter().enumerate() {
            let stored = by_id
                .get(id)
                .unwrap_or_else(|| panic!("acknowledged event {id} lost"));
            assert_eq!(stored["stream"], sent.stream.as_str());
            assert_eq!(stored["position"], ack.first_position + i as u64);
            assert_eq!(stored["revision"], ack.first_revision + i as u64);
        }
    }

    // Retrying the requests that got no answer never duplicates: each is either already
    // stored (200, deduplicated) or written now (201).
    let unanswered = std::mem::take(&mut *unanswered.lock().unwrap());
    for sent in &unanswered {
        let events: Vec<Value> = sent
            .ids
            .iter()
            .map(|id| json!({"type": "ItemAdded", "id": id, "data": {}}))
            .collect();
        let response = client
            .post(server.url(&format!("/streams/{}", sent.stream)))
            .json(&events)
            .send()
            .await
            .unwrap();
        let stored_before = sent.ids.iter().filter(|id| by_id.contains_key(id)).count();
        let expected = if stored_before == sent.ids.len() {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        assert_eq!(
            stored_before % sent.ids.len(),
            0,
            "a request was stored in part"
        );
        assert_eq!(response.status(), expected);
    }
    let after = get_ndjson(&client, &server.url("/streams/$all")).await;
    let new = unanswered
        .iter()
        .filter(|s| !by_id.contains_key(&s.ids[0]))
        .map(|s| s.ids.len())
        .sum::<usize>();
    assert_eq!(after.len(), log.len() + new);
}
