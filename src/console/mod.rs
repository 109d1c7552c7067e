//! The console (SPEC §10): `serve`'s second listener, on `[console] listen`, with a JSON API
//! (`api.rs`) and server-rendered pages (`pages.rs`) over what the journal holds, and the
//! replay of kept messages through the [`Dispatcher`]. Who may see it and who may replay is
//! `auth.rs`'s decision.
//!
//! Like `http.rs`, an adapter: it reads through [`crate::delivery::Deliveries`] and replays
//! through the dispatcher, and decides nothing about runs. Every response carries the CSP of
//! §10; the stylesheet (`/static/…`) and the login form are the only things served without the
//! token. The config is read on each request, so a reload's `[console] token` applies at once.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::http::{StatusCode, header};
use actix_web::middleware::DefaultHeaders;
use actix_web::{App, HttpRequest, HttpServer, web};

use crate::access::presented_token;
use crate::config::DurationText;
use crate::delivery::{Outcome, RunQuery};
use crate::dispatch::{Dispatcher, HookResult, Replayed};

mod api;
mod auth;
mod pages;

use auth::Viewer;

/// The Content-Security-Policy of every response (SPEC §10).
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:";
/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request body (a login form, a replay request).
const MAX_BODY: usize = 16 * 1024;
/// How long in-flight requests have to be answered at shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// What every handler shares.
pub(crate) struct Console {
    dispatcher: Arc<Dispatcher>,
    keys: auth::Keys,
}

impl Console {
    /// Who asks `req`, if let in (see [`auth::Keys::viewer`]).
    fn viewer(&self, req: &HttpRequest) -> Result<Viewer, auth::Denied> {
        let config = self.dispatcher.config();
        let token = config
            .console
            .as_ref()
            .and_then(|console| console.token.as_deref());
        let text = |name: header::HeaderName| {
            req.headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
        };
        let bearer = text(header::AUTHORIZATION)
            .and_then(|authorization| presented_token("", None, Some(authorization)));
        let cookie = req
            .headers()
            .get_all(header::COOKIE)
            .filter_map(|value| value.to_str().ok())
            .find_map(|cookies| auth::cookie(cookies, auth::COOKIE));
        self.keys.viewer(token, bearer.as_deref(), cookie)
    }
}

/// A request without the console's token: 401, with a JSON error for the API and the login
/// page for the pages.
#[derive(Debug, thiserror::Error)]
#[error("missing or wrong token")]
pub struct Unauthorized {
    api: bool,
}

impl actix_web::ResponseError for Unauthorized {
    fn status_code(&self) -> StatusCode {
        StatusCode::UNAUTHORIZED
    }

    fn error_response(&self) -> actix_web::HttpResponse {
        let mut response = if self.api {
            actix_web::HttpResponse::Unauthorized()
                .json(serde_json::json!({ "error": self.to_string() }))
        } else {
            pages::login_page(StatusCode::UNAUTHORIZED, None)
        };
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        response
    }
}

/// Who asks, as a handler's argument: a handler that takes it answers 401 to anyone else.
impl actix_web::FromRequest for Viewer {
    type Error = Unauthorized;
    type Future = std::future::Ready<Result<Viewer, Unauthorized>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let viewer = req
            .app_data::<web::Data<Console>>()
            .ok_or(auth::Denied)
            .and_then(|console| console.viewer(req));
        std::future::ready(viewer.map_err(|_| Unauthorized {
            api: req.path().starts_with("/api/"),
        }))
    }
}

/// The console on `listeners`, reading and replaying through `dispatcher`; not yet started.
/// It handles no signals: the caller stops it through its handle.
pub fn server(listeners: Vec<TcpListener>, dispatcher: Arc<Dispatcher>) -> std::io::Result<Server> {
    let keys = auth::Keys::new()
        .map_err(|_| std::io::Error::other("cannot draw the console's session key"))?;
    let console = web::Data::new(Console { dispatcher, keys });
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(console.clone())
            .app_data(web::PayloadConfig::new(MAX_BODY))
            .app_data(web::FormConfig::default().limit(MAX_BODY))
            .app_data(web::JsonConfig::default().limit(MAX_BODY))
            .wrap(
                DefaultHeaders::new()
                    .add((header::CONTENT_SECURITY_POLICY, CSP))
                    .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                    .add((header::X_FRAME_OPTIONS, "DENY"))
                    .add((header::REFERRER_POLICY, "no-referrer")),
            )
            .configure(api::routes)
            .configure(pages::routes)
    })
    .client_request_timeout(HEADER_READ_TIMEOUT)
    .workers(1)
    .disable_signals()
    .shutdown_timeout(SHUTDOWN_TIMEOUT.as_secs());
    for listener in listeners {
        server = server.listen(listener)?;
    }
    Ok(server.run())
}

/// A non-empty query or form value: an empty field of a form means "any".
fn given(value: Option<&String>) -> Option<String> {
    value.filter(|value| !value.is_empty()).cloned()
}

/// The query of `/api/runs` and `/runs` (SPEC §10), as given.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct RunParams {
    hook: Option<String>,
    outcome: Option<String>,
    msg_id: Option<String>,
    before: Option<String>,
    limit: Option<String>,
}

/// Runs a page shows when the query does not say, and at most.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;

impl RunParams {
    /// The journal query, or why the parameters are wrong.
    fn query(&self) -> Result<RunQuery, String> {
        let before = match given(self.before.as_ref()) {
            Some(before) => Some(
                before
                    .parse::<i64>()
                    .map_err(|_| format!("before: `{before}` is not a run id"))?,
            ),
            None => None,
        };
        let limit = match given(self.limit.as_ref()) {
            Some(limit) => match limit.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(format!(
                        "limit: `{limit}` is not a number from 1 to {MAX_LIMIT}"
                    ));
                }
            },
            None => DEFAULT_LIMIT,
        };
        Ok(RunQuery {
            hook: given(self.hook.as_ref()),
            outcome: given(self.outcome.as_ref()),
            msg_id: given(self.msg_id.as_ref()),
            before,
            replay_only: false,
            limit,
        })
    }
}

/// What a replay asked of the console came to.
pub(crate) enum Replay {
    /// Each hook's result.
    Ran(Vec<Ran>),
    /// Refused before anything ran: the status and why.
    Refused(StatusCode, String),
}

/// One hook's part of a replay (and of `POST /api/replay`'s answer).
#[derive(Debug, serde::Serialize)]
pub(crate) struct Ran {
    /// `None` with `error` when a hook was not replayed at all.
    hook: Option<String>,
    outcome: Outcome,
    exit_code: Option<i32>,
    signal: Option<i32>,
    duration_ms: u64,
    error: Option<String>,
    /// The run it journaled (`/api/runs/{id}`), once found.
    run_id: Option<i64>,
}

impl Ran {
    fn of(result: HookResult, run_id: Option<i64>) -> Ran {
        Ran {
            hook: Some(result.hook),
            outcome: result.outcome,
            exit_code: result.exit_code,
            signal: result.signal,
            duration_ms: result.duration_ms,
            error: result.error,
            run_id,
        }
    }

    fn not_replayed(reason: String) -> Ran {
        Ran {
            hook: None,
            outcome: Outcome::NotStarted,
            exit_code: None,
            signal: None,
            duration_ms: 0,
            error: Some(reason),
            run_id: None,
        }
    }
}

/// How long the console looks for the run a replay journaled (its row is written behind the
/// outcome, which is already safe in the end log).
const REPLAY_RUN_WITHIN: Duration = Duration::from_secs(5);

impl Console {
    /// Replays `msg_id` through `hook` (else every hook that ran it), as `cmqhook replay`
    /// does, and waits for the outcomes (SPEC §10: 404 without a kept body, 409 while its
    /// stored runs are not over, 503 while draining, 403 on a read-only console).
    async fn replay(&self, viewer: &Viewer, msg_id: &str, hook: Option<&str>) -> Replay {
        if *viewer == Viewer::ReadOnly {
            return Replay::Refused(
                StatusCode::FORBIDDEN,
                "the console is read-only: set `token` in [console] to replay from it".to_owned(),
            );
        }
        let config = self.dispatcher.config();
        if let Some(hook) = hook
            && !config
                .hooks
                .iter()
                .any(|configured| configured.name == hook)
        {
            return Replay::Refused(
                StatusCode::NOT_FOUND,
                format!("no hook `{hook}` in the running config"),
            );
        }
        let deliveries = self.dispatcher.deliveries();
        let latest = async |query: RunQuery| {
            let query = RunQuery { limit: 1, ..query };
            deliveries
                .runs(query)
                .await
                .ok()
                .and_then(|page| page.runs.into_iter().next())
        };
        // The replay's runs come after every run journaled now.
        let floor = latest(RunQuery::default()).await.map_or(0, |run| run.id);
        let results = match self.dispatcher.replay_unless_busy(msg_id, hook).await {
            Replayed::Ran(results) => results,
            Replayed::NotKept => {
                let why = match config.server.keep_bodies {
                    None => "`keep_bodies` is \"off\" in [server]".to_owned(),
                    Some(keep) => format!(
                        "none was kept within `keep_bodies` ({})",
                        DurationText(keep)
                    ),
                };
                return Replay::Refused(
                    StatusCode::NOT_FOUND,
                    format!("no kept body for message `{msg_id}`: {why}"),
                );
            }
            Replayed::Busy { hook, state } => {
                return Replay::Refused(
                    StatusCode::CONFLICT,
                    format!(
                        "{hook}: the stored message is {}: its own runs are not over; replay it once it is done or dead",
                        state.as_str()
                    ),
                );
            }
            Replayed::Unreadable(reason) => {
                return Replay::Refused(StatusCode::SERVICE_UNAVAILABLE, reason);
            }
        };
        let mut ran = Vec::with_capacity(results.len());
        for result in results {
            let result = match result {
                Ok(result) => result,
                Err(reason) => {
                    ran.push(Ran::not_replayed(reason));
                    continue;
                }
            };
            let mut run = None;
            if result.outcome != Outcome::NotStarted {
                let deadline = tokio::time::Instant::now() + REPLAY_RUN_WITHIN;
                while tokio::time::Instant::now() < deadline {
                    let query = RunQuery {
                        hook: Some(result.hook.clone()),
                        msg_id: Some(msg_id.to_owned()),
                        replay_only: true,
                        ..RunQuery::default()
                    };
                    if let Some(found) = latest(query).await
                        && found.id > floor
                        && found.outcome != "running"
                    {
                        run = Some(found.id);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            ran.push(Ran::of(result, run));
        }
        Replay::Ran(ran)
    }
}
