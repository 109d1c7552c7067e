//! What the Debian package installs, through the built binary: the man pages (`cmqhook man`,
//! which contrib/deb/build writes into the package) and the packaged config
//! (contrib/deb/hooks.toml). The package itself is built and checked by contrib/deb/check,
//! which .ci/run runs.

use std::collections::BTreeSet;
use std::path::Path;

use crate::harness::*;

fn succeeded(args: &[&str]) -> String {
    let output = cmqhook(args, b"");
    assert_eq!(output.status.code(), Some(0), "{args:?}: {}", both(&output));
    text(&output.stdout)
}

/// The commands `cmqhook --help` lists.
fn commands() -> Vec<String> {
    let help = succeeded(&["--help"]);
    let listed = help
        .split("Commands:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no Commands: in\n{help}"));
    let names: Vec<String> = listed
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    assert!(names.len() > 5, "{help}");
    names
}

#[test]
fn every_command_has_a_man_page_with_exit_status_and_see_also() {
    let dir = Dir::new();
    let out = dir.file("man");
    let printed = succeeded(&["man", "--out-dir", out.to_str().expect("utf-8")]);
    let mut expected: BTreeSet<String> = commands()
        .iter()
        .map(|name| format!("cmqhook-{name}.1"))
        .collect();
    expected.insert("cmqhook.1".to_owned());
    expected.insert("cmqhook.toml.5".to_owned());
    let written: BTreeSet<String> = std::fs::read_dir(&out)
        .expect("the pages' dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(written, expected);
    assert_eq!(printed.lines().count(), expected.len(), "{printed}");
    for name in &expected {
        let page = std::fs::read_to_string(out.join(name)).expect("read a page");
        let (title, section) = name.rsplit_once('.').expect("NAME.SECTION");
        assert!(
            page.contains(&format!(".TH {title} {section}")),
            "{name}:\n{page}"
        );
        let mut sections = vec![".SH NAME", ".SH \"SEE ALSO\""];
        if section == "1" {
            sections.push(".SH \"EXIT STATUS\"");
        }
        for heading in sections {
            assert!(page.contains(heading), "{name}: no {heading}:\n{page}");
        }
        // As `cmqhook man [NAME]` prints it.
        let mut args = vec!["man"];
        if title != "cmqhook" {
            args.push(title.strip_prefix("cmqhook-").unwrap_or(title));
        }
        assert_eq!(succeeded(&args), page, "{name}");
    }
}

#[test]
fn command_pages_say_what_exits_signals_variables_and_files_mean() {
    let serve = succeeded(&["man", "serve"]);
    for needle in [
        ".SH \"EXIT STATUS\"",
        "after a clean drain",
        ".SH SIGNALS",
        "SIGHUP",
        ".SH ENVIRONMENT",
        "CMQHOOK_CONFIG",
        "RUST_LOG",
        ".SH FILES",
        "cmqhook.db.ends\\-0",
        ".SH EXAMPLES",
        "cmqhook.toml\\fR(5)",
    ] {
        assert!(
            serve.contains(needle),
            "cmqhook-serve(1): no {needle}:\n{serve}"
        );
    }
    let route = succeeded(&["man", "route"]);
    assert!(route.contains("At least one hook matches"), "{route}");
    let top = succeeded(&["man"]);
    for command in commands() {
        let reference = format!("cmqhook\\-{command}\\fR(1)");
        assert!(
            top.contains(&reference),
            "cmqhook(1): no {reference}:\n{top}"
        );
    }
    let completions = succeeded(&["man", "completions"]);
    assert!(
        completions.contains("/usr/share/zsh/vendor\\-completions/_cmqhook"),
        "{completions}"
    );
}

#[test]
fn the_config_page_documents_every_key_and_every_variable_a_command_gets() {
    let page = succeeded(&["man", "cmqhook.toml"]);
    assert!(page.contains(".TH cmqhook.toml 5"), "{page}");
    for heading in [
        "[server]",
        "[defaults]",
        "[hooks.NAME]",
        "COMMAND ENVIRONMENT",
    ] {
        assert!(
            page.contains(&format!(".SH \"{heading}\""))
                || page.contains(&format!(".SH {heading}")),
            "no {heading}:\n{page}"
        );
    }
    for key in [
        "listen",
        "respond_within",
        "keep_bodies",
        "command",
        "retry",
    ] {
        assert!(
            page.contains(&format!("\\fB{key}\\fR")),
            "no {key}:\n{page}"
        );
    }
    // Every CMQ_* and CMQHOOK_* variable a command really gets is on the page.
    let dir = Dir::new();
    let config = dir.write_config(&format!(
        "[server]\njournal = \"off\"\n\n[hooks.env]\nargv = [\"{}\", \"{}\"]\n",
        dir.file("record").display(),
        dir.runs().display()
    ));
    let output = cmqhook(
        &[
            "run",
            "-c",
            config.to_str().expect("utf-8"),
            "--topic",
            "t",
            "--tag",
            "a",
        ],
        b"body",
    );
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));
    let runs = dir.recorded();
    assert_eq!(runs.len(), 1);
    let vars: Vec<&str> = runs[0]
        .env
        .iter()
        .map(|(name, _)| name.as_str())
        .filter(|name| name.starts_with("CMQ_") || name.starts_with("CMQHOOK_"))
        // What cmqhook sets, not what it inherits (CI sets CMQHOOK_TEST_POSTGRES).
        .filter(|name| std::env::var_os(name).is_none())
        .collect();
    assert!(vars.len() >= 10, "{vars:?}");
    for var in vars {
        assert!(
            page.contains(&format!("\\fB{var}\\fR")),
            "{var} is not on the page"
        );
    }
}

#[test]
fn man_names_the_config_page_among_what_it_accepts() {
    let output = cmqhook(&["man", "nope"], b"");
    assert_eq!(output.status.code(), Some(2), "{}", both(&output));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("no command `nope`") && stderr.contains("cmqhook.toml"),
        "{stderr}"
    );
}

/// The packaged config, with its journal in `dir` instead of /var/lib/cmqhook.
fn packaged_config(dir: &Dir) -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(repo.join("contrib/deb/hooks.toml"))
        .expect("read contrib/deb/hooks.toml");
    let journal = "journal = \"/var/lib/cmqhook/cmqhook.db\"";
    assert!(text.contains(journal), "{text}");
    text.replace(
        journal,
        &format!("journal = \"{}\"", dir.file("cmqhook.db").display()),
    )
}

const SECRET: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

#[test]
fn the_packaged_config_is_valid_protected_and_needs_its_secret() {
    let dir = Dir::new();
    let config = dir.write_config(&packaged_config(&dir));
    let config = config.to_str().expect("utf-8");
    let mut command = cmqhook_command(&["check", "-c", config]);
    command.env("CMQHOOK_PATH_SECRET", SECRET);
    let output = output_of(command, b"");
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));
    let said = both(&output);
    // Listening on every address, it is open to every address: CMQ's are not published. Any
    // other warning (an unprotected hook, a timeout CMQ would not wait for) is a flaw.
    let warnings: Vec<&str> = said.lines().filter(|l| l.contains("warning")).collect();
    assert!(
        warnings
            .iter()
            .all(|warning| warning.contains("`allow` is open")),
        "{said}"
    );
    assert!(!said.contains(SECRET), "check shows the secret: {said}");
    assert!(said.contains("${CMQHOOK_PATH_SECRET}"), "{said}");
    // Without the env file the unit reads, the service would not start: a config error.
    let output = cmqhook(&["check", "-c", config], b"");
    assert_eq!(output.status.code(), Some(1), "{}", both(&output));
    assert!(
        text(&output.stderr).contains("CMQHOOK_PATH_SECRET"),
        "{}",
        both(&output)
    );
}

#[test]
fn the_packaged_config_runs_its_hook_on_the_secret_path_only() {
    let dir = Dir::new();
    let server = Server::builder(&dir)
        .config(&packaged_config(&dir))
        .env("CMQHOOK_PATH_SECRET", SECRET)
        .listen(free_addr())
        .start();
    let pushed = server.post(
        &format!("/cmq/{SECRET}"),
        &seed_headers("6942316962"),
        SEED_ENVELOPE.as_bytes(),
    );
    assert_eq!(pushed.status, 200, "{}", pushed.text());
    assert_eq!(pushed.outcome(), "succeeded", "{}", pushed.text());
    let guessed = server.post(
        "/cmq/echo",
        &seed_headers("6942316963"),
        SEED_ENVELOPE.replace("6942316962", "6942316963").as_bytes(),
    );
    assert_eq!(guessed.status, 404, "{}", guessed.text());
    let logged = server
        .wait_for_log_line(std::time::Duration::from_secs(10), &["test message"])
        .unwrap_or_else(|| panic!("the hook's output is not logged:\n{}", server.log_text()));
    assert!(logged.contains("echo"), "{logged}");
    assert!(
        !server.log_text().contains(SECRET),
        "the log shows the secret:\n{}",
        server.log_text()
    );
}
