//! Config errors: every problem found, each at `file:line:column`.

use std::fmt;
use std::path::{Path, PathBuf};

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// There is no file there: say how to point at one.
    #[error("no config at {} (use -c FILE or CMQHOOK_CONFIG)", shown(.file))]
    Missing { file: PathBuf },
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

/// `file` as a user would type it: `./hooks.toml` rather than `hooks.toml`.
fn shown(file: &Path) -> String {
    match file.parent() {
        Some(dir) if dir.as_os_str().is_empty() => format!("./{}", file.display()),
        _ => file.display().to_string(),
    }
}

fn join_lines(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
