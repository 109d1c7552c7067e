//! The TOML configuration: raw structs as written, validated into a [`Config`].
//!
//! Every error names `file:line:column` and the key, and all of them are reported, not only the
//! first. `${NAME}` is expanded in `listen`, `token` and `path` only, and every value taken from
//! the environment is remembered as a secret so that [`Config::redact`] can hide it again.
//! This module does not run anything: it only checks that workdirs and programs exist.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use indexmap::IndexMap;
use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::cmq::FormatSetting;
use crate::routing::{Pattern, Selector};

const DEFAULT_LISTEN: &str = "127.0.0.1:9000";
const DEFAULT_JOURNAL: &str = "cmqhook.db";

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub file: PathBuf,
    pub server: Server,
    /// In file order.
    pub hooks: Vec<std::sync::Arc<Hook>>,
    /// Values that must never be shown, with what to show instead.
    secrets: Vec<Secret>,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: SocketAddr,
    pub format: FormatSetting,
    pub max_body: u64,
    pub max_running: usize,
    pub respond_within: Duration,
    pub unmatched: Unmatched,
    /// `None` when `journal = "off"`.
    pub journal: Option<PathBuf>,
    pub dedup_for: Duration,
    pub shutdown_grace: Duration,
    pub token: Option<String>,
    /// Empty means everyone.
    pub allow: Vec<IpNet>,
    pub trusted_proxies: Vec<IpNet>,
}

/// What to answer a push that no hook matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    /// 404: CMQ retries.
    #[default]
    Reject,
    /// 200: CMQ forgets it.
    Ack,
}

/// What a command reads on stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StdinMode {
    /// The message body (the decoded `msgBody` for JSON pushes).
    #[default]
    Body,
    /// The raw push body.
    Envelope,
    None,
}

/// How a hook's command is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run as `/bin/sh -c COMMAND`.
    Shell(String),
    /// Executed directly, no shell.
    Argv(Vec<String>),
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Shell(command) => write!(f, "sh -c {command:?}"),
            Action::Argv(argv) => write!(f, "exec {argv:?}"),
        }
    }
}

/// One `[hooks.NAME]` table, with `[defaults]` applied.
#[derive(Debug, Clone)]
pub struct Hook {
    pub name: String,
    pub selector: Selector,
    /// The `path` selector as written (with `${NAME}`), for display.
    pub path_shown: Option<String>,
    pub action: Action,
    pub workdir: PathBuf,
    pub env: Vec<(String, String)>,
    pub stdin: StdinMode,
    pub timeout: Duration,
    pub kill_grace: Duration,
    /// 0: only `max_running` limits.
    pub concurrency: usize,
    pub queue: usize,
}

impl AsRef<Hook> for Hook {
    fn as_ref(&self) -> &Hook {
        self
    }
}

#[derive(Debug, Clone)]
struct Secret {
    value: String,
    shown: String,
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read config: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", join_lines(.0))]
    Invalid(Vec<Diagnostic>),
}

/// One problem, at `file:line:column`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

fn join_lines(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Reads and validates `file`.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        Self::parse(file, &text, |name| std::env::var(name).ok())
    }

    /// Validates `text` as if read from `file`; `env` looks up variables for `${NAME}`.
    pub fn parse(
        file: &Path,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let dir = match file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        let mut loader = Loader {
            file: file.display().to_string(),
            text,
            dir,
            env: &env,
            diagnostics: Vec::new(),
            secrets: Vec::new(),
        };
        let config = loader.load();
        // Longest first, so that a secret containing another is hidden whole.
        loader
            .secrets
            .sort_by_key(|secret| std::cmp::Reverse(secret.value.len()));
        match config {
            Some(config) if loader.diagnostics.is_empty() => Ok(Config {
                file: file.to_owned(),
                secrets: loader.secrets,
                ..config
            }),
            _ => Err(ConfigError::Invalid(loader.diagnostics)),
        }
    }

    /// `text` with every secret value replaced by `${NAME}` or `<token>`.
    pub fn redact(&self, text: &str) -> String {
        redact(&self.secrets, text)
    }

    /// Things that are allowed but probably not meant.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.hooks.is_empty() {
            warnings.push("no hooks are configured: every push is unmatched".to_owned());
        }
        for hook in &self.hooks {
            if hook.selector.is_empty() {
                warnings.push(format!(
                    "hook `{}` has no selector: it catches every push",
                    hook.name
                ));
            }
        }
        warnings
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Spanned<String>>,
    format: Option<FormatSetting>,
    max_body: Option<Spanned<ByteSize>>,
    max_running: Option<Spanned<usize>>,
    respond_within: Option<RawDuration>,
    unmatched: Option<Unmatched>,
    journal: Option<String>,
    dedup_for: Option<RawDuration>,
    shutdown_grace: Option<RawDuration>,
    token: Option<Spanned<String>>,
    allow: Option<Vec<Spanned<String>>>,
    trusted_proxies: Option<Vec<Spanned<String>>>,
}

type RawDuration = humantime_serde::Serde<Duration>;

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawHook {
    path: Option<Spanned<String>>,
    topic: Option<Spanned<String>>,
    subscription: Option<Spanned<String>>,
    tags: Option<Spanned<Vec<String>>>,
    command: Option<Spanned<String>>,
    argv: Option<Spanned<Vec<String>>>,
    workdir: Option<Spanned<String>>,
    env: Option<IndexMap<String, String>>,
    stdin: Option<StdinMode>,
    timeout: Option<RawDuration>,
    kill_grace: Option<RawDuration>,
    concurrency: Option<usize>,
    queue: Option<usize>,
}

struct Loader<'a> {
    file: String,
    text: &'a str,
    dir: PathBuf,
    env: &'a dyn Fn(&str) -> Option<String>,
    diagnostics: Vec<Diagnostic>,
    secrets: Vec<Secret>,
}

impl Loader<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        self.diagnostics.push(Diagnostic {
            file: self.file.clone(),
            line,
            column,
            message: message.into(),
        });
    }

    fn toml_error(&mut self, prefix: &str, table: Option<&DeTable<'_>>, err: toml::de::Error) {
        let span = err.span().unwrap_or(0..0);
        // Name the key whose value the error is about, when serde's message does not.
        let key = table.and_then(|table| {
            table
                .iter()
                .find(|(key, value)| {
                    key.span().contains(&span.start) || value.span().contains(&span.start)
                })
                .map(|(key, _)| key.get_ref().to_string())
        });
        let message = err.message().trim_end();
        let message = match key {
            Some(key) => format!("{prefix}{key}: {message}"),
            None if prefix.is_empty() => message.to_owned(),
            None => format!("{}: {message}", prefix.trim_end_matches('.')),
        };
        self.error(span, message);
    }

    fn section<T: for<'de> Deserialize<'de> + Default>(
        &mut self,
        prefix: &str,
        value: Spanned<DeValue<'_>>,
    ) -> Option<T> {
        let table = value.get_ref().as_table().cloned();
        match T::deserialize(ValueDeserializer::from(value)) {
            Ok(section) => Some(section),
            Err(err) => {
                self.toml_error(prefix, table.as_ref(), err);
                None
            }
        }
    }

    fn load(&mut self) -> Option<Config> {
        let root = match DeTable::parse(self.text) {
            Ok(root) => root.into_inner(),
            Err(err) => {
                self.toml_error("", None, err);
                return None;
            }
        };
        let mut server = Some(RawServer::default());
        let mut defaults = Some(RawHook::default());
        let mut raw_hooks = Vec::new();
        for (key, value) in root {
            match key.get_ref().as_ref() {
                "server" => server = self.section("server.", value),
                "defaults" => defaults = self.section("defaults.", value),
                "hooks" => {
                    let span = value.span();
                    let DeValue::Table(hooks) = value.into_inner() else {
                        self.error(span, "hooks: expected tables `[hooks.NAME]`");
                        continue;
                    };
                    for (name, hook) in hooks {
                        let name = name.into_inner().into_owned();
                        let span = hook.span();
                        let prefix = format!("hooks.{name}.");
                        if let Some(raw) = self.section::<RawHook>(&prefix, hook) {
                            raw_hooks.push((name, span, raw));
                        }
                    }
                }
                other => {
                    let message = format!(
                        "unknown section `{other}`, expected one of `server`, `defaults`, `hooks`"
                    );
                    self.error(key.span(), message);
                }
            }
        }
        let server = self.server(server?);
        let defaults = defaults?;
        for (selector, span) in [
            ("path", defaults.path.as_ref().map(Spanned::span)),
            ("topic", defaults.topic.as_ref().map(Spanned::span)),
            (
                "subscription",
                defaults.subscription.as_ref().map(Spanned::span),
            ),
            ("tags", defaults.tags.as_ref().map(Spanned::span)),
        ] {
            if let Some(span) = span {
                self.error(
                    span,
                    format!("defaults.{selector}: selectors cannot have defaults"),
                );
            }
        }
        let hooks = raw_hooks
            .into_iter()
            .filter_map(|(name, span, raw)| self.hook(name, span, raw, &defaults))
            .map(std::sync::Arc::new)
            .collect();
        Some(Config {
            file: PathBuf::new(),
            server,
            hooks,
            secrets: Vec::new(),
        })
    }

    fn server(&mut self, raw: RawServer) -> Server {
        let listen = match raw.listen {
            Some(listen) => {
                let span = listen.span();
                let text = self.expand("server.listen", &listen);
                text.and_then(|text| match text.parse() {
                    Ok(addr) => Some(addr),
                    Err(_) => {
                        let shown = self.redact(&text);
                        let message = format!("server.listen: `{shown}` is not an IP:PORT address");
                        self.error(span, message);
                        None
                    }
                })
            }
            None => None,
        };
        let token = raw.token.and_then(|token| {
            let value = self.expand("server.token", &token)?;
            if value.is_empty() {
                self.error(token.span(), "server.token: must not be empty");
                return None;
            }
            self.secrets.push(Secret {
                value: value.clone(),
                shown: "<token>".to_owned(),
            });
            Some(value)
        });
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
        let journal = match raw.journal.as_deref() {
            Some("off") => None,
            Some(path) => Some(self.dir.join(path)),
            None => Some(self.dir.join(DEFAULT_JOURNAL)),
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
            dedup_for: duration(raw.dedup_for, Duration::from_secs(25 * 3600)),
            shutdown_grace: duration(raw.shutdown_grace, Duration::from_secs(30)),
            token,
            allow: self.networks("server.allow", raw.allow),
            trusted_proxies: self.networks("server.trusted_proxies", raw.trusted_proxies),
        }
    }

    fn networks(&mut self, key: &str, raw: Option<Vec<Spanned<String>>>) -> Vec<IpNet> {
        let mut networks = Vec::new();
        for text in raw.unwrap_or_default() {
            let parsed = text
                .get_ref()
                .parse::<IpNet>()
                .or_else(|_| text.get_ref().parse::<std::net::IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => networks.push(net),
                Err(_) => {
                    let message =
                        format!("{key}: `{}` is not a CIDR or IP address", text.get_ref());
                    self.error(text.span(), message);
                }
            }
        }
        networks
    }

    fn hook(
        &mut self,
        name: String,
        span: Range<usize>,
        raw: RawHook,
        defaults: &RawHook,
    ) -> Option<Hook> {
        let before = self.diagnostics.len();
        let key = |field: &str| format!("hooks.{name}.{field}");
        let (command, argv) = if raw.command.is_some() || raw.argv.is_some() {
            (raw.command, raw.argv)
        } else {
            (defaults.command.clone(), defaults.argv.clone())
        };
        let argv_span = argv.as_ref().map(Spanned::span);
        let action = match (command, argv) {
            (Some(_), Some(argv)) => {
                let message = format!("{}: give either `command` or `argv`, not both", key("argv"));
                self.error(argv.span(), message);
                None
            }
            (None, None) => {
                let message = format!("hooks.{name}: needs `command` or `argv`");
                self.error(span, message);
                None
            }
            (Some(command), None) if command.get_ref().trim().is_empty() => {
                self.error(
                    command.span(),
                    format!("{}: must not be empty", key("command")),
                );
                None
            }
            (Some(command), None) => Some(Action::Shell(command.into_inner())),
            (None, Some(argv)) if argv.get_ref().is_empty() => {
                self.error(argv.span(), format!("{}: must not be empty", key("argv")));
                None
            }
            (None, Some(argv)) => Some(Action::Argv(argv.into_inner())),
        };
        let workdir = match raw.workdir.or_else(|| defaults.workdir.clone()) {
            Some(workdir) => {
                let path = self.dir.join(workdir.get_ref());
                if !path.is_dir() {
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
        if let (Some(Action::Argv(argv)), Some(span)) = (&action, &argv_span)
            && !program_exists(&argv[0], &workdir)
        {
            let message = format!("{}: program `{}` not found", key("argv"), argv[0]);
            self.error(span.clone(), message);
        }
        let path = raw.path.and_then(|path| {
            let value = self.expand(&key("path"), &path)?;
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
        let mut env: Vec<(String, String)> = defaults
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        for (name, value) in raw.env.unwrap_or_default() {
            env.retain(|(existing, _)| *existing != name);
            env.push((name, value));
        }
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
            },
            path_shown,
            action: action?,
            workdir,
            env,
            stdin: raw.stdin.or(defaults.stdin).unwrap_or_default(),
            timeout: duration(raw.timeout.or(defaults.timeout), Duration::from_secs(300)),
            kill_grace: duration(
                raw.kill_grace.or(defaults.kill_grace),
                Duration::from_secs(5),
            ),
            concurrency: raw.concurrency.or(defaults.concurrency).unwrap_or(0),
            queue: raw.queue.or(defaults.queue).unwrap_or(16),
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

    /// Expands `${NAME}` and `$$` in `text`, recording each value taken as a secret.
    fn expand(&mut self, key: &str, text: &Spanned<String>) -> Option<String> {
        match expand_vars(text.get_ref(), self.env) {
            Ok((value, taken)) => {
                for (name, taken) in taken {
                    if !taken.is_empty() && !self.secrets.iter().any(|s| s.value == taken) {
                        self.secrets.push(Secret {
                            value: taken,
                            shown: format!("${{{name}}}"),
                        });
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

    fn redact(&self, text: &str) -> String {
        redact(&self.secrets, text)
    }
}

fn redact(secrets: &[Secret], text: &str) -> String {
    let mut text = text.to_owned();
    for secret in secrets {
        if text.contains(&secret.value) {
            text = text.replace(&secret.value, &secret.shown);
        }
    }
    text
}

/// Whether `program` can be executed from `workdir`: a path when it has a `/`, else on `PATH`.
fn program_exists(program: &str, workdir: &Path) -> bool {
    if program.contains('/') {
        return workdir.join(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn duration(raw: Option<RawDuration>, default: Duration) -> Duration {
    raw.map_or(default, RawDuration::into_inner)
}

/// `${NAME}` → the variable's value, `$$` → `$`, any other `$` stays. Returns the text and
/// the (name, value) pairs taken.
fn expand_vars(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, Vec<(String, String)>), String> {
    let mut out = String::with_capacity(text.len());
    let mut taken = Vec::new();
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(after) = after.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(after) = after.strip_prefix('{') {
            let end = after
                .find('}')
                .ok_or_else(|| "unterminated `${` (write `$$` for a literal `$`)".to_owned())?;
            let name = &after[..end];
            let valid =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!("`${{{name}}}` is not a variable name"));
            }
            let value =
                env(name).ok_or_else(|| format!("environment variable `{name}` is not set"))?;
            out.push_str(&value);
            taken.push((name.to_owned(), value));
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok((out, taken))
}
