//! Pull mode (SPEC §11): hooks that take the messages of a `[[queue]]`, `route` and `run` with
//! `--from-queue`, and `serve` consuming a queue of the stand-in server.

use std::time::{Duration, Instant};

use crate::harness::*;
use crate::pg::{Instance, LEASE, Spec, TestDb, server_keys};
use crate::standin::{Fault, SECRET_ID, SECRET_KEY, StandIn};

/// How long a message may take to be received, run and deleted.
const SETTLED_WITHIN: Duration = Duration::from_secs(20);

/// A stand-in with the queue `deploys` whose visibility timeout is `visibility`.
fn standin(visibility: Duration) -> StandIn {
    let standin = StandIn::start();
    standin.create_queue("deploys", visibility);
    standin
}

/// A config consuming `deploys` on `standin` (its table with `queue_extra`), with `server`
/// keys and one hook `deploy` taking its messages: `hook` holds its other lines.
fn consuming(standin: &StandIn, server: &str, queue_extra: &str, hook: &str) -> String {
    config(
        server,
        &format!(
            "{}\n[hooks.deploy]\nfrom_queue = \"deploys\"\n{hook}\n",
            standin.queue_table("deploys", queue_extra)
        ),
    )
}

/// The value of the queue metric `name` for `deploys`.
fn queue_metric(server: &Server, name: &str) -> f64 {
    server
        .metrics()
        .get(name, &[("queue", "deploys")])
        .unwrap_or(0.0)
}

/// Waits until the queue metric `name` of `deploys` is `value`: the stand-in has a delete as
/// soon as it answers it, the poller counts it once it has read the answer.
fn wait_queue_metric(server: &Server, name: &str, value: f64) {
    let mut seen = 0.0;
    let done = wait_for(SETTLED_WITHIN, || {
        seen = queue_metric(server, name);
        seen == value
    });
    assert!(done, "{name} is {seen}, expected {value}");
}

/// `cmqhook_queue_errors_total` of `deploys` with this `code`.
fn queue_errors(server: &Server, code: &str) -> Option<f64> {
    server.metrics().get(
        "cmqhook_queue_errors_total",
        &[("queue", "deploys"), ("code", code)],
    )
}

/// Waits until `standin` deleted exactly `ids` from `deploys`.
fn wait_deleted(standin: &StandIn, ids: &[&str]) {
    let mut deleted = Vec::new();
    let done = wait_for(SETTLED_WITHIN, || {
        deleted = standin.deleted("deploys");
        deleted == ids
    });
    assert!(done, "deleted {deleted:?}, expected {ids:?}");
}

/// A hook for the queue `deploys`, one for its messages tagged `web`, and one for pushes.
fn queue_hooks(dir: &Dir) -> String {
    format!(
        "[[queue]]\nname = \"deploys\"\nendpoint = \"http://127.0.0.1:1\"\nsecret_id = \"id\"\nsecret_key = \"key-of-the-test\"\n\n\
         [hooks.from-deploys]\nfrom_queue = \"deploys\"\ncommand = '{record}'\n\n\
         [hooks.web-deploys]\nfrom_queue = \"deploys\"\ntags = [\"web\"]\ncommand = '{record}'\n\n\
         [hooks.pushed]\npath = \"/cmq\"\ncommand = '{record}'\n",
        record = dir.record(0)
    )
}

#[test]
fn route_and_run_take_a_message_from_a_queue_and_set_cmq_queue() {
    let dir = Dir::new();
    let config = dir.write_config(&config("", &queue_hooks(&dir)));
    let config = config.to_str().expect("utf-8");

    let routed = cmqhook(&["route", "-c", config, "--from-queue", "deploys"], b"");
    assert_eq!(routed.status.code(), Some(0), "{}", both(&routed));
    assert_eq!(text(&routed.stdout), "from-deploys\n");
    let tagged = [
        "route",
        "-c",
        config,
        "--from-queue",
        "deploys",
        "--tag",
        "web",
    ];
    assert_eq!(
        text(&cmqhook(&tagged, b"").stdout),
        "from-deploys\nweb-deploys\n"
    );
    // A push never matches `from_queue`; a queue message never matches `path`.
    let pushed = cmqhook(&["route", "-c", config, "--path", "/cmq"], b"");
    assert_eq!(text(&pushed.stdout), "pushed\n", "{}", both(&pushed));
    let other = cmqhook(&["route", "-c", config, "--from-queue", "builds"], b"");
    assert_eq!(other.status.code(), Some(1), "{}", both(&other));
    assert!(
        text(&other.stderr).contains(r#"no hook matches this message from queue "builds""#),
        "{}",
        both(&other)
    );
    let explained = cmqhook(
        &["route", "-c", config, "--from-queue", "builds", "--explain"],
        b"",
    );
    assert_eq!(
        text(&explained.stdout).lines().collect::<Vec<_>>(),
        [
            r#"from-deploys: queue "builds" is not "deploys""#,
            r#"web-deploys: queue "builds" is not "deploys""#,
            r#"pushed: a message from queue "builds" has no path: path selects pushes"#,
        ],
        "{}",
        both(&explained)
    );
    let conflicting = cmqhook(
        &[
            "route",
            "-c",
            config,
            "--from-queue",
            "deploys",
            "--topic",
            "t",
        ],
        b"",
    );
    assert_eq!(conflicting.status.code(), Some(2), "{}", both(&conflicting));

    let ran = cmqhook(
        &[
            "run",
            "-c",
            config,
            "--from-queue",
            "deploys",
            "--msg-id",
            "Q1",
        ],
        b"queued body",
    );
    assert_eq!(ran.status.code(), Some(0), "{}", both(&ran));
    assert!(
        text(&ran.stdout).contains("from-deploys: succeeded"),
        "{}",
        both(&ran)
    );
    let runs = dir.recorded();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].stdin, b"queued body");
    runs[0].assert_vars(&[
        ("CMQ_QUEUE", "deploys"),
        ("CMQ_MSG_ID", "Q1"),
        ("CMQ_FORMAT", "simplified"),
        ("CMQ_TOPIC", ""),
        ("CMQ_SUBSCRIPTION", ""),
        ("CMQHOOK_HOOK", "from-deploys"),
        ("CMQHOOK_ATTEMPT", "1"),
    ]);

    let pushed = cmqhook(&["run", "-c", config, "--path", "/cmq"], b"pushed body");
    assert_eq!(pushed.status.code(), Some(0), "{}", both(&pushed));
    let runs = dir.recorded();
    let run = runs
        .iter()
        .find(|run| run.stdin == b"pushed body")
        .expect("the push ran");
    run.assert_vars(&[("CMQ_QUEUE", ""), ("CMQHOOK_HOOK", "pushed")]);
}

#[test]
fn a_message_runs_its_hook_with_the_body_on_stdin_and_cmq_queue_then_is_deleted() {
    let standin = standin(Duration::from_secs(30));
    let dir = Dir::new();
    let hook = format!("command = '{}'", dir.record(0));
    let server = Server::start(&dir, &consuming(&standin, "", "", &hook));
    let id = standin.send("deploys", "deploy v1\n", &["web", "all"]);
    wait_deleted(&standin, &[&id]);
    let runs = dir.recorded();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].stdin, b"deploy v1\n");
    runs[0].assert_vars(&[
        ("CMQ_QUEUE", "deploys"),
        ("CMQ_MSG_ID", &id),
        ("CMQ_TAGS", "web,all"),
        ("CMQ_FORMAT", "simplified"),
        ("CMQ_TOPIC", ""),
        ("CMQHOOK_HOOK", "deploy"),
        ("CMQHOOK_ATTEMPT", "1"),
    ]);
    assert_eq!(standin.dequeue_count("deploys", &id), 1);
    assert_eq!(queue_metric(&server, "cmqhook_queue_received_total"), 1.0);
    wait_queue_metric(&server, "cmqhook_queue_deleted_total", 1.0);
    assert_eq!(
        queue_metric(&server, "cmqhook_queue_redeliveries_deduplicated_total"),
        0.0
    );
    // Journaled as a run of the message, under the queue's name.
    let rows = dir.settled_history(&["--msg-id", &id], SETTLED_WITHIN);
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["outcome"], "succeeded");
}

#[test]
fn a_failing_hooks_message_is_left_and_runs_again_after_the_visibility_timeout() {
    let standin = standin(Duration::from_secs(1));
    let dir = Dir::new();
    let hook = format!(
        "command = 'if [ \"$CMQHOOK_ATTEMPT\" = 1 ]; then {}; else {}; fi'",
        dir.record(3),
        dir.record(0)
    );
    let server = Server::start(&dir, &consuming(&standin, "", "", &hook));
    let id = standin.send("deploys", "flaky", &[]);
    wait_deleted(&standin, &[&id]);
    assert_eq!(dir.attempts(), ["1", "2"]);
    assert_eq!(standin.dequeue_count("deploys", &id), 2);
    // The first run's failure deleted nothing: the only delete is the second's.
    let deletes: Vec<_> = standin
        .requests()
        .into_iter()
        .filter(|request| request.action.contains("Delete"))
        .collect();
    assert_eq!(deletes.len(), 1, "{deletes:#?}");
    assert!(
        server
            .wait_for_log_line(SETTLED_WITHIN, &["WARN", "left in the queue", &id])
            .is_some(),
        "{}",
        server.log_text()
    );
    assert_eq!(queue_metric(&server, "cmqhook_queue_received_total"), 2.0);
    wait_queue_metric(&server, "cmqhook_queue_deleted_total", 1.0);
}

#[test]
fn a_redelivery_of_a_message_that_succeeded_is_deleted_without_running() {
    let standin = standin(Duration::from_secs(1));
    // The first delete never arrives: the message comes back although its run succeeded.
    standin.inject(Some("DeleteMessage"), Fault::Drop, 1);
    let dir = Dir::new();
    let hook = format!("command = '{}'", dir.record(0));
    let server = Server::start(&dir, &consuming(&standin, "", "", &hook));
    let id = standin.send("deploys", "once", &[]);
    wait_deleted(&standin, &[&id]);
    assert_eq!(dir.recorded().len(), 1, "the redelivery ran nothing");
    assert_eq!(standin.dequeue_count("deploys", &id), 2);
    assert_eq!(standin.faults_left(), 0);
    assert_eq!(
        queue_metric(&server, "cmqhook_queue_redeliveries_deduplicated_total"),
        1.0
    );
    let errors = queue_errors(&server, "network");
    assert_eq!(errors, Some(1.0));
}

#[test]
fn a_run_longer_than_the_visibility_timeout_runs_once_and_the_newest_handle_deletes() {
    let standin = standin(Duration::from_secs(1));
    let dir = Dir::new();
    let hook = format!("command = '{}'", dir.held_record("held"));
    let _server = Server::start(&dir, &consuming(&standin, "", "", &hook));
    let id = standin.send("deploys", "long", &[]);
    dir.wait_at_gate("held");
    // Redelivered while its run goes: it waits for that run.
    assert!(
        wait_for(SETTLED_WITHIN, || standin.dequeue_count("deploys", &id)
            >= 2),
        "never redelivered"
    );
    dir.open_gate("held");
    wait_deleted(&standin, &[&id]);
    assert_eq!(dir.recorded().len(), 1);
    let handles = standin.handles("deploys", &id);
    let newest = handles.last().expect("handles");
    let deleted_by_newest = standin.requests().iter().any(|request| {
        request.action.contains("Delete") && request.params.values().any(|value| value == newest)
    });
    assert!(deleted_by_newest, "{:#?}", standin.requests());
}

#[test]
fn an_unmatched_message_is_left_with_reject_and_deleted_with_ack() {
    let standin = standin(Duration::from_secs(1));
    let dir = Dir::new();
    let hook = format!("tags = [\"web\"]\ncommand = '{}'", dir.record(0));
    let server = Server::start(
        &dir,
        &consuming(&standin, "unmatched = \"reject\"", "", &hook),
    );
    let id = standin.send("deploys", "for nobody", &["db"]);
    // Rejected: left, so it comes back after every visibility timeout.
    assert!(
        wait_for(SETTLED_WITHIN, || standin.dequeue_count("deploys", &id)
            >= 2),
        "not received again"
    );
    assert!(standin.deleted("deploys").is_empty());
    assert!(
        server
            .wait_for_log_line(SETTLED_WITHIN, &["no hook matches", "left in the queue"])
            .is_some(),
        "{}",
        server.log_text()
    );
    // The same message under `unmatched = "ack"` (a reload): deleted, still run by nothing.
    dir.write_config(&consuming(&standin, "unmatched = \"ack\"", "", &hook));
    server.signal("HUP");
    wait_deleted(&standin, &[&id]);
    assert!(dir.recorded().is_empty());
}

#[test]
fn a_stored_hooks_message_is_deleted_once_stored_before_its_run_ends() {
    let standin = standin(Duration::from_secs(30));
    let dir = Dir::new();
    let hook = format!("ack = \"stored\"\ncommand = '{}'", dir.held_record("held"));
    let server = Server::start(&dir, &consuming(&standin, "", "", &hook));
    let id = standin.send("deploys", "stored", &[]);
    dir.wait_at_gate("held");
    // Its run still holds at the gate: the message is deleted already.
    wait_deleted(&standin, &[&id]);
    assert!(dir.recorded().is_empty());
    dir.open_gate("held");
    assert!(wait_for(SETTLED_WITHIN, || dir.recorded().len() == 1));
    dir.recorded()[0].assert_vars(&[("CMQ_QUEUE", "deploys"), ("CMQ_MSG_ID", &id)]);
    wait_queue_metric(&server, "cmqhook_queue_deleted_total", 1.0);
}

#[test]
fn a_poller_receives_no_more_messages_than_its_hooks_have_free_slots() {
    let standin = standin(Duration::from_secs(30));
    let dir = Dir::new();
    let hook = format!("concurrency = 1\ncommand = '{}'", dir.held_record("held"));
    let _server = Server::start(&dir, &consuming(&standin, "", "batch = 16", &hook));
    let ids: Vec<String> = (0..3)
        .map(|n| standin.send("deploys", &format!("m{n}"), &[]))
        .collect();
    dir.wait_at_gate("held");
    // One slot, taken: the other two stay in the queue, not received to wait for it.
    assert!(
        !wait_for(Duration::from_secs(2), || standin.invisible("deploys") > 1),
        "received {} messages for one slot",
        standin.invisible("deploys")
    );
    assert_eq!(standin.visible("deploys"), 2);
    dir.open_gate("held");
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut deleted = Vec::new();
    assert!(wait_for(SETTLED_WITHIN, || {
        deleted = standin.deleted("deploys");
        deleted.len() == 3
    }));
    deleted.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(deleted, expected);
    // Every receive asked for one message at most: one slot was all there was.
    for request in standin.requests() {
        if request.action == "BatchReceiveMessage" {
            assert_eq!(
                request.params.get("numOfMsg").map(String::as_str),
                Some("1")
            );
        }
    }
    assert!(!standin.requests_of("ReceiveMessage").is_empty());
}

#[test]
fn a_refused_key_is_an_error_that_healthz_names_until_it_is_fixed() {
    let standin = standin(Duration::from_secs(30));
    standin.set_key(SECRET_ID, "another-key-entirely-0123456789");
    let dir = Dir::new();
    let hook = format!("command = '{}'", dir.record(0));
    let server = Server::start(&dir, &consuming(&standin, "", "", &hook));
    let mut health = server.get("/healthz");
    assert!(wait_for(SETTLED_WITHIN, || {
        health = server.get("/healthz");
        health.status == 503
    }));
    let said = health.text();
    assert!(
        said.contains("queue `deploys`") && said.contains("4100"),
        "{said}"
    );
    assert!(!said.contains(SECRET_KEY), "{said}");
    let line = server
        .wait_for_log_line(SETTLED_WITHIN, &["ERROR", "deploys", "refuses this key"])
        .unwrap_or_else(|| panic!("{}", server.log_text()));
    assert!(!line.contains(SECRET_KEY), "{line}");
    let id = standin.send("deploys", "waits for the key", &[]);
    // Fixed at the queue's end: polling goes on, finds it, and health comes back.
    standin.set_key(SECRET_ID, SECRET_KEY);
    wait_deleted(&standin, &[&id]);
    assert!(wait_for(SETTLED_WITHIN, || server.get("/healthz").status == 200));
    assert_eq!(dir.recorded().len(), 1);
    let errors = queue_errors(&server, "4100");
    assert!(errors.is_some_and(|count| count >= 1.0), "{errors:?}");
}

#[test]
fn throttling_backs_off_and_polling_resumes() {
    let standin = standin(Duration::from_secs(30));
    standin.inject(None, Fault::throttled(), 3);
    let dir = Dir::new();
    let hook = format!("command = '{}'", dir.record(0));
    let started = Instant::now();
    let server = Server::start(&dir, &consuming(&standin, "", "", &hook));
    let id = standin.send("deploys", "after the throttling", &[]);
    wait_deleted(&standin, &[&id]);
    // Three throttled answers, each followed by a longer pause (0.5 s, 1 s, 2 s): without
    // backing off they would all have been used up within milliseconds of the start.
    assert!(
        started.elapsed() >= Duration::from_millis(3500),
        "{:?}",
        started.elapsed()
    );
    let throttled = standin
        .requests()
        .iter()
        .filter(|request| request.code == 4420)
        .count();
    assert_eq!(throttled, 3);
    let errors = queue_errors(&server, "4420");
    assert_eq!(errors, Some(3.0));
    assert!(
        server
            .wait_for_log_line(SETTLED_WITHIN, &["WARN", "throttled", "backing off"])
            .is_some()
    );
}

#[test]
fn sigterm_stops_polling_first_and_deletes_what_the_running_runs_finish() {
    let standin = standin(Duration::from_secs(30));
    let dir = Dir::new();
    let hook = format!("command = '{}'", dir.held_record("held"));
    let mut server = Server::start(
        &dir,
        &consuming(&standin, "shutdown_grace = \"20s\"", "", &hook),
    );
    let first = standin.send("deploys", "running at the stop", &[]);
    dir.wait_at_gate("held");
    server.signal("TERM");
    assert!(
        server
            .wait_for_log_line(SETTLED_WITHIN, &["draining"])
            .is_some()
    );
    // No poll is waiting any more: a message sent now is not received.
    assert!(wait_for(SETTLED_WITHIN, || standin.polling() == 0));
    let receives = standin.requests_of("ReceiveMessage").len()
        + standin.requests_of("BatchReceiveMessage").len();
    let later = standin.send("deploys", "sent while draining", &[]);
    dir.open_gate("held");
    assert_eq!(server.wait_exit(SETTLED_WITHIN), Some(0));
    assert_eq!(standin.deleted("deploys"), [first.as_str()]);
    assert_eq!(dir.recorded().len(), 1);
    assert_eq!(standin.dequeue_count("deploys", &later), 0);
    let receives_after = standin.requests_of("ReceiveMessage").len()
        + standin.requests_of("BatchReceiveMessage").len();
    assert_eq!(receives_after, receives, "received while draining");
}

#[test]
fn a_reload_adds_and_removes_a_queue_and_its_pollers() {
    let standin = standin(Duration::from_secs(30));
    let dir = Dir::new();
    let push_hook = format!(
        "[hooks.pushed]\npath = \"/cmq\"\ncommand = '{}'\n",
        dir.record(0)
    );
    let server = Server::start(&dir, &config("", &push_hook));
    let first = standin.send("deploys", "before the queue is configured", &[]);
    assert_eq!(standin.polling(), 0);

    let hook = format!("command = '{}'", dir.record(0));
    dir.write_config(&consuming(&standin, "", "", &hook));
    server.signal("HUP");
    wait_deleted(&standin, &[&first]);
    assert_eq!(dir.recorded()[0].var("CMQ_QUEUE"), Some("deploys"));

    dir.write_config(&config("", &push_hook));
    server.signal("HUP");
    assert!(
        server
            .wait_for_log_line(SETTLED_WITHIN, &["stopped consuming the queue", "deploys"])
            .is_some(),
        "{}",
        server.log_text()
    );
    // The poll that was waiting ends with its wait (1 s); none follows.
    assert!(wait_for(SETTLED_WITHIN, || standin.polling() == 0));
    let second = standin.send("deploys", "after the queue is removed", &[]);
    assert!(
        !wait_for(Duration::from_secs(3), || standin
            .dequeue_count("deploys", &second)
            > 0),
        "a removed queue is still polled"
    );
    assert_eq!(dir.recorded().len(), 1);
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn two_instances_sharing_postgresql_polling_one_queue_run_each_message_once() {
    let db = TestDb::create();
    let standin = standin(Duration::from_secs(1));
    // Runs longer than the visibility timeout: every message is received again, by either
    // instance, while its first run goes.
    let shared = Dir::new();
    let hook = format!("command = 'sleep 1.5; {}'", shared.record(0));
    let lease = format!("{}s", LEASE.as_secs());
    let specs = ["a", "b"]
        .into_iter()
        .map(|label| {
            let server = server_keys(&db.url(), Some(label), &lease, "");
            Spec::new(label, consuming(&standin, &server, "batch = 4", &hook))
        })
        .collect();
    let instances = Instance::start_all(specs);
    let ids: Vec<String> = (0..8)
        .map(|n| standin.send("deploys", &format!("fleet {n}"), &[]))
        .collect();
    let mut deleted = Vec::new();
    assert!(
        wait_for(Duration::from_secs(60), || {
            deleted = standin.deleted("deploys");
            deleted.len() == ids.len()
        }),
        "deleted {deleted:?} of {ids:?}"
    );
    let mut ran: Vec<String> = shared
        .recorded()
        .iter()
        .map(|run| run.var("CMQ_MSG_ID").unwrap_or_default().to_owned())
        .collect();
    ran.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(ran, expected, "each message ran exactly once");
    let redelivered: u64 = ids
        .iter()
        .map(|id| standin.dequeue_count("deploys", id))
        .sum();
    assert!(
        redelivered > 8,
        "no message was received twice: nothing was tested"
    );
    let received: f64 = instances
        .iter()
        .map(|instance| {
            instance
                .server
                .metrics()
                .get("cmqhook_queue_received_total", &[("queue", "deploys")])
                .unwrap_or(0.0)
        })
        .sum();
    assert_eq!(received, redelivered as f64);
}

#[test]
fn after_sigkill_mid_run_the_message_runs_again_once_the_killed_command_is_gone() {
    let standin = standin(Duration::from_secs(1));
    let dir = Dir::new();
    let pids = dir.file("pids");
    let hook = format!("command = '{}'", dir.held_first_attempt(&pids));
    let text = consuming(&standin, "", "", &hook);
    let mut server = Server::start(&dir, &text);
    let id = standin.send("deploys", "killed mid-run", &[]);
    dir.wait_at_gate("held");
    let killed = wait_for_pid(&pids);
    // Once its start is journaled (a run's start is written once it lasts 10 ms): the next
    // serve then knows this attempt, and runs the message as the next one, which the hook
    // lets through. Killed before, the next serve would run attempt 1 again, held again.
    assert!(
        wait_for(Duration::from_secs(10), || {
            dir.history(&["--msg-id", &id])
                .iter()
                .any(|row| row["outcome"] == "running")
        }),
        "the run's start was never journaled"
    );
    server.signal("KILL");
    server.wait_exit(SETTLED_WITHIN);
    // The guard stops the run's group when its serve dies: nothing of it overlaps the next.
    assert!(
        wait_for(Duration::from_secs(5), || !alive(killed)),
        "the killed serve's command {killed} still runs"
    );
    assert!(standin.deleted("deploys").is_empty());
    let server = Server::start(&dir, &text);
    let deleted = wait_for(SETTLED_WITHIN, || {
        standin.deleted("deploys") == [id.as_str()]
    });
    assert!(
        deleted,
        "deleted {:?}; requests {:#?}; log:\n{}",
        standin.deleted("deploys"),
        standin.requests(),
        server.log_text()
    );
    assert_eq!(dir.attempts(), ["2"]);
    assert!(standin.dequeue_count("deploys", &id) >= 2);
}

#[test]
fn an_unreachable_queue_is_polled_again_with_backoff_until_it_answers() {
    let mut standin = standin(Duration::from_secs(30));
    standin.down();
    let dir = Dir::new();
    let hook = format!("command = '{}'", dir.record(0));
    let server = Server::start(&dir, &consuming(&standin, "", "", &hook));
    assert!(
        wait_for(SETTLED_WITHIN, || queue_errors(&server, "network")
            .is_some_and(|count| count >= 2.0)),
        "{}",
        server.log_text()
    );
    // A network error is no reason to take the instance out of service.
    assert_eq!(server.get("/healthz").status, 200);
    assert!(
        server
            .wait_for_log_line(
                SETTLED_WITHIN,
                &["WARN", "cannot reach the queue", "backing off"]
            )
            .is_some()
    );
    standin.up();
    let id = standin.send("deploys", "once it is back", &[]);
    wait_deleted(&standin, &[&id]);
    assert!(
        server
            .wait_for_log_line(SETTLED_WITHIN, &["the queue answers again"])
            .is_some()
    );
}

#[test]
fn sigterm_does_not_wait_for_a_long_poll_to_end() {
    let standin = standin(Duration::from_secs(30));
    let dir = Dir::new();
    let hook = format!("command = '{}'", dir.record(0));
    let text = consuming(&standin, "", "", &hook).replace("wait = \"1s\"", "wait = \"25s\"");
    let mut server = Server::start(&dir, &text);
    assert!(wait_for(SETTLED_WITHIN, || standin.polling() == 1));
    let stopped = Instant::now();
    assert_eq!(server.stop(), Some(0));
    // The poll waits 25 s for a message that never comes: the stop does not.
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopped.elapsed()
    );
}
