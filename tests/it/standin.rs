//! A stand-in for CMQ's legacy v2 queue API (SPEC §11, CMQ-PROTOCOL.md "The queue API"), for
//! tests only: an HTTP/1.1 server on 127.0.0.1 speaking SendMessage, ReceiveMessage,
//! BatchReceiveMessage, DeleteMessage and BatchDeleteMessage, with visibility timeouts,
//! receipt handles that expire (only a message's latest one deletes it), `dequeueCount`,
//! `msgTag`, long polls that wait for a message, and faults injected on demand.
//!
//! Every request's signature is checked as documented, by code of its own (it shares nothing
//! with `cmqhook::pull::signature`), from what arrived: the `Host` header, the path, and the
//! decoded form (or query) parameters. A request signed otherwise gets code 4100, so a test
//! against it proves that a client signs correctly, not just consistently.
//!
//! Tests drive it directly: [`StandIn::create_queue`], [`StandIn::send`], the counts and
//! records ([`StandIn::visible`], [`StandIn::deleted`], [`StandIn::dequeue_count`],
//! [`StandIn::requests`]), and [`StandIn::inject`]; [`StandIn::queue_table`] writes the
//! `[[queue]]` table that points cmqhook at it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;
use serde_json::{Value, json};

/// The key every stand-in accepts unless a test changes it.
pub const SECRET_ID: &str = "AKIDstandin0000000000000000000000000";
pub const SECRET_KEY: &str = "standin-secret-key-0123456789abcdef";
/// Where the API is; any other path is 404.
const PATH: &str = "/v2/index.php";
/// The most messages a batch receive returns, and handles a batch delete takes.
const MAX_BATCH: usize = 16;
/// The longest long poll.
const MAX_WAIT_SECONDS: u64 = 30;

/// What an injected fault does to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer this API code and message (HTTP 200), e.g. 4420 throttled, 6070, 4100.
    Code(i64, String),
    /// Close the connection without answering.
    Drop,
    /// Answer this HTTP status with a non-JSON body (a gateway's error).
    Status(u16),
}

impl Fault {
    /// 4100: authentication failure.
    pub fn auth() -> Fault {
        Fault::Code(4100, "(10030)authentication failed: injected".to_owned())
    }

    /// 4420: too many requests.
    pub fn throttled() -> Fault {
        Fault::Code(4420, "(10250)request throttled: injected".to_owned())
    }
}

/// A request as the stand-in read it (after its signature was checked, or not).
#[derive(Debug, Clone)]
pub struct Request {
    pub action: String,
    pub params: BTreeMap<String, String>,
    /// The API code answered (0: success).
    pub code: i64,
}

/// A stand-in server on 127.0.0.1; stopped when dropped.
pub struct StandIn {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled on every change long polls may wait for.
    changed: Condvar,
    stopping: AtomicBool,
    /// Set by `down`: the listener is closed and connections are refused.
    down: AtomicBool,
}

#[derive(Default)]
struct State {
    secret_id: String,
    secret_key: String,
    /// Required as `Token` when set.
    token: Option<String>,
    queues: HashMap<String, Queue>,
    /// Faults for the next requests of an action (`None`: any action), in order.
    faults: VecDeque<(Option<String>, Fault)>,
    requests: Vec<Request>,
    /// Long polls waiting for a message now.
    polling: usize,
    next_id: u64,
}

struct Queue {
    visibility: Duration,
    /// In the order sent; deleted messages are removed.
    messages: Vec<Message>,
    deleted: Vec<String>,
    /// Every message's dequeue count, deleted ones included.
    dequeues: HashMap<String, u64>,
    /// Every handle issued, per message id, oldest first.
    handles: HashMap<String, Vec<String>>,
}

struct Message {
    id: String,
    body: String,
    tags: Vec<String>,
    enqueue_time: u64,
    first_dequeue_time: Option<u64>,
    /// Received and not visible again until then.
    invisible_until: Option<Instant>,
    /// The only handle that deletes it, while it is invisible.
    handle: Option<String>,
}

impl Message {
    fn is_visible(&self, now: Instant) -> bool {
        self.invisible_until.is_none_or(|until| until <= now)
    }
}

impl StandIn {
    /// A stand-in on a free port with the key [`SECRET_ID`] / [`SECRET_KEY`] and no queues.
    pub fn start() -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the stand-in");
        let addr = listener.local_addr().expect("the stand-in's address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                secret_id: SECRET_ID.to_owned(),
                secret_key: SECRET_KEY.to_owned(),
                ..State::default()
            }),
            changed: Condvar::new(),
            stopping: AtomicBool::new(false),
            down: AtomicBool::new(false),
        });
        let accept = Some(spawn_acceptor(listener, Arc::clone(&shared)));
        StandIn {
            addr,
            shared,
            accept,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, as a `[[queue]]` `endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A `[[queue]]` table for `queue` on this stand-in with its key, `wait = "1s"`, and
    /// `extra` lines (e.g. `batch = 4`) appended.
    pub fn queue_table(&self, queue: &str, extra: &str) -> String {
        format!(
            "[[queue]]\nname = \"{queue}\"\nendpoint = \"{}\"\nsecret_id = \"{SECRET_ID}\"\nsecret_key = \"{SECRET_KEY}\"\nwait = \"1s\"\n{extra}\n",
            self.endpoint()
        )
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    /// Creates `queue` (empty) with this visibility timeout (shorter than CMQ's 1 s minimum
    /// allowed, for quick tests).
    pub fn create_queue(&self, queue: &str, visibility: Duration) {
        self.state().queues.insert(
            queue.to_owned(),
            Queue {
                visibility,
                messages: Vec::new(),
                deleted: Vec::new(),
                dequeues: HashMap::new(),
                handles: HashMap::new(),
            },
        );
    }

    /// Puts a message in `queue` as SendMessage would; returns its id.
    pub fn send(&self, queue: &str, body: &str, tags: &[&str]) -> String {
        let mut state = self.state();
        let tags = tags.iter().map(|tag| (*tag).to_owned()).collect();
        let id = state
            .enqueue(queue, body.to_owned(), tags)
            .expect("the queue exists");
        drop(state);
        self.shared.changed.notify_all();
        id
    }

    /// Messages in `queue` that a receive would return now.
    pub fn visible(&self, queue: &str) -> usize {
        self.count(queue, true)
    }

    /// Messages in `queue` received and not visible again yet.
    pub fn invisible(&self, queue: &str) -> usize {
        self.count(queue, false)
    }

    fn count(&self, queue: &str, visible: bool) -> usize {
        let now = Instant::now();
        let state = self.state();
        let messages = state.queue(queue).messages.iter();
        messages.filter(|m| m.is_visible(now) == visible).count()
    }

    /// The ids of the messages deleted from `queue`, in the order they were deleted.
    pub fn deleted(&self, queue: &str) -> Vec<String> {
        self.state().queue(queue).deleted.clone()
    }

    /// The bodies of the messages still in `queue`, visible or not, in the order sent.
    pub fn bodies(&self, queue: &str) -> Vec<String> {
        let state = self.state();
        state
            .queue(queue)
            .messages
            .iter()
            .map(|m| m.body.clone())
            .collect()
    }

    /// The tags a message of `queue` was sent with (`None`: no such message, or deleted).
    pub fn tags(&self, queue: &str, msg_id: &str) -> Option<Vec<String>> {
        let state = self.state();
        let messages = &state.queue(queue).messages;
        messages
            .iter()
            .find(|m| m.id == msg_id)
            .map(|m| m.tags.clone())
    }

    /// How many times `msg_id` of `queue` was received (0 if never; deleted ones count too).
    pub fn dequeue_count(&self, queue: &str, msg_id: &str) -> u64 {
        let state = self.state();
        state
            .queue(queue)
            .dequeues
            .get(msg_id)
            .copied()
            .unwrap_or(0)
    }

    /// Every receipt handle issued for `msg_id`, oldest first.
    pub fn handles(&self, queue: &str, msg_id: &str) -> Vec<String> {
        let state = self.state();
        state
            .queue(queue)
            .handles
            .get(msg_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Every request received, in order; faults and bad signatures included.
    pub fn requests(&self) -> Vec<Request> {
        self.state().requests.clone()
    }

    /// The requests of `action` received so far.
    pub fn requests_of(&self, action: &str) -> Vec<Request> {
        let requests = self.requests().into_iter();
        requests
            .filter(|request| request.action == action)
            .collect()
    }

    /// The next `times` requests of `action` (any action when `None`) get `fault` instead of
    /// their answer; faults queued earlier come first.
    pub fn inject(&self, action: Option<&str>, fault: Fault, times: usize) {
        let mut state = self.state();
        for _ in 0..times {
            state
                .faults
                .push_back((action.map(str::to_owned), fault.clone()));
        }
    }

    /// Receives waiting for a message now (long polls in progress).
    pub fn polling(&self) -> usize {
        self.state().polling
    }

    /// Faults injected and not used yet.
    pub fn faults_left(&self) -> usize {
        self.state().faults.len()
    }

    /// Accepts only this key from now on (a request signed with another gets 4100).
    pub fn set_key(&self, secret_id: &str, secret_key: &str) {
        let mut state = self.state();
        state.secret_id = secret_id.to_owned();
        state.secret_key = secret_key.to_owned();
    }

    /// Requires `Token` to be this (temporary credentials); `None`: no token needed.
    pub fn require_token(&self, token: Option<&str>) {
        self.state().token = token.map(str::to_owned);
    }

    /// Stops listening: connections are refused (and those open are closed after their
    /// request) until [`StandIn::up`].
    pub fn down(&mut self) {
        self.shared.down.store(true, Ordering::SeqCst);
        self.stop_acceptor();
    }

    /// Listens again, on the same address.
    pub fn up(&mut self) {
        let listener = TcpListener::bind(self.addr).expect("bind the stand-in's address again");
        self.shared.down.store(false, Ordering::SeqCst);
        self.shared.stopping.store(false, Ordering::SeqCst);
        self.accept = Some(spawn_acceptor(listener, Arc::clone(&self.shared)));
    }

    fn stop_acceptor(&mut self) {
        if let Some(accept) = self.accept.take() {
            self.shared.stopping.store(true, Ordering::SeqCst);
            self.shared.changed.notify_all();
            // Wakes the accept loop, which sees `stopping` and drops the listener.
            let _ = TcpStream::connect(self.addr);
            accept
                .join()
                .expect("the stand-in's accept loop does not panic");
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.shared.down.store(true, Ordering::SeqCst);
        self.stop_acceptor();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding it leaves the state as it was: still readable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    fn queue(&self, name: &str) -> &Queue {
        self.queues
            .get(name)
            .unwrap_or_else(|| panic!("the stand-in has no queue `{name}`"))
    }

    fn enqueue(&mut self, queue: &str, body: String, tags: Vec<String>) -> Option<String> {
        self.next_id += 1;
        let id = format!("{:030X}", 0x1EAD_5E05_0000_u64 + self.next_id);
        let queue = self.queues.get_mut(queue)?;
        queue.messages.push(Message {
            id: id.clone(),
            body,
            tags,
            enqueue_time: unix_now(),
            first_dequeue_time: None,
            invisible_until: None,
            handle: None,
        });
        Some(id)
    }

    /// Takes up to `max` visible messages of `queue` (which exists), hiding each for the
    /// visibility timeout under a new handle.
    fn take(&mut self, queue: &str, max: usize) -> Vec<Value> {
        self.next_id += 1;
        let serial = self.next_id;
        let now = Instant::now();
        let queue = self.queues.get_mut(queue).expect("checked by the caller");
        let visibility = queue.visibility;
        let mut taken = Vec::new();
        for (index, message) in queue
            .messages
            .iter_mut()
            .filter(|m| m.is_visible(now))
            .take(max)
            .enumerate()
        {
            let handle = format!("{serial}{index:02}{}", message.id.trim_start_matches('0'));
            let until = now + visibility;
            message.invisible_until = Some(until);
            message.handle = Some(handle.clone());
            let first = *message.first_dequeue_time.get_or_insert_with(unix_now);
            let count = queue.dequeues.entry(message.id.clone()).or_insert(0);
            *count += 1;
            queue
                .handles
                .entry(message.id.clone())
                .or_default()
                .push(handle.clone());
            let next_visible = unix_now() + visibility.as_secs_f64().ceil() as u64;
            let mut answer = json!({
                "msgId": message.id,
                "msgBody": message.body,
                "receiptHandle": handle,
                "enqueueTime": message.enqueue_time,
                "firstDequeueTime": first,
                "nextVisibleTime": next_visible,
                "dequeueCount": *count,
            });
            if !message.tags.is_empty() {
                answer["msgTag"] = json!(message.tags);
            }
            taken.push(answer);
        }
        taken
    }

    /// Deletes the message whose latest handle `handle` is, if that handle has not expired.
    fn delete(&mut self, queue: &str, handle: &str) -> Result<(), (i64, String)> {
        let now = Instant::now();
        let queue = self.queues.get_mut(queue).expect("checked by the caller");
        let found = queue.messages.iter().position(|m| {
            m.handle.as_deref() == Some(handle)
                && m.invisible_until.is_some_and(|until| now < until)
        });
        match found {
            Some(index) => {
                let message = queue.messages.remove(index);
                queue.deleted.push(message.id);
                Ok(())
            }
            None => Err((
                4430,
                format!("(10260)invalid or expired receipt handle: {handle}"),
            )),
        }
    }

    /// The earliest time a hidden message of `queue` becomes visible again.
    fn next_visible(&self, queue: &str) -> Option<Instant> {
        let queue = self.queues.get(queue)?;
        queue
            .messages
            .iter()
            .filter_map(|m| m.invisible_until)
            .min()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

fn spawn_acceptor(listener: TcpListener, shared: Arc<Shared>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            if shared.stopping.load(Ordering::SeqCst) {
                break;
            }
            let Ok(stream) = stream else { continue };
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || serve_connection(stream, &shared));
        }
    })
}

/// Answers the requests of one keep-alive connection until the client closes it.
fn serve_connection(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    let Ok(reader) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(reader);
    let mut writer = stream;
    while let Some(request) = read_request(&mut reader) {
        if shared.down.load(Ordering::SeqCst) {
            break;
        }
        match answer(shared, &request) {
            Some((status, body)) => {
                let reason = if status == 200 { "OK" } else { "Error" };
                let head = format!(
                    "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let written = writer
                    .write_all(head.as_bytes())
                    .and_then(|()| writer.write_all(body.as_bytes()))
                    .and_then(|()| writer.flush());
                if written.is_err() || request.close {
                    break;
                }
            }
            None => break,
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
}

/// One HTTP/1.1 request off the wire.
struct HttpRequest {
    method: String,
    path: String,
    query: String,
    host: String,
    body: Vec<u8>,
    /// `Connection: close`.
    close: bool,
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<HttpRequest> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut words = line.split_whitespace();
    let method = words.next()?.to_owned();
    let target = words.next()?.to_owned();
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path.to_owned(), query.to_owned()),
        None => (target, String::new()),
    };
    let mut host = String::new();
    let mut length = 0;
    let mut close = false;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "host" => host = value.to_owned(),
            "content-length" => length = value.parse().ok()?,
            "connection" => close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(HttpRequest {
        method,
        path,
        query,
        host,
        body,
        close,
    })
}

/// The status and JSON body for `request`; `None` to close the connection unanswered.
fn answer(shared: &Shared, request: &HttpRequest) -> Option<(u16, String)> {
    if request.path != PATH {
        return Some((
            404,
            json!({"code": 4000, "message": "no such path"}).to_string(),
        ));
    }
    let form = match request.method.as_str() {
        "POST" => String::from_utf8_lossy(&request.body).into_owned(),
        "GET" => request.query.clone(),
        _ => return Some((405, String::new())),
    };
    let params: Vec<(String, String)> = form_urlencoded::parse(form.as_bytes())
        .into_owned()
        .collect();
    let map: BTreeMap<String, String> = params.iter().cloned().collect();
    let action = map.get("Action").cloned().unwrap_or_default();
    let mut state = shared.lock();
    let fault = state
        .faults
        .iter()
        .position(|(only, _)| only.as_ref().is_none_or(|only| *only == action))
        .and_then(|index| state.faults.remove(index))
        .map(|(_, fault)| fault);
    let (code, reply) = match fault {
        Some(Fault::Drop) => {
            record(&mut state, &action, map, -1);
            return None;
        }
        Some(Fault::Status(status)) => {
            record(&mut state, &action, map, -1);
            return Some((status, "<html>injected gateway error</html>".to_owned()));
        }
        Some(Fault::Code(code, message)) => (code, json!({"message": message})),
        None => match authenticate(&state, &request.method, &request.host, &params) {
            Err(message) => (4100, json!({"message": message})),
            Ok(()) => {
                let (code, reply, state_back) = perform(shared, state, &action, &map);
                state = state_back;
                (code, reply)
            }
        },
    };
    record(&mut state, &action, map, code);
    drop(state);
    let mut reply = reply;
    reply["code"] = json!(code);
    if reply.get("message").is_none() {
        reply["message"] = json!("");
    }
    reply["requestId"] = json!(format!("standin-{}", unix_now()));
    Some((200, reply.to_string()))
}

fn record(state: &mut State, action: &str, params: BTreeMap<String, String>, code: i64) {
    state.requests.push(Request {
        action: action.to_owned(),
        params,
        code,
    });
}

/// Checks the common parameters and the signature as CMQ-PROTOCOL.md documents them: the
/// text `METHOD` + Host header + `/v2/index.php` + `?` + every parameter but `Signature`,
/// sorted by key byte-wise, `_` in keys written `.`, values as decoded; HMAC keyed with the
/// secret key, base64.
fn authenticate(
    state: &State,
    method: &str,
    host: &str,
    params: &[(String, String)],
) -> Result<(), String> {
    let get = |key: &str| {
        params
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    };
    for key in ["Action", "SecretId", "Timestamp", "Nonce", "Signature"] {
        if get(key).is_none_or(str::is_empty) {
            return Err(format!("(10030)missing {key}"));
        }
    }
    let mut seen: Vec<&str> = params.iter().map(|(key, _)| key.as_str()).collect();
    seen.sort_unstable();
    if seen.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err("(10030)a parameter is repeated".to_owned());
    }
    if get("SecretId") != Some(state.secret_id.as_str()) {
        return Err("(10030)secretId does not exist".to_owned());
    }
    if get("Timestamp")
        .and_then(|t| t.parse::<u64>().ok())
        .is_none()
        || get("Nonce")
            .and_then(|n| n.parse::<u64>().ok())
            .is_none_or(|n| n == 0)
    {
        return Err("(10030)Timestamp and Nonce must be positive integers".to_owned());
    }
    if let Some(token) = &state.token
        && get("Token") != Some(token.as_str())
    {
        return Err("(10030)token missing or wrong".to_owned());
    }
    let expected = expected_signature(method, host, params, &state.secret_key)?;
    if get("Signature") != Some(expected.as_str()) {
        return Err("(10030)signature does not match".to_owned());
    }
    Ok(())
}

/// The signature the documented algorithm gives a request of `params` (`Signature` left
/// out) sent with `method` to `host`.
fn expected_signature(
    method: &str,
    host: &str,
    params: &[(String, String)],
    secret_key: &str,
) -> Result<String, String> {
    let method_of = params
        .iter()
        .find(|(key, _)| key == "SignatureMethod")
        .map_or("HmacSHA1", |(_, value)| value.as_str());
    let algorithm = match method_of {
        "HmacSHA1" => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        "HmacSHA256" => hmac::HMAC_SHA256,
        other => return Err(format!("(10030)unknown SignatureMethod {other}")),
    };
    let mut signed: Vec<&(String, String)> = params
        .iter()
        .filter(|(key, _)| key != "Signature")
        .collect();
    signed.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let pairs: Vec<String> = signed
        .iter()
        .map(|(key, value)| format!("{}={value}", key.replace('_', ".")))
        .collect();
    let text = format!("{method}{host}{PATH}?{}", pairs.join("&"));
    let key = hmac::Key::new(algorithm, secret_key.as_bytes());
    Ok(STANDARD.encode(hmac::sign(&key, text.as_bytes()).as_ref()))
}

#[test]
fn the_standin_signs_the_published_vector_as_published() {
    let params: Vec<(String, String)> = [
        ("Action", "SendMessage"),
        ("Nonce", "2889712707386595659"),
        ("RequestClient", "SDK_Python_1.3"),
        ("SecretId", "AKIDPcYDclDJCn8D0Xypa4f3pKYUCVYLn3zT"),
        ("SignatureMethod", "HmacSHA1"),
        ("Timestamp", "1534154812"),
        ("clientRequestId", "1231231231"),
        ("delaySeconds", "0"),
        ("msgBody", "msg"),
        ("queueName", "test1"),
        ("Signature", "left out"),
    ]
    .iter()
    .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
    .collect();
    let signature = expected_signature(
        "POST",
        "cmq-queue-gz.api.tencentyun.com",
        &params,
        "pPgfLipfEXZ7VcRzhAMIyPaU7UbQyFFx",
    );
    assert_eq!(signature.as_deref(), Ok("C16WEtEXsD5v5tnaUMLAbZewXhI="));
}

/// Performs an authenticated action; may wait (a long poll), releasing the lock meanwhile.
fn perform<'a>(
    shared: &'a Shared,
    mut state: MutexGuard<'a, State>,
    action: &str,
    params: &BTreeMap<String, String>,
) -> (i64, Value, MutexGuard<'a, State>) {
    let bad = |message: &str| (4000, json!({"message": format!("(10110){message}")}));
    let Some(queue) = params.get("queueName").cloned() else {
        let (code, reply) = bad("missing queueName");
        return (code, reply, state);
    };
    if !state.queues.contains_key(&queue) {
        return (
            4440,
            json!({"message": format!("(10100)queue {queue} does not exist")}),
            state,
        );
    }
    let (code, reply) = match action {
        "SendMessage" => match params.get("msgBody").filter(|body| !body.is_empty()) {
            None => bad("msgBody must hold at least 1 byte"),
            Some(body) => {
                let tags = indexed(params, "msgTag");
                let id = state.enqueue(&queue, body.clone(), tags);
                shared.changed.notify_all();
                (0, json!({"msgId": id}))
            }
        },
        "ReceiveMessage" | "BatchReceiveMessage" => {
            let max = if action == "ReceiveMessage" {
                Some(1)
            } else {
                params
                    .get("numOfMsg")
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|n| (1..=MAX_BATCH).contains(n))
            };
            let wait = match params.get("pollingWaitSeconds") {
                None => Some(0),
                Some(wait) => wait.parse::<u64>().ok().filter(|w| *w <= MAX_WAIT_SECONDS),
            };
            match (max, wait) {
                (None, _) => bad("numOfMsg must be from 1 to 16"),
                (_, None) => bad("pollingWaitSeconds must be from 0 to 30"),
                (Some(max), Some(wait)) => {
                    let deadline = Instant::now() + Duration::from_secs(wait);
                    let (taken, back) = long_poll(shared, state, &queue, max, deadline);
                    state = back;
                    match taken {
                        _ if shared.stopping.load(Ordering::SeqCst) => {
                            (7000, json!({"message": "(10200)no message"}))
                        }
                        taken if taken.is_empty() => {
                            (7000, json!({"message": "(10200)no message"}))
                        }
                        mut taken if action == "ReceiveMessage" => (0, taken.remove(0)),
                        taken => (0, json!({"msgInfoList": taken})),
                    }
                }
            }
        }
        "DeleteMessage" => match params.get("receiptHandle") {
            None => bad("missing receiptHandle"),
            Some(handle) => match state.delete(&queue, handle) {
                Ok(()) => (0, json!({})),
                Err((code, message)) => (code, json!({"message": message})),
            },
        },
        "BatchDeleteMessage" => {
            let handles = indexed(params, "receiptHandle");
            if handles.is_empty() || handles.len() > MAX_BATCH {
                bad("receiptHandle.n: 1 to 16 handles")
            } else {
                let mut errors = Vec::new();
                for handle in handles {
                    if let Err((code, message)) = state.delete(&queue, &handle) {
                        errors.push(
                            json!({"code": code, "message": message, "receiptHandle": handle}),
                        );
                    }
                }
                if errors.is_empty() {
                    (0, json!({}))
                } else {
                    (
                        4430,
                        json!({"message": "(10260)some handles were not deleted", "errorList": errors}),
                    )
                }
            }
        }
        other => (
            4000,
            json!({"message": format!("(10280)action {other} does not exist")}),
        ),
    };
    (code, reply, state)
}

/// Waits until `queue` has a visible message or `deadline` passes, then takes up to `max`.
fn long_poll<'a>(
    shared: &'a Shared,
    mut state: MutexGuard<'a, State>,
    queue: &str,
    max: usize,
    deadline: Instant,
) -> (Vec<Value>, MutexGuard<'a, State>) {
    let mut waited = false;
    loop {
        let taken = state.take(queue, max);
        let now = Instant::now();
        if !taken.is_empty() || now >= deadline || shared.stopping.load(Ordering::SeqCst) {
            if waited {
                state.polling -= 1;
            }
            return (taken, state);
        }
        if !waited {
            waited = true;
            state.polling += 1;
        }
        // Wakes for a new message, or when a hidden one becomes visible again.
        let until = state
            .next_visible(queue)
            .map_or(deadline, |at| at.min(deadline));
        let wait = until
            .saturating_duration_since(now)
            .max(Duration::from_millis(1));
        state = shared
            .changed
            .wait_timeout(state, wait)
            .map_or_else(|poisoned| poisoned.into_inner().0, |(state, _)| state);
    }
}

/// The values of `prefix.N` parameters, by N (from 0 or 1, as the SDKs differ).
fn indexed(params: &BTreeMap<String, String>, prefix: &str) -> Vec<String> {
    let mut found: Vec<(u32, String)> = params
        .iter()
        .filter_map(|(key, value)| {
            let n = key.strip_prefix(prefix)?.strip_prefix('.')?.parse().ok()?;
            Some((n, value.clone()))
        })
        .collect();
    found.sort_unstable_by_key(|(n, _)| *n);
    found.into_iter().map(|(_, value)| value).collect()
}
