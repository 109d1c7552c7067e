//! Pull mode (SPEC §11): hooks that take the messages of a `[[queue]]`, `route` and `run` with
//! `--from-queue`, and `serve` consuming a queue of the stand-in server.

use crate::harness::*;

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
