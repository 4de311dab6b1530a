//! The dashboard in a real browser: headless Chromium driven through chromedriver (WebDriver).
//! The page's figures match the database, the live chart and the top keys follow it without a
//! reload, nothing loads from another origin, a `<script>` payload does not run, Purge asks
//! before deleting, and logging in and clicking Replay makes a dead letter pending again.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); without them the
//! test is skipped, or fails under `OUTBOX_TEST_STRICT=1`. With `OUTBOX_DASHBOARD_SCREENSHOTS`
//! set to a folder (absolute: the test runs in `outbox-cli/`), the screenshots for
//! `docs/cli.md` are written there.

mod common;
mod dashboard_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Db, wait_until};
use dashboard_support::{Served, client, counts, dead_letter};
use fantoccini::{Client, ClientBuilder, Locator};
use outbox::{NewMessage, OutboxStore};
use serde_json::json;

const TOKEN: &str = "browser-test-token";
const WAIT: Duration = Duration::from_secs(20);

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).flat_map(|dir| names.iter().map(move |n| dir.join(n))).find(|p| p.is_file())
}

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    async fn start(program: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(program)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let up =
            wait_until(WAIT, || async move { tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() }).await;
        assert!(up, "chromedriver listening within {WAIT:?}");
        Self { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver, chromium: &Path, profile: &Path) -> Client {
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--hide-scrollbars",
        &format!("--user-data-dir={}", profile.display()),
    ];
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": { "binary": chromium, "args": args },
    });
    let serde_json::Value::Object(caps) = caps else { unreachable!() };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session through chromedriver")
}

async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).text().await.unwrap()
}

async fn attr(c: &Client, css: &str, name: &str) -> Option<String> {
    c.find(Locator::Css(css)).await.ok()?.attr(name).await.ok()?
}

/// The keys table's rows as (key, pending), from the DOM (WebDriver's text leaves out rows below
/// the fold).
async fn key_rows(c: &Client) -> Vec<(String, String)> {
    let js = "return [...document.querySelectorAll('#keys tbody tr')].map(r => [r.cells[0].textContent, r.cells[1].textContent])";
    serde_json::from_value(c.execute(js, vec![]).await.unwrap()).unwrap()
}

/// Saves a screenshot for the docs when asked to.
async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    if let Some(dir) = std::env::var_os("OUTBOX_DASHBOARD_SCREENSHOTS") {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(Path::new(&dir).join(name), png).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_chromium_shows_the_outbox_and_replays_a_dead_letter() {
    let (Some(chromium), Some(chromedriver)) =
        (find_program(&["chromium", "chromium-browser"]), find_program(&["chromedriver"]))
    else {
        assert!(
            std::env::var("OUTBOX_TEST_STRICT").as_deref() != Ok("1"),
            "chromium and chromedriver are needed (apt-get install chromium chromium-driver)"
        );
        eprintln!("skipping: chromium or chromedriver not found");
        return;
    };
    let Some(db) = Db::new().await else { return };
    db.write("orders", 24, 4, 8).await;
    let billing = dead_letter(
        &db,
        "billing",
        "account-42",
        r#"{"invoice":"INV-2031","amount":{"value":129.5,"currency":"EUR"},"lines":[{"sku":"A-1","qty":2}]}"#,
        "nats: no responders for subject outbox.billing (stream missing?)",
    )
    .await;
    dead_letter(&db, "billing", "account-7", r#"{"invoice":"INV-2032"}"#, "timeout after 5s waiting for ack").await;
    let xss = dead_letter(
        &db,
        "mail",
        "user-9",
        "<script>document.title='pwned';window.pwned=1</script>",
        "<img src=x onerror=\"window.pwned=2\">",
    )
    .await;
    let served = Served::dashboard(&db, &["--token", TOKEN]).await;
    let driver = Driver::start(&chromedriver).await;
    let profile = std::env::temp_dir().join(format!("outbox-chromium-{}", outbox::testkit::unique_suffix()));
    std::fs::create_dir_all(&profile).unwrap();
    let c = browser(&driver, &chromium, &profile).await;

    // Overview: the figures are the database's, and the live chart draws its samples.
    c.goto(&served.url("/")).await.unwrap();
    let stats = db.store.stats().await.unwrap();
    assert_eq!(text(&c, "#stat-pending").await, stats.pending.to_string());
    assert_eq!(text(&c, "#stat-claimed").await, stats.claimed.to_string());
    assert_eq!(text(&c, "#stat-dead").await, "3");
    assert_ne!(text(&c, "#stat-oldest").await, "–", "an oldest pending age");
    let drawn = wait_until(WAIT, || async {
        let points = attr(&c, "#chart-pending", "data-points").await.and_then(|p| p.parse::<u32>().ok());
        points.is_some_and(|p| p >= 3)
    })
    .await;
    assert!(drawn, "the pending chart drew live samples");
    // More writes: the chart follows the pending count as it grows, and so do the figures.
    for _ in 0..6 {
        let points = attr(&c, "#chart-pending", "data-points").await.unwrap_or_default();
        db.write("orders", 5, 4, 5).await;
        let next = wait_until(WAIT, || async {
            attr(&c, "#chart-pending", "data-points").await.unwrap_or_default() != points
        })
        .await;
        assert!(next, "a new sample drawn");
    }
    let pending = db.store.stats().await.unwrap().pending.to_string();
    let followed = wait_until(WAIT, || async {
        attr(&c, "#chart-pending", "data-last").await.as_deref() == Some(pending.as_str())
            && text(&c, "#stat-pending").await == pending
    })
    .await;
    assert!(followed, "the chart's last sample and the figure show the {pending} pending");
    assert_eq!(attr(&c, "#chart", "data-source").await.as_deref(), Some("database"));
    assert_eq!(c.find_all(Locator::Css("#chart-pending polyline")).await.unwrap().len(), 1);
    assert!(text(&c, "#keys").await.contains("key-0"), "top keys listed");
    screenshot(&c, "dashboard-overview.png").await;

    // Everything the page loaded (script, stylesheet, API polls) came from the dashboard.
    let loaded = c.execute("return performance.getEntriesByType('resource').map(e => e.name)", vec![]).await.unwrap();
    let loaded: Vec<String> = serde_json::from_value(loaded).unwrap();
    assert!(loaded.iter().any(|u| u.ends_with("/assets/dashboard.js")), "{loaded:?}");
    assert!(loaded.iter().all(|u| u.starts_with(&format!("{}/", served.base))), "only same-origin loads: {loaded:?}");

    // The top keys follow the backlog without a reload.
    let hot: Vec<_> = (0..20).map(|i| NewMessage::new("orders", format!("{{\"hot\":{i}}}")).key("hot-key")).collect();
    db.store.enqueue(hot).await.unwrap();
    let top = || async { key_rows(&c).await.first().cloned() };
    let followed = wait_until(WAIT, || async { top().await == Some(("hot-key".into(), "20".into())) }).await;
    assert!(followed, "the new busiest key tops the table: {:?}", key_rows(&c).await);

    // A `<script>` payload is shown as text and never runs.
    c.goto(&served.url(&format!("/dead/{xss}"))).await.unwrap();
    assert_eq!(text(&c, "#payload").await, "<script>document.title='pwned';window.pwned=1</script>");
    assert_eq!(text(&c, "#last-error").await, "<img src=x onerror=\"window.pwned=2\">");
    let ran = c.execute("return [document.title, window.pwned === undefined]", vec![]).await.unwrap();
    assert_eq!(ran, json!(["Dead letter · outbox", true]), "the payload did not run");
    // Nor in the list, where the error shows too.
    c.goto(&served.url("/dead?topic=mail")).await.unwrap();
    assert!(text(&c, "#dead td.error").await.contains("<img src=x"));
    let ran = c.execute("return [document.querySelectorAll('#dead img').length, window.pwned === undefined]", vec![]);
    assert_eq!(ran.await.unwrap(), json!([0, true]), "the error is text, not an element");

    // One dead letter in full, its JSON payload pretty-printed.
    c.goto(&served.url(&format!("/dead/{billing}"))).await.unwrap();
    assert!(text(&c, "#payload").await.contains("\"currency\": \"EUR\""), "pretty JSON");
    assert!(text(&c, "#last-error").await.contains("no responders"));
    screenshot(&c, "dashboard-dead-letter.png").await;

    // Log in, then replay from the list.
    c.goto(&served.url("/login")).await.unwrap();
    c.find(Locator::Id("token")).await.unwrap().send_keys(TOKEN).await.unwrap();
    c.find(Locator::Id("login-button")).await.unwrap().click().await.unwrap();
    let home = wait_until(WAIT, || async { c.current_url().await.is_ok_and(|u| u.path() == "/") }).await;
    assert!(
        home,
        "back on the overview after logging in; at {:?}: {}",
        c.current_url().await.map(|u| u.to_string()),
        c.source().await.unwrap_or_default()
    );
    assert!(c.find(Locator::Css("form[action=\"/logout\"]")).await.is_ok(), "logged in");
    c.goto(&served.url("/dead?topic=billing")).await.unwrap();
    assert_eq!(c.find_all(Locator::Css("#dead tbody tr")).await.unwrap().len(), 2, "billing's two dead letters");
    screenshot(&c, "dashboard-dead-letters.png").await;
    let before = counts(&db).await;
    c.find(Locator::Id(&format!("replay-{billing}"))).await.unwrap().click().await.unwrap();
    let notice = c.wait().at_most(WAIT).for_element(Locator::Id("notice")).await.expect("a notice");
    assert!(notice.text().await.unwrap().contains("pending again"));
    assert!(c.find_all(Locator::Css(&format!("tr[data-id=\"{billing}\"]"))).await.unwrap().is_empty());
    assert_eq!(counts(&db).await, (before.0 + 1, before.1 - 1), "the dead letter is pending again");
    let gone = client().get(served.url(&format!("/api/dead/{billing}"))).send().await.unwrap();
    assert_eq!(gone.status(), reqwest::StatusCode::NOT_FOUND, "no longer dead");
    c.goto(&served.url("/")).await.unwrap();
    assert_eq!(text(&c, "#stat-pending").await, db.pending().await.to_string(), "the overview counts it");
    assert_eq!(text(&c, "#stat-dead").await, "2");

    // Purge, even with every age, only asks; Cancel leaves the dead letters be.
    c.goto(&served.url("/dead")).await.unwrap();
    let age = c.find(Locator::Id("purge-older-than")).await.unwrap();
    age.clear().await.unwrap();
    age.send_keys("0s").await.unwrap();
    c.find(Locator::Id("purge-button")).await.unwrap().click().await.unwrap();
    let summary = c.wait().at_most(WAIT).for_element(Locator::Id("purge-summary")).await.expect("a confirmation");
    assert!(summary.text().await.unwrap().contains("This deletes 2 dead letter(s)"));
    assert_eq!(counts(&db).await.1, 2, "nothing deleted by the first click");
    screenshot(&c, "dashboard-purge-confirm.png").await;
    c.find(Locator::Id("purge-cancel")).await.unwrap().click().await.unwrap();
    let back = wait_until(WAIT, || async { c.current_url().await.is_ok_and(|u| u.path() == "/dead") }).await;
    assert!(back, "Cancel leads back to the list");
    assert_eq!(c.find_all(Locator::Css("#dead tbody tr")).await.unwrap().len(), 2);

    c.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&profile);
    db.drop_table().await;
}
