//! A run's output: read from its pipes in large chunks, logged up to `log_output` lines by a
//! thread of its own (so that draining never waits on the log), and kept for the run record
//! (SPEC §10).
//!
//! The kept output is text: stdout and stderr interleaved in the order their lines arrived,
//! every line starting with [`STDOUT_MARK`] or [`STDERR_MARK`]; a line longer than 4 KiB is
//! kept (and logged) in pieces, each marked. It holds the first [`HEAD_BYTES`] and the last
//! `keep_output` − [`HEAD_BYTES`]; where something was cut between them, one line
//! `[… N lines (M bytes) not kept …]` says how much. Secrets are redacted before anything
//! is logged or kept, a line at a time, so that a secret is hidden whole wherever the pipe
//! cut it.
//!
//! Work done per line is only what marking lines needs: a chunk's lines are counted, the
//! lines still to log are split off, and the head is filled line by line; what goes to the
//! tail is copied whole and marked once, when the record is read.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{ErrorKind, PipeReader, Read};
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};

use super::RunLabel;
use crate::secrets::Secrets;

/// What starts a kept line of stdout.
pub const STDOUT_MARK: &str = "out| ";
/// What starts a kept line of stderr.
pub const STDERR_MARK: &str = "err| ";
const MARK_LEN: usize = STDOUT_MARK.len();
/// The start of a run's output that is always kept (when `keep_output` is at least that).
pub const HEAD_BYTES: usize = 4096;
/// How much of the end of stdout and of stderr a report keeps besides.
pub const TAIL_BYTES: usize = 4096;
/// A line longer than this is logged and kept in pieces, so that memory stays bounded.
pub(super) const MAX_LINE: usize = 4096;
/// The most read from a pipe at once: a whole pipe's worth.
const CHUNK: usize = 64 * 1024;
/// Batches of lines waiting for the log thread; beyond that, lines are not logged (and
/// counted as such) rather than waited for.
const LOG_QUEUE: usize = 64;

/// How many lines of a run's output are logged (`log_output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLines {
    /// At most this many; 0: none.
    Lines(u64),
    /// Every line.
    All,
}

/// What becomes of a run's output besides its tails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputPolicy {
    /// `log_output`.
    pub log_lines: LogLines,
    /// `keep_output`: bytes of kept output (marks included).
    pub keep_bytes: usize,
}

/// `log_output`'s default.
pub const DEFAULT_LOG_LINES: u64 = 1000;
/// `keep_output`'s default.
pub const DEFAULT_KEEP_BYTES: usize = 64 * 1024;

impl Default for OutputPolicy {
    fn default() -> OutputPolicy {
        OutputPolicy {
            log_lines: LogLines::Lines(DEFAULT_LOG_LINES),
            keep_bytes: DEFAULT_KEEP_BYTES,
        }
    }
}

/// Which pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stream {
    Stdout = 0,
    Stderr = 1,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn mark(self) -> &'static [u8] {
        match self {
            Stream::Stdout => STDOUT_MARK.as_bytes(),
            Stream::Stderr => STDERR_MARK.as_bytes(),
        }
    }
}

/// One output stream of a run: read at once when its command has exited, or as it comes, by
/// the run itself while its command runs ([`Output::poll_read`]), and by a task of its own
/// when something still holds the pipe once the command has exited.
pub(super) struct Output(Reading);

enum Reading {
    /// Not read yet.
    Later(PipeReader, Sink),
    /// Read as it comes by whoever polls [`Output::poll_read`].
    AsItComes(tokio::net::unix::pipe::Receiver, Sink),
    /// Read as it comes by a task of its own.
    Task(tokio::task::JoinHandle<()>),
    Ended,
}

/// The most chunks one [`Output::poll_read`] reads before it lets other work run.
const READS_A_POLL: usize = 16;

impl Output {
    pub(super) fn new(
        pipe: PipeReader,
        stream: Stream,
        record: &Arc<Mutex<Record>>,
        secrets: &Secrets,
    ) -> Output {
        let sink = Sink {
            stream,
            record: Arc::clone(record),
            line: Vec::new(),
            secrets: secrets.clone(),
        };
        Output(Reading::Later(pipe, sink))
    }

    /// From now on the stream is read as it comes, by [`Output::poll_read`].
    pub(super) fn read_as_it_comes(&mut self) {
        let (pipe, sink) = match std::mem::replace(&mut self.0, Reading::Ended) {
            Reading::Later(pipe, sink) => (pipe, sink),
            other => {
                self.0 = other;
                return;
            }
        };
        match tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(OwnedFd::from(pipe)) {
            Ok(pipe) => self.0 = Reading::AsItComes(pipe, sink),
            Err(err) => {
                let label = sink.label();
                tracing::warn!(
                    hook = %label.hook,
                    msg_id = %label.msg_id,
                    error = %err,
                    "cannot read the command's {}",
                    sink.stream.name()
                );
            }
        }
    }

    /// Whether [`Output::poll_read`] has a stream to read.
    pub(super) fn is_read_as_it_comes(&self) -> bool {
        matches!(self.0, Reading::AsItComes(..))
    }

    /// Reads what has come; ready once the stream has ended (or is not read as it comes).
    pub(super) fn poll_read(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let Reading::AsItComes(pipe, sink) = &mut self.0 else {
            return Poll::Ready(());
        };
        for _ in 0..READS_A_POLL {
            match read_chunk(pipe, sink, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(true) => {}
                Poll::Ready(false) => {
                    sink.finish();
                    self.0 = Reading::Ended;
                    return Poll::Ready(());
                }
            }
        }
        // A command that writes as fast as it is read: the rest of the run's work comes first.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Reads what the pipe holds now; if something still holds it open, a task drains it as it
    /// comes.
    pub(super) fn settle(&mut self) {
        if !matches!(self.0, Reading::Later(..) | Reading::AsItComes(..)) {
            return;
        }
        let ended = SCRATCH.with_borrow_mut(|scratch| {
            // At most READS_A_POLL chunks: a child left behind that keeps the pipe full must
            // not hold this thread; past them the stream goes to a task like any other.
            for _ in 0..READS_A_POLL {
                let (result, sink) = match &mut self.0 {
                    Reading::Later(pipe, sink) => (pipe.read(scratch), sink),
                    // Straight from the pipe: its `try_read` would not even try before
                    // the runtime has seen it readable, and a pipe that has ended would then
                    // get a task of its own only to read its end.
                    Reading::AsItComes(pipe, sink) => (
                        nix::unistd::read(&*pipe, scratch).map_err(std::io::Error::from),
                        sink,
                    ),
                    Reading::Task(_) | Reading::Ended => return false,
                };
                match result {
                    Ok(0) => return true,
                    Ok(n) => sink.consume(&scratch[..n]),
                    Err(err) if err.kind() == ErrorKind::Interrupted => {}
                    Err(err) if err.kind() == ErrorKind::WouldBlock => return false,
                    Err(_) => return true,
                }
            }
            false
        });
        if ended {
            if let Reading::Later(_, sink) | Reading::AsItComes(_, sink) = &mut self.0 {
                sink.finish();
            }
            self.0 = Reading::Ended;
            return;
        }
        self.read_as_it_comes();
        if let Reading::AsItComes(pipe, sink) = std::mem::replace(&mut self.0, Reading::Ended) {
            self.0 = Reading::Task(tokio::spawn(drain(pipe, sink)));
        }
    }

    /// Waits for the drain task, if there is one. Dropping this future leaves it running.
    pub(super) async fn finished(&mut self) {
        if let Reading::Task(task) = &mut self.0 {
            let _ = task.await;
            self.0 = Reading::Ended;
        }
    }
}

/// Where a stream's bytes go, in whole lines: the run's [`Record`], secrets redacted.
struct Sink {
    stream: Stream,
    record: Arc<Mutex<Record>>,
    /// The start of a line whose end has not come yet.
    line: Vec<u8>,
    secrets: Secrets,
}

impl Sink {
    fn label(&self) -> Arc<RunLabel> {
        let record = self.record.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(&record.label)
    }

    fn consume(&mut self, mut data: &[u8]) {
        if !self.line.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    self.line.extend_from_slice(&data[..=end]);
                    let line = std::mem::take(&mut self.line);
                    self.emit(&line);
                    self.line = line;
                    self.line.clear();
                    data = &data[end + 1..];
                }
                None => {
                    self.line.extend_from_slice(data);
                    self.cut_long_line();
                    return;
                }
            }
        }
        let rest = match data.iter().rposition(|&b| b == b'\n') {
            Some(end) => {
                self.emit(&data[..=end]);
                &data[end + 1..]
            }
            None => data,
        };
        if !rest.is_empty() {
            self.line.extend_from_slice(rest);
            self.cut_long_line();
        }
    }

    /// A line grown past [`MAX_LINE`] goes on as a piece.
    fn cut_long_line(&mut self) {
        if self.line.len() < MAX_LINE {
            return;
        }
        // Cut before what might be the start of a secret, so that it is redacted whole in the
        // next piece.
        let held = self.secrets.unfinished_suffix(&self.line);
        let piece: Vec<u8> = self.line.drain(..self.line.len() - held).collect();
        self.emit(&piece);
    }

    /// Whole lines, or one piece of a line.
    fn emit(&mut self, lines: &[u8]) {
        let lines = self.secrets.redact_bytes(lines);
        self.record
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(self.stream, &lines);
    }

    /// The end of the stream: a last line without its newline is kept too.
    fn finish(&mut self) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.emit(&line);
        }
    }
}

/// The last [`TAIL_BYTES`] of a stream. Holds up to twice that, so that dropping the oldest
/// bytes costs one move per [`TAIL_BYTES`] pushed, not one per line.
#[derive(Default)]
pub(super) struct Tail(Vec<u8>);

impl Tail {
    pub(super) fn push(&mut self, data: &[u8]) {
        if data.len() >= TAIL_BYTES {
            self.0.clear();
            self.0.extend_from_slice(&data[data.len() - TAIL_BYTES..]);
            return;
        }
        if self.0.len() + data.len() > 2 * TAIL_BYTES {
            let excess = self.0.len() - TAIL_BYTES;
            self.0.drain(..excess);
        }
        self.0.extend_from_slice(data);
    }

    pub(super) fn last(&self) -> &[u8] {
        &self.0[self.0.len().saturating_sub(TAIL_BYTES)..]
    }
}

/// A run's output as both of its streams hand it over: what is logged, and what is kept.
/// When the last stream is done with it, it logs how much was not logged.
pub(super) struct Record {
    label: Arc<RunLabel>,
    log_lines: LogLines,
    /// Whether output lines reach the log at all.
    logged: bool,
    /// Lines still to log; `None`: every one.
    log_left: Option<u64>,
    unlogged_lines: u64,
    unlogged_bytes: u64,
    /// Every line and byte taken (redacted), kept or not.
    lines: u64,
    bytes: u64,
    head: Head,
    tail: KeptTail,
    /// The last [`TAIL_BYTES`] of stdout and of stderr.
    tails: [Tail; 2],
}

impl Record {
    pub(super) fn new(label: Arc<RunLabel>, policy: OutputPolicy) -> Record {
        let head = HEAD_BYTES.min(policy.keep_bytes);
        // With output lines filtered out of the log (`-q`), none is handed to the log thread,
        // and none is said to be missing.
        let logged = tracing::enabled!(target: "cmqhook::output", tracing::Level::INFO);
        Record {
            label,
            log_lines: if logged {
                policy.log_lines
            } else {
                LogLines::Lines(0)
            },
            log_left: match policy.log_lines {
                _ if !logged => Some(0),
                LogLines::Lines(n) => Some(n),
                LogLines::All => None,
            },
            logged,
            unlogged_lines: 0,
            unlogged_bytes: 0,
            lines: 0,
            bytes: 0,
            head: Head {
                text: Vec::new(),
                cap: head,
                full: head == 0,
                lines: 0,
                bytes: 0,
            },
            tail: KeptTail {
                cap: policy.keep_bytes - head,
                ..KeptTail::default()
            },
            tails: [Tail::default(), Tail::default()],
        }
    }

    /// Whole lines of `stream`, or one piece of a long line.
    fn take(&mut self, stream: Stream, lines: &[u8]) {
        let count = count_lines(lines);
        self.lines += count;
        self.bytes += lines.len() as u64;
        self.log(stream, lines, count);
        let rest = self.head.fill(stream, lines);
        self.tail.push(stream, rest);
        self.tails[stream as usize].push(lines);
    }

    /// The last [`TAIL_BYTES`] of `stream`, redacted.
    pub(super) fn stream_tail(&self, stream: Stream) -> Vec<u8> {
        self.tails[stream as usize].last().to_vec()
    }

    fn log(&mut self, stream: Stream, lines: &[u8], count: u64) {
        let (logged, logged_lines) = match self.log_left {
            Some(0) => (0, 0),
            Some(left) if left < count => {
                let end = lines
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| **b == b'\n')
                    .nth(usize::try_from(left - 1).unwrap_or(usize::MAX))
                    .map_or(lines.len(), |(at, _)| at + 1);
                (end, left)
            }
            _ => (lines.len(), count),
        };
        let mut sent = 0;
        if logged > 0 {
            let item = LogItem::Lines {
                label: Arc::clone(&self.label),
                stream,
                text: lines[..logged].to_vec(),
            };
            if log_queue().is_some_and(|queue| queue.try_send(item).is_ok()) {
                sent = logged_lines;
            }
            if let Some(left) = self.log_left.as_mut() {
                *left -= logged_lines;
            }
        }
        if sent == 0 {
            self.unlogged_lines += count;
            self.unlogged_bytes += lines.len() as u64;
        } else {
            self.unlogged_lines += count - sent;
            self.unlogged_bytes += (lines.len() - logged) as u64;
        }
    }

    /// The kept output, as text (invalid UTF-8 replaced).
    pub(super) fn kept(&self) -> String {
        let mut text = self.head.text.clone();
        if text.last().is_some_and(|b| *b != b'\n') {
            text.push(b'\n');
        }
        let tail = self.tail.render();
        let kept_lines = self.head.lines + tail.lines;
        let kept_bytes = self.head.bytes + tail.bytes;
        let cut_bytes = self.bytes.saturating_sub(kept_bytes);
        if cut_bytes > 0 {
            let cut_lines = self.lines.saturating_sub(kept_lines);
            text.extend_from_slice(cut_marker(cut_lines, cut_bytes).as_bytes());
        }
        text.extend_from_slice(&tail.text);
        String::from_utf8_lossy(&text).into_owned()
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if self.unlogged_lines == 0 || !self.logged {
            return;
        }
        let summary = LogItem::Summary {
            label: Arc::clone(&self.label),
            lines: self.unlogged_lines,
            bytes: self.unlogged_bytes,
            limit: self.log_lines,
        };
        // After the lines that were logged, so a wait; the output has ended by now.
        match log_queue() {
            Some(queue) => {
                let _ = queue.send(summary);
            }
            None => summary.write(),
        }
    }
}

/// The line that stands for what was cut from kept output.
pub fn cut_marker(lines: u64, bytes: u64) -> String {
    let s = if lines == 1 { "" } else { "s" };
    format!("[… {lines} line{s} ({bytes} bytes) not kept …]\n")
}

/// Lines in `data`: its newlines, and a last line without one.
fn count_lines(data: &[u8]) -> u64 {
    // A plain count: the compiler vectorizes it.
    let newlines = data.iter().filter(|&&b| b == b'\n').count() as u64;
    newlines + u64::from(data.last().is_some_and(|&b| b != b'\n'))
}

/// The first bytes of kept output, marked as they come.
struct Head {
    text: Vec<u8>,
    cap: usize,
    full: bool,
    /// Whole lines and unmarked bytes in `text`.
    lines: u64,
    bytes: u64,
}

impl Head {
    /// Takes the marked lines of `lines` that fit (or the start of a first line longer than
    /// the head). Returns what is left for the tail.
    fn fill<'a>(&mut self, stream: Stream, lines: &'a [u8]) -> &'a [u8] {
        if self.full {
            return lines;
        }
        let mut used = 0;
        let mut kept = 0;
        for line in lines.split_inclusive(|&b| b == b'\n') {
            let room = self.cap - self.text.len();
            let newline = usize::from(!line.ends_with(b"\n"));
            if MARK_LEN + line.len() + newline <= room {
                self.text.extend_from_slice(stream.mark());
                self.text.extend_from_slice(line);
                self.text.resize(self.text.len() + newline, b'\n');
                self.lines += 1;
                used += line.len();
                kept += line.len();
                continue;
            }
            self.full = true;
            // A first line longer than the head: its start is kept there, the rest of it not.
            if self.text.is_empty() && room > MARK_LEN {
                let part = room - MARK_LEN;
                self.text.extend_from_slice(stream.mark());
                self.text.extend_from_slice(&line[..part]);
                self.lines += 1;
                self.bytes += part as u64;
                used += line.len();
            }
            break;
        }
        self.bytes += kept as u64;
        &lines[used..]
    }
}

/// The last bytes of output, unmarked as they come, each part with its stream; marked when
/// read. Holds up to twice `cap`, so that dropping the oldest costs one move per `cap` taken.
#[derive(Default)]
struct KeptTail {
    cap: usize,
    buf: Vec<u8>,
    /// The streams of `buf`'s parts, in order, with their lengths.
    parts: VecDeque<(Stream, usize)>,
    /// Bytes were dropped from the front and `buf` begins inside a line.
    starts_inside: bool,
}

/// The tail as text.
struct Rendered {
    text: Vec<u8>,
    lines: u64,
    bytes: u64,
}

impl KeptTail {
    fn push(&mut self, stream: Stream, data: &[u8]) {
        if data.is_empty() || self.cap == 0 {
            return;
        }
        let data = if data.len() > self.cap {
            let cut = data.len() - self.cap;
            self.buf.clear();
            self.parts.clear();
            self.starts_inside = data[cut - 1] != b'\n';
            &data[cut..]
        } else {
            data
        };
        if self.buf.len() + data.len() > 2 * self.cap {
            // Less than `buf` holds, since `data` is at most `cap`.
            let excess = self.buf.len() + data.len() - self.cap;
            self.starts_inside = self.buf[excess - 1] != b'\n';
            self.buf.drain(..excess);
            let mut left = excess;
            while let Some((_, len)) = self.parts.front_mut() {
                if *len > left {
                    *len -= left;
                    break;
                }
                left -= *len;
                self.parts.pop_front();
            }
        }
        let continues = self.buf.last().is_none_or(|&b| b == b'\n');
        match self.parts.back_mut() {
            Some((last, len)) if *last == stream && continues => *len += data.len(),
            _ => self.parts.push_back((stream, data.len())),
        }
        self.buf.extend_from_slice(data);
    }

    /// The marked lines: the last `cap` bytes of them, whole lines but for a line longer than
    /// that, which is cut at its start.
    fn render(&self) -> Rendered {
        let mut lines: Vec<(Stream, &[u8])> = Vec::new();
        let mut at = 0;
        for (index, &(stream, len)) in self.parts.iter().enumerate() {
            let mut part = &self.buf[at..at + len];
            at += len;
            if index == 0
                && self.starts_inside
                && let Some(end) = part.iter().position(|&b| b == b'\n')
            {
                part = &part[end + 1..];
            }
            lines.extend(
                part.split_inclusive(|&b| b == b'\n')
                    .map(|line| (stream, line)),
            );
        }
        let size = |line: &[u8]| MARK_LEN + line.len() + usize::from(!line.ends_with(b"\n"));
        let mut total: usize = lines.iter().map(|(_, line)| size(line)).sum();
        let mut first = 0;
        while total > self.cap && first + 1 < lines.len() {
            total -= size(lines[first].1);
            first += 1;
        }
        let mut rendered = Rendered {
            text: Vec::with_capacity(total.min(self.cap)),
            lines: 0,
            bytes: 0,
        };
        for (index, &(stream, mut line)) in lines.iter().enumerate().skip(first) {
            if index == first && total > self.cap {
                line = &line[(total - self.cap).min(line.len())..];
            }
            rendered.text.extend_from_slice(stream.mark());
            rendered.text.extend_from_slice(line);
            if !line.ends_with(b"\n") {
                rendered.text.push(b'\n');
            }
            rendered.lines += 1;
            rendered.bytes += line.len() as u64;
        }
        rendered
    }
}

thread_local! {
    /// The read buffer of every output stream read on this thread. A stream is read into it and
    /// done with it before anything yields, so a run waiting for output holds no buffer of its
    /// own.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; CHUNK].into_boxed_slice());
}

/// Reads one chunk of `pipe` into `sink`: ready with false at the end of the stream (or an
/// error that ends it).
fn read_chunk(
    pipe: &mut tokio::net::unix::pipe::Receiver,
    sink: &mut Sink,
    cx: &mut std::task::Context<'_>,
) -> Poll<bool> {
    SCRATCH.with_borrow_mut(|scratch| {
        let mut buf = ReadBuf::new(scratch);
        match Pin::new(pipe).poll_read(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                sink.consume(buf.filled());
                Poll::Ready(true)
            }
            Poll::Ready(_) => Poll::Ready(false),
        }
    })
}

async fn drain(mut pipe: tokio::net::unix::pipe::Receiver, mut sink: Sink) {
    while std::future::poll_fn(|cx| read_chunk(&mut pipe, &mut sink, cx)).await {}
    sink.finish();
}

/// What the log thread is given.
enum LogItem {
    Lines {
        label: Arc<RunLabel>,
        stream: Stream,
        text: Vec<u8>,
    },
    Summary {
        label: Arc<RunLabel>,
        lines: u64,
        bytes: u64,
        limit: LogLines,
    },
    /// Answered once everything before it is written.
    Flush(std::sync::mpsc::Sender<()>),
}

impl LogItem {
    fn write(self) {
        match self {
            LogItem::Lines {
                label,
                stream,
                text,
            } => {
                for line in text.split(|&b| b == b'\n') {
                    log_line(&label, stream.name(), line);
                }
            }
            LogItem::Summary {
                label,
                lines,
                bytes,
                limit,
            } => {
                let why = match limit {
                    LogLines::Lines(n) => format!("log_output = {n}"),
                    LogLines::All => "the log could not keep up".to_owned(),
                };
                let kept = match (label.run_id, label.journaled) {
                    (Some(id), _) => format!("`cmqhook show {id}` has the kept output"),
                    (None, true) => format!(
                        "`cmqhook show RUN_ID` has the kept output (`cmqhook history --hook {} --msg-id {}` prints RUN_ID)",
                        label.hook, label.msg_id
                    ),
                    (None, false) => "the journal is off, so it is not kept".to_owned(),
                };
                let s = if lines == 1 { "" } else { "s" };
                tracing::info!(
                    target: "cmqhook::output",
                    hook = %label.hook,
                    msg_id = %label.msg_id,
                    not_logged_lines = lines,
                    not_logged_bytes = bytes,
                    "{lines} line{s} ({bytes} bytes) of output not logged ({why}); {kept}"
                );
            }
            LogItem::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// The queue of the thread that logs output lines, started on first use; `None` if it cannot
/// be started.
fn log_queue() -> Option<&'static SyncSender<LogItem>> {
    static QUEUE: OnceLock<Option<SyncSender<LogItem>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (queue, items) = std::sync::mpsc::sync_channel(LOG_QUEUE);
            std::thread::Builder::new()
                .name("output-log".to_owned())
                .spawn(move || log_items(&items))
                .ok()
                .map(|_| queue)
        })
        .as_ref()
}

fn log_items(items: &Receiver<LogItem>) {
    while let Ok(item) = items.recv() {
        item.write();
    }
}

/// Waits (up to `within`) until every output line handed to the log thread so far is logged:
/// for a command that exits once its runs are done.
pub fn flush_log(within: Duration) {
    let (done, flushed) = std::sync::mpsc::channel();
    if let Some(queue) = log_queue() {
        match queue.try_send(LogItem::Flush(done.clone())) {
            Ok(()) => {}
            Err(TrySendError::Full(item)) => {
                let _ = queue.send(item);
            }
            Err(TrySendError::Disconnected(_)) => return,
        }
        let _ = flushed.recv_timeout(within);
    }
}

fn log_line(label: &RunLabel, stream: &'static str, line: &[u8]) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return;
    }
    tracing::info!(
        target: "cmqhook::output",
        hook = %label.hook,
        msg_id = %label.msg_id,
        stream,
        "{}",
        String::from_utf8_lossy(line)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(keep_bytes: usize) -> Record {
        Record::new(
            Arc::new(RunLabel::default()),
            OutputPolicy {
                log_lines: LogLines::Lines(0),
                keep_bytes,
            },
        )
    }

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut tail = Tail::default();
        tail.push(b"hello ");
        tail.push(b"world");
        assert_eq!(tail.last(), b"hello world");
        tail.push(&vec![b'x'; TAIL_BYTES - 2]);
        assert_eq!(tail.last().len(), TAIL_BYTES);
        assert!(tail.last().starts_with(b"ld"));
        tail.push(&vec![b'y'; TAIL_BYTES * 3]);
        assert_eq!(tail.last(), vec![b'y'; TAIL_BYTES]);
        for n in 0..10_000u32 {
            tail.push(format!("{n}\n").as_bytes());
            assert!(tail.0.len() <= 2 * TAIL_BYTES);
        }
        assert!(tail.last().ends_with(b"9998\n9999\n"));
        assert_eq!(tail.last().len(), TAIL_BYTES);
    }

    #[test]
    fn short_output_is_kept_whole_with_its_streams_marked() {
        let mut record = record(DEFAULT_KEEP_BYTES);
        record.take(Stream::Stdout, b"one\ntwo\n");
        record.take(Stream::Stderr, b"oops\n");
        record.take(Stream::Stdout, b"three");
        assert_eq!(record.kept(), "out| one\nout| two\nerr| oops\nout| three\n");
    }

    #[test]
    fn long_output_keeps_its_head_and_tail_with_what_was_cut_between() {
        let mut record = record(8192);
        let mut all = Vec::new();
        for n in 0..10_000u32 {
            let line = format!("line {n}\n");
            all.push(line.clone());
            // In chunks of varied sizes, as a pipe gives them.
            record.take(
                if n % 7 == 0 {
                    Stream::Stderr
                } else {
                    Stream::Stdout
                },
                line.as_bytes(),
            );
        }
        let kept = record.kept();
        assert!(kept.starts_with("err| line 0\nout| line 1\n"), "{kept}");
        assert!(kept.ends_with("out| line 9998\nout| line 9999\n"), "{kept}");
        assert!(kept.len() <= 8192 + 100, "{}", kept.len());
        let marker = kept
            .lines()
            .find(|line| line.starts_with("[…"))
            .expect("a cut marker");
        // Every line is either kept whole or counted in the marker.
        let kept_lines = kept.lines().filter(|line| !line.starts_with("[…")).count();
        let cut: u64 = marker
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("a line count");
        assert_eq!(kept_lines as u64 + cut, 10_000, "{marker}");
        let kept_bytes: usize = kept
            .lines()
            .filter(|line| !line.starts_with("[…"))
            .map(|line| line.len() - MARK_LEN + 1)
            .sum();
        let total: usize = all.iter().map(String::len).sum();
        assert!(
            marker.contains(&format!("({} bytes)", total - kept_bytes)),
            "{marker}"
        );
        // Lines are whole around the marker.
        let after = kept.split(marker).nth(1).expect("text after the marker");
        let after = after.strip_prefix('\n').expect("the marker is a line");
        assert!(after.starts_with("out| line ") || after.starts_with("err| line "));
    }

    #[test]
    fn a_long_first_line_fills_the_head() {
        let mut record = record(HEAD_BYTES + 100);
        record.take(Stream::Stdout, &[b'x'; 10_000]);
        record.take(Stream::Stdout, &[b'x'; 10_000]);
        let kept = record.kept();
        let lines: Vec<&str> = kept.lines().collect();
        assert_eq!(lines.len(), 3, "{kept}");
        assert_eq!(lines[0].len(), HEAD_BYTES);
        assert!(lines[1].starts_with("[… "), "{kept}");
        assert!(lines[2].starts_with("out| xxx"), "{kept}");
        assert!(lines[2].len() <= 100, "{kept}");
    }

    #[test]
    fn nothing_is_kept_with_keep_output_zero() {
        let mut record = record(0);
        record.take(Stream::Stdout, b"one\n");
        assert_eq!(record.kept(), "[… 1 line (4 bytes) not kept …]\n");
    }

    #[test]
    fn the_tail_memory_stays_bounded() {
        let mut record = record(DEFAULT_KEEP_BYTES);
        let chunk = b"hello world line\n".repeat(4000);
        for n in 0..200 {
            let stream = if n % 2 == 0 {
                Stream::Stdout
            } else {
                Stream::Stderr
            };
            record.take(stream, &chunk);
            assert!(record.tail.buf.len() <= 2 * record.tail.cap);
        }
        let kept = record.kept();
        assert!(kept.len() <= DEFAULT_KEEP_BYTES + 100, "{}", kept.len());
    }
}
