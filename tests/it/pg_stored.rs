//! `ack = "stored"` with a shared PostgreSQL journal (SPEC §9 with §8): a push is answered
//! once its row is committed in the database; every instance takes due work from there, so a
//! message runs once across the fleet, its retries run on whichever instance comes first, and
//! the work of an instance that died is resumed elsewhere once its lease expires.
//!
//! Each test creates its own database on the server of `CMQHOOK_TEST_POSTGRES` and drops it;
//! every test here is ignored unless asked for (`cargo test -- --include-ignored`).

use std::sync::{Arc, Barrier};
use std::time::Duration;

use crate::harness::*;
use crate::pg::*;

/// A stored hook `job` running `command` (a TOML multi-line literal), retried after `retry`.
fn stored_hook(command: &str, retry: &str) -> String {
    format!(
        "[defaults]\nkill_grace = \"200ms\"\n\n[hooks.job]\nack = \"stored\"\nretry = {retry}\ncommand = '''{command}'''"
    )
}

/// Two instances `a` and `b` on `journal` with the hook `hooks`.
fn fleet(journal: &str, hooks: &str) -> Vec<Instance> {
    let server = |label: &str| config(&server_keys(journal, Some(label), "2s", ""), hooks);
    Instance::start_all(vec![
        Spec::new("a", server("a")),
        Spec::new("b", server("b")),
    ])
}

/// The result of the push's one hook.
fn result(response: &Response) -> serde_json::Value {
    response.json()["results"][0].clone()
}

/// (attempt, outcome, instance) of the runs of `msg_id`, newest first, once there are `count`
/// Which instance of `fleet` started the command whose shell is `pid`.
fn runner_of(fleet: &[Instance], pid: u32) -> usize {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the command runs");
    // `pid (comm) state ppid …`; comm may hold spaces, not a `)` followed by a space.
    let after = stat.rsplit_once(") ").expect("a stat line").1;
    let ppid: u32 = after
        .split(' ')
        .nth(1)
        .and_then(|ppid| ppid.parse().ok())
        .expect("a ppid");
    fleet
        .iter()
        .position(|instance| instance.server.child.id() == ppid)
        .unwrap_or_else(|| panic!("{pid}'s parent {ppid} is no instance"))
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
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn a_stored_push_answered_queued_on_one_instance_runs_once_across_the_fleet() {
    let db = TestDb::create();
    let shared = Dir::new();
    let fleet = fleet(&db.url(), &stored_hook(&shared.record(0), "[\"1s\"]"));
    let (a, b) = (&fleet[0], &fleet[1]);
    for n in 0..6 {
        let first = a.push(&format!("st-{n}"));
        assert_eq!(first.status, 200, "{}", first.text());
        assert_eq!(result(&first)["outcome"], "queued", "{}", first.text());
        assert_eq!(result(&first)["deduplicated"], false);
    }
    wait_for_runs(&shared, 6);
    let again = b.push("st-0");
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(result(&again)["outcome"], "succeeded", "{}", again.text());
    assert_eq!(result(&again)["deduplicated"], true);
    // Both instances look for due work twice a second: nothing is taken again.
    std::thread::sleep(Duration::from_millis(1500));
    let mut ids: Vec<String> = shared
        .recorded()
        .iter()
        .map(|run| run.var("CMQ_MSG_ID").unwrap_or("").to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["st-0", "st-1", "st-2", "st-3", "st-4", "st-5"]);
    assert_eq!(shared.attempts(), ["1"; 6]);
    let run = &shared.recorded()[0];
    assert_eq!(run.stdin, b"test message");
    assert_eq!(run.var("CMQ_TOPIC"), Some("MyTopic"));
    let rows = b.runs_of("st-3", 1);
    assert_eq!(rows[0].0, 1);
    assert_eq!(rows[0].1, "succeeded");
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn a_failing_stored_run_is_retried_by_whichever_instance_is_up() {
    let db = TestDb::create();
    let shared = Dir::new();
    // Fails on attempt 1, succeeds after.
    let command = format!("{}; [ \"$CMQHOOK_ATTEMPT\" -ge 2 ]", shared.record(0));
    let mut fleet = fleet(&db.url(), &stored_hook(&command, "[\"1s\"]"));
    let queued = fleet[0].push("retry-1");
    assert_eq!(queued.status, 200, "{}", queued.text());
    assert_eq!(result(&queued)["outcome"], "queued");
    // Attempt 1 fails on either instance; that one dies before the retry is due, so the
    // other runs attempt 2.
    let first = fleet[0].runs_of("retry-1", 1);
    assert_eq!((first[0].0, first[0].1.as_str()), (1, "failed"));
    let (dead, alive) = if first[0].2 == "a" { (0, 1) } else { (1, 0) };
    fleet[dead].kill();
    let other = fleet[alive].label.clone();
    assert_eq!(
        fleet[alive].runs_of("retry-1", 2),
        [
            (2, "succeeded".to_owned(), other),
            (1, "failed".to_owned(), fleet[dead].label.clone())
        ]
    );
    assert_eq!(shared.attempts(), ["1", "2"]);
    let again = fleet[alive].push("retry-1");
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(result(&again)["deduplicated"], true);
    assert_eq!(shared.attempts(), ["1", "2"]);
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn a_stored_message_whose_retries_all_fail_is_dead_once_across_the_fleet() {
    let db = TestDb::create();
    let shared = Dir::new();
    let fleet = fleet(&db.url(), &stored_hook(&shared.record(3), "[\"200ms\"]"));
    assert_eq!(fleet[1].push("dead-1").status, 200);
    let rows = fleet[0].runs_of("dead-1", 2);
    assert_eq!(
        rows.iter()
            .map(|(attempt, outcome, _)| (*attempt, outcome.as_str()))
            .collect::<Vec<_>>(),
        [(2, "failed"), (1, "failed")]
    );
    let dead: f64 = fleet
        .iter()
        .filter_map(|instance| {
            instance
                .server
                .metrics()
                .get("cmqhook_dead_letters_total", &[("hook", "job")])
        })
        .sum();
    assert_eq!(dead, 1.0);
    for instance in &fleet {
        let rows = instance.history(&["--dead"]);
        assert_eq!(rows.len(), 1, "{}: {rows:#?}", instance.label);
        assert_eq!(rows[0]["kind"], "dead");
        assert_eq!(rows[0]["hook"], "job");
        assert_eq!(rows[0]["msg_id"], "dead-1");
        assert_eq!(rows[0]["attempt"], 2);
        assert_eq!(rows[0]["outcome"], "failed");
    }
    let again = fleet[0].push("dead-1");
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(result(&again)["outcome"], "dead");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(shared.attempts(), ["1", "2"]);
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn a_sigkilled_instances_stored_run_is_resumed_elsewhere_once_its_lease_expires() {
    let db = TestDb::create();
    let shared = Dir::new();
    let pids = shared.file("pids");
    // Attempt 1 is held at a gate; every attempt notes its pid.
    let command = shared.held_first_attempt(&pids);
    // No retry left: a resumed run that counted as a failure would make the message dead.
    let mut fleet = fleet(&db.url(), &stored_hook(&command, "[]"));
    let queued = fleet[0].push("kill-1");
    assert_eq!(queued.status, 200, "{}", queued.text());
    shared.wait_at_gate("held");
    let orphan = wait_for_pid(&pids);
    // Either instance may have taken the work: that one dies, with its command.
    let dead = runner_of(&fleet, orphan);
    let started = std::time::Instant::now();
    fleet[dead].kill();
    kill_group(orphan);
    assert!(
        wait_for(Duration::from_secs(5), || !alive(orphan)),
        "the held command {orphan} is still running"
    );
    // No new push: the other takes the work over once the lease expired, as attempt 2.
    let b = &fleet[1 - dead];
    assert_eq!(
        b.runs_of("kill-1", 2),
        [
            (2, "succeeded".to_owned(), b.label.clone()),
            (1, "interrupted".to_owned(), fleet[dead].label.clone())
        ]
    );
    assert!(
        started.elapsed() >= LEASE / 2,
        "resumed {:?} after the kill: before the lease could expire",
        started.elapsed()
    );
    assert_eq!(shared.attempts(), ["2"]);
    assert_eq!(lines_of(&pids).len(), 2, "{:?}", lines_of(&pids));
    let again = b.push("kill-1");
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(result(&again)["outcome"], "succeeded");
    assert_eq!(result(&again)["deduplicated"], true);
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn duplicates_of_a_stored_push_on_two_instances_run_once_and_both_get_200() {
    let db = TestDb::create();
    let shared = Dir::new();
    let fleet = Arc::new(fleet(
        &db.url(),
        &stored_hook(&shared.record(0), "[\"1s\"]"),
    ));
    for n in 0..5 {
        let msg_id = format!("dup-{n}");
        let barrier = Arc::new(Barrier::new(2));
        let answers: Vec<Response> = (0..2)
            .map(|index| {
                let (fleet, barrier, msg_id) =
                    (Arc::clone(&fleet), Arc::clone(&barrier), msg_id.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    fleet[index].push(&msg_id)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|thread| thread.join().expect("push thread"))
            .collect();
        for answer in &answers {
            assert_eq!(answer.status, 200, "{msg_id}: {}", answer.text());
            assert!(
                ["queued", "succeeded"].contains(&result(answer)["outcome"].as_str().unwrap_or("")),
                "{}",
                answer.text()
            );
        }
        let firsts = answers
            .iter()
            .filter(|answer| result(answer)["deduplicated"] == false)
            .count();
        assert_eq!(firsts, 1, "one push stored {msg_id}");
    }
    wait_for_runs(&shared, 5);
    std::thread::sleep(Duration::from_millis(1500));
    let mut ids: Vec<String> = shared
        .recorded()
        .iter()
        .map(|run| run.var("CMQ_MSG_ID").unwrap_or("").to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["dup-0", "dup-1", "dup-2", "dup-3", "dup-4"]);
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn a_stored_push_gets_503_while_the_database_is_down_and_is_stored_once_it_is_back() {
    let db = TestDb::create();
    let proxy = Proxy::start(db.server_addr());
    let shared = Dir::new();
    let fleet = fleet(
        &db.url_via(&proxy),
        &stored_hook(&shared.record(0), "[\"1s\"]"),
    );
    let a = &fleet[0];
    proxy.cut();
    let down = a.push("down-1");
    assert_eq!(down.status, 503, "{}", down.text());
    assert!(down.header("retry-after").is_some(), "{:?}", down.headers);
    assert_ne!(result(&down)["outcome"], "queued");
    let later = a.push("down-1");
    assert_eq!(later.status, 503, "{}", later.text());
    std::thread::sleep(Duration::from_secs(1));
    assert!(shared.recorded().is_empty(), "nothing ran while cut");
    proxy.restore();
    let mut last = None;
    let stored = poll(Duration::from_secs(20), Duration::from_millis(100), || {
        let response = a.push("down-1");
        let ok = response.status == 200;
        last = Some(response);
        ok
    });
    let last = last.expect("pushed");
    assert!(stored, "never stored: {} {}", last.status, last.text());
    wait_for_runs(&shared, 1);
    std::thread::sleep(Duration::from_secs(1));
    let ran: Vec<String> = shared
        .recorded()
        .iter()
        .map(|run| run.var("CMQ_MSG_ID").unwrap_or("").to_owned())
        .collect();
    assert!(
        ran.iter().filter(|id| *id == "down-1").count() == 1,
        "{ran:?}"
    );
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn a_restarted_instance_kills_its_previous_stored_run_and_resumes_it_at_once() {
    let db = TestDb::create();
    let shared = Dir::new();
    let pids = shared.file("pids");
    let command = shared.held_first_attempt(&pids);
    // A long lease: the restarted instance must not need it to expire for its own work.
    let text = config(
        &server_keys(&db.url(), Some("a"), "30s", ""),
        &stored_hook(&command, "[]"),
    );
    let mut first = Instance::start(Spec::new("a", text.clone()));
    assert_eq!(first.push("restart-1").status, 200);
    shared.wait_at_gate("held");
    let orphan = wait_for_pid(&pids);
    // As if its guard had died with it: its command runs on.
    crate::guard::kill_past_the_guard(&first.server);
    first.kill();
    assert!(alive(orphan), "the command outlives its instance");

    let again = Instance::start(Spec::new("a", text));
    let killed = wait_for(Duration::from_secs(5), || !alive(orphan));
    kill_group(orphan);
    assert!(
        killed,
        "the restarted instance left its previous process's command {orphan} running"
    );
    // No new push, and well within the lease.
    wait_for_runs(&shared, 1);
    assert_eq!(shared.attempts(), ["2"]);
    assert_eq!(
        again.runs_of("restart-1", 2),
        [
            (2, "succeeded".to_owned(), "a".to_owned()),
            (1, "interrupted".to_owned(), "a".to_owned())
        ]
    );
    drop(first);
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn a_stored_run_stopped_by_a_shutdown_is_resumed_by_another_instance_at_once() {
    let db = TestDb::create();
    let shared = Dir::new();
    let pids = shared.file("pids");
    let command = shared.held_first_attempt(&pids);
    // A long lease: the other instance must not need it to expire; no retry to use up.
    let server = |label: &str| {
        config(
            &server_keys(&db.url(), Some(label), "30s", "shutdown_grace = \"200ms\""),
            &stored_hook(&command, "[]"),
        )
    };
    let mut fleet = Instance::start_all(vec![
        Spec::new("a", server("a")),
        Spec::new("b", server("b")),
    ]);
    assert_eq!(fleet[0].push("term-1").status, 200);
    shared.wait_at_gate("held");
    let stopped = runner_of(&fleet, wait_for_pid(&pids));
    fleet[stopped].server.signal("TERM");
    fleet[stopped].server.wait_exit(Duration::from_secs(10));
    let other = &fleet[1 - stopped];
    wait_for_runs(&shared, 1);
    assert_eq!(shared.attempts(), ["2"]);
    assert_eq!(
        other.runs_of("term-1", 2),
        [
            (2, "succeeded".to_owned(), other.label.clone()),
            (1, "interrupted".to_owned(), fleet[stopped].label.clone())
        ]
    );
}
