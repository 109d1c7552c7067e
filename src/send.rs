//! `cmqhook send`: one push over plain HTTP/1.1, exactly as CMQ sends it.
//!
//! CMQ only pushes to `http://` endpoints. The request is CMQ's: the `x-cmq-*` headers,
//! `Content-Type: text/plain`, CMQ's User-Agent, and the envelope or raw body, plus any headers
//! the user adds. HTTP itself is ureq's; this module decides only what is sent, and hands back
//! whatever status and body the endpoint answered (a non-2xx answer is a [`Reply`], not an
//! error).

use std::io::Read;
use std::str::FromStr;
use std::time::Duration;

use ureq::Agent;
use ureq::http::header::{CONTENT_TYPE, InvalidHeaderName, InvalidHeaderValue, USER_AGENT};
use ureq::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};

use crate::access::TOKEN_HEADER;
use crate::cmq::{self, OutgoingPush};

/// Like CMQ, give up on an endpoint that has not answered in this long.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Why a push could not be sent or its answer read.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("`{0}` is not an http:// URL (CMQ only pushes to http://)")]
    Url(String),
    #[error("header `{name}`: the value `{value}` cannot be sent in HTTP")]
    HeaderValue { name: &'static str, value: String },
    #[error("cannot reach {authority}: {source}")]
    Request {
        authority: String,
        source: ureq::Error,
    },
    #[error("cannot read the answer of {authority}: {source}")]
    Reply {
        authority: String,
        source: std::io::Error,
    },
}

/// A request header added by the user, from `Name: value`.
#[derive(Debug, Clone)]
pub struct ExtraHeader {
    pub name: HeaderName,
    pub value: HeaderValue,
}

/// Why `Name: value` is not a header.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("a header is `Name: value`, and `{0}` has no colon")]
    NoColon(String),
    #[error("`{name}` is not a header name: {source}")]
    Name {
        name: String,
        source: InvalidHeaderName,
    },
    #[error("header `{name}`: the value cannot be sent in HTTP: {source}")]
    Value {
        name: String,
        source: InvalidHeaderValue,
    },
}

impl ExtraHeader {
    /// `X-Cmqhook-Token: TOKEN`, the header a server with `token` set looks for.
    pub fn token(token: &str) -> Result<Self, HeaderError> {
        Ok(ExtraHeader {
            name: HeaderName::from_static(TOKEN_HEADER),
            value: HeaderValue::from_str(token).map_err(|source| HeaderError::Value {
                name: TOKEN_HEADER.to_owned(),
                source,
            })?,
        })
    }
}

impl FromStr for ExtraHeader {
    type Err = HeaderError;

    /// `Name: value`; spaces around the name and the value are dropped, as curl does.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (name, value) = text
            .split_once(':')
            .ok_or_else(|| HeaderError::NoColon(text.to_owned()))?;
        let (name, value) = (name.trim(), value.trim());
        Ok(ExtraHeader {
            name: HeaderName::from_str(name).map_err(|source| HeaderError::Name {
                name: name.to_owned(),
                source,
            })?,
            value: HeaderValue::from_str(value).map_err(|source| HeaderError::Value {
                name: name.to_owned(),
                source,
            })?,
        })
    }
}

/// An endpoint's answer, whatever its status.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// The status's standard reason phrase (`OK`), empty for a status without one.
    pub reason: String,
    pub body: Vec<u8>,
}

/// POSTs `push` to `url` as CMQ would, with `extra` headers on top (a name given there
/// replaces CMQ's header of that name; a name given twice is sent twice), and reads the
/// answer. Redirects are not followed and no proxy is used: CMQ does neither.
pub fn send_push(
    url: &str,
    push: &OutgoingPush,
    extra: &[ExtraHeader],
) -> Result<Reply, SendError> {
    let uri = Uri::from_str(url)
        .ok()
        .filter(|uri| uri.scheme_str() == Some("http"))
        .ok_or_else(|| SendError::Url(url.to_owned()))?;
    let authority = uri
        .authority()
        .map(ToString::to_string)
        .filter(|authority| !authority.is_empty())
        .ok_or_else(|| SendError::Url(url.to_owned()))?;

    let body = push.wire_body();
    let mut request = Request::new(&body[..]);
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(USER_AGENT, HeaderValue::from_static(cmq::USER_AGENT));
    for (name, value) in push.headers() {
        let value =
            HeaderValue::from_str(&value).map_err(|_| SendError::HeaderValue { name, value })?;
        headers.insert(name, value);
    }
    let mut given = HeaderMap::new();
    for header in extra {
        given.append(header.name.clone(), header.value.clone());
    }
    // HeaderMap's extend replaces a name's values, keeping every value given for it.
    headers.extend(given);

    let agent: Agent = Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .accept("")
        .timeout_global(Some(TIMEOUT))
        .build()
        .into();
    let response = agent.run(request).map_err(|source| SendError::Request {
        authority: authority.clone(),
        source,
    })?;
    let status = response.status();
    let mut body = Vec::new();
    response
        .into_body()
        .into_reader()
        .read_to_end(&mut body)
        .map_err(|source| SendError::Reply { authority, source })?;
    Ok(Reply {
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or_default().to_owned(),
        body,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::TcpListener;

    use super::*;

    fn push() -> OutgoingPush {
        OutgoingPush {
            format: crate::cmq::Format::Simplified,
            msg_id: "m1".to_owned(),
            request_id: "r1".to_owned(),
            topic: String::new(),
            subscription: String::new(),
            tags: Vec::new(),
            publish_time: 0,
            body: bytes::Bytes::from_static(b"hi"),
        }
    }

    /// A one-request server on 127.0.0.1 that answers `reply` and hands back the request head.
    fn answer_once(reply: &'static [u8]) -> (String, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/p", listener.local_addr().expect("address"));
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).expect("read");
                assert!(n > 0, "closed in the request head");
                request.extend_from_slice(&buf[..n]);
            }
            stream.write_all(reply).expect("answer");
            String::from_utf8_lossy(&request).into_owned()
        });
        (url, server)
    }

    #[test]
    fn a_non_2xx_chunked_answer_is_a_reply_not_an_error() {
        let (url, server) = answer_once(
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nno\r\n3\r\n!!!\r\n0\r\n\r\n",
        );
        let reply = send_push(&url, &push(), &[]).expect("a reply");
        assert_eq!(
            (reply.status, reply.reason.as_str()),
            (503, "Service Unavailable")
        );
        assert_eq!(reply.body, b"no!!!");
        let request = server.join().expect("server");
        assert!(request.starts_with("POST /p HTTP/1.1\r\n"), "{request}");
    }

    #[test]
    fn extra_headers_replace_cmqs_and_repeat() {
        let (url, server) =
            answer_once(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        let extra: Vec<ExtraHeader> = ["User-Agent: probe", "X-A: 1", "x-a: 2"]
            .iter()
            .map(|text| text.parse().expect("a header"))
            .collect();
        let reply = send_push(&url, &push(), &extra).expect("a reply");
        assert_eq!((reply.status, &reply.body[..]), (200, &b"ok"[..]));
        let request = server.join().expect("server").to_ascii_lowercase();
        assert!(request.contains("\r\nuser-agent: probe\r\n"), "{request}");
        assert!(!request.contains("qcloud"), "{request}");
        assert!(request.contains("\r\nx-a: 1\r\n"), "{request}");
        assert!(request.contains("\r\nx-a: 2\r\n"), "{request}");
        assert!(
            request.contains("\r\nx-cmq-message-id: m1\r\n"),
            "{request}"
        );
    }

    #[test]
    fn a_header_needs_a_colon_and_valid_parts() {
        let header: ExtraHeader = " X-Token :  a b ".parse().expect("a header");
        assert_eq!(
            (header.name.as_str(), header.value.as_bytes()),
            ("x-token", &b"a b"[..])
        );
        assert!(matches!(
            "X-Token".parse::<ExtraHeader>(),
            Err(HeaderError::NoColon(_))
        ));
        assert!(matches!(
            "bad name: x".parse::<ExtraHeader>(),
            Err(HeaderError::Name { .. })
        ));
        assert!(matches!(
            "X-A: a\nb".parse::<ExtraHeader>(),
            Err(HeaderError::Value { .. })
        ));
    }

    #[test]
    fn only_http_urls_are_accepted() {
        for url in ["https://example.invalid/", "example.invalid", "http:///x"] {
            assert!(
                matches!(send_push(url, &push(), &[]), Err(SendError::Url(_))),
                "{url}"
            );
        }
    }
}
