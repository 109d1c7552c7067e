//! The command line (clap derive): `serve`, `check`, `route`, `run`, `send`, `queue send`,
//! `history`, `replay`, and
//! for getting started `init`, `completions` and `man`.

use std::ffi::OsStr;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::{Args, CommandFactory, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::cmq::{Format, FormatSetting, OutgoingPush, Push, PushError};
use crate::config::{Ack, Config, ConfigError, DurationText, Hook, Listen};
use crate::delivery::{self, Deliveries, JournalError, Outcome, postgres};
use crate::dispatch::{Dispatcher, HookResult, Reply, Verdict};
use crate::replay_socket;
use crate::routing::RoutedConfig;
use crate::runner;
use crate::send::{ExtraHeader, SendError, send_push};
use crate::service::{self, ServeError};
use crate::telemetry::{self, LogFormat};

mod history;
mod man;
mod queue;
mod show;

/// Runs shell commands for Tencent Cloud CMQ topic pushes, answering 2xx only when they
/// exited 0.
#[derive(Debug, Parser)]
// No bare `about`: it would take Cargo.toml's `description`, which is the Debian package's
// one-line synopsis; the about text is this doc comment.
#[command(name = "cmqhook", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, display_order = 100)]
    log_format: LogFormat,
    /// More logging (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true, display_order = 100)]
    verbose: u8,
    /// Less logging: warnings and errors only.
    #[arg(
        short,
        long,
        global = true,
        conflicts_with = "verbose",
        display_order = 100
    )]
    quiet: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP dispatcher until SIGTERM or SIGINT.
    Serve(ServeArgs),
    /// Parse and validate the config; print each hook with its selectors and action.
    Check(ConfigArg),
    /// Print the hooks a push with these attributes would run, one name a line, in config
    /// order. Exit 1 if none.
    Route(RouteArgs),
    /// Run the hooks matching these attributes locally, exactly as `serve` would (same
    /// environment; the body from --body-file or standard input). Not journaled.
    Run(RunArgs),
    /// Send one push to URL as CMQ would (x-cmq-* headers, envelope or raw body,
    /// Content-Type: text/plain, CMQ's User-Agent); print the status and response body.
    /// As with `route` and `run`, the push is a JSON envelope when --topic or --subscription
    /// is given, a SIMPLIFIED one (the raw body) otherwise; --format says which outright.
    /// Exit 0 on 2xx.
    Send(SendArgs),
    /// Pull mode's queues: `queue send` publishes one message to a [[queue]] of the
    /// config, to try a setup end to end.
    Queue(queue::QueueArgs),
    /// List recent deliveries from the journal, newest first.
    History(HistoryArgs),
    /// Print one run from the journal (`history` lists run ids): hook, message id, request
    /// id, attempt, instance, start, duration, outcome with its exit code or signal, topic,
    /// subscription, tags, whether it was a replay, and its kept output: stdout and stderr
    /// interleaved as they came, each line starting with `out| ` or `err| `, the first 4 KiB
    /// and the last `keep_output` - 4 KiB with a line saying what was cut between them.
    /// Exit 1 with the journal off or no such run.
    Show(ShowArgs),
    /// Run the latest kept push of a message again (`keep_bodies`), through the hooks that ran
    /// it (or --hook), as `serve` would: the same CMQ_* environment and stdin, the next
    /// CMQHOOK_ATTEMPT and CMQHOOK_REPLAY=1; journaled. Exit 0 iff every hook succeeded. Never
    /// alongside a run of the message: while a `serve` holds the journal, replay asks it
    /// (through FILE.replay.sock beside a SQLite journal, through the database for PostgreSQL)
    /// and waits for the outcome; without one, it takes the journal's lock (with PostgreSQL,
    /// the message's claim) and runs the hooks itself.
    Replay(ReplayArgs),
    /// Write a commented starter config that `check` accepts. Never overwrites: exit 1 if FILE
    /// exists.
    Init(InitArgs),
    /// Print the shell completion script for SHELL, e.g.
    /// `cmqhook completions bash > ~/.local/share/bash-completion/completions/cmqhook`.
    Completions(CompletionsArgs),
    /// Print the man page of cmqhook, or of one of its commands, as roff, e.g.
    /// `cmqhook man route | man -l -`.
    Man(ManArgs),
}

/// What a push carries, given by hand. With --topic or --subscription it is a JSON push,
/// otherwise a SIMPLIFIED one (whose topic and subscription are unknown).
#[derive(Debug, Args)]
struct PushArgs {
    /// The request path.
    #[arg(long, default_value = "/")]
    path: String,
    /// The topic name; makes the push a JSON one.
    #[arg(long)]
    topic: Option<String>,
    /// The subscription name; makes the push a JSON one.
    #[arg(long)]
    subscription: Option<String>,
    /// A message tag; repeat for several.
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// A message received from this [[queue]] (pull mode) instead of a push: it has no path,
    /// topic or subscription.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["path", "topic", "subscription"])]
    from_queue: Option<String>,
}

#[derive(Debug, Args)]
struct RouteArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    push: PushArgs,
    /// For every hook, in config order: `matches`, or the first selector that does not and why.
    #[arg(long)]
    explain: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    push: PushArgs,
    /// The message id [default: a new one]
    #[arg(long)]
    msg_id: Option<String>,
    /// Read the message body from this file instead of standard input.
    #[arg(long)]
    body_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct SendArgs {
    /// The endpoint, e.g. http://127.0.0.1:9000/cmq/deploy
    url: String,
    /// The subscription's message format: `json` sends CMQ's JSON envelope, `simplified` the
    /// raw body [default: json with --topic or --subscription, else simplified]
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// The envelope's `topicName`; makes the push a JSON one.
    #[arg(long)]
    topic: Option<String>,
    /// The envelope's `subscriptionName`; makes the push a JSON one.
    #[arg(long)]
    subscription: Option<String>,
    /// A message tag (x-cmq-message-tag); repeat for several.
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// The message id (x-cmq-message-id, and the envelope's `msgId`) [default: a new one]
    #[arg(long)]
    msg_id: Option<String>,
    /// The request id (x-cmq-request-id) [default: a new one]
    #[arg(long)]
    request_id: Option<String>,
    /// Read the message body from this file instead of standard input.
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// Add a request header, e.g. 'Authorization: Bearer s3cret'; repeat for several. A name
    /// given here replaces CMQ's header of that name.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<ExtraHeader>,
    /// Send this token as X-Cmqhook-Token, for a server with `token` set.
    #[arg(long, value_name = "TOKEN", value_parser = ExtraHeader::token)]
    token: Option<ExtraHeader>,
}

#[derive(Debug, Args)]
struct HistoryArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Only runs of this hook.
    #[arg(long)]
    hook: Option<String>,
    /// Only this message id.
    #[arg(long)]
    msg_id: Option<String>,
    /// Only runs that did not succeed, and pushes that were not answered 2xx.
    #[arg(long)]
    failed: bool,
    /// Dead messages of `ack = "stored"` hooks instead: hook, message id, attempts, the last
    /// run's outcome, and when it died.
    #[arg(long, conflicts_with = "failed")]
    dead: bool,
    /// At most this many entries.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// JSON Lines: one JSON object per line, newest first.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ShowArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The run's id, as `history` prints it (`run=ID`).
    #[arg(value_name = "RUN_ID")]
    run_id: i64,
    /// The run as one JSON object: exactly what the console's /api/runs/{id} answers.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The message id of the push to run again.
    #[arg(long)]
    msg_id: String,
    /// Only this hook (any configured hook), instead of the hooks that ran it.
    #[arg(long)]
    hook: Option<String>,
}

#[derive(Debug, Args)]
struct InitArgs {
    /// Where to write the config.
    #[arg(default_value = "hooks.toml")]
    file: PathBuf,
}

#[derive(Debug, Args)]
struct CompletionsArgs {
    /// The shell to complete for.
    shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
struct ManArgs {
    /// The page of this command (e.g. `route`, as `cmqhook-route(1)`; any command `cmqhook
    /// --help` lists), or `cmqhook.toml` for the config reference (`cmqhook.toml(5)`), instead
    /// of `cmqhook(1)`.
    command: Option<String>,
    /// Write every page (cmqhook.1, cmqhook-COMMAND.1, cmqhook.toml.5) into DIR instead, and
    /// print their paths.
    #[arg(long, value_name = "DIR", conflicts_with = "command")]
    out_dir: Option<PathBuf>,
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
    /// Listen on this IP:PORT or HOST:PORT (every address the host resolves to) instead of
    /// `[server] listen`.
    #[arg(long, value_name = "ADDR")]
    listen: Option<Listen>,
}

/// Why a command could not do its work. Printed by [`main`] as `error: ` lines on stderr.
///
/// That a command ran and found a "no" (no hook matched, a hook failed, a non-2xx answer) is
/// not an error: those commands return their exit status themselves.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The config cannot be read or is invalid: one `file:line:column: …` line a problem.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("cannot read the message body from {}: {source}", file.display())]
    BodyFile {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the message body from standard input: {0}")]
    Stdin(std::io::Error),
    #[error("serve would refuse this push: {0}")]
    Push(#[from] PushError),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Send(#[from] SendError),
    #[error(
        "the journal is off in {}: set `journal` in [server] to a file (the default is \"cmqhook.db\") to turn it on",
        file.display()
    )]
    JournalOff { file: PathBuf },
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("{} already exists: not overwriting it (name another FILE)", file.display())]
    InitExists { file: PathBuf },
    #[error("cannot write {}: {source}", file.display())]
    InitWrite {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write a delivery as JSON: {0}")]
    HistoryJson(#[from] serde_json::Error),
    /// A message already made safe to show (secrets redacted).
    #[error("{0}")]
    Shown(String),
    /// Standard output cannot be written; a reader that went away is [`CliError::is_closed_stdout`].
    #[error("cannot write to standard output: {0}")]
    Stdout(std::io::Error),
}

/// `println!` that returns an error instead of panicking when standard output is closed, as it
/// is for `cmqhook history | head -1`.
macro_rules! say {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(CliError::Stdout)
    };
}
// By path, for the modules of the commands.
use say;

impl CliError {
    /// Whether this is standard output closed by its reader.
    pub fn is_closed_stdout(&self) -> bool {
        matches!(self, CliError::Stdout(err) if err.kind() == std::io::ErrorKind::BrokenPipe)
    }

    /// The process's exit status for this error: 1 for every one of them (SPEC §1); clap's
    /// own usage errors exit 2 before any command runs, and a closed standard output exits
    /// 141, as a shell reports a command killed by SIGPIPE.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            err if err.is_closed_stdout() => ExitCode::from(141),
            CliError::Config(_)
            | CliError::Serve(_)
            | CliError::BodyFile { .. }
            | CliError::Stdin(_)
            | CliError::Push(_)
            | CliError::Runtime(_)
            | CliError::Send(_)
            | CliError::JournalOff { .. }
            | CliError::Journal(_)
            | CliError::InitExists { .. }
            | CliError::InitWrite { .. }
            | CliError::HistoryJson(_)
            | CliError::Shown(_)
            | CliError::Stdout(_) => ExitCode::FAILURE,
        }
    }
}

/// Parses the command line, runs the command, and maps its result to an exit status.
pub fn main() -> ExitCode {
    // Before any thread starts, so that every thread inherits it.
    runner::block_sigchld();
    // The guard those commands start (`runner::guard`), as `cmqhook __guard LOG_FORMAT`: not
    // a command for people, so neither in `--help` nor in the completions.
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() == Some(OsStr::new(runner::guard::SUBCOMMAND)) {
        let json = args.next().as_deref() == Some(OsStr::new("json"));
        telemetry::init(
            if json {
                LogFormat::Json
            } else {
                LogFormat::Text
            },
            0,
        );
        return runner::guard::main();
    }
    let cli = Cli::parse();
    let verbosity = if cli.quiet {
        -1
    } else {
        i8::try_from(cli.verbose).unwrap_or(i8::MAX)
    };
    telemetry::init(cli.log_format, verbosity);
    // Killed by any signal, these take the commands they started with them (SPEC §5).
    if matches!(
        cli.command,
        Command::Serve(_) | Command::Run(_) | Command::Replay(_)
    ) && let Some(format) = clap::ValueEnum::to_possible_value(&cli.log_format)
    {
        runner::guard::start(vec![format.get_name().to_owned()]);
    }
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Check(args) => check(&args),
        Command::Route(args) => route(&args),
        Command::Run(args) => run(&args),
        Command::Send(args) => send(&args),
        Command::Queue(args) => queue::queue(&args),
        Command::History(args) => history::history(&args),
        Command::Show(args) => show::show(&args),
        Command::Replay(args) => replay(&args),
        Command::Init(args) => init(&args),
        Command::Completions(args) => completions(&args),
        Command::Man(args) => man(&args),
    };
    // Output lines of the commands it ran still on their way to the log get there first.
    runner::flush_log(std::time::Duration::from_secs(5));
    result.unwrap_or_else(|err| {
        // The reader left (`| head -1`): nothing to say about it.
        if err.is_closed_stdout() {
            return err.exit_code();
        }
        // A config error is one diagnostic a line; each gets the prefix.
        for line in err.to_string().lines() {
            eprintln!("error: {line}");
        }
        err.exit_code()
    })
}

fn check(args: &ConfigArg) -> Result<ExitCode, CliError> {
    let config = Config::load_for_serve(&args.config)?;
    say!(
        "{}: valid, {} hook{}",
        config.file.display(),
        config.hooks.len(),
        if config.hooks.len() == 1 { "" } else { "s" }
    )?;
    for hook in &config.hooks {
        say!("{}", describe(hook, config.server.respond_within))?;
    }
    for queue in &config.queues {
        say!(
            "queue {}  {}  {}, wait {}, batch {}, pollers {}",
            queue.name,
            config.redact(&queue.endpoint),
            queue.signature,
            DurationText(queue.wait),
            queue.batch,
            queue.pollers
        )?;
    }
    if let Some(notify) = &config.notify {
        let on: Vec<&str> = notify.on.iter().map(|event| event.as_str()).collect();
        say!(
            "[notify]\n  on:    {}\n  run:   sh -c {:?} (workdir {}, timeout {})",
            if on.is_empty() {
                "nothing".to_owned()
            } else {
                on.join(", ")
            },
            notify.command,
            notify.workdir.display(),
            DurationText(notify.timeout)
        )?;
    }
    if let Some(console) = &config.console {
        let access = match console.token {
            Some(_) => "token required",
            None => "no token: read-only, no replay",
        };
        say!("console  http://{}  {access}", console.listen)?;
    }
    for warning in config.warnings() {
        eprintln!("warning: {warning}");
    }
    // A database that is down now must not block a start (ExecStartPre): a warning only.
    if let Some(url) = &config.server.postgres
        && let Err(err) = delivery::postgres::probe(url)
    {
        eprintln!(
            "warning: cannot reach the journal database now ({}); serve will start anyway and answer 503 until it can",
            config.redact(&err)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `name  selectors  -> action`, and when it is answered, as `check` prints it.
fn describe(hook: &Hook, respond_within: Duration) -> String {
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
    if let Some(queue) = &selector.from_queue {
        parts.push(format!("from_queue={queue}"));
    }
    if parts.is_empty() {
        parts.push("(every push)".to_owned());
    }
    let from_queue = selector.from_queue.is_some();
    let ack = match hook.ack {
        // A queue message waits for its run however long it takes: no respond_within.
        Ack::Exit if from_queue => "exit (deleted from the queue once the command exited 0; a failure is received again after the queue's visibility timeout, until its retention drops it)".to_owned(),
        Ack::Exit if hook.timeout > respond_within => format!(
            "exit (2xx once the command exited 0; a run longer than respond_within, {}, has the first delivery answered 503 and CMQ's retry gets its outcome; `ack = \"stored\"` answers at once)",
            DurationText(respond_within)
        ),
        Ack::Exit => "exit (2xx once the command exited 0; CMQ retries a failure)".to_owned(),
        Ack::Stored => {
            let retry: Vec<String> = hook
                .retry
                .iter()
                .map(|delay| DurationText(*delay).to_string())
                .collect();
            format!(
                "stored ({} once stored; retry after {}, then dead)",
                if from_queue {
                    "deleted from the queue"
                } else {
                    "2xx"
                },
                if retry.is_empty() {
                    "none".to_owned()
                } else {
                    retry.join(", ")
                }
            )
        }
    };
    format!(
        "{}\n  match: {}\n  run:   {} (workdir {}, timeout {})\n  ack:   {ack}",
        hook.name,
        parts.join(" "),
        hook.action,
        hook.workdir.display(),
        DurationText(hook.timeout)
    )
}

fn serve(args: ServeArgs) -> Result<ExitCode, CliError> {
    service::serve(&args.config.config, args.listen)?;
    Ok(ExitCode::SUCCESS)
}

fn route(args: &RouteArgs) -> Result<ExitCode, CliError> {
    let config = RoutedConfig::new(Config::load(&args.config.config)?);
    let push = local_push(&args.push, new_id(), Bytes::new(), config.server.format)?;
    let matched = if args.explain {
        let mut matched = false;
        for hook in &config.hooks {
            match hook.selector.explain(&push) {
                Ok(()) => {
                    matched = true;
                    say!("{}: matches", hook.name)?;
                }
                // A secret `path` is shown as `${NAME}`, as everywhere.
                Err(why) => say!(
                    "{}: {}",
                    hook.name,
                    why.describe(|text| config.redact(text))
                )?,
            }
        }
        matched
    } else {
        let matched = config.route(&push);
        for hook in &matched {
            say!("{}", hook.name)?;
        }
        !matched.is_empty()
    };
    if matched {
        return Ok(ExitCode::SUCCESS);
    }
    if args.explain {
        eprintln!("{}", no_match(&config, &push));
    } else {
        eprintln!("{} (`--explain` says why)", no_match(&config, &push));
    }
    Ok(ExitCode::FAILURE)
}

/// `no hook matches this push: …`, naming what `push` carried (secrets redacted); for a
/// message from a queue, the queue and its tags.
fn no_match(config: &Config, push: &Push) -> String {
    // Each value redacted before it is quoted: escaping may change how a secret is spelled.
    let shown = |text: &str| config.redact(text).into_owned();
    let tags = if push.tags.is_empty() {
        "no tags".to_owned()
    } else {
        format!("tags [{}]", shown(&push.tags.join(", ")))
    };
    if let Some(queue) = &push.queue {
        return format!("no hook matches this message from queue {queue:?}: {tags}");
    }
    let mut carried = vec![format!("path {:?}", shown(&push.path))];
    match (&push.topic, &push.subscription) {
        (Some(topic), Some(subscription)) => {
            carried.push(format!("topic {:?}", shown(topic)));
            carried.push(format!("subscription {:?}", shown(subscription)));
        }
        _ => carried.push("SIMPLIFIED (no topic or subscription)".to_owned()),
    }
    carried.push(tags);
    format!("no hook matches this push: {}", carried.join(", "))
}

fn run(args: &RunArgs) -> Result<ExitCode, CliError> {
    let mut config = Config::load(&args.config.config)?;
    // A local run waits for its commands, however long they take.
    config.server.respond_within = Duration::from_secs(365 * 24 * 3600);
    let body = read_body(args.body_file.as_deref())?;
    let msg_id = args.msg_id.clone().unwrap_or_else(new_id);
    let push = local_push(&args.push, msg_id, body, config.server.format)?;
    let unmatched = no_match(&config, &push);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    let interrupt = CancellationToken::new();
    let deliveries = Deliveries::in_memory(config.server.dedup_capacity);
    let dispatcher = Arc::new(Dispatcher::new(config, deliveries, interrupt.clone()));
    let answer = runtime.block_on(async {
        let path = dispatcher.config().redact(&push.path).into();
        let answer = dispatcher.dispatch(push, path);
        tokio::pin!(answer);
        tokio::select! {
            answer = &mut answer => answer,
            _ = tokio::signal::ctrl_c() => {
                // Ctrl-C: stop the commands' process groups, then report.
                interrupt.cancel();
                answer.await
            }
        }
    });
    if answer.results.is_empty() {
        eprintln!("{unmatched}");
        return Ok(ExitCode::FAILURE);
    }
    print_outcomes(&answer.results)?;
    Ok(if answer.verdict == Verdict::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One line a hook: `name: outcome (exit N, …, N ms)`.
fn print_outcomes(results: &[HookResult]) -> Result<(), CliError> {
    for result in results {
        let mut detail = Vec::new();
        if let Some(code) = result.exit_code {
            detail.push(format!("exit {code}"));
        }
        if let Some(signal) = result.signal {
            detail.push(format!("signal {signal}"));
        }
        if let Some(error) = &result.error {
            detail.push(error.clone());
        }
        detail.push(format!("{} ms", result.duration_ms));
        say!(
            "{}: {} ({})",
            result.hook,
            result.outcome.as_str(),
            detail.join(", ")
        )?;
    }
    Ok(())
}

fn replay(args: &ReplayArgs) -> Result<ExitCode, CliError> {
    let config = Config::load(&args.config.config)?;
    if let Some(name) = &args.hook
        && !config.hooks.iter().any(|hook| &hook.name == name)
    {
        return Err(CliError::Shown(format!(
            "no hook `{name}` in {}",
            config.file.display()
        )));
    }
    let msg_id = args.msg_id.as_str();
    let keep_bodies = config.server.keep_bodies;
    let no_body = || {
        let why = match keep_bodies {
            None => "`keep_bodies` is \"off\" in [server]: set it (e.g. \"7d\") to keep the bodies of pushes for replay".to_owned(),
            Some(keep) => format!(
                "none was kept within `keep_bodies` ({})",
                DurationText(keep)
            ),
        };
        CliError::Shown(format!("no kept body for message `{msg_id}`: {why}"))
    };
    if let Some(url) = config.server.postgres.clone() {
        return replay_shared(config, &url, args, no_body);
    }
    let Some(path) = config.server.journal.clone() else {
        return Err(CliError::JournalOff {
            file: config.file.clone(),
        });
    };
    if !path.exists() {
        return Err(no_body());
    }
    // Taking the journal's lock: no `serve` runs anything meanwhile, nor another replay.
    let deliveries = match service::open_deliveries(&config) {
        Ok(deliveries) => deliveries,
        // A serve holds it: it owns the claims, so it runs the replay.
        Err(JournalError::Locked { holder, .. }) => {
            let replies = replay_socket::ask(
                &path,
                &replay_socket::Request {
                    msg_id: args.msg_id.clone(),
                    hook: args.hook.clone(),
                },
            )
            .map_err(|err| {
                CliError::Shown(format!(
                    "a serve{} holds the journal; {err}",
                    holder
                        .map(|pid| format!(" (pid {pid})"))
                        .unwrap_or_default(),
                ))
            })?;
            return report_replies(&replies, no_body);
        }
        Err(err) => return Err(CliError::Journal(err)),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    let kept = runtime
        .block_on(deliveries.kept(msg_id, args.hook.as_deref(), keep_bodies))
        .map_err(CliError::Shown)?
        .ok_or_else(no_body)?;
    let names = match &args.hook {
        Some(name) => vec![name.clone()],
        None => kept.hooks.clone(),
    };
    let mut hooks = Vec::new();
    let mut missing = false;
    for name in &names {
        match config.hooks.iter().find(|hook| &hook.name == name) {
            Some(hook) => hooks.push(Arc::clone(hook)),
            None => {
                missing = true;
                eprintln!("{name}: not replayed: the hook is no longer configured");
            }
        }
    }
    let interrupt = CancellationToken::new();
    let dispatcher = Arc::new(Dispatcher::new(config, deliveries, interrupt.clone()));
    let results = runtime.block_on(until_interrupted(&interrupt, async {
        let runs = hooks.iter().map(|hook| {
            let dispatcher = Arc::clone(&dispatcher);
            let (hook, kept) = (Arc::clone(hook), kept.clone());
            tokio::spawn(async move { dispatcher.replay(&hook, &kept).await })
        });
        futures_util::future::join_all(runs)
            .await
            .into_iter()
            .filter_map(Result::ok)
            .collect::<Vec<HookResult>>()
    }));
    dispatcher.close();
    replay_exit(&results, !missing && results.len() == hooks.len())
}

/// Prints each outcome of a replay and exits 0 iff it is `complete` (every hook asked for has
/// a result) and every one succeeded and is journaled.
fn replay_exit(results: &[HookResult], complete: bool) -> Result<ExitCode, CliError> {
    print_outcomes(results)?;
    let succeeded = complete
        && results
            .iter()
            .all(|result| result.outcome == Outcome::Succeeded && result.recorded);
    Ok(if succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `work`, whose runs `interrupt` stops: at Ctrl-C their process groups are stopped, and what
/// they came to is still reported.
async fn until_interrupted<T>(
    interrupt: &CancellationToken,
    work: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(work);
    tokio::select! {
        done = &mut work => done,
        _ = tokio::signal::ctrl_c() => {
            interrupt.cancel();
            work.await
        }
    }
}

/// How long `cmqhook replay` waits for an instance of the fleet to take its request before it
/// concludes that no `serve` runs and replays the message itself (every `serve` looks for
/// requests four times a second).
const REPLAY_TAKEN_WITHIN: Duration = Duration::from_secs(3);

/// `cmqhook replay` with a PostgreSQL journal: records a replay request there for whichever
/// `serve` of the fleet comes first and waits for its outcome; when no `serve` takes it,
/// claims the message in the database itself (as any instance would) and runs the replay.
fn replay_shared(
    config: Config,
    url: &str,
    args: &ReplayArgs,
    no_body: impl FnOnce() -> CliError,
) -> Result<ExitCode, CliError> {
    let requested = postgres::request_replay(
        url,
        &args.msg_id,
        args.hook.as_deref(),
        REPLAY_TAKEN_WITHIN,
        |instance| eprintln!("instance `{instance}` took the replay; waiting for its outcome"),
    )
    .map_err(|err| CliError::Shown(config.secrets().redact(&err.to_string()).into_owned()))?;
    let replies = match requested {
        postgres::Requested::Answered(answer) => answer
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<Vec<Reply>, _>>()
            .map_err(|err| {
                CliError::Shown(format!(
                    "the serve's answer to the replay is unreadable: {err}"
                ))
            })?,
        postgres::Requested::NotTaken => {
            eprintln!("no serve took the replay: running it here");
            let deliveries = service::open_deliveries(&config)?;
            deliveries
                .health()
                .map_err(|reason| CliError::Shown(config.secrets().redact(&reason).into_owned()))?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(CliError::Runtime)?;
            let interrupt = CancellationToken::new();
            let dispatcher = Arc::new(Dispatcher::new(config, deliveries, interrupt.clone()));
            let replayed = runtime.block_on(until_interrupted(
                &interrupt,
                dispatcher.replay_message(&args.msg_id, args.hook.as_deref()),
            ));
            dispatcher.close();
            replayed.replies()
        }
    };
    report_replies(&replies, no_body)
}

/// Prints each outcome of a replay a `serve` (or this process) answered, and exits as a
/// replay run here would: 0 iff every hook succeeded and is journaled.
fn report_replies(
    replies: &[Reply],
    no_body: impl FnOnce() -> CliError,
) -> Result<ExitCode, CliError> {
    if replies.iter().any(|reply| reply.not_kept) {
        return Err(no_body());
    }
    let mut results = Vec::new();
    let mut refused = false;
    for reply in replies {
        match reply.result() {
            Some(result) => results.push(result),
            None => {
                refused = true;
                eprintln!(
                    "{}",
                    reply
                        .error
                        .as_deref()
                        .unwrap_or("the serve refused the replay")
                );
            }
        }
    }
    replay_exit(&results, !refused && !results.is_empty())
}

fn send(args: &SendArgs) -> Result<ExitCode, CliError> {
    let push = OutgoingPush {
        format: args
            .format
            .unwrap_or_else(|| push_format(args.topic.is_some() || args.subscription.is_some())),
        msg_id: args.msg_id.clone().unwrap_or_else(new_id),
        request_id: args.request_id.clone().unwrap_or_else(new_request_id),
        topic: args.topic.clone().unwrap_or_default(),
        subscription: args.subscription.clone().unwrap_or_default(),
        tags: args.tags.clone(),
        publish_time: unix_seconds(),
        body: read_body(args.body_file.as_deref())?,
    };
    let headers: Vec<ExtraHeader> = args.token.iter().chain(&args.headers).cloned().collect();
    let reply = send_push(&args.url, &push, &headers)?;
    say!(
        "{}",
        format!("{} {}", reply.status, reply.reason).trim_end()
    )?;
    say!("{}", String::from_utf8_lossy(&reply.body))?;
    Ok(if (200..300).contains(&reply.status) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What `init` writes: a config `check` accepts as it is, whose hook runs only `echo` and `cat`.
const STARTER_CONFIG: &str = include_str!("../examples/starter.toml");

fn init(args: &InitArgs) -> Result<ExitCode, CliError> {
    let file = &args.file;
    // `create_new`: a file that appears meanwhile is not overwritten either.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(file)
        .and_then(|mut out| out.write_all(STARTER_CONFIG.as_bytes()));
    match written {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(CliError::InitExists { file: file.clone() });
        }
        Err(source) => {
            return Err(CliError::InitWrite {
                file: file.clone(),
                source,
            });
        }
    }
    let shown = file.display();
    say!("wrote {shown}; next: `cmqhook check -c {shown}`, then `cmqhook serve -c {shown}`")?;
    Ok(ExitCode::SUCCESS)
}

fn completions(args: &CompletionsArgs) -> Result<ExitCode, CliError> {
    // Into memory first: clap_complete panics when its writer fails (a closed stdout).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "cmqhook", &mut script);
    write_stdout(&script)
}

fn man(args: &ManArgs) -> Result<ExitCode, CliError> {
    let mut cli = Cli::command();
    // Built, so that a subcommand's page is named `cmqhook-NAME` and shows `cmqhook NAME`, and
    // so that `help`, a command `cmqhook --help` lists, has its page too.
    cli.build();
    if let Some(dir) = &args.out_dir {
        let written = man::write_all(&cli, dir).map_err(|err| {
            CliError::Shown(format!(
                "cannot write man pages into {}: {err}",
                dir.display()
            ))
        })?;
        for file in written {
            say!("{}", file.display())?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let page = match args.command.as_deref() {
        None => man::command_page(&cli),
        Some(man::CONFIG_PAGE) => man::config_page(),
        Some(name) => match cli.find_subcommand(name) {
            Some(command) => man::command_page(command),
            None => {
                let known: Vec<&str> = cli.get_subcommands().map(|c| c.get_name()).collect();
                let message = format!(
                    "no command `{name}`: `cmqhook man` prints cmqhook(1), `cmqhook man COMMAND` the page of one of: {}, and `cmqhook man {}` the config reference",
                    known.join(", "),
                    man::CONFIG_PAGE
                );
                // A usage error (exit 2), with the usage of `man`.
                let mut man = cli.find_subcommand("man").cloned().unwrap_or(cli);
                man.error(clap::error::ErrorKind::InvalidValue, message)
                    .exit()
            }
        },
    };
    write_stdout(&page)
}

/// Where the config's journal is, for the commands that read it.
enum JournalAt<'a> {
    Postgres(&'a str),
    Sqlite(&'a Path),
}

/// The config's journal; an error saying how to turn it on when it is off.
fn journal_at(config: &Config) -> Result<JournalAt<'_>, CliError> {
    match (&config.server.postgres, &config.server.journal) {
        (Some(url), _) => Ok(JournalAt::Postgres(url)),
        (None, Some(path)) => Ok(JournalAt::Sqlite(path)),
        (None, None) => Err(CliError::JournalOff {
            file: config.file.clone(),
        }),
    }
}

fn write_stdout(bytes: &[u8]) -> Result<ExitCode, CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(CliError::Stdout)?;
    Ok(ExitCode::SUCCESS)
}

/// The push `route` and `run` try, as `serve` would read it under `format`: a message from
/// the queue `--from-queue` names, else a push, JSON when a topic or subscription is given.
fn local_push(
    args: &PushArgs,
    msg_id: String,
    body: Bytes,
    format: FormatSetting,
) -> Result<Push, CliError> {
    if let Some(queue) = &args.from_queue {
        return Ok(Push::from_queue(queue, &msg_id, args.tags.clone(), body)?);
    }
    Ok(outgoing_push(args, msg_id, body).parse(format, &args.path)?)
}

/// The push `route` and `run` send by hand: JSON when a topic or subscription is given.
fn outgoing_push(args: &PushArgs, msg_id: String, body: Bytes) -> OutgoingPush {
    OutgoingPush {
        format: push_format(args.topic.is_some() || args.subscription.is_some()),
        msg_id,
        request_id: new_request_id(),
        topic: args.topic.clone().unwrap_or_default(),
        subscription: args.subscription.clone().unwrap_or_default(),
        tags: args.tags.clone(),
        publish_time: unix_seconds(),
        body,
    }
}

/// How `route`, `run` and `send` build a push by default: a JSON envelope when it names a
/// topic or subscription (which only an envelope carries), SIMPLIFIED otherwise.
fn push_format(names_topic_or_subscription: bool) -> Format {
    if names_topic_or_subscription {
        Format::Json
    } else {
        Format::Simplified
    }
}

fn read_body(file: Option<&Path>) -> Result<Bytes, CliError> {
    let body = match file {
        Some(file) => std::fs::read(file).map_err(|source| CliError::BodyFile {
            file: file.to_owned(),
            source,
        })?,
        None => {
            let mut body = Vec::new();
            std::io::stdin()
                .read_to_end(&mut body)
                .map_err(CliError::Stdin)?;
            body
        }
    };
    Ok(Bytes::from(body))
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS per instance: enough for ids, no dependency.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

/// A message id shaped like TDMQ's: 30 hex digits.
fn new_id() -> String {
    let id = format!("{:016X}{:016X}", random_u64(), random_u64());
    id[..30].to_owned()
}

fn new_request_id() -> String {
    (random_u64() % 10_000_000_000).to_string()
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_argument_of_every_command_has_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let helped = [arg.get_help(), arg.get_long_help()]
                    .into_iter()
                    .flatten()
                    .any(|help| !help.to_string().trim().is_empty());
                if !helped {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut cli = Cli::command();
        // Built: global flags are copied into every subcommand, and --help and --version added.
        cli.build();
        let mut missing = Vec::new();
        walk(&cli, "cmqhook", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
        assert!(cli.get_subcommands().count() > 5, "the tree was walked");
    }
}
