//! `[[queue]]` tables (SPEC §11): read, checked, and completed into [`Queue`]s.

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;
use toml::de::DeValue;

use super::super::Queue;
use super::super::raw::RawQueue;
use super::{Loader, Section};
use crate::secrets::Secret;

/// `wait`: CMQ's longest long poll.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// `batch`: the most messages BatchReceiveMessage returns.
const MAX_BATCH: usize = 16;
/// `pollers`: each holds a thread of tokio's blocking pool while it long-polls.
const MAX_POLLERS: usize = 64;
/// CMQ's limit on a queue name.
const MAX_NAME_LEN: usize = 64;

impl Loader<'_> {
    /// Reads the `[[queue]]` array key by key; `value` is what the file gives under `queue`.
    pub(super) fn queue_tables(&mut self, value: Spanned<DeValue<'_>>) -> Vec<Section<RawQueue>> {
        let span = value.span();
        let DeValue::Array(tables) = value.into_inner() else {
            self.error(
                span,
                "queue: expected tables `[[queue]]` (two brackets: one table a queue)",
            );
            return Vec::new();
        };
        let mut sections = Vec::new();
        for (index, table) in tables.into_iter().enumerate() {
            // Errors name the queue when its name can be read.
            let prefix = match table.get_ref() {
                DeValue::Table(keys) => keys
                    .iter()
                    .find(|(key, _)| key.get_ref().as_ref() == "name")
                    .and_then(|(_, name)| match name.get_ref() {
                        DeValue::String(name) => Some(format!("queue.{name}.")),
                        _ => None,
                    }),
                _ => None,
            };
            let prefix = prefix.unwrap_or_else(|| format!("queue[{index}]."));
            if let Some(section) = self.section::<RawQueue>(&prefix, table) {
                sections.push(section);
            }
        }
        sections
    }

    /// Checks every table; a table with an error gives no [`Queue`] (the config is refused).
    pub(super) fn queues(&mut self, sections: Vec<Section<RawQueue>>) -> Vec<Queue> {
        let mut queues = Vec::new();
        // Names seen, with the line that defined them first.
        let mut names: Vec<(String, usize)> = Vec::new();
        for section in sections {
            let before = self.diagnostics.len();
            let Section { raw, span, broken } = section;
            let name = match raw.name {
                Some(name) => {
                    let text = name.get_ref();
                    let at = self.diagnostic(name.span(), String::new()).line;
                    if let Some(problem) = name_problem(text) {
                        self.error(name.span(), format!("queue.name: `{text}` {problem}"));
                    } else if let Some((_, line)) = names.iter().find(|(seen, _)| seen == text) {
                        let message = format!(
                            "queue.{text}.name: queue `{text}` is already defined at line {line}"
                        );
                        self.error(name.span(), message);
                    } else {
                        names.push((text.clone(), at));
                    }
                    Some(name.into_inner())
                }
                None if broken.contains(&"name") => None,
                None => {
                    self.error(span.clone(), "queue: needs `name` (the CMQ queue's name)");
                    None
                }
            };
            let shown = name.as_deref().unwrap_or("?");
            let key = |field: &str| format!("queue.{shown}.{field}");
            let required = |loader: &mut Self, field: &'static str, given: bool| {
                if !given && !broken.contains(&field) {
                    let message = format!("queue.{shown}: needs `{field}`");
                    loader.error(span.clone(), message);
                }
            };
            required(self, "endpoint", raw.endpoint.is_some());
            required(self, "secret_id", raw.secret_id.is_some());
            required(self, "secret_key", raw.secret_key.is_some());
            // A host name is no secret (as `listen`'s is none).
            let endpoint = raw.endpoint.and_then(|endpoint| {
                let text = self.expand(&key("endpoint"), &endpoint, false)?;
                match parse_endpoint(&text) {
                    Ok(endpoint) => Some(endpoint),
                    Err(problem) => {
                        let message =
                            format!("{}: `{}` {problem}", key("endpoint"), endpoint.get_ref());
                        self.error(endpoint.span(), message);
                        None
                    }
                }
            });
            let secret_id = raw
                .secret_id
                .and_then(|id| self.credential(&key("secret_id"), &id, None));
            let secret_key = raw.secret_key.and_then(|secret| {
                self.credential(&key("secret_key"), &secret, Some("<secret_key>"))
            });
            let token = raw
                .token
                .and_then(|token| self.credential(&key("token"), &token, Some("<queue token>")));
            let wait = match raw.wait {
                Some(wait) => {
                    let value = wait.get_ref().into_inner();
                    if value > MAX_WAIT {
                        self.error(wait.span(), format!("{}: must be at most 30s", key("wait")));
                    } else if value.subsec_nanos() != 0 {
                        let message = format!(
                            "{}: must be whole seconds (CMQ's pollingWaitSeconds), e.g. \"{}s\"",
                            key("wait"),
                            value.as_secs()
                        );
                        self.error(wait.span(), message);
                    }
                    value
                }
                None => MAX_WAIT,
            };
            let batch = self.bounded(&key("batch"), raw.batch, 1..MAX_BATCH + 1, MAX_BATCH);
            let pollers = self.bounded(&key("pollers"), raw.pollers, 1..MAX_POLLERS + 1, 1);
            if self.diagnostics.len() > before {
                continue;
            }
            let (Some(name), Some(endpoint), Some(secret_id), Some(secret_key)) =
                (name, endpoint, secret_id, secret_key)
            else {
                continue;
            };
            queues.push(Queue {
                name,
                endpoint,
                secret_id,
                secret_key,
                token,
                signature: raw.signature.unwrap_or_default(),
                wait,
                batch,
                pollers,
            });
        }
        queues
    }

    /// A credential's value, `${NAME}` expanded; every value taken from the environment is a
    /// secret, and with `shown` so is a value written in the file (shown as `shown`).
    fn credential(
        &mut self,
        key: &str,
        text: &Spanned<String>,
        shown: Option<&str>,
    ) -> Option<String> {
        let value = self.expand(key, text, true)?;
        if value.is_empty() {
            self.error(text.span(), format!("{key}: must not be empty"));
            return None;
        }
        if let Some(shown) = shown {
            // Expanded from `${NAME}`, it is recorded (and shown as `${NAME}`) already; a
            // second record of the same value is dropped by `Secrets::new`.
            self.secrets.push(Secret {
                value: value.clone(),
                shown: shown.to_owned(),
            });
        }
        Some(value)
    }

    /// A count within `range`, or `default` when absent.
    fn bounded(
        &mut self,
        key: &str,
        raw: Option<Spanned<usize>>,
        range: Range<usize>,
        default: usize,
    ) -> usize {
        let Some(value) = raw else {
            return default;
        };
        let n = *value.get_ref();
        if !range.contains(&n) {
            let message = format!("{key}: must be from {} to {}", range.start, range.end - 1);
            self.error(value.span(), message);
        }
        n
    }
}

/// Why `name` cannot be a CMQ queue's name, if it cannot.
fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("is empty".to_owned());
    }
    if name.len() > MAX_NAME_LEN {
        return Some(format!("is longer than {MAX_NAME_LEN} characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Some("may hold only letters, digits, `-` and `_`".to_owned());
    }
    None
}

/// `http(s)://host[:port]` with an optional trailing `/`, returned without it.
fn parse_endpoint(text: &str) -> Result<String, &'static str> {
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .ok_or("is not an http:// or https:// URL")?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return Err("has a path or query: give the endpoint alone, /v2/index.php is added");
    }
    if authority.contains('@') {
        return Err("must not hold credentials: use secret_id and secret_key");
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or("has an unclosed `[`")?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("has no valid IPv6 address between `[` and `]`");
        }
        (host, after.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("has no host");
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c))
    {
        return Err("has a host that is no name or address");
    }
    if let Some(port) = port
        && port.parse::<u16>().is_err()
    {
        return Err("has a port that is no number from 0 to 65535");
    }
    Ok(text.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::parse_endpoint;
    use crate::config::{Config, ConfigError, Diagnostic, SignatureMethod};

    fn env(name: &str) -> Option<String> {
        let value = match name {
            "TENCENTCLOUD_SECRET_ID" => "AKIDexample0001",
            "TENCENTCLOUD_SECRET_KEY" => "k3y-from-the-environment",
            "CMQ_ENDPOINT" => "http://127.0.0.1:8080",
            "EMPTY" => "",
            _ => return None,
        };
        Some(value.to_owned())
    }

    fn load(text: &str) -> Result<Config, Vec<Diagnostic>> {
        match Config::parse(Path::new("/etc/cmqhook/hooks.toml"), text, env) {
            Ok(config) => Ok(config),
            Err(ConfigError::Invalid(diagnostics)) => Err(diagnostics),
            Err(err) => panic!("{err}"),
        }
    }

    /// Every diagnostic of `text`, as `line:column: message`.
    fn errors(text: &str) -> Vec<String> {
        match load(text) {
            Ok(config) => panic!("expected errors, got {config:?}"),
            Err(diagnostics) => diagnostics
                .iter()
                .map(|d| format!("{}:{}: {}", d.line, d.column, d.message))
                .collect(),
        }
    }

    /// `text`'s diagnostics are exactly those starting with `expected`, in order.
    fn assert_errors(text: &str, expected: &[&str]) {
        let found = errors(text);
        assert_eq!(found.len(), expected.len(), "{found:#?}");
        for (error, expected) in found.iter().zip(expected) {
            assert!(error.starts_with(expected), "{error}\nexpected: {expected}");
        }
    }

    const QUEUE: &str = r#"[[queue]]
name = "deploys"
endpoint = "https://cmq-gz.public.tencenttdmq.com"
secret_id = "${TENCENTCLOUD_SECRET_ID}"
secret_key = "${TENCENTCLOUD_SECRET_KEY}"
"#;

    #[test]
    fn a_queue_gets_the_documented_defaults() {
        let config = load(QUEUE).expect("valid");
        let [queue] = config.queues.as_slice() else {
            panic!("{:?}", config.queues)
        };
        assert_eq!(queue.name, "deploys");
        assert_eq!(queue.endpoint, "https://cmq-gz.public.tencenttdmq.com");
        assert_eq!(queue.secret_id, "AKIDexample0001");
        assert_eq!(queue.secret_key, "k3y-from-the-environment");
        assert_eq!(queue.token, None);
        assert_eq!(queue.signature, SignatureMethod::HmacSha256);
        assert_eq!(queue.wait, Duration::from_secs(30));
        assert_eq!((queue.batch, queue.pollers), (16, 1));
    }

    #[test]
    fn every_queue_key_is_read_and_queues_keep_file_order() {
        let text = format!(
            "{QUEUE}\n[[queue]]\nname = \"second_q-2\"\nendpoint = \"${{CMQ_ENDPOINT}}/\"\nsecret_id = \"literal-id\"\nsecret_key = \"literal-key\"\ntoken = \"session-token\"\nsignature = \"HmacSHA1\"\nwait = \"0s\"\nbatch = 1\npollers = 3\n"
        );
        let config = load(&text).expect("valid");
        let names: Vec<_> = config.queues.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(names, ["deploys", "second_q-2"]);
        let queue = &config.queues[1];
        assert_eq!(queue.endpoint, "http://127.0.0.1:8080");
        assert_eq!(queue.token.as_deref(), Some("session-token"));
        assert_eq!(queue.signature, SignatureMethod::HmacSha1);
        assert_eq!(queue.wait, Duration::ZERO);
        assert_eq!((queue.batch, queue.pollers), (1, 3));
    }

    #[test]
    fn queue_credentials_are_secrets_and_debug_hides_the_key() {
        let text = format!(
            "{QUEUE}\n[[queue]]\nname = \"b\"\nendpoint = \"http://127.0.0.1:1\"\nsecret_id = \"literal-id\"\nsecret_key = \"literal-key\"\ntoken = \"session-token\"\n"
        );
        let config = load(&text).expect("valid");
        let line = "AKIDexample0001 k3y-from-the-environment literal-key session-token literal-id";
        assert_eq!(
            config.redact(line),
            "${TENCENTCLOUD_SECRET_ID} ${TENCENTCLOUD_SECRET_KEY} <secret_key> <queue token> literal-id"
        );
        let shown = format!("{config:?}");
        for secret in ["k3y-from-the-environment", "literal-key", "session-token"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }

    #[test]
    fn bad_queue_values_are_errors_at_their_line() {
        let text = r#"[[queue]]
name = "a b"
endpoint = "cmq.example.com"
secret_id = "${UNSET_ID}"
secret_key = ""
signature = "HmacMD5"
wait = "31s"
batch = 17
pollers = 0
"#;
        assert_errors(
            text,
            &[
                "2:8: queue.name: `a b` may hold only letters",
                "3:12: queue.a b.endpoint: `cmq.example.com` is not an http:// or https:// URL",
                "4:13: queue.a b.secret_id: ",
                "5:14: queue.a b.secret_key: must not be empty",
                "6:13: queue.a b.signature: unknown variant `HmacMD5`",
                "7:8: queue.a b.wait: must be at most 30s",
                "8:9: queue.a b.batch: must be from 1 to 16",
                "9:11: queue.a b.pollers: must be from 1 to 64",
            ],
        );
    }

    #[test]
    fn a_queue_needs_its_keys_and_a_unique_name() {
        let text = format!("{QUEUE}\n[[queue]]\nname = \"deploys\"\nwait = \"1500ms\"\nnope = 1\n");
        assert_errors(
            &text,
            &[
                "7:1: queue.deploys: needs `endpoint`",
                "7:1: queue.deploys: needs `secret_id`",
                "7:1: queue.deploys: needs `secret_key`",
                "8:8: queue.deploys.name: queue `deploys` is already defined at line 2",
                "9:8: queue.deploys.wait: must be whole seconds",
                "10:1: queue.deploys.nope: unknown field `nope`",
            ],
        );
        let single = "[queue]\nname = \"x\"\n";
        let found = errors(single);
        assert!(
            found[0].contains("expected tables `[[queue]]`"),
            "{found:?}"
        );
        let nameless =
            "[[queue]]\nendpoint = \"http://h\"\nsecret_id = \"i\"\nsecret_key = \"k\"\n";
        assert_eq!(
            errors(nameless),
            ["1:1: queue: needs `name` (the CMQ queue's name)"]
        );
    }

    #[test]
    fn an_endpoint_is_an_http_or_https_url_without_a_path() {
        for (text, expected) in [
            (
                "https://cmq-gz.public.tencenttdmq.com",
                "https://cmq-gz.public.tencenttdmq.com",
            ),
            (
                "http://gz.mqadapter.cmq.tencentyun.com/",
                "http://gz.mqadapter.cmq.tencentyun.com",
            ),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("http://[::1]:8080/", "http://[::1]:8080"),
        ] {
            assert_eq!(parse_endpoint(text).as_deref(), Ok(expected), "{text}");
        }
        for text in [
            "cmq-gz.public.tencenttdmq.com",
            "ftp://host",
            "https://",
            "https://host/v2/index.php",
            "https://host?x=1",
            "https://user:pw@host",
            "https://host:99999",
            "https://host:",
            "https://[::1",
            "https://ho st",
        ] {
            assert!(parse_endpoint(text).is_err(), "{text}");
        }
    }
}
