//! Operating the built binary: per-hook concurrency and queues, the SIGTERM drain, SIGHUP
//! reloads, JSON logs, and the `route`, `run` and `send` commands.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

use crate::harness::*;

/// `count` SIMPLIFIED pushes to `path` sent at the same moment from threads, message ids
/// `{prefix}0`, `{prefix}1`, …; each answer with how long its own request took.
fn push_at_once(
    addr: SocketAddr,
    path: &'static str,
    prefix: &str,
    count: usize,
) -> Vec<(Response, Duration)> {
    let barrier = Arc::new(Barrier::new(count));
    let threads: Vec<_> = (0..count)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            let msg_id = format!("{prefix}{i}");
            std::thread::spawn(move || {
                barrier.wait();
                let sent = Instant::now();
                let response = post(addr, path, &[("x-cmq-message-id", &msg_id)], b"x");
                (response, sent.elapsed())
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|thread| thread.join().expect("push thread"))
        .collect()
}

#[test]
fn a_hook_with_concurrency_1_runs_simultaneous_pushes_one_after_another() {
    let dir = Dir::new();
    let server = Server::start(
        &dir,
        &config(
            "respond_within = \"10s\"",
            &format!(
                "[hooks.serial]\nconcurrency = 1\ncommand = '{}'",
                dir.timed("0.3")
            ),
        ),
    );
    for (response, _) in push_at_once(server.addr, "/", "serial", 3) {
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.json()["results"][0]["outcome"], "succeeded");
    }
    assert_one_at_a_time(&dir.intervals(), 3);
}

/// `count` intervals, none overlapping another.
fn assert_one_at_a_time(intervals: &[(f64, f64)], count: usize) {
    assert_eq!(intervals.len(), count, "{intervals:?}");
    for pair in intervals.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "runs overlap: {intervals:?}");
    }
}

#[test]
fn max_running_bounds_commands_across_hooks() {
    let dir = Dir::new();
    let server = Server::start(
        &dir,
        &config(
            "max_running = 1\nrespond_within = \"10s\"",
            &format!(
                "[hooks.one]\ncommand = '{t}'\n\n[hooks.two]\ncommand = '{t}'",
                t = dir.timed("0.3")
            ),
        ),
    );
    // Each push matches both hooks, which run at once but for max_running.
    for (response, _) in push_at_once(server.addr, "/", "mr", 2) {
        assert_eq!(response.status, 200, "{}", response.text());
    }
    assert_one_at_a_time(&dir.intervals(), 4);
}

#[test]
fn a_reload_that_changes_listen_or_journal_is_logged_as_needing_a_restart() {
    let dir = Dir::new();
    let hooks = dir.recorder_hook("any");
    let server = Server::start(&dir, &config("", &hooks));
    let elsewhere = free_addr();
    dir.write_config(&format!(
        "[server]\nlisten = \"{elsewhere}\"\njournal = \"other.db\"\n\n{hooks}\n"
    ));
    server.signal("HUP");
    for key in ["listen", "journal"] {
        let line = server.wait_for_log_line(Duration::from_secs(10), &["WARN", key, "restart"]);
        assert!(
            line.is_some(),
            "no warning that a new {key} needs a restart; log:\n{}",
            server.log_text()
        );
    }
    assert!(
        server
            .wait_for_log_line(Duration::from_secs(10), &["config reloaded"])
            .is_some(),
        "{}",
        server.log_text()
    );
    // Still where it was, journaling where it did.
    assert_eq!(server.post_seed("/", "rl1").status, 200);
    assert!(TcpStream::connect(elsewhere).is_err());
    let journal = rusqlite::Connection::open(dir.file("cmqhook.db")).expect("open");
    assert!(wait_for(Duration::from_secs(5), || {
        journal
            .query_row(
                "SELECT COUNT(*) FROM runs WHERE msg_id = 'rl1' AND outcome = 'succeeded'",
                [],
                |row| row.get::<_, i64>(0),
            )
            .is_ok_and(|count| count == 1)
    }));
    assert!(!dir.file("other.db").exists());
}

#[test]
fn a_full_hook_queue_answers_503_at_once_with_not_started() {
    let dir = Dir::new();
    let server = Server::start(
        &dir,
        &config(
            "",
            "[hooks.slow]\nconcurrency = 1\nqueue = 1\ncommand = 'sleep 2'",
        ),
    );
    let answers = push_at_once(server.addr, "/", "full", 4);
    let summary: Vec<(u16, Duration)> = answers
        .iter()
        .map(|(response, took)| (response.status, *took))
        .collect();
    let refused: Vec<&(Response, Duration)> = answers
        .iter()
        .filter(|(response, _)| response.status == 503)
        .collect();
    // One runs, one waits in the queue; the other two do not fit.
    assert_eq!(refused.len(), 2, "{summary:?}");
    for (response, took) in refused {
        assert!(*took < Duration::from_secs(1), "503 after {took:?}");
        assert!(response.header("retry-after").is_some());
        assert_eq!(
            response.json()["results"][0]["outcome"],
            "not_started",
            "{}",
            response.text()
        );
    }
    let ran = answers
        .iter()
        .filter(|(response, _)| response.status == 200)
        .count();
    assert_eq!(
        ran, 2,
        "the running and the queued push succeed: {summary:?}"
    );
}

/// `signal` drains: a running command finishes, `/healthz` and new pushes get 503 (with
/// `Retry-After`) meanwhile, and the server exits 0.
fn drains_on(signal: &str) {
    let dir = Dir::new();
    let mut server = Server::start(
        &dir,
        &config(
            "",
            &format!("[hooks.deploy]\ncommand = '{}'", dir.held_record("deploy")),
        ),
    );
    let addr = server.addr;
    assert_eq!(server.get("/healthz").status, 200);
    let push =
        std::thread::spawn(move || post(addr, "/", &[("x-cmq-message-id", "drain1")], b"deploy"));
    dir.wait_at_gate("deploy");
    server.signal(signal);

    let mut health = None;
    assert!(
        wait_for(Duration::from_secs(5), || {
            let response = server.get("/healthz");
            let draining = response.status == 503;
            health = Some(response);
            draining
        }),
        "/healthz during the drain: {health:?}"
    );
    let late = server.post("/", &[("x-cmq-message-id", "drain2")], b"late");
    assert_eq!(late.status, 503, "{}", late.text());
    let retry_after = late.header("retry-after").unwrap_or_default();
    assert!(
        retry_after.parse::<u64>().is_ok_and(|seconds| seconds > 0),
        "Retry-After: {retry_after:?}"
    );
    assert!(
        !push.is_finished(),
        "the push was answered before its run ended"
    );
    dir.open_gate("deploy");

    let response = push.join().expect("push thread");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.outcome(), "succeeded");
    assert_eq!(server.wait_exit(Duration::from_secs(15)), Some(0));
    let runs = dir.recorded();
    assert_eq!(runs.len(), 1, "the late push ran nothing");
    assert_eq!(runs[0].var("CMQ_MSG_ID"), Some("drain1"));
}

#[test]
fn sigterm_drains_a_running_command_refuses_new_pushes_and_exits_0() {
    drains_on("TERM");
}

#[test]
fn sigint_drains_like_sigterm() {
    drains_on("INT");
}

#[test]
fn an_idle_serve_exits_promptly_on_sigterm() {
    let dir = Dir::new();
    let mut server = Server::start(
        &dir,
        &config(
            "",
            "[hooks.quick]\npath = \"/quick\"\ncommand = \"true\"\n\n\
             [hooks.slow]\npath = \"/slow\"\ncommand = \"sleep 30\"\ntimeout = \"200ms\"",
        ),
    );
    // The journal has been written to, and a timed-out run has left zombies to PID 1.
    assert_eq!(
        server
            .post("/quick", &[("x-cmq-message-id", "idle1")], b"x")
            .status,
        200
    );
    assert_eq!(
        server
            .post("/slow", &[("x-cmq-message-id", "idle2")], b"x")
            .status,
        504
    );
    let signalled = Instant::now();
    server.signal("TERM");
    // Measured as the parent sees it (waitpid): an observer that polls with `kill -0` also
    // sees the exited process as long as it stays a zombie, which PID 1 may let it be for
    // seconds when cmqhook's parent is gone.
    assert_eq!(server.wait_exit(Duration::from_secs(1)), Some(0));
    eprintln!("exited {:?} after SIGTERM", signalled.elapsed());
    assert!(server.log_text().contains("stopped"));
}

#[test]
fn sigterm_kills_a_command_that_outlives_shutdown_grace_and_journals_it_interrupted() {
    let dir = Dir::new();
    let pid_file = dir.path().join("pid");
    let child_file = dir.path().join("child");
    let mut server = Server::start(
        &dir,
        &config(
            "shutdown_grace = \"1s\"",
            &format!(
                "[hooks.stuck]\nkill_grace = \"200ms\"\ncommand = 'sleep 30 & echo $! > {}; echo $$ > {}; wait'",
                child_file.display(),
                pid_file.display()
            ),
        ),
    );
    let addr = server.addr;
    let push = std::thread::spawn(move || post(addr, "/", &[("x-cmq-message-id", "stuck1")], b"x"));
    let pid = wait_for_pid(&pid_file);
    let child = wait_for_pid(&child_file);
    assert!(alive(pid) && alive(child));

    let signalled = Instant::now();
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(6)), Some(0));
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "exited after {took:?}, before shutdown_grace was over"
    );
    assert!(!alive(pid), "the command {pid} survived the shutdown");
    assert!(!alive(child), "its child {child} survived the shutdown");

    let response = push.join().expect("push thread");
    assert_eq!(response.status, 503, "{}", response.text());
    assert!(response.header("retry-after").is_some());
    assert_eq!(response.outcome(), "interrupted");
    let rows = dir.history(&["--msg-id", "stuck1"]);
    let outcomes: Vec<&str> = rows
        .iter()
        .filter(|row| row["hook"] == "stuck")
        .map(|row| row["outcome"].as_str().expect("outcome"))
        .collect();
    assert_eq!(outcomes, ["interrupted"], "{rows:?}");
}

#[test]
fn sighup_loads_a_new_hook() {
    let dir = Dir::new();
    let old = format!(
        "[hooks.old]\npath = \"/old\"\ncommand = '{}'",
        dir.record(0)
    );
    let server = Server::start(&dir, &config("", &old));
    assert_eq!(server.post("/new", &[], b"x").status, 404);

    let new = format!(
        "{old}\n\n[hooks.new]\npath = \"/new\"\ncommand = '{}'",
        dir.record(0)
    );
    dir.write_config(&config("", &new));
    server.signal("HUP");
    let mut last = 0;
    assert!(
        wait_for(Duration::from_secs(10), || {
            last = server.post("/new", &[], b"x").status;
            last == 200
        }),
        "the new hook answered {last}; log:\n{}",
        server.log_text()
    );
    assert_eq!(server.post("/old", &[], b"x").status, 200);
    let hooks: Vec<String> = dir
        .recorded()
        .iter()
        .filter_map(|run| run.var("CMQHOOK_HOOK").map(str::to_owned))
        .collect();
    assert!(hooks.contains(&"new".to_owned()), "{hooks:?}");
}

/// Whether `line` names `hooks.toml:LINE:COLUMN`.
fn names_hooks_toml_position(line: &str) -> bool {
    line.match_indices("hooks.toml:").any(|(at, found)| {
        let mut parts = line[at + found.len()..].splitn(3, ':');
        let number = |part: Option<&str>| {
            part.is_some_and(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
        };
        number(parts.next()) && number(parts.next())
    })
}

#[test]
fn sighup_with_a_broken_file_keeps_the_running_config() {
    let dir = Dir::new();
    let server = Server::start(
        &dir,
        &config(
            "",
            &format!(
                "[hooks.old]\npath = \"/old\"\ncommand = '{}'",
                dir.record(0)
            ),
        ),
    );
    assert_eq!(server.post("/old", &[], b"x").status, 200);

    dir.write_config(&config("", "[hooks.old\npath = \"/old\"\ncommand = 'true'"));
    server.signal("HUP");
    let error_line = || {
        server
            .log_text()
            .lines()
            .find(|line| line.contains("ERROR") && names_hooks_toml_position(line))
            .map(str::to_owned)
    };
    assert!(
        wait_for(Duration::from_secs(10), || error_line().is_some()),
        "no error line naming hooks.toml:LINE:COLUMN; log:\n{}",
        server.log_text()
    );
    assert!(alive(server.pid()));
    assert_eq!(server.post("/old", &[], b"x").status, 200);
    assert_eq!(dir.recorded().len(), 2);
}

/// Stops a server started with `--log-format json` and returns every line it logged.
fn stopped_json_log(server: &mut Server) -> Vec<serde_json::Value> {
    assert_eq!(server.stop(), Some(0));
    server
        .log_text()
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .filter(serde_json::Value::is_object)
                .unwrap_or_else(|| panic!("not a JSON object: {line:?}"))
        })
        .collect()
}

#[test]
fn a_run_has_a_log_line_of_its_own_only_when_the_push_line_cannot_tell_it() {
    let dir = Dir::new();
    let mut server = Server::builder(&dir)
        .config(&config(
            "respond_within = \"1s\"",
            &format!(
                "[hooks.ok]\npath = \"/ok\"\ncommand = 'true'\n\n\
             [hooks.bad]\npath = \"/bad\"\ncommand = 'exit 3'\n\n\
             [hooks.late]\npath = \"/late\"\ncommand = 'sleep 2; {}'",
                dir.record(0)
            ),
        ))
        .arg("--log-format")
        .arg("json")
        .start();
    assert_eq!(
        server
            .post("/ok", &[("x-cmq-message-id", "m-ok")], b"x")
            .status,
        200
    );
    assert_eq!(
        server
            .post("/bad", &[("x-cmq-message-id", "m-bad")], b"x")
            .status,
        500
    );
    assert_eq!(
        server
            .post("/late", &[("x-cmq-message-id", "m-late")], b"x")
            .status,
        503
    );
    assert!(wait_for(Duration::from_secs(10), || dir.recorded().len() == 1));
    let lines = stopped_json_log(&mut server);
    let of = |message: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|line| line["message"] == message)
            .map(|line| line["msg_id"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    // Every push has its line; a success answered in time has no other.
    assert_eq!(of("push"), ["m-ok", "m-bad", "m-late"]);
    assert_eq!(of("run finished"), ["m-bad", "m-late"]);
}

#[test]
fn output_is_logged_and_kept_whether_the_command_exits_at_once_runs_on_or_leaves_a_child() {
    let dir = Dir::new();
    let mut server = Server::builder(&dir).config(&config("", "[hooks.quick]\npath = \"/quick\"\ncommand = 'printf \"one\\ntwo\\nno newline\"; echo err >&2'\n\n\
         [hooks.slow]\npath = \"/slow\"\ncommand = 'sleep 0.2; echo late'\n\n\
         [hooks.parent]\npath = \"/parent\"\ncommand = '(sleep 0.3; echo from-background) & echo leader'")).arg("--log-format").arg("json").start();
    for (path, id) in [
        ("/quick", "o-quick"),
        ("/slow", "o-slow"),
        ("/parent", "o-parent"),
    ] {
        let response = server.post(path, &[("x-cmq-message-id", id)], b"x");
        assert_eq!(response.status, 200, "{}", response.text());
    }
    // The background child's line comes after its parent's answer.
    assert!(wait_for(Duration::from_secs(10), || server
        .log_text()
        .contains("from-background")));
    let lines = stopped_json_log(&mut server);
    let said = |id: &str| -> Vec<(String, String)> {
        lines
            .iter()
            .filter(|line| line["msg_id"] == id && line["stream"].is_string())
            .map(|line| {
                let text = |key: &str| line[key].as_str().unwrap_or("").to_owned();
                (text("stream"), text("message"))
            })
            .collect()
    };
    let pair = |stream: &str, text: &str| (stream.to_owned(), text.to_owned());
    let mut quick = said("o-quick");
    quick.sort();
    assert_eq!(
        quick,
        [
            pair("stderr", "err"),
            pair("stdout", "no newline"),
            pair("stdout", "one"),
            pair("stdout", "two")
        ]
    );
    assert_eq!(said("o-slow"), [pair("stdout", "late")]);
    assert_eq!(
        said("o-parent"),
        [pair("stdout", "leader"), pair("stdout", "from-background")]
    );
    let rows = dir.history(&["--msg-id", "o-quick"]);
    assert_eq!(rows[0]["stdout_tail"], "one\ntwo\nno newline", "{rows:?}");
    assert_eq!(rows[0]["stderr_tail"], "err\n", "{rows:?}");
    let rows = dir.history(&["--msg-id", "o-slow"]);
    assert_eq!(rows[0]["stdout_tail"], "late\n", "{rows:?}");
}

#[test]
fn serve_raises_a_low_soft_open_files_limit() {
    let dir = Dir::new();
    let server = Server::builder(&dir)
        .config(&config("", "[hooks.any]\ncommand = 'true'"))
        .open_files(256)
        .start();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).expect("limits");
    let open_files: Vec<u64> = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("an open files line")
        .split_whitespace()
        .filter_map(|field| field.parse().ok())
        .collect();
    let (soft, hard) = (open_files[0], open_files[1]);
    assert!(soft > 256, "soft limit still {soft}");
    assert_eq!(soft, hard.min(65_536), "{limits}");
    assert_eq!(server.post("/", &[], b"x").status, 200);
}

#[test]
fn json_logs_are_one_object_a_line_with_push_and_output_fields() {
    let dir = Dir::new();
    let mut server = Server::builder(&dir)
        .config(&config(
            "",
            "[hooks.say]\ncommand = 'echo first line; echo second line >&2'",
        ))
        .arg("--log-format")
        .arg("json")
        .start();
    let response = server.post(
        "/",
        &[("x-cmq-message-id", "json1"), ("x-cmq-request-id", "req1")],
        b"x",
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let lines = stopped_json_log(&mut server);
    let push = lines
        .iter()
        .find(|line| line["message"] == "push")
        .unwrap_or_else(|| panic!("no push line in {lines:#?}"));
    assert_eq!(push["msg_id"], "json1", "{push}");
    assert_eq!(push["request_id"], "req1", "{push}");
    assert_eq!(push["hooks"], "say", "{push}");
    assert_eq!(push["status"], 200, "{push}");
    assert!(push["duration_ms"].is_u64(), "{push}");
    for said in ["first line", "second line"] {
        let output = lines
            .iter()
            .find(|line| line["message"] == said)
            .unwrap_or_else(|| panic!("no line {said:?} in {lines:#?}"));
        assert_eq!(output["hook"], "say", "{output}");
        assert_eq!(output["msg_id"], "json1", "{output}");
    }
}

#[test]
fn route_prints_matching_hooks_in_config_order() {
    let dir = Dir::new();
    let config = dir.write_config(&config(
        "",
        "[hooks.zeta]\ntags = [\"web\"]\ncommand = 'true'\n\n\
         [hooks.topical]\ntopic = \"MyTopic\"\ntags = [\"web\", \"rare\"]\ncommand = 'true'\n\n\
         [hooks.alpha]\npath = \"/deploy\"\ncommand = 'true'",
    ));
    let config = config.to_str().expect("utf-8 path");
    let route = |args: &[&str]| {
        let mut all = vec!["route", "-c", config];
        all.extend_from_slice(args);
        cmqhook(&all, b"")
    };
    for (args, expected) in [
        (&["--path", "/deploy", "--tag", "web"][..], "zeta\nalpha\n"),
        (&["--tag", "web"][..], "zeta\n"),
        (&["--topic", "MyTopic", "--tag", "rare"][..], "topical\n"),
        (
            &["--path", "/deploy", "--topic", "MyTopic", "--tag", "web"][..],
            "zeta\ntopical\nalpha\n",
        ),
    ] {
        let output = route(args);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {}", both(&output));
        assert_eq!(text(&output.stdout), expected, "{args:?}");
    }
    // A hook with a topic selector never matches a push whose topic is unknown.
    for args in [&["--tag", "rare"][..], &["--path", "/nowhere"][..]] {
        let output = route(args);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {}", both(&output));
        assert_eq!(text(&output.stdout), "", "{args:?}");
    }
}

#[test]
fn run_runs_the_hook_locally_as_serve_would() {
    let dir = Dir::new();
    let config = dir.write_config(&config(
        "",
        &format!(
            "[hooks.rec]\ntags = [\"r\"]\nenv = {{ EXTRA = \"yes\" }}\ncommand = '{}'\n\n\
             [hooks.broken]\ntags = [\"bad\"]\ncommand = 'exit 3'",
            dir.record(0)
        ),
    ));
    let config = config.to_str().expect("utf-8 path");
    let body_file = dir.path().join("body");
    std::fs::write(&body_file, b"from a file\n\0end").expect("body file");

    let output = cmqhook(
        &[
            "run",
            "-c",
            config,
            "--tag",
            "r",
            "--msg-id",
            "RUN1",
            "--body-file",
            body_file.to_str().expect("utf-8 path"),
        ],
        b"not this",
    );
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));
    assert!(
        text(&output.stdout).contains("rec: succeeded"),
        "{}",
        both(&output)
    );
    let runs = dir.recorded();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].stdin, b"from a file\n\0end");
    runs[0].assert_vars(&[
        ("CMQ_MSG_ID", "RUN1"),
        ("CMQ_TOPIC", ""),
        ("CMQ_SUBSCRIPTION", ""),
        ("CMQ_TAGS", "r"),
        ("CMQ_FORMAT", "simplified"),
        ("CMQHOOK_HOOK", "rec"),
        ("CMQHOOK_ATTEMPT", "1"),
        ("EXTRA", "yes"),
    ]);
    assert!(runs[0].var("CMQ_REQUEST_ID").is_some());

    let output = cmqhook(
        &[
            "run",
            "-c",
            config,
            "--topic",
            "Orders",
            "--subscription",
            "billing",
            "--tag",
            "r",
            "--tag",
            "x",
        ],
        b"from stdin",
    );
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));
    let runs = dir.recorded();
    assert_eq!(runs.len(), 2);
    let run = &runs[1];
    assert_eq!(run.stdin, b"from stdin");
    run.assert_vars(&[
        ("CMQ_TOPIC", "Orders"),
        ("CMQ_SUBSCRIPTION", "billing"),
        ("CMQ_TAGS", "r,x"),
        ("CMQ_FORMAT", "json"),
        ("CMQHOOK_HOOK", "rec"),
    ]);
    assert!(run.var("CMQ_MSG_ID").is_some_and(|id| !id.is_empty()));

    let output = cmqhook(&["run", "-c", config, "--tag", "bad"], b"x");
    assert_ne!(output.status.code(), Some(0), "{}", both(&output));
    let said = both(&output);
    assert!(said.contains("broken") && said.contains("failed"), "{said}");
}

/// A request as the capture server read it.
#[derive(Debug)]
pub struct Captured {
    pub request_line: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Captured {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// A one-request HTTP server on 127.0.0.1: answers with `status` and a small body, then hands
/// the request back.
pub fn capture_one(status: &'static str) -> (SocketAddr, mpsc::Receiver<Captured>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let head_end = loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            let n = stream.read(&mut buf).expect("read request");
            assert!(n > 0, "connection closed in the request head");
            raw.extend_from_slice(&buf[..n]);
        };
        let head = text(&raw[..head_end]);
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default().to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .expect("Content-Length");
        let mut body = raw[head_end + 4..].to_vec();
        while body.len() < length {
            let n = stream.read(&mut buf).expect("read body");
            assert!(n > 0, "connection closed in the body");
            body.extend_from_slice(&buf[..n]);
        }
        let reply = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: 6\r\nConnection: close\r\n\r\nthanks"
        );
        stream.write_all(reply.as_bytes()).expect("answer");
        let _ = tx.send(Captured {
            request_line,
            headers,
            body,
        });
    });
    (addr, rx)
}

pub fn received(rx: &mpsc::Receiver<Captured>) -> Captured {
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the capture server got a request")
}

#[test]
fn send_posts_a_json_push_as_cmq_does() {
    let dir = Dir::new();
    let body_file = dir.path().join("body");
    std::fs::write(&body_file, "hello\nworld \u{1f680}").expect("body file");
    let (addr, rx) = capture_one("200 OK");
    let output = cmqhook(
        &[
            "send",
            &format!("http://{addr}/cmq/deploy"),
            "--topic",
            "MyTopic",
            "--subscription",
            "mysubscription",
            "--tag",
            "a",
            "--tag",
            "b",
            "--msg-id",
            "M1",
            "--request-id",
            "R1",
            "--body-file",
            body_file.to_str().expect("utf-8 path"),
        ],
        b"",
    );
    let request = received(&rx);
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("200") && stdout.contains("thanks"),
        "{stdout}"
    );

    assert_eq!(request.request_line, "POST /cmq/deploy HTTP/1.1");
    assert_eq!(request.header("content-type"), Some("text/plain"));
    assert_eq!(
        request.header("user-agent"),
        Some("Qcloud Notification Service Agent")
    );
    assert_eq!(request.header("x-cmq-message-id"), Some("M1"));
    assert_eq!(request.header("x-cmq-request-id"), Some("R1"));
    assert_eq!(request.header("x-cmq-message-tag"), Some("a, b"));
    let envelope: serde_json::Value =
        serde_json::from_slice(&request.body).expect("a JSON envelope");
    assert!(!envelope["TopicOwner"].is_null(), "TopicOwner: {envelope}");
    assert_eq!(envelope["topicName"], "MyTopic");
    assert_eq!(envelope["subscriptionName"], "mysubscription");
    assert_eq!(envelope["msgId"], "M1");
    assert_eq!(envelope["msgBody"], "hello\nworld \u{1f680}");
    assert!(
        envelope["publishTime"].is_u64() || envelope["publishTime"].is_string(),
        "publishTime: {envelope}"
    );
}

#[test]
fn send_generates_ids_that_are_not_given() {
    let (addr, rx) = capture_one("200 OK");
    let output = cmqhook(
        &["send", &format!("http://{addr}/"), "--topic", "T"],
        b"from stdin",
    );
    let request = received(&rx);
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));
    let msg_id = request.header("x-cmq-message-id").unwrap_or_default();
    assert!(!msg_id.is_empty(), "{request:?}");
    assert!(
        request
            .header("x-cmq-request-id")
            .is_some_and(|id| !id.is_empty()),
        "{request:?}"
    );
    let envelope: serde_json::Value =
        serde_json::from_slice(&request.body).expect("a JSON envelope");
    assert_eq!(envelope["msgId"], msg_id);
    assert_eq!(envelope["msgBody"], "from stdin");
}

#[test]
fn send_simplified_posts_the_raw_body() {
    let (addr, rx) = capture_one("200 OK");
    let body: Vec<u8> = b"raw {\"msgId\": 1}\n\0\xff end".to_vec();
    let output = cmqhook(
        &[
            "send",
            &format!("http://{addr}/cmq/simplified"),
            "--format",
            "simplified",
            "--msg-id",
            "S1",
            "--tag",
            "a",
        ],
        &body,
    );
    let request = received(&rx);
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));
    assert_eq!(request.request_line, "POST /cmq/simplified HTTP/1.1");
    assert_eq!(request.body, body);
    assert_eq!(request.header("content-type"), Some("text/plain"));
    assert_eq!(request.header("x-cmq-message-id"), Some("S1"));
    assert_eq!(request.header("x-cmq-message-tag"), Some("a"));
}

#[test]
fn send_exits_1_when_the_endpoint_does_not_answer_2xx() {
    let (addr, rx) = capture_one("500 Internal Server Error");
    let output = cmqhook(&["send", &format!("http://{addr}/")], b"x");
    received(&rx);
    assert_eq!(output.status.code(), Some(1), "{}", both(&output));
    assert!(text(&output.stdout).contains("500"), "{}", both(&output));
}

/// The secret the example configs' hooks take their path from.
const EXAMPLE_SECRET: &str = "example-secret-3f9c";

/// Serves the repository's example config `file` (relative to the repository) from a copy in
/// `dir`, with `examples/echo-message.sh` where the config expects it, on a free port.
fn serve_example(dir: &Dir, file: &str) -> Server {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(repo.join(file)).expect("the example config");
    let scripts = if file.starts_with("examples/") {
        dir.path().to_owned()
    } else {
        dir.file("examples")
    };
    std::fs::create_dir_all(&scripts).expect("scripts dir");
    // fs::copy keeps the executable bit.
    std::fs::copy(
        repo.join("examples/echo-message.sh"),
        scripts.join("echo-message.sh"),
    )
    .expect("copy the example hook");
    Server::builder(dir)
        .config(&text)
        .env("DEPLOY_SECRET", EXAMPLE_SECRET)
        .listen(free_addr())
        .start()
}

/// `cmqhook send URL ARGS` with `body`: the status line, and the hooks the answer names.
fn send(url: &str, args: &[&str], body: &[u8]) -> (String, Vec<String>) {
    let mut all = vec!["send", url];
    all.extend_from_slice(args);
    let output = cmqhook(&all, body);
    let stdout = text(&output.stdout);
    let mut lines = stdout.lines();
    let status = lines.next().unwrap_or_default().to_owned();
    let answer: serde_json::Value =
        serde_json::from_str(lines.next().unwrap_or_default()).unwrap_or_default();
    let hooks = answer["results"]
        .as_array()
        .map(|results| {
            results
                .iter()
                .filter_map(|result| result["hook"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    (status, hooks)
}

#[test]
fn send_to_the_example_config_is_answered_200() {
    let dir = Dir::new();
    let server = serve_example(&dir, "hooks.example.toml");
    let (status, hooks) = send(
        &format!("http://{}/", server.addr),
        &[
            "--topic",
            "MyTopic",
            "--subscription",
            "mysubscription",
            "--msg-id",
            "EX1",
        ],
        b"hello example",
    );
    assert_eq!(
        (status.as_str(), &hooks[..]),
        ("200 OK", &["echo".to_owned()][..])
    );
    let (status, hooks) = send(
        &format!("http://{}/cmq/simplified", server.addr),
        &["--format", "simplified", "--msg-id", "EX2"],
        b"hello simplified",
    );
    assert_eq!(
        (status.as_str(), &hooks[..]),
        ("200 OK", &["echo-simplified".to_owned()][..])
    );
    for said in [
        "hook echo got message EX1",
        "hook echo-simplified got message EX2",
    ] {
        assert!(
            server
                .wait_for_log_line(Duration::from_secs(5), &[said])
                .is_some(),
            "{}",
            server.log_text()
        );
    }
}

#[test]
fn the_production_example_routes_deploys_and_alerts_as_its_comments_say() {
    let dir = Dir::new();
    let server = serve_example(&dir, "examples/production.toml");
    let url = format!("http://{}/cmq/{EXAMPLE_SECRET}", server.addr);
    for (id, topic, subscription, tag, expected) in [
        ("P1", "deploy", "web-prod", "web", &["deploy-web"][..]),
        ("P2", "deploy", "api-prod", "all", &["deploy-api"]),
        (
            "P3",
            "ops-alerts",
            "oncall",
            "critical",
            &["page-oncall", "archive-alerts"],
        ),
        ("P4", "ops-alerts", "oncall", "info", &["archive-alerts"]),
    ] {
        let (status, hooks) = send(
            &url,
            &[
                "--topic",
                topic,
                "--subscription",
                subscription,
                "--tag",
                tag,
                "--msg-id",
                id,
            ],
            b"release 42",
        );
        assert_eq!(status, "200 OK", "{id}");
        assert_eq!(hooks, expected, "{id}");
    }
    // Without the secret, nothing matches.
    let (status, _) = send(
        &format!("http://{}/cmq/guess", server.addr),
        &[
            "--topic",
            "deploy",
            "--subscription",
            "web-prod",
            "--tag",
            "web",
        ],
        b"x",
    );
    assert_eq!(status, "404 Not Found");
    assert!(
        server
            .wait_for_log_line(Duration::from_secs(5), &["hook deploy-web got message P1"])
            .is_some(),
        "{}",
        server.log_text()
    );
}

#[test]
fn metrics_count_pushes_runs_dedup_hits_and_rejections_with_their_labels() {
    let dir = Dir::new();
    let server = Server::start(
        &dir,
        &config(
            "max_body = \"1 KiB\"",
            &format!(
                "[hooks.deploy]\npath = \"/\"\ncommand = '{}'\n\n[hooks.other]\npath = \"/other\"\nargv = [\"true\"]",
                dir.record(0)
            ),
        ),
    );
    assert_eq!(server.post_seed("/", "met1").status, 200);
    assert_eq!(server.post_seed("/", "met1").status, 200);
    assert_eq!(server.post_seed("/nowhere", "met2").status, 404);
    assert_eq!(server.post("/", &[], &[b'x'; 2048]).status, 413);
    let metrics = server.metrics();
    let deploy = [("hook", "deploy")];
    for (name, labels, value) in [
        ("cmqhook_pushes_total", &[("status", "200")][..], 2.0),
        ("cmqhook_pushes_total", &[("status", "404")], 1.0),
        ("cmqhook_pushes_total", &[("status", "413")], 1.0),
        (
            "cmqhook_runs_total",
            &[("hook", "deploy"), ("outcome", "succeeded")],
            1.0,
        ),
        ("cmqhook_run_duration_seconds_count", &deploy, 1.0),
        ("cmqhook_running", &deploy, 0.0),
        ("cmqhook_dedup_hits_total", &deploy, 1.0),
        ("cmqhook_queue_depth", &deploy, 0.0),
        (
            "cmqhook_rejected_pushes_total",
            &[("reason", "unmatched")],
            1.0,
        ),
        (
            "cmqhook_rejected_pushes_total",
            &[("reason", "too_large")],
            1.0,
        ),
    ] {
        assert_eq!(
            metrics.get(name, labels),
            Some(value),
            "{name}{labels:?} in:\n{}",
            metrics.text
        );
    }
    // Nothing else was counted.
    let pushes: f64 = metrics
        .samples
        .iter()
        .filter(|sample| sample.name == "cmqhook_pushes_total")
        .map(|sample| sample.value)
        .sum();
    assert_eq!(pushes, 4.0, "{}", metrics.text);
}

#[test]
fn per_hook_series_exist_at_0_from_start_and_for_hooks_a_reload_adds() {
    let dir = Dir::new();
    let hooks = "[hooks.deploy]\npath = \"/deploy\"\nargv = [\"true\"]\n\n[hooks.notify]\npath = \"/notify\"\nargv = [\"true\"]";
    let server = Server::start(&dir, &config("", hooks));
    let at_0 = |metrics: &Metrics, hook: &str| {
        for name in [
            "cmqhook_running",
            "cmqhook_dedup_hits_total",
            "cmqhook_queue_depth",
        ] {
            assert_eq!(
                metrics.get(name, &[("hook", hook)]),
                Some(0.0),
                "{name}{{hook={hook}}} in:\n{}",
                metrics.text
            );
        }
        for outcome in ["succeeded", "failed", "timed_out"] {
            assert_eq!(
                metrics.get(
                    "cmqhook_runs_total",
                    &[("hook", hook), ("outcome", outcome)]
                ),
                Some(0.0),
                "runs_total{{hook={hook},outcome={outcome}}} in:\n{}",
                metrics.text
            );
        }
    };
    let metrics = server.metrics();
    at_0(&metrics, "deploy");
    at_0(&metrics, "notify");
    dir.write_config(&config(
        "",
        &format!("{hooks}\n\n[hooks.later]\npath = \"/later\"\nargv = [\"true\"]"),
    ));
    server.signal("HUP");
    assert!(
        server
            .wait_for_log_line(Duration::from_secs(10), &["reloaded"])
            .is_some(),
        "{}",
        server.log_text()
    );
    at_0(&server.metrics(), "later");
}

#[test]
fn a_queued_run_is_withdrawn_when_draining_starts() {
    let dir = Dir::new();
    let mut server = Server::start(
        &dir,
        &config(
            "",
            &format!(
                "[hooks.serial]\nconcurrency = 1\ncommand = 'if [ \"$CMQ_MSG_ID\" = A ]; then {}; fi; {}'",
                dir.gate("a", 20),
                dir.record(0)
            ),
        ),
    );
    let addr = server.addr;
    let first = std::thread::spawn(move || post(addr, "/", &[("x-cmq-message-id", "A")], b"a"));
    dir.wait_at_gate("a");
    let second = std::thread::spawn(move || post(addr, "/", &[("x-cmq-message-id", "B")], b"b"));
    assert!(wait_for(Duration::from_secs(5), || {
        server
            .metrics()
            .get("cmqhook_queue_depth", &[("hook", "serial")])
            == Some(1.0)
    }));
    server.signal("TERM");
    // Answered while A still runs: the drain withdrew it.
    let second = second.join().expect("second");
    assert_eq!(second.status, 503, "{}", second.text());
    assert_eq!(second.outcome(), "not_started");
    assert!(!first.is_finished());
    dir.open_gate("a");
    assert_eq!(first.join().expect("first").status, 200);
    assert_eq!(server.wait_exit(Duration::from_secs(30)), Some(0));
    assert_eq!(recorded_ids(&dir), ["A"]);
}

#[test]
fn a_hook_removed_by_reload_finishes_its_running_run() {
    let dir = Dir::new();
    let server = Server::start(
        &dir,
        &config(
            "",
            &format!(
                "[hooks.old]\npath = \"/old\"\ncommand = '{}'",
                dir.held_record("old")
            ),
        ),
    );
    let addr = server.addr;
    let push = std::thread::spawn(move || post(addr, "/old", &[("x-cmq-message-id", "r1")], b"x"));
    dir.wait_at_gate("old");
    dir.write_config(&config(
        "",
        "[hooks.new]\npath = \"/new\"\nargv = [\"true\"]",
    ));
    server.signal("HUP");
    assert!(wait_for(Duration::from_secs(10), || {
        server.post("/new", &[], b"").status == 200
    }));
    assert!(!push.is_finished());
    dir.open_gate("old");
    assert_eq!(push.join().expect("push").status, 200);
    assert_eq!(dir.recorded().len(), 1);
    assert_eq!(
        server
            .post("/old", &[("x-cmq-message-id", "r2")], b"x")
            .status,
        404
    );
}

/// A command for the reload tests of slots: notes when it starts (`started.ID`, ID being its
/// message id), waits at the gate `gate.ID`, notes when it got past it (`passed.ID`), then
/// runs the recorder.
fn gated_by_msg_id(dir: &Dir) -> String {
    let d = dir.path().display();
    format!(
        "date +%s.%N > {d}/started.$CMQ_MSG_ID; {}; date +%s.%N > {d}/passed.$CMQ_MSG_ID; {}",
        dir.gate("gate.$CMQ_MSG_ID", 20),
        dir.record(0)
    )
}

/// The time, in seconds, that a [`gated_by_msg_id`] run noted in `what.ID` (`started`,
/// `passed`).
fn noted_time(dir: &Dir, what: &str, id: &str) -> f64 {
    wait_for_line(&dir.file(&format!("{what}.{id}")))
        .parse()
        .expect("a time")
}

/// Writes `text` to `hooks.toml`, sends SIGHUP and waits until the server logged that it
/// reloaded once more.
fn reload_with(server: &Server, dir: &Dir, text: &str) {
    let reloads = || server.log_text().matches("config reloaded").count();
    let before = reloads();
    dir.write_config(text);
    server.signal("HUP");
    assert!(
        wait_for(Duration::from_secs(10), || reloads() > before),
        "no new `config reloaded` line; log:\n{}",
        server.log_text()
    );
}

/// Waits until the [`gated_by_msg_id`] run `id` of `hook` waits in the hook's queue, or
/// started; asserts that it has not started: `why` if it has.
fn assert_waits_for_a_slot(server: &Server, dir: &Dir, hook: &str, id: &str, why: &str) {
    let started = dir.file(&format!("started.{id}"));
    let queued = || {
        server
            .metrics()
            .get("cmqhook_queue_depth", &[("hook", hook)])
            == Some(1.0)
    };
    assert!(
        wait_for(Duration::from_secs(10), || started.exists() || queued()),
        "run {id} neither started nor waits for a slot; log:\n{}",
        server.log_text()
    );
    assert!(!started.exists(), "{why}");
}

/// A push with message id (and body) `id` to `/`, sent from a thread of its own: join it for
/// the answer.
fn push_from_a_thread(addr: SocketAddr, id: &'static str) -> std::thread::JoinHandle<Response> {
    std::thread::spawn(move || post(addr, "/", &[("x-cmq-message-id", id)], id.as_bytes()))
}

/// The message ids the recorder saw, oldest first.
fn recorded_ids(dir: &Dir) -> Vec<String> {
    dir.recorded()
        .iter()
        .filter_map(|run| run.var("CMQ_MSG_ID").map(str::to_owned))
        .collect()
}

#[test]
fn a_reload_that_changes_queue_keeps_concurrency_1_while_a_run_is_going() {
    let dir = Dir::new();
    let command = gated_by_msg_id(&dir);
    let with_queue = |queue: usize| {
        config(
            "respond_within = \"30s\"",
            &format!("[hooks.serial]\nconcurrency = 1\nqueue = {queue}\ncommand = '{command}'"),
        )
    };
    let server = Server::start(&dir, &with_queue(1));
    let push = |id| push_from_a_thread(server.addr, id);
    let first = push("A");
    dir.wait_at_gate("gate.A");
    reload_with(&server, &dir, &with_queue(5));

    let second = push("B");
    assert_waits_for_a_slot(
        &server,
        &dir,
        "serial",
        "B",
        "B started while A still runs: the reload lost `concurrency = 1`",
    );
    dir.open_gate("gate.A");
    assert_eq!(first.join().expect("push A").status, 200);
    // Once A is over, B runs.
    dir.wait_at_gate("gate.B");
    dir.open_gate("gate.B");
    assert_eq!(second.join().expect("push B").status, 200);
    assert!(noted_time(&dir, "started", "B") >= noted_time(&dir, "passed", "A"));
    assert_eq!(recorded_ids(&dir), ["A", "B"]);
}

#[test]
fn max_running_changed_by_reload_counts_the_runs_still_going() {
    let dir = Dir::new();
    let command = gated_by_msg_id(&dir);
    let with_max_running = |max_running: usize| {
        config(
            &format!("max_running = {max_running}\nrespond_within = \"30s\""),
            &format!("[hooks.held]\ncommand = '{command}'"),
        )
    };
    let server = Server::start(&dir, &with_max_running(1));
    let push = |id| push_from_a_thread(server.addr, id);
    let a = push("A");
    dir.wait_at_gate("gate.A");
    let b = push("B");
    assert_waits_for_a_slot(
        &server,
        &dir,
        "held",
        "B",
        "B started beside A: max_running = 1",
    );

    // 1 -> 2: the run waiting starts at once, beside A.
    reload_with(&server, &dir, &with_max_running(2));
    dir.wait_at_gate("gate.B");

    // 2 -> 1 with two running: nothing new starts until both are over.
    reload_with(&server, &dir, &with_max_running(1));
    let c = push("C");
    assert_waits_for_a_slot(
        &server,
        &dir,
        "held",
        "C",
        "C started beside A and B after max_running went back to 1",
    );
    dir.open_gate("gate.A");
    assert_eq!(a.join().expect("push A").status, 200);
    assert!(
        !dir.file("started.C").exists(),
        "C started beside B, with max_running = 1"
    );
    dir.open_gate("gate.B");
    assert_eq!(b.join().expect("push B").status, 200);
    dir.wait_at_gate("gate.C");
    dir.open_gate("gate.C");
    assert_eq!(c.join().expect("push C").status, 200);
    // Not merely after A's answer: after B got past its gate too.
    assert!(
        noted_time(&dir, "started", "C") >= noted_time(&dir, "passed", "B"),
        "C started while B still ran"
    );
    assert_eq!(recorded_ids(&dir), ["A", "B", "C"]);
}

#[test]
fn a_signal_as_soon_as_serve_says_it_listens_is_handled() {
    let dir = Dir::new();
    let config = dir.write_config(&config("", "[hooks.x]\npath = \"/x\"\nargv = [\"true\"]"));
    let mut command = cmqhook_command(&["serve", "-c", config.to_str().expect("utf-8 path")]);
    let mut child = command
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start cmqhook");
    let stderr = child.stderr.take().expect("stderr");
    let (lines, said) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    // A shell waits, ready to send SIGHUP the moment it reads a line: quicker than starting
    // `kill` then.
    let mut sender = std::process::Command::new("sh")
        .args(["-c", "read go; kill -HUP $0", &child.id().to_string()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("start sh");
    let next_line = || said.recv_timeout(Duration::from_secs(10)).ok();
    while let Some(line) = next_line() {
        if line.contains("listening on") {
            break;
        }
    }
    let mut go = sender.stdin.take().expect("stdin");
    std::io::Write::write_all(&mut go, b"go\n").expect("send go");
    assert!(sender.wait().expect("wait for sh").success());
    let mut reloaded = false;
    while let Some(line) = next_line() {
        if line.contains("config reloaded") {
            reloaded = true;
            break;
        }
    }
    let status = child.try_wait().expect("try_wait");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, None, "the SIGHUP ended serve");
    assert!(reloaded, "no `config reloaded` line");
}

#[test]
#[ignore = "needs systemd-analyze (package systemd)"]
fn the_systemd_unit_verifies_and_stays_sandboxed() {
    let version = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .unwrap_or_else(|err| panic!("needs systemd-analyze: {err} (apt-get install systemd)"));
    assert!(version.status.success());
    let dir = Dir::new();
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/cmqhook.service"),
    )
    .expect("read the unit");
    // verify checks that the programs exist: point them at the built binary.
    let unit = unit.replace("/usr/local/bin/cmqhook", BIN);
    assert!(
        unit.contains(&format!("ExecStartPre={BIN} check")),
        "{unit}"
    );
    let file = dir.file("cmqhook.service");
    std::fs::write(&file, unit).expect("write the unit");
    let file = file.to_str().expect("utf-8 path");
    let verify = std::process::Command::new("systemd-analyze")
        .args(["verify", file])
        .output()
        .expect("run systemd-analyze verify");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "{}",
        text(&verify.stderr)
    );
    let security = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", file])
        .output()
        .expect("run systemd-analyze security");
    let report = text(&security.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|line| {
            line.split("Overall exposure level for cmqhook.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|score| score.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}{}", text(&security.stderr)));
    assert!(exposure <= 2.0, "exposure {exposure}:\n{report}");
}
