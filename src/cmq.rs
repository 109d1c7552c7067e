//! The CMQ push wire format: request headers and body bytes in, a [`Push`] out.
//!
//! Owns the JSON envelope, SIMPLIFIED bodies, `auto` detection and tag normalisation
//! (CMQ-PROTOCOL.md). Knows nothing of HTTP frameworks, hooks or processes: bodies are bytes
//! throughout, and the message handed on is byte-exact.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// How `[server] format` says push bodies are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FormatSetting {
    /// The JSON envelope when the body is one (SPEC §3), SIMPLIFIED otherwise.
    #[default]
    Auto,
    Json,
    Simplified,
}

/// How one push was actually read, and how `cmqhook send` writes one (its `--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The CMQ JSON envelope, the message in `msgBody`.
    Json,
    /// The message as the whole body, untouched.
    Simplified,
}

impl Format {
    /// The name used in `CMQ_FORMAT` and the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Simplified => "simplified",
        }
    }
}

/// The longest message id read: CMQ's are short, and a longer one could not be passed to a
/// command (`CMQ_MSG_ID`) or journaled at every retry.
pub const MAX_MESSAGE_ID: usize = 1024;

/// A header's value: its lines, in order, joined into one comma-separated list (RFC 9110
/// §5.3); `Ok(None)` when it is absent, an error when a line is not UTF-8.
pub fn header_text<'a>(
    lines: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Option<Cow<'a, str>>, std::str::Utf8Error> {
    let mut text: Option<Cow<'a, str>> = None;
    for line in lines {
        let line = std::str::from_utf8(line)?;
        text = Some(match text {
            None => Cow::Borrowed(line),
            Some(joined) => Cow::Owned(format!("{joined}, {line}")),
        });
    }
    Ok(text)
}

/// The three CMQ headers, already looked up case-insensitively and read by [`header_text`].
#[derive(Debug, Clone, Copy, Default)]
pub struct PushHeaders<'a> {
    pub message_id: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub message_tag: Option<&'a str>,
}

/// One CMQ topic delivery, as the hooks see it.
#[derive(Debug, Clone)]
pub struct Push {
    /// The request path, without the query string.
    pub path: String,
    pub format: Format,
    /// The envelope's `msgId`, else `x-cmq-message-id`; `None` means it cannot be deduplicated.
    pub msg_id: Option<String>,
    pub request_id: Option<String>,
    /// Normalised tags from `x-cmq-message-tag`.
    pub tags: Vec<String>,
    pub topic: Option<String>,
    pub subscription: Option<String>,
    pub topic_owner: Option<String>,
    /// As received: CMQ does not document its unit.
    pub publish_time: Option<String>,
    /// The message: the decoded `msgBody`, or the whole SIMPLIFIED body.
    pub body: Bytes,
    /// The raw request body, for hooks with `stdin = "envelope"`.
    pub envelope: Bytes,
    /// The `[[queue]]` a pull-mode message was received from (SPEC §11); `None` for a push.
    pub queue: Option<String>,
}

/// The prefix of the path a message received from a queue is journaled under: no HTTP push
/// can have it, since a request path begins with `/`.
const QUEUE_PATH: &str = "queue:";

impl Push {
    /// A message received from the queue `queue` (SPEC §11): a SIMPLIFIED push whose body is
    /// `msgBody`, with no path, topic or subscription, journaled under the path `queue:NAME`.
    /// Its id is checked as a pushed one's is.
    pub fn from_queue(
        queue: &str,
        msg_id: &str,
        tags: Vec<String>,
        body: Bytes,
    ) -> Result<Push, PushError> {
        check_message_id(msg_id)?;
        Ok(Push {
            path: format!("{QUEUE_PATH}{queue}"),
            format: Format::Simplified,
            msg_id: (!msg_id.is_empty()).then(|| msg_id.to_owned()),
            request_id: None,
            tags,
            topic: None,
            subscription: None,
            topic_owner: None,
            publish_time: None,
            envelope: body.clone(),
            body,
            queue: Some(queue.to_owned()),
        })
    }
}

/// The queue a message journaled under `path` came from: `Some` only for the paths that
/// [`Push::from_queue`] gives.
pub fn queue_of_path(path: &str) -> Option<&str> {
    path.strip_prefix(QUEUE_PATH)
}

/// Why a push was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PushError {
    #[error("body is not a CMQ JSON envelope: {0}")]
    NotEnvelope(String),
    /// The message id cannot be run or journaled as it is.
    #[error("message id {0}")]
    BadMessageId(&'static str),
}

/// Reads one push. Only `format = "json"` can fail; `auto` falls back to SIMPLIFIED.
pub fn parse_push(
    setting: FormatSetting,
    path: &str,
    headers: PushHeaders<'_>,
    raw: Bytes,
) -> Result<Push, PushError> {
    let header_id = headers.message_id.filter(|id| !id.is_empty());
    let envelope = match setting {
        FormatSetting::Simplified => None,
        FormatSetting::Json => {
            let envelope = parse_envelope(&raw).map_err(PushError::NotEnvelope)?;
            let missing = envelope.missing_keys();
            if !missing.is_empty() {
                return Err(PushError::NotEnvelope(format!(
                    "missing {}",
                    missing.join(", ")
                )));
            }
            Some(envelope)
        }
        FormatSetting::Auto => parse_envelope(&raw)
            .ok()
            .filter(|envelope| envelope.is_envelope_for(header_id)),
    };
    let mut push = Push {
        path: path.to_owned(),
        format: Format::Simplified,
        msg_id: header_id.map(str::to_owned),
        request_id: headers.request_id.map(str::to_owned),
        tags: headers.message_tag.map(parse_tags).unwrap_or_default(),
        topic: None,
        subscription: None,
        topic_owner: None,
        publish_time: None,
        body: raw.clone(),
        envelope: raw,
        queue: None,
    };
    if let Some(envelope) = envelope {
        push.format = Format::Json;
        push.msg_id = envelope.msg_id.map(|Scalar(id)| id).or(push.msg_id);
        push.body = Bytes::from(envelope.msg_body.unwrap_or_default());
        push.topic = envelope.topic_name;
        push.subscription = envelope.subscription_name;
        push.topic_owner = envelope.topic_owner.map(|Scalar(owner)| owner);
        push.publish_time = envelope.publish_time.map(|Scalar(time)| time);
        let passed = [
            &push.topic,
            &push.subscription,
            &push.topic_owner,
            &push.publish_time,
        ];
        if passed
            .into_iter()
            .flatten()
            .any(|value| value.contains('\0'))
        {
            return Err(PushError::NotEnvelope(
                "a field passed to commands holds a NUL byte".to_owned(),
            ));
        }
    }
    if let Some(id) = &push.msg_id {
        check_message_id(id)?;
    }
    Ok(push)
}

/// A message id must fit in the environment and on one log line.
fn check_message_id(id: &str) -> Result<(), PushError> {
    if id.len() > MAX_MESSAGE_ID {
        return Err(PushError::BadMessageId("is longer than 1024 bytes"));
    }
    if id.chars().any(char::is_control) {
        return Err(PushError::BadMessageId("holds control characters"));
    }
    Ok(())
}

/// Splits `x-cmq-message-tag` on `,`, trims spaces and tabs, drops empty items.
pub fn parse_tags(header: &str) -> Vec<String> {
    header
        .split(',')
        .map(|tag| tag.trim_matches([' ', '\t']))
        .filter(|tag| !tag.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The CMQ JSON envelope. Every key is optional here so that `auto` can decide what is
/// missing; unknown keys are ignored (TDMQ may add some).
#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(rename = "TopicOwner")]
    topic_owner: Option<Scalar>,
    #[serde(rename = "topicName")]
    topic_name: Option<String>,
    #[serde(rename = "subscriptionName")]
    subscription_name: Option<String>,
    #[serde(rename = "msgId")]
    msg_id: Option<Scalar>,
    #[serde(rename = "msgBody")]
    msg_body: Option<String>,
    #[serde(rename = "publishTime")]
    publish_time: Option<Scalar>,
}

impl Envelope {
    fn missing_keys(&self) -> Vec<&'static str> {
        [
            ("msgId", self.msg_id.is_none()),
            ("msgBody", self.msg_body.is_none()),
            ("topicName", self.topic_name.is_none()),
            ("subscriptionName", self.subscription_name.is_none()),
        ]
        .into_iter()
        .filter_map(|(key, missing)| missing.then_some(key))
        .collect()
    }

    /// SPEC §3 `auto`: string `msgBody` and a `msgId` equal to the header, or with no header,
    /// all of `msgId`, `msgBody`, `topicName`, `subscriptionName`.
    fn is_envelope_for(&self, header_id: Option<&str>) -> bool {
        match (header_id, &self.msg_id) {
            (Some(header), Some(Scalar(id))) => self.msg_body.is_some() && header == id,
            (Some(_), None) => false,
            (None, _) => self.missing_keys().is_empty(),
        }
    }
}

fn parse_envelope(raw: &[u8]) -> Result<Envelope, String> {
    // Only an object can be an envelope; skip the JSON parser for everything else.
    match raw.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => serde_json::from_slice(raw).map_err(|err| err.to_string()),
        _ => Err("not a JSON object".to_owned()),
    }
}

/// A JSON string or number, kept as the text it arrived as (`TopicOwner`, `msgId`,
/// `publishTime`).
#[derive(Debug)]
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// The user agent CMQ's push service sends.
pub const USER_AGENT: &str = "Qcloud Notification Service Agent";

/// A push to be sent, or tried locally, as CMQ would send it (`send`, `route`, `run`).
#[derive(Debug, Clone)]
pub struct OutgoingPush {
    pub format: Format,
    pub msg_id: String,
    pub request_id: String,
    pub topic: String,
    pub subscription: String,
    pub tags: Vec<String>,
    /// Seconds since the epoch, as classic CMQ sends it.
    pub publish_time: u64,
    pub body: Bytes,
}

impl OutgoingPush {
    /// The `x-cmq-*` headers, as CMQ writes them (tags joined by `", "`).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            ("x-cmq-request-id", self.request_id.clone()),
            ("x-cmq-message-id", self.msg_id.clone()),
        ];
        if !self.tags.is_empty() {
            headers.push(("x-cmq-message-tag", self.tags.join(", ")));
        }
        headers
    }

    /// The request body: the JSON envelope, or the raw message for SIMPLIFIED. A JSON
    /// `msgBody` is text, so invalid UTF-8 in the message is replaced there.
    pub fn wire_body(&self) -> Bytes {
        match self.format {
            Format::Simplified => self.body.clone(),
            Format::Json => {
                let envelope = serde_json::json!({
                    "TopicOwner": 0,
                    "topicName": self.topic,
                    "subscriptionName": self.subscription,
                    "msgId": self.msg_id,
                    "msgBody": String::from_utf8_lossy(&self.body),
                    "publishTime": self.publish_time,
                });
                Bytes::from(envelope.to_string())
            }
        }
    }

    /// The [`Push`] that `serve` would read from this request under `setting`.
    pub fn parse(&self, setting: FormatSetting, path: &str) -> Result<Push, PushError> {
        let headers = self.headers();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.as_str())
        };
        let headers = PushHeaders {
            message_id: header("x-cmq-message-id"),
            request_id: header("x-cmq-request-id"),
            message_tag: header("x-cmq-message-tag"),
        };
        parse_push(setting, path, headers, self.wire_body())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"{"TopicOwner":100015036,"topicName":"MyTopic","subscriptionName":"mysubscription","msgId":"6942316962","msgBody":"test message","publishTime":11203432}"#;

    fn headers(id: Option<&str>) -> PushHeaders<'_> {
        PushHeaders {
            message_id: id,
            request_id: Some("2394928734"),
            message_tag: Some("a, b"),
        }
    }

    fn auto(body: &[u8], id: Option<&str>) -> Push {
        parse_push(
            FormatSetting::Auto,
            "/cgi",
            headers(id),
            Bytes::copy_from_slice(body),
        )
        .expect("auto never fails")
    }

    #[test]
    fn seed_json_push_is_read_as_an_envelope() {
        let push = auto(SEED.as_bytes(), Some("6942316962"));
        assert_eq!(push.format, Format::Json);
        assert_eq!(push.msg_id.as_deref(), Some("6942316962"));
        assert_eq!(push.request_id.as_deref(), Some("2394928734"));
        assert_eq!(push.topic.as_deref(), Some("MyTopic"));
        assert_eq!(push.subscription.as_deref(), Some("mysubscription"));
        assert_eq!(push.topic_owner.as_deref(), Some("100015036")); // E1
        assert_eq!(push.publish_time.as_deref(), Some("11203432"));
        assert_eq!(&push.body[..], b"test message");
        assert_eq!(&push.envelope[..], SEED.as_bytes());
        assert_eq!(push.tags, ["a", "b"]);
    }

    #[test]
    fn e2_topic_owner_as_string() {
        let body = SEED.replace("100015036", "\"100015036\"");
        let push = auto(body.as_bytes(), Some("6942316962"));
        assert_eq!(push.topic_owner.as_deref(), Some("100015036"));
    }

    #[test]
    fn e3_publish_time_passes_through_as_received() {
        for (json, expected) in [
            ("1700000000", "1700000000"),
            ("1700000000123", "1700000000123"),
            ("\"1700000000\"", "1700000000"),
        ] {
            let body = SEED.replace("11203432", json);
            let push = auto(body.as_bytes(), Some("6942316962"));
            assert_eq!(push.publish_time.as_deref(), Some(expected));
        }
    }

    #[test]
    fn e4_numeric_msg_id_is_stringified() {
        let body = SEED.replace("\"6942316962\"", "6942316962");
        let push = auto(body.as_bytes(), Some("6942316962"));
        assert_eq!(push.format, Format::Json);
        assert_eq!(push.msg_id.as_deref(), Some("6942316962"));
    }

    #[test]
    fn e5_unknown_keys_are_ignored() {
        let body = SEED.replace('}', r#","extra":{"nested":[1,2]},"newField":true}"#);
        let push = auto(body.as_bytes(), Some("6942316962"));
        assert_eq!(push.format, Format::Json);
        assert_eq!(&push.body[..], b"test message");
    }

    #[test]
    fn e6_msg_body_escapes_decode_byte_exact() {
        let body = SEED.replace("test message", r"a\u0000b\nc\ud83d\ude80 \u00e9");
        let push = auto(body.as_bytes(), Some("6942316962"));
        assert_eq!(&push.body[..], "a\0b\nc🚀 é".as_bytes());
    }

    #[test]
    fn e7_simplified_body_with_invalid_utf8_and_nul_is_untouched() {
        let body = b"\xff\xfe\0raw\x80bytes\0";
        let push = auto(body, Some("1"));
        assert_eq!(push.format, Format::Simplified);
        assert_eq!(&push.body[..], body);
        assert_eq!(push.msg_id.as_deref(), Some("1"));
        assert_eq!(push.topic, None);
    }

    #[test]
    fn e8_empty_body_is_an_empty_simplified_message() {
        let push = auto(b"", Some("1"));
        assert_eq!(push.format, Format::Simplified);
        assert!(push.body.is_empty());
    }

    #[test]
    fn e9_tags_are_normalised() {
        assert_eq!(parse_tags("a, b"), ["a", "b"]);
        assert_eq!(parse_tags("a,b"), ["a", "b"]);
        assert_eq!(parse_tags(" a ,, b "), ["a", "b"]);
        assert_eq!(parse_tags("\ta\t,b"), ["a", "b"]);
        assert!(parse_tags("").is_empty());
        let push = parse_push(
            FormatSetting::Auto,
            "/",
            PushHeaders::default(),
            Bytes::new(),
        )
        .expect("auto never fails");
        assert!(push.tags.is_empty());
    }

    #[test]
    fn e12_large_escaped_body_decodes() {
        let message: String = (0..1_000_000u32)
            .map(|i| char::from((i % 32) as u8))
            .collect();
        let body = serde_json::json!({
            "TopicOwner": 1, "topicName": "t", "subscriptionName": "s",
            "msgId": "big", "msgBody": message, "publishTime": 1,
        })
        .to_string();
        assert!(body.len() > 5_000_000);
        let push = auto(body.as_bytes(), Some("big"));
        assert_eq!(push.format, Format::Json);
        assert_eq!(push.body.len(), 1_000_000);
        assert_eq!(&push.body[..], message.as_bytes());
    }

    #[test]
    fn auto_needs_msg_id_equal_to_the_header() {
        let push = auto(SEED.as_bytes(), Some("other-id"));
        assert_eq!(push.format, Format::Simplified);
        assert_eq!(push.msg_id.as_deref(), Some("other-id"));
        assert_eq!(&push.body[..], SEED.as_bytes());
    }

    #[test]
    fn auto_without_header_needs_all_routing_keys() {
        assert_eq!(auto(SEED.as_bytes(), None).format, Format::Json);
        let partial = r#"{"msgId":"1","msgBody":"x"}"#;
        assert_eq!(auto(partial.as_bytes(), None).format, Format::Simplified);
        let body_not_string = r#"{"msgId":"1","msgBody":5,"topicName":"t","subscriptionName":"s"}"#;
        assert_eq!(
            auto(body_not_string.as_bytes(), None).format,
            Format::Simplified
        );
        assert_eq!(auto(b"[1,2]", None).format, Format::Simplified);
        assert_eq!(auto(b"{not json", None).format, Format::Simplified);
    }

    #[test]
    fn json_format_rejects_what_is_not_an_envelope() {
        let parse = |body: &str| {
            parse_push(
                FormatSetting::Json,
                "/",
                headers(Some("1")),
                Bytes::copy_from_slice(body.as_bytes()),
            )
        };
        assert!(parse(SEED).is_ok());
        assert!(matches!(
            parse("plain text"),
            Err(PushError::NotEnvelope(_))
        ));
        let err = parse(r#"{"msgId":"1","msgBody":"x"}"#).expect_err("incomplete");
        assert!(err.to_string().contains("topicName"), "{err}");
        assert!(parse(r#"{"msgId":"1","msgBody":{}}"#).is_err());
    }

    #[test]
    fn an_outgoing_push_reads_back_as_sent() {
        let outgoing = OutgoingPush {
            format: Format::Json,
            msg_id: "m1".to_owned(),
            request_id: "r1".to_owned(),
            topic: "deploy".to_owned(),
            subscription: "web-1".to_owned(),
            tags: vec!["a".to_owned(), "b".to_owned()],
            publish_time: 1_700_000_000,
            body: Bytes::from_static(b"line\n\0end"),
        };
        let push = outgoing.parse(FormatSetting::Auto, "/p").expect("parses");
        assert_eq!(push.format, Format::Json);
        assert_eq!(push.msg_id.as_deref(), Some("m1"));
        assert_eq!(push.topic.as_deref(), Some("deploy"));
        assert_eq!(push.subscription.as_deref(), Some("web-1"));
        assert_eq!(push.publish_time.as_deref(), Some("1700000000"));
        assert_eq!(push.tags, ["a", "b"]);
        assert_eq!(&push.body[..], b"line\n\0end");
        let simplified = OutgoingPush {
            format: Format::Simplified,
            ..outgoing
        };
        let push = simplified.parse(FormatSetting::Auto, "/p").expect("parses");
        assert_eq!(push.format, Format::Simplified);
        assert_eq!(push.topic, None);
        assert_eq!(&push.body[..], b"line\n\0end");
    }

    #[test]
    fn repeated_header_lines_are_one_list_and_bytes_that_are_not_utf8_an_error() {
        let none: [&[u8]; 0] = [];
        assert_eq!(header_text(none), Ok(None));
        let one = header_text([&b"a, b"[..]]).expect("utf-8");
        assert!(matches!(one, Some(Cow::Borrowed("a, b"))));
        let two = header_text([&b"a"[..], b"b, c"]).expect("utf-8");
        assert_eq!(two.as_deref(), Some("a, b, c"));
        assert!(header_text([&b"a"[..], b"\xff"]).is_err());
    }

    #[test]
    fn a_message_id_too_long_or_with_control_characters_is_refused() {
        let parse = |id: &str, body: &[u8]| {
            parse_push(
                FormatSetting::Auto,
                "/",
                headers(Some(id)),
                Bytes::copy_from_slice(body),
            )
        };
        let longest = "i".repeat(MAX_MESSAGE_ID);
        assert!(parse(&longest, b"x").is_ok());
        let too_long = "i".repeat(MAX_MESSAGE_ID + 1);
        assert!(matches!(
            parse(&too_long, b"x"),
            Err(PushError::BadMessageId(_))
        ));
        for id in ["a\nb", "a\rb", "a\u{1b}[31m", "a\0b", "a\u{7f}"] {
            assert!(
                matches!(parse(id, b"x"), Err(PushError::BadMessageId(_))),
                "{id:?}"
            );
        }
        // The envelope's msgId too, and NUL in a field that becomes a variable.
        let envelope = SEED.replace("6942316962", "69\\n42");
        let err = parse("69\n42", envelope.as_bytes()).expect_err("control");
        assert!(matches!(err, PushError::BadMessageId(_)), "{err}");
        let nul_topic = SEED.replace("MyTopic", "My\\u0000Topic");
        let err = parse("6942316962", nul_topic.as_bytes()).expect_err("NUL");
        assert!(err.to_string().contains("NUL"), "{err}");
    }

    #[test]
    fn simplified_format_never_reads_json() {
        let push = parse_push(
            FormatSetting::Simplified,
            "/",
            headers(Some("6942316962")),
            Bytes::from_static(SEED.as_bytes()),
        )
        .expect("simplified never fails");
        assert_eq!(push.format, Format::Simplified);
        assert_eq!(&push.body[..], SEED.as_bytes());
        assert_eq!(push.topic, None);
    }
}
