//! The journal file as an operator handles it: after a clean stop it alone is a whole backup
//! (SPEC §5), and a kept row it cannot read makes `replay` fail rather than run nothing.

use std::time::Duration;

use crate::harness::*;

#[test]
fn after_a_clean_stop_the_journal_file_alone_holds_everything() {
    let dir = Dir::new();
    let text = config("keep_bodies = \"1d\"", &dir.recorder_hook("any"));
    let mut server = Server::start(&dir, &text);
    for n in 0..20 {
        assert_eq!(server.post_seed("/", &format!("b-{n}")).status, 200);
    }
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(30)), Some(0));
    let wal = dir.path().join("cmqhook.db-wal");
    let wal_bytes = std::fs::metadata(&wal).map_or(0, |meta| meta.len());
    assert_eq!(
        wal_bytes, 0,
        "the WAL still holds what the journal file lacks"
    );
    // A copy of the file alone, elsewhere: every run is in it.
    let elsewhere = Dir::new();
    std::fs::copy(
        dir.path().join("cmqhook.db"),
        elsewhere.path().join("cmqhook.db"),
    )
    .expect("copy");
    elsewhere.write_config(&text);
    let rows = elsewhere.history(&["--limit", "100"]);
    assert_eq!(rows.len(), 20, "{rows:?}");
    assert!(
        rows.iter().all(|row| row["outcome"] == "succeeded"),
        "{rows:?}"
    );
}

#[test]
fn replay_of_a_kept_push_whose_hooks_cannot_be_read_fails_and_runs_nothing() {
    let dir = Dir::new();
    let hooks = config("keep_bodies = \"1d\"", &dir.recorder_hook("any"));
    let mut server = Server::start(&dir, &hooks);
    assert_eq!(server.post_seed("/", "bad-hooks").status, 200);
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(30)), Some(0));
    let db = rusqlite::Connection::open(dir.path().join("cmqhook.db")).expect("open");
    let changed = db
        .execute(
            "UPDATE bodies SET hooks = 'not json' WHERE msg_id = 'bad-hooks'",
            [],
        )
        .expect("update");
    assert_eq!(changed, 1);
    drop(db);
    let before = dir.recorded().len();
    let config = dir.config_file();
    let output = cmqhook(
        &[
            "replay",
            "-c",
            config.to_str().expect("utf-8"),
            "--msg-id",
            "bad-hooks",
        ],
        b"",
    );
    assert_eq!(output.status.code(), Some(1), "{}", both(&output));
    assert!(
        text(&output.stderr).contains("journal"),
        "{}",
        both(&output)
    );
    assert_eq!(dir.recorded().len(), before, "a replay ran");
}
