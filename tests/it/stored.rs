//! `ack = "stored"` (SPEC §9): the push is answered once it is durably stored; cmqhook runs
//! it, retries it on its own schedule, and keeps the messages that never succeeded as dead.

use std::time::Duration;

use crate::harness::*;

/// `cmqhook check` of `text`: its exit code and stderr.
fn check(dir: &Dir, text: &str) -> (Option<i32>, String) {
    let config = dir.write_config(text);
    let output = cmqhook(&["check", "-c", config.to_str().expect("utf-8")], b"");
    (output.status.code(), text_of(&output.stderr))
}

fn text_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_rejects_ack_stored_without_a_journal_and_a_retry_schedule_longer_than_dedup_for() {
    let dir = Dir::new();
    let hook = "[hooks.a]\ncommand = \"true\"\nack = \"stored\"\n";
    let (code, stderr) = check(&dir, &format!("[server]\njournal = \"off\"\n\n{hook}"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(":6:7: hooks.a.ack") && stderr.contains("server.journal"),
        "{stderr}"
    );
    let (code, stderr) = check(
        &dir,
        &format!("[server]\ndedup_for = \"1m\"\n\n{hook}retry = [\"30s\", \"40s\"]\n"),
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(":7:9: hooks.a.retry") && stderr.contains("dedup_for"),
        "{stderr}"
    );
    let (code, stderr) = check(
        &dir,
        &format!("[server]\ndedup_for = \"1m\"\n\n{hook}retry = [\"30s\"]\n"),
    );
    assert_eq!(code, Some(0), "{stderr}");
}

/// A config with one stored hook `job` running `command`, retried after 200 ms twice.
fn stored_config(command: &str) -> String {
    config(
        "",
        &format!(
            "[hooks.job]\nack = \"stored\"\nretry = [\"200ms\", \"200ms\"]\ncommand = '{command}'"
        ),
    )
}

/// `(attempt, outcome)` of every run of `msg_id`, newest first, once none is running.
fn runs_of(dir: &Dir, msg_id: &str, count: usize) -> Vec<(u64, String)> {
    let mut rows = Vec::new();
    let settled = wait_for(Duration::from_secs(20), || {
        rows = dir.history(&["--msg-id", msg_id]);
        rows.len() == count && rows.iter().all(|row| row["outcome"] != "running")
    });
    assert!(settled, "runs of {msg_id}: {rows:#?}");
    rows.iter()
        .map(|row| {
            (
                row["attempt"].as_u64().expect("attempt"),
                row["outcome"].as_str().expect("outcome").to_owned(),
            )
        })
        .collect()
}

/// The value of the metric `name` for hook `job`.
fn job_metric(server: &Server, name: &str) -> Option<f64> {
    server.metrics().get(name, &[("hook", "job")])
}

fn wait_for_runs(dir: &Dir, count: usize) {
    let mut seen = 0;
    assert!(
        wait_for(Duration::from_secs(20), || {
            seen = dir.recorded().len();
            seen >= count
        }),
        "{seen} runs recorded, not {count}"
    );
}

#[test]
fn a_stored_push_is_answered_queued_before_its_run_ends_and_duplicates_run_nothing() {
    let dir = Dir::new();
    let server = Server::start(&dir, &stored_config(&dir.held_record("run")));
    let first = server.post_seed("/", "s1");
    assert_eq!(first.status, 200, "{}", first.text());
    let result = &first.json()["results"][0];
    assert_eq!(result["outcome"], "queued");
    assert_eq!(result["deduplicated"], false);
    // The answer came while the command had not even reached its gate, or waits there.
    dir.wait_at_gate("run");
    assert!(dir.recorded().is_empty());
    let again = server.post_seed("/", "s1");
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["results"][0]["outcome"], "queued");
    assert_eq!(again.json()["results"][0]["deduplicated"], true);
    dir.open_gate("run");
    wait_for_runs(&dir, 1);
    let run = &dir.recorded()[0];
    run.assert_vars(&[
        ("CMQ_MSG_ID", "s1"),
        ("CMQ_REQUEST_ID", "2394928734"),
        ("CMQ_TOPIC", "MyTopic"),
        ("CMQ_SUBSCRIPTION", "mysubscription"),
        ("CMQ_TOPIC_OWNER", "100015036"),
        ("CMQ_PUBLISH_TIME", "11203432"),
        ("CMQ_FORMAT", "json"),
        ("CMQHOOK_HOOK", "job"),
        ("CMQHOOK_ATTEMPT", "1"),
    ]);
    assert_eq!(run.stdin, b"test message");
    assert_eq!(runs_of(&dir, "s1", 1), [(1, "succeeded".to_owned())]);
    // Done: a CMQ retry is answered from the journal and runs nothing.
    let done = server.post_seed("/", "s1");
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(done.json()["results"][0]["deduplicated"], true);
    assert_eq!(done.json()["results"][0]["outcome"], "succeeded");
    assert_eq!(dir.recorded().len(), 1);
}

#[test]
fn a_failing_stored_run_is_retried_on_the_schedule_until_it_succeeds() {
    let dir = Dir::new();
    let count = dir.file("count");
    let command = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; if [ $n -lt 3 ]; then {fail}; else {ok}; fi",
        c = count.display(),
        fail = dir.record(1),
        ok = dir.record(0)
    );
    let server = Server::start(&dir, &stored_config(&command));
    let answer = server.post_seed("/", "r1");
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["results"][0]["outcome"], "queued");
    assert_eq!(
        runs_of(&dir, "r1", 3),
        [
            (3, "succeeded".to_owned()),
            (2, "failed".to_owned()),
            (1, "failed".to_owned())
        ]
    );
    assert_eq!(dir.attempts(), ["1", "2", "3"]);
    assert_eq!(job_metric(&server, "cmqhook_dead_letters_total"), Some(0.0));
    assert_eq!(job_metric(&server, "cmqhook_stored_pending"), Some(0.0));
}

#[test]
fn a_stored_message_is_dead_after_its_last_retry_and_never_runs_again() {
    let dir = Dir::new();
    let server = Server::start(&dir, &stored_config(&dir.record(3)));
    // Present at 0 from the start, for alerts.
    assert_eq!(job_metric(&server, "cmqhook_dead_letters_total"), Some(0.0));
    assert_eq!(job_metric(&server, "cmqhook_stored_pending"), Some(0.0));
    let answer = server.post_seed("/", "d1");
    assert_eq!(answer.status, 200, "{}", answer.text());
    let mut dead = None;
    assert!(
        wait_for(Duration::from_secs(20), || {
            dead = job_metric(&server, "cmqhook_dead_letters_total");
            dead == Some(1.0)
        }),
        "dead letters: {dead:?}"
    );
    assert_eq!(
        runs_of(&dir, "d1", 3),
        [
            (3, "failed".to_owned()),
            (2, "failed".to_owned()),
            (1, "failed".to_owned())
        ]
    );
    let rows = dir.history(&["--dead"]);
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["kind"], "dead");
    assert_eq!(rows[0]["hook"], "job");
    assert_eq!(rows[0]["msg_id"], "d1");
    assert_eq!(rows[0]["attempt"], 3);
    assert_eq!(rows[0]["outcome"], "failed");
    // CMQ's retry of a dead message: 200, deduplicated, and nothing runs.
    let retry = server.post_seed("/", "d1");
    assert_eq!(retry.status, 200, "{}", retry.text());
    assert_eq!(retry.json()["results"][0]["outcome"], "dead");
    assert_eq!(retry.json()["results"][0]["deduplicated"], true);
    assert_eq!(job_metric(&server, "cmqhook_stored_pending"), Some(0.0));
    assert_eq!(dir.recorded().len(), 3);
    // The text form names it too.
    let config = dir.config_file();
    let output = cmqhook(
        &["history", "-c", config.to_str().expect("utf-8"), "--dead"],
        b"",
    );
    let shown = text_of(&output.stdout);
    assert!(
        shown.contains("dead") && shown.contains("msg=d1") && shown.contains("attempt=3"),
        "{shown}"
    );
}

#[test]
fn a_stored_run_killed_with_the_server_resumes_at_the_next_start_with_no_new_push() {
    let dir = Dir::new();
    let pid = dir.file("pid");
    let command = format!(
        "if [ \"$CMQHOOK_ATTEMPT\" = 1 ]; then echo $$ > {pid}; exec sleep 60; fi; {ok}",
        pid = pid.display(),
        ok = dir.record(0)
    );
    let config = stored_config(&command);
    let mut server = Server::start(&dir, &config);
    assert_eq!(server.post_seed("/", "k1").status, 200);
    let command_pid = wait_for_pid(&pid);
    // Once its start is journaled (a run's start is written once it lasts 10 ms): its
    // `interrupted` row below is the account of that start.
    assert!(wait_for(Duration::from_secs(10), || {
        dir.history(&["--msg-id", "k1"])
            .iter()
            .any(|row| row["outcome"] == "running")
    }));
    server.signal("KILL");
    server.wait_exit(Duration::from_secs(10));
    // Its command's group too, as a power loss would.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{command_pid}")])
        .status();
    assert!(wait_for(Duration::from_secs(10), || !alive(command_pid)));
    let _server = Server::start(&dir, &config);
    wait_for_runs(&dir, 1);
    assert_eq!(dir.attempts(), ["2"]);
    assert_eq!(dir.recorded()[0].stdin, b"test message");
    assert_eq!(
        runs_of(&dir, "k1", 2),
        [(2, "succeeded".to_owned()), (1, "interrupted".to_owned())]
    );
}

#[test]
fn a_stored_push_the_journal_cannot_take_is_answered_503_and_stored_once_it_can() {
    let dir = Dir::new();
    let server = Server::start(&dir, &stored_config(&dir.record(0)));
    let holder = crate::faults::Holder::lock(&dir.file("cmqhook.db"));
    let locked = server.post_seed("/", "w1");
    assert_eq!(locked.status, 503, "{}", locked.text());
    assert!(dir.recorded().is_empty());
    holder.release();
    // The push was kept in memory and committed once the journal could be written.
    wait_for_runs(&dir, 1);
    let retry = server.post_seed("/", "w1");
    assert_eq!(retry.status, 200, "{}", retry.text());
    assert_eq!(retry.json()["results"][0]["deduplicated"], true);
    assert_eq!(runs_of(&dir, "w1", 1), [(1, "succeeded".to_owned())]);
}

#[test]
fn a_stored_run_stopped_by_a_shutdown_resumes_at_the_next_start_without_using_up_a_retry() {
    let dir = Dir::new();
    // No retry at all: a failure would make it dead at once.
    let command = format!(
        "if [ \"$CMQHOOK_ATTEMPT\" = 1 ]; then {gate}; exit 1; fi; {ok}",
        gate = dir.gate("run", 60),
        ok = dir.record(0)
    );
    let config = config(
        "shutdown_grace = \"200ms\"",
        &format!(
            "[hooks.job]\nack = \"stored\"\nretry = []\nkill_grace = \"1s\"\ncommand = '{command}'"
        ),
    );
    let mut server = Server::start(&dir, &config);
    assert_eq!(server.post_seed("/", "t1").status, 200);
    dir.wait_at_gate("run");
    assert_eq!(server.stop(), Some(0));
    assert!(dir.recorded().is_empty());
    let server = Server::start(&dir, &config);
    wait_for_runs(&dir, 1);
    assert_eq!(dir.attempts(), ["2"]);
    assert_eq!(
        runs_of(&dir, "t1", 2),
        [(2, "succeeded".to_owned()), (1, "interrupted".to_owned())]
    );
    assert_eq!(job_metric(&server, "cmqhook_dead_letters_total"), Some(0.0));
}

#[test]
fn stored_work_of_a_hook_a_reload_removed_runs_once_a_reload_configures_it_again() {
    let dir = Dir::new();
    // Attempt 1 fails; its retry comes 1 s later, while the hook is not configured.
    let command = format!("{}; [ \"$CMQHOOK_ATTEMPT\" -ge 2 ]", dir.record(0));
    let stored = config(
        "",
        &format!("[hooks.job]\nack = \"stored\"\nretry = [\"1s\"]\ncommand = '{command}'"),
    );
    let server = Server::start(&dir, &stored);
    assert_eq!(server.post_seed("/", "rl1").status, 200);
    assert_eq!(runs_of(&dir, "rl1", 1), [(1, "failed".to_owned())]);
    dir.write_config(&config("", &dir.recorder_hook("other")));
    server.signal("HUP");
    let waits = server.wait_for_log_line(
        Duration::from_secs(10),
        &["no longer configured", "rl1", "until a reload"],
    );
    assert!(waits.is_some(), "{}", server.log_text());
    assert_eq!(dir.recorded().len(), 1);
    dir.write_config(&stored);
    server.signal("HUP");
    // No restart: the reload that configures the hook again lets the retry run.
    assert_eq!(
        runs_of(&dir, "rl1", 2),
        [(2, "succeeded".to_owned()), (1, "failed".to_owned())]
    );
    assert_eq!(dir.attempts(), ["1", "2"]);
}
