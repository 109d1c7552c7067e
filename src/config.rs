//! The TOML configuration: raw structs as written (`raw`), checked and completed into a
//! [`Config`] (`load`), with a [`Diagnostic`] for each problem (`diagnostic`); `${NAME}`
//! expansion and redaction in [`crate::secrets`]; a hook's selectors in `selector`; every key
//! with its default and meaning, as `cmqhook.toml(5)` shows them, in [`reference`].
//!
//! Every error names `file:line:column` and the key, and all of them are reported, not only the
//! first. `${NAME}` is expanded in `listen`, `token`, `path` and `journal` only (and in a
//! `[[queue]]`'s credentials and endpoint, `load/queue.rs`); every value the last three take
//! from the environment is a secret (as are a queue's credentials) that [`Config::redact`] hides again, and
//! the variables it came from are not passed to commands unless a hook lists them in `pass_env`.
//! This module does not run anything: it only checks that workdirs and programs exist (and, for
//! `check` and `serve`, that the journal can be created and whether shell commands' programs
//! are found). Nor does it route: a hook's [`Selector`] says what it matches, and
//! [`crate::routing`] indexes them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::cmq::FormatSetting;

mod diagnostic;
mod listen;
mod load;
mod raw;
pub mod reference;
mod selector;
#[cfg(test)]
mod tests;

pub use diagnostic::{ConfigError, Diagnostic};
pub use listen::{Listen, ListenError};
use load::Scope;
pub use selector::{LazyGlob, Mismatch, Pattern, Selector};

use crate::runner::{Environment, OutputPolicy};
use crate::secrets::{self, Secrets};

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub file: PathBuf,
    pub server: Server,
    /// `[console]`: absent, no console.
    pub console: Option<Console>,
    /// In file order.
    pub hooks: Vec<Arc<Hook>>,
    /// The `[[queue]]` tables (SPEC §11), in file order; names are unique.
    pub queues: Vec<Queue>,
    /// `[notify]`: the command run for the events it lists; `None` without a `command`.
    pub notify: Option<Arc<Notify>>,
    /// Values that must never be shown, with what to show instead.
    secrets: Secrets,
    /// The variables they came from.
    secret_vars: Vec<String>,
    /// Found while loading, at their line: shell commands whose program is not found.
    located_warnings: Vec<Diagnostic>,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: Listen,
    pub format: FormatSetting,
    pub max_body: u64,
    pub max_running: usize,
    pub respond_within: Duration,
    pub unmatched: Unmatched,
    /// The SQLite journal; `None` when `journal = "off"` or a PostgreSQL URL.
    pub journal: Option<PathBuf>,
    /// `journal = "postgres://…"`: the database several instances share (SPEC §8). Holds a
    /// password: never show it (the secrets it was expanded from are redacted).
    pub postgres: Option<String>,
    /// This instance's name in a shared journal; default: the host name.
    pub instance: String,
    /// How long a claim in a shared journal lives without renewal.
    pub lease: Duration,
    pub dedup_for: Duration,
    /// `journal = "off"` only: how many (hook, message id) outcomes are kept in memory.
    pub dedup_capacity: usize,
    pub shutdown_grace: Duration,
    pub token: Option<String>,
    /// Empty means everyone.
    pub allow: Vec<IpNet>,
    pub trusted_proxies: Vec<IpNet>,
    /// How long a dead stored message (and its body) is kept (SPEC §9).
    pub keep_dead: Duration,
    /// `keep_bodies`: how long the body of every push that matched a hook is kept, for
    /// `cmqhook replay` (SPEC §9); `None`: "off".
    pub keep_bodies: Option<Duration>,
    /// `log_output` and `keep_output` as [server] gives them: what a hook that does not set
    /// them gets.
    pub output: OutputPolicy,
}

/// `[console]`: the console's listener (SPEC §10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Console {
    /// Never the push listener's address.
    pub listen: Listen,
    /// The console's token (a secret); `None` only on a loopback address, where the console
    /// is then read-only (no replay).
    pub token: Option<String>,
}

/// One `[[queue]]` table: a CMQ queue consumed over the signed v2 API (SPEC §11).
#[derive(Clone, PartialEq, Eq)]
pub struct Queue {
    /// The queue's name in CMQ (`queueName`); unique among the tables.
    pub name: String,
    /// `scheme://host[:port]`, without a trailing `/` (requests go to `{endpoint}/v2/index.php`).
    pub endpoint: String,
    /// A secret when it came from `${NAME}`.
    pub secret_id: String,
    /// Always a secret: [`Config::redact`] hides it, and `Debug` does not show it.
    pub secret_key: String,
    /// Temporary credentials' session token (`Token`); a secret.
    pub token: Option<String>,
    pub signature: SignatureMethod,
    /// Long polling (`pollingWaitSeconds`): whole seconds, 0 to 30.
    pub wait: Duration,
    /// Messages a receive asks for (`numOfMsg`): 1 to 16.
    pub batch: usize,
    /// Long-polling loops on the queue: at least 1.
    pub pollers: usize,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("secret_id", &self.secret_id)
            .field("secret_key", &"<secret_key>")
            .field("token", &self.token.as_ref().map(|_| "<token>"))
            .field("signature", &self.signature)
            .field("wait", &self.wait)
            .field("batch", &self.batch)
            .field("pollers", &self.pollers)
            .finish()
    }
}

/// How a queue request is signed (`SignatureMethod`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum SignatureMethod {
    #[default]
    #[serde(rename = "HmacSHA256")]
    HmacSha256,
    #[serde(rename = "HmacSHA1")]
    HmacSha1,
}

impl SignatureMethod {
    /// As the API spells it: `HmacSHA256`, `HmacSHA1`.
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureMethod::HmacSha256 => "HmacSHA256",
            SignatureMethod::HmacSha1 => "HmacSHA1",
        }
    }
}

impl fmt::Display for SignatureMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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

/// When a push matching a hook is answered 2xx (SPEC §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ack {
    /// Once the command exited 0 (and that is journaled).
    #[default]
    Exit,
    /// Once the push is durably stored in the journal; cmqhook runs and retries it.
    Stored,
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

/// What a `[notify]` command is told about (SPEC §10): a run that ended so, or a stored
/// message that died.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    Failed,
    TimedOut,
    Killed,
    Interrupted,
    /// A stored message's last retry failed (SPEC §9).
    Dead,
}

impl NotifyEvent {
    /// The name in `on` and in `CMQHOOK_EVENT`.
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::Failed => "failed",
            NotifyEvent::TimedOut => "timed_out",
            NotifyEvent::Killed => "killed",
            NotifyEvent::Interrupted => "interrupted",
            NotifyEvent::Dead => "dead",
        }
    }
}

/// `[notify]`: the command run once for each event `on` lists.
#[derive(Debug, Clone)]
pub struct Notify {
    /// Run as `/bin/sh -c COMMAND`.
    pub command: Arc<str>,
    /// In the order written, without repeats.
    pub on: Vec<NotifyEvent>,
    pub timeout: Duration,
    /// The config file's directory.
    pub workdir: Arc<Path>,
    /// The environment of `serve` less every variable a secret came from (built at load).
    pub environment: Arc<Environment>,
    /// The secrets looked for in its output.
    pub output_secrets: Secrets,
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
    /// Variables secrets came from that this hook still gets.
    pub pass_env: Vec<String>,
    /// Variables secrets came from, removed from this hook's environment.
    pub hidden_env: Arc<[String]>,
    /// What its commands start with: the environment of `serve` less `hidden_env`, plus
    /// `env`. Built at load, once for all the hooks with the same `env` and `hidden_env`
    /// (empty until then).
    pub environment: Arc<Environment>,
    /// The secrets looked for in its output (those of 6 characters or more).
    pub output_secrets: Secrets,
    pub stdin: StdinMode,
    pub timeout: Duration,
    pub kill_grace: Duration,
    /// 0: only `max_running` limits.
    pub concurrency: usize,
    pub queue: usize,
    pub ack: Ack,
    /// `ack = "stored"`: the delays before attempts 2, 3, …; after the last, the message is
    /// dead.
    pub retry: Arc<[Duration]>,
    /// `log_output` and `keep_output` (SPEC §4, §10).
    pub output: OutputPolicy,
}

impl Config {
    /// Reads and validates `file`.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        Self::read_and_parse(file, Scope::File)
    }

    /// As [`Config::load`], and also checks what `serve` needs beyond the file: an error if
    /// the journal cannot be created in its directory, and a warning for each shell `command`
    /// whose program is not found (see [`Config::warnings`]). For `check` and `serve`.
    pub fn load_for_serve(file: &Path) -> Result<Config, ConfigError> {
        Self::read_and_parse(file, Scope::Serve)
    }

    fn read_and_parse(file: &Path, scope: Scope) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ConfigError::Missing {
                    file: file.to_owned(),
                }
            } else {
                ConfigError::Read {
                    file: file.to_owned(),
                    source,
                }
            }
        })?;
        load::parse(file, &text, &|name| std::env::var(name).ok(), scope)
    }

    /// Validates `text` as if read from `file`; `env` looks up variables for `${NAME}`.
    pub fn parse(
        file: &Path,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        load::parse(file, text, &env, Scope::File)
    }

    /// Every value that must never be shown.
    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// `text` with every secret value replaced by `${NAME}` or `<token>`.
    pub fn redact<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        self.secrets.redact(text)
    }

    /// Things that are allowed but probably not meant.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.hooks.is_empty() {
            warnings.push("no hooks are configured: every push is unmatched".to_owned());
        }
        if !self.server.listen.is_loopback() {
            // A hook is protected by the token, by a path nobody can guess, or by `allow`.
            let mut exposed = 0;
            if self.server.token.is_none() && allows_everyone(&self.server.allow) {
                for hook in self.hooks.iter().filter(|hook| !has_secret_path(hook)) {
                    warnings.push(format!(
                        "anyone who can reach {} can run hook `{}`: `listen` is not loopback, and neither `token`, a secret `path` (`path = \"/cmq/${{DEPLOY_SECRET}}\"`) nor `allow` protects it",
                        self.server.listen, hook.name
                    ));
                    exposed += 1;
                }
            }
            // Said already, hook by hook.
            if self.server.allow.is_empty() && exposed == 0 {
                warnings.push(format!(
                    "`allow` is open to every address while listening on `{}`",
                    self.server.listen
                ));
            }
        }
        if self.console.is_some() && self.server.journal.is_none() && self.server.postgres.is_none()
        {
            warnings.push(
                "[console] with `journal = \"off\"`: the console reads runs from the journal, so it has none to show"
                    .to_owned(),
            );
        }
        if self.server.postgres.is_some() {
            let longest = self.hooks.iter().map(|hook| hook.kill_grace).max();
            if let Some(longest) = longest.filter(|grace| self.server.lease < *grace * 3) {
                warnings.push(format!(
                    "`lease` ({}) is shorter than 3 x the longest kill_grace ({}): a command stopped because its lease cannot be renewed may outlive the lease",
                    DurationText(self.server.lease),
                    DurationText(longest)
                ));
            }
        }
        for secret in self.secrets.list() {
            if !secrets::is_long(&secret.value) {
                warnings.push(format!(
                    "the secret shown as `{}` is shorter than {} characters: command output is not searched for it, so a command that prints it shows it",
                    secret.shown,
                    secrets::MIN_OUTPUT_LEN
                ));
            }
        }
        for hook in &self.hooks {
            for name in &hook.pass_env {
                if !self.secret_vars.contains(name) {
                    warnings.push(format!(
                        "hook `{}`: pass_env names `{name}`, which no secret came from (commands inherit it anyway)",
                        hook.name
                    ));
                }
            }
            if hook.selector.is_empty() {
                warnings.push(format!(
                    "hook `{}` has no selector: it catches every push",
                    hook.name
                ));
            }
        }
        warnings.extend(self.located_warnings.iter().map(ToString::to_string));
        warnings
    }
}

/// Whether `allow` lets every address in (empty, or a `/0` network).
fn allows_everyone(allow: &[IpNet]) -> bool {
    allow.is_empty() || allow.iter().any(|net| net.prefix_len() == 0)
}

/// Whether `hook`'s `path` takes a `${NAME}` from the environment (a literal `$${` does not).
fn has_secret_path(hook: &Hook) -> bool {
    hook.path_shown.as_deref().is_some_and(|written| {
        secrets::expand_vars(written, &|_| Some(String::new()))
            .is_ok_and(|(_, taken)| !taken.is_empty())
    })
}

/// A duration as the config takes it back: `1d 2h`, `1m 30s`, `500ms` (humantime's own
/// format says `1day`, and `1month` past 30 days, which read oddly beside the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationText(pub Duration);

impl fmt::Display for DurationText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (secs, nanos) = (self.0.as_secs(), u64::from(self.0.subsec_nanos()));
        let parts = [
            (secs / 86_400, "d"),
            (secs / 3600 % 24, "h"),
            (secs / 60 % 60, "m"),
            (secs % 60, "s"),
            (nanos / 1_000_000, "ms"),
            (nanos / 1000 % 1000, "us"),
            (nanos % 1000, "ns"),
        ];
        let mut written = false;
        for (count, unit) in parts.into_iter().filter(|(count, _)| *count > 0) {
            if written {
                f.write_str(" ")?;
            }
            write!(f, "{count}{unit}")?;
            written = true;
        }
        if !written {
            f.write_str("0s")?;
        }
        Ok(())
    }
}
