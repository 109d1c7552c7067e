//! The HTTP adapter (actix-web): routes, body limits, and the status code of an [`Answer`].
//!
//! Any POST on any path is a push; `GET /healthz` and `GET /metrics` are the only other
//! routes. This module extracts what a push carries and hands it to the dispatcher; it decides
//! nothing about hooks or processes.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::Server;
use actix_web::http::{Method, StatusCode, header};
use actix_web::web::{Bytes, BytesMut};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use futures_util::StreamExt;
use serde_json::json;

use crate::access::{allowed, client_address, presented_token, token_matches};
use crate::cmq::{MAX_MESSAGE_ID, PushError, PushHeaders, header_text, parse_push, parse_tags};
use crate::config::Unmatched;
use crate::dispatch::{Answer, Dispatcher, Refusal, Refused, Verdict};
use crate::telemetry::metrics;

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send its body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections open at once, per HTTP worker.
const MAX_CONNECTIONS: usize = 4096;
/// How long, once runs are over, in-flight requests have to be answered at shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The HTTP server on `listeners` (bound sockets: several when `listen` names a host with
/// several addresses), not yet started. It handles no signals: the caller stops it through its
/// handle.
pub fn server(listeners: Vec<TcpListener>, dispatcher: Arc<Dispatcher>) -> std::io::Result<Server> {
    let state = web::Data::from(dispatcher);
    let mut server = HttpServer::new(move || {
        // Run once on each worker's thread as it starts: its pushes' claims and ends go to
        // the shared database on connections of its own.
        crate::delivery::postgres::host_lanes();
        App::new()
            .app_data(state.clone())
            .default_service(web::to(route))
    })
    .client_request_timeout(HEADER_READ_TIMEOUT)
    .client_disconnect_timeout(Duration::from_secs(1))
    .max_connections(MAX_CONNECTIONS)
    .disable_signals()
    .shutdown_timeout(SHUTDOWN_TIMEOUT.as_secs());
    for listener in listeners {
        server = server.listen(listener)?;
    }
    Ok(server.run())
}

async fn route(
    req: HttpRequest,
    payload: web::Payload,
    dispatcher: web::Data<Dispatcher>,
) -> HttpResponse {
    match (req.method(), req.path()) {
        (&Method::POST, _) => push(&req, payload, &dispatcher.into_inner()).await,
        (&Method::GET, "/metrics") => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(metrics().render()),
        (&Method::GET, "/healthz") => match dispatcher.health() {
            Ok(()) => HttpResponse::Ok()
                .content_type("text/plain; charset=utf-8")
                .body("ok"),
            Err(reason) => HttpResponse::ServiceUnavailable()
                .insert_header((header::RETRY_AFTER, "5"))
                .content_type("text/plain; charset=utf-8")
                .body(reason),
        },
        _ => HttpResponse::MethodNotAllowed()
            .insert_header((header::ALLOW, "POST"))
            .json(json!({"error": "pushes are POST requests"})),
    }
}

/// A request body, read whole.
enum Body {
    Read(Bytes),
    TooLarge,
    Broken(actix_web::error::PayloadError),
}

/// Reads `payload` into one buffer sized from Content-Length when there is one (actix's own
/// `to_bytes_limited` doubles its buffer as the body comes, up to twice the body's size held
/// per push in flight).
async fn read_body(mut payload: web::Payload, expected: Option<usize>, limit: usize) -> Body {
    // Not trusting a declared length past 1 MiB: a client that declares much and sends little
    // must not make every connection reserve `max_body`.
    let mut body = BytesMut::with_capacity(expected.unwrap_or(0).min(limit).min(1 << 20));
    while let Some(chunk) = payload.next().await {
        match chunk {
            Ok(chunk) if body.len() + chunk.len() > limit => return Body::TooLarge,
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(err) => return Body::Broken(err),
        }
    }
    Body::Read(body.freeze())
}

async fn push(
    req: &HttpRequest,
    payload: web::Payload,
    dispatcher: &Arc<Dispatcher>,
) -> HttpResponse {
    let started = Instant::now();
    let config = dispatcher.config();
    let lines = |name: &str| req.headers().get_all(name).map(|value| value.as_bytes());
    // Every line of a header, as one list; `Err` when a line is not UTF-8.
    let header = |name: &str| header_text(lines(name));
    let (message_id, request_id, message_tag) = (
        header("x-cmq-message-id"),
        header("x-cmq-request-id"),
        header("x-cmq-message-tag"),
    );
    // What a refusal records of them: readable, and no more of an id than a valid one holds.
    let shown = |name: &str| {
        let text =
            String::from_utf8_lossy(&lines(name).collect::<Vec<_>>().join(&b", "[..])).into_owned();
        let mut end = text.len().min(MAX_MESSAGE_ID);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        (!text.is_empty()).then(|| text[..end].to_owned())
    };
    // Redacted once, for the log, the journal and every run's row.
    let path: Arc<str> = config.redact(req.path()).into();
    let refuse = |refusal: Refusal, error: String| {
        let status = status_of_refusal(refusal);
        metrics()
            .rejected
            .with_label_values(&[refusal.reason()])
            .inc();
        metrics().pushes.with_label_values(&[status.as_str()]).inc();
        let (msg_id, request_id) = (shown("x-cmq-message-id"), shown("x-cmq-request-id"));
        let tags = shown("x-cmq-message-tag");
        dispatcher.refuse(
            refusal,
            &Refused {
                msg_id: msg_id.as_deref(),
                request_id: request_id.as_deref(),
                path: &path,
                tags: tags.as_deref().map(parse_tags).unwrap_or_default(),
            },
        );
        macro_rules! refused_line {
            ($level:ident) => {
                tracing::$level!(
                    msg_id = msg_id.as_deref().unwrap_or(""),
                    request_id = request_id.as_deref().unwrap_or(""),
                    path = &*path,
                    status = status.as_u16(),
                    duration_ms = started.elapsed().as_millis() as u64,
                    error = error.as_str(),
                    "push refused"
                )
            };
        }
        if status.is_server_error() {
            refused_line!(warn);
        } else {
            refused_line!(info);
        }
        let mut response = HttpResponse::build(status);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.insert_header((header::RETRY_AFTER, "5"));
        }
        response.json(json!({ "error": error }))
    };

    if dispatcher.is_draining() {
        return refuse(Refusal::Draining, "shutting down".to_owned());
    }

    let server = &config.server;
    let peer = req.peer_addr().map(|addr| addr.ip());
    if let Some(peer) = peer {
        let forwarded_for = header("x-forwarded-for");
        let forwarded_for = forwarded_for
            .as_ref()
            .map(Option::as_deref)
            .map_err(|err| *err);
        let client = match client_address(peer, forwarded_for, &server.trusted_proxies) {
            Ok(client) => client,
            Err(err) => return refuse(Refusal::BadHeader, err.to_string()),
        };
        if !allowed(client, &server.allow) {
            return refuse(Refusal::Forbidden, format!("{client} is not allowed"));
        }
    }
    if let Some(token) = &server.token {
        // A token header that is not text carries no token.
        let (token_header, authorization) = (
            header("x-cmqhook-token").ok().flatten(),
            header(header::AUTHORIZATION.as_str()).ok().flatten(),
        );
        let presented = presented_token(
            req.query_string(),
            token_header.as_deref(),
            authorization.as_deref(),
        );
        if !token_matches(token, presented) {
            return refuse(Refusal::Unauthorized, "missing or wrong token".to_owned());
        }
    }
    let max_body = config.server.max_body;
    let too_large = || {
        refuse(
            Refusal::TooLarge,
            format!("body larger than max_body ({max_body} bytes)"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|len| len.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_body) {
        return too_large();
    }
    let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
    let expected = declared.and_then(|len| usize::try_from(len).ok());
    let body =
        match tokio::time::timeout(BODY_READ_TIMEOUT, read_body(payload, expected, limit)).await {
            Err(_) => {
                return refuse(Refusal::SlowBody, "body not received in time".to_owned());
            }
            Ok(body) => body,
        };
    let body = match body {
        Body::Read(body) => body,
        Body::Broken(err) => {
            return refuse(Refusal::Unreadable, format!("cannot read body: {err}"));
        }
        Body::TooLarge => return too_large(),
    };
    let unreadable = |name: &str| format!("header {name} is not valid UTF-8");
    let headers = match (&message_id, &request_id, &message_tag) {
        (Ok(message_id), Ok(request_id), Ok(message_tag)) => PushHeaders {
            message_id: message_id.as_deref(),
            request_id: request_id.as_deref(),
            message_tag: message_tag.as_deref(),
        },
        (Err(_), _, _) => return refuse(Refusal::BadHeader, unreadable("x-cmq-message-id")),
        (_, Err(_), _) => return refuse(Refusal::BadHeader, unreadable("x-cmq-request-id")),
        (_, _, Err(_)) => return refuse(Refusal::BadHeader, unreadable("x-cmq-message-tag")),
    };
    let push = match parse_push(config.server.format, req.path(), headers, body) {
        Ok(push) => push,
        Err(err @ PushError::NotEnvelope(_)) => {
            return refuse(Refusal::NotEnvelope, err.to_string());
        }
        Err(err @ PushError::BadMessageId(_)) => {
            return refuse(Refusal::BadMessageId, err.to_string());
        }
    };
    let request_id = push.request_id.clone().unwrap_or_default();
    let answer = dispatcher.dispatch(push, Arc::clone(&path)).await;
    let status = status_of(&answer);
    metrics().pushes.with_label_values(&[status.as_str()]).inc();
    if answer.results.is_empty() {
        metrics().rejected.with_label_values(&["unmatched"]).inc();
    }
    let hooks: Vec<&str> = answer.results.iter().map(|r| r.hook.as_str()).collect();
    let hooks = hooks.join(",");
    let (msg_id, request_id, path) = (answer.msg_id.as_deref().unwrap_or(""), &*request_id, &*path);
    let (status_code, duration_ms) = (status.as_u16(), started.elapsed().as_millis() as u64);
    macro_rules! push_line {
        ($level:ident $(, $field:ident = $value:expr)*) => {
            tracing::$level!(
                msg_id,
                request_id,
                path,
                hooks = hooks.as_str(),
                $($field = $value,)*
                status = status_code,
                duration_ms,
                "push"
            )
        };
    }
    match &answer.unmatched {
        // What it carried, so that the operator sees why no hook matched.
        Some(carried) => push_line!(
            info,
            format = carried.format.as_str(),
            topic = &*config.redact(carried.topic.as_deref().unwrap_or("")),
            subscription = &*config.redact(carried.subscription.as_deref().unwrap_or("")),
            tags = &*config.redact(&carried.tags.join(","))
        ),
        None if status.is_server_error() => push_line!(warn),
        None => push_line!(info),
    }
    let mut response = HttpResponse::build(status);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.insert_header((header::RETRY_AFTER, "5"));
    }
    if status.is_client_error() {
        return response.json(json!({ "error": "no hook matched" }));
    }
    response.json(&answer)
}

/// The status of a refused push.
fn status_of_refusal(refusal: Refusal) -> StatusCode {
    StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::BAD_REQUEST)
}

/// The one place an answer becomes a status code (SPEC §4).
fn status_of(answer: &Answer) -> StatusCode {
    match answer.verdict {
        Verdict::Succeeded | Verdict::Unmatched(Unmatched::Ack) => StatusCode::OK,
        Verdict::Unmatched(Unmatched::Reject) => StatusCode::NOT_FOUND,
        Verdict::Failed => StatusCode::INTERNAL_SERVER_ERROR,
        Verdict::TimedOut => StatusCode::GATEWAY_TIMEOUT,
        Verdict::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}
