//! `ack = "stored"` (SPEC §9): the push is answered once it is durably stored; cmqhook runs
//! it, retries it on its own schedule, and keeps the messages that never succeeded as dead.

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
