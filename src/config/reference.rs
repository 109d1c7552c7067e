//! The config reference: every key of every table with its default and meaning, as data.
//! `cmqhook man cmqhook.toml` renders it as the `cmqhook.toml(5)` page (and the Debian package
//! installs that page). Its tests keep it true: the keys are exactly those the loader takes, in
//! its order, and a default written as a TOML value is what the loader uses when the key is
//! absent. This module only describes; it checks and loads nothing.

/// A table of the config file.
#[derive(Debug)]
pub struct Table {
    /// As written in the file, e.g. `[server]`.
    pub name: &'static str,
    /// What the table is, one paragraph.
    pub about: &'static str,
    /// In the order the loader declares them.
    pub keys: &'static [Key],
}

/// One key of a table.
#[derive(Debug)]
pub struct Key {
    pub name: &'static str,
    pub default: Default,
    pub meaning: &'static str,
}

/// What a key is when the file does not give it.
#[derive(Debug, Clone, Copy)]
pub enum Default {
    /// A TOML value that means the same as leaving the key out (tests check it does).
    Value(&'static str),
    /// A default no TOML value spells (the host name, any path, …).
    Text(&'static str),
}

/// The rules that hold for every key, paragraph by paragraph.
pub const SYNTAX: &[&str] = &[
    "The file is TOML. Unknown keys and tables are errors (naming a known key that is close). \
     An error is reported as FILE:LINE:COLUMN: KEY: PROBLEM, every error at once.",
    "Durations are human strings: \"500ms\", \"15s\", \"10m\", \"25h\", \"7d\". Sizes are human \
     strings (\"8 MiB\") or integers (bytes). Relative paths are relative to the directory of \
     the config file.",
    "${NAME} in listen, token, path and journal (and in a [[queue]]'s endpoint, secret_id, \
     secret_key and token, and [console]'s listen and token) is replaced by the environment variable NAME when the config is \
     loaded; an unset variable is an error, and $$ is a literal $. Nothing \
     else is expanded, so a command keeps its $VARS for the shell. Every value taken from the \
     environment into token, path, journal or a [[queue]]'s secret_id is a secret, as are a \
     queue's secret_key and token and [console]'s token: it is shown as ${NAME} (the token as <token>) in logs, answers, the journal and check's output, and the variable it came from \
     is removed from every command's environment unless the hook lists it in pass_env.",
];

/// `[server]`, `[console]`, `[defaults]`, `[hooks.NAME]`, `[[queue]]` and `[notify]`, in that
/// order.
pub const TABLES: &[Table] = &[SERVER, CONSOLE, DEFAULTS, HOOKS, QUEUE, NOTIFY];

/// `[server]`: the listener, the journal, limits.
pub const SERVER: Table = Table {
    name: "[server]",
    about: "The listener, the delivery journal, and limits for every hook.",
    keys: &[
        Key {
            name: "listen",
            default: Default::Value("\"127.0.0.1:9000\""),
            meaning: "Where pushes are taken: IP:PORT ([::1]:9000 for IPv6), or HOST:PORT, \
                      resolved when serve starts, which listens on every address it resolves \
                      to. serve --listen overrides it. CMQ pushes only to a public address: \
                      listening beyond loopback, protect the hooks with a secret path, a token \
                      or an allow list (check warns otherwise).",
        },
        Key {
            name: "format",
            default: Default::Value("\"auto\""),
            meaning: "How push bodies are read. json: the body must be CMQ's JSON envelope \
                      (else 400). simplified: the body bytes are the message, untouched; topic \
                      and subscription are unknown. auto: the envelope if the body is a JSON \
                      object with a string msgBody and a msgId equal to the x-cmq-message-id \
                      header (without that header: with msgId, msgBody, topicName and \
                      subscriptionName), simplified otherwise.",
        },
        Key {
            name: "max_body",
            default: Default::Value("\"8 MiB\""),
            meaning: "Larger bodies are answered 413 and run nothing.",
        },
        Key {
            name: "max_running",
            default: Default::Value("64"),
            meaning: "Commands running at once, all hooks together (at least 1).",
        },
        Key {
            name: "respond_within",
            default: Default::Value("\"10s\""),
            meaning: "When the outcome is not known by then, the push is answered 503 with \
                      Retry-After; the run goes on and CMQ's retry gets its outcome. Keep it \
                      under CMQ's ~15 s timeout.",
        },
        Key {
            name: "unmatched",
            default: Default::Value("\"reject\""),
            meaning: "A push no hook matches: reject answers 404 (CMQ retries it), ack answers \
                      200. Both are journaled.",
        },
        Key {
            name: "journal",
            default: Default::Value("\"cmqhook.db\""),
            meaning: "The SQLite delivery journal (dedup across restarts, history, stored \
                      pushes, kept bodies); its directory must exist and be writable. \"off\" \
                      keeps dedup in memory only. A postgres:// (or postgresql://) URL is a \
                      PostgreSQL database several instances share; its sslmode and \
                      sslrootcert mean what they mean to libpq.",
        },
        Key {
            name: "dedup_for",
            default: Default::Value("\"25h\""),
            meaning: "How long the outcome of a (hook, message id) is remembered: a message \
                      that succeeded is not run again within it. Older journal rows are \
                      pruned.",
        },
        Key {
            name: "dedup_capacity",
            default: Default::Value("100000"),
            meaning: "With journal = \"off\" only: outcomes kept in memory; the oldest finished \
                      are forgotten first.",
        },
        Key {
            name: "shutdown_grace",
            default: Default::Value("\"30s\""),
            meaning: "On SIGTERM or SIGINT, how long running commands may finish before their \
                      process groups are killed (and journaled interrupted).",
        },
        Key {
            name: "token",
            default: Default::Text("none"),
            meaning: "A shared secret every push must carry, as ?token=, an X-Cmqhook-Token \
                      header or Authorization: Bearer; otherwise 401. CMQ cannot send headers \
                      and may drop query strings: for CMQ prefer a secret path \
                      (path = \"/cmq/${SECRET}\").",
        },
        Key {
            name: "allow",
            default: Default::Text("everyone"),
            meaning: "Client CIDRs (or addresses) allowed to push; others get 403.",
        },
        Key {
            name: "trusted_proxies",
            default: Default::Value("[]"),
            meaning: "Peers whose X-Forwarded-For is believed: the client is then the last \
                      address in it that is not a trusted proxy.",
        },
        Key {
            name: "instance",
            default: Default::Text("the host name"),
            meaning: "This instance's name in a shared PostgreSQL journal, recorded with every \
                      run and shown by history.",
        },
        Key {
            name: "lease",
            default: Default::Value("\"30s\""),
            meaning: "Shared PostgreSQL journal: how long a running claim lives without renewal \
                      (renewed every lease/3; at least 1s). An instance that dies is taken over \
                      once its leases expire. Keep it above 3 x the longest kill_grace.",
        },
        Key {
            name: "keep_dead",
            default: Default::Value("\"7d\""),
            meaning: "How long a dead message of an ack = \"stored\" hook is kept, body \
                      included, for history --dead and replay.",
        },
        Key {
            name: "keep_bodies",
            default: Default::Value("\"off\""),
            meaning: "How long the body of every push that matched a hook is kept in the \
                      journal, for cmqhook replay: a duration, or \"off\". Needs a journal.",
        },
        Key {
            name: "log_output",
            default: Default::Value("1000"),
            meaning: "How many lines of a run's output (stdout and stderr) are logged: a \
                      number (0: none) or \"all\". Beyond it, one line says how many lines and \
                      bytes were not logged and that cmqhook show RUN_ID has the kept output. \
                      Lines the log cannot take fast enough are counted there too: a command \
                      never waits for the log. Hooks may set their own.",
        },
        Key {
            name: "keep_output",
            default: Default::Value("\"64 KiB\""),
            meaning: "How much of a run's output its journal record keeps (cmqhook show): the \
                      first 4 KiB and the last keep_output - 4 KiB, stdout and stderr \
                      interleaved, each line starting with \"out| \" or \"err| \", secrets \
                      redacted, and a line saying how many lines and bytes were cut between \
                      them. At most 16 MiB. Hooks may set their own.",
        },
    ],
};

/// `[console]`: the web console and its JSON API (SPEC §10).
pub const CONSOLE: Table = Table {
    name: "[console]",
    about: "The console: a second listener of serve with a JSON API (/api/hooks, /api/runs, \
            /api/runs/ID, /api/dead, POST /api/replay) and pages for a person (overview, \
            deliveries, one run with its output, dead letters with a Replay button), read from \
            the journal (with PostgreSQL, the whole fleet's). Without this table there is no \
            console.",
    keys: &[
        Key {
            name: "listen",
            default: Default::Text("required"),
            meaning: "Where the console listens: IP:PORT or HOST:PORT, never the push \
                      listener's address. ${NAME} is expanded.",
        },
        Key {
            name: "token",
            default: Default::Text("none"),
            meaning: "The console's secret (${NAME} is expanded; use one): presented as \
                      Authorization: Bearer TOKEN, or through the login form, which sets an \
                      HttpOnly, SameSite=Strict cookie; otherwise 401. Required unless listen \
                      is loopback (check refuses it); without one the console is read-only, \
                      no replay.",
        },
    ],
};

/// `[defaults]`: hook keys given once for every hook.
pub const DEFAULTS: Table = Table {
    name: "[defaults]",
    about: "Any key of [hooks.NAME] except the selectors (path, topic, subscription, tags, \
            from_queue), \
            applied to every hook that does not set it. env tables are merged, the hook's \
            values winning.",
    keys: &[],
};

/// `[hooks.NAME]`: what a hook matches and what it runs.
pub const HOOKS: Table = Table {
    name: "[hooks.NAME]",
    about: "One table a hook; NAME appears in logs, answers and CMQHOOK_HOOK. The selectors \
            (path, topic, subscription, tags, from_queue) that a hook gives must all match a \
            push; an \
            omitted selector matches anything, and a hook with none catches every push. Every \
            matching hook runs, concurrently. A topic or subscription selector never matches \
            a SIMPLIFIED push (those are unknown): route such subscriptions by path or tags. \
            Exactly one of command and argv is required.",
    keys: &[
        Key {
            name: "path",
            default: Default::Text("any"),
            meaning: "The exact request path, e.g. \"/cmq/deploy\". With ${NAME} it is a \
                      secret, the way to protect a hook from anyone else who can reach the \
                      listener: path = \"/cmq/${DEPLOY_SECRET}\".",
        },
        Key {
            name: "topic",
            default: Default::Text("any"),
            meaning: "The topic name, exact or a glob (* ? [..]).",
        },
        Key {
            name: "subscription",
            default: Default::Text("any"),
            meaning: "The subscription name, exact or a glob.",
        },
        Key {
            name: "tags",
            default: Default::Text("any"),
            meaning: "Matches if the push carries any of these tags (CMQ's FilterTag).",
        },
        Key {
            name: "from_queue",
            default: Default::Text("none: pushes"),
            meaning: "Pull mode: the name of a [[queue]] whose received messages this hook \
                      takes (with tags, if given). It never matches a push; path, topic and \
                      subscription never match a queue message, so it cannot be given with \
                      them. CMQ_QUEUE is set to the queue's name.",
        },
        Key {
            name: "command",
            default: Default::Text("none"),
            meaning: "Run as /bin/sh -c COMMAND.",
        },
        Key {
            name: "argv",
            default: Default::Text("none"),
            meaning: "Executed directly, no shell, e.g. [\"./deploy.sh\", \"prod\"]; the \
                      program must be found (on PATH, or from workdir when it has a /).",
        },
        Key {
            name: "workdir",
            default: Default::Text("the config file's directory"),
            meaning: "The command's working directory; it must exist.",
        },
        Key {
            name: "env",
            default: Default::Value("{}"),
            meaning: "Variables added to the inherited environment, e.g. \
                      { DEPLOY_ENV = \"prod\" }.",
        },
        Key {
            name: "pass_env",
            default: Default::Value("[]"),
            meaning: "Variables that secrets came from (${NAME} in token, path, journal) that \
                      this hook's commands still inherit; every other one is removed from \
                      their environment.",
        },
        Key {
            name: "stdin",
            default: Default::Value("\"body\""),
            meaning: "What the command reads: body, the message (for a JSON push the decoded \
                      msgBody, byte-exact); envelope, the raw push body; none.",
        },
        Key {
            name: "timeout",
            default: Default::Value("\"5m\""),
            meaning: "Then SIGTERM to the command's whole process group, SIGKILL after \
                      kill_grace; the push is answered 504.",
        },
        Key {
            name: "kill_grace",
            default: Default::Value("\"5s\""),
            meaning: "How long the group has to exit after SIGTERM before SIGKILL.",
        },
        Key {
            name: "concurrency",
            default: Default::Value("0"),
            meaning: "At most this many runs of the hook at once (1 serialises deploys); 0: \
                      only max_running limits.",
        },
        Key {
            name: "queue",
            default: Default::Value("16"),
            meaning: "Runs waiting for a slot of this hook; beyond that a push gets 503 at \
                      once. Not for ack = \"stored\".",
        },
        Key {
            name: "ack",
            default: Default::Value("\"exit\""),
            meaning: "exit: the push is answered 2xx only once the command exited 0. stored: \
                      2xx once the push (body included) is durably stored in the journal; \
                      cmqhook then runs it, retries it on the retry schedule and keeps it as \
                      dead after the last failure. Needs a journal.",
        },
        Key {
            name: "retry",
            default: Default::Value("[\"10s\", \"1m\", \"10m\", \"1h\", \"6h\"]"),
            meaning: "ack = \"stored\": the delays before attempts 2, 3, ...; after the last \
                      one fails the message is dead. Its total may not exceed dedup_for.",
        },
        Key {
            name: "log_output",
            default: Default::Text("[server] log_output"),
            meaning: "How many lines of each run's output are logged (a number or \"all\").",
        },
        Key {
            name: "keep_output",
            default: Default::Text("[server] keep_output"),
            meaning: "How much of each run's output its record keeps.",
        },
    ],
};

/// `[[queue]]`: a CMQ queue consumed in pull mode (SPEC §11).
pub const QUEUE: Table = Table {
    name: "[[queue]]",
    about: "A CMQ (or TDMQ for CMQ) queue subscribed to the topic, consumed over the signed \
            legacy v2 queue API instead of taking pushes: no public endpoint is needed. One \
            table a queue. ${NAME} is expanded in endpoint, secret_id, secret_key and token; \
            secret_key and token are always secrets, and so is a secret_id taken from the \
            environment.",
    keys: &[
        Key {
            name: "name",
            default: Default::Text("required"),
            meaning: "The queue's name in CMQ (letters, digits, - and _; at most 64); unique \
                      among the [[queue]] tables.",
        },
        Key {
            name: "endpoint",
            default: Default::Text("required"),
            meaning: "The queue endpoint as the console shows it, http:// or https:// with no \
                      path, e.g. \"https://cmq-gz.public.tencenttdmq.com\"; requests go to \
                      ENDPOINT/v2/index.php.",
        },
        Key {
            name: "secret_id",
            default: Default::Text("required"),
            meaning: "The API key's SecretId, e.g. \"${TENCENTCLOUD_SECRET_ID}\".",
        },
        Key {
            name: "secret_key",
            default: Default::Text("required"),
            meaning: "The API key's SecretKey, e.g. \"${TENCENTCLOUD_SECRET_KEY}\"; it signs \
                      every request and is never sent.",
        },
        Key {
            name: "token",
            default: Default::Text("none"),
            meaning: "The session token of temporary credentials (sent as Token), e.g. \
                      \"${TENCENTCLOUD_SESSION_TOKEN}\".",
        },
        Key {
            name: "signature",
            default: Default::Value("\"HmacSHA256\""),
            meaning: "How requests are signed: HmacSHA256 or HmacSHA1.",
        },
        Key {
            name: "wait",
            default: Default::Value("\"30s\""),
            meaning: "Long polling: how long a receive waits for a message \
                      (pollingWaitSeconds), whole seconds from 0s to 30s.",
        },
        Key {
            name: "batch",
            default: Default::Value("16"),
            meaning: "Messages a receive asks for, from 1 to 16.",
        },
        Key {
            name: "pollers",
            default: Default::Value("1"),
            meaning: "Long-polling loops on the queue, from 1 to 64.",
        },
    ],
};

/// `[notify]`: the command told of failures.
pub const NOTIFY: Table = Table {
    name: "[notify]",
    about: "A command serve runs once for each event on lists: a run that failed, timed out, \
            was killed or interrupted, or a stored message that died. It gets CMQHOOK_EVENT, \
            CMQHOOK_HOOK, CMQ_MSG_ID, CMQHOOK_ATTEMPT, CMQHOOK_OUTCOME, CMQHOOK_EXIT_CODE and \
            CMQHOOK_RUN_ID, and the run's kept output on stdin. It runs in its own process \
            group, outside the hooks' slots, from the config file's directory, without the \
            variables secrets came from. Its own failure is logged at WARN and counted in \
            cmqhook_notify_failures_total; it is never retried and never notified about.",
    keys: &[
        Key {
            name: "command",
            default: Default::Text("none: no notifications"),
            meaning: "Run as /bin/sh -c COMMAND; required in [notify].",
        },
        Key {
            name: "on",
            default: Default::Value("[\"failed\", \"timed_out\", \"dead\"]"),
            meaning: "The events to run it for: failed, timed_out, killed, interrupted (runs \
                      that ended so) and dead (a stored message whose last retry failed; that \
                      last run is also a failed or timed_out event). Any other name is an \
                      error.",
        },
        Key {
            name: "timeout",
            default: Default::Value("\"30s\""),
            meaning: "Then SIGTERM to its process group, SIGKILL 5s later; counted as a \
                      failure.",
        },
    ],
};

/// The variables a hook's command gets, on top of the inherited environment and its `env`.
pub const COMMAND_ENVIRONMENT: &[(&str, &str)] = &[
    ("CMQ_MSG_ID", "The message id."),
    ("CMQ_REQUEST_ID", "The push's x-cmq-request-id."),
    ("CMQ_TOPIC", "The topic (empty for a SIMPLIFIED push)."),
    (
        "CMQ_SUBSCRIPTION",
        "The subscription (empty for a SIMPLIFIED push).",
    ),
    ("CMQ_TOPIC_OWNER", "The envelope's TopicOwner."),
    (
        "CMQ_PUBLISH_TIME",
        "The envelope's publishTime, as received.",
    ),
    ("CMQ_TAGS", "The message tags, comma-joined: a,b."),
    ("CMQ_FORMAT", "json or simplified."),
    (
        "CMQ_QUEUE",
        "The [[queue]] a pull-mode message came from (empty for a push).",
    ),
    ("CMQHOOK_HOOK", "The hook's name."),
    (
        "CMQHOOK_ATTEMPT",
        "1 for the first run of this hook for this message id, 2 for the next, ...",
    ),
    ("CMQHOOK_REPLAY", "1 in a run started by cmqhook replay."),
    (
        "CMQHOOK_RUN",
        "Which serve and run the process belongs to, so that a later serve finds it if this \
         one dies; leave it in place.",
    ),
];

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::config::raw::{RawConsole, RawHook, RawNotify, RawQueue, RawServer, keys_of};

    fn names(table: &Table) -> Vec<&'static str> {
        table.keys.iter().map(|key| key.name).collect()
    }

    #[test]
    fn the_reference_documents_exactly_the_keys_the_loader_takes() {
        assert_eq!(names(&SERVER), keys_of::<RawServer>());
        assert_eq!(names(&CONSOLE), keys_of::<RawConsole>());
        assert_eq!(names(&HOOKS), keys_of::<RawHook>());
        assert_eq!(names(&QUEUE), keys_of::<RawQueue>());
        assert_eq!(names(&NOTIFY), keys_of::<RawNotify>());
        assert!(DEFAULTS.keys.is_empty(), "[defaults] takes the hook keys");
    }

    /// The config `text` loads to, shown whole.
    fn loaded(text: &str, part: impl Fn(&Config) -> String) -> String {
        match Config::parse(Path::new("/etc/cmqhook/hooks.toml"), text, |_| None) {
            Ok(config) => part(&config),
            Err(err) => panic!("{text}\n{err}"),
        }
    }

    #[test]
    fn a_default_written_as_a_value_is_what_an_absent_key_means() {
        let hook = "[hooks.h]\ncommand = \"true\"\n";
        let server = |config: &Config| format!("{:?}", config.server);
        let hooks = |config: &Config| format!("{:?}", config.hooks);
        let queues = |config: &Config| format!("{:?}", config.queues);
        let notify = |config: &Config| format!("{:?}", config.notify);
        let queue = "[[queue]]\nname = \"q\"\nendpoint = \"https://cmq.example\"\nsecret_id = \"id\"\nsecret_key = \"key\"\n";
        type Shown<'a> = &'a dyn Fn(&Config) -> String;
        let cases: [(&Table, &str, &str, Shown); 4] = [
            (&SERVER, "[server]\n", "", &server),
            (&HOOKS, "", hook, &hooks),
            (&QUEUE, "", queue, &queues),
            (&NOTIFY, "[notify]\ncommand = \"true\"\n", "", &notify),
        ];
        let mut checked = 0;
        for (table, before, after, show) in cases {
            let without = loaded(&format!("{before}{after}"), show);
            for key in table.keys {
                let Default::Value(value) = key.default else {
                    continue;
                };
                let given = format!("{before}{after}{} = {value}\n", key.name);
                assert_eq!(loaded(&given, show), without, "{}.{}", table.name, key.name);
                checked += 1;
            }
        }
        assert!(checked > 20, "only {checked} defaults checked");
    }
}
