//! The command line (clap derive): `serve` and `check`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, Hook};
use crate::service;
use crate::telemetry::{self, LogFormat};

/// Runs shell commands for Tencent Cloud CMQ topic pushes, answering 2xx only when they
/// exited 0.
#[derive(Debug, Parser)]
#[command(name = "cmqhook", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// More logging (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Less logging: warnings and errors only.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP dispatcher until SIGTERM or SIGINT.
    Serve(ServeArgs),
    /// Parse and validate the config; print each hook with its selectors and action.
    Check(ConfigArg),
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// The hook config [default: $CMQHOOK_CONFIG, then ./hooks.toml]
    #[arg(
        short,
        long,
        env = "CMQHOOK_CONFIG",
        default_value = "hooks.toml",
        hide_default_value = true,
        hide_env = true
    )]
    config: PathBuf,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Listen on this address instead of `[server] listen`.
    #[arg(long)]
    listen: Option<SocketAddr>,
}

/// Parses the command line, runs the command, and maps its result to an exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbosity = if cli.quiet {
        -1
    } else {
        i8::try_from(cli.verbose).unwrap_or(i8::MAX)
    };
    telemetry::init(cli.log_format, verbosity);
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Check(args) => check(&args),
    };
    result.unwrap_or_else(|message| {
        eprintln!("{message}");
        ExitCode::FAILURE
    })
}

/// Each line of a config error, prefixed for the terminal.
fn load(args: &ConfigArg) -> Result<Config, String> {
    Config::load(&args.config).map_err(|err| error_lines(&err.to_string()))
}

fn error_lines(message: &str) -> String {
    message
        .lines()
        .map(|line| format!("error: {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn check(args: &ConfigArg) -> Result<ExitCode, String> {
    let config = load(args)?;
    println!(
        "{}: valid, {} hook{}",
        config.file.display(),
        config.hooks.len(),
        if config.hooks.len() == 1 { "" } else { "s" }
    );
    for hook in &config.hooks {
        println!("{}", describe(hook));
    }
    for warning in config.warnings() {
        eprintln!("warning: {warning}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `name  selectors  -> action`, as `check` prints it.
fn describe(hook: &Hook) -> String {
    let selector = &hook.selector;
    let mut parts = Vec::new();
    if let Some(path) = &hook.path_shown {
        parts.push(format!("path={path}"));
    }
    if let Some(topic) = &selector.topic {
        parts.push(format!("topic={topic}"));
    }
    if let Some(subscription) = &selector.subscription {
        parts.push(format!("subscription={subscription}"));
    }
    if let Some(tags) = &selector.tags {
        parts.push(format!("tags={}", tags.join(",")));
    }
    if parts.is_empty() {
        parts.push("(every push)".to_owned());
    }
    format!(
        "{}\n  match: {}\n  run:   {} (workdir {}, timeout {})",
        hook.name,
        parts.join(" "),
        hook.action,
        hook.workdir.display(),
        humantime::format_duration(hook.timeout)
    )
}

fn serve(args: ServeArgs) -> Result<ExitCode, String> {
    service::serve(&args.config.config, args.listen)
        .map(|()| ExitCode::SUCCESS)
        .map_err(|err| error_lines(&err.to_string()))
}
