//! Secrets: `${NAME}` expansion, the values it took from the environment, and redaction.
//!
//! The config records every value it expands into `token`, a hook `path` or `journal`
//! ([`Secret`]); [`Secrets`] hides them again wherever text is shown: log lines, answers, the
//! journal, and (for values of [`MIN_OUTPUT_LEN`] characters or more) command output.

use std::borrow::Cow;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};

/// Secrets shorter than this are not looked for in command output, where they would hide
/// ordinary words; `check` warns about them.
pub const MIN_OUTPUT_LEN: usize = 6;

/// A value that must never be shown, and what to show instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    pub value: String,
    /// `${NAME}`, or `<token>`.
    pub shown: String,
}

/// A set of secrets, searched for all at once; a secret that contains another is hidden whole.
#[derive(Clone, Default)]
pub struct Secrets(Option<Arc<Searcher>>);

struct Searcher {
    secrets: Vec<Secret>,
    matcher: AhoCorasick,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} values)", self.list().len())
    }
}

impl Secrets {
    /// Empty values are dropped, and a value is kept once.
    pub fn new(mut secrets: Vec<Secret>) -> Secrets {
        secrets.retain(|secret| !secret.value.is_empty());
        let mut seen = std::collections::HashSet::new();
        secrets.retain(|secret| seen.insert(secret.value.clone()));
        if secrets.is_empty() {
            return Secrets(None);
        }
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(secrets.iter().map(|secret| &secret.value))
            .expect("a few literal strings always build an automaton");
        Secrets(Some(Arc::new(Searcher { secrets, matcher })))
    }

    pub fn list(&self) -> &[Secret] {
        self.0.as_ref().map_or(&[], |searcher| &searcher.secrets)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Those long enough to be looked for in command output.
    pub fn for_output(&self) -> Secrets {
        let long = self.list().iter().filter(|secret| is_long(&secret.value));
        Secrets::new(long.cloned().collect())
    }

    /// `text` with every secret replaced by what is shown instead.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match &self.0 {
            Some(searcher) if searcher.matcher.is_match(text) => {
                Cow::Owned(searcher.matcher.replace_all(text, &searcher.shown()))
            }
            _ => Cow::Borrowed(text),
        }
    }

    /// `bytes` with every secret replaced by what is shown instead.
    pub fn redact_bytes<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        match &self.0 {
            Some(searcher) if searcher.matcher.is_match(bytes) => {
                Cow::Owned(searcher.matcher.replace_all_bytes(bytes, &searcher.shown()))
            }
            _ => Cow::Borrowed(bytes),
        }
    }

    /// How many bytes at the end of `bytes` could be the start of a secret that the next bytes
    /// complete: a stream cut there must hold them back to redact the secret whole.
    pub fn unfinished_suffix(&self, bytes: &[u8]) -> usize {
        self.list()
            .iter()
            .filter_map(|secret| {
                let value = secret.value.as_bytes();
                (1..value.len())
                    .rev()
                    .find(|&len| bytes.ends_with(&value[..len]))
            })
            .max()
            .unwrap_or(0)
    }
}

impl Searcher {
    fn shown(&self) -> Vec<&str> {
        self.secrets
            .iter()
            .map(|secret| secret.shown.as_str())
            .collect()
    }
}

/// Whether a secret is long enough to be redacted in command output.
pub fn is_long(value: &str) -> bool {
    value.chars().count() >= MIN_OUTPUT_LEN
}

/// `${NAME}` → the variable's value, `$$` → `$`, any other `$` stays. Returns the text and
/// the (name, value) pairs taken.
pub fn expand_vars(
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

    fn secrets(pairs: &[(&str, &str)]) -> Secrets {
        Secrets::new(
            pairs
                .iter()
                .map(|(value, shown)| Secret {
                    value: (*value).to_owned(),
                    shown: (*shown).to_owned(),
                })
                .collect(),
        )
    }

    #[test]
    fn a_secret_containing_another_is_hidden_whole() {
        let secrets = secrets(&[("abc", "${A}"), ("xxabcxx", "${X}")]);
        assert_eq!(secrets.redact("1 xxabcxx 2 abc"), "1 ${X} 2 ${A}");
        assert_eq!(
            secrets.redact_bytes(b"\xff xxabcxx abc").as_ref(),
            b"\xff ${X} ${A}"
        );
        assert!(matches!(secrets.redact("nothing"), Cow::Borrowed(_)));
    }

    #[test]
    fn only_long_secrets_are_looked_for_in_output() {
        let secrets = secrets(&[("short", "${S}"), ("longer", "${L}"), ("", "${E}")]);
        assert_eq!(secrets.list().len(), 2);
        let output = secrets.for_output();
        assert_eq!(output.redact("short longer"), "short ${L}");
        assert!(Secrets::default().for_output().is_empty());
    }

    #[test]
    fn the_unfinished_start_of_a_secret_is_held_back() {
        let secrets = secrets(&[("s3cr3t-value", "${S}")]);
        assert_eq!(secrets.unfinished_suffix(b"text s3cr"), 4);
        assert_eq!(secrets.unfinished_suffix(b"text s3cr3t-valu"), 11);
        assert_eq!(secrets.unfinished_suffix(b"text"), 0);
        // A whole secret is not unfinished: it is redacted where it is.
        assert_eq!(secrets.unfinished_suffix(b"s3cr3t-value"), 0);
    }

    #[test]
    fn variables_expand_and_are_reported() {
        let env = |name: &str| (name == "A").then(|| "1".to_owned());
        let (text, taken) = expand_vars("x${A}$$y$z", &env).expect("expands");
        assert_eq!(text, "x1$y$z");
        assert_eq!(taken, [("A".to_owned(), "1".to_owned())]);
        assert!(expand_vars("${B}", &env).is_err());
        assert!(expand_vars("${A", &env).is_err());
    }
}
