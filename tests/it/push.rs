//! Pushes through the built binary: parsing, routing, running, and the answer.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::*;

#[test]
fn seed_json_push_runs_the_hook_with_the_message_on_stdin_and_cmq_variables() {
    let dir = Dir::new();
    let server = Server::start(
        &dir,
        &config(
            "",
            &format!(
                "[hooks.deploy]\ntopic = \"MyTopic\"\ncommand = '{}'\nenv = {{ DEPLOY_ENV = \"prod\" }}",
                dir.record(0)
            ),
        ),
    );
    let response = server.post_seed("/cgi", "6942316962");
    assert_eq!(response.status, 200, "{}", response.text());
    let json = response.json();
    assert_eq!(json["msg_id"], "6942316962");
    assert_eq!(json["results"][0]["hook"], "deploy");
    assert_eq!(json["results"][0]["outcome"], "succeeded");
    assert_eq!(json["results"][0]["exit_code"], 0);
    assert_eq!(json["results"][0]["deduplicated"], false);

    let runs = dir.recorded();
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(run.stdin, b"test message");
    run.assert_vars(&[
        ("CMQ_MSG_ID", "6942316962"),
        ("CMQ_REQUEST_ID", "2394928734"),
        ("CMQ_TOPIC", "MyTopic"),
        ("CMQ_SUBSCRIPTION", "mysubscription"),
        ("CMQ_TOPIC_OWNER", "100015036"),
        ("CMQ_PUBLISH_TIME", "11203432"),
        ("CMQ_TAGS", "a,b"),
        ("CMQ_FORMAT", "json"),
        ("CMQ_QUEUE", ""),
        ("CMQHOOK_HOOK", "deploy"),
        ("CMQHOOK_ATTEMPT", "1"),
        ("DEPLOY_ENV", "prod"),
    ]);
    // The inherited environment is kept.
    assert!(run.var("PATH").is_some());
    // The push's line is written as it is answered; the log file may get it a moment later.
    let line = server.wait_for_log_line(Duration::from_secs(10), &["6942316962", "status=200"]);
    assert!(line.is_some(), "{}", server.log_text());
}

#[test]
fn seed_simplified_push_runs_with_unknown_values_empty() {
    let dir = Dir::new();
    let server = Server::start(
        &dir,
        &config(
            "",
            &format!(
                "[hooks.raw]\npath = \"/cmq/raw\"\ncommand = '{}'",
                dir.record(0)
            ),
        ),
    );
    let response = server.post(
        "/cmq/raw",
        &[
            ("x-cmq-message-id", "6942316962"),
            ("x-cmq-request-id", "2394928734"),
            ("x-cmq-message-tag", " a ,, b "),
        ],
        b"test message",
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let runs = dir.recorded();
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(run.stdin, b"test message");
    run.assert_vars(&[
        ("CMQ_MSG_ID", "6942316962"),
        ("CMQ_REQUEST_ID", "2394928734"),
        ("CMQ_TOPIC", ""),
        ("CMQ_SUBSCRIPTION", ""),
        ("CMQ_TOPIC_OWNER", ""),
        ("CMQ_PUBLISH_TIME", ""),
        ("CMQ_TAGS", "a,b"),
        ("CMQ_FORMAT", "simplified"),
        ("CMQHOOK_HOOK", "raw"),
    ]);
}

#[test]
fn binary_bodies_reach_stdin_byte_exact() {
    let dir = Dir::new();
    let server = Server::start(&dir, &config("", &dir.recorder_hook("any")));
    // E7: SIMPLIFIED with invalid UTF-8 and NUL bytes.
    let raw: Vec<u8> = (0..=255u8).chain([0, 0xff, 0xc3, 0x28, 0]).collect();
    assert_eq!(
        server
            .post("/raw", &[("x-cmq-message-id", "b1")], &raw)
            .status,
        200
    );
    // E6: JSON escapes for NUL, newline and an emoji.
    let envelope = SEED_ENVELOPE
        .replace("6942316962", "b2")
        .replace("test message", r"nul\u0000 line\nrocket\ud83d\ude80");
    let response = server.post("/json", &[("x-cmq-message-id", "b2")], envelope.as_bytes());
    assert_eq!(response.status, 200);
    // E8: an empty body is an empty SIMPLIFIED message.
    assert_eq!(
        server
            .post("/empty", &[("x-cmq-message-id", "b3")], b"")
            .status,
        200
    );

    let runs = dir.recorded();
    let by_id = |id: &str| {
        runs.iter()
            .find(|run| run.var("CMQ_MSG_ID") == Some(id))
            .unwrap_or_else(|| panic!("no run for {id}"))
    };
    assert_eq!(by_id("b1").stdin, raw);
    assert_eq!(by_id("b1").var("CMQ_FORMAT"), Some("simplified"));
    assert_eq!(by_id("b2").stdin, "nul\0 line\nrocket🚀".as_bytes());
    assert_eq!(by_id("b2").var("CMQ_FORMAT"), Some("json"));
    assert_eq!(by_id("b3").stdin, b"");
}

#[test]
fn upper_case_header_names_are_read_like_lower_case() {
    let dir = Dir::new();
    let server = Server::start(
        &dir,
        &config(
            "",
            &format!(
                "[hooks.tagged]\ntags = [\"b\"]\ncommand = '{}'",
                dir.record(0)
            ),
        ),
    );
    let response = server.post(
        "/",
        &[
            ("X-CMQ-MESSAGE-ID", "UP1"),
            ("X-CMQ-REQUEST-ID", "R1"),
            ("X-CMQ-MESSAGE-TAG", "a,b"),
        ],
        b"x",
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let runs = dir.recorded();
    assert_eq!(runs[0].var("CMQ_MSG_ID"), Some("UP1"));
    assert_eq!(runs[0].var("CMQ_REQUEST_ID"), Some("R1"));
}

#[test]
fn every_matching_hook_runs_concurrently() {
    let dir = Dir::new();
    // Each hook waits (at most 10 s) until both have started: they only both succeed if they
    // run at the same time.
    let server = Server::start(
        &dir,
        &config(
            "",
            &format!(
                "[hooks.first]\ntopic = \"MyTopic\"\ncommand = '{b}'\n\n[hooks.second]\nsubscription = \"my*\"\ncommand = '{b}'\n\n[hooks.other]\ntopic = \"Other\"\ncommand = 'exit 1'",
                b = dir.barrier(2, 10)
            ),
        ),
    );
    let response = server.post_seed("/cgi", "fan1");
    assert_eq!(response.status, 200, "{}", response.text());
    let json = response.json();
    let hooks: Vec<&str> = json["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["hook"].as_str().expect("hook"))
        .collect();
    assert_eq!(hooks, ["first", "second"]);
}

#[test]
fn tags_select_by_any_of() {
    let dir = Dir::new();
    let server = Server::start(
        &dir,
        &config(
            "",
            &format!(
                "[hooks.web]\ntags = [\"web\", \"all\"]\ncommand = '{}'",
                dir.record(0)
            ),
        ),
    );
    let tagged = |tags: &str| {
        server
            .post("/", &[("x-cmq-message-tag", tags)], b"x")
            .status
    };
    assert_eq!(tagged("other, all"), 200);
    assert_eq!(tagged("web"), 200);
    assert_eq!(tagged("other"), 404);
    assert_eq!(server.post("/", &[], b"x").status, 404);
    assert_eq!(dir.recorded().len(), 2);
}

#[test]
fn a_failing_command_answers_500() {
    let dir = Dir::new();
    let server = Server::start(
        &dir,
        &config("", &format!("[hooks.fails]\ncommand = '{}'", dir.record(3))),
    );
    let response = server.post_seed("/", "fail1");
    assert_eq!(response.status, 500);
    let json = response.json();
    assert_eq!(json["results"][0]["outcome"], "failed");
    assert_eq!(json["results"][0]["exit_code"], 3);
    assert_eq!(dir.recorded().len(), 1);
}

#[test]
fn a_command_that_cannot_start_answers_500() {
    let dir = Dir::new();
    std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
    let server = Server::start(
        &dir,
        &config("", "[hooks.gone]\nargv = [\"/bin/sh\"]\nworkdir = \"sub\""),
    );
    // The workdir existed when the config was loaded, and is gone now.
    std::fs::remove_dir(dir.path().join("sub")).expect("rmdir");
    let response = server.post("/", &[], b"x");
    assert_eq!(response.status, 500, "{}", response.text());
    assert_eq!(response.json()["results"][0]["outcome"], "failed");
    assert!(response.json()["results"][0]["error"].is_string());
}

#[test]
fn a_command_killed_by_a_signal_answers_500() {
    let dir = Dir::new();
    let server = Server::start(&dir, &config("", "[hooks.killed]\ncommand = 'kill -9 $$'"));
    let response = server.post_seed("/", "sig1");
    assert_eq!(response.status, 500);
    let json = response.json();
    assert_eq!(json["results"][0]["outcome"], "killed");
    assert_eq!(json["results"][0]["signal"], 9);
}

/// A time `date +%s.%N` wrote to `file`, in seconds.
fn read_time(file: &Path) -> f64 {
    wait_for_line(file).parse().expect("seconds")
}

#[test]
fn a_timeout_answers_504_after_sigterm_then_sigkill_kill_grace_later_to_the_whole_group() {
    let dir = Dir::new();
    // A grandchild that traps SIGTERM notes when it got it, then keeps noting that it is alive
    // until SIGKILL ends it; a plain grandchild dies of the SIGTERM.
    let stubborn = format!(
        "trap \"date +%s.%N > {d}/term\" TERM; echo $$ > {d}/stubborn; while :; do date +%s.%N > {d}/beat.new && mv {d}/beat.new {d}/beat; sleep 0.05; done",
        d = dir.path().display()
    );
    let server = Server::start(
        &dir,
        &config(
            "",
            &format!(
                "[hooks.slow]\ntimeout = \"1s\"\nkill_grace = \"1s\"\ncommand = '''\ndate +%s.%N > {d}/start\nsleep 300 & echo $! > {d}/sleeper\nsh -c '{stubborn}' &\nwait\n'''",
                d = dir.path().display()
            ),
        ),
    );
    let sent = Instant::now();
    let response = server.post_seed("/", "slow1");
    let took = sent.elapsed();
    assert_eq!(response.status, 504, "{}", response.text());
    assert_eq!(response.outcome(), "timed_out");
    // timeout + kill_grace is 2 s: the answer waits for the SIGKILL, and not much longer.
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "answered after {took:?}"
    );

    let start = read_time(&dir.file("start"));
    let term = read_time(&dir.file("term"));
    let last_beat = read_time(&dir.file("beat"));
    eprintln!(
        "SIGTERM {:.3} s after the start, last beat {:.3} s after SIGTERM, answered after {took:?}",
        term - start,
        last_beat - term
    );
    assert!(
        term - start >= 0.8,
        "SIGTERM {:.3} s after the start, before the 1 s timeout",
        term - start
    );
    // Its last beat is at most 50 ms (and a loaded machine's delay) before the SIGKILL.
    assert!(
        last_beat - term >= 0.65,
        "the stubborn grandchild was killed {:.3} s after SIGTERM, before kill_grace (1 s)",
        last_beat - term
    );
    for name in ["sleeper", "stubborn"] {
        let pid = wait_for_pid(&dir.file(name));
        assert!(
            wait_for(Duration::from_secs(2), || !alive(pid)),
            "grandchild {name} ({pid}) still alive"
        );
    }
}

/// The journal row of the one run of `hook` for `msg_id`, once it has ended.
fn ended_run(dir: &Dir, hook: &str, msg_id: &str) -> serde_json::Value {
    let rows = dir.settled_history(
        &["--hook", hook, "--msg-id", msg_id],
        Duration::from_secs(10),
    );
    assert_eq!(rows.len(), 1, "{rows:#?}");
    rows[0].clone()
}

#[test]
fn a_timed_out_command_that_dies_of_sigterm_is_answered_at_once_journaled_as_signal_15_and_left_nothing_behind()
 {
    let dir = Dir::new();
    // `sh -c 'sleep N'`: the shell and its `sleep` die of the SIGTERM together; the `sleep`,
    // orphaned, stays a zombie until PID 1 (or a subreaper) reaps it, which may take seconds.
    let server = Server::start(
        &dir,
        &config(
            "",
            "[hooks.patient]\npath = \"/patient\"\ncommand = \"sleep 30\"\ntimeout = \"1s\"\nkill_grace = \"5s\"\n\n\
             [hooks.hasty]\npath = \"/hasty\"\ncommand = \"sleep 3\"\ntimeout = \"1s\"\nkill_grace = \"500ms\"",
        ),
    );
    for (hook, msg_id) in [("patient", "term1"), ("hasty", "term2")] {
        let sent = Instant::now();
        let response = server.post(&format!("/{hook}"), &[("x-cmq-message-id", msg_id)], b"x");
        let took = sent.elapsed();
        assert_eq!(response.status, 504, "{hook}: {}", response.text());
        assert_eq!(response.outcome(), "timed_out");
        // The group is dead at SIGTERM: the answer follows the 1 s timeout, not kill_grace,
        // nor the reaping of the zombies.
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(2),
            "{hook}: answered after {took:?}"
        );
        let row = ended_run(&dir, hook, msg_id);
        assert_eq!(row["outcome"], "timed_out", "{row:#}");
        assert_eq!(row["signal"], 15, "{hook}: SIGTERM ended it: {row:#}");
        assert_eq!(
            row["left_behind"], false,
            "{hook}: zombies are not alive: {row:#}"
        );
        let duration = row["duration_ms"].as_u64().expect("duration_ms");
        assert!(duration < 2000, "{hook}: journaled as {duration} ms");
    }
}

#[test]
fn a_timed_out_command_that_ignores_sigterm_is_killed_after_kill_grace_and_journaled_as_signal_9() {
    let dir = Dir::new();
    // An ignored signal stays ignored across exec: the shell and each `sleep` it starts
    // ignore SIGTERM; only SIGKILL ends the group.
    let server = Server::start(
        &dir,
        &config(
            "",
            "[hooks.deaf]\ncommand = 'trap \"\" TERM; while :; do sleep 0.1; done'\ntimeout = \"1s\"\nkill_grace = \"1s\"",
        ),
    );
    let sent = Instant::now();
    let response = server.post("/", &[("x-cmq-message-id", "deaf1")], b"x");
    let took = sent.elapsed();
    assert_eq!(response.status, 504, "{}", response.text());
    assert_eq!(response.outcome(), "timed_out");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(3),
        "answered after {took:?}: timeout + kill_grace is 2 s"
    );
    let row = ended_run(&dir, "deaf", "deaf1");
    assert_eq!(row["outcome"], "timed_out", "{row:#}");
    assert_eq!(row["signal"], 9, "SIGKILL ended it: {row:#}");
    assert_eq!(row["left_behind"], false, "{row:#}");
}

#[test]
fn a_background_child_holding_stdout_does_not_delay_the_answer() {
    let dir = Dir::new();
    let pid_file = dir.file("bg.pid");
    let server = Server::start(
        &dir,
        &config(
            "",
            &format!(
                "[hooks.starts-server]\ncommand = 'sleep 120 & echo $! > {}; echo started'",
                pid_file.display()
            ),
        ),
    );
    let sent = Instant::now();
    let response = server.post_seed("/", "bg1");
    let took = sent.elapsed();
    assert_eq!(response.status, 200, "{}", response.text());
    // The command itself exits at once; had the answer waited for stdout to close, it would
    // have taken 120 s.
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let pid = wait_for_pid(&pid_file);
    assert!(alive(pid), "the background child is left running");
    let _ = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status();
}

/// `serve` blocks SIGCHLD in all its threads (so that a child's exit wakes none of them); its
/// commands, and the commands they start, must not inherit that.
#[test]
fn commands_start_with_no_signal_blocked() {
    let dir = Dir::new();
    let masks = dir.file("masks");
    let server = Server::start(
        &dir,
        &config(
            "",
            &format!(
                "[hooks.masks]\ncommand = 'grep ^SigBlk: /proc/self/status > {0}; sh -c \"grep ^SigBlk: /proc/self/status\" >> {0}'",
                masks.display()
            ),
        ),
    );
    let response = server.post_seed("/", "masks1");
    assert_eq!(response.status, 200, "{}", response.text());
    let masks = std::fs::read_to_string(&masks).expect("the command wrote its masks");
    let blocked: Vec<&str> = masks.lines().collect();
    assert_eq!(blocked, ["SigBlk:\t0000000000000000"; 2], "{masks}");
    // And `serve` itself does block it: otherwise this test would not be testing anything.
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", server.pid())).expect("serve's status");
    let serve_blocked = status
        .lines()
        .find(|line| line.starts_with("SigBlk:"))
        .expect("SigBlk");
    let mask =
        u64::from_str_radix(serve_blocked.trim_start_matches("SigBlk:").trim(), 16).expect("hex");
    assert_ne!(
        mask & (1 << (17 - 1)),
        0,
        "SIGCHLD blocked in serve: {serve_blocked}"
    );
}

#[test]
fn a_body_larger_than_a_pipe_reaches_a_command_that_prints_before_it_reads() {
    let dir = Dir::new();
    // 300 KB of output before reading: more than a pipe holds, so the command blocks until it
    // is drained, while the rest of its 1 MiB stdin (beyond what fits in the pipe at spawn)
    // waits to be written.
    let server = Server::start(
        &dir,
        &config(
            "",
            &format!(
                "[hooks.chatty]\ncommand = 'head -c 300000 /dev/zero | tr \"\\0\" y; {}'",
                dir.record(0)
            ),
        ),
    );
    let body: Vec<u8> = (0..1024 * 1024).map(|i: u32| (i * 7 % 251) as u8).collect();
    let response = server.post("/", &[("x-cmq-message-id", "pipe1")], &body);
    assert_eq!(response.status, 200, "{}", response.text());
    let runs = dir.recorded();
    assert_eq!(runs.len(), 1);
    assert!(
        runs[0].stdin == body,
        "stdin differs: {} bytes",
        runs[0].stdin.len()
    );
}

#[test]
fn a_large_body_to_a_command_that_ignores_stdin_succeeds() {
    let dir = Dir::new();
    let server = Server::start(&dir, &config("", "[hooks.ignores]\nargv = [\"true\"]"));
    let body = vec![b'x'; 4 * 1024 * 1024];
    let response = server.post("/", &[("x-cmq-message-id", "big1")], &body);
    assert_eq!(response.status, 200, "{}", response.text());
}

#[test]
fn huge_output_keeps_server_memory_flat() {
    let dir = Dir::new();
    let server = Server::builder(&dir)
        .config(&config(
            "respond_within = \"300s\"",
            "[hooks.chatty]\ncommand = 'head -c 300000000 /dev/zero | tr \"\\\\0\" x; seq 1 100000'",
        ))
        .discard_log()
        .start();
    let idle = server.rss_kib();
    let response = server.post("/", &[("x-cmq-message-id", "out1")], b"");
    assert_eq!(response.status, 200, "{}", response.text());
    let peak = server.peak_rss_kib();
    eprintln!("idle RSS {idle} KiB, peak RSS {peak} KiB after 300 MB of output");
    // README: idle at 7.5-8 MiB, near 15 MiB with 64 pushes in flight (a release build). A
    // debug build's RSS is mostly its own binary's pages: 25.8 MiB idle, of which 22.5 MiB
    // file-backed, since the console and pull mode (2026-12), and 31.4 MiB at the peak. 40 MiB
    // leaves room for a busier allocator; 300 MB buffered anywhere would blow it many times
    // over, and the growth check below is the one that says memory stays flat.
    assert!(peak < 40 * 1024, "peak RSS {peak} KiB");
    assert!(
        peak.saturating_sub(idle) < 10 * 1024,
        "RSS grew from {idle} to {peak} KiB"
    );
}

#[test]
fn unmatched_pushes_are_rejected_or_acked_as_configured() {
    let dir = Dir::new();
    let server = Server::start(
        &dir,
        &config("", "[hooks.only]\npath = \"/only\"\nargv = [\"true\"]"),
    );
    let response = server.post_seed("/elsewhere", "u1");
    assert_eq!(response.status, 404);
    assert!(response.json()["error"].is_string());
    drop(server);

    let dir = Dir::new();
    let server = Server::start(
        &dir,
        &config(
            "unmatched = \"ack\"",
            "[hooks.only]\npath = \"/only\"\nargv = [\"true\"]",
        ),
    );
    assert_eq!(server.post_seed("/elsewhere", "u2").status, 200);
}

#[test]
fn other_methods_get_405_and_healthz_answers() {
    let dir = Dir::new();
    let server = Server::start(&dir, &config("", &dir.recorder_hook("any")));
    for method in ["GET", "PUT", "DELETE"] {
        let request =
            format!("{method} /cmq/deploy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let response = exchange(server.addr, request.as_bytes());
        assert_eq!(response.status, 405, "{method}");
        assert_eq!(response.header("allow"), Some("POST"));
    }
    let health = exchange(
        server.addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(health.status, 200);
    assert_eq!(health.body, b"ok");
    assert!(dir.recorded().is_empty());
}

#[test]
fn a_body_over_max_body_gets_413_and_nothing_runs() {
    let dir = Dir::new();
    let server = Server::start(
        &dir,
        &config("max_body = \"1 KiB\"", &dir.recorder_hook("any")),
    );
    let response = server.post("/", &[("x-cmq-message-id", "m1")], &[b'x'; 1025]);
    assert_eq!(response.status, 413);
    // Chunked, so the size is only known while reading.
    let mut request =
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
    for _ in 0..3 {
        request.extend_from_slice(b"200\r\n");
        request.extend_from_slice(&[b'y'; 0x200]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(exchange(server.addr, &request).status, 413);
    // Exactly the limit is fine.
    assert_eq!(server.post("/", &[], &[b'x'; 1024]).status, 200);
    assert_eq!(dir.recorded().len(), 1);
}

#[test]
fn a_chunked_body_without_content_length_is_accepted() {
    let dir = Dir::new();
    let server = Server::start(&dir, &config("", &dir.recorder_hook("any")));
    let request = b"POST /c HTTP/1.1\r\nHost: x\r\nx-cmq-message-id: ch1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
    let response = exchange(server.addr, request);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(dir.recorded()[0].stdin, b"hello, world");
}

#[test]
fn a_megabyte_of_control_characters_as_json_is_accepted() {
    let dir = Dir::new();
    let server = Server::start(&dir, &config("", &dir.recorder_hook("any")));
    let message: String = (0..1_000_000u32)
        .map(|i| char::from((i % 32) as u8))
        .collect();
    let body = serde_json::json!({
        "TopicOwner": 1, "topicName": "t", "subscriptionName": "s",
        "msgId": "e12", "msgBody": message, "publishTime": 1,
    })
    .to_string();
    assert!(body.len() > 5_000_000);
    let response = server.post("/", &[("x-cmq-message-id", "e12")], body.as_bytes());
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(dir.recorded()[0].stdin, message.as_bytes());
}

#[test]
fn json_format_answers_400_to_what_is_not_an_envelope() {
    let dir = Dir::new();
    let server = Server::start(
        &dir,
        &config("format = \"json\"", &dir.recorder_hook("any")),
    );
    let response = server.post("/", &[("x-cmq-message-id", "j1")], b"plain text");
    assert_eq!(response.status, 400);
    assert!(
        response.json()["error"]
            .as_str()
            .expect("error")
            .contains("envelope")
    );
    assert_eq!(server.post_seed("/", "j2").status, 200);
    assert_eq!(dir.recorded().len(), 1);
}

#[test]
fn stdin_modes_give_envelope_or_nothing() {
    let dir = Dir::new();
    let server = Server::start(
        &dir,
        &config(
            "",
            &format!(
                "[hooks.envelope]\ntopic = \"MyTopic\"\nstdin = \"envelope\"\ncommand = '{r}'\n\n[hooks.none]\ntopic = \"MyTopic\"\nstdin = \"none\"\ncommand = '{r}'",
                r = dir.record(0)
            ),
        ),
    );
    assert_eq!(server.post_seed("/", "6942316962").status, 200);
    let runs = dir.recorded();
    let of = |hook: &str| {
        runs.iter()
            .find(|run| run.var("CMQHOOK_HOOK") == Some(hook))
            .expect("run")
    };
    assert_eq!(of("envelope").stdin, SEED_ENVELOPE.as_bytes());
    assert_eq!(of("none").stdin, b"");
}

#[test]
fn many_pushes_at_once_are_handled_concurrently() {
    let dir = Dir::new();
    // Each run waits until all 24 have started (at most 15 s, then exits 9): pushes handled
    // one at a time, or a few at a time, fail.
    let server = Server::start(
        &dir,
        &config(
            "respond_within = \"30s\"",
            &format!(
                "[hooks.any]\ncommand = '{}; {}'",
                dir.barrier(24, 15),
                dir.record(0)
            ),
        ),
    );
    let addr = server.addr;
    let threads: Vec<_> = (0..24)
        .map(|i| {
            std::thread::spawn(move || {
                let id = format!("many{i}");
                post(addr, "/", &[("x-cmq-message-id", &id)], id.as_bytes()).status
            })
        })
        .collect();
    for thread in threads {
        assert_eq!(
            thread.join().expect("thread"),
            200,
            "not all 24 ran at once"
        );
    }
    let runs = dir.recorded();
    assert_eq!(runs.len(), 24);
    for run in runs {
        assert_eq!(
            Some(String::from_utf8_lossy(&run.stdin).as_ref()),
            run.var("CMQ_MSG_ID")
        );
    }
}

#[test]
fn argv_is_executed_without_a_shell() {
    let dir = Dir::new();
    let out = dir.path().join("argv.out");
    let server = Server::start(
        &dir,
        &config(
            "",
            &format!(
                "[hooks.direct]\nargv = [\"/bin/sh\", \"-c\", 'printf \"%s\" \"$1\" > {}', \"sh\", \"$HOME `id`\"]",
                out.display()
            ),
        ),
    );
    assert_eq!(server.post("/", &[], b"").status, 200);
    assert_eq!(std::fs::read_to_string(out).expect("out"), "$HOME `id`");
}
