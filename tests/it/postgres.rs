//! Several `cmqhook serve` sharing one PostgreSQL journal (SPEC §8): dedup across instances,
//! a SIGKILLed instance's claims taken over once their lease expires, the database cut under
//! traffic (through [`Proxy`]), `history` across the fleet, and the password kept secret.
//!
//! Each test creates its own database on the server of `CMQHOOK_TEST_POSTGRES` and drops it;
//! every test here is ignored unless asked for (`cargo test -- --include-ignored`).

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::harness::*;
use crate::pg::*;

/// A hook `record` that runs `command` (a TOML multi-line literal: any quotes but `'''`).
fn hook(command: &str) -> String {
    format!("[hooks.record]\ncommand = '''{command}'''")
}

/// A shell snippet appending the message id to `file`, one line per run.
fn append_id(file: &Path) -> String {
    format!("printf '%s\\n' \"$CMQ_MSG_ID\" >> {}", file.display())
}

/// A shell snippet writing the time it runs (`date +%s.%N`) to `file`.
fn note_time(file: &Path) -> String {
    format!("date +%s.%N > {}", file.display())
}

/// How many times each message id ran, from a file of [`append_id`] lines.
fn counts(file: &Path) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in lines_of(file) {
        *counts.entry(line).or_insert(0) += 1;
    }
    counts
}

fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// Pushes `msg_id` to `instance` every 100 ms until it answers 200 (as CMQ retries), at most
/// `within`; returns that answer.
fn push_until_200(instance: &Instance, msg_id: &str, within: Duration) -> Response {
    let mut last = None;
    let answered = poll(within, Duration::from_millis(100), || {
        let response = instance.push(msg_id);
        let ok = response.status == 200;
        last = Some(response);
        ok
    });
    let last = last.expect("pushed at least once");
    assert!(
        answered,
        "{msg_id} on instance {} never answered 200 within {within:?}; last: {} {}",
        instance.label,
        last.status,
        last.text()
    );
    last
}

/// Waits (at most `within`) until `/healthz` of `instance` answers `status`, and, for 503,
/// says `journal unreachable`.
fn wait_for_health(instance: &Instance, status: u16, within: Duration) {
    let mut last = (0, String::new());
    let reached = wait_for(within, || {
        last = instance.health();
        last.0 == status && (status != 503 || last.1.contains("journal unreachable"))
    });
    assert!(
        reached,
        "/healthz of instance {} did not answer {status}{} within {within:?}; last: {} {:?}",
        instance.label,
        if status == 503 {
            " `journal unreachable`"
        } else {
            ""
        },
        last.0,
        last.1
    );
}

/// `results[0].deduplicated` of an answer.
fn deduplicated(response: &Response) -> bool {
    response.json()["results"][0]["deduplicated"]
        .as_bool()
        .unwrap_or_else(|| panic!("no deduplicated in {}", response.text()))
}

/// (attempt, outcome, instance) of history rows, newest first.
fn attempts_by(rows: &[serde_json::Value]) -> Vec<(u64, String, String)> {
    rows.iter()
        .map(|row| {
            (
                row["attempt"].as_u64().unwrap_or(0),
                row["outcome"].as_str().unwrap_or("").to_owned(),
                row["instance"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The harness itself.

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn harness_creates_a_database_per_test_and_drops_it_even_while_connected() {
    let db = TestDb::create();
    let admin = db.admin().clone();
    let name = db.name.clone();
    assert!(TestDb::exists(&admin, &name));
    assert!(name.len() <= 63, "{name}");
    assert_eq!(db.sql("SELECT current_database()").trim(), name);
    db.sql("CREATE TABLE t (x int); INSERT INTO t VALUES (1)");
    assert_eq!(db.sql("SELECT count(*) FROM t").trim(), "1");
    // A connection still open does not stop the drop (WITH (FORCE)).
    let mut holder = psql_command(&db.url())
        .args(["-c", "SELECT pg_sleep(60)"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("psql");
    assert!(wait_for(Duration::from_secs(10), || {
        psql(
            &admin.to_string(),
            &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}'"),
        )
        .is_ok_and(|count| count.trim() == "1")
    }));
    drop(db);
    assert!(!TestDb::exists(&admin, &name), "{name} was not dropped");
    let ended = wait_for(Duration::from_secs(10), || {
        holder.try_wait().expect("try_wait").is_some()
    });
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(
        ended,
        "the connection to the dropped database was not closed"
    );
}

#[test]
fn harness_urls_are_read_and_written_back() {
    let url = PgUrl::parse("postgresql://u:p%40ss@db.internal:6432/cmq?sslmode=require");
    assert_eq!(
        (
            url.scheme.as_str(),
            url.user.as_deref(),
            url.password.as_deref(),
            url.host.as_str(),
            url.port,
            url.database.as_str(),
            url.query.as_str()
        ),
        (
            "postgresql",
            Some("u"),
            Some("p%40ss"),
            "db.internal",
            6432,
            "cmq",
            "sslmode=require"
        )
    );
    assert_eq!(
        url.to_string(),
        "postgresql://u:p%40ss@db.internal:6432/cmq?sslmode=require"
    );
    let plain = PgUrl::parse("postgres://root@127.0.0.1/test");
    assert_eq!(plain.port, 5432);
    assert_eq!(
        plain
            .via("127.0.0.1:7000".parse().expect("addr"))
            .with_password("${PGPASSWORD}")
            .with_database("other")
            .to_string(),
        "postgres://root:${PGPASSWORD}@127.0.0.1:7000/other"
    );
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn harness_proxy_forwards_cuts_open_connections_refuses_new_ones_and_restores() {
    let db = TestDb::create();
    let proxy = Proxy::start(db.server_addr());
    let via = db.url_via(&proxy);
    assert_eq!(
        psql(&via, "SELECT 41 + 1")
            .expect("through the proxy")
            .trim(),
        "42"
    );
    assert!(proxy.forwarded() >= 1);

    // A session in the middle of a statement when the proxy is cut.
    let mut session = psql_command(&via)
        .args(["-c", "SELECT pg_sleep(60)"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("psql");
    assert!(wait_for(Duration::from_secs(10), || {
        db.sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%'")
            .trim()
            == "1"
    }));
    assert_eq!(proxy.open_connections(), 1);
    let cut_at = Instant::now();
    proxy.cut();
    assert!(!proxy.is_up());
    let ended = wait_for(Duration::from_secs(10), || {
        session.try_wait().expect("try_wait").is_some()
    });
    if !ended {
        let _ = session.kill();
    }
    let output = session.wait_with_output().expect("psql output");
    assert!(ended, "the cut did not end the open session");
    assert!(cut_at.elapsed() < Duration::from_secs(5));
    assert!(!output.status.success(), "{}", text(&output.stderr));
    assert_eq!(proxy.open_connections(), 0);

    // New connections are accepted and closed at once: psql fails fast.
    let refused_before = proxy.refused();
    let started = Instant::now();
    let err = psql(&via, "SELECT 1").expect_err("connected while cut");
    assert!(started.elapsed() < Duration::from_secs(5), "{err}");
    assert!(proxy.refused() > refused_before);
    // The database itself is fine.
    assert_eq!(db.sql("SELECT 1").trim(), "1");

    proxy.restore();
    assert_eq!(psql(&via, "SELECT 2").expect("restored").trim(), "2");
    // Cut and restored again, the proxy still works.
    proxy.cut();
    assert!(psql(&via, "SELECT 3").is_err());
    proxy.restore();
    assert_eq!(psql(&via, "SELECT 4").expect("restored").trim(), "4");
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn harness_proxy_freeze_holds_every_byte_until_restored() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let db = TestDb::create();
    let proxy = Proxy::start(db.server_addr());
    let via = db.url_via(&proxy);
    // A session that reads statements from its stdin and prints each result as it comes.
    let mut session = psql_command(&via)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("psql");
    let mut input = session.stdin.take().expect("stdin");
    let output = session.stdout.take().expect("stdout");
    let (line_tx, lines) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            let _ = line_tx.send(line);
        }
    });
    writeln!(input, "SELECT 'before';").expect("write");
    assert_eq!(
        lines.recv_timeout(Duration::from_secs(10)).as_deref(),
        Ok("before")
    );

    proxy.freeze();
    assert!(!proxy.is_up());
    writeln!(input, "SELECT 'held';").expect("write");
    let mut fresh = psql_command(&via)
        .args(["-c", "SELECT 'fresh'"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql");
    // Neither the open session nor a new connection gets an answer while frozen.
    assert_eq!(
        lines.recv_timeout(Duration::from_millis(500)),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout)
    );
    assert!(fresh.try_wait().expect("try_wait").is_none());

    proxy.restore();
    assert_eq!(
        lines.recv_timeout(Duration::from_secs(10)).as_deref(),
        Ok("held")
    );
    let exited = wait_for(Duration::from_secs(10), || {
        fresh.try_wait().expect("try_wait").is_some()
    });
    if !exited {
        let _ = fresh.kill();
    }
    let fresh = fresh.wait_with_output().expect("psql");
    assert!(exited && fresh.status.success(), "{}", text(&fresh.stderr));
    assert_eq!(text(&fresh.stdout).trim(), "fresh");
    drop(input);
    let _ = session.wait();
    reader.join().expect("reader");
}

// ---------------------------------------------------------------------------------------
// Dedup across instances.

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn duplicates_sent_concurrently_to_three_instances_run_once_and_all_get_200() {
    let db = TestDb::create();
    let shared = Dir::new();
    // Each message's run waits at a gate of its own, so that its duplicates arrive while it runs.
    let command = format!(
        "{}; {}",
        shared.gate("held.$CMQ_MSG_ID", 20),
        shared.record(0)
    );
    let server = |label: &str| {
        config(
            &server_keys(&db.url(), Some(label), "2s", "respond_within = \"20s\""),
            &graced(&hook(&command)),
        )
    };
    // Started together on a fresh database: the schema is created by three at once.
    let fleet = Instance::start_all(vec![
        Spec::new("a", server("a")),
        Spec::new("b", server("b")),
        Spec::new("c", server("c")),
    ]);
    let addrs: Vec<SocketAddr> = fleet.iter().map(|instance| instance.server.addr).collect();
    for (round, msg_id) in ["dup-1", "dup-2", "dup-3"].into_iter().enumerate() {
        let hits_before: f64 = fleet.iter().map(Instance::dedup_hits).sum();
        // Three pushes to each instance, released at once.
        let pushes = 3 * addrs.len();
        let start = Arc::new(Barrier::new(pushes));
        let (sent, sent_rx) = std::sync::mpsc::channel();
        let threads: Vec<_> = (0..pushes)
            .map(|n| {
                let addr = addrs[n % addrs.len()];
                let start = Arc::clone(&start);
                let sent = sent.clone();
                std::thread::spawn(move || {
                    let request = post_request(
                        addr,
                        "/",
                        &seed_headers(msg_id),
                        seed_envelope(msg_id).as_bytes(),
                    );
                    let mut stream = TcpStream::connect(addr).expect("connect");
                    start.wait();
                    stream.write_all(&request).expect("send");
                    let _ = sent.send(());
                    read_response(&mut stream, Duration::from_secs(60))
                        .unwrap_or_else(|err| panic!("{msg_id} to {addr}: {err}"))
                })
            })
            .collect();
        drop(sent);
        shared.wait_at_gate(&format!("held.{msg_id}"));
        for _ in 0..pushes {
            sent_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("every push was sent");
        }
        // All in: one runs it (held at the gate); the others, on every instance, wait for it.
        let mut hits = 0.0;
        let joined = wait_for(Duration::from_secs(10), || {
            hits = fleet.iter().map(Instance::dedup_hits).sum::<f64>() - hits_before;
            hits >= (pushes - 1) as f64
        });
        assert!(
            joined,
            "round {round}: {hits} of {} duplicates counted in cmqhook_dedup_hits_total while the run is held",
            pushes - 1
        );
        shared.open_gate(&format!("held.{msg_id}"));
        let answers: Vec<Response> = threads
            .into_iter()
            .map(|thread| thread.join().expect("pusher"))
            .collect();
        for answer in &answers {
            assert_eq!(answer.status, 200, "{msg_id}: {}", answer.text());
            assert_eq!(answer.outcome(), "succeeded", "{msg_id}: {}", answer.text());
        }
        let fresh = answers
            .iter()
            .filter(|answer| !deduplicated(answer))
            .count();
        assert_eq!(fresh, 1, "{msg_id}: exactly one answer ran it");
        let runs: Vec<String> = shared
            .recorded()
            .iter()
            .filter_map(|run| run.var("CMQ_MSG_ID").map(str::to_owned))
            .collect();
        assert_eq!(
            runs.iter().filter(|id| id.as_str() == msg_id).count(),
            1,
            "{msg_id} ran more than once: {runs:?}"
        );
    }
    assert_eq!(shared.attempts(), ["1", "1", "1"]);
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn an_http_workers_pushes_are_claimed_and_ended_on_two_connections_of_its_own() {
    let db = TestDb::create();
    let shared = Dir::new();
    // One HTTP worker: one lane.
    let instance = Instance::start(
        Spec::new(
            "a",
            config(
                &server_keys(&db.url(), Some("a"), "30s", ""),
                &hook(&shared.record(0)),
            ),
        )
        .one_worker(),
    );
    for n in 1..=3 {
        let response = instance.push(&format!("lane-{n}"));
        assert_eq!(response.status, 200, "{}", response.text());
    }
    assert_eq!(shared.recorded().len(), 3);
    // The lane's claimer last sent the claim of a message seen for the first time, its writer
    // a run's end; each on a connection named for the lane.
    let lanes = db.sql(&format!(
        "SELECT string_agg(CASE
             WHEN query LIKE 'INSERT INTO cmqhook_claims%unnest%' THEN 'claim'
             WHEN query LIKE 'WITH ended AS (%UPDATE cmqhook_claims%' THEN 'end'
             ELSE query END, ',' ORDER BY query)
         FROM pg_stat_activity WHERE datname = '{}' AND application_name = 'cmqhook lane'",
        db.name
    ));
    assert_eq!(lanes.trim(), "claim,end", "the lane's connections");
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn a_success_on_one_instance_is_deduplicated_on_every_other() {
    let db = TestDb::create();
    let shared = Dir::new();
    let server = |label: &str| {
        config(
            &server_keys(&db.url(), Some(label), "2s", ""),
            &hook(&shared.record(0)),
        )
    };
    let fleet = Instance::start_all(vec![
        Spec::new("a", server("a")),
        Spec::new("b", server("b")),
        Spec::new("c", server("c")),
    ]);
    let (a, b, c) = (&fleet[0], &fleet[1], &fleet[2]);
    let first = a.push("once-1");
    assert_eq!(first.status, 200, "{}", first.text());
    assert!(!deduplicated(&first));
    for other in [b, c, a] {
        let again = other.push("once-1");
        assert_eq!(again.status, 200, "{}: {}", other.label, again.text());
        assert_eq!(again.outcome(), "succeeded", "{}", other.label);
        assert!(deduplicated(&again), "{}: {}", other.label, again.text());
    }
    assert_eq!(shared.recorded().len(), 1, "nothing ran on b or c");
    // And the other way round.
    assert_eq!(c.push("once-2").status, 200);
    let again = a.push("once-2");
    assert_eq!(again.status, 200, "{}", again.text());
    assert!(deduplicated(&again));
    assert_eq!(shared.recorded().len(), 2);
    assert_eq!(shared.attempts(), ["1", "1"]);
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn a_failure_on_one_instance_runs_again_on_another_with_the_next_attempt() {
    let db = TestDb::create();
    let shared = Dir::new();
    // Fails on attempt 1, succeeds after.
    let command = format!("{}; [ \"$CMQHOOK_ATTEMPT\" -ge 2 ]", shared.record(0));
    let server = |label: &str| {
        config(
            &server_keys(&db.url(), Some(label), "2s", ""),
            &graced(&hook(&command)),
        )
    };
    let fleet = Instance::start_all(vec![
        Spec::new("a", server("a")),
        Spec::new("b", server("b")),
    ]);
    let (a, b) = (&fleet[0], &fleet[1]);
    let failed = a.push("fail-1");
    assert_eq!(failed.status, 500, "{}", failed.text());
    let retried = b.push("fail-1");
    assert_eq!(retried.status, 200, "{}", retried.text());
    assert!(!deduplicated(&retried));
    assert_eq!(shared.attempts(), ["1", "2"]);
    let again = a.push("fail-1");
    assert_eq!(again.status, 200, "{}", again.text());
    assert!(deduplicated(&again));
    assert_eq!(shared.attempts(), ["1", "2"]);
    let rows = b.settled_history(&["--msg-id", "fail-1"], Duration::from_secs(10));
    assert_eq!(
        attempts_by(&rows),
        [
            (2, "succeeded".to_owned(), "b".to_owned()),
            (1, "failed".to_owned(), "a".to_owned())
        ]
    );
}

// ---------------------------------------------------------------------------------------
// Instance death, identity, self-fencing.

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn a_sigkilled_instances_run_is_run_again_elsewhere_once_its_lease_expires() {
    let db = TestDb::create();
    let shared = Dir::new();
    let pids = shared.file("pids");
    // Attempt 1 is held at a gate; every attempt notes its pid and when it started.
    let command = format!(
        "echo $$ >> {pids}; {started}; if [ \"$CMQHOOK_ATTEMPT\" = 1 ]; then {gate}; fi; {record}",
        pids = pids.display(),
        started = note_time(&shared.file("started.$CMQHOOK_ATTEMPT")),
        gate = shared.gate("held", 60),
        record = shared.record(0)
    );
    let server = |label: &str| {
        config(
            &server_keys(&db.url(), Some(label), "2s", "respond_within = \"300ms\""),
            &graced(&hook(&command)),
        )
    };
    let mut fleet = Instance::start_all(vec![
        Spec::new("a", server("a")),
        Spec::new("b", server("b")),
    ]);

    // The claim is taken after this: its lease (2 s, by the database's clock) ends no sooner
    // than 2 s after it, whatever the renewals.
    let pushed_at = Instant::now();
    let pushed_at_wall = SystemTime::now();
    let first = fleet[0].push("kill-1");
    assert_eq!(first.status, 503, "{}", first.text());
    shared.wait_at_gate("held");
    let orphan = wait_for_pid(&pids);
    fleet[0].kill();
    kill_group(orphan);
    assert!(
        wait_for(Duration::from_secs(5), || !alive(orphan)),
        "the held command {orphan} is still running"
    );

    // Before the lease can have expired: b waits for the outcome, then 503; nothing runs.
    let early = fleet[1].push("kill-1");
    let early_at = pushed_at.elapsed();
    assert!(
        early_at < LEASE - Duration::from_millis(100),
        "b answered {early_at:?} after the claim, too late to be sure the lease was still on (the machine is too slow for this test)"
    );
    assert_eq!(early.status, 503, "{}", early.text());
    assert!(early.header("retry-after").is_some(), "{:?}", early.headers);
    assert_eq!(lines_of(&pids).len(), 1, "b ran it beside a live lease");
    assert!(shared.recorded().is_empty());

    // Once the lease expired, b's next push runs attempt 2, once.
    let retried = push_until_200(&fleet[1], "kill-1", Duration::from_secs(20));
    assert_eq!(retried.outcome(), "succeeded");
    assert_eq!(shared.attempts(), ["2"]);
    assert_eq!(lines_of(&pids).len(), 2, "{:?}", lines_of(&pids));
    let second_start: f64 = std::fs::read_to_string(shared.file("started.2"))
        .expect("attempt 2 noted its start")
        .trim()
        .parse()
        .expect("a time");
    let after_claim = second_start - unix_seconds(pushed_at_wall);
    assert!(
        after_claim >= LEASE.as_secs_f64(),
        "attempt 2 started {after_claim:.3} s after the claim of attempt 1, before its lease could expire"
    );
    let again = fleet[1].push("kill-1");
    assert_eq!(again.status, 200);
    assert!(deduplicated(&again));
    assert_eq!(shared.attempts(), ["2"]);
    let rows = fleet[1].settled_history(&["--msg-id", "kill-1"], Duration::from_secs(10));
    assert_eq!(
        attempts_by(&rows),
        [
            (2, "succeeded".to_owned(), "b".to_owned()),
            (1, "interrupted".to_owned(), "a".to_owned())
        ]
    );
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn a_restarted_instance_kills_what_its_previous_process_left_and_runs_it_again_at_once() {
    let db = TestDb::create();
    let shared = Dir::new();
    let pids = shared.file("pids");
    let command = shared.held_first_attempt(&pids);
    // A long lease: the restarted instance must not need it to expire for its own claims.
    let text = config(
        &server_keys(&db.url(), Some("a"), "30s", "respond_within = \"300ms\""),
        &graced(&hook(&command)),
    );
    let mut first = Instance::start(Spec::new("a", text.clone()));
    assert_eq!(first.push("restart-1").status, 503);
    shared.wait_at_gate("held");
    let orphan = wait_for_pid(&pids);
    // As if its guard had died with it: its command runs on.
    crate::guard::kill_past_the_guard(&first.server);
    first.kill();
    assert!(alive(orphan), "the command outlives its instance");

    let again = Instance::start(Spec::new("a", text));
    let killed = wait_for(Duration::from_secs(5), || !alive(orphan));
    kill_group(orphan);
    assert!(
        killed,
        "the restarted instance left its previous process's command {orphan} running"
    );
    let retried = push_until_200(&again, "restart-1", Duration::from_secs(10));
    assert_eq!(retried.outcome(), "succeeded");
    assert_eq!(shared.attempts(), ["2"]);
    drop(first);
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn two_instances_with_the_same_label_never_take_each_others_claims() {
    let db = TestDb::create();
    let shared = Dir::new();
    let pids = shared.file("pids");
    let command = format!(
        "echo $$ >> {}; {}; {}",
        pids.display(),
        shared.gate("held", 30),
        shared.record(0)
    );
    let text = config(
        &server_keys(&db.url(), Some("same"), "2s", "respond_within = \"300ms\""),
        &graced(&hook(&command)),
    );
    let one = Instance::start(Spec::new("same", text.clone()));
    assert_eq!(one.push("label-1").status, 503);
    shared.wait_at_gate("held");
    let running = wait_for_pid(&pids);
    // The second starts while the first's claim is running: not its previous process's.
    let two = Instance::start(Spec::new("same", text));
    assert!(
        alive(running),
        "starting the second killed the first's command"
    );
    // Longer than the lease: the first keeps renewing it, the second never takes it.
    let until = Instant::now() + LEASE + LEASE / 2;
    while Instant::now() < until {
        let waiting = two.push("label-1");
        assert_eq!(waiting.status, 503, "{}", waiting.text());
        assert_eq!(lines_of(&pids).len(), 1, "the second ran it too");
    }
    assert!(alive(running));
    shared.open_gate("held");
    let done = push_until_200(&two, "label-1", Duration::from_secs(10));
    assert!(deduplicated(&done), "{}", done.text());
    assert_eq!(shared.attempts(), ["1"]);
    assert_eq!(lines_of(&pids).len(), 1);
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn a_start_that_waited_longer_than_the_lease_allows_for_another_migration_is_not_fenced() {
    let db = TestDb::create();
    // Another instance's migration, as a psql session: it holds the schema lock.
    let mut holder = psql_command(&db.url())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("psql");
    let mut sql = holder.stdin.take().expect("piped");
    writeln!(
        sql,
        "BEGIN; SELECT pg_advisory_xact_lock(hashtext('cmqhook schema'));"
    )
    .expect("write to psql");
    sql.flush().expect("flush psql");
    let advisory = |granted: bool, application: &str| {
        format!(
            "SELECT count(*) FROM pg_locks JOIN pg_stat_activity USING (pid)
             WHERE locktype = 'advisory' AND granted = {granted}
               AND datname = current_database() AND application_name = '{application}'"
        )
    };
    assert!(
        wait_for(Duration::from_secs(10), || db
            .sql(&advisory(true, "psql"))
            .trim()
            == "1"),
        "psql never took the schema lock"
    );
    let shared = Dir::new();
    let text = config(
        &server_keys(&db.url(), Some("a"), "2s", ""),
        &shared.recorder_hook("any"),
    );
    let starting = std::thread::spawn(move || Instance::start(Spec::new("a", text)));
    assert!(
        wait_for(Duration::from_secs(10), || db
            .sql(&advisory(false, "cmqhook"))
            .trim()
            == "1"),
        "the instance never waited for the schema lock"
    );
    // Held past two thirds of the lease (when leases not renewed fence an instance), well
    // within the 3 s serve waits for the database before it listens.
    std::thread::sleep(LEASE * 3 / 4);
    drop(sql);
    let _ = holder.wait();
    let instance = starting.join().expect("start");
    // No lease was held while it waited: nothing to fence. Counted from when the start
    // began, the fencer (every twentieth of a lease) fenced it at once: running commands
    // stopped, and pushes got 503 `journal unreachable` until a renewal came back (under
    // load, the first pushes of a test). Watched for a quarter of a lease, before the first
    // renewal is due.
    let until = Instant::now() + LEASE / 4;
    while Instant::now() < until {
        let (status, body) = instance.health();
        assert_eq!(status, 200, "{body}\n{}", instance.server.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = instance.server.log_text();
    assert!(log.contains("journal: shared PostgreSQL database"), "{log}");
    assert!(!log.contains("journal unreachable"), "{log}");
    let first = instance.push("first-1");
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(shared.attempts(), ["1"]);
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn an_instance_that_loses_the_database_kills_its_commands_before_their_leases_expire() {
    self_fencing(Proxy::cut, "cut");
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn an_instance_cut_off_silently_kills_its_commands_before_their_leases_expire() {
    // A host gone: no reset, no answer, the renewal just hangs.
    self_fencing(Proxy::freeze, "frozen");
}

/// Instance a (through the proxy) runs a held command; `partition` takes the database away
/// from a alone. a must kill that command before its lease can expire; b (direct) then takes
/// the claim over and runs attempt 2, never beside attempt 1; a recovers after a restore.
fn self_fencing(partition: fn(&Proxy), how: &str) {
    let db = TestDb::create();
    let proxy = Proxy::start(db.server_addr());
    let shared = Dir::new();
    let pids = shared.file("pids");
    let overlap = shared.file("overlap");
    // Attempt 1 is held; a later attempt notes it if attempt 1's command is still alive.
    let command = format!(
        r#"echo $$ >> {pids}
if [ "$CMQHOOK_ATTEMPT" = 1 ]; then
  {gate}
else
  first=$(head -n 1 {pids})
  state=$(sed 's/.*) //' /proc/$first/stat 2>/dev/null | cut -c1)
  case "$state" in ""|Z|X) ;; *) echo "$first $state" >> {overlap} ;; esac
fi
{record}"#,
        pids = pids.display(),
        gate = shared.gate("held", 60),
        overlap = overlap.display(),
        record = shared.record(0)
    );
    let keys = "respond_within = \"300ms\"";
    // a reaches the database through the proxy, b directly: a partition of a alone.
    let mut fleet = Instance::start_all(vec![
        Spec::new(
            "a",
            config(
                &server_keys(&db.url_via(&proxy), Some("a"), "2s", keys),
                &graced(&hook(&command)),
            ),
        ),
        Spec::new(
            "b",
            config(
                &server_keys(&db.url(), Some("b"), "2s", keys),
                &graced(&hook(&command)),
            ),
        ),
    ]);
    assert_eq!(fleet[0].push("fence-1").status, 503);
    shared.wait_at_gate("held");
    let held = wait_for_pid(&pids);
    let cut_at = Instant::now();
    partition(&proxy);
    // The lease was renewed at the latest just before the partition; it ends within 2 s of it.
    let fenced = wait_for(LEASE.saturating_sub(cut_at.elapsed()), || !alive(held));
    let fenced_after = cut_at.elapsed();
    if !fenced {
        kill_group(held);
    }
    assert!(
        fenced,
        "a's command {held} still ran {fenced_after:?} after a lost the database ({how}): its lease may have expired"
    );
    // b takes the claim over once the lease expired, and runs it alone.
    let retried = push_until_200(&fleet[1], "fence-1", Duration::from_secs(20));
    assert_eq!(retried.outcome(), "succeeded");
    assert_eq!(shared.attempts(), ["2"]);
    assert!(
        !overlap.exists(),
        "attempt 2 ran beside attempt 1: {:?}",
        lines_of(&overlap)
    );
    proxy.restore();
    wait_for_health(&fleet[0], 200, Duration::from_secs(30));
    assert!(fleet[0].running(), "a recovered without a restart");
    // Healthy again does not mean a's own end of attempt 1 is written yet: until it is, a
    // answers 503 "not journaled yet" (never a run); then b's success.
    let again = push_until_200(&fleet[0], "fence-1", Duration::from_secs(10));
    assert!(deduplicated(&again), "{}", again.text());
    assert_eq!(shared.attempts(), ["2"]);
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn a_claim_whose_run_never_started_runs_out_when_its_release_cannot_be_written() {
    let db = TestDb::create();
    let proxy = Proxy::start(db.server_addr());
    // Long enough for the cut to come first however slow the machine: the release is written
    // either at `respond_within` or when the fence frees the slot, both after the cut.
    let (shared, fleet) = one_slot_fleet(&db, &proxy, "3s");
    assert_eq!(fleet[0].push("hold").status, 503);
    shared.wait_at_gate("held");
    std::thread::scope(|scope| {
        let waiting = scope.spawn(|| fleet[0].push("waiting"));
        wait_for_claim(&db, "waiting");
        // The claim is a's; its run waits for the slot. Cut now, its release at
        // `respond_within` cannot be written.
        proxy.cut();
        let waiting = waiting.join().expect("push");
        assert_eq!(waiting.status, 503, "{}", waiting.text());
    });
    // Restored only once the release has failed: restored earlier, it could still go through.
    assert!(
        fleet[0]
            .server
            .wait_for_log_line(Duration::from_secs(20), &["cannot release a claim"])
            .is_some(),
        "{}",
        fleet[0].server.log_text()
    );
    proxy.restore();
    wait_for_health(&fleet[0], 200, Duration::from_secs(30));
    // a renews the claims of its runs only: the one left without a run runs out, and b runs
    // the message (a renewing it too would keep b waiting for ever).
    let taken = push_until_200(&fleet[1], "waiting", Duration::from_secs(20));
    assert_eq!(taken.outcome(), "succeeded");
    let runs: Vec<_> = shared
        .recorded()
        .iter()
        .map(|run| run.var("CMQ_MSG_ID").unwrap_or("").to_owned())
        .collect();
    assert_eq!(runs, ["waiting"]);
    assert_eq!(shared.attempts(), ["2"]);
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn a_run_waiting_for_a_slot_does_not_start_once_its_instance_has_fenced_itself() {
    let db = TestDb::create();
    let proxy = Proxy::start(db.server_addr());
    // `waiting` waits for the slot, which the fence frees when it kills `hold`.
    let (shared, fleet) = one_slot_fleet(&db, &proxy, "5s");
    std::thread::scope(|scope| {
        let hold = scope.spawn(|| fleet[0].push("hold"));
        shared.wait_at_gate("held");
        let waiting = scope.spawn(|| fleet[0].push("waiting"));
        wait_for_claim(&db, "waiting");
        proxy.cut();
        // The fence kills `hold` within the lease; the slot it frees must not run `waiting`,
        // whose claim b may take over as soon as the lease expires. (Two things see to it: a
        // fenced instance starts nothing, and a run started after the fence is stopped at
        // once; this test holds while either works.)
        assert_ne!(hold.join().expect("push").status, 200);
        let waiting = waiting.join().expect("push");
        assert_eq!(waiting.status, 503, "{}", waiting.text());
    });
    assert!(
        shared.recorded().is_empty(),
        "a ran {:?} after it fenced itself",
        shared.attempts()
    );
    let taken = push_until_200(&fleet[1], "waiting", Duration::from_secs(20));
    assert_eq!(taken.outcome(), "succeeded");
    assert_eq!(shared.attempts(), ["2"]);
    proxy.restore();
}

/// Instances `a` (through `proxy`) and `b` (directly) with `respond_within` and one slot for
/// the hook `record`: a push of `hold` keeps the slot at a gate (`held`), so that a push of
/// another message is claimed and then waits for it. Every run but `hold`'s is recorded in
/// the returned dir.
fn one_slot_fleet(db: &TestDb, proxy: &Proxy, respond_within: &str) -> (Dir, Vec<Instance>) {
    let shared = Dir::new();
    let command = format!(
        "if [ \"$CMQ_MSG_ID\" = hold ]; then {gate}; fi; {record}",
        gate = shared.gate("held", 60),
        record = shared.record(0)
    );
    let hooks = format!(
        "[hooks.record]\nconcurrency = 1\nkill_grace = \"200ms\"\ncommand = '''{command}'''"
    );
    let keys = format!("respond_within = \"{respond_within}\"");
    let fleet = Instance::start_all(vec![
        Spec::new(
            "a",
            config(
                &server_keys(&db.url_via(proxy), Some("a"), "2s", &keys),
                &hooks,
            ),
        ),
        Spec::new(
            "b",
            config(&server_keys(&db.url(), Some("b"), "2s", &keys), &hooks),
        ),
    ]);
    (shared, fleet)
}

/// Waits until the claim of `msg_id` is running in the database.
fn wait_for_claim(db: &TestDb, msg_id: &str) {
    let sql = format!(
        "SELECT count(*) FROM cmqhook_claims WHERE msg_id = '{msg_id}' AND outcome = 'running'"
    );
    assert!(
        wait_for(Duration::from_secs(10), || db.sql(&sql).trim() == "1"),
        "{msg_id} was never claimed"
    );
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn a_run_end_whose_commit_answer_was_lost_is_written_again_once() {
    let db = TestDb::create();
    let proxy = Proxy::start(db.server_addr());
    let shared = Dir::new();
    // Only `lost-1` waits at the gate.
    let command = format!(
        "if [ \"$CMQ_MSG_ID\" = lost-1 ]; then {gate}; fi; {record}",
        gate = shared.gate("held", 60),
        record = shared.record(0)
    );
    let instance = Instance::start(Spec::new(
        "a",
        config(
            &server_keys(
                &db.url_via_plain(&proxy),
                Some("a"),
                "30s",
                "respond_within = \"2s\"",
            ),
            &hook(&command),
        ),
    ));
    std::thread::scope(|scope| {
        let first = scope.spawn(|| instance.push("lost-1"));
        shared.wait_at_gate("held");
        // The run's end reaches the database and commits there; its answer never comes back.
        // Only its connection is muted: the other statements the instance sends meanwhile
        // (replay requests looked for four times a second) must not hold the connections the
        // end needs with answers that never come.
        proxy.mute_replies_after(b"lost-1");
        shared.open_gate("held");
        assert!(
            wait_for(Duration::from_secs(10), || {
                db.sql("SELECT count(*) FROM cmqhook_runs WHERE msg_id = 'lost-1'")
                    .trim()
                    == "1"
            }),
            "the run's end was never committed"
        );
        assert_eq!(first.join().expect("push").status, 503);
    });
    proxy.cut();
    proxy.restore();
    wait_for_health(&instance, 200, Duration::from_secs(30));
    // Written again once the database answers: the same row, not a second one, and the
    // success is known.
    let again = push_until_200(&instance, "lost-1", Duration::from_secs(20));
    assert!(deduplicated(&again), "{}", again.text());
    assert_eq!(
        db.sql("SELECT count(*) FROM cmqhook_runs WHERE msg_id = 'lost-1'")
            .trim(),
        "1"
    );
    assert_eq!(shared.recorded().len(), 1);
}

// ---------------------------------------------------------------------------------------
// The database unreachable.

/// Notes an answer's headers and body as `what`, for the password search.
fn note(seen: &mut Vec<(String, String)>, what: &str, response: &Response) {
    let headers: String = response
        .headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\n"))
        .collect();
    seen.push((what.to_owned(), format!("{headers}{}", response.text())));
}

/// One answer the traffic of the cut test got.
struct Answer {
    sent: Instant,
    received: Instant,
    status: u16,
    retry_after: bool,
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn a_database_cut_mid_traffic_fails_closed_and_recovers_without_a_restart() {
    let db = TestDb::create();
    let proxy = Proxy::start(db.server_addr());
    let shared = Dir::new();
    let ran = shared.file("ran");
    // A lease longer than the cut: no claim changes hands, so each instance must write the
    // outcomes it could not write while cut, and nothing may run twice. (A cut longer than
    // the lease is the self-fencing test's.)
    let server = |label: &str| {
        config(
            &server_keys(
                &db.url_via(&proxy),
                Some(label),
                "30s",
                "respond_within = \"2s\"",
            ),
            &hook(&append_id(&ran)),
        )
    };
    let mut fleet = Instance::start_all(vec![
        Spec::new("a", server("a")),
        Spec::new("b", server("b")),
    ]);
    let addrs: Vec<SocketAddr> = fleet.iter().map(|instance| instance.server.addr).collect();
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    // Two senders, each pushing new messages one after another and retrying each until 200,
    // every retry on the other instance (a load balancer spreads them).
    let senders: Vec<_> = (0..2)
        .map(|sender| {
            let (answers, acked, stop, addrs) = (
                Arc::clone(&answers),
                Arc::clone(&acked),
                Arc::clone(&stop),
                addrs.clone(),
            );
            std::thread::spawn(move || {
                'messages: for n in 0.. {
                    let msg_id = format!("cut-{sender}-{n}");
                    for attempt in 0.. {
                        if stop.load(Ordering::SeqCst) {
                            break 'messages;
                        }
                        let addr = addrs[(sender + n + attempt) % addrs.len()];
                        let sent = Instant::now();
                        let response = post(
                            addr,
                            "/",
                            &seed_headers(&msg_id),
                            seed_envelope(&msg_id).as_bytes(),
                        );
                        answers.lock().expect("lock").push(Answer {
                            sent,
                            received: Instant::now(),
                            status: response.status,
                            retry_after: response.header("retry-after").is_some(),
                        });
                        match response.status {
                            200 => {
                                acked.lock().expect("lock").push(msg_id);
                                continue 'messages;
                            }
                            503 => std::thread::sleep(Duration::from_millis(20)),
                            other => panic!("{msg_id}: {other} {}", response.text()),
                        }
                    }
                }
            })
        })
        .collect();
    let acked_count = || acked.lock().expect("lock").len();
    let answered_since = |since: Instant| {
        answers
            .lock()
            .expect("lock")
            .iter()
            .filter(|answer| answer.sent >= since)
            .count()
    };
    assert!(
        wait_for(Duration::from_secs(60), || acked_count() >= 20),
        "no traffic"
    );

    proxy.cut();
    for instance in &fleet {
        wait_for_health(instance, 503, Duration::from_secs(15));
    }
    let down_at = Instant::now();
    // Runs claimed before the cut have ended by the time a few pushes were refused since.
    assert!(
        wait_for(Duration::from_secs(20), || answered_since(down_at) >= 4),
        "no answers while the database was unreachable"
    );
    let settled_at = Instant::now();
    let ran_while_down = lines_of(&ran).len();
    assert!(
        wait_for(Duration::from_secs(30), || answered_since(settled_at) >= 10),
        "too few answers while the database was unreachable"
    );
    assert_eq!(
        lines_of(&ran).len(),
        ran_while_down,
        "commands ran while the database was unreachable (without a claim)"
    );
    for instance in &fleet {
        wait_for_health(instance, 503, Duration::from_secs(1));
    }
    let restored_at = Instant::now();
    proxy.restore();
    {
        let answers = answers.lock().expect("lock");
        let while_down: Vec<&Answer> = answers
            .iter()
            .filter(|answer| answer.sent >= down_at && answer.received <= restored_at)
            .collect();
        assert!(while_down.len() >= 10);
        assert!(
            while_down
                .iter()
                .all(|answer| answer.status == 503 && answer.retry_after),
            "while the database was unreachable: {:?}",
            while_down
                .iter()
                .map(|answer| (answer.status, answer.retry_after))
                .collect::<Vec<_>>()
        );
    }

    for instance in &fleet {
        wait_for_health(instance, 200, Duration::from_secs(30));
    }
    let acked_at_restore = acked_count();
    assert!(
        wait_for(Duration::from_secs(60), || acked_count()
            >= acked_at_restore + 20),
        "pushes were not answered 200 again after the database came back"
    );
    stop.store(true, Ordering::SeqCst);
    for sender in senders {
        sender.join().expect("sender");
    }
    for instance in &mut fleet {
        assert!(
            instance.running(),
            "instance {} was not restarted",
            instance.label
        );
    }

    let acked = acked.lock().expect("lock").clone();
    let counts = counts(&ran);
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "ran more than once: {twice:?}");
    let missing: Vec<_> = acked
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "answered 200 but never ran: {missing:?}"
    );
    // Every message answered 200 is remembered on both instances.
    for msg_id in &acked {
        for instance in &fleet {
            let again = instance.push(msg_id);
            assert_eq!(
                again.status,
                200,
                "{msg_id} on {}: {}",
                instance.label,
                again.text()
            );
            assert!(deduplicated(&again), "{msg_id} on {}", instance.label);
        }
    }
    assert_eq!(
        counts,
        self::counts(&ran),
        "a retry after the recovery ran something"
    );
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn serve_starts_while_the_database_is_down_and_serves_once_it_is_up() {
    let db = TestDb::create();
    let proxy = Proxy::start(db.server_addr());
    proxy.cut();
    let shared = Dir::new();
    let ran = shared.file("ran");
    let mut instance = Instance::start(Spec::new(
        "a",
        config(
            &server_keys(&db.url_via(&proxy), Some("a"), "2s", ""),
            &hook(&append_id(&ran)),
        ),
    ));
    wait_for_health(&instance, 503, Duration::from_secs(15));
    let refused = instance.push("down-1");
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(
        refused.header("retry-after").is_some(),
        "{:?}",
        refused.headers
    );
    assert!(lines_of(&ran).is_empty(), "ran without a claim");
    let log = instance.server.log_text();
    let loud = log.lines().any(|line| {
        let lower = line.to_lowercase();
        (line.contains("WARN") || line.contains("ERROR"))
            && ["journal", "database", "postgres"]
                .iter()
                .any(|word| lower.contains(word))
    });
    assert!(
        loud,
        "no warning or error about the database in the log:\n{log}"
    );

    proxy.restore();
    wait_for_health(&instance, 200, Duration::from_secs(30));
    let served = instance.push("down-1");
    assert_eq!(served.status, 200, "{}", served.text());
    assert_eq!(lines_of(&ran), ["down-1"]);
    assert!(instance.running());
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn check_with_the_database_down_warns_and_exits_0() {
    let db = TestDb::create();
    let proxy = Proxy::start(db.server_addr());
    let dir = Dir::new();
    let check = |journal: &str| {
        dir.write_config(&config(
            &server_keys(journal, Some("a"), "30s", ""),
            "[hooks.x]\npath = \"/x\"\ncommand = \"true\"",
        ));
        let started = Instant::now();
        let output = cmqhook(
            &["check", "-c", dir.config_file().to_str().expect("utf-8")],
            b"",
        );
        (output, started.elapsed())
    };
    let (up, _) = check(&db.url_via(&proxy));
    assert_eq!(up.status.code(), Some(0), "{}", both(&up));
    assert!(
        !text(&up.stderr).to_lowercase().contains("warning"),
        "a warning with the database up: {}",
        both(&up)
    );
    proxy.cut();
    let nothing_there = PgUrl::parse(&db.url()).via(free_addr()).to_string();
    for (what, journal) in [
        ("cut", db.url_via(&proxy)),
        ("nothing listening", nothing_there),
    ] {
        let (down, took) = check(&journal);
        assert_eq!(down.status.code(), Some(0), "{what}: {}", both(&down));
        let stderr = text(&down.stderr).to_lowercase();
        assert!(
            stderr.contains("warning")
                && ["journal", "database", "postgres", "connect"]
                    .iter()
                    .any(|word| stderr.contains(word)),
            "{what}: no warning about the database: {}",
            both(&down)
        );
        assert!(
            took < Duration::from_secs(20),
            "{what}: check took {took:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// history, and the password.

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn history_on_any_instance_lists_every_instances_runs_with_its_label() {
    let db = TestDb::create();
    let shared = Dir::new();
    let server = |label: Option<&str>| {
        config(
            &server_keys(&db.url(), label, "2s", ""),
            &hook(&shared.record(0)),
        )
    };
    let fleet = Instance::start_all(vec![
        Spec::new("inst-a", server(Some("inst-a"))),
        Spec::new("inst-b", server(Some("inst-b"))),
        // No `instance`: the host name.
        Spec::new(&host_name(), server(None)),
    ]);
    for (instance, msg_id) in fleet.iter().zip(["hist-a", "hist-b", "hist-host"]) {
        assert_eq!(instance.push(msg_id).status, 200, "{}", instance.label);
    }
    let expected: HashMap<String, String> = fleet
        .iter()
        .zip(["hist-a", "hist-b", "hist-host"])
        .map(|(instance, msg_id)| (msg_id.to_owned(), instance.label.clone()))
        .collect();
    for instance in &fleet {
        let rows = instance.settled_history(&[], Duration::from_secs(10));
        let seen: HashMap<String, String> = rows
            .iter()
            .map(|row| {
                (
                    row["msg_id"].as_str().unwrap_or("").to_owned(),
                    row["instance"]
                        .as_str()
                        .unwrap_or_else(|| panic!("no instance in {row}"))
                        .to_owned(),
                )
            })
            .collect();
        assert_eq!(seen, expected, "history on {}", instance.label);
        let b_only = instance.history(&["--msg-id", "hist-b"]);
        assert_eq!(b_only.len(), 1);
        assert_eq!(b_only[0]["instance"], "inst-b");
        assert_eq!(b_only[0]["outcome"], "succeeded");
        let text_history = instance.cli("history", &[]);
        assert!(text_history.status.success(), "{}", both(&text_history));
        let listed = text(&text_history.stdout);
        assert!(
            listed.contains("inst-a") && listed.contains("inst-b"),
            "history's text does not show the instances:\n{listed}"
        );
    }
}

#[test]
#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]
fn the_database_password_never_appears_in_logs_answers_history_check_or_metrics() {
    let db = TestDb::create();
    let password = test_password(&db);
    let proxy = Proxy::start(db.server_addr());
    let shared = Dir::new();
    // The commands print something, logged with the run.
    let command = format!(
        "echo out-$CMQ_MSG_ID; echo err-$CMQ_MSG_ID >&2; {}",
        shared.record(0)
    );
    let journal = |addr: SocketAddr| {
        db.pg_url()
            .via(addr)
            .with_password("${PGPASSWORD}")
            .to_string()
    };
    let server = |label: &str, addr: SocketAddr| {
        config(
            &server_keys(&journal(addr), Some(label), "2s", "respond_within = \"2s\""),
            &graced(&hook(&command)),
        )
    };
    // a reaches the database directly, b through the proxy (and logs with -v).
    let mut fleet = Instance::start_all(vec![
        Spec::new("a", server("a", db.server_addr())).env("PGPASSWORD", &password),
        Spec::new("b", server("b", proxy.addr))
            .env("PGPASSWORD", &password)
            .verbose(),
    ]);
    let mut seen: Vec<(String, String)> = Vec::new();

    // The database up.
    for (instance, msg_id) in [(0, "pw-1"), (1, "pw-1"), (1, "pw-2")] {
        let response = fleet[instance].push(msg_id);
        assert_eq!(response.status, 200, "{}", response.text());
        note(
            &mut seen,
            &format!("answer to {msg_id} on {}", fleet[instance].label),
            &response,
        );
    }
    for instance in &fleet {
        for path in ["/healthz", "/metrics"] {
            let response = instance.server.get(path);
            assert_eq!(response.status, 200);
            note(
                &mut seen,
                &format!("{path} of {}", instance.label),
                &response,
            );
        }
        // The runs are in the shared database, seen from either instance.
        instance.settled_history(&["--msg-id", "pw-2"], Duration::from_secs(10));
        for (what, args) in [("history", vec![]), ("history --json", vec!["--json"])] {
            let output = instance.cli("history", &args);
            assert!(output.status.success(), "{}", both(&output));
            seen.push((format!("{what} on {}", instance.label), both(&output)));
        }
        let output = instance.cli("check", &[]);
        assert_eq!(output.status.code(), Some(0), "{}", both(&output));
        seen.push((format!("check on {}", instance.label), both(&output)));
    }

    // b cut off from the database.
    proxy.cut();
    wait_for_health(&fleet[1], 503, Duration::from_secs(15));
    let refused = fleet[1].push("pw-3");
    assert_eq!(refused.status, 503, "{}", refused.text());
    note(&mut seen, "answer to pw-3 on b, cut", &refused);
    for path in ["/healthz", "/metrics"] {
        note(
            &mut seen,
            &format!("{path} of b, cut"),
            &fleet[1].server.get(path),
        );
    }
    let output = fleet[1].cli("check", &[]);
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));
    assert!(
        text(&output.stderr).contains("warning"),
        "{}",
        both(&output)
    );
    seen.push(("check on b, cut".to_owned(), both(&output)));
    for args in [vec![], vec!["--json"]] {
        let output = fleet[1].cli("history", &args);
        seen.push((format!("history {args:?} on b, cut"), both(&output)));
    }
    // Nothing listening at all: connection refused.
    let refused_dir = Dir::new();
    refused_dir.write_config(&config(
        &server_keys(&journal(free_addr()), Some("c"), "2s", ""),
        "[hooks.x]\npath = \"/x\"\ncommand = \"true\"",
    ));
    for args in [vec!["check"], vec!["history"], vec!["history", "--json"]] {
        let config_file = refused_dir.config_file();
        let mut all = args.clone();
        all.extend(["-c", config_file.to_str().expect("utf-8")]);
        let mut command = cmqhook_command(&all);
        command.env("PGPASSWORD", &password);
        let output = output_of(command, b"");
        seen.push((format!("{args:?} with nothing listening"), both(&output)));
    }
    assert!(
        fleet[1]
            .server
            .wait_for_log_line(Duration::from_secs(10), &["pw-3", "503"])
            .is_some(),
        "b did not log the refused push"
    );

    proxy.restore();
    wait_for_health(&fleet[1], 200, Duration::from_secs(30));
    let response = fleet[1].push("pw-3");
    assert_eq!(response.status, 200, "{}", response.text());
    note(&mut seen, "answer to pw-3 on b, restored", &response);

    for instance in &mut fleet {
        assert_eq!(
            instance.server.stop(),
            Some(0),
            "{} stops cleanly",
            instance.label
        );
        seen.push((
            format!("log of {}", instance.label),
            instance.server.log_text(),
        ));
    }
    for run in shared.recorded() {
        let env: String = run
            .env
            .iter()
            .map(|(name, value)| format!("{name}={value}\n"))
            .collect();
        seen.push((
            format!(
                "environment of the run of {}",
                run.var("CMQ_MSG_ID").unwrap_or("?")
            ),
            env,
        ));
    }
    assert_eq!(shared.recorded().len(), 3);
    let leaks: Vec<String> = seen
        .iter()
        .filter(|(_, text)| text.contains(&password))
        .map(|(what, text)| format!("--- {what}:\n{text}"))
        .collect();
    assert!(
        leaks.is_empty(),
        "the password {password:?} appears in:\n{}",
        leaks.join("\n")
    );
}

/// `hooks` with every hook's `kill_grace` at 200 ms, so that a stopped command goes quickly.
fn graced(hooks: &str) -> String {
    format!("[defaults]\nkill_grace = \"200ms\"\n\n{hooks}")
}
