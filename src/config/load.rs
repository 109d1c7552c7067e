//! From text to a [`Config`]: parse the raw structs, apply defaults, resolve paths, check
//! everything, and collect every diagnostic.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::raw::{RawDuration, RawHook, RawServer};
use super::{Action, Config, ConfigError, Diagnostic, Hook, Pattern, Selector, Server};
use crate::secrets::{Secret, Secrets, expand_vars};

const DEFAULT_LISTEN: &str = "127.0.0.1:9000";
const DEFAULT_JOURNAL: &str = "cmqhook.db";
/// `journal = "off"`: (hook, message id) outcomes kept in memory, oldest finished evicted first.
const DEFAULT_DEDUP_CAPACITY: usize = 100_000;

/// Validates `text` as if read from `file`; `env` looks up variables for `${NAME}`.
pub(super) fn parse(
    file: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
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
        diagnostics: Vec::new(),
        secrets: Vec::new(),
        secret_vars: Vec::new(),
    };
    let config = loader.load();
    match config {
        Some(mut config) if loader.diagnostics.is_empty() => {
            let secrets = Secrets::new(loader.secrets);
            let output_secrets = secrets.for_output();
            // Every hook's environment loses the variables any secret came from, but those it
            // asks to keep; its output is searched for the secrets long enough to tell.
            for hook in &mut config.hooks {
                let hook = Arc::make_mut(hook);
                let hidden = loader.secret_vars.iter();
                let hidden = hidden.filter(|name| !hook.pass_env.contains(name));
                hook.hidden_env = hidden.cloned().collect();
                hook.output_secrets = output_secrets.clone();
            }
            Ok(Config {
                file: file.to_owned(),
                secrets,
                secret_vars: loader.secret_vars,
                ..config
            })
        }
        _ => {
            // In file order, whichever check found them.
            loader
                .diagnostics
                .sort_by_key(|diagnostic| (diagnostic.line, diagnostic.column));
            Err(ConfigError::Invalid(loader.diagnostics))
        }
    }
}

struct Loader<'a> {
    file: String,
    text: &'a str,
    dir: PathBuf,
    env: &'a dyn Fn(&str) -> Option<String>,
    diagnostics: Vec<Diagnostic>,
    secrets: Vec<Secret>,
    /// The variables secrets were taken from, in the order met.
    secret_vars: Vec<String>,
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
            secrets: Secrets::default(),
            secret_vars: Vec::new(),
        })
    }

    fn server(&mut self, raw: RawServer) -> Server {
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
        let token = raw.token.and_then(|token| {
            let value = self.expand("server.token", &token, true)?;
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
        let dedup_capacity = match raw.dedup_capacity {
            Some(n) if *n.get_ref() == 0 => {
                self.error(n.span(), "server.dedup_capacity: must be at least 1");
                1
            }
            Some(n) => n.into_inner(),
            None => DEFAULT_DEDUP_CAPACITY,
        };
        let journal = match raw.journal {
            Some(journal) => match self.expand("server.journal", &journal, true).as_deref() {
                Some("off") => None,
                Some(path) => Some(self.dir.join(path)),
                None => None,
            },
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
            dedup_capacity,
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
            pass_env: raw
                .pass_env
                .or_else(|| defaults.pass_env.clone())
                .unwrap_or_default(),
            hidden_env: Arc::new([]),
            output_secrets: Secrets::default(),
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
