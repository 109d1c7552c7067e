//! Logging: the `tracing` subscriber, text or JSON, filtered by `RUST_LOG` or `-v`/`-q`.

use tracing_subscriber::EnvFilter;

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
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},actix_server=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
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
        }
    })
}

impl Metrics {
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
