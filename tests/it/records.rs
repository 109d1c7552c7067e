//! Run records (SPEC §10, §4 `log_output`): each run's output kept with it (stdout and stderr
//! interleaved, lines marked, head and tail with a cut marker, secrets redacted), `cmqhook
//! show`, run ids and the last stderr line in `history`, and the `log_output` limit.

use std::path::Path;
use std::time::Duration;

use crate::harness::*;

/// `cmqhook show RUN_ID ARGS -c CONFIG`.
pub fn show(config: &Path, run_id: i64, args: &[&str]) -> std::process::Output {
    let id = run_id.to_string();
    let mut all = vec!["show", "-c", config.to_str().expect("utf-8 path"), &id];
    all.extend_from_slice(args);
    cmqhook(&all, b"")
}

/// `show RUN_ID --json`: the run's object; panics unless it exits 0.
pub fn shown(config: &Path, run_id: i64) -> serde_json::Value {
    let output = show(config, run_id, &["--json"]);
    assert!(output.status.success(), "{}", both(&output));
    serde_json::from_slice(&output.stdout).expect("one JSON object")
}

/// The run id of a `history --json` row.
pub fn run_id(row: &serde_json::Value) -> i64 {
    row["run_id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no run_id in {row}"))
}

/// The run of `msg_id`, once it has ended.
fn settled_run(dir: &Dir, msg_id: &str) -> serde_json::Value {
    let rows = dir.settled_history(&["--msg-id", msg_id], Duration::from_secs(20));
    assert_eq!(rows.len(), 1, "{rows:#?}");
    shown(&dir.config_file(), run_id(&rows[0]))
}

/// The numbers of a cut marker line `[… N lines (M bytes) not kept …]` in `output`.
pub fn cut_of(output: &str) -> Option<(u64, u64)> {
    let line = output.lines().find(|line| line.starts_with("[… "))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let lines = words.get(1)?.parse().ok()?;
    let bytes = words.get(3)?.trim_start_matches('(').parse().ok()?;
    Some((lines, bytes))
}

#[test]
fn long_output_is_kept_as_its_head_and_tail_with_a_marker_of_what_was_cut() {
    let dir = Dir::new();
    let server = Server::builder(&dir)
        .config(&config(
            "log_output = 0",
            "[hooks.counts]\ncommand = 'seq 1 200000'",
        ))
        .start();
    let response = server.post("/", &[("x-cmq-message-id", "long1")], b"");
    assert_eq!(response.status, 200, "{}", response.text());
    let run = settled_run(&dir, "long1");
    let output = run["output"].as_str().expect("output is text");
    assert!(output.starts_with("out| 1\nout| 2\nout| 3\n"), "{output}");
    assert!(output.ends_with("out| 199999\nout| 200000\n"), "{output}");
    // The first 4 KiB and the last 60 KiB (the default keep_output of 64 KiB).
    let (head, tail) = output.split_once("[… ").expect("a cut marker");
    assert!(head.len() <= 4096 && head.len() > 4000, "{}", head.len());
    let tail = tail.split_once('\n').expect("the marker is a line").1;
    assert!(
        tail.len() <= 60 * 1024 && tail.len() > 60 * 1024 - 100,
        "{}",
        tail.len()
    );
    // Every line is kept whole or counted as cut; so is every byte.
    let (cut_lines, cut_bytes) = cut_of(output).expect("the marker's numbers");
    let kept: Vec<&str> = head.lines().chain(tail.lines()).collect();
    assert_eq!(kept.len() as u64 + cut_lines, 200_000);
    let total: u64 = (1..=200_000u64)
        .map(|n| n.to_string().len() as u64 + 1)
        .sum();
    let kept_bytes: u64 = kept.iter().map(|line| line.len() as u64 - 5 + 1).sum();
    assert_eq!(kept_bytes + cut_bytes, total);
}

#[test]
fn kept_output_interleaves_stdout_and_stderr_as_they_came_each_line_marked() {
    let dir = Dir::new();
    // Each line is written only once the one before it was read (it is logged once read).
    let command = format!(
        "echo first; {}; echo second >&2; {}; echo third",
        dir.gate("a", 20),
        dir.gate("b", 20)
    );
    let server = Server::start(
        &dir,
        &config(
            "respond_within = \"60s\"",
            &format!("[hooks.talks]\ncommand = '{command}'"),
        ),
    );
    std::thread::scope(|scope| {
        let push = scope.spawn(|| server.post("/", &[("x-cmq-message-id", "mix1")], b""));
        for (said, gate) in [("first", "a"), ("second", "b")] {
            assert!(
                server
                    .wait_for_log_line(Duration::from_secs(20), &["cmqhook::output", said])
                    .is_some(),
                "{}",
                server.log_text()
            );
            dir.open_gate(gate);
        }
        let response = push.join().expect("the push");
        assert_eq!(response.status, 200, "{}", response.text());
    });
    let run = settled_run(&dir, "mix1");
    assert_eq!(
        run["output"], "out| first\nerr| second\nout| third\n",
        "{run}"
    );
}

#[test]
fn secrets_are_redacted_in_kept_output_also_where_a_long_line_is_cut() {
    let dir = Dir::new();
    let secret = "s3cr3t-t0ken-value";
    // A line longer than 4 KiB is logged and kept in pieces: the pipe holds its first 5000
    // bytes and the start of the secret until a piece of it is logged; then comes the rest
    // of the secret, in another read.
    let command = format!(
        "head -c 5000 /dev/zero | tr \"\\\\0\" x; printf s3cr; {}; echo \"3t-t0ken-value end\"; echo \"token {secret}\" >&2",
        dir.gate("piece", 20)
    );
    let server = Server::builder(&dir)
        .config(&config(
            "token = \"${CMQHOOK_TOKEN}\"\nrespond_within = \"60s\"",
            &format!("[hooks.leaks]\ncommand = '{command}'"),
        ))
        .env("CMQHOOK_TOKEN", secret)
        .start();
    let response = std::thread::scope(|scope| {
        let push = scope.spawn(|| {
            server.post(
                &format!("/?token={secret}"),
                &[("x-cmq-message-id", "leak1")],
                b"",
            )
        });
        assert!(
            server
                .wait_for_log_line(Duration::from_secs(20), &["cmqhook::output", "xxxxxxxxxx"])
                .is_some(),
            "{}",
            server.log_text()
        );
        dir.open_gate("piece");
        push.join().expect("the push")
    });
    // Answered 200 once its end is journaled.
    assert_eq!(response.status, 200, "{}", response.text());
    let config = dir.config_file();
    let config = config.to_str().expect("utf-8 path");
    let with_token = |args: &[&str]| {
        let mut command = cmqhook_command(args);
        command.env("CMQHOOK_TOKEN", secret);
        let output = output_of(command, b"");
        assert!(output.status.success(), "{}", both(&output));
        text(&output.stdout)
    };
    let rows = with_token(&["history", "-c", config, "--json"]);
    let row: serde_json::Value = serde_json::from_str(rows.trim()).expect("one run");
    let id = run_id(&row).to_string();
    let run: serde_json::Value =
        serde_json::from_str(&with_token(&["show", "-c", config, &id, "--json"])).expect("JSON");
    let output = run["output"].as_str().expect("output is text");
    assert!(!output.contains("s3cr"), "{output}");
    assert!(output.contains("${CMQHOOK_TOKEN} end\n"), "{output}");
    assert!(output.contains("err| token ${CMQHOOK_TOKEN}\n"), "{output}");
    // Nor in the log.
    let log = server.log_text();
    assert!(!log.contains("s3cr"), "{log}");
    assert!(log.contains("${CMQHOOK_TOKEN} end"), "{log}");
}

#[test]
fn show_prints_every_field_of_a_run_and_its_output_and_json_is_the_same_run() {
    let dir = Dir::new();
    let server = Server::start(
        &dir,
        &config(
            "",
            "[hooks.deploy]\ncommand = 'echo building; echo \"no space left\" >&2; exit 3'",
        ),
    );
    let response = server.post(
        "/",
        &seed_headers("show1"),
        seed_envelope("show1").as_bytes(),
    );
    assert_eq!(response.status, 500, "{}", response.text());
    let rows = dir.settled_history(&["--msg-id", "show1"], Duration::from_secs(20));
    let id = run_id(&rows[0]);
    let run = shown(&dir.config_file(), id);
    assert_eq!(run["id"], id);
    assert_eq!(run["hook"], "deploy");
    assert_eq!(run["msg_id"], "show1");
    assert_eq!(run["request_id"], "2394928734");
    assert_eq!(run["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(run["attempt"], 1);
    assert_eq!(run["outcome"], "failed");
    assert_eq!(run["exit_code"], 3);
    assert_eq!(run["signal"], serde_json::Value::Null);
    assert_eq!(run["topic"], "MyTopic");
    assert_eq!(run["subscription"], "mysubscription");
    assert_eq!(run["replay"], false);
    assert_eq!(run["superseded"], false);
    assert!(run["duration_ms"].is_u64(), "{run}");
    let started = run["started_at"].as_str().expect("started_at");
    assert!(
        humantime::parse_rfc3339(started).is_ok(),
        "not RFC 3339: {started}"
    );
    assert_eq!(run["output"], "out| building\nerr| no space left\n");

    let output = show(&dir.config_file(), id, &[]);
    assert!(output.status.success(), "{}", both(&output));
    let shown = text(&output.stdout);
    for line in [
        &format!("run           {id}"),
        "hook          deploy",
        "message id    show1",
        "request id    2394928734",
        "tags          a,b",
        "attempt       1",
        "outcome       failed, exit code 3",
        "topic         MyTopic",
        "subscription  mysubscription",
        "replay        no",
        "output:\nout| building\nerr| no space left\n",
    ] {
        assert!(shown.contains(line), "{line:?} not in:\n{shown}");
    }
}

#[test]
fn show_exits_1_for_an_unknown_run_or_with_the_journal_off() {
    let dir = Dir::new();
    let server = Server::start(&dir, &config("", "[hooks.x]\ncommand = 'true'"));
    assert_eq!(
        server
            .post("/", &[("x-cmq-message-id", "known")], b"")
            .status,
        200
    );
    dir.settled_history(&["--msg-id", "known"], Duration::from_secs(20));
    let output = show(&dir.config_file(), 999_999, &[]);
    assert_eq!(output.status.code(), Some(1), "{}", both(&output));
    assert!(
        text(&output.stderr).contains("no run 999999"),
        "{}",
        both(&output)
    );
    let off = Dir::new();
    off.write_config(&config("journal = \"off\"", "[hooks.x]\ncommand = 'true'"));
    let output = show(&off.config_file(), 1, &[]);
    assert_eq!(output.status.code(), Some(1), "{}", both(&output));
    assert!(
        text(&output.stderr).contains("the journal is off"),
        "{}",
        both(&output)
    );
}

#[test]
fn history_names_run_ids_and_ends_a_failed_runs_line_with_its_last_stderr_line() {
    let dir = Dir::new();
    let long = "e".repeat(200);
    let server = Server::start(
        &dir,
        &config(
            "",
            &format!(
                "[hooks.ok]\npath = \"/ok\"\ncommand = 'echo fine >&2'\n\n\
                 [hooks.bad]\npath = \"/bad\"\ncommand = 'echo first >&2; echo \"disk\\tfull\" >&2; echo out; exit 2'\n\n\
                 [hooks.long]\npath = \"/long\"\ncommand = 'echo {long} >&2; exit 1'"
            ),
        ),
    );
    for (path, id) in [("/ok", "h-ok"), ("/bad", "h-bad"), ("/long", "h-long")] {
        server.post(path, &[("x-cmq-message-id", id)], b"");
    }
    let rows = dir.settled_history(&[], Duration::from_secs(20));
    assert_eq!(rows.len(), 3, "{rows:#?}");
    let config = dir.config_file();
    let output = cmqhook(&["history", "-c", config.to_str().expect("utf-8")], b"");
    assert!(output.status.success(), "{}", both(&output));
    let listed = text(&output.stdout);
    let line_of = |msg_id: &str| -> String {
        listed
            .lines()
            .find(|line| line.contains(&format!("msg={msg_id} ")))
            .unwrap_or_else(|| panic!("no line for {msg_id} in:\n{listed}"))
            .to_owned()
    };
    for row in &rows {
        let msg_id = row["msg_id"].as_str().expect("msg_id");
        let line = line_of(msg_id);
        assert!(line.contains(&format!("  run={}  ", run_id(row))), "{line}");
    }
    // Escaped, and only for a failed run.
    assert!(line_of("h-bad").ends_with(r"  -- disk\tfull"), "{listed}");
    assert!(!line_of("h-ok").contains("-- fine"), "{listed}");
    let cut = format!("  -- {}…", "e".repeat(120));
    assert!(line_of("h-long").ends_with(&cut), "{listed}");
}

#[test]
fn log_output_limits_the_logged_lines_and_then_says_what_was_not_logged() {
    let dir = Dir::new();
    let server = Server::start(
        &dir,
        &config(
            "log_output = 5",
            "[hooks.counts]\npath = \"/counts\"\ncommand = 'seq 1 100'\n\n\
             [hooks.silent]\npath = \"/silent\"\ncommand = 'echo hush'\nlog_output = 0\n\n\
             [hooks.every]\npath = \"/every\"\ncommand = 'seq 1 20'\nlog_output = \"all\"",
        ),
    );
    for (path, id) in [
        ("/counts", "lo-counts"),
        ("/silent", "lo-silent"),
        ("/every", "lo-every"),
    ] {
        let response = server.post(path, &[("x-cmq-message-id", id)], b"");
        assert_eq!(response.status, 200, "{}", response.text());
    }
    let counts = dir.settled_history(&["--msg-id", "lo-counts"], Duration::from_secs(20));
    let id = run_id(&counts[0]);
    // Lines 6 to 100: 4 of 2 bytes, 90 of 3, and `100\n`.
    let summary = format!(
        "95 lines (282 bytes) of output not logged (log_output = 5); `cmqhook show {id}` has the kept output"
    );
    let said = server
        .wait_for_log_line(Duration::from_secs(10), &[&summary])
        .unwrap_or_else(|| panic!("no summary line in:\n{}", server.log_text()));
    assert!(said.contains("msg_id=\"lo-counts\""), "{said}");
    assert!(
        server
            .wait_for_log_line(
                Duration::from_secs(10),
                &["1 line (5 bytes) of output not logged (log_output = 0)"]
            )
            .is_some(),
        "{}",
        server.log_text()
    );
    let log = server.log_text();
    let output_of = |msg_id: &str| -> Vec<String> {
        log.lines()
            .filter(|line| {
                line.contains("cmqhook::output")
                    && line.contains(&format!("msg_id=\"{msg_id}\""))
                    && line.contains("stream=")
            })
            .map(|line| {
                line.split("cmqhook::output: ")
                    .nth(1)
                    .and_then(|rest| rest.split(" hook=").next())
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    };
    assert_eq!(output_of("lo-counts"), ["1", "2", "3", "4", "5"], "{log}");
    assert!(output_of("lo-silent").is_empty(), "{log}");
    let every: Vec<String> = (1..=20).map(|n| n.to_string()).collect();
    assert_eq!(output_of("lo-every"), every, "{log}");
    assert!(!log.contains("lo-every\" not_logged"), "{log}");
    // What was not logged is kept all the same.
    let run = shown(&dir.config_file(), id);
    let kept = run["output"].as_str().expect("output");
    assert!(kept.ends_with("out| 99\nout| 100\n"), "{kept}");
    assert_eq!(kept.lines().count(), 100, "{kept}");
}
