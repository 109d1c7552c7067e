//! From text to a [`Config`]: read every table key by key, apply defaults, resolve paths,
//! check everything, and collect every diagnostic.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::Listen;
use super::raw::{RawConsole, RawDuration, RawHook, RawNotify, RawServer, duration_error, keys_of};
use super::{
    Ack, Action, Config, ConfigError, Console, Diagnostic, DurationText, Hook, Notify, NotifyEvent,
    Pattern, Selector, Server,
};
use crate::runner::{DEFAULT_KEEP_BYTES, Environment, OutputPolicy};
use crate::secrets::{Secret, Secrets, expand_vars};

mod queue;

const DEFAULT_LISTEN: &str = "127.0.0.1:9000";
const DEFAULT_JOURNAL: &str = "cmqhook.db";
/// A hook's `timeout`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// A claim's lease in a shared journal.
const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// `journal = "off"`: (hook, message id) outcomes kept in memory, oldest finished evicted first.
const DEFAULT_DEDUP_CAPACITY: usize = 100_000;
/// `keep_dead`: how long a dead stored message is kept.
const DEFAULT_KEEP_DEAD: Duration = Duration::from_secs(7 * 86_400);
/// `retry`: the delays before attempts 2, 3, … of a stored message.
const DEFAULT_RETRY: [Duration; 5] = [
    Duration::from_secs(10),
    Duration::from_secs(60),
    Duration::from_secs(600),
    Duration::from_secs(3600),
    Duration::from_secs(6 * 3600),
];
/// The most `keep_output` may be (16 MiB, as its error says): a running command holds up to
/// twice that in memory.
const MAX_KEEP_OUTPUT: usize = 16 * 1024 * 1024;
/// `[notify] timeout`.
const DEFAULT_NOTIFY_TIMEOUT: Duration = Duration::from_secs(30);
/// `[notify] on`.
const DEFAULT_NOTIFY_ON: [NotifyEvent; 3] = [
    NotifyEvent::Failed,
    NotifyEvent::TimedOut,
    NotifyEvent::Dead,
];
/// The top-level tables.
const SECTIONS: &[&str] = &["server", "console", "defaults", "hooks", "queue", "notify"];

/// How far loading looks beyond the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scope {
    /// The file, and the workdirs and `argv` programs it names.
    File,
    /// Also what `serve` needs: a journal it can create (an error), and the programs of shell
    /// commands (a warning each, since the shell may define them).
    Serve,
}

/// Validates `text` as if read from `file`; `env` looks up variables for `${NAME}`.
pub(super) fn parse(
    file: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    scope: Scope,
) -> Result<Config, ConfigError> {
    let dir = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut loader = Loader {
        file: file.display().to_string(),
        text,
        dir,
        env,
        scope,
        diagnostics: Vec::new(),
        warnings: Vec::new(),
        secrets: Vec::new(),
        secret_vars: Vec::new(),
        journal: JournalKind::Sqlite,
        dedup_for: Duration::MAX,
        respond_within: Duration::MAX,
        queue_refs: Vec::new(),
        output: OutputPolicy::default(),
    };
    let config = loader.load();
    match config {
        Some(mut config) if loader.diagnostics.is_empty() => {
            let secrets = Secrets::new(loader.secrets);
            let output_secrets = secrets.for_output();
            // Every hook's environment loses the variables any secret came from, but those it
            // asks to keep; its output is searched for the secrets long enough to tell. Hooks
            // with the same environment share it: most have no `env` of their own.
            let mut environments = HashMap::new();
            for hook in &mut config.hooks {
                let hook = Arc::make_mut(hook);
                let hidden = loader.secret_vars.iter();
                let hidden = hidden.filter(|name| !hook.pass_env.contains(name));
                hook.hidden_env = hidden.cloned().collect();
                hook.output_secrets = output_secrets.clone();
                hook.environment = Arc::clone(
                    environments
                        .entry((Arc::clone(&hook.env), Arc::clone(&hook.hidden_env)))
                        .or_insert_with(|| Arc::new(Environment::new(&hook.env, &hook.hidden_env))),
                );
            }
            // The notify command gets no secret's variable: it has no `pass_env`.
            if let Some(notify) = &mut config.notify {
                let notify = Arc::make_mut(notify);
                notify.environment = Arc::new(Environment::new(&[], &loader.secret_vars));
                notify.output_secrets = output_secrets.clone();
            }
            sort(&mut loader.warnings);
            Ok(Config {
                file: file.to_owned(),
                secrets,
                secret_vars: loader.secret_vars,
                located_warnings: loader.warnings,
                ..config
            })
        }
        _ => {
            sort(&mut loader.diagnostics);
            Err(ConfigError::Invalid(loader.diagnostics))
        }
    }
}

/// In file order, whichever check found them.
fn sort(diagnostics: &mut [Diagnostic]) {
    diagnostics.sort_by_key(|diagnostic| (diagnostic.line, diagnostic.column));
}

/// A table read key by key.
struct Section<T> {
    raw: T,
    /// Where the table starts (`0..0` for a table the file does not have).
    span: Range<usize>,
    /// The keys whose values could not be read, and those that unknown keys probably meant:
    /// the checks that need them are skipped, so one mistake is reported once.
    broken: Vec<&'static str>,
}

impl<T: DeserializeOwned + Default> Section<T> {
    /// A table the file does not have.
    fn absent() -> Self {
        Section {
            raw: T::default(),
            span: 0..0,
            broken: Vec::new(),
        }
    }

    /// A table that could not be read at all: nothing in it is to be relied on.
    fn unreadable(span: Range<usize>) -> Self {
        Section {
            raw: T::default(),
            span,
            broken: keys_of::<T>().to_vec(),
        }
    }

    fn is_broken(&self, key: &str) -> bool {
        self.broken.contains(&key)
    }
}

/// What the journal is, as far as hooks' checks care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JournalKind {
    Off,
    Sqlite,
    Postgres,
    /// `journal` could not be read: checks that depend on it are skipped.
    Unknown,
}

struct Loader<'a> {
    file: String,
    text: &'a str,
    dir: PathBuf,
    env: &'a dyn Fn(&str) -> Option<String>,
    scope: Scope,
    diagnostics: Vec<Diagnostic>,
    /// Things `serve` will probably trip over, at their line.
    warnings: Vec<Diagnostic>,
    secrets: Vec<Secret>,
    /// The variables secrets were taken from, in the order met.
    secret_vars: Vec<String>,
    /// Known once [server] is read, for the hooks' checks.
    journal: JournalKind,
    dedup_for: Duration,
    /// Known once [server] is read; `Duration::MAX` when it cannot be (no timeout is judged).
    respond_within: Duration,
    /// Every hook's `from_queue`: (hook, queue, where), checked once the `[[queue]]` tables
    /// are read.
    queue_refs: Vec<(String, String, Range<usize>)>,
    /// Known once [server] is read: what hooks that do not say get.
    output: OutputPolicy,
}

impl Loader<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let diagnostic = self.diagnostic(span, message.into());
        self.diagnostics.push(diagnostic);
    }

    fn warning(&mut self, span: Range<usize>, message: impl Into<String>) {
        let diagnostic = self.diagnostic(span, message.into());
        self.warnings.push(diagnostic);
    }

    fn diagnostic(&self, span: Range<usize>, message: String) -> Diagnostic {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Diagnostic {
            file: self.file.clone(),
            line,
            column,
            message,
        }
    }

    /// A TOML syntax error, or a value serde could not read (`key` names it).
    fn toml_error(&mut self, key: Option<&str>, fallback: Range<usize>, err: &toml::de::Error) {
        let message = err.message().trim_end();
        let message = match key {
            Some(key) => format!("{key}: {message}"),
            None => message.to_owned(),
        };
        self.error(err.span().unwrap_or(fallback), message);
    }

    /// Reads the table `value` key by key, so that every unknown key and every bad value gets
    /// a diagnostic of its own (serde's derive stops at the first). `prefix` names the table:
    /// `server.`, `hooks.NAME.`. `None` when `value` is no table.
    fn section<T: DeserializeOwned + Default>(
        &mut self,
        prefix: &str,
        value: Spanned<DeValue<'_>>,
    ) -> Option<Section<T>> {
        let span = value.span();
        let DeValue::Table(table) = value.into_inner() else {
            let name = prefix.trim_end_matches('.');
            self.error(span, format!("{name}: expected a table `[{name}]`"));
            return None;
        };
        let keys = keys_of::<T>();
        let mut readable = DeTable::new();
        let mut broken = Vec::new();
        for (key, value) in table {
            let name = key.get_ref().as_ref();
            let Some(&known) = keys.iter().find(|known| **known == name) else {
                let meant = did_you_mean(name, keys);
                let message = match meant {
                    Some(meant) => {
                        format!("{prefix}{name}: unknown field `{name}`, did you mean `{meant}`?")
                    }
                    None => format!(
                        "{prefix}{name}: unknown field `{name}`, expected one of {}",
                        listed(keys)
                    ),
                };
                self.error(key.span(), message);
                broken.extend(meant);
                continue;
            };
            // This key alone: its error, if any, is its own.
            let mut alone = DeTable::new();
            alone.insert(key.clone(), value.clone());
            match read::<T>(span.clone(), alone) {
                Ok(_) => {
                    readable.insert(key, value);
                }
                Err(err) => {
                    self.toml_error(Some(&format!("{prefix}{name}")), value.span(), &err);
                    broken.push(known);
                }
            }
        }
        // Every key was read alone, so together they are read too; should that ever fail, it
        // is reported rather than unwrapped.
        match read::<T>(span.clone(), readable) {
            Ok(raw) => Some(Section { raw, span, broken }),
            Err(err) => {
                self.toml_error(Some(prefix.trim_end_matches('.')), span.clone(), &err);
                Some(Section::unreadable(span))
            }
        }
    }

    fn load(&mut self) -> Option<Config> {
        let root = match DeTable::parse(self.text) {
            Ok(root) => root.into_inner(),
            Err(err) => {
                self.toml_error(None, 0..0, &err);
                return None;
            }
        };
        let mut server = Section::absent();
        let mut console = None;
        let mut defaults = Section::<RawHook>::absent();
        let mut raw_hooks = Vec::new();
        let mut raw_queues = Vec::new();
        let mut notify = None;
        for (key, value) in root {
            match key.get_ref().as_ref() {
                "server" => {
                    let span = value.span();
                    server = self
                        .section("server.", value)
                        .unwrap_or_else(|| Section::unreadable(span));
                }
                "console" => {
                    let span = value.span();
                    console = Some(
                        self.section::<RawConsole>("console.", value)
                            .unwrap_or_else(|| Section::unreadable(span)),
                    );
                }
                "defaults" => {
                    let span = value.span();
                    defaults = self
                        .section("defaults.", value)
                        .unwrap_or_else(|| Section::unreadable(span));
                }
                "notify" => {
                    let span = value.span();
                    notify = Some(
                        self.section::<RawNotify>("notify.", value)
                            .unwrap_or_else(|| Section::unreadable(span)),
                    );
                }
                "hooks" => {
                    let span = value.span();
                    let DeValue::Table(hooks) = value.into_inner() else {
                        self.error(span, "hooks: expected tables `[hooks.NAME]`");
                        continue;
                    };
                    for (name, hook) in hooks {
                        let name = name.into_inner().into_owned();
                        let prefix = format!("hooks.{name}.");
                        if let Some(raw) = self.section::<RawHook>(&prefix, hook) {
                            raw_hooks.push((name, raw));
                        }
                    }
                }
                "queue" => raw_queues = self.queue_tables(value),
                other => {
                    let message = match did_you_mean(other, SECTIONS) {
                        Some(meant) => {
                            format!("unknown section `{other}`, did you mean `{meant}`?")
                        }
                        None => format!(
                            "unknown section `{other}`, expected one of {}",
                            listed(SECTIONS)
                        ),
                    };
                    self.error(key.span(), message);
                }
            }
        }
        // A broken [server] does not stop the hooks from being checked: report every error.
        let dedup_for_broken = server.is_broken("dedup_for");
        let respond_within_broken = server.is_broken("respond_within");
        let server_listen_broken = server.is_broken("listen");
        let server = self.server(server);
        let console = console.and_then(|console| {
            self.console(console, (!server_listen_broken).then_some(&server.listen))
        });
        // What a broken value would have been is unknown: nothing is judged by it.
        if !dedup_for_broken {
            self.dedup_for = server.dedup_for;
        }
        if !respond_within_broken {
            self.respond_within = server.respond_within;
        }
        self.output = server.output;
        let raw = &defaults.raw;
        for (selector, span) in [
            ("path", raw.path.as_ref().map(Spanned::span)),
            ("topic", raw.topic.as_ref().map(Spanned::span)),
            ("subscription", raw.subscription.as_ref().map(Spanned::span)),
            ("tags", raw.tags.as_ref().map(Spanned::span)),
            ("from_queue", raw.from_queue.as_ref().map(Spanned::span)),
        ] {
            if let Some(span) = span {
                self.error(
                    span,
                    format!("defaults.{selector}: selectors cannot have defaults"),
                );
            }
        }
        let hooks: Vec<_> = raw_hooks
            .into_iter()
            .filter_map(|(name, raw)| self.hook(name, raw, &defaults))
            .map(Arc::new)
            .collect();
        let queue_names: Option<Vec<String>> = raw_queues
            .iter()
            .map(|section| section.raw.name.as_ref().map(|name| name.get_ref().clone()))
            .collect();
        let queues = self.queues(raw_queues);
        // A queue whose name cannot be read has its own error: no hook is judged by it.
        if let Some(names) = queue_names {
            self.check_queue_refs(&names);
        }
        let notify = notify
            .and_then(|section| self.notify(section))
            .map(Arc::new);
        Some(Config {
            file: PathBuf::new(),
            server,
            console,
            hooks,
            queues,
            notify,
            secrets: Secrets::default(),
            secret_vars: Vec::new(),
            located_warnings: Vec::new(),
        })
    }

    fn server(&mut self, section: Section<RawServer>) -> Server {
        // Also set when its value is in error (an unset variable): checks of keys that depend
        // on the journal are skipped then, rather than judged against "off".
        let mut journal_broken = section.is_broken("journal");
        let raw = section.raw;
        let listen = match raw.listen {
            Some(listen) => {
                let span = listen.span();
                // A port is no secret: what `listen` takes from the environment is not hidden.
                let text = self.expand("server.listen", &listen, false);
                text.and_then(|text| match text.parse() {
                    Ok(addr) => Some(addr),
                    Err(err) => {
                        // As written: what a variable holds is not shown.
                        let shown = listen.get_ref();
                        let message = format!("server.listen: `{shown}`: {err}");
                        self.error(span, message);
                        None
                    }
                })
            }
            None => None,
        };
        let token = raw
            .token
            .and_then(|token| self.token("server.token", "<token>", &token));
        let max_running = match raw.max_running {
            Some(n) if *n.get_ref() == 0 => {
                self.error(n.span(), "server.max_running: must be at least 1");
                1
            }
            Some(n) => n.into_inner(),
            None => 64,
        };
        let max_body = raw
            .max_body
            .map_or(8 * 1024 * 1024, |size| size.get_ref().as_u64());
        let dedup_capacity = match raw.dedup_capacity {
            Some(n) if *n.get_ref() == 0 => {
                self.error(n.span(), "server.dedup_capacity: must be at least 1");
                1
            }
            Some(n) => n.into_inner(),
            None => DEFAULT_DEDUP_CAPACITY,
        };
        let mut postgres = None;
        let journal = match &raw.journal {
            Some(journal) => match self.expand("server.journal", journal, true) {
                Some(off) if off == "off" => None,
                Some(url) if crate::delivery::postgres::is_url(&url) => {
                    // The URL holds a password: the error does not quote it.
                    if let Err(reason) = crate::delivery::postgres::parse_url(&url) {
                        self.error(journal.span(), format!("server.journal: {reason}"));
                    }
                    postgres = Some(url);
                    None
                }
                Some(path) => Some(self.dir.join(path)),
                None => {
                    journal_broken = true;
                    None
                }
            },
            None => Some(self.dir.join(DEFAULT_JOURNAL)),
        };
        self.journal = match (&journal, &postgres) {
            _ if journal_broken => JournalKind::Unknown,
            (_, Some(_)) => JournalKind::Postgres,
            (Some(_), None) => JournalKind::Sqlite,
            (None, None) => JournalKind::Off,
        };
        let lease = match raw.lease {
            Some(lease) if lease.get_ref().into_inner() < Duration::from_secs(1) => {
                self.error(lease.span(), "server.lease: must be at least 1s");
                DEFAULT_LEASE
            }
            Some(lease) => lease.into_inner().into_inner(),
            None => DEFAULT_LEASE,
        };
        let instance = match raw.instance {
            Some(instance) if instance.get_ref().trim().is_empty() => {
                self.error(instance.span(), "server.instance: must not be empty");
                String::new()
            }
            Some(instance) => instance.into_inner(),
            None => host_name(),
        };
        if let Some(path) = &journal
            && self.scope == Scope::Serve
            && !journal_broken
            && let Some(problem) = journal_problem(path)
        {
            // What a variable put into the path stays hidden.
            let problem = Secrets::new(self.secrets.clone())
                .redact(&problem)
                .into_owned();
            match &raw.journal {
                Some(journal) => self.error(journal.span(), format!("server.journal: {problem}")),
                None => self.error(
                    section.span,
                    format!(
                        "server.journal: the default journal `{DEFAULT_JOURNAL}` (beside the config): {problem}; set `journal` in [server] to a writable place, or \"off\""
                    ),
                ),
            }
        }
        let keep_bodies = raw.keep_bodies.and_then(|keep| {
            let span = keep.span();
            let text = keep.into_inner();
            if text == "off" {
                return None;
            }
            match humantime::parse_duration(&text) {
                Ok(keep) if journal.is_none() && postgres.is_none() && !journal_broken => {
                    self.error(
                        span,
                        "server.keep_bodies: bodies are kept in the journal, but `server.journal` is \"off\"",
                    );
                    Some(keep)
                }
                Ok(keep) => Some(keep),
                Err(err) => {
                    self.error(
                        span,
                        format!("server.keep_bodies: {} (or \"off\")", duration_error(&text, &err)),
                    );
                    None
                }
            }
        });
        let output = OutputPolicy {
            log_lines: raw
                .log_output
                .map_or(OutputPolicy::default().log_lines, |lines| lines.0),
            keep_bytes: self
                .keep_output("server.keep_output", raw.keep_output)
                .unwrap_or(DEFAULT_KEEP_BYTES),
        };
        Server {
            listen: listen.unwrap_or_else(|| {
                DEFAULT_LISTEN
                    .parse()
                    .expect("the default listen address is valid")
            }),
            format: raw.format.unwrap_or_default(),
            max_body,
            max_running,
            respond_within: duration(raw.respond_within, Duration::from_secs(10)),
            unmatched: raw.unmatched.unwrap_or_default(),
            journal,
            postgres,
            instance,
            lease,
            dedup_for: duration(raw.dedup_for, Duration::from_secs(25 * 3600)),
            dedup_capacity,
            shutdown_grace: duration(raw.shutdown_grace, Duration::from_secs(30)),
            token,
            allow: self.networks("server.allow", raw.allow),
            trusted_proxies: self.networks("server.trusted_proxies", raw.trusted_proxies),
            keep_dead: duration(raw.keep_dead, DEFAULT_KEEP_DEAD),
            keep_bodies,
            output,
        }
    }

    /// A `keep_output` size, if it is one this cmqhook keeps.
    fn keep_output(
        &mut self,
        key: &str,
        raw: Option<Spanned<bytesize::ByteSize>>,
    ) -> Option<usize> {
        let raw = raw?;
        match usize::try_from(raw.get_ref().as_u64()) {
            Ok(bytes) if bytes <= MAX_KEEP_OUTPUT => Some(bytes),
            _ => {
                self.error(
                    raw.span(),
                    format!(
                        "{key}: {} is more than a run's output may keep (at most 16 MiB)",
                        raw.get_ref().display().iec()
                    ),
                );
                None
            }
        }
    }

    /// `[notify]`: `None` without a usable `command` (an error unless a key that could not
    /// be read was meant to be it).
    fn notify(&mut self, section: Section<RawNotify>) -> Option<Notify> {
        let Section { raw, span, broken } = section;
        let command = match raw.command {
            Some(command) if command.get_ref().trim().is_empty() => {
                self.error(command.span(), "notify.command: must not be empty");
                None
            }
            Some(command) => Some(command.into_inner()),
            None if broken.contains(&"command") => None,
            None => {
                self.error(span, "notify: needs `command`");
                None
            }
        };
        let mut on = Vec::new();
        let written = raw.on.map(Spanned::into_inner);
        for event in written.unwrap_or_else(|| DEFAULT_NOTIFY_ON.to_vec()) {
            if !on.contains(&event) {
                on.push(event);
            }
        }
        Some(Notify {
            command: command?.into(),
            on,
            timeout: raw.timeout.map_or(DEFAULT_NOTIFY_TIMEOUT, |timeout| {
                timeout.into_inner().into_inner()
            }),
            workdir: self.dir.clone().into(),
            environment: Arc::default(),
            output_secrets: Secrets::default(),
        })
    }

    /// The token `key` as written: `${NAME}` expanded, not empty, and a secret shown as
    /// `shown`.
    fn token(&mut self, key: &str, shown: &str, written: &Spanned<String>) -> Option<String> {
        let value = self.expand(key, written, true)?;
        if value.is_empty() {
            self.error(written.span(), format!("{key}: must not be empty"));
            return None;
        }
        self.secrets.push(Secret {
            value: value.clone(),
            shown: shown.to_owned(),
        });
        Some(value)
    }

    /// `[console]`: its listener (never `push`, the push listener's address, when that is
    /// known) and its token, required unless the listener is loopback.
    fn console(&mut self, section: Section<RawConsole>, push: Option<&Listen>) -> Option<Console> {
        let listen_broken = section.is_broken("listen");
        let token_broken = section.is_broken("token");
        let raw = section.raw;
        let Some(written) = raw.listen else {
            if !listen_broken {
                self.error(
                    section.span,
                    "console.listen: required: where the console listens, e.g. \"127.0.0.1:9001\"",
                );
            }
            return None;
        };
        let span = written.span();
        // A port is no secret, as for `server.listen`.
        let listen: Listen = match self.expand("console.listen", &written, false)?.parse() {
            Ok(listen) => listen,
            Err(err) => {
                let message = format!("console.listen: `{}`: {err}", written.get_ref());
                self.error(span, message);
                return None;
            }
        };
        if let Some(push) = push
            && listen.overlaps(push)
        {
            self.error(
                span.clone(),
                format!(
                    "console.listen: `{listen}` is the push listener's address (server.listen = `{push}`): give the console an address of its own"
                ),
            );
        }
        let token = match raw.token {
            Some(token) => Some(self.token("console.token", "<console token>", &token)?),
            None if !listen.is_loopback() && !token_broken => {
                self.error(
                    span,
                    format!(
                        "console.listen: `{listen}` is not loopback: anyone who can reach it would see every run; set `token` in [console] (token = \"${{CMQHOOK_CONSOLE_TOKEN}}\") or listen on 127.0.0.1"
                    ),
                );
                None
            }
            None => None,
        };
        Some(Console { listen, token })
    }

    fn networks(&mut self, key: &str, raw: Option<Vec<Spanned<String>>>) -> Vec<IpNet> {
        let mut networks = Vec::new();
        for text in raw.unwrap_or_default() {
            let parsed = text
                .get_ref()
                .parse::<IpNet>()
                .or_else(|_| text.get_ref().parse::<std::net::IpAddr>().map(IpNet::from));
            match parsed {
                // IPv4 clients are compared as IPv4, so a mapped network is written as one.
                Ok(net) => networks.push(crate::access::canonical_net(net)),
                Err(_) => {
                    let message =
                        format!("{key}: `{}` is not a CIDR or IP address", text.get_ref());
                    self.error(text.span(), message);
                }
            }
        }
        networks
    }

    /// Every `from_queue` must name a `[[queue]]` of the file; an `ack = "exit"` hook fed by one
    /// is told what a failure costs (SPEC §11).
    fn check_queue_refs(&mut self, names: &[String]) {
        for (hook, queue, span) in std::mem::take(&mut self.queue_refs) {
            if !names.contains(&queue) {
                let known = if names.is_empty() {
                    "the file has no [[queue]] table".to_owned()
                } else {
                    format!("queues: {}", names.join(", "))
                };
                self.error(
                    span,
                    format!("hooks.{hook}.from_queue: no [[queue]] is named `{queue}` ({known})"),
                );
            }
        }
    }

    fn hook(
        &mut self,
        name: String,
        section: Section<RawHook>,
        defaults: &Section<RawHook>,
    ) -> Option<Hook> {
        let before = self.diagnostics.len();
        let key = |field: &str| format!("hooks.{name}.{field}");
        let Section {
            raw,
            span: hook_span,
            broken,
        } = section;
        // Whether a key the hook does not give (from the hook or [defaults], where its value
        // would have come from) could not be read.
        let unreadable = |field: &'static str, given: bool| {
            !given && (broken.contains(&field) || defaults.is_broken(field))
        };
        let action_given = raw.command.is_some() || raw.argv.is_some();
        let action_broken = unreadable("command", action_given) || unreadable("argv", action_given);
        let (command, argv) = if action_given {
            (raw.command, raw.argv)
        } else {
            (defaults.raw.command.clone(), defaults.raw.argv.clone())
        };
        let command_span = command.as_ref().map(Spanned::span);
        let argv_span = argv.as_ref().map(Spanned::span);
        let action = match (command, argv) {
            (Some(_), Some(argv)) => {
                let message = format!("{}: give either `command` or `argv`, not both", key("argv"));
                self.error(argv.span(), message);
                None
            }
            // The key that was meant is reported already.
            (None, None) if action_broken => None,
            (None, None) => {
                let message = format!("hooks.{name}: needs `command` or `argv`");
                self.error(hook_span, message);
                None
            }
            (Some(command), None) if command.get_ref().trim().is_empty() => {
                self.error(
                    command.span(),
                    format!("{}: must not be empty", key("command")),
                );
                None
            }
            (Some(command), None) => Some(Action::Shell(command.into_inner().into())),
            (None, Some(argv)) if argv.get_ref().is_empty() => {
                self.error(argv.span(), format!("{}: must not be empty", key("argv")));
                None
            }
            (None, Some(argv)) => Some(Action::Argv(argv.into_inner().into())),
        };
        let mut workdir_broken = unreadable("workdir", raw.workdir.is_some());
        let workdir = match raw.workdir.or_else(|| defaults.raw.workdir.clone()) {
            Some(workdir) => {
                let path = self.dir.join(workdir.get_ref());
                if !path.is_dir() {
                    // Programs are looked for from it: not in a directory that is not there.
                    workdir_broken = true;
                    let message = format!(
                        "{}: `{}` is not a directory",
                        key("workdir"),
                        path.display()
                    );
                    self.error(workdir.span(), message);
                }
                path
            }
            None => self.dir.clone(),
        };
        let mut env: Vec<(String, String)> = defaults
            .raw
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        for (name, value) in raw.env.unwrap_or_default() {
            env.retain(|(existing, _)| *existing != name);
            env.push((name, value));
        }
        // Where the program is looked for is only known when the workdir and PATH are.
        if !workdir_broken && !unreadable("env", false) {
            let search_path = env
                .iter()
                .find(|(name, _)| name == "PATH")
                .map(|(_, value)| value.into());
            let search_path = search_path.or_else(|| std::env::var_os("PATH"));
            match (&action, &argv_span, &command_span) {
                (Some(Action::Argv(argv)), Some(span), _) => {
                    if let Err(missing) = find_program(&argv[0], &workdir, search_path.as_deref()) {
                        let message = format!("{}: program {missing}", key("argv"));
                        self.error(span.clone(), message);
                    }
                }
                (Some(Action::Shell(command)), _, Some(span)) if self.scope == Scope::Serve => {
                    if let Some(program) = shell_program(command)
                        && let Err(missing) =
                            find_program(program, &workdir, search_path.as_deref())
                    {
                        let message = format!(
                            "{}: program {missing}: unless the shell defines it, every run fails (exit 127)",
                            key("command")
                        );
                        self.warning(span.clone(), message);
                    }
                }
                _ => {}
            }
        }
        let path = raw.path.and_then(|path| {
            let value = self.expand(&key("path"), &path, true)?;
            if !value.starts_with('/') {
                let message = format!("{}: must start with `/`", key("path"));
                self.error(path.span(), message);
            }
            Some((value, path.into_inner()))
        });
        let topic = raw
            .topic
            .and_then(|topic| self.pattern(&key("topic"), &topic));
        let subscription = raw
            .subscription
            .and_then(|sub| self.pattern(&key("subscription"), &sub));
        let tags = raw.tags.and_then(|tags| {
            if tags.get_ref().iter().all(|tag| tag.trim().is_empty()) {
                let message = format!(
                    "{}: must name at least one tag (omit it to match any)",
                    key("tags")
                );
                self.error(tags.span(), message);
                return None;
            }
            Some(tags.into_inner())
        });
        let from_queue_span = raw.from_queue.as_ref().map(Spanned::span);
        let from_queue = raw.from_queue.and_then(|queue| {
            if queue.get_ref().trim().is_empty() {
                let message = format!("{}: must name a [[queue]]", key("from_queue"));
                self.error(queue.span(), message);
                return None;
            }
            // A queue message has none of these: the hook could never run.
            let push_only = [
                ("path", path.is_some()),
                ("topic", topic.is_some()),
                ("subscription", subscription.is_some()),
            ];
            if let Some((selector, _)) = push_only.into_iter().find(|(_, given)| *given) {
                let message = format!(
                    "{}: a message from a queue has no {selector}, so a hook with both never runs (select queue messages by from_queue and tags only)",
                    key("from_queue")
                );
                self.error(queue.span(), message);
                return None;
            }
            let span = queue.span();
            let queue = queue.into_inner();
            self.queue_refs.push((name.clone(), queue.clone(), span));
            Some(queue)
        });
        let ack_given = raw.ack.is_some();
        // A hook's `ack` in error is not `[defaults]`' ack: nothing is judged by that.
        let ack_broken = unreadable("ack", ack_given);
        let ack = raw.ack.or_else(|| defaults.raw.ack.clone());
        let retry_given = raw.retry.is_some();
        let raw_retry = raw.retry.or_else(|| defaults.raw.retry.clone());
        let retry_span = raw_retry.as_ref().map(Spanned::span);
        let retry: Arc<[Duration]> = match raw_retry {
            Some(retry) => retry
                .into_inner()
                .into_iter()
                .map(RawDuration::into_inner)
                .collect(),
            None => DEFAULT_RETRY.into(),
        };
        let ack_span = ack.as_ref().map(Spanned::span);
        let ack = ack.map(Spanned::into_inner).unwrap_or_default();
        if let (Ack::Stored, Some(span), false) = (ack, ack_span, ack_broken) {
            let shown = if ack_given {
                key("ack")
            } else {
                format!("hooks.{name}: defaults.ack")
            };
            match self.journal {
                JournalKind::Off => self.error(
                    span.clone(),
                    format!(
                        "{shown}: `ack = \"stored\"` needs a journal, but `server.journal` is \"off\""
                    ),
                ),
                JournalKind::Sqlite | JournalKind::Postgres | JournalKind::Unknown => {}
            }
            let total: Duration = retry.iter().sum();
            if total > self.dedup_for && !unreadable("retry", retry_given) {
                let shown = if retry_given || retry_span.is_none() {
                    key("retry")
                } else {
                    format!("hooks.{name}: defaults.retry")
                };
                self.error(
                    retry_span.unwrap_or(span),
                    format!(
                        "{shown}: the retry schedule ({}) is longer in total than `server.dedup_for` ({}): a CMQ retry after `dedup_for` would run the message again",
                        DurationText(total),
                        DurationText(self.dedup_for)
                    ),
                );
            }
        }
        if let (Some(queue), Some(span), Ack::Exit, false) =
            (&from_queue, from_queue_span, ack, ack_broken)
        {
            self.warning(
                span,
                format!(
                    "{}: a message of queue `{queue}` whose run fails is left in the queue, runs again after every visibility timeout, and is lost once the queue's retention (msgRetentionSeconds) drops it; `ack = \"stored\"` deletes it once stored and retries it on a schedule of its own, keeping it as a dead letter after the last",
                    key("from_queue")
                ),
            );
        }
        let timeout_given = raw.timeout.is_some();
        let raw_timeout = raw.timeout.or_else(|| defaults.raw.timeout.clone());
        let timeout = raw_timeout
            .as_ref()
            .map_or(DEFAULT_TIMEOUT, |timeout| timeout.get_ref().into_inner());
        // Only a timeout the config sets says that runs may take that long: the default (5m)
        // says nothing about a hook's runs, and `check` shows what it means beside the hook. A
        // queue message waits for its runs however long they take: no respond_within for it.
        if let Some(span) = raw_timeout.as_ref().map(Spanned::span)
            && !unreadable("timeout", timeout_given)
            && ack == Ack::Exit
            && from_queue.is_none()
            && timeout > self.respond_within
        {
            let shown = if timeout_given {
                key("timeout")
            } else {
                format!("hooks.{name}: defaults.timeout")
            };
            self.warning(
                span,
                format!(
                    "{shown}: {} is longer than `server.respond_within` ({}): the first delivery of a message whose run takes longer is answered 503 (CMQ's retry gets the outcome); `ack = \"stored\"` answers at once",
                    DurationText(timeout),
                    DurationText(self.respond_within)
                ),
            );
        }
        let keep_output = match raw.keep_output {
            Some(keep) => self.keep_output(&key("keep_output"), Some(keep)),
            None => {
                let keep = defaults.raw.keep_output.clone();
                self.keep_output(&format!("hooks.{name}: defaults.keep_output"), keep)
            }
        };
        let output = OutputPolicy {
            log_lines: raw
                .log_output
                .or(defaults.raw.log_output)
                .map_or(self.output.log_lines, |lines| lines.0),
            keep_bytes: keep_output.unwrap_or(self.output.keep_bytes),
        };
        if self.diagnostics.len() > before {
            return None;
        }
        let (path, path_shown) = match path {
            Some((value, shown)) => (Some(value), Some(shown)),
            None => (None, None),
        };
        Some(Hook {
            selector: Selector {
                path,
                topic,
                subscription,
                tags,
                from_queue,
            },
            path_shown,
            action: action?,
            workdir: workdir.into(),
            env: env.into(),
            pass_env: raw
                .pass_env
                .or_else(|| defaults.raw.pass_env.clone())
                .unwrap_or_default(),
            hidden_env: Arc::new([]),
            environment: Arc::default(),
            output_secrets: Secrets::default(),
            stdin: raw.stdin.or(defaults.raw.stdin).unwrap_or_default(),
            timeout,
            kill_grace: duration(
                raw.kill_grace.or(defaults.raw.kill_grace),
                Duration::from_secs(5),
            ),
            concurrency: raw.concurrency.or(defaults.raw.concurrency).unwrap_or(0),
            queue: raw.queue.or(defaults.raw.queue).unwrap_or(16),
            ack,
            retry,
            output,
            name,
        })
    }

    fn pattern(&mut self, key: &str, text: &Spanned<String>) -> Option<Pattern> {
        match Pattern::new(text.get_ref()) {
            Ok(pattern) => Some(pattern),
            Err(err) => {
                let message = format!("{key}: invalid glob: {}", err.kind());
                self.error(text.span(), message);
                None
            }
        }
    }

    /// Expands `${NAME}` and `$$` in `text`; with `secret`, records each value taken as a
    /// secret and its variable as one that commands do not inherit.
    fn expand(&mut self, key: &str, text: &Spanned<String>, secret: bool) -> Option<String> {
        match expand_vars(text.get_ref(), self.env) {
            Ok((value, taken)) => {
                for (name, taken) in taken.into_iter().filter(|_| secret) {
                    self.secrets.push(Secret {
                        value: taken,
                        shown: format!("${{{name}}}"),
                    });
                    if !self.secret_vars.contains(&name) {
                        self.secret_vars.push(name);
                    }
                }
                Some(value)
            }
            Err(message) => {
                self.error(text.span(), format!("{key}: {message}"));
                None
            }
        }
    }
}

/// Reads `T` from the table `table` (spanned `span`).
fn read<T: DeserializeOwned>(span: Range<usize>, table: DeTable<'_>) -> Result<T, toml::de::Error> {
    T::deserialize(ValueDeserializer::from(Spanned::new(
        span,
        DeValue::Table(table),
    )))
}

/// The key of `keys` that `unknown` is probably a typo of: the nearest within an edit distance
/// of a third of its length (at least 1), ignoring case.
fn did_you_mean(unknown: &str, keys: &[&'static str]) -> Option<&'static str> {
    let unknown = unknown.to_lowercase();
    let limit = (unknown.chars().count() / 3).max(1);
    keys.iter()
        .map(|key| (strsim::damerau_levenshtein(&unknown, key), *key))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, key)| key)
}

/// `` `a`, `b`, `c` ``.
fn listed(keys: &[&str]) -> String {
    let keys: Vec<String> = keys.iter().map(|key| format!("`{key}`")).collect();
    keys.join(", ")
}

/// Why `serve` could not create or open the journal `path`, if it could not: its directory
/// must exist and be writable (SQLite adds `-wal`, `-shm` and cmqhook a `.lock` beside it).
fn journal_problem(path: &Path) -> Option<String> {
    use nix::unistd::{AccessFlags, access};
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let shown = dir.display();
    match std::fs::metadata(dir) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Some(format!("directory `{shown}` does not exist"));
        }
        Err(err) => return Some(format!("directory `{shown}` cannot be used: {err}")),
        Ok(meta) if !meta.is_dir() => {
            return Some(format!("`{shown}` is not a directory"));
        }
        Ok(_) => {}
    }
    if let Err(errno) = access(dir, AccessFlags::W_OK | AccessFlags::X_OK) {
        return Some(format!(
            "directory `{shown}` is not writable: {}",
            errno.desc()
        ));
    }
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Some(format!("`{}` is a directory", path.display())),
        Ok(_) => access(path, AccessFlags::R_OK | AccessFlags::W_OK)
            .err()
            .map(|errno| format!("`{}` is not writable: {}", path.display(), errno.desc())),
        Err(_) => None,
    }
}

/// Looks for `program` as `exec` would from `workdir`: a path when it has a `/`, else in
/// `search_path` (PATH; its relative entries are relative to `workdir`). Err says where it
/// looked: `` `./x` not found (looked for /srv/x) `` or `` `x` not found on PATH ``.
fn find_program(
    program: &str,
    workdir: &Path,
    search_path: Option<&std::ffi::OsStr>,
) -> Result<(), String> {
    if program.contains('/') {
        let path = workdir.join(program);
        if path.is_file() {
            return Ok(());
        }
        // `workdir/./x` reads better as `workdir/x`, and a relative workdir as absolute.
        let shown: PathBuf = path.components().collect();
        let shown = std::path::absolute(&shown).unwrap_or(shown);
        return Err(format!(
            "`{program}` not found (looked for {})",
            shown.display()
        ));
    }
    search_path
        .into_iter()
        .flat_map(std::env::split_paths)
        .map(|dir| workdir.join(dir).join(program))
        .any(|path| path.is_file())
        .then_some(())
        .ok_or_else(|| format!("`{program}` not found on PATH"))
}

/// What the shell words of a command line may start with without naming a program: keywords
/// and the builtins of POSIX sh, dash and bash.
const SHELL_WORDS: &[&str] = &[
    "!",
    "{",
    "}",
    "case",
    "do",
    "done",
    "elif",
    "else",
    "esac",
    "fi",
    "for",
    "function",
    "if",
    "in",
    "select",
    "then",
    "time",
    "until",
    "while",
    ".",
    ":",
    "[",
    "alias",
    "bg",
    "break",
    "builtin",
    "caller",
    "cd",
    "command",
    "compgen",
    "complete",
    "continue",
    "declare",
    "dirs",
    "disown",
    "echo",
    "enable",
    "eval",
    "exec",
    "exit",
    "export",
    "false",
    "fc",
    "fg",
    "getopts",
    "hash",
    "help",
    "history",
    "jobs",
    "kill",
    "let",
    "local",
    "logout",
    "mapfile",
    "popd",
    "printf",
    "pushd",
    "pwd",
    "read",
    "readarray",
    "readonly",
    "return",
    "set",
    "shift",
    "shopt",
    "source",
    "suspend",
    "test",
    "times",
    "trap",
    "true",
    "type",
    "typeset",
    "ulimit",
    "umask",
    "unalias",
    "unset",
    "wait",
];

/// The program a shell command line starts with, when that is plain to see: after leading
/// `NAME=value` assignments, a first word of plain characters that is no keyword or builtin.
/// `None` whenever the shell could make something else of it (quotes, `$`, globs, `~`,
/// redirections, subshells): a warning is only given where it cannot be wrong.
fn shell_program(command: &str) -> Option<&str> {
    let plain = |c: char| c.is_alphanumeric() || "_./+,@%:-".contains(c);
    let mut rest = command;
    loop {
        rest = rest.trim_start();
        let end = rest
            .find(|c: char| c.is_whitespace() || ";&|()".contains(c))
            .unwrap_or(rest.len());
        let (word, after) = rest.split_at(end);
        if let Some((name, value)) = word.split_once('=') {
            let is_name = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !is_name || !value.chars().all(plain) {
                return None;
            }
            rest = after;
            continue;
        }
        if word.is_empty() || !word.chars().all(plain) || SHELL_WORDS.contains(&word) {
            return None;
        }
        return Some(word);
    }
}

/// The host's name, for `instance`.
fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "cmqhook".to_owned())
}

fn duration(raw: Option<RawDuration>, default: Duration) -> Duration {
    raw.map_or(default, RawDuration::into_inner)
}
