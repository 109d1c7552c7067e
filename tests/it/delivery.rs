//! Delivery guarantees through the built binary: the journal, dedup across retries and
//! restarts, answering within `respond_within`, and runs that outlive their requests.

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;

#[test]
fn the_same_message_twice_runs_once_and_both_get_200() {
    let dir = Dir::new();
    let server = Server::start(&dir, &config("", &dir.recorder_hook("deploy")));
    let first = server.post_seed("/", "dup1");
    let second = server.post_seed("/", "dup1");
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(first.json()["results"][0]["deduplicated"], false);
    assert_eq!(second.json()["results"][0]["deduplicated"], true);
    assert_eq!(second.json()["results"][0]["outcome"], "succeeded");
    assert_eq!(dir.recorded().len(), 1);
    // Another message id is another run.
    assert_eq!(server.post_seed("/", "dup2").status, 200);
    assert_eq!(dir.recorded().len(), 2);
}

/// Waits (at most 10 s) until the server counted `count` dedup hits for `hook`: pushes that
/// joined a running run or found a success.
fn wait_for_dedup_hits(server: &Server, hook: &str, count: f64) {
    let mut hits = None;
    assert!(
        wait_for(Duration::from_secs(10), || {
            hits = server
                .metrics()
                .get("cmqhook_dedup_hits_total", &[("hook", hook)]);
            hits == Some(count)
        }),
        "dedup hits of {hook}: {hits:?}, not {count}"
    );
}

#[test]
fn concurrent_pushes_of_one_message_start_one_process() {
    let dir = Dir::new();
    let server = Server::start(
        &dir,
        &config(
            "",
            &format!("[hooks.slow]\ncommand = '{}'", dir.held_record("run")),
        ),
    );
    let addr = server.addr;
    let threads: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                post(
                    addr,
                    "/",
                    &seed_headers("same1"),
                    seed_envelope("same1").as_bytes(),
                )
            })
        })
        .collect();
    // All three are in: one runs it (held at the gate), two joined that run.
    dir.wait_at_gate("run");
    wait_for_dedup_hits(&server, "slow", 2.0);
    dir.open_gate("run");
    let responses: Vec<Response> = threads
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    for response in &responses {
        assert_eq!(response.status, 200, "{}", response.text());
    }
    let fresh = responses
        .iter()
        .filter(|r| r.json()["results"][0]["deduplicated"] == false)
        .count();
    assert_eq!(fresh, 1, "exactly one push ran it");
    assert_eq!(dir.recorded().len(), 1);
}

#[test]
fn a_failed_run_is_retried_with_the_next_attempt_number() {
    let dir = Dir::new();
    let mark = dir.path().join("failed-once");
    let server = Server::start(
        &dir,
        &config(
            "",
            &format!(
                "[hooks.flaky]\ncommand = 'if [ -e {m} ]; then {ok}; else touch {m}; {fail}; fi'",
                m = mark.display(),
                ok = dir.record(0),
                fail = dir.record(1)
            ),
        ),
    );
    assert_eq!(server.post_seed("/", "flaky1").status, 500);
    assert_eq!(server.post_seed("/", "flaky1").status, 200);
    assert_eq!(server.post_seed("/", "flaky1").status, 200);
    assert_eq!(dir.attempts(), ["1", "2"]);
    // The journal commits a few milliseconds after the answer.
    let mut rows = Vec::new();
    assert!(wait_for(Duration::from_secs(5), || {
        rows = dir.history(&["--msg-id", "flaky1"]);
        rows.len() == 2 && rows.iter().all(|row| row["outcome"] != "running")
    }));
    let rows: Vec<(i64, &str)> = rows
        .iter()
        .map(|row| {
            (
                row["attempt"].as_i64().expect("attempt"),
                row["outcome"].as_str().expect("outcome"),
            )
        })
        .collect();
    assert_eq!(rows, [(2, "succeeded"), (1, "failed")]);
}

#[test]
fn a_success_is_remembered_across_a_restart() {
    let dir = Dir::new();
    let mut server = Server::start(&dir, &config("", &dir.recorder_hook("deploy")));
    assert_eq!(server.post_seed("/", "keep1").status, 200);
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(30)), Some(0));
    let server = Server::builder(&dir).start();
    let again = server.post_seed("/", "keep1");
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["results"][0]["deduplicated"], true);
    assert_eq!(dir.recorded().len(), 1);
}

#[test]
fn an_outcome_not_known_within_respond_within_gets_503_and_the_retry_finds_it() {
    let dir = Dir::new();
    let server = Server::start(
        &dir,
        &config(
            "respond_within = \"2s\"",
            &format!("[hooks.slow]\ncommand = 'sleep 4; {}'", dir.record(0)),
        ),
    );
    let started = Instant::now();
    let first = server.post_seed("/", "late1");
    let took = started.elapsed();
    assert_eq!(first.status, 503, "{}", first.text());
    assert!(first.header("retry-after").is_some());
    assert_eq!(first.json()["results"][0]["outcome"], "running");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "answered after {took:?}"
    );
    // The run goes on without its request; CMQ's retry finds its outcome.
    assert!(wait_for(Duration::from_secs(20), || dir.recorded().len() == 1));
    let retry = server.post_seed("/", "late1");
    assert_eq!(retry.status, 200, "{}", retry.text());
    assert_eq!(retry.json()["results"][0]["deduplicated"], true);
    assert_eq!(dir.recorded().len(), 1);
}

#[test]
fn a_retry_while_the_run_is_still_going_waits_for_it() {
    let dir = Dir::new();
    let server = Server::start(
        &dir,
        &config(
            "respond_within = \"1s\"",
            &format!("[hooks.slow]\ncommand = '{}'", dir.held_record("run")),
        ),
    );
    let first = server.post_seed("/", "wait1");
    assert_eq!(first.status, 503, "{}", first.text());
    assert_eq!(first.outcome(), "running");
    let addr = server.addr;
    let retry = std::thread::spawn(move || {
        post(
            addr,
            "/",
            &seed_headers("wait1"),
            seed_envelope("wait1").as_bytes(),
        )
    });
    wait_for_dedup_hits(&server, "slow", 1.0);
    dir.open_gate("run");
    let retry = retry.join().expect("retry");
    assert_eq!(retry.status, 200, "{}", retry.text());
    assert_eq!(retry.json()["results"][0]["deduplicated"], true);
    assert_eq!(dir.recorded().len(), 1);
}

#[test]
fn a_client_that_hangs_up_does_not_cancel_the_run() {
    let dir = Dir::new();
    let server = Server::start(
        &dir,
        &config(
            "",
            &format!("[hooks.deploy]\ncommand = 'sleep 1; {}'", dir.record(0)),
        ),
    );
    let body = SEED_ENVELOPE.replace("6942316962", "gone1");
    let request = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nx-cmq-message-id: gone1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream.write_all(request.as_bytes()).expect("send");
    // Hang up as soon as the request is out, without reading the answer.
    assert!(wait_for(Duration::from_secs(5), || !dir
        .history(&[])
        .is_empty()));
    drop(stream);
    assert!(wait_for(Duration::from_secs(10), || dir.recorded().len() == 1));
    assert!(wait_for(Duration::from_secs(5), || {
        dir.history(&["--msg-id", "gone1"])
            .first()
            .is_some_and(|row| row["outcome"] == "succeeded")
    }));
}

/// Starts a server whose hook sleeps on its first attempt, pushes `crash1`, and SIGKILLs the
/// server and its stopped guard while that run is going (and journaled `running`); the push
/// gets no answer at all.
/// Returns the orphaned command's pid, which leads its process group.
fn crash_during_a_run(dir: &Dir) -> u32 {
    let mark = dir.file("started");
    let mut server = Server::start(
        dir,
        &config(
            "",
            &format!(
                "[hooks.deploy]\ncommand = 'if [ \"$CMQHOOK_ATTEMPT\" = 1 ]; then echo $$ > {}; sleep 30; fi; {}'",
                mark.display(),
                dir.record(0)
            ),
        ),
    );
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    let request = post_request(
        server.addr,
        "/",
        &seed_headers("crash1"),
        seed_envelope("crash1").as_bytes(),
    );
    stream.write_all(&request).expect("send the push");
    let orphan = wait_for_pid(&mark);
    assert!(wait_for(Duration::from_secs(5), || {
        dir.history(&[])
            .first()
            .is_some_and(|row| row["outcome"] == "running")
    }));
    // As if the guard had died with it: its command runs on.
    crate::guard::kill_past_the_guard(&server);
    server.wait_exit(Duration::from_secs(10));
    let answer = read_response(&mut stream, Duration::from_secs(10));
    assert!(answer.is_err(), "{answer:?}");
    orphan
}

/// Kills the process group `pgid`.
fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status();
}

#[test]
fn a_run_cut_short_by_a_crash_runs_again_after_restart() {
    let dir = Dir::new();
    let orphan = crash_during_a_run(&dir);
    let server = Server::builder(&dir).start();
    let rows = dir.history(&["--msg-id", "crash1"]);
    assert_eq!(rows[0]["outcome"], "interrupted");
    let retry = server.post_seed("/", "crash1");
    assert_eq!(retry.status, 200, "{}", retry.text());
    assert_eq!(dir.attempts(), ["2"]);
    kill_group(orphan);
}

#[test]
fn commands_a_crashed_serve_left_running_are_killed_at_start() {
    let dir = Dir::new();
    let orphan = crash_during_a_run(&dir);
    assert!(alive(orphan));
    let _server = Server::builder(&dir).start();
    let killed = wait_for(Duration::from_secs(5), || !alive(orphan));
    kill_group(orphan);
    assert!(killed, "the orphaned command {orphan} is still running");
}

#[test]
fn history_lists_runs_and_refused_pushes_newest_first() {
    let dir = Dir::new();
    let server = Server::start(
        &dir,
        &config(
            "max_body = \"1 KiB\"",
            &format!(
                "[hooks.ok]\ntopic = \"MyTopic\"\ncommand = '{}'\n\n[hooks.bad]\ntopic = \"MyTopic\"\ncommand = 'echo oops >&2; exit 7'",
                dir.record(0)
            ),
        ),
    );
    assert_eq!(server.post_seed("/", "h1").status, 500);
    assert_eq!(
        server
            .post("/nothing", &[("x-cmq-message-id", "h2")], b"x")
            .status,
        404
    );
    assert_eq!(
        server
            .post("/", &[("x-cmq-message-id", "h3")], &[b'x'; 2048])
            .status,
        413
    );
    assert!(wait_for(Duration::from_secs(5), || dir.history(&[]).len() == 4));

    let rows = dir.history(&[]);
    let kinds: Vec<(&str, &str)> = rows
        .iter()
        .map(|row| {
            (
                row["kind"].as_str().expect("kind"),
                row["outcome"].as_str().expect("outcome"),
            )
        })
        .collect();
    assert_eq!(kinds[0], ("push", "too_large"));
    assert_eq!(kinds[1], ("push", "unmatched"));
    assert!(kinds[2..].contains(&("run", "succeeded")));
    assert!(kinds[2..].contains(&("run", "failed")));

    let failed = dir.history(&["--failed", "--hook", "bad"]);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["hook"], "bad");
    assert_eq!(failed[0]["exit_code"], 7);
    assert_eq!(failed[0]["stderr_tail"], "oops\n");
    assert_eq!(failed[0]["msg_id"], "h1");
    assert_eq!(failed[0]["topic"], "MyTopic");
    assert_eq!(dir.history(&["--limit", "1"]).len(), 1);

    let config = dir.config_file();
    let output = cmqhook(
        &["history", "-c", config.to_str().expect("utf-8 path")],
        b"",
    );
    let text = text(&output.stdout);
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(text.contains("msg=h1") && text.contains("exit=7"), "{text}");
}

#[test]
fn with_the_journal_off_dedup_still_works_in_memory() {
    let dir = Dir::new();
    let server = Server::start(
        &dir,
        &config("journal = \"off\"", &dir.recorder_hook("deploy")),
    );
    assert_eq!(server.post_seed("/", "mem1").status, 200);
    let again = server.post_seed("/", "mem1");
    assert_eq!(again.json()["results"][0]["deduplicated"], true);
    assert_eq!(dir.recorded().len(), 1);
    assert!(!dir.path().join("cmqhook.db").exists());
}

#[test]
fn a_push_without_a_message_id_runs_every_time() {
    let dir = Dir::new();
    let server = Server::start(&dir, &config("", &dir.recorder_hook("any")));
    assert_eq!(server.post("/", &[], b"no id").status, 200);
    assert_eq!(server.post("/", &[], b"no id").status, 200);
    assert_eq!(dir.recorded().len(), 2);
}

#[test]
fn the_journal_is_a_sqlite_file_with_a_versioned_schema() {
    let dir = Dir::new();
    let server = Server::start(&dir, &config("", &dir.recorder_hook("any")));
    assert_eq!(server.post_seed("/", "sq1").status, 200);
    assert!(wait_for(Duration::from_secs(5), || dir.history(&[]).len() == 1));
    let db = dir.path().join("cmqhook.db");
    assert!(db.exists());
    let header = std::fs::read(&db).expect("db");
    assert!(header.starts_with(b"SQLite format 3\0"));
    // WAL mode: the write-ahead log sits beside the file while the server runs.
    assert!(dir.path().join("cmqhook.db-wal").exists());
    let sqlite = rusqlite::Connection::open(&db).expect("open");
    let version: i64 = sqlite
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .expect("version");
    assert_eq!(version, 7);
    let mode: String = sqlite
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .expect("mode");
    assert_eq!(mode, "wal");
    let runs: i64 = sqlite
        .query_row(
            "SELECT COUNT(*) FROM runs WHERE msg_id = 'sq1' AND outcome = 'succeeded'",
            [],
            |row| row.get(0),
        )
        .expect("runs");
    assert_eq!(runs, 1);
}

#[test]
fn rows_older_than_dedup_for_are_pruned_and_the_message_may_run_again() {
    let dir = Dir::new();
    let mut server = Server::start(
        &dir,
        &config("dedup_for = \"1s\"", &dir.recorder_hook("deploy")),
    );
    let pushed = Instant::now();
    assert_eq!(server.post_seed("/", "old1").status, 200);
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(30)), Some(0));
    assert_eq!(dir.history(&[]).len(), 1);
    // Outlive dedup_for; the journal prunes when it opens, then every minute.
    std::thread::sleep(Duration::from_millis(1200).saturating_sub(pushed.elapsed()));
    let server = Server::builder(&dir).start();
    assert!(wait_for(Duration::from_secs(5), || dir
        .history(&[])
        .is_empty()));
    let again = server.post_seed("/", "old1");
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["results"][0]["deduplicated"], false);
    assert_eq!(dir.recorded().len(), 2);
}

/// Takes about a minute: the journal prunes when it opens, then every minute.
#[test]
fn rows_older_than_dedup_for_are_pruned_while_serving() {
    let dir = Dir::new();
    let server = Server::start(
        &dir,
        &config("dedup_for = \"1s\"", &dir.recorder_hook("deploy")),
    );
    assert_eq!(server.post_seed("/", "aging1").status, 200);
    assert_eq!(dir.settled_history(&[], Duration::from_secs(5)).len(), 1);
    let mut rows = Vec::new();
    // Once a second: each look starts a `cmqhook history`.
    assert!(
        poll(Duration::from_secs(75), Duration::from_secs(1), || {
            rows = dir.history(&[]);
            rows.is_empty()
        }),
        "still in the journal after 75 s: {rows:#?}"
    );
    assert!(alive(server.pid()), "the server was running all along");
}

#[test]
fn a_run_still_waiting_for_a_slot_at_respond_within_is_withdrawn_and_never_runs() {
    let dir = Dir::new();
    let server = Server::start(
        &dir,
        &config(
            "respond_within = \"1s\"",
            &format!(
                "[hooks.serial]\nconcurrency = 1\ncommand = 'if [ \"$CMQ_MSG_ID\" = first ]; then {}; fi; {}'",
                dir.gate("first", 20),
                dir.record(0)
            ),
        ),
    );
    let addr = server.addr;
    let first = std::thread::spawn(move || post(addr, "/", &[("x-cmq-message-id", "first")], b"1"));
    dir.wait_at_gate("first");

    let sent = Instant::now();
    let second = server.post("/", &[("x-cmq-message-id", "second")], b"2");
    let took = sent.elapsed();
    assert_eq!(second.status, 503, "{}", second.text());
    assert!(second.header("retry-after").is_some());
    assert_eq!(second.outcome(), "not_started");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "answered after {took:?}"
    );
    let first = first.join().expect("first push");
    assert_eq!(first.status, 503, "{}", first.text());
    assert_eq!(first.outcome(), "running");

    // The slot frees; had the second run stayed queued, it would take it now.
    dir.open_gate("first");
    let third = server.post("/", &[("x-cmq-message-id", "third")], b"3");
    assert!(
        third.status == 200 || third.outcome() == "running",
        "{}",
        third.text()
    );
    assert!(wait_for(Duration::from_secs(10), || {
        let metrics = server.metrics();
        let serial = [("hook", "serial")];
        dir.recorded().len() >= 2
            && metrics.get("cmqhook_running", &serial) == Some(0.0)
            && metrics.get("cmqhook_queue_depth", &serial) == Some(0.0)
    }));
    let ran: Vec<String> = dir
        .recorded()
        .iter()
        .filter_map(|run| run.var("CMQ_MSG_ID").map(str::to_owned))
        .collect();
    assert_eq!(ran, ["first", "third"]);
    assert!(dir.history(&["--msg-id", "second"]).is_empty());

    // CMQ's retry runs it, as its first attempt.
    let retry = server.post("/", &[("x-cmq-message-id", "second")], b"2");
    assert_eq!(retry.status, 200, "{}", retry.text());
    let last = dir.recorded().pop().expect("a run");
    last.assert_vars(&[("CMQ_MSG_ID", "second"), ("CMQHOOK_ATTEMPT", "1")]);
}

#[test]
fn after_a_partial_failure_only_the_failed_hook_runs_again() {
    let dir = Dir::new();
    let mark = dir.file("failed-once");
    let server = Server::start(
        &dir,
        &config(
            "",
            &format!(
                "[hooks.good]\ntopic = \"MyTopic\"\ncommand = '{ok}'\n\n\
                 [hooks.flaky]\ntopic = \"MyTopic\"\ncommand = 'if [ -e {m} ]; then {ok}; else touch {m}; {fail}; fi'",
                m = mark.display(),
                ok = dir.record(0),
                fail = dir.record(1)
            ),
        ),
    );
    let first = server.post_seed("/", "part1");
    assert_eq!(first.status, 500, "{}", first.text());
    let outcomes = |response: &Response| -> Vec<(String, String, bool)> {
        response.json()["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|result| {
                (
                    result["hook"].as_str().expect("hook").to_owned(),
                    result["outcome"].as_str().expect("outcome").to_owned(),
                    result["deduplicated"].as_bool().expect("deduplicated"),
                )
            })
            .collect()
    };
    let result = |hook: &str, outcome: &str, deduplicated: bool| {
        (hook.to_owned(), outcome.to_owned(), deduplicated)
    };
    assert_eq!(
        outcomes(&first),
        [
            result("good", "succeeded", false),
            result("flaky", "failed", false)
        ]
    );
    let retry = server.post_seed("/", "part1");
    assert_eq!(retry.status, 200, "{}", retry.text());
    assert_eq!(
        outcomes(&retry),
        [
            result("good", "succeeded", true),
            result("flaky", "succeeded", false)
        ]
    );
    let mut runs: Vec<(String, String)> = dir
        .recorded()
        .iter()
        .map(|run| {
            (
                run.var("CMQHOOK_HOOK").unwrap_or("").to_owned(),
                run.var("CMQHOOK_ATTEMPT").unwrap_or("").to_owned(),
            )
        })
        .collect();
    runs.sort();
    let run = |hook: &str, attempt: &str| (hook.to_owned(), attempt.to_owned());
    assert_eq!(
        runs,
        [run("flaky", "1"), run("flaky", "2"), run("good", "1")]
    );
}

#[test]
fn a_timed_out_run_is_retried_with_the_next_attempt_number() {
    let dir = Dir::new();
    let server = Server::start(
        &dir,
        &config(
            "",
            &format!(
                "[hooks.slow-once]\ntimeout = \"1s\"\nkill_grace = \"200ms\"\ncommand = 'if [ \"$CMQHOOK_ATTEMPT\" = 1 ]; then sleep 30; fi; {}'",
                dir.record(0)
            ),
        ),
    );
    let first = server.post_seed("/", "slow1");
    assert_eq!(first.status, 504, "{}", first.text());
    assert_eq!(first.outcome(), "timed_out");
    let retry = server.post_seed("/", "slow1");
    assert_eq!(retry.status, 200, "{}", retry.text());
    assert_eq!(retry.json()["results"][0]["deduplicated"], false);
    assert_eq!(dir.attempts(), ["2"]);
    let rows: Vec<(i64, String)> = dir
        .settled_history(&["--msg-id", "slow1"], Duration::from_secs(5))
        .iter()
        .map(|row| {
            (
                row["attempt"].as_i64().expect("attempt"),
                row["outcome"].as_str().expect("outcome").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [(2, "succeeded".to_owned()), (1, "timed_out".to_owned())]
    );
}

#[test]
fn the_journal_notes_a_run_that_left_processes_behind() {
    let dir = Dir::new();
    let bg = dir.file("bg.pid");
    let server = Server::start(
        &dir,
        &config(
            "",
            &format!(
                "[hooks.leaves]\npath = \"/leaves\"\ncommand = 'sleep 30 & echo $! > {}'\n\n\
                 [hooks.tidy]\npath = \"/tidy\"\ncommand = 'sleep 0.1'",
                bg.display()
            ),
        ),
    );
    for (path, msg_id) in [("/leaves", "lb1"), ("/tidy", "lb2")] {
        let response = server.post(path, &[("x-cmq-message-id", msg_id)], b"");
        assert_eq!(response.status, 200, "{}", response.text());
    }
    let rows = dir.settled_history(&[], Duration::from_secs(5));
    let left_behind = |hook: &str| {
        rows.iter()
            .find(|row| row["hook"] == hook)
            .map(|row| row["left_behind"].clone())
    };
    assert_eq!(
        left_behind("leaves"),
        Some(serde_json::json!(true)),
        "{rows:#?}"
    );
    assert_eq!(
        left_behind("tidy"),
        Some(serde_json::json!(false)),
        "{rows:#?}"
    );
    let _ = Command::new("kill")
        .arg(wait_for_pid(&bg).to_string())
        .status();
}
