//! The dashboard in a real browser: Debian's Chromium, headless, driven through chromedriver
//! (WebDriver, with fantoccini). It loads the page from a live server, sees the example
//! projections, deploys a component through the drop zone's file input, rebuilds a projection
//! and watches its progress bar until the swap, opens a document, reads and tails a stream, and
//! saves screenshots (laptop and phone sizes) to `target/tmp/`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::common::{
    Server, append, clear_failpoint, client, failpoint, guest, order_placed, status_until,
};

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromedriver() -> Driver {
    let binary = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect(
            "the dashboard test needs Chromium and its driver: \
             apt-get install chromium chromium-driver (.ci/run does)",
        );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(binary)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromedriver");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

async fn browser(driver: &Driver, profile: &Path) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a WebDriver session")
}

/// Waits until `selector` matches an element, up to 60 s.
async fn wait_for(browser: &Client, selector: &str, what: &str) -> fantoccini::elements::Element {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(element) = browser.find(Locator::Css(selector)).await {
            return element;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {what} ({selector})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_gone(browser: &Client, selector: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while browser.find(Locator::Css(selector)).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {what} to go"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the server holds a live subscription (`projector_live_subscriptions`).
async fn live_subscription_open(http: &reqwest::Client, server: &Server) -> bool {
    let metrics = http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("projector_live_subscriptions "))
        .is_some_and(|n| n.trim() != "0")
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, png).unwrap();
}

#[tokio::test]
async fn the_dashboard_works_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let http = client();
    for order in 1..=5 {
        let (status, _) = append(
            &http,
            &server,
            &format!("order-{order}"),
            None,
            &json!([order_placed(order)]),
        )
        .await;
        assert_eq!(status, reqwest::StatusCode::CREATED);
    }
    for name in crate::common::EXAMPLES {
        status_until(&http, &server, name, |s| {
            s["state"] == "caught_up" && s["position"] == 5
        })
        .await;
    }
    let driver = chromedriver();
    let browser = browser(&driver, &dir.path().join("profile")).await;
    browser.goto(&server.url("/")).await.unwrap();

    // The example projections, caught up.
    for name in crate::common::EXAMPLES {
        wait_for(
            &browser,
            &format!(r#"tr[data-projection="{name}"][data-state="caught_up"]"#),
            name,
        )
        .await;
    }
    let health = browser.find(Locator::Id("health")).await.unwrap();
    assert_eq!(health.text().await.unwrap(), "ok");

    // Deploy through the drop zone (its file input): the new projection appears and catches up.
    let wasm = dir.path().join("extra_stats.wasm");
    std::fs::write(&wasm, guest("stream_stats")).unwrap();
    browser
        .find(Locator::Id("deploy-file"))
        .await
        .unwrap()
        .send_keys(wasm.to_str().unwrap())
        .await
        .unwrap();
    wait_for(
        &browser,
        r#"tr[data-projection="extra-stats"][data-state="caught_up"]"#,
        "the deployed projection",
    )
    .await;

    // Rebuild, held at its start so that the bar is seen, then let go to the swap.
    failpoint(&http, &server, "turn", "return").await;
    browser
        .find(Locator::Css(
            r#"tr[data-projection="stream-stats"] button[data-action="rebuild"]"#,
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let bar = wait_for(
        &browser,
        r#"[data-rebuild="stream-stats"]"#,
        "the rebuild's progress bar",
    )
    .await;
    assert_eq!(
        bar.attr("data-ratio").await.unwrap().as_deref(),
        Some("0.000")
    );
    screenshot(&browser, "dashboard-rebuild.png").await;
    clear_failpoint(&http, &server, "turn").await;
    wait_gone(
        &browser,
        r#"[data-rebuild="stream-stats"]"#,
        "the progress bar",
    )
    .await;
    let status = status_until(&http, &server, "stream-stats", |s| s["rebuild"].is_null()).await;
    assert_eq!(
        status["position"], 5,
        "the rebuilt version serves: {status}"
    );

    // A document: pick the projection, search a prefix, open a key.
    browser
        .execute(
            "const s = document.getElementById('view-projection'); s.value = 'order-summary'; return s.value;",
            vec![],
        )
        .await
        .unwrap();
    browser
        .find(Locator::Id("view-prefix"))
        .await
        .unwrap()
        .send_keys("order/")
        .await
        .unwrap();
    browser
        .find(Locator::Id("view-search"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&browser, r#"li[data-key="order/3"]"#, "the document's key")
        .await
        .click()
        .await
        .unwrap();
    let document = wait_for(&browser, "#view-document:not([hidden])", "the document").await;
    let text = document.text().await.unwrap();
    let shown: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(shown["orderId"], "3", "{text}");

    // Streams: a page of `$all`, then a live tail that shows a new event.
    browser
        .find(Locator::Id("stream-read"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&browser, "#stream-events li", "a page of $all").await;
    let listed = browser
        .find_all(Locator::Css("#stream-events li"))
        .await
        .unwrap();
    assert_eq!(listed.len(), 5);
    browser
        .find(Locator::Id("stream-live"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The subscription starts at the head: append once the server holds it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !live_subscription_open(&http, &server).await {
        assert!(Instant::now() < deadline, "the live tail never subscribed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    append(&http, &server, "order-9", None, &json!([order_placed(9)])).await;
    let tailed = wait_for(&browser, "#stream-events.live li", "the live event").await;
    assert!(tailed.text().await.unwrap().contains("order-9"));
    screenshot(&browser, "dashboard.png").await;

    // A phone's width: nothing runs off the side of the page.
    browser.set_window_size(390, 844).await.unwrap();
    let overflow = browser
        .execute(
            "return document.documentElement.scrollWidth - window.innerWidth;",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "the page is wider than a phone: {overflow}"
    );
    screenshot(&browser, "dashboard-phone.png").await;
    browser.close().await.unwrap();
}
