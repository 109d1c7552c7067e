//! A fleet sharing PostgreSQL under faults (SPEC §8, issue 22 items 7, 8, 9): recovery is
//! prompt after a connection reset, a batch that meets a deadlock is retried (never a 503)
//! and takes its rows in one fixed order, and an end written after another instance took
//! the message over is recorded as superseded without touching the message's state.
//!
//! Locks are held by a `psql` session of the test's own ([`Session`]), so that a deadlock
//! happens when the test says, not by chance.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::pg::*;

/// The test's database; panics when `CMQHOOK_TEST_POSTGRES` is not set.
fn test_db() -> TestDb {
    TestDb::create()
}

/// A hook `record` running `command` (a TOML multi-line literal), killed 200 ms after SIGTERM.
fn hook(command: &str) -> String {
    format!("[defaults]\nkill_grace = \"200ms\"\n\n[hooks.record]\ncommand = '''{command}'''")
}

/// Posts the CMQ example push with `msg_id` to `addr` from a thread of its own.
fn push_in_background(addr: SocketAddr, msg_id: &str) -> JoinHandle<Response> {
    let msg_id = msg_id.to_owned();
    std::thread::spawn(move || {
        post(
            addr,
            "/",
            &seed_headers(&msg_id),
            seed_envelope(&msg_id).as_bytes(),
        )
    })
}

/// Pushes `msg_id` to `instance` every 50 ms until it answers 200, at most `within`; returns
/// that answer, or panics with the last one.
fn push_until_200(instance: &Instance, msg_id: &str, within: Duration) -> Response {
    let mut last = None;
    let answered = poll(within, Duration::from_millis(50), || {
        let response = instance.push(msg_id);
        let ok = response.status == 200;
        last = Some(response);
        ok
    });
    let last = last.expect("pushed at least once");
    assert!(
        answered,
        "{msg_id} on {} never answered 200 within {within:?}; last: {} {}",
        instance.label,
        last.status,
        last.text()
    );
    last
}

/// Waits at most `within` until `/healthz` of `instance` answers `status`; how long it took.
fn health_within(instance: &Instance, status: u16, within: Duration) -> Option<Duration> {
    let since = Instant::now();
    wait_for(within, || instance.health().0 == status).then(|| since.elapsed())
}

/// `results[0].deduplicated` of an answer.
fn deduplicated(response: &Response) -> bool {
    response.json()["results"][0]["deduplicated"]
        .as_bool()
        .unwrap_or_else(|| panic!("no deduplicated in {}", response.text()))
}

/// The value of `name{hook="record"}` on `instance`.
fn hook_metric(instance: &Instance, name: &str) -> Option<f64> {
    instance.server.metrics().get(name, &[("hook", "record")])
}

// ---------------------------------------------------------------------------------------
// Item 7: recovery is prompt.

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn after_a_connection_reset_healthz_fails_at_once_and_pushes_are_answered_again_promptly() {
    let db = test_db();
    let proxy = Proxy::start(db.server_addr());
    let shared = Dir::new();
    // The default lease: its renewals come every 10 s, far from the test's 3 s.
    let instance = Instance::start(Spec::new(
        "a",
        config(
            &server_keys(
                &db.url_via(&proxy),
                Some("a"),
                "30s",
                "respond_within = \"2s\"",
            ),
            &hook(&shared.record(0)),
        ),
    ));
    assert!(
        health_within(&instance, 200, Duration::from_secs(20)).is_some(),
        "never healthy"
    );
    assert_eq!(instance.push("before").status, 200);

    proxy.cut();
    let refused = instance.push("during");
    assert_eq!(refused.status, 503, "{}", refused.text());
    let unhealthy = health_within(&instance, 503, Duration::from_secs(3));
    assert!(
        unhealthy.is_some(),
        "/healthz still 200 3 s after a push failed for want of the database"
    );
    assert!(instance.health().1.contains("journal unreachable"));

    proxy.restore();
    let restored_at = Instant::now();
    let answered = poll(Duration::from_secs(20), Duration::from_millis(50), || {
        instance.push("after").status == 200
    });
    let answered_after = restored_at.elapsed();
    assert!(answered, "pushes never answered 200 again");
    assert!(
        answered_after < Duration::from_secs(3),
        "pushes answered 200 again only {answered_after:?} after the database was reachable"
    );
    assert!(
        health_within(&instance, 200, Duration::from_secs(3)).is_some(),
        "/healthz not 200 again"
    );
    eprintln!(
        "healthz 503 {unhealthy:?} after the failed push; pushes 200 again {answered_after:?} after the restore"
    );
    assert_eq!(shared.recorded().len(), 2);
}

// ---------------------------------------------------------------------------------------
// Superseded ends; the owner check on an end.

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn an_end_written_after_another_instance_took_the_message_over_is_superseded_and_changes_nothing() {
    let db = test_db();
    let proxy = Proxy::start(db.server_addr());
    let shared = Dir::new();
    // Attempt 1 waits at a gate (until a's self-fencing stops it); later attempts record.
    let command = format!(
        "if [ \"$CMQHOOK_ATTEMPT\" = 1 ]; then {gate}; fi; {record}",
        gate = shared.gate("held", 60),
        record = shared.record(0)
    );
    let keys = "respond_within = \"300ms\"";
    // a reaches the database through the proxy, b directly.
    let fleet = Instance::start_all(vec![
        Spec::new(
            "a",
            config(
                &server_keys(&db.url_via(&proxy), Some("a"), "2s", keys),
                &hook(&command),
            ),
        ),
        Spec::new(
            "b",
            config(
                &server_keys(&db.url(), Some("b"), "2s", keys),
                &hook(&command),
            ),
        ),
    ]);
    assert_eq!(fleet[0].push("over").status, 503);
    shared.wait_at_gate("held");
    // A second run on a, of a message no other instance takes over: its end is written with
    // the superseded one (in one batch, once the database is back) and is not superseded.
    std::fs::remove_file(shared.file("held.reached")).expect("the gate was reached");
    assert_eq!(fleet[0].push("mine").status, 503);
    shared.wait_at_gate("held");
    proxy.cut();
    // a cannot renew its lease; once it ran out, b takes the message over and succeeds.
    let taken = push_until_200(&fleet[1], "over", Duration::from_secs(20));
    assert_eq!(taken.outcome(), "succeeded");
    assert_eq!(shared.attempts(), ["2"]);

    // a's end of attempt 1 reaches the database only now.
    proxy.restore();
    let runs = "SELECT instance, attempt, superseded FROM cmqhook_runs
                WHERE msg_id = 'over' AND run_id IS NOT NULL ORDER BY id";
    assert!(
        wait_for(Duration::from_secs(20), || db.sql(runs).lines().count()
            == 2),
        "a's end was never written: {}",
        db.sql(runs)
    );
    // The message's state is still b's success: a deduplicates it, nothing runs again.
    assert_eq!(
        db.sql("SELECT instance, attempt, outcome FROM cmqhook_claims WHERE msg_id = 'over'")
            .trim(),
        "b|2|succeeded"
    );
    assert_eq!(db.sql(runs).lines().collect::<Vec<_>>(), ["b|2|f", "a|1|t"]);
    let mine = "SELECT r.instance, r.attempt, r.superseded, c.outcome = r.outcome
                FROM cmqhook_runs AS r JOIN cmqhook_claims AS c USING (hook, msg_id)
                WHERE msg_id = 'mine' AND r.run_id IS NOT NULL";
    assert!(
        wait_for(Duration::from_secs(20), || !db.sql(mine).trim().is_empty()),
        "a's end of mine was never written"
    );
    // Its claim is ended with the run's outcome.
    assert_eq!(db.sql(mine).trim(), "a|1|f|t");
    let again = push_until_200(&fleet[0], "over", Duration::from_secs(10));
    assert!(deduplicated(&again), "{}", again.text());
    assert_eq!(shared.attempts(), ["2"]);
    assert_eq!(
        hook_metric(&fleet[0], "cmqhook_superseded_total"),
        Some(1.0)
    );
    assert_eq!(
        hook_metric(&fleet[1], "cmqhook_superseded_total"),
        Some(0.0)
    );
    let warned = fleet[0]
        .server
        .wait_for_log_line(Duration::from_secs(5), &["WARN", "superseded"]);
    assert!(warned.is_some(), "{}", fleet[0].server.log_text());
}

// ---------------------------------------------------------------------------------------
// Item 8: a batch never deadlocks for good.

/// A `psql` session of the test's own, fed one statement at a time: it holds row locks
/// while the instance works.
struct Session {
    child: Child,
    stdin: ChildStdin,
    /// What psql prints, errors included, line by line.
    lines: mpsc::Receiver<String>,
    marks: usize,
}

impl Session {
    fn open(url: &str) -> Session {
        let mut child = Command::new("sh")
            .args(["-c", "exec psql -X -q -A -t -d \"$1\" 2>&1", "sh", url])
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("psql (apt-get install postgresql-client)");
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Session {
            child,
            stdin,
            lines,
            marks: 0,
        }
    }

    /// Sends `sql` without waiting for it (it may wait for a lock).
    fn send(&mut self, sql: &str) {
        writeln!(self.stdin, "{sql}").expect("write to psql");
        self.stdin.flush().expect("flush psql");
    }

    /// Waits (20 s at most) until psql has run everything sent; what it printed meanwhile.
    fn sync(&mut self) -> Vec<String> {
        self.marks += 1;
        let mark = format!("mark-{}", self.marks);
        // Printed even in a transaction that an error aborted.
        self.send(&format!("\\echo {mark}"));
        let mut printed = Vec::new();
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("psql did not get to {mark}; printed {printed:?}"));
            if line == mark {
                return printed;
            }
            printed.push(line);
        }
    }

    /// Runs `sql`; what psql printed.
    fn run(&mut self, sql: &str) -> Vec<String> {
        self.send(sql);
        self.sync()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `SELECT … FOR UPDATE` of the kept bodies of `msg_id`: what a push's `KEEP_BODY` replaces.
fn lock_body(msg_id: &str) -> String {
    format!("SELECT 1 FROM cmqhook_bodies WHERE msg_id = '{msg_id}' FOR UPDATE;")
}

/// How many of the instances' connections wait for a lock.
fn waiting_for_locks(db: &TestDb) -> usize {
    db.sql(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name LIKE 'cmqhook%'
           AND wait_event_type = 'Lock'",
    )
    .trim()
    .parse()
    .expect("a count")
}

/// The newest kept body of `msg_id`.
fn newest_body(db: &TestDb, msg_id: &str) -> i64 {
    db.sql(&format!(
        "SELECT COALESCE(max(id), 0) FROM cmqhook_bodies WHERE msg_id = '{msg_id}'"
    ))
    .trim()
    .parse()
    .expect("an id")
}

/// Instance `a` keeping bodies, with a hook that fails attempt 1 and records the others; each
/// of `ids` pushed once (failing), so that each has a kept body that its next push replaces.
fn keeping_bodies(db: &TestDb, ids: &[&str]) -> (Instance, Dir) {
    let shared = Dir::new();
    let command = format!(
        "if [ \"$CMQHOOK_ATTEMPT\" = 1 ]; then exit 1; fi; {}",
        shared.record(0)
    );
    // One HTTP worker: its lane's writer is the one every body and end queues in.
    let instance = Instance::start(
        Spec::new(
            "a",
            config(
                &server_keys(
                    &db.url(),
                    Some("a"),
                    "30s",
                    "respond_within = \"30s\"\nkeep_bodies = \"1d\"",
                ),
                &hook(&command),
            ),
        )
        .one_worker(),
    );
    for msg_id in ids {
        let failed = instance.push(msg_id);
        assert_ne!(failed.status, 200, "{}", failed.text());
    }
    (instance, shared)
}

/// Makes `instance`'s journal writer (its one HTTP worker's lane) wait for the body of `blocker` (which `session` locks
/// in the savepoint `s`), then pushes each of `ids` in that order, each once the one before
/// ran: their bodies and ends queue behind the blocked batch. Returns the pushes waiting for
/// their answers, `blocker`'s first.
fn queue_behind(
    db: &TestDb,
    (instance, shared): (&Instance, &Dir),
    session: &mut Session,
    blocker: &str,
    ids: &[&str],
) -> Vec<JoinHandle<Response>> {
    session.run("SAVEPOINT s;");
    session.run(&lock_body(blocker));
    let mut pushes = vec![push_in_background(instance.server.addr, blocker)];
    assert!(
        wait_for(Duration::from_secs(10), || waiting_for_locks(db) == 1),
        "the writer never waited for {blocker}'s body"
    );
    for (n, msg_id) in ids.iter().enumerate() {
        pushes.push(push_in_background(instance.server.addr, msg_id));
        assert!(
            wait_for(Duration::from_secs(10), || shared.recorded().len() == n + 2),
            "{msg_id} did not run"
        );
    }
    // Every run's end is queued once no command runs.
    assert!(
        wait_for(Duration::from_secs(10), || hook_metric(
            instance,
            "cmqhook_running"
        ) == Some(0.0)),
        "commands still running"
    );
    pushes
}

/// Lets the batch blocked on `blocker` commit (`session` rolls its savepoint back), and waits
/// until the next batch, with everything queued meanwhile, waits for a lock.
fn release_blocker(db: &TestDb, session: &mut Session, blocker: &str) {
    let before = newest_body(db, blocker);
    session.run("ROLLBACK TO SAVEPOINT s;");
    assert!(
        wait_for(Duration::from_secs(10), || newest_body(db, blocker)
            > before
            && waiting_for_locks(db) == 1),
        "the next batch never waited for a lock"
    );
}

/// The answers of `pushes`, which must all be 200.
fn all_200(pushes: Vec<JoinHandle<Response>>) {
    let answers: Vec<(u16, String)> = pushes
        .into_iter()
        .map(|push| {
            let response = push.join().expect("push");
            (response.status, response.text())
        })
        .collect();
    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "{answers:#?}"
    );
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn a_batch_that_the_database_aborts_to_break_a_deadlock_is_written_again_never_a_503() {
    let db = test_db();
    // The instance's connections look for a deadlock 3 s into a wait: time for the session
    // to close the cycle, so that the instance is the one aborted.
    db.sql(&format!(
        "ALTER DATABASE \"{}\" SET deadlock_timeout = '3s'",
        db.name
    ));
    let (instance, shared) = keeping_bodies(&db, &["dl-a", "dl-b", "dl-z"]);
    let mut session = Session::open(&db.url());
    session.run("SET deadlock_timeout = '60s';");
    session.run("BEGIN;");
    session.run(&lock_body("dl-b"));
    let pushes = queue_behind(
        &db,
        (&instance, &shared),
        &mut session,
        "dl-z",
        &["dl-a", "dl-b"],
    );
    // The batch takes dl-a's body, then waits for dl-b's, which the session holds; the
    // session then asks for dl-a's: a cycle, which PostgreSQL breaks by aborting the batch.
    release_blocker(&db, &mut session, "dl-z");
    session.send(&lock_body("dl-a"));
    let printed = session.sync();
    assert!(
        !printed.iter().any(|line| line.contains("ERROR")),
        "the session, not the instance, was aborted: {printed:?}"
    );
    session.run("COMMIT;");
    all_200(pushes);
    assert!(
        instance
            .server
            .wait_for_log_line(Duration::from_secs(5), &["deadlock detected"])
            .is_some(),
        "no deadlock was met: {}",
        instance.server.log_text()
    );
    let twice = db.sql(
        "SELECT count(*) FROM cmqhook_runs WHERE msg_id IN ('dl-a', 'dl-b', 'dl-z')
         AND attempt = 2",
    );
    assert_eq!(twice.trim(), "3");
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn a_batch_takes_its_rows_in_message_id_order_whatever_order_they_came_in() {
    let db = test_db();
    let (instance, shared) = keeping_bodies(&db, &["or-a", "or-b", "or-z"]);
    let mut session = Session::open(&db.url());
    session.run("BEGIN;");
    session.run(&lock_body("or-a"));
    // or-b's body and end are queued before or-a's.
    let pushes = queue_behind(
        &db,
        (&instance, &shared),
        &mut session,
        "or-z",
        &["or-b", "or-a"],
    );
    release_blocker(&db, &mut session, "or-z");
    // In message id order, the batch waits for or-a's body before it touches or-b's.
    let printed = session
        .run("SELECT 'took or-b' FROM cmqhook_bodies WHERE msg_id = 'or-b' FOR UPDATE NOWAIT;");
    assert_eq!(printed, ["took or-b"], "the batch took or-b's rows first");
    session.run("ROLLBACK;");
    all_200(pushes);
}

// ---------------------------------------------------------------------------------------
// Fencing: a claimed run that has not started yet when its instance fences itself.

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn a_fenced_instance_lets_go_of_a_run_waiting_for_a_slot_without_ever_starting_it() {
    let db = test_db();
    let proxy = Proxy::start(db.server_addr());
    let shared = Dir::new();
    // `hold` keeps the hook's one slot at a gate; `waiting` is claimed and waits for it.
    let command = format!(
        "if [ \"$CMQ_MSG_ID\" = hold ]; then {gate}; fi; {record}",
        gate = shared.gate("held", 60),
        record = shared.record(0)
    );
    let hooks = format!(
        "[defaults]\nkill_grace = \"200ms\"\n\n[hooks.record]\nconcurrency = 1\ncommand = '''{command}'''"
    );
    let keys = "respond_within = \"5s\"";
    let fleet = Instance::start_all(vec![
        Spec::new(
            "a",
            config(
                &server_keys(&db.url_via(&proxy), Some("a"), "2s", keys),
                &hooks,
            ),
        ),
        Spec::new(
            "b",
            config(&server_keys(&db.url(), Some("b"), "2s", keys), &hooks),
        ),
    ]);
    let hold = push_in_background(fleet[0].server.addr, "hold");
    shared.wait_at_gate("held");
    let waiting = push_in_background(fleet[0].server.addr, "waiting");
    let claimed =
        "SELECT count(*) FROM cmqhook_claims WHERE msg_id = 'waiting' AND outcome = 'running'";
    assert!(
        wait_for(Duration::from_secs(10), || db.sql(claimed).trim() == "1"),
        "waiting was never claimed"
    );
    // a's self-fencing stops `hold`; the slot it frees must not start `waiting`, whose claim
    // b may take over once the lease ran out.
    proxy.cut();
    assert_ne!(hold.join().expect("push").status, 200);
    let waiting = waiting.join().expect("push");
    assert_eq!(waiting.status, 503, "{}", waiting.text());
    let taken = push_until_200(&fleet[1], "waiting", Duration::from_secs(20));
    assert_eq!(taken.outcome(), "succeeded");
    assert_eq!(shared.attempts(), ["2"]);

    proxy.restore();
    // Once a answers for `waiting`, every end a had of it is written (until then, a says
    // "not journaled yet"): there is none, not even of a command stopped at once.
    let again = push_until_200(&fleet[0], "waiting", Duration::from_secs(20));
    assert!(deduplicated(&again), "{}", again.text());
    let started_by_a = db.sql(
        "SELECT count(*) FROM cmqhook_runs
         WHERE msg_id = 'waiting' AND instance = 'a' AND run_id IS NOT NULL",
    );
    assert_eq!(
        started_by_a.trim(),
        "0",
        "a started `waiting` after it fenced itself"
    );
}
