//! Logging: the `tracing` subscriber, text or JSON, filtered by `RUST_LOG` or `-v`/`-q`.
//!
//! Text lines escape every control character in every field ([`EscapedFields`]), so that
//! neither a command's output nor a push's data can forge a log line or reach a terminal as an
//! escape sequence; JSON lines are escaped by JSON itself.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

/// Installs the global subscriber, writing to stderr. `RUST_LOG` wins over `verbosity`
/// (-1 quiet, 0 normal, 1 debug, 2+ trace).
pub fn init(format: LogFormat, verbosity: i8) {
    let level = match verbosity {
        i8::MIN..=-1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!("{level},actix_server=warn,tokio_postgres=warn"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.fmt_fields(EscapedFields).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Writes an event's fields as `message name="text" name=12`: every value but numbers and
/// booleans quoted (whether recorded as a string, `%value` or `?value`), and every control
/// character of every field escaped (`\n`, `\r`, `\t`, `\x1b`).
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = FieldWriter {
            writer,
            result: Ok(()),
            first: true,
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct FieldWriter<'writer> {
    writer: Writer<'writer>,
    result: fmt::Result,
    first: bool,
}

impl FieldWriter<'_> {
    fn write(&mut self, field: &Field, value: &str, quoted: bool) {
        if self.result.is_err() {
            return;
        }
        let first = std::mem::replace(&mut self.first, false);
        self.result = (|| {
            if !first {
                self.writer.write_char(' ')?;
            }
            let message = field.name() == "message";
            if !message {
                write!(self.writer, "{}=", field.name())?;
            }
            let quote = quoted && !message;
            if quote {
                self.writer.write_char('"')?;
            }
            write_escaped(&mut self.writer, value, quote)?;
            if quote {
                self.writer.write_char('"')?;
            }
            Ok(())
        })();
    }
}

impl Visit for FieldWriter<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write(field, value, true);
    }

    /// Text given by `%value` (Display) or `?value` (Debug): quoted like a string.
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        self.write(field, &text, true);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.write(field, &value.to_string(), false);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.write(field, &value.to_string(), false);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.write(field, &value.to_string(), false);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.write(field, if value { "true" } else { "false" }, false);
    }
}

/// `text` with control characters escaped; inside quotes, quotes and backslashes too.
pub fn write_escaped(out: &mut impl fmt::Write, text: &str, quoted: bool) -> fmt::Result {
    for ch in text.chars() {
        match ch {
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            '"' | '\\' if quoted => {
                out.write_char('\\')?;
                out.write_char(ch)?;
            }
            ch if ch.is_control() && (ch as u32) < 0x100 => write!(out, "\\x{:02x}", ch as u32)?,
            ch if ch.is_control() => write!(out, "\\u{{{:x}}}", ch as u32)?,
            ch => out.write_char(ch)?,
        }
    }
    Ok(())
}

/// `text` with control characters escaped, for a terminal.
pub fn escaped(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    let _ = write_escaped(&mut out, text, false);
    std::borrow::Cow::Owned(out)
}

/// The Prometheus series of SPEC §7, plus queue depth and rejected pushes by reason.
pub struct Metrics {
    registry: prometheus::Registry,
    pub pushes: prometheus::IntCounterVec,
    pub rejected: prometheus::IntCounterVec,
    pub runs: prometheus::IntCounterVec,
    pub run_duration: prometheus::HistogramVec,
    pub running: prometheus::IntGaugeVec,
    pub dedup_hits: prometheus::IntCounterVec,
    pub queued: prometheus::IntGaugeVec,
    pub dedup_evictions: prometheus::IntCounter,
    pub stored_pending: prometheus::IntGaugeVec,
    pub dead_letters: prometheus::IntCounterVec,
    pub superseded: prometheus::IntCounterVec,
    /// Pull mode (SPEC §11), by queue.
    pub queue_received: prometheus::IntCounterVec,
    pub queue_deleted: prometheus::IntCounterVec,
    pub queue_errors: prometheus::IntCounterVec,
    pub queue_redelivered: prometheus::IntCounterVec,
}

/// The process's metrics, registered on first use.
pub fn metrics() -> &'static Metrics {
    static METRICS: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();
    METRICS.get_or_init(|| {
        use prometheus::{HistogramOpts, Opts};
        let registry = prometheus::Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let vec = prometheus::IntCounterVec::new(Opts::new(name, help), labels)
                .expect("metric names are valid");
            registry
                .register(Box::new(vec.clone()))
                .expect("each metric is registered once");
            vec
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let vec = prometheus::IntGaugeVec::new(Opts::new(name, help), labels)
                .expect("metric names are valid");
            registry
                .register(Box::new(vec.clone()))
                .expect("each metric is registered once");
            vec
        };
        let pushes = counter(
            "cmqhook_pushes_total",
            "Pushes answered, by HTTP status.",
            &["status"],
        );
        let rejected = counter(
            "cmqhook_rejected_pushes_total",
            "Pushes that ran nothing, by reason.",
            &["reason"],
        );
        let runs = counter(
            "cmqhook_runs_total",
            "Runs finished, by hook and outcome.",
            &["hook", "outcome"],
        );
        let running = gauge(
            "cmqhook_running",
            "Commands running now, by hook.",
            &["hook"],
        );
        let dedup_hits = counter(
            "cmqhook_dedup_hits_total",
            "Pushes answered from an earlier or running run, by hook.",
            &["hook"],
        );
        let queued = gauge(
            "cmqhook_queue_depth",
            "Runs waiting for a slot, by hook.",
            &["hook"],
        );
        let stored_pending = gauge(
            "cmqhook_stored_pending",
            "Runs of ack = \"stored\" hooks waiting for a slot or a retry, by hook: this instance's (with a PostgreSQL journal, the fleet's).",
            &["hook"],
        );
        let dead_letters = counter(
            "cmqhook_dead_letters_total",
            "Stored messages that died (their last retry failed), by hook.",
            &["hook"],
        );
        let superseded = counter(
            "cmqhook_superseded_total",
            "Runs' ends written after another instance had taken their message over (shared database), by hook.",
            &["hook"],
        );
        let queue_received = counter(
            "cmqhook_queue_received_total",
            "Messages received from a [[queue]], redeliveries included, by queue.",
            &["queue"],
        );
        let queue_deleted = counter(
            "cmqhook_queue_deleted_total",
            "Messages deleted from a [[queue]] (their hooks succeeded, or stored them), by queue.",
            &["queue"],
        );
        let queue_errors = counter(
            "cmqhook_queue_errors_total",
            "Failed queue requests, by queue and code (the API's code, or network / malformed).",
            &["queue", "code"],
        );
        let queue_redelivered = counter(
            "cmqhook_queue_redeliveries_deduplicated_total",
            "Messages received again that every hook had run or was running already: nothing ran, by queue.",
            &["queue"],
        );
        let dedup_evictions = prometheus::IntCounter::new(
            "cmqhook_dedup_evictions_total",
            "Outcomes forgotten early because the in-memory dedup table was full (journal off).",
        )
        .expect("metric names are valid");
        registry
            .register(Box::new(dedup_evictions.clone()))
            .expect("each metric is registered once");
        let run_duration = prometheus::HistogramVec::new(
            HistogramOpts::new(
                "cmqhook_run_duration_seconds",
                "How long runs took, by hook.",
            )
            .buckets(vec![
                0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0,
            ]),
            &["hook"],
        )
        .expect("metric names are valid");
        registry
            .register(Box::new(run_duration.clone()))
            .expect("each metric is registered once");
        Metrics {
            registry,
            pushes,
            rejected,
            runs,
            run_duration,
            running,
            dedup_hits,
            queued,
            dedup_evictions,
            stored_pending,
            dead_letters,
            superseded,
            queue_received,
            queue_deleted,
            queue_errors,
            queue_redelivered,
        }
    })
}

impl Metrics {
    /// Creates `hook`'s series at 0, so that an alert on them works before its first event.
    /// Not its duration histogram: 14 series a hook, for no alert that needs them at 0.
    pub fn declare_hook(&self, hook: &str) {
        for outcome in ["succeeded", "failed", "timed_out"] {
            self.runs.with_label_values(&[hook, outcome]);
        }
        self.running.with_label_values(&[hook]);
        self.dedup_hits.with_label_values(&[hook]);
        self.queued.with_label_values(&[hook]);
        self.stored_pending.with_label_values(&[hook]);
        self.dead_letters.with_label_values(&[hook]);
        self.superseded.with_label_values(&[hook]);
    }

    /// Creates `queue`'s series at 0.
    pub fn declare_queue(&self, queue: &str) {
        self.queue_received.with_label_values(&[queue]);
        self.queue_deleted.with_label_values(&[queue]);
        self.queue_redelivered.with_label_values(&[queue]);
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(err) = encoder.encode_utf8(&self.registry.gather(), &mut out) {
            tracing::error!(error = %err, "cannot encode metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escaped("plain"), "plain");
        assert_eq!(
            escaped("a\nb\r\tc\u{1b}[31m\u{7f}\u{85}"),
            "a\\nb\\r\\tc\\x1b[31m\\x7f\\x85"
        );
        let mut quoted = String::new();
        write_escaped(&mut quoted, "say \"hi\" \\ \n", true).expect("writes");
        assert_eq!(quoted, "say \\\"hi\\\" \\\\ \\n");
    }
}
