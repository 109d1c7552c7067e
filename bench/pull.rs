//! Pull mode against the push path (SPEC §11): how many messages a second one `cmqhook serve`
//! (release build, journal on) takes from the tests' stand-in queue server at a given `batch`,
//! and how many pushes a second the same serve takes with as many pushes in flight; the hook
//! is `argv = ["/bin/true"]` for both. Prints one line for each, and their ratio.
//!
//! Usage: cargo run --release --example pull -- [MESSAGES] [BATCH]   (defaults 3000, 16)
//! (bench/pull.sh builds and runs it). Traffic goes to 127.0.0.1 only.

#[allow(dead_code)]
#[path = "../tests/it/standin.rs"]
mod standin;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use standin::StandIn;

/// How long either measurement may take before the bench gives up.
const WITHIN: Duration = Duration::from_secs(300);

fn main() {
    let mut args = std::env::args().skip(1);
    let messages: usize = args
        .next()
        .map_or(3000, |n| n.parse().expect("MESSAGES is a number"));
    let batch: usize = args
        .next()
        .map_or(16, |n| n.parse().expect("BATCH is a number"));
    let bin = std::env::var("CMQHOOK_BIN").unwrap_or_else(|_| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/release/cmqhook")
            .to_string_lossy()
            .into_owned()
    });
    let dir = tempfile::tempdir().expect("a temp dir");

    let standin = StandIn::start();
    standin.create_queue("bench", Duration::from_secs(60));
    for n in 0..messages {
        standin.send("bench", &format!("message {n}"), &[]);
    }
    let config = write_config(
        dir.path(),
        &standin.queue_table("bench", &format!("batch = {batch}")),
    );
    let (_serve, addr) = start(&bin, &config, &dir.path().join("pull.log"));
    let started = Instant::now();
    loop {
        let deleted = standin.deleted("bench").len();
        if deleted >= messages {
            break;
        }
        assert!(
            started.elapsed() < WITHIN,
            "only {deleted} of {messages} deleted"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let pulled = messages as f64 / started.elapsed().as_secs_f64();
    println!("pull: {messages} messages at batch = {batch}: {pulled:.0} messages/s");

    // The push path on the same serve: `batch` pushes in flight, as many in all.
    let pushed = push_rate(addr, messages, batch);
    println!("push: {messages} pushes, {batch} in flight: {pushed:.0} pushes/s");
    println!("pull / push: {:.2}", pulled / pushed);
}

/// `hooks.toml` in `dir`: the journal on, the queue table, a hook for its messages and one for
/// pushes, both `/bin/true`.
fn write_config(dir: &Path, queue: &str) -> PathBuf {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\njournal = \"cmqhook.db\"\n\n{queue}\n\
         [hooks.pulled]\nfrom_queue = \"bench\"\nargv = [\"/bin/true\"]\n\n\
         [hooks.pushed]\npath = \"/cmq\"\nargv = [\"/bin/true\"]\n"
    );
    let file = dir.join("hooks.toml");
    std::fs::write(&file, text).expect("write the config");
    file
}

/// A `cmqhook serve`, killed when dropped.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `serve -c config`, logging to `log`; waits for its address.
fn start(bin: &str, config: &Path, log: &Path) -> (Serve, SocketAddr) {
    let out = std::fs::File::create(log).expect("the log file");
    let serve = Serve(
        Command::new(bin)
            .args(["serve", "-c"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("start cmqhook serve"),
    );
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(at) = text.find("listening on http://") {
            let rest = &text[at + "listening on http://".len()..];
            let addr: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
            return (serve, addr.parse().expect("an address"));
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "serve did not start: {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pushes a second: `total` SIMPLIFIED pushes with distinct message ids, from `clients`
/// keep-alive connections, each waiting for its answer before the next.
fn push_rate(addr: SocketAddr, total: usize, clients: usize) -> f64 {
    let clients = clients.max(1);
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|client| {
            std::thread::spawn(move || {
                let stream = TcpStream::connect(addr).expect("connect");
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut writer = stream;
                for n in (client..total).step_by(clients) {
                    let body = format!("push {n}");
                    let request = format!(
                        "POST /cmq HTTP/1.1\r\nHost: bench\r\nx-cmq-message-id: push-{n}\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    writer.write_all(request.as_bytes()).expect("send");
                    let status = read_answer(&mut reader);
                    assert_eq!(status, 200, "push {n}");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("a client");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Reads one HTTP/1.1 answer with a Content-Length; returns its status.
fn read_answer(reader: &mut BufReader<TcpStream>) -> u16 {
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status");
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header");
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().expect("a length");
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    status
}
