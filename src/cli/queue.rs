//! `cmqhook queue send` (SPEC §11): publishes one message to a `[[queue]]` of the config with
//! SendMessage, to try a pull-mode setup end to end.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{CliError, ConfigArg, read_body};
use crate::config::Config;
use crate::pull::QueueClient;

#[derive(Debug, Args)]
pub(super) struct QueueArgs {
    #[command(subcommand)]
    command: QueueCommand,
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// Publish one message to a [[queue]] of the config (SendMessage, with the queue's
    /// endpoint and key, which needs send rights), the body from --body-file or standard
    /// input; print its message id. Exit 0 when the queue took it, 1 with CMQ's error code and
    /// message otherwise.
    Send(SendArgs),
}

#[derive(Debug, Args)]
struct SendArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The `name` of the [[queue]] to publish to.
    #[arg(long, value_name = "NAME")]
    queue: String,
    /// A message tag (msgTag); repeat for several.
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Read the message body from this file instead of standard input.
    #[arg(long)]
    body_file: Option<PathBuf>,
}

pub(super) fn queue(args: &QueueArgs) -> Result<ExitCode, CliError> {
    match &args.command {
        QueueCommand::Send(args) => send(args),
    }
}

fn send(args: &SendArgs) -> Result<ExitCode, CliError> {
    let config = Config::load(&args.config.config)?;
    let Some(queue) = config.queues.iter().find(|queue| queue.name == args.queue) else {
        let names: Vec<String> = config
            .queues
            .iter()
            .map(|queue| format!("`{}`", queue.name))
            .collect();
        let known = if names.is_empty() {
            "it has no [[queue]] table".to_owned()
        } else {
            format!("its queues: {}", names.join(", "))
        };
        return Err(CliError::Shown(format!(
            "{} has no [[queue]] named `{}` ({known})",
            config.file.display(),
            args.queue
        )));
    };
    let body = read_body(args.body_file.as_deref())?;
    let body = String::from_utf8(body.to_vec()).map_err(|_| {
        CliError::Shown("the message body is not UTF-8 text, which CMQ messages are".to_owned())
    })?;
    if body.is_empty() {
        return Err(CliError::Shown(
            "the message body is empty: CMQ takes messages of 1 byte or more".to_owned(),
        ));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    let client = QueueClient::new(queue);
    let sent = runtime.block_on(client.send(&queue.name, &body, &args.tags));
    match sent {
        Ok(msg_id) => {
            writeln!(std::io::stdout().lock(), "{msg_id}").map_err(CliError::Stdout)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => Err(CliError::Shown(format!(
            "queue `{}`: {}",
            queue.name,
            config.redact(&err.to_string())
        ))),
    }
}
