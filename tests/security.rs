//! Access control and secrets through the built binary.

mod common;

use std::time::Duration;

use common::*;

const TOKEN: &str = "tok-8f2a9c1e77d0";
const SECRET: &str = "path-secret-5b3e91d2";

fn server(dir: &Dir, server: &str, hooks: &str) -> Server {
    let config = dir.write_config(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server}\n\n{hooks}\n"
    ));
    Server::start_env(
        dir,
        &config,
        &[],
        true,
        &[("CMQHOOK_TOKEN", TOKEN), ("DEPLOY_SECRET", SECRET)],
    )
}

#[test]
fn a_token_is_required_in_one_of_three_places_and_never_shown() {
    let dir = Dir::new();
    let server = server(
        &dir,
        "token = \"${CMQHOOK_TOKEN}\"",
        &format!(
            "[hooks.deploy]\npath = \"/cmq/${{DEPLOY_SECRET}}\"\ncommand = '{}'",
            dir.record(0)
        ),
    );
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

    // Neither secret appears in anything the process wrote.
    let config = dir.path().join("hooks.toml");
    assert!(wait_for(Duration::from_secs(5), || {
        std::process::Command::new(BIN)
            .args(["history", "-c"])
            .arg(&config)
            .env("CMQHOOK_TOKEN", TOKEN)
            .env("DEPLOY_SECRET", SECRET)
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).lines().count() >= 6)
    }));
    let log = server.log_text();
    assert!(log.contains("path=/cmq/${DEPLOY_SECRET}"), "{log}");
    let mut written = log.into_bytes();
    for file in ["cmqhook.db", "cmqhook.db-wal"] {
        written.extend(std::fs::read(dir.path().join(file)).unwrap_or_default());
    }
    let written = String::from_utf8_lossy(&written);
    assert!(!written.contains(TOKEN), "the token leaked");
    assert!(!written.contains(SECRET), "the secret path leaked");
}

#[test]
fn peers_outside_allow_get_403_and_forwarded_for_is_believed_only_from_trusted_proxies() {
    let dir = Dir::new();
    let closed = server(
        &dir,
        "allow = [\"10.0.0.0/8\"]",
        &format!("[hooks.any]\ncommand = '{}'", dir.record(0)),
    );
    assert_eq!(closed.post("/", &[], b"x").status, 403);
    assert!(dir.recorded().is_empty());
    drop(closed);

    let dir = Dir::new();
    let proxied = server(
        &dir,
        "allow = [\"1.2.3.4/32\"]\ntrusted_proxies = [\"127.0.0.1\"]",
        &format!("[hooks.any]\ncommand = '{}'", dir.record(0)),
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
    let server = server(
        &dir,
        "",
        &format!("[hooks.any]\ncommand = '{}'", dir.record(0)),
    );
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
