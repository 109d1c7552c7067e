//! Access control and secrets through the built binary.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::*;

const TOKEN: &str = "tok-8f2a9c1e77d0";
const SECRET: &str = "path-secret-5b3e91d2";

/// `[server]` keys: the token from `CMQHOOK_TOKEN`.
const WITH_TOKEN: &str = "token = \"${CMQHOOK_TOKEN}\"";

/// A hook `deploy` on the secret path `/cmq/${DEPLOY_SECRET}` that runs the recorder.
fn secret_path_hook(dir: &Dir) -> String {
    format!(
        "[hooks.deploy]\npath = \"/cmq/${{DEPLOY_SECRET}}\"\ncommand = '{}'",
        dir.record(0)
    )
}

/// A server with `CMQHOOK_TOKEN` and `DEPLOY_SECRET` in its environment.
fn with_secrets(dir: &Dir) -> ServerBuilder<'_> {
    Server::builder(dir)
        .env("CMQHOOK_TOKEN", TOKEN)
        .env("DEPLOY_SECRET", SECRET)
}

fn server(dir: &Dir, server: &str, hooks: &str) -> Server {
    with_secrets(dir).config(&config(server, hooks)).start()
}

#[test]
fn a_token_is_required_in_one_of_three_places() {
    let dir = Dir::new();
    let server = server(&dir, WITH_TOKEN, &secret_path_hook(&dir));
    let path = format!("/cmq/{SECRET}");
    let no_token = server.post(&path, &[("x-cmq-message-id", "t0")], b"x");
    assert_eq!(no_token.status, 401);
    let wrong = server.post(
        &path,
        &[("x-cmq-message-id", "t0"), ("X-Cmqhook-Token", "nope")],
        b"x",
    );
    assert_eq!(wrong.status, 401);
    assert!(dir.recorded().is_empty(), "nothing runs without the token");

    let query = server.post(
        &format!("{path}?token={TOKEN}"),
        &[("x-cmq-message-id", "t1")],
        b"x",
    );
    assert_eq!(query.status, 200, "{}", query.text());
    let header = server.post(
        &path,
        &[("x-cmq-message-id", "t2"), ("X-Cmqhook-Token", TOKEN)],
        b"x",
    );
    assert_eq!(header.status, 200);
    let bearer = format!("Bearer {TOKEN}");
    let auth = server.post(
        &path,
        &[("x-cmq-message-id", "t3"), ("Authorization", &bearer)],
        b"x",
    );
    assert_eq!(auth.status, 200);
    // The secret path is reached only with its expanded value.
    let literal = server.post("/cmq/${DEPLOY_SECRET}", &[("X-Cmqhook-Token", TOKEN)], b"x");
    assert_eq!(literal.status, 404);
    assert_eq!(dir.recorded().len(), 3);
}

/// `cmqhook ARGS -c hooks.toml` with the secrets' variables set.
fn cmqhook_with_secrets(dir: &Dir, args: &[&str]) -> std::process::Output {
    let config = dir.config_file();
    let mut all = args.to_vec();
    all.extend_from_slice(&["-c", config.to_str().expect("utf-8 path")]);
    let mut command = cmqhook_command(&all);
    command
        .env("CMQHOOK_TOKEN", TOKEN)
        .env("DEPLOY_SECRET", SECRET);
    output_of(command, b"")
}

/// Whether `text` holds the token or the secret path.
fn leaks(text: &str) -> bool {
    text.contains(TOKEN) || text.contains(SECRET)
}

#[test]
fn secrets_are_redacted_in_answers_logs_and_the_journal() {
    let dir = Dir::new();
    let server = with_secrets(&dir)
        .config(&config(
            &format!("{WITH_TOKEN}\nmax_body = \"1 KiB\""),
            &secret_path_hook(&dir),
        ))
        .rust_log(Some("debug"))
        .start();
    let path = format!("/cmq/{SECRET}");
    let with_token = format!("{path}?token={TOKEN}");
    let other = format!("{path}/other?token={TOKEN}");
    let bearer = format!("Bearer {TOKEN}");
    let big = [b'x'; 2048];
    for (what, response, status) in [
        (
            "a run",
            server.post(&with_token, &[("x-cmq-message-id", "s1")], b"x"),
            200,
        ),
        (
            "a bearer token",
            server.post(
                &path,
                &[("x-cmq-message-id", "s2"), ("Authorization", &bearer)],
                b"x",
            ),
            200,
        ),
        (
            "no hook",
            server.post(&other, &[("x-cmq-message-id", "s3")], b"x"),
            404,
        ),
        (
            "no token",
            server.post(&path, &[("x-cmq-message-id", "s4")], b"x"),
            401,
        ),
        (
            "too large",
            server.post(&with_token, &[("x-cmq-message-id", "s5")], &big),
            413,
        ),
        ("a GET", server.get(&with_token), 405),
    ] {
        assert_eq!(response.status, status, "{what}: {}", response.text());
        let answer = format!("{:?} {}", response.headers, response.text());
        assert!(!leaks(&answer), "{what}: {answer}");
    }
    assert_eq!(dir.recorded().len(), 2);

    // Every push has a line, with the path as the config wrote it.
    let log = server.log_text();
    for needle in [
        "path=\"/cmq/${DEPLOY_SECRET}\" ",
        "path=\"/cmq/${DEPLOY_SECRET}/other\" ",
    ] {
        assert!(log.contains(needle), "no {needle:?} in:\n{log}");
    }
    assert!(!leaks(&log), "{log}");

    let mut rows = Vec::new();
    assert!(wait_for(Duration::from_secs(5), || {
        let output = cmqhook_with_secrets(&dir, &["history", "--json"]);
        rows = text(&output.stdout).lines().map(str::to_owned).collect();
        rows.len() == 5
    }));
    assert!(
        rows.iter()
            .all(|row| row.contains("\"path\":\"/cmq/${DEPLOY_SECRET}")),
        "{rows:#?}"
    );
    let history = both(&cmqhook_with_secrets(&dir, &["history"]));
    assert!(!leaks(&history), "{history}");
    let mut files = Vec::new();
    for file in ["cmqhook.db", "cmqhook.db-wal"] {
        files.extend(std::fs::read(dir.file(file)).unwrap_or_default());
    }
    assert!(
        !leaks(&String::from_utf8_lossy(&files)),
        "the journal holds a secret"
    );
}

#[test]
fn secrets_a_command_prints_are_redacted_in_the_log_and_the_journal() {
    let dir = Dir::new();
    std::fs::write(
        dir.file("deploy.conf"),
        format!("endpoint /cmq/{SECRET}\ntoken {TOKEN}\n"),
    )
    .expect("write deploy.conf");
    let server = server(
        &dir,
        WITH_TOKEN,
        &format!(
            "[hooks.deploy]\npath = \"/cmq/${{DEPLOY_SECRET}}\"\ncommand = 'cat {}'",
            dir.file("deploy.conf").display()
        ),
    );
    let response = server.post(
        &format!("/cmq/{SECRET}?token={TOKEN}"),
        &[("x-cmq-message-id", "out1")],
        b"x",
    );
    assert_eq!(response.status, 200, "{}", response.text());
    // Output lines reach the log from a thread of their own, after the answer maybe.
    for line in ["endpoint /cmq/", "token "] {
        assert!(
            server
                .wait_for_log_line(Duration::from_secs(5), &["cmqhook::output", line])
                .is_some(),
            "{}",
            server.log_text()
        );
    }
    let log = server.log_text();
    assert!(!leaks(&log), "{log}");
    assert!(log.contains("endpoint /cmq/${DEPLOY_SECRET}"), "{log}");
    assert!(log.contains("token ${CMQHOOK_TOKEN}"), "{log}");
    let output = cmqhook_with_secrets(&dir, &["history", "--json"]);
    assert!(!leaks(&both(&output)), "{}", both(&output));
    assert!(both(&output).contains("endpoint /cmq/${DEPLOY_SECRET}"));
}

#[test]
fn the_variables_secrets_came_from_are_not_passed_to_commands_unless_listed_in_pass_env() {
    let dir = Dir::new();
    let hooks = format!(
        "{}\n[hooks.keeps]\npath = \"/cmq/${{DEPLOY_SECRET}}\"\npass_env = [\"DEPLOY_SECRET\"]\ncommand = '{}'",
        secret_path_hook(&dir),
        dir.record(0)
    );
    let server = with_secrets(&dir)
        .env("UNRELATED", "still-here")
        .config(&config(WITH_TOKEN, &hooks))
        .start();
    let response = server.post(&format!("/cmq/{SECRET}?token={TOKEN}"), &[], b"x");
    assert_eq!(response.status, 200, "{}", response.text());
    let runs = dir.recorded();
    let run_of = |hook: &str| {
        runs.iter()
            .find(|run| run.var("CMQHOOK_HOOK") == Some(hook))
            .expect("the hook ran")
    };
    let hidden = run_of("deploy");
    assert_eq!(hidden.var("CMQHOOK_TOKEN"), None);
    assert_eq!(hidden.var("DEPLOY_SECRET"), None);
    assert_eq!(hidden.var("UNRELATED"), Some("still-here"));
    let kept = run_of("keeps");
    assert_eq!(kept.var("CMQHOOK_TOKEN"), None);
    assert_eq!(kept.var("DEPLOY_SECRET"), Some(SECRET));
}

#[test]
fn message_data_never_reaches_a_command_line() {
    let dir = Dir::new();
    let script = format!(
        "echo $$ > {}/$CMQHOOK_HOOK.pid; {}",
        dir.path().display(),
        dir.gate("held", 20)
    );
    let server = server(
        &dir,
        "",
        &format!(
            "[hooks.shell]\ncommand = '{script}'\n\n[hooks.direct]\nargv = [\"/bin/sh\", \"-c\", '{script}']"
        ),
    );
    let data = [
        "MSGID-93ab1",
        "REQID-4d2c7",
        "TOPIC-5e2f",
        "SUB-8b3a",
        "TAG-1a9c",
        "BODY-7c1d",
    ];
    let envelope = r#"{"TopicOwner":1,"topicName":"TOPIC-5e2f","subscriptionName":"SUB-8b3a","msgId":"MSGID-93ab1","msgBody":"BODY-7c1d","publishTime":1}"#;
    let request = post_request(
        server.addr,
        "/",
        &[
            ("x-cmq-message-id", "MSGID-93ab1"),
            ("x-cmq-request-id", "REQID-4d2c7"),
            ("x-cmq-message-tag", "TAG-1a9c"),
        ],
        envelope.as_bytes(),
    );
    let addr = server.addr;
    let push = std::thread::spawn(move || exchange(addr, &request));
    for hook in ["shell", "direct"] {
        let leader = wait_for_pid(&dir.file(&format!("{hook}.pid")));
        let group = process_group(leader);
        assert!(group.contains(&leader), "{group:?}");
        for pid in group {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue; // it ended meanwhile
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            for item in data {
                assert!(!cmdline.contains(item), "{hook}: {item} in {cmdline:?}");
            }
        }
        // The data is there, in the environment.
        let environ = std::fs::read(format!("/proc/{leader}/environ")).expect("environ");
        let environ = String::from_utf8_lossy(&environ);
        assert!(
            environ.contains("CMQ_MSG_ID=MSGID-93ab1"),
            "{hook}: {environ}"
        );
    }
    dir.open_gate("held");
    let response = push.join().expect("push");
    assert_eq!(response.status, 200, "{}", response.text());
}

/// The processes whose process group is `pgid`.
pub fn process_group(pgid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // pid (comm) state ppid pgrp …; comm may hold spaces and parentheses.
                stat.rsplit(')')
                    .next()
                    .and_then(|rest| rest.split_whitespace().nth(2))
                    .and_then(|pgrp| pgrp.parse::<u32>().ok())
                    == Some(pgid)
            })
        })
        .collect()
}

#[test]
fn peers_outside_allow_get_403_and_forwarded_for_is_believed_only_from_trusted_proxies() {
    let dir = Dir::new();
    let closed = server(&dir, "allow = [\"10.0.0.0/8\"]", &dir.recorder_hook("any"));
    assert_eq!(closed.post("/", &[], b"x").status, 403);
    assert!(dir.recorded().is_empty());
    drop(closed);

    let dir = Dir::new();
    let proxied = server(
        &dir,
        "allow = [\"1.2.3.4/32\"]\ntrusted_proxies = [\"127.0.0.1\"]",
        &dir.recorder_hook("any"),
    );
    let via_proxy = proxied.post("/", &[("X-Forwarded-For", "9.9.9.9, 1.2.3.4")], b"x");
    assert_eq!(via_proxy.status, 200, "{}", via_proxy.text());
    let spoofed = proxied.post("/", &[("X-Forwarded-For", "1.2.3.4, 9.9.9.9")], b"x");
    assert_eq!(spoofed.status, 403);
    assert_eq!(dir.recorded().len(), 1);
}

#[test]
fn shell_syntax_in_topic_and_tags_never_executes() {
    let dir = Dir::new();
    let pwned = dir.path().join("pwned");
    let server = server(&dir, "", &dir.recorder_hook("any"));
    let evil = format!("$(touch {p})`touch {p}`", p = pwned.display());
    let body = SEED_ENVELOPE
        .replace("MyTopic", &evil.replace('"', "\\\""))
        .replace("6942316962", "evil1");
    let response = server.post(
        "/",
        &[("x-cmq-message-id", "evil1"), ("x-cmq-message-tag", &evil)],
        body.as_bytes(),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let run = &dir.recorded()[0];
    assert_eq!(run.var("CMQ_TOPIC"), Some(evil.as_str()));
    assert!(!pwned.exists());
}

/// A server whose one hook records every push.
fn recording_server(dir: &Dir) -> Server {
    recording_server_with(dir, "")
}

/// A server with these `[server]` keys and one catch-all hook running the recorder.
fn recording_server_with(dir: &Dir, server_keys: &str) -> Server {
    server(dir, server_keys, &dir.recorder_hook("any"))
}

#[test]
fn stalled_connections_do_not_delay_normal_pushes() {
    let dir = Dir::new();
    let server = recording_server(&dir);
    // 100 clients that send half a request and then stall.
    let stalled: Vec<TcpStream> = (0..100)
        .map(|i| {
            let mut stream = TcpStream::connect(server.addr).expect("connect");
            let half: &[u8] = if i % 2 == 0 {
                b"POST / HTTP/1.1\r\nHost: x\r\nx-cmq-mess"
            } else {
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\npartial"
            };
            stream.write_all(half).expect("send half");
            stream
        })
        .collect();
    let sent = Instant::now();
    let normal = server.post_seed("/", "normal1");
    assert_eq!(normal.status, 200, "{}", normal.text());
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "took {:?}",
        sent.elapsed()
    );
    drop(stalled);
    assert_eq!(server.post_seed("/", "normal2").status, 200);
    assert_eq!(dir.recorded().len(), 2);
}

#[test]
fn malformed_requests_get_400_or_431_at_once_and_run_nothing() {
    let dir = Dir::new();
    let server = recording_server(&dir);
    let huge_header = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    for (what, request, status) in [
        ("garbage", &b"\x00\xff\xfe garbage \r\n\r\n"[..], 400),
        (
            "an unreadable Content-Length",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\nx",
            400,
        ),
        (
            "a broken chunk",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nbroken\r\n",
            400,
        ),
        // actix-web refuses a head of more than 128 KiB.
        ("a 200 KB header", huge_header.as_bytes(), 431),
    ] {
        let sent = Instant::now();
        let response = exchange_within(server.addr, request, Duration::from_secs(5));
        assert_eq!(response.status, status, "{what}: {}", response.text());
        assert!(
            sent.elapsed() < Duration::from_secs(2),
            "{what}: answered after {:?}",
            sent.elapsed()
        );
    }
    assert!(dir.recorded().is_empty());
    assert_eq!(server.post_seed("/", "after1").status, 200);
}

#[test]
fn a_long_tag_list_is_a_push_like_any_other() {
    let dir = Dir::new();
    let server = recording_server(&dir);
    let tags = "t,".repeat(5_000);
    let response = server.post(
        "/",
        &[("x-cmq-message-id", "tags1"), ("x-cmq-message-tag", &tags)],
        b"",
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let expected = vec!["t"; 5_000].join(",");
    dir.recorded()[0].assert_vars(&[("CMQ_TAGS", &expected)]);
}

/// Reads the answer on `stream`, whose request stalled at `sent`: a 408 that came `seconds`
/// later.
fn timed_out(stream: &mut TcpStream, sent: Instant, seconds: std::ops::Range<u64>) -> Response {
    let within = Duration::from_secs(seconds.end + 1);
    let response = read_response(stream, within).unwrap_or_else(|err| panic!("{err}"));
    let took = sent.elapsed();
    assert_eq!(response.status, 408, "{}", response.text());
    assert!(
        took >= Duration::from_secs(seconds.start) && took < Duration::from_secs(seconds.end),
        "408 after {took:?}"
    );
    response
}

#[test]
fn headers_not_received_within_10_seconds_get_408() {
    let dir = Dir::new();
    let server = recording_server(&dir);
    let mut half = TcpStream::connect(server.addr).expect("connect");
    half.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nx-cmq-mess")
        .expect("send half");
    let mut silent = TcpStream::connect(server.addr).expect("connect");
    let sent = Instant::now();
    for stream in [&mut half, &mut silent] {
        // actix-web's timers tick every half second or so.
        timed_out(stream, sent, 9..13);
    }
    assert!(dir.recorded().is_empty());
}

/// Takes about 30 s: the body timeout is not configurable.
#[test]
fn a_body_not_received_within_30_seconds_gets_408() {
    let dir = Dir::new();
    let server = recording_server(&dir);
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nx-cmq-message-id: slow1\r\nContent-Length: 1000\r\n\r\npartial")
        .expect("send half");
    let response = timed_out(&mut stream, Instant::now(), 29..33);
    assert!(response.json()["error"].is_string(), "{}", response.text());
    assert!(dir.recorded().is_empty());
}

#[test]
fn check_warns_about_an_exposed_unprotected_listener() {
    let dir = Dir::new();
    let config = dir.write_config(
        "[server]\nlisten = \"0.0.0.0:9000\"\n\n[hooks.x]\npath = \"/x\"\nargv = [\"true\"]\n",
    );
    let output = cmqhook(&["check", "-c", config.to_str().expect("utf-8 path")], b"");
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("anyone who can reach 0.0.0.0:9000 can run hook `x`"),
        "{stderr}"
    );
}

#[test]
fn check_names_an_unset_variable_and_never_prints_a_set_one() {
    let dir = Dir::new();
    let config = dir.write_config(
        "[server]\ntoken = \"${CMQHOOK_TOKEN}\"\n\n[hooks.x]\npath = \"/cmq/${DEPLOY_SECRET}/${NOT_SET_ANYWHERE}\"\nargv = [\"true\"]\n",
    );
    let mut command = cmqhook_command(&["check", "-c", config.to_str().expect("utf-8 path")]);
    command
        .env("CMQHOOK_TOKEN", TOKEN)
        .env("DEPLOY_SECRET", SECRET)
        .env_remove("NOT_SET_ANYWHERE");
    let output = output_of(command, b"");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("hooks.toml:5:8: hooks.x.path"), "{stderr}");
    assert!(stderr.contains("`NOT_SET_ANYWHERE` is not set"), "{stderr}");

    std::fs::write(
        &config,
        "[server]\ntoken = \"${CMQHOOK_TOKEN}\"\n\n[hooks.x]\npath = \"/cmq/${DEPLOY_SECRET}\"\nargv = [\"true\"]\n",
    )
    .expect("write");
    let output = cmqhook_with_secrets(&dir, &["check"]);
    assert!(output.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(all.contains("path=/cmq/${DEPLOY_SECRET}"), "{all}");
    assert!(!all.contains(TOKEN) && !all.contains(SECRET), "{all}");
}

#[test]
fn a_percent_encoded_query_token_and_any_case_bearer_are_accepted() {
    let dir = Dir::new();
    let server = Server::builder(&dir)
        .config(&config(WITH_TOKEN, &dir.recorder_hook("any")))
        .env("CMQHOOK_TOKEN", "a+b/c")
        .start();
    let encoded = server.post("/?token=a%2Bb%2Fc", &[("x-cmq-message-id", "q1")], b"x");
    assert_eq!(encoded.status, 200, "{}", encoded.text());
    // Form encoding: a literal `+` in a query string is a space.
    let raw = server.post("/?token=a+b/c", &[("x-cmq-message-id", "q2")], b"x");
    assert_eq!(raw.status, 401, "{}", raw.text());
    let upper = server.post(
        "/",
        &[
            ("x-cmq-message-id", "q3"),
            ("Authorization", "BEARER a+b/c"),
        ],
        b"x",
    );
    assert_eq!(upper.status, 200, "{}", upper.text());
    assert_eq!(dir.recorded().len(), 2);
}

#[test]
fn send_carries_the_token_by_flag_or_by_header() {
    let dir = Dir::new();
    let server = server(&dir, WITH_TOKEN, &dir.recorder_hook("any"));
    let url = format!("http://{}/", server.addr);
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let header = format!("X-Cmqhook-Token: {TOKEN}");
    for (id, extra) in [
        ("s1", vec!["--token", TOKEN]),
        ("s2", vec!["--header", &bearer]),
        ("s3", vec!["--header", "X-Other: 1", "--header", &header]),
    ] {
        let mut args = vec!["send", &url, "--format", "simplified", "--msg-id", id];
        args.extend(extra);
        let output = cmqhook(&args, b"x");
        let stdout = text(&output.stdout);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stdout}");
        assert!(stdout.starts_with("200"), "{stdout}");
    }
    let without = cmqhook(&["send", &url, "--format", "simplified"], b"x");
    assert_eq!(without.status.code(), Some(1));
    assert!(text(&without.stdout).starts_with("401"));
    assert_eq!(dir.recorded().len(), 3);
}

/// `request` with the first `@@` replaced by `bytes`: header values a client library would
/// refuse to send.
fn with_raw(request: Vec<u8>, bytes: &[u8]) -> Vec<u8> {
    let at = request
        .windows(2)
        .position(|pair| pair == b"@@")
        .expect("a @@ placeholder");
    [&request[..at], bytes, &request[at + 2..]].concat()
}

#[test]
fn repeated_forwarded_for_lines_are_one_list() {
    let dir = Dir::new();
    let server = recording_server_with(
        &dir,
        "allow = [\"10.0.0.0/8\"]\ntrusted_proxies = [\"127.0.0.1/32\"]",
    );
    let lines = |first: &str, second: &str| {
        server.post(
            "/",
            &[("X-Forwarded-For", first), ("X-Forwarded-For", second)],
            b"x",
        )
    };
    // A proxy appended the real client on a second line: it is the rightmost entry.
    let appended = lines("10.0.0.5", "6.6.6.6");
    assert_eq!(appended.status, 403, "{}", appended.text());
    assert!(dir.recorded().is_empty());
    let inside = lines("6.6.6.6", "10.0.0.5");
    assert_eq!(inside.status, 200, "{}", inside.text());
    assert_eq!(dir.recorded().len(), 1);
}

#[test]
fn a_trusted_proxys_forwarded_for_that_cannot_be_read_is_400_not_the_proxy_itself() {
    let dir = Dir::new();
    // The proxy is inside `allow`: read as "no header", its pushes would be admitted.
    let server = recording_server_with(
        &dir,
        "allow = [\"127.0.0.1/32\"]\ntrusted_proxies = [\"127.0.0.1/32\"]",
    );
    for (what, value) in [
        ("not UTF-8", &b"\xff\xfe6.6.6.6"[..]),
        ("not an address", b"unknown"),
        (
            "a second line not UTF-8",
            b"127.0.0.1\r\nX-Forwarded-For: \xc3\x28",
        ),
    ] {
        let request = post_request(server.addr, "/", &[("X-Forwarded-For", "@@")], b"x");
        let response = exchange(server.addr, &with_raw(request, value));
        assert_eq!(response.status, 400, "{what}: {}", response.text());
        assert!(response.text().contains("X-Forwarded-For"), "{what}");
    }
    assert!(dir.recorded().is_empty());
    let metrics = server.metrics();
    let refused = metrics.get("cmqhook_rejected_pushes_total", &[("reason", "bad_header")]);
    assert_eq!(refused, Some(3.0));
    // Without the header, the proxy is the client, and it is allowed.
    assert_eq!(server.post("/", &[], b"x").status, 200);
}

#[test]
fn cmq_headers_that_are_not_utf8_get_400_and_run_nothing() {
    let dir = Dir::new();
    let server = recording_server(&dir);
    for name in ["x-cmq-message-id", "x-cmq-request-id", "x-cmq-message-tag"] {
        let request = post_request(server.addr, "/", &[(name, "@@")], b"x");
        let response = exchange(server.addr, &with_raw(request, b"id-\xff\xfe"));
        assert_eq!(response.status, 400, "{name}: {}", response.text());
        assert!(response.text().contains(name), "{}", response.text());
    }
    // A valid id next to an unreadable tag line is no better: the push is not run.
    let request = post_request(
        server.addr,
        "/",
        &[
            ("x-cmq-message-id", "m1"),
            ("x-cmq-message-tag", "a"),
            ("x-cmq-message-tag", "@@"),
        ],
        b"x",
    );
    assert_eq!(
        exchange(server.addr, &with_raw(request, b"\x80")).status,
        400
    );
    assert!(dir.recorded().is_empty());
    let mut rows = Vec::new();
    // Refusals are journaled in the background.
    wait_for(Duration::from_secs(10), || {
        rows = dir.history(&[]);
        rows.len() == 4
    });
    assert_eq!(rows.len(), 4, "{rows:#?}");
    let refused = |row: &serde_json::Value| row["outcome"] == "bad_header" && row["status"] == 400;
    assert!(rows.iter().all(refused), "{rows:#?}");
}

#[test]
fn absurd_message_ids_get_400_run_nothing_and_are_kept_truncated() {
    let dir = Dir::new();
    let server = recording_server(&dir);
    let long = "i".repeat(2048);
    let response = server.post("/", &[("x-cmq-message-id", &long)], b"x");
    assert_eq!(response.status, 400, "{}", response.text());
    assert!(
        response.text().contains("longer than 1024"),
        "{}",
        response.text()
    );
    let envelope = |id: &str| {
        serde_json::json!({
            "TopicOwner": 1, "topicName": "t", "subscriptionName": "s",
            "msgId": id, "msgBody": "x", "publishTime": 1,
        })
        .to_string()
    };
    for id in [
        "x".repeat(1 << 20),
        "forged\nINFO line".to_owned(),
        "esc\u{1b}[2J".to_owned(),
        "nul\0".to_owned(),
    ] {
        let response = server.post("/", &[], envelope(&id).as_bytes());
        assert_eq!(response.status, 400, "{id:.20?}: {}", response.text());
    }
    assert!(dir.recorded().is_empty());
    let mut rows = Vec::new();
    wait_for(Duration::from_secs(10), || {
        rows = dir.history(&[]);
        rows.len() == 5
    });
    assert_eq!(rows.len(), 5, "{rows:#?}");
    for row in &rows {
        let id = row["msg_id"].as_str().unwrap_or("");
        assert!(
            id.len() <= 1024,
            "a refused id is kept whole: {} bytes",
            id.len()
        );
    }
    // A valid id of exactly 1 KiB runs.
    let longest = "i".repeat(1024);
    assert_eq!(
        server
            .post("/", &[("x-cmq-message-id", &longest)], b"x")
            .status,
        200
    );
    assert_eq!(dir.recorded().len(), 1);
}

#[test]
fn an_ipv4_mapped_allow_entry_admits_its_ipv4_client() {
    let dir = Dir::new();
    let server = recording_server_with(&dir, "allow = [\"::ffff:127.0.0.1/128\"]");
    let response = server.post("/", &[], b"x");
    assert_eq!(response.status, 200, "{}", response.text());
    let other = Dir::new();
    let closed = recording_server_with(&other, "allow = [\"::ffff:10.0.0.0/104\"]");
    assert_eq!(closed.post("/", &[], b"x").status, 403);
}

#[test]
fn control_characters_from_a_push_or_a_command_are_escaped_in_text_logs_and_history() {
    let dir = Dir::new();
    // The command prints the topic it was given, escape sequences and a carriage return.
    let server = server(
        &dir,
        "",
        "[hooks.echo]\ncommand = 'printf \"%s|\\033[2J|a\\rb\\n\" \"$CMQ_TOPIC\"'",
    );
    let envelope = serde_json::json!({
        "TopicOwner": 1, "topicName": "evil\u{1b}]0;owned\u{7}", "subscriptionName": "s\u{9b}31m",
        "msgId": "m1", "msgBody": "x", "publishTime": 1,
    });
    let response = server.post("/", &[], envelope.to_string().as_bytes());
    assert_eq!(response.status, 200, "{}", response.text());
    let line = server
        .wait_for_log_line(Duration::from_secs(5), &["cmqhook::output"])
        .expect("the output is logged");
    assert!(
        line.contains(r"evil\x1b]0;owned\x07|\x1b[2J|a\rb"),
        "{line:?}"
    );
    let log = server.log_text();
    for control in ['\u{1b}', '\u{7}', '\r', '\u{9b}'] {
        assert!(
            !log.contains(control),
            "{control:?} reached the log: {log:?}"
        );
    }
    let config = dir.config_file();
    let config = config.to_str().expect("utf-8 path");
    let history = cmqhook(&["history", "-c", config], b"");
    let shown = text(&history.stdout);
    assert!(history.status.success(), "{}", text(&history.stderr));
    assert_eq!(shown.lines().count(), 1, "{shown:?}");
    assert!(shown.contains(r"topic=evil\x1b]0;owned\x07"), "{shown:?}");
    assert!(shown.contains(r"subscription=s\x9b31m"), "{shown:?}");
    assert!(
        !shown.contains('\u{1b}') && !shown.contains('\u{9b}'),
        "{shown:?}"
    );
}

#[test]
fn a_closed_standard_output_ends_a_command_quietly_with_141() {
    let dir = Dir::new();
    let server = recording_server(&dir);
    assert_eq!(server.post("/", &[], b"x").status, 200);
    drop(server);
    let config = dir.config_file();
    let config = config.to_str().expect("utf-8 path");
    for args in [
        &["check", "-c", config][..],
        &["history", "-c", config, "--json"],
    ] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        // The reader has gone before the first line is written, as `| head -0` would.
        drop(reader);
        let output = cmqhook_command(args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("run cmqhook");
        assert_eq!(output.status.code(), Some(141), "{args:?}");
        assert_eq!(text(&output.stderr), "", "{args:?}");
    }
}
