//! `[notify]` (SPEC §10): the notify command runs once per listed event — a failed, timed-out
//! or killed run, a stored message that died — with the event's variables and the run's kept
//! output on stdin; its own failure is logged at WARN, counted, and never retried; it never
//! holds a hook's slot. The notify command here is the recorder, saving into `notes/`.

use std::path::PathBuf;
use std::time::Duration;

use crate::harness::*;

/// The dir the notify recorder saves into.
fn notes(dir: &Dir) -> PathBuf {
    let notes = dir.file("notes");
    if !notes.exists() {
        std::fs::create_dir(&notes).expect("notes dir");
    }
    notes
}

/// A `[notify]` table: the recorder saving into `notes/` and exiting `code`, then `more` keys.
fn notify_table(dir: &Dir, code: i32, more: &str) -> String {
    format!(
        "[notify]\ncommand = '{} {} {code}'\n{more}\n",
        dir.file("record").display(),
        notes(dir).display()
    )
}

/// Every notification recorded so far, oldest first.
fn notifications(dir: &Dir) -> Vec<Run> {
    recorded_in(&notes(dir))
}

/// Waits (at most 20 s, else panics) until `count` notifications are recorded.
fn wait_for_notifications(dir: &Dir, count: usize) -> Vec<Run> {
    let mut seen = Vec::new();
    let enough = wait_for(Duration::from_secs(20), || {
        seen = notifications(dir);
        seen.len() >= count
    });
    assert!(enough, "{} notifications, not {count}", seen.len());
    seen
}

/// The id of the journal's run of `hook` for `msg_id` as `attempt` (read once `serve` stopped).
fn run_id(dir: &Dir, hook: &str, msg_id: &str, attempt: u32) -> String {
    let journal = rusqlite::Connection::open(dir.file("cmqhook.db")).expect("open the journal");
    let id: i64 = journal
        .query_row(
            "SELECT id FROM runs WHERE hook = ?1 AND msg_id = ?2 AND attempt = ?3",
            rusqlite::params![hook, msg_id, attempt],
            |row| row.get(0),
        )
        .expect("the run's row");
    id.to_string()
}

/// The notification whose `CMQHOOK_HOOK` is `hook`.
fn about<'a>(notes: &'a [Run], hook: &str) -> &'a Run {
    notes
        .iter()
        .find(|note| note.var("CMQHOOK_HOOK") == Some(hook))
        .unwrap_or_else(|| panic!("no notification about {hook}"))
}

/// Asserts that `note` tells `interrupted` about attempt 1 of `hook` for `msg_id`, whose run
/// is `run_id` in the journal.
fn assert_interrupted(note: &Run, (hook, msg_id): (&str, &str), run_id: &str) {
    note.assert_vars(&[
        ("CMQHOOK_EVENT", "interrupted"),
        ("CMQHOOK_HOOK", hook),
        ("CMQ_MSG_ID", msg_id),
        ("CMQHOOK_ATTEMPT", "1"),
        ("CMQHOOK_OUTCOME", "interrupted"),
        ("CMQHOOK_EXIT_CODE", ""),
        ("CMQHOOK_RUN_ID", run_id),
    ]);
}

/// Asserts that `dir` holds exactly one notification, as [`assert_interrupted`] says.
fn assert_one_interrupted(dir: &Dir, run: (&str, &str), run_id: &str) {
    let notes = notifications(dir);
    assert_eq!(notes.len(), 1, "{notes:#?}");
    assert_interrupted(&notes[0], run, run_id);
}

/// An instance `label` of a fleet on `db` with `hooks` (the `[server]` keys `extra` added)
/// that notifies `interrupted` into `shared`'s notes; leases of 2 s.
fn interrupted_spec(
    db: &crate::pg::TestDb,
    shared: &Dir,
    hooks: &str,
    (label, extra): (&str, &str),
) -> crate::pg::Spec {
    leased_spec(db, shared, hooks, (label, "2s", extra))
}

/// [`interrupted_spec`] with leases of `lease`.
fn leased_spec(
    db: &crate::pg::TestDb,
    shared: &Dir,
    hooks: &str,
    (label, lease, extra): (&str, &str, &str),
) -> crate::pg::Spec {
    let server = crate::pg::server_keys(&db.url(), Some(label), lease, extra);
    let notify = notify_table(shared, 0, "on = [\"interrupted\"]");
    crate::pg::Spec::new(label, format!("{}{notify}", config(&server, hooks)))
}

/// The journal id of the `interrupted` run of `msg_id` in `db`.
fn interrupted_id(db: &crate::pg::TestDb, msg_id: &str) -> String {
    let sql = format!(
        "SELECT id FROM cmqhook_runs WHERE msg_id = '{msg_id}' AND outcome = 'interrupted'"
    );
    db.sql(&sql).trim().to_owned()
}

fn stdin_text(run: &Run) -> String {
    String::from_utf8_lossy(&run.stdin).into_owned()
}

#[test]
fn failed_and_timed_out_runs_notify_once_each_with_every_variable_and_the_output() {
    let dir = Dir::new();
    let hooks = "[hooks.ok]\npath = \"/ok\"\ncommand = \"echo fine\"\n\n\
                 [hooks.fail]\npath = \"/fail\"\ncommand = \"echo out-line; echo err-line >&2; exit 3\"\n\n\
                 [hooks.slow]\npath = \"/slow\"\ncommand = \"echo before-sleep; sleep 30\"\ntimeout = \"300ms\"\nkill_grace = \"200ms\"\n";
    let text = format!("{}{}", config("", hooks), notify_table(&dir, 0, ""));
    let mut server = Server::start(&dir, &text);
    assert_eq!(server.post_seed("/ok", "m-ok").status, 200);
    assert_eq!(server.post_seed("/fail", "m-fail").status, 500);
    assert_eq!(server.post_seed("/slow", "m-slow").status, 504);
    wait_for_notifications(&dir, 2);
    // The drain waits for notify commands: once stopped, every notification is recorded.
    assert_eq!(server.stop(), Some(0));
    let notes = notifications(&dir);
    assert_eq!(notes.len(), 2, "a success notifies nothing: {notes:#?}");

    let failed = about(&notes, "fail");
    failed.assert_vars(&[
        ("CMQHOOK_EVENT", "failed"),
        ("CMQ_MSG_ID", "m-fail"),
        ("CMQHOOK_ATTEMPT", "1"),
        ("CMQHOOK_OUTCOME", "failed"),
        ("CMQHOOK_EXIT_CODE", "3"),
        ("CMQHOOK_RUN_ID", &run_id(&dir, "fail", "m-fail", 1)),
    ]);
    let output = stdin_text(failed);
    assert!(output == "out| out-line\nerr| err-line\n", "{output:?}");

    let timed_out = about(&notes, "slow");
    timed_out.assert_vars(&[
        ("CMQHOOK_EVENT", "timed_out"),
        ("CMQ_MSG_ID", "m-slow"),
        ("CMQHOOK_ATTEMPT", "1"),
        ("CMQHOOK_OUTCOME", "timed_out"),
        ("CMQHOOK_EXIT_CODE", ""),
        ("CMQHOOK_RUN_ID", &run_id(&dir, "slow", "m-slow", 1)),
    ]);
    assert!(stdin_text(timed_out).contains("before-sleep"));
}

#[test]
fn a_stored_message_that_dies_notifies_dead_with_its_last_run() {
    let dir = Dir::new();
    let hooks = "[hooks.job]\nack = \"stored\"\nretry = [\"100ms\"]\n\
                 command = 'echo \"attempt $CMQHOOK_ATTEMPT failing\"; exit 4'\n";
    let text = format!(
        "{}{}",
        config("", hooks),
        notify_table(&dir, 0, "on = [\"dead\"]")
    );
    let mut server = Server::start(&dir, &text);
    let answer = server.post_seed("/", "m-dead");
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["results"][0]["outcome"], "queued");
    wait_for_notifications(&dir, 1);
    assert_eq!(server.stop(), Some(0));
    let notes = notifications(&dir);
    // Its two failed runs are not listed in `on`: only the death is told.
    assert_eq!(notes.len(), 1, "{notes:#?}");
    notes[0].assert_vars(&[
        ("CMQHOOK_EVENT", "dead"),
        ("CMQHOOK_HOOK", "job"),
        ("CMQ_MSG_ID", "m-dead"),
        ("CMQHOOK_ATTEMPT", "2"),
        ("CMQHOOK_OUTCOME", "failed"),
        ("CMQHOOK_EXIT_CODE", "4"),
        ("CMQHOOK_RUN_ID", &run_id(&dir, "job", "m-dead", 2)),
    ]);
    assert_eq!(stdin_text(&notes[0]), "out| attempt 2 failing\n");
}

#[test]
fn on_lists_the_events_and_a_reload_changes_them() {
    let dir = Dir::new();
    let hooks = "[hooks.fail]\npath = \"/fail\"\ncommand = \"exit 1\"\n\n\
                 [hooks.killed]\npath = \"/killed\"\ncommand = \"kill -KILL $$\"\n";
    let mut server = Server::start(&dir, &config("", hooks));
    // No [notify]: nothing is told.
    assert_eq!(server.post_seed("/fail", "before").status, 500);
    let with_notify = format!(
        "{}{}",
        config("", hooks),
        notify_table(&dir, 0, "on = [\"killed\"]")
    );
    dir.write_config(&with_notify);
    server.signal("HUP");
    assert!(
        server
            .wait_for_log_line(Duration::from_secs(10), &["config reloaded"])
            .is_some()
    );
    assert_eq!(server.post_seed("/fail", "after").status, 500);
    assert_eq!(server.post_seed("/killed", "after").status, 500);
    wait_for_notifications(&dir, 1);
    assert_eq!(server.stop(), Some(0));
    let notes = notifications(&dir);
    assert_eq!(notes.len(), 1, "only `killed` is listed: {notes:#?}");
    notes[0].assert_vars(&[
        ("CMQHOOK_EVENT", "killed"),
        ("CMQHOOK_HOOK", "killed"),
        ("CMQHOOK_OUTCOME", "killed"),
        ("CMQHOOK_EXIT_CODE", ""),
    ]);
}

#[test]
fn a_failing_notify_command_is_logged_at_warn_counted_and_run_once() {
    let dir = Dir::new();
    let hooks = "[hooks.fail]\ncommand = \"exit 2\"\n";
    let text = format!("{}{}", config("", hooks), notify_table(&dir, 7, ""));
    let mut server = Server::start(&dir, &text);
    let failures = |server: &Server| {
        server
            .metrics()
            .get("cmqhook_notify_failures_total", &[])
            .expect("the series exists from start")
    };
    assert_eq!(failures(&server), 0.0);
    assert_eq!(server.post_seed("/", "m1").status, 500);
    let line = server
        .wait_for_log_line(Duration::from_secs(20), &["notify command failed"])
        .expect("the notify command's failure is logged");
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("exited 7") && line.contains("m1"), "{line}");
    assert_eq!(failures(&server), 1.0);
    assert_eq!(server.stop(), Some(0));
    // Not retried, and its failure is no event of its own.
    assert_eq!(notifications(&dir).len(), 1);
    assert_eq!(
        server.log_text().matches("notify command failed").count(),
        1
    );
}

#[test]
fn a_slow_notify_command_is_killed_at_its_timeout_and_holds_no_hook_slot() {
    let dir = Dir::new();
    let pid_file = dir.file("notify.pid");
    // The body is the exit code.
    let hooks = "[hooks.a]\ncommand = 'exit \"$(cat)\"'\nconcurrency = 1\n";
    let notify = format!(
        "[notify]\ncommand = 'sleep 30 & echo $! > {}; wait'\ntimeout = \"500ms\"\n",
        pid_file.display()
    );
    let text = format!("{}{notify}", config("max_running = 1", hooks));
    let mut server = Server::start(&dir, &text);
    let fail = server.post("/", &[("x-cmq-message-id", "m-fail")], b"5");
    assert_eq!(fail.status, 500, "{}", fail.text());
    let sleeper = wait_for_pid(&pid_file);
    // With the notify command going, the hook's one slot (and the one global) is free.
    let ok = server.post("/", &[("x-cmq-message-id", "m-ok")], b"0");
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert!(alive(sleeper), "the notify command is still going");
    let line = server
        .wait_for_log_line(Duration::from_secs(20), &["notify command failed"])
        .expect("the timeout is logged");
    assert!(line.contains("timed out"), "{line}");
    assert!(
        wait_for(Duration::from_secs(5), || !alive(sleeper)),
        "the notify command's group was killed"
    );
    assert_eq!(
        server.metrics().get("cmqhook_notify_failures_total", &[]),
        Some(1.0)
    );
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn check_rejects_an_unknown_event_and_a_notify_table_without_a_command_and_shows_a_valid_one() {
    let dir = Dir::new();
    let run_check = |toml: &str| {
        let config = dir.write_config(toml);
        cmqhook(&["check", "-c", config.to_str().expect("utf-8")], b"")
    };
    let check = |toml: &str| {
        let output = run_check(toml);
        (output.status.code(), text(&output.stderr))
    };
    let (code, stderr) = check("[notify]\ncommand = \"true\"\non = [\"failed\", \"exploded\"]\n");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("hooks.toml:3:17: notify.on") && stderr.contains("exploded"),
        "{stderr}"
    );
    let (code, stderr) = check("[notify]\non = [\"dead\"]\n");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("hooks.toml:1:1: notify: needs `command`"),
        "{stderr}"
    );
    let valid = run_check(
        "[notify]\ncommand = \"page-oncall\"\non = [\"killed\", \"interrupted\"]\ntimeout = \"1m\"\n",
    );
    assert_eq!(valid.status.code(), Some(0), "{}", both(&valid));
    let shown = text(&valid.stdout);
    assert!(
        shown.contains("[notify]\n  on:    killed, interrupted\n  run:   sh -c \"page-oncall\"")
            && shown.contains("timeout 1m)"),
        "{shown}"
    );
}

#[test]
fn a_run_left_running_by_a_killed_serve_is_notified_as_interrupted_by_the_next_serve() {
    let dir = Dir::new();
    let hooks = format!("[hooks.held]\ncommand = '{}'\n", dir.gate("held", 30));
    let text = format!(
        "{}{}",
        config("respond_within = \"200ms\"", &hooks),
        notify_table(&dir, 0, "on = [\"interrupted\"]")
    );
    let mut first = Server::start(&dir, &text);
    assert_eq!(first.post_seed("/", "m-left").status, 503);
    dir.wait_at_gate("held");
    let journaled = wait_for(Duration::from_secs(10), || {
        dir.history(&["--msg-id", "m-left"])
            .first()
            .is_some_and(|row| row["outcome"] == "running")
    });
    assert!(journaled, "the run's start is journaled");
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10));
    assert!(notifications(&dir).is_empty());
    // The next serve records the interruption, and so tells it.
    let mut next = Server::start(&dir, &text);
    wait_for_notifications(&dir, 1);
    assert_eq!(next.stop(), Some(0));
    let id = run_id(&dir, "held", "m-left", 1);
    assert_one_interrupted(&dir, ("held", "m-left"), &id);
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn with_postgres_a_failed_run_notifies_with_the_id_of_its_row_in_the_shared_database() {
    use crate::pg::{TestDb, server_keys};
    let db = TestDb::create();
    let dir = Dir::new();
    let hooks = "[hooks.fail]\ncommand = \"echo pg-out; exit 6\"\n";
    let server = server_keys(&db.url(), Some("a"), "2s", "");
    let text = format!("{}{}", config(&server, hooks), notify_table(&dir, 0, ""));
    let mut server = Server::start(&dir, &text);
    assert!(
        wait_for(Duration::from_secs(20), || {
            db.sql("SELECT to_regclass('cmqhook_runs')").trim() == "cmqhook_runs"
        }),
        "the schema is created"
    );
    // The database numbers its rows apart from this process's run ids.
    db.sql("SELECT setval(pg_get_serial_sequence('cmqhook_runs', 'id'), 1000)");
    assert_eq!(server.post_seed("/", "m-pg").status, 500);
    wait_for_notifications(&dir, 1);
    assert_eq!(server.stop(), Some(0));
    let id = db.sql("SELECT id FROM cmqhook_runs WHERE msg_id = 'm-pg'");
    assert_eq!(id.trim(), "1001");
    let notes = notifications(&dir);
    assert_eq!(notes.len(), 1, "{notes:#?}");
    notes[0].assert_vars(&[
        ("CMQHOOK_EVENT", "failed"),
        ("CMQHOOK_HOOK", "fail"),
        ("CMQ_MSG_ID", "m-pg"),
        ("CMQHOOK_EXIT_CODE", "6"),
        ("CMQHOOK_RUN_ID", "1001"),
    ]);
    assert_eq!(stdin_text(&notes[0]), "out| pg-out\n");
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn with_postgres_the_instance_that_takes_over_a_dead_instances_run_notifies_interrupted() {
    use crate::pg::{Instance, TestDb};
    let db = TestDb::create();
    let shared = Dir::new();
    let hooks = format!(
        "[defaults]\nkill_grace = \"200ms\"\n\n[hooks.held]\ncommand = '{}'\n",
        shared.held_first_attempt(&shared.file("pids"))
    );
    let spec = |instance| interrupted_spec(&db, &shared, &hooks, instance);
    let mut fleet = Instance::start_all(vec![
        spec(("a", "respond_within = \"500ms\"")),
        spec(("b", "")),
    ]);
    assert_eq!(fleet[0].push("m-take").status, 503);
    shared.wait_at_gate("held");
    fleet[0].kill();
    // CMQ's retry reaches b, which takes the message over once a's lease ran out.
    let retry = fleet[1].push("m-take");
    assert_eq!(retry.status, 200, "{}", retry.text());
    wait_for_notifications(&shared, 1);
    assert_eq!(fleet[1].server.stop(), Some(0));
    // The success of attempt 2 notifies nothing.
    assert_one_interrupted(&shared, ("held", "m-take"), &interrupted_id(&db, "m-take"));
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn with_postgres_the_instance_that_resumes_a_dead_instances_stored_run_notifies_interrupted() {
    use crate::pg::{Instance, TestDb};
    let db = TestDb::create();
    let shared = Dir::new();
    let hooks = format!(
        "[defaults]\nkill_grace = \"200ms\"\n\n[hooks.job]\nack = \"stored\"\ncommand = '{}'\n",
        shared.held_first_attempt(&shared.file("pids"))
    );
    let spec = |label| interrupted_spec(&db, &shared, &hooks, (label, ""));
    let mut a = Instance::start(spec("a"));
    assert_eq!(a.push("m-resume").status, 200);
    shared.wait_at_gate("held");
    // b comes once a runs it, then a dies: b resumes the work when a's lease ran out.
    let mut b = Instance::start(spec("b"));
    a.kill();
    wait_for_runs_recorded(&shared, 1);
    wait_for_notifications(&shared, 1);
    assert_eq!(b.server.stop(), Some(0));
    assert_one_interrupted(
        &shared,
        ("job", "m-resume"),
        &interrupted_id(&db, "m-resume"),
    );
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn with_postgres_a_restarted_instance_notifies_the_runs_its_killed_process_left_interrupted() {
    use crate::pg::{Instance, TestDb, lines_of};
    let db = TestDb::create();
    let shared = Dir::new();
    let pids = shared.file("pids");
    let command = shared.held_first_attempt(&pids);
    let hooks = format!(
        "[defaults]\nkill_grace = \"200ms\"\n\n\
         [hooks.held]\npath = \"/held\"\ncommand = '{command}'\n\n\
         [hooks.job]\npath = \"/job\"\nack = \"stored\"\ncommand = '{command}'\n"
    );
    // A long lease: the restarted process takes its runs over at once, by the orphan rule.
    let spec = || {
        leased_spec(
            &db,
            &shared,
            &hooks,
            ("a", "30s", "respond_within = \"300ms\""),
        )
    };
    let mut first = Instance::start(spec());
    assert_eq!(first.server.post_seed("/held", "m-exit").status, 503);
    assert_eq!(first.server.post_seed("/job", "m-stored").status, 200);
    assert!(
        wait_for(Duration::from_secs(10), || lines_of(&pids).len() == 2),
        "both commands started"
    );
    first.kill();
    assert!(notifications(&shared).is_empty());
    // The same instance again, on the same host: it records both runs, and tells them.
    let mut again = Instance::start(spec());
    wait_for_notifications(&shared, 2);
    // The stored work is resumed (attempt 2, whose success notifies nothing).
    wait_for_runs_recorded(&shared, 1);
    assert_eq!(again.server.stop(), Some(0));
    let notes = notifications(&shared);
    assert_eq!(notes.len(), 2, "{notes:#?}");
    assert_interrupted(
        about(&notes, "held"),
        ("held", "m-exit"),
        &interrupted_id(&db, "m-exit"),
    );
    assert_interrupted(
        about(&notes, "job"),
        ("job", "m-stored"),
        &interrupted_id(&db, "m-stored"),
    );
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn with_postgres_a_stored_push_that_takes_over_a_dead_instances_exit_run_notifies_interrupted() {
    use crate::pg::{Instance, TestDb};
    let db = TestDb::create();
    let shared = Dir::new();
    let command = shared.held_first_attempt(&shared.file("pids"));
    // The hook's `ack` is "exit" on a, "stored" on b (as while a change rolls out).
    let hooks = |ack: &str| {
        format!(
            "[defaults]\nkill_grace = \"200ms\"\n\n[hooks.held]\nack = \"{ack}\"\ncommand = '{command}'\n"
        )
    };
    let mut fleet = Instance::start_all(vec![
        interrupted_spec(
            &db,
            &shared,
            &hooks("exit"),
            ("a", "respond_within = \"500ms\""),
        ),
        interrupted_spec(&db, &shared, &hooks("stored"), ("b", "")),
    ]);
    assert_eq!(fleet[0].push("m-switch").status, 503);
    shared.wait_at_gate("held");
    fleet[0].kill();
    // CMQ's retry reaches b, whose push stores the message once a's lease ran out.
    let mut last = 0;
    let stored = wait_for(Duration::from_secs(20), || {
        last = fleet[1].push("m-switch").status;
        last == 200
    });
    assert!(stored, "b's push was answered {last}");
    wait_for_notifications(&shared, 1);
    // The stored work runs as attempt 2; its success notifies nothing.
    wait_for_runs_recorded(&shared, 1);
    assert_eq!(fleet[1].server.stop(), Some(0));
    assert_one_interrupted(
        &shared,
        ("held", "m-switch"),
        &interrupted_id(&db, "m-switch"),
    );
}

/// Waits (at most 20 s, else panics) until the recorder saved `count` runs in `dir`.
fn wait_for_runs_recorded(dir: &Dir, count: usize) {
    assert!(
        wait_for(Duration::from_secs(20), || dir.recorded().len() >= count),
        "{} runs recorded, not {count}",
        dir.recorded().len()
    );
}

#[test]
fn a_run_stopped_by_shutdown_notifies_interrupted_and_the_drain_waits_for_the_notification() {
    let dir = Dir::new();
    let hooks = format!("[hooks.held]\ncommand = '{}'\n", dir.gate("held", 30));
    let text = format!(
        "{}{}",
        config(
            "respond_within = \"200ms\"\nshutdown_grace = \"200ms\"",
            &hooks
        ),
        notify_table(&dir, 0, "on = [\"interrupted\"]")
    );
    let mut server = Server::start(&dir, &text);
    assert_eq!(server.post_seed("/", "m-stop").status, 503);
    dir.wait_at_gate("held");
    // No wait for the notification before the stop: the drain itself waits for it.
    assert_eq!(server.stop(), Some(0));
    let id = run_id(&dir, "held", "m-stop", 1);
    let notes = notifications(&dir);
    assert_eq!(notes.len(), 1, "{notes:#?}");
    notes[0].assert_vars(&[
        ("CMQHOOK_EVENT", "interrupted"),
        ("CMQHOOK_OUTCOME", "interrupted"),
        ("CMQHOOK_RUN_ID", &id),
    ]);
}
