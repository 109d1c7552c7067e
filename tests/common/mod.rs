//! Test harness: the built `cmqhook` binary on 127.0.0.1 with a config in a temp dir, a raw
//! HTTP/1.1 client, and a recorder script that saves its stdin, environment and pid.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_cmqhook");

/// The CMQ example push of CMQ-PROTOCOL.md.
pub const SEED_ENVELOPE: &str = r#"{"TopicOwner":100015036,"topicName":"MyTopic","subscriptionName":"mysubscription","msgId":"6942316962","msgBody":"test message","publishTime":11203432}"#;

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

/// A temp dir holding `hooks.toml`, `record` and `runs/`.
pub struct Dir {
    pub tmp: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Dir {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = Dir { tmp };
        std::fs::create_dir(dir.runs()).expect("runs dir");
        dir.write_script("record", RECORDER);
        dir
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn runs(&self) -> PathBuf {
        self.path().join("runs")
    }

    /// `record RUNS` as a shell command line, exiting with `code`.
    pub fn record(&self, code: i32) -> String {
        format!(
            "{} {} {code}",
            self.path().join("record").display(),
            self.runs().display()
        )
    }

    pub fn write_script(&self, name: &str, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path().join(name);
        std::fs::write(&path, text).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    pub fn write_config(&self, text: &str) -> PathBuf {
        let path = self.path().join("hooks.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// Every run the recorder saw, oldest first.
    pub fn recorded(&self) -> Vec<Run> {
        let mut runs: Vec<Run> = std::fs::read_dir(self.runs())
            .expect("runs dir")
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().starts_with("run."))
            .filter_map(|entry| Run::read(&entry.path()))
            .collect();
        runs.sort_by_key(|run| run.modified);
        runs
    }
}

/// What one recorder run saved.
#[derive(Debug, Clone)]
pub struct Run {
    pub stdin: Vec<u8>,
    pub env: Vec<(String, String)>,
    pub pid: u32,
    modified: std::time::SystemTime,
}

impl Run {
    fn read(dir: &Path) -> Option<Run> {
        // The pid file is written last: without it the run is still going.
        let pid = std::fs::read_to_string(dir.join("pid")).ok()?;
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
            pid: pid.trim().parse().ok()?,
            modified: std::fs::metadata(dir.join("pid")).ok()?.modified().ok()?,
        })
    }

    pub fn var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// A running `cmqhook serve`. Killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Server {
    /// Starts `cmqhook serve -c CONFIG` with `args`, logging to `dir/server.log`.
    pub fn start(dir: &Dir, config: &Path, args: &[&str]) -> Server {
        Self::start_logging(dir, config, args, true)
    }

    /// As [`Server::start`]; with `keep_log = false` the log is read but not stored (for
    /// tests whose commands print hundreds of megabytes).
    pub fn start_logging(dir: &Dir, config: &Path, args: &[&str], keep_log: bool) -> Server {
        Self::start_env(dir, config, args, keep_log, &[])
    }

    /// As [`Server::start_logging`], with extra environment variables.
    pub fn start_env(
        dir: &Dir,
        config: &Path,
        args: &[&str],
        keep_log: bool,
        env: &[(&str, &str)],
    ) -> Server {
        let mut command = Command::new(BIN);
        command
            .envs(env.iter().copied())
            .arg("serve")
            .arg("-c")
            .arg(config)
            .args(args);
        Self::start_command(dir, command, keep_log)
    }

    /// `cmqhook serve -c CONFIG` started with a soft open-files limit of `soft`.
    pub fn start_with_open_files(dir: &Dir, config: &Path, soft: u64) -> Server {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -Sn {soft} && exec \"$0\" serve -c \"$1\""))
            .arg(BIN)
            .arg(config);
        Self::start_command(dir, command, true)
    }

    fn start_command(dir: &Dir, mut command: Command, keep_log: bool) -> Server {
        let log = dir.path().join("server.log");
        let mut child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cmqhook");
        let (found, addr) = mpsc::channel();
        for pipe in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let found = found.clone();
            let mut file = keep_log.then(|| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .expect("log file")
            });
            std::thread::spawn(move || {
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
            });
        }
        let addr = match addr.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("cmqhook did not start listening; log:\n{log}");
            }
        };
        Server { child, addr, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        post(self.addr, path, headers, body)
    }

    /// Posts the CMQ example envelope with its headers, with `msg_id` in both places.
    pub fn post_seed(&self, path: &str, msg_id: &str) -> Response {
        let body = SEED_ENVELOPE.replace("6942316962", msg_id);
        self.post(
            path,
            &[
                ("x-cmq-message-id", msg_id),
                ("x-cmq-request-id", "2394928734"),
                ("x-cmq-message-tag", "a, b"),
            ],
            body.as_bytes(),
        )
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The server's peak resident set size in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    /// Sends `signal` to the server process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the server to exit and returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("cmqhook did not exit within {within:?}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
pub fn wait_for(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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
}

/// POSTs `body` with `Content-Length`.
pub fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\nUser-Agent: Qcloud Notification Service Agent\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    exchange(addr, &request)
}

/// Sends `request` as is and reads the response to the end of the connection.
pub fn exchange(addr: SocketAddr, request: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    // The server may answer (413) before reading a large body; a reset then is expected.
    let _ = stream.write_all(request);
    read_response(&mut stream)
}

pub fn read_response(stream: &mut TcpStream) -> Response {
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse_response(&raw)
}

pub fn parse_response(raw: &[u8]) -> Response {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Response {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

/// `GET path` on the server.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    exchange(addr, request.as_bytes())
}

/// Runs `cmqhook ARGS` to the end with `stdin` on its standard input.
pub fn cmqhook_with_stdin(args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cmqhook");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    // Written from a thread: a command that does not read its stdin must not block us.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let output = child.wait_with_output().expect("wait for cmqhook");
    let _ = writer.join();
    output
}

/// `cmqhook history -c CONFIG --json ARGS`, one JSON object per row, newest first.
pub fn history_json(config: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let output = Command::new(BIN)
        .arg("history")
        .arg("-c")
        .arg(config)
        .arg("--json")
        .args(args)
        .output()
        .expect("history");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object a line"))
        .collect()
}
