//! Config loading, end to end: `Config::parse` on text, every error at its line and column.

use super::*;

const FILE: &str = "/some/dir/hooks.toml";

/// The environment the tests see: no real variables are read.
fn env(name: &str) -> Option<String> {
    let value = match name {
        "CMQHOOK_TOKEN" => "tok-7f3a9c",
        "DEPLOY_SECRET" => "d3pl0y-s3cr3t",
        "LISTEN_HOST" => "127.0.0.2",
        "LISTEN_PORT" => "9100",
        "BAD_LISTEN" => "hunter2-is-no-address",
        "INNER" => "ab12",
        "OUTER" => "xx-ab12-yy",
        "EMPTY" => "",
        _ => return None,
    };
    Some(value.to_owned())
}

fn parse(text: &str) -> Config {
    parse_at(Path::new(FILE), text)
}

fn parse_at(file: &Path, text: &str) -> Config {
    match Config::parse(file, text, env) {
        Ok(config) => config,
        Err(err) => panic!("expected a valid config, got:\n{err}"),
    }
}

fn diagnostics(text: &str) -> Vec<Diagnostic> {
    match Config::parse(Path::new(FILE), text, env) {
        Ok(config) => panic!("expected errors, got {config:?}"),
        Err(ConfigError::Invalid(diagnostics)) => diagnostics,
        Err(err) => panic!("expected ConfigError::Invalid, got {err:?}"),
    }
}

/// The single diagnostic of `text`, checked to be at `line:column` and to mention `needles`.
fn one_error(text: &str, line: usize, column: usize, needles: &[&str]) -> Diagnostic {
    let diagnostics = diagnostics(text);
    assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
    let diagnostic = diagnostics.into_iter().next().expect("length checked");
    assert_at(&diagnostic, line, column, needles);
    diagnostic
}

fn assert_at(diagnostic: &Diagnostic, line: usize, column: usize, needles: &[&str]) {
    assert_at_file(diagnostic, Path::new(FILE), (line, column), needles);
}

fn assert_at_file(
    diagnostic: &Diagnostic,
    file: &Path,
    (line, column): (usize, usize),
    needles: &[&str],
) {
    assert_eq!(diagnostic.file, file.display().to_string(), "{diagnostic}");
    assert_eq!(
        (diagnostic.line, diagnostic.column),
        (line, column),
        "{diagnostic}"
    );
    for needle in needles {
        assert!(
            diagnostic.message.contains(needle),
            "`{needle}` not in: {diagnostic}"
        );
    }
}

fn hook<'a>(config: &'a Config, name: &str) -> &'a Hook {
    config
        .hooks
        .iter()
        .map(AsRef::as_ref)
        .find(|hook| hook.name == name)
        .unwrap_or_else(|| panic!("no hook `{name}`"))
}

fn env_of(hook: &Hook) -> Vec<(&str, &str)> {
    hook.env
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect()
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temporary directory can be created")
}

const FULL: &str = r#"
[server]
listen = "0.0.0.0:9100"
format = "json"
max_body = "8 MiB"
max_running = 8
respond_within = "500ms"
unmatched = "ack"
journal = "state/journal.db"
dedup_for = "25h"
shutdown_grace = "45s"
token = "${CMQHOOK_TOKEN}"
allow = ["10.0.0.0/8", "192.168.1.7", "::1", "fd00::/8"]
trusted_proxies = ["127.0.0.1", "172.16.0.0/12"]

[defaults]
timeout = "5m"
kill_grace = "2s"
stdin = "envelope"
concurrency = 2
queue = 4
workdir = "work"
env = { SHARED = "1", DEPLOY_ENV = "default" }

[hooks.deploy-web]
path = "/cmq/${DEPLOY_SECRET}"
topic = "deploy"
subscription = "web-*"
tags = ["web", "all"]
command = "./scripts/deploy.sh prod"
workdir = "."
env = { DEPLOY_ENV = "prod", EXTRA = "x" }
stdin = "body"
timeout = "10m"
kill_grace = "5s"
concurrency = 0
queue = 16

[hooks.notify]
argv = ["./run.sh", "--quiet"]
"#;

#[test]
fn a_full_config_gives_typed_values() {
    let dir = tempdir();
    std::fs::create_dir(dir.path().join("work")).expect("create work");
    std::fs::write(dir.path().join("work/run.sh"), "#!/bin/sh\n").expect("write run.sh");
    let config = parse_at(&dir.path().join("hooks.toml"), FULL);

    assert_eq!(config.file, dir.path().join("hooks.toml"));
    let server = &config.server;
    assert_eq!(
        server.listen,
        "0.0.0.0:9100".parse::<Listen>().expect("valid")
    );
    assert_eq!(server.format, FormatSetting::Json);
    assert_eq!(server.max_body, 8 * 1024 * 1024);
    assert_eq!(server.max_running, 8);
    assert_eq!(server.respond_within, Duration::from_millis(500));
    assert_eq!(server.unmatched, Unmatched::Ack);
    assert_eq!(
        server.journal.as_deref(),
        Some(dir.path().join("state/journal.db").as_path())
    );
    assert_eq!(server.dedup_for, Duration::from_secs(25 * 3600));
    assert_eq!(server.shutdown_grace, Duration::from_secs(45));
    assert_eq!(server.token.as_deref(), Some("tok-7f3a9c"));
    let nets = |list: &[&str]| -> Vec<IpNet> {
        list.iter()
            .map(|net| net.parse().expect("valid CIDR"))
            .collect()
    };
    assert_eq!(
        server.allow,
        nets(&["10.0.0.0/8", "192.168.1.7/32", "::1/128", "fd00::/8"])
    );
    assert_eq!(
        server.trusted_proxies,
        nets(&["127.0.0.1/32", "172.16.0.0/12"])
    );

    let names: Vec<&str> = config.hooks.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["deploy-web", "notify"]);

    let web = hook(&config, "deploy-web");
    assert_eq!(web.selector.path.as_deref(), Some("/cmq/d3pl0y-s3cr3t"));
    assert_eq!(web.path_shown.as_deref(), Some("/cmq/${DEPLOY_SECRET}"));
    let topic = web.selector.topic.as_ref().expect("topic selector");
    assert!(topic.matches("deploy") && !topic.matches("deploy2"));
    let sub = web.selector.subscription.as_ref().expect("subscription");
    assert!(sub.matches("web-1") && !sub.matches("api-1"));
    assert_eq!(
        web.selector.tags.as_deref(),
        Some(&["web".to_owned(), "all".to_owned()][..])
    );
    assert_eq!(web.action, Action::Shell("./scripts/deploy.sh prod".into()));
    assert_eq!(&*web.workdir, dir.path());
    assert_eq!(
        env_of(web),
        [("SHARED", "1"), ("DEPLOY_ENV", "prod"), ("EXTRA", "x")]
    );
    assert_eq!(web.stdin, StdinMode::Body);
    assert_eq!(web.timeout, Duration::from_secs(600));
    assert_eq!(web.kill_grace, Duration::from_secs(5));
    assert_eq!(web.concurrency, 0);
    assert_eq!(web.queue, 16);

    // Everything from [defaults].
    let notify = hook(&config, "notify");
    assert!(notify.selector.is_empty());
    assert_eq!(notify.path_shown, None);
    assert_eq!(
        notify.action,
        Action::Argv(vec!["./run.sh".to_owned(), "--quiet".to_owned()].into())
    );
    assert_eq!(&*notify.workdir, dir.path().join("work"));
    assert_eq!(env_of(notify), [("SHARED", "1"), ("DEPLOY_ENV", "default")]);
    assert_eq!(notify.stdin, StdinMode::Envelope);
    assert_eq!(notify.timeout, Duration::from_secs(300));
    assert_eq!(notify.kill_grace, Duration::from_secs(2));
    assert_eq!(notify.concurrency, 2);
    assert_eq!(notify.queue, 4);
}

#[test]
fn an_empty_config_gets_the_documented_defaults() {
    let config = parse("");
    let server = &config.server;
    assert_eq!(
        server.listen,
        "127.0.0.1:9000".parse::<Listen>().expect("valid")
    );
    assert_eq!(server.format, FormatSetting::Auto);
    assert_eq!(server.max_body, 8 * 1024 * 1024);
    assert_eq!(server.max_running, 64);
    assert_eq!(server.respond_within, Duration::from_secs(10));
    assert_eq!(server.unmatched, Unmatched::Reject);
    assert_eq!(
        server.journal.as_deref(),
        Some(Path::new("/some/dir/cmqhook.db"))
    );
    assert_eq!(server.dedup_for, Duration::from_secs(25 * 3600));
    assert_eq!(server.shutdown_grace, Duration::from_secs(30));
    assert_eq!(server.token, None);
    assert!(server.allow.is_empty());
    assert!(server.trusted_proxies.is_empty());
    assert!(config.hooks.is_empty());
    assert_eq!(config.warnings().len(), 1, "{:?}", config.warnings());
    assert!(config.warnings()[0].contains("no hooks"));
}

#[test]
fn a_hook_gets_the_documented_defaults() {
    let config = parse("[hooks.a]\ncommand = \"true\"\n");
    let a = hook(&config, "a");
    assert_eq!(a.action, Action::Shell("true".into()));
    assert_eq!(&*a.workdir, Path::new("/some/dir"));
    assert!(a.env.is_empty());
    assert_eq!(a.stdin, StdinMode::Body);
    assert_eq!(a.timeout, Duration::from_secs(300));
    assert_eq!(a.kill_grace, Duration::from_secs(5));
    assert_eq!(a.concurrency, 0);
    assert_eq!(a.queue, 16);
}

#[test]
fn max_body_takes_a_human_size_or_an_integer() {
    let size = |text: &str| {
        parse(&format!("[server]\nmax_body = {text}\n"))
            .server
            .max_body
    };
    assert_eq!(size("\"8 MiB\""), 8 * 1024 * 1024);
    assert_eq!(size("\"1 MB\""), 1_000_000);
    assert_eq!(size("\"512 KiB\""), 512 * 1024);
    assert_eq!(size("1048576"), 1_048_576);
    assert_eq!(size("0"), 0);
}

#[test]
fn format_and_unmatched_take_every_documented_value() {
    let format = |text: &str| {
        parse(&format!("[server]\nformat = \"{text}\"\n"))
            .server
            .format
    };
    assert_eq!(format("auto"), FormatSetting::Auto);
    assert_eq!(format("json"), FormatSetting::Json);
    assert_eq!(format("simplified"), FormatSetting::Simplified);
    let unmatched = |text: &str| {
        parse(&format!("[server]\nunmatched = \"{text}\"\n"))
            .server
            .unmatched
    };
    assert_eq!(unmatched("reject"), Unmatched::Reject);
    assert_eq!(unmatched("ack"), Unmatched::Ack);
    let stdin = |text: &str| {
        let config = parse(&format!("[hooks.a]\ncommand = \"x\"\nstdin = \"{text}\"\n"));
        hook(&config, "a").stdin
    };
    assert_eq!(stdin("body"), StdinMode::Body);
    assert_eq!(stdin("envelope"), StdinMode::Envelope);
    assert_eq!(stdin("none"), StdinMode::None);
}

#[test]
fn journal_off_disables_it_and_a_path_is_relative_to_the_config_dir() {
    let journal = |text: &str| {
        parse(&format!("[server]\njournal = {text}\n"))
            .server
            .journal
    };
    assert_eq!(journal("\"off\""), None);
    assert_eq!(
        journal("\"db/j.sqlite\""),
        Some(PathBuf::from("/some/dir/db/j.sqlite"))
    );
    assert_eq!(
        journal("\"/var/lib/cmqhook/j.db\""),
        Some(PathBuf::from("/var/lib/cmqhook/j.db"))
    );
}

#[test]
fn hooks_keep_file_order() {
    let text = r#"
[hooks.zulu]
command = "true"
[hooks.alpha]
command = "true"
[server]
max_running = 2
[hooks.mike]
command = "true"
[hooks.bravo]
command = "true"
"#;
    let config = parse(text);
    let names: Vec<&str> = config.hooks.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["zulu", "alpha", "mike", "bravo"]);
}

#[test]
fn defaults_apply_and_a_hook_overrides_them() {
    let text = r#"
[defaults]
command = "echo default"
timeout = "1m"
kill_grace = "1s"
stdin = "none"
concurrency = 3
queue = 7
env = { A = "from-defaults", B = "from-defaults" }

[hooks.inherits]
topic = "t"

[hooks.overrides]
argv = ["/bin/true"]
timeout = "90s"
kill_grace = "250ms"
stdin = "envelope"
concurrency = 1
queue = 0
env = { B = "from-hook", C = "from-hook" }
"#;
    let config = parse(text);
    let inherits = hook(&config, "inherits");
    assert_eq!(inherits.action, Action::Shell("echo default".into()));
    assert_eq!(inherits.timeout, Duration::from_secs(60));
    assert_eq!(inherits.kill_grace, Duration::from_secs(1));
    assert_eq!(inherits.stdin, StdinMode::None);
    assert_eq!(inherits.concurrency, 3);
    assert_eq!(inherits.queue, 7);
    assert_eq!(
        env_of(inherits),
        [("A", "from-defaults"), ("B", "from-defaults")]
    );

    // `argv` in the hook replaces the default `command`, not a conflict.
    let overrides = hook(&config, "overrides");
    assert_eq!(
        overrides.action,
        Action::Argv(vec!["/bin/true".to_owned()].into())
    );
    assert_eq!(overrides.timeout, Duration::from_secs(90));
    assert_eq!(overrides.kill_grace, Duration::from_millis(250));
    assert_eq!(overrides.stdin, StdinMode::Envelope);
    assert_eq!(overrides.concurrency, 1);
    assert_eq!(overrides.queue, 0);
    let mut env = env_of(overrides);
    env.sort_unstable();
    assert_eq!(
        env,
        [
            ("A", "from-defaults"),
            ("B", "from-hook"),
            ("C", "from-hook")
        ]
    );
}

#[test]
fn a_relative_workdir_resolves_against_the_config_dir() {
    let dir = tempdir();
    std::fs::create_dir_all(dir.path().join("jobs/bin")).expect("create jobs/bin");
    std::fs::write(dir.path().join("jobs/bin/go"), "").expect("write go");
    let text = r#"
[hooks.rel]
workdir = "jobs"
argv = ["bin/go", "now"]
[hooks.abs]
workdir = "/"
argv = ["bin/true"]
[hooks.path]
argv = ["true"]
"#;
    let config = parse_at(&dir.path().join("hooks.toml"), text);
    assert_eq!(&*hook(&config, "rel").workdir, dir.path().join("jobs"));
    assert_eq!(&*hook(&config, "abs").workdir, Path::new("/"));
    assert_eq!(&*hook(&config, "path").workdir, dir.path());
}

#[test]
fn an_unknown_key_in_a_hook_is_an_error() {
    one_error(
        "[hooks.deploy]\ncommand = \"true\"\ncomand = \"x\"\n",
        3,
        1,
        &["hooks.deploy.comand", "unknown field"],
    );
}

#[test]
fn an_unknown_key_in_server_is_an_error() {
    one_error(
        "[server]\nlisten = \"127.0.0.1:1\"\n  max_bodyy = 5\n",
        3,
        3,
        &["server.max_bodyy", "unknown field"],
    );
}

#[test]
fn an_unknown_key_in_defaults_is_an_error() {
    one_error(
        "[defaults]\ntimeout = \"1s\"\nretries = 3\n",
        3,
        1,
        &["defaults.retries", "unknown field"],
    );
}

#[test]
fn an_unknown_top_level_section_is_an_error() {
    one_error(
        "[server]\n\n[hook.deploy]\ncommand = \"true\"\n",
        3,
        2,
        &["`hook`", "unknown section"],
    );
    one_error("verbose = true\n", 1, 1, &["`verbose`", "unknown section"]);
}

#[test]
fn a_bad_duration_is_an_error() {
    one_error(
        "[hooks.deploy]\ncommand = \"true\"\ntimeout = \"5 parsecs\"\n",
        3,
        11,
        &["hooks.deploy.timeout", "5 parsecs"],
    );
    one_error(
        "[server]\nrespond_within = 10\n",
        2,
        18,
        &["server.respond_within"],
    );
}

#[test]
fn a_bad_size_is_an_error() {
    one_error(
        "[server]\nmax_body = \"8 parsecs\"\n",
        2,
        12,
        &["server.max_body"],
    );
    one_error("[server]\nmax_body = -1\n", 2, 12, &["server.max_body"]);
}

#[test]
fn a_bad_enum_value_is_an_error() {
    one_error(
        "[server]\nformat = \"xml\"\n",
        2,
        10,
        &["server.format", "xml"],
    );
    one_error(
        "[server]\nunmatched = \"drop\"\n",
        2,
        13,
        &["server.unmatched", "drop"],
    );
    one_error(
        "[hooks.a]\ncommand = \"x\"\nstdin = \"all\"\n",
        3,
        9,
        &["hooks.a.stdin", "all"],
    );
}

#[test]
fn a_bad_glob_is_an_error() {
    one_error(
        "[hooks.deploy]\ncommand = \"true\"\ntopic = \"deploy-[\"\n",
        3,
        9,
        &["hooks.deploy.topic", "invalid glob"],
    );
    one_error(
        "[hooks.deploy]\ncommand = \"true\"\nsubscription = \"web-[z-a]\"\n",
        3,
        16,
        &["hooks.deploy.subscription", "invalid glob"],
    );
}

#[test]
fn command_and_argv_together_are_an_error() {
    one_error(
        "[hooks.deploy]\ncommand = \"true\"\nargv = [\"/bin/true\"]\n",
        3,
        8,
        &["hooks.deploy.argv", "not both"],
    );
}

#[test]
fn a_hook_without_command_or_argv_is_an_error() {
    one_error(
        "[server]\n\n[hooks.deploy]\ntopic = \"t\"\n",
        3,
        1,
        &["hooks.deploy", "`command` or `argv`"],
    );
}

#[test]
fn an_empty_argv_or_command_is_an_error() {
    one_error(
        "[hooks.deploy]\nargv = []\n",
        2,
        8,
        &["hooks.deploy.argv", "must not be empty"],
    );
    one_error(
        "[hooks.deploy]\ncommand = \"  \"\n",
        2,
        11,
        &["hooks.deploy.command", "must not be empty"],
    );
}

#[test]
fn a_program_that_cannot_be_found_is_an_error() {
    one_error(
        "[hooks.deploy]\nargv = [\"cmqhook-no-such-program\"]\n",
        2,
        8,
        &["hooks.deploy.argv", "cmqhook-no-such-program", "not found"],
    );
    one_error(
        "[hooks.deploy]\nargv = [\"./missing.sh\"]\nworkdir = \"/\"\n",
        2,
        8,
        &["hooks.deploy.argv", "./missing.sh", "not found"],
    );
}

#[test]
fn a_missing_workdir_is_an_error() {
    one_error(
        "[hooks.deploy]\ncommand = \"true\"\nworkdir = \"no-such-dir\"\n",
        3,
        11,
        &["hooks.deploy.workdir", "/some/dir/no-such-dir"],
    );
}

#[test]
fn a_missing_default_workdir_is_reported_at_defaults() {
    let diagnostics = diagnostics(
        "[defaults]\nworkdir = \"gone\"\n\
         [hooks.a]\ncommand = \"x\"\n[hooks.b]\ncommand = \"y\"\n",
    );
    assert_eq!(diagnostics.len(), 2, "{diagnostics:#?}");
    assert_at(&diagnostics[0], 2, 11, &["hooks.a.workdir"]);
    assert_at(&diagnostics[1], 2, 11, &["hooks.b.workdir"]);
}

#[test]
fn empty_tags_are_an_error() {
    one_error(
        "[hooks.deploy]\ncommand = \"true\"\ntags = []\n",
        3,
        8,
        &["hooks.deploy.tags", "at least one tag"],
    );
    one_error(
        "[hooks.deploy]\ncommand = \"true\"\ntags = [\"\", \" \"]\n",
        3,
        8,
        &["hooks.deploy.tags"],
    );
}

#[test]
fn a_path_must_start_with_a_slash() {
    one_error(
        "[hooks.deploy]\ncommand = \"true\"\npath = \"cmq/deploy\"\n",
        3,
        8,
        &["hooks.deploy.path", "must start with `/`"],
    );
}

#[test]
fn a_selector_in_defaults_is_an_error() {
    let text = "[defaults]\ntimeout = \"1m\"\ntopic = \"t\"\ntags = [\"a\"]\n\
                [hooks.a]\ncommand = \"x\"\n";
    let diagnostics = diagnostics(text);
    assert_eq!(diagnostics.len(), 2, "{diagnostics:#?}");
    assert_at(&diagnostics[0], 3, 9, &["defaults.topic", "selector"]);
    assert_at(&diagnostics[1], 4, 8, &["defaults.tags", "selector"]);
    for (selector, column) in [("path = \"/x\"", 8), ("subscription = \"s\"", 16)] {
        let diagnostic = one_error(&format!("[defaults]\n{selector}\n"), 2, column, &[]);
        let key = selector.split(' ').next().expect("a key");
        assert!(diagnostic.message.contains(&format!("defaults.{key}")));
    }
}

#[test]
fn from_queue_with_a_selector_only_pushes_have_is_an_error() {
    for (selector, name) in [
        ("path = \"/cmq\"", "path"),
        ("topic = \"t\"", "topic"),
        ("subscription = \"s\"", "subscription"),
    ] {
        one_error(
            &format!("[hooks.deploy]\ncommand = \"true\"\n{selector}\nfrom_queue = \"deploys\"\n"),
            4,
            14,
            &["hooks.deploy.from_queue", &format!("has no {name}")],
        );
    }
    one_error(
        "[hooks.deploy]\ncommand = \"true\"\nfrom_queue = \" \"\n",
        3,
        14,
        &["hooks.deploy.from_queue", "must name a [[queue]]"],
    );
    one_error(
        "[defaults]\nfrom_queue = \"deploys\"\n",
        2,
        14,
        &["defaults.from_queue", "selector"],
    );
}

const DEPLOYS_QUEUE: &str = "[[queue]]\nname = \"deploys\"\nendpoint = \"http://127.0.0.1:1\"\n\
                             secret_id = \"id\"\nsecret_key = \"literal-key\"\n";

#[test]
fn from_queue_must_name_a_queue_of_the_file() {
    let builds = "[hooks.deploy]\ncommand = \"true\"\nfrom_queue = \"builds\"\n";
    one_error(
        builds,
        3,
        14,
        &[
            "hooks.deploy.from_queue",
            "no [[queue]] is named `builds`",
            "no [[queue]] table",
        ],
    );
    one_error(
        &format!("{builds}{DEPLOYS_QUEUE}"),
        3,
        14,
        &["no [[queue]] is named `builds` (queues: deploys)"],
    );
    let config = parse(&format!(
        "[hooks.deploy]\ncommand = \"true\"\nfrom_queue = \"deploys\"\n{DEPLOYS_QUEUE}"
    ));
    assert_eq!(
        hook(&config, "deploy").selector.from_queue.as_deref(),
        Some("deploys")
    );
}

#[test]
fn an_exit_hook_fed_by_a_queue_is_warned_that_a_failure_is_lost_after_the_retention() {
    let exit = parse(&format!(
        "[hooks.deploy]\ncommand = \"true\"\nfrom_queue = \"deploys\"\n{DEPLOYS_QUEUE}"
    ));
    let warnings = exit.warnings();
    let warning = warnings
        .iter()
        .find(|warning| warning.contains("retention"))
        .unwrap_or_else(|| panic!("{warnings:#?}"));
    assert!(
        warning.starts_with(&format!("{FILE}:3:14: hooks.deploy.from_queue"))
            && warning.contains("ack = \"stored\""),
        "{warning}"
    );
    // Nor is it told about respond_within: a queue message waits for its run.
    let long = parse(&format!(
        "[hooks.deploy]\ncommand = \"true\"\ntimeout = \"1h\"\nfrom_queue = \"deploys\"\n{DEPLOYS_QUEUE}"
    ));
    assert!(
        !long.warnings().iter().any(|w| w.contains("respond_within")),
        "{:#?}",
        long.warnings()
    );
    let stored = parse(&format!(
        "[hooks.deploy]\ncommand = \"true\"\nack = \"stored\"\nfrom_queue = \"deploys\"\n{DEPLOYS_QUEUE}"
    ));
    assert!(
        !stored.warnings().iter().any(|w| w.contains("retention")),
        "{:#?}",
        stored.warnings()
    );
}

#[test]
fn max_running_zero_is_an_error() {
    one_error(
        "[server]\nmax_running = 0\n",
        2,
        15,
        &["server.max_running", "at least 1"],
    );
}

#[test]
fn a_bad_cidr_is_an_error() {
    let diagnostics = diagnostics(
        "[server]\nallow = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n\
         trusted_proxies = [\"proxy.local\"]\n",
    );
    assert_eq!(diagnostics.len(), 2, "{diagnostics:#?}");
    assert_at(&diagnostics[0], 2, 24, &["server.allow", "10.0.0.0/33"]);
    assert_at(
        &diagnostics[1],
        3,
        20,
        &["server.trusted_proxies", "proxy.local"],
    );
}

#[test]
fn a_bad_listen_is_an_error() {
    one_error(
        "[server]\nlisten = \"local host:9000\"\n",
        2,
        10,
        &["server.listen", "local host:9000", "e.g. `127.0.0.1:9000`"],
    );
    one_error(
        "[server]\nlisten = \"127.0.0.1\"\n",
        2,
        10,
        &["server.listen"],
    );
}

#[test]
fn listen_takes_a_host_name_and_port() {
    let not_loopback = |config: &Config| {
        config
            .warnings()
            .iter()
            .any(|warning| warning.contains("is not loopback"))
    };
    let hook = "[hooks.a]\ncommand = \"true\"\n";
    let config = parse(&format!("[server]\nlisten = \"localhost:9000\"\n{hook}"));
    assert_eq!(config.server.listen.to_string(), "localhost:9000");
    assert!(!not_loopback(&config), "{:?}", config.warnings());
    // Not resolved by `check`: a name other than localhost may be reachable from elsewhere.
    let config = parse(&format!(
        "[server]\nlisten = \"cmq.example.com:9000\"\n{hook}"
    ));
    assert!(not_loopback(&config), "{:?}", config.warnings());
}

#[test]
fn an_empty_token_is_an_error() {
    one_error("[server]\ntoken = \"\"\n", 2, 9, &["server.token"]);
    one_error("[server]\ntoken = \"${EMPTY}\"\n", 2, 9, &["server.token"]);
}

#[test]
fn a_wrong_type_names_the_key() {
    one_error("[hooks.a]\ncommand = 5\n", 2, 11, &["hooks.a.command"]);
    one_error(
        "[hooks.a]\ncommand = \"x\"\nenv = { A = 1 }\n",
        3,
        13,
        &["hooks.a.env"],
    );
    one_error(
        "[hooks.a]\ncommand = \"x\"\nqueue = -1\n",
        3,
        9,
        &["hooks.a.queue"],
    );
}

#[test]
fn every_error_in_a_file_is_reported() {
    let text = r#"
[hooks.a]
command = "true"
timeout = "soon"

[hooks.b]
command = "true"
topic = "[oops"

[hooks.c]
command = "true"
colour = "blue"

[hooks.fine]
command = "true"
"#;
    let diagnostics = diagnostics(text);
    assert_eq!(diagnostics.len(), 3, "{diagnostics:#?}");
    assert_at(&diagnostics[0], 4, 11, &["hooks.a.timeout"]);
    assert_at(&diagnostics[1], 8, 9, &["hooks.b.topic", "invalid glob"]);
    assert_at(&diagnostics[2], 12, 1, &["hooks.c.colour", "unknown field"]);
    let err = Config::parse(Path::new(FILE), text, env).expect_err("invalid");
    let shown = err.to_string();
    assert_eq!(shown.lines().count(), 3, "{shown}");
    assert!(shown.starts_with("/some/dir/hooks.toml:4:11: hooks.a.timeout"));
}

#[test]
fn diagnostics_are_in_file_order() {
    // Deserialisation errors (a, c) are found before later checks (b; a and c have no
    // command), yet shown in order.
    let text = "[hooks.a]\nbogus = 1\n[hooks.b]\ncommand = \"x\"\ntopic = \"[z-a]\"\n\
                [hooks.c]\ntimeout = \"x\"\n";
    let lines: Vec<usize> = diagnostics(text).iter().map(|d| d.line).collect();
    assert_eq!(lines, [1, 2, 5, 6, 7]);
}

#[test]
fn hooks_must_be_tables() {
    one_error("hooks = 5\n", 1, 9, &["hooks"]);
    one_error("[hooks]\ndeploy = \"true\"\n", 2, 10, &["hooks.deploy"]);
}

#[test]
fn errors_in_several_checks_of_one_hook_are_all_reported() {
    let text = "[hooks.a]\nargv = []\nworkdir = \"nope\"\npath = \"x\"\ntags = []\n";
    let diagnostics = diagnostics(text);
    assert_eq!(diagnostics.len(), 4, "{diagnostics:#?}");
    assert_at(&diagnostics[0], 2, 8, &["hooks.a.argv"]);
    assert_at(&diagnostics[1], 3, 11, &["hooks.a.workdir"]);
    assert_at(&diagnostics[2], 4, 8, &["hooks.a.path"]);
    assert_at(&diagnostics[3], 5, 8, &["hooks.a.tags"]);
}

#[test]
fn a_broken_server_section_does_not_hide_hook_errors() {
    let text = "[server]\nbogus = 1\n\n[hooks.b]\ncommand = \"true\"\ntopic = \"[oops\"\n";
    let diagnostics = diagnostics(text);
    assert_eq!(diagnostics.len(), 2, "{diagnostics:#?}");
    assert_at(&diagnostics[0], 2, 1, &["server.bogus"]);
    assert_at(&diagnostics[1], 6, 9, &["hooks.b.topic"]);
}

#[test]
fn server_errors_and_hook_errors_are_all_reported() {
    let text = "[server]\nmax_running = 0\nallow = [\"x\"]\n\n[hooks.a]\nargv = []\n";
    let diagnostics = diagnostics(text);
    assert_eq!(diagnostics.len(), 3, "{diagnostics:#?}");
    assert_at(&diagnostics[0], 2, 15, &["server.max_running"]);
    assert_at(&diagnostics[1], 3, 10, &["server.allow"]);
    assert_at(&diagnostics[2], 6, 8, &["hooks.a.argv"]);
}

#[test]
fn a_toml_syntax_error_gives_file_line_and_column() {
    let diagnostic = one_error(
        "[server]\nlisten = \"127.0.0.1:1\"\nmax_running = \n",
        3,
        15,
        &[],
    );
    assert!(
        diagnostic
            .to_string()
            .starts_with("/some/dir/hooks.toml:3:15: "),
        "{diagnostic}"
    );
    one_error("[server\nlisten = \"x\"\n", 1, 8, &[]);
    // A duplicated table is a TOML error too.
    let diagnostics = diagnostics("[hooks.a]\ncommand = \"x\"\n[hooks.a]\ncommand = \"y\"\n");
    assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
    assert_eq!(diagnostics[0].line, 3, "{}", diagnostics[0]);
}

#[test]
fn columns_count_characters_not_bytes() {
    one_error(
        "[hooks.a]\ncommand = \"x\"\nenv = { \"é\" = 5 }\n",
        3,
        15,
        &["hooks.a.env"],
    );
    one_error(
        "[hooks.a]\ncommand = \"x\"\ntags = [\"é\", 1]\n",
        3,
        14,
        &["hooks.a.tags"],
    );
}

#[test]
fn variables_are_expanded_in_listen_token_and_path() {
    let text = r#"
[server]
listen = "${LISTEN_HOST}:${LISTEN_PORT}"
token = "pre-${CMQHOOK_TOKEN}"

[hooks.a]
path = "/cmq/${DEPLOY_SECRET}/x"
command = "true"
"#;
    let config = parse(text);
    assert_eq!(
        config.server.listen,
        "127.0.0.2:9100".parse::<Listen>().expect("valid")
    );
    assert_eq!(config.server.token.as_deref(), Some("pre-tok-7f3a9c"));
    let a = hook(&config, "a");
    assert_eq!(a.selector.path.as_deref(), Some("/cmq/d3pl0y-s3cr3t/x"));
    assert_eq!(a.path_shown.as_deref(), Some("/cmq/${DEPLOY_SECRET}/x"));
}

#[test]
fn the_variables_of_secrets_are_hidden_from_hooks_unless_passed() {
    let text = r#"
[server]
listen = "${LISTEN_HOST}:9000"
token = "${CMQHOOK_TOKEN}"
journal = "${INNER}/j.db"

[defaults]
pass_env = ["INNER"]

[hooks.a]
path = "/cmq/${DEPLOY_SECRET}"
command = "true"

[hooks.b]
pass_env = ["DEPLOY_SECRET", "HOME"]
command = "true"
"#;
    let config = parse(text);
    assert_eq!(
        config.server.journal.as_deref(),
        Some(Path::new("/some/dir/ab12/j.db"))
    );
    let hidden = |name: &str| hook(&config, name).hidden_env.to_vec();
    assert_eq!(hidden("a"), ["CMQHOOK_TOKEN", "DEPLOY_SECRET"]);
    assert_eq!(hidden("b"), ["CMQHOOK_TOKEN", "INNER"]);
    let warnings = config.warnings().join("\n");
    assert!(
        warnings.contains("hook `b`: pass_env names `HOME`"),
        "{warnings}"
    );
    assert!(!warnings.contains("`DEPLOY_SECRET`"), "{warnings}");
    // INNER (4 characters) is too short to look for in output; the others are not.
    assert!(
        warnings.contains("`${INNER}` is shorter than 6"),
        "{warnings}"
    );
    assert_eq!(warnings.matches("is shorter than").count(), 1, "{warnings}");
    let output = &hook(&config, "a").output_secrets;
    assert_eq!(output.redact("ab12 d3pl0y-s3cr3t"), "ab12 ${DEPLOY_SECRET}");
}

#[test]
fn hooks_with_the_same_env_share_one_environment() {
    let config = parse(
        r#"
[hooks.a]
command = "true"
env = { A = "1" }

[hooks.b]
command = "true"
env = { A = "1" }

[hooks.c]
command = "true"
env = { A = "2" }
"#,
    );
    let environment = |name: &str| &hook(&config, name).environment;
    assert!(Arc::ptr_eq(environment("a"), environment("b")));
    assert!(!Arc::ptr_eq(environment("a"), environment("c")));
}

#[test]
fn a_double_dollar_is_a_literal_dollar() {
    let text = "[server]\ntoken = \"a$$b$$${CMQHOOK_TOKEN}$c\"\n\
                [hooks.a]\npath = \"/x/$$y\"\ncommand = \"true\"\n";
    let config = parse(text);
    assert_eq!(config.server.token.as_deref(), Some("a$b$tok-7f3a9c$c"));
    assert_eq!(hook(&config, "a").selector.path.as_deref(), Some("/x/$y"));
}

#[test]
fn an_unset_variable_is_an_error_naming_it() {
    one_error(
        "[server]\nlisten = \"${NO_SUCH_HOST}:80\"\n",
        2,
        10,
        &["server.listen", "NO_SUCH_HOST", "not set"],
    );
    one_error(
        "[server]\ntoken = \"${NO_SUCH_TOKEN}\"\n",
        2,
        9,
        &["server.token", "NO_SUCH_TOKEN"],
    );
    one_error(
        "[hooks.deploy]\ncommand = \"true\"\npath = \"/cmq/${NO_SUCH_SECRET}\"\n",
        3,
        8,
        &["hooks.deploy.path", "NO_SUCH_SECRET"],
    );
}

#[test]
fn malformed_references_are_errors() {
    one_error(
        "[server]\ntoken = \"${CMQHOOK_TOKEN\"\n",
        2,
        9,
        &["server.token", "unterminated"],
    );
    one_error(
        "[server]\ntoken = \"${}\"\n",
        2,
        9,
        &["server.token", "not a variable name"],
    );
    one_error(
        "[server]\ntoken = \"${A-B}\"\n",
        2,
        9,
        &["server.token", "not a variable name"],
    );
}

#[test]
fn nothing_else_is_expanded() {
    let text = r#"
[defaults]
env = { V = "${NO_SUCH_VAR}" }

[hooks.sh]
topic = "${NO_SUCH_TOPIC}"
command = "echo $HOME ${NO_SUCH_VAR} $$ > \"$CMQ_MSG_ID\""

[hooks.exec]
argv = ["/bin/true", "${NO_SUCH_ARG}", "$$"]
"#;
    let config = parse(text);
    let sh = hook(&config, "sh");
    assert_eq!(
        sh.action,
        Action::Shell("echo $HOME ${NO_SUCH_VAR} $$ > \"$CMQ_MSG_ID\"".into())
    );
    assert_eq!(env_of(sh), [("V", "${NO_SUCH_VAR}")]);
    let topic = sh.selector.topic.as_ref().expect("topic");
    assert!(topic.matches("${NO_SUCH_TOPIC}"));
    assert_eq!(
        hook(&config, "exec").action,
        Action::Argv(
            vec![
                "/bin/true".to_owned(),
                "${NO_SUCH_ARG}".to_owned(),
                "$$".to_owned()
            ]
            .into()
        )
    );
}

#[test]
fn redact_hides_expanded_values_and_the_token() {
    let text = r#"
[server]
listen = "${LISTEN_HOST}:9000"
token = "literal-token-value"

[hooks.deploy]
path = "/cmq/${DEPLOY_SECRET}"
command = "true"
"#;
    let config = parse(text);
    assert_eq!(
        config.redact("POST /cmq/d3pl0y-s3cr3t?token=literal-token-value from 127.0.0.2"),
        "POST /cmq/${DEPLOY_SECRET}?token=<token> from 127.0.0.2",
        "a listen address is no secret"
    );
    assert_eq!(config.redact("nothing secret"), "nothing secret");
}

#[test]
fn redact_hides_a_token_taken_from_the_environment() {
    let config = parse("[server]\ntoken = \"${CMQHOOK_TOKEN}\"\n");
    let shown = config.redact("?token=tok-7f3a9c&x=1");
    assert!(!shown.contains("tok-7f3a9c"), "{shown}");
    assert!(
        shown == "?token=${CMQHOOK_TOKEN}&x=1" || shown == "?token=<token>&x=1",
        "{shown}"
    );
}

#[test]
fn redact_hides_a_secret_containing_another_whole() {
    let config = parse(
        "[hooks.a]\npath = \"/${INNER}\"\ncommand = \"x\"\n\
         [hooks.b]\npath = \"/${OUTER}\"\ncommand = \"x\"\n",
    );
    assert_eq!(config.redact("/xx-ab12-yy /ab12"), "/${OUTER} /${INNER}");
}

#[test]
fn config_errors_never_show_an_expanded_value() {
    let diagnostic = one_error(
        "[server]\nlisten = \"${BAD_LISTEN}\"\n",
        2,
        10,
        &["server.listen", "${BAD_LISTEN}"],
    );
    assert!(!diagnostic.message.contains("hunter2"), "{diagnostic}");

    let text = "[server]\ntoken = \"${CMQHOOK_TOKEN}\"\nlisten = \"${CMQHOOK_TOKEN}\"\n\
                [hooks.a]\ncommand = \"x\"\npath = \"${DEPLOY_SECRET}\"\n";
    let err = Config::parse(Path::new(FILE), text, env).expect_err("invalid");
    let shown = err.to_string();
    assert_eq!(shown.lines().count(), 2, "{shown}");
    assert!(!shown.contains("tok-7f3a9c"), "{shown}");
    assert!(!shown.contains("d3pl0y-s3cr3t"), "{shown}");
}

#[test]
fn a_config_error_hides_a_secret_containing_another_whole() {
    let diagnostic = one_error(
        "[server]\nlisten = \"${INNER}-${OUTER}\"\n",
        2,
        10,
        &["server.listen"],
    );
    assert!(
        !diagnostic.message.contains("xx") && !diagnostic.message.contains("ab12"),
        "{diagnostic}"
    );
    assert!(
        diagnostic.message.contains("`${INNER}-${OUTER}`"),
        "{diagnostic}"
    );
}

#[test]
fn warnings_name_a_hook_without_selector() {
    let config = parse(
        "[hooks.catch-all]\ncommand = \"true\"\n\
         [hooks.routed]\ncommand = \"true\"\ntags = [\"x\"]\n",
    );
    let warnings = config.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("`catch-all`"), "{warnings:?}");
    assert!(warnings[0].contains("no selector"), "{warnings:?}");
}

#[test]
fn a_hook_with_any_selector_gives_no_warning() {
    for selector in [
        "path = \"/p\"",
        "topic = \"t\"",
        "subscription = \"s\"",
        "tags = [\"x\"]",
    ] {
        let config = parse(&format!("[hooks.a]\ncommand = \"x\"\n{selector}\n"));
        assert!(
            config.warnings().is_empty(),
            "{selector}: {:?}",
            config.warnings()
        );
    }
}

#[test]
fn a_missing_file_is_named_with_the_flag_and_the_variable() {
    let dir = tempdir();
    let file = dir.path().join("absent.toml");
    let err = Config::load(&file).expect_err("no such file");
    assert!(matches!(err, ConfigError::Missing { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "no config at {} (use -c FILE or CMQHOOK_CONFIG)",
            file.display()
        )
    );
    // A bare file name is shown as the path it is, relative to the working directory.
    let err = Config::load(Path::new("cmqhook-no-such-config.toml")).expect_err("no such file");
    assert!(
        err.to_string()
            .starts_with("no config at ./cmqhook-no-such-config.toml (use -c FILE"),
        "{err}"
    );
}

#[test]
fn reading_a_file_that_is_there_but_unreadable_names_it() {
    let dir = tempdir();
    // A directory cannot be read as a file, even by root.
    let err = Config::load(dir.path()).expect_err("a directory");
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&dir.path().display().to_string())
    );
}

#[test]
fn load_reads_the_file_and_resolves_against_its_dir() {
    let dir = tempdir();
    let file = dir.path().join("hooks.toml");
    std::fs::write(&file, "[hooks.a]\ncommand = \"true\"\n").expect("write config");
    let config = Config::load(&file).expect("valid");
    assert_eq!(config.file, file);
    assert_eq!(&*hook(&config, "a").workdir, dir.path());
    assert_eq!(
        config.server.journal.as_deref(),
        Some(dir.path().join("cmqhook.db").as_path())
    );
}

/// `text` loaded as `check` and `serve` load it (journal and command programs checked), as if
/// read from `file`.
fn parse_for_serve(file: &Path, text: &str) -> Result<Config, ConfigError> {
    load::parse(file, text, &env, load::Scope::Serve)
}

/// The single diagnostic of `text` loaded for `serve` from `file`, checked as `one_error` does.
fn one_error_for_serve(
    file: &Path,
    text: &str,
    (line, column): (usize, usize),
    needles: &[&str],
) -> Diagnostic {
    let diagnostics = match parse_for_serve(file, text) {
        Ok(config) => panic!("expected errors, got {config:?}"),
        Err(ConfigError::Invalid(diagnostics)) => diagnostics,
        Err(err) => panic!("expected ConfigError::Invalid, got {err:?}"),
    };
    assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
    let diagnostic = diagnostics.into_iter().next().expect("length checked");
    assert_at_file(&diagnostic, file, (line, column), needles);
    diagnostic
}

#[test]
fn every_bad_key_of_one_table_is_reported_at_its_own_line() {
    let text = r#"[server]
jornal = "x"
unmatched = "rejct"
max_running = 0

[hooks.h]
topc = "t"
timeout = "forever"
stdin = "all"
command = "true"
"#;
    let diagnostics = diagnostics(text);
    assert_eq!(diagnostics.len(), 6, "{diagnostics:#?}");
    assert_at(&diagnostics[0], 2, 1, &["server.jornal", "unknown field"]);
    assert_at(&diagnostics[1], 3, 13, &["server.unmatched", "rejct"]);
    assert_at(
        &diagnostics[2],
        4,
        15,
        &["server.max_running", "at least 1"],
    );
    assert_at(&diagnostics[3], 7, 1, &["hooks.h.topc", "unknown field"]);
    assert_at(&diagnostics[4], 8, 11, &["hooks.h.timeout", "forever"]);
    assert_at(&diagnostics[5], 9, 9, &["hooks.h.stdin", "all"]);
}

#[test]
fn every_bad_key_of_defaults_is_reported_and_hooks_are_still_checked() {
    let text = "[defaults]\ntimeout = 5\nqueue = -1\nretries = 3\n\
                [hooks.a]\ncommand = \"x\"\ntopic = \"[oops\"\n";
    let diagnostics = diagnostics(text);
    assert_eq!(diagnostics.len(), 4, "{diagnostics:#?}");
    assert_at(&diagnostics[0], 2, 11, &["defaults.timeout"]);
    assert_at(&diagnostics[1], 3, 9, &["defaults.queue"]);
    assert_at(
        &diagnostics[2],
        4,
        1,
        &["defaults.retries", "unknown field"],
    );
    assert_at(&diagnostics[3], 7, 9, &["hooks.a.topic", "invalid glob"]);
}

#[test]
fn a_key_that_cannot_be_read_is_not_reported_again_as_missing() {
    // `command` is wrong, or misspelt: saying the hook has no command too would be noise.
    one_error(
        "[hooks.a]\ncommand = [\"x\"]\n",
        2,
        11,
        &["hooks.a.command"],
    );
    one_error(
        "[hooks.a]\ncomand = \"x\"\n",
        2,
        1,
        &["hooks.a.comand", "did you mean `command`?"],
    );
    // The same for a command every hook takes from [defaults].
    one_error(
        "[defaults]\ncommand = 1\n[hooks.a]\ntopic = \"t\"\n[hooks.b]\ntopic = \"u\"\n",
        2,
        11,
        &["defaults.command"],
    );
    // A key that is merely unknown does not excuse a missing command.
    let diagnostics = diagnostics("[hooks.a]\ncolour = \"blue\"\n");
    assert_eq!(diagnostics.len(), 2, "{diagnostics:#?}");
    assert_at(&diagnostics[0], 1, 1, &["hooks.a", "`command` or `argv`"]);
    assert_at(&diagnostics[1], 2, 1, &["hooks.a.colour", "unknown field"]);
}

#[test]
fn a_section_that_is_no_table_is_one_error() {
    one_error("server = 5\n", 1, 10, &["server", "expected a table"]);
    one_error(
        "defaults = \"x\"\n[hooks.a]\ntopic = \"t\"\n",
        1,
        12,
        &["defaults", "expected a table"],
    );
}

#[test]
fn unknown_keys_suggest_the_nearest_known_key() {
    for (text, line, column, suggestion) in [
        (
            "[hooks.a]\ncommand = \"x\"\ncomand = \"x\"\n",
            3,
            1,
            "`command`",
        ),
        (
            "[hooks.a]\ncommand = \"x\"\nTimeout = \"1s\"\n",
            3,
            1,
            "`timeout`",
        ),
        (
            "[hooks.a]\ncommand = \"x\"\nkill-grace = \"1s\"\n",
            3,
            1,
            "`kill_grace`",
        ),
        (
            "[hooks.a]\ncommand = \"x\"\n  passenv = []\n",
            3,
            3,
            "`pass_env`",
        ),
        ("[defaults]\nworkdri = \".\"\n", 2, 1, "`workdir`"),
        ("[server]\njornal = \"off\"\n", 2, 1, "`journal`"),
        ("[server]\nmax_bodyy = 5\n", 2, 1, "`max_body`"),
        ("[server]\nalow = []\n", 2, 1, "`allow`"),
    ] {
        let diagnostic = one_error(text, line, column, &["unknown field"]);
        assert!(
            diagnostic
                .message
                .ends_with(&format!("did you mean {suggestion}?")),
            "{diagnostic}"
        );
    }
    // Nothing near: the keys there are, instead of a guess.
    let diagnostic = one_error(
        "[hooks.a]\ncommand = \"x\"\ncolour = \"blue\"\n",
        3,
        1,
        &["hooks.a.colour", "unknown field", "expected one of `path`"],
    );
    assert!(!diagnostic.message.contains("did you mean"), "{diagnostic}");
}

#[test]
fn unknown_sections_suggest_the_nearest_section() {
    for (text, column, suggestion) in [
        ("[hook.deploy]\ncommand = \"true\"\n", 2, "`hooks`"),
        ("[sever]\nlisten = \"127.0.0.1:1\"\n", 2, "`server`"),
        ("[default]\ntimeout = \"1s\"\n", 2, "`defaults`"),
        ("Hooks = {}\n", 1, "`hooks`"),
    ] {
        let diagnostic = one_error(text, 1, column, &["unknown section"]);
        assert!(
            diagnostic
                .message
                .ends_with(&format!("did you mean {suggestion}?")),
            "{diagnostic}"
        );
    }
    let diagnostic = one_error("verbose = true\n", 1, 1, &["`verbose`", "unknown section"]);
    assert!(
        diagnostic
            .message
            .contains("expected one of `server`, `console`, `defaults`, `hooks`"),
        "{diagnostic}"
    );
}

#[test]
fn a_journal_in_a_missing_directory_is_an_error_for_check_and_serve() {
    let dir = tempdir();
    let file = dir.path().join("hooks.toml");
    let text = "[server]\njournal = \"state/j.db\"\n";
    let state = dir.path().join("state").display().to_string();
    one_error_for_serve(
        &file,
        text,
        (2, 11),
        &["server.journal", &state, "does not exist"],
    );
    // The file alone is not checked for it (`route`, `run`, `history`).
    Config::parse(&file, text, env).expect("the file alone is valid");
    std::fs::create_dir(dir.path().join("state")).expect("create state");
    parse_for_serve(&file, text).expect("a journal directory that exists");
}

#[test]
fn a_journal_under_a_file_or_that_is_a_directory_is_an_error() {
    let dir = tempdir();
    let file = dir.path().join("hooks.toml");
    std::fs::write(dir.path().join("somefile"), "x").expect("write somefile");
    std::fs::create_dir(dir.path().join("db")).expect("create db");
    one_error_for_serve(
        &file,
        "[server]\njournal = \"somefile/j.db\"\n\n[hooks.a]\ncommand = \"true\"\n",
        (2, 11),
        &["server.journal", "somefile", "not a directory"],
    );
    one_error_for_serve(
        &file,
        "[server]\njournal = \"db\"\n",
        (2, 11),
        &["server.journal", "is a directory"],
    );
}

#[test]
fn a_journal_in_a_directory_that_cannot_be_written_is_an_error() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir();
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).expect("create locked");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o500)).expect("chmod");
    let file = locked.join("hooks.toml");
    let text = "[hooks.a]\npath = \"/a\"\ncommand = \"true\"\n";
    // Root writes there anyway, and so could create the journal: only what fails is an error.
    if std::fs::write(locked.join("probe"), "").is_ok() {
        parse_for_serve(&file, text).expect("root can create the journal");
        return;
    }
    // No `journal` key: the default journal is named, and what to do about it.
    one_error_for_serve(
        &file,
        text,
        (1, 1),
        &[
            "server.journal",
            "`cmqhook.db`",
            "not writable",
            "set `journal`",
        ],
    );
}

#[test]
fn the_default_journal_is_checked_but_off_and_a_bad_value_are_not() {
    let dir = tempdir();
    let file = dir.path().join("missing-dir/hooks.toml");
    one_error_for_serve(
        &file,
        "[server]\nlisten = \"127.0.0.1:1\"\n",
        (1, 1),
        &["server.journal", "`cmqhook.db`", "does not exist"],
    );
    parse_for_serve(&file, "[server]\njournal = \"off\"\n").expect("no journal, no check");
    // A bad `journal` value is reported once, not again as the default journal's problem.
    one_error_for_serve(
        &file,
        "[server]\njournal = 5\n",
        (2, 11),
        &["server.journal", "invalid type"],
    );
}

#[test]
fn a_journal_error_hides_what_a_variable_put_in_its_path() {
    let dir = tempdir();
    let file = dir.path().join("hooks.toml");
    let diagnostic = one_error_for_serve(
        &file,
        "[server]\njournal = \"${OUTER}/j.db\"\n",
        (2, 11),
        &["${OUTER}", "does not exist"],
    );
    assert!(!diagnostic.message.contains("xx-ab12-yy"), "{diagnostic}");
}

/// The warnings `check` gives about `commands`, one hook each, in a config in `dir`.
fn command_warnings(dir: &Path, commands: &[&str]) -> Vec<String> {
    let mut text = String::from("[server]\njournal = \"off\"\n");
    for (i, command) in commands.iter().enumerate() {
        text.push_str(&format!(
            "[hooks.h{i}]\npath = \"/{i}\"\ncommand = '{command}'\n"
        ));
    }
    let config = match parse_for_serve(&dir.join("hooks.toml"), &text) {
        Ok(config) => config,
        Err(err) => panic!("expected a valid config, got:\n{err}"),
    };
    config.warnings()
}

#[test]
fn a_shell_command_whose_program_is_not_found_gets_a_warning_at_its_line() {
    let dir = tempdir();
    let file = dir.path().join("hooks.toml");
    let text = "[server]\njournal = \"off\"\n[hooks.a]\npath = \"/a\"\n\
                command = \"cmqhook-no-such-program --now\"\n\
                [hooks.b]\npath = \"/b\"\ncommand = \"./missing.sh prod\"\n";
    let warnings = parse_for_serve(&file, text).expect("valid").warnings();
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    let shown = file.display();
    assert!(
        warnings[0].starts_with(&format!(
            "{shown}:5:11: hooks.a.command: program `cmqhook-no-such-program` not found on PATH"
        )),
        "{warnings:#?}"
    );
    let looked_for = dir.path().join("missing.sh");
    assert!(
        warnings[1].starts_with(&format!(
            "{shown}:8:11: hooks.b.command: program `./missing.sh` not found (looked for {})",
            looked_for.display()
        )),
        "{warnings:#?}"
    );
    // Loading the file alone (route, run, history) does not look.
    assert!(
        Config::parse(&file, text, env)
            .expect("valid")
            .warnings()
            .is_empty()
    );
}

#[test]
fn a_shell_command_whose_program_is_there_gets_no_warning() {
    let dir = tempdir();
    std::fs::create_dir(dir.path().join("bin")).expect("create bin");
    std::fs::write(dir.path().join("deploy.sh"), "").expect("write deploy.sh");
    std::fs::write(dir.path().join("bin/tool"), "").expect("write tool");
    let warnings = command_warnings(
        dir.path(),
        &[
            "sh -c true",
            "./deploy.sh prod",
            "bin/tool",
            "/bin/sh -c true",
            "  env A=1 true",
        ],
    );
    assert!(warnings.is_empty(), "{warnings:#?}");
    // The hook's own PATH is the one the shell searches; its relative entries start from the
    // workdir.
    let text = "[server]\njournal = \"off\"\n[hooks.a]\npath = \"/a\"\ncommand = \"tool\"\n\
                env = { PATH = \"bin\" }\n[hooks.b]\npath = \"/b\"\ncommand = \"sh\"\n\
                env = { PATH = \"bin\" }\n";
    let warnings = parse_for_serve(&dir.path().join("hooks.toml"), text)
        .expect("valid")
        .warnings();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].contains("hooks.b.command: program `sh` not found on PATH"),
        "{warnings:#?}"
    );
}

#[test]
fn shell_builtins_keywords_and_what_the_shell_expands_get_no_warning() {
    let dir = tempdir();
    let warnings = command_warnings(
        dir.path(),
        &[
            "exit 3",
            "echo hi",
            "test -f x",
            "[ -f x ]",
            "cd /tmp && cmqhook-no-such-program",
            "true",
            "false",
            ": nothing",
            "set -e; cmqhook-no-such-program",
            "export A=1",
            "if true; then :; fi",
            "for i in 1 2; do :; done",
            "while false; do :; done",
            "{ echo; }",
            "(cmqhook-no-such-program)",
            "! cmqhook-no-such-program",
            ". ./env.sh",
            "exec cmqhook-no-such-program",
            "A=1",
            "A=1 B=2 echo x",
            "A=\"x y\" cmqhook-no-such-program",
            "$HOME/bin/x",
            "\"$CMD\" --now",
            "~/bin/deploy",
            "cmqhook-no-such-*",
            ">out echo x",
            "2>&1 echo x",
            "# a comment",
            "`which x`",
            "x\\y",
        ],
    );
    assert!(warnings.is_empty(), "{warnings:#?}");
    // An assignment before a program that is not there does not hide it.
    let warnings = command_warnings(dir.path(), &["A=1 B=x/y cmqhook-no-such-program"]);
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
}

#[test]
fn a_missing_program_shows_where_it_was_looked_for() {
    let dir = tempdir();
    std::fs::create_dir(dir.path().join("jobs")).expect("create jobs");
    let file = dir.path().join("hooks.toml");
    let text = "[hooks.a]\nworkdir = \"jobs\"\nargv = [\"./deploy.sh\"]\n\
                [hooks.b]\nargv = [\"cmqhook-no-such-program\"]\n";
    let err = Config::parse(&file, text, env).expect_err("invalid");
    let ConfigError::Invalid(diagnostics) = err else {
        panic!("expected diagnostics, got {err:?}");
    };
    assert_eq!(diagnostics.len(), 2, "{diagnostics:#?}");
    let looked_for = dir.path().join("jobs/deploy.sh");
    assert_at_file(
        &diagnostics[0],
        &file,
        (3, 8),
        &[&format!(
            "hooks.a.argv: program `./deploy.sh` not found (looked for {})",
            looked_for.display()
        )],
    );
    assert_at_file(
        &diagnostics[1],
        &file,
        (5, 8),
        &["hooks.b.argv: program `cmqhook-no-such-program` not found on PATH"],
    );
}

#[test]
fn ack_defaults_to_exit_and_retry_to_the_documented_schedule() {
    let config = parse("[hooks.a]\ncommand = \"true\"\n");
    let a = hook(&config, "a");
    assert_eq!(a.ack, Ack::Exit);
    let minutes: Vec<u64> = a.retry.iter().map(Duration::as_secs).collect();
    assert_eq!(minutes, [10, 60, 600, 3600, 6 * 3600]);
    assert_eq!(
        config.server.keep_dead,
        Duration::from_secs(7 * 86_400),
        "keep_dead defaults to 7d"
    );
}

#[test]
fn ack_and_retry_are_read_from_a_hook_or_defaults() {
    let config = parse(
        "[server]\nkeep_dead = \"2d\"\n\n[defaults]\nack = \"stored\"\nretry = [\"1s\", \"2m\"]\n\n[hooks.a]\ncommand = \"true\"\n\n[hooks.b]\ncommand = \"true\"\nack = \"exit\"\nretry = []\n",
    );
    let a = hook(&config, "a");
    assert_eq!(a.ack, Ack::Stored);
    assert_eq!(
        &*a.retry,
        [Duration::from_secs(1), Duration::from_secs(120)]
    );
    let b = hook(&config, "b");
    assert_eq!(b.ack, Ack::Exit);
    assert!(b.retry.is_empty());
    assert_eq!(config.server.keep_dead, Duration::from_secs(2 * 86_400));
}

#[test]
fn ack_stored_without_a_journal_is_an_error_naming_both_keys() {
    one_error(
        "[server]\njournal = \"off\"\n\n[hooks.a]\ncommand = \"true\"\nack = \"stored\"\n",
        6,
        7,
        &["hooks.a.ack", "server.journal", "off"],
    );
}

#[test]
fn ack_stored_with_a_postgresql_journal_is_accepted() {
    let config = parse(
        "[server]\njournal = \"postgres://u@db/cmqhook\"\n\n[hooks.a]\ncommand = \"true\"\nack = \"stored\"\n",
    );
    assert_eq!(hook(&config, "a").ack, Ack::Stored);
}

#[test]
fn a_retry_schedule_longer_than_dedup_for_is_an_error() {
    one_error(
        "[server]\ndedup_for = \"1h\"\n\n[hooks.a]\ncommand = \"true\"\nack = \"stored\"\nretry = [\"30m\", \"31m\"]\n",
        7,
        9,
        &["hooks.a.retry", "dedup_for", "1h 1m"],
    );
    // The default schedule (7h 11m 10s) is longer than a 1h dedup_for too.
    one_error(
        "[server]\ndedup_for = \"1h\"\n\n[hooks.a]\ncommand = \"true\"\nack = \"stored\"\n",
        6,
        7,
        &["hooks.a.retry", "dedup_for"],
    );
    // An `ack = "exit"` hook has no schedule to check.
    parse("[server]\ndedup_for = \"1h\"\n\n[hooks.a]\ncommand = \"true\"\nretry = [\"2h\"]\n");
}

#[test]
fn keep_bodies_is_off_by_default_and_takes_a_duration_or_off() {
    let hooks = "[hooks.a]\ncommand = \"true\"\n";
    assert_eq!(parse(hooks).server.keep_bodies, None);
    let config = parse(&format!("[server]\nkeep_bodies = \"7d\"\n\n{hooks}"));
    assert_eq!(
        config.server.keep_bodies,
        Some(Duration::from_secs(7 * 86_400))
    );
    let config = parse(&format!("[server]\nkeep_bodies = \"off\"\n\n{hooks}"));
    assert_eq!(config.server.keep_bodies, None);
    one_error(
        &format!("[server]\nkeep_bodies = \"a week\"\n\n{hooks}"),
        2,
        15,
        &["server.keep_bodies", "a week", "\"off\""],
    );
}

#[test]
fn keep_bodies_needs_a_journal() {
    let hooks = "[hooks.a]\ncommand = \"true\"\n";
    one_error(
        &format!("[server]\njournal = \"off\"\nkeep_bodies = \"1d\"\n\n{hooks}"),
        3,
        15,
        &["server.keep_bodies", "server.journal", "off"],
    );
    let config = parse(&format!(
        "[server]\njournal = \"postgres://u@db/cmqhook\"\nkeep_bodies = \"1d\"\n\n{hooks}"
    ));
    assert_eq!(
        config.server.keep_bodies,
        Some(std::time::Duration::from_secs(86_400))
    );
}

#[test]
fn a_value_in_error_is_not_judged_by_the_checks_that_depend_on_it() {
    // An unset variable in `journal` is not "off": neither keep_bodies nor a stored hook
    // is told the journal is off.
    let diagnostics = diagnostics(
        "[server]\njournal = \"postgres://u:${UNSET}@db/x\"\nkeep_bodies = \"7d\"\n\n\
         [hooks.a]\ncommand = \"true\"\nack = \"stored\"\n",
    );
    assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
    assert_at(&diagnostics[0], 2, 11, &["server.journal", "UNSET"]);
    // A `dedup_for` that cannot be read does not judge a retry schedule.
    one_error(
        "[server]\ndedup_for = \"a day\"\n\n[hooks.a]\ncommand = \"true\"\nack = \"stored\"\n\
         retry = [\"30h\"]\n",
        2,
        13,
        &["server.dedup_for"],
    );
    // A workdir that is not there is where the program would be looked for.
    one_error(
        "[hooks.a]\nworkdir = \"no-such-dir\"\nargv = [\"./deploy.sh\"]\n",
        2,
        11,
        &["hooks.a.workdir", "not a directory"],
    );
    // A hook's `ack` in error is not [defaults]' ack.
    one_error(
        "[server]\njournal = \"off\"\n[defaults]\nack = \"stored\"\n\
         [hooks.a]\ncommand = \"true\"\nack = \"sometimes\"\n",
        7,
        7,
        &["hooks.a.ack", "sometimes"],
    );
}

#[test]
fn durations_are_shown_as_the_config_writes_them() {
    for (duration, shown) in [
        (Duration::ZERO, "0s"),
        (Duration::from_millis(500), "500ms"),
        (Duration::from_secs(90), "1m 30s"),
        (Duration::from_secs(86_400), "1d"),
        (Duration::from_secs(26 * 3600), "1d 2h"),
        (Duration::from_secs(40 * 86_400), "40d"),
        (Duration::new(1, 2_003), "1s 2us 3ns"),
    ] {
        let text = DurationText(duration).to_string();
        assert_eq!(text, shown);
        // What is printed reads back as the same duration.
        assert_eq!(humantime::parse_duration(&text), Ok(duration), "{text}");
    }
}

#[test]
fn a_duration_that_cannot_be_read_gives_an_example() {
    one_error(
        "[hooks.a]\ncommand = \"true\"\ntimeout = \"20\"\n",
        3,
        11,
        &["hooks.a.timeout", "`20` has no unit", "\"20s\""],
    );
    one_error(
        "[hooks.a]\ncommand = \"true\"\nretry = [\"1m\", \"ten\"]\n",
        3,
        16,
        &["hooks.a.retry", "`ten` is not a duration", "\"20s\""],
    );
}

#[test]
fn a_console_beyond_loopback_needs_a_token_and_says_where() {
    let text = "[console]\nlisten = \"0.0.0.0:9001\"\n";
    one_error(text, 2, 10, &["console.listen", "not loopback", "token"]);
    // With one (from the environment: a secret, redacted like the push token), it is fine.
    let config = parse("[console]\nlisten = \"0.0.0.0:9001\"\ntoken = \"${CMQHOOK_TOKEN}\"\n");
    let console = config.console.as_ref().expect("console");
    assert_eq!(console.token.as_deref(), Some("tok-7f3a9c"));
    assert_eq!(config.redact("a tok-7f3a9c b"), "a ${CMQHOOK_TOKEN} b");
    // A loopback console may go without one: it is read-only then.
    let config = parse("[console]\nlisten = \"127.0.0.1:9001\"\n");
    assert_eq!(config.console.expect("console").token, None);
    assert!(parse("").console.is_none(), "no table, no console");
    let off = parse("[server]\njournal = \"off\"\n[console]\nlisten = \"127.0.0.1:9001\"\n");
    assert!(
        off.warnings()
            .iter()
            .any(|w| w.contains("[console] with `journal = \"off\"`")),
        "{:?}",
        off.warnings()
    );
}

#[test]
fn the_console_never_takes_the_push_listeners_address() {
    let text = "[server]\nlisten = \"127.0.0.1:9000\"\n[console]\nlisten = \"localhost:9000\"\n";
    one_error(
        text,
        4,
        10,
        &["console.listen", "push listener", "127.0.0.1:9000"],
    );
    // The default push address counts too.
    one_error(
        "[console]\nlisten = \"127.0.0.1:9000\"\n",
        2,
        10,
        &["push listener"],
    );
    one_error(
        "[console]\ntoken = \"x\"\n",
        1,
        1,
        &["console.listen: required"],
    );
    one_error(
        "[console]\nlisten = \"127.0.0.1:9001\"\ntokn = \"x\"\n",
        3,
        1,
        &["console.tokn", "did you mean `token`"],
    );
}

#[test]
fn log_output_and_keep_output_come_from_the_hook_then_defaults_then_server() {
    use crate::runner::{LogLines, OutputPolicy};
    let config = parse(
        "[server]\nlog_output = 20\nkeep_output = \"8 KiB\"\n\n[defaults]\nkeep_output = 10000\n\n\
         [hooks.a]\ncommand = \"true\"\n\n[hooks.b]\ncommand = \"true\"\nlog_output = \"all\"\nkeep_output = 0\n",
    );
    assert_eq!(
        config.server.output,
        OutputPolicy {
            log_lines: LogLines::Lines(20),
            keep_bytes: 8192
        }
    );
    let a = &config.hooks[0];
    assert_eq!(a.output.log_lines, LogLines::Lines(20));
    assert_eq!(a.output.keep_bytes, 10_000);
    let b = &config.hooks[1];
    assert_eq!(b.output.log_lines, LogLines::All);
    assert_eq!(b.output.keep_bytes, 0);
    let plain = parse("[hooks.a]\ncommand = \"true\"\n");
    assert_eq!(plain.hooks[0].output, OutputPolicy::default());
    assert_eq!(plain.hooks[0].output.log_lines, LogLines::Lines(1000));
    assert_eq!(plain.hooks[0].output.keep_bytes, 64 * 1024);
}

#[test]
fn a_bad_log_output_or_keep_output_is_an_error_at_its_line() {
    one_error(
        "[server]\nlog_output = \"some\"\n",
        2,
        14,
        &["server.log_output", "\"all\""],
    );
    one_error(
        "[hooks.a]\ncommand = \"true\"\nlog_output = -1\n",
        3,
        14,
        &["hooks.a.log_output", "negative"],
    );
    one_error(
        "[hooks.a]\ncommand = \"true\"\nkeep_output = \"1 GiB\"\n",
        3,
        15,
        &["hooks.a.keep_output", "16 MiB"],
    );
}
