//! The console (SPEC §10) over real HTTP on 127.0.0.1: the JSON API's shapes, filters and
//! pagination; 401 without or with a wrong token, the login cookie, the CSP; what came from a
//! push or a command escaped in the pages and kept as data in the API; `POST /api/replay` and
//! the replay form with its CSRF token; `check` refusing a console that would be open to the
//! network; with PostgreSQL, one instance's console showing another's runs.

use std::net::SocketAddr;
use std::time::Duration;

use crate::harness::*;
use crate::pg::{Instance, LEASE, Spec, TestDb, server_keys};

/// The console's token in these tests.
pub const TOKEN: &str = "console-s3cret-token";
/// The CSP of every console response (SPEC §10).
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:";
/// A message id that would run as a script if a page did not escape it.
pub const SCRIPT_ID: &str = "<script>alert(1)</script>";

/// A `[console]` table on `addr` with the token from `CMQHOOK_CONSOLE_TOKEN` (see [`start`]).
pub fn console_table(addr: SocketAddr) -> String {
    format!("[console]\nlisten = \"{addr}\"\ntoken = \"${{CMQHOOK_CONSOLE_TOKEN}}\"\n")
}

/// A client of the console at `addr`.
pub struct Console {
    pub addr: SocketAddr,
}

impl Console {
    /// `METHOD path` with `headers` and `body`.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        exchange(self.addr, &request(self.addr, method, path, headers, body))
    }

    /// `GET path` with the token as Bearer.
    pub fn get(&self, path: &str) -> Response {
        let bearer = format!("Bearer {TOKEN}");
        self.request("GET", path, &[("Authorization", &bearer)], b"")
    }

    /// `GET path` answered 200, as JSON.
    pub fn json(&self, path: &str) -> serde_json::Value {
        let response = self.get(path);
        assert_eq!(response.status, 200, "{path}: {}", response.text());
        assert_eq!(response.header("content-security-policy"), Some(CSP));
        response.json()
    }

    /// `POST path` with a form body and the token as Bearer.
    pub fn post_form(&self, path: &str, form: &[(&str, &str)], cookie: Option<&str>) -> Response {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let cookie = cookie.map(|cookie| format!("cmqhook_console={cookie}"));
        let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
        if let Some(cookie) = &cookie {
            headers.push(("Cookie", cookie));
        }
        self.request("POST", path, &headers, body.as_bytes())
    }

    /// Signs in through the login form; the session cookie's value.
    pub fn login(&self) -> String {
        let response = self.post_form("/login", &[("token", TOKEN)], None);
        assert_eq!(response.status, 303, "{}", response.text());
        assert_eq!(response.header("location"), Some("/"));
        let cookie = response.header("set-cookie").expect("a session cookie");
        cookie
            .strip_prefix("cmqhook_console=")
            .and_then(|rest| rest.split(';').next())
            .expect("the cookie's value")
            .to_owned()
    }

    /// `GET path` with the session cookie.
    pub fn page(&self, path: &str, cookie: &str) -> Response {
        let cookie = format!("cmqhook_console={cookie}");
        self.request("GET", path, &[("Cookie", &cookie)], b"")
    }
}

/// Starts `serve` with `server` keys, `[console]` on a free port (token [`TOKEN`]) and
/// `hooks`.
pub fn start(dir: &Dir, server: &str, hooks: &str) -> (Server, Console) {
    let addr = free_addr();
    let text = format!("{}\n{}", config(server, hooks), console_table(addr));
    let server = Server::builder(dir)
        .config(&text)
        .env("CMQHOOK_CONSOLE_TOKEN", TOKEN)
        .start();
    (server, Console { addr })
}

/// The runs `/api/runs?QUERY` lists once it lists `count` of them (at most 10 s).
fn runs_once(console: &Console, query: &str, count: usize) -> Vec<serde_json::Value> {
    let mut runs = Vec::new();
    let listed = wait_for(Duration::from_secs(10), || {
        runs = console.json(&format!("/api/runs?{query}"))["runs"]
            .as_array()
            .expect("runs")
            .clone();
        runs.len() >= count
    });
    assert!(listed, "{query}: {runs:#?}");
    runs
}

/// The value of the hidden form field `name` in `html`.
fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).expect("the field") + marker.len();
    html[start..]
        .split('"')
        .next()
        .expect("its value")
        .to_owned()
}

#[test]
fn every_api_route_answers_in_the_shape_of_spec_10() {
    let dir = Dir::new();
    let hooks = "[hooks.ok]\npath = \"/ok\"\ncommand = 'echo hello; echo \"<b>bold</b>\" >&2'\n\n\
                 [hooks.bad]\npath = \"/bad\"\nack = \"stored\"\nretry = [\"100ms\"]\n\
                 command = 'echo \"it broke: disk full\" >&2; exit 3'\n";
    let (server, console) = start(&dir, "keep_bodies = \"1d\"", hooks);
    assert_eq!(server.post_seed("/ok", SCRIPT_ID).status, 200);
    assert_eq!(server.post_seed("/bad", "doomed").status, 200);
    // Dead once its one retry failed too.
    let mut dead = Vec::new();
    assert!(wait_for(Duration::from_secs(10), || {
        dead = console.json("/api/dead")["dead"]
            .as_array()
            .expect("dead")
            .clone();
        !dead.is_empty()
    }));
    assert_eq!(dead[0]["hook"], "bad");
    assert_eq!(dead[0]["msg_id"], "doomed");
    assert_eq!(dead[0]["attempt"], 2);
    assert_eq!(dead[0]["reason"], "it broke: disk full");
    let last_run = dead[0]["last_run_id"].as_i64().expect("its last run");

    let runs = runs_once(&console, "", 3);
    for run in &runs {
        for key in [
            "id",
            "hook",
            "msg_id",
            "attempt",
            "outcome",
            "exit_code",
            "signal",
            "started_at",
            "duration_ms",
            "instance",
            "replay",
            "superseded",
        ] {
            assert!(run.get(key).is_some(), "{key} in {run}");
        }
        assert!(run.get("output").is_none(), "a list has no output: {run}");
        assert!(
            humantime::parse_rfc3339(run["started_at"].as_str().expect("text")).is_ok(),
            "{run}"
        );
    }
    let ids: Vec<i64> = runs
        .iter()
        .map(|run| run["id"].as_i64().expect("id"))
        .collect();
    assert!(
        ids.windows(2).all(|pair| pair[0] > pair[1]),
        "newest first: {ids:?}"
    );
    assert_eq!(ids[0], last_run, "the dead letter's last run is the newest");

    let ok = runs
        .iter()
        .find(|run| run["hook"] == "ok")
        .expect("the ok run");
    assert_eq!(ok["msg_id"], SCRIPT_ID, "data, as it came");
    let one = console.json(&format!("/api/runs/{}", ok["id"]));
    let output = one["output"].as_str().expect("output");
    assert!(output.contains("hello"), "{output}");
    assert!(
        output.contains("<b>bold</b>"),
        "as the command printed it: {output}"
    );
    assert_eq!(one["exit_code"], 0);
    assert_eq!(console.get("/api/runs/999999").status, 404);

    let hooks = console.json("/api/hooks")["hooks"].clone();
    let names: Vec<&str> = hooks
        .as_array()
        .expect("hooks")
        .iter()
        .map(|hook| hook["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["ok", "bad"], "in config order");
    let (ok, bad) = (&hooks[0], &hooks[1]);
    assert_eq!(
        (ok["runs"].as_u64(), ok["successes"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(ok["last_outcome"], "succeeded");
    assert!(ok["last_failure"].is_null());
    assert!(ok["p50_ms"].as_u64().is_some() && ok["p95_ms"].as_u64().is_some());
    assert_eq!(
        (bad["runs"].as_u64(), bad["failures"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(bad["last_failure"]["reason"], "it broke: disk full");
    assert_eq!(bad["last_failure"]["run_id"], last_run);
    let hourly = bad["hourly"].as_array().expect("hourly");
    assert_eq!(hourly.len(), 24);
    assert_eq!(hourly[23]["failures"], 2, "the hour going on is the last");
}

#[test]
fn runs_are_filtered_by_hook_outcome_and_message_and_paged_by_before() {
    let dir = Dir::new();
    let hooks = "[hooks.a]\npath = \"/a\"\ncommand = 'true'\n\n\
                 [hooks.b]\npath = \"/b\"\ncommand = 'exit 1'\n";
    let (server, console) = start(&dir, "", hooks);
    for n in 0..5 {
        assert_eq!(server.post_seed("/a", &format!("a{n}")).status, 200);
    }
    for n in 0..2 {
        assert_eq!(server.post_seed("/b", &format!("b{n}")).status, 500);
    }
    runs_once(&console, "", 7);
    let a = runs_once(&console, "hook=a", 5);
    assert!(a.iter().all(|run| run["hook"] == "a"));
    assert_eq!(a.len(), 5);
    let failed = console.json("/api/runs?outcome=failed")["runs"].clone();
    let failed: Vec<&str> = failed
        .as_array()
        .expect("runs")
        .iter()
        .map(|run| run["msg_id"].as_str().expect("msg id"))
        .collect();
    assert_eq!(failed, ["b1", "b0"]);
    let one = console.json("/api/runs?msg_id=a3")["runs"].clone();
    assert_eq!(one.as_array().map(Vec::len), Some(1));
    assert_eq!(one[0]["msg_id"], "a3");
    // Empty fields (a form's "any") filter nothing.
    assert_eq!(
        console.json("/api/runs?hook=&outcome=&msg_id=")["runs"]
            .as_array()
            .map(Vec::len),
        Some(7)
    );
    // Pages of 2 of hook a, each older than the one before, until `next` is null.
    let mut seen = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let query = match before {
            Some(before) => format!("/api/runs?hook=a&limit=2&before={before}"),
            None => "/api/runs?hook=a&limit=2".to_owned(),
        };
        let page = console.json(&query);
        let ids: Vec<i64> = page["runs"]
            .as_array()
            .expect("runs")
            .iter()
            .map(|run| run["id"].as_i64().expect("id"))
            .collect();
        assert!(ids.len() <= 2, "{page}");
        seen.extend(ids);
        match page["next"].as_i64() {
            Some(next) => {
                assert_eq!(
                    Some(next),
                    seen.last().copied(),
                    "next is the last id shown"
                );
                before = Some(next);
            }
            None => {
                assert!(page["next"].is_null());
                break;
            }
        }
    }
    let expected: Vec<i64> = a
        .iter()
        .map(|run| run["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(seen, expected, "every run of a once, newest first");
    for bad in ["before=x", "limit=0", "limit=501", "limit=ten"] {
        let response = console.get(&format!("/api/runs?{bad}"));
        assert_eq!(response.status, 400, "{bad}: {}", response.text());
    }
}

#[test]
fn without_the_token_the_console_answers_401_and_the_login_cookie_lets_a_person_in() {
    let dir = Dir::new();
    let (_server, console) = start(&dir, "", "[hooks.a]\ncommand = 'true'\n");
    for path in [
        "/api/hooks",
        "/api/runs",
        "/api/runs/1",
        "/api/dead",
        "/api/x",
        "/",
        "/runs",
        "/runs/1",
        "/dead",
        "/nowhere",
    ] {
        for headers in [
            vec![],
            vec![("Authorization", "Bearer wrong-token")],
            vec![("Authorization", "Bearer console-s3cret-toke")],
            vec![("Cookie", "cmqhook_console=console-s3cret-token")],
            vec![("X-Cmqhook-Token", TOKEN)],
        ] {
            let response = console.request("GET", path, &headers, b"");
            assert_eq!(
                response.status,
                401,
                "{path} {headers:?}: {}",
                response.text()
            );
            assert_eq!(response.header("content-security-policy"), Some(CSP));
            assert!(
                !response.text().contains("\"a\""),
                "nothing of the journal shows"
            );
        }
    }
    let replay = console.request("POST", "/api/replay", &[], br#"{"msg_id":"m"}"#);
    assert_eq!(replay.status, 401);
    let form = console.post_form("/dead/replay", &[("msg_id", "m"), ("hook", "a")], None);
    assert_eq!(form.status, 401);
    // A person's 401 is the login form.
    let page = console.request("GET", "/", &[], b"");
    assert!(page.text().contains("action=\"/login\""), "{}", page.text());
    // The stylesheet it links to needs no login.
    let html = page.text();
    let href = html
        .split("rel=\"stylesheet\" href=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a stylesheet");
    assert!(href.starts_with("/static/"), "{href}");
    let css = console.request("GET", href, &[], b"");
    assert_eq!(css.status, 200);
    assert!(
        css.header("content-type")
            .is_some_and(|t| t.starts_with("text/css"))
    );

    let wrong = console.post_form("/login", &[("token", "nope")], None);
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());
    let response = console.post_form("/login", &[("token", TOKEN)], None);
    let set_cookie = response.header("set-cookie").expect("cookie").to_owned();
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    assert!(
        !set_cookie.contains(TOKEN),
        "the cookie is not the token: {set_cookie}"
    );
    let cookie = console.login();
    for path in ["/", "/runs", "/dead", "/api/hooks"] {
        let response = console.page(path, &cookie);
        assert_eq!(response.status, 200, "{path}: {}", response.text());
        assert_eq!(response.header("content-security-policy"), Some(CSP));
    }
    assert_eq!(console.get("/").status, 200, "Bearer works for pages too");
    assert_eq!(
        console.page("/", "0123abcd").status,
        401,
        "a made-up session"
    );
    // Signing out takes the page's CSRF token, and drops the cookie.
    let csrf = hidden(&console.page("/", &cookie).text(), "csrf");
    assert_eq!(console.post_form("/logout", &[], Some(&cookie)).status, 403);
    let out = console.post_form("/logout", &[("csrf", &csrf)], Some(&cookie));
    assert_eq!(out.status, 303);
    assert!(
        out.header("set-cookie")
            .is_some_and(|c| c.contains("Max-Age=0")),
        "{out:?}"
    );
}

#[test]
fn a_message_id_and_output_holding_html_are_data_in_the_api_and_text_in_the_pages() {
    let dir = Dir::new();
    let hooks = "[hooks.shout]\ncommand = 'echo \"<img src=x onerror=alert(2)>\"; echo \"</pre><script>alert(3)</script>\" >&2; exit 1'\n";
    let (server, console) = start(&dir, "", hooks);
    assert_eq!(server.post_seed("/", SCRIPT_ID).status, 500);
    let run = runs_once(&console, "", 1)[0].clone();
    assert_eq!(run["msg_id"], SCRIPT_ID);
    let id = run["id"].as_i64().expect("id");
    let output = console.json(&format!("/api/runs/{id}"))["output"].clone();
    assert!(
        output
            .as_str()
            .is_some_and(|o| o.contains("<img src=x onerror=alert(2)>"))
    );
    // As askama escapes: `<` is `&#60;`, `>` is `&#62;`.
    let escaped_id = "&#60;script&#62;alert(1)&#60;/script&#62;";
    for path in ["/".to_owned(), "/runs".to_owned(), format!("/runs/{id}")] {
        let html = console.get(&path).text();
        assert!(!html.contains("<script"), "{path}: {html}");
        assert!(!html.contains("<img"), "{path}: {html}");
        if path != "/" {
            assert!(html.contains(escaped_id), "{path}: {html}");
        }
    }
    let html = console.get(&format!("/runs/{id}")).text();
    assert!(
        html.contains("&#60;img src=x onerror=alert(2)&#62;"),
        "{html}"
    );
    assert!(
        html.contains("&#60;/pre&#62;&#60;script&#62;alert(3)"),
        "{html}"
    );
    // The reason on the overview is the output's last stderr line, escaped too.
    let overview = console.get("/").text();
    assert!(
        overview.contains("&#60;/pre&#62;&#60;script&#62;alert(3)"),
        "{overview}"
    );
}

#[test]
fn replay_from_the_api_runs_the_message_once_and_the_form_needs_its_csrf_token() {
    let dir = Dir::new();
    let counter = dir.file("counter");
    let flag = dir.file("fixed");
    let hooks = format!(
        "[hooks.flaky]\npath = \"/flaky\"\ncommand = 'echo run >> {counter}; test -e {flag}'\n\n\
         [hooks.nightly]\npath = \"/nightly\"\nack = \"stored\"\nretry = [\"100ms\"]\n\
         command = 'echo run >> {counter}.nightly; test -e {flag}'\n\n\
         [hooks.later]\npath = \"/later\"\nack = \"stored\"\nretry = [\"1h\"]\ncommand = 'exit 1'\n",
        counter = counter.display(),
        flag = flag.display()
    );
    let (server, console) = start(&dir, "keep_bodies = \"1d\"", &hooks);
    let runs = || lines_in(&counter);
    assert_eq!(server.post_seed("/flaky", "m1").status, 500);
    assert_eq!(runs(), 1);
    std::fs::write(&flag, "").expect("flag");
    let replay = |body: &str| {
        let bearer = format!("Bearer {TOKEN}");
        console.request(
            "POST",
            "/api/replay",
            &[
                ("Authorization", &bearer),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        )
    };
    let answer = replay(r#"{"msg_id": "m1", "hook": "flaky"}"#);
    assert_eq!(answer.status, 200, "{}", answer.text());
    let answer = answer.json();
    assert_eq!(answer["results"][0]["hook"], "flaky");
    assert_eq!(answer["results"][0]["outcome"], "succeeded");
    assert_eq!(runs(), 2, "the replay ran the message once");
    let run_id = answer["results"][0]["run_id"].as_i64().expect("its run");
    let run = console.json(&format!("/api/runs/{run_id}"));
    assert_eq!(
        (run["replay"].as_bool(), run["attempt"].as_u64()),
        (Some(true), Some(2))
    );

    assert_eq!(replay(r#"{"msg_id": "never-pushed"}"#).status, 404);
    assert_eq!(replay(r#"{"msg_id": "m1", "hook": "nosuch"}"#).status, 404);
    assert_eq!(replay(r#"{"id": "m1"}"#).status, 400);
    // A stored message waiting for its retry is its scheduler's: 409, nothing runs.
    assert_eq!(server.post_seed("/later", "m2").status, 200);
    assert!(wait_for(Duration::from_secs(10), || {
        console.json("/api/runs?hook=later")["runs"][0]["outcome"] == "failed"
    }));
    let busy = replay(r#"{"msg_id": "m2", "hook": "later"}"#);
    assert_eq!(busy.status, 409, "{}", busy.text());
    assert_eq!(
        console.json("/api/runs?hook=later")["runs"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(runs(), 2);

    // The form: a dead letter, replayed with the page's CSRF token.
    std::fs::remove_file(&flag).expect("unfix");
    assert_eq!(server.post_seed("/nightly", "m3").status, 200);
    assert!(wait_for(Duration::from_secs(10), || {
        !console.json("/api/dead")["dead"]
            .as_array()
            .expect("dead")
            .is_empty()
    }));
    let nightly = || lines_in(&dir.file("counter.nightly"));
    assert_eq!(nightly(), 2);
    std::fs::write(&flag, "").expect("flag");
    let cookie = console.login();
    let page = console.page("/dead", &cookie).text();
    assert!(page.contains("m3") && page.contains("Replay"), "{page}");
    let csrf = hidden(&page, "csrf");
    let form = |csrf: Option<&str>| {
        let mut fields = vec![("msg_id", "m3"), ("hook", "nightly")];
        fields.extend(csrf.map(|csrf| ("csrf", csrf)));
        console.post_form("/dead/replay", &fields, Some(&cookie))
    };
    assert_eq!(form(None).status, 403);
    assert_eq!(form(Some("0000")).status, 403);
    let other_session = {
        let bearer = format!("Bearer {TOKEN}");
        let page = console.request("GET", "/dead", &[("Authorization", &bearer)], b"");
        hidden(&page.text(), "csrf")
    };
    assert_eq!(other_session, csrf, "one token, one session");
    assert_eq!(nightly(), 2, "a refused form runs nothing");
    let replayed = form(Some(&csrf));
    assert_eq!(replayed.status, 303, "{}", replayed.text());
    let location = replayed.header("location").expect("location").to_owned();
    assert!(location.starts_with("/runs/"), "{location}");
    assert_eq!(nightly(), 3, "once");
    let run_page = console.page(&location, &cookie).text();
    assert!(
        run_page.contains("succeeded") && run_page.contains("replay"),
        "{run_page}"
    );
    assert!(run_page.contains("m3"), "{run_page}");
    assert!(
        console.json("/api/dead")["dead"]
            .as_array()
            .expect("dead")
            .is_empty(),
        "a successful replay revives it"
    );
}

/// Lines in `file` (0 if there is none).
fn lines_in(file: &std::path::Path) -> usize {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .count()
}

#[test]
fn a_console_without_a_token_is_read_only() {
    let dir = Dir::new();
    let addr = free_addr();
    let text = format!(
        "{}\n[console]\nlisten = \"{addr}\"\n",
        config("keep_bodies = \"1d\"", "[hooks.a]\ncommand = 'true'\n")
    );
    let server = Server::start(&dir, &text);
    let console = Console { addr };
    assert_eq!(server.post_seed("/", "m1").status, 200);
    let open = console.request("GET", "/api/runs", &[], b"");
    assert_eq!(open.status, 200, "loopback, no token: anyone here may look");
    let refused = console.request("POST", "/api/replay", &[], br#"{"msg_id": "m1"}"#);
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert!(refused.text().contains("read-only"));
    let page = console.request("GET", "/dead", &[], b"").text();
    assert!(!page.contains("name=\"csrf\""), "no replay form: {page}");
}

#[test]
fn check_refuses_a_console_open_to_the_network_without_a_token() {
    let dir = Dir::new();
    let file = dir.write_config(
        "[server]\nlisten = \"127.0.0.1:9000\"\n\n[console]\nlisten = \"0.0.0.0:9001\"\n\n[hooks.a]\ncommand = 'true'\n",
    );
    let output = cmqhook(&["check", "-c", file.to_str().expect("path")], b"");
    assert_eq!(output.status.code(), Some(1), "{}", both(&output));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!("{}:5:10: console.listen", file.display())),
        "{stderr}"
    );
    assert!(stderr.contains("token"), "{stderr}");
    let same = dir.write_config(
        "[server]\nlisten = \"127.0.0.1:9000\"\n\n[console]\nlisten = \"127.0.0.1:9000\"\n",
    );
    let output = cmqhook(&["check", "-c", same.to_str().expect("path")], b"");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("push listener"),
        "{}",
        both(&output)
    );
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn with_postgresql_one_instances_console_shows_the_runs_of_another() {
    let db = TestDb::create();
    let url = db.url();
    let addr = free_addr();
    let hook = "[hooks.record]\npath = \"/\"\ncommand = 'echo ran on $CMQHOOK_HOOK'\n\n\
                [hooks.doomed]\npath = \"/doomed\"\nack = \"stored\"\nretry = [\"100ms\"]\n\
                command = 'echo \"no route to host\" >&2; exit 4'\n";
    let lease = format!("{}s", LEASE.as_secs());
    let with_console = format!(
        "{}\n{}",
        config(&server_keys(&url, Some("alpha"), &lease, ""), hook),
        console_table(addr)
    );
    let plain = config(&server_keys(&url, Some("beta"), &lease, ""), hook);
    let instances = Instance::start_all(vec![
        Spec::new("alpha", with_console).env("CMQHOOK_CONSOLE_TOKEN", TOKEN),
        Spec::new("beta", plain),
    ]);
    let console = Console { addr };
    assert_eq!(instances[1].push("on-beta").status, 200);
    let runs = runs_once(&console, "msg_id=on-beta", 1);
    assert_eq!(runs[0]["instance"], "beta");
    assert_eq!(runs[0]["hook"], "record");
    let id = runs[0]["id"].as_i64().expect("id");
    let run = console.json(&format!("/api/runs/{id}"));
    assert!(
        run["output"]
            .as_str()
            .is_some_and(|o| o.contains("ran on record")),
        "{run}"
    );
    let hooks = console.json("/api/hooks");
    assert_eq!(hooks["hooks"][0]["runs"], 1, "{hooks}");
    let page = console.get("/runs").text();
    assert!(page.contains("on-beta") && page.contains("beta"), "{page}");
    // Beta's dead letter, on alpha's console, with its last run and reason.
    assert_eq!(
        instances[1]
            .server
            .post_seed("/doomed", "dead-on-beta")
            .status,
        200
    );
    let mut dead = serde_json::Value::Null;
    assert!(wait_for(Duration::from_secs(20), || {
        dead = console.json("/api/dead")["dead"][0].clone();
        !dead.is_null()
    }));
    assert_eq!(dead["msg_id"], "dead-on-beta");
    assert_eq!(dead["reason"], "no route to host");
    assert!(dead["last_run_id"].as_i64().is_some(), "{dead}");
    let figures = console.json("/api/hooks")["hooks"].clone();
    let doomed = figures
        .as_array()
        .expect("hooks")
        .iter()
        .find(|hook| hook["name"] == "doomed")
        .expect("doomed")
        .clone();
    assert_eq!(doomed["failures"], 2, "{doomed}");
    assert_eq!(doomed["last_failure"]["reason"], "no route to host");
}
