//! The man pages. `cmqhook(1)` and `cmqhook-COMMAND(1)` are clap_mangen's rendering of the
//! command line (so options cannot drift from `--help`) with the sections `--help` has no room
//! for — EXIT STATUS, ENVIRONMENT, FILES, EXAMPLES, SEE ALSO — added before VERSION;
//! `cmqhook.toml(5)` renders [`crate::config::reference`]. This module only renders text: what
//! to print or write where is `cmqhook man`'s business.

use std::path::{Path, PathBuf};

use clap_mangen::roff::{Inline, Roff, bold, roman};

use crate::config::reference::{self, Default};

/// The name `cmqhook man` takes for the config reference, and that page's title.
pub(super) const CONFIG_PAGE: &str = "cmqhook.toml";

/// A term and what it means; an empty term is a paragraph of its own.
type Item = (&'static str, &'static str);

/// The sections a command's page has beyond clap's, in man-pages(7) order.
struct Extra {
    /// The subcommand's name; "" for `cmqhook` itself.
    command: &'static str,
    /// Its own statuses; the ones every command shares ([`EVERY_EXIT`]) follow them.
    exit_status: &'static [Item],
    /// How it answers signals.
    signals: &'static [Item],
    environment: &'static [Item],
    files: &'static [Item],
    /// (what it does, the command line).
    examples: &'static [Item],
}

/// The statuses clap and the output handling give every command.
const EVERY_EXIT: &[Item] = &[
    (
        "2",
        "The command line is wrong; clap's usage message says how.",
    ),
    (
        "141",
        "Standard output was closed by its reader (cmqhook history | head -1), as a shell \
         reports a command killed by SIGPIPE.",
    ),
];

const ENV_CONFIG: Item = (
    "CMQHOOK_CONFIG",
    "The config file when -c is not given; without either, ./hooks.toml.",
);
const ENV_EXPANDED: Item = (
    "${NAME}",
    "Every variable the config names as ${NAME} in listen, token, path or journal, or in a \
     [[queue]]'s endpoint, secret_id, secret_key or token; an unset one is a config error. \
     See cmqhook.toml(5).",
);
const ENV_LOG: Item = (
    "RUST_LOG",
    "The log filter (e.g. cmqhook=debug,info), overriding -v and -q.",
);
const ENV_COMMANDS: Item = (
    "CMQ_*, CMQHOOK_*",
    "What a hook's command gets on top of the inherited environment (less the variables \
     secrets came from) and its env: CMQ_MSG_ID, CMQ_TOPIC, CMQ_TAGS, CMQHOOK_ATTEMPT and the \
     others listed in cmqhook.toml(5).",
);

const FILE_CONFIG: Item = (
    "./hooks.toml",
    "The config when neither -c nor CMQHOOK_CONFIG names one. The Debian package's is \
     /etc/cmqhook/hooks.toml.",
);
const FILE_JOURNAL: Item = (
    "cmqhook.db",
    "The SQLite journal that journal names, beside the config by default (the Debian \
     package's: /var/lib/cmqhook/cmqhook.db). Beside it: cmqhook.db-wal and cmqhook.db-shm \
     (SQLite's), cmqhook.db.ends-0 and cmqhook.db.ends-1 (the end log: run ends not yet in \
     SQLite), cmqhook.db.lock (held by the serve that owns the journal, with its pid) and \
     cmqhook.db.replay.sock (where that serve takes replays). After a clean stop cmqhook.db \
     alone holds everything.",
);
const FILE_ENV: Item = (
    "/etc/cmqhook/env",
    "The Debian package's environment file, read by its systemd unit (mode 0640, group \
     cmqhook): CMQHOOK_PATH_SECRET, generated at the first install for the packaged hook's \
     path, and the secrets your config takes from the environment.",
);
const FILE_UNIT: Item = (
    "/usr/lib/systemd/system/cmqhook.service",
    "The Debian package's systemd unit: it checks, then serves /etc/cmqhook/hooks.toml as \
     the cmqhook user, in /var/lib/cmqhook.",
);

/// Every command's sections, `cmqhook` first; a test checks that each command has one.
const EXTRAS: &[Extra] = &[
    Extra {
        command: "",
        exit_status: &[
            (
                "0",
                "The command did what it was asked; see each command's page.",
            ),
            (
                "1",
                "An error (one line on stderr, never a backtrace), or the command's own no: \
                 no hook matched, a hook failed, a push was not answered 2xx.",
            ),
        ],
        signals: &[],
        environment: &[ENV_CONFIG, ENV_EXPANDED, ENV_LOG, ENV_COMMANDS],
        files: &[FILE_CONFIG, FILE_JOURNAL, FILE_ENV, FILE_UNIT],
        examples: &[
            (
                "Write a starter config and check it",
                "cmqhook init && cmqhook check",
            ),
            ("Serve it", "cmqhook serve -c hooks.toml"),
            (
                "Push to it as CMQ would",
                "echo hello | cmqhook send http://127.0.0.1:9000/cmq/echo --topic demo",
            ),
            (
                "The push URL of the Debian package's service",
                "sudo sh -c '. /etc/cmqhook/env; echo \"http://HOST:9000/cmq/$CMQHOOK_PATH_SECRET\"'",
            ),
        ],
    },
    Extra {
        command: "serve",
        exit_status: &[
            ("0", "Stopped by SIGTERM or SIGINT after a clean drain."),
            (
                "1",
                "The config is invalid, an address cannot be listened on, or the journal \
                 cannot be opened (another serve holds it: the message names its pid).",
            ),
        ],
        signals: &[
            (
                "SIGTERM, SIGINT",
                "Stop taking pushes (503; /healthz answers 503), give running commands \
                 shutdown_grace, then kill their process groups (journaled interrupted), answer \
                 what is in flight, exit 0.",
            ),
            (
                "SIGHUP",
                "Reload the config. A file that fails validation is rejected with a log line \
                 naming FILE:LINE:COLUMN and the running config stays; runs in progress are not \
                 disturbed. A changed listen or journal takes effect only after a restart.",
            ),
            (
                "SIGKILL",
                "Cannot be caught: the next serve on the journal kills the commands of the runs \
                 it left running, and marks those runs interrupted, before it serves.",
            ),
        ],
        environment: &[ENV_CONFIG, ENV_EXPANDED, ENV_LOG, ENV_COMMANDS],
        files: &[FILE_CONFIG, FILE_JOURNAL],
        examples: &[
            (
                "Serve on every address, whatever the config's listen says",
                "cmqhook serve -c /etc/cmqhook/hooks.toml --listen 0.0.0.0:9000",
            ),
            (
                "Reload the config (a broken file is rejected, the running one stays)",
                "kill -HUP $(pidof cmqhook)   # or: systemctl reload cmqhook",
            ),
        ],
    },
    Extra {
        command: "check",
        exit_status: &[
            (
                "0",
                "The config is valid (warnings, if any, are printed): serve would start on it.",
            ),
            (
                "1",
                "It is not: every problem as FILE:LINE:COLUMN: KEY: PROBLEM, or the file \
                 cannot be read.",
            ),
        ],
        signals: &[],
        environment: &[ENV_CONFIG, ENV_EXPANDED],
        files: &[FILE_CONFIG, FILE_JOURNAL],
        examples: &[(
            "Check the packaged config with the service's environment",
            "sudo -u cmqhook sh -c 'set -a; . /etc/cmqhook/env; cmqhook check -c /etc/cmqhook/hooks.toml'",
        )],
    },
    Extra {
        command: "route",
        exit_status: &[
            ("0", "At least one hook matches."),
            (
                "1",
                "None does (stderr names what the push carried), or the config is invalid.",
            ),
        ],
        signals: &[],
        environment: &[ENV_CONFIG, ENV_EXPANDED],
        files: &[FILE_CONFIG],
        examples: &[
            (
                "Which hooks a tagged push of topic deploy runs",
                "cmqhook route --topic deploy --tag web",
            ),
            (
                "Why each hook does or does not match",
                "cmqhook route --explain --path /cmq/deploy",
            ),
        ],
    },
    Extra {
        command: "run",
        exit_status: &[
            ("0", "Every matching hook succeeded."),
            (
                "1",
                "A hook failed, timed out or could not start, no hook matched, or the config \
                 is invalid.",
            ),
        ],
        signals: &[],
        environment: &[ENV_CONFIG, ENV_EXPANDED, ENV_LOG, ENV_COMMANDS],
        files: &[FILE_CONFIG],
        examples: &[(
            "Try the deploy hooks on a message, not journaled",
            "echo '{\"ref\":\"main\"}' | cmqhook run --topic deploy --msg-id try-1",
        )],
    },
    Extra {
        command: "send",
        exit_status: &[
            ("0", "The answer was 2xx."),
            ("1", "It was not, or no answer came."),
        ],
        signals: &[],
        environment: &[],
        files: &[],
        examples: &[
            (
                "A SIMPLIFIED push with two tags",
                "echo hello | cmqhook send http://127.0.0.1:9000/cmq/echo --tag a --tag b",
            ),
            (
                "To a server with a token",
                "cmqhook send http://127.0.0.1:9000/x --token \"$CMQHOOK_TOKEN\" --body-file msg.json",
            ),
        ],
    },
    Extra {
        command: "queue",
        exit_status: &[
            (
                "0",
                "queue send: the queue took the message; its id is printed.",
            ),
            (
                "1",
                "The config is invalid or has no such [[queue]], the body cannot be read, or \
                 CMQ refused the message (its code and message are printed) or did not answer.",
            ),
        ],
        signals: &[],
        environment: &[ENV_CONFIG, ENV_EXPANDED],
        files: &[],
        examples: &[
            (
                "Publish a message to the queue named deploys, with a tag",
                "echo v1.2 | cmqhook queue send --queue deploys --tag web",
            ),
            (
                "Publish a file's content",
                "cmqhook queue send -c /etc/cmqhook/hooks.toml --queue deploys --body-file msg.json",
            ),
        ],
    },
    Extra {
        command: "history",
        exit_status: &[
            ("0", "Deliveries listed, or none yet (said on stderr)."),
            (
                "1",
                "journal = \"off\" (the message says how to turn it on), or the journal \
                 cannot be read.",
            ),
        ],
        signals: &[],
        environment: &[ENV_CONFIG, ENV_EXPANDED],
        files: &[FILE_CONFIG, FILE_JOURNAL],
        examples: &[
            ("What failed lately", "cmqhook history --failed"),
            (
                "Dead messages of ack = \"stored\" hooks",
                "cmqhook history --dead",
            ),
            (
                "One message, for a script",
                "cmqhook history --msg-id 6942316962 --json",
            ),
        ],
    },
    Extra {
        command: "show",
        exit_status: &[
            ("0", "The run was printed."),
            (
                "1",
                "No such run (never run, or pruned after dedup_for), journal = \"off\" (the \
                 message says how to turn it on), or the journal cannot be read.",
            ),
        ],
        signals: &[],
        environment: &[ENV_CONFIG, ENV_EXPANDED],
        files: &[FILE_CONFIG, FILE_JOURNAL],
        examples: &[
            (
                "Why did the last failure fail",
                "cmqhook show \"$(cmqhook history --failed --limit 1 --json | jq .run_id)\"",
            ),
            ("One run, for a script", "cmqhook show 42 --json"),
        ],
    },
    Extra {
        command: "replay",
        exit_status: &[
            ("0", "Every hook it ran succeeded."),
            (
                "1",
                "A hook failed, the message has no kept body (see keep_bodies), or the \
                 journal or config cannot be used.",
            ),
        ],
        signals: &[],
        environment: &[ENV_CONFIG, ENV_EXPANDED, ENV_LOG, ENV_COMMANDS],
        files: &[FILE_CONFIG, FILE_JOURNAL],
        examples: &[(
            "Run a message again through one hook",
            "cmqhook replay --msg-id 6942316962 --hook deploy-web",
        )],
    },
    Extra {
        command: "init",
        exit_status: &[
            ("0", "The starter config was written."),
            (
                "1",
                "FILE exists (it is never overwritten) or cannot be written.",
            ),
        ],
        signals: &[],
        environment: &[],
        files: &[FILE_CONFIG],
        examples: &[(
            "A config in another place",
            "cmqhook init /srv/hooks/hooks.toml",
        )],
    },
    Extra {
        command: "completions",
        exit_status: &[("0", "The script was printed.")],
        signals: &[],
        environment: &[],
        files: &[
            (
                "/usr/share/bash-completion/completions/cmqhook",
                "Where the Debian package installs bash's; for one user, \
                 ~/.local/share/bash-completion/completions/cmqhook.",
            ),
            (
                "/usr/share/zsh/vendor-completions/_cmqhook",
                "Where the Debian package installs zsh's.",
            ),
            (
                "/usr/share/fish/vendor_completions.d/cmqhook.fish",
                "Where the Debian package installs fish's; for one user, \
                 ~/.config/fish/completions/cmqhook.fish.",
            ),
        ],
        examples: &[(
            "Install bash's for yourself",
            "cmqhook completions bash > ~/.local/share/bash-completion/completions/cmqhook",
        )],
    },
    Extra {
        command: "man",
        exit_status: &[
            ("0", "The page was printed, or the pages written."),
            ("1", "A page could not be written into --out-dir."),
        ],
        signals: &[],
        environment: &[],
        files: &[],
        examples: &[
            ("Read a command's page", "cmqhook man route | man -l -"),
            (
                "Read the config reference",
                "cmqhook man cmqhook.toml | man -l -",
            ),
            (
                "Write every page, e.g. for a package",
                "cmqhook man --out-dir man/",
            ),
        ],
    },
    Extra {
        command: "help",
        exit_status: &[("0", "The help was printed.")],
        signals: &[],
        environment: &[],
        files: &[],
        examples: &[("The help of a command", "cmqhook help route")],
    },
];

/// The page of `command` (`cmqhook` itself or one of its subcommands, built by the caller so
/// that a subcommand is named `cmqhook-NAME`), as roff.
pub(super) fn command_page(command: &clap::Command) -> Vec<u8> {
    let mut page = Vec::new();
    man_of(command)
        .render(&mut page)
        .expect("writing into memory cannot fail");
    let page = String::from_utf8(page).expect("clap_mangen writes UTF-8");
    // Before VERSION, the last of clap's sections a page of ours has.
    let at = page.find("\n.SH VERSION").map_or(page.len(), |at| at + 1);
    let (head, tail) = page.split_at(at);
    let mut extra = Roff::new();
    render_extra(&mut extra, command);
    // The apostrophe preamble (what an empty page renders to) is already at the head of
    // clap's page; the text keeps its apostrophes written as that preamble defines.
    let extra = extra.render();
    let extra = extra.strip_prefix(&Roff::new().render()).unwrap_or(&extra);
    format!("{head}{extra}{tail}").into_bytes()
}

/// `cmqhook.toml(5)`: the config reference, as roff.
pub(super) fn config_page() -> Vec<u8> {
    let mut roff = Roff::new();
    roff.control("TH", [CONFIG_PAGE, "5", "", &source(), ""]);
    // Key names and URLs read better unbroken, and left-aligned than stretched.
    roff.control("nh", []);
    roff.control("ad", ["l"]);
    roff.control("SH", ["NAME"]);
    roff.text([roman(format!(
        "{CONFIG_PAGE} - the configuration of cmqhook"
    ))]);
    roff.control("SH", ["SYNOPSIS"]);
    roff.text([
        bold("/etc/cmqhook/hooks.toml"),
        roman(", "),
        bold("./hooks.toml"),
        roman(", or the file that -c or CMQHOOK_CONFIG names"),
    ]);
    roff.control("SH", ["DESCRIPTION"]);
    paragraphs(&mut roff, reference::SYNTAX);
    for table in reference::TABLES {
        roff.control("SH", [table.name]);
        roff.text([roman(table.about)]);
        for key in table.keys {
            let default = match key.default {
                Default::Value(value) => format!(" = {value}"),
                Default::Text(text) => format!(" (default: {text})"),
            };
            roff.control("TP", []);
            roff.text([bold(key.name), roman(default)]);
            roff.text([roman(key.meaning)]);
        }
    }
    roff.control("SH", ["COMMAND ENVIRONMENT"]);
    roff.text([roman(
        "A hook's command starts with the environment of serve, less the variables secrets \
         came from (but those in pass_env), plus its env, plus these (an unknown value is the \
         empty string); message data reaches it only on stdin and in these variables:",
    )]);
    items(&mut roff, reference::COMMAND_ENVIRONMENT);
    roff.control("SH", ["EXAMPLE"]);
    roff.text([roman("The config cmqhook init writes:")]);
    roff.control("RS", ["4"]);
    roff.control("nf", []);
    for line in super::STARTER_CONFIG.lines() {
        roff.text([roman(line)]);
    }
    roff.control("fi", []);
    roff.control("RE", []);
    roff.control("SH", ["FILES"]);
    items(&mut roff, &[FILE_CONFIG, FILE_JOURNAL, FILE_ENV]);
    roff.control("SH", ["SEE ALSO"]);
    roff.text([
        bold("cmqhook"),
        roman("(1), "),
        bold("cmqhook-check"),
        roman("(1)"),
    ]);
    roff.render().into_bytes()
}

/// Writes every page into `dir` (`cmqhook.1`, `cmqhook-COMMAND.1`, `cmqhook.toml.5`) and
/// returns the files written, in that order.
pub(super) fn write_all(cli: &clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let commands = std::iter::once(cli).chain(cli.get_subcommands().filter(|c| !c.is_hide_set()));
    let pages = commands
        .map(|command| (man_of(command).get_filename(), command_page(command)))
        .chain([(format!("{CONFIG_PAGE}.5"), config_page())]);
    let mut written = Vec::new();
    for (name, page) in pages {
        let file = dir.join(name);
        std::fs::write(&file, page)?;
        written.push(file);
    }
    Ok(written)
}

fn man_of(command: &clap::Command) -> clap_mangen::Man {
    clap_mangen::Man::new(command.clone()).source(source())
}

fn source() -> String {
    format!("cmqhook {}", env!("CARGO_PKG_VERSION"))
}

/// The sections of [`EXTRAS`] for `command`, and SEE ALSO.
fn render_extra(roff: &mut Roff, command: &clap::Command) {
    let name = subcommand_name(command);
    if let Some(extra) = EXTRAS.iter().find(|extra| extra.command == name) {
        roff.control("SH", ["EXIT STATUS"]);
        items(roff, extra.exit_status);
        items(roff, EVERY_EXIT);
        let sections = [
            ("SIGNALS", extra.signals),
            ("ENVIRONMENT", extra.environment),
            ("FILES", extra.files),
        ];
        for (title, list) in sections {
            if !list.is_empty() {
                roff.control("SH", [title]);
                items(roff, list);
            }
        }
        if !extra.examples.is_empty() {
            roff.control("SH", ["EXAMPLES"]);
            for (what, line) in extra.examples {
                roff.control("TP", []);
                roff.text([roman(format!("{what}:"))]);
                roff.text([bold(*line)]);
            }
        }
    }
    roff.control("SH", ["SEE ALSO"]);
    let mut see: Vec<Inline> = Vec::new();
    let mut refer = |page: &str, section: &str| {
        if !see.is_empty() {
            see.push(roman(", "));
        }
        see.push(bold(page));
        see.push(roman(format!("({section})")));
    };
    if name.is_empty() {
        for sub in command.get_subcommands().filter(|c| !c.is_hide_set()) {
            refer(&format!("cmqhook-{}", sub.get_name()), "1");
        }
    } else {
        refer("cmqhook", "1");
    }
    refer(CONFIG_PAGE, "5");
    roff.text(see);
}

/// `route` for `cmqhook-route`, "" for `cmqhook`.
fn subcommand_name(command: &clap::Command) -> &str {
    let name = command.get_display_name().unwrap_or(command.get_name());
    name.strip_prefix("cmqhook-").unwrap_or("")
}

fn items(roff: &mut Roff, list: &[Item]) {
    for (term, text) in list {
        if term.is_empty() {
            roff.control("PP", []);
        } else {
            roff.control("TP", []);
            roff.text([bold(*term)]);
        }
        roff.text([roman(*text)]);
    }
}

fn paragraphs(roff: &mut Roff, list: &[&str]) {
    for (i, text) in list.iter().enumerate() {
        if i > 0 {
            roff.control("PP", []);
        }
        roff.text([roman(*text)]);
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::cli::Cli;

    /// The tree `cmqhook man` renders.
    fn built() -> clap::Command {
        let mut cli = Cli::command();
        cli.build();
        cli
    }

    #[test]
    fn every_command_has_its_sections_and_every_section_a_command() {
        let cli = built();
        let mut names = vec![String::new()];
        names.extend(cli.get_subcommands().map(|c| c.get_name().to_owned()));
        let documented: Vec<String> = EXTRAS.iter().map(|e| e.command.to_owned()).collect();
        assert_eq!(documented, names, "EXTRAS, in the order of the commands");
        for extra in EXTRAS {
            assert!(!extra.exit_status.is_empty(), "`{}`", extra.command);
        }
    }

    /// The offsets of `headings` in `page`, asserting each is there and in that order.
    fn in_order(page: &str, headings: &[&str]) {
        let at: Vec<Option<usize>> = headings.iter().map(|h| page.find(h)).collect();
        assert!(at.iter().all(Option::is_some), "{headings:?} in\n{page}");
        assert!(at.windows(2).all(|w| w[0] < w[1]), "out of order:\n{page}");
    }

    #[test]
    fn a_command_page_keeps_clap_s_sections_and_adds_its_own_before_version() {
        let cli = built();
        let route = cli.find_subcommand("route").expect("route exists");
        let page = String::from_utf8(command_page(route)).expect("utf-8");
        in_order(
            &page,
            &[
                ".TH cmqhook-route 1",
                ".SH NAME",
                ".SH SYNOPSIS",
                ".SH OPTIONS",
                ".SH \"EXIT STATUS\"",
                ".SH ENVIRONMENT",
                ".SH FILES",
                ".SH EXAMPLES",
                ".SH \"SEE ALSO\"",
            ],
        );
        assert_eq!(
            page.matches(".ds Aq").count(),
            2,
            "one apostrophe preamble:\n{page}"
        );
        let top = String::from_utf8(command_page(&cli)).expect("utf-8");
        in_order(
            &top,
            &[
                ".TH cmqhook 1",
                ".SH SUBCOMMANDS",
                ".SH \"EXIT STATUS\"",
                ".SH \"SEE ALSO\"",
                ".SH VERSION",
            ],
        );
    }
}
