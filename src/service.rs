//! The `serve` command's life: bind, open the journal, run the HTTP server and the run
//! runtime, reload on SIGHUP, and drain on SIGTERM/SIGINT.
//!
//! Drain: queues are no longer polled; pushes and `/healthz` get 503 at once; running commands
//! get `shutdown_grace` to finish; then their process groups are killed (journaled
//! `interrupted`); the queue messages whose runs succeeded are deleted; in-flight requests
//! are answered; the journal is flushed; exit 0.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, DurationText, Listen};
use crate::console;
use crate::delivery::{Deliveries, JournalError};
use crate::dispatch::Dispatcher;
use crate::http;
use crate::pull;
use crate::replay_socket;

/// The soft open-files limit `serve` raises itself to, if the hard limit allows.
const OPEN_FILES: u64 = 65_536;
/// How long `serve` waits at start for a shared database before serving without it.
const DATABASE_WAIT: Duration = Duration::from_secs(3);
/// How long killed runs may take to be reaped and journaled after the grace.
const KILL_WAIT: Duration = Duration::from_secs(30);
/// How long the deletes of queue messages whose runs ended may take at shutdown.
const DELETE_WAIT: Duration = Duration::from_secs(15);
/// How long orphaned commands get after SIGTERM when no hook says (`kill_grace`'s default).
const DEFAULT_ORPHAN_GRACE: Duration = Duration::from_secs(5);

/// Why `serve` could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot resolve the listen address `{listen}`: {source}")]
    Resolve {
        listen: Listen,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Serves `config_file` until SIGTERM or SIGINT, then drains. `listen` overrides the config.
pub fn serve(config_file: &Path, listen: Option<Listen>) -> Result<(), ServeError> {
    let config = Config::load_for_serve(config_file)?;
    raise_open_files_limit();
    // Judged on the address served: `--listen 0.0.0.0:9000` exposes the hooks as the file would.
    let warnings = match &listen {
        Some(listen) => {
            let mut served = config.clone();
            served.server.listen = listen.clone();
            served.warnings()
        }
        None => config.warnings(),
    };
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    // The journal first: it may refuse (another serve owns it), and commands a dead serve
    // left running are stopped before anything can run again.
    let deliveries = open_deliveries(&config)?;
    // `cmqhook replay` asks through it while this process holds the SQLite journal.
    let mut replay_socket = match (&config.server.journal, &config.server.postgres) {
        (Some(journal), None) => match replay_socket::bind(journal) {
            Ok(socket) => Some(socket),
            Err(err) => {
                tracing::warn!(
                    error = %err,
                    "cannot listen for `cmqhook replay` beside the journal: replay needs this serve stopped"
                );
                None
            }
        },
        _ => None,
    };
    let listeners = bind(listen.as_ref().unwrap_or(&config.server.listen))?;
    let console_listeners = match &config.console {
        Some(console) => bind(&console.listen)?,
        None => Vec::new(),
    };
    let console_at = console_listeners
        .iter()
        .map(|listener| Ok(format!("http://{}", listener.local_addr()?)))
        .collect::<std::io::Result<Vec<_>>>()?
        .join(" and ");
    let local = listeners
        .iter()
        .map(|listener| Ok(format!("http://{}", listener.local_addr()?)))
        .collect::<std::io::Result<Vec<_>>>()?
        .join(" and ");
    let dispatcher = Arc::new(Dispatcher::new(
        config,
        deliveries,
        CancellationToken::new(),
    ));
    let hooks = dispatcher.config().hooks.len();
    let system = actix_web::rt::System::new();
    let served = system.block_on(async {
        let mut terminate = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hangup = signal(SignalKind::hangup())?;
        if let Some(socket) = &mut replay_socket {
            socket.serve(Arc::clone(&dispatcher))?;
        }
        dispatcher.enable_notifications();
        // Only now: whoever waits for this line may signal at once.
        if !console_at.is_empty() {
            tracing::info!("console on {console_at}");
        }
        tracing::info!(hooks, "listening on {local}");
        let reloader = Arc::clone(&dispatcher);
        let config_file = config_file.to_owned();
        actix_web::rt::spawn(async move {
            while hangup.recv().await.is_some() {
                reload(&reloader, &config_file);
            }
        });
        let shutdown = async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = int.recv() => {}
            }
        };
        run(
            Listeners {
                push: listeners,
                console: console_listeners,
            },
            Arc::clone(&dispatcher),
            shutdown,
        )
        .await
    });
    dispatcher.close();
    drop(replay_socket);
    served?;
    tracing::info!("stopped");
    Ok(())
}

/// A listener on every address `listen` stands for. An address of a name that this host has
/// no interface for (`localhost` resolving to `::1` with IPv6 off) is skipped with a warning
/// as long as another one is bound; any other failure to bind is an error.
fn bind(listen: &Listen) -> Result<Vec<TcpListener>, ServeError> {
    let addrs = listen.resolve().map_err(|source| ServeError::Resolve {
        listen: listen.clone(),
        source,
    })?;
    let mut listeners = Vec::with_capacity(addrs.len());
    let mut unavailable = Vec::new();
    for addr in addrs {
        match TcpListener::bind(addr) {
            Ok(listener) => listeners.push(listener),
            Err(source)
                if matches!(listen, Listen::Host { .. })
                    && (source.kind() == std::io::ErrorKind::AddrNotAvailable
                        || source.raw_os_error() == Some(nix::libc::EAFNOSUPPORT)) =>
            {
                unavailable.push(ServeError::Listen { addr, source });
            }
            Err(source) => return Err(ServeError::Listen { addr, source }),
        }
    }
    if listeners.is_empty()
        && let Some(err) = unavailable.pop()
    {
        return Err(err);
    }
    for err in unavailable {
        tracing::warn!("`{listen}` also resolves to an address this host cannot use: {err}");
    }
    Ok(listeners)
}

/// The delivery state `config` asks for: the SQLite journal, a PostgreSQL database shared
/// with other instances, or memory only.
pub fn open_deliveries(config: &Config) -> Result<Deliveries, JournalError> {
    let server = &config.server;
    // Orphans get the longest grace any hook would give its command.
    let grace = config
        .hooks
        .iter()
        .map(|hook| hook.kill_grace)
        .max()
        .unwrap_or(DEFAULT_ORPHAN_GRACE);
    if let Some(url) = &server.postgres {
        let deliveries = Deliveries::open_postgres(
            url,
            &server.instance,
            server.lease,
            (server.dedup_for, server.keep_dead, server.keep_bodies),
            grace,
            config.secrets().clone(),
        )?;
        // Serving starts either way: while the database cannot be reached, pushes that would
        // run something get 503 (the monitor has logged why).
        if deliveries.wait_ready(DATABASE_WAIT) {
            tracing::info!(
                instance = server.instance.as_str(),
                "journal: shared PostgreSQL database"
            );
        } else {
            tracing::error!(
                instance = server.instance.as_str(),
                "journal: the PostgreSQL database cannot be reached; serving anyway, answering 503 to pushes that would run something until it can"
            );
        }
        return Ok(deliveries);
    }
    match &server.journal {
        Some(path) => Deliveries::open_sqlite(
            path,
            server.dedup_for,
            server.keep_dead,
            server.keep_bodies,
            grace,
        ),
        None => Ok(Deliveries::in_memory(server.dedup_capacity)),
    }
}

/// The bound sockets `serve` serves on.
pub struct Listeners {
    /// Pushes (several when `listen` names a host with several addresses).
    pub push: Vec<TcpListener>,
    /// The console (SPEC §10); none without `[console]`.
    pub console: Vec<TcpListener>,
}

/// Serves pushes (and the console) on `listeners` until `shutdown` completes, then drains:
/// pushes get 503, running commands get `shutdown_grace`, then their groups are killed, and
/// in-flight requests are answered. Handles no signals itself, so a test can run it
/// in-process on `127.0.0.1:0`.
pub async fn run(
    listeners: Listeners,
    dispatcher: Arc<Dispatcher>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let server = http::server(listeners.push, Arc::clone(&dispatcher))?;
    let handle = server.handle();
    // The console is answered while the runs drain (a replay gets 503), and stops with the
    // push listener.
    let console = if listeners.console.is_empty() {
        None
    } else {
        let console = console::server(listeners.console, Arc::clone(&dispatcher))?;
        let handle = console.handle();
        Some((actix_web::rt::spawn(console), handle))
    };
    // Stored work (`ack = "stored"`): what the journal holds from before, and what comes in.
    actix_web::rt::spawn(Arc::clone(&dispatcher).schedule_stored());
    // `cmqhook replay` with a shared database asks through it.
    actix_web::rt::spawn(Arc::clone(&dispatcher).serve_replay_requests());
    // Pull mode: the `[[queue]]` tables' pollers, following reloads.
    let consumer = pull::Consumer::start(Arc::clone(&dispatcher));
    let mut server = actix_web::rt::spawn(server);
    tokio::select! {
        () = shutdown => {}
        ended = &mut server => {
            consumer.stop_polling();
            return ended.unwrap_or_else(|err| Err(std::io::Error::other(err)));
        }
    }
    // Before anything else: no message is received that would only wait for the end.
    consumer.stop_polling();
    let grace = dispatcher.config().server.shutdown_grace;
    tracing::info!(
        running = dispatcher.active(),
        grace = %DurationText(grace),
        "draining: new pushes get 503, running commands may finish"
    );
    dispatcher.start_draining();
    if !dispatcher.wait_idle(grace).await {
        tracing::warn!(
            running = dispatcher.active(),
            "shutdown_grace is over: killing the remaining commands"
        );
        dispatcher.interrupt();
        dispatcher.wait_idle(KILL_WAIT).await;
    }
    // Messages whose runs ended are deleted (or left) before the process ends.
    if !consumer.finish(DELETE_WAIT).await {
        tracing::warn!(
            "some queue messages were not settled in time: they reappear after their visibility timeout"
        );
    }
    // In-flight requests now have their outcomes; let them be answered.
    if let Some((console, handle)) = console {
        handle.stop(true).await;
        if let Ok(Err(err)) = console.await {
            tracing::warn!(error = %err, "the console stopped with an error");
        }
    }
    handle.stop(true).await;
    server
        .await
        .unwrap_or_else(|err| Err(std::io::Error::other(err)))
}

/// Each push held open takes a socket and each run three pipes and a pidfd: a thousand
/// pushes at once need more descriptors than the usual soft limit of 1024. The soft limit is
/// raised towards the hard one, which needs no privilege, but not past [`OPEN_FILES`]:
/// commands inherit it, and some old programs misbehave with a huge one.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < OPEN_FILES.min(hard) => {
            let raised = OPEN_FILES.min(hard);
            match setrlimit(Resource::RLIMIT_NOFILE, raised, hard) {
                Ok(()) => tracing::debug!(from = soft, to = raised, "raised the open files limit"),
                Err(err) => tracing::warn!(soft, error = %err, "cannot raise the open files limit"),
            }
        }
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "cannot read the open files limit"),
    }
}

/// SIGHUP: read and validate the file, then swap it in; a broken file changes nothing.
fn reload(dispatcher: &Dispatcher, config_file: &Path) {
    match Config::load(config_file) {
        Ok(config) => {
            let old = dispatcher.config();
            if config.server.listen != old.server.listen {
                tracing::warn!(
                    "`server.listen` changed: the new address takes effect only after a restart"
                );
            }
            if config.console.as_ref().map(|console| &console.listen)
                != old.console.as_ref().map(|console| &console.listen)
            {
                tracing::warn!(
                    "`console.listen` changed: the console's new address (or its start or stop) takes effect only after a restart"
                );
            }
            if config.server.journal != old.server.journal
                || config.server.postgres != old.server.postgres
                || config.server.instance != old.server.instance
                || config.server.lease != old.server.lease
            {
                tracing::warn!(
                    "`server.journal` changed: the new journal takes effect only after a restart"
                );
            }
            for warning in config.warnings() {
                tracing::warn!("{warning}");
            }
            let hooks = config.hooks.len();
            dispatcher.reload(config);
            tracing::info!(hooks, "config reloaded");
        }
        Err(err) => {
            for line in err.to_string().lines() {
                tracing::error!("config reload rejected, the running config stays: {line}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn the_server_runs_in_process_on_bound_listeners_until_its_shutdown_future() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("hooks.toml");
        std::fs::write(&file, "[hooks.ok]\nargv = [\"/bin/true\"]\n").expect("config");
        let config = Config::load(&file).expect("config");
        // Two, as for a `listen` name that resolves to two addresses: both serve.
        let listeners: Vec<TcpListener> = (0..2)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let addrs: Vec<SocketAddr> = listeners
            .iter()
            .map(|listener| listener.local_addr().expect("addr"))
            .collect();
        let dispatcher = Arc::new(Dispatcher::new(
            config,
            Deliveries::in_memory(100),
            CancellationToken::new(),
        ));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = std::thread::spawn(move || {
            let listeners = Listeners {
                push: listeners,
                console: Vec::new(),
            };
            actix_web::rt::System::new().block_on(run(listeners, dispatcher, async {
                let _ = stopped.await;
            }))
        });
        for (n, addr) in addrs.iter().enumerate() {
            let mut stream = std::net::TcpStream::connect(addr).expect("connect");
            let request = format!(
                "POST /x HTTP/1.1\r\nHost: x\r\nx-cmq-message-id: m{n}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
            );
            stream.write_all(request.as_bytes()).expect("write");
            let mut answer = String::new();
            stream.read_to_string(&mut answer).expect("read");
            assert!(answer.starts_with("HTTP/1.1 200"), "{addr}: {answer}");
            assert!(answer.contains(r#""outcome":"succeeded""#), "{answer}");
        }
        stop.send(()).expect("server still running");
        server.join().expect("thread").expect("clean stop");
        for addr in &addrs {
            assert!(
                std::net::TcpStream::connect(addr).is_err(),
                "no longer listening on {addr}"
            );
        }
    }
}
