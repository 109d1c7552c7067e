//! `cmqhook show RUN_ID [--json]`: one run from the journal with its kept output (SPEC §10).
//! `--json` prints the [`RunRecord`] exactly as the console's `/api/runs/{id}` answers it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

use super::{CliError, JournalAt, ShowArgs, journal_at, say, write_stdout};
use crate::config::Config;
use crate::delivery::{self, JournalError, RunRecord};
use crate::telemetry;

pub(super) fn show(args: &ShowArgs) -> Result<ExitCode, CliError> {
    let config = Config::load(&args.config.config)?;
    let found = match journal_at(&config)? {
        JournalAt::Postgres(url) => delivery::postgres::run(url, args.run_id)
            .map_err(|err| CliError::Shown(config.redact(&err.to_string()).into_owned()))?,
        JournalAt::Sqlite(path) => match delivery::run(path, args.run_id) {
            // `serve` creates the journal: nothing has run yet.
            Err(JournalError::Missing { .. }) => None,
            found => found?,
        },
    };
    let Some(run) = found else {
        return Err(CliError::Shown(format!(
            "no run {} in the journal (`cmqhook history` prints run ids; runs older than `dedup_for` are pruned)",
            args.run_id
        )));
    };
    if args.json {
        say!("{}", serde_json::to_string(&run)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    write_stdout(run_text(&run).as_bytes())
}

/// A run as `show` prints it: a field a line, then its output; control characters escaped.
fn run_text(run: &RunRecord) -> String {
    let or_dash = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".to_owned());
    let mut outcome = run.outcome.clone();
    if let Some(code) = run.exit_code {
        let _ = write!(outcome, ", exit code {code}");
    }
    if let Some(signal) = run.signal {
        let _ = write!(outcome, ", signal {signal}");
    }
    if run.superseded {
        outcome.push_str(
            " (superseded: another instance had taken the message over; its state is that instance's)",
        );
    }
    let tags = if run.tags.is_empty() {
        "-".to_owned()
    } else {
        run.tags.join(",")
    };
    let fields = [
        ("run", run.id.to_string()),
        ("hook", run.hook.clone()),
        ("message id", or_dash(&run.msg_id)),
        ("request id", or_dash(&run.request_id)),
        ("attempt", run.attempt.to_string()),
        ("instance", or_dash(&run.instance)),
        ("started", run.started_at.clone()),
        (
            "duration",
            run.duration_ms
                .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms")),
        ),
        ("outcome", outcome),
        ("topic", or_dash(&run.topic)),
        ("subscription", or_dash(&run.subscription)),
        ("tags", tags),
        ("replay", if run.replay { "yes" } else { "no" }.to_owned()),
    ];
    let mut text = String::new();
    for (name, value) in fields {
        let _ = writeln!(text, "{name:<13} {}", telemetry::escaped(&value));
    }
    match run.output.as_deref() {
        Some(output) if !output.is_empty() => {
            text.push_str("output:\n");
            for line in output.lines() {
                let _ = writeln!(text, "{}", telemetry::escaped(line));
            }
        }
        _ => text.push_str("output:       none\n"),
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> RunRecord {
        RunRecord {
            id: 42,
            hook: "deploy".to_owned(),
            msg_id: Some("m-1".to_owned()),
            request_id: None,
            attempt: 2,
            outcome: "failed".to_owned(),
            superseded: false,
            exit_code: Some(3),
            signal: None,
            started_at: "2026-12-07T13:00:00.000Z".to_owned(),
            duration_ms: Some(15),
            instance: Some("web-1".to_owned()),
            replay: true,
            topic: Some("deploy\u{1b}[2J".to_owned()),
            subscription: None,
            tags: vec!["a".to_owned(), "b".to_owned()],
            output: Some("out| step 1\nerr| bad \u{7}thing\n".to_owned()),
        }
    }

    #[test]
    fn a_run_is_printed_a_field_a_line_then_its_output_escaped() {
        let text = run_text(&run());
        assert_eq!(
            text,
            "run           42\n\
             hook          deploy\n\
             message id    m-1\n\
             request id    -\n\
             attempt       2\n\
             instance      web-1\n\
             started       2026-12-07T13:00:00.000Z\n\
             duration      15 ms\n\
             outcome       failed, exit code 3\n\
             topic         deploy\\x1b[2J\n\
             subscription  -\n\
             tags          a,b\n\
             replay        yes\n\
             output:\n\
             out| step 1\n\
             err| bad \\x07thing\n"
        );
    }

    #[test]
    fn a_superseded_run_says_so() {
        let text = run_text(&RunRecord {
            superseded: true,
            output: None,
            ..run()
        });
        assert!(
            text.contains("outcome       failed, exit code 3 (superseded"),
            "{text}"
        );
        assert!(text.ends_with("output:       none\n"), "{text}");
    }
}
