//! `keep_bodies` and `cmqhook replay` (SPEC §9): a kept push runs again as `serve` ran it,
//! byte for byte, as the next attempt, journaled; a dead stored message is revived by it.

use std::time::Duration;

use crate::harness::*;

/// `cmqhook replay -c hooks.toml --msg-id MSG_ID ARGS`: (exit code, stdout, stderr).
fn replay(dir: &Dir, msg_id: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let config = dir.config_file();
    let mut all = vec![
        "replay",
        "-c",
        config.to_str().expect("utf-8 path"),
        "--msg-id",
        msg_id,
    ];
    all.extend_from_slice(args);
    let output = cmqhook(&all, b"");
    (
        output.status.code(),
        text(&output.stdout),
        text(&output.stderr),
    )
}

/// The message ids of the rows of the journal's `bodies` table.
fn kept_ids(dir: &Dir) -> Vec<String> {
    let db = rusqlite::Connection::open(dir.file("cmqhook.db")).expect("open the journal");
    let mut statement = db
        .prepare("SELECT msg_id FROM bodies ORDER BY id")
        .expect("bodies table");
    statement
        .query_map([], |row| row.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// A body with every byte value and invalid UTF-8, and the headers of its push as message
/// `msg_id` (request id 77, tags `x, y`).
pub fn binary_push(msg_id: &str) -> (Vec<u8>, [(&str, &str); 3]) {
    let raw = (0..=255u8).chain([0, 0xff, 0xc3, 0x28, 0]).collect();
    (
        raw,
        [
            ("x-cmq-message-id", msg_id),
            ("x-cmq-request-id", "77"),
            ("x-cmq-message-tag", "x, y"),
        ],
    )
}

/// `runs` are the first run of the [`binary_push`] `raw` of `msg_id` through the hook `any`
/// and its replay: the same stdin bytes and `CMQ_*` environment, attempt 2, `CMQHOOK_REPLAY=1`.
pub fn assert_replayed_byte_exact(runs: &[Run], raw: &[u8], msg_id: &str) {
    assert_eq!(runs.len(), 2);
    let (first, again) = (&runs[0], &runs[1]);
    assert_eq!(first.stdin, raw);
    assert_eq!(again.stdin, raw);
    assert_eq!(again.cmq_vars(), first.cmq_vars());
    again.assert_vars(&[
        ("CMQ_MSG_ID", msg_id),
        ("CMQ_REQUEST_ID", "77"),
        ("CMQ_TAGS", "x,y"),
        ("CMQ_FORMAT", "simplified"),
        ("CMQHOOK_HOOK", "any"),
        ("CMQHOOK_ATTEMPT", "2"),
        ("CMQHOOK_REPLAY", "1"),
    ]);
    assert_eq!(first.var("CMQHOOK_ATTEMPT"), Some("1"));
    assert_eq!(first.var("CMQHOOK_REPLAY"), None);
}

#[test]
fn replay_runs_a_kept_binary_body_again_byte_exact_as_the_next_attempt() {
    let dir = Dir::new();
    let mut server = Server::start(
        &dir,
        &config("keep_bodies = \"1d\"", &dir.recorder_hook("any")),
    );
    let (raw, headers) = binary_push("b1");
    assert_eq!(server.post("/raw", &headers, &raw).status, 200);
    assert_eq!(server.stop(), Some(0));
    let (code, stdout, stderr) = replay(&dir, "b1", &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("any: succeeded"), "{stdout}");
    assert_replayed_byte_exact(&dir.recorded(), &raw, "b1");
    let rows = dir.history(&["--msg-id", "b1"]);
    let attempts: Vec<_> = rows
        .iter()
        .map(|row| (row["attempt"].as_u64(), row["outcome"].as_str()))
        .collect();
    assert_eq!(
        attempts,
        [(Some(2), Some("succeeded")), (Some(1), Some("succeeded"))]
    );
}

#[test]
fn replay_without_a_kept_body_fails_and_names_keep_bodies() {
    let dir = Dir::new();
    let mut server = Server::start(&dir, &config("", &dir.recorder_hook("any")));
    assert_eq!(server.post_seed("/", "n1").status, 200);
    assert_eq!(server.stop(), Some(0));
    let (code, stdout, stderr) = replay(&dir, "n1", &[]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("keep_bodies"), "{stderr}");
    // Kept, but not this message.
    dir.write_config(&config("keep_bodies = \"1d\"", &dir.recorder_hook("any")));
    let (code, _, stderr) = replay(&dir, "never-seen", &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("keep_bodies"), "{stderr}");
    assert_eq!(dir.recorded().len(), 1);
}

/// The replay socket of the dir's journal.
fn replay_socket(dir: &Dir) -> std::path::PathBuf {
    dir.file("cmqhook.db.replay.sock")
}

#[test]
fn replay_runs_through_a_serve_that_holds_the_journal() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = Dir::new();
    // Left by a serve that died: the journal's lock proves it stale.
    std::fs::write(replay_socket(&dir), b"stale").expect("a stale socket file");
    let mut server = Server::start(
        &dir,
        &config("keep_bodies = \"1d\"", &dir.recorder_hook("any")),
    );
    let socket = std::fs::metadata(replay_socket(&dir)).expect("the replay socket");
    assert!(socket.file_type().is_socket());
    assert_eq!(socket.permissions().mode() & 0o777, 0o600);
    let raw: Vec<u8> = (0..=255u8).chain([0, 0xff, 0xc3, 0x28, 0]).collect();
    let headers = [("x-cmq-message-id", "s1"), ("x-cmq-request-id", "78")];
    assert_eq!(server.post("/raw", &headers, &raw).status, 200);
    let (code, stdout, stderr) = replay(&dir, "s1", &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("any: succeeded"), "{stdout}");
    let runs = dir.recorded();
    assert_eq!(runs.len(), 2);
    let (first, again) = (&runs[0], &runs[1]);
    assert_eq!(again.stdin, raw);
    assert_eq!(again.cmq_vars(), first.cmq_vars());
    again.assert_vars(&[
        ("CMQ_MSG_ID", "s1"),
        ("CMQ_REQUEST_ID", "78"),
        ("CMQHOOK_HOOK", "any"),
        ("CMQHOOK_ATTEMPT", "2"),
        ("CMQHOOK_REPLAY", "1"),
    ]);
    let rows = dir.history(&["--msg-id", "s1"]);
    let attempts: Vec<_> = rows
        .iter()
        .map(|row| (row["attempt"].as_u64(), row["outcome"].as_str()))
        .collect();
    assert_eq!(
        attempts,
        [(Some(2), Some("succeeded")), (Some(1), Some("succeeded"))]
    );
    // Succeeded again: CMQ's retry runs nothing.
    assert_eq!(server.post("/raw", &headers, &raw).status, 200);
    assert_eq!(dir.recorded().len(), 2);
    // Nothing kept for this one: the same message as without a serve.
    let (code, _, stderr) = replay(&dir, "never-seen", &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("no kept body for message `never-seen`"),
        "{stderr}"
    );
    assert!(stderr.contains("keep_bodies"), "{stderr}");
    assert_eq!(server.stop(), Some(0));
    assert!(!replay_socket(&dir).exists(), "removed at exit");
}

#[test]
fn replay_through_a_serve_with_hook_runs_only_that_hook() {
    let dir = Dir::new();
    let hooks = format!("{}\n{}", dir.recorder_hook("a"), dir.recorder_hook("b"));
    let server = Server::start(&dir, &config("keep_bodies = \"1d\"", &hooks));
    assert_eq!(server.post_seed("/", "o2").status, 200);
    let (code, stdout, stderr) = replay(&dir, "o2", &["--hook", "b"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("b: succeeded") && !stdout.contains("a:"),
        "{stdout}"
    );
    let replayed: Vec<_> = dir
        .recorded()
        .into_iter()
        .filter(|run| run.var("CMQHOOK_REPLAY") == Some("1"))
        .collect();
    assert_eq!(replayed.len(), 1);
    replayed[0].assert_vars(&[("CMQHOOK_HOOK", "b"), ("CMQHOOK_ATTEMPT", "2")]);
    assert_eq!(replayed[0].stdin, b"test message");
}

#[test]
fn a_failing_replay_through_a_serve_exits_1_and_cmq_retries_run_again() {
    let dir = Dir::new();
    let fail = dir.file("fail");
    let command = format!(
        "[ -e {fail} ] && exit 3; {record}",
        fail = fail.display(),
        record = dir.record(0)
    );
    let server = Server::start(
        &dir,
        &config(
            "keep_bodies = \"1d\"",
            &format!("[hooks.job]\ncommand = '{command}'"),
        ),
    );
    assert_eq!(server.post_seed("/", "f1").status, 200);
    std::fs::write(&fail, b"").expect("let it fail");
    let (code, stdout, stderr) = replay(&dir, "f1", &[]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("job: failed (exit 3"), "{stdout}");
    // The latest outcome is a failure now: CMQ's retry runs it, as the attempt after.
    std::fs::remove_file(&fail).expect("let it succeed");
    assert_eq!(server.post_seed("/", "f1").status, 200);
    let runs = dir.recorded();
    assert_eq!(runs.len(), 2);
    runs[1].assert_vars(&[("CMQHOOK_ATTEMPT", "3")]);
    assert_eq!(runs[1].var("CMQHOOK_REPLAY"), None);
}

#[test]
fn replay_through_a_serve_waits_for_a_run_of_the_message_and_pushes_join_the_replay() {
    let dir = Dir::new();
    let log = dir.file("log");
    let command = format!(
        "echo start >> {log}; sleep 1; echo end >> {log}; {record}",
        log = log.display(),
        record = dir.record(0)
    );
    let server = Server::start(
        &dir,
        &config(
            "keep_bodies = \"1d\"",
            &format!("[hooks.slow]\ncommand = '{command}'"),
        ),
    );
    assert_eq!(server.post_seed("/", "w1").status, 200);
    // A run of it going when the replay is asked: the replay waits for it.
    std::fs::remove_file(&log).expect("log");
    let addr = server.addr;
    let first = std::thread::spawn(move || post(addr, "/", &[("x-cmq-message-id", "w2")], b"two"));
    std::thread::sleep(Duration::from_millis(300));
    let (code, stdout, stderr) = replay(&dir, "w2", &[]);
    let first = first.join().expect("push");
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let text = std::fs::read_to_string(&log).expect("log");
    assert_eq!(text, "start\nend\nstart\nend\n");
    // A push of the message while the replay runs joins it: nothing runs alongside.
    std::fs::remove_file(&log).expect("log");
    let replaying = {
        let config = dir.config_file();
        std::thread::spawn(move || {
            cmqhook(
                &[
                    "replay",
                    "-c",
                    config.to_str().expect("utf-8 path"),
                    "--msg-id",
                    "w2",
                ],
                b"",
            )
        })
    };
    std::thread::sleep(Duration::from_millis(400));
    let joined = post(addr, "/", &[("x-cmq-message-id", "w2")], b"two");
    assert_eq!(joined.status, 200, "{}", joined.text());
    assert_eq!(joined.json()["results"][0]["deduplicated"], true);
    let replayed = replaying.join().expect("replay");
    assert_eq!(replayed.status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&log).expect("log"), "start\nend\n");
    let attempts: Vec<_> = dir
        .recorded()
        .iter()
        .filter(|run| run.var("CMQ_MSG_ID") == Some("w2"))
        .map(|run| run.var("CMQHOOK_ATTEMPT").map(str::to_owned))
        .collect();
    assert_eq!(
        attempts,
        [
            Some("1".to_owned()),
            Some("2".to_owned()),
            Some("3".to_owned())
        ]
    );
}

#[test]
fn replay_with_hook_runs_only_that_hook() {
    let dir = Dir::new();
    let hooks = format!("{}\n{}", dir.recorder_hook("a"), dir.recorder_hook("b"));
    let mut server = Server::start(&dir, &config("keep_bodies = \"1d\"", &hooks));
    assert_eq!(server.post_seed("/", "o1").status, 200);
    assert_eq!(server.stop(), Some(0));
    let (code, stdout, stderr) = replay(&dir, "o1", &["--hook", "b"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("b: succeeded") && !stdout.contains("a:"),
        "{stdout}"
    );
    let replayed: Vec<_> = dir
        .recorded()
        .into_iter()
        .filter(|run| run.var("CMQHOOK_REPLAY") == Some("1"))
        .collect();
    assert_eq!(replayed.len(), 1);
    replayed[0].assert_vars(&[("CMQHOOK_HOOK", "b"), ("CMQHOOK_ATTEMPT", "2")]);
    assert_eq!(replayed[0].stdin, b"test message");
    // Without --hook: every hook that ran it.
    let (code, stdout, _) = replay(&dir, "o1", &[]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("a: succeeded") && stdout.contains("b: succeeded"));
    assert_eq!(dir.recorded().len(), 5);
}

#[test]
fn replaying_a_dead_stored_message_revives_it() {
    let dir = Dir::new();
    let ok = dir.file("ok");
    let command = format!(
        "[ -e {ok} ] || exit 1; {record}",
        ok = ok.display(),
        record = dir.record(0)
    );
    let config = config(
        "keep_bodies = \"1d\"",
        &format!("[hooks.job]\nack = \"stored\"\nretry = []\ncommand = '{command}'"),
    );
    let mut server = Server::start(&dir, &config);
    assert_eq!(server.post_seed("/", "d1").status, 200);
    let mut dead = Vec::new();
    assert!(
        wait_for(Duration::from_secs(20), || {
            dead = dir.history(&["--dead"]);
            dead.len() == 1
        }),
        "{dead:#?}"
    );
    assert_eq!(server.stop(), Some(0));
    std::fs::write(&ok, b"").expect("let it succeed");
    let (code, stdout, stderr) = replay(&dir, "d1", &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("job: succeeded"), "{stdout}");
    assert!(dir.history(&["--dead"]).is_empty());
    let runs = dir.recorded();
    assert_eq!(runs.len(), 1);
    runs[0].assert_vars(&[
        ("CMQ_MSG_ID", "d1"),
        ("CMQ_TOPIC", "MyTopic"),
        ("CMQHOOK_ATTEMPT", "2"),
        ("CMQHOOK_REPLAY", "1"),
    ]);
    assert_eq!(runs[0].stdin, b"test message");
    // Done now: CMQ's retry runs nothing.
    let server = Server::start(&dir, &config);
    let retry = server.post_seed("/", "d1");
    assert_eq!(retry.status, 200, "{}", retry.text());
    assert_eq!(retry.json()["results"][0]["outcome"], "succeeded");
    assert_eq!(dir.recorded().len(), 1);
}

#[test]
fn kept_bodies_are_pruned_after_keep_bodies_and_unmatched_pushes_keep_none() {
    let dir = Dir::new();
    let hooks = format!(
        "[hooks.m]\npath = \"/matched\"\ncommand = '{}'",
        dir.record(0)
    );
    let config = config("keep_bodies = \"1s\"", &hooks);
    let mut server = Server::start(&dir, &config);
    assert_eq!(server.post_seed("/other", "u1").status, 404);
    assert_eq!(server.post_seed("/matched", "m1").status, 200);
    assert_eq!(server.stop(), Some(0));
    assert_eq!(kept_ids(&dir), ["m1"]);
    std::thread::sleep(Duration::from_millis(1200));
    let (code, _, stderr) = replay(&dir, "m1", &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("keep_bodies"), "{stderr}");
    // A start prunes what is older than keep_bodies.
    let _server = Server::start(&dir, &config);
    let mut kept = vec![String::new()];
    assert!(
        wait_for(Duration::from_secs(10), || {
            kept = kept_ids(&dir);
            kept.is_empty()
        }),
        "{kept:?}"
    );
}

#[test]
fn a_stored_message_done_before_dedup_for_is_not_stored_again_while_a_replay_of_it_runs() {
    let dir = Dir::new();
    // The replay is held at a gate; the message's own run is not.
    let command = format!(
        "if [ \"$CMQHOOK_REPLAY\" = 1 ]; then {gate}; fi; {record}",
        gate = dir.gate("replay", 60),
        record = dir.record(0)
    );
    let server = Server::start(
        &dir,
        &config(
            "dedup_for = \"1s\"\nrespond_within = \"1s\"",
            &format!("[hooks.job]\nack = \"stored\"\nretry = []\ncommand = '{command}'"),
        ),
    );
    assert_eq!(server.post_seed("/", "again-1").status, 200);
    assert!(wait_for(Duration::from_secs(10), || dir.recorded().len() == 1));
    // Done longer ago than `dedup_for`: a push of it now would be a new message.
    std::thread::sleep(Duration::from_millis(1100));
    let config = dir.config_file();
    let replaying = std::thread::spawn(move || {
        let config = config.to_str().expect("utf-8 path").to_owned();
        cmqhook(&["replay", "-c", &config, "--msg-id", "again-1"], b"")
    });
    dir.wait_at_gate("replay");
    // Not stored (it would run beside the replay): it waits for the replay, as a push to an
    // `ack = "exit"` hook does (SPEC §5), and is answered 503 once `respond_within` passed.
    let during = server.post_seed("/", "again-1");
    assert_eq!(during.status, 503, "{}", during.text());
    assert!(
        during.text().contains("\"outcome\":\"running\""),
        "{}",
        during.text()
    );
    dir.open_gate("replay");
    let replayed = replaying.join().expect("replay");
    assert_eq!(replayed.status.code(), Some(0), "{}", both(&replayed));
    assert_eq!(dir.attempts(), ["1", "2"]);
}
