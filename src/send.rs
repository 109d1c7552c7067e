//! `cmqhook send`: one push over plain HTTP/1.1, exactly as CMQ sends it.
//!
//! CMQ only pushes to `http://` endpoints, so this is a small client over a `TcpStream`: the
//! `x-cmq-*` headers, `Content-Type: text/plain`, CMQ's User-Agent, and the envelope or raw
//! body. It answers with the status and body the endpoint gave.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::cmq::{OutgoingPush, USER_AGENT};

/// Like CMQ, give up on an endpoint that has not answered in this long.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Why a push could not be sent or its answer read.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("`{0}` is not an http:// URL (CMQ only pushes to http://)")]
    Url(String),
    #[error("cannot reach {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("malformed response: {0}")]
    Response(String),
}

/// An endpoint's answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub reason: String,
    pub body: Vec<u8>,
}

/// POSTs `push` to `url` as CMQ would and reads the answer.
pub fn send_push(url: &str, push: &OutgoingPush) -> Result<Reply, SendError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| SendError::Url(url.to_owned()))?;
    let (authority, target) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(SendError::Url(url.to_owned()));
    }
    let address = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let connect = |source| SendError::Connect {
        authority: authority.to_owned(),
        source,
    };
    let socket = address
        .to_socket_addrs()
        .map_err(connect)?
        .next()
        .ok_or_else(|| connect(std::io::Error::other("no address")))?;
    let mut stream = TcpStream::connect_timeout(&socket, TIMEOUT).map_err(connect)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;

    let body = push.wire_body();
    let mut request = format!(
        "POST {target} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: text/plain\r\nUser-Agent: {USER_AGENT}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in push.headers() {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(&body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> Result<Reply, SendError> {
    let malformed = |what: &str| SendError::Response(what.to_owned());
    let end = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| malformed("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let _version = parts.next();
    let status = parts
        .next()
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| malformed("no status code"))?;
    let reason = parts.next().unwrap_or_default().to_owned();
    let chunked = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value.to_ascii_lowercase().contains("chunked")
        })
    });
    let mut body = raw[end + 4..].to_vec();
    if chunked {
        body = dechunk(&body).ok_or_else(|| malformed("broken chunked body"))?;
    }
    Ok(Reply {
        status,
        reason,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_with_length_or_chunks() {
        let reply = parse_reply(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\nno")
            .expect("reply");
        assert_eq!(
            (reply.status, reply.reason.as_str()),
            (503, "Service Unavailable")
        );
        assert_eq!(reply.body, b"no");
        let reply = parse_reply(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n3\r\n!!!\r\n0\r\n\r\n",
        )
        .expect("reply");
        assert_eq!(reply.body, b"ok!!!");
        assert!(parse_reply(b"garbage").is_err());
    }

    #[test]
    fn only_http_urls_are_accepted() {
        let push = OutgoingPush {
            format: crate::cmq::Format::Simplified,
            msg_id: String::new(),
            request_id: String::new(),
            topic: String::new(),
            subscription: String::new(),
            tags: Vec::new(),
            publish_time: 0,
            body: bytes::Bytes::new(),
        };
        assert!(matches!(
            send_push("https://example.invalid/", &push),
            Err(SendError::Url(_))
        ));
    }
}
