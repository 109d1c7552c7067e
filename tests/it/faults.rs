//! The exactly-once promise under real faults: a SIGKILL of the server, another process
//! holding the SQLite lock, a full filesystem, a deleted journal file, a second `serve`.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::*;

/// A config with `server` lines and one hook `record` that appends its message id to
/// `dir/ran` (one line per run).
pub(crate) fn appending_config(dir: &Dir, server: &str) -> String {
    config(
        server,
        &format!(
            "[hooks.record]\ncommand = '''printf '%s\\n' \"$CMQ_MSG_ID\" >> {}'''",
            dir.path().join("ran").display()
        ),
    )
}

/// How many times each message id ran.
pub(crate) fn runs(dir: &Dir) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in std::fs::read_to_string(dir.path().join("ran"))
        .unwrap_or_default()
        .lines()
    {
        *counts.entry(line.to_owned()).or_insert(0) += 1;
    }
    counts
}

fn healthz(server: &Server) -> u16 {
    get(server.addr, "/healthz").status
}

#[test]
fn a_push_answered_200_never_runs_again_after_a_sigkill_of_the_server() {
    let dir = Dir::new();
    let config = appending_config(&dir, "");
    let mut server = Server::start(&dir, &config);
    let addr = server.addr;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let senders: Vec<_> = (0..4)
        .map(|thread| {
            let acked = Arc::clone(&acked);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                for n in 0..100_000 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let id = format!("k{thread}-{n}");
                    let body = SEED_ENVELOPE.replace("6942316962", &id);
                    match try_post(addr, &id, body.as_bytes()) {
                        Some(200) => acked.lock().expect("lock").push(id),
                        Some(_) => {}
                        None => break,
                    }
                }
            })
        })
        .collect();
    // Kill it in the middle of the stream, once a few hundred pushes were answered.
    assert!(wait_for(Duration::from_secs(60), || {
        acked.lock().expect("lock").len() >= 300
    }));
    server.signal("KILL");
    server.wait_exit(Duration::from_secs(10));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for sender in senders {
        sender.join().expect("sender");
    }
    let acked = acked.lock().expect("lock").clone();
    let server = Server::start(&dir, &config);
    for id in &acked {
        let again = server.post_seed("/", id);
        assert_eq!(again.status, 200, "{id}: {}", again.text());
        assert_eq!(again.json()["results"][0]["deduplicated"], true, "{id}");
    }
    let counts = runs(&dir);
    let twice: Vec<_> = acked
        .iter()
        .filter(|id| counts.get(*id) != Some(&1))
        .collect();
    assert!(
        twice.is_empty(),
        "of {} pushes answered 200, these ran again or never: {twice:?}",
        acked.len()
    );
}

/// POSTs a seed push; `None` when the server is gone.
fn try_post(addr: std::net::SocketAddr, msg_id: &str, body: &[u8]) -> Option<u16> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    let head = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nx-cmq-message-id: {msg_id}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// The variable with which [`Holder::lock`] runs this test binary as the process that holds
/// the lock: the database's path.
const HOLD: &str = "CMQHOOK_IT_HOLD_SQLITE_LOCK";
/// The line the holding process prints once it holds the lock.
const HELD: &str = "cmqhook-it: the SQLite lock is held";

/// Another process holding an exclusive transaction on a SQLite database until released
/// (committed) or dropped (killed): this test binary, running only
/// [`harness_another_process_holds_the_sqlite_lock_until_released`] with [`HOLD`] set, so
/// that the fault needs no `sqlite3` program.
pub struct Holder {
    child: std::process::Child,
}

impl Holder {
    pub fn lock(db: &Path) -> Holder {
        let mut child = Command::new(std::env::current_exe().expect("the test binary"))
            .args([
                "faults::harness_another_process_holds_the_sqlite_lock_until_released",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HOLD, db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run the test binary as the lock holder");
        // libtest's own output comes first, on the same line as the holder's (`test NAME ...
        // `). Read to the end on a thread of its own, so that the holder never blocks on it.
        let output = child.stdout.take().expect("stdout");
        let (held_tx, held) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(output).lines().map_while(Result::ok) {
                if line.ends_with(HELD) {
                    let _ = held_tx.send(());
                }
            }
        });
        let mut holder = Holder { child };
        if held.recv_timeout(Duration::from_secs(30)).is_err() {
            let status = holder.child.try_wait().expect("try_wait");
            panic!(
                "the lock holder did not take the lock on {db:?} within 30 s (exit: {status:?})"
            );
        }
        holder
    }

    /// Commits the holder's transaction and waits for it to exit.
    pub fn release(mut self) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"commit\n").expect("write");
        let _ = self.child.stdin.take();
        let mut status = None;
        let exited = wait_for(Duration::from_secs(30), || {
            status = self.child.try_wait().expect("try_wait");
            status.is_some()
        });
        assert!(
            exited,
            "the lock holder did not exit within 30 s of its release"
        );
        assert!(
            status.is_some_and(|s| s.success()),
            "the lock holder failed: {status:?}"
        );
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two roles: run by [`Holder::lock`] (with [`HOLD`] set), it is the process that holds the
/// lock until a line or the end of its stdin; as a test, it checks that such a holder keeps
/// this process from writing until it is released or killed.
#[test]
fn harness_another_process_holds_the_sqlite_lock_until_released() {
    if let Some(db) = std::env::var_os(HOLD) {
        let connection = rusqlite::Connection::open(db).expect("open the database");
        connection
            .busy_timeout(Duration::from_secs(5))
            .expect("busy timeout");
        connection
            .execute_batch("BEGIN EXCLUSIVE")
            .expect("take the lock");
        // Straight to stdout and flushed: the test process waits for this line.
        writeln!(std::io::stdout(), "{HELD}").expect("say so");
        std::io::stdout().flush().expect("flush");
        // A line, or the end of stdin when the test process is gone.
        let _ = std::io::stdin().read_line(&mut String::new());
        connection.execute_batch("COMMIT").expect("commit");
        return;
    }
    let dir = Dir::new();
    let db = dir.path().join("locked.db");
    let connection = rusqlite::Connection::open(&db).expect("open");
    connection.busy_timeout(Duration::ZERO).expect("no wait");
    connection
        .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (n INTEGER);")
        .expect("create");
    let insert = |n: i64| connection.execute("INSERT INTO t VALUES (?1)", [n]);
    let busy = |result: rusqlite::Result<usize>| {
        matches!(
            result,
            Err(rusqlite::Error::SqliteFailure(err, _)) if err.code == rusqlite::ErrorCode::DatabaseBusy
        )
    };
    let holder = Holder::lock(&db);
    assert!(
        busy(insert(1)),
        "written while another process held the lock"
    );
    let count = || -> i64 {
        connection
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .expect("read while locked")
    };
    assert_eq!(count(), 0);
    holder.release();
    insert(2).expect("written once released");
    let holder = Holder::lock(&db);
    assert!(busy(insert(3)));
    drop(holder);
    insert(4).expect("written once the holder was killed");
    assert_eq!(count(), 2);
}

#[test]
fn a_locked_journal_fails_closed_keeps_outcomes_in_memory_and_recovers() {
    let dir = Dir::new();
    let config = appending_config(&dir, "");
    let server = Server::start(&dir, &config);
    assert_eq!(server.post_seed("/", "before").status, 200);
    wait_journaled(&dir, "before");
    let holder = Holder::lock(&dir.path().join("cmqhook.db"));

    // Runs; its end goes to the end log (answered 200) but not to SQLite.
    assert_eq!(server.post_seed("/", "during").status, 200);
    // Once the writer has found SQLite locked: nothing new starts.
    assert!(wait_for(Duration::from_secs(10), || healthz(&server) == 503));
    assert!(
        get(server.addr, "/healthz")
            .text()
            .contains("journal cannot be written")
    );
    let new = server.post_seed("/", "new");
    assert_eq!(new.status, 503, "{}", new.text());
    assert!(new.header("retry-after").is_some());
    // The run above is answered from memory, not run again; what was committed before
    // still answers.
    let retry = server.post_seed("/", "during");
    assert_eq!(retry.status, 200, "{}", retry.text());
    assert_eq!(retry.json()["results"][0]["deduplicated"], true);
    assert_eq!(server.post_seed("/", "before").status, 200);
    let counts = runs(&dir);
    assert_eq!(counts.get("during"), Some(&1));
    assert_eq!(counts.get("new"), None);
    assert!(server.log_text().contains("journal write failed"));

    holder.release();
    assert!(wait_for(Duration::from_secs(10), || healthz(&server) == 200));
    let retry = server.post_seed("/", "during");
    assert_eq!(retry.status, 200, "{}", retry.text());
    assert_eq!(retry.json()["results"][0]["deduplicated"], true);
    assert_eq!(server.post_seed("/", "new").status, 200);
    let counts = runs(&dir);
    assert_eq!(
        (counts["during"], counts["new"], counts["before"]),
        (1, 1, 1)
    );
    drop(server);
    // And it was written for good: a new process remembers it.
    let server = Server::start(&dir, &config);
    assert_eq!(server.post_seed("/", "during").status, 200);
    assert_eq!(runs(&dir)["during"], 1);
}

/// Waits until the journal's `runs` table holds a row of `msg_id` that is not running.
pub(crate) fn wait_journaled(dir: &Dir, msg_id: &str) {
    wait_journaled_in(&dir.path().join("cmqhook.db"), msg_id);
}

/// [`wait_journaled`] for the journal `db`.
fn wait_journaled_in(db: &Path, msg_id: &str) {
    let journal =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the journal");
    let journaled = wait_for(Duration::from_secs(10), || {
        journal
            .query_row(
                "SELECT count(*) FROM runs WHERE msg_id = ?1 AND outcome != 'running'",
                [msg_id],
                |row| row.get::<_, i64>(0),
            )
            .is_ok_and(|count| count == 1)
    });
    assert!(journaled, "{msg_id} never reached the journal");
}

#[test]
fn an_end_answered_from_the_end_log_is_remembered_after_a_sigkill_while_sqlite_was_locked() {
    let dir = Dir::new();
    let config = appending_config(&dir, "");
    let mut server = Server::start(&dir, &config);
    assert_eq!(server.post_seed("/", "before").status, 200);
    wait_journaled(&dir, "before");
    let holder = Holder::lock(&dir.path().join("cmqhook.db"));

    // SQLite cannot take the end, the end log can: answered 200, and a retry is answered
    // from memory without running it again.
    let answered = server.post_seed("/", "logged");
    assert_eq!(answered.status, 200, "{}", answered.text());
    let retry = server.post_seed("/", "logged");
    assert_eq!(retry.status, 200, "{}", retry.text());
    assert_eq!(retry.json()["results"][0]["deduplicated"], true);
    // The writer finds SQLite locked: nothing new starts.
    assert!(wait_for(Duration::from_secs(10), || healthz(&server) == 503));
    assert_eq!(server.post_seed("/", "new").status, 503);

    server.signal("KILL");
    server.wait_exit(Duration::from_secs(10));
    holder.release();
    let ends = std::fs::metadata(dir.path().join("cmqhook.db.ends-0"))
        .map(|m| m.len())
        .unwrap_or(0)
        + std::fs::metadata(dir.path().join("cmqhook.db.ends-1"))
            .map(|m| m.len())
            .unwrap_or(0);
    assert!(ends > 0, "the end is in the end log");
    // Before any restart, `history` shows it from there.
    let rows = dir.history(&["--msg-id", "logged"]);
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["outcome"], "succeeded");

    let server = Server::start(&dir, &config);
    assert!(server.log_text().contains("written from the end log"));
    let again = server.post_seed("/", "logged");
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["results"][0]["deduplicated"], true);
    assert_eq!(runs(&dir).get("logged"), Some(&1));
    let rows = dir.history(&["--msg-id", "logged"]);
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["outcome"], "succeeded");
}

#[test]
fn a_deleted_end_log_is_created_again_and_what_it_takes_then_survives_a_sigkill() {
    let dir = Dir::new();
    let config = appending_config(&dir, "");
    let mut server = Server::start(&dir, &config);
    assert_eq!(server.post_seed("/", "before").status, 200);
    for index in 0..2 {
        std::fs::remove_file(dir.path().join(format!("cmqhook.db.ends-{index}")))
            .expect("rm the end log");
    }
    assert!(
        server
            .wait_for_log_line(Duration::from_secs(10), &["the end log was deleted"])
            .is_some()
    );
    wait_journaled(&dir, "before");
    // Only the end log can take the next end now: were it still the deleted file, the end
    // would be gone with the process.
    let holder = Holder::lock(&dir.path().join("cmqhook.db"));
    let answered = server.post_seed("/", "after");
    assert_eq!(answered.status, 200, "{}", answered.text());
    server.signal("KILL");
    server.wait_exit(Duration::from_secs(10));
    holder.release();

    let server = Server::start(&dir, &config);
    for id in ["before", "after"] {
        let again = server.post_seed("/", id);
        assert_eq!(again.status, 200, "{id}: {}", again.text());
        assert_eq!(again.json()["results"][0]["deduplicated"], true, "{id}");
    }
    assert!(runs(&dir).values().all(|&n| n == 1), "{:?}", runs(&dir));
}

/// A small tmpfs mounted at a path, unmounted when dropped.
struct Mounted(PathBuf);

impl Mounted {
    /// Mounts a tmpfs of `size` at `at`; panics where that is not permitted (the test needs
    /// root, and is ignored unless asked for).
    fn tmpfs(at: &Path, size: &str) -> Mounted {
        std::fs::create_dir_all(at).expect("mount point");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            output.status.success(),
            "needs root to mount a tmpfs: mount {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Mounted(at.to_owned())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The sizes of the end log's two files beside `db` (0 for one that does not exist).
fn end_log_sizes(db: &Path) -> [u64; 2] {
    [0, 1].map(|index| {
        let mut path = db.as_os_str().to_owned();
        path.push(format!(".ends-{index}"));
        std::fs::metadata(path).map_or(0, |m| m.len())
    })
}

#[test]
#[ignore = "needs root: mounts a tmpfs"]
fn a_full_disk_answers_503_for_a_run_whose_end_cannot_be_written_and_runs_nothing_twice() {
    let dir = Dir::new();
    let state = dir.path().join("state");
    let _mounted = Mounted::tmpfs(&state, "2m");
    let db = state.join("cmqhook.db");
    let config = appending_config(&dir, "journal = \"state/cmqhook.db\"");
    let mut server = Server::start(&dir, &config);
    assert_eq!(server.post_seed("/", "room").status, 200);
    // Committed, and the end log emptied (its pages freed): once the disk is full, neither
    // can take an end. (An end-log page with room left would take one, and that end, in
    // the page cache, would rightly be answered 200.)
    wait_journaled_in(&db, "room");
    assert!(wait_for(Duration::from_secs(10), || end_log_sizes(&db) == [0, 0]));
    let mut filler = std::fs::File::create(state.join("filler")).expect("filler");
    let block = vec![0u8; 64 * 1024];
    while filler.write_all(&block).is_ok() {}
    let _ = filler.write_all(&block[..512]);
    drop(filler);

    // It runs; its end cannot be written anywhere: 503, never 200.
    let full = server.post_seed("/", "full");
    assert_eq!(full.status, 503, "{}", full.text());
    assert_eq!(full.json()["results"][0]["outcome"], "succeeded");
    assert_eq!(runs(&dir).get("full"), Some(&1));
    // Fail closed: nothing new starts, and a retry neither runs it again nor is answered 200.
    assert_eq!(healthz(&server), 503);
    let new = server.post_seed("/", "new");
    assert_eq!(new.status, 503, "{}", new.text());
    let retry = server.post_seed("/", "full");
    assert_eq!(retry.status, 503, "{}", retry.text());
    assert_eq!(runs(&dir).get("new"), None);
    assert_eq!(runs(&dir).get("full"), Some(&1));
    assert_eq!(end_log_sizes(&db), [0, 0], "the end log took nothing");

    // Room again: the end kept in memory is written, and the retry answered from it.
    std::fs::remove_file(state.join("filler")).expect("room again");
    assert!(wait_for(Duration::from_secs(10), || healthz(&server) == 200));
    let retry = server.post_seed("/", "full");
    assert_eq!(retry.status, 200, "{}", retry.text());
    assert_eq!(retry.json()["results"][0]["deduplicated"], true);
    assert_eq!(server.post_seed("/", "new").status, 200);
    server.signal("KILL");
    server.wait_exit(Duration::from_secs(10));

    let server = Server::start(&dir, &config);
    for id in ["room", "full", "new"] {
        let again = server.post_seed("/", id);
        assert_eq!(again.status, 200, "{id}: {}", again.text());
        assert_eq!(again.json()["results"][0]["deduplicated"], true, "{id}");
    }
    let counts = runs(&dir);
    assert_eq!(
        (counts.len(), counts["room"], counts["full"], counts["new"]),
        (3, 1, 1, 1)
    );
}

#[test]
fn a_run_whose_end_neither_the_end_log_nor_sqlite_can_take_is_answered_503_never_200() {
    let dir = Dir::new();
    let config = appending_config(&dir, "");
    let server = Server::start(&dir, &config);
    assert_eq!(server.post_seed("/", "before").status, 200);
    wait_journaled(&dir, "before");
    // The end log's paths name a full device (every write fails with ENOSPC, as on a full
    // disk), and, once the server has opened them, another process holds SQLite's lock.
    for index in 0..2 {
        let link = dir.path().join(format!("full-{index}"));
        std::os::unix::fs::symlink("/dev/full", &link).expect("symlink");
        std::fs::rename(&link, dir.path().join(format!("cmqhook.db.ends-{index}")))
            .expect("the end log names /dev/full");
    }
    // The writer's check finds both paths replaced, and opens what they name now.
    assert!(wait_for(Duration::from_secs(10), || {
        let log = server.log_text();
        log.matches("the end log was deleted or replaced").count()
            + log.matches("cannot create the end log again").count()
            >= 2
    }));
    let holder = Holder::lock(&dir.path().join("cmqhook.db"));

    // It runs; its end is written nowhere: 503, however it ended.
    let lost = server.post_seed("/", "lost");
    assert_eq!(lost.status, 503, "{}", lost.text());
    let result = &lost.json()["results"][0];
    assert_eq!(result["outcome"], "succeeded", "{result}");
    assert!(
        result["error"]
            .as_str()
            .is_some_and(|error| error.contains("could not be journaled")),
        "{result}"
    );
    let retry = server.post_seed("/", "lost");
    assert_eq!(retry.status, 503, "{}", retry.text());
    assert_eq!(runs(&dir).get("lost"), Some(&1));

    // Once SQLite can take it, the end kept in memory is committed: answered, not run again.
    holder.release();
    assert!(wait_for(Duration::from_secs(10), || healthz(&server) == 200));
    let retry = server.post_seed("/", "lost");
    assert_eq!(retry.status, 200, "{}", retry.text());
    assert_eq!(retry.json()["results"][0]["deduplicated"], true);
    assert_eq!(runs(&dir).get("lost"), Some(&1));
    // The end log's paths still name /dev/full, which reads as endless zeros: no restart.
}

#[test]
fn the_commands_of_a_sigkilled_server_are_killed_before_a_new_one_runs_anything() {
    let dir = Dir::new();
    let pids = dir.path().join("pids");
    let left = dir.path().join("left");
    let config = format!(
        r#"[server]
listen = "127.0.0.1:0"
respond_within = "300ms"

[hooks.long]
tags = ["long"]
kill_grace = "1s"
# The command, a child in its group, and one that left the group with setsid.
command = '''
if [ "$CMQHOOK_ATTEMPT" = 1 ]; then
  sleep 60 & echo $! >> {pids}
  setsid sleep 60 & echo $! >> {pids}
  echo $$ >> {pids}
  wait
fi
'''

[hooks.quick]
tags = ["quick"]
# Finishes at once, leaving a background process behind on purpose.
command = "sleep 60 > /dev/null 2>&1 & echo $! > {left}"
"#,
        pids = pids.display(),
        left = left.display()
    );
    let mut server = Server::start(&dir, &config);
    let tagged = |server: &Server, id: &str, tag: &str| {
        server.post(
            "/",
            &[("x-cmq-message-id", id), ("x-cmq-message-tag", tag)],
            b"x",
        )
    };
    assert_eq!(tagged(&server, "q1", "quick").status, 200);
    assert_eq!(tagged(&server, "o1", "long").status, 503);
    assert!(wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&pids).is_ok_and(|text| text.lines().count() == 3)
    }));
    let orphans: Vec<u32> = std::fs::read_to_string(&pids)
        .expect("pids")
        .lines()
        .map(|line| line.parse().expect("pid"))
        .collect();
    let left_behind: u32 = std::fs::read_to_string(&left)
        .expect("left")
        .trim()
        .parse()
        .expect("pid");
    // As if the guard had died with it: its commands run on.
    crate::guard::kill_past_the_guard(&server);
    server.wait_exit(Duration::from_secs(10));
    assert!(
        orphans.iter().all(|&pid| alive(pid)),
        "they outlive the server"
    );

    let server = Server::start(&dir, &config);
    // Listening means the orphans are gone already.
    let still: Vec<u32> = orphans.iter().copied().filter(|&pid| alive(pid)).collect();
    assert!(still.is_empty(), "still running after restart: {still:?}");
    assert!(
        alive(left_behind),
        "a finished run's background process is left alone"
    );
    assert!(
        server
            .log_text()
            .contains("killing the commands of runs a previous cmqhook left running")
    );
    let retry = tagged(&server, "o1", "long");
    assert_eq!(retry.status, 200, "{}", retry.text());
    let rows = dir.history(&["--msg-id", "o1"]);
    let outcomes: Vec<_> = rows
        .iter()
        .map(|row| (row["attempt"].as_u64(), row["outcome"].as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [(Some(2), Some("succeeded")), (Some(1), Some("interrupted"))]
    );
    let _ = Command::new("kill").arg(left_behind.to_string()).status();
}

/// `cmqhook serve` on `dir`'s config, which must refuse to start: its output once it exited
/// (within 10 s, else it is killed and this panics).
pub(crate) fn refused_serve(dir: &Dir) -> std::process::Output {
    let mut serve = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "-c"])
        .arg(dir.config_file())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve");
    let exited = wait_for(Duration::from_secs(10), || {
        serve.try_wait().expect("try_wait").is_some()
    });
    if !exited {
        let _ = serve.kill();
    }
    let output = serve.wait_with_output().expect("output");
    assert!(exited, "serve kept running: {}", both(&output));
    output
}

#[test]
fn a_second_serve_on_the_same_journal_is_refused() {
    let dir = Dir::new();
    let config = appending_config(&dir, "");
    let server = Server::start(&dir, &config);
    let output = refused_serve(&dir);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("in use by another `cmqhook serve`")
            && stderr.contains(&server.pid().to_string()),
        "{stderr}"
    );
    assert_eq!(server.post_seed("/", "still-mine").status, 200);
}

#[test]
fn a_deleted_journal_is_restored_from_the_open_database_and_remembered_after_restart() {
    let dir = Dir::new();
    let config = appending_config(&dir, "");
    let mut server = Server::start(&dir, &config);
    let before: Vec<String> = (0..5).map(|n| format!("d{n}")).collect();
    for id in &before {
        assert_eq!(server.post_seed("/", id).status, 200);
    }
    let db = dir.path().join("cmqhook.db");
    let inode = |path: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).map(|m| m.ino()).ok()
    };
    let original = inode(&db);
    std::fs::remove_file(&db).expect("rm cmqhook.db");
    assert!(wait_for(Duration::from_secs(10), || {
        inode(&db).is_some_and(|now| Some(now) != original)
    }));
    assert!(server.log_text().contains("the journal file was deleted"));
    assert!(wait_for(Duration::from_secs(5), || healthz(&server) == 200));
    assert_eq!(server.post_seed("/", "after").status, 200);
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(20)), Some(0));

    let server = Server::start(&dir, &config);
    for id in before.iter().chain([&"after".to_owned()]) {
        let again = server.post_seed("/", id);
        assert_eq!(again.status, 200, "{id}");
        assert_eq!(again.json()["results"][0]["deduplicated"], true, "{id}");
    }
    assert!(runs(&dir).values().all(|&n| n == 1), "{:?}", runs(&dir));
}

#[test]
fn with_the_journal_off_the_oldest_outcomes_are_evicted_beyond_dedup_capacity() {
    let dir = Dir::new();
    let config = appending_config(&dir, "journal = \"off\"\ndedup_capacity = 10");
    let server = Server::start(&dir, &config);
    for n in 0..50 {
        assert_eq!(server.post_seed("/", &format!("e{n}")).status, 200);
    }
    let metrics = get(server.addr, "/metrics").text();
    let evictions: Vec<&str> = metrics
        .lines()
        .filter(|line| line.starts_with("cmqhook_dedup_evictions_total "))
        .collect();
    assert_eq!(evictions, ["cmqhook_dedup_evictions_total 40"]);
    // The newest ten are remembered, the oldest forgotten.
    for n in 40..50 {
        let again = server.post_seed("/", &format!("e{n}"));
        assert_eq!(again.json()["results"][0]["deduplicated"], true, "e{n}");
    }
    let again = server.post_seed("/", "e0");
    assert_eq!(again.json()["results"][0]["deduplicated"], false);
    let counts = runs(&dir);
    assert_eq!(counts["e0"], 2);
    assert_eq!(counts["e45"], 1);
    let distinct: HashSet<_> = counts.keys().collect();
    assert_eq!(distinct.len(), 50);
}

#[test]
fn while_a_deleted_journal_cannot_be_restored_pushes_get_503_and_it_recovers_by_itself() {
    let dir = Dir::new();
    let config = appending_config(&dir, "");
    let server = Server::start(&dir, &config);
    assert_eq!(server.post_seed("/", "kept").status, 200);
    // A directory where the restore writes its copy: the restore fails until it is gone.
    let blocker = dir.path().join("cmqhook.db.restore");
    std::fs::create_dir(&blocker).expect("blocker");
    std::fs::remove_file(dir.path().join("cmqhook.db")).expect("rm cmqhook.db");
    // 503 from the moment the deletion is noticed ("being restored"), then the failed restore
    // says why.
    assert!(wait_for(Duration::from_secs(10), || {
        let health = get(server.addr, "/healthz");
        health.status == 503 && health.text().contains("cannot be restored")
    }));
    let refused = server.post_seed("/", "blocked");
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(runs(&dir).get("blocked"), None, "nothing new starts");

    std::fs::remove_dir(&blocker).expect("unblock");
    assert!(wait_for(Duration::from_secs(10), || healthz(&server) == 200));
    assert_eq!(server.post_seed("/", "blocked").status, 200);
    assert_eq!(server.post_seed("/", "kept").status, 200);
    assert_eq!((runs(&dir)["kept"], runs(&dir)["blocked"]), (1, 1));
}

#[test]
fn a_journal_path_that_now_names_another_file_is_not_overwritten_and_pushes_get_503() {
    let dir = Dir::new();
    let config = appending_config(&dir, "");
    let server = Server::start(&dir, &config);
    assert_eq!(server.post_seed("/", "before").status, 200);
    let db = dir.path().join("cmqhook.db");
    std::fs::rename(&db, dir.path().join("moved.db")).expect("mv");
    std::fs::write(&db, b"someone else's file").expect("another file");
    assert!(wait_for(Duration::from_secs(10), || {
        let health = get(server.addr, "/healthz");
        health.status == 503 && health.text().contains("now names another file")
    }));
    assert_eq!(server.post_seed("/", "after").status, 503);
    assert_eq!(runs(&dir).get("after"), None);
    assert_eq!(
        std::fs::read(&db).expect("still there"),
        b"someone else's file",
        "not overwritten"
    );
}

#[test]
fn a_serve_stopped_while_its_journal_is_locked_still_exits() {
    let dir = Dir::new();
    let config = appending_config(&dir, "");
    let mut server = Server::start(&dir, &config);
    let holder = Holder::lock(&dir.path().join("cmqhook.db"));
    // Answered from the end log; SQLite never gets it from this process.
    assert_eq!(server.post_seed("/", "unwritten").status, 200);
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(
        server
            .log_text()
            .contains("closing while the journal cannot be written"),
        "{}",
        server.log_text()
    );
    drop(holder);
    // The next start writes it from the end log: not run again.
    let server = Server::start(&dir, &config);
    let again = server.post_seed("/", "unwritten");
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["results"][0]["deduplicated"], true);
    assert_eq!(runs(&dir)["unwritten"], 1);
}
