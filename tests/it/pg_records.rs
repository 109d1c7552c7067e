//! Run records with a shared PostgreSQL journal (SPEC §10 with §8): a run's kept output is
//! stored in the database, `history` prints the fleet's run ids, and `show` on any instance
//! prints any instance's run.
//!
//! Each test creates its own database on the server of `CMQHOOK_TEST_POSTGRES` and drops it;
//! every test here is ignored unless asked for (`cargo test -- --include-ignored`).

use std::time::Duration;

use crate::harness::*;
use crate::pg::*;
use crate::records::{cut_of, run_id};

/// `show RUN_ID ARGS` with `instance`'s config.
fn show(instance: &Instance, run_id: i64, args: &[&str]) -> std::process::Output {
    let id = run_id.to_string();
    let mut all = vec![id.as_str()];
    all.extend_from_slice(args);
    instance.cli("show", &all)
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn a_runs_kept_output_is_in_the_shared_database_and_any_instance_shows_it() {
    let db = TestDb::create();
    let secret = "pg-s3cr3t-value";
    let hooks = format!(
        "[hooks.talks]\ncommand = 'seq 1 100000; echo \"{secret} at the end\" >&2; exit 4'"
    );
    let fleet = Instance::start_all(
        ["a", "b"]
            .iter()
            .map(|label| {
                Spec::new(
                    label,
                    config(
                        &server_keys(
                            &db.url(),
                            Some(label),
                            "2s",
                            "token = \"${CMQHOOK_TOKEN}\"\nlog_output = 10",
                        ),
                        &hooks,
                    ),
                )
                .env("CMQHOOK_TOKEN", secret)
            })
            .collect(),
    );
    let response = fleet[0].server.post(
        &format!("/?token={secret}"),
        &seed_headers("pgr1"),
        seed_envelope("pgr1").as_bytes(),
    );
    assert_eq!(response.status, 500, "{}", response.text());
    // The other instance reads it from the database.
    let rows = fleet[1].settled_history(&["--msg-id", "pgr1"], Duration::from_secs(20));
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let id = run_id(&rows[0]);
    let output = show(&fleet[1], id, &["--json"]);
    assert!(output.status.success(), "{}", both(&output));
    let run: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(run["id"], id);
    assert_eq!(run["hook"], "talks");
    assert_eq!(run["msg_id"], "pgr1");
    assert_eq!(run["request_id"], "2394928734");
    assert_eq!(run["instance"], "a");
    assert_eq!(run["outcome"], "failed");
    assert_eq!(run["exit_code"], 4);
    assert_eq!(run["superseded"], false);
    assert_eq!(run["replay"], false);
    assert_eq!(run["topic"], "MyTopic");
    assert_eq!(run["tags"], serde_json::json!(["a", "b"]));
    let kept = run["output"].as_str().expect("output");
    assert!(kept.starts_with("out| 1\nout| 2\n"), "{kept}");
    assert!(kept.contains("out| 100000\n"), "{kept}");
    assert!(
        kept.contains("err| ${CMQHOOK_TOKEN} at the end\n"),
        "{kept}"
    );
    assert!(!kept.contains("s3cr3t"), "{kept}");
    let (cut_lines, _) = cut_of(kept).expect("a cut marker");
    assert!(cut_lines > 80_000, "{cut_lines}");
    // The text form, and the history line's run id and reason.
    let output = show(&fleet[0], id, &[]);
    assert!(output.status.success(), "{}", both(&output));
    let shown = text(&output.stdout);
    assert!(shown.contains("instance      a\n"), "{shown}");
    assert!(
        shown.contains("outcome       failed, exit code 4\n"),
        "{shown}"
    );
    let history = fleet[1].cli("history", &[]);
    let listed = text(&history.stdout);
    assert!(listed.contains(&format!("  run={id}  ")), "{listed}");
    assert!(
        listed.contains("  -- ${CMQHOOK_TOKEN} at the end"),
        "{listed}"
    );
    // The log line past log_output points at the run: by id once the run is written.
    assert!(
        fleet[0]
            .server
            .wait_for_log_line(
                Duration::from_secs(10),
                &[
                    "of output not logged (log_output = 10)",
                    "cmqhook history --hook talks --msg-id pgr1"
                ]
            )
            .is_some(),
        "{}",
        fleet[0].server.log_text()
    );
    let missing = show(&fleet[0], id + 1_000_000, &[]);
    assert_eq!(missing.status.code(), Some(1), "{}", both(&missing));
}
