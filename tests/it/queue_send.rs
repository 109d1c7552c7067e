//! `cmqhook queue send` (SPEC §11) against the stand-in: the built binary publishes with the
//! `[[queue]]` table's endpoint and key, prints the message id, and says CMQ's code and
//! message when the queue refuses.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::harness::{Dir, both, cmqhook_command, config, output_of, text};
use crate::standin::{Fault, SECRET_ID, SECRET_KEY, StandIn};

const QUEUE: &str = "deploys";

fn standin() -> StandIn {
    let standin = StandIn::start();
    standin.create_queue(QUEUE, Duration::from_secs(30));
    standin
}

/// A config with the stand-in's queue `deploys` (literal key) and `tables` after it.
fn write_config(dir: &Dir, standin: &StandIn, tables: &str) -> PathBuf {
    let text = format!(
        "{}\n{}\n{tables}",
        config("", "[hooks.h]\ncommand = \"true\"\n"),
        standin.queue_table(QUEUE, "")
    );
    dir.write_config(&text)
}

fn queue_send(file: &Path, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let file = file.display().to_string();
    let mut command = cmqhook_command(&["queue", "send", "-c", &file]);
    command.args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    output_of(command, stdin)
}

#[test]
fn queue_send_publishes_stdin_with_its_tags_and_prints_the_message_id() {
    let standin = standin();
    let dir = Dir::new();
    let file = write_config(&dir, &standin, "");
    let body = "deploy v1.2\n& \"more\" = é\n";
    let output = queue_send(
        &file,
        &["--queue", QUEUE, "--tag", "web", "--tag", "all"],
        body.as_bytes(),
        &[],
    );
    assert!(output.status.success(), "{}", both(&output));
    let msg_id = text(&output.stdout).trim().to_owned();
    assert_eq!(standin.bodies(QUEUE), [body]);
    assert_eq!(
        standin.tags(QUEUE, &msg_id),
        Some(vec!["web".to_owned(), "all".to_owned()]),
        "stdout: {msg_id:?}"
    );
}

#[test]
fn queue_send_reads_the_body_file_and_takes_the_key_from_the_environment() {
    let standin = standin();
    standin.create_queue("other", Duration::from_secs(30));
    let dir = Dir::new();
    let table = format!(
        "[[queue]]\nname = \"other\"\nendpoint = \"{}\"\nsecret_id = \"${{QUEUE_ID}}\"\nsecret_key = \"${{QUEUE_KEY}}\"\nsignature = \"HmacSHA1\"\n",
        standin.endpoint()
    );
    let file = write_config(&dir, &standin, &table);
    let body = dir.file("message.json");
    std::fs::write(&body, br#"{"version":"1.2"}"#).expect("write the body");
    let env = [("QUEUE_ID", SECRET_ID), ("QUEUE_KEY", SECRET_KEY)];
    let output = queue_send(
        &file,
        &[
            "--queue",
            "other",
            "--body-file",
            &body.display().to_string(),
        ],
        b"not this",
        &env,
    );
    assert!(output.status.success(), "{}", both(&output));
    assert_eq!(standin.bodies("other"), [r#"{"version":"1.2"}"#]);
    assert_eq!(standin.bodies(QUEUE), Vec::<String>::new());
}

#[test]
fn a_refused_message_exits_1_with_cmq_s_code_and_message_and_no_secret() {
    let standin = standin();
    let dir = Dir::new();
    let key = "wrong-key-from-the-environment";
    let table = format!(
        "[[queue]]\nname = \"wrongkey\"\nendpoint = \"{}\"\nsecret_id = \"{SECRET_ID}\"\nsecret_key = \"${{QUEUE_KEY}}\"\n",
        standin.endpoint()
    );
    let file = write_config(&dir, &standin, &table);
    let output = queue_send(&file, &["--queue", "wrongkey"], b"m", &[("QUEUE_KEY", key)]);
    assert_eq!(output.status.code(), Some(1), "{}", both(&output));
    let stderr = text(&output.stderr);
    for needle in [
        "queue `wrongkey`",
        "SendMessage",
        "code 4100",
        "signature does not match",
    ] {
        assert!(stderr.contains(needle), "`{needle}` not in: {stderr}");
    }
    assert!(!stderr.contains(key), "{stderr}");
    assert_eq!(text(&output.stdout), "");

    standin.inject(Some("SendMessage"), Fault::throttled(), 1);
    let output = queue_send(&file, &["--queue", QUEUE], b"m", &[("QUEUE_KEY", key)]);
    assert_eq!(output.status.code(), Some(1), "{}", both(&output));
    assert!(
        text(&output.stderr).contains("code 4420"),
        "{}",
        both(&output)
    );
    assert_eq!(standin.bodies(QUEUE), Vec::<String>::new());
}

#[test]
fn queue_send_without_an_answer_or_such_a_queue_or_a_body_exits_1() {
    let mut standin = standin();
    let dir = Dir::new();
    let file = write_config(&dir, &standin, "");
    let output = queue_send(&file, &["--queue", "nope"], b"m", &[]);
    assert_eq!(output.status.code(), Some(1), "{}", both(&output));
    assert!(
        text(&output.stderr).contains("no [[queue]] named `nope` (its queues: `deploys`)"),
        "{}",
        both(&output)
    );
    let output = queue_send(&file, &["--queue", QUEUE], b"", &[]);
    assert_eq!(output.status.code(), Some(1), "{}", both(&output));
    assert!(
        text(&output.stderr).contains("body is empty"),
        "{}",
        both(&output)
    );

    standin.down();
    let output = queue_send(&file, &["--queue", QUEUE], b"m", &[]);
    assert_eq!(output.status.code(), Some(1), "{}", both(&output));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("SendMessage") && stderr.contains(&standin.endpoint()),
        "{stderr}"
    );
}
