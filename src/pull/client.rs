//! The signed client of CMQ's legacy v2 queue API (SPEC §11; CMQ-PROTOCOL.md, "The queue
//! API"): SendMessage, ReceiveMessage, BatchReceiveMessage, DeleteMessage and
//! BatchDeleteMessage as `POST {endpoint}/v2/index.php` with a form body, signed by
//! [`super::signature`], their answers and error codes parsed into types. It decides nothing
//! about messages: what to receive, when to delete and how to back off are the poller's.
//!
//! HTTP is ureq's (the crate's client already, for `cmqhook send`), with rustls and the
//! Mozilla roots for `https://`, each request on a thread of its own (not tokio's blocking
//! pool, which a runtime waits for at shutdown): one thread for each request in flight, which
//! is a poller's long poll plus its deletes, a few threads in all. An async HTTP
//! client (reqwest, or hyper and its connection pool) would add about a dozen crates for no
//! gain at that rate. A call whose future is dropped still completes on its thread: messages a
//! dropped receive took are not seen, and reappear after the queue's visibility timeout.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::Value;
use ureq::Agent;

use super::signature::{sign, string_to_sign};
use crate::config::{Queue, SignatureMethod};

/// Where every action is sent, below the endpoint.
pub const PATH: &str = "/v2/index.php";
/// Added to a long poll's wait for the HTTP timeout (the SDKs add a margin too), and the
/// timeout of calls that do not wait.
const MARGIN: Duration = Duration::from_secs(10);
/// The longest answer read: 16 messages of 1 MiB (TDMQ's largest), each up to 6 times larger
/// as JSON, and room for the rest.
const MAX_ANSWER: u64 = 128 * 1024 * 1024;
/// The most handles one BatchDeleteMessage takes, and messages one BatchReceiveMessage returns.
pub const MAX_BATCH: usize = 16;

/// The API actions this client calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    SendMessage,
    ReceiveMessage,
    BatchReceiveMessage,
    DeleteMessage,
    BatchDeleteMessage,
}

impl Action {
    /// As the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::SendMessage => "SendMessage",
            Action::ReceiveMessage => "ReceiveMessage",
            Action::BatchReceiveMessage => "BatchReceiveMessage",
            Action::DeleteMessage => "DeleteMessage",
            Action::BatchDeleteMessage => "BatchDeleteMessage",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an API code means to a consumer (CMQ-PROTOCOL.md, "Codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 7000 / 10200: no message within the wait; an empty poll, not a failure.
    NoMessage,
    /// 4420 / 10250, 4480 / 10460: too many requests; back off.
    Throttled,
    /// 6070 / 10690: too many messages received and not deleted; back off.
    TooManyUnacknowledged,
    /// 4100 / 10030, and the rest of the 41xx family: the signature, the key or its rights.
    /// Retrying will not help until the operator fixes the key.
    Auth,
    /// 4430 / 10260: the receipt handle is invalid or expired (the message reappears, or was
    /// received again with a newer handle).
    InvalidHandle,
    /// Another API code.
    Api,
    /// No answer: connection refused or dropped, timeout, TLS, or an HTTP status other than
    /// 200 (a gateway's).
    Network,
    /// An answer that is not the API's JSON.
    Malformed,
}

impl ErrorKind {
    /// The kind of API code `code` (0 is success and has none).
    pub fn of_code(code: i64) -> ErrorKind {
        match code {
            7000 | 10200 => ErrorKind::NoMessage,
            4420 | 10250 | 4480 | 10460 => ErrorKind::Throttled,
            6070 | 10690 => ErrorKind::TooManyUnacknowledged,
            4100..=4199 | 10030 => ErrorKind::Auth,
            4430 | 10260 => ErrorKind::InvalidHandle,
            _ => ErrorKind::Api,
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The API answered a code other than 0.
    #[error("{action}: code {code}: {message} (requestId {request_id})")]
    Api {
        action: Action,
        code: i64,
        message: String,
        request_id: String,
    },
    /// No answer from the API.
    #[error("{action}: {reason}")]
    Network { action: Action, reason: String },
    /// An answer that could not be read.
    #[error("{action}: malformed answer: {reason}")]
    Malformed { action: Action, reason: String },
}

impl QueueError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            QueueError::Api { code, .. } => ErrorKind::of_code(*code),
            QueueError::Network { .. } => ErrorKind::Network,
            QueueError::Malformed { .. } => ErrorKind::Malformed,
        }
    }

    /// The API code, for an API error.
    pub fn code(&self) -> Option<i64> {
        match self {
            QueueError::Api { code, .. } => Some(*code),
            QueueError::Network { .. } | QueueError::Malformed { .. } => None,
        }
    }
}

/// A message received, with what is needed to delete it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub msg_id: String,
    pub body: String,
    /// Deletes the message until its `next_visible_time`, if no later receive replaced it.
    pub receipt_handle: String,
    /// Unix seconds, as the API gives them (absent when it does not).
    pub enqueue_time: Option<i64>,
    pub first_dequeue_time: Option<i64>,
    pub next_visible_time: Option<i64>,
    /// How many times the message was received, this time included; not reliable after a
    /// failover (CMQ-PROTOCOL.md), so attempts are not counted by it.
    pub dequeue_count: Option<u64>,
    /// `msgTag`, where the queue carries tags; empty otherwise.
    pub tags: Vec<String>,
}

/// A receipt handle a delete did not delete, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandleError {
    pub receipt_handle: String,
    pub code: i64,
    pub message: String,
}

impl HandleError {
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::of_code(self.code)
    }
}

/// A client of one endpoint with one key; cheap to clone, and shared by a queue's pollers.
#[derive(Clone)]
pub struct QueueClient {
    inner: Arc<Inner>,
}

struct Inner {
    agent: Agent,
    /// `{endpoint}/v2/index.php`.
    url: String,
    /// The `Host` header's value, as signed: the endpoint's host, with its port if it has one.
    host: String,
    secret_id: String,
    secret_key: String,
    token: Option<String>,
    signature: SignatureMethod,
}

impl fmt::Debug for QueueClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueClient")
            .field("url", &self.inner.url)
            .field("signature", &self.inner.signature)
            .finish_non_exhaustive()
    }
}

/// `RequestClient`: free text that says who calls.
const REQUEST_CLIENT: &str = concat!("cmqhook_", env!("CARGO_PKG_VERSION"));

impl QueueClient {
    /// A client for `queue`'s endpoint and key (the queue's name is given to each call).
    pub fn new(queue: &Queue) -> QueueClient {
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .user_agent(REQUEST_CLIENT)
            .timeout_global(Some(MARGIN))
            .build()
            .into();
        let authority = queue
            .endpoint
            .split_once("://")
            .map_or(queue.endpoint.as_str(), |(_, rest)| rest);
        QueueClient {
            inner: Arc::new(Inner {
                agent,
                url: format!("{}{PATH}", queue.endpoint),
                host: authority.to_owned(),
                secret_id: queue.secret_id.clone(),
                secret_key: queue.secret_key.clone(),
                token: queue.token.clone(),
                signature: queue.signature,
            }),
        }
    }

    /// SendMessage: publishes `body` to `queue` (with `tags` as `msgTag.0`, `msgTag.1`, …);
    /// returns its message id.
    pub async fn send(
        &self,
        queue: &str,
        body: &str,
        tags: &[String],
    ) -> Result<String, QueueError> {
        let mut params = vec![
            ("queueName".to_owned(), queue.to_owned()),
            ("msgBody".to_owned(), body.to_owned()),
            ("delaySeconds".to_owned(), "0".to_owned()),
        ];
        for (index, tag) in tags.iter().enumerate() {
            params.push((format!("msgTag.{index}"), tag.clone()));
        }
        let answer = self.call(Action::SendMessage, params, MARGIN).await?;
        let action = Action::SendMessage;
        let sent: SentAnswer = parse(action, &answer)?;
        sent.msg_id.into_string(action, "msgId")
    }

    /// Receives up to `max` messages (1 to 16: ReceiveMessage for 1, BatchReceiveMessage
    /// otherwise), waiting up to `wait` (whole seconds, at most 30) for the first; an empty
    /// poll is `Ok` and empty.
    pub async fn receive(
        &self,
        queue: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Received>, QueueError> {
        let action = if max <= 1 {
            Action::ReceiveMessage
        } else {
            Action::BatchReceiveMessage
        };
        let mut params = vec![
            ("queueName".to_owned(), queue.to_owned()),
            ("pollingWaitSeconds".to_owned(), wait.as_secs().to_string()),
        ];
        if action == Action::BatchReceiveMessage {
            params.push(("numOfMsg".to_owned(), max.min(MAX_BATCH).to_string()));
        }
        let answer = match self.call(action, params, wait + MARGIN).await {
            Ok(answer) => answer,
            Err(err) if err.kind() == ErrorKind::NoMessage => return Ok(Vec::new()),
            Err(err) => return Err(err),
        };
        let messages = if action == Action::ReceiveMessage {
            vec![parse::<RawMessage>(action, &answer)?]
        } else {
            parse::<BatchAnswer>(action, &answer)?.msg_info_list
        };
        messages
            .into_iter()
            .map(|message| message.into_received(action))
            .collect()
    }

    /// Deletes the messages of `handles` (DeleteMessage for one, BatchDeleteMessage by 16
    /// otherwise). `Ok` holds the handles that were not deleted and why (an expired handle's
    /// message is not gone: it reappears); every other handle was deleted. `Err` when a request
    /// failed as a whole: then none of its handles, nor those after it, were deleted.
    pub async fn delete(
        &self,
        queue: &str,
        handles: &[String],
    ) -> Result<Vec<HandleError>, QueueError> {
        let mut failed = Vec::new();
        if let [handle] = handles {
            let params = vec![
                ("queueName".to_owned(), queue.to_owned()),
                ("receiptHandle".to_owned(), handle.clone()),
            ];
            match self.call(Action::DeleteMessage, params, MARGIN).await {
                Ok(_) => {}
                Err(QueueError::Api { code, message, .. })
                    if ErrorKind::of_code(code) == ErrorKind::InvalidHandle =>
                {
                    failed.push(HandleError {
                        receipt_handle: handle.clone(),
                        code,
                        message,
                    });
                }
                Err(err) => return Err(err),
            }
            return Ok(failed);
        }
        for chunk in handles.chunks(MAX_BATCH) {
            let mut params = vec![("queueName".to_owned(), queue.to_owned())];
            for (index, handle) in chunk.iter().enumerate() {
                params.push((format!("receiptHandle.{index}"), handle.clone()));
            }
            failed.extend(self.batch_delete(params).await?);
        }
        Ok(failed)
    }

    /// One BatchDeleteMessage: a code other than 0 with an `errorList` reports those handles.
    async fn batch_delete(
        &self,
        params: Vec<(String, String)>,
    ) -> Result<Vec<HandleError>, QueueError> {
        let action = Action::BatchDeleteMessage;
        let answer = self.request(action, params, MARGIN).await?;
        let status: Status = parse(action, &answer)?;
        let listed: DeleteAnswer = parse(action, &answer)?;
        if status.code != 0 && listed.error_list.is_empty() {
            return Err(status.into_error(action));
        }
        listed
            .error_list
            .into_iter()
            .map(|error| {
                Ok(HandleError {
                    receipt_handle: error.receipt_handle.into_string(action, "receiptHandle")?,
                    code: error.code,
                    message: error.message,
                })
            })
            .collect()
    }

    /// Calls `action`; an answer whose code is not 0 is an error.
    async fn call(
        &self,
        action: Action,
        params: Vec<(String, String)>,
        timeout: Duration,
    ) -> Result<Vec<u8>, QueueError> {
        let answer = self.request(action, params, timeout).await?;
        let status: Status = parse(action, &answer)?;
        if status.code != 0 {
            return Err(status.into_error(action));
        }
        Ok(answer)
    }

    /// Signs and sends one request on the blocking pool; the answer's body, whatever its code.
    async fn request(
        &self,
        action: Action,
        params: Vec<(String, String)>,
        timeout: Duration,
    ) -> Result<Vec<u8>, QueueError> {
        let inner = Arc::clone(&self.inner);
        let body = inner.signed_body(action, params);
        // A thread of its own, not tokio's blocking pool: a runtime that shuts down waits for
        // its pool's threads, so a long poll going at SIGTERM would hold `serve` for up to
        // `wait`; a detached thread ends with the process.
        let (answered, answer) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("cmq-request".to_owned())
            .spawn(move || {
                let _ = answered.send(inner.post(&body, timeout));
            });
        if let Err(err) = spawned {
            return Err(QueueError::Network {
                action,
                reason: format!("cannot start the request's thread: {err}"),
            });
        }
        match answer.await {
            Ok(answer) => answer.map_err(|reason| QueueError::Network { action, reason }),
            Err(_) => Err(QueueError::Network {
                action,
                reason: "the request's thread failed".to_owned(),
            }),
        }
    }
}

impl Inner {
    /// The form body: `params`, the common parameters, and the signature of them all.
    fn signed_body(&self, action: Action, mut params: Vec<(String, String)>) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        params.extend([
            ("Action".to_owned(), action.as_str().to_owned()),
            ("SecretId".to_owned(), self.secret_id.clone()),
            ("Timestamp".to_owned(), now.to_string()),
            ("Nonce".to_owned(), nonce().to_string()),
            (
                "SignatureMethod".to_owned(),
                self.signature.as_str().to_owned(),
            ),
            ("RequestClient".to_owned(), REQUEST_CLIENT.to_owned()),
        ]);
        if let Some(token) = &self.token {
            params.push(("Token".to_owned(), token.clone()));
        }
        let text = string_to_sign(
            "POST",
            &self.host,
            PATH,
            params
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_str())),
        );
        let signature = sign(self.signature, &self.secret_key, &text);
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.extend_pairs(&params);
        form.append_pair("Signature", &signature);
        form.finish()
    }

    /// POSTs `body`; the answer's body if the status is 200, else why not.
    fn post(&self, body: &str, timeout: Duration) -> Result<Vec<u8>, String> {
        let mut response = self
            .agent
            .post(&self.url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            // As signed: ureq would leave out a port the scheme implies (`:443`), which the
            // endpoint may spell out.
            .header("Host", &self.host)
            .content_type("application/x-www-form-urlencoded")
            .send(body)
            .map_err(|err| format!("{}: {err}", self.url))?;
        let status = response.status();
        let answer = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_vec()
            .map_err(|err| format!("{}: reading the answer: {err}", self.url))?;
        if status != 200 {
            let shown = String::from_utf8_lossy(&answer[..answer.len().min(200)]).into_owned();
            return Err(format!("{}: HTTP {status}: {shown}", self.url));
        }
        Ok(answer)
    }
}

/// A random positive integer for `Nonce`.
fn nonce() -> u32 {
    let mut bytes = [0; 4];
    // `ring`'s system random; a nonce that fails to be random is still a nonce.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    u32::from_le_bytes(bytes).max(1)
}

/// Reads `T` from an answer.
fn parse<T: for<'de> Deserialize<'de>>(action: Action, answer: &[u8]) -> Result<T, QueueError> {
    serde_json::from_slice(answer).map_err(|err| {
        let shown = String::from_utf8_lossy(&answer[..answer.len().min(200)]).into_owned();
        QueueError::Malformed {
            action,
            reason: format!("{err}: {shown}"),
        }
    })
}

/// What every answer has.
#[derive(Deserialize)]
struct Status {
    #[serde(deserialize_with = "integer")]
    code: i64,
    #[serde(default)]
    message: String,
    #[serde(default, rename = "requestId")]
    request_id: Text,
}

impl Status {
    fn into_error(self, action: Action) -> QueueError {
        QueueError::Api {
            action,
            code: self.code,
            message: self.message,
            request_id: self.request_id.0.map(|id| id.shown()).unwrap_or_default(),
        }
    }
}

#[derive(Deserialize)]
struct SentAnswer {
    #[serde(default, rename = "msgId")]
    msg_id: Text,
}

#[derive(Deserialize)]
struct BatchAnswer {
    #[serde(rename = "msgInfoList")]
    msg_info_list: Vec<RawMessage>,
}

#[derive(Deserialize)]
struct DeleteAnswer {
    #[serde(default, rename = "errorList")]
    error_list: Vec<RawHandleError>,
}

#[derive(Deserialize)]
struct RawHandleError {
    #[serde(deserialize_with = "integer")]
    code: i64,
    // The Go SDK reads `Message`; Tencent's documents write `message`.
    #[serde(default, alias = "Message")]
    message: String,
    #[serde(default, rename = "receiptHandle")]
    receipt_handle: Text,
}

/// One message as an answer gives it.
#[derive(Deserialize)]
struct RawMessage {
    #[serde(default, rename = "msgId")]
    msg_id: Text,
    #[serde(default, rename = "msgBody")]
    msg_body: Option<String>,
    #[serde(default, rename = "receiptHandle")]
    receipt_handle: Text,
    #[serde(default, rename = "enqueueTime")]
    enqueue_time: Text,
    #[serde(default, rename = "firstDequeueTime")]
    first_dequeue_time: Text,
    #[serde(default, rename = "nextVisibleTime")]
    next_visible_time: Text,
    #[serde(default, rename = "dequeueCount")]
    dequeue_count: Text,
    #[serde(default, rename = "msgTag")]
    msg_tag: Option<Value>,
}

impl RawMessage {
    fn into_received(self, action: Action) -> Result<Received, QueueError> {
        let malformed = |reason: String| QueueError::Malformed { action, reason };
        Ok(Received {
            msg_id: self.msg_id.into_string(action, "msgId")?,
            body: self
                .msg_body
                .ok_or_else(|| malformed("a message without `msgBody`".to_owned()))?,
            receipt_handle: self.receipt_handle.into_string(action, "receiptHandle")?,
            enqueue_time: self.enqueue_time.integer(),
            first_dequeue_time: self.first_dequeue_time.integer(),
            next_visible_time: self.next_visible_time.integer(),
            dequeue_count: self
                .dequeue_count
                .integer()
                .and_then(|n| u64::try_from(n).ok()),
            tags: tags(self.msg_tag),
        })
    }
}

/// `msgTag` as a list (`["a", "b"]`) or as text (`"a,b"`): trimmed, empty items dropped.
fn tags(value: Option<Value>) -> Vec<String> {
    let items: Vec<String> = match value {
        Some(Value::Array(items)) => items
            .into_iter()
            .filter_map(|item| match item {
                Value::String(text) => Some(text),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect(),
        Some(Value::String(text)) => text.split(',').map(str::to_owned).collect(),
        _ => Vec::new(),
    };
    items
        .into_iter()
        .map(|tag| tag.trim_matches([' ', '\t']).to_owned())
        .filter(|tag| !tag.is_empty())
        .collect()
}

/// A value the API may give as a string or as a number (ids, times, counts).
#[derive(Default)]
struct Text(Option<Scalar>);

enum Scalar {
    String(String),
    Number(serde_json::Number),
}

impl Scalar {
    fn shown(self) -> String {
        match self {
            Scalar::String(text) => text,
            Scalar::Number(n) => n.to_string(),
        }
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::String(text) => Ok(Text(Some(Scalar::String(text)))),
            Value::Number(n) => Ok(Text(Some(Scalar::Number(n)))),
            Value::Null => Ok(Text(None)),
            other => Err(serde::de::Error::custom(format!(
                "expected a string or a number, got {other}"
            ))),
        }
    }
}

impl Text {
    /// The value as text; an error naming `key` when it is absent or empty.
    fn into_string(self, action: Action, key: &str) -> Result<String, QueueError> {
        match self.0.map(Scalar::shown) {
            Some(text) if !text.is_empty() => Ok(text),
            _ => Err(QueueError::Malformed {
                action,
                reason: format!("no `{key}`"),
            }),
        }
    }

    fn integer(&self) -> Option<i64> {
        match &self.0 {
            Some(Scalar::Number(n)) => n.as_i64(),
            Some(Scalar::String(text)) => text.trim().parse().ok(),
            None => None,
        }
    }
}

/// `code`, as a number or a numeric string.
fn integer<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    Text::deserialize(deserializer)?
        .integer()
        .ok_or_else(|| serde::de::Error::custom("expected an integer code"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(action: Action, answer: &str) -> Vec<Received> {
        let messages = if action == Action::ReceiveMessage {
            vec![parse::<RawMessage>(action, answer.as_bytes()).expect("parses")]
        } else {
            parse::<BatchAnswer>(action, answer.as_bytes())
                .expect("parses")
                .msg_info_list
        };
        messages
            .into_iter()
            .map(|message| message.into_received(action).expect("a message"))
            .collect()
    }

    #[test]
    fn a_receive_answer_as_documented_is_read() {
        // The shape of Tencent's ReceiveMessage example.
        let answer = r#"{"code":0,"message":"","requestId":"14534664555","msgBody":"hello\u0000world","msgId":"123345346","receiptHandle":"283748239349283","enqueueTime":1462351982,"nextVisibleTime":1462351982,"firstDequeueTime":1462351982,"dequeueCount":1}"#;
        let [message] = received(Action::ReceiveMessage, answer)
            .try_into()
            .expect("one");
        assert_eq!(
            message,
            Received {
                msg_id: "123345346".to_owned(),
                body: "hello\0world".to_owned(),
                receipt_handle: "283748239349283".to_owned(),
                enqueue_time: Some(1_462_351_982),
                first_dequeue_time: Some(1_462_351_982),
                next_visible_time: Some(1_462_351_982),
                dequeue_count: Some(1),
                tags: Vec::new(),
            }
        );
    }

    #[test]
    fn ids_and_times_may_be_numbers_or_strings_and_tags_a_list_or_text() {
        let answer = r#"{"code":0,"msgInfoList":[
            {"msgBody":"a","msgId":42,"receiptHandle":7,"enqueueTime":"1700000000","dequeueCount":"3","msgTag":["x"," y",""]},
            {"msgBody":"b","msgId":"1EAD5E05003A6767C1FC9160304F98","receiptHandle":"h","msgTag":"p, q,,"}]}"#;
        let messages = received(Action::BatchReceiveMessage, answer);
        assert_eq!(messages[0].msg_id, "42");
        assert_eq!(messages[0].receipt_handle, "7");
        assert_eq!(messages[0].enqueue_time, Some(1_700_000_000));
        assert_eq!(messages[0].next_visible_time, None);
        assert_eq!(messages[0].dequeue_count, Some(3));
        assert_eq!(messages[0].tags, ["x", "y"]);
        assert_eq!(messages[1].tags, ["p", "q"]);
    }

    #[test]
    fn a_message_without_its_id_handle_or_body_is_malformed() {
        for answer in [
            r#"{"code":0,"msgBody":"a","receiptHandle":"h"}"#,
            r#"{"code":0,"msgBody":"a","msgId":"1"}"#,
            r#"{"code":0,"msgId":"1","receiptHandle":"h"}"#,
        ] {
            let message: RawMessage =
                parse(Action::ReceiveMessage, answer.as_bytes()).expect("parses");
            let err = message
                .into_received(Action::ReceiveMessage)
                .expect_err("malformed");
            assert_eq!(err.kind(), ErrorKind::Malformed, "{answer}: {err}");
        }
        let err = parse::<Status>(Action::ReceiveMessage, b"<html>502</html>")
            .err()
            .expect("not JSON");
        assert!(err.to_string().contains("malformed answer"), "{err}");
    }

    #[test]
    fn every_documented_code_has_its_kind() {
        for (codes, kind) in [
            (&[7000, 10200][..], ErrorKind::NoMessage),
            (&[4420, 10250, 4480, 10460], ErrorKind::Throttled),
            (&[6070, 10690], ErrorKind::TooManyUnacknowledged),
            (&[4100, 10030, 4101], ErrorKind::Auth),
            (&[4430, 10260], ErrorKind::InvalidHandle),
            (&[4000, 5000, 6000, 10110], ErrorKind::Api),
        ] {
            for code in codes {
                assert_eq!(ErrorKind::of_code(*code), kind, "{code}");
            }
        }
    }

    #[test]
    fn an_error_answer_names_its_action_code_message_and_request() {
        let status: Status = parse(
            Action::DeleteMessage,
            br#"{"code":"4430","message":"receipt handle expired","requestId":123}"#,
        )
        .expect("parses");
        let err = status.into_error(Action::DeleteMessage);
        assert_eq!(err.kind(), ErrorKind::InvalidHandle);
        assert_eq!(err.code(), Some(4430));
        assert_eq!(
            err.to_string(),
            "DeleteMessage: code 4430: receipt handle expired (requestId 123)"
        );
    }

    #[test]
    fn a_batch_delete_error_list_is_read() {
        let answer: DeleteAnswer = parse(
            Action::BatchDeleteMessage,
            br#"{"code":4430,"message":"","errorList":[{"code":4430,"message":"expired","receiptHandle":"h1"},{"code":10260,"Message":"gone","receiptHandle":"h2"}]}"#,
        )
        .expect("parses");
        let errors: Vec<_> = answer
            .error_list
            .into_iter()
            .map(|e| (e.code, e.message, e.receipt_handle.0.map(Scalar::shown)))
            .collect();
        assert_eq!(
            errors,
            [
                (4430, "expired".to_owned(), Some("h1".to_owned())),
                (10260, "gone".to_owned(), Some("h2".to_owned()))
            ]
        );
    }
}
