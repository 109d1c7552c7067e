//! The PostgreSQL side of the harness: a database of its own for each test ([`TestDb`]), on the
//! server named by `CMQHOOK_TEST_POSTGRES`, created and dropped with `psql`; a TCP [`Proxy`]
//! in front of it that a test cuts and restores; and fleets of `cmqhook serve` sharing one
//! database ([`Instance`]).
//!
//! Every test that uses [`TestDb`] is `#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]`:
//! `cargo test` reports it ignored; run with `--include-ignored`, it fails (never skips)
//! without `CMQHOOK_TEST_POSTGRES`.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::harness::*;

/// The variable that names the PostgreSQL server the tests may use, as a URL whose database
/// (e.g. `test`) exists; each test creates a database of its own beside it.
pub const ENV: &str = "CMQHOOK_TEST_POSTGRES";

/// The lease most fleet tests give their instances (`lease = "2s"`): short, so that a dead
/// instance's claims expire within a test.
pub const LEASE: Duration = Duration::from_secs(2);

/// The PostgreSQL tests run one at a time: each starts several `serve` (each with a pool of
/// connections), and the lease tests judge time.
static SERIAL: Mutex<()> = Mutex::new(());

/// A `postgres://` URL, in parts.
#[derive(Debug, Clone, PartialEq)]
pub struct PgUrl {
    /// `postgres` or `postgresql`.
    pub scheme: String,
    pub user: Option<String>,
    /// As written in the URL (percent-encoded).
    pub password: Option<String>,
    pub host: String,
    pub port: u16,
    pub database: String,
    /// After the `?`, empty if none.
    pub query: String,
}

impl PgUrl {
    /// Reads `postgres[ql]://[user[:password]@]host[:port]/database[?query]`; panics (naming
    /// [`ENV`]) on anything else.
    pub fn parse(url: &str) -> PgUrl {
        let bad = |why: &str| -> ! { panic!("{ENV}={url:?} is not a postgres:// URL: {why}") };
        let (scheme, rest) = url.split_once("://").unwrap_or_else(|| bad("no scheme"));
        if scheme != "postgres" && scheme != "postgresql" {
            bad("the scheme is not postgres:// or postgresql://");
        }
        let (authority, path) = rest.split_once('/').unwrap_or_else(|| bad("no /database"));
        let (database, query) = path.split_once('?').unwrap_or((path, ""));
        if database.is_empty() {
            bad("no database");
        }
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(info) => match info.split_once(':') {
                Some((user, password)) => (Some(user.to_owned()), Some(password.to_owned())),
                None => (Some(info.to_owned()), None),
            },
            None => (None, None),
        };
        let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .unwrap_or_else(|| bad("unclosed ["));
            (format!("[{host}]"), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((host, port)) => (host.to_owned(), Some(port)),
                None => (hostport.to_owned(), None),
            }
        };
        if host.is_empty() {
            bad("no host (a socket directory is not supported: the proxy needs TCP)");
        }
        let port = match port {
            Some(port) => port
                .parse()
                .unwrap_or_else(|_| bad("the port is not a number")),
            None => 5432,
        };
        PgUrl {
            scheme: scheme.to_owned(),
            user,
            password,
            host,
            port,
            database: database.to_owned(),
            query: query.to_owned(),
        }
    }

    /// The server's TCP address (the host resolved).
    pub fn socket_addr(&self) -> SocketAddr {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        (host, self.port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .unwrap_or_else(|| panic!("cannot resolve {}:{} ({ENV})", self.host, self.port))
    }

    /// The same URL naming `database`.
    pub fn with_database(&self, database: &str) -> PgUrl {
        PgUrl {
            database: database.to_owned(),
            ..self.clone()
        }
    }

    /// The same URL reaching the server at `addr` (a [`Proxy`]).
    pub fn via(&self, addr: SocketAddr) -> PgUrl {
        PgUrl {
            host: addr.ip().to_string(),
            port: addr.port(),
            ..self.clone()
        }
    }

    /// The same URL with `password` (as it is to appear in the URL's text, e.g. `${PGPASSWORD}`).
    pub fn with_password(&self, password: &str) -> PgUrl {
        PgUrl {
            password: Some(password.to_owned()),
            ..self.clone()
        }
    }
}

impl std::fmt::Display for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://", self.scheme)?;
        match (&self.user, &self.password) {
            (Some(user), Some(password)) => write!(f, "{user}:{password}@")?,
            (Some(user), None) => write!(f, "{user}@")?,
            (None, Some(password)) => write!(f, ":{password}@")?,
            (None, None) => {}
        }
        write!(f, "{}:{}/{}", self.host, self.port, self.database)?;
        if !self.query.is_empty() {
            write!(f, "?{}", self.query)?;
        }
        Ok(())
    }
}

/// The name of the running test (libtest names the thread after it), for messages and
/// database names.
pub fn test_name() -> String {
    std::thread::current()
        .name()
        .filter(|name| *name != "main")
        .unwrap_or("a PostgreSQL test")
        .to_owned()
}

/// `psql` on `url` running `sql`: `Ok(stdout)` (unaligned, tuples only), or `Err(stderr)`.
pub fn psql(url: &str, sql: &str) -> Result<String, String> {
    let output = psql_command(url)
        .arg("-c")
        .arg(sql)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| {
            panic!(
                "psql: {err} (the PostgreSQL tests need psql: apt-get install postgresql-client)"
            )
        });
    if output.status.success() {
        Ok(text(&output.stdout))
    } else {
        Err(text(&output.stderr))
    }
}

/// `psql -X -q -A -t -v ON_ERROR_STOP=1 -d URL` with a 5 s connect timeout; add `-c SQL`.
pub fn psql_command(url: &str) -> Command {
    let mut command = Command::new("psql");
    command
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url])
        .env("PGCONNECT_TIMEOUT", "5");
    command
}

/// A database of its own for one test, on the server of `CMQHOOK_TEST_POSTGRES`; dropped
/// (`WITH (FORCE)`, so open connections do not stop it) when this is. While one exists, no
/// other PostgreSQL test runs (so a test creates one at most).
pub struct TestDb {
    /// `CMQHOOK_TEST_POSTGRES`, parsed: where `CREATE DATABASE` and `DROP DATABASE` run.
    admin: PgUrl,
    /// The database's name.
    pub name: String,
    /// `CMQHOOK_TEST_POSTGRES` naming this database.
    url: PgUrl,
    _serial: MutexGuard<'static, ()>,
}

impl TestDb {
    /// Creates a database for the running test; panics without `CMQHOOK_TEST_POSTGRES` (a
    /// test that needs it is `#[ignore = "needs PostgreSQL: CMQHOOK_TEST_POSTGRES"]`, so it
    /// runs only when asked to, and then a missing server is a failure, never a skip).
    pub fn create() -> TestDb {
        let Some(admin) = std::env::var(ENV).ok().filter(|url| !url.is_empty()) else {
            panic!(
                "needs PostgreSQL: set {ENV} to a server's URL, e.g. \
                 {ENV}=postgres://root@127.0.0.1:5432/test (see README, Development)"
            );
        };
        let serial = SERIAL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let admin = PgUrl::parse(&admin);
        let name = unique_name();
        if let Err(err) = psql(&admin.to_string(), &format!("CREATE DATABASE \"{name}\"")) {
            panic!("CREATE DATABASE {name} on {ENV}={admin}: {err}");
        }
        let url = admin.with_database(&name);
        TestDb {
            admin,
            name,
            url,
            _serial: serial,
        }
    }

    /// The database's URL, for `journal`.
    pub fn url(&self) -> String {
        self.url.to_string()
    }

    /// The database's URL in parts.
    pub fn pg_url(&self) -> &PgUrl {
        &self.url
    }

    /// The database's URL reaching it through `proxy`.
    pub fn url_via(&self, proxy: &Proxy) -> String {
        self.url.via(proxy.addr).to_string()
    }

    /// The database's URL reaching it through `proxy` without TLS (`sslmode=disable` in place
    /// of any TLS setting `CMQHOOK_TEST_POSTGRES` has), so that the proxy can read the
    /// statements ([`Proxy::mute_replies_after`]).
    pub fn url_via_plain(&self, proxy: &Proxy) -> String {
        let mut url = self.url.via(proxy.addr);
        let mut query: Vec<&str> = url
            .query
            .split('&')
            .filter(|pair| {
                !pair.is_empty()
                    && !pair.starts_with("sslmode=")
                    && !pair.starts_with("sslrootcert=")
            })
            .collect();
        query.push("sslmode=disable");
        url.query = query.join("&");
        url.to_string()
    }

    /// Where the server listens.
    pub fn server_addr(&self) -> SocketAddr {
        self.url.socket_addr()
    }

    /// Runs `sql` in this database; panics with psql's error.
    pub fn sql(&self, sql: &str) -> String {
        psql(&self.url(), sql).unwrap_or_else(|err| panic!("{sql}: {err}"))
    }

    /// Whether a database called `name` exists on the server.
    pub fn exists(admin: &PgUrl, name: &str) -> bool {
        let found = psql(
            &admin.to_string(),
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'"),
        )
        .unwrap_or_else(|err| panic!("{err}"));
        found.trim() == "1"
    }

    /// `CMQHOOK_TEST_POSTGRES`, parsed.
    pub fn admin(&self) -> &PgUrl {
        &self.admin
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        if let Err(err) = psql(&self.admin.to_string(), &sql) {
            let _ = writeln!(
                std::io::stderr(),
                "{}: could not drop the test database: {sql}: {err}",
                test_name()
            );
        }
    }
}

/// `cmqhook_it_PID_N_TEST`: unique on this server while this process lives, at most 63 bytes
/// (PostgreSQL's limit), lower case.
fn unique_name() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let prefix = format!(
        "cmqhook_it_{}_{}_",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let test = test_name();
    let tail: String = test
        .rsplit("::")
        .next()
        .unwrap_or("")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(63 - prefix.len())
        .collect();
    format!("{prefix}{tail}")
}

/// A TCP proxy on 127.0.0.1 in front of the database server. [`Proxy::cut`] drops every
/// connection it forwards and closes new ones as soon as they are accepted, as a dead server
/// or a reset connection looks to cmqhook; [`Proxy::freeze`] is a silent partition (a host
/// gone): connections stay open but no byte goes through either way, new ones are accepted
/// and hang; [`Proxy::mute_replies_after`] loses the answer to one statement;
/// [`Proxy::restore`] forwards again (what a freeze held back goes on then).
/// Plain threads and std sockets.
pub struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<ProxyShared>,
    acceptor: Option<JoinHandle<()>>,
}

struct ProxyShared {
    upstream: SocketAddr,
    state: Mutex<ProxyState>,
    closing: AtomicBool,
    /// Connections forwarded so far.
    forwarded: AtomicUsize,
    /// Connections closed at once because the proxy was cut.
    refused: AtomicUsize,
}

struct ProxyState {
    up: bool,
    frozen: bool,
    /// The connection whose server's bytes are dropped (what its client sends still goes
    /// through).
    muted: Option<usize>,
    /// Bytes that, the next time a client sends them, mute its connection.
    mute_after: Option<Vec<u8>>,
    /// Both sockets of every forwarded connection not yet known to be over.
    open: Vec<(usize, TcpStream, TcpStream)>,
    next: usize,
}

impl Proxy {
    /// A proxy to `upstream`, forwarding.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listener");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(ProxyShared {
            upstream,
            state: Mutex::new(ProxyState {
                up: true,
                frozen: false,
                muted: None,
                mute_after: None,
                open: Vec::new(),
                next: 0,
            }),
            closing: AtomicBool::new(false),
            forwarded: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || accept_loop(&listener, &shared))
        };
        Proxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Drops every open connection and closes new ones on accept, until [`Proxy::restore`].
    pub fn cut(&self) {
        let mut state = self.shared.lock();
        state.up = false;
        for (_, client, server) in state.open.drain(..) {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
    }

    /// Stops every byte, both ways, on every connection (open ones stay open; new ones are
    /// accepted and hang), until [`Proxy::restore`] or [`Proxy::cut`].
    pub fn freeze(&self) {
        self.shared.lock().frozen = true;
    }

    /// Once a client sends `marker` (e.g. a value only one statement carries), drops every
    /// byte the server sends on that connection from then on, while what the client sends
    /// still reaches it: that statement runs and commits, its answer is lost. Other
    /// connections go on (muting them all would lose the answers of whatever else the
    /// instance sends meanwhile, which then holds the connections the statement needs).
    /// Until [`Proxy::restore`]. The proxy reads only what is not encrypted: the instance
    /// connects with [`TestDb::url_via_plain`].
    pub fn mute_replies_after(&self, marker: &[u8]) {
        assert!(!marker.is_empty(), "an empty marker");
        self.shared.lock().mute_after = Some(marker.to_vec());
    }

    /// Forwards again, after a cut, a freeze or a mute.
    pub fn restore(&self) {
        let mut state = self.shared.lock();
        state.up = true;
        state.frozen = false;
        state.muted = None;
        state.mute_after = None;
    }

    /// Whether it forwards (neither cut nor frozen).
    pub fn is_up(&self) -> bool {
        let state = self.shared.lock();
        state.up && !state.frozen
    }

    /// Connections forwarded so far.
    pub fn forwarded(&self) -> usize {
        self.shared.forwarded.load(Ordering::Relaxed)
    }

    /// Connections closed on accept while cut, so far.
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// Connections being forwarded now.
    pub fn open_connections(&self) -> usize {
        self.shared.lock().open.len()
    }
}

impl ProxyShared {
    fn lock(&self) -> MutexGuard<'_, ProxyState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.cut();
        // Wakes the acceptor blocked in accept().
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<ProxyShared>) {
    for client in listener.incoming() {
        if shared.closing.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        if !shared.lock().up {
            shared.refused.fetch_add(1, Ordering::Relaxed);
            drop(client);
            continue;
        }
        let Ok(server) = TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(5))
        else {
            drop(client);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(client_copy), Ok(server_copy)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        // Registered under the lock, and only while up: a cut either sees it or came first.
        let id = {
            let mut state = shared.lock();
            if !state.up {
                shared.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let id = state.next;
            state.next += 1;
            state.open.push((id, client_copy, server_copy));
            id
        };
        shared.forwarded.fetch_add(1, Ordering::Relaxed);
        let (Ok(client_read), Ok(server_read)) = (client.try_clone(), server.try_clone()) else {
            forget(shared, id);
            continue;
        };
        let one = Arc::clone(shared);
        std::thread::spawn(move || pump(client_read, server, &one, (id, false)));
        let other = Arc::clone(shared);
        std::thread::spawn(move || pump(server_read, client, &other, (id, true)));
    }
}

/// Copies `from` to `to` (`from_server`: the server's side) until either ends, then closes
/// both ways of both sockets (so the other direction's pump ends too) and forgets the
/// connection.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    shared: &ProxyShared,
    (id, from_server): (usize, bool),
) {
    let mut buf = [0u8; 16 * 1024];
    // The end of what the client sent before, for a marker split between two reads.
    let mut tail = Vec::new();
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if !unfrozen(shared, id) {
                    break;
                }
                if from_server {
                    if shared.lock().muted == Some(id) {
                        continue;
                    }
                } else {
                    // Muted before the bytes go on: their answer cannot come back first.
                    watch_for_marker(shared, id, &mut tail, &buf[..n]);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
    forget(shared, id);
}

/// Waits while the proxy is frozen; false if the connection was cut meanwhile.
fn unfrozen(shared: &ProxyShared, id: usize) -> bool {
    loop {
        {
            let state = shared.lock();
            if !state.open.iter().any(|(open, _, _)| *open == id) {
                return false;
            }
            if !state.frozen {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Mutes connection `id` if `sent` (after `tail`, the end of what it sent before) holds the
/// marker [`Proxy::mute_replies_after`] waits for.
fn watch_for_marker(shared: &ProxyShared, id: usize, tail: &mut Vec<u8>, sent: &[u8]) {
    let mut state = shared.lock();
    let Some(marker) = &state.mute_after else {
        return;
    };
    tail.extend_from_slice(sent);
    let found = tail
        .windows(marker.len())
        .any(|window| window == marker.as_slice());
    let keep = marker.len() - 1;
    tail.drain(..tail.len().saturating_sub(keep));
    if found {
        state.muted = Some(id);
        state.mute_after = None;
    }
}

fn forget(shared: &ProxyShared, id: usize) {
    shared.lock().open.retain(|(open, _, _)| *open != id);
}

/// A `[server]` block for one instance of a fleet: `journal`, `instance = LABEL` (unless
/// `label` is `None`: the host name then), `lease`, then `extra` lines.
pub fn server_keys(journal: &str, label: Option<&str>, lease: &str, extra: &str) -> String {
    let instance = label
        .map(|label| format!("instance = \"{label}\"\n"))
        .unwrap_or_default();
    format!("journal = \"{journal}\"\n{instance}lease = \"{lease}\"\n{extra}")
}

/// One `cmqhook serve` of a fleet sharing a database: its own dir (its `hooks.toml` and
/// `server.log`) and its process. Commands should write to a dir shared by the fleet.
pub struct Instance {
    /// Dropped (killed) before its dir.
    pub server: Server,
    pub dir: Dir,
    /// What the config says in `instance`.
    pub label: String,
    /// Its environment beyond the test's own.
    pub env: Vec<(String, String)>,
}

/// How to start one [`Instance`]: its label, its whole config, and environment variables.
pub struct Spec {
    pub label: String,
    pub config: String,
    pub env: Vec<(String, String)>,
    /// `RUST_LOG` (default `info`); `None` leaves it unset, e.g. for `-v`.
    pub rust_log: Option<String>,
    pub args: Vec<String>,
    /// On one CPU: one HTTP worker (see [`ServerBuilder::one_worker`]).
    pub one_worker: bool,
}

impl Spec {
    pub fn new(label: &str, config: String) -> Spec {
        Spec {
            label: label.to_owned(),
            config,
            env: Vec::new(),
            rust_log: Some("info".to_owned()),
            args: Vec::new(),
            one_worker: false,
        }
    }

    /// On one CPU: one HTTP worker, whose lane writes every claim and end.
    pub fn one_worker(mut self) -> Spec {
        self.one_worker = true;
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Spec {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// `-v` instead of `RUST_LOG=info`.
    pub fn verbose(mut self) -> Spec {
        self.rust_log = None;
        self.args.push("-v".to_owned());
        self
    }
}

impl Instance {
    /// Starts one instance in a new dir; panics with its log if it does not listen.
    pub fn start(spec: Spec) -> Instance {
        let dir = Dir::new();
        let mut builder = Server::builder(&dir)
            .config(&spec.config)
            .rust_log(spec.rust_log.as_deref());
        for (name, value) in &spec.env {
            builder = builder.env(name, value);
        }
        for arg in &spec.args {
            builder = builder.arg(arg);
        }
        if spec.one_worker {
            builder = builder.one_worker();
        }
        let server = builder.start();
        Instance {
            server,
            dir,
            label: spec.label,
            env: spec.env,
        }
    }

    /// Starts every instance at the same time (so their schema migrations race, as a fleet
    /// started together would) and waits until all listen.
    pub fn start_all(specs: Vec<Spec>) -> Vec<Instance> {
        std::thread::scope(|scope| {
            let starting: Vec<_> = specs
                .into_iter()
                .map(|spec| scope.spawn(move || Instance::start(spec)))
                .collect();
            starting
                .into_iter()
                .map(|handle| match handle.join() {
                    Ok(instance) => instance,
                    Err(panic) => std::panic::resume_unwind(panic),
                })
                .collect()
        })
    }

    /// Posts the CMQ example push with `msg_id`.
    pub fn push(&self, msg_id: &str) -> Response {
        self.server.post_seed("/", msg_id)
    }

    /// `GET /healthz`: status and body.
    pub fn health(&self) -> (u16, String) {
        let response = self.server.get("/healthz");
        (response.status, response.text())
    }

    /// `cmqhook ARGS` with this instance's config (`-c` is added after the subcommand) and
    /// environment.
    pub fn cli(&self, subcommand: &str, args: &[&str]) -> Output {
        let config = self.dir.config_file();
        let mut all = vec![subcommand, "-c", config.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        let mut command = cmqhook_command(&all);
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        output_of(command, b"")
    }

    /// `cmqhook history --json ARGS` with this instance's config: one object per row, newest
    /// first; panics unless it exits 0.
    pub fn history(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let output = self.cli("history", &all);
        assert!(output.status.success(), "{}", both(&output));
        text(&output.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).expect("one JSON object a line"))
            .collect()
    }

    /// Waits (at most `within`) until `history ARGS` has rows and none is `running`.
    pub fn settled_history(&self, args: &[&str], within: Duration) -> Vec<serde_json::Value> {
        let mut rows = Vec::new();
        let settled = wait_for(within, || {
            rows = self.history(args);
            !rows.is_empty() && rows.iter().all(|row| row["outcome"] != "running")
        });
        assert!(settled, "history {args:?} did not settle: {rows:#?}");
        rows
    }

    /// (attempt, outcome, instance) of the runs of `msg_id`, newest first, once there are
    /// `count` and none is running.
    pub fn runs_of(&self, msg_id: &str, count: usize) -> Vec<(u64, String, String)> {
        let mut rows = Vec::new();
        let settled = wait_for(Duration::from_secs(20), || {
            rows = self.history(&["--msg-id", msg_id]);
            rows.len() == count && rows.iter().all(|row| row["outcome"] != "running")
        });
        assert!(settled, "runs of {msg_id}: {rows:#?}");
        rows.iter()
            .map(|row| {
                (
                    row["attempt"].as_u64().unwrap_or(0),
                    row["outcome"].as_str().unwrap_or("").to_owned(),
                    row["instance"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    /// The sum of `cmqhook_dedup_hits_total` over every hook.
    pub fn dedup_hits(&self) -> f64 {
        self.server
            .metrics()
            .samples
            .iter()
            .filter(|sample| sample.name == "cmqhook_dedup_hits_total")
            .map(|sample| sample.value)
            .sum()
    }

    /// SIGKILL, and waits until it is gone.
    pub fn kill(&mut self) {
        self.server.signal("KILL");
        self.server.wait_exit(Duration::from_secs(10));
    }

    /// Whether the process is still running (it was not restarted).
    pub fn running(&mut self) -> bool {
        self.server.child.try_wait().expect("try_wait").is_none()
    }
}

/// SIGKILL to the process group `pgid` (a command cmqhook started leads its own group).
pub fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

/// The machine's host name, as `instance` defaults to it.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("host name")
        .trim()
        .to_owned()
}

/// Lines of `file` (empty when it does not exist yet).
pub fn lines_of(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A password for the secret tests: the one in `CMQHOOK_TEST_POSTGRES` when it has one (the
/// server then checks it), else a distinctive made-up one (the test server trusts 127.0.0.1,
/// so any password is accepted).
pub fn test_password(db: &TestDb) -> String {
    match &db.admin().password {
        Some(password) if password.len() >= 6 => password.clone(),
        Some(password) => panic!(
            "the password in {ENV} is shorter than 6 characters, too short to search for: {password:?}"
        ),
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.subsec_nanos())
                .unwrap_or(0);
            format!("Pw-{}-{nanos:x}-zq", std::process::id())
        }
    }
}
