//! A full disk for real: the data directory on a small tmpfs, filled by appends until the
//! server answers 507, then given room (the tmpfs is remounted larger): every acknowledged
//! event is there exactly once, appends go on, and every view equals a fresh native run.
//! Needs root (to mount), as CI runs; elsewhere the test says so and passes over the check.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{
    EXAMPLES, Server, assert_views_match_native, client, get_json, log_events, status_until,
};

/// A size-limited tmpfs, unmounted when dropped.
struct SmallDisk {
    mount: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u64) -> Option<SmallDisk> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path().join("disk");
        std::fs::create_dir(&mount).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&mount)
            .status()
            .expect("running mount");
        assert!(status.success(), "mounting a tmpfs as root failed");
        Some(SmallDisk { mount, _dir: dir })
    }

    fn resize(&self, mib: u64) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(&self.mount)
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn path(&self) -> &Path {
        &self.mount
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

#[tokio::test]
async fn a_full_disk_refuses_appends_with_507_and_everything_resumes_when_space_returns() {
    let Some(disk) = SmallDisk::mount(40) else {
        eprintln!("not root: the full-disk test needs to mount a tmpfs; skipped");
        return;
    };
    let data = disk.path().join("data");
    let server = Server::start(&data);
    let client = client();
    // Orders with a large note each, 20 a request, until the disk is full.
    let note = "x".repeat(20_000);
    let mut acked: Vec<(u64, u64)> = Vec::new();
    let mut refused = None;
    for n in 0u64..100_000 {
        let events: Vec<Value> = (0..20)
            .map(|i| {
                json!({"type": "OrderPlaced", "data": {"orderId": format!("{n}-{i}"),
                    "customerId": format!("c{}", i % 5), "note": note}})
            })
            .collect();
        let response = client
            .post(server.url(&format!("/streams/order-{n}")))
            .json(&events)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        if status == StatusCode::CREATED {
            acked.push((
                body["first_position"].as_u64().unwrap(),
                body["last_position"].as_u64().unwrap(),
            ));
            continue;
        }
        refused = Some((status, body));
        break;
    }
    let (status, body) = refused.expect("the disk filled up");
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_storage");
    let (status, health) = get_json(&client, &server.url("/health")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{health}");
    // Still serving: status and (once the log is reopened) reads.
    let (status, _) = get_json(&client, &server.url("/projections")).await;
    assert_eq!(status, StatusCode::OK);

    disk.resize(400);
    // Appends are taken again without a restart (the writer reopens the log).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = client
            .post(server.url("/streams/order-after"))
            .json(
                &json!([{"type": "OrderPlaced", "data": {"orderId": "after", "customerId": "c1"}}]),
            )
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::CREATED {
            let body: Value = response.json().await.unwrap();
            let p = body["first_position"].as_u64().unwrap();
            acked.push((p, p));
            break;
        }
        assert!(Instant::now() < deadline, "appends never resumed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, health) = get_json(&client, &server.url("/health")).await;
    assert_eq!((status, &health["status"]), (StatusCode::OK, &json!("ok")));

    // Every acknowledged event once, at its position; nothing of the refused request.
    let events = log_events(&client, &server).await;
    let head = events.len() as u64;
    for (first, last) in &acked {
        assert!(*last <= head, "acknowledged position {last} is lost");
        let stream = &events[*first as usize - 1].stream;
        assert!((*first..=*last).all(|p| events[p as usize - 1].stream == *stream));
    }
    let acked_events: u64 = acked.iter().map(|(f, l)| l - f + 1).sum();
    assert_eq!(acked_events, head, "only acknowledged events are stored");

    // Projections faulted on the full disk retry with backoff; ask now instead of waiting.
    for name in EXAMPLES {
        let _ = client
            .post(server.url(&format!("/projections/{name}/retry")))
            .send()
            .await;
        status_until(&client, &server, name, |s| {
            s["state"] == "caught_up" && s["position"].as_u64() == Some(head)
        })
        .await;
    }
    assert_views_match_native(&client, &server).await;
    server.terminate();
}
