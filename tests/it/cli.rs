//! `cmqhook check` and the start-up of `serve`, through the built binary.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Output;

use crate::harness::*;

const BROKEN: &str = r#"[server]
listen = "127.0.0.1:0"

[hooks.a]
topic = "t"
timeout = "ten minutes"
command = "true"

[hooks.b]
subscription = "web-[0-9"
command = "true"

[hooks.c]
commnd = "true"
"#;

#[test]
fn check_reports_every_error_with_file_line_column_and_key() {
    let dir = Dir::new();
    let config = dir.write_config(BROKEN);
    let output = cmqhook(&["check", "-c", config.to_str().expect("utf-8")], b"");
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    let file = config.display().to_string();
    for (position, key) in [
        ("6:11", "hooks.a.timeout"),
        ("10:16", "hooks.b.subscription"),
        ("14:1", "commnd"),
    ] {
        let expected = format!("{file}:{position}: ");
        let line = stderr
            .lines()
            .find(|line| line.contains(&expected))
            .unwrap_or_else(|| panic!("no error at {expected} in:\n{stderr}"));
        assert!(line.contains(key), "{line}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn serve_refuses_a_broken_config_with_the_same_message() {
    let dir = Dir::new();
    let config = dir.write_config(BROKEN);
    let path = config.to_str().expect("utf-8");
    let check = cmqhook(&["check", "-c", path], b"");
    let serve = cmqhook(&["serve", "-c", path], b"");
    assert_eq!(serve.status.code(), Some(1));
    assert_eq!(text(&serve.stderr), text(&check.stderr));
}

#[test]
fn check_prints_hooks_and_warns_about_catch_alls() {
    let dir = Dir::new();
    let config = dir.write_config(
        "[hooks.deploy-web]\npath = \"/cmq/deploy\"\ntopic = \"deploy\"\nsubscription = \"web-*\"\ntags = [\"web\", \"all\"]\ncommand = \"./deploy.sh prod\"\n\n[hooks.everything]\nargv = [\"true\"]\n",
    );
    let output = cmqhook(&["check", "-c", config.to_str().expect("utf-8")], b"");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(stdout.contains("2 hooks"), "{stdout}");
    assert!(
        stdout.contains("path=/cmq/deploy topic=deploy subscription=web-* tags=web,all"),
        "{stdout}"
    );
    assert!(stdout.contains("./deploy.sh prod"), "{stdout}");
    // Config order, not name order.
    assert!(stdout.find("deploy-web") < stdout.find("everything"));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("warning: hook `everything` has no selector"),
        "{stderr}"
    );
}

#[test]
fn the_config_defaults_to_cmqhook_config_then_hooks_toml() {
    let dir = Dir::new();
    let config = dir.write_config("[hooks.x]\npath = \"/x\"\nargv = [\"true\"]\n");
    let mut command = cmqhook_command(&["check"]);
    command.env("CMQHOOK_CONFIG", &config);
    let from_env = output_of(command, b"");
    assert_eq!(
        from_env.status.code(),
        Some(0),
        "{}",
        text(&from_env.stderr)
    );
    let mut command = cmqhook_command(&["check"]);
    command.current_dir(dir.path());
    let from_cwd = output_of(command, b"");
    assert_eq!(
        from_cwd.status.code(),
        Some(0),
        "{}",
        text(&from_cwd.stderr)
    );
    assert!(text(&from_cwd.stdout).contains("hooks.toml: valid"));
}

#[test]
fn a_missing_config_is_one_clear_line() {
    let output = cmqhook(&["check", "-c", "/nonexistent/hooks.toml"], b"");
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/hooks.toml"), "{stderr}");
}

#[test]
fn every_example_config_is_valid_and_warns_about_nothing() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut configs = vec![repo.join("hooks.example.toml")];
    for entry in std::fs::read_dir(repo.join("examples")).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|ext| ext == "toml") {
            configs.push(path);
        }
    }
    assert!(configs.len() > 1, "no config in examples/");
    for config in configs {
        // As .ci/run does: the examples take their secrets from the environment.
        let mut command = cmqhook_command(&["check", "-c", config.to_str().expect("utf-8")]);
        command.env("DEPLOY_SECRET", "placeholder-secret");
        command.env("TENCENTCLOUD_SECRET_ID", "AKIDplaceholder-secret-id");
        command.env("TENCENTCLOUD_SECRET_KEY", "placeholder-secret-key");
        let output = output_of(command, b"");
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}: {}",
            config.display(),
            both(&output)
        );
        assert!(
            output.stderr.is_empty(),
            "{}: {}",
            config.display(),
            both(&output)
        );
    }
}

/// `cmqhook check -c CONFIG`, run to its end.
fn check(config: &Path) -> Output {
    cmqhook(&["check", "-c", config.to_str().expect("utf-8")], b"")
}

/// One `[server]` and one hook with three mistakes each: serde's derive stopped at the first
/// of each table, so this took four runs of `check` to find.
const MANY_ERRORS_IN_ONE_TABLE: &str = r#"[server]
jornal = "x"
unmatched = "rejct"
max_running = 0

[hooks.deploy]
topc = "deploy"
timeout = "forever"
stdin = "all"
command = "true"
"#;

#[test]
fn check_reports_every_error_of_a_table_in_one_run_with_a_suggestion() {
    let dir = Dir::new();
    let config = dir.write_config(MANY_ERRORS_IN_ONE_TABLE);
    let output = check(&config);
    assert_eq!(output.status.code(), Some(1), "{}", both(&output));
    let stderr = text(&output.stderr);
    let file = config.display();
    let expected = [
        format!(
            "error: {file}:2:1: server.jornal: unknown field `jornal`, did you mean `journal`?"
        ),
        format!("error: {file}:3:13: server.unmatched: unknown variant `rejct`"),
        format!("error: {file}:4:15: server.max_running: must be at least 1"),
        format!(
            "error: {file}:7:1: hooks.deploy.topc: unknown field `topc`, did you mean `topic`?"
        ),
        format!("error: {file}:8:11: hooks.deploy.timeout: "),
        format!("error: {file}:9:9: hooks.deploy.stdin: unknown variant `all`"),
    ];
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), expected.len(), "{stderr}");
    for (line, expected) in lines.iter().zip(&expected) {
        assert!(line.starts_with(expected), "{line}\nis not\n{expected}…");
    }
    assert!(output.stdout.is_empty(), "{}", both(&output));
}

#[test]
fn check_suggests_the_section_meant() {
    let dir = Dir::new();
    let config = dir.write_config("[hook.deploy]\ncommand = \"true\"\n");
    let output = check(&config);
    assert_eq!(output.status.code(), Some(1), "{}", both(&output));
    assert_eq!(
        text(&output.stderr),
        format!(
            "error: {}:1:2: unknown section `hook`, did you mean `hooks`?\n",
            config.display()
        )
    );
}

#[test]
fn check_without_a_config_names_the_flag_and_the_variable() {
    let dir = Dir::new();
    let mut command = cmqhook_command(&["check"]);
    command.current_dir(dir.path());
    let output = output_of(command, b"");
    assert_eq!(output.status.code(), Some(1), "{}", both(&output));
    assert_eq!(
        text(&output.stderr),
        "error: no config at ./hooks.toml (use -c FILE or CMQHOOK_CONFIG)\n"
    );
}

#[test]
fn check_and_serve_refuse_a_journal_in_a_missing_directory() {
    let dir = Dir::new();
    let config = dir.write_config(&config(
        "journal = \"state/cmqhook.db\"",
        "[hooks.x]\npath = \"/x\"\nargv = [\"true\"]",
    ));
    let checked = check(&config);
    assert_eq!(checked.status.code(), Some(1), "{}", both(&checked));
    let state = dir.file("state");
    assert_eq!(
        text(&checked.stderr),
        format!(
            "error: {}:3:11: server.journal: directory `{}` does not exist\n",
            config.display(),
            state.display()
        )
    );
    let serve = cmqhook(&["serve", "-c", config.to_str().expect("utf-8")], b"");
    assert_eq!(serve.status.code(), Some(1), "{}", both(&serve));
    assert_eq!(text(&serve.stderr), text(&checked.stderr));
    // Once the directory is there, all is well.
    std::fs::create_dir(&state).expect("create state");
    let checked = check(&config);
    assert_eq!(checked.status.code(), Some(0), "{}", both(&checked));
}

#[test]
fn check_warns_about_a_command_whose_program_is_not_found() {
    let dir = Dir::new();
    let config = dir.write_config(
        "[server]\njournal = \"off\"\n\n[hooks.typo]\npath = \"/t\"\ncommand = \"FOO=1 cmqhook-no-such-deploy --now\"\n\n[hooks.builtin]\npath = \"/b\"\ncommand = \"cd /tmp && exit 0\"\n",
    );
    let output = check(&config);
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));
    assert_eq!(
        text(&output.stderr),
        format!(
            "warning: {}:6:11: hooks.typo.command: program `cmqhook-no-such-deploy` not found on PATH: unless the shell defines it, every run fails (exit 127)\n",
            config.display()
        )
    );
}

#[test]
fn serve_listen_overrides_the_config() {
    let dir = Dir::new();
    // The config's address is taken: a server that used it could not start.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = taken.local_addr().expect("address");
    let wanted = free_addr();
    let server = Server::builder(&dir)
        .config(&format!(
            "[server]\nlisten = \"{taken}\"\n\n[hooks.x]\npath = \"/x\"\nargv = [\"true\"]\n"
        ))
        .listen(wanted)
        .start();
    assert_eq!(server.addr, wanted);
    assert_eq!(server.post("/x", &[], b"").status, 200);
    let listening = format!("listening on http://{wanted}");
    assert!(
        server.log_text().contains(&listening),
        "{}",
        server.log_text()
    );
}

/// The log of a server started with `flags` and `RUST_LOG` as given, that ran one push (whose
/// command printed a line) and was stopped. Its config has a catch-all hook, which `serve`
/// warns about when it starts.
fn log_of(flags: &[&str], rust_log: Option<&str>) -> String {
    let dir = Dir::new();
    let mut builder = Server::builder(&dir)
        .config(&config(
            "",
            "[hooks.say]\npath = \"/say\"\ncommand = 'echo said-by-the-hook'\n\n[hooks.everything]\nargv = [\"true\"]",
        ))
        .rust_log(rust_log)
        // The `listening on` line is info: the server may not say where it listens.
        .listen(free_addr());
    for flag in flags {
        builder = builder.arg(flag);
    }
    let mut server = builder.start();
    let response = server.post("/say", &[("x-cmq-message-id", "lv1")], b"x");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(server.stop(), Some(0));
    server.log_text()
}

/// The lines of a text log at `level` (`TIMESTAMP LEVEL TARGET: MESSAGE`).
fn at_level<'a>(log: &'a str, level: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|line| line.split_whitespace().nth(1) == Some(level))
        .collect()
}

/// Whether some line of `lines` holds every one of `needles`.
fn has_line(lines: &[&str], needles: &[&str]) -> bool {
    lines
        .iter()
        .any(|line| needles.iter().all(|needle| line.contains(needle)))
}

#[test]
fn serve_logs_at_info_by_default() {
    let log = log_of(&[], None);
    let info = at_level(&log, "INFO");
    assert!(has_line(&info, &["listening on"]), "{log}");
    assert!(
        has_line(&info, &["push", "msg_id=\"lv1\"", "status=200"]),
        "{log}"
    );
    assert!(
        has_line(&info, &["said-by-the-hook", "hook=\"say\""]),
        "{log}"
    );
    assert!(
        has_line(&at_level(&log, "WARN"), &["has no selector"]),
        "{log}"
    );
    assert!(at_level(&log, "DEBUG").is_empty(), "{log}");
}

#[test]
fn quiet_shows_warnings_only() {
    let log = log_of(&["-q"], None);
    assert!(
        has_line(&at_level(&log, "WARN"), &["has no selector"]),
        "{log}"
    );
    assert!(at_level(&log, "INFO").is_empty(), "{log}");
    assert!(at_level(&log, "DEBUG").is_empty(), "{log}");
    assert!(!log.contains("said-by-the-hook"), "{log}");
}

#[test]
fn verbose_adds_debug_lines_with_every_run_finished() {
    let log = log_of(&["-v"], None);
    // A run answered in time that succeeded has a line of its own only with -v (README).
    let debug = at_level(&log, "DEBUG");
    assert!(
        has_line(
            &debug,
            &["run finished", "hook=\"say\"", "outcome=\"succeeded\""]
        ),
        "{log}"
    );
    assert!(
        has_line(&at_level(&log, "INFO"), &["said-by-the-hook"]),
        "{log}"
    );
}

#[test]
fn rust_log_overrides_verbose_and_quiet() {
    let log = log_of(&["-q"], Some("debug"));
    assert!(
        has_line(&at_level(&log, "DEBUG"), &["run finished"]),
        "{log}"
    );
    assert!(
        has_line(&at_level(&log, "INFO"), &["said-by-the-hook"]),
        "{log}"
    );

    let log = log_of(&["-v"], Some("warn"));
    assert!(
        has_line(&at_level(&log, "WARN"), &["has no selector"]),
        "{log}"
    );
    assert!(at_level(&log, "INFO").is_empty(), "{log}");
    assert!(at_level(&log, "DEBUG").is_empty(), "{log}");
}

#[test]
fn quiet_still_shows_a_5xx_push_and_its_failed_run() {
    let dir = Dir::new();
    let mut server = Server::builder(&dir)
        .config(&config(
            "",
            "[hooks.fails]\npath = \"/fail\"\ncommand = 'exit 3'",
        ))
        .rust_log(None)
        .arg("-q")
        .listen(free_addr())
        .start();
    let response = server.post("/fail", &[("x-cmq-message-id", "q500")], b"x");
    assert_eq!(response.status, 500, "{}", response.text());
    assert_eq!(server.stop(), Some(0));
    let log = server.log_text();
    let warn = at_level(&log, "WARN");
    assert!(has_line(&warn, &["push", "q500", "status=500"]), "{log}");
    assert!(
        has_line(&warn, &["run finished", "q500", "outcome=\"failed\""]),
        "{log}"
    );
}

#[test]
fn a_404_push_line_names_what_the_push_carried_with_secrets_redacted() {
    let dir = Dir::new();
    let secret = "s3cret-path-0a9f";
    let mut server = Server::builder(&dir)
        .env("DEPLOY_SECRET", secret)
        .config(&config(
            "",
            "[hooks.deploy]\npath = \"/cmq/${DEPLOY_SECRET}\"\ntopic = \"deploy-*\"\nargv = [\"true\"]",
        ))
        .start();
    // MyTopic does not match deploy-*; the subscription carries the secret.
    let envelope = seed_envelope("nomatch1").replace("mysubscription", secret);
    let path = format!("/cmq/{secret}");
    let response = server.post(&path, &seed_headers("nomatch1"), envelope.as_bytes());
    assert_eq!(response.status, 404, "{}", response.text());
    assert_eq!(server.stop(), Some(0));
    let log = server.log_text();
    assert!(!log.contains(secret), "{log}");
    let info = at_level(&log, "INFO");
    let needles = [
        "msg_id=\"nomatch1\"",
        "request_id=\"2394928734\"",
        "path=\"/cmq/${DEPLOY_SECRET}\"",
        "format=\"json\"",
        "topic=\"MyTopic\"",
        "subscription=\"${DEPLOY_SECRET}\"",
        "tags=\"a,b\"",
        "status=404",
    ];
    assert!(has_line(&info, &needles), "{log}");
}

#[test]
fn text_logs_quote_free_text_and_skip_empty_output_lines() {
    let dir = Dir::new();
    let mut server = Server::builder(&dir)
        .config(&config(
            "",
            "[hooks.talks]\ncommand = 'printf \"one\\n\\n\\r\\ntwo\\n\"'",
        ))
        .start();
    // No request id: an empty value is still a quoted one.
    let response = server.post("/", &[("x-cmq-message-id", "q1")], b"x");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(server.stop(), Some(0));
    let log = server.log_text();
    assert!(
        has_line(
            &at_level(&log, "INFO"),
            &[
                "push",
                "msg_id=\"q1\"",
                "request_id=\"\"",
                "hooks=\"talks\"",
                "status=200"
            ]
        ),
        "{log}"
    );
    let output: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("cmqhook::output"))
        .collect();
    assert_eq!(output.len(), 2, "{log}");
    assert!(
        output[0].contains("output: one hook=\"talks\" msg_id=\"q1\""),
        "{log}"
    );
    assert!(output[1].contains("output: two "), "{log}");
}

#[test]
fn command_errors_are_one_error_line_naming_the_thing_and_exit_1() {
    let dir = Dir::new();
    let config = dir.write_config(
        "[server]\njournal = \"off\"\n\n[hooks.x]\npath = \"/x\"\nargv = [\"true\"]\n",
    );
    let config = config.to_str().expect("utf-8");
    let missing_body = dir.path().join("no-such-body");
    for (args, says) in [
        (vec!["history", "-c", config], "set `journal` in [server]"),
        (
            vec![
                "run",
                "-c",
                config,
                "--body-file",
                missing_body.to_str().expect("utf-8"),
            ],
            "no-such-body",
        ),
    ] {
        let output = cmqhook(&args, b"");
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let stderr = text(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
}

#[test]
fn send_header_without_a_colon_is_a_usage_error() {
    let output = cmqhook(&["send", "http://127.0.0.1:9/", "--header", "X-Token"], b"");
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("`X-Token` has no colon"), "{stderr}");
    assert!(stderr.contains("--header"), "{stderr}");
}

/// Hooks with one failing selector each, and one catching `/q`, for `route --explain`.
const EXPLAINED: &str = r#"[server]
journal = "off"

[hooks.deploy]
topic = "deploy-*"
argv = ["true"]

[hooks.tagged]
tags = ["x"]
argv = ["true"]

[hooks.pathy]
path = "/p"
argv = ["true"]

[hooks.secret]
path = "/cmq/${EXPLAIN_SECRET}"
argv = ["true"]

[hooks.caught]
path = "/q"
argv = ["true"]
"#;

/// `cmqhook route -c CONFIG ARGS` with the secret `EXPLAINED` takes from the environment.
fn route(config: &std::path::Path, args: &[&str]) -> Output {
    let mut all = vec!["route", "-c", config.to_str().expect("utf-8")];
    all.extend_from_slice(args);
    let mut command = cmqhook_command(&all);
    command.env("EXPLAIN_SECRET", "s3cr3t-path-part");
    output_of(command, b"")
}

/// Asserts that `output` exited with `code` and that its stderr holds each of `says`; returns
/// its stdout.
fn exited(output: &Output, code: i32, says: &[&str]) -> String {
    assert_eq!(output.status.code(), Some(code), "{}", both(output));
    let stderr = text(&output.stderr);
    for needle in says {
        assert!(
            stderr.contains(needle),
            "no {needle:?} in: {}",
            both(output)
        );
    }
    text(&output.stdout)
}

#[test]
fn route_explain_says_for_every_hook_why_it_does_not_match() {
    let dir = Dir::new();
    let config = dir.write_config(EXPLAINED);
    let json = ["--path", "/q", "--topic", "build", "--subscription", "s"];
    let output = route(&config, &[&json[..], &["--tag", "y", "--explain"]].concat());
    let stdout = exited(&output, 0, &[]);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            r#"deploy: topic "build" does not match "deploy-*""#,
            "tagged: tags [y] carry none of [x]",
            r#"pathy: path "/q" is not "/p""#,
            r#"secret: path "/q" is not "/cmq/${EXPLAIN_SECRET}""#,
            "caught: matches",
        ],
        "{}",
        both(&output)
    );
    assert!(!both(&output).contains("s3cr3t"), "{}", both(&output));

    // SIMPLIFIED (no --topic): a topic selector cannot match.
    let output = route(&config, &["--explain", "--path", "/nowhere", "--tag", "x"]);
    let stdout = exited(&output, 0, &[]);
    let deploy = stdout.lines().next().unwrap_or_default();
    assert!(
        deploy.starts_with("deploy: ") && deploy.contains("has no topic (SIMPLIFIED)"),
        "{stdout}"
    );
    assert!(stdout.contains("tagged: matches"), "{stdout}");

    // Nothing matches: exit 1, as `route`.
    let output = route(&config, &["--explain", "--path", "/nowhere"]);
    let stdout = exited(&output, 1, &["no hook matches"]);
    assert_eq!(stdout.lines().count(), 5, "{stdout}");
    assert!(!stdout.contains(": matches"), "{stdout}");
}

#[test]
fn route_without_a_match_says_so_naming_what_the_push_carried() {
    let dir = Dir::new();
    let config = dir.write_config(EXPLAINED);
    let json = [
        "--path",
        "/nowhere",
        "--topic",
        "build",
        "--subscription",
        "s",
    ];
    let output = route(&config, &[&json[..], &["--tag", "y"]].concat());
    let carried = [
        "no hook matches",
        r#"path "/nowhere""#,
        r#"topic "build""#,
        r#"subscription "s""#,
        "tags [y]",
        "--explain",
    ];
    assert_eq!(exited(&output, 1, &carried), "");
    assert_eq!(text(&output.stderr).lines().count(), 1, "{}", both(&output));
    let output = route(&config, &["--path", "/nowhere"]);
    exited(&output, 1, &["no hook matches", "SIMPLIFIED", "no tags"]);
    // A match prints the hooks only.
    let output = route(&config, &["--path", "/q"]);
    assert_eq!(exited(&output, 0, &[]), "caught\n");
    assert!(output.stderr.is_empty(), "{}", both(&output));
}

#[test]
fn history_before_the_first_delivery_says_so_and_exits_0() {
    let dir = Dir::new();
    let config = dir.write_config("[hooks.x]\npath = \"/x\"\nargv = [\"true\"]\n");
    let config = config.to_str().expect("utf-8");
    for json in [&[][..], &["--json"]] {
        let output = cmqhook(&[&["history", "-c", config][..], json].concat(), b"");
        assert_eq!(exited(&output, 0, &["no deliveries yet"]), "");
    }
    // Looking creates nothing.
    assert!(!dir.file("cmqhook.db").exists());

    let off = dir.write_config("[server]\njournal = \"off\"\n");
    let output = cmqhook(&["history", "-c", off.to_str().expect("utf-8")], b"");
    exited(&output, 1, &["journal is off", "to turn it on"]);
}

#[test]
fn init_writes_a_starter_config_that_check_accepts_and_never_overwrites() {
    let dir = Dir::new();
    // The default is ./hooks.toml.
    let init = || {
        let mut command = cmqhook_command(&["init"]);
        command.current_dir(dir.path());
        output_of(command, b"")
    };
    exited(&init(), 0, &[]);
    let written = std::fs::read_to_string(dir.file("hooks.toml")).expect("hooks.toml written");
    assert!(
        written.lines().any(|line| line.starts_with('#')),
        "{written}"
    );
    let config = dir.file("hooks.toml");
    let config = config.to_str().expect("utf-8");
    let check = cmqhook(&["check", "-c", config], b"");
    exited(&check, 0, &[]);
    assert!(check.stderr.is_empty(), "no warnings: {}", both(&check));
    // Its hook runs as it is: no program is missing.
    let run = cmqhook(&["run", "-c", config, "--path", "/cmq/echo"], b"hello");
    assert!(exited(&run, 0, &[]).contains("echo: succeeded"));

    // Never overwrites, the default file or a named one.
    exited(&init(), 1, &["already exists"]);
    let now = std::fs::read_to_string(dir.file("hooks.toml")).expect("read");
    assert_eq!(now, written);
    let mine = dir.file("mine.toml");
    std::fs::write(&mine, "# my own\n").expect("write");
    let output = cmqhook(&["init", mine.to_str().expect("utf-8")], b"");
    exited(&output, 1, &["mine.toml", "already exists"]);
    assert_eq!(std::fs::read_to_string(&mine).expect("read"), "# my own\n");
}

#[test]
fn completions_for_bash_zsh_and_fish_cover_every_command() {
    let commands = [
        "serve",
        "route",
        "history",
        "init",
        "completions",
        "explain",
    ];
    for shell in ["bash", "zsh", "fish"] {
        let script = exited(&cmqhook(&["completions", shell], b""), 0, &[]);
        for command in commands {
            assert!(script.contains(command), "{shell}: no {command}:\n{script}");
        }
    }
    exited(&cmqhook(&["completions", "tcsh"], b""), 2, &["tcsh"]);
}

#[test]
fn man_prints_roff_pages_for_cmqhook_and_its_commands() {
    for (args, title, mentions) in [
        (&["man"][..], ".TH cmqhook 1", "route"),
        (&["man", "route"], ".TH cmqhook-route 1", r"\-\-explain"),
    ] {
        let page = exited(&cmqhook(args, b""), 0, &[]);
        assert!(page.lines().any(|line| line.starts_with(title)), "{page}");
        assert!(
            page.contains(".SH NAME") && page.contains(mentions),
            "{page}"
        );
    }
    exited(&cmqhook(&["man", "nope"], b""), 2, &["no command `nope`"]);
}

#[test]
fn serve_listens_on_a_host_name_in_the_config_or_the_flag() {
    let dir = Dir::new();
    let hook = "[hooks.x]\npath = \"/x\"\nargv = [\"true\"]\n";
    for in_config in [true, false] {
        let port = free_addr().port();
        let host_port = format!("localhost:{port}");
        let builder = Server::builder(&dir);
        let builder = if in_config {
            builder.config(&format!("[server]\nlisten = \"{host_port}\"\n\n{hook}"))
        } else {
            builder
                .config(&config("", hook))
                .arg("--listen")
                .arg(&host_port)
        };
        let mut server = builder.start();
        let ipv4 = SocketAddr::from(([127, 0, 0, 1], port));
        let status = post(ipv4, "/x", &[], b"").status;
        assert_eq!(status, 200, "{host_port}: {}", server.log_text());
        assert_eq!(server.stop(), Some(0));
    }
}

#[test]
fn a_bad_listen_shows_the_expected_form() {
    let output = cmqhook(&["serve", "--listen", "bad"], b"");
    exited(&output, 2, &["--listen", "HOST:PORT", "`localhost:9000`"]);
    let dir = Dir::new();
    let config = dir.write_config("[server]\nlisten = \"9000\"\n");
    let output = cmqhook(&["check", "-c", config.to_str().expect("utf-8")], b"");
    exited(&output, 1, &["server.listen", "`9000`", "`127.0.0.1:9000`"]);
}

#[test]
fn route_hides_a_secret_that_escaping_would_respell() {
    let dir = Dir::new();
    let config = dir.write_config(EXPLAINED);
    // A quote and a backslash are escaped when quoted: the secret must be hidden first.
    let secret = r#"s3"cr\3t-part"#;
    let run = |args: &[&str]| {
        let mut all = vec!["route", "-c", config.to_str().expect("utf-8")];
        all.extend_from_slice(args);
        let mut command = cmqhook_command(&all);
        command.env("EXPLAIN_SECRET", secret);
        output_of(command, b"")
    };
    let explained = run(&["--path", "/q", "--explain"]);
    assert!(
        both(&explained).contains(r#"secret: path "/q" is not "/cmq/${EXPLAIN_SECRET}""#),
        "{}",
        both(&explained)
    );
    let pushed = format!("/cmq/{secret}/other");
    let unmatched = run(&["--path", &pushed, "--topic", "t", "--subscription", "s"]);
    for output in [&explained, &unmatched] {
        let shown = both(output);
        assert!(!shown.contains("s3") && !shown.contains("cr\\"), "{shown}");
    }
    assert!(
        both(&unmatched).contains(r#"path "/cmq/${EXPLAIN_SECRET}/other""#),
        "{}",
        both(&unmatched)
    );
}
