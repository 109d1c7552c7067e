//! One state per (hook, message id) whatever the hook's `ack`, with a shared PostgreSQL
//! journal (SPEC §5 with §8; issue 22 items 1 and 2): the claims row is the state of stored
//! messages too, so a success under either mode is final under the other, across reloads that
//! switch a hook's `ack` on every instance; an exit push of stored work waiting for a retry
//! runs nothing; a stored run and an exit run of one message never run at once, on any
//! instance; a stored run's slot is freed only once its end is committed.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use crate::harness::*;
use crate::pg::*;

/// The test's database; panics when `CMQHOOK_TEST_POSTGRES` is not set.
fn test_db() -> TestDb {
    TestDb::create()
}

/// A hook `job` with `ack` and `extra` lines whose command appends its message id to the
/// shared dir's `ran` and notes its shell's pid in `pid.MSG_ID` there, then runs `then`.
fn job(shared: &Dir, ack: &str, extra: &str, then: &str) -> String {
    format!(
        "[defaults]\nkill_grace = \"200ms\"\n\n[hooks.job]\npath = \"/\"\nack = \"{ack}\"\n{extra}\ncommand = '''printf '%s\\n' \"$CMQ_MSG_ID\" >> {ran}; echo $$ > {dir}/pid.$CMQ_MSG_ID; {then}'''",
        ran = shared.file("ran").display(),
        dir = shared.path().display(),
    )
}

/// The config of instance `label` on `journal` with `server` keys and `hooks`.
fn instance_config(journal: &str, label: &str, server: &str, hooks: &str) -> String {
    config(&server_keys(journal, Some(label), "2s", server), hooks)
}

/// How many times each message id ran.
fn ran(shared: &Dir) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in lines_of(&shared.file("ran")) {
        *counts.entry(line).or_insert(0) += 1;
    }
    counts
}

/// Waits until the command that ran `msg_id` has exited and `instance` has journaled its
/// success.
fn wait_succeeded(shared: &Dir, instance: &Instance, msg_id: &str) {
    let pid = wait_for_pid(&shared.file(&format!("pid.{msg_id}")));
    assert!(
        wait_for(Duration::from_secs(20), || !alive(pid)),
        "the command of {msg_id} never exited"
    );
    let rows = instance.settled_history(&["--msg-id", msg_id], Duration::from_secs(20));
    assert_eq!(rows[0]["outcome"], "succeeded", "{rows:#?}");
}

/// A push of `msg_id` to `instance` is answered 200 `succeeded`, deduplicated: nothing runs.
fn assert_deduplicated(instance: &Instance, msg_id: &str) {
    let again = instance.push(msg_id);
    assert_eq!(
        again.status,
        200,
        "{msg_id} on {}: {}",
        instance.label,
        again.text()
    );
    let result = &again.json()["results"][0];
    assert_eq!(result["outcome"], "succeeded", "{msg_id}: {}", again.text());
    assert_eq!(result["deduplicated"], true, "{msg_id}: {}", again.text());
}

/// A shell snippet: wait at the gate named after the message id (60 s at most), then exit 0.
fn held(shared: &Dir) -> String {
    format!("{}; exit 0", shared.gate("$CMQ_MSG_ID", 60))
}

/// Rewrites `instance`'s config and waits until it says it reloaded it for the `reloads`th
/// time.
fn reload(instance: &Instance, text: &str, reloads: usize) {
    instance.dir.write_config(text);
    instance.server.signal("HUP");
    assert!(
        wait_for(Duration::from_secs(10), || {
            instance
                .server
                .log_text()
                .matches("config reloaded")
                .count()
                >= reloads
        }),
        "{}",
        instance.server.log_text()
    );
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn switching_a_hook_between_stored_and_exit_on_two_instances_keeps_its_successes_both_ways() {
    let db = test_db();
    let shared = Dir::new();
    let stored = job(&shared, "stored", "", "exit 0");
    let exit = job(&shared, "exit", "", "exit 0");
    let configs =
        |hooks: &str| ["a", "b"].map(|label| instance_config(&db.url(), label, "", hooks));
    let fleet = Instance::start_all(
        configs(&stored)
            .into_iter()
            .zip(["a", "b"])
            .map(|(config, label)| Spec::new(label, config))
            .collect(),
    );
    // Stored on a, succeeded there (or on b, whichever took the work).
    for n in 0..3 {
        let queued = fleet[0].push(&format!("st-{n}"));
        assert_eq!(queued.status, 200, "{}", queued.text());
        assert_eq!(queued.json()["results"][0]["outcome"], "queued");
    }
    for n in 0..3 {
        wait_succeeded(&shared, &fleet[0], &format!("st-{n}"));
    }
    // Both instances switch the hook to `ack = "exit"`: the stored successes are final.
    for (instance, config) in fleet.iter().zip(configs(&exit)) {
        reload(instance, &config, 1);
    }
    for n in 0..3 {
        assert_deduplicated(&fleet[1], &format!("st-{n}"));
        let answered = fleet[0].push(&format!("ex-{n}"));
        assert_eq!(answered.status, 200, "{}", answered.text());
        assert_eq!(answered.json()["results"][0]["deduplicated"], false);
    }
    // And back to `ack = "stored"`: the exit successes are final too.
    for (instance, config) in fleet.iter().zip(configs(&stored)) {
        reload(instance, &config, 2);
    }
    for n in 0..3 {
        assert_deduplicated(&fleet[1], &format!("ex-{n}"));
        assert_deduplicated(&fleet[1], &format!("st-{n}"));
        assert_deduplicated(&fleet[0], &format!("ex-{n}"));
    }
    // Whatever the scheduler found meanwhile has had time to run.
    std::thread::sleep(Duration::from_secs(1));
    let counts = ran(&shared);
    for n in 0..3 {
        for id in [format!("st-{n}"), format!("ex-{n}")] {
            assert_eq!(counts.get(&id), Some(&1), "{id} ran again: {counts:?}");
        }
    }
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn an_exit_push_of_a_message_stored_and_waiting_for_a_retry_is_answered_queued_and_runs_nothing() {
    let db = test_db();
    let shared = Dir::new();
    // a has the hook stored (it fails, its retry is an hour away); b has it as exit.
    let fleet = Instance::start_all(vec![
        Spec::new(
            "a",
            instance_config(
                &db.url(),
                "a",
                "",
                &job(&shared, "stored", "retry = [\"1h\"]", "exit 3"),
            ),
        ),
        Spec::new(
            "b",
            instance_config(&db.url(), "b", "", &job(&shared, "exit", "", "exit 0")),
        ),
    ]);
    assert_eq!(fleet[0].push("w-1").status, 200);
    let rows = fleet[0].settled_history(&["--msg-id", "w-1"], Duration::from_secs(20));
    assert_eq!(rows[0]["outcome"], "failed", "{rows:#?}");
    for instance in &fleet {
        let answered = instance.push("w-1");
        assert_eq!(answered.status, 200, "{}", answered.text());
        let result = &answered.json()["results"][0];
        assert_eq!(result["outcome"], "queued", "{}", answered.text());
        assert_eq!(result["deduplicated"], true, "{}", answered.text());
    }
    assert_eq!(ran(&shared).get("w-1"), Some(&1));
    assert_eq!(
        db.sql("SELECT outcome, attempt FROM cmqhook_claims WHERE msg_id = 'w-1'")
            .trim(),
        "queued|1"
    );
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn a_stored_success_never_runs_again_after_a_sigkill_the_moment_it_is_committed() {
    let db = test_db();
    let shared = Dir::new();
    // Unlike SQLite's end log, the database has the end only once its statement committed:
    // the kill comes as soon as the message's one state says it succeeded, before anything
    // else of the run's end (the stored row, memory) may have been settled.
    let config = instance_config(&db.url(), "a", "", &job(&shared, "stored", "", "exit 0"));
    let state = |msg_id: &str| {
        psql(
            &db.url(),
            &format!(
                "SELECT c.outcome || '|' || s.state FROM cmqhook_claims c
                 JOIN cmqhook_stored s USING (hook, msg_id)
                 WHERE c.hook = 'job' AND c.msg_id = '{msg_id}'"
            ),
        )
        .unwrap_or_default()
    };
    for n in 0..5 {
        let msg_id = format!("s-{n}");
        let mut instance = Instance::start(Spec::new("a", config.clone()));
        let first = instance.push(&msg_id);
        assert_eq!(first.status, 200, "{}", first.text());
        assert_eq!(first.json()["results"][0]["outcome"], "queued");
        assert!(
            poll(Duration::from_secs(20), Duration::from_millis(1), || {
                state(&msg_id).starts_with("succeeded")
            }),
            "{msg_id}: the claim never said succeeded: {}",
            state(&msg_id)
        );
        instance.kill();
        // Settled in one statement: the stored work is done, nothing resumes it.
        assert_eq!(state(&msg_id).trim(), "succeeded|done");
        let instance = Instance::start(Spec::new("a", config.clone()));
        let again = instance.push(&msg_id);
        assert_eq!(again.status, 200, "{msg_id}: {}", again.text());
        assert_eq!(
            again.json()["results"][0]["outcome"],
            "succeeded",
            "{msg_id} is not settled: {}",
            again.text()
        );
        assert_eq!(ran(&shared).get(&msg_id), Some(&1), "{msg_id} ran again");
    }
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn a_stored_run_and_an_exit_push_of_the_same_message_on_two_instances_never_run_at_once() {
    let db = test_db();
    let shared = Dir::new();
    // Every run waits at the gate named after its message; both answer in 1 s.
    let then = held(&shared);
    let keys = "respond_within = \"1s\"";
    let fleet = Instance::start_all(vec![
        Spec::new(
            "a",
            instance_config(&db.url(), "a", keys, &job(&shared, "stored", "", &then)),
        ),
        Spec::new(
            "b",
            instance_config(&db.url(), "b", keys, &job(&shared, "exit", "", &then)),
        ),
    ]);
    // a's stored run holds the message: b's exit push waits for it and runs nothing.
    assert_eq!(fleet[0].push("both-1").status, 200);
    shared.wait_at_gate("both-1");
    for _ in 0..2 {
        let waited = fleet[1].push("both-1");
        assert_eq!(waited.status, 503, "{}", waited.text());
    }
    assert_eq!(ran(&shared).get("both-1"), Some(&1), "b ran it beside a");
    shared.open_gate("both-1");
    wait_succeeded(&shared, &fleet[0], "both-1");
    assert_deduplicated(&fleet[1], "both-1");

    // And the other way: b's exit run holds the message, a's stored push waits for it,
    // stores nothing, and is answered once it succeeded.
    let waiting = std::thread::spawn({
        let addr = fleet[1].server.addr;
        move || {
            post(
                addr,
                "/",
                &seed_headers("both-2"),
                seed_envelope("both-2").as_bytes(),
            )
        }
    });
    shared.wait_at_gate("both-2");
    let during = fleet[0].push("both-2");
    assert_eq!(during.status, 503, "{}", during.text());
    assert_eq!(during.json()["results"][0]["outcome"], "running");
    assert_eq!(
        ran(&shared).get("both-2"),
        Some(&1),
        "a stored it beside b's run"
    );
    assert_eq!(
        db.sql("SELECT count(*) FROM cmqhook_stored WHERE msg_id = 'both-2'")
            .trim(),
        "0"
    );
    assert_eq!(waiting.join().expect("push thread").status, 503);
    shared.open_gate("both-2");
    let rows = fleet[1].settled_history(&["--msg-id", "both-2"], Duration::from_secs(20));
    assert_eq!(rows[0]["outcome"], "succeeded", "{rows:#?}");
    assert_deduplicated(&fleet[0], "both-2");
    std::thread::sleep(Duration::from_secs(1));
    let counts = ran(&shared);
    assert_eq!(counts.get("both-1"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("both-2"), Some(&1), "{counts:?}");
}

/// A `psql` session holding a lock on rows until dropped (its connection closes, which
/// rolls its transaction back); its stdin is kept open, so that psql waits for more.
struct Lock {
    psql: Child,
    _stdin: ChildStdin,
}

impl Lock {
    /// Runs `BEGIN; SELECT … FOR UPDATE` with `select` in `url`, and waits until it holds.
    fn take(url: &str, select: &str) -> Lock {
        let mut child = Command::new("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url])
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("psql (apt-get install postgresql-client)");
        let mut stdin = child.stdin.take().expect("piped");
        writeln!(stdin, "BEGIN;\n{select} FOR UPDATE;\n\\echo locked").expect("write to psql");
        stdin.flush().expect("flush psql");
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        assert!(
            lines.any(|line| line.is_ok_and(|line| line == "locked")),
            "psql never took the lock"
        );
        Lock {
            psql: child,
            _stdin: stdin,
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = self.psql.kill();
        let _ = self.psql.wait();
    }
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn a_stored_runs_slot_is_freed_only_once_its_end_is_committed() {
    let db = test_db();
    let shared = Dir::new();
    // One slot; a lease far longer than the test, so that no renewal falls in it.
    let fleet = Instance::start_all(vec![Spec::new(
        "a",
        config(
            &server_keys(&db.url(), Some("a"), "90s", ""),
            &job(&shared, "stored", "concurrency = 1", &held(&shared)),
        ),
    )]);
    let a = &fleet[0];
    let first = a.push("slot-1");
    assert_eq!(first.status, 200, "{}", first.text());
    shared.wait_at_gate("slot-1");
    let pid = wait_for_pid(&shared.file("pid.slot-1"));
    // The end of slot-1 cannot be committed while this holds its stored row.
    let lock = Lock::take(
        &db.url(),
        "SELECT 1 FROM cmqhook_stored WHERE msg_id = 'slot-1'",
    );
    shared.open_gate("slot-1");
    assert!(
        wait_for(Duration::from_secs(20), || !alive(pid)),
        "slot-1 never exited"
    );
    assert_eq!(a.push("slot-2").status, 200);
    // slot-2 waits for the slot, which slot-1 holds until its end is committed.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        ran(&shared).get("slot-2"),
        None,
        "slot-2 ran while slot-1's end was not committed"
    );
    drop(lock);
    shared.open_gate("slot-2");
    assert!(
        wait_for(Duration::from_secs(20), || ran(&shared)
            .contains_key("slot-2")),
        "slot-2 never ran"
    );
    let rows = a.settled_history(&["--msg-id", "slot-1"], Duration::from_secs(20));
    assert_eq!(rows[0]["outcome"], "succeeded", "{rows:#?}");
}
