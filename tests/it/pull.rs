//! Pull mode (SPEC §11): hooks that take the messages of a `[[queue]]`, `route` and `run` with
//! `--from-queue`, and `serve` consuming a queue of the stand-in server.

use std::time::{Duration, Instant};

use crate::harness::*;
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
    assert_eq!(queue_metric(&server, "cmqhook_queue_deleted_total"), 1.0);
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
    assert_eq!(queue_metric(&server, "cmqhook_queue_deleted_total"), 1.0);
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
    let errors = server.metrics().get(
        "cmqhook_queue_errors_total",
        &[("queue", "deploys"), ("code", "network")],
    );
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
