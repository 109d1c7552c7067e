//! The end log under real faults: deleted while another process holds SQLite's lock, and
//! damaged between a SIGKILL and a restart.

use std::path::PathBuf;
use std::time::Duration;

use crate::faults::{Holder, appending_config, refused_serve, runs, wait_journaled};
use crate::harness::*;

fn end_logs(dir: &Dir) -> [PathBuf; 2] {
    [0, 1].map(|index| dir.path().join(format!("cmqhook.db.ends-{index}")))
}

/// A server on `dir` that has committed a run of `before`, and a `sqlite3` then holding
/// SQLite's lock: the ends that follow are only in the end log.
fn serving_with_sqlite_locked(dir: &Dir, config: &str) -> (Server, Holder) {
    let server = Server::start(dir, config);
    assert_eq!(server.post_seed("/", "before").status, 200);
    wait_journaled(dir, "before");
    let holder = Holder::lock(&dir.path().join("cmqhook.db"));
    (server, holder)
}

/// Pushes `ids` from 8 threads at once; each id with its status.
fn push_all(server: &Server, ids: &[String]) -> Vec<(String, u16)> {
    let addr = server.addr;
    std::thread::scope(|scope| {
        let senders: Vec<_> = ids
            .chunks(ids.len().div_ceil(8))
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|id| {
                            let body = seed_envelope(id);
                            let status = post(addr, "/", &seed_headers(id), body.as_bytes()).status;
                            (id.clone(), status)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        senders
            .into_iter()
            .flat_map(|sender| sender.join().expect("sender"))
            .collect()
    })
}

#[test]
fn an_end_log_deleted_while_sqlite_is_locked_takes_no_end_that_a_sigkill_loses() {
    let dir = Dir::new();
    let config = appending_config(&dir, "");
    let (mut server, holder) = serving_with_sqlite_locked(&dir, &config);
    for file in end_logs(&dir) {
        std::fs::remove_file(file).expect("rm the end log");
    }
    // While the writer waits out SQLite's busy timeout, an end can go only to the end log;
    // once it has given up, pushes get 503 (and run after the restart).
    let ids: Vec<String> = (0..40).map(|n| format!("gone-{n}")).collect();
    let answered = push_all(&server, &ids);
    let ok: Vec<&String> = answered
        .iter()
        .filter(|(_, status)| *status == 200)
        .map(|(id, _)| id)
        .collect();
    assert!(
        ok.len() >= ids.len() / 2,
        "most pushes are answered within the busy timeout: {answered:?}"
    );
    let recreated = server.wait_for_log_line(Duration::from_secs(10), &["the end log was deleted"]);
    assert!(recreated.is_some(), "{}", server.log_text());
    server.signal("KILL");
    server.wait_exit(Duration::from_secs(10));
    holder.release();

    let server = Server::start(&dir, &config);
    for id in &ok {
        let again = server.post_seed("/", id);
        assert_eq!(again.status, 200, "{id}: {}", again.text());
        assert_eq!(again.json()["results"][0]["deduplicated"], true, "{id}");
    }
    for id in &ids {
        assert_eq!(server.post_seed("/", id).status, 200, "{id}");
    }
    let counts = runs(&dir);
    let not_once: Vec<_> = ids
        .iter()
        .filter(|id| counts.get(*id) != Some(&1))
        .map(|id| (id, counts.get(id)))
        .collect();
    assert!(
        not_once.is_empty(),
        "of {} answered 200 before the SIGKILL, these ran again or never: {not_once:?}",
        ok.len()
    );
}

#[test]
fn a_damaged_end_log_record_stops_serve_until_the_operator_cuts_it_off() {
    let dir = Dir::new();
    let config = appending_config(&dir, "");
    let (mut server, holder) = serving_with_sqlite_locked(&dir, &config);
    for id in ["kept-0", "kept-1", "damaged", "after"] {
        let answered = server.post_seed("/", id);
        assert_eq!(answered.status, 200, "{id}: {}", answered.text());
    }
    server.signal("KILL");
    server.wait_exit(Duration::from_secs(10));
    holder.release();

    // One byte of the message id inside the record of `damaged`: still JSON of the right
    // shape, but not what was written.
    let (file, mut bytes, at) = end_logs(&dir)
        .into_iter()
        .find_map(|path| {
            let bytes = std::fs::read(&path).ok()?;
            let at = bytes.windows(9).position(|w| w == b"\"damaged\"")?;
            Some((path, bytes, at))
        })
        .expect("the end of `damaged` is in the end log");
    let start = bytes[..at]
        .windows(3)
        .rposition(|w| w == b"\xFFEN")
        .expect("the record's start");
    bytes[at + 1] = b'D';
    std::fs::write(&file, &bytes).expect("write");

    let refused = refused_serve(&dir);
    let text = both(&refused);
    assert_ne!(refused.status.code(), Some(0), "{text}");
    let path = file.display();
    for needle in [
        format!("{path}: the end-log record at byte {start} is damaged"),
        format!("`truncate -s {start} {path}`"),
    ] {
        assert!(text.contains(&needle), "{needle:?} in {text}");
    }

    // What the operator does, accepting that `damaged` (and what follows it) may run again.
    let truncated = std::process::Command::new("truncate")
        .arg("-s")
        .arg(start.to_string())
        .arg(&file)
        .status()
        .expect("truncate");
    assert!(truncated.success());
    let server = Server::start(&dir, &config);
    assert!(server.log_text().contains("written from the end log"));
    for id in ["before", "kept-0", "kept-1"] {
        let again = server.post_seed("/", id);
        assert_eq!(again.status, 200, "{id}: {}", again.text());
        assert_eq!(again.json()["results"][0]["deduplicated"], true, "{id}");
    }
    for id in ["damaged", "after"] {
        assert_eq!(server.post_seed("/", id).status, 200, "{id}");
    }
    let counts = runs(&dir);
    assert_eq!(
        ["before", "kept-0", "kept-1"].map(|id| counts.get(id)),
        [Some(&1); 3]
    );
    for id in ["damaged", "after"] {
        assert!(matches!(counts.get(id), Some(1 | 2)), "{id}: {counts:?}");
    }
}
