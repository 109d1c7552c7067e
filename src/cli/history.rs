//! `cmqhook history`: recent runs and pushes from the journal, newest first, one line each
//! (or JSON Lines); a run's line names its id for `cmqhook show`.

use std::process::ExitCode;

use super::{CliError, HistoryArgs, JournalAt, journal_at, say};
use crate::config::Config;
use crate::delivery::{self, HistoryFilter, HistoryRow, JournalError};
use crate::telemetry;
use std::io::Write as _;

pub(super) fn history(args: &HistoryArgs) -> Result<ExitCode, CliError> {
    let config = Config::load(&args.config.config)?;
    let filter = HistoryFilter {
        hook: args.hook.clone(),
        msg_id: args.msg_id.clone(),
        failed: args.failed,
        dead: args.dead,
        limit: args.limit,
    };
    let deliveries = match journal_at(&config)? {
        JournalAt::Postgres(url) => delivery::postgres::history(url, &filter)
            .map_err(|err| CliError::Shown(config.redact(&err.to_string()).into_owned()))?,
        JournalAt::Sqlite(path) => match delivery::history(path, &filter) {
            Err(JournalError::Missing { .. }) => {
                // `serve` creates the journal: a fresh install has simply seen nothing yet.
                let path = path.display().to_string();
                eprintln!(
                    "no deliveries yet: the journal {} does not exist yet (`cmqhook serve` creates it)",
                    config.redact(&path)
                );
                return Ok(ExitCode::SUCCESS);
            }
            found => found?,
        },
    };
    if deliveries.is_empty() {
        let filtered = args.hook.is_some() || args.msg_id.is_some() || args.failed;
        eprintln!(
            "{}",
            if args.dead {
                "no dead messages"
            } else if filtered {
                "no deliveries match"
            } else {
                "no deliveries yet"
            }
        );
    }
    for delivery in &deliveries {
        if args.json {
            let line = serde_json::to_string(delivery)?;
            say!("{line}")?;
        } else {
            say!("{}", telemetry::escaped(&history_line(delivery)))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn history_line(delivery: &HistoryRow) -> String {
    let or_dash = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".to_owned());
    let mut line = format!(
        "{}  {:<4}  {:<16}  msg={}",
        delivery.at,
        delivery.kind,
        or_dash(&delivery.hook),
        or_dash(&delivery.msg_id)
    );
    if let Some(id) = delivery.run_id {
        line.push_str(&format!("  run={id}"));
    }
    if let Some(attempt) = delivery.attempt {
        line.push_str(&format!("  attempt={attempt}"));
    }
    if let Some(status) = delivery.status {
        line.push_str(&format!("  status={status}"));
    }
    line.push_str(&format!("  {}", delivery.outcome));
    if let Some(code) = delivery.exit_code {
        line.push_str(&format!("  exit={code}"));
    }
    if let Some(signal) = delivery.signal {
        line.push_str(&format!("  signal={signal}"));
    }
    if let Some(ms) = delivery.duration_ms {
        line.push_str(&format!("  {ms}ms"));
    }
    if delivery.left_behind == Some(true) {
        line.push_str("  left-processes-behind");
    }
    if let Some(path) = &delivery.path {
        line.push_str(&format!("  path={path}"));
    }
    if let Some(instance) = &delivery.instance {
        line.push_str(&format!("  instance={instance}"));
    }
    if let Some(topic) = &delivery.topic {
        line.push_str(&format!("  topic={topic}"));
    }
    if let Some(subscription) = &delivery.subscription {
        line.push_str(&format!("  subscription={subscription}"));
    }
    if delivery.replay {
        line.push_str("  replay");
    }
    // Why it failed, as the command said it last (escaped with the whole line).
    let failed = matches!(
        delivery.outcome.as_str(),
        "failed" | "timed_out" | "killed" | "interrupted"
    ) || delivery.kind == "dead";
    if let Some(reason) = delivery.stderr_tail.as_deref().and_then(last_line)
        && failed
    {
        line.push_str(&format!("  -- {reason}"));
    }
    line
}

/// The last line of `text` that is not blank, cut at [`REASON_CHARS`] characters.
fn last_line(text: &str) -> Option<String> {
    let line = text
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())?
        .trim_end();
    let mut cut: String = line.chars().take(REASON_CHARS).collect();
    if line.chars().count() > REASON_CHARS {
        cut.push('…');
    }
    Some(cut)
}

/// How much of a failed run's last stderr line `history` shows.
const REASON_CHARS: usize = 120;
