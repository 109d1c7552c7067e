//! The TOML configuration: raw structs as written, validated into a [`Config`].
//!
//! Every error names `file:line:column` and the key, and all of them are reported, not only the
//! first. `${NAME}` is expanded in `listen`, `token` and `path` only, and every value taken from
//! the environment is remembered as a secret so that [`Config::redact`] can hide it again.
//! This module does not run anything: it only checks that workdirs and programs exist. Nor does
//! it route: a hook's [`Selector`] says what it matches, and [`crate::routing`] indexes them.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use indexmap::IndexMap;
use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::cmq::FormatSetting;

mod selector;

pub use selector::{LazyGlob, Pattern, Selector};

const DEFAULT_LISTEN: &str = "127.0.0.1:9000";
const DEFAULT_JOURNAL: &str = "cmqhook.db";

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub file: PathBuf,
    pub server: Server,
    /// In file order.
    pub hooks: Vec<Arc<Hook>>,
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
    Shell(Arc<str>),
    /// Executed directly, no shell; never empty.
    Argv(Arc<[String]>),
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
    pub workdir: Arc<Path>,
    /// In order; shared by every run of the hook.
    pub env: Arc<[(String, String)]>,
    pub stdin: StdinMode,
    pub timeout: Duration,
    pub kill_grace: Duration,
    /// 0: only `max_running` limits.
    pub concurrency: usize,
    pub queue: usize,
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
            _ => {
                // In file order, whichever check found them.
                loader
                    .diagnostics
                    .sort_by_key(|diagnostic| (diagnostic.line, diagnostic.column));
                Err(ConfigError::Invalid(loader.diagnostics))
            }
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
        if !self.server.listen.ip().is_loopback() {
            let secret_path = self.hooks.iter().any(|hook| {
                hook.path_shown
                    .as_deref()
                    .is_some_and(|path| path.contains("${"))
            });
            if self.server.token.is_none() && !secret_path {
                warnings.push(format!(
                    "`listen = \"{}\"` is not loopback, and there is neither a `token` nor a hook `path` with a `${{...}}` secret: anyone who finds the URL can run your hooks",
                    self.server.listen
                ));
            }
            if self.server.allow.is_empty() {
                warnings.push(format!(
                    "`allow` is open to every address while listening on `{}`",
                    self.server.listen
                ));
            }
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
        // A broken [server] does not stop the hooks from being checked: report every error.
        let server = server.map(|raw| self.server(raw));
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
        let hooks: Vec<_> = raw_hooks
            .into_iter()
            .filter_map(|(name, span, raw)| self.hook(name, span, raw, &defaults))
            .map(Arc::new)
            .collect();
        Some(Config {
            file: PathBuf::new(),
            server: server?,
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
            (Some(command), None) => Some(Action::Shell(command.into_inner().into())),
            (None, Some(argv)) if argv.get_ref().is_empty() => {
                self.error(argv.span(), format!("{}: must not be empty", key("argv")));
                None
            }
            (None, Some(argv)) => Some(Action::Argv(argv.into_inner().into())),
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
            workdir: workdir.into(),
            env: env.into(),
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
        // Longest first, as in `Config::parse`: a secret containing another is hidden whole.
        let mut secrets = self.secrets.clone();
        secrets.sort_by_key(|secret| std::cmp::Reverse(secret.value.len()));
        redact(&secrets, text)
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

#[cfg(test)]
mod tests {
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
        assert_eq!(diagnostic.file, FILE, "{diagnostic}");
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
            "0.0.0.0:9100".parse::<SocketAddr>().expect("valid")
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
            "127.0.0.1:9000".parse::<SocketAddr>().expect("valid")
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
            "[server]\nlisten = \"localhost:9000\"\n",
            2,
            10,
            &["server.listen", "localhost:9000"],
        );
        one_error(
            "[server]\nlisten = \"127.0.0.1\"\n",
            2,
            10,
            &["server.listen"],
        );
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
        // Deserialisation errors (a, c) are found before later checks (b), yet shown in order.
        let text = "[hooks.a]\nbogus = 1\n[hooks.b]\ncommand = \"x\"\ntopic = \"[z-a]\"\n\
                    [hooks.c]\ntimeout = \"x\"\n";
        let lines: Vec<usize> = diagnostics(text).iter().map(|d| d.line).collect();
        assert_eq!(lines, [2, 5, 7]);
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
            "127.0.0.2:9100".parse::<SocketAddr>().expect("valid")
        );
        assert_eq!(config.server.token.as_deref(), Some("pre-tok-7f3a9c"));
        let a = hook(&config, "a");
        assert_eq!(a.selector.path.as_deref(), Some("/cmq/d3pl0y-s3cr3t/x"));
        assert_eq!(a.path_shown.as_deref(), Some("/cmq/${DEPLOY_SECRET}/x"));
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
[server]
journal = "${NO_SUCH_DIR}/j.db"

[defaults]
env = { V = "${NO_SUCH_VAR}" }

[hooks.sh]
topic = "${NO_SUCH_TOPIC}"
command = "echo $HOME ${NO_SUCH_VAR} $$ > \"$CMQ_MSG_ID\""

[hooks.exec]
argv = ["/bin/true", "${NO_SUCH_ARG}", "$$"]
"#;
        let config = parse(text);
        assert_eq!(
            config.server.journal.as_deref(),
            Some(Path::new("/some/dir/${NO_SUCH_DIR}/j.db"))
        );
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
            "POST /cmq/${DEPLOY_SECRET}?token=<token> from ${LISTEN_HOST}"
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
    fn reading_a_missing_file_names_it() {
        let dir = tempdir();
        let file = dir.path().join("absent.toml");
        let err = Config::load(&file).expect_err("no such file");
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
        assert!(err.to_string().starts_with(&file.display().to_string()));
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
}
