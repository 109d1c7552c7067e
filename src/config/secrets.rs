//! Secrets: `${NAME}` expansion, the values it took from the environment, and redaction.

/// A value that must never be shown, and what to show instead.
#[derive(Debug, Clone)]
pub(super) struct Secret {
    pub(super) value: String,
    pub(super) shown: String,
}

/// `text` with every secret in `secrets`, in order, replaced by what is shown instead.
pub(super) fn redact(secrets: &[Secret], text: &str) -> String {
    let mut text = text.to_owned();
    for secret in secrets {
        if text.contains(&secret.value) {
            text = text.replace(&secret.value, &secret.shown);
        }
    }
    text
}

/// `${NAME}` → the variable's value, `$$` → `$`, any other `$` stays. Returns the text and
/// the (name, value) pairs taken.
pub(super) fn expand_vars(
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
