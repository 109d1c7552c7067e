//! `cmqhook check` and the start-up of `serve`, through the built binary.

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
fn the_example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/hooks.example.toml");
    let output = cmqhook(&["check", "-c", example], b"");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
}
