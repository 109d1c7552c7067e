//! The harness: the built `cmqhook` binary on 127.0.0.1 with a config in a temp dir
//! ([`config`], [`Dir`], [`Server::builder`]), a raw HTTP/1.1 client (raw bytes on a socket,
//! so that malformed requests can be sent), a recorder script that saves its stdin and
//! environment ([`Dir::record`]), shell snippets with which commands wait for each other
//! ([`Dir::barrier`]), for the test ([`Dir::gate`]) or note their times ([`Dir::timed`]), and a
//! Prometheus text reader ([`Metrics`]).
//!
//! Every wait here has a deadline: a regression fails a test, it never hangs the suite.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_cmqhook");

/// How long `serve` may take to start listening.
const START_WITHIN: Duration = Duration::from_secs(30);
/// How long an HTTP answer may take, unless a test says otherwise.
const ANSWER_WITHIN: Duration = Duration::from_secs(60);
/// How long a `cmqhook` command (`check`, `history`, `send`, …) may take.
const COMMAND_WITHIN: Duration = Duration::from_secs(60);

/// The CMQ example push of CMQ-PROTOCOL.md.
pub const SEED_ENVELOPE: &str = r#"{"TopicOwner":100015036,"topicName":"MyTopic","subscriptionName":"mysubscription","msgId":"6942316962","msgBody":"test message","publishTime":11203432}"#;

/// A config: `[server]` listening on `127.0.0.1:0` with `server` keys added, then `hooks`.
pub fn config(server: &str, hooks: &str) -> String {
    format!("[server]\nlisten = \"127.0.0.1:0\"\n{server}\n\n{hooks}\n")
}

/// The recorder: `record DIR [EXIT]` saves stdin, `env -0` and its pid in a new run folder
/// under DIR, then exits with EXIT (default 0).
const RECORDER: &str = r#"#!/bin/sh
set -e
run=$(mktemp -d "$1/run.XXXXXX")
cat > "$run/stdin"
env -0 > "$run/env"
echo $$ > "$run/pid"
exit "${2:-0}"
"#;

/// A temp dir holding `hooks.toml`, the `record` script and its `runs/`.
pub struct Dir {
    pub tmp: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Dir {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = Dir { tmp };
        std::fs::create_dir(dir.runs()).expect("runs dir");
        std::fs::create_dir(dir.file("times")).expect("times dir");
        dir.write_script("record", RECORDER);
        dir
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// `name` in the dir.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    pub fn runs(&self) -> PathBuf {
        self.file("runs")
    }

    /// The recorder as a shell command line, exiting with `code`.
    pub fn record(&self, code: i32) -> String {
        format!(
            "{} {} {code}",
            self.file("record").display(),
            self.runs().display()
        )
    }

    /// A hook `name` that matches every push and runs the recorder, exiting 0.
    pub fn recorder_hook(&self, name: &str) -> String {
        format!("[hooks.{name}]\ncommand = '{}'", self.record(0))
    }

    /// A command that notes its shell's pid in the file `pids`, waits at the gate `held` on
    /// attempt 1 (60 s at most), and then runs the recorder (exit 0).
    pub fn held_first_attempt(&self, pids: &Path) -> String {
        format!(
            "echo $$ >> {pids}; if [ \"$CMQHOOK_ATTEMPT\" = 1 ]; then {gate}; fi; {record}",
            pids = pids.display(),
            gate = self.gate("held", 60),
            record = self.record(0)
        )
    }

    /// A shell snippet that notes when it starts and ends, around `sleep SECONDS`, for
    /// [`Dir::intervals`].
    pub fn timed(&self, seconds: &str) -> String {
        format!(
            "s=$(date +%s.%N); sleep {seconds}; e=$(date +%s.%N); echo \"$s $e\" > {}/\"$CMQHOOK_HOOK.$CMQ_MSG_ID\"",
            self.file("times").display()
        )
    }

    /// The (start, end) of every [`Dir::timed`] run, in seconds, earliest start first.
    pub fn intervals(&self) -> Vec<(f64, f64)> {
        let mut intervals: Vec<(f64, f64)> = std::fs::read_dir(self.file("times"))
            .expect("times dir")
            .map(|entry| {
                let line = std::fs::read_to_string(entry.expect("entry").path()).expect("times");
                let (start, end) = line.trim().split_once(' ').expect("start and end");
                (
                    start.parse().expect("start time"),
                    end.parse().expect("end time"),
                )
            })
            .collect();
        intervals.sort_by(|a, b| a.0.total_cmp(&b.0));
        intervals
    }

    /// A shell snippet that marks this run as started, then waits until `count` runs have,
    /// polling every 50 ms; exits 9 if they have not within `seconds`. Runs that get past it
    /// were running at the same time.
    pub fn barrier(&self, count: usize, seconds: u32) -> String {
        format!(
            "touch {d}/started.$$; i=0; while :; do set -- {d}/started.*; [ $# -ge {count} ] && break; i=$((i+1)); [ $i -lt {polls} ] || exit 9; sleep 0.05; done",
            d = self.path().display(),
            polls = seconds * 20
        )
    }

    /// A shell snippet that marks that a command reached the gate `name`, then waits (polling
    /// every 50 ms) until the test opens it; exits 9 if that takes more than `seconds`.
    pub fn gate(&self, name: &str, seconds: u32) -> String {
        format!(
            "touch {d}/{name}.reached; i=0; while [ ! -e {d}/{name}.open ]; do i=$((i+1)); [ $i -lt {polls} ] || exit 9; sleep 0.05; done",
            d = self.path().display(),
            polls = seconds * 20
        )
    }

    /// A shell snippet: wait at the gate `name` (20 s at most), then run the recorder.
    pub fn held_record(&self, name: &str) -> String {
        format!("{}; {}", self.gate(name, 20), self.record(0))
    }

    /// Waits (at most 10 s, else panics) until a command reached the gate `name`.
    pub fn wait_at_gate(&self, name: &str) {
        let reached = self.file(&format!("{name}.reached"));
        assert!(
            wait_for(Duration::from_secs(10), || reached.exists()),
            "no command reached the gate {name}"
        );
    }

    /// Lets the commands waiting at the gate `name` go on.
    pub fn open_gate(&self, name: &str) {
        std::fs::write(self.file(&format!("{name}.open")), b"").expect("open the gate");
    }

    pub fn write_script(&self, name: &str, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.file(name);
        std::fs::write(&path, text).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    /// The config file, `hooks.toml`.
    pub fn config_file(&self) -> PathBuf {
        self.file("hooks.toml")
    }

    /// Writes `text` to `hooks.toml`.
    pub fn write_config(&self, text: &str) -> PathBuf {
        let path = self.config_file();
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// Every run the recorder saw, oldest first.
    pub fn recorded(&self) -> Vec<Run> {
        recorded_in(&self.runs())
    }

    /// `CMQHOOK_ATTEMPT` of every recorded run, oldest first.
    pub fn attempts(&self) -> Vec<String> {
        self.recorded()
            .iter()
            .map(|run| run.var("CMQHOOK_ATTEMPT").unwrap_or("").to_owned())
            .collect()
    }

    /// `cmqhook history -c hooks.toml --json ARGS`: one JSON object per row, newest first.
    pub fn history(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let config = self.config_file();
        let mut all = vec![
            "history",
            "-c",
            config.to_str().expect("utf-8 path"),
            "--json",
        ];
        all.extend_from_slice(args);
        let output = cmqhook(&all, b"");
        assert!(output.status.success(), "{}", both(&output));
        text(&output.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).expect("one JSON object a line"))
            .collect()
    }

    /// Waits (at most `within`) until `history ARGS` has rows and none of them is `running`.
    pub fn settled_history(&self, args: &[&str], within: Duration) -> Vec<serde_json::Value> {
        let mut rows = Vec::new();
        let settled = wait_for(within, || {
            rows = self.history(args);
            !rows.is_empty() && rows.iter().all(|row| row["outcome"] != "running")
        });
        assert!(settled, "history {args:?} did not settle: {rows:#?}");
        rows
    }
}

/// Every run the recorder saved under `dir` (its first argument), oldest first.
pub fn recorded_in(dir: &Path) -> Vec<Run> {
    let mut runs: Vec<Run> = std::fs::read_dir(dir)
        .expect("the recorder's dir")
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("run."))
        .filter_map(|entry| Run::read(&entry.path()))
        .collect();
    runs.sort_by_key(|run| run.modified);
    runs
}

/// What one recorder run saved.
#[derive(Debug, Clone)]
pub struct Run {
    pub stdin: Vec<u8>,
    pub env: Vec<(String, String)>,
    modified: std::time::SystemTime,
}

impl Run {
    /// Its `CMQ_*` variables, sorted.
    pub fn cmq_vars(&self) -> Vec<(String, String)> {
        let mut vars: Vec<_> = self
            .env
            .iter()
            .filter(|(name, _)| name.starts_with("CMQ_"))
            .cloned()
            .collect();
        vars.sort();
        vars
    }

    fn read(dir: &Path) -> Option<Run> {
        // The pid file is written last: without it the run is still going.
        let modified = std::fs::metadata(dir.join("pid")).ok()?.modified().ok()?;
        let env = std::fs::read(dir.join("env")).ok()?;
        let env = env
            .split(|&b| b == 0)
            .filter(|item| !item.is_empty())
            .filter_map(|item| {
                let item = String::from_utf8_lossy(item);
                let (key, value) = item.split_once('=')?;
                Some((key.to_owned(), value.to_owned()))
            })
            .collect();
        Some(Run {
            stdin: std::fs::read(dir.join("stdin")).ok()?,
            env,
            modified,
        })
    }

    pub fn var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Asserts that each of `expected` (name, value) is in the run's environment.
    pub fn assert_vars(&self, expected: &[(&str, &str)]) {
        for (name, value) in expected {
            assert_eq!(self.var(name), Some(*value), "{name}");
        }
    }
}

/// How to start a `cmqhook serve`: [`Server::builder`].
pub struct ServerBuilder<'a> {
    dir: &'a Dir,
    config: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    rust_log: Option<String>,
    listen: Option<SocketAddr>,
    keep_log: bool,
    open_files: Option<u64>,
    one_worker: bool,
}

impl ServerBuilder<'_> {
    /// Writes `text` to the dir's `hooks.toml` before starting (else the file already there
    /// is used).
    pub fn config(mut self, text: &str) -> Self {
        self.config = Some(text.to_owned());
        self
    }

    /// One more argument after `serve -c hooks.toml`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    /// An environment variable for the server (and so for its commands).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// `RUST_LOG` for the server: `Some(filter)`, or `None` to leave it unset so that `-v`
    /// and `-q` decide. Default: `Some("info")`.
    pub fn rust_log(mut self, filter: Option<&str>) -> Self {
        self.rust_log = filter.map(str::to_owned);
        self
    }

    /// `--listen ADDR`. The server is known to be up once ADDR accepts connections, so this
    /// also serves when the log level hides the `listening on` line.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.args.push("--listen".to_owned());
        self.args.push(addr.to_string());
        self.listen = Some(addr);
        self
    }

    /// Reads the log without storing it (for commands that print hundreds of megabytes).
    pub fn discard_log(mut self) -> Self {
        self.keep_log = false;
        self
    }

    /// Starts the server with a soft open-files limit of `soft`.
    pub fn open_files(mut self, soft: u64) -> Self {
        self.open_files = Some(soft);
        self
    }

    /// Starts the server on one CPU (`taskset`): actix then runs one HTTP worker, so that
    /// every push is handled, and every claim and end of the shared database's journal is
    /// written, by the same thread.
    pub fn one_worker(mut self) -> Self {
        self.one_worker = true;
        self
    }

    /// Starts `cmqhook serve` and waits until it listens; panics with its log if it does not
    /// within 30 s or exits first.
    pub fn start(self) -> Server {
        let dir = self.dir;
        let config = match &self.config {
            Some(text) => dir.write_config(text),
            None => dir.config_file(),
        };
        let mut wrapper = String::new();
        if let Some(soft) = self.open_files {
            wrapper.push_str(&format!("ulimit -Sn {soft} && "));
        }
        let mut command = if wrapper.is_empty() && !self.one_worker {
            Command::new(BIN)
        } else {
            let taskset = if self.one_worker { "taskset -c 0 " } else { "" };
            let mut command = Command::new("sh");
            command
                .arg("-c")
                .arg(format!("{wrapper}exec {taskset}\"$0\" \"$@\""))
                .arg(BIN);
            command
        };
        command
            .arg("serve")
            .arg("-c")
            .arg(&config)
            .args(&self.args)
            .env_remove("RUST_LOG")
            .env_remove("CMQHOOK_CONFIG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(filter) = &self.rust_log {
            command.env("RUST_LOG", filter);
        }
        let log = dir.file("server.log");
        let mut child = command.spawn().expect("start cmqhook");
        let (found, listening) = mpsc::channel();
        let mut readers = Vec::new();
        for pipe in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let found = found.clone();
            let mut file = self.keep_log.then(|| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .expect("log file")
            });
            readers.push(std::thread::spawn(move || {
                let mut reader = BufReader::new(pipe);
                let mut line = Vec::new();
                while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                    let text = String::from_utf8_lossy(&line);
                    if let Some(rest) = text.split("listening on http://").nth(1) {
                        let addr: String = rest
                            .chars()
                            .take_while(|c| !c.is_whitespace() && *c != '"')
                            .collect();
                        let _ = found.send(addr.parse::<SocketAddr>().expect("address"));
                    }
                    if let Some(file) = file.as_mut() {
                        let _ = file.write_all(&line);
                    }
                    line.clear();
                }
            }));
        }
        drop(found);
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            readers,
        };
        let deadline = Instant::now() + START_WITHIN;
        server.addr = loop {
            match listening.recv_timeout(Duration::from_millis(20)) {
                Ok(addr) => break addr,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    server.wait_exit(Duration::from_secs(5));
                    panic!(
                        "cmqhook exited before listening; log:\n{}",
                        server.log_text()
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if let Some(addr) = self.listen
                && TcpStream::connect(addr).is_ok()
            {
                break addr;
            }
            if let Some(status) = server.child.try_wait().expect("try_wait") {
                server.wait_exit(Duration::from_secs(5));
                panic!(
                    "cmqhook exited ({status}) before listening; log:\n{}",
                    server.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "cmqhook did not start listening within {START_WITHIN:?}; log:\n{}",
                server.log_text()
            );
        };
        // serve says it listens before it handles signals, and until it does, a signal kills
        // it (see operations::a_signal_as_soon_as_serve_says_it_listens_is_handled).
        let ready = wait_for(deadline.saturating_duration_since(Instant::now()), || {
            handles_signals(server.pid(), &[1, 2, 15])
        });
        assert!(
            ready,
            "cmqhook does not handle SIGHUP, SIGINT and SIGTERM; log:\n{}",
            server.log_text()
        );
        server
    }
}

/// Whether process `pid` has a handler for each of `signals` (by number): its SigCgt mask.
pub fn handles_signals(pid: u32, signals: &[u32]) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let caught = status
        .lines()
        .find_map(|line| line.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .unwrap_or(0);
    signals
        .iter()
        .all(|signal| caught & (1 << (signal - 1)) != 0)
}

/// A running `cmqhook serve`. Killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// Its stdout and stderr, as written so far.
    pub log: PathBuf,
    readers: Vec<JoinHandle<()>>,
}

impl Server {
    /// `cmqhook serve -c DIR/hooks.toml` with `RUST_LOG=info`, its log in `DIR/server.log`.
    pub fn builder(dir: &Dir) -> ServerBuilder<'_> {
        ServerBuilder {
            dir,
            config: None,
            args: Vec::new(),
            env: Vec::new(),
            rust_log: Some("info".to_owned()),
            listen: None,
            keep_log: true,
            open_files: None,
            one_worker: false,
        }
    }

    /// `Server::builder(dir).config(text).start()`.
    pub fn start(dir: &Dir, text: &str) -> Server {
        Server::builder(dir).config(text).start()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        post(self.addr, path, headers, body)
    }

    /// Posts the CMQ example envelope with its headers, with `msg_id` in both places.
    pub fn post_seed(&self, path: &str, msg_id: &str) -> Response {
        self.post(
            path,
            &seed_headers(msg_id),
            seed_envelope(msg_id).as_bytes(),
        )
    }

    pub fn get(&self, path: &str) -> Response {
        get(self.addr, path)
    }

    /// `GET /metrics`, read.
    pub fn metrics(&self) -> Metrics {
        let response = self.get("/metrics");
        assert_eq!(response.status, 200, "{}", response.text());
        Metrics::parse(&response.text())
    }

    /// What the server logged so far (all of it once [`Server::wait_exit`] returned).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits at most `within` for a log line holding every one of `needles`; returns it.
    pub fn wait_for_log_line(&self, within: Duration, needles: &[&str]) -> Option<String> {
        let mut found = None;
        wait_for(within, || {
            found = self
                .log_text()
                .lines()
                .find(|line| needles.iter().all(|needle| line.contains(needle)))
                .map(str::to_owned);
            found.is_some()
        });
        found
    }

    /// The server's peak resident set size in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    /// Sends `signal` (`TERM`, `INT`, `HUP`, `KILL`) to the server process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits (at most `within`, else panics) for the server to exit and for its log to be
    /// complete; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        let code = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status.code();
            }
            assert!(
                Instant::now() < deadline,
                "cmqhook did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let readers_done = wait_for(Duration::from_secs(5), || {
            self.readers.iter().all(JoinHandle::is_finished)
        });
        assert!(readers_done, "the server's output is still open after exit");
        code
    }

    /// SIGTERM, then waits (at most 30 s) for the exit; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(30))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The CMQ example envelope with `msg_id` as its `msgId`.
pub fn seed_envelope(msg_id: &str) -> String {
    SEED_ENVELOPE.replace("6942316962", msg_id)
}

/// The headers CMQ sends with the example envelope, with `msg_id`.
pub fn seed_headers(msg_id: &str) -> [(&str, &str); 3] {
    [
        ("x-cmq-message-id", msg_id),
        ("x-cmq-request-id", "2394928734"),
        ("x-cmq-message-tag", "a, b"),
    ]
}

/// An address on 127.0.0.1 that nothing listened on a moment ago.
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
}

pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("status field")
}

/// True while `pid` is a live process (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next());
            !matches!(state, Some("Z" | "X") | None)
        }
        Err(_) => false,
    }
}

/// Polls `condition` every 20 ms until it holds or `within` passes.
pub fn wait_for(within: Duration, condition: impl FnMut() -> bool) -> bool {
    poll(within, Duration::from_millis(20), condition)
}

/// Polls `condition` every `every` until it holds or `within` passes; true if it held.
pub fn poll(within: Duration, every: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// Waits (at most 10 s) for a command to write a whole line to `file`, e.g. with
/// `echo $$ > FILE`, and returns it trimmed.
pub fn wait_for_line(file: &Path) -> String {
    let mut line = String::new();
    let written = wait_for(Duration::from_secs(10), || {
        line = std::fs::read_to_string(file).unwrap_or_default();
        line.ends_with('\n')
    });
    assert!(written, "{} was not written", file.display());
    line.trim().to_owned()
}

/// Reads a pid a command wrote with `echo $$ > FILE`, once the line is complete.
pub fn wait_for_pid(file: &Path) -> u32 {
    wait_for_line(file).parse().expect("a pid")
}

/// An HTTP response as read off the wire.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!("{err}: {}", String::from_utf8_lossy(&self.body));
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `results[0].outcome` of a push's answer.
    pub fn outcome(&self) -> String {
        self.json()["results"][0]["outcome"]
            .as_str()
            .unwrap_or_else(|| panic!("no outcome in {}", self.text()))
            .to_owned()
    }
}

/// POSTs `body` with `Content-Length`, as CMQ does, and reads the answer (at most 60 s).
pub fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    exchange(addr, &post_request(addr, path, headers, body))
}

/// The bytes of a POST as CMQ sends it, with `Connection: close`.
pub fn post_request(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut all = vec![
        ("Content-Type", "text/plain"),
        ("User-Agent", "Qcloud Notification Service Agent"),
    ];
    all.extend_from_slice(headers);
    request(addr, "POST", path, &all, body)
}

/// The bytes of `METHOD path` with `headers`, `Content-Length` and `Connection: close`.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    request
}

/// `GET path`, answered within 60 s.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    exchange(addr, request.as_bytes())
}

/// Sends `request` as is and reads the answer; panics if there is none within 60 s.
pub fn exchange(addr: SocketAddr, request: &[u8]) -> Response {
    exchange_within(addr, request, ANSWER_WITHIN)
}

/// Sends `request` as is and reads the answer; panics if there is none within `within`.
pub fn exchange_within(addr: SocketAddr, request: &[u8], within: Duration) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    // The server may answer (413, 431) before reading all of a large request and reset the
    // connection; its answer is still read below.
    let _ = stream.write_all(request);
    read_response(&mut stream, within).unwrap_or_else(|err| panic!("{err}"))
}

/// Reads one response: its head, then `Content-Length` bytes of body (or, without one, up to
/// the end of the connection). Err if the connection ends or is reset before that, or
/// `within` passes first.
pub fn read_response(stream: &mut TcpStream, within: Duration) -> Result<Response, String> {
    let deadline = Instant::now() + within;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(response) = complete_response(&raw, false) {
            return Ok(response);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no answer within {within:?}; read {:?}",
                String::from_utf8_lossy(&raw)
            ));
        }
        stream.set_read_timeout(Some(left)).expect("read timeout");
        let ended = match stream.read(&mut buf) {
            Ok(0) => "the connection was closed".to_owned(),
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                continue;
            }
            Err(err) => match err.kind() {
                std::io::ErrorKind::Interrupted
                | std::io::ErrorKind::WouldBlock
                | std::io::ErrorKind::TimedOut => continue,
                _ => format!("read failed: {err}"),
            },
        };
        return complete_response(&raw, true).ok_or_else(|| {
            format!(
                "no complete answer ({ended}); read {:?}",
                String::from_utf8_lossy(&raw)
            )
        });
    }
}

/// The response in `raw` if it is all there; `at_end`: nothing more will come.
fn complete_response(raw: &[u8], at_end: bool) -> Option<Response> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let body = &raw[end + 4..];
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse::<usize>().expect("Content-Length"));
    let body = match length {
        Some(length) if body.len() >= length => &body[..length],
        None if at_end => body,
        _ => return None,
    };
    Some(Response {
        status,
        headers,
        body: body.to_vec(),
    })
}

/// `cmqhook ARGS` as a command, with `CMQHOOK_CONFIG` and `RUST_LOG` unset.
pub fn cmqhook_command(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("CMQHOOK_CONFIG")
        .env_remove("RUST_LOG");
    command
}

/// Runs `cmqhook ARGS` to its end with `stdin` on its standard input (at most 60 s).
pub fn cmqhook(args: &[&str], stdin: &[u8]) -> Output {
    output_of(cmqhook_command(args), stdin)
}

/// Runs `command` to its end with `stdin` on its standard input; kills it and panics if it
/// takes more than 60 s.
pub fn output_of(mut command: Command, stdin: &[u8]) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the command");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    // Written from a thread: a command that does not read its stdin must not block us.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = reader(Box::new(child.stdout.take().expect("stdout")));
    let stderr = reader(Box::new(child.stderr.take().expect("stderr")));
    let mut status = None;
    let exited = wait_for(COMMAND_WITHIN, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{command:?} did not end within {COMMAND_WITHIN:?}");
    }
    let output_closed = wait_for(Duration::from_secs(10), || {
        stdout.is_finished() && stderr.is_finished()
    });
    assert!(
        output_closed,
        "{command:?}: its output is still open after exit"
    );
    let _ = writer.join();
    Output {
        status: status.expect("exited"),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Stdout and stderr of a finished command, for assertions and their messages.
pub fn both(output: &Output) -> String {
    format!("{}{}", text(&output.stdout), text(&output.stderr))
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A Prometheus text exposition, read line by line.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Metrics {
    /// Reads every sample line (`name{label="value",…} number`); comments are skipped.
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| {
                let (series, value) = line
                    .rsplit_once(' ')
                    .unwrap_or_else(|| panic!("not a sample: {line:?}"));
                let value: f64 = value
                    .parse()
                    .unwrap_or_else(|_| panic!("not a number: {line:?}"));
                let (name, labels) = match series.split_once('{') {
                    Some((name, labels)) => (
                        name,
                        parse_labels(labels.strip_suffix('}').expect("labels end with }")),
                    ),
                    None => (series, Vec::new()),
                };
                Sample {
                    name: name.to_owned(),
                    labels,
                    value,
                }
            })
            .collect();
        Metrics {
            samples,
            text: text.to_owned(),
        }
    }

    /// The value of the sample `name` with exactly `labels` (in any order).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|sample| {
                sample.name == name
                    && sample.labels.len() == labels.len()
                    && labels.iter().all(|(key, value)| {
                        sample.labels.iter().any(|(k, v)| k == key && v == value)
                    })
            })
            .map(|sample| sample.value)
    }
}

/// `a="x",b="y \"q\""` as pairs, escapes undone.
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((at, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => {}
                },
                '"' => {
                    end = at + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.push((key.trim_start_matches(',').to_owned(), value));
        rest = &after[end..];
    }
    labels
}
