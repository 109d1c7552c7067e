//! The console's JSON API (SPEC §10): `/api/hooks`, `/api/runs`, `/api/runs/{id}`,
//! `/api/dead` and `POST /api/replay`. Data goes out as data: nothing here is escaped, it is
//! JSON.

use std::time::SystemTime;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::{Console, Replay, RunParams, Viewer};

/// Dead letters listed at most.
const DEAD_LIMIT: usize = 500;

pub(super) fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/api/hooks", web::get().to(hooks))
        .route("/api/runs", web::get().to(runs))
        .route("/api/runs/{id}", web::get().to(run))
        .route("/api/dead", web::get().to(dead))
        .route("/api/replay", web::post().to(replay))
        .route("/api/{rest:.*}", web::to(unknown));
}

/// An error as the API answers it.
fn error(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": message.into() }))
}

/// The journal could not be read.
fn unreadable(reason: &str) -> HttpResponse {
    error(StatusCode::SERVICE_UNAVAILABLE, reason)
}

async fn hooks(_: Viewer, console: web::Data<Console>) -> HttpResponse {
    let config = console.dispatcher.config();
    let names: Vec<String> = config.hooks.iter().map(|hook| hook.name.clone()).collect();
    match console
        .dispatcher
        .deliveries()
        .hook_figures(&names, SystemTime::now())
        .await
    {
        Ok(hooks) => HttpResponse::Ok().json(json!({ "hooks": hooks })),
        Err(reason) => unreadable(&reason),
    }
}

async fn runs(
    _: Viewer,
    console: web::Data<Console>,
    params: web::Query<RunParams>,
) -> HttpResponse {
    let query = match params.query() {
        Ok(query) => query,
        Err(problem) => return error(StatusCode::BAD_REQUEST, problem),
    };
    match console.dispatcher.deliveries().runs(query).await {
        Ok(page) => HttpResponse::Ok().json(page),
        Err(reason) => unreadable(&reason),
    }
}

async fn run(_: Viewer, console: web::Data<Console>, id: web::Path<String>) -> HttpResponse {
    let Ok(id) = id.parse::<i64>() else {
        return error(StatusCode::NOT_FOUND, format!("no run `{id}`"));
    };
    match console.dispatcher.deliveries().run(id).await {
        Ok(Some(run)) => HttpResponse::Ok().json(run),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no run {id} in the journal")),
        Err(reason) => unreadable(&reason),
    }
}

async fn dead(_: Viewer, console: web::Data<Console>) -> HttpResponse {
    match console
        .dispatcher
        .deliveries()
        .dead_letters(DEAD_LIMIT)
        .await
    {
        Ok(dead) => HttpResponse::Ok().json(json!({ "dead": dead })),
        Err(reason) => unreadable(&reason),
    }
}

/// `POST /api/replay`'s body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    msg_id: String,
    #[serde(default)]
    hook: Option<String>,
}

async fn replay(viewer: Viewer, console: web::Data<Console>, body: web::Bytes) -> HttpResponse {
    let request: ReplayRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"msg_id\": …, \"hook\": …}}: {err}"),
            );
        }
    };
    match console
        .replay(&viewer, &request.msg_id, request.hook.as_deref())
        .await
    {
        Replay::Ran(results) => {
            HttpResponse::Ok().json(json!({ "msg_id": request.msg_id, "results": results }))
        }
        Replay::Refused(status, why) => error(status, why),
    }
}

/// Any other `/api/` path: 404 to whoever may see the console, 401 to others.
async fn unknown(_: Viewer, req: HttpRequest) -> HttpResponse {
    error(
        StatusCode::NOT_FOUND,
        format!("no API route `{}`", req.path()),
    )
}
