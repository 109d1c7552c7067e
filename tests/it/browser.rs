//! The console in a real browser (SPEC §10): Debian's headless `chromium`, driven through
//! `chromedriver` with the WebDriver client `fantoccini`. A person signs in through the form,
//! sees the overview with its rows and charts, filters the deliveries, opens a run and reads
//! its output, and replays a dead letter to land on the replay's run page; a message id that
//! is a `<script>` shows as text and runs nothing. The same run writes a screenshot of each
//! page into `docs/screenshots/`, which the README shows.
//!
//! `#[ignore = "needs chromium and chromedriver"]`, like the PostgreSQL tests: run with
//! `--include-ignored` (as `.ci/run` does, after installing them), it fails without them.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};

use crate::console::{SCRIPT_ID, TOKEN, start};
use crate::harness::*;

/// Where the screenshots go: the README links them.
fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots")
}

/// A `chromedriver` on a free port of 127.0.0.1, killed when dropped.
struct Driver {
    child: Child,
    addr: SocketAddr,
}

impl Driver {
    fn start() -> Driver {
        let addr = free_addr();
        // A process group of its own, which the chromium it starts joins: a test that panics
        // before closing its session leaves no browser behind.
        let child = Command::new("chromedriver")
            .arg(format!("--port={}", addr.port()))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "needs chromium and chromedriver (apt-get install chromium chromium-driver): cannot start chromedriver: {err}"
                )
            });
        let mut driver = Driver { child, addr };
        let up = wait_for(Duration::from_secs(20), || TcpStream::connect(addr).is_ok());
        if !up {
            let _ = driver.child.kill();
            panic!("chromedriver did not listen on {addr} within 20 s");
        }
        driver
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Ok(group) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(group),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A headless chromium session (as root it needs `--no-sandbox`), 1400 x 900.
async fn browser(driver: &Driver) -> Client {
    let mut options = serde_json::json!({
        "args": [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1400,900",
            "--force-device-scale-factor=1",
        ]
    });
    if std::path::Path::new("/usr/bin/chromium").exists() {
        options["binary"] = "/usr/bin/chromium".into();
    }
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".to_owned(), options);
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://{}", driver.addr))
        .await
        .expect("a chromium session (needs chromium and chromedriver)")
}

/// Saves a screenshot of what `client` shows as `docs/screenshots/NAME.png`.
async fn shoot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let dir = screenshots();
    std::fs::create_dir_all(&dir).expect("screenshots dir");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
}

/// The text of the element `css`.
async fn text_of(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|err| panic!("{css}: {err}"))
        .text()
        .await
        .expect("text")
}

/// Clicks `css` and waits (30 s at most) until the browser is at a page whose path and query
/// `arrived` accepts, which has loaded and shows `shows` (signing in stays at `/`). A click on
/// a form's button returns once the form is submitted, not once its answer is shown: a POST
/// that runs a replay before its redirect, or any page under CI's load, can leave the browser
/// on the old page for a while.
async fn click_to(client: &Client, css: &str, arrived: impl Fn(&str, &str) -> bool, shows: &str) {
    let from = client.current_url().await.expect("url");
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|err| panic!("{css}: {err}"))
        .click()
        .await
        .expect("click");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let url = client.current_url().await.expect("url");
        let loaded = client
            .execute("return document.readyState", vec![])
            .await
            .is_ok_and(|state| state == "complete");
        if loaded
            && arrived(url.path(), url.query().unwrap_or(""))
            && client.find(Locator::Css(shows)).await.is_ok()
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after clicking {css} on {from}, at {url} (loaded: {loaded}) without {shows} after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts that no alert is open: the injected `<script>` did not run.
async fn no_alert(client: &Client) {
    assert!(
        client.get_alert_text().await.is_err(),
        "an alert is open: a script ran"
    );
}

#[test]
#[ignore = "needs chromium and chromedriver"]
fn a_person_signs_in_reads_the_runs_and_replays_a_dead_letter_in_a_real_browser() {
    let dir = Dir::new();
    let flag = dir.file("upstream-back");
    let hooks = format!(
        "[hooks.deploy-web]\npath = \"/deploy\"\n\
         command = 'echo \"pulling release $CMQ_MSG_ID\"; echo \"restarting web: ok\"'\n\n\
         [hooks.cache-purge]\npath = \"/purge\"\n\
         command = 'case \"$CMQ_MSG_ID\" in purge-3|purge-7|*script*) echo \"purge failed: CDN timed out after 5s <edge-2>\" >&2; exit 1;; esac; echo purged'\n\n\
         [hooks.nightly-import]\npath = \"/import\"\nack = \"stored\"\nretry = [\"100ms\"]\n\
         command = 'echo \"importing batch\"; if [ -e {flag} ]; then echo \"imported 1,204 rows\"; else echo \"ERROR: upstream answered 503 Service Unavailable\" >&2; exit 2; fi'\n",
        flag = flag.display()
    );
    let (server, console) = start(&dir, "keep_bodies = \"1d\"\ninstance = \"web-1\"", &hooks);
    for n in 1..=6 {
        assert_eq!(
            server.post_seed("/deploy", &format!("deploy-{n}")).status,
            200
        );
    }
    for n in 1..=8 {
        server.post_seed("/purge", &format!("purge-{n}"));
    }
    assert_eq!(server.post_seed("/purge", SCRIPT_ID).status, 500);
    assert_eq!(server.post_seed("/import", "import-2026-12-07").status, 200);
    assert!(wait_for(Duration::from_secs(30), || {
        !console.json("/api/dead")["dead"]
            .as_array()
            .expect("dead")
            .is_empty()
    }));
    let base = format!("http://{}", console.addr);

    let driver = Driver::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = browser(&driver).await;

        // Not signed in: the login form.
        client.goto(&format!("{base}/")).await.expect("goto");
        assert!(
            client
                .find(Locator::Css("form[action='/login']"))
                .await
                .is_ok()
        );
        shoot(&client, "login").await;
        let token = client
            .find(Locator::Id("token"))
            .await
            .expect("token field");
        token.send_keys(TOKEN).await.expect("type");
        // Signed in: at the overview.
        click_to(
            &client,
            "form[action='/login'] button",
            |path, _| path == "/",
            "table.hooks",
        )
        .await;

        // The overview: a row per hook, each with its 24-hour chart.
        let hooks = text_of(&client, "table.hooks").await;
        for name in ["deploy-web", "cache-purge", "nightly-import"] {
            assert!(hooks.contains(name), "{hooks}");
        }
        assert!(
            hooks.contains("purge failed: CDN timed out after 5s <edge-2>"),
            "{hooks}"
        );
        let charts = client
            .find_all(Locator::Css("table.hooks svg.hours"))
            .await
            .expect("charts");
        assert_eq!(charts.len(), 3);
        let bars = client
            .find_all(Locator::Css(
                "table.hooks svg.hours rect.ok, table.hooks svg.hours rect.bad",
            ))
            .await
            .expect("bars");
        assert!(bars.len() >= 3, "this hour's bars");
        no_alert(&client).await;
        shoot(&client, "overview").await;

        // Deliveries, filtered to one hook through the form.
        client.goto(&format!("{base}/runs")).await.expect("goto");
        let all = text_of(&client, "table.runs").await;
        assert!(
            all.contains(SCRIPT_ID),
            "the script's id shows as text: {all}"
        );
        no_alert(&client).await;
        shoot(&client, "deliveries").await;
        client
            .find(Locator::Css("select[name='hook']"))
            .await
            .expect("hook filter")
            .select_by_value("cache-purge")
            .await
            .expect("select");
        click_to(
            &client,
            "form.filters button",
            |_, query| query.contains("hook=cache-purge"),
            "table.runs",
        )
        .await;
        let rows = client
            .find_all(Locator::Css("table.runs tbody tr"))
            .await
            .expect("rows");
        assert_eq!(rows.len(), 9, "the 9 pushes of cache-purge");
        for row in &rows {
            let text = row.text().await.expect("row");
            assert!(text.contains("cache-purge"), "{text}");
        }

        // A run and its output.
        click_to(
            &client,
            "table.runs tbody tr td a",
            |path, _| path.starts_with("/runs/"),
            "pre.output",
        )
        .await;
        let output = text_of(&client, "pre.output").await;
        assert!(
            output.contains("purge failed: CDN timed out after 5s <edge-2>"),
            "{output}"
        );
        let facts = text_of(&client, "dl.facts").await;
        assert!(facts.contains(SCRIPT_ID), "{facts}");
        no_alert(&client).await;
        shoot(&client, "run").await;

        // A dead letter, replayed once the upstream is back: the replay's run page.
        client.goto(&format!("{base}/dead")).await.expect("goto");
        let dead = text_of(&client, "table.dead").await;
        assert!(dead.contains("import-2026-12-07"), "{dead}");
        assert!(dead.contains("ERROR: upstream answered 503"), "{dead}");
        shoot(&client, "dead").await;
        std::fs::write(&flag, "").expect("upstream back");
        // The form's POST runs the replay before it answers with the redirect.
        click_to(
            &client,
            "table.dead form[action='/dead/replay'] button",
            |path, _| path.starts_with("/runs/"),
            "pre.output",
        )
        .await;
        let heading = text_of(&client, "h1").await;
        assert!(
            heading.contains("succeeded") && heading.contains("replay"),
            "{heading}"
        );
        let output = text_of(&client, "pre.output").await;
        assert!(output.contains("imported 1,204 rows"), "{output}");
        shoot(&client, "replayed").await;
        client.goto(&format!("{base}/dead")).await.expect("goto");
        assert!(text_of(&client, "main").await.contains("No dead letters"));

        client.close().await.expect("close the session");
    });
}
