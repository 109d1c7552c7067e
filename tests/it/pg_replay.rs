//! `keep_bodies`, `cmqhook replay` and `cmqhook_stored_pending` with a shared PostgreSQL
//! journal (SPEC §9 with §8): the kept bodies live in the database, and `replay` records a
//! request there that whichever `serve` of the fleet comes first runs and answers; with no
//! `serve` running, `replay` claims the message in the database itself and runs it.
//!
//! Each test creates its own database on the server of `CMQHOOK_TEST_POSTGRES` and drops it;
//! every test here is ignored unless asked for (`cargo test -- --include-ignored`).

use std::time::Duration;

use crate::harness::*;
use crate::pg::*;
use crate::replay::{assert_replayed_byte_exact, binary_push};

/// Instances labelled `labels` on `journal`, each with `keys` in [server] and `hooks`.
fn fleet(journal: &str, labels: &[&str], keys: &str, hooks: &str) -> Vec<Instance> {
    Instance::start_all(
        labels
            .iter()
            .map(|label| {
                Spec::new(
                    label,
                    config(&server_keys(journal, Some(label), "2s", keys), hooks),
                )
            })
            .collect(),
    )
}

/// `cmqhook replay --msg-id MSG_ID ARGS` with `instance`'s config: (exit code, stdout, stderr).
fn replay(instance: &Instance, msg_id: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec!["--msg-id", msg_id];
    all.extend_from_slice(args);
    let output = instance.cli("replay", &all);
    (
        output.status.code(),
        text(&output.stdout),
        text(&output.stderr),
    )
}

/// (attempt, outcome, instance) of `history --msg-id MSG_ID` once it has `count` rows, none
#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn replay_asks_the_fleet_and_runs_a_kept_binary_body_byte_exact_as_the_next_attempt() {
    let db = TestDb::create();
    let shared = Dir::new();
    let fleet = fleet(
        &db.url(),
        &["a", "b"],
        "keep_bodies = \"1d\"",
        &shared.recorder_hook("any"),
    );
    let (raw, headers) = binary_push("pb1");
    let first = fleet[0].server.post("/raw", &headers, &raw);
    assert_eq!(first.status, 200, "{}", first.text());
    let (code, stdout, stderr) = replay(&fleet[1], "pb1", &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("any: succeeded"), "{stdout}");
    // A serve of the fleet ran it, not the command.
    assert!(stderr.contains("took the replay"), "{stderr}");
    assert_replayed_byte_exact(&shared.recorded(), &raw, "pb1");
    let rows = fleet[0].runs_of("pb1", 2);
    assert_eq!((rows[0].0, rows[0].1.as_str()), (2, "succeeded"));
    assert_eq!((rows[1].0, rows[1].1.as_str()), (1, "succeeded"));
    assert!(["a", "b"].contains(&rows[0].2.as_str()), "{rows:?}");
    // CMQ's retry afterwards, on either instance: the replay's success answers it.
    for instance in &fleet {
        let retry = instance.server.post("/raw", &headers, &raw);
        assert_eq!(retry.status, 200, "{}", retry.text());
        assert_eq!(retry.json()["results"][0]["deduplicated"], true);
    }
    assert_eq!(shared.recorded().len(), 2);
    // The body is in the shared database, not in any instance's dir; a retry's replaces it.
    assert_eq!(
        db.sql("SELECT count(*) FROM cmqhook_bodies WHERE msg_id = 'pb1'")
            .trim(),
        "1"
    );
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn replay_with_no_serve_running_claims_the_message_itself_and_needs_a_kept_body() {
    let db = TestDb::create();
    let shared = Dir::new();
    let mut fleet = fleet(
        &db.url(),
        &["a"],
        "keep_bodies = \"1d\"",
        &shared.recorder_hook("any"),
    );
    assert_eq!(fleet[0].push("solo-1").status, 200);
    assert_eq!(fleet[0].server.stop(), Some(0));
    let (code, stdout, stderr) = replay(&fleet[0], "solo-1", &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stderr.contains("no serve took the replay"), "{stderr}");
    assert!(stdout.contains("any: succeeded"), "{stdout}");
    assert_eq!(shared.attempts(), ["1", "2"]);
    assert_eq!(shared.recorded()[1].var("CMQHOOK_REPLAY"), Some("1"));
    assert_eq!(
        fleet[0]
            .runs_of("solo-1", 2)
            .iter()
            .map(|(attempt, outcome, _)| (*attempt, outcome.as_str()))
            .collect::<Vec<_>>(),
        [(2, "succeeded"), (1, "succeeded")]
    );
    // The request it recorded and withdrew is gone; no serve will run it later.
    assert_eq!(db.sql("SELECT count(*) FROM cmqhook_replays").trim(), "0");
    let (code, _, stderr) = replay(&fleet[0], "never-seen", &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("keep_bodies"), "{stderr}");
    assert_eq!(shared.recorded().len(), 2);
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn a_replay_waits_for_a_run_of_the_message_on_the_fleet_and_never_runs_beside_it() {
    let db = TestDb::create();
    let shared = Dir::new();
    // Attempt 1 is held at a gate; the recorder notes a run when it ends.
    let command = format!(
        "if [ \"$CMQHOOK_ATTEMPT\" = 1 ]; then {gate}; fi; {record}",
        gate = shared.gate("held", 60),
        record = shared.record(0)
    );
    let fleet = fleet(
        &db.url(),
        &["a", "b"],
        "keep_bodies = \"1d\"",
        &format!("[hooks.any]\ncommand = '{command}'"),
    );
    std::thread::scope(|scope| {
        let pushed = scope.spawn(|| fleet[0].push("busy-1"));
        shared.wait_at_gate("held");
        let replayed = scope.spawn(|| replay(&fleet[1], "busy-1", &[]));
        // Some instance took the request and waits for the run in flight.
        assert!(
            wait_for(Duration::from_secs(10), || {
                db.sql("SELECT count(*) FROM cmqhook_replays WHERE state = 'taken'")
                    .trim()
                    == "1"
            }),
            "no instance took the replay request"
        );
        // Both instances look for requests four times a second, and a replay that did not
        // wait would start at once: nothing may have run beside the held attempt.
        std::thread::sleep(Duration::from_millis(600));
        assert!(shared.recorded().is_empty(), "{:?}", shared.attempts());
        shared.open_gate("held");
        let pushed = pushed.join().expect("push");
        assert_eq!(pushed.status, 200, "{}", pushed.text());
        let (code, stdout, stderr) = replayed.join().expect("replay");
        assert_eq!(code, Some(0), "{stdout}{stderr}");
    });
    assert_eq!(shared.attempts(), ["1", "2"]);
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn replaying_a_dead_stored_message_on_the_fleet_revives_it() {
    let db = TestDb::create();
    let shared = Dir::new();
    let fixed = shared.file("fixed");
    // Fails until `fixed` exists; one retry, then dead. No `keep_bodies`: the stored work
    // keeps its body.
    let command = format!("{}; [ -e {} ]", shared.record(0), fixed.display());
    let fleet = fleet(
        &db.url(),
        &["a", "b"],
        "",
        &format!("[hooks.job]\nack = \"stored\"\nretry = [\"200ms\"]\ncommand = '{command}'"),
    );
    assert_eq!(fleet[0].push("dead-r").status, 200);
    let mut dead = Vec::new();
    assert!(
        wait_for(Duration::from_secs(20), || {
            dead = fleet[1].history(&["--dead"]);
            dead.len() == 1
        }),
        "{dead:#?}"
    );
    std::fs::write(&fixed, b"").expect("fix the job");
    let (code, stdout, stderr) = replay(&fleet[1], "dead-r", &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("job: succeeded"), "{stdout}");
    assert!(fleet[0].history(&["--dead"]).is_empty());
    assert_eq!(shared.attempts(), ["1", "2", "3"]);
    assert_eq!(
        db.sql("SELECT state FROM cmqhook_stored WHERE msg_id = 'dead-r'")
            .trim(),
        "done"
    );
    // CMQ's retry now: done, deduplicated, nothing runs.
    let retry = fleet[0].push("dead-r");
    assert_eq!(retry.status, 200, "{}", retry.text());
    assert_eq!(retry.json()["results"][0]["outcome"], "succeeded");
    assert_eq!(retry.json()["results"][0]["deduplicated"], true);
    assert_eq!(shared.attempts(), ["1", "2", "3"]);
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn stored_pending_shows_the_fleets_stored_work_waiting_on_every_instance() {
    let db = TestDb::create();
    let shared = Dir::new();
    // Always fails; the retry is an hour away.
    let fleet = fleet(
        &db.url(),
        &["a", "b"],
        "",
        &format!(
            "[hooks.job]\nack = \"stored\"\nretry = [\"1h\"]\ncommand = '{}'",
            shared.record(3)
        ),
    );
    let pending = |instance: &Instance| {
        instance
            .server
            .metrics()
            .get("cmqhook_stored_pending", &[("hook", "job")])
    };
    for instance in &fleet {
        assert_eq!(pending(instance), Some(0.0), "{}", instance.label);
    }
    assert_eq!(fleet[0].push("wait-1").status, 200);
    assert_eq!(fleet[1].push("wait-2").status, 200);
    for instance in &fleet {
        let mut seen = None;
        assert!(
            wait_for(Duration::from_secs(10), || {
                seen = pending(instance);
                seen == Some(2.0)
            }),
            "{}: cmqhook_stored_pending {seen:?}",
            instance.label
        );
    }
    assert_eq!(shared.attempts(), ["1", "1"]);
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn a_stored_message_done_before_dedup_for_is_not_stored_again_on_the_fleet_while_a_replay_runs() {
    let db = TestDb::create();
    let shared = Dir::new();
    // The replay is held at a gate; the message's own run is not.
    let command = format!(
        "if [ \"$CMQHOOK_REPLAY\" = 1 ]; then {gate}; fi; {record}",
        gate = shared.gate("replay", 60),
        record = shared.record(0)
    );
    let fleet = fleet(
        &db.url(),
        &["a", "b"],
        "dedup_for = \"1s\"\nrespond_within = \"1s\"",
        &format!("[hooks.job]\nack = \"stored\"\nretry = []\ncommand = '{command}'"),
    );
    assert_eq!(fleet[0].push("again-1").status, 200);
    assert!(wait_for(Duration::from_secs(10), || shared
        .recorded()
        .len()
        == 1));
    // Done longer ago than `dedup_for`: a push of it now would be a new message.
    std::thread::sleep(Duration::from_millis(1100));
    std::thread::scope(|scope| {
        let replaying = scope.spawn(|| replay(&fleet[0], "again-1", &[]));
        shared.wait_at_gate("replay");
        // Not stored (it would run beside the replay): it waits for the replay, as a push
        // to an `ack = "exit"` hook does (SPEC §5), and is answered 503 once
        // `respond_within` passed.
        for instance in &fleet {
            let during = instance.push("again-1");
            assert_eq!(during.status, 503, "{}", during.text());
            assert!(
                during.text().contains("\"outcome\":\"running\""),
                "{}",
                during.text()
            );
        }
        shared.open_gate("replay");
        let (code, stdout, stderr) = replaying.join().expect("replay");
        assert_eq!(code, Some(0), "{stdout}{stderr}");
    });
    assert_eq!(shared.attempts(), ["1", "2"]);
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn replay_reports_an_instance_that_took_it_and_died_once_its_lease_expired() {
    let db = TestDb::create();
    let shared = Dir::new();
    let pids = shared.file("pids");
    // The replay is held at a gate and notes its pid.
    let command = format!(
        "if [ \"$CMQHOOK_REPLAY\" = 1 ]; then echo $$ >> {pids}; {gate}; fi; {record}",
        pids = pids.display(),
        gate = shared.gate("replay", 60),
        record = shared.record(0)
    );
    let mut fleet = fleet(
        &db.url(),
        &["a"],
        "keep_bodies = \"1d\"",
        &format!("[hooks.any]\ncommand = '{command}'"),
    );
    assert_eq!(fleet[0].push("died-1").status, 200);
    let config = fleet[0].dir.config_file();
    let replaying = std::thread::spawn(move || {
        let config = config.to_str().expect("utf-8 path").to_owned();
        cmqhook(&["replay", "-c", &config, "--msg-id", "died-1"], b"")
    });
    shared.wait_at_gate("replay");
    let held = wait_for_pid(&pids);
    // The instance that took the request dies with its command: no answer will come.
    fleet[0].kill();
    kill_group(held);
    let replayed = replaying.join().expect("replay");
    assert_eq!(replayed.status.code(), Some(1), "{}", both(&replayed));
    assert!(
        text(&replayed.stderr).contains("instance `a` took the replay and stopped renewing it"),
        "{}",
        both(&replayed)
    );
    assert_eq!(shared.attempts(), ["1"]);
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn replay_of_a_kept_push_whose_hooks_cannot_be_read_fails_and_runs_nothing() {
    let db = TestDb::create();
    let shared = Dir::new();
    let mut fleet = fleet(
        &db.url(),
        &["a"],
        "keep_bodies = \"1d\"",
        &shared.recorder_hook("any"),
    );
    assert_eq!(fleet[0].push("bad-hooks").status, 200);
    assert_eq!(fleet[0].server.stop(), Some(0));
    db.sql("UPDATE cmqhook_bodies SET hooks = 'not json' WHERE msg_id = 'bad-hooks'");
    let (code, stdout, stderr) = replay(&fleet[0], "bad-hooks", &[]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("unreadabl"), "{stderr}");
    assert_eq!(shared.attempts(), ["1"], "a replay ran");
}
